"""Opacus grad samplers for tangent twins, registered the Opacus way (by module type).

A twin's per-sample gradient is the base layer's per-sample gradient at theta0 (it depends only on
the captured activation and backprop, never on the weight's value), so twins of Linear, Conv and
LayerNorm reuse Opacus's own samplers, ghost-clipping norm samplers included. BatchNorm twins
(running statistics, so per-sample gradients exist) get the sampler below.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus.grad_sample.grad_sample_module import GradSampleHooks
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleHooksFastGradientClipping
from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler
from torch.nn.modules.batchnorm import _BatchNorm

from ..lazy import when_imported
from ..tangent.twins import TangentLayer, is_batch_norm_act, supported_types, twin_class


def _pre_activation_backprops(layer: TangentLayer, x: torch.Tensor, backprops: torch.Tensor) -> torch.Tensor:
    """Opacus hands the gradient w.r.t. the module output; a BatchNormAct's affine sits before its
    activation, so pull the gradient back through act(drop(.)) at theta0."""
    y = F.batch_norm(x, layer.running_mean, layer.running_var, layer.theta0("weight"), layer.theta0("bias"),
                     False, 0.0, layer.eps)
    if not is_batch_norm_act(layer):
        return backprops
    _, pullback = torch.func.vjp(lambda z: layer.act(layer.drop(z)), y)
    return pullback(backprops)[0]


def compute_batch_norm_grad_sample(
    layer: TangentLayer, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """weight: sum over positions of x_hat * g; bias: sum of g (per sample, per channel)."""
    x = activations[0].to(backprops.dtype)
    return batch_norm_samples(layer, x, _pre_activation_backprops(layer, x, backprops))


def batch_norm_x_hat(layer: TangentLayer, x: torch.Tensor) -> torch.Tensor:
    """x_hat = (x - running_mean) · rsqrt(running_var + eps), per channel (dim 1): an eval-mode BatchNorm's
    normalisation."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - layer.running_mean.view(shape)) * torch.rsqrt(layer.running_var.view(shape) + layer.eps)


def batch_norm_samples(layer: TangentLayer, x: torch.Tensor, g: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of an eval-mode BatchNorm's deltas from the gradient ``g`` of its normalisation's
    output (before a BatchNormAct's activation)."""
    x_hat = batch_norm_x_hat(layer, x)
    reduce = tuple(range(2, x.dim()))
    result = {}
    if "weight" in layer.delta_names:
        result[layer.weight] = (x_hat * g).sum(dim=reduce) if reduce else x_hat * g
    if "bias" in layer.delta_names:
        result[layer.bias] = g.sum(dim=reduce) if reduce else g
    return result


def _as_base(base: type[nn.Module], sampler: Callable) -> Callable:
    """Call an Opacus sampler on a view of the twin typed as its base layer (Opacus's conv sampler
    dispatches on ``type(layer) is nn.Conv2d``). The view shares the twin's parameters."""

    def delegated(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
        view = base.__new__(base)
        view.__dict__ = layer.__dict__
        return sampler(view, activations, backprops)

    return delegated


def compute_conv2d_grad_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of a (grouped) Conv2d, group by group.

    Opacus's sampler computes the full (C_out x C_in*k*k) product and then keeps the block
    diagonal, which for a depthwise conv (groups = channels) is C times the work and memory needed;
    EfficientNets are mostly depthwise and pointwise convs. Here: unfold (skipped for 1x1 convs),
    split channels into groups, and contract per group.
    """
    x = activations[0].to(backprops.dtype)
    g, cols = _conv2d_operands(layer, x, backprops)
    out_channels, in_per_group = layer.weight.shape[:2]
    result = {}
    if layer.weight.requires_grad:
        per_sample = torch.einsum("ngol,ngpl->ngop", g, cols)
        result[layer.weight] = per_sample.reshape(len(x), out_channels, in_per_group, *layer.kernel_size)
    if layer.bias is not None and layer.bias.requires_grad:
        result[layer.bias] = backprops.sum(dim=(2, 3))
    return result


def conv2d_columns(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Unfolded inputs per group, (n, G, C_in/G·k·k, L) for L output positions (no copy for 1x1 convs)."""
    pointwise = layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding == (0, 0)
    cols = x.flatten(2) if pointwise else F.unfold(
        x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    return cols.reshape(x.shape[0], layer.groups, -1, cols.shape[-1])


def _conv2d_operands(layer: nn.Conv2d, x: torch.Tensor, backprops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group: backprops (n, G, O/G, L) and unfolded inputs (n, G, C_in/G·k·k, L)."""
    cols = conv2d_columns(layer, x)
    return backprops.reshape(*cols.shape[:2], -1, cols.shape[-1]), cols


def unfoldable(layer: nn.Conv2d) -> bool:
    """Whether :func:`conv2d_columns` applies: zero padding given as numbers (not "same"/"valid")."""
    return layer.padding_mode == "zeros" and not isinstance(layer.padding, str)


def compute_conv2d_norm_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradient norms of a (grouped) Conv2d without materialising the gradients when
    that is cheaper (ghost clipping): ||sum_l g_l a_l^T||^2 = sum_{l,l'} (g_l.g_l')(a_l.a_l'),
    O(L^2 (O+P)) per group against O(L·O·P) for the gradient itself (L output positions)."""
    x = activations[0].to(backprops.dtype)
    g, cols = _conv2d_operands(layer, x, backprops)
    length, out_per_group, in_per_group = g.shape[-1], g.shape[2], cols.shape[2]
    result = {}
    if layer.weight.requires_grad:
        if length * length <= out_per_group * in_per_group:
            gram = torch.einsum("ngol,ngom->nglm", g, g) * torch.einsum("ngpl,ngpm->nglm", cols, cols)
            result[layer.weight] = gram.sum(dim=(1, 2, 3)).clamp(min=0).sqrt()
        else:
            result[layer.weight] = torch.einsum("ngol,ngpl->ngop", g, cols).flatten(1).norm(dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        result[layer.bias] = backprops.sum(dim=(2, 3)).norm(dim=1)
    return result


def _conv2d_norm_sampler(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    if not unfoldable(layer):
        samples = _conv2d_sampler(layer, activations, backprops)
        return {p: gs.flatten(1).norm(dim=1) for p, gs in samples.items()}
    return compute_conv2d_norm_sample(layer, activations, backprops)


def _conv2d_sampler(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    if not unfoldable(layer):
        return _as_base(nn.Conv2d, GradSampleHooks.GRAD_SAMPLERS[nn.Conv2d])(layer, activations, backprops)
    return compute_conv2d_grad_sample(layer, activations, backprops)


def _without_padding_row(sampler: Callable) -> Callable:
    """Opacus's embedding sampler scatters every position's gradient, ``padding_idx`` included; F.embedding
    gives the padding row no gradient, so its per-sample gradients are zeroed here."""

    def sample(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
        samples = sampler(layer, activations, backprops)
        if layer.padding_idx is not None and layer.weight in samples:
            samples[layer.weight][:, layer.padding_idx] = 0
        return samples

    return sample


def register() -> None:
    """Map every twin class to its base layer's samplers (idempotent)."""
    for base in supported_types():
        twin = twin_class(base)
        if issubclass(base, _BatchNorm):  # timm's BatchNormAct2d too
            register_grad_sampler(twin)(compute_batch_norm_grad_sample)
            continue
        if base is nn.Conv2d:
            register_grad_sampler(twin)(_conv2d_sampler)
            register_norm_sampler(twin)(_conv2d_norm_sampler)
            continue
        opacus_base = next((c for c in base.__mro__ if c in GradSampleHooks.GRAD_SAMPLERS), None)
        if opacus_base is None:
            continue
        sampler = _as_base(opacus_base, GradSampleHooks.GRAD_SAMPLERS[opacus_base])
        register_grad_sampler(twin)(_without_padding_row(sampler) if base is nn.Embedding else sampler)
        norm_sampler = GradSampleHooksFastGradientClipping.NORM_SAMPLERS.get(opacus_base)
        if norm_sampler is not None:
            register_norm_sampler(twin)(_as_base(opacus_base, norm_sampler))


def hookable(module: nn.Module) -> bool:
    return type(module) in GradSampleHooks.GRAD_SAMPLERS


register()
when_imported("timm", register)  # again once timm's layers have twins
