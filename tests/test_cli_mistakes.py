"""User mistakes on a trained workspace, as users make them (relative ``-w ws``): each a one-line error and a
non-zero exit that loses nothing (found by a review of the command line)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dp_tangent.workspace import Workspace
from helpers import run_cli
from owndata import mlp_recipe, write_npz, write_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with rows.npz, rows.yaml and the workspace ``ws`` one train of it made."""
    folder = tmp_path_factory.mktemp("trained")
    write_npz(folder / "rows.npz")
    write_recipe(folder / "rows.yaml", mlp_recipe({"npz": {"path": str(folder / "rows.npz")}}, in_features=6,
                                                  classes=2, source="rows"))
    from dp_tangent.cli import main

    try:
        main(["train", str(folder / "rows.yaml"), "-w", str(folder / "ws"), "--executor", "serial"])
    except SystemExit as stop:
        assert not stop.code
    return folder


@pytest.fixture
def ws(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the trained folder as the working directory; the workspace is ``ws``."""
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(capsys: pytest.CaptureFixture[str], *args: str, says: str) -> None:
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, (code, out, err)


def test_outputs_never_replace_a_key_or_a_kept_checkpoint(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "audit", "keygen", "keys/new/k.key", "--name", "dpo")[0] == 0  # its folder is made
    key = Path("keys/new/k.key").read_bytes()
    _refused(capsys, "audit", "checkpoint", "--key", "keys/new/k.key", "-o", "keys/new/k.key", "-w", "ws",
             says="exists: a checkpoint is written to a new file")
    assert run_cli(capsys, "audit", "checkpoint", "--key", "keys/new/k.key", "-o", "cp.txt", "-w", "ws")[0] == 0
    kept = Path("cp.txt").read_bytes()
    _refused(capsys, "audit", "checkpoint", "--key", "keys/new/k.key", "-o", "cp.txt", "-w", "ws", says="exists")
    _refused(capsys, "report", "-o", "keys/new/k.key", "-w", "ws", says="exists and is not a report")
    assert Path("keys/new/k.key").read_bytes() == key and Path("cp.txt").read_bytes() == kept
    for _ in range(2):  # a report is written over a report
        assert run_cli(capsys, "report", "-f", "md", "-o", "report.md", "-w", "ws")[0] == 0


def test_nothing_that_would_block_a_workspace_is_made_inside_it(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, "init", "-w", "ws/models/sub", says="is inside the workspace")
    _refused(capsys, "audit", "keygen", "ws/k.key", says="is inside the workspace")
    assert not Path("ws/models/sub").exists() and not Path("ws/k.key").exists()
    assert Workspace.open("ws").audit.verify().ok


def test_a_model_name_is_never_reused_nor_a_component_s(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("away").mkdir()
    shutil.move("ws/models/rows.json", "away/rows.json")  # archived by hand: the ledger still holds the model
    before = Path("ws/models/rows.safetensors").read_bytes()
    _refused(capsys, "compose", "rows-shard-0", "--name", "rows", "-w", "ws", says="model 'rows' already exists")
    assert Path("ws/models/rows.safetensors").read_bytes() == before
    shutil.move("away/rows.json", "ws/models/rows.json")
    _refused(capsys, "compose", "rows-shard-0", "--name", "rows-shard-1", "-w", "ws", says="is a component's name")
    assert Workspace.open("ws").audit.verify().ok


def test_weights_that_overflow_are_one_line_errors_not_tracebacks(ws: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "compose", "rows-shard-0", "rows-shard-1", "--name", "huge", "--weights",
                             "1e308,1e308", "-w", "ws")
    assert code == 0, err  # mean weights: the same coefficients as 1,1
    assert Workspace.open("ws").load_model("huge")[0].components[0].coefficient == 0.5
    _refused(capsys, "compose", "rows-shard-0", "rows-shard-1", "--name", "inf", "--method", "task-arithmetic",
             "--weights", "1e308,1e308", "-w", "ws", says="is not finite")
    assert not Path("ws/models/inf.json").exists()


def test_predict_refuses_empty_or_non_finite_arrays_and_data_it_would_ignore(
        ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save("empty.npy", np.zeros((0, 6), np.float32))
    np.save("nan.npy", np.full((2, 6), np.nan, np.float32))
    _refused(capsys, "predict", "rows", "empty.npy", "-w", "ws", says="the array is empty")
    _refused(capsys, "predict", "rows", "nan.npy", "-w", "ws", says="12 value(s) are not finite")
    np.save("ok.npy", np.zeros((2, 6), np.float32))
    _refused(capsys, "predict", "rows", "ok.npy", "--data", "rows.yaml", "-w", "ws", says=".npy arrays are model "
             "inputs already")
    assert run_cli(capsys, "predict", "rows", "ok.npy", "-w", "ws")[0] == 0


def test_forget_failures_say_how_to_finish_the_open_request(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dp_tangent.recipes import load_recipe

    first, second = load_recipe(Path("rows.yaml")).load_data()[1][0].record_ids[:2]  # both in shard-0
    assert run_cli(capsys, "budget", "set", "rows/shard-0", "9", "-w", "ws")[0] == 0
    code, out, err = run_cli(capsys, "forget", first, "--retrain", "--request-id", "R1", "-w", "ws")
    assert code == 2 and len(err.strip().splitlines()) == 1, err  # the budget was hit, after the request was received
    assert "budget exceeded" in err and "request R1 stays OPEN" in err and "or without --retrain" in err, err
    code, out, err = run_cli(capsys, "forget", second, "--request-id", "R1", "-w", "ws")
    assert code == 2 and "received with other record ids" in err and "exactly the record ids it was received" in err
    assert f"forget {second}" not in err  # the failing command is not offered again
    code, out, err = run_cli(capsys, "forget", first, "--request-id", "R1", "-w", "ws")
    assert code == 0, err


def test_a_label_outside_the_backbone_s_classes_is_refused_before_anything_is_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_npz(Path("rows.npz"))
    arrays = dict(np.load("rows.npz"))
    arrays["targets"][7] = 5
    np.savez("rows.npz", **arrays)
    recipe = write_recipe(Path("rows.yaml"), mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2,
                                                        source="rows"))
    _refused(capsys, "train", str(recipe), "-w", "ws", says="e.g. record 'row-007' has label 5; set the backbone's "
             "num_classes to at least 6")
    assert not Path("ws").exists()


def test_training_the_source_in_other_shards_is_refused_before_anything_is_written(
        ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It re-declared the source with a third shard and rewrote data-sources.json, then failed on an overlap."""
    registry, entries = Path("ws/data-sources.json").read_bytes(), len(Workspace.open("ws").audit.entries())
    _refused(capsys, "train", "rows.yaml", "--shards", "3", "--name", "three", "-w", "ws",
             says="data source 'rows' is registered to be read otherwise")
    assert Path("ws/data-sources.json").read_bytes() == registry
    assert len(Workspace.open("ws").audit.entries()) == entries
