"""Backbone families: how a :class:`~dp_tangent.backbones.spec.BackboneSpec` is built, by registration.

A family turns a spec into theta0 (a network in eval mode) and says where theta0 came from in one
line (recorded with every component). ``timm`` (image models) and ``mlp`` (tabular networks)
register themselves; a new family calls :func:`register_family`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

import torch.nn as nn

from ..errors import WeightsError

if TYPE_CHECKING:
    from .spec import BackboneSpec


@dataclass(frozen=True)
class BackboneFamily:
    """``build(spec)``: theta0 in eval mode; ``describe(spec)``: where its weights came from, one line;
    ``check(spec)``: a one-line ``ValueError`` for a spec the family cannot build, without building it
    (recipes call it when they are read); ``check_name(name)`` the same for the name alone;
    ``input_rank``: the dimensions of one input (3 for (C, H, W) images, 1 for a feature vector);
    ``token_ids``: its inputs are integer token ids (int64), not float32 values."""

    name: str
    build: Callable[["BackboneSpec"], nn.Module]
    describe: Callable[["BackboneSpec"], str]
    check: Callable[["BackboneSpec"], None] = lambda spec: None
    check_name: Callable[[str], None] = lambda name: None
    input_rank: int = 3
    token_ids: bool = False


_FAMILIES: dict[str, BackboneFamily] = {}


#: The families that ship with the package, by the module that registers each: imported when first named, so that
#: a tabular job never imports timm (and torchvision through it), nor an image job transformers.
BUILT_IN = {"timm": ".timm_family", "mlp": ".mlp_family", "transformers": ".hf_family"}


def register_family(family: BackboneFamily, built_in: bool = False) -> BackboneFamily:
    """Make ``family`` known by its name; a built-in one (its module imported when first named) does not replace
    a family registered under that name before."""
    if built_in and family.name in _FAMILIES:
        return _FAMILIES[family.name]
    _FAMILIES[family.name] = family
    return family


def family(name: str) -> BackboneFamily:
    """The registered family ``name``; an unknown one is a one-line error listing those registered."""
    if name not in _FAMILIES and name in BUILT_IN:
        import_module(BUILT_IN[name], __package__)  # registers it
    try:
        return _FAMILIES[name]
    except KeyError:
        raise WeightsError(f"unknown backbone family {name!r}; registered: {', '.join(family_names())}") from None


def family_names() -> tuple[str, ...]:
    return tuple(sorted(set(_FAMILIES) | set(BUILT_IN)))
