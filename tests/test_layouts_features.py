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
    blocks = len(layout.block_names(model))
    for cut in range(blocks + (2 if layout.pre_logits else 1)):  # pre-logits: + 1
        with torch.no_grad():
            out = layout.run_suffix(model, layout.run_prefix(model, x, cut), cut)
        if arch == "vit" and cut < blocks:  # its last block computes the class token alone: other products' rounding
            assert torch.allclose(out, model(x), rtol=0, atol=1e-12), cut
        else:
            assert torch.equal(out, model(x)), cut


@pytest.mark.parametrize("fused", [False, True])
def test_a_vits_last_block_computes_the_class_token_alone_when_the_head_reads_it_alone(fused: bool,
                                                                                     monkeypatch) -> None:
    """The head of a ViT pooling its class token reads the last block's first token alone: that token's query,
    projection and MLP are all the last block computes, and the tangent model's value and gradient are the full
    computation's (float64); a ViT pooling every token is computed in full."""
    from conftest import small_vit

    from dp_tangent.tangent import layouts

    model, x, suffix = build("vit")
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    full, pruned = [], []
    first_token = layouts._first_token_of_block
    monkeypatch.setattr(layouts, "_first_token_of_block", lambda *a: pruned.append(1) or first_token(*a))
    mlp = model.blocks[-1].mlp.fc1
    hook = mlp.register_forward_hook(lambda m, i, o: full.append(i[0].shape[1]))
    with torch.no_grad():
        out = layout_for(model).run_suffix(model, layout_for(model).run_prefix(model, x, 1), 1)
    hook.remove()
    assert pruned and full == [1] and torch.allclose(out, model(x), rtol=0, atol=1e-12)

    tangent = linearize(model, suffix)
    deltas = {n: 0.01 * torch.randn_like(p) for n, p in tangent.named_deltas()}
    tangent.load_deltas(deltas)
    value = tangent(x)
    value.square().sum().backward()
    grads = [p.grad.clone() for p in tangent.deltas()]
    checked = layouts.CHECKED_TIMM_VERSIONS
    monkeypatch.setattr(layouts, "CHECKED_TIMM_VERSIONS", ())  # the full computation
    reference = linearize(model, suffix)
    reference.load_deltas(deltas)
    expected = reference(x)
    expected.square().sum().backward()
    monkeypatch.setattr(layouts, "CHECKED_TIMM_VERSIONS", checked)
    assert torch.allclose(value, expected, rtol=0, atol=1e-12)
    assert all(torch.allclose(g, p.grad, rtol=1e-10, atol=1e-12) for g, p in zip(grads, reference.deltas()))

    pruned.clear()
    torch.manual_seed(0)
    averaged = small_vit(global_pool="avg", class_token=False).to(torch.float64).eval()
    with torch.no_grad():
        out = layout_for(averaged).run_suffix(averaged, layout_for(averaged).run_prefix(averaged, x, 1), 1)
    assert not pruned and torch.equal(out, averaged(x))
    # review 117: DeiT's distilled head reads the second token too (a subclass of VisionTransformer)
    import timm

    distilled = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=4, depth=3,
                                  num_classes=10).to(torch.float64).eval()
    with torch.no_grad():
        out = layout_for(distilled).run_suffix(distilled, layout_for(distilled).run_prefix(distilled, x, 1), 1)
    assert not pruned and torch.equal(out, distilled(x))
    assert torch.allclose(linearize(distilled, "blocks[-2:]")(x), distilled(x), rtol=0, atol=1e-12)


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
