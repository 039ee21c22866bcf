"""The convex losses: convex along random lines in delta-space, the documented formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build

from dp_tangent import linearize
from dp_tangent.training.losses import ConvexLoss


@pytest.mark.parametrize("loss", [ConvexLoss("cross_entropy"), ConvexLoss("square"), ConvexLoss("square", kappa=5, l2=0.1),
                                  ConvexLoss("cross_entropy", l2=0.5)])
def test_convex_along_random_lines_in_delta_space(loss: ConvexLoss) -> None:
    model, x, suffix = build("vit")
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0))
    tangent = linearize(model, suffix)
    start = {n: 0.05 * torch.randn_like(p) for n, p in tangent.named_deltas()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in tangent.named_deltas()}
        values = []
        for t in torch.linspace(-2.0, 2.0, 9, dtype=torch.float64):
            point = {n: start[n] + t * direction[n] for n in start}
            tangent.load_deltas(point)
            with torch.no_grad():
                values.append(loss(tangent(x), y, point.values()).item())
        second = [values[i - 1] - 2 * values[i] + values[i + 1] for i in range(1, len(values) - 1)]
        scale = max(abs(v) for v in values)
        assert min(second) >= -1e-9 * scale, second


def test_formulas() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([0])
    assert ConvexLoss().kappa == 15.0
    assert torch.allclose(ConvexLoss("cross_entropy")(logits, y), F.cross_entropy(logits, y))
    expected = ((2.0 - 15.0) ** 2 + 1.0 + 0.25) / 3
    assert ConvexLoss("square")(logits, y).item() == pytest.approx(expected)
    delta = [torch.ones(3, dtype=torch.float64)]
    assert ConvexLoss("square", l2=2.0)(logits, y, delta).item() == pytest.approx(expected + 3.0)


@pytest.mark.parametrize("bad", [dict(kind="hinge"), dict(kappa=0), dict(l2=-1)])
def test_bad_parameters(bad: dict) -> None:
    with pytest.raises(ValueError):
        ConvexLoss(**bad)
