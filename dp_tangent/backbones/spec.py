"""A backbone as a value: everything needed to rebuild theta0 exactly, recorded in every component."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn as nn

from .timm_family import create_backbone


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
