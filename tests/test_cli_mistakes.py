"""User mistakes on a trained workspace, as users make them (relative ``-w ws``): each a one-line error and a
non-zero exit that loses nothing (found by a review of the command line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from dp_tangent.workspace import Workspace
from helpers import run_cli
from owndata import mlp_recipe, write_npz, write_recipe
from privacy_accounting.figures import fmt_eps


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with rows.npz, rows.yaml and the workspace ``ws`` one train of it made."""
    folder = tmp_path_factory.mktemp("trained")
    write_npz(folder / "rows.npz")
    write_recipe(folder / "rows.yaml", mlp_recipe({"npz": {"path": str(folder / "rows.npz")}}, in_features=6,
                                                  classes=2, source="rows"))
    from dp_tangent.cli import main

    try:
        main(["train", "--init", str(folder / "rows.yaml"), "-w", str(folder / "ws"), "--executor", "serial"])
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


def test_a_source_that_grew_still_serves_deletions_with_retraining(ws: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Review 51 (and 45): rows added to the data since it was registered blocked `forget --retrain` and `evaluate`
    ("3 added"), though a reload reads only the registered records; the owner had to take new rows out first."""
    from dp_tangent.recipes import load_recipe

    from dp_tangent.workspace.data_sources import source_of

    test, shards = load_recipe(Path("rows.yaml")).load_data()
    record, test = shards[0].record_ids[0], test.record_ids  # the registered records, before the data grows
    before = Workspace.open("ws").load_component("rows-shard-0").metadata.manifest.records
    registered = Path(source_of(Workspace.open("ws"), "rows").data.path)  # the module's file: put back after
    kept = registered.read_bytes()
    try:
        write_npz(registered, n=300)  # the same 96 rows and 204 new ones
        code, out, err = run_cli(capsys, "forget", record, "--request-id", "grew", "--retrain", "-w", "ws")
        assert code == 0, err
        assert Workspace.open("ws").load_component("rows-shard-0.r1").metadata.manifest.records == before - 1
        code, out, err = run_cli(capsys, "evaluate", "rows", "-w", "ws")
        assert code == 0, err
        # review 53: with every registered test record deleted, evaluate measured the rows added since instead
        assert run_cli(capsys, "forget", *test, "--request-id", "alltest", "-w", "ws")[0] == 3  # in no component
        _refused(capsys, "evaluate", "rows", "-w", "ws", says="has no test record left to measure on")
    finally:
        registered.write_bytes(kept)


def test_train_into_a_path_with_no_workspace_needs_init(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 49: a mistyped -w (or the default path from another folder) silently started a fresh ledger, which knew
    no earlier run or deletion: the same records were trained and accounted again, a deleted one included."""
    _refused(capsys, "train", "rows.yaml", "--name", "again", "-w", "wss", says="no workspace at wss: create one with "
             "`dp-tangent init -w wss` or pass --init (a new workspace accounts from zero")
    assert not Path("wss").exists()
    assert run_cli(capsys, "init", "-w", "wss")[0] == 0
    code, out, err = run_cli(capsys, "train", "rows.yaml", "--name", "again", "-w", "wss", "--executor", "serial")
    assert code == 0, err
    # review 51: piped to a log (no terminal) the bars drew only at the end; a plain line marks every tenth
    assert "again-shard-0: " in out and "(50%)" in out and "(100%)" in out, out
    assert "━" not in out, out  # review 90: and the bars' last state is not printed after them


def test_outputs_never_replace_a_key_or_a_kept_checkpoint(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "audit", "keygen", "keys/new/k.key", "--name", "dpo")[0] == 0  # its folder is made
    key = Path("keys/new/k.key").read_bytes()
    _refused(capsys, "audit", "checkpoint", "--key", "keys/new/k.key", "-o", "keys/new/k.key", "-w", "ws",
             says="exists: a checkpoint is written to a new file")
    assert run_cli(capsys, "audit", "checkpoint", "--key", "keys/new/k.key", "-o", "cp.txt", "-w", "ws")[0] == 0
    kept = Path("cp.txt").read_bytes()
    _refused(capsys, "audit", "checkpoint", "--key", "keys/new/k.key", "-o", "cp.txt", "-w", "ws", says="exists")
    _refused(capsys, "report", "-o", "keys/new/k.key", "-w", "ws", says="exists and is not a privacy report")
    Path("settings.json").write_text('{"theme": "dark"}')
    _refused(capsys, "report", "-f", "json", "-o", "settings.json", "-w", "ws", says="is not a privacy report")
    assert Path("keys/new/k.key").read_bytes() == key and Path("cp.txt").read_bytes() == kept
    assert Path("settings.json").read_text() == '{"theme": "dark"}'


def test_a_report_in_every_format_is_written_again_under_its_name(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regenerating a report is the usual thing to do; the HTML one holds its notice HTML-escaped."""
    for fmt in ("md", "json", "html"):
        for name in (f"privacy.{fmt}", f"privacy.{fmt}", f"{fmt}-report.txt", f"{fmt}-report.txt"):
            code, out, err = run_cli(capsys, "report", "-f", fmt, "-o", name, "-w", "ws")
            assert code == 0 and f"wrote {name}" in out, (fmt, code, err)
    for _ in range(2):  # a report is written over a report
        assert run_cli(capsys, "report", "-f", "md", "-o", "report.md", "-w", "ws")[0] == 0


def test_nothing_that_would_block_a_workspace_is_made_inside_it(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, "init", "-w", "ws/models/sub", says="is inside the workspace")
    _refused(capsys, "audit", "keygen", "ws/k.key", says="is inside the workspace")
    assert not Path("ws/models/sub").exists() and not Path("ws/k.key").exists()
    assert Workspace.open("ws").audit.verify().ok
    Path("nx").mkdir()
    Path("nx/workspace.json").write_text('{"version": 2, "projects": {}}')  # another tool's workspace file
    assert run_cli(capsys, "init", "-w", "nx/apps/ws")[0] == 0


def test_a_model_name_is_never_reused_nor_a_component_s(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("away").mkdir()
    shutil.move("ws/models/rows.json", "away/rows.json")  # archived by hand: the ledger still holds the model
    before = Path("ws/models/rows.safetensors").read_bytes()
    _refused(capsys, "compose", "rows-shard-0", "--name", "rows", "-w", "ws", says="model 'rows' already exists")
    assert Path("ws/models/rows.safetensors").read_bytes() == before
    shutil.move("away/rows.json", "ws/models/rows.json")
    _refused(capsys, "compose", "rows-shard-0", "--name", "rows-shard-1", "-w", "ws", says="is a component's name")
    assert Workspace.open("ws").audit.verify().ok
    # asked again exactly as it was made (a script that lost the first answer): nothing to do, exit 0, nothing logged
    entries = len(Workspace.open("ws").audit.entries())
    code, out, err = run_cli(capsys, "compose", "rows-shard-0", "rows-shard-1", "--name", "rows", "-w", "ws")
    assert code == 0 and "already; nothing was changed" in out, (out, err)
    assert len(Workspace.open("ws").audit.entries()) == entries
    _refused(capsys, "compose", "rows-shard-1", "rows-shard-0", "--name", "rows", "-w", "ws", says="already exists")


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's "overflow encountered" would print before the error
def test_weights_that_overflow_are_one_line_errors_not_tracebacks(ws: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "compose", "rows-shard-0", "rows-shard-1", "--name", "huge", "--weights",
                             "1e308,1e308", "-w", "ws")
    assert code == 0, err  # mean weights: the same coefficients as 1,1
    assert Workspace.open("ws").load_model("huge")[0].components[0].coefficient == 0.5
    _refused(capsys, "compose", "rows-shard-0", "rows-shard-1", "--name", "inf", "--method", "task-arithmetic",
             "--weights", "1e308,1e308", "-w", "ws", says="is not finite")
    assert not Path("ws/models/inf.json").exists()
    _refused(capsys, "compose", "rows-shard-0", "--name", "merged", "--method", "regmean", "-w", "ws",
             says="only the Python API takes")
    # review 83: the CLI's own names, not the library's tuple or Python syntax
    _refused(capsys, "compose", "rows-shard-0", "--name", "merged", "--method", "foo", "-w", "ws",
             says="--method must be mean, sum or task-arithmetic, got 'foo'")
    _refused(capsys, "compose", "rows-shard-0", "rows-shard-1", "--name", "merged", "--weights", "-1,2", "-w", "ws",
             says="--method task-arithmetic")


def test_predict_refuses_empty_or_non_finite_arrays_and_data_it_would_ignore(
        ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save("empty.npy", np.zeros((0, 6), np.float32))
    np.save("nan.npy", np.full((2, 6), np.nan, np.float32))
    _refused(capsys, "predict", "rows", "empty.npy", "-w", "ws", says="the array is empty")
    _refused(capsys, "predict", "rows", "nan.npy", "-w", "ws", says="12 value(s) are not finite")
    Path("inputs/.hidden").mkdir(parents=True)  # review 51: a folder was "no such input file"; now its files count
    Path("inputs/.hidden/x.npy").write_bytes(b"")  # hidden: not an input
    _refused(capsys, "predict", "rows", "inputs", "-w", "ws", says="inputs: a folder with no input file in it")
    np.save("big.npy", np.full((1, 6), 1e39))  # finite in float64, not in float32: no numpy warning lines
    _refused(capsys, "predict", "rows", "big.npy", "-w", "ws", says="beyond float32's range")
    np.save("complex.npy", np.ones((2, 6), np.complex64))  # review 83: its imaginary parts were dropped, with a warning
    _refused(capsys, "predict", "rows", "complex.npy", "-w", "ws",
             says="expected real numbers, got an array of complex64")
    Path("text.npy").write_text("1,2,3,4,5,6\n")  # review 83: numpy took it for a pickle, and said so
    _refused(capsys, "predict", "rows", "text.npy", "-w", "ws", says="not a file numpy wrote")
    np.save("ok.npy", np.zeros((2, 6), np.float32))
    _refused(capsys, "predict", "rows", "ok.npy", "--data", "rows.yaml", "-w", "ws", says=".npy arrays are model "
             "inputs already")
    assert run_cli(capsys, "predict", "rows", "ok.npy", "-w", "ws")[0] == 0
    _refused(capsys, "predict", "rows", "ok.npy", "--names", "-w", "ws", says="names no classes (its labels are the "
             "class indices); omit --names")


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
    # review: asked again, a completed request answered with an error; another request for the same record said only
    # NOT FOUND; a completed request's id reused for another record said "already completed", not that it was ignored
    code, out, err = run_cli(capsys, "forget", first, "--request-id", "R1", "-w", "ws")
    assert code == 0 and "request R1 was already completed on" in out and "nothing was changed" in out, (out, err)
    code, out, err = run_cli(capsys, "forget", first, "--request-id", "R1", "--retrain", "-w", "ws")
    assert code == 0 and "note: --retrain was not applied: request R1 was completed without retraining" in err, err
    code, out, err = run_cli(capsys, "forget", first, "--request-id", "R2", "-w", "ws")
    assert code == 3 and "1 of them were named by earlier request(s) R1" in err, err
    code, out, err = run_cli(capsys, "forget", first, "--request-id", "R2", "-w", "ws")  # asked again: the same answer
    assert code == 3 and "already completed" in out and "named by earlier request(s) R1" in err, (out, err)
    code, out, err = run_cli(capsys, "forget", second, "--request-id", "R1", "-w", "ws")
    assert code == 2 and "completed on" in err and "the ids given now were not processed" in err, err
    assert "nothing was changed" not in err  # said once, not twice (review 42)


def test_a_label_outside_the_backbone_s_classes_is_refused_before_anything_is_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_npz(Path("rows.npz"))
    arrays = dict(np.load("rows.npz"))
    arrays["targets"][7] = 5
    np.savez("rows.npz", **arrays)
    recipe = write_recipe(Path("rows.yaml"), mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2,
                                                        source="rows"))
    _refused(capsys, "train", "--init", str(recipe), "-w", "ws", says="e.g. record 'row-007' has label 5; set the backbone's "
             "num_classes to at least 6")
    assert not Path("ws").exists()


def test_the_same_source_in_other_shards_or_moved_is_still_the_registered_data(
        ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Other shards read the same records, ids and test split: only the overlap rule applies (it used to be refused
    as another reading). Data moved elsewhere with every record the same is re-pointed; a changed record is not."""
    registry = Path("ws/data-sources.json").read_bytes()
    _refused(capsys, "train", "--init", "rows.yaml", "--shards", "3", "--name", "three", "-w", "ws", says="overlaps")
    recipe = yaml.safe_load(Path("rows.yaml").read_text())
    recipe["data"]["npz"]["test_fraction"] = 0.5  # another test split: another reading of the same file
    Path("split.yaml").write_text(yaml.safe_dump(recipe))
    _refused(capsys, "train", "--init", "split.yaml", "--name", "split", "-w", "ws",
             says="data source 'rows' is registered to be read otherwise (data.test_fraction differ)")
    assert Path("ws/data-sources.json").read_bytes() == registry

    Path("moved").mkdir()
    shutil.move("rows.npz", "moved/rows.npz")
    recipe = yaml.safe_load(Path("rows.yaml").read_text())
    recipe["data"]["npz"]["path"] = str(Path("moved/rows.npz").absolute())
    recipe["privacy"]["epsilon"] = 1
    Path("moved.yaml").write_text(yaml.safe_dump(recipe))
    code, out, err = run_cli(capsys, "train", "--init", "moved.yaml", "--name", "moved", "--allow-overlap", "-w", "ws",
                             "--executor", "serial")
    assert code == 0, err
    assert "moved/rows.npz" in json.loads(Path("ws/data-sources.json").read_text())["sources"]["rows"]["data"]["path"]
    assert run_cli(capsys, "evaluate", "rows", "-w", "ws")[0] == 0  # earlier models reload from the new place

    original = dict(np.load("moved/rows.npz"))
    arrays = {k: v.copy() for k, v in original.items()}
    arrays["inputs"][3, 0] += 1.0
    np.savez("moved/rows.npz", **arrays)
    _refused(capsys, "train", "--init", "moved.yaml", "--name", "changed", "--allow-overlap", "-w", "ws",
             says="is not the data it was registered with (1 record(s) changed, e.g. 'row-003')")
    np.savez("moved/rows.npz", **{k: v[1:] for k, v in original.items()})  # a record no deletion removed is gone
    _refused(capsys, "train", "--init", "moved.yaml", "--name", "fewer", "--allow-overlap", "-w", "ws",
             says="(1 missing that no deletion request removed)")


def test_a_budget_is_refused_where_it_would_never_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 83: `budget set digits/public` said it set a budget (and logged it) on a split its owner declared
    public, where none applies; `digits/` was taken for `digits`."""
    from dp_tangent.data.sources import DigitsSource

    monkeypatch.chdir(tmp_path)
    ws = Workspace.create(Path("ws"))
    loader = DigitsSource(image_size=8, shards=2, test_fraction=0.2, seed=0, max_records=60, public_split=True)
    ws.declare_data_source("digits", description="d", shards=["shard-0", "shard-1", "public"], loader=loader)
    files = {p: p.read_bytes() for p in Path("ws").rglob("*") if p.is_file()}
    _refused(capsys, "budget", "set", "digits/public", "10", "-w", "ws", says="is declared public by its data owner")
    for target in ("digits/", "/shard-0"):
        _refused(capsys, "budget", "set", target, "10", "-w", "ws", says="name a data source, or a data source and")
    # review 83: a negative limit was taken for an option ("No such option: -1")
    _refused(capsys, "budget", "set", "digits", "-1", "-w", "ws", says="epsilon must be finite and > 0, got -1.0")
    assert {p: p.read_bytes() for p in Path("ws").rglob("*") if p.is_file()} == files  # nothing logged or set
    assert run_cli(capsys, "budget", "set", "digits/shard-0", "10", "-w", "ws")[0] == 0


def test_the_digits_in_other_shards_are_the_same_reading_unless_a_public_split_depends_on_them(
        tmp_path: Path) -> None:
    from dp_tangent.data.sources import DigitsSource
    from dp_tangent.workspace.data_sources import DataSourceError, registered

    ws = Workspace.create(tmp_path / "ws")
    first = DigitsSource(image_size=8, shards=2, test_fraction=0.2, seed=0, max_records=60)
    ws.declare_data_source("digits", description="d", shards=["shard-0", "shard-1"], loader=first)
    for other in (first.model_copy(update={"shards": 3}), first.model_copy(update={"by": "label"})):
        assert registered(ws, "digits", other) is None  # the same records, ids and test split
    public = first.model_copy(update={"public_split": True})
    ws.declare_data_source("demo", description="d", shards=["shard-0", "shard-1"], loader=public)
    with pytest.raises(DataSourceError, match=r"read otherwise \(shards differ\)"):
        registered(ws, "demo", public.model_copy(update={"shards": 3}))  # which records are public changes


def test_a_train_reads_ids_in_the_form_its_registered_source_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A table registered before ids were read as written (here: ``record_ids_typed`` written out, as the registry
    of such a source reads) is trained again by the same recipe with its ids typed, as its deletions hold them."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    rows = ["rid,f0,f1,f2,f3,f4,f5,y"] + [
        f"{i:05d}," + ",".join(f"{v:.3f}" for v in x) + f",{'ab'[int(x[0] > 0)]}" for i, x in
        enumerate(rng.normal(size=(96, 6)))]
    Path("t.csv").write_text("\n".join(rows) + "\n")
    table = {"path": "t.csv", "features": [f"f{k}" for k in range(6)], "label": "y", "record_id": "rid",
             "classes": ["a", "b"], "scaling": "none"}
    write_recipe(Path("old.yaml"), mlp_recipe({"table": {**table, "record_ids_typed": True}}, in_features=6,
                                              classes=2, source="t"))
    write_recipe(Path("new.yaml"), mlp_recipe({"table": table}, in_features=6, classes=2, source="t"))
    assert run_cli(capsys, "train", "--init", "old.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    from dp_tangent.recipes import load_recipe

    gone = load_recipe(Path("old.yaml")).load_data()[1][0].record_ids[0]
    assert gone.isdigit() and not gone.startswith("0")  # the typed form the workspace holds
    code, out, err = run_cli(capsys, "forget", gone, "--request-id", "r", "-w", "ws")
    assert code == 0, err
    registry = Path("ws/data-sources.json").read_bytes()
    code, out, err = run_cli(capsys, "train", "--init", "new.yaml", "--name", "again", "-w", "ws", "--executor", "serial")
    assert code == 0, err
    assert "left out 1 record(s)" in out + err, out + err  # the deleted record stays deleted
    assert Path("ws/data-sources.json").read_bytes() == registry
    code, out, err = run_cli(capsys, "evaluate", "again", "--data", "new.yaml", "-w", "ws")
    assert code == 0, err  # read as registered
    # The same file under another name: its ids are still the typed ones trained, so the overlap rule holds (with
    # ids as written they were new records: the deleted one trained again, a fresh account for every other).
    write_recipe(Path("renamed.yaml"), mlp_recipe({"table": table}, in_features=6, classes=2, source="t2"))
    _refused(capsys, "train", "--init", "renamed.yaml", "--name", "renamed", "-w", "ws", says="overlaps")
    shutil.copy("t.csv", "copy.csv")  # a copy, or another export, of the same records: found by their typed ids
    write_recipe(Path("copy.yaml"), mlp_recipe({"table": {**table, "path": "copy.csv"}}, in_features=6, classes=2,
                                               source="t3"))
    _refused(capsys, "train", "--init", "copy.yaml", "--name", "copied", "-w", "ws", says="overlaps")
    Path("moved").mkdir()  # the registered file moved: still its source, read typed
    shutil.move("t.csv", "moved/t.csv")
    write_recipe(Path("moved.yaml"), mlp_recipe({"table": {**table, "path": "moved/t.csv"}}, in_features=6,
                                                classes=2, source="t"))
    code, out, err = run_cli(capsys, "train", "--init", "moved.yaml", "--name", "moved", "-w", "ws", "--executor", "serial")
    assert code == 0 and "left out 1 record(s)" in out + err, err
    nxt = int(gone) + 1
    code, out, err = run_cli(capsys, "forget", f"{nxt:05d}", "--request-id", "r2", "-w", "ws")
    assert code == 3 and "hold their record ids as pyarrow typed them" in err, err
    # review 68: that request named the held record in another spelling: not trained again until deleted as held
    _refused(capsys, "train", "moved.yaml", "--name", "moved2", "-w", "ws", "--executor", "serial",
             says=f"record id '{nxt}' is another spelling of the record id '{nxt:05d}' removed by a deletion request")


def test_the_same_table_exported_with_its_ids_typed_is_refused_not_trained_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 49: a CSV's ids 00000.. exported to Parquet (pandas reads them as 0, 1, ..) under another data source
    name were new records to the workspace: every record trained and accounted afresh, and a deleted one trained
    again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6))
    rows = ["rid,f0,f1,f2,f3,f4,f5,y"] + [f"{i:05d}," + ",".join(f"{v:.3f}" for v in r) + f",{'ab'[int(r[0] > 0)]}"
                                         for i, r in enumerate(x)]
    Path("t.csv").write_text("\n".join(rows) + "\n")
    columns = {"rid": pa.array(range(60), pa.int64()), **{f"f{k}": x[:, k].round(3) for k in range(6)},
               "y": ["ab"[int(r[0] > 0)] for r in x]}
    pq.write_table(pa.table(columns), "t.parquet")
    table = {"features": [f"f{k}" for k in range(6)], "label": "y", "record_id": "rid", "classes": ["a", "b"],
             "scaling": "none"}
    write_recipe(Path("csv.yaml"), mlp_recipe({"table": {**table, "path": "t.csv"}}, in_features=6, classes=2,
                                              source="t"))
    write_recipe(Path("pq.yaml"), mlp_recipe({"table": {**table, "path": "t.parquet"}}, in_features=6, classes=2,
                                             source="t-pq"))
    assert run_cli(capsys, "train", "--init", "csv.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    assert run_cli(capsys, "forget", "00000", "--request-id", "r", "-w", "ws")[0] == 0
    components = sorted(Path("ws/components").iterdir())
    _refused(capsys, "train", "--init", "pq.yaml", "-w", "ws", "--executor", "serial",
             says="data source 't-pq': record id '0' is another spelling of the record id '00000' removed by a "
                  "deletion request")
    Path("d.csv").write_text("rid,f0,f1,f2,f3,f4,f5,y\n" + "".join(f"{i},0,0,0,0,0,{i},{'ab'[i % 2]}\n"
                                                                   for i in range(1, 30)))  # 1 is 00001 of t
    write_recipe(Path("d.yaml"), mlp_recipe({"table": {**table, "path": "d.csv"}}, in_features=6, classes=2,
                                            source="d"))
    _refused(capsys, "train", "--init", "d.yaml", "-w", "ws", "--executor", "serial",
             says="record id '1' is another spelling of the record id '00001' in data source 't'")
    Path("f.csv").write_text("rid,f0,f1,f2,f3,f4,f5,y\n" + "".join(f"{i}.0,0,0,0,0,0,{i},{'ab'[i % 2]}\n"
                                                                   for i in range(1, 30)))  # pandas' 1.0 for 1
    write_recipe(Path("f.yaml"), mlp_recipe({"table": {**table, "path": "f.csv"}}, in_features=6, classes=2,
                                            source="f"))
    _refused(capsys, "train", "--init", "f.yaml", "-w", "ws", "--executor", "serial",
             says="record id '1.0' is another spelling of the record id '00001' in data source 't'")
    assert sorted(Path("ws/components").iterdir()) == components
    code, out, err = run_cli(capsys, "forget", "7", "--request-id", "r7", "-w", "ws")  # the typed form of 00007
    assert code == 3 and "'7' is held as '00007' (data source 't')" in err, err


def test_a_respelling_in_another_unicode_form_shows_how_the_two_ids_differ(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 84: the refusal of an NFD id (a Mac's) for a held NFC one named two ids that print alike."""
    import unicodedata

    monkeypatch.chdir(tmp_path)
    table = {"features": ["f0"], "label": "y", "record_id": "rid", "classes": ["a", "b"], "scaling": "none"}
    for name, form in (("nfc", "NFC"), ("nfd", "NFD")):
        Path(f"{name}.csv").write_text("rid,f0,y\n" + "".join(
            f"{unicodedata.normalize(form, 'zoë')}-{i},{i % 3},{'ab'[i % 2]}\n" for i in range(80)))
        write_recipe(Path(f"{name}.yaml"), mlp_recipe({"table": {**table, "path": f"{name}.csv"}}, in_features=1,
                                                      classes=2, source=name))
    assert run_cli(capsys, "train", "--init", "nfc.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    _refused(capsys, "train", "nfd.yaml", "-w", "ws", "--executor", "serial",
             says="(they differ only in Unicode form: 'zoe\\u0308-")


def test_a_deleted_id_does_not_come_back_under_a_spelling_that_cannot_be_listed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 67 #3: a deleted ``0017.0``, ``17.00`` or ``1.7E+1`` came back as a new ``17`` (the listed respellings
    of 17 hold none of them; the other way round was refused). The workspace now keeps each id's canonical
    spelling's commitment, in the registry and the tombstones, and compares those."""
    monkeypatch.chdir(tmp_path)
    features = {"features": [f"f{k}" for k in range(6)], "label": "y", "record_id": "rid", "classes": ["a", "b"],
                "scaling": "none"}

    def table(path: str, ids: list[str]) -> None:
        Path(path).write_text("rid,f0,f1,f2,f3,f4,f5,y\n" + "".join(
            f"{r},0,0,0,0,{k % 7},{k % 5},{'ab'[k % 2]}\n" for k, r in enumerate(ids)))

    for source, deleted in (("t", "0017.0"), ("u", "17.00"), ("v", "1.7E+1")):
        table(f"{source}.csv", [f"{source}-{i}" for i in range(60)] + [deleted])
        write_recipe(Path(f"{source}.yaml"), mlp_recipe({"table": {**features, "path": f"{source}.csv"}},
                                                        in_features=6, classes=2, source=source))
        ws = f"ws-{source}"
        code, out, err = run_cli(capsys, "train", "--init", f"{source}.yaml", "-w", ws, "--executor", "serial")
        assert code == 0, err
        assert run_cli(capsys, "forget", deleted, "--request-id", "r", "-w", ws)[0] in (0, 3)  # (3: in the test split)
        table("new.csv", [f"n-{i}" for i in range(60)] + ["17"])
        write_recipe(Path("new.yaml"), mlp_recipe({"table": {**features, "path": "new.csv"}}, in_features=6,
                                                  classes=2, source="new"))
        components = sorted(Path(ws, "components").iterdir())
        _refused(capsys, "train", "--init", "new.yaml", "-w", ws, "--executor", "serial",
                 says="data source 'new': record id '17' is another spelling of a record id removed by a deletion "
                      "request")
        assert sorted(Path(ws, "components").iterdir()) == components
    table("held.csv", [f"h-{i}" for i in range(60)] + ["0017.00"])  # held, not deleted: found both ways, named
    write_recipe(Path("held.yaml"), mlp_recipe({"table": {**features, "path": "held.csv"}}, in_features=6, classes=2,
                                               source="held"))
    assert run_cli(capsys, "train", "--init", "held.yaml", "-w", "ws-h", "--executor", "serial")[0] == 0
    _refused(capsys, "train", "--init", "new.yaml", "-w", "ws-h", "--executor", "serial",
             says="record id '17' is another spelling of a record id in data source 'held'")
    code, out, err = run_cli(capsys, "forget", "17", "--request-id", "q", "-w", "ws-h")
    assert code == 3 and "'17' is held under another spelling of it in data source 'held'" in err, err
    # 17 is tombstoned now: the held 0017.00 is not trained again until deleted as the data spells it (review 68)
    says = ("record id '0017.00' is another spelling of the record id '17' removed by a deletion request: it is not "
            "trained again until deleted as the data spells it (`dp-tangent forget -w WORKSPACE --request-id NEW_ID "
            "-- 0017.00`)")
    _refused(capsys, "train", "held.yaml", "--name", "again", "-w", "ws-h", "--executor", "serial", says=says)
    from dp_tangent.components.component import read_metadata
    from dp_tangent.components.manifest import commit

    ws = Workspace.open("ws-h")  # a record of the component holding 0017.00
    shard = next(set(m.manifest.commitments) for m in map(read_metadata, Path("ws-h/components").iterdir())
                 if commit("0017.00", ws.manifest_key()) in m.manifest.commitments)
    neighbour = next(f"h-{i}" for i in range(60) if commit(f"h-{i}", ws.manifest_key()) in shard)
    components = sorted(Path("ws-h/components").iterdir())  # nor retrained for another request (review 69)
    code, out, err = run_cli(capsys, "forget", neighbour, "--request-id", "q1", "--retrain", "-w", "ws-h")
    assert code == 2 and says.replace("NEW_ID", "NEW_ID --retrain") in err and "request q1 stays OPEN" in err, err
    assert sorted(Path("ws-h/components").iterdir()) == components
    assert run_cli(capsys, "forget", "0017.00", "--request-id", "q2", "-w", "ws-h")[0] == 0
    assert run_cli(capsys, "forget", neighbour, "--request-id", "q1", "--retrain", "-w", "ws-h")[0] == 0
    code, out, err = run_cli(capsys, "train", "held.yaml", "--name", "again", "-w", "ws-h", "--executor", "serial")
    assert code == 0 and "left out 2 record(s)" in out + err, err


def test_a_deletion_tombstoned_before_canonical_spellings_were_kept_gains_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 68: a tombstone written by an earlier version had no canonical commitment, and serving its request
    again (received by that version) or registering data still holding its row did not add one: a deleted
    ``0042.0`` came back as a new ``42``. (Serving it again: test_data_ids.)"""
    from dp_tangent.workspace.commit import Change, FileWrite, apply
    from dp_tangent.workspace.tombstones import FILE, Tombstones, TombstoneFile

    monkeypatch.chdir(tmp_path)
    features = {"features": [f"f{k}" for k in range(6)], "label": "y", "record_id": "rid", "classes": ["a", "b"],
                "scaling": "none"}
    ids = [f"a-{i}" for i in range(60)] + ["0042.0"]
    Path("a.csv").write_text("rid,f0,f1,f2,f3,f4,f5,y\n" + "".join(
        f"{r},0,0,0,0,{k % 7},{k % 5},{'ab'[k % 2]}\n" for k, r in enumerate(ids)))
    write_recipe(Path("a.yaml"), mlp_recipe({"table": {**features, "path": "a.csv"}}, in_features=6, classes=2,
                                            source="a"))
    assert run_cli(capsys, "train", "--init", "a.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    assert run_cli(capsys, "forget", "0042.0", "--request-id", "r1", "-w", "ws")[0] in (0, 3)
    ws = Workspace.open("ws")
    legacy = TombstoneFile.model_validate_json(Path("ws", FILE).read_bytes()).model_copy(update={"canonical": {}})
    apply(ws, Change("tombstoned", writes=[FileWrite(FILE, legacy.model_dump_json().encode(), "tombstones")],
                     parameters={}))  # as an earlier version wrote it
    assert set(Tombstones(ws.root).canonical().values()) == {None}
    # its row is still in a.csv, which gains a row 42: registering it works the canonical spelling out again
    with Path("a.csv").open("a") as rows:
        rows.write("42,0,0,0,0,1,1,a\n")
    _refused(capsys, "train", "a.yaml", "--name", "a2", "-w", "ws", "--executor", "serial",
             says="record id '42' is another spelling of a record id removed by a deletion request (if it is that "
                  "record, take it out of the data: its row of a table, its file of a folder")


def test_a_registry_written_before_canonical_spellings_were_kept_gains_them_at_its_next_registration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A source registered by an earlier version has no canonical commitments: only the listed respellings find its
    ids, so a held ``0017.0`` and a new ``17`` pass until the source is trained again, which keeps them."""
    from dp_tangent.workspace import data_sources
    from dp_tangent.workspace.commit import Change, FileWrite, apply

    monkeypatch.chdir(tmp_path)
    features = {"features": [f"f{k}" for k in range(6)], "label": "y", "record_id": "rid", "classes": ["a", "b"],
                "scaling": "none"}
    for source, ids in (("old", [f"o-{i}" for i in range(60)] + ["0017.0"]), ("new", [f"n-{i}" for i in range(60)]
                                                                              + ["17"])):
        Path(f"{source}.csv").write_text("rid,f0,f1,f2,f3,f4,f5,y\n" + "".join(
            f"{r},0,0,0,0,{k % 7},{k % 5},{'ab'[k % 2]}\n" for k, r in enumerate(ids)))
        write_recipe(Path(f"{source}.yaml"), mlp_recipe({"table": {**features, "path": f"{source}.csv"}},
                                                        in_features=6, classes=2, source=source))
    assert run_cli(capsys, "train", "--init", "old.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    ws = Workspace.open("ws")
    registry = data_sources.registry(ws)
    assert registry.content["old"].canonical == {data_sources.commit("0017.0", ws.manifest_key()):
                                                 data_sources.commit("17", ws.manifest_key())}
    registry.content["old"].canonical = None  # as an earlier version wrote it, through a logged change
    apply(ws, Change("data_source", writes=[FileWrite(data_sources.FILE, registry.model_dump_json().encode(),
                                                      "data-source registry")], parameters={}))
    shutil.copytree("ws", "copy")
    code, out, err = run_cli(capsys, "train", "--init", "new.yaml", "-w", "copy", "--executor", "serial")
    assert code == 0, err  # the limit of a registry without them (documented)
    assert run_cli(capsys, "train", "old.yaml", "--name", "again", "-w", "ws", "--executor", "serial")[0] == 0
    assert data_sources.registry(Workspace.open("ws")).content["old"].canonical is not None
    _refused(capsys, "train", "--init", "new.yaml", "-w", "ws", "--executor", "serial",
             says="record id '17' is another spelling of a record id in data source 'old'")


def test_an_id_held_in_another_unicode_form_is_named_when_a_request_misses_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 51: a request typed on a Mac (NFD: u and a combining accent) missed the NFC id the data holds, and
    completed as NOT FOUND with a generic hint while the record stayed trained."""
    import unicodedata

    monkeypatch.chdir(tmp_path)
    Path("t.csv").write_text("rid,f0,f1,f2,f3,f4,f5,y\n" + "".join(f"ñandú-{i},0,0,0,0,0,{i},{'ab'[i % 2]}\n"
                                                                   for i in range(120)), encoding="utf-8")
    write_recipe(Path("t.yaml"), mlp_recipe({"table": {"path": "t.csv", "features": [f"f{k}" for k in range(6)],
                                                       "label": "y", "record_id": "rid", "classes": ["a", "b"],
                                                       "scaling": "none"}}, in_features=6, classes=2, source="t"))
    code, out, err = run_cli(capsys, "train", "--init", "t.yaml", "-w", "ws", "--executor", "serial")
    assert code == 0, err
    nfd = unicodedata.normalize("NFD", "ñandú-7")
    code, out, err = run_cli(capsys, "forget", nfd, "--request-id", "mac", "-w", "ws")
    assert code == 3 and f"{nfd!r} is held as 'ñandú-7' (data source 't')" in err, err


def test_a_source_registered_with_ids_this_version_refuses_keeps_training_as_registered(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 50: a table an earlier version registered with float ids could no longer be trained from its recipe
    (a new model, a retry, --allow-overlap): the check for a new registration applied to it too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dp_tangent.data import tables

    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).normal(size=(60, 6))
    pq.write_table(pa.table({"rid": np.arange(60, dtype=float), **{f"f{k}": x[:, k] for k in range(6)},
                             "y": ["ab"[int(r[0] > 0)] for r in x]}), "t.parquet")
    write_recipe(Path("t.yaml"), mlp_recipe({"table": {"path": "t.parquet", "features": [f"f{k}" for k in range(6)],
                                                       "label": "y", "record_id": "rid", "classes": ["a", "b"],
                                                       "scaling": "none"}}, in_features=6, classes=2, source="t"))
    _refused(capsys, "train", "--init", "t.yaml", "-w", "ws", "--executor", "serial", says="holds double")
    with monkeypatch.context() as earlier:  # as the version before the check registered it
        earlier.setattr(tables, "_exact_ids", lambda kind: True)
        assert run_cli(capsys, "train", "--init", "t.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    code, out, err = run_cli(capsys, "train", "t.yaml", "--name", "again", "--allow-overlap", "-w", "ws",
                             "--executor", "serial")
    assert code == 0, err
    code, out, err = run_cli(capsys, "forget", "3.0", "--retrain", "-w", "ws")
    assert code == 0, err
    from dp_tangent.data.sources import source_for  # review 52: through the library too
    from dp_tangent.recipes import load_recipe

    recipe = load_recipe(Path("t.yaml"))
    Workspace.open("ws").declare_data_source("t", description="t", shards=["shard-0", "shard-1"],
                                             loader=source_for(recipe.data, recipe.shards))


def test_new_records_of_a_registered_source_and_of_a_first_registration_are_checked_for_their_ids(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 52: a registered source's new rows were read unchecked (ids with spaces trained, no request could name
    them), and one table holding a record twice under two spellings (merged with its own re-export) trained both."""
    monkeypatch.chdir(tmp_path)
    rows = [f"r-{i}" for i in range(60)]

    def table(ids: list[str]) -> None:
        Path("t.csv").write_text("rid,f0,f1,f2,f3,f4,f5,y\n" + "".join(
            f"{r},0,0,0,0,{k % 7},{k % 5},{'ab'[k % 2]}\n" for k, r in enumerate(ids)))

    write_recipe(Path("t.yaml"), mlp_recipe({"table": {"path": "t.csv", "features": [f"f{k}" for k in range(6)],
                                                       "label": "y", "record_id": "rid", "classes": ["a", "b"],
                                                       "scaling": "none"}}, in_features=6, classes=2, source="t"))
    table(rows)
    assert run_cli(capsys, "train", "--init", "t.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    table([*rows, "r-60", " r-new "])  # the new one last (review 53: ids were paired with the next record's)
    _refused(capsys, "train", "t.yaml", "--name", "t2", "-w", "ws", "--executor", "serial",
             says="data source 't': 1 new record id(s) have spaces around them (e.g. ' r-new ')")
    assert run_cli(capsys, "forget", "r-0", "--request-id", "q1", "-w", "ws")[0] in (0, 3)  # r-0 stays in the file:
    _refused(capsys, "train", "t.yaml", "--name", "t2", "-w", "ws", "--executor", "serial",  # review 53, the
             says="1 new record id(s) have spaces around them (e.g. ' r-new ')")  # same refusal, not a shifted one
    table([f"{i:05d}" for i in range(60)] + [str(i) for i in range(1, 30)])
    write_recipe(Path("m.yaml"), mlp_recipe({"table": {"path": "t.csv", "features": [f"f{k}" for k in range(6)],
                                                       "label": "y", "record_id": "rid", "classes": ["a", "b"],
                                                       "scaling": "none"}}, in_features=6, classes=2, source="m"))
    _refused(capsys, "train", "m.yaml", "-w", "ws", "--executor", "serial",
             says="data source 'm': record ids '00001' and '1' are two spellings of one id")


def test_a_changed_certificate_copy_is_restored_from_its_json(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The requester's .txt is the rendering of the .json: rebuilt with exactly the bytes the log vouches for, instead
    of a backup (an edit of it blocked the workspace for good)."""
    from dp_tangent.recipes import load_recipe

    test, shards = load_recipe(Path("rows.yaml")).load_data()
    record, test = shards[0].record_ids[0], test.record_ids  # the registered records, before the data grows
    assert run_cli(capsys, "forget", record, "--request-id", "R9", "-w", "ws")[0] == 0
    text = Path("ws/certificates/R9.txt")
    original = text.read_bytes()
    text.write_bytes(original + b"edited\n")
    _refused(capsys, "budget", "set", "rows", "50", "-w", "ws", says="does not verify")
    code, out, err = run_cli(capsys, "certificate", "restore", "R9", "-w", "ws")
    assert code == 0 and text.read_bytes() == original and f"restored {text.absolute()}" in out, (out, err)
    hint = out.split("close it with: ")[1].split()  # review 97: its reason was '...', logged for good as given
    assert hint[:4] == ["dp-tangent", "audit", "resolve", "--reason"] and "restored R9.txt from its .json" in out
    code, out, err = run_cli(capsys, "certificate", "restore", "R9", "-w", "ws")  # asked again: nothing to restore
    assert code == 0 and "already; nothing was changed" in out and "restored" not in out, (out, err)
    for placeholder in ("...", "TEXT", " - ", "<TEXT>", "<reason>", "TODO", "N/A", "x"):  # review 101: the last 5
        _refused(capsys, "audit", "resolve", "--reason", placeholder, "-w", "ws", says="give a reason in words")
    assert run_cli(capsys, "audit", "resolve", "--reason", "restored the certificate copy", "-w", "ws")[0] == 0
    assert run_cli(capsys, "audit", "verify", "-w", "ws")[0] == 0
    cert = Path("ws/certificates/R9.json")
    cert.write_bytes(cert.read_bytes().replace(b'"R9"', b'"R9" '))
    _refused(capsys, "certificate", "restore", "R9", "-w", "ws", says="is not the certificate the audit log vouches")
    _refused(capsys, "certificate", "restore", "nope", "-w", "ws", says="no certificate of request 'nope'")
    cert.unlink()
    cert.symlink_to("R9.txt")  # a link put there by hand is never followed
    _refused(capsys, "certificate", "restore", "R9", "-w", "ws", says="is a symbolic link")


def test_a_replacement_s_figure_keeps_the_shard_size_from_the_requester_and_older_copies_still_restore(
        ws: Path, capsys, monkeypatch) -> None:
    """Review 63: a replacement's figure read as its records' ("epsilon 7.98") where those compose every run that read
    them; it is named its run's now (tests/test_forget.py). Review 74: a run planned from its shard's own size has an
    epsilon that tells that size: the requester's copy leaves it out. A copy an older version wrote with the old words
    is still restored."""
    import functools

    from dp_tangent.recipes import load_recipe
    from dp_tangent.workspace import certificates
    from dp_tangent.workspace import forget as forget_module

    _, shards = load_recipe(Path("rows.yaml")).load_data()
    first, second = shards[0].record_ids[:2]
    assert run_cli(capsys, "forget", first, "--request-id", "R1", "--retrain", "-w", "ws")[0] == 0
    # review 74: this recipe plans from the shard's own size, which the run's epsilon would tell the requester
    [added] = json.loads(Path("ws/certificates/R1.json").read_text())["components_added"]
    assert added["size_public"] and added["epsilon"] > 0
    text = Path("ws/certificates/R1.txt").read_text()
    assert "(private, planned from its shard's size, which its epsilon would tell" in text
    assert "epsilon " + fmt_eps(added['epsilon']) not in text
    old = functools.partial(certificates.render_certificate, run_epsilon="epsilon", history=True)
    with monkeypatch.context() as patched:  # as a version before this one wrote it
        patched.setattr(forget_module, "size_public", lambda event: False)
        patched.setattr(certificates, "render_certificate", lambda cert, *args: old(cert, *args[:1]))
        assert run_cli(capsys, "forget", second, "--request-id", "R2", "--retrain", "-w", "ws")[0] == 0
    text = Path("ws/certificates/R2.txt")
    original = text.read_bytes()
    assert b" (epsilon " in original
    text.write_bytes(b"edited\n")
    code, out, err = run_cli(capsys, "certificate", "restore", "R2", "-w", "ws")
    assert code == 0 and text.read_bytes() == original, (out, err)


def test_the_requester_s_copy_states_days_not_times_and_older_copies_still_restore_and_verify(
        ws: Path, capsys, monkeypatch) -> None:
    """Completed minus received is how long serving took, and a retrain takes longer the larger its shard: the
    requester's copy states days only; the JSON keeps the times. A copy with times and every model, as versions
    before 2026-12-03 wrote it, is still restored from the JSON and still verifies."""
    import functools
    import re

    from dp_tangent.recipes import load_recipe
    from dp_tangent.workspace import certificates

    _, shards = load_recipe(Path("rows.yaml")).load_data()
    first, second = shards[0].record_ids[:2]
    assert run_cli(capsys, "compose", "rows-shard-1", "--name", "elsewhere", "-w", "ws")[0] == 0
    assert run_cli(capsys, "forget", first, "--request-id", "R1", "--retrain", "-w", "ws")[0] == 0
    cert = json.loads(Path("ws/certificates/R1.json").read_text())
    text = Path("ws/certificates/R1.txt").read_text()
    # review 86: models the deletion left alone are none of the requester's business (the JSON has them)
    assert {m["name"]: m["action"] for m in cert["models"]} == {"elsewhere": "unchanged", "rows": "recomposed"}
    assert "elsewhere" not in text and "  rows: recomposed; " in text
    assert f"Received:      {cert['received_at'][:10]} (UTC)\n" in text
    assert f"Completed:     {cert['completed_at'][:10]} (UTC)\n" in text
    assert not re.search(r"\d\d:\d\d", text), text  # no time of day anywhere in the requester's copy
    assert cert["completed_at"][10] == "T" and cert["received_at"] in Path("ws/certificates/R1.json").read_text()
    old = functools.partial(certificates.render_certificate, when=str, unchanged_models=True, history=True)
    with monkeypatch.context() as patched:  # as a version before this one wrote it
        patched.setattr(certificates, "render_certificate", lambda cert, *args: old(cert, *args[:2]))
        assert run_cli(capsys, "forget", second, "--request-id", "R2", "--retrain", "-w", "ws")[0] == 0
    text = Path("ws/certificates/R2.txt")
    original = text.read_bytes()
    assert re.search(rb"Completed:     \d{4}-\d\d-\d\dT\d\d:\d\d", original) and b"  elsewhere: unchanged; " in original
    text.write_bytes(b"edited\n")
    code, out, err = run_cli(capsys, "certificate", "restore", "R2", "-w", "ws")
    assert code == 0 and text.read_bytes() == original, (out, err)
    for request in ("R1", "R2"):
        code, out, err = run_cli(capsys, "certificate", "verify", f"ws/certificates/{request}.txt", "-w", "ws")
        assert code == 0, (request, out, err)



def test_the_requester_s_copy_tells_nothing_of_what_happened_between_two_certificates(
        ws: Path, capsys, monkeypatch) -> None:
    """Review 86: the requester's copy gave the audit log's entry count, and named a retrained shard's component
    ``.r2``, which counts its earlier retrains: two certificates held by one person told what was logged between them,
    and whether someone else's deletion found its records (a found and retrained one logs more entries). Review 89:
    so did a removed component's digest and a model's digest before the deletion. It names components by their
    shard, states digests after the deletion only and gives the checkpoint's root alone, which `certificate verify`
    still checks; a copy as the previous version wrote it still restores and verifies.""" 
    import functools
    import re
    import shutil

    from dp_tangent.recipes import load_recipe
    from dp_tangent.workspace import certificates

    _, shards = load_recipe(Path("rows.yaml")).load_data()
    first, second, third = shards[0].record_ids[:3]
    for request, record in (("R1", first), ("R2", second)):  # the same shard retrained twice: R2 replaces its .r1
        assert run_cli(capsys, "forget", record, "--request-id", request, "--retrain", "-w", "ws")[0] == 0
    cert = json.loads(Path("ws/certificates/R2.json").read_text())
    [removed], [added] = cert["components_removed"], cert["components_added"]
    assert removed["name"].endswith(".r1") and added["name"].endswith(".r2")  # the JSON keeps names and counts
    text = Path("ws/certificates/R2.txt").read_text()
    shard = f"{removed['data_source']}/{removed['shard']}"
    assert f"Removed: the components that held the records, trained on\n  {shard}\nAdded" in text
    # review 89: nothing links R2's copy to R1's, which gave R1's replacement and model digests after R1: R2's
    # removing the same component (nobody else's deletion retrained the shard in between) would otherwise tell so
    earlier = json.loads(Path("ws/certificates/R1.json").read_text())
    [rows] = [m for m in earlier["models"] if m["action"] == "recomposed"]
    assert earlier["components_added"][0]["sha256"] in Path("ws/certificates/R1.txt").read_text()
    assert earlier["components_added"][0]["sha256"] == removed["sha256"] and removed["sha256"] not in text
    assert rows["after"]["deltas_sha256"] in Path("ws/certificates/R1.txt").read_text()
    assert rows["after"]["deltas_sha256"] not in text and f"  {rows['name']}: recomposed; " in text
    assert f"  {shard} (" in text and f") sha256 {added['sha256']}\n" in text
    assert f"  {cert['record_commitments'][0]}  {shard}\n" in text
    assert not re.search(r"\.r\d", text) and removed["name"] not in text, text
    assert "none of the remaining components' record manifests" in text
    assert re.search(r"^  \S+, Merkle root [0-9a-f]{64}$", text, re.M) and " entries" not in text, text
    old = functools.partial(certificates.render_certificate, history=True)
    with monkeypatch.context() as patched:  # as the previous version wrote it: names and counts
        patched.setattr(certificates, "render_certificate", lambda cert, *args: old(cert, *args))
        assert run_cli(capsys, "forget", third, "--request-id", "R3", "--retrain", "-w", "ws")[0] == 0
    text = Path("ws/certificates/R3.txt")
    original = text.read_bytes()
    assert b".r2 (" in original and b".r3 replaces " in original and b" entries, Merkle root " in original
    text.write_bytes(b"edited\n")
    code, out, err = run_cli(capsys, "certificate", "restore", "R3", "-w", "ws")
    assert code == 0 and text.read_bytes() == original, (out, err)
    for request in ("R1", "R2", "R3"):
        code, out, err = run_cli(capsys, "certificate", "verify", f"ws/certificates/{request}.txt", "-w", "ws")
        assert code == 0 and f"certificate {request} holds" in out, (request, out, err)
    # the root alone still pins the log: rolled back to before R2's deletion, R2's copy fails; R1's still holds
    shutil.copy("ws/certificates/R2.txt", "R2.txt")
    log = Path("ws/audit.log")
    entries = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(entries[:cert["checkpoint"]["size"] - 1]))
    code, out, err = run_cli(capsys, "certificate", "verify", "R2.txt", "-w", "ws")
    assert code != 0 and "no first entries of the audit log have the checkpoint's root hash" in out + err, (out, err)


def test_a_report_file_s_suffix_names_its_format(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 90: `report -o "my report.html"` wrote Markdown into the .html file, exit 0 (md was the default)."""
    assert run_cli(capsys, "report", "-o", "my report.html", "-w", "ws")[0] == 0
    assert Path("my report.html").read_text().lstrip().lower().startswith("<!doctype html>")
    assert run_cli(capsys, "report", "-o", "r.JSON", "-w", "ws")[0] == 0 and json.loads(Path("r.JSON").read_text())
    assert run_cli(capsys, "report", "-o", "r.txt", "-w", "ws")[0] == 0  # a suffix that names none: Markdown
    assert Path("r.txt").read_text().startswith("# ")
    _refused(capsys, "report", "-f", "md", "-o", "r2.html", "-w", "ws", says="--format md but r2.html is named as html")
    assert not Path("r2.html").exists()
    code, out, err = run_cli(capsys, "report", "-o", "-", "-f", "json", "-w", "ws")  # review 93: `-` is stdout
    assert code == 0 and json.loads(out) and not Path("-").exists(), err

def test_budget_show_warns_when_the_ledger_is_not_what_the_log_vouches_for(ws: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Review: a ledger row deleted with sqlite3 lowered the spend budget show printed, without a word."""
    import sqlite3

    code, before, err = run_cli(capsys, "budget", "show", "-w", "ws")
    assert code == 0 and "warning" not in err
    with sqlite3.connect("ws/ledger.sqlite") as conn:
        conn.execute("DELETE FROM events WHERE seq = (SELECT MAX(seq) FROM events)")
    code, after, err = run_cli(capsys, "budget", "show", "-w", "ws")
    assert code == 1 and after != before  # printed, but not vouched for: exit 1 as `report` (review 55)
    assert err.startswith("warning: the workspace does not verify (entry ") and "ledger table 'e" in err, err


def test_an_interrupted_forget_names_its_request_and_how_it_stands(ws: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 42: Ctrl-C after the request was registered left it open under an id the user was never shown."""
    from dp_tangent.recipes import load_recipe
    from dp_tangent.workspace import forget as serving

    first, second = load_recipe(Path("rows.yaml")).load_data()[1][0].record_ids[:2]

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # after the request is registered and its records tombstoned
        patch.setattr(serving, "_check_nothing_away", interrupted)
        code, out, err = run_cli(capsys, "forget", first, "-w", "ws")
    assert code == 130 and "forget interrupted: request request-" in err and "stays OPEN" in err, err
    assert f"finish it with: dp-tangent forget {first} --request-id request-" in err
    again = err.split("finish it with: ")[1].split("\n")[0].split()
    listed = run_cli(capsys, "requests", "list", "-w", "ws")[1]  # piped: rich cut ids to fit 80 columns
    assert again[again.index("--request-id") + 1] in listed and "…" not in listed, listed
    # review 46: the open request's text copy said its record was "not found in any component" (nobody had looked)
    text = Path(f"ws/certificates/{again[again.index('--request-id') + 1]}.txt").read_text()
    assert "not searched yet (the request is open)" in text and "not found in any component" not in text, text
    # review 93: "Removed: none" read as if a deletion had happened
    assert "trained on\n  not yet (the request is open)\nAdded (retrained without the records):\n  not yet (the " \
        "request is open)\n" in text and "\n  none\n" not in text, text
    code, out, err = run_cli(capsys, *again[1:])  # the command it printed finishes that very request
    assert code == 0 and "OPEN" not in run_cli(capsys, "requests", "list", "-w", "ws")[1], err
    real = serving.forget

    def finished_then_interrupted(*args: object, **kwargs: object) -> object:
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(serving, "forget", finished_then_interrupted)
    code, out, err = run_cli(capsys, "forget", second, "--request-id", "R5", "-w", "ws")
    assert code == 130 and "forget interrupted: request R5 was completed; its certificate is in" in err, err


def test_a_retrain_over_budget_on_one_shard_retrains_no_other_first(ws: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Review 42: shards were retrained one after another, so a later shard's budget refusal came after an earlier
    shard was retrained and charged ("nothing was written" said otherwise), and the request could not finish with
    --retrain. A model's replacements are now one run, every budget checked before any trains."""
    from dp_tangent.recipes import load_recipe
    from dp_tangent.workspace import Workspace

    shards = load_recipe(Path("rows.yaml")).load_data()[1]
    in_0, in_1 = shards[0].record_ids[0], shards[1].record_ids[0]
    assert run_cli(capsys, "budget", "set", "rows/shard-1", "9", "-w", "ws")[0] == 0
    before = Workspace.open("ws").ledger.events()
    code, out, err = run_cli(capsys, "forget", in_0, in_1, "--retrain", "--request-id", "R7", "-w", "ws")
    assert code == 2 and "budget exceeded" in err and "shard-1" in err and "request R7 stays OPEN" in err, err
    ws_ = Workspace.open("ws")
    assert ws_.ledger.events() == before and not [c for c in ws_.list_components() if ".r" in c]  # nothing charged
    assert run_cli(capsys, "budget", "set", "rows/shard-1", "1000", "-w", "ws")[0] == 0
    code, out, err = run_cli(capsys, "forget", in_0, in_1, "--retrain", "--request-id", "R7", "-w", "ws")
    assert code == 0, err
    assert {c for c in Workspace.open("ws").list_components() if ".r" in c} == {"rows-shard-0.r1", "rows-shard-1.r1"}


def test_a_replacement_trained_at_another_theta0_is_not_reused_when_the_request_is_asked_again(
        ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 42: theta0 changed behind the tool's back, the replacement trained at it was kept and reused by every
    later run of the request, which then failed to compose for ever. Restored, the request finishes."""
    import dataclasses

    from dp_tangent.backbones import BackboneSpec
    from dp_tangent.recipes import load_recipe
    from dp_tangent.workspace import Workspace

    test, shards = load_recipe(Path("rows.yaml")).load_data()
    record, test = shards[0].record_ids[0], test.record_ids  # the registered records, before the data grows
    original = BackboneSpec.from_dict.__func__
    with monkeypatch.context() as patch:  # the base model rebuilt with other weights (another seed)
        patch.setattr(BackboneSpec, "from_dict", classmethod(
            lambda cls, data: dataclasses.replace(original(cls, data), head_seed=99)))
        code, out, err = run_cli(capsys, "forget", record, "--retrain", "--request-id", "R8", "-w", "ws")
    assert code == 2 and "rebuilt a base model with other weights" in err and "R8 stays OPEN" in err, err
    code, out, err = run_cli(capsys, "forget", record, "--retrain", "--request-id", "R8", "-w", "ws")
    assert code == 0, err
    ws_ = Workspace.open("ws")
    assert ws_.load_model("rows")[0].component_names == ["rows-shard-0.r2", "rows-shard-1"]
    # removed with what it was to replace (review 77: kept, it was a second line of the shard), its budget spent
    assert "rows-shard-0.r1" not in ws_.list_components()
    assert [e.status.value for e in ws_.ledger.events(component="rows-shard-0.r1")] == ["completed"]


def test_a_release_asked_again_says_nothing_changed(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 83: releasing to the same folder again said "released" although the bundle was there already."""
    assert run_cli(capsys, "budget", "set", "rows", "20", "-w", "ws")[0] == 0
    code, first, err = run_cli(capsys, "release", "rows", "-o", "sent", "-w", "ws")
    assert code == 0 and first.startswith(f"released rows to {Path('sent').absolute()}: "), err
    entries = len(Workspace.open("ws").audit.entries())
    code, again, err = run_cli(capsys, "release", "rows", "-o", "sent", "-w", "ws")
    assert code == 0 and again.startswith(f"rows was released to {Path('sent').absolute()} already ("), err
    assert "nothing was changed" in again and again.splitlines()[1] == first.splitlines()[1]  # the same sha256
    assert len(Workspace.open("ws").audit.entries()) == entries


def test_an_interrupt_mentions_spent_budget_only_where_a_command_spends_some(
        ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 42: an interrupted release said "a reserved budget stays spent"; a release reserves none."""
    from dp_tangent.workspace import Workspace

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Workspace, "release", interrupted)
    code, out, err = run_cli(capsys, "release", "rows", "-o", "sent", "-w", "ws")
    assert code == 130 and err.strip() == "interrupted: nothing half-written was kept", err
    monkeypatch.setattr(Workspace, "train_all", interrupted)
    code, out, err = run_cli(capsys, "train", "--init", "rows.yaml", "--name", "again", "-w", "ws", "--executor", "serial")
    assert code == 130 and "a reserved budget stays spent" in err, err


def test_a_train_interrupted_after_its_last_component_says_how_to_compose(
        ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 90: stopped while it printed the components' accuracies (every component saved, the model not yet
    composed), train said only "interrupted"; stopped in training, it gave the compose command."""
    from dp_tangent.cli import train as train_cli

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(train_cli, "_report", interrupted)
        code, out, err = run_cli(capsys, "train", "rows.yaml", "--name", "again", "-w", "ws", "--executor", "serial")
    assert code == 130 and "every shard has a component; compose the model (no training, no budget): " \
        "dp-tangent compose again-shard-0 again-shard-1 --name again -w " in err, err
    code, out, err = run_cli(capsys, "compose", "again-shard-0", "again-shard-1", "--name", "again", "-w", "ws")
    assert code == 0 and "again" in Workspace.open("ws").list_models(), err


def test_a_request_whose_records_another_deletion_removed_while_it_was_open_says_where_they_were(
        ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 45: request A failed after its records were tombstoned; request B's retraining of the same shard left
    them out (as every tombstoned record); asked again, A's certificate said "not found in any component" and the
    command NOT FOUND, although A's record was in the shard's component when A arrived."""
    import json

    from dp_tangent.recipes import load_recipe
    from dp_tangent.workspace import forget as serving

    first, second = load_recipe(Path("rows.yaml")).load_data()[1][0].record_ids[:2]  # both in shard-0

    def broken(*args: object) -> None:
        raise serving.ForgetError("the disk went away")

    with monkeypatch.context() as patch:
        patch.setattr(serving, "_check_nothing_away", broken)
        assert run_cli(capsys, "forget", first, "--retrain", "--request-id", "A", "-w", "ws")[0] == 2
    code, out, err = run_cli(capsys, "forget", second, "--retrain", "--request-id", "B", "-w", "ws")
    assert code == 0, err
    code, out, err = run_cli(capsys, "forget", first, "--retrain", "--request-id", "A", "-w", "ws")
    assert code == 0 and "NOT FOUND" not in err, (out, err)
    cert = json.loads(Path("ws/certificates/A.json").read_text())
    assert cert["outcome"] == "deleted" and cert["not_found"] == []
    assert list(cert["found_in"].values()) == [["rows-shard-0"]]
    text = Path("ws/certificates/A.txt").read_text()
    assert "a deletion served on" in text and "their replacements were trained without them" in text
    assert "request B" not in text and " B " not in text  # another data subject's request is not named to this one
    assert run_cli(capsys, "audit", "verify", "-w", "ws")[0] == 0
    code, out, err = run_cli(capsys, "certificate", "verify", "ws/certificates/A.txt", "-w", "ws")
    assert code == 0, (out, err)


def test_two_open_requests_on_one_record_are_both_answered_whichever_completes_first(
        ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 47: the tombstone keeps the first request's id, so the second request on the same record, completed
    after the first, said NOT FOUND although the record was in a component when it arrived."""
    import json

    from dp_tangent.recipes import load_recipe
    from dp_tangent.workspace import forget as serving

    test, shards = load_recipe(Path("rows.yaml")).load_data()
    record, test = shards[0].record_ids[0], test.record_ids  # the registered records, before the data grows

    def broken(*args: object) -> None:
        raise serving.ForgetError("the disk went away")

    with monkeypatch.context() as patch:
        patch.setattr(serving, "_check_nothing_away", broken)
        for request in ("A", "B"):
            assert run_cli(capsys, "forget", record, "--request-id", request, "-w", "ws")[0] == 2
    assert run_cli(capsys, "forget", record, "--request-id", "A", "-w", "ws")[0] == 0  # no retraining
    code, out, err = run_cli(capsys, "forget", record, "--request-id", "B", "-w", "ws")
    assert code == 0 and "NOT FOUND" not in err, err
    cert = json.loads(Path("ws/certificates/B.json").read_text())
    assert cert["outcome"] == "deleted" and list(cert["found_in"].values()) == [["rows-shard-0"]]
    assert "a deletion served on" in Path("ws/certificates/B.txt").read_text()
    assert "request A" not in Path("ws/certificates/B.txt").read_text()
    assert "no replacement was trained" in Path("ws/certificates/B.txt").read_text()  # A did not retrain


def test_a_train_refused_for_an_overlap_registers_nothing_so_the_fixed_data_trains(ws: Path, capsys) -> None:
    """A source whose records overlap another's was registered before the refusal: the data fixed to leave them out
    was then refused as "not the data it was registered with", under the source's name for good."""
    write_npz(Path("b.npz"))  # the same records as rows.npz, under another source
    write_recipe(Path("b.yaml"), mlp_recipe({"npz": {"path": "b.npz"}}, in_features=6, classes=2, source="b"))
    registry, logged = Path("ws/data-sources.json").read_bytes(), len(Workspace.open("ws").audit.entries())
    _refused(capsys, "train", "b.yaml", "-w", "ws", says="overlaps other shards")
    assert Path("ws/data-sources.json").read_bytes() == registry
    assert len(Workspace.open("ws").audit.entries()) == logged
    data = dict(np.load("b.npz"))
    np.savez("b.npz", **{**data, "record_ids": np.array([f"other-{i:03d}" for i in range(len(data["targets"]))])})
    code, out, err = run_cli(capsys, "train", "b.yaml", "-w", "ws")
    assert code == 0 and "model b: mean of 2 components" in out, (out, err)


def test_a_recipe_budget_a_new_source_would_exceed_registers_nothing_so_the_fixed_recipe_trains(ws: Path,
                                                                                                   capsys) -> None:
    """Review 80: the recipe's budget for a new source was set, and the source registered, before the run was found
    to exceed it; the recipe fixed to a larger budget was then held to the first one for good."""
    write_npz(Path("c.npz"), seed=3)
    data = dict(np.load("c.npz"))
    np.savez("c.npz", **{**data, "record_ids": np.array([f"c-{i:03d}" for i in range(len(data["targets"]))])})
    recipe = mlp_recipe({"npz": {"path": "c.npz"}}, in_features=6, classes=2, source="c",
                        budget={"epsilon": 2, "delta": 1e-5})  # the run spends 8 per shard
    write_recipe(Path("c.yaml"), recipe)
    registry, logged = Path("ws/data-sources.json").read_bytes(), len(Workspace.open("ws").audit.entries())
    _refused(capsys, "train", "c.yaml", "-w", "ws", says="budget exceeded")
    assert Path("ws/data-sources.json").read_bytes() == registry
    assert len(Workspace.open("ws").audit.entries()) == logged
    write_recipe(Path("c.yaml"), {**recipe, "budget": {"epsilon": 10, "delta": 1e-5}})
    code, out, err = run_cli(capsys, "train", "c.yaml", "-w", "ws")
    assert code == 0 and "model c: mean of 2 components" in out, (out, err)


def test_a_run_a_workspace_budget_refuses_says_the_recipe_s_budget_is_not_applied(ws: Path, capsys) -> None:
    """Review 80: refused before the data is registered, the run no longer said that the workspace's budget, not the
    recipe's, held it back (and that `budget set` changes it)."""
    assert run_cli(capsys, "budget", "set", "rows", "2", "-w", "ws")[0] == 0
    write_recipe(Path("more.yaml"), mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2,
                                               source="rows", budget={"epsilon": 100, "delta": 1e-5}))
    code, out, err = run_cli(capsys, "train", "more.yaml", "-w", "ws")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and "keeps its budget epsilon 2" in lines[0] and "`dp-tangent budget set`" \
        in lines[0] and "budget exceeded" in lines[1], err


def test_a_recipe_budget_the_first_run_would_exceed_leaves_a_new_workspace_empty(tmp_path, monkeypatch,
                                                                                capsys) -> None:
    """With --init, the workspace is made and the run refused before the source and its budget are registered, so
    the recipe fixed to a larger budget trains in it."""
    monkeypatch.chdir(tmp_path)
    write_npz(Path("rows.npz"))
    recipe = mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2, source="rows",
                        budget={"epsilon": 2, "delta": 1e-5})
    write_recipe(Path("rows.yaml"), recipe)
    _refused(capsys, "train", "--init", "rows.yaml", "-w", "ws", says="budget exceeded")
    ws = Workspace.open("ws")
    assert ws.ledger.budgets() == [] and [e.operation for e in ws.audit.entries()] == ["workspace_created"]
    write_recipe(Path("rows.yaml"), {**recipe, "budget": {"epsilon": 10, "delta": 1e-5}})
    code, out, err = run_cli(capsys, "train", "--init", "rows.yaml", "-w", "ws")
    assert code == 0 and "model rows: mean of 2 components" in out, (out, err)


def test_a_shard_s_own_budget_holds_over_the_recipe_s_in_the_check_before_registering(tmp_path, monkeypatch,
                                                                                      capsys) -> None:
    """The check before registering held every shard to the recipe's budget for a source that had none, where a
    shard's own budget (set before) is the one the ledger applies."""
    monkeypatch.chdir(tmp_path)
    write_npz(Path("rows.npz"))
    assert run_cli(capsys, "init", "-w", "ws")[0] == 0
    ws = Workspace.open("ws")
    ws.declare_data_source("rows", description="rows", shards=["shard-0", "shard-1"])
    for shard in ("shard-0", "shard-1"):
        ws.set_budget("rows", shard, 20, 1e-5)
    write_recipe(Path("rows.yaml"), mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2, source="rows",
                                               budget={"epsilon": 2, "delta": 1e-5}))  # the run spends 8 per shard
    code, out, err = run_cli(capsys, "train", "rows.yaml", "-w", "ws")
    assert code == 0 and "model rows: mean of 2 components" in out, (out, err)


def test_a_table_another_source_reads_with_other_record_ids_is_refused_before_any_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 96: the same table read by a second recipe with ids from another column (an MRN beside a patient id)
    was new records: a deleted row was trained again under its other id, and runs reading a row under two ids were
    never composed. Refused, at the same place or a copy; the same ids under another name stay an overlap."""
    import shutil

    monkeypatch.chdir(tmp_path)
    Path("t.csv").write_text("rid,mrn,f0,f1,f2,f3,f4,f5,y\n" + "".join(
        f"p{i},M{1000 + i},0,0,0,{i % 3},{i % 7},{i % 5},{'ab'[i % 2]}\n" for i in range(80)))
    shutil.copy("t.csv", "copy.csv")
    table = {"path": "t.csv", "features": [f"f{k}" for k in range(6)], "label": "y", "record_id": "rid",
             "classes": ["a", "b"], "scaling": "none"}
    for name, changes in (("a", {}), ("b", {"record_id": "mrn"}), ("c", {"record_id": "mrn", "path": "copy.csv"}),
                          ("d", {})):
        write_recipe(Path(f"{name}.yaml"), mlp_recipe({"table": {**table, **changes}}, in_features=6, classes=2,
                                                      source=name))
    assert run_cli(capsys, "train", "--init", "a.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    assert run_cli(capsys, "forget", "p1", "p2", "p3", "--request-id", "d1", "-w", "ws")[0] in (0, 3)
    events = len(Workspace.open("ws").ledger.events())
    for name, where in (("b", "t.csv"), ("c", "copy.csv")):
        _refused(capsys, "train", f"{name}.yaml", "-w", "ws", "--executor", "serial",
                 says=f"data source {name!r} reads {Path(where).absolute()}, which data source 'a' reads already with "
                      "record ids from column 'rid': with ids from 'mrn' its records would be other records here")
    assert len(Workspace.open("ws").ledger.events()) == events  # nothing reserved or spent
    _refused(capsys, "train", "d.yaml", "-w", "ws", "--executor", "serial", says="overlaps other shards")


def test_an_npz_another_source_reads_with_ids_from_another_array_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 99: the refusal of a file read under another id column missed `.npz` sources, whose ids come from an
    array (``record_ids``): a deleted record was trained again under its id from another array."""
    monkeypatch.chdir(tmp_path)
    ids = write_npz(Path("r.npz"), n=64)
    arrays = dict(np.load("r.npz"))
    np.savez("r.npz", **arrays, mrn=np.array([f"m{i}" for i in range(len(ids))]))
    for name, data in (("a", {"path": "r.npz"}), ("b", {"path": "r.npz", "record_ids": "mrn"})):
        write_recipe(Path(f"{name}.yaml"), mlp_recipe({"npz": data}, in_features=6, classes=2, source=name))
    assert run_cli(capsys, "train", "--init", "a.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    assert run_cli(capsys, "forget", ids[3], "--request-id", "d1", "-w", "ws")[0] in (0, 3)
    _refused(capsys, "train", "b.yaml", "-w", "ws", "--executor", "serial",
             says=f"data source 'b' reads {Path('r.npz').absolute()}, which data source 'a' reads already with record "
                  "ids from array 'record_ids': with ids from 'mrn'")


def test_another_sources_private_table_is_refused_as_a_public_table_whatever_its_ids(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 101: a data source's private table, taken as another source's public table (its statistics scale the
    features, and theta0 may be pretrained on it) with ids from another column, passed: the check of public records
    compares ids."""
    monkeypatch.chdir(tmp_path)
    for name, first in (("a.csv", 0), ("b.csv", 100)):
        Path(name).write_text("rid,mrn,f0,f1,f2,f3,f4,f5,y\n" + "".join(
            f"p{i},M{1000 + i},0,0,0,{i % 3},{i % 7},{i % 5},{'ab'[i % 2]}\n" for i in range(first, first + 80)))
    table = {"features": [f"f{k}" for k in range(6)], "label": "y", "classes": ["a", "b"]}
    write_recipe(Path("a.yaml"), mlp_recipe({"table": {**table, "path": "a.csv", "record_id": "rid",
                                                       "scaling": "none"}}, in_features=6, classes=2, source="a"))
    write_recipe(Path("b.yaml"), mlp_recipe({"table": {**table, "path": "b.csv", "record_id": "mrn",
                                                       "scaling": "public", "public_path": "a.csv"}},
                                            in_features=6, classes=2, source="b"))
    assert run_cli(capsys, "train", "--init", "a.yaml", "-w", "ws", "--executor", "serial")[0] == 0
    _refused(capsys, "train", "b.yaml", "-w", "ws", "--executor", "serial",
             says=f"data source 'b' takes {Path('a.csv').absolute()} as its public table, which data source 'a' "
                  "reads as private records")


def test_an_empty_request_id_or_a_binary_key_file_is_a_one_line_error(ws: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Review 113: `--request-id ""` (a script's unset variable) made a new request on every retry, losing the
    retry's idempotence; a binary file given as a signing key gave the codec's message, naming neither."""
    _refused(capsys, "forget", "r-0", "--request-id", "", "-w", "ws", says="request id name '' must match")
    assert run_cli(capsys, "requests", "list", "-w", "ws")[1].count("request-") == 0  # nothing was filed
    Path("bin.key").write_bytes(b"\x00\xff\xfe")
    _refused(capsys, "audit", "checkpoint", "--key", "bin.key", "-o", "cp.txt", "-w", "ws",
             says="bin.key is not a dp-tangent signing key")
