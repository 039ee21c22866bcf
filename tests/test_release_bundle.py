"""A release bundle from an untrusted or careless sender (review 43): what leaves, and what a recipient loads."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dp_tangent import load_release
from dp_tangent.backbones import BackboneSpec
from dp_tangent.cli import main
from dp_tangent.components.component import deltas_digest
from dp_tangent.errors import DPTangentError
from dp_tangent.io import sha256_file
from dp_tangent.recipes import load_recipe
from helpers import run_cli
from owndata import mlp_recipe, wine_bounds, write_recipe, write_wine_csv

SECRET = "/home/alice/hospital/patients-2026.csv"


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A bundle released from a workspace whose theta0 checkpoint is a .pt holding more than its weights."""
    root = tmp_path_factory.mktemp("release")
    names = write_wine_csv(root / "data" / "wine.csv", rows=range(178))
    lower, upper = wine_bounds()
    table = {"path": "data/wine.csv", "features": names, "label": "cultivar", "record_id": "wine_id",
             "classes": ["class_0", "class_1", "class_2"], "scaling": "bounds", "lower": lower, "upper": upper}
    recipe = mlp_recipe({"table": table}, in_features=13, classes=3, source="wine")
    theta0 = BackboneSpec.from_dict({**recipe["backbone"], "timm_kwargs": {}}).build().state_dict()
    # a checkpoint as a training script saves it: the weights, and what the run was (a path, a count, a key)
    torch.save({"model": theta0, "train_args": {"private_csv": SECRET, "n_private_records": 4693217, "hmac": "s3cr3t"}},
               root / "data" / "leaky.pt")
    recipe["backbone"]["checkpoint"] = "data/leaky.pt"
    recipe["budget"] = {"epsilon": 20, "delta": 1e-5}
    recipe["privacy"]["planned_shard_size"] = 80
    write_recipe(root / "wine.yaml", recipe)
    with _in(root):
        _cli("train", "--init", "wine.yaml", "-w", "ws", "--executor", "serial")
        out = _cli("release", "wine", "-o", "sent", "-w", "ws")
        np.save("rows.npy", load_recipe("wine.yaml").load_data()[0].inputs[:4].numpy())
    return root, out.split("release.json sha256 ")[1].split(":")[0]


@contextlib.contextmanager
def _in(folder: Path) -> Iterator[None]:
    here = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def _cli(*args: str) -> str:
    """The command line in this process, for a module fixture (no capsys): its stdout; exit 0 or an error."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as stop:
            assert not stop.code, err.getvalue()
    return out.getvalue()


@pytest.fixture
def bundle(sent: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The recipient's own copy of the bundle, in the test's working folder."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sent[0] / "sent", "copy")
    shutil.copy(sent[0] / "rows.npy", "rows.npy")
    return Path("copy")


def _edit(bundle: Path, change) -> None:  # noqa: ANN001
    statement = json.loads((bundle / "release.json").read_text())
    change(statement)
    (bundle / "release.json").write_text(json.dumps(statement))


def test_a_checkpoint_s_other_contents_never_leave_with_theta0(sent: tuple[Path, str]) -> None:
    root, digest = sent
    files = sorted(p.name for p in (root / "sent").iterdir())
    assert files == ["base-checkpoint.safetensors", "deltas.safetensors", "release.json"]
    written = root / "sent" / "base-checkpoint.safetensors"
    for raw in (written.read_bytes(), (root / "sent" / "release.json").read_bytes()):
        assert b"alice" not in raw and b"s3cr3t" not in raw and b"leaky" not in raw and b"4693217" not in raw
    with safe_open(written, "pt") as f:
        assert f.metadata() in (None, {})
    want = torch.load(root / "data" / "leaky.pt", weights_only=True)["model"]
    assert set(load_file(written)) == set(want)
    assert all(torch.equal(load_file(written)[k], v) for k, v in want.items())
    assert load_release(root / "sent", expected_sha256=digest).predict(torch.zeros(2, 13)).shape == (2, 3)


@pytest.mark.parametrize("change, says", [
    (lambda s: s["privacy"].update(epsilon=float("nan")), "privacy: "),
    (lambda s: s["privacy"].update(epsilon=-5.0, delta=2.0), "finite epsilon > 0, not -5.0"),
    (lambda s: s["privacy"].update(epsilon=None), "finite epsilon > 0, not None"),
    (lambda s: s["privacy"].update(delta=1.5), "a delta in [0, 1), not 1.5"),
    (lambda s: s["privacy"].update(differentially_private=False), "states no epsilon or delta"),
    (lambda s: s.pop("model"), "(model: Field required)"),
])
def test_a_privacy_claim_that_means_nothing_is_refused_naming_the_field(bundle: Path, change, says: str,  # noqa: ANN001
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    _edit(bundle, change)
    with pytest.raises(DPTangentError, match="is not a release statement this tool wrote") as caught:
        load_release(bundle)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    code, _, err = run_cli(capsys, "predict", str(bundle), "rows.npy")
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("change, says", [
    (lambda s: s["base"]["spec"].update(family="timm", name="local-dir:/etc"), "unknown timm model 'local-dir:/etc'"),
    (lambda s: s["base"]["spec"].update(family="timm", name="hf-hub:someone/model"), "unknown timm model"),
    (lambda s: s["base"]["spec"].update(timm_kwargs=[["checkpoint_path", "/etc/passwd"]]), "not a mapping"),
    (lambda s: s["base"]["spec"].update(timm_kwargs={"cache_dir": "/tmp"}), "reads cache_dir from outside"),
    (lambda s: s["base"]["spec"].update(checkpoint="../leaky.pt"), "is not in the bundle"),
    (lambda s: s["base"]["spec"].update(family="transformers", name="model-here", pretrained=True, checkpoint=None,
                                          options={}),
     "the local folder 'model-here', relative to where this runs"),
])
def test_a_base_model_from_anywhere_but_the_bundle_or_a_public_source_is_refused(
        bundle: Path, change, says: str, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    Path("model-here").mkdir()
    _edit(bundle, change)
    code, _, err = run_cli(capsys, "predict", str(bundle), "rows.npy")
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("spoil, says", [
    (lambda t: torch.full_like(t, float("nan")), "holds NaN or infinite values"),
    (lambda t: t.double(), "is torch.float64, where the model's is torch.float32"),
    (lambda t: t.to(torch.int8), "is torch.int8"),
])
def test_deltas_no_training_makes_are_refused_even_with_matching_digests(bundle: Path, spoil,  # noqa: ANN001
                                                                         says: str) -> None:
    """A careless sender's diverged run, or a file cast by a tool on the way: digests re-made to match."""
    deltas = load_file(bundle / "deltas.safetensors")
    first = sorted(deltas)[0]
    deltas[first] = spoil(deltas[first])
    save_file(deltas, bundle / "deltas.safetensors")
    _edit(bundle, lambda s: s.update(deltas_sha256=deltas_digest(deltas),
                                     deltas_file_sha256=sha256_file(bundle / "deltas.safetensors")))
    with pytest.raises(DPTangentError, match=says.replace("(", r"\(")) as caught:
        load_release(bundle)
    assert first in str(caught.value)


def test_predict_says_when_nothing_binds_the_bundle_to_its_release(bundle: Path, sent: tuple[Path, str],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "predict", str(bundle), "rows.npy")
    assert code == 0 and "is unverified" in err and "--expect" in err, err
    code, out, err = run_cli(capsys, "predict", str(bundle), "rows.npy", "--expect", sent[1])
    assert code == 0 and err == "" and out.startswith("rows.npy: ")


def test_a_destination_through_a_link_and_dotdot_is_where_the_system_writes_it(
        sent: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Review 42: ``..`` after a link was resolved by name, so the log named one folder and the bundle went to
    another (the command then failed reading its statement back, after logging the release)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    code, out, err = run_cli(capsys, "release", "wine", "-o", "link/../relC", "-w", str(sent[0] / "ws"))
    assert code == 0, err
    written = tmp_path / "real" / "relC" / "release.json"  # link/.. is real/, as the system resolves it
    assert written.is_file() and not (tmp_path / "relC").exists()
    assert f"release.json sha256 {sha256_file(written)}" in out
    from dp_tangent.workspace import Workspace

    [entry] = [e for e in Workspace.open(sent[0] / "ws").audit.entries() if e.operation == "release"
               and "relC" in json.dumps(e.parameters)]
    assert str(tmp_path / "real" / "relC") in json.dumps(entry.parameters)
    code, out, err = run_cli(capsys, "release", "wine", "-o", "link/../relC", "-w", str(sent[0] / "ws"))
    assert code == 0, err  # asked again: the same release, nothing new


def test_a_deletion_names_the_released_copies_it_cannot_recall(sent: tuple[Path, str], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Review 43: the certificate's scope is the workspace; the operator learned only "copies released before
    deletion are not recalled", not which copies, although the log knows where each went."""
    shutil.copytree(sent[0], tmp_path / "copy")
    monkeypatch.chdir(tmp_path / "copy")
    record = load_recipe("wine.yaml").load_data()[1][0].record_ids[0]
    code, out, err = run_cli(capsys, "forget", record, "--request-id", "W1", "-w", "ws")
    assert code == 0, err
    assert (f"note: wine was released to {sent[0] / 'sent'} on " in err and f"release.json sha256 {sent[1]}" in err
            and "that copy is not recalled" in err), err
    # another record of that shard: its component is gone already, so the deletion removes nothing released
    code, out, err = run_cli(capsys, "forget", load_recipe("wine.yaml").load_data()[1][0].record_ids[1], "-w", "ws")
    assert code == 3 and "was released to" not in err, err


def test_a_checkpoint_mapped_by_position_leaves_under_the_model_s_own_names(
        sent: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Review 44: a checkpoint whose names differ from the model's is loaded by position; written afresh under its
    own names, safetensors reordered them and the release failed (and the file's names would have left)."""
    import yaml

    shutil.copytree(sent[0] / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    theta0 = torch.load("data/leaky.pt", weights_only=True)["model"]
    torch.save({f"module.{k}": v for k, v in theta0.items()}, "data/dp.pt")  # a DataParallel-style checkpoint
    recipe = yaml.safe_load((sent[0] / "wine.yaml").read_text())
    recipe["backbone"]["checkpoint"] = "data/dp.pt"
    write_recipe(Path("wine.yaml"), recipe)
    assert run_cli(capsys, "train", "--init", "wine.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    code, out, err = run_cli(capsys, "release", "wine", "-o", "out", "-w", "ws")
    assert code == 0, err
    written = load_file("out/base-checkpoint.safetensors")
    assert set(written) == set(theta0) and all(torch.equal(written[k], v) for k, v in theta0.items())
    assert load_release("out").predict(torch.zeros(2, 13)).shape == (2, 3)


def test_a_release_to_home_or_to_the_empty_folder_it_runs_in_prints_its_digest(
        sent: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Review 44: with ``-o '~/x'`` or ``-o .`` the bundle was written and logged, then the command failed reading its
    statement back from the path as typed, and the digest recipients need was never printed."""
    (tmp_path / "home").mkdir()
    (tmp_path / "here").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "here")
    for output, written in (("~/x", tmp_path / "home" / "x"), (".", tmp_path / "here")):
        code, out, err = run_cli(capsys, "release", "wine", "-o", output, "-w", str(sent[0] / "ws"))
        assert code == 0, err
        assert f"release.json sha256 {sha256_file(written / 'release.json')}" in out and f"predict {written} " in out
