"""Shared fixtures: small real architectures, CPU only, offline."""

from __future__ import annotations

import os

import pytest
import timm
import torch
import torch.nn as nn

from dp_tangent.backbones import BackboneSpec

# One intra-op thread: the suite runs one pytest-xdist worker per core (-n 2 on 2 cores), and the many
# tiny ops here get slower, not faster, with OpenMP threads spin-waiting for a busy core.
torch.set_num_threads(1)

# The suite never reads or writes the user's own cache of epsilons (privacy_accounting.bounds_cache, which
# the command line uses): every figure is computed, or read from a cache folder a test made for itself.
os.environ["PRIVACY_ACCOUNTING_CACHE"] = "off"


def small_vit(**kwargs: object) -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=3, num_classes=10, **kwargs)


def small_resnet() -> nn.Module:
    return timm.create_model("resnet18", num_classes=10)


def efficientnet_lite0() -> nn.Module:
    return timm.create_model("efficientnet_lite0", num_classes=10)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))


ARCHITECTURES = {
    "vit": (small_vit, (3, 32, 32), "blocks[-2:]"),
    "resnet": (small_resnet, (3, 32, 32), "blocks[-1:]"),
    "efficientnet_lite0": (efficientnet_lite0, (3, 32, 32), "blocks[-2:]"),
    "mlp": (mlp, (8,), "blocks[-3:]"),
}


def autograd_node_names(output: torch.Tensor) -> list[str]:
    """The class names of every node in ``output``'s autograd graph (keep ``output`` alive meanwhile: node ids
    are only unique while the graph lives)."""
    seen, stack = {}, [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in seen:
            seen[id(node)] = type(node).__name__
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    return list(seen.values())


def build(arch: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[nn.Module, torch.Tensor, str]:
    """(model in eval mode with non-trivial BatchNorm statistics, a batch of inputs, a block suffix spec)."""
    factory, shape, suffix = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    model = factory().to(dtype).eval()
    for module in model.modules():  # pretrained-like statistics instead of the 0/1 defaults
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model, torch.randn(4, *shape, dtype=dtype), suffix


@pytest.fixture(params=list(ARCHITECTURES))
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


TEST_MLP = BackboneSpec("test_mlp")  # not a timm name: only built through the mlp_backbone fixture


@pytest.fixture
def mlp_backbone(monkeypatch: pytest.MonkeyPatch) -> BackboneSpec:
    """A BackboneSpec whose build() is a small GELU MLP (8 inputs, 3 classes): fast training tests."""

    def build_mlp(self: BackboneSpec) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3)).eval()

    monkeypatch.setattr(BackboneSpec, "build", build_mlp)
    return TEST_MLP


@pytest.fixture
def reuses(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every ``PrimalReuse`` that ``forward_from_features`` makes meanwhile (what each pass replayed)."""
    from dp_tangent.tangent import model as tangent_model
    from dp_tangent.tangent.twins import PrimalReuse

    made: list[PrimalReuse] = []

    class Recorded(PrimalReuse):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(tangent_model, "PrimalReuse", Recorded)
    return made
