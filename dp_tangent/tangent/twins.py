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
import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ..lazy import run_pending, when_imported
from . import depthwise, pointwise
from .ops import TangentOps, overridden, register_op_override

_DUAL_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("dp_tangent_dual", default=False)

ForwardFn = Callable[["TangentLayer", torch.Tensor], torch.Tensor]
_FORWARDS: dict[type[nn.Module], ForwardFn] = {}
_TWIN_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}
# tangent(layer, x, dx, y) -> J·delta at the layer's output y (None: zero), from the primal input x and its tangent dx
TangentFn = Callable[["TangentLayer", torch.Tensor, "torch.Tensor | None", torch.Tensor], "torch.Tensor | None"]
_TANGENTS: dict[type[nn.Module], TangentFn] = {}
# backward(layer, x, weight, grad_out, needs) -> (dL/dx, dL/dweight, dL/dbias) of y = layer(x) at theta0, each None
# where ``needs`` (x, weight, bias) says it is not wanted; ``weight`` is the weight's value at theta0
BackwardFn = Callable[["TangentLayer", torch.Tensor, torch.Tensor, torch.Tensor, tuple[bool, bool, bool]],
                      tuple["torch.Tensor | None", "torch.Tensor | None", "torch.Tensor | None"]]
# replayable(layer, x) -> whether the rule covers this call (e.g. not a convolution with reflect padding)
_BACKWARDS: dict[type[nn.Module], tuple[BackwardFn, Callable[["TangentLayer", torch.Tensor], bool]]] = {}
# activation_backward(grad_out, x, *args, **kwargs) -> dL/dx of an elementwise y = fn(x, *args, **kwargs)
ActivationBackwardFn = Callable[..., torch.Tensor]
# op backward(grad_out, inputs, needs, args, kwargs) -> dL/d(each tensor input) of y = fn(*inputs, *args, **kwargs)
# at the recorded values (None where ``needs`` says it is not wanted)
OpBackwardFn = Callable[..., tuple["torch.Tensor | None", ...]]
_PRIMALS: contextvars.ContextVar["PrimalReuse | None"] = contextvars.ContextVar("dp_tangent_primals", default=None)


@functools.cache
def load_jvp_decompositions() -> None:
    """Load torch's forward-mode decompositions, as torch does at a process's first dual tensor, without the
    FutureWarning they raise (``torch.jit.script`` is deprecated, in torch's own module): every user's first Python
    run printed it, about code that is not theirs nor dp-tangent's. Only that warning is silenced, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
        load = getattr(fwAD, "_maybe_load_decompositions", None)  # torch's own loader (2.x); else torch loads them
        if load is not None:
            load()


@contextlib.contextmanager
def tangent_mode() -> Iterator[None]:
    """Forward-mode dual level in which twins emit tangents: outputs become (f(x; theta0), J(x)·delta).

    Ops without a usable forward derivative are routed to :mod:`dp_tangent.tangent.ops` meanwhile."""
    load_jvp_decompositions()
    token = _DUAL_ACTIVE.set(True)
    try:
        with fwAD.dual_level(), TangentOps():
            yield
    finally:
        _DUAL_ACTIVE.reset(token)


def theta0_name(name: str) -> str:
    return f"{name}_theta0"


def effective_value(theta0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """theta0 in value, ``delta`` in gradient (theta0 + (delta - delta.detach()) while delta is trained) and, in
    :func:`tangent_mode`, in tangent."""
    trained = torch.is_grad_enabled() and delta.requires_grad
    value = theta0 + (delta - delta.detach()) if trained else theta0
    return fwAD.make_dual(value, delta.detach()) if _DUAL_ACTIVE.get() else value


class TangentLayer(nn.Module):
    """Mixin for twins: ``delta_names`` are the parameters that are linearized (deltas, zero at start)."""

    delta_names: tuple[str, ...] = ()

    def effective(self, name: str) -> torch.Tensor | None:
        """The parameter as the base layer sees it: theta0 in value, delta in gradient and tangent."""
        param = getattr(self, name)
        if name not in self.delta_names:
            return param
        return effective_value(getattr(self, theta0_name(name)), param)

    def theta0(self, name: str) -> torch.Tensor | None:
        """The parameter's value at theta0 (the linearization point)."""
        return getattr(self, theta0_name(name)) if name in self.delta_names else getattr(self, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        reuse = _PRIMALS.get()
        if reuse is not None and self._tangent_base in _BACKWARDS:
            return reuse.forward(self, x)
        return _dual_forward(self, x)

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
    given the primal input x, its tangent dx and the primal output y. The dual pass then computes y once at
    theta0 and the tangent by this rule (its products accumulated in one buffer) instead of PyTorch's forward
    derivatives, which make a tensor per product."""

    def decorator(fn: TangentFn) -> TangentFn:
        for base in base_types:
            _TANGENTS[base] = fn
        return fn

    return decorator


def register_backward_rule(*base_types: type[nn.Module],
                           replayable: Callable[["TangentLayer", torch.Tensor], bool] | None = None,
                           ) -> Callable[[BackwardFn], BackwardFn]:
    """Register ``backward(layer, x, weight, grad_out, needs)`` for the twins of ``base_types``: the layer's
    vector-Jacobian product at theta0, so that a plain pass after a dual pass (:class:`PrimalReuse`) builds its
    graph around the dual pass's primal output instead of computing it again. ``replayable(layer, x)``, if
    given, says which calls the rule covers (the others run in full)."""

    def decorator(fn: BackwardFn) -> BackwardFn:
        for base in base_types:
            _BACKWARDS[base] = (fn, replayable or _every_call)
        return fn

    return decorator


def every_call(inputs: tuple[torch.Tensor, ...], args: tuple, kwargs: dict) -> bool:
    """An :class:`OpReplay` that covers every call of its function."""
    return True


@dataclasses.dataclass(frozen=True)
class OpReplay:
    """How the plain pass after a dual pass replays calls of a function (:class:`PrimalReuse`): ``backward`` is
    its vector-Jacobian product (see ``OpBackwardFn``), ``inputs`` the number of leading positional arguments that
    are tensors, ``applies(inputs, args, kwargs)`` which calls it covers (the others run in full). The graph keeps
    the inputs for the backward, as the function's own backward would."""

    backward: OpBackwardFn
    inputs: int = 1
    applies: Callable[[tuple[torch.Tensor, ...], tuple, dict], bool] = every_call


_OP_REPLAYS: dict[Callable[..., torch.Tensor], OpReplay] = {}


def register_op_replay(*functions: Callable[..., torch.Tensor], rule: OpReplay) -> None:
    """Replay the calls of ``functions`` in the plain pass that follows a dual pass: a call whose tensor inputs
    and other arguments equal the dual pass's call returns its output (:class:`PrimalReuse`), and the backward
    runs ``rule.backward`` on the inputs. Only for deterministic functions without state (not dropout),
    whose other arguments are plain values; it wraps any override the function already has
    (:func:`~dp_tangent.tangent.ops.register_op_override`), which still runs every call not replayed."""
    for fn in functions:
        _OP_REPLAYS[fn] = rule
        register_op_override(fn)(_replay_impl(fn, overridden(fn) or fn))


def register_activation_backward(*functions: Callable[..., torch.Tensor],
                                 ) -> Callable[[ActivationBackwardFn], ActivationBackwardFn]:
    """Register ``backward(grad_out, x, *args, **kwargs)``, the vector-Jacobian product of each elementwise
    function of ``functions`` (e.g. ``F.gelu``), so that the plain pass after a dual pass returns the dual pass's
    fn(x) instead of computing it again (:func:`register_op_replay`); the backward then runs this rule on x. Only
    for deterministic functions without state (not dropout), whose other arguments are plain values (a call is
    replayed only with equal ones)."""

    def decorator(backward: ActivationBackwardFn) -> ActivationBackwardFn:
        def rule(grad_out: torch.Tensor, inputs: tuple[torch.Tensor, ...], needs: tuple[bool, ...], args: tuple,
                 kwargs: dict) -> tuple[torch.Tensor]:
            return (backward(grad_out, inputs[0], *args, **kwargs),)

        register_op_replay(*functions, rule=OpReplay(rule))
        return backward

    return decorator


def _replay_impl(fn: Callable[..., torch.Tensor], inner: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    count = _OP_REPLAYS[fn].inputs

    def impl(*args: object, **kwargs: object) -> torch.Tensor:
        reuse = _PRIMALS.get()
        if reuse is None or torch._C._are_functorch_transforms_active() or len(args) < count:  # fn(input=x): in full
            return inner(*args, **kwargs)
        return reuse.op(fn, inner, args[:count], args[count:], kwargs)  # type: ignore[arg-type]

    return impl


def _every_call(layer: "TangentLayer", x: torch.Tensor) -> bool:
    return True


class _Replayed(torch.autograd.Function):
    """y = layer(x) at theta0, its value ``recorded`` by the dual pass; the backward is the layer's own rule at
    theta0. ``weight`` and ``bias`` are the layer's parameters (the deltas where linearized): the gradient goes
    to them directly, as through weight_eff = theta0 + (delta - delta.detach()), without making weight_eff."""

    @staticmethod
    def forward(ctx, layer: "TangentLayer", recorded: list[torch.Tensor], x: torch.Tensor,  # noqa: ANN001
                weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.layer = layer
        ctx.save_for_backward(x)
        return recorded.pop().detach()  # the list hides the tensor from autograd: not an input, so not a view of one

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        rule, _ = _BACKWARDS[layer._tangent_base]
        return (None, None, *rule(layer, x, layer.theta0("weight"), grad_out, tuple(ctx.needs_input_grad[2:5])))


class _ReplayedOp(torch.autograd.Function):
    """y = fn(*inputs, *args, **kwargs), its value ``recorded`` by the dual pass; the backward is the function's
    registered rule (:func:`register_op_replay`) on the inputs, which it keeps as fn's own backward would."""

    @staticmethod
    def forward(ctx, rule: OpReplay, recorded: list[torch.Tensor], args: tuple, kwargs: dict,  # noqa: ANN001
                *inputs: torch.Tensor) -> torch.Tensor:
        ctx.rule, ctx.args, ctx.kwargs = rule, args, kwargs
        ctx.save_for_backward(*inputs)
        return recorded.pop().detach()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        rule, saved = ctx.rule, ctx.saved_tensors
        grads = rule.backward(grad_out, saved, tuple(ctx.needs_input_grad[4:]), ctx.args, ctx.kwargs)
        return (None, None, None, None, *grads)


class PrimalReuse:
    """One forward's linear and convolution twins run their primal product once instead of twice, and so do the
    functions with a registered replay (:func:`register_op_replay`: GELU).

    :meth:`recording`: in the dual pass, each registered twin's primal input and output are kept by reference
    (the plain pass's graph keeps most of them anyway). :meth:`replaying`: in the plain pass at theta0 that
    follows, a twin whose input equals the recorded primal input (same values, neither recorded tensor modified
    in place since) returns the recorded output through :class:`_Replayed`, whose backward is the layer's own
    (:func:`register_backward_rule`); any other call, and any call under ``torch.func`` transforms, runs in full.
    The gradient is the layer's vector-Jacobian product at theta0 either way, so the reuse changes where the
    recorded graph's values come from (a rounding of the same product), never the gradient's formula, nor the
    value f_lin, which is the dual pass's. The dual pass runs before the graph exists, so its transient
    tangents never add to the graph's tensors."""

    def __init__(self) -> None:
        self._calls: dict[int, collections.deque] = {}
        self._ops: dict[Callable[..., torch.Tensor], collections.deque] = {}
        self._replaying = False
        self.reused = 0
        self.recomputed = 0
        self.ops_reused: collections.Counter[str] = collections.Counter()  # by function name

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
            self._ops.clear()

    def forward(self, layer: "TangentLayer", x: torch.Tensor) -> torch.Tensor:
        """``layer(x)`` while recording or replaying."""
        full = _FORWARDS[layer._tangent_base]
        if not self._replaying:
            y = _dual_forward(layer, x)
            self._calls.setdefault(id(layer), collections.deque()).append(_Recorded.of((x,), y))
            return y
        queue = self._calls.get(id(layer))
        if queue:
            recorded = queue.popleft()
            _, replayable = _BACKWARDS[layer._tangent_base]
            if (not torch._C._are_functorch_transforms_active() and replayable(layer, x) and recorded.matches((x,))):
                self.reused += 1
                return _Replayed.apply(layer, [recorded.y], x, layer.weight, layer.bias)
        self.recomputed += 1
        with _unseen_by_reuse():
            return full(layer, x)

    def op(self, fn: Callable[..., torch.Tensor], inner: Callable[..., torch.Tensor], inputs: tuple,
           args: tuple, kwargs: dict) -> torch.Tensor:
        """``inner(*inputs, *args, **kwargs)`` for a function with a registered replay: recorded in the dual pass
        (computed there as usual), the recorded value in the plain pass when its inputs are the recorded ones."""
        rule = _OP_REPLAYS[fn]
        if not (all(isinstance(t, torch.Tensor) for t in inputs) and _plain_values(args, kwargs)
                and rule.applies(inputs, args, kwargs)):
            return inner(*inputs, *args, **kwargs)
        if not self._replaying:
            y = inner(*inputs, *args, **kwargs)
            self._ops.setdefault(fn, collections.deque()).append((_Recorded.of(inputs, y), args, kwargs))
            return y
        queue = self._ops.get(fn)
        if queue:
            recorded, args0, kwargs0 = queue.popleft()
            if args0 == args and kwargs0 == kwargs and recorded.matches(inputs):
                self.ops_reused[fn.__name__] += 1
                return _ReplayedOp.apply(rule, [recorded.y], args, kwargs, *inputs)
        return inner(*inputs, *args, **kwargs)


def _plain_values(args: tuple, kwargs: dict) -> bool:
    """Whether a call's other arguments are plain values (compared by ``==``), no tensors."""
    return not any(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values()))


class _Recorded:
    """A dual-pass call's primal inputs and output, and their versions then.

    Detached primals: they share the version counters (in-place edits stay visible) but, unlike the views
    ``unpack_dual`` returns, do not keep the dual tensors, and so their tangents, alive."""

    __slots__ = ("xs", "x_versions", "y", "y_version")

    def __init__(self, xs: tuple[torch.Tensor, ...], y: torch.Tensor) -> None:
        self.xs, self.y = xs, y
        self.x_versions, self.y_version = tuple(x._version for x in xs), y._version

    @classmethod
    def of(cls, xs: tuple[torch.Tensor, ...], y: torch.Tensor) -> "_Recorded":
        """The primals of the dual pass's inputs ``xs`` and output ``y``."""
        return cls(tuple(fwAD.unpack_dual(x).primal.detach() for x in xs), fwAD.unpack_dual(y).primal.detach())

    def matches(self, xs: tuple[torch.Tensor, ...]) -> bool:
        """Whether the plain pass's inputs ``xs`` are the recorded inputs, no recorded tensor edited in place
        since: their values compared last, and only where an input is not the recorded memory itself."""
        return (len(xs) == len(self.xs) and self.y._version == self.y_version
                and all(r._version == v for r, v in zip(self.xs, self.x_versions))
                and all(r.shape == x.shape and r.dtype == x.dtype for r, x in zip(self.xs, xs))
                and all(_same_values(r, x) for r, x in zip(self.xs, xs)))


def _same_values(recorded: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``x`` holds the recorded primal input's values (the caller has checked shape, dtype and that the
    recorded tensor was not modified in place): the same memory (a replayed output feeding the next layer) or
    equal values (an input the plain pass computed again)."""
    return ((recorded.data_ptr() == x.data_ptr() and recorded.stride() == x.stride() and recorded.device == x.device)
            or torch.equal(recorded, x.detach()))


def _dual_forward(layer: "TangentLayer", x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; in the dual pass by the layer's tangent rule where it has one (the primal at theta0, then
    the tangent's products accumulated in one buffer: fewer transient tensors than PyTorch's forward
    derivatives), else PyTorch's forward derivatives."""
    rule = _TANGENTS.get(layer._tangent_base)
    with _unseen_by_reuse():
        if rule is None or not _DUAL_ACTIVE.get():
            return _FORWARDS[layer._tangent_base](layer, x)
        primal, tangent = fwAD.unpack_dual(x)
        token = _DUAL_ACTIVE.set(False)
        try:
            y = _FORWARDS[layer._tangent_base](layer, primal)  # theta0's parameters, no dual weights
        finally:
            _DUAL_ACTIVE.reset(token)
        dy = rule(layer, primal, tangent, y)
    return y if dy is None else fwAD.make_dual(y, dy)


@contextlib.contextmanager
def _unseen_by_reuse() -> Iterator[None]:
    """Calls inside a twin (its forward, its tangent rule's products) are not the network's own: the other pass
    may not make them (a replayed twin makes none), so recording them would shift the replayed calls."""
    token = _PRIMALS.set(None)
    try:
        yield
    finally:
        _PRIMALS.reset(token)


@register_activation_backward(F.gelu)
def _gelu_backward(grad_out: torch.Tensor, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return torch.ops.aten.gelu_backward(grad_out, x, approximate=approximate)


# Attention's matrix products and softmax are not replayed: doing so (real batched products by g b^T, a^T g; softmax
# from its output) removed 4 of 30 batched products per ViT step, but the dual pass's recorded attention tensors
# raised the allocator peak of a DP step from 134 to 159 MiB (1.21x to 1.44x the non-private step's) and the step
# time moved by less than this machine's noise (docs/benchmarks.md, 2026-12-02).


def twin_class(base: type[nn.Module]) -> type[nn.Module] | None:
    run_pending()  # e.g. timm's layers, registered once timm is imported
    return _TWIN_CLASSES.get(base)


def supported_types() -> tuple[type[nn.Module], ...]:
    run_pending()
    return tuple(_TWIN_CLASSES)


def make_twin(module: nn.Module, selected: set[str]) -> nn.Module:
    """Turn ``module`` (in place) into its twin; ``selected`` direct parameter names become zero deltas."""
    run_pending()
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


@register_backward_rule(nn.Linear)
def _linear_backward(layer: TangentLayer, x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor,
                     needs: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
    """y = x W^T + b: dL/dx = g W, dL/dW = g^T x, dL/db = sum of g (over every position)."""
    g = grad_out.reshape(-1, grad_out.shape[-1])
    return (grad_out @ weight if needs[0] else None,
            g.t() @ x.reshape(-1, x.shape[-1]) if needs[1] else None,
            g.sum(0) if needs[2] else None)


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


def _zero_padded(layer: TangentLayer, x: torch.Tensor) -> bool:
    return layer.padding_mode == "zeros" and not isinstance(layer.padding, str)  # type: ignore[attr-defined]


@register_backward_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, replayable=_zero_padded)
def _conv_backward(layer: TangentLayer, x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor,
                   needs: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
    """PyTorch's convolution backward (a small depthwise one: its weight gradient from :mod:`.depthwise`; a 1x1
    one with a small output: two matrix products, :mod:`.pointwise`)."""
    if pointwise.covers(layer, x, weight):
        return pointwise.convolution_backward(grad_out, x, weight, needs)
    geometry = (layer.stride, layer.padding, layer.dilation)  # type: ignore[attr-defined]
    return depthwise.convolution_backward(grad_out, x, weight, geometry, layer.groups, needs,  # type: ignore[arg-type]
                                          small_depthwise=needs[1] and depthwise.covers(layer, x, weight))


@register_tangent_layer(nn.Embedding)
def _embedding(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    return F.embedding(x, layer.effective("weight"), layer.padding_idx, layer.max_norm,  # type: ignore[arg-type]
                       layer.norm_type, layer.scale_grad_by_freq, layer.sparse)


@register_tangent_layer(nn.LayerNorm)
def _layer_norm(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, layer.normalized_shape, layer.effective("weight"), layer.effective("bias"), layer.eps)


@register_tangent_rule(nn.LayerNorm)
def _layer_norm_tangent(layer: TangentLayer, x: torch.Tensor, dx: torch.Tensor | None,
                        y: torch.Tensor) -> torch.Tensor | None:
    """d LN(x; w, b) = w0·dx_hat + x_hat·dw + db, with x_hat = (x - mean)·rstd over the normalized dims and
    dx_hat = rstd·(dx - mean(dx) - x_hat·mean(dx·x_hat)): two tensors the size of x (PyTorch's forward
    derivative of layer_norm makes about twenty)."""
    weight, bias = _deltas(layer)
    if dx is None and weight is None:
        return None if bias is None else bias.expand_as(y)
    size = math.prod(layer.normalized_shape)
    x_hat, _, rstd = torch.native_layer_norm(x.reshape(-1, size), (size,), None, None, layer.eps)  # rstd: (M, 1)
    if dx is None:
        out = x_hat.mul_(weight.reshape(size))
    else:
        d = dx.reshape(-1, size)
        out = d - d.mean(dim=-1, keepdim=True)
        projection = (d.unsqueeze(-2) @ x_hat.unsqueeze(-1)).squeeze(-1).div_(size)  # mean(dx·x_hat), no temporary
        out.addcmul_(x_hat, projection, value=-1.0).mul_(rstd)
        theta0 = layer.theta0("weight")
        if theta0 is not None:
            out.mul_(theta0.reshape(size))
        if weight is not None:
            out.addcmul_(x_hat, weight.reshape(size))
    if bias is not None:
        out.add_(bias.reshape(size))
    return out.view(y.shape)


@register_tangent_layer(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _batch_norm(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    # Always the running statistics, also in train mode (Opacus hooks need train mode; batch
    # statistics would mix examples and break both linearity in delta and per-sample clipping).
    return F.batch_norm(
        x, layer.running_mean, layer.running_var, layer.effective("weight"), layer.effective("bias"),
        False, 0.0, layer.eps,
    )


def _batch_norm_act(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    return layer.act(layer.drop(_batch_norm(layer, x)))  # type: ignore[operator]


_NORM_ACTS: list[type[nn.Module]] = []  # batch norms followed by their own activation (timm's BatchNormAct2d)


def _register_timm_layers() -> None:
    """timm's LayerNorm (nn.LayerNorm's function) and BatchNormAct2d (a batch norm, then its activation)."""
    from timm.layers import BatchNormAct2d
    from timm.layers import LayerNorm as TimmLayerNorm

    register_tangent_layer(TimmLayerNorm)(_layer_norm)
    register_tangent_rule(TimmLayerNorm)(_layer_norm_tangent)
    register_tangent_layer(BatchNormAct2d)(_batch_norm_act)
    _NORM_ACTS.append(BatchNormAct2d)


when_imported("timm", _register_timm_layers)


def is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm)


def is_batch_norm_act(module: nn.Module) -> bool:
    """A batch norm followed by its own activation (``module.act(module.drop(batch_norm(x)))``)."""
    run_pending()
    return isinstance(module, tuple(_NORM_ACTS))
