"""Every data source reloads for retraining: per-kind registry, content digests, repeated deletions,
and evaluate/predict on the model's own data."""

from __future__ import annotations

import json
import re
from typing import Any
from pathlib import Path

import numpy as np
import pytest
import yaml

from dp_tangent.components.manifest import commit
from dp_tangent.data.kinds import DataSection
from dp_tangent.data.sources import DigitsSource, parse_source, source_kinds
from dp_tangent.errors import DataError
from dp_tangent.workspace import Workspace
from dp_tangent.workspace.data_sources import Sources
from dp_tangent.workspace.data_sources import test_records as held_out_records
from helpers import run_cli
from owndata import mlp_recipe, write_npz, write_recipe


def test_every_data_kind_has_a_registered_source_type() -> None:
    assert set(DataSection.model_fields) <= set(source_kinds())
    legacy = {"loader": "sklearn_digits", "image_size": 16, "shards": 2, "test_fraction": 0.2, "seed": 0}
    assert parse_source(legacy) == DigitsSource(**legacy)  # registries written before content digests
    assert Sources.model_validate({"sources": {"digits": legacy}}).content == {}
    with pytest.raises(DataError, match="unknown data-source loader 'hdf5'; known: image_folder, npz, sklearn_digits"):
        parse_source({"loader": "hdf5"})


def _forget(capsys: pytest.CaptureFixture[str], *ids: str) -> tuple[int, str, str]:
    # an explicit request id: the default (a timestamp to the second) repeats within a second
    return run_cli(capsys, "forget", *ids, "--request-id", f"req-{'-'.join(ids)}", "--retrain", "-w", "ws")


def test_npz_source_retrains_after_repeated_deletions_on_one_shard_and_refuses_changed_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_npz(Path("rows.npz"))
    recipe = write_recipe(Path("rows.yaml"), mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2,
                                                        source="rows"))
    code, out, err = run_cli(capsys, "train", "--init", str(recipe), "-w", "ws", "--executor", "serial")
    assert code == 0, err
    ws = Workspace.open("ws")
    registry = json.loads(Path("ws/data-sources.json").read_text())
    assert registry["sources"]["rows"]["loader"] == "npz" and registry["content"]["rows"]["records"] == 96
    assert not any("row-0" in key or "row-0" in tag for key, tag in registry["content"]["rows"]["tags"].items())
    shard0 = sorted(ws.load_component("rows-shard-0").metadata.manifest.commitments)
    from dp_tangent.recipes import load_recipe

    _, shards = load_recipe(recipe).load_data()
    first, second, third = shards[0].record_ids[:3]

    for k, record in enumerate((first, second), start=1):  # twice on the same shard
        code, out, err = _forget(capsys, record)
        assert code == 0, err
        meta = Workspace.open("ws").load_component(f"rows-shard-0.r{k}").metadata
        assert meta.manifest.records == len(shard0) - k
    assert Workspace.open("ws").list_models() == ["rows"]
    # nothing derived from a deleted record stays: its keyed content tag went with its deletion (the file still
    # holds the record, and reloads as the registered data all the same)
    key = Workspace.open("ws").manifest_key()
    tags = json.loads(Path("ws/data-sources.json").read_text())["content"]["rows"]["tags"]
    assert commit(first, key) not in tags and commit(second, key) not in tags and commit(third, key) in tags
    test_id = load_recipe(recipe).load_data()[0].record_ids[0]  # a test record: deleted, it leaves the test figures
    assert test_id in held_out_records(Workspace.open("ws"), "rows")[1].record_ids
    code, out, err = _forget(capsys, test_id)
    assert code == 3 and test_id not in held_out_records(Workspace.open("ws"), "rows")[1].record_ids

    # The owner erases the deleted rows from the file: still the registered data, less deleted records.
    arrays = dict(np.load("rows.npz"))
    kept = ~np.isin(arrays["record_ids"], [first, second])
    np.savez("rows.npz", **{k: v[kept] for k, v in arrays.items()})
    code, out, err = _forget(capsys, third)
    assert code == 0, err
    assert Workspace.open("ws").load_component("rows-shard-0.r3").metadata.manifest.records == len(shard0) - 3

    arrays = dict(np.load("rows.npz"))
    fourth = shards[0].record_ids[3]
    arrays["inputs"][list(arrays["record_ids"]).index(shards[0].record_ids[4]), 0] += 1.0  # a kept record changed
    np.savez("rows.npz", **arrays)
    code, _, err = _forget(capsys, fourth)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "data source 'rows' is not the data it was registered with (1 record(s) changed, e.g. 'row-" in err
    assert "stays OPEN" in err
    code, _, err = run_cli(capsys, "evaluate", "rows", "-w", "ws")
    assert code == 2 and "is not the data it was registered with" in err


def _rows_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In ``tmp_path`` (the working directory from now on): 64 npz rows and a fast MLP recipe on them."""
    monkeypatch.chdir(tmp_path)
    write_npz(Path("rows.npz"), n=64)
    return write_recipe(Path("rows.yaml"), mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2,
                                                      source="rows"))


def test_a_source_is_registered_once_and_a_later_train_never_brings_back_a_deleted_records_digest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every train registered its data source again: a deleted record's keyed digest came back (even from a train
    that was then refused), and a recipe reading the same source otherwise replaced how earlier models reload."""
    monkeypatch.chdir(tmp_path)
    ids = write_npz(Path("rows.npz"))
    recipe = write_recipe(Path("rows.yaml"), mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2,
                                                        source="rows"))
    assert run_cli(capsys, "train", "--init", str(recipe), "-w", "ws", "--executor", "serial")[0] == 0
    assert _forget(capsys, ids[5])[0] in (0, 3)
    deleted = commit(ids[5], Workspace.open("ws").manifest_key())
    registry = Path("ws/data-sources.json").read_bytes()
    assert deleted not in json.loads(registry)["content"]["rows"]["tags"]

    code, out, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "again", "-w", "ws", "--executor", "serial")
    assert code == 0, err
    assert Path("ws/data-sources.json").read_bytes() == registry  # the same data: nothing registered again

    write_npz(Path("other.npz"), seed=1)  # other data, the same ids, at another path
    other = write_recipe(Path("other.yaml"), mlp_recipe({"npz": {"path": "other.npz"}}, in_features=6, classes=2,
                                                         source="rows"))
    code, out, err = run_cli(capsys, "train", "--init", str(other), "--name", "other", "-w", "ws", "--executor", "serial")
    assert code == 2 and "data source 'rows' is not the data it was registered with (95 record(s) changed, e.g. " in err
    assert len(err.strip().splitlines()) == 1 and Path("ws/data-sources.json").read_bytes() == registry

    tested = held_out_records(Workspace.open("ws"), "rows")[1].record_ids
    arrays = dict(np.load("rows.npz"))  # the owner adds records: registered, the deleted one still not
    more = dict(np.load("other.npz"))
    more["record_ids"] = np.array([f"new-{i:03d}" for i in range(len(more["record_ids"]))])
    np.savez("rows.npz", **{k: np.concatenate([arrays[k], more[k]]) for k in arrays})
    code, out, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "more", "-w", "ws", "--executor", "serial")
    assert code == 0, err
    tags = json.loads(Path("ws/data-sources.json").read_text())["content"]["rows"]["tags"]
    assert len(tags) == 2 * len(ids) - 1 and deleted not in tags
    assert Workspace.open("ws").audit.verify().ok
    now = held_out_records(Workspace.open("ws"), "rows")[1].record_ids  # the registered records' test split, and
    assert set(tested) < set(now) and all(r.startswith("new-") for r in set(now) - set(tested))  # added ones there
    assert f"on {len(now)} records" in out  # (review 98: they were in no shard and never measured)

    from dp_tangent.data.sources import source_for
    from dp_tangent.recipes import load_recipe
    from dp_tangent.workspace.data_sources import registered

    stored = json.loads(Path("ws/data-sources.json").read_text())
    del stored["sources"]["rows"]["data"]["inputs"]  # as written by a version before the field existed (its default)
    Path("ws/data-sources.json").write_text(json.dumps(stored))
    loaded = load_recipe(recipe)
    assert registered(Workspace.open("ws", finish=False), "rows", source_for(loaded.data, loaded.shards)) is None


def test_evaluate_and_predict_use_the_models_own_data_and_refuse_other_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from dp_tangent.recipes import DEFAULT_RECIPE

    recipe = _rows_recipe(tmp_path, monkeypatch)
    code, out, err = run_cli(capsys, "train", "--init", str(recipe), "-w", "ws", "--executor", "serial")
    assert code == 0, err
    trained = out.split("model rows:")[1].split("test accuracy ")[1].split("%")[0]

    code, out, err = run_cli(capsys, "evaluate", "rows", "-w", "ws")
    assert code == 0, err
    evaluated = re.fullmatch(r"rows: test accuracy ([\d.]+)% on 13 records \(npz; always the most common label "
                             r"would score [\d.]+%\)\n", out)
    assert evaluated and abs(float(evaluated.group(1)) - float(trained)) <= 0.06  # the test split training used
    code, out, err = run_cli(capsys, "evaluate", "rows", "--data", str(recipe), "-w", "ws")  # the same data: fine
    assert code == 0 and "on 13 records (npz;" in out, err

    for other, message in ((DEFAULT_RECIPE, "its data source 'digits' is not the one 'rows' was trained on (rows)"),
                           (None, "its data section differs from the data 'rows' was registered with")):
        if other is None:
            write_npz(Path("other.npz"), n=64, seed=1)
            other = write_recipe(Path("other.yaml"), mlp_recipe({"npz": {"path": "other.npz"}}, in_features=6,
                                                                classes=2, source="rows"))
        for command in (["evaluate", "rows"], ["predict", "rows", "x.png"]):
            Path("x.png").write_bytes(b"")
            code, _, err = run_cli(capsys, *command, "--data", str(other), "-w", "ws")
            assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err

    np.save("x.npy", np.zeros(6, dtype=np.float32))
    code, out, err = run_cli(capsys, "predict", "rows-shard-1", "x.npy", "-w", "ws")
    assert code == 0 and out.startswith("x.npy: ") and out.split(": ")[1].strip() in {"0", "1"}, err
    code, _, err = run_cli(capsys, "predict", "rows", "x.png", "-w", "ws")  # an npz source reads no image files
    assert code == 2 and "does not read input files; give a .npy array" in err


def test_tabular_npz_rows_for_an_image_backbone_are_refused_before_any_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_npz(Path("rows.npz"))
    recipe = mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2, source="rows")
    recipe["backbone"], recipe["trainable"] = {"name": "test_efficientnet", "num_classes": 2}, "head"
    code, _, err = run_cli(capsys, "train", "--init", str(write_recipe(Path("r.yaml"), recipe)), "-w", "ws",
                           "--executor", "serial")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "inputs of shape (6,) per record (torch.float32) do not fit backbone 'test_efficientnet'" in err
    assert Workspace.open("ws").ledger.events() == []  # refused before anything was reserved


def test_train_prints_accuracy_without_the_test_records_a_deletion_removed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _rows_recipe(tmp_path, monkeypatch)
    code, out, err = run_cli(capsys, "train", "--init", str(recipe), "-w", "ws", "--executor", "serial")
    assert code == 0 and re.search(r"model rows: .* test accuracy [\d.]+% on 13 records \(most common label: "
                                   r"[\d.]+%\)\n", out), err
    gone = held_out_records(Workspace.open("ws"), "rows")[1].record_ids[:2]
    code, out, err = run_cli(capsys, "forget", *gone, "--request-id", "req-test", "-w", "ws")
    assert code == 3, err  # in the test split only: no component held them, and they are tombstoned
    code, out, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "again", "-w", "ws", "--executor", "serial")
    assert code == 0 and re.search(r"model again: .* test accuracy [\d.]+% on 11 records \(most common label: "
                                   r"[\d.]+%\)\n", out), err
    code, out, err = run_cli(capsys, "evaluate", "again", "-w", "ws")
    assert code == 0 and "on 11 records (npz; always the most common label would score" in out, err
    code, out, err = run_cli(capsys, "data", "list", "-w", "ws")  # review 92: counted the deleted test records
    rows = next(line for line in out.splitlines() if line.startswith("│ rows "))
    assert code == 0 and [cell.strip() for cell in rows.split("│")[3:5]] == ["62", "11"], out


def test_added_records_the_split_places_in_the_test_set_join_it_and_a_refused_pilot_registers_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 98: records added to a registered source that the split placed in the test set were in no shard and
    not in the registered test split: never used, without a word. And a pilot refused for its batch size had
    registered its few records, so their test split (2 records) stayed the source's for good."""
    recipe = _rows_recipe(tmp_path, monkeypatch)
    write_npz(Path("rows.npz"), n=20)  # shards of about 8 records: batch_size 16 is refused
    code, out, err = run_cli(capsys, "train", "--init", str(recipe), "-w", "ws", "--executor", "serial")
    assert code == 2 and "batch_size 16 is larger than its shard" in err, err
    assert "no data source is registered" in run_cli(capsys, "data", "list", "-w", "ws")[1]

    def counts() -> list[int]:
        row = next(line for line in run_cli(capsys, "data", "list", "-w", "ws")[1].splitlines() if "│ rows " in line)
        return [int(cell) for cell in row.split("│")[3:5]]

    for n, name in ((64, "rows"), (128, "more")):
        write_npz(Path("rows.npz"), n=n)  # the same 64 rows first, then 64 more
        code, out, err = run_cli(capsys, "train", str(recipe), "--name", name, "--allow-overlap", "-w", "ws",
                                 "--executor", "serial")
        assert code == 0, err
        shards = [int(k) for k in re.search(r"\(\[(\d+), (\d+)\] records\)", out).groups()]
        records, test = counts()
        assert records == n and sum(shards) + test == n, (shards, records, test)  # every record trained or measured
        assert re.search(rf"model {name}: .* test accuracy [\d.]+% on {test} records", out), out
    assert test > 13  # the first 64 rows' test split, and the added rows it gained


@pytest.mark.parametrize("mistake, message", [
    ({"trainable": "blocks[9:]"}, "trainable 'blocks[9:]': the model has "),
    ({"backbone": {"family": "mlp", "name": "mlp", "num_classes": 2, "options": {"in_features": 5, "hidden": [16]}}},
     "inputs of shape (6,) per record (torch.float32) do not fit backbone 'mlp'"),
    ({"privacy": {"epsilon": float("inf"), "delta": 1e-5}, "trainable": "params:nothing"},
     "no parameter name starts with 'nothing'"),
])
def test_a_recipe_theta0_refuses_registers_neither_its_data_nor_its_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        mistake: dict[str, Any], message: str) -> None:
    """Review 101: only the batch size was checked before registering. A selector the network lacks, or records its
    inputs or outputs do not fit, registered the data and the recipe's budget first; the recipe fixed was then held
    to both. Now nothing is registered, and the fixed recipe trains on the workspace as new."""
    recipe = _rows_recipe(tmp_path, monkeypatch)
    good = yaml.safe_load(recipe.read_text())
    budget = {} if "privacy" in mistake else {"budget": {"epsilon": 20, "delta": 1e-5}}  # none for a non-private run
    bad = write_recipe(Path("bad.yaml"), {**good, **mistake, **budget})
    code, out, err = run_cli(capsys, "train", "--init", str(bad), "-w", "ws", "--executor", "serial")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "no data source is registered" in run_cli(capsys, "data", "list", "-w", "ws")[1]
    assert "no budget is set and nothing is spent" in run_cli(capsys, "budget", "show", "-w", "ws")[1]
    code, out, err = run_cli(capsys, "train", str(recipe), "-w", "ws", "--executor", "serial")
    assert code == 0, err


def test_a_budget_delta_of_one_over_n_or_more_is_refused_and_no_figure_goes_below_zero(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 102: `budget set --delta 0.2` on shards of about 25 records was accepted. Every figure of a shard is
    stated at its budget's delta, so runs of epsilon 4 each then read "spent 0.8 of 1", and at delta 0.5 figures went
    negative (PRV's). A run's own delta is held below 1/n; the budget's now is too, whether set before or after."""
    from privacy_accounting import dp_sgd_event, epsilon_bounds

    recipe = _rows_recipe(tmp_path, monkeypatch)
    assert run_cli(capsys, "init", "-w", "ws")[0] == 0
    code, out, err = run_cli(capsys, "train", str(recipe), "-w", "ws", "--executor", "serial")
    assert code == 0, err
    code, out, err = run_cli(capsys, "budget", "set", "rows", "100", "--delta", "0.2", "-w", "ws")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "budget rows/shard-0: delta 0.2 >= 1/n = " in err and "allows releasing a record outright" in err, err
    assert Workspace.open("ws").ledger.budgets() == []  # nothing was set
    bad = yaml.safe_load(recipe.read_text())
    bad.update(data_source="fresh", budget={"epsilon": 100, "delta": 0.2})  # a recipe's budget, set on registering
    write_recipe(Path("fresh.yaml"), bad)
    code, out, err = run_cli(capsys, "train", "fresh.yaml", "--name", "fresh", "-w", "ws", "--executor", "serial",
                             "--allow-overlap")
    assert code == 2 and "the recipe's budget of fresh/shard-0: delta 0.2 >= 1/n" in err, err
    assert "fresh" not in run_cli(capsys, "data", "list", "-w", "ws")[1]  # refused before registering
    bounds = epsilon_bounds(dp_sgd_event(1.03, 0.25, 4), 0.3)  # PRV said -0.25 here
    assert min(bounds.rdp, bounds.prv, bounds.pld, bounds.epsilon) >= 0


def test_budget_set_holds_the_delta_below_one_over_the_largest_n_and_keeps_a_shards_delta_by_default(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 105: `budget set` checked delta < 1/n against the smallest n a shard's runs were planned for (the loosest
    bound: a run planned for 200 records was then stated at a delta of 1/100); and `budget set SOURCE/SHARD EPS`
    without --delta moved a shard from its source's delta to 1e-5."""
    recipe = _rows_recipe(tmp_path, monkeypatch)
    assert run_cli(capsys, "train", "--init", str(recipe), "-w", "ws", "--executor", "serial")[0] == 0
    planned = yaml.safe_load(recipe.read_text())
    planned["privacy"]["planned_shard_size"] = 200
    write_recipe(Path("planned.yaml"), planned)
    code, out, err = run_cli(capsys, "train", "planned.yaml", "--name", "p", "-w", "ws", "--executor", "serial",
                             "--allow-overlap")
    assert code == 0, err
    code, out, err = run_cli(capsys, "budget", "set", "rows", "100", "--delta", "0.01", "-w", "ws")  # 1/25 > 0.01
    assert code == 2 and "delta 0.01 >= 1/n = 0.005 for a shard of 200 records" in err, err
    assert run_cli(capsys, "budget", "set", "rows", "100", "--delta", "1e-7", "-w", "ws")[0] == 0
    code, out, err = run_cli(capsys, "budget", "set", "rows", "99.344449", "--delta", "1.234564e-7", "-w", "ws")
    assert code == 0 and "epsilon 99.344449 at delta 1.234564e-07" in out, out  # review 108: as set, not 99.3444
    assert run_cli(capsys, "budget", "set", "rows", "100", "--delta", "1e-7", "-w", "ws")[0] == 0
    code, out, err = run_cli(capsys, "budget", "set", "rows/shard-0", "90", "-w", "ws")
    assert code == 0 and "epsilon 90 at delta 1e-07" in out, out
    assert {(b.shard, b.delta) for b in Workspace.open("ws").ledger.budgets()} == {(None, 1e-7), ("shard-0", 1e-7)}


def test_train_holds_the_workspace_from_its_checks_to_its_composed_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 107: train released the lock between training and composing, and another command ran in the gap (a
    deletion retrained the new components, so the model was never composed; a budget change made the run's figures
    contradict each other)."""
    import subprocess
    import sys

    from dp_tangent.cli import train as train_command

    recipe = _rows_recipe(tmp_path, monkeypatch)
    taken_by_another = []
    outcome = train_command._outcome

    def observed(*args, **kwargs):  # another process tries the lock just before the model is composed
        probe = ("import fcntl, os; fd = os.open('ws/workspace.json', os.O_RDONLY); "
                 "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)")
        taken_by_another.append(subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0)
        return outcome(*args, **kwargs)

    monkeypatch.setattr(train_command, "_outcome", observed)
    code, out, err = run_cli(capsys, "train", "--init", str(recipe), "-w", "ws", "--executor", "serial")
    assert code == 0 and taken_by_another == [False], (err, taken_by_another)


def test_a_run_of_the_same_name_that_ended_while_train_waited_for_the_lock_is_seen_under_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 108: the name was checked before `train` took the lock; a second `train --name dup` waited for the first,
    then trained anyway (spending its budget) and failed to compose."""
    import contextlib

    recipe = _rows_recipe(tmp_path, monkeypatch)
    assert run_cli(capsys, "train", "--init", str(recipe), "--name", "first", "-w", "ws", "--executor", "serial")[0] == 0
    lock = Workspace.lock
    taken = []

    @contextlib.contextmanager
    def after_another_run(self):  # the other run of the same name finishes just before this one gets the lock
        if not taken:
            taken.append(True)
            assert run_cli(capsys, "train", str(recipe), "--name", "dup", "--allow-overlap", "-w", "ws",
                           "--executor", "serial")[0] == 0
        with lock(self):
            yield

    monkeypatch.setattr(Workspace, "lock", after_another_run)
    events = len(Workspace.open("ws").ledger.events())
    code, out, err = run_cli(capsys, "train", str(recipe), "--name", "dup", "--allow-overlap", "-w", "ws",
                             "--executor", "serial")
    assert code == 2 and "model 'dup' already exists" in err and len(err.strip().splitlines()) == 1, err
    assert len(Workspace.open("ws").ledger.events()) == events + 2  # the other run's two shards, and nothing more
