"""Depthwise convolutions with small outputs compute their weight gradient in the faster layout (timed once per
geometry and batch-size bucket): the value is PyTorch's own, and every gradient equals PyTorch's in both layouts,
also under the Gram precompute's batched seeds and under torch.func; the tangent model's twins take this path only
in the plain pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import build

from dp_tangent import linearize
from dp_tangent.tangent import depthwise

# (channels, size, filter, stride, padding, dilation): EfficientNet-like shapes and the odd geometries
GEOMETRIES = [(6, 2, 3, 1, 1, 1), (5, 6, 5, 2, 2, 1), (4, 5, 3, 1, 2, 2), (3, 9, 3, 3, 1, 1), (4, 1, 3, 1, 1, 1)]


@pytest.fixture(params=[False, True], ids=["contiguous", "channels_last"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every geometry's weight gradient forced to one layout (instead of the timed choice)."""

    class Forced(dict):
        def __contains__(self, key: object) -> bool:
            return True

        def __getitem__(self, key: object) -> bool:
            return request.param

    monkeypatch.setattr(depthwise, "_CHANNELS_LAST_FASTER", Forced())
    return request.param


def _case(geometry: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple, tuple, tuple]:
    channels, size, kernel, stride, padding, dilation = geometry
    torch.manual_seed(sum(geometry))
    x = torch.randn(7, channels, size, size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(channels, dtype=torch.float64, requires_grad=True)
    return x, weight, bias, (stride,) * 2, (padding,) * 2, (dilation,) * 2


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_value_and_gradients_equal_pytorch_in_both_layouts(geometry: tuple[int, ...], layout: bool) -> None:
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
def test_per_example_gradients_under_torch_func(geometry: tuple[int, ...], layout: bool) -> None:
    x, weight, _, stride, padding, dilation = _case(geometry)

    def loss(conv: object, xi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return conv(xi[None], w).pow(2).sum()  # type: ignore[operator]

    ours = torch.func.vmap(torch.func.grad(lambda xi, w: loss(
        lambda a, b: depthwise.conv2d(a, b, None, stride, padding, dilation), xi, w), argnums=1), (0, None))
    ref = torch.func.vmap(torch.func.grad(lambda xi, w: loss(
        lambda a, b: F.conv2d(a, b, None, stride, padding, dilation, a.shape[1]), xi, w), argnums=1), (0, None))
    assert torch.allclose(ours(x.detach(), weight.detach()), ref(x.detach(), weight.detach()), rtol=1e-12,
                          atol=1e-12)


def test_the_timed_choice_is_made_once_per_geometry_and_batch_size_bucket() -> None:
    x, weight, bias, stride, padding, dilation = _case((8, 2, 3, 1, 1, 1))  # a batch of 7
    key = depthwise.layout_key(x, weight, stride, padding, dilation)
    depthwise._CHANNELS_LAST_FASTER.pop(key, None)
    depthwise.conv2d(x, weight, bias, stride, padding, dilation).sum().backward()
    assert key in depthwise._CHANNELS_LAST_FASTER
    same_bucket, other_bucket = x.detach()[:5], x.detach()[:4]  # batch sizes rounded up to 8, and to 4
    assert depthwise.layout_key(same_bucket, weight, stride, padding, dilation) == key
    assert depthwise.layout_key(other_bucket, weight, stride, padding, dilation) != key


def test_only_small_depthwise_convolutions_with_weight_gradients_take_the_path() -> None:
    depthwise_layer = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    small, large = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 7, 7)
    weight = depthwise_layer.weight
    assert depthwise.applies(depthwise_layer, small, weight)
    assert not depthwise.applies(depthwise_layer, large, weight)  # 7×7 output: PyTorch's layout was faster
    assert not depthwise.applies(nn.Conv2d(8, 8, 3, padding=1, groups=4), small, weight)  # not depthwise
    assert not depthwise.applies(nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"), small, weight)
    assert not depthwise.applies(depthwise_layer, small, weight.detach())  # no weight gradient wanted
    with torch.no_grad():
        assert not depthwise.applies(depthwise_layer, small, weight)


def test_tangent_efficientnet_uses_it_in_the_plain_pass_and_its_gradient_stays_exact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """EfficientNet-Lite0's last two stages (five inverted-residual blocks) at 32×32 have 1×1 depthwise outputs."""
    model, x, suffix = build("efficientnet_lite0")
    tangent = linearize(model, suffix)
    features = tangent.features(x)
    out = tangent.forward_from_features(features)
    seen, stack = {}, [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in seen:
            seen[id(node)] = type(node).__name__
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    twins = [m for m in tangent.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and hasattr(m, "delta_names")]
    assert len(twins) == 5 and sum("Depthwise" in name for name in seen.values()) == len(twins)
    out.pow(2).sum().backward()
    got = {name: param.grad.clone() for name, param in tangent.named_deltas()}
    monkeypatch.setattr(depthwise, "applies", lambda *args: False)  # the same model with PyTorch's own backward
    tangent.zero_grad()
    tangent.forward_from_features(features).pow(2).sum().backward()
    for name, param in tangent.named_deltas():
        assert torch.allclose(got[name], param.grad, rtol=1e-10, atol=1e-12), name
