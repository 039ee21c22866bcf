"""A backbone as a value: everything needed to rebuild theta0 exactly, recorded in every component.

``family`` names how it is built (:mod:`~dp_tangent.backbones.families`: ``timm`` by default,
``mlp``, ...); ``options`` are that family's build options. A timm spec's dict is the same as before
families existed, so components written then still read back equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn as nn

from .families import family  # which imports a built-in family's module when it is first named


def _frozen(value: object) -> object:
    """Lists (as JSON gives them back) as tuples, so that equal specs compare equal."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: object) -> object:
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild theta0 exactly (recorded in every component)."""

    name: str
    pretrained: bool | str = False
    checkpoint: str | None = None
    num_classes: int | None = None
    head_seed: int = 0
    timm_kwargs: tuple[tuple[str, object], ...] = ()
    family: str = "timm"
    options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(sorted((str(k), _frozen(v)) for k, v in dict(self.options).items())))

    def build(self) -> nn.Module:
        return family(self.family).build(self)

    def describe(self) -> str:
        """Where theta0's weights come from, in one line (e.g. "random initialisation, seed 0")."""
        return family(self.family).describe(self)

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"name": self.name, "pretrained": self.pretrained, "checkpoint": self.checkpoint,
                                   "num_classes": self.num_classes, "head_seed": self.head_seed,
                                   "timm_kwargs": dict(self.timm_kwargs)}
        if self.family != "timm":
            data.update(family=self.family, options={k: _thawed(v) for k, v in self.options},
                        theta0=self.describe())
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "BackboneSpec":
        kwargs = dict(data.get("timm_kwargs") or {})  # type: ignore[call-overload]
        return cls(name=str(data["name"]), pretrained=data.get("pretrained", False),  # type: ignore[arg-type]
                   checkpoint=data.get("checkpoint"), num_classes=data.get("num_classes"),  # type: ignore[arg-type]
                   head_seed=int(data.get("head_seed", 0)), timm_kwargs=tuple(sorted(kwargs.items())),  # type: ignore[arg-type]
                   family=str(data.get("family", "timm")),
                   options=tuple(dict(data.get("options") or {}).items()))  # type: ignore[call-overload]
