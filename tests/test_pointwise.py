"""1x1 convolutions with small outputs take their backward from two matrix products: every gradient equals
PyTorch's; the route covers only what it is measured to be faster for; the tangent model's replayed twins use it."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
from conftest import build

from dp_tangent import linearize
from dp_tangent.tangent import pointwise


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("needs", list(itertools.product([True, False], repeat=3)))
def test_gradients_equal_pytorch(size: int, needs: tuple[bool, bool, bool]) -> None:
    torch.manual_seed(size)
    x = torch.randn(5, 6, size, size, dtype=torch.float64)
    weight = torch.randn(7, 6, 1, 1, dtype=torch.float64)
    grad_out = torch.randn(5, 7, size, size, dtype=torch.float64)
    got = pointwise.convolution_backward(grad_out, x, weight, needs)
    want = torch.ops.aten.convolution_backward(grad_out, x, weight, [7], (1, 1), (0, 0), (1, 1), False, (0, 0), 1,
                                               needs)
    for need, a, b in zip(needs, got, want):
        assert (a is None) == (not need)
        if need:
            assert a.shape == b.shape and a.is_contiguous()
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv, size, covered", [
    (nn.Conv2d(4, 8, 1), 2, True),
    (nn.Conv2d(4, 8, 1), 3, True),
    (nn.Conv2d(4, 8, 1, bias=False), 1, True),
    (nn.Conv2d(4, 8, 1), 4, False),  # 16 positions: PyTorch's kernel is as fast
    (nn.Conv2d(4, 8, 3, padding=1), 2, False),
    (nn.Conv2d(4, 8, 1, stride=2), 2, False),
    (nn.Conv2d(4, 8, 1, padding=1), 2, False),
    (nn.Conv2d(4, 8, 1, padding="same"), 2, False),
    (nn.Conv2d(4, 8, 1, groups=2), 2, False),
    (nn.Conv1d(4, 8, 1), 2, False),
])
def test_covers_small_pointwise_convolutions_only(conv: nn.Module, size: int, covered: bool) -> None:
    x = torch.randn(2, 4, *(size,) * (conv.weight.dim() - 2))
    assert pointwise.covers(conv, x, conv.weight) == covered


def test_the_tangent_models_replayed_pointwise_twins_take_the_route_with_the_same_gradient(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """EfficientNet-Lite0 at 32x32: its last stages run 1x1 convolutions on 1x1 outputs."""
    model, x, suffix = build("efficientnet_lite0")
    tangent = linearize(model, suffix)
    tangent.load_deltas({n: 0.01 * torch.randn_like(p) for n, p in tangent.named_deltas()})
    calls: list[int] = []
    route = pointwise.convolution_backward
    monkeypatch.setattr(pointwise, "convolution_backward", lambda *args: calls.append(1) or route(*args))
    gradients = []
    for covered in (True, False):
        if not covered:
            monkeypatch.setattr(pointwise, "covers", lambda *args: False)
        calls.clear()
        gradients.append(torch.autograd.grad(tangent(x).pow(2).sum(), tangent.deltas()))
        assert bool(calls) == covered
    for a, b in zip(*gradients):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
