"""Frozen prefix + linearized suffix reproduce the network; cached features skip the prefix."""

from __future__ import annotations

import torch
from conftest import build

from dp_tangent import linearize
from dp_tangent.training.features import FeatureDataset, precompute_features
from dp_tangent.tangent.layouts import layout_for


def test_prefix_then_suffix_is_the_model_bit_for_bit(arch: str) -> None:
    model, x, _ = build(arch)
    layout = layout_for(model)
    for cut in range(len(layout.block_names(model)) + 1):
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
