"""Multilayer perceptrons for tabular data: the ``mlp`` backbone family.

``MLP(in_features, hidden, num_classes)`` is ``block0 .. blockK`` (each Linear then an activation)
and ``head`` (Linear): an ``nn.Sequential``, so ``trainable: head`` is a linear probe on the last
hidden layer and ``blocks[-K:]`` the last K children (the head counts as one).

theta0 is either weights pretrained on *public* data (``checkpoint=PATH``, written by
:func:`pretrain_mlp` and :func:`save_mlp`, e.g. through ``dp-tangent pretrain``) or, with no
public data, a random initialisation seeded by ``head_seed``. A random theta0 carries no
knowledge: the tangent model f(x;θ0)+J(x)·δ is then a random-features model of the inputs, and
the component's metadata says so (``theta0``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..errors import WeightsError
from ..io import atomic_write_bytes, sha256_file
from .families import BackboneFamily, register_family
from .weights import load_weights, read_state_dict

if TYPE_CHECKING:
    from .spec import BackboneSpec

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
OPTIONS = ("in_features", "hidden", "activation")
DEFAULT_HIDDEN = (64, 64)
#: Most parameters an MLP backbone may have (4 GB of float32): a table model is far smaller, and a release bundle's
#: spec, built by its recipient, must not be able to ask for all the memory there is.
MAX_PARAMETERS = 1_000_000_000
#: Most hidden layers (each costs a module however narrow: a spec of millions would exhaust memory as surely).
MAX_LAYERS = 1_000


class MLP(nn.Sequential):
    """in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes; each hidden layer Linear + activation."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, activation: str = "gelu") -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for k, size in enumerate(hidden):
            layers[f"block{k}"] = nn.Sequential(nn.Linear(width, size), ACTIVATIONS[activation]())
            width = size
        layers["head"] = nn.Linear(width, num_classes)
        super().__init__(layers)
        self.in_features, self.num_classes = in_features, num_classes


def _options(spec: "BackboneSpec") -> tuple[int, tuple[int, ...], str]:
    options = dict(spec.options)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"mlp backbone: unknown option {unknown[0]!r} (options: {', '.join(OPTIONS)})")
    in_features = options.get("in_features")
    if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
        raise ValueError(f"mlp backbone: options.in_features must be a positive integer (the number of feature "
                         f"columns), got {in_features!r}")
    hidden = options.get("hidden", DEFAULT_HIDDEN)
    if not isinstance(hidden, (list, tuple)) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0
                                                         for h in hidden):
        raise ValueError(f"mlp backbone: options.hidden must be a list of positive layer widths, got {hidden!r}")
    activation = options.get("activation", "gelu")
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp backbone: options.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return in_features, tuple(hidden), str(activation)


def check_mlp(spec: "BackboneSpec") -> None:
    """A one-line ``ValueError`` for an MLP spec that cannot be built (nothing is built)."""
    _options(spec)
    if spec.num_classes is None or spec.num_classes < 2:
        raise ValueError("mlp backbone: num_classes must be given (at least 2)")
    in_features, hidden, _ = _options(spec)
    if len(hidden) > MAX_LAYERS:
        raise ValueError(f"mlp backbone: {len(hidden):,} hidden layers is more than the {MAX_LAYERS:,} an mlp here "
                         "may have")
    widths = [in_features, *hidden, spec.num_classes]
    size = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
    if size > MAX_PARAMETERS:  # checked before anything is allocated: a bundle's spec is a stranger's input
        raise ValueError(f"mlp backbone: {size:,} parameters is more than the {MAX_PARAMETERS:,} an mlp here may have")
    if spec.pretrained:
        raise ValueError("mlp backbone: no pretrained weights ship with it; pretrain on public data "
                         "(dp-tangent pretrain) and give checkpoint: PATH, or leave theta0 random")


def build_mlp(spec: "BackboneSpec") -> MLP:
    """theta0 of ``spec``: the checkpoint's weights (loaded strictly), or a random init seeded by ``head_seed``."""
    try:
        check_mlp(spec)
        in_features, hidden, activation = _options(spec)
    except ValueError as err:
        raise WeightsError(str(err)) from None
    with torch.random.fork_rng(devices=[]):  # the same theta0 on every build, in every process
        torch.manual_seed(spec.head_seed)
        model = MLP(in_features, hidden, int(spec.num_classes), activation)  # type: ignore[arg-type]
    if spec.checkpoint is not None:
        load_weights(model, read_state_dict(spec.checkpoint), str(spec.checkpoint))
    return model.eval()


def describe_mlp(spec: "BackboneSpec") -> str:
    if spec.checkpoint is not None:  # its weights are identified by the component's base_weights_sha256
        return f"pretrained weights from checkpoint {spec.checkpoint} (e.g. dp-tangent pretrain on public data)"
    return (f"random initialisation (seed {spec.head_seed}), not pretrained: no public data was given, so "
            "theta0 carries no knowledge and the tangent model is a random-features model")


def pretrain_mlp(spec: "BackboneSpec", inputs: torch.Tensor, targets: torch.Tensor, *, epochs: int = 100,
                 lr: float = 1e-2, batch_size: int = 64, seed: int = 0) -> MLP:
    """theta0 for ``spec`` trained (non-privately: the data must be public) with Adam on cross-entropy,
    starting from the spec's random initialisation; returns the network in eval mode.

    Only for *public* inputs: nothing here is private, accounted or logged.
    """
    from dataclasses import replace

    model = build_mlp(replace(spec, checkpoint=None))
    if inputs.ndim != 2 or inputs.shape[1] != model.in_features:
        raise WeightsError(f"public inputs of shape {tuple(inputs.shape)} do not fit an MLP with "
                           f"{model.in_features} inputs")
    if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= model.num_classes):
        raise WeightsError(f"public labels must be in [0, {model.num_classes})")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), batch_size):
            index = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(inputs[index]), targets[index]).backward()
            optimizer.step()
    return model.eval()


def save_mlp(model: MLP, path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``model``'s weights as a safetensors checkpoint (with ``metadata``, e.g. the public table it was
    pretrained on), atomically; returns the file's sha256."""
    from safetensors.torch import save

    path = Path(path)
    atomic_write_bytes(path, save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, metadata))
    return sha256_file(path)


register_family(BackboneFamily("mlp", build_mlp, describe_mlp, check_mlp, input_rank=1), built_in=True)
