"""Packaged EfficientNet-Lite0 weights, checkpoints, heads and digests."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dp_tangent import WeightsError
from dp_tangent.backbones import PACKAGED, create_backbone, read_state_dict, weights_digest


def test_packaged_efficientnet_lite0_assigns_all_296_tensors() -> None:
    source = read_state_dict(PACKAGED["efficientnet_lite0"].locate())
    model = create_backbone("efficientnet_lite0", pretrained="packaged")
    loaded = model.state_dict()
    assert len(source) == len(loaded) == 296
    for (src_name, src), (name, tensor) in zip(source.items(), loaded.items()):
        assert torch.equal(src, tensor), (src_name, name)
    random = create_backbone("efficientnet_lite0")
    assert not torch.equal(random.conv_stem.weight, model.conv_stem.weight)


def test_new_head_is_seeded_and_body_kept() -> None:
    a = create_backbone("efficientnet_lite0", pretrained="packaged", num_classes=10, head_seed=3)
    b = create_backbone("efficientnet_lite0", pretrained="packaged", num_classes=10, head_seed=3)
    c = create_backbone("efficientnet_lite0", pretrained="packaged", num_classes=10, head_seed=4)
    assert a.classifier.weight.shape == (10, 1280)
    assert weights_digest(a) == weights_digest(b) != weights_digest(c)
    assert torch.equal(a.conv_head.weight, c.conv_head.weight)


def test_a_network_without_weights_is_the_same_on_every_build_and_leaves_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = (create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2) for _ in range(2))
    c = create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, head_seed=1)
    assert weights_digest(a) == weights_digest(b) != weights_digest(c)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_checkpoint_files_by_name_and_by_position(tmp_path) -> None:
    model = create_backbone("resnet18", num_classes=7)
    by_name = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(by_name))
    assert weights_digest(create_backbone("resnet18", num_classes=7, checkpoint=by_name)) == weights_digest(model)
    renamed = tmp_path / "renamed.pth"
    torch.save({"state_dict": {f"x{i}": v for i, v in enumerate(model.state_dict().values())}}, renamed)
    assert weights_digest(create_backbone("resnet18", num_classes=7, checkpoint=renamed)) == weights_digest(model)


def test_weight_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("resnet18", checkpoint=tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        create_backbone("resnet18", checkpoint=garbage)
    wrong = tmp_path / "wrong.pth"
    torch.save(create_backbone("resnet18", num_classes=3).state_dict(), wrong)
    with pytest.raises(WeightsError, match="shape"):
        create_backbone("resnet18", checkpoint=wrong)
    with pytest.raises(WeightsError, match="no packaged weights"):
        create_backbone("resnet18", pretrained="packaged")
