"""The dual pass's tangent rules (Linear, convolutions, LayerNorm) give f_lin exactly: against torch.func.jvp of
the base model, for every combination of a linearized layer before (a dual input) and of the layer's own deltas."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from test_linearize_exact import random_deltas, reference_f_lin

from dp_tangent import linearize
from dp_tangent.tangent import twins


class _Norms(nn.Module):
    """LayerNorms over one and two dims, with and without affine parameters, after and before linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.plain = nn.LayerNorm(8, elementwise_affine=False)
        self.wide = nn.LayerNorm((2, 4))
        self.no_bias = nn.LayerNorm(8, bias=False)
        self.last = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.plain(torch.tanh(self.norm(self.first(x))))
        h = self.wide(h.view(*h.shape[:-1], 2, 4)).flatten(-2)
        return self.last(self.no_bias(h))


@pytest.mark.parametrize("trainable", [None, "norm", "wide", "no_bias", "first", "last", "norm,wide"])
def test_layer_norm_and_linear_tangents_equal_torch_func_jvp(trainable: str | None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    rule = twins._TANGENTS[nn.LayerNorm]
    monkeypatch.setitem(twins._TANGENTS, nn.LayerNorm, lambda *args: calls.append("ln") or rule(*args))
    torch.manual_seed(0)
    model = _Norms().double()
    with torch.no_grad():  # non-trivial affine parameters at theta0
        for name, param in model.named_parameters():
            if "norm" in name or "wide" in name or "no_bias" in name:
                param.add_(0.3 * torch.randn_like(param))
    x = torch.randn(5, 3, 6, dtype=torch.float64)
    tangent = linearize(model, None if trainable is None else trainable.split(","), example_input=x)
    deltas = random_deltas(tangent, scale=0.2)
    tangent.load_deltas(deltas)
    with torch.no_grad():
        got = tangent(x)
    want = reference_f_lin(model, deltas, x)
    assert ((got - want).norm() / want.norm()).item() < 1e-12
    norms = ("norm", "plain", "wide", "no_bias")
    linearized_norms = sum(name.split(".")[0] in norms for name, _ in tangent.named_deltas())
    assert (len(calls) > 0) == (linearized_norms > 0)  # the rule ran wherever a LayerNorm holds deltas
