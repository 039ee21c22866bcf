"""Per-sample gradients through Opacus hooks equal the vmap(grad(jvp)) reference."""

from __future__ import annotations

import pytest
import torch
from conftest import build

from dp_tangent import UnsupportedModelError, linearize
from dp_tangent.training.features import precompute_features
from dp_tangent.training.losses import ConvexLoss
from dp_tangent.training.per_sample import per_sample_gradients, reference_per_sample_gradients


@pytest.mark.parametrize("arch", ["vit", "resnet", "efficientnet_lite0", "mlp"])
@pytest.mark.parametrize("kind", ["cross_entropy", "square"])
def test_opacus_hooks_match_vmap_grad_jvp(arch: str, kind: str) -> None:
    model, x, suffix = build(arch)
    y = torch.randint(0, 3 if arch == "mlp" else 10, (len(x),), generator=torch.Generator().manual_seed(0))
    tangent = linearize(model, suffix)
    deltas = {n: 0.05 * torch.randn_like(p) for n, p in tangent.named_deltas()}
    tangent.load_deltas(deltas)
    loss = ConvexLoss(kind)
    got = per_sample_gradients(tangent, x, y, loss)
    want = reference_per_sample_gradients(model, deltas, x, y, loss)
    assert set(got) == set(want) == set(deltas)
    total = sum(w.norm() ** 2 for w in want.values()) ** 0.5
    assert total > 1e-3
    for name in got:
        assert got[name].shape == (len(x), *deltas[name].shape)
        assert (got[name] - want[name]).norm() <= 1e-9 * total, name
    from_cache = per_sample_gradients(tangent, precompute_features(tangent, x), y, loss, from_features=True)
    assert all(torch.equal(from_cache[n], got[n]) for n in got)


def test_parameters_without_a_hook_are_refused_clearly() -> None:
    model, x, _ = build("vit")
    tangent = linearize(model)  # includes cls_token / pos_embed, which no Opacus layer owns
    with pytest.raises(UnsupportedModelError, match="cls_token"):
        per_sample_gradients(tangent, x, torch.zeros(len(x), dtype=torch.long), ConvexLoss())


@pytest.mark.parametrize("groups, kernel, size", [(1, 1, 2), (8, 3, 6), (1, 3, 9), (8, 1, 5)])
def test_conv_ghost_norms_equal_norms_of_the_per_sample_gradients(groups: int, kernel: int, size: int) -> None:
    """Both branches (Gram matrices when L^2 <= O·P, else the gradient itself) against direct norms."""
    from dp_tangent.tangent.twins import make_twin
    from dp_tangent.training.grad_samplers import compute_conv2d_grad_sample, compute_conv2d_norm_sample

    torch.manual_seed(0)
    conv = make_twin(torch.nn.Conv2d(16, 24, kernel, padding=kernel // 2, groups=groups).double(), {"weight", "bias"})
    x = torch.randn(5, 16, size, size, dtype=torch.float64)
    backprops = torch.randn(5, 24, size, size, dtype=torch.float64)
    grads = compute_conv2d_grad_sample(conv, [x], backprops)
    norms = compute_conv2d_norm_sample(conv, [x], backprops)
    for param in (conv.weight, conv.bias):
        assert torch.allclose(norms[param], grads[param].flatten(1).norm(dim=1), rtol=1e-10)
