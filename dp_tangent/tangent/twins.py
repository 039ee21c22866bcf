"""Tangent twins: parametrised layers evaluated at theta0 whose trainable parameters are the deltas.

A twin keeps the base layer's class (it subclasses it), attribute layout and parameter names, so
Opacus's per-layer grad samplers apply unchanged. A selected parameter ``weight`` becomes

    weight_eff = weight_theta0 + (delta - delta.detach())            (value: theta0, d/d delta: identity)

and, inside a forward-mode dual level (see :func:`tangent_mode`), ``weight_eff`` carries ``delta`` as
its tangent. One forward pass then yields the primal f(x; theta0) and the tangent J(x)·delta, and
reverse-mode autograd through the primal gives J(x)^T v for any seed v: the exact (per-sample)
gradient of a loss of the tangent model with respect to delta. Unselected parameters stay frozen.

New layer types are supported by registration (:func:`register_tangent_layer`), not by ``if`` chains.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.layers import LayerNorm as TimmLayerNorm
from torch.nn.modules.batchnorm import _BatchNorm

from .ops import TangentOps

_DUAL_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("dp_tangent_dual", default=False)

ForwardFn = Callable[["TangentLayer", torch.Tensor], torch.Tensor]
_FORWARDS: dict[type[nn.Module], ForwardFn] = {}
_TWIN_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


@contextlib.contextmanager
def tangent_mode() -> Iterator[None]:
    """Forward-mode dual level in which twins emit tangents: outputs become (f(x; theta0), J(x)·delta).

    Ops without a usable forward derivative are routed to :mod:`dp_tangent.tangent.ops` meanwhile."""
    token = _DUAL_ACTIVE.set(True)
    try:
        with fwAD.dual_level(), TangentOps():
            yield
    finally:
        _DUAL_ACTIVE.reset(token)


def theta0_name(name: str) -> str:
    return f"{name}_theta0"


class TangentLayer(nn.Module):
    """Mixin for twins: ``delta_names`` are the parameters that are linearized (deltas, zero at start)."""

    delta_names: tuple[str, ...] = ()

    def effective(self, name: str) -> torch.Tensor | None:
        """The parameter as the base layer sees it: theta0 in value, delta in gradient and tangent."""
        param = getattr(self, name)
        if name not in self.delta_names:
            return param
        theta0 = getattr(self, theta0_name(name))
        value = theta0 + (param - param.detach()) if torch.is_grad_enabled() and param.requires_grad else theta0
        if _DUAL_ACTIVE.get():
            value = fwAD.make_dual(value, param.detach())
        return value

    def theta0(self, name: str) -> torch.Tensor | None:
        """The parameter's value at theta0 (the linearization point)."""
        return getattr(self, theta0_name(name)) if name in self.delta_names else getattr(self, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return _FORWARDS[self._tangent_base](self, x)

    _tangent_base: type[nn.Module]


def register_tangent_layer(*base_types: type[nn.Module]) -> Callable[[ForwardFn], ForwardFn]:
    """Register ``forward(layer, x)`` for ``base_types``; it must read parameters via ``layer.effective``."""

    def decorator(fn: ForwardFn) -> ForwardFn:
        for base in base_types:
            _FORWARDS[base] = fn
            _TWIN_CLASSES[base] = type(
                f"Tangent{base.__name__}", (TangentLayer, base), {"_tangent_base": base, "__module__": __name__}
            )
        return fn

    return decorator


def twin_class(base: type[nn.Module]) -> type[nn.Module] | None:
    return _TWIN_CLASSES.get(base)


def supported_types() -> tuple[type[nn.Module], ...]:
    return tuple(_TWIN_CLASSES)


def make_twin(module: nn.Module, selected: set[str]) -> nn.Module:
    """Turn ``module`` (in place) into its twin; ``selected`` direct parameter names become zero deltas."""
    cls = _TWIN_CLASSES[type(module)]
    for name, param in list(module.named_parameters(recurse=False)):
        if name in selected:
            module.register_buffer(theta0_name(name), param.detach().clone(), persistent=False)
            setattr(module, name, nn.Parameter(torch.zeros_like(param)))
        else:
            param.requires_grad_(False)
    module.__class__ = cls
    module.delta_names = tuple(n for n, _ in module.named_parameters(recurse=False) if n in selected)
    return module


@register_tangent_layer(nn.Linear)
def _linear(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.effective("weight"), layer.effective("bias"))


@register_tangent_layer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    return layer._conv_forward(x, layer.effective("weight"), layer.effective("bias"))  # type: ignore[attr-defined]


@register_tangent_layer(nn.Embedding)
def _embedding(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    return F.embedding(x, layer.effective("weight"), layer.padding_idx, layer.max_norm,  # type: ignore[arg-type]
                       layer.norm_type, layer.scale_grad_by_freq, layer.sparse)


@register_tangent_layer(nn.LayerNorm, TimmLayerNorm)
def _layer_norm(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, layer.normalized_shape, layer.effective("weight"), layer.effective("bias"), layer.eps)


@register_tangent_layer(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _batch_norm(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    # Always the running statistics, also in train mode (Opacus hooks need train mode; batch
    # statistics would mix examples and break both linearity in delta and per-sample clipping).
    return F.batch_norm(
        x, layer.running_mean, layer.running_var, layer.effective("weight"), layer.effective("bias"),
        False, 0.0, layer.eps,
    )


@register_tangent_layer(BatchNormAct2d)
def _batch_norm_act(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    return layer.act(layer.drop(_batch_norm(layer, x)))  # type: ignore[operator]


def is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm)
