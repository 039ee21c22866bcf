"""Frozen prefix + linearized suffix reproduce the network; cached features skip the prefix."""

from __future__ import annotations

import pytest
import torch
from conftest import build

from dp_tangent import linearize
from dp_tangent.tangent.layouts import layout_for
from dp_tangent.training.features import FeatureDataset, precompute_features


def test_prefix_then_suffix_is_the_model_bit_for_bit(arch: str) -> None:
    model, x, _ = build(arch)
    layout = layout_for(model)
    for cut in range(len(layout.block_names(model)) + (2 if layout.pre_logits else 1)):  # pre-logits: + 1
        with torch.no_grad():
            assert torch.equal(layout.run_suffix(model, layout.run_prefix(model, x, cut), cut), model(x)), cut


def test_cached_features_give_the_same_outputs_without_running_the_prefix(arch: str) -> None:
    model, x, suffix = build(arch)
    tangent = linearize(model, suffix)
    tangent.load_deltas({n: 0.01 * torch.randn_like(p) for n, p in tangent.named_deltas()})
    features = precompute_features(tangent, x, batch_size=len(x))
    in_batches = precompute_features(tangent, x, batch_size=3)
    assert torch.allclose(in_batches, features, rtol=1e-12, atol=1e-12)  # BLAS blocking may differ in the last bit
    calls = []
    first_block = tangent.net.get_submodule(layout_for(model).block_names(model)[0])
    handle = first_block.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            assert torch.equal(tangent.on_features()(features), tangent(x))
            calls.clear()
            tangent.on_features()(features)
    finally:
        handle.remove()
    if tangent.cut and tangent.cut > 0:
        assert calls == [], "the first block belongs to the frozen prefix and must not run again"
    dataset = FeatureDataset(features, torch.arange(len(x)))
    assert len(dataset) == len(x) and torch.equal(dataset[1][0], features[1])


def test_a_linear_probe_trains_on_cached_pre_logits_and_runs_the_classifier_alone(arch: str) -> None:
    """``head`` on a timm model: the prefix runs to the classifier's input (one pooled vector per example), so a
    step on cached features runs no block and no frozen tail layer (e.g. EfficientNet's 1x1 conv_head)."""
    model, x, _ = build(arch)
    layout = layout_for(model)
    if not layout.pre_logits:
        pytest.skip("an nn.Sequential layout: its last block is the classifier already")
    tangent = linearize(model, "head")
    tangent.load_deltas({n: 0.01 * torch.randn_like(p) for n, p in tangent.named_deltas()})
    assert tangent.cut == len(layout.block_names(model)) + 1
    features = precompute_features(tangent, x, batch_size=len(x))
    assert features.shape == (len(x), tangent.net.get_classifier().in_features)
    ran = []
    hooks = [m.register_forward_hook(lambda module, *args: ran.append(module)) for m in tangent.net.modules()
             if not list(m.children())]
    try:
        module = tangent.on_features().train()
        out = module(features)
        out.sum().backward()
    finally:
        for hook in hooks:
            hook.remove()
    assert {type(m).__name__ for m in ran} == {"TangentLinear"}  # the classifier alone, in both passes
    with torch.no_grad():
        assert torch.equal(out.detach(), tangent(x))
    classifier = next(n for n, m in model.named_modules() if m is model.get_classifier())
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    ones = torch.ones(out.shape[1], len(x), dtype=x.dtype)  # d sum(out) / d W = 1 (K x n) @ pre-logits (n x D)
    assert torch.allclose(dict(tangent.named_deltas())[f"{classifier}.weight"].grad, ones @ pre_logits,
                          rtol=1e-12, atol=1e-12)
