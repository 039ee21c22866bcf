"""Block layouts: how a network splits into stem, a sequence of blocks, and a tail.

A layout lets :func:`dp_tangent.linearize` cut a network into a frozen prefix (stem + the blocks
before the first linearized one), whose outputs can be cached, and the linearized suffix. A timm
layout also understands the cut after every block, ``len(blocks) + 1``: the prefix then runs to the
classifier's input (timm's ``forward_head(..., pre_logits=True)``: pooled, a vector per example) and
the suffix is the classifier alone, so that a linear probe trains on cached pre-logits. Each
layout mirrors its family's own ``forward``; ``tests/test_layouts.py`` checks that
``suffix(prefix(x)) == model(x)`` bit for bit so that drift in the upstream code is caught.
Register a layout for a new family with :func:`register_layout`, or let the model state its own
(``block_names()``, ``stem_names``, ``run_prefix``, ``run_suffix``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..lazy import run_pending, when_imported

Runner = Callable[[nn.Module, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class BlockLayout:
    """``block_names(net)`` in order; ``stem`` names (attributes before the blocks); prefix/suffix runners.

    ``run_prefix(net, x, cut)`` runs the stem and blocks ``[:cut]``; ``run_suffix(net, h, cut)`` runs
    blocks ``[cut:]`` and the tail, so that ``run_suffix(net, run_prefix(net, x, k), k) == net(x)``.
    With ``pre_logits``, ``k = len(blocks) + 1`` is a cut too: everything before the classifier in the prefix,
    the classifier alone in the suffix (:func:`timm_layout`).
    """

    block_names: Callable[[nn.Module], list[str]]
    stem: tuple[str, ...]
    run_prefix: Runner
    run_suffix: Runner
    pre_logits: bool = False


_LAYOUTS: dict[type[nn.Module], BlockLayout] = {}


def register_layout(model_type: type[nn.Module], layout: BlockLayout) -> None:
    _LAYOUTS[model_type] = layout


def layout_for(model: nn.Module) -> BlockLayout | None:
    run_pending()  # timm's layouts, registered once timm is imported
    for cls in type(model).__mro__:
        if cls in _LAYOUTS:
            return _LAYOUTS[cls]
    return _self_described(model)


_SELF_DESCRIBED = ("block_names", "stem_names", "run_prefix", "run_suffix")


def _self_described(model: nn.Module) -> BlockLayout | None:
    """A model that states its own layout (``block_names()``, ``stem_names``, ``run_prefix(x, cut)``,
    ``run_suffix(h, cut)``), e.g. the text classifiers of :mod:`dp_tangent.backbones.hf_family`, which
    this layer cannot import."""
    if not all(hasattr(model, attr) for attr in _SELF_DESCRIBED):
        return None
    return BlockLayout(lambda net: list(net.block_names()), tuple(model.stem_names),
                       lambda net, x, cut: net.run_prefix(x, cut), lambda net, h, cut: net.run_suffix(h, cut))


def _children_of(attr: str) -> Callable[[nn.Module], list[str]]:
    return lambda net: [f"{attr}.{name}" for name, _ in getattr(net, attr).named_children()]


def _run_seq(seq: nn.Module, x: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
    for block in list(seq.children())[start:stop]:
        x = block(x)
    return x


def _vit_prefix(net: nn.Module, x: torch.Tensor, cut: int) -> torch.Tensor:
    x = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
    return _run_seq(net.blocks, x, 0, cut)


def _vit_suffix(net: nn.Module, h: torch.Tensor, cut: int) -> torch.Tensor:
    blocks = list(net.blocks.children())[cut:]
    if not (blocks and _class_token_pooled(net) and _plain_block(blocks[-1])):
        return net.forward_head(net.norm(_run_seq(net.blocks, h, cut, None)))
    for block in blocks[:-1]:
        h = block(h)
    return net.forward_head(net.norm(_first_token_of_block(blocks[-1], h)))


#: timm versions whose ViT ``Block`` and ``Attention`` forwards :func:`_first_token_of_block` mirrors.
CHECKED_TIMM_VERSIONS = ("1.0.31",)


def _class_token_pooled(net: nn.Module) -> bool:
    """Whether the head reads the first token alone (``global_pool='token'``, no attention pool): the last block's
    other tokens are then computed for nothing."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    # the class itself: a subclass may read more (review 117: DeiT's distilled head reads the second token too)
    return (timm.__version__ in CHECKED_TIMM_VERSIONS and type(net) is VisionTransformer
            and getattr(net, "attn_pool", None) is None and getattr(net, "global_pool", None) == "token")


def _plain_block(block: nn.Module) -> bool:
    """A timm ViT ``Block`` with its ``Attention`` (no gate), whose forwards :func:`_first_token_of_block` mirrors."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    return type(block) is Block and type(block.attn) is Attention and getattr(block.attn, "gate", None) is None


def _first_token_of_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)[:, :1]`` with only that token's query, projection and MLP computed (keys and values are every
    token's): the last block of a ViT whose head pools the class token. On the benchmark ViT (65 tokens) a DP
    tangent step of its last two blocks took about a third less time, the Gram precompute about a quarter less
    (docs/tangent-models.md)."""
    import torch.nn.functional as F

    attn = block.attn
    y = block.norm1(x)
    batch, tokens, _ = y.shape
    qkv = attn.qkv(y).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    q = q[:, :, :1]
    if attn.fused_attn:
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        o = attn.attn_drop((q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
    o = attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(batch, 1, -1))))
    x = x[:, :1] + block.drop_path1(block.ls1(o))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _effnet_prefix(net: nn.Module, x: torch.Tensor, cut: int) -> torch.Tensor:
    return _run_seq(net.blocks, net.bn1(net.conv_stem(x)), 0, cut)


def _effnet_suffix(net: nn.Module, h: torch.Tensor, cut: int) -> torch.Tensor:
    return net.forward_head(net.bn2(net.conv_head(_run_seq(net.blocks, h, cut, None))))


_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _resnet_prefix(net: nn.Module, x: torch.Tensor, cut: int) -> torch.Tensor:
    x = net.maxpool(net.act1(net.bn1(net.conv1(x))))
    for name in _RESNET_STAGES[:cut]:
        x = getattr(net, name)(x)
    return x


def _resnet_suffix(net: nn.Module, h: torch.Tensor, cut: int) -> torch.Tensor:
    for name in _RESNET_STAGES[cut:]:
        h = getattr(net, name)(h)
    return net.forward_head(h)


def timm_layout(block_names: Callable[[nn.Module], list[str]], stem: tuple[str, ...], run_prefix: Runner,
                run_suffix: Runner) -> BlockLayout:
    """A layout of a timm model, whose cut ``len(blocks) + 1`` leaves the classifier alone in the suffix: the
    prefix is ``forward_head(forward_features(x), pre_logits=True)``, the suffix ``get_classifier()``, the same
    ops as ``net(x)`` (the dropout before timm's classifiers is off in eval mode, as in the tangent model)."""

    def prefix(net: nn.Module, x: torch.Tensor, cut: int) -> torch.Tensor:
        if cut > len(block_names(net)):
            return net.forward_head(net.forward_features(x), pre_logits=True)
        return run_prefix(net, x, cut)

    def suffix(net: nn.Module, h: torch.Tensor, cut: int) -> torch.Tensor:
        return net.get_classifier()(h) if cut > len(block_names(net)) else run_suffix(net, h, cut)

    return BlockLayout(block_names, stem, prefix, suffix, pre_logits=True)


def _register_timm_layouts() -> None:
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    register_layout(
        VisionTransformer,
        timm_layout(_children_of("blocks"), ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre"),
                    _vit_prefix, _vit_suffix),
    )
    register_layout(EfficientNet,
                    timm_layout(_children_of("blocks"), ("conv_stem", "bn1"), _effnet_prefix, _effnet_suffix))
    register_layout(ResNet,
                    timm_layout(lambda net: list(_RESNET_STAGES), ("conv1", "bn1"), _resnet_prefix, _resnet_suffix))


when_imported("timm", _register_timm_layouts)
register_layout(
    nn.Sequential,
    BlockLayout(lambda net: [name for name, _ in net.named_children()], (),
                lambda net, x, cut: _run_seq(net, x, 0, cut), lambda net, h, cut: _run_seq(net, h, cut, None)),
)
