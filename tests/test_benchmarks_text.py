"""The text benchmark's core at tiny size: the DP-LoRA baseline trains what it says, the sweep runs
every method at one guarantee, and the section shows the JSON's numbers. Offline, CPU only."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks import _utility as U
from benchmarks import utility_text
from benchmarks._baselines import trained_parameters
from benchmarks._lora import LoRASuffix

TINY = 80  # messages


@pytest.fixture(scope="module")
def minilm() -> U.Prepared:
    return utility_text.prepare(max_records=TINY)


def test_lora_adapts_the_selected_layers_linear_maps_and_trains_them_with_the_head(minilm: U.Prepared) -> None:
    module = minilm.module("lora")
    assert isinstance(module, LoRASuffix)
    trained = {n for n, p in module.net.named_parameters() if p.requires_grad}
    last = minilm.base.block_names()[-1]
    assert module.adapted and all(name.startswith(last + ".") for name in module.adapted)
    assert {n.rsplit(".lora_", 1)[0] for n in trained if ".lora_" in n} == set(module.adapted)
    assert {n for n in trained if ".lora_" not in n} == {"head.weight", "head.bias"}
    assert sum(p.numel() for p in trained_parameters(module)) < sum(p.numel() for p in minilm.tangent.deltas()) / 10
    again = minilm.module("lora")  # a fixed start: every run begins from the same adapters
    for (name, p), (_, q) in zip(module.net.named_parameters(), again.net.named_parameters()):
        assert torch.equal(p, q), name
    with torch.no_grad():  # B = 0 at the start: LoRA's network is theta0's, as is the tangent model's
        h = minilm.inputs("lora", "test")[:8]
        torch.testing.assert_close(module(h), minilm.module("nonlinear")(h), rtol=1e-5, atol=1e-5)


def test_text_sweep_gives_every_method_the_same_guarantee_and_the_section_its_numbers(
        minilm: U.Prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = dataclasses.replace(utility_text.QUICK, epsilons=(3.0,), seeds=(0,), batch_size=16, max_records=TINY)
    monkeypatch.setattr(utility_text, "QUICK", sweep)
    monkeypatch.setattr(utility_text, "prepare", lambda max_records=None: minilm)
    monkeypatch.setattr(utility_text, "TIMING_ROUNDS", 2)
    results = utility_text.run(True)
    entry = results["models"][utility_text.MODEL]
    assert set(entry["runs"]) == set(utility_text.METHODS)
    runs = [r for by_eps in entry["runs"].values() for r in by_eps["3.0"]]
    assert len({(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in runs}) == 1
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["seconds_per_epoch"] > 0 for r in runs)
    assert entry["trainable_parameters"]["lora"] < entry["trainable_parameters"]["nonlinear"]
    assert entry["trainable_parameters"]["tangent"] == entry["trainable_parameters"]["nonlinear"]
    timing = entry["timing"]
    assert [list(row) for row in timing["rounds"]] == [list(utility_text.METHODS),  # the order rotates
                                                       list(utility_text.METHODS[1:]) + ["tangent"]]
    assert all(t["seconds_per_epoch"] > 0 for t in timing["median"].values())
    results.update(wall_seconds=1.0, load_average_at_start=0.0, load_average_at_end=0.0, machine={
        "cpu": "test", "usable_cpus": 2, "git": "test", "versions": {"torch": "x", "opacus": "x", "timm": "x"}})
    text = utility_text.render(results)
    for method in utility_text.METHODS:
        assert f"| {method} | {entry['trainable_parameters'][method]:,} | " \
               f"{U.pct(U.accuracies(entry, method, 3.0))} |" in text
    assert f"{100 * entry['majority_class_accuracy']:.1f}%" in text
