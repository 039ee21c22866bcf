"""The ``trainable`` specification: forms, the frozen-prefix cut, and clear errors."""

from __future__ import annotations

import pytest
import torch
from conftest import build, small_vit

from dp_tangent import SelectionError, linearize
from dp_tangent.tangent.trainable_forms import written_form


def names(tangent) -> list[str]:
    return [n for n, _ in tangent.named_deltas()]


def test_all_selects_every_parameter_under_base_names() -> None:
    model = small_vit()
    tangent = linearize(model)
    assert names(tangent) == [n for n, _ in model.named_parameters()]
    assert tangent.trainable == "all" and tangent.cut is None


def test_block_suffix_is_last_blocks_plus_tail() -> None:
    model = small_vit()
    tangent = linearize(model, "blocks[-1:]")
    chosen = names(tangent)
    assert all(n.startswith(("blocks.2.", "norm.", "head.")) for n in chosen)
    assert any(n.startswith("blocks.2.") for n in chosen) and "head.weight" in chosen
    assert tangent.cut == 2 and tangent.trainable == "blocks[-1:]"
    assert linearize(model, "blocks[2:]").trainable == "blocks[-1:]"  # one canonical spelling


def test_head_and_prefixes() -> None:
    model = small_vit()
    assert names(linearize(model, "head")) == ["head.weight", "head.bias"]
    tangent = linearize(model, ["blocks.1.mlp", "head"])
    assert set(names(tangent)) == {"blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc1.bias",
                                   "blocks.1.mlp.fc2.weight", "blocks.1.mlp.fc2.bias", "head.weight", "head.bias"}
    assert tangent.cut == 1 and tangent.trainable == "params:blocks.1.mlp,head"
    assert names(linearize(model, "params:blocks.1.mlp,head")) == names(tangent)


def test_unselected_parameters_stay_frozen_and_model_is_untouched() -> None:
    model, x, suffix = build("resnet")
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    tangent = linearize(model, suffix)
    frozen = [p for n, p in tangent.net.named_parameters() if not p.requires_grad]
    assert frozen and all(not p.requires_grad for p in frozen)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


MALFORMED = ["blocks[1:2]", "blocks[-0:]", "blocks[-00:]", "everything", "blocks[-1 :]", "blocks[- 1:]",
             "blocks[-\uff11:]", "blocks[\u0661:]", "head\n2", "params:a;b"]  # full-width 1, Arabic-Indic 1


@pytest.mark.parametrize("bad", ["blocks[-9:]", "params:nope", ["nope"], 3, *MALFORMED])
def test_bad_specifications_are_refused_with_a_message(bad) -> None:
    with pytest.raises(SelectionError, match="trainable"):
        linearize(small_vit(), bad)


@pytest.mark.parametrize("bad", MALFORMED)
def test_the_api_takes_the_forms_a_recipe_takes_and_no_others(bad: str) -> None:
    """No inner spaces, ASCII digits only: what a recipe's check refuses, the Python API refuses too."""
    with pytest.raises(ValueError):
        written_form(bad)  # a recipe's ``trainable`` check
    assert written_form(" blocks[-1:]\n") == "blocks[-1:]" and names(linearize(small_vit(), " head "))
