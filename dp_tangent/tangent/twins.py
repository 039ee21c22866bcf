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

import collections
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

from . import depthwise
from .ops import TangentOps

_DUAL_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("dp_tangent_dual", default=False)

ForwardFn = Callable[["TangentLayer", torch.Tensor], torch.Tensor]
_FORWARDS: dict[type[nn.Module], ForwardFn] = {}
_TWIN_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}
# tangent(layer, x, dx, y) -> J·delta at the layer's output y (None: zero), from the primal input x and its tangent dx
TangentFn = Callable[["TangentLayer", torch.Tensor, "torch.Tensor | None", torch.Tensor], "torch.Tensor | None"]
_TANGENTS: dict[type[nn.Module], TangentFn] = {}
_PRIMALS: contextvars.ContextVar["PrimalReuse | None"] = contextvars.ContextVar("dp_tangent_primals", default=None)


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
        reuse = _PRIMALS.get()
        if reuse is not None and self._tangent_base in _TANGENTS:
            return reuse.forward(self, x)
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


def register_tangent_rule(*base_types: type[nn.Module]) -> Callable[[TangentFn], TangentFn]:
    """Register ``tangent(layer, x, dx, y)`` for the twins of ``base_types``: the output's tangent J·delta alone,
    so that a dual pass after a recorded pass (:class:`PrimalReuse`) skips the layer's primal product."""

    def decorator(fn: TangentFn) -> TangentFn:
        for base in base_types:
            _TANGENTS[base] = fn
        return fn

    return decorator


class PrimalReuse:
    """One forward's twins run their primal product once instead of twice.

    :meth:`recording`: the plain pass at theta0 keeps each registered twin's (input, output) by reference
    (autograd keeps most of them anyway). :meth:`replaying`: in the dual pass that follows, a twin whose
    primal input equals the recorded one (same values, neither modified in place since) takes the recorded
    output as its primal and computes only the tangent by its rule; any other call runs in full. The
    recorded pass is what the backward runs through, so this changes where the value's primal products
    come from, never the gradient (nor, in Gram mode, the clipping bound)."""

    def __init__(self) -> None:
        self._calls: dict[int, collections.deque] = {}
        self._replaying = False
        self.reused = 0
        self.recomputed = 0

    @contextlib.contextmanager
    def _installed(self) -> Iterator["PrimalReuse"]:
        token = _PRIMALS.set(self)
        try:
            yield self
        finally:
            _PRIMALS.reset(token)

    def recording(self) -> contextlib.AbstractContextManager["PrimalReuse"]:
        return self._installed()

    @contextlib.contextmanager
    def replaying(self) -> Iterator["PrimalReuse"]:
        self._replaying = True
        try:
            with self._installed():
                yield self
        finally:
            self._calls.clear()

    def forward(self, layer: "TangentLayer", x: torch.Tensor) -> torch.Tensor:
        """``layer(x)`` while recording or replaying."""
        full = _FORWARDS[layer._tangent_base]
        if not self._replaying:
            y = full(layer, x)
            x0, y0 = x.detach(), y.detach()  # share the version counters: in-place edits stay visible
            self._calls.setdefault(id(layer), collections.deque()).append((x0, x0._version, y0, y0._version))
            return y
        queue = self._calls.get(id(layer))
        primal, tangent = fwAD.unpack_dual(x)
        if queue:
            x0, x_version, y0, y_version = queue.popleft()
            if (x0._version == x_version and y0._version == y_version and x0.shape == primal.shape
                    and x0.dtype == primal.dtype and torch.equal(x0, primal)):
                self.reused += 1
                dy = _TANGENTS[layer._tangent_base](layer, primal, tangent, y0)
                return y0 if dy is None else fwAD.make_dual(y0, dy)
        self.recomputed += 1
        return full(layer, x)


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


@register_tangent_rule(nn.Linear)
def _linear_tangent(layer: TangentLayer, x: torch.Tensor, dx: torch.Tensor | None,
                    y: torch.Tensor) -> torch.Tensor | None:
    """d(W x + b) = dW x + db + W0 dx, the products accumulated in one buffer."""
    weight, bias = _deltas(layer)
    terms = ([(x, weight)] if weight is not None else []) + ([(dx, layer.theta0("weight"))] if dx is not None else [])
    if not terms:
        return None if bias is None else bias.expand_as(y)
    flat = [(a.reshape(-1, a.shape[-1]), w.t()) for a, w in terms]
    out = flat[0][0] @ flat[0][1] if bias is None else torch.addmm(bias, *flat[0])
    for a, w in flat[1:]:
        out.addmm_(a, w)
    return out.view(y.shape)


def _deltas(layer: TangentLayer) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(weight, bias) deltas of ``layer`` as tangents (None where that parameter is not linearized)."""
    return tuple(getattr(layer, n).detach() if n in layer.delta_names else None  # type: ignore[return-value]
                 for n in ("weight", "bias"))


@register_tangent_layer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    weight, bias = layer.effective("weight"), layer.effective("bias")
    if not _DUAL_ACTIVE.get() and depthwise.applies(layer, x, weight):
        return depthwise.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation)  # type: ignore[arg-type]
    return layer._conv_forward(x, weight, bias)  # type: ignore[attr-defined]


@register_tangent_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_tangent(layer: TangentLayer, x: torch.Tensor, dx: torch.Tensor | None,
                  y: torch.Tensor) -> torch.Tensor | None:
    """d conv(x; W, b) = conv(x; dW, db) + conv(dx; W0)."""
    weight, bias = _deltas(layer)
    conv = layer._conv_forward  # type: ignore[attr-defined]
    if weight is not None:
        out = conv(x, weight, bias)
        return out if dx is None else out.add_(conv(dx, layer.theta0("weight"), None))
    if dx is not None:
        return conv(dx, layer.theta0("weight"), bias)
    return None if bias is None else bias.view((1, -1) + (1,) * (y.dim() - 2)).expand_as(y)


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
