"""Known traps handled inside linearize: fused attention, unsupported ops, dropout, BatchNorm."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
from conftest import build, small_vit

from dp_tangent import UnsupportedModelError, linearize


def test_fused_attention_vit_is_linearized_without_user_action() -> None:
    timm.layers.set_fused_attn(True)
    model = small_vit().eval()
    assert model.blocks[0].attn.fused_attn, "precondition: the user's model uses fused attention"
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(NotImplementedError):  # the trap itself
        torch.func.jvp(lambda inp: model(inp), (x,), (x,))
    tangent = linearize(model)
    tangent.load_deltas({n: 0.01 * torch.randn_like(p) for n, p in tangent.named_deltas()})
    out = tangent(x)
    assert torch.isfinite(out).all() and model.blocks[0].attn.fused_attn


@pytest.fixture
def sdpa_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per call of the fused ``F.scaled_dot_product_attention`` (timm's fused path) meanwhile."""
    calls: list[int] = []
    fused = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(1) or fused(*args, **kwargs))
    return calls


def test_the_frozen_prefix_runs_the_base_networks_fused_attention_and_the_suffix_the_math_path(
        sdpa_calls: list[int]) -> None:
    timm.layers.set_fused_attn(True)
    torch.manual_seed(0)
    tangent = linearize(small_vit().double().eval(), "blocks[-1:]")
    assert tangent.fused_attention == ("blocks.0.attn", "blocks.1.attn", "blocks.2.attn")
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    sdpa_calls.clear()
    fused = tangent.features(x)
    assert len(sdpa_calls) == 2  # blocks 0 and 1, the prefix
    names, tangent.fused_attention = tangent.fused_attention, ()
    math = tangent.features(x)
    tangent.fused_attention = names
    assert len(sdpa_calls) == 2
    torch.testing.assert_close(fused, math, rtol=1e-12, atol=1e-14)  # the same function up to rounding
    tangent.load_deltas({n: 0.01 * torch.randn_like(p) for n, p in tangent.named_deltas()})
    tangent.forward_from_features(fused).sum().backward()  # dual and plain passes of the suffix: math
    assert len(sdpa_calls) == 2
    assert not any(m.fused_attn for m in tangent.net.modules() if hasattr(m, "fused_attn"))  # left on math
    _, jvp = torch.func.jvp(tangent.features, (x,), (x,))  # forward mode through the prefix: math again
    assert torch.isfinite(jvp).all() and len(sdpa_calls) == 2


def test_a_model_without_fused_attention_keeps_the_math_path(sdpa_calls: list[int]) -> None:
    timm.layers.set_fused_attn(False)
    try:
        tangent = linearize(small_vit().eval(), "blocks[-1:]")
    finally:
        timm.layers.set_fused_attn(True)
    assert tangent.fused_attention == ()
    sdpa_calls.clear()
    tangent.features(torch.randn(2, 3, 32, 32))
    assert sdpa_calls == []


class _NoForwardDerivative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x * 2

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return g * 2


class Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NoForwardDerivative.apply(x)


def test_unsupported_op_fails_at_linearize_naming_the_module() -> None:
    model = nn.Sequential(nn.Linear(4, 4), Doubler(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match=r"module '1' \(Doubler\)"):
        linearize(model)


def test_no_dropout_or_drop_path_and_train_mode_is_the_eval_function() -> None:
    torch.manual_seed(0)
    model = small_vit(drop_rate=0.5, drop_path_rate=0.5, attn_drop_rate=0.5, proj_drop_rate=0.5)
    tangent = linearize(model, "blocks[-2:]")
    tangent.load_deltas({n: 0.01 * torch.randn_like(p) for n, p in tangent.named_deltas()})
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        evaluated = tangent.eval()(x)
        trained = [tangent.train()(x) for _ in range(2)]
    assert all(torch.equal(t, evaluated) for t in trained)
    assert all(m.training == bool(getattr(m, "delta_names", ())) for m in tangent.net.modules())


def test_batch_norm_uses_running_statistics_in_train_mode() -> None:
    model, x, suffix = build("resnet")
    tangent = linearize(model, None).train()
    with torch.no_grad():
        single = torch.cat([tangent(x[i:i + 1]) for i in range(len(x))])
        assert torch.allclose(tangent(x), single, rtol=1e-12, atol=1e-12), "no batch statistics"
        assert torch.equal(tangent.base_forward(x), model(x))
    stats = [m.running_mean.clone() for m in tangent.net.modules() if hasattr(m, "running_mean")]
    tangent(x).sum().backward()
    after = [m.running_mean for m in tangent.net.modules() if hasattr(m, "running_mean")]
    assert all(torch.equal(a, b) for a, b in zip(stats, after)), "running statistics never change"
