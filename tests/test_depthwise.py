"""Depthwise convolutions with small outputs compute their weight gradient from a Gram of positions: the value is
PyTorch's own, and every gradient equals PyTorch's, also under the Gram precompute's batched seeds and under
torch.func; the tangent model's twins take this path only in the plain pass, where its extra work is bounded."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import autograd_node_names, build

from dp_tangent import linearize
from dp_tangent.tangent import depthwise

# (channels, size, filter, stride, padding, dilation): EfficientNet-like shapes and the odd geometries
GEOMETRIES = [(6, 2, 3, 1, 1, 1), (5, 6, 5, 2, 2, 1), (4, 5, 3, 1, 2, 2), (3, 9, 3, 3, 1, 1), (4, 1, 3, 1, 1, 1)]


def _case(geometry: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple, tuple, tuple]:
    channels, size, kernel, stride, padding, dilation = geometry
    torch.manual_seed(sum(geometry))
    x = torch.randn(7, channels, size, size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(channels, dtype=torch.float64, requires_grad=True)
    return x, weight, bias, (stride,) * 2, (padding,) * 2, (dilation,) * 2


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_value_and_gradients_equal_pytorch(geometry: tuple[int, ...]) -> None:
    x, weight, bias, stride, padding, dilation = _case(geometry)
    out = depthwise.conv2d(x, weight, bias, stride, padding, dilation)
    want = F.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1])
    assert torch.equal(out, want)
    assert out.grad_fn is not None and "Depthwise" in type(out.grad_fn).__name__
    seed = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, weight, bias), seed)
    expected = torch.autograd.grad(want, (x, weight, bias), seed)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    # the batched one-hot seeds of the Gram precompute (is_grads_batched)
    seeds = torch.randn(3, *out.shape, dtype=out.dtype)
    got = torch.autograd.grad(depthwise.conv2d(x, weight, bias, stride, padding, dilation), (x, weight), seeds,
                              is_grads_batched=True)
    expected = torch.autograd.grad(F.conv2d(x, weight, bias, stride, padding, dilation, x.shape[1]), (x, weight),
                                   seeds, is_grads_batched=True)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES[:2])
def test_per_example_gradients_under_torch_func(geometry: tuple[int, ...]) -> None:
    x, weight, _, stride, padding, dilation = _case(geometry)

    def loss(conv: object, xi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return conv(xi[None], w).pow(2).sum()  # type: ignore[operator]

    ours = torch.func.vmap(torch.func.grad(lambda xi, w: loss(
        lambda a, b: depthwise.conv2d(a, b, None, stride, padding, dilation), xi, w), argnums=1), (0, None))
    ref = torch.func.vmap(torch.func.grad(lambda xi, w: loss(
        lambda a, b: F.conv2d(a, b, None, stride, padding, dilation, a.shape[1]), xi, w), argnums=1), (0, None))
    assert torch.allclose(ours(x.detach(), weight.detach()), ref(x.detach(), weight.detach()), rtol=1e-12,
                          atol=1e-12)


def test_rectangular_filters_inputs_and_geometries_give_pytorchs_weight_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4, 7, dtype=torch.float64)
    weight = torch.randn(3, 1, 3, 5, dtype=torch.float64, requires_grad=True)
    geometry = ((2, 1), (1, 3), (1, 2))
    want = F.conv2d(x, weight, None, *geometry, 3)
    seed = torch.randn_like(want)
    (expected,) = torch.autograd.grad(want, weight, seed)
    assert torch.allclose(depthwise.weight_grad(x, seed, (3, 5), geometry), expected, rtol=1e-12, atol=1e-12)


def test_each_filter_tap_links_the_position_pairs_inside_the_input() -> None:
    """1x1 input, 3x3 filter, padding 1: only the centre tap reaches the one input position."""
    selection = depthwise.tap_selection((1, 1), (1, 1), (3, 3), (1, 1), (1, 1), (1, 1), torch.float32)
    assert selection.shape == (1, 9) and selection.tolist() == [[0, 0, 0, 0, 1, 0, 0, 0, 0]]
    # 2x2 input and output, 3x3 filter, padding 1: each of the 4 output positions sees the 4 inputs, by 4 taps
    selection = depthwise.tap_selection((2, 2), (2, 2), (3, 3), (1, 1), (1, 1), (1, 1), torch.float32)
    assert selection.sum().item() == 16 and selection.sum(dim=1).max().item() == 1


def test_only_small_depthwise_convolutions_with_weight_gradients_take_the_path() -> None:
    depthwise_layer = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    small, large = torch.randn(64, 8, 6, 6), torch.randn(64, 8, 9, 9)
    weight = depthwise_layer.weight
    assert depthwise.applies(depthwise_layer, small, weight)
    assert not depthwise.applies(depthwise_layer, large, weight)  # 81 output positions > 64
    wide = nn.Conv2d(8, 8, 5, padding=2, groups=8)
    assert depthwise.applies(wide, torch.randn(64, 8, 8, 8), wide.weight)  # 5×5 taps: little extra work
    strided = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
    assert not depthwise.applies(strided, torch.randn(64, 8, 12, 12), strided.weight)  # 144 inputs for 9 taps
    assert not depthwise.applies(nn.Conv2d(8, 8, 3, padding=1, groups=4), small, weight)  # not depthwise
    assert not depthwise.applies(nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"), small, weight)
    assert not depthwise.applies(depthwise_layer, small, weight.detach())  # no weight gradient wanted
    with torch.no_grad():
        assert not depthwise.applies(depthwise_layer, small, weight)


def test_tangent_efficientnet_uses_it_in_both_plain_passes_and_its_gradient_stays_exact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """EfficientNet-Lite0's last two stages (five inverted-residual blocks) at 32×32 have 1×1 depthwise outputs:
    the step's plain pass replays them (their weight gradient from here), the Gram precompute's runs them."""
    model, x, suffix = build("efficientnet_lite0")
    tangent = linearize(model, suffix)
    twins = [m for m in tangent.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and hasattr(m, "delta_names")]
    assert len(twins) == 5 and all(depthwise.applies(t, torch.zeros(8, t.in_channels, 1, 1), t.weight) for t in twins)
    called = []
    weight_grad = depthwise.weight_grad
    monkeypatch.setattr(depthwise, "weight_grad", lambda *args: called.append(1) or weight_grad(*args))
    features = tangent.features(x)
    tangent.forward_from_features(features).pow(2).sum().backward()
    assert len(called) == len(twins)
    got = {name: param.grad.clone() for name, param in tangent.named_deltas()}
    plain = tangent._suffix(features)  # a plain pass alone, as the Gram precompute runs it
    names = autograd_node_names(plain)
    assert sum("Depthwise" in name for name in names) == len(twins)
    monkeypatch.setattr(depthwise, "covers", lambda *args: False)  # the same model with PyTorch's own backward
    tangent.zero_grad()
    tangent.forward_from_features(features).pow(2).sum().backward()
    assert len(called) == len(twins)
    for name, param in tangent.named_deltas():
        assert torch.allclose(got[name], param.grad, rtol=1e-10, atol=1e-12), name
