"""f_lin equals the reference torch.func.jvp of the base model, in float64, for four architectures."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from conftest import build
from torch.func import functional_call, jvp

from dp_tangent import linearize


def math_attention_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model).eval()
    for module in ref.modules():  # torch.func.jvp itself needs the math attention path
        if getattr(module, "fused_attn", False):
            module.fused_attn = False
    return ref


def reference_f_lin(model: nn.Module, deltas: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f(x; theta0) + jvp of the base model in the direction delta (differentiable in delta)."""
    ref = math_attention_copy(model)
    params = {n: p.detach() for n, p in ref.named_parameters()}
    buffers = dict(ref.named_buffers())
    out, tangent = jvp(lambda p: functional_call(ref, {**params, **buffers, **p}, (x,)),
                       ({n: params[n] for n in deltas},), (deltas,))
    return out + tangent


def random_deltas(tangent, scale: float = 0.05, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in tangent.named_deltas()}


@pytest.mark.parametrize("which", ["all", "suffix"])
def test_f_lin_matches_torch_func_jvp(arch: str, which: str) -> None:
    model, x, suffix = build(arch)
    tangent = linearize(model, None if which == "all" else suffix)
    deltas = random_deltas(tangent)
    tangent.load_deltas(deltas)
    with torch.no_grad():
        got = tangent(x)
    with torch.no_grad():
        want = reference_f_lin(model, deltas, x)
        base = model(x)
    assert (want - base).norm() > 1e-3 * base.norm(), "the deltas must move the output for the test to mean anything"
    assert ((got - want).norm() / want.norm()).item() < 1e-9


def test_zero_deltas_give_the_base_model_bit_for_bit(arch: str) -> None:
    model, x, suffix = build(arch)
    for trainable in (None, suffix):
        tangent = linearize(model, trainable)
        assert all(torch.count_nonzero(d) == 0 for _, d in tangent.named_deltas())
        with torch.no_grad():
            assert torch.equal(tangent(x), tangent.base_forward(x))
            if arch != "vit":  # the user's ViT runs fused attention; the tangent model the math path
                assert torch.equal(tangent(x), model(x))


def test_f_lin_is_affine_in_delta(arch: str) -> None:
    model, x, suffix = build(arch)
    tangent = linearize(model, suffix)
    a, b = random_deltas(tangent, seed=2), random_deltas(tangent, seed=3)
    outputs = []
    for deltas in (a, b, {n: 0.3 * a[n] + 0.7 * b[n] for n in a}):
        tangent.load_deltas(deltas)
        with torch.no_grad():
            outputs.append(tangent(x))
    assert torch.allclose(outputs[2], 0.3 * outputs[0] + 0.7 * outputs[1], rtol=1e-10, atol=1e-10)


def test_gradient_is_exact_gradient_of_tangent_loss(arch: str) -> None:
    """Backward through f_lin gives d loss(f_lin)/d delta, checked against torch.func.grad of the jvp."""
    model, x, suffix = build(arch)
    tangent = linearize(model, suffix)
    deltas = random_deltas(tangent)
    tangent.load_deltas(deltas)
    tangent(x).pow(2).sum().backward()
    got = {n: p.grad for n, p in tangent.named_deltas()}
    want = torch.func.grad(lambda d: reference_f_lin(model, d, x).pow(2).sum())(deltas)
    for name in got:
        assert torch.allclose(got[name], want[name], rtol=1e-9, atol=1e-12), name


def test_gelu_tangent_is_exact_near_zero() -> None:
    """Against central finite differences (independent of any forward-mode rule): GELU'(x) =
    Phi(x) + x phi(x), with pre-activations straddling 0 where a wrong derivative shows most."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.GELU(), nn.Linear(64, 3)).double().eval()
    with torch.no_grad():
        model[0].bias.zero_()
        model[0].weight.mul_(1e-2)
    x = torch.randn(16, 4, dtype=torch.float64)
    tangent = linearize(model)
    deltas = random_deltas(tangent, scale=1.0)
    tangent.load_deltas(deltas)
    h = 1e-6
    shifted = []
    for sign in (1, -1):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for name, param in moved.named_parameters():
                param.add_(sign * h * deltas[name])
            shifted.append(moved(x))
    finite_difference = (shifted[0] - shifted[1]) / (2 * h)
    with torch.no_grad():
        jd = tangent(x) - tangent.base_forward(x)
    assert ((jd - finite_difference).norm() / finite_difference.norm()).item() < 1e-7


@pytest.mark.parametrize("normalisation", [nn.Softmax(dim=-1), nn.LogSoftmax(dim=-1)])
def test_softmax_overrides_are_exact_in_value_tangent_and_gradient(normalisation: nn.Module) -> None:
    """Softmax/log-softmax run through dp_tangent.ops in tangent mode (PyTorch's own forward
    derivative breaks the backward): value, tangent and gradient against torch.func."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), normalisation, nn.Linear(12, 4)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    tangent = linearize(model)
    deltas = random_deltas(tangent, scale=0.3)
    tangent.load_deltas(deltas)
    out = tangent(x)
    assert torch.allclose(out.detach(), reference_f_lin(model, deltas, x).detach(), rtol=1e-12, atol=1e-12)
    out.pow(2).sum().backward()
    want = torch.func.grad(lambda d: reference_f_lin(model, d, x).pow(2).sum())(deltas)
    for name, p in tangent.named_deltas():
        assert torch.allclose(p.grad, want[name], rtol=1e-10, atol=1e-12), name


def test_a_first_tangent_forward_prints_no_warning_about_torchs_own_code() -> None:
    """torch loads its forward-mode decompositions at a process's first dual tensor, and they raise a FutureWarning
    (``torch.jit.script`` is deprecated) from torch's own module: every Python snippet of the docs printed it."""
    import subprocess
    import sys

    code = ("import torch, torch.nn as nn; from dp_tangent import linearize; "
            "m = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3)).eval(); "
            "t = linearize(m, example_input=torch.randn(2, 4)); print(tuple(t(torch.randn(2, 4)).shape))")
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300,
                          check=True)
    assert done.stdout.strip() == "(2, 3)"
    assert "jit.script" not in done.stderr and "FutureWarning" not in done.stderr, done.stderr
