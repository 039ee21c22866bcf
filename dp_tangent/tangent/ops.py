"""Op overrides active in tangent mode, for ops whose PyTorch forward derivative is missing or
cannot be combined with a backward pass through the primal.

In-place arithmetic on a backward-hooked module output (``x += shortcut`` in timm's ResNet blocks)
runs out of place.

``softmax``/``log_softmax`` (PyTorch 2.x): with a dual input that also requires grad, the native
forward-mode formula modifies a tensor the backward needs ("modified by an inplace operation").
The overrides compute the primal with the native kernel (so f(x; theta0) is bit-identical) and
state the tangent and the backward explicitly:

    softmax:      y = softmax(x),  dy = y * (dx - sum(y * dx)),  x_bar = y * (g - sum(g * y))
    log_softmax:  y = log_softmax(x),  dy = dx - sum(exp(y) * dx),  x_bar = g - exp(y) * sum(g)

Register more with :func:`register_op_override`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_OVERRIDES: dict[Callable[..., Any], Callable[..., Any]] = {}


def register_op_override(*functions: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(impl: Callable[..., Any]) -> Callable[..., Any]:
        for fn in functions:
            _OVERRIDES[fn] = impl
        return impl

    return decorator


def overridden(fn: Callable[..., Any]) -> Callable[..., Any] | None:
    """The implementation registered for ``fn``, if any."""
    return _OVERRIDES.get(fn)


class TangentOps(TorchFunctionMode):
    """Routes registered functions to their tangent-safe implementations."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        impl = _OVERRIDES.get(func)
        return (impl or func)(*args, **(kwargs or {}))


def softmax_dim(args: tuple, kwargs: dict) -> int:
    """The ``dim`` of a softmax call's arguments after its input."""
    return _dim_and_dtype(args, kwargs)[0]


def _dim_and_dtype(args: tuple, kwargs: dict) -> tuple[int, torch.dtype | None]:
    dim = kwargs.get("dim", args[0] if args else None)
    if dim is None:
        raise ValueError("softmax in a tangent model needs an explicit dim")
    return dim, kwargs.get("dtype")


class _OverDim(torch.autograd.Function):
    """Shared context of the normalisations over ``dim``: the output serves backward and jvp."""

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: ANN001
        ctx.dim = inputs[1]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)


class _Softmax(_OverDim):
    @staticmethod
    def forward(x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.softmax(x, dim)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        (y,) = ctx.saved_tensors
        return torch._softmax_backward_data(grad, y, ctx.dim, y.dtype), None

    @staticmethod
    def jvp(ctx, tangent, _):  # noqa: ANN001
        (y,) = ctx.saved_tensors
        return y * (tangent - (y * tangent).sum(ctx.dim, keepdim=True))


class _LogSoftmax(_OverDim):
    @staticmethod
    def forward(x: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.log_softmax(x, dim)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        (y,) = ctx.saved_tensors
        return torch._log_softmax_backward_data(grad, y, ctx.dim, y.dtype), None

    @staticmethod
    def jvp(ctx, tangent, _):  # noqa: ANN001
        (y,) = ctx.saved_tensors
        return tangent - (y.exp() * tangent).sum(ctx.dim, keepdim=True)


_INPLACE_ARITHMETIC = {
    torch.Tensor.add_: torch.Tensor.add,
    torch.Tensor.sub_: torch.Tensor.sub,
    torch.Tensor.mul_: torch.Tensor.mul,
    torch.Tensor.div_: torch.Tensor.div,
}


def _hooked_output(t: object) -> bool:
    grad_fn = getattr(t, "grad_fn", None)
    return grad_fn is not None and type(grad_fn).__name__ == "BackwardHookFunctionBackward"


def _out_of_place_on_hooked_output(inplace: Callable[..., Any], outofplace: Callable[..., Any]) -> Callable[..., Any]:
    """``x += y`` on a module output that carries a full backward hook (Opacus) is forbidden in
    place; the module's output is fresh, so computing out of place gives the same value."""

    def impl(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return (outofplace if _hooked_output(x) else inplace)(x, *args, **kwargs)

    return impl


for _inplace, _outofplace in _INPLACE_ARITHMETIC.items():
    register_op_override(_inplace)(_out_of_place_on_hooked_output(_inplace, _outofplace))


def _with_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return x if dtype is None else x.to(dtype)


@register_op_override(torch.Tensor.softmax, torch.softmax, F.softmax)
def softmax(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    kwargs.pop("_stacklevel", None)
    dim, dtype = _dim_and_dtype(args, kwargs)
    return _Softmax.apply(_with_dtype(x, dtype), dim)


@register_op_override(torch.Tensor.log_softmax, torch.log_softmax, F.log_softmax)
def log_softmax(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    kwargs.pop("_stacklevel", None)
    dim, dtype = _dim_and_dtype(args, kwargs)
    return _LogSoftmax.apply(_with_dtype(x, dtype), dim)


def _enable_forward_ad_through_module_backward_hooks() -> None:
    """``register_full_backward_hook`` (used by Opacus) wraps module inputs and outputs in
    ``BackwardHookFunction``, an identity without a forward derivative. Its tangent is the identity
    too; without it a dual tensor cannot pass a hooked module. Added only where PyTorch lacks it."""
    from torch.nn.modules._functions import BackwardHookFunction

    if BackwardHookFunction.jvp is torch.autograd.Function.jvp:
        BackwardHookFunction.jvp = staticmethod(lambda ctx, *tangents: tuple(t.view_as(t) for t in tangents))


_enable_forward_ad_through_module_backward_hooks()
