"""Depthwise 2-D convolution whose weight gradient comes from a Gram of positions when the output is small.

For y = conv2d(x, w, groups=C) with one filter per channel, dL/dw[c, p, q] = sum over n, i, j of
g[n, c, i, j] · x[n, c, i·s + p·d - pad, j·s + q·d - pad] (zero outside x). With M_c = G_c^T X_c, the
(output position × input position) products summed over the batch (one batched matmul over channels),
dL/dw[c, p, q] is the sum of M_c over the (output, input) position pairs that filter tap (p, q) links:
a fixed 0/1 selection per geometry. That costs HoWo·HW·(n + k²) multiply-adds per channel against
n·HoWo·k² for the direct sum, needs no padded copy of x, and is exact up to float rounding.

PyTorch's CPU kernel (oneDNN) for this weight gradient is slow at small outputs: 24 ms for 64 examples
of 1152 channels at 2×2 with 5×5 filters on two cores (the last block of EfficientNet-Lite0 on small
images), against 0.2 ms here; its channels-last variant (5 ms) pads a copy of x, 10 MiB there. The
selection is used where its extra work is bounded (:func:`applies`); elsewhere PyTorch's kernel is as
fast or faster (3×3 filters on inputs of more than about 80 pixels). The forward and the input gradient
are PyTorch's own calls, so the value is bit-identical.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_OUTPUT_PIXELS = 64  # the position Gram M_c grows as (output pixels × input pixels)
# Largest HW·(n + k²) / (n·k²): the Gram route's multiply-adds over the direct sum's. At 10 it was as fast as
# PyTorch's kernel for 3×3 filters (which oneDNN handles well) and 7–40x faster for 5×5 ones (two cores).
MAX_EXTRA_WORK = 10.0


def applies(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """:func:`covers` this call, in autograd's plain mode with a weight that needs its gradient."""
    return (torch.is_grad_enabled() and weight.requires_grad
            and not torch._C._are_functorch_transforms_active()  # torch.func.jvp would need a jvp rule
            and covers(layer, x, weight))


def covers(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A CPU depthwise Conv2d with zero padding, a small output, and a Gram route at most
    :data:`MAX_EXTRA_WORK` times the direct sum's multiply-adds."""
    if not (isinstance(layer, nn.Conv2d) and x.device.type == "cpu" and x.dim() == 4
            and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)):
        return False
    n, channels, height, width = x.shape
    if not (layer.groups == channels == layer.out_channels == weight.shape[0] and weight.shape[1] == 1):
        return False
    out_h, out_w = (_out_size(x.shape[2 + a], weight.shape[2 + a], layer.stride[a], layer.padding[a],
                              layer.dilation[a]) for a in (0, 1))
    taps = weight.shape[2] * weight.shape[3]
    extra = height * width * (n + taps) / max(n * taps, 1)
    return 0 < out_h * out_w <= MAX_OUTPUT_PIXELS and extra <= MAX_EXTRA_WORK


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
           padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups=C)`` with the weight gradient above."""
    return _DepthwiseConv2d.apply(x, weight, bias, stride, padding, dilation)


@functools.lru_cache(maxsize=64)
def tap_selection(in_size: tuple[int, int], out_size: tuple[int, int], kernel: tuple[int, int],
                  stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                  dtype: torch.dtype) -> torch.Tensor:
    """S (HoWo·HW × k_h·k_w), 1 where output position o and input position t are linked by filter tap
    (p, q): t = o·s + (p, q)·d - pad; taps that fall in the zero padding link nothing."""
    (height, width), (out_h, out_w), (k_h, k_w) = in_size, out_size, kernel
    rows = torch.arange(out_h).view(-1, 1, 1, 1) * stride[0] + torch.arange(k_h).view(1, 1, -1, 1) * dilation[0] \
        - padding[0]  # (Ho, 1, kh, 1)
    cols = torch.arange(out_w).view(1, -1, 1, 1) * stride[1] + torch.arange(k_w).view(1, 1, 1, -1) * dilation[1] \
        - padding[1]  # (1, Wo, 1, kw)
    rows, cols = torch.broadcast_tensors(rows, cols)  # (Ho, Wo, kh, kw)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    output = torch.arange(out_h * out_w).view(out_h, out_w, 1, 1).expand_as(rows)
    tap = torch.arange(k_h * k_w).view(1, 1, k_h, k_w).expand_as(rows)
    selection = torch.zeros(out_h * out_w, height * width, k_h * k_w, dtype=dtype)
    selection[output[inside], (rows * width + cols)[inside], tap[inside]] = 1
    return selection.view(-1, k_h * k_w)


def weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel: tuple[int, int],
                geometry: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """dL/dw (C×1×k_h×k_w) of a depthwise convolution from its input (n, C, H, W) and output gradient
    (n, C, Ho, Wo): M_c = G_c^T X_c summed over the filter taps' position pairs. ``geometry``: (stride,
    padding, dilation)."""
    n, channels, height, width = x.shape
    out_h, out_w = grad_out.shape[2:]
    g = grad_out.permute(1, 2, 3, 0).reshape(channels, out_h * out_w, n)
    positions = torch.bmm(g, x.permute(1, 0, 2, 3).reshape(channels, n, height * width))  # (C, HoWo, HW)
    selection = tap_selection((height, width), (out_h, out_w), kernel, *geometry, x.dtype).to(x.device)
    return (positions.reshape(channels, -1) @ selection).view(channels, 1, *kernel)


def convolution_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                         geometry: tuple[tuple[int, ...], ...], groups: int, needs: tuple[bool, bool, bool],
                         small_depthwise: bool) -> tuple[torch.Tensor | None, ...]:
    """(dL/dx, dL/dw, dL/db) of a convolution at ``weight``, each None where ``needs`` says so: PyTorch's
    ``convolution_backward``, less the weight gradient of a ``small_depthwise`` one (see :func:`covers`),
    which :func:`weight_grad` gives. ``geometry``: (stride, padding, dilation)."""
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_out, x, weight, [weight.shape[0]] if needs[2] else None, *geometry, False, (0,) * (x.dim() - 2),
        groups, (needs[0], needs[1] and not small_depthwise, needs[2]))
    if needs[1] and small_depthwise:
        grad_w = weight_grad(x, grad_out, tuple(weight.shape[2:]), geometry)  # type: ignore[arg-type]
    return grad_x, grad_w, grad_b


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
        grads = convolution_backward(grad_out, x, weight, ctx.geometry, x.shape[1],
                                     (need_x, need_w, ctx.has_bias and need_b), small_depthwise=True)
        return *grads, None, None, None
