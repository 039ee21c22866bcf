"""`dp-tangent data list | relocate`: a moved data file or folder is re-pointed without training or budget, as
long as it holds exactly the registered records, unchanged (review 51: only a budget-spending train could)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from owndata import mlp_recipe, write_npz, write_recipe

from dp_tangent.workspace import Workspace


@pytest.fixture
def trained(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.chdir(tmp_path)
    ids = write_npz(Path("rows.npz"), n=64)
    recipe = write_recipe(Path("rows.yaml"), mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2,
                                                        source="rows"))
    code, _, err = run_cli(capsys, "train", "--init", str(recipe), "-w", "ws", "--executor", "serial")
    assert code == 0, err
    return ids


def _root() -> str:
    """The workspace ``ws`` as the tool's hints name it (review 90: a relocate hint without ``-w`` named none)."""
    from dp_tangent.workspace import Workspace

    return str(Workspace.open("ws").root)


def test_a_moved_file_is_relocated_without_budget_and_then_reloads(trained, capsys) -> None:
    ws = Workspace.open("ws")
    events = len(ws.ledger.events())
    Path("moved").mkdir()
    Path("rows.npz").rename("moved/rows.npz")
    code, _, err = run_cli(capsys, "evaluate", "rows", "-w", "ws")
    assert code == 2 and f"`dp-tangent data relocate rows NEW_PLACE -w {_root()}`" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "data", "relocate", "rows", "moved/rows.npz", "-w", "ws")  # relative, as typed
    assert code == 0 and f"read from {Path('moved/rows.npz').absolute()} (was {Path('rows.npz').absolute()})" in out
    registry = json.loads(Path("ws/data-sources.json").read_text())
    assert registry["sources"]["rows"]["data"]["path"] == str(Path("moved/rows.npz").absolute())
    assert len(ws.ledger.events()) == events  # nothing trained, nothing spent
    entry = ws.audit.entries()[-1]
    assert entry.operation == "data_source" and any(a.path == "data-sources.json" for a in entry.outputs)
    code, out, err = run_cli(capsys, "evaluate", "rows", "-w", "ws")
    assert code == 0 and "test accuracy" in out, err
    code, out, err = run_cli(capsys, "forget", trained[5], "--request-id", "r1", "--retrain", "-w", "ws")
    assert code == 0, err
    Path("link.npz").symlink_to("moved/rows.npz")  # review 58: a link to it, as a recipe's path is stored (resolved)
    for same in ("moved/rows.npz", "moved/../moved/rows.npz", "link.npz"):  # review 57: another spelling was a move
        code, out, _ = run_cli(capsys, "data", "relocate", "rows", same, "-w", "ws")
        assert code == 0 and "nothing was changed" in out and ws.audit.entries()[-1].operation != "data_source"
    code, out, _ = run_cli(capsys, "data", "list", "-w", "ws")
    row = next(line for line in out.splitlines() if " rows " in line)
    assert code == 0 and "npz" in row and " 63 " in row and " 64 " not in row  # the deleted record is not counted
    assert run_cli(capsys, "audit", "verify", "-w", "ws")[0] == 0


def test_a_place_with_other_records_is_refused_and_nothing_changes(trained, capsys) -> None:
    before = Path("ws/data-sources.json").read_bytes()
    with np.load("rows.npz") as data:
        arrays = dict(data)
    Path("other").mkdir()
    changed = {**arrays, "inputs": arrays["inputs"] + np.eye(64, 6, dtype=np.float32)}  # six rows edited
    np.savez("other/changed.npz", **changed)
    extra = {k: np.concatenate([v, v[:1]]) for k, v in arrays.items()}
    extra["record_ids"][-1] = "row-new"
    np.savez("other/extra.npz", **extra)
    for place, says in (("other/changed.npz", "other/changed.npz is not the data 'rows' was registered with (6 "
                                              "record(s) changed, e.g. 'row-000'): relocate moves the data as it was"),
                        ("other/extra.npz", "holds 1 record(s) data source 'rows' was not registered with"),
                        ("other/none.npz", "other/none.npz")):
        code, _, err = run_cli(capsys, "data", "relocate", "rows", place, "-w", "ws")
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(capsys, "data", "relocate", "nope", "other", "-w", "ws")
    assert code == 2 and "no loader registered for data source 'nope'" in err
    assert Path("ws/data-sources.json").read_bytes() == before
    shutil.rmtree("other")
    assert run_cli(capsys, "audit", "verify", "-w", "ws")[0] == 0


def test_a_link_left_at_the_old_place_while_moving_is_not_the_new_place(trained, capsys) -> None:
    """Review 59: with the old path a link to the new place (a bridge while moving), relocate said "already" and
    kept the link's path, which failed once the link was removed."""
    Path("new").mkdir()
    Path("rows.npz").rename("new/rows.npz")
    Path("rows.npz").symlink_to("new/rows.npz")
    code, out, err = run_cli(capsys, "data", "relocate", "rows", "new/rows.npz", "-w", "ws")
    assert code == 0 and f"read from {Path('new/rows.npz').resolve()}" in out, out + err
    Path("rows.npz").unlink()
    code, out, err = run_cli(capsys, "evaluate", "rows", "-w", "ws")
    assert code == 0 and "test accuracy" in out, err


def test_data_moved_into_the_workspace_is_named_as_such_and_nothing_is_recorded(trained, capsys) -> None:
    """Relocating into the workspace was refused through its check, as files added behind the tool's back: an
    integrity failure recorded that had to be resolved by hand after moving the data out again."""
    entries = len(Workspace.open("ws").audit.entries())
    Path("rows.npz").rename("ws/rows.npz")
    code, _, err = run_cli(capsys, "data", "relocate", "rows", "ws/rows.npz", "-w", "ws")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "ws/rows.npz is inside the workspace" in err and "move it out of the workspace, then relocate it" in err
    assert len(Workspace.open("ws").audit.entries()) == entries  # no integrity failure recorded
    Path("ws/rows.npz").rename("rows.npz")
    assert run_cli(capsys, "audit", "verify", "-w", "ws")[0] == 0


def test_relocating_reads_the_records_once_and_changes_only_the_place(trained, capsys, monkeypatch) -> None:
    """Relocating checked every record, then registering the moved source read and digested them all again (twice
    the decoding of a large image folder); the registry it writes now differs from the old one only in the place."""
    from dp_tangent.workspace import data_sources

    before = json.loads(Path("ws/data-sources.json").read_text())
    Path("moved").mkdir()
    Path("rows.npz").rename("moved/rows.npz")
    readings = []
    digests = data_sources.content_digests
    monkeypatch.setattr(data_sources, "content_digests", lambda records: readings.append(1) or digests(records))
    code, _, err = run_cli(capsys, "data", "relocate", "rows", "moved/rows.npz", "-w", "ws")
    assert code == 0, err
    assert len(readings) == 1
    after = json.loads(Path("ws/data-sources.json").read_text())
    assert after["sources"]["rows"]["data"].pop("path") == str(Path("moved/rows.npz").absolute())
    assert before["sources"]["rows"]["data"].pop("path") == str(Path("rows.npz").absolute())
    assert after == before
    assert run_cli(capsys, "audit", "verify", "-w", "ws")[0] == 0


@pytest.fixture
def public_scaled(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A table scaled with a public table's statistics, trained from a relative workspace."""
    from owndata import write_wine_csv
    from test_tabular import _table

    monkeypatch.chdir(tmp_path)
    names = write_wine_csv(Path("data/private.csv"), rows=range(100))
    write_wine_csv(Path("data/public.csv"), rows=range(120, 178))
    table = {**_table(Path("data/private.csv"), names)["table"], "scaling": "public", "public_path": "data/public.csv"}
    del table["lower"], table["upper"]
    write_recipe(Path("wine.yaml"), mlp_recipe({"table": table}, in_features=13, classes=3, source="wine"))
    code, _, err = run_cli(capsys, "train", "--init", "wine.yaml", "-w", "ws", "--executor", "serial")
    assert code == 0, err


def test_a_moved_public_table_is_relocated_and_the_data_reloads(public_scaled, capsys, monkeypatch) -> None:
    """Review 83: a table's public table that moved could not be re-pointed (`data relocate` moved the private table
    only and said "nothing was changed"), so evaluate, predict and retraining could never read the source again."""
    ws = Workspace.open("ws")
    events = len(ws.ledger.events())
    Path("moved").mkdir()
    Path("data/public.csv").rename("moved/public.csv")
    code, _, err = run_cli(capsys, "evaluate", "wine", "-w", "ws")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"`dp-tangent data relocate wine --public-table NEW_PLACE -w {_root()}`" in err
    code, out, err = run_cli(capsys, "data", "relocate", "wine", "data/private.csv", "-w", "ws")  # the private one
    assert code == 2 and "give its new place with --public-table" in err, out + err
    code, out, err = run_cli(capsys, "data", "relocate", "wine", "--public-table", "moved/public.csv", "-w", "ws")
    assert code == 0, err
    assert (f"its public table read from {Path('moved/public.csv').absolute()} (was "
            f"{Path('data/public.csv').absolute()})") in out
    assert json.loads(Path("ws/data-sources.json").read_text())["sources"]["wine"]["data"]["public_path"] == str(
        Path("moved/public.csv").absolute())
    assert len(ws.ledger.events()) == events and ws.audit.entries()[-1].operation == "data_source"
    code, out, err = run_cli(capsys, "evaluate", "wine", "-w", "ws")
    assert code == 0 and "test accuracy" in out, err
    code, out, _ = run_cli(capsys, "data", "relocate", "wine", "--public-table", "moved/public.csv", "-w", "ws")
    assert code == 0 and "nothing was changed" in out
    monkeypatch.setenv("COLUMNS", "400")  # rich folds a long path otherwise
    code, out, _ = run_cli(capsys, "data", "list", "-w", "ws")
    assert code == 0 and f"public table: {Path('moved/public.csv').absolute()}" in out

    # both moved at once: one command
    Path("both").mkdir()
    Path("data/private.csv").rename("both/private.csv")
    Path("moved/public.csv").rename("both/public.csv")
    code, _, err = run_cli(capsys, "evaluate", "wine", "-w", "ws")
    assert code == 2 and f"`dp-tangent data relocate wine NEW_PLACE --public-table NEW_PLACE -w {_root()}`" in err, err
    code, out, err = run_cli(capsys, "data", "relocate", "wine", "both/private.csv", "--public-table",
                             "both/public.csv", "-w", "ws")
    assert code == 0 and "its data read from" in out and "its public table read from" in out, err
    code, out, err = run_cli(capsys, "forget", "wine-005", "--request-id", "r1", "--retrain", "-w", "ws")
    assert code == 0, err
    assert run_cli(capsys, "audit", "verify", "-w", "ws")[0] == 0


def test_another_public_table_is_refused_and_nothing_changes(public_scaled, capsys) -> None:
    """A public table whose statistics scale the records otherwise, or that holds a private record, is refused: the
    records' keyed digests cover the scaled features, and the public table is checked as train checks it."""
    from owndata import write_wine_csv

    before = Path("ws/data-sources.json").read_bytes()
    write_wine_csv(Path("other.csv"), rows=range(130, 178))  # other rows: other means and deviations
    code, _, err = run_cli(capsys, "data", "relocate", "wine", "--public-table", "other.csv", "-w", "ws")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "read with the public table other.csv, data source 'wine' is not the data it was registered with" in err
    assert "record(s) changed, e.g. 'wine-000'; the public table's statistics scale every record's features" in err
    assert run_cli(capsys, "forget", "wine-005", "--request-id", "r1", "-w", "ws")[0] == 0
    write_wine_csv(Path("data/private.csv"), rows=[i for i in range(100) if i != 5])  # its row taken out, as advised
    before = Path("ws/data-sources.json").read_bytes()
    for held, says in (("wine-007", "holds 1 record id(s) of the private table (e.g. 'wine-007')"),
                       ("wine-005", "holds the record id 'wine-005', a record a deletion request removed")):
        # the same statistics (ids are no feature), one public row now named as a private or deleted record
        Path("holding.csv").write_text(Path("data/public.csv").read_text().replace("wine-120", held, 1))
        code, _, err = run_cli(capsys, "data", "relocate", "wine", "--public-table", "holding.csv", "-w", "ws")
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(capsys, "data", "relocate", "wine", "-w", "ws")
    assert code == 2 and "--public-table" in err
    code, _, err = run_cli(capsys, "data", "relocate", "wine", "--public-table", "ws/x.csv", "-w", "ws")
    assert code == 2 and "inside the workspace" in err
    assert Path("ws/data-sources.json").read_bytes() == before
    assert run_cli(capsys, "audit", "verify", "-w", "ws")[0] == 0


def test_training_again_with_the_public_table_at_its_new_place_re_points_it(public_scaled, capsys) -> None:
    """The recipe edited to name the moved public table registers the source there, as a moved data file is: it was
    refused as a source "registered to be read otherwise" (data.public_path differed)."""
    import yaml

    from owndata import write_wine_csv

    Path("moved").mkdir()
    Path("data/public.csv").rename("moved/public.csv")
    recipe = yaml.safe_load(Path("wine.yaml").read_text())
    recipe["data"]["table"]["public_path"] = "moved/public.csv"
    write_recipe(Path("wine.yaml"), recipe)
    code, out, err = run_cli(capsys, "train", "wine.yaml", "-w", "ws", "--executor", "serial", "--name", "wine2")
    assert code == 0, err
    assert json.loads(Path("ws/data-sources.json").read_text())["sources"]["wine"]["data"]["public_path"] == str(
        Path("moved/public.csv").absolute())
    write_wine_csv(Path("moved/public.csv"), rows=range(130, 178))  # another public table: the records scale otherwise
    code, out, err = run_cli(capsys, "train", "wine.yaml", "-w", "ws", "--executor", "serial", "--name", "wine3")
    assert code == 2 and "is not the data it was registered with" in err and len(err.strip().splitlines()) == 1, err


def test_a_public_table_changed_in_place_is_named_where_every_record_reads_changed(public_scaled, capsys) -> None:
    """Review 85: with the public table rewritten in place, evaluate, relocate and train blamed the private table
    ("100 record(s) changed": restore it, point it at the moved copy), which was untouched."""
    from owndata import write_wine_csv

    public = Path("data/public.csv").absolute()
    saved = public.read_bytes()
    write_wine_csv(public, rows=range(130, 178))
    says = f"its features are scaled with the statistics of its public table {public}, so a change there changes"
    code, _, err = run_cli(capsys, "evaluate", "wine", "-w", "ws")
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(capsys, "train", "wine.yaml", "-w", "ws", "--executor", "serial", "--name", "w2")
    assert code == 2 and says in err, err
    Path("nd").mkdir()
    Path("data/private.csv").rename("nd/private.csv")
    code, _, err = run_cli(capsys, "data", "relocate", "wine", "nd/private.csv", "-w", "ws")
    assert code == 2 and says in err, err
    # the public table put back, and only the private table's new place given: a hint, if the public one moved too
    public.write_bytes(saved)
    Path("p2").mkdir()
    public.rename("p2/public.csv")
    code, _, err = run_cli(capsys, "data", "relocate", "wine", "--public-table", "p2/public.csv", "-w", "ws")
    assert code == 2 and "if it moved too, give its new place as well: `dp-tangent data relocate wine NEW_PLACE " \
                         f"--public-table ... -w {_root()}`" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = run_cli(capsys, "data", "relocate", "wine", "nd/private.csv", "--public-table", "p2/public.csv",
                             "-w", "ws")
    assert code == 0, err
    assert run_cli(capsys, "audit", "verify", "-w", "ws")[0] == 0
