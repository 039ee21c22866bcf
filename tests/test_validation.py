"""Data mistakes are refused before any budget is reserved; a diverged run keeps no component."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from helpers import run_cli

from dp_tangent.data import RecordSet
from dp_tangent.data.arrays import npz_records
from dp_tangent.data.images import image_folder_records
from dp_tangent.errors import DataError
from dp_tangent.training import (
    PrivacySpec,
    TrainConfig,
    TrainingError,
    train_component,
)
from dp_tangent.training.losses import ConvexLoss
from dp_tangent.training.validation import output_width
from dp_tangent.workspace import ShardJob, Workspace
from privacy_accounting import Ledger

PRIVATE = PrivacySpec(epsilon=4.0, delta=1e-3)
FAST = TrainConfig(epochs=1, batch_size=8, lr=0.1)


def records(n: int = 40, features: int = 8, prefix: str = "rec") -> RecordSet:
    """``n`` records of the mlp_backbone fixture's shape (8 inputs, labels in {0, 1, 2})."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return RecordSet(x, torch.arange(n) % 3, tuple(f"{prefix}-{i}" for i in range(n)))


def with_inputs(base: RecordSet, inputs: torch.Tensor) -> RecordSet:
    return RecordSet(inputs, base.targets, base.record_ids)


def with_targets(base: RecordSet, targets: torch.Tensor) -> RecordSet:
    return RecordSet(base.inputs, targets, base.record_ids)


def nan_at(base: RecordSet, rows: list[int]) -> RecordSet:
    inputs = base.inputs.clone()
    for k, row in enumerate(rows):
        inputs[row, k % inputs.shape[1]] = math.nan if k % 2 == 0 else math.inf
    return with_inputs(base, inputs)


def assert_nothing_spent(ws: Workspace, *names: str) -> None:
    assert ws.ledger.events() == []
    assert not any(ws.component_path(name).exists() for name in names)
    assert not list(ws.components_dir.glob("*"))


# -- through the library: each mistake is one line, and nothing is reserved -------------------------

LIBRARY_CASES = [
    pytest.param(lambda r: r.subset([]), FAST, "shard 's0' has no records", id="empty shard"),
    pytest.param(lambda r: r.subset(range(20)), TrainConfig(epochs=1, batch_size=32),
                 "component 'c0': batch_size 32 is larger than its shard of 20 records (Poisson sampling would then "
                 "take every record at every step); set batch_size to at most 20", id="batch larger than shard"),
    pytest.param(lambda r: with_targets(r, torch.where(torch.arange(40) == 5, 7, r.targets)), FAST,
                 "component 'c0': labels must be in [0, 3) (backbone 'test_mlp' has 3 outputs), but 1 of 40 records "
                 "are not, e.g. record 'rec-5' has label 7; set the backbone's num_classes to at least 8 or fix the "
                 "labels", id="label out of range"),
    pytest.param(lambda r: with_targets(r, torch.arange(40) % 5), FAST,
                 "component 'c0': labels must be in [0, 3) (backbone 'test_mlp' has 3 outputs), but 16 of 40 records "
                 "are not, e.g. record 'rec-3' has label 3; set the backbone's num_classes to at least 5 or fix the "
                 "labels", id="num_classes smaller than the labels"),
    pytest.param(lambda r: with_targets(r, r.targets - 1), FAST,
                 "component 'c0': labels must be in [0, 3) (backbone 'test_mlp' has 3 outputs), but 14 of 40 records "
                 "are not, e.g. record 'rec-0' has label -1; relabel the negative classes as 0..classes-1",
                 id="negative label"),
    pytest.param(lambda r: with_targets(r, r.targets.float()), FAST,
                 "component 'c0': labels must be integer classes, got torch.float32; give integer labels "
                 "0..classes-1", id="float labels"),
    pytest.param(lambda r: with_inputs(r, torch.randn(40, 5)), FAST,
                 "component 'c0': inputs of shape (5,) per record (torch.float32) do not fit backbone 'test_mlp' "
                 "(mat1 and mat2 shapes cannot be multiplied (1x5 and 8x16)); give each record the input shape the "
                 "backbone takes", id="input shape"),
    pytest.param(lambda r: with_inputs(r, torch.randn(40, 3, 8, 8)), FAST,
                 "component 'c0': inputs of shape (3, 8, 8) per record give outputs of shape (3, 8, 3) from "
                 "backbone 'test_mlp', not one score per class; give each record the input shape the backbone takes",
                 id="image inputs for an mlp"),
    pytest.param(lambda r: nan_at(r, [3, 17]), FAST,
                 "component 'c0': 2 of 40 records have NaN or infinite inputs (first: record 'rec-3'); remove or "
                 "repair them before training", id="non-finite inputs"),
]


@pytest.mark.parametrize("privacy", [PRIVATE, PrivacySpec(epsilon=math.inf)], ids=["private", "non-private"])
@pytest.mark.parametrize("mistake, config, message", LIBRARY_CASES)
def test_a_data_mistake_is_refused_before_any_reservation(tmp_path, mlp_backbone, mistake, config, message,
                                                          privacy) -> None:
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(TrainingError) as refused:
        ws.train(mlp_backbone, None, mistake(records()), data_source="toy", shard="s0", name="c0", privacy=privacy,
                 config=config)
    assert str(refused.value) == message
    assert_nothing_spent(ws, "c0")
    (logged,) = [e for e in ws.audit.entries() if e.operation == "training"]
    assert logged.parameters["status"] == "failed" and logged.parameters["reserved"] is False
    # The log names the error, never its message: a message may name a record id (shown to the operator only).
    assert logged.parameters["error"] == "TrainingError before any budget was reserved"
    assert "rec-" not in ws.audit_log_path.read_text()


def test_one_bad_shard_reserves_nothing_for_any_shard(tmp_path, mlp_backbone) -> None:
    ws = Workspace.create(tmp_path / "ws")
    good, bad = records(prefix="a"), nan_at(records(prefix="b"), [39])
    jobs = [ShardJob("c0", "s0", good), ShardJob("c1", "s1", bad)]
    with pytest.raises(TrainingError, match=r"^component 'c1': 1 of 40 records have NaN or infinite inputs "
                                            r"\(first: record 'b-39'\)"):
        ws.train_all(mlp_backbone, None, jobs, data_source="toy", privacy=PRIVATE, config=FAST)
    assert_nothing_spent(ws, "c0", "c1")
    run = ws.train_all(mlp_backbone, None, jobs[:1], data_source="toy", privacy=PRIVATE, config=FAST)
    assert [c.metadata.name for c in run.completed] == ["c0"]  # the good shard alone trains: the check is not vacuous


def test_train_component_validates_before_its_reservation(tmp_path, mlp_backbone) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    bad = with_targets(records(), torch.full((40,), 3))
    with pytest.raises(TrainingError, match=r"^component 'c0': labels must be in \[0, 3\) .* record 'rec-0' has "
                                            r"label 3; set the backbone's num_classes to at least 4"):
        train_component(mlp_backbone, None, bad, ledger=ledger, data_source="toy", shard="s0", name="c0",
                        output=tmp_path / "c0.safetensors", manifest_key=bytes(32), privacy=PRIVATE, config=FAST)
    assert ledger.events() == [] and not (tmp_path / "c0.safetensors").exists()


def test_the_shape_probe_leaves_the_network_as_it_was() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert output_width(net, records(), "component 'c0'", "backbone 'probe'") == 4
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# -- a run that diverges keeps no component, and its reservation is failed (records were read) -----

@pytest.mark.parametrize("privacy, config", [
    (PRIVATE, TrainConfig(epochs=3, batch_size=10, lr=1e38)),
    (PrivacySpec(epsilon=math.inf), TrainConfig(epochs=3, batch_size=10, lr=1e4, loss=ConvexLoss("square"))),
], ids=["private", "non-private square loss"])
def test_a_diverged_run_fails_keeps_no_component_and_its_budget_stays_spent(tmp_path, mlp_backbone, privacy,
                                                                            config) -> None:
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(TrainingError) as diverged:
        ws.train(mlp_backbone, None, records(), data_source="toy", shard="s0", name="c0", privacy=privacy,
                 config=config)
    assert re.fullmatch(rf"training diverged: delta '[\w.]+' has \d+ non-finite values; lower lr \(now "
                        rf"{re.escape(f'{config.lr:g}')}\) and train again under a new name", str(diverged.value))
    (event,) = ws.ledger.events()
    assert event.component == "c0" and event.status.value == "failed" and "training diverged" in event.failure_reason
    assert not ws.component_path("c0").exists() and not list(ws.components_dir.glob("*"))
    if privacy.private:
        assert ws.ledger.shard_spend("toy", "s0", delta=1e-3).epsilon > 0  # the failed run still counts


# -- loaders: unreadable files are one-line DataErrors naming the file -------------------------------

def _npz_bytes(n: int = 10) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, inputs=np.zeros((n, 3, 8, 8), np.float32), targets=np.arange(n) % 2,
             record_ids=np.array([f"r{i}" for i in range(n)]))
    return buffer.getvalue()


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file, 0 bytes"),
    (b"PK\x03\x04 not really a zip", "BadZipFile: File is not a zip file"),
    (_npz_bytes()[:300], "BadZipFile: File is not a zip file"),
], ids=["0 bytes", "garbage", "truncated"])
def test_an_unreadable_npz_file_is_a_data_error_naming_it(tmp_path, content: bytes, reason: str) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(DataError) as refused:
        npz_records(path, inputs="inputs", targets="targets", record_ids="record_ids")
    assert str(refused.value) == (f"{path}: cannot read the npz file ({reason}); give a complete file written by "
                                  "numpy.savez")


def _image_folder(root: Path, corrupt: bytes | None) -> Path:
    from PIL import Image

    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), (i * 80, 10, 200)).save(root / label / f"{i}.png")
    if corrupt is not None:
        (root / "dog" / "1.png").write_bytes(corrupt)
    return root


def _truncated_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 99, 199)).save(buffer, "PNG")
    return buffer.getvalue()[:60]


@pytest.mark.parametrize("corrupt, reason", [
    (b"", "empty, or not an image format PIL recognises"),
    (_truncated_png(), "OSError: image file is truncated"),
], ids=["0 bytes", "truncated"])
def test_a_corrupt_image_in_a_folder_is_a_data_error_naming_it(tmp_path, corrupt: bytes, reason: str) -> None:
    root = _image_folder(tmp_path / "imgs", corrupt)
    with pytest.raises(DataError) as refused:
        image_folder_records(root, 16)
    assert str(refused.value) == f"{root / 'dog' / '1.png'}: cannot read the image ({reason}); replace or remove " \
                                 "the file"


# -- through the CLI: exit 2, one line, no ledger event, no component --------------------------------

RECIPE = {
    "backbone": {"name": "efficientnet_lite0", "pretrained": "packaged", "num_classes": 10},
    "trainable": "head",
    "data": {"npz": {"path": "data.npz", "test_fraction": 0}},
    "shards": {"count": 1},
    "privacy": {"epsilon": 8, "delta": 1e-5},
    "training": {"epochs": 1, "batch_size": 8, "lr": 0.1},
    "data_source": "mine",
    "budget": {"epsilon": 20, "delta": 1e-5},
}


def _write_npz(path: Path, n: int = 40, inputs: np.ndarray | None = None, targets: np.ndarray | None = None) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, inputs=rng.standard_normal((n, 3, 8, 8)).astype(np.float32) if inputs is None else inputs,
             targets=np.arange(n) % 10 if targets is None else targets,
             record_ids=np.array([f"patient-{i}" for i in range(n)]))


def _recipe(tmp_path: Path, **changes: dict) -> Path:
    data = yaml.safe_load(yaml.safe_dump(RECIPE))
    for section, values in changes.items():
        data[section].update(values)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def assert_refused(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert err == f"error: {message}\n"


def test_cli_the_same_recipe_with_sound_data_trains(tmp_path, capsys) -> None:
    _write_npz(tmp_path / "data.npz")
    code, out, err = run_cli(capsys, "train", "--init", str(_recipe(tmp_path)), "--name", "m", "--executor", "serial",
                             "-w", str(tmp_path / "ws"))
    assert code == 0, err
    assert "model m: mean of 1 components" in out
    assert [e.status.value for e in Workspace.open(tmp_path / "ws").ledger.events()] == ["completed"]


def test_cli_labels_out_of_range_spend_nothing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative workspace, as users type it; the default (local) executor
    _write_npz(tmp_path / "data.npz", targets=np.where(np.arange(40) == 7, 12, np.arange(40) % 10))
    _recipe(tmp_path)
    code, _, err = run_cli(capsys, "train", "--init", "recipe.yaml", "--name", "m", "-w", "ws")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.fullmatch(r"error: (shard-\d|the test split): labels must be in \[0, 10\) \(backbone "
                        r"'efficientnet_lite0' has 10 outputs\), but 1 of \d+ records are not, e.g. record "
                        r"'patient-7' has label 12; set the backbone's num_classes to at least 13 or fix the labels\n",
                        err), err
    assert not Path("ws").exists()  # refused as the data loaded: no workspace made, no source registered


def test_cli_num_classes_smaller_than_the_labels_spends_nothing(tmp_path, capsys) -> None:
    _write_npz(tmp_path / "data.npz")
    recipe = _recipe(tmp_path, backbone={"num_classes": 4})
    code, _, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "m", "--executor", "serial",
                           "-w", str(tmp_path / "ws"))
    assert code == 2 and "labels must be in [0, 4) (backbone 'efficientnet_lite0' has 4 outputs)" in err, err
    assert "set the backbone's num_classes to at least 10 or fix the labels" in err and not (tmp_path / "ws").exists()


def test_cli_2d_inputs_for_an_image_model_spend_nothing(tmp_path, capsys) -> None:
    _write_npz(tmp_path / "data.npz", inputs=np.zeros((40, 64), np.float32))
    code, _, err = run_cli(capsys, "train", "--init", str(_recipe(tmp_path)), "--name", "m", "--executor", "serial",
                           "-w", str(tmp_path / "ws"))
    assert_refused(code, err, "component 'm-shard-0': inputs of shape (64,) per record (torch.float32) do not fit "
                              "backbone 'efficientnet_lite0' (Expected 3D (unbatched) or 4D (batched) input to "
                              "conv2d, but got input of size: [1, 64]); give each record the input shape the "
                              "backbone takes")
    assert_nothing_spent(Workspace.open(tmp_path / "ws"), "m-shard-0")


def test_cli_non_finite_inputs_spend_nothing(tmp_path, capsys) -> None:
    inputs = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    inputs[11, 0, 2, 2] = np.nan
    inputs[30, 2, 0, 1] = np.inf
    _write_npz(tmp_path / "data.npz", inputs=inputs)
    code, _, err = run_cli(capsys, "train", "--init", str(_recipe(tmp_path)), "--name", "m", "--executor", "serial",
                           "-w", str(tmp_path / "ws"))
    assert code == 2, err
    assert re.fullmatch(r"error: component 'm-shard-0': 2 of 40 records have NaN or infinite inputs \(first: record "
                        r"'patient-(11|30)'\); remove or repair them before training\n", err)
    assert_nothing_spent(Workspace.open(tmp_path / "ws"), "m-shard-0")


def test_cli_batch_larger_than_the_shard_spends_nothing(tmp_path, capsys) -> None:
    _write_npz(tmp_path / "data.npz")
    recipe = _recipe(tmp_path, training={"batch_size": 64})
    code, _, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "m", "--executor", "serial",
                           "-w", str(tmp_path / "ws"))
    assert_refused(code, err, "component 'm-shard-0': batch_size 64 is larger than its shard of 40 records (Poisson "
                              "sampling would then take every record at every step); set batch_size to at most 40")
    assert_nothing_spent(Workspace.open(tmp_path / "ws"), "m-shard-0")


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file, 0 bytes"),
    (_npz_bytes()[:300], "BadZipFile: File is not a zip file"),
], ids=["0 bytes", "truncated"])
def test_cli_an_unreadable_npz_file_is_one_line_and_touches_no_workspace(tmp_path, capsys, monkeypatch, content,
                                                                          reason) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.npz").write_bytes(content)
    _recipe(tmp_path)
    code, _, err = run_cli(capsys, "train", "--init", "recipe.yaml", "--name", "m", "-w", "ws")
    assert_refused(code, err, f"{tmp_path / 'data.npz'}: cannot read the npz file ({reason}); give a complete file "
                              "written by numpy.savez")
    assert not (tmp_path / "ws").exists()  # the data is read before the workspace is created


def test_cli_a_corrupt_image_in_the_folder_is_one_line_and_spends_nothing(tmp_path, capsys) -> None:
    root = _image_folder(tmp_path / "imgs", _truncated_png())
    ws = Workspace.create(tmp_path / "ws")  # an existing workspace: still nothing is reserved
    recipe = _recipe(tmp_path)
    data = yaml.safe_load(recipe.read_text())
    data["data"] = {"image_folder": {"root": "imgs", "classes": ["cat", "dog"], "image_size": 8,
                                     "test_fraction": 0}}
    data["training"]["batch_size"] = 2
    recipe.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "m", "--executor", "serial", "-w", str(ws.root))
    assert_refused(code, err, f"{root / 'dog' / '1.png'}: cannot read the image (OSError: image file is truncated); "
                              "replace or remove the file")
    assert_nothing_spent(ws, "m-shard-0")


def test_cli_an_eof_error_from_a_reader_is_an_error_not_an_interruption(tmp_path, capsys, monkeypatch) -> None:
    # typer turns EOFError into Abort, which used to print "interrupted" with exit 130
    def truncated(*_args: object, **_kwargs: object) -> RecordSet:
        raise EOFError("Ran out of input")

    monkeypatch.setattr("dp_tangent.data.arrays.npz_records", truncated)
    _write_npz(tmp_path / "data.npz")
    code, _, err = run_cli(capsys, "train", "--init", str(_recipe(tmp_path)), "--name", "m", "-w", str(tmp_path / "ws"))
    assert code == 2  # typer echoes a blank line before it raises Abort: the message is still one line
    assert err.strip() == "error: a file ended early (empty or truncated): Ran out of input"
    assert not (tmp_path / "ws").exists()


def test_cli_a_diverged_run_fails_its_shard_with_the_reason(tmp_path, capsys) -> None:
    _write_npz(tmp_path / "data.npz")
    recipe = _recipe(tmp_path, training={"lr": 1e38, "epochs": 3})
    code, _, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "m", "--executor", "serial",
                           "-w", str(tmp_path / "ws"))
    assert code == 2, err
    assert re.search(r"m-shard-0 \(shard-0\) FAILED: TrainingError: training diverged: delta '[\w.]+' has \d+ "
                     r"non-finite values; lower lr \(now 1e\+38\) and train again under a new name; its reserved "
                     r"budget stays spent", err), err
    ws = Workspace.open(tmp_path / "ws")
    (event,) = ws.ledger.events()
    assert event.status.value == "failed" and not list(ws.components_dir.glob("*"))


def test_byte_string_record_ids_are_decoded(tmp_path) -> None:
    """Review M5: str(b'rec-4') is "b'rec-4'", an id no deletion request would ever match."""
    path = tmp_path / "bytes.npz"
    np.savez(path, inputs=np.zeros((3, 8), np.float32), targets=np.array([0, 1, 2]),
             record_ids=np.array([b"rec-1", b"rec-2", b"rec-3"]))
    assert npz_records(path, inputs="inputs", targets="targets", record_ids="record_ids").record_ids == (
        "rec-1", "rec-2", "rec-3")
