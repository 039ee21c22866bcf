"""Non-linear fine-tuning baselines for the utility benchmarks, trained by the library's own loop.

The library trains only tangent models; ordinary (non-linear) fine-tuning of the same parameters is
set up here. Every method (tangent, non-linear, head-only) is trained by :func:`train`, which is
``dp_tangent.training.run_sgd``: DP runs use Opacus's DP-SGD (Poisson sampling at the planned rate,
per-sample clipping at C, Gaussian noise sigma·C, the ``plan_run`` sigma), non-private runs use
shuffled batches; SGD with momentum and the same loss. The test suite checks that on a tangent
model it gives the same deltas as ``dp_tangent.training.fit``.

DP runs here use the seeded noise mode (``TrainConfig(noise="seeded")``): the same noise and
sampling distributions as the secure default, but reproducible from the seed, so the recorded
accuracies can be re-run exactly. These models are measured, never released; a seeded model is not
differentially private (anyone with the seed can recompute its noise).

BatchNorm in the non-linear network: like the tangent twins, it always uses its running statistics
(eval mode), so the per-sample gradients of its affine parameters exist; the sampler is registered
here for :class:`FrozenStatsBatchNormAct2d`, and convolutions use the same grouped sampler as the
tangent twins (``dp_tangent.training.grad_samplers``), so both sides run the same per-sample kernels.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler
from timm.layers import BatchNormAct2d

from dp_tangent import TangentModel
from dp_tangent.training.grad_samplers import compute_conv2d_grad_sample, compute_conv2d_norm_sample
from dp_tangent.training import Plan, PrivacySpec, ProgressFn, TrainConfig, run_sgd


class FrozenStatsBatchNormAct2d(BatchNormAct2d):
    """timm's BatchNormAct2d that always normalises with its running statistics (never updated)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(self.drop(x))


@register_grad_sampler(FrozenStatsBatchNormAct2d)
def _batch_norm_grad_sample(layer: FrozenStatsBatchNormAct2d, activations: list[torch.Tensor],
                            backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per sample: weight = sum over positions of x_hat·g, bias = sum of g, g pulled back through act."""
    x = activations[0].to(backprops.dtype)
    shape = (1, -1, 1, 1)
    x_hat = (x - layer.running_mean.view(shape)) * torch.rsqrt(layer.running_var.view(shape) + layer.eps)
    y = x_hat * layer.weight.detach().view(shape) + layer.bias.detach().view(shape)
    _, pullback = torch.func.vjp(lambda z: layer.act(layer.drop(z)), y)
    g = pullback(backprops)[0]
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = (x_hat * g).sum(dim=(2, 3))
    if layer.bias.requires_grad:
        out[layer.bias] = g.sum(dim=(2, 3))
    return out


# The non-linear network's convolutions get the same grouped per-sample kernels as the tangent twins.
# This replaces Opacus's nn.Conv2d sampler in every process that imports this module (the benchmarks,
# and the test worker that runs their tests): same per-sample gradients, tested against Opacus's.
register_grad_sampler(nn.Conv2d)(compute_conv2d_grad_sample)
register_norm_sampler(nn.Conv2d)(compute_conv2d_norm_sample)


class NonLinearSuffix(nn.Module):
    """The ordinary network from the tangent model's cached prefix features, ``selected`` trainable.

    Only modules owning a trainable parameter follow ``train()`` (Opacus captures activations only
    in train mode); everything else stays in eval: running BatchNorm statistics, no dropout."""

    def __init__(self, base: nn.Module, tangent: TangentModel) -> None:
        super().__init__()
        net = copy.deepcopy(base).eval()
        for module in net.modules():
            if getattr(module, "inplace", False) is True:  # Opacus's backward hooks refuse in-place outputs
                module.inplace = False
            for child_name, child in list(module.named_children()):
                if type(child) is BatchNormAct2d:
                    frozen = FrozenStatsBatchNormAct2d.__new__(FrozenStatsBatchNormAct2d)
                    frozen.__dict__ = child.__dict__
                    setattr(module, child_name, frozen)
        selected = {name for name, _ in tangent.named_deltas()}
        for name, param in net.named_parameters():
            param.requires_grad_(name in selected)
        self.net, self.layout, self.cut = net, tangent.layout, tangent.cut
        self.train(False)

    def parameters_trained(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layout.run_suffix(self.net, h, self.cut)

    def train(self, mode: bool = True) -> "NonLinearSuffix":
        self.training = mode
        for module in self.net.modules():
            module.training = bool(mode and any(p.requires_grad for p in module.parameters(recurse=False)))
        return self


def trained_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The deltas of a tangent model (or its ``on_features()`` view), else the trainable parameters."""
    tangent = getattr(module, "tangent", module)
    if isinstance(tangent, TangentModel):
        return tangent.deltas()
    return [p for p in module.parameters() if p.requires_grad]


def train(module: nn.Module, h: torch.Tensor, y: torch.Tensor, plan: Plan, privacy: PrivacySpec,
          config: TrainConfig, progress: ProgressFn | None = None) -> None:
    """Train ``module``'s trainable parameters in place on cached features ``h`` as ``plan`` says.

    The library's own loop (:func:`dp_tangent.training.run_sgd`), for every method alike, with the
    noise seeded by ``config.seed`` (reproducible benchmark numbers; see the module doc)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        run_sgd(module, trained_parameters(module), h, y, plan, privacy, dataclasses.replace(config, noise="seeded"),
                progress)
