"""Exact per-sample gradients of a tangent model's loss, and the naive reference.

Route chosen: Opacus's per-layer hooks on the base network at theta0, seeded with
v_i = dLoss_i/d(output) at f_lin(x_i). Since d f_lin / d delta = J(x; theta0), the per-sample
gradient J_i^T v_i is the ordinary per-sample gradient of <f(x_i; theta), v_i> at theta0, which is
what the hooks compute from the activations at theta0 and the backprops. This reuses Opacus's
maintained samplers (and its ghost-clipping norms) instead of hand-written tangent layers, and
costs one dual forward plus one backward. The reference, ``vmap(grad(jvp))``, differentiates the
tangent loss of each example separately; tests check one against the other.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from opacus import GradSampleModule
from torch.func import functional_call, grad, jvp, vmap

from . import grad_samplers  # noqa: F401 -- registers the twins' grad samplers
from .losses import ConvexLoss
from ..tangent.model import TangentModel, _disable_fused_attention
from ..tangent.twins import load_jvp_decompositions
from .validation import check_per_sample_support


def per_sample_gradients(model: TangentModel, x: torch.Tensor, y: torch.Tensor, loss: ConvexLoss,
                         *, from_features: bool = False) -> dict[str, torch.Tensor]:
    """{delta name: (batch, *shape)} gradients of ``loss.per_sample`` at the current deltas."""
    check_per_sample_support(model)
    module = model.on_features() if from_features else model
    was_training = model.training
    # strict=False: Opacus refuses trainable layers with buffers because buffers such as batch-norm
    # statistics can hold private data. A twin's buffers are theta0 and pretraining statistics,
    # frozen and never updated from the data being trained on.
    gsm = GradSampleModule(module, batch_first=True, loss_reduction="sum", strict=False)
    try:
        gsm.train()
        loss.per_sample(gsm(x), y).sum().backward()
        return {name: p.grad_sample.detach().clone() for name, p in model.named_deltas()}
    finally:
        gsm._close()
        for p in model.deltas():
            p.grad = None
        model.train(was_training)


def reference_per_sample_gradients(base: nn.Module, deltas: dict[str, torch.Tensor], x: torch.Tensor,
                                   y: torch.Tensor, loss: ConvexLoss) -> dict[str, torch.Tensor]:
    """vmap over examples of grad_delta loss(f(x; theta0) + jvp(f, theta0, delta)): the naive route."""
    load_jvp_decompositions()
    ref = copy.deepcopy(base).eval()
    _disable_fused_attention(ref)
    params = {n: p.detach() for n, p in ref.named_parameters()}
    buffers = dict(ref.named_buffers())
    primals = {n: params[n] for n in deltas}

    def example_loss(d: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(ref, {**params, **buffers, **p}, (xi.unsqueeze(0),))

        out, tangent = jvp(f, (primals,), (d,))
        return loss.per_sample(out + tangent, yi.unsqueeze(0)).sum()

    return vmap(grad(example_loss), in_dims=(None, 0, 0))(deltas, x, y)
