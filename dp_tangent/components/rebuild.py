"""A component's tangent model, rebuilt from its recorded base and checked against theta0's digest."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ..backbones import BackboneSpec, weights_digest
from ..tangent import TangentModel, linearize
from .errors import CompositionError


def tangent_for(meta_base: Mapping[str, Any], base_weights_sha256: str, trainable: str,
                base_model: nn.Module | None = None, dtype: torch.dtype | None = None) -> TangentModel:
    """The components' tangent model, rebuilt from their metadata and checked against their digest."""
    base = base_model if base_model is not None else BackboneSpec.from_dict(meta_base).build()
    if weights_digest(base) != base_weights_sha256:
        raise CompositionError("the base model's weights do not match the components' base_weights_sha256: "
                               "they were linearized at another theta0")
    base = copy.deepcopy(base).eval()
    if dtype is not None:
        base = base.to(dtype)
    with torch.random.fork_rng(devices=[]):  # the probe input is random: leave the caller's stream alone
        return linearize(base, trainable)
