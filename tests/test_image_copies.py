"""An image is one record under any name: a byte-identical copy, in the same folder or another data source, is
refused before any budget (review 112: a folder copied with renamed class folders was new records, each copy
trained and charged apart, and a deletion left the copies trained)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dp_tangent.components.manifest import commit
from dp_tangent.workspace import Workspace
from helpers import run_cli
from owndata import write_image_folder, write_recipe


def _recipe(path: Path, root: str, classes: list[str], source: str) -> Path:
    return write_recipe(path, {
        "backbone": {"name": "test_efficientnet", "num_classes": 2}, "trainable": "head",
        "data": {"image_folder": {"root": root, "classes": classes, "image_size": 16}},
        "privacy": {"epsilon": 8, "delta": 1e-5}, "training": {"epochs": 1, "batch_size": 4}, "data_source": source})


def _train(capsys: pytest.CaptureFixture[str], recipe: Path, name: str) -> tuple[int, str, str]:
    return run_cli(capsys, "train", "--init", str(recipe), "--name", name, "-w", "ws", "--executor", "serial")


def _refused_before_anything(capsys: pytest.CaptureFixture[str], recipe: Path, name: str) -> str:
    """The error of a train that must be refused with nothing reserved, registered or logged."""
    registry, events = Path("ws/data-sources.json").read_bytes(), len(Workspace.open("ws").ledger.events())
    log = Path("ws/audit.log").read_bytes() if Path("ws/audit.log").exists() else None
    code, _, err = _train(capsys, recipe, name)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert Path("ws/data-sources.json").read_bytes() == registry
    assert len(Workspace.open("ws").ledger.events()) == events
    if log is not None:
        assert Path("ws/audit.log").read_bytes() == log
    return err


def test_a_copied_image_is_refused_in_another_data_source_and_in_the_same_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_image_folder(Path("imgs"), 16)
    code, _, err = _train(capsys, _recipe(Path("r.yaml"), "imgs", ["a", "b"], "imgs"), "first")
    assert code == 0, err
    key = Workspace.open("ws").manifest_key()
    images = json.loads(Path("ws/data-sources.json").read_text())["content"]["imgs"]["images"]
    assert len(images) == 16 and commit("a/0001.png", key) in images
    tags = json.loads(Path("ws/data-sources.json").read_text())["content"]["imgs"]["tags"]
    assert not set(images.values()) & set(tags.values())  # the image alone, not its id and label

    # the folder copied with its class folders renamed: 16 new ids, the same images
    shutil.copytree("imgs/a", "copy/cats")
    shutil.copytree("imgs/b", "copy/dogs")
    copied = _recipe(Path("copy.yaml"), "copy", ["cats", "dogs"], "copy")
    err = _refused_before_anything(capsys, copied, "copied")
    assert "data source 'copy': image 'cats/0001.png' has the same bytes as 'a/0001.png' of data source 'imgs' (" in err
    assert "trained and charged as a record of its own, and stay trained after a deletion of the other" in err
    assert "take it out of this data: data source 'imgs' holds the image already (16 images of it are copies; " \
           "byte-identical images are one record here)" in err
    # other images there register as usual
    shutil.rmtree("copy")
    write_image_folder(Path("copy"), 6, size=14)
    for label in ("a", "b"):
        Path("copy", label).rename(Path("copy", "cats" if label == "a" else "dogs"))
    code, _, err = _train(capsys, copied, "other")
    assert code == 0, err

    # the same bytes twice in one folder, as a new file
    shutil.copy("imgs/a/0001.png", "imgs/b/0100.png")
    err = _refused_before_anything(capsys, _recipe(Path("r.yaml"), "imgs", ["a", "b"], "imgs"), "again")
    assert "data source 'imgs': image 'b/0100.png' has the same bytes as 'a/0001.png'" in err
    assert err.strip().endswith("take it out of the data"), err  # the new file is the copy, whatever the order
    Path("imgs/b/0100.png").unlink()
    shutil.copy("imgs/b/0002.png", "imgs/a/0000-copy.png")  # before its original in the folder's order
    err = _refused_before_anything(capsys, _recipe(Path("r.yaml"), "imgs", ["a", "b"], "imgs"), "again")
    assert "image 'a/0000-copy.png' has the same bytes as 'b/0002.png'" in err and "take it out of the data" in err
    Path("imgs/a/0000-copy.png").unlink()
    write_image_folder(Path("new"), 40)  # two new files, one image
    shutil.copy("new/a/0039.png", "imgs/a/0200.png")
    shutil.copy("new/a/0039.png", "imgs/b/0201.png")
    err = _refused_before_anything(capsys, _recipe(Path("r.yaml"), "imgs", ["a", "b"], "imgs"), "again")
    assert "image 'b/0201.png' has the same bytes as 'a/0200.png'" in err and "keep one of the two files" in err
    Path("imgs/b/0201.png").unlink()
    assert _train(capsys, _recipe(Path("r.yaml"), "imgs", ["a", "b"], "imgs"), "grown")[0] == 0

    # two new copies of another source's image: both named as that (keeping either would be refused next)
    shutil.copy("imgs/a/0003.png", "copy/cats/x1.png")
    shutil.copy("imgs/a/0003.png", "copy/dogs/x2.png")
    err = _refused_before_anything(capsys, copied, "copies")
    assert "image 'cats/x1.png' has the same bytes as 'a/0003.png' of data source 'imgs'" in err
    assert "(2 images of it are copies; " in err
    Path("copy/cats/x1.png").unlink()
    Path("copy/dogs/x2.png").unlink()

    # a deletion keeps nothing derived from the record: its image's tag goes too
    code, _, err = run_cli(capsys, "forget", "a/0001.png", "--request-id", "r1", "--retrain", "-w", "ws")
    assert code == 0, err
    content = json.loads(Path("ws/data-sources.json").read_text())["content"]["imgs"]
    assert commit("a/0001.png", key) not in content["images"] and len(content["images"]) == 16
    # review 114: while its file is still in the folder (allowed), a copy of it would train the deleted image again
    shutil.copy("imgs/a/0001.png", "imgs/b/0001-again.png")
    err = _refused_before_anything(capsys, _recipe(Path("r.yaml"), "imgs", ["a", "b"], "imgs"), "after")
    assert "image 'b/0001-again.png' has the same bytes as 'a/0001.png', which a deletion request removed: it would " \
           "train the deleted image again; take it out of the data" in err
    Path("imgs/b/0001-again.png").unlink()
    images = json.loads(Path("ws/data-sources.json").read_text())["content"]["imgs"]["images"]
    assert len(images) == 16 and commit("b/0001-again.png", key) not in images


def test_images_given_to_the_python_api_are_checked_for_copies_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 114: ``Workspace.train`` with records read directly (no loader registered) trained a renamed copy of a
    registered folder."""
    from dp_tangent.backbones import BackboneSpec
    from dp_tangent.data.images import image_folder_records
    from dp_tangent.training import PrivacySpec, TrainConfig
    from dp_tangent.workspace.data_sources import DataSourceError

    monkeypatch.chdir(tmp_path)
    write_image_folder(Path("imgs"), 8)
    assert _train(capsys, _recipe(Path("r.yaml"), "imgs", ["a", "b"], "imgs"), "first")[0] == 0
    shutil.copytree("imgs/a", "copy/cats")
    shutil.copytree("imgs/b", "copy/dogs")
    ws = Workspace.open("ws")
    events = len(ws.ledger.events())
    records = image_folder_records(Path("copy"), 16, classes=["cats", "dogs"])
    with pytest.raises(DataSourceError, match=r"image 'cats/0001.png' has the same bytes as 'a/0001.png' of data "
                                              r"source 'imgs'"):
        ws.train(BackboneSpec(name="test_efficientnet", num_classes=2), "head", records, data_source="apicopy",
                 shard="s0", name="apicopy-0", privacy=PrivacySpec(epsilon=8, delta=1e-5),
                 config=TrainConfig(epochs=1, batch_size=4))
    assert len(ws.ledger.events()) == events and ws.list_components() == ["first-shard-0"]


def test_a_registry_without_image_tags_gains_them_and_then_finds_copies_already_registered(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources an earlier version registered kept no image tags: a copy registered since could not be compared with
    them, so their next registration compares every record, and a copy both hold is refused with the way out."""
    from dp_tangent.workspace import data_sources

    monkeypatch.chdir(tmp_path)
    write_image_folder(Path("imgs"), 8)
    original = _recipe(Path("r.yaml"), "imgs", ["a", "b"], "imgs")
    with monkeypatch.context() as earlier:  # an earlier version: no image tags
        digests = data_sources.content_digests
        earlier.setattr(data_sources, "content_digests", lambda records: (digests(records)[0], None))
        assert _train(capsys, original, "first")[0] == 0
    assert "images" not in json.loads(Path("ws/data-sources.json").read_text())["content"]["imgs"] or \
        json.loads(Path("ws/data-sources.json").read_text())["content"]["imgs"]["images"] is None
    shutil.copytree("imgs/a", "copy/x")
    shutil.copytree("imgs/b", "copy/y")
    code, _, err = _train(capsys, _recipe(Path("copy.yaml"), "copy", ["x", "y"], "copy"), "copied")
    assert code == 0, err  # nothing to compare with yet
    err = _refused_before_anything(capsys, original, "again")
    assert "data source 'imgs': image 'a/0001.png' has the same bytes as 'x/0001.png' of data source 'copy' (" in err
    assert "the workspace holds both as records: file a deletion request for one (`dp-tangent forget a/0001.png" in err
    assert "(8 images of it are copies; " in err
