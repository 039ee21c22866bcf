"""With gradients on, the dual pass runs first and the plain pass at theta0 that records the graph takes the linear
and convolution twins' outputs, and GELU's, from its primals (``PrimalReuse``), with the layers' own backward rules:
the value and the gradient stay exact, and a twin or activation whose recorded input or output was edited in place,
or whose rule does not cover the call, runs in full."""

from __future__ import annotations

import torch
import torch.nn as nn
from conftest import autograd_node_names, build
from test_linearize_exact import random_deltas, reference_f_lin

from dp_tangent import linearize
from dp_tangent.tangent.twins import PrimalReuse


def _tangent_output(model: nn.Module, x: torch.Tensor, reuses: list[PrimalReuse],
                    ) -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    """(tangent model of ``model`` at random deltas, the deltas, its output on ``x`` with gradients on)."""
    tangent = linearize(model, example_input=x)
    deltas = random_deltas(tangent)
    tangent.load_deltas(deltas)
    reuses.clear()
    return tangent, deltas, tangent(x)


def _assert_exact(model: nn.Module, tangent: nn.Module, deltas: dict[str, torch.Tensor], x: torch.Tensor,
                  out: torch.Tensor) -> None:
    """``out`` is f_lin(x) and its gradients in the deltas are the reference's (float64)."""
    want = reference_f_lin(model, deltas, x)
    assert ((out.detach() - want).norm() / want.norm()).item() < 1e-12
    out.pow(2).sum().backward()
    expected = torch.func.grad(lambda d: reference_f_lin(model, d, x).pow(2).sum())(deltas)
    for name, param in tangent.named_deltas():
        assert torch.allclose(param.grad, expected[name], rtol=1e-9, atol=1e-12), name


def test_value_with_gradients_reuses_every_twin_and_stays_exact(arch: str, reuses: list[PrimalReuse]) -> None:
    model, x, suffix = build(arch)
    tangent = linearize(model, suffix)
    deltas = random_deltas(tangent)
    tangent.load_deltas(deltas)
    reuses.clear()
    out = tangent(x)
    assert out.requires_grad and len(reuses) == 1
    assert reuses[0].reused > 0 and reuses[0].recomputed == 0
    names = autograd_node_names(out)
    assert sum(name == "_ReplayedBackward" for name in names) == reuses[0].reused
    blocks = 2 if arch == "vit" else 0  # the suffix's ViT blocks: a GELU each (attention is not replayed: twins.py)
    assert reuses[0].ops_reused == ({"gelu": blocks} if blocks else {})
    assert sum(name == "_ReplayedOpBackward" for name in names) == blocks
    assert "GeluBackward0" not in names
    with torch.no_grad():
        want = reference_f_lin(model, deltas, x)
        full_dual = tangent(x)
    assert ((out.detach() - want).norm() / want.norm()).item() < 1e-9
    assert ((out.detach() - full_dual).norm() / want.norm()).item() < 1e-12
    out.pow(2).sum().backward()
    expected = torch.func.grad(lambda d: reference_f_lin(model, d, x).pow(2).sum())(deltas)
    for name, param in tangent.named_deltas():
        assert torch.allclose(param.grad, expected[name], rtol=1e-9, atol=1e-12), name


class _EditsInPlace(nn.Module):
    """A block that scales a linear layer's output in place after the layer returns it."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 5)
        self.second = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        h.mul_(2.0)
        return self.second(torch.tanh(h))


def test_a_twin_output_edited_in_place_is_recomputed_not_reused(reuses: list[PrimalReuse]) -> None:
    torch.manual_seed(0)
    model = _EditsInPlace().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    tangent, deltas, out = _tangent_output(model, x, reuses)
    assert reuses[0].recomputed == 1 and reuses[0].reused == 1  # `first` edited in place; `second` reused
    _assert_exact(model, tangent, deltas, x, out)


def test_a_convolution_with_reflect_padding_is_recomputed_and_stays_exact(reuses: list[PrimalReuse]) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.Tanh(), nn.Conv2d(3, 2, 3),
                          nn.Flatten()).double()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    tangent, deltas, out = _tangent_output(model, x, reuses)
    assert reuses[0].recomputed == 1 and reuses[0].reused == 1  # the reflect-padded conv has no replay rule
    _assert_exact(model, tangent, deltas, x, out)


class _GeluThenEdit(nn.Module):
    """A GELU whose output the block edits in place, then a GELU (tanh approximation) left alone, then one called
    with its input by keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 5)
        self.second = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        edited = nn.functional.gelu(self.first(x))
        edited.mul_(2.0)  # the first GELU's recorded output changes: the plain pass must compute it again
        return nn.functional.gelu(input=nn.functional.gelu(self.second(edited), approximate="tanh"))


def test_an_edited_gelu_output_is_recomputed_and_every_gelu_stays_exact(reuses: list[PrimalReuse]) -> None:
    torch.manual_seed(0)
    model = _GeluThenEdit().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    tangent, deltas, out = _tangent_output(model, x, reuses)
    assert reuses[0].ops_reused == {"gelu": 1}  # the tanh GELU; the first's output was edited, the last is by keyword
    names = autograd_node_names(out)
    assert names.count("_ReplayedOpBackward") == 1 and names.count("GeluBackward0") == 2
    _assert_exact(model, tangent, deltas, x, out)
