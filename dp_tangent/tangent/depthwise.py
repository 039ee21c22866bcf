"""Depthwise 2-D convolution whose weight gradient is computed in the faster of two memory layouts.

For y = conv2d(x, w, groups=C) with one filter per channel, dL/dw[c, p, q] = sum over n, i, j of
g[n, c, i, j] · x_pad[n, c, i·s + p·d, j·s + q·d]. PyTorch's CPU kernel (oneDNN) for this weight
gradient is sometimes slow on contiguous (N, C, H, W) tensors when the output is small: 20–30 ms for
64 examples of 1152 channels at 2×2 on two cores (the last block of EfficientNet-Lite0 on small
images), or of 672 channels at 3×3 with 5×5 filters. The same kernel on channels-last copies of x and g
takes 5–10 ms there, but is slower at other small shapes (3×3 filters at 4×4 outputs) and at every
output from 7×7 on. Which layout wins is not predictable from the shape, so for outputs up to 6×6
(:func:`applies`) the first backward of each layer geometry and batch size (rounded up to a power of
two) times both and keeps the faster (like ``torch.backends.cudnn.benchmark``). The forward and the
input gradient are PyTorch's own calls, so the value is bit-identical; both weight gradients agree to
float rounding.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

# Largest output (height × width) for which the channels-last weight gradient is tried: it was slower at
# every shape measured from 7×7 on (3×3 and 5×5 filters at EfficientNet-Lite0's widths, two cores).
MAX_OUTPUT_PIXELS = 36
# (batch bucket, channels, height, width, filter, stride, padding, dilation, dtype, threads) -> channels-last faster
_CHANNELS_LAST_FASTER: dict[tuple[object, ...], bool] = {}
_TIMED_ROUNDS = 3  # the faster of each layout's best of 3, alternating, after one untimed call of each


def applies(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A CPU depthwise Conv2d with zero padding, a small output and a weight that needs its gradient."""
    if not (isinstance(layer, nn.Conv2d) and x.device.type == "cpu" and x.dim() == 4 and torch.is_grad_enabled()
            and weight.requires_grad and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
            and not torch._C._are_functorch_transforms_active()):  # torch.func.jvp would need a jvp rule
        return False
    channels = x.shape[1]
    if not (layer.groups == channels == layer.out_channels == weight.shape[0] and weight.shape[1] == 1):
        return False
    height, width = (_out_size(x.shape[2 + a], weight.shape[2 + a], layer.stride[a], layer.padding[a],
                               layer.dilation[a]) for a in (0, 1))
    return height * width <= MAX_OUTPUT_PIXELS


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
           padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)`` with the weight gradient above."""
    return _DepthwiseConv2d.apply(x, weight, bias, stride, padding, dilation)


def channels_last_faster(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor,
                         geometry: tuple[tuple[int, int], ...]) -> bool:
    """Whether this weight gradient is faster in channels-last layout: timed on the first call of each
    :func:`layout_key`, then remembered; False under vmap until a plain call has timed it."""
    key = layout_key(x, weight, *geometry)
    if key not in _CHANNELS_LAST_FASTER:
        if _batched(x) or _batched(grad_out):  # under vmap (the Gram precompute's batched seeds): do not time
            return False
        seconds: dict[bool, float] = {False: math.inf, True: math.inf}
        for last in (False, True):  # untimed: each layout's first call builds oneDNN's kernel for the shape
            weight_grad(x, grad_out, weight, geometry, last)
        for _ in range(_TIMED_ROUNDS):
            for last in (False, True):
                start = time.perf_counter()
                weight_grad(x, grad_out, weight, geometry, last)
                seconds[last] = min(seconds[last], time.perf_counter() - start)
        _CHANNELS_LAST_FASTER[key] = seconds[True] < seconds[False]
    return _CHANNELS_LAST_FASTER[key]


def weight_grad(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, geometry: tuple[tuple[int, int], ...],
                channels_last: bool) -> torch.Tensor:
    """dL/dw (C×1×k×k) of a depthwise convolution from its input and output gradient, by PyTorch's kernel on
    tensors in the given layout. ``geometry``: (stride, padding, dilation)."""
    inputs = (_channels_last(grad_out), _channels_last(x)) if channels_last else (grad_out, x)
    return torch.ops.aten.convolution_backward(*inputs, weight, None, *geometry, False, (0, 0), x.shape[1],
                                               (False, True, False))[1]


def layout_key(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int]) -> tuple[object, ...]:
    """What the layout choice is remembered by: the geometry and the batch size rounded up to a power of
    two (Poisson batches vary around their mean; the faster layout depends on the batch size too)."""
    return (1 << max(x.shape[0] - 1, 0).bit_length(), *x.shape[1:], *weight.shape[2:], tuple(stride),
            tuple(padding), tuple(dilation), x.dtype, torch.get_num_threads())


def _batched(t: torch.Tensor) -> bool:
    return torch._C._functorch.is_legacy_batchedtensor(t) or torch._C._functorch.is_functorch_wrapped_tensor(t)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    # by permutation rather than .contiguous(memory_format=...), which vmap cannot query
    return t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


class _DepthwiseConv2d(torch.autograd.Function):
    generate_vmap_rule = True  # the batched one-hot backward of the Gram precompute (is_grads_batched)

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, bias, stride, padding, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.geometry = (stride, padding, dilation)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        last = need_w and channels_last_faster(x, grad_out, weight, ctx.geometry)
        # PyTorch's own backward, less the weight gradient when that is taken in channels-last layout
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x, weight, [weight.shape[0]] if ctx.has_bias else None, *ctx.geometry, False, (0, 0),
            x.shape[1], (need_x, need_w and not last, ctx.has_bias and need_b))
        if last:
            grad_w = weight_grad(x, grad_out, weight, ctx.geometry, True)
        return grad_x, grad_w, grad_b, None, None, None
