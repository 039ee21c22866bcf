"""Which parameters a tangent model linearizes: the ``trainable`` specification.

Forms (one string form each, recorded verbatim in component metadata):

* ``None`` or ``"all"`` -- every parameter.
* ``"blocks[-K:]"`` (or ``"blocks[i:]"``) -- the last K blocks of the model's block sequence and
  everything after them (final norm, classifier): a suffix of the network. ``"blocks[-1:]"`` is
  TAFT-1, ``"blocks[-7:]"`` TAFT-7. For EfficientNets a block is a stage (``model.blocks[i]``).
* ``"head"`` -- only the classifier (timm's ``pretrained_cfg["classifier"]``): a linear probe.
* ``"params:a,b"`` or a list ``["a", "b"]`` -- parameters whose names start with these prefixes
  (at a ``.`` boundary), e.g. ``["blocks.2.mlp", "head"]``.

Everything not selected stays frozen at theta0. The *cut* is where the frozen prefix ends: the
stem plus the blocks before the first block that holds a selected parameter. When only the classifier
is selected (a linear probe) and the layout allows it (``BlockLayout.pre_logits``), the prefix runs up
to the classifier's input (the pooled pre-logits: cut ``len(blocks) + 1``), so training runs the
classifier alone on them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn as nn

from ..errors import SelectionError
from .layouts import BlockLayout
from .trainable_forms import FORMS, written_form

_BLOCK_SUFFIX = re.compile(r"blocks\[(-?\d+):\]", re.ASCII)


@dataclass(frozen=True)
class Selection:
    spec: str
    names: tuple[str, ...]
    cut: int | None


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _by_prefixes(all_names: list[str], prefixes: Sequence[str], spec: str) -> list[str]:
    for prefix in prefixes:
        if not any(_under(n, prefix) for n in all_names):
            raise SelectionError(f"trainable {spec!r}: no parameter name starts with {prefix!r}")
    return [n for n in all_names if any(_under(n, p) for p in prefixes)]


def _classifier_prefix(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("classifier"):
        return str(cfg["classifier"])
    if isinstance(model, nn.Sequential):
        with_params = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
        if with_params:
            return with_params[-1]
    raise SelectionError("trainable 'head': this model does not name its classifier; give parameter prefixes")


def _cut(model: nn.Module, names: Sequence[str], blocks: list[str], layout: BlockLayout) -> int:
    cut = len(blocks)
    for name in names:
        if any(_under(name, s) for s in layout.stem):
            return -1  # the stem is linearized: no frozen prefix
        for index, block in enumerate(blocks[:cut]):
            if _under(name, block):
                cut = index
                break
    classifier = _classifier_of(model) if cut == len(blocks) and layout.pre_logits else None
    if classifier is not None and all(_under(n, classifier) for n in names):
        return cut + 1  # a linear probe: the prefix runs to the classifier's input
    return cut


def _classifier_of(model: nn.Module) -> str | None:
    """The prefix of the parameters the layout's ``cut = len(blocks) + 1`` leaves in the suffix, if any."""
    try:
        name = _classifier_prefix(model)
        module = model.get_submodule(name)
    except (SelectionError, AttributeError):
        return None
    get_classifier = getattr(model, "get_classifier", None)
    return name if callable(get_classifier) and module is get_classifier() else None


def select(model: nn.Module, trainable: str | Sequence[str] | None, layout: BlockLayout | None) -> Selection:
    """Resolve ``trainable`` to parameter names (model order) and the frozen-prefix cut."""
    all_names = [n for n, _ in model.named_parameters()]
    blocks = layout.block_names(model) if layout else []
    if isinstance(trainable, str):  # the forms a recipe accepts, and no others
        try:
            trainable = written_form(trainable)
        except ValueError as error:
            raise SelectionError(f"trainable {error}") from None
    if trainable is None or trainable == "all":
        spec, names = "all", all_names
    elif isinstance(trainable, str) and (match := _BLOCK_SUFFIX.fullmatch(trainable)):
        if layout is None:
            raise SelectionError(f"trainable {trainable!r}: no block layout is registered for {type(model).__name__}")
        start = int(match.group(1))
        if not -len(blocks) <= start < len(blocks):
            raise SelectionError(f"trainable {trainable!r}: the model has {len(blocks)} blocks")
        start %= len(blocks)
        spec = f"blocks[{start - len(blocks)}:]"
        chosen = blocks[start:]
        in_stem_or_early = [*layout.stem, *blocks[:start]]
        names = [n for n in all_names if any(_under(n, b) for b in chosen)
                 or not any(_under(n, b) for b in in_stem_or_early)]
    elif trainable == "head":
        spec, names = "head", _by_prefixes(all_names, [_classifier_prefix(model)], "head")
    elif isinstance(trainable, str) and trainable.startswith("params:"):
        prefixes = [p.strip() for p in trainable[len("params:"):].split(",") if p.strip()]
        spec, names = "params:" + ",".join(prefixes), _by_prefixes(all_names, prefixes, trainable)
    elif (isinstance(trainable, Sequence) and not isinstance(trainable, str)
          and all(isinstance(p, str) for p in trainable)):
        spec, names = "params:" + ",".join(trainable), _by_prefixes(all_names, list(trainable), str(list(trainable)))
    else:
        raise SelectionError(f"trainable {trainable!r} is not understood; use {FORMS}")
    if not names:
        raise SelectionError(f"trainable {spec!r} selects no parameter")
    cut = _cut(model, names, blocks, layout) if layout else -1
    return Selection(spec=spec, names=tuple(names), cut=None if cut < 0 else cut)
