"""End to end: the demo on a reduced size, and the CLI's one-line errors and exit codes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from dp_tangent.components.component import read_metadata
from dp_tangent.cli.demo_run import DemoConfig, run_demo
from dp_tangent.components.manifest import commit
from dp_tangent.workspace import Workspace

SMALL = DemoConfig(shards=2, max_records=500, epochs=6, batch_size=100, lr=0.1, image_size=48)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "ws"
    figures = run_demo(root, SMALL, console=Console(file=open("/dev/null", "w")))
    return root, figures


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dp_tangent", *args], capture_output=True, text=True, timeout=600)


def test_demo_outcomes(demo_run) -> None:
    root, figures = demo_run
    assert figures["composed"] > 0.3, figures  # 10 classes: chance is 0.1
    assert figures["reference"] > 0.2  # non-private, but on the public split only: one shard's worth of records
    assert figures["audit_ok"] and figures["deletion_verified"]
    ws = Workspace.open(root)
    key = ws.manifest_key()
    for name in ws.list_components():
        assert commit(figures["forgotten"], key) not in read_metadata(ws.component_path(name)).manifest.commitments
    # The non-private reference was trained on the public split only: the deletion never touches it.
    assert set(figures["removed"]) == {"digits-shard-1"}
    reference = set(read_metadata(ws.component_path("digits-non-private-reference")).manifest.commitments)
    for name in ws.list_components():
        if name != "digits-non-private-reference":
            assert not reference & set(read_metadata(ws.component_path(name)).manifest.commitments), name
    # After the deletion, the composed model's records of shard 1 carry both runs on them.
    assert figures["composed_epsilon_after_deletion"] > figures["composed_epsilon"]
    report = json.loads(ws.root.joinpath("reports", "privacy-report.json").read_text())
    ledger = ws.ledger
    for shard in ("shard-0", "shard-1"):
        assert figures["spent"][shard] == pytest.approx(ledger.shard_spend("digits", shard, delta=SMALL.delta).epsilon)
    report_text = json.dumps(report)
    for component in ("digits-shard-0", "digits-shard-1.r1"):
        [event] = [e for e in ledger.events(component=component)]
        assert component in report_text
        assert f"{event.details['epsilon']}"[:6] in report_text or event.details["epsilon"] is None
    assert math.isinf(figures["spent"]["public"])
    statement = json.loads((Path(figures["release"]) / "release.json").read_text())
    # The bundle states the shards' budget, a bound that does not depend on the shard sizes.
    assert statement["privacy"]["epsilon"] == SMALL.budget_epsilon > figures["composed_epsilon_after_deletion"]
    assert (root / "reports" / "privacy-report.html").read_text().startswith("<!DOCTYPE html>")


def test_cli_audit_verify_passes_then_detects_tampering(demo_run) -> None:
    root, _ = demo_run
    ok = cli("audit", "verify", "--workspace", str(root))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    log = root / "audit.log"
    original = log.read_bytes()
    try:
        lines = original.splitlines(keepends=True)
        lines[2] = lines[2].replace(b'"demo"', b'"eve!"', 1)
        log.write_bytes(b"".join(lines))
        bad = cli("audit", "verify", "--workspace", str(root))
        assert bad.returncode == 1 and "entry 2" in (bad.stdout + bad.stderr)
    finally:
        log.write_bytes(original)


def test_cli_report_budget_and_forget_not_found(demo_run) -> None:
    root, _ = demo_run
    report = cli("report", "--workspace", str(root), "--format", "json")
    assert report.returncode == 0 and json.loads(report.stdout)
    shown = cli("budget", "show", "--workspace", str(root))
    assert shown.returncode == 0 and "shard-1" in shown.stdout
    missing = cli("forget", "digit-99999", "--workspace", str(root), "--request-id", "req-missing")
    # Completed (and tombstoned), but flagged: a typo and "we hold no data on this person" look alike.
    assert missing.returncode == 3 and "not found in any component" in missing.stdout
    assert "NOT FOUND: 1 of 1 record id(s)" in missing.stderr


@pytest.mark.parametrize("args, message", [
    (["report", "--workspace", "/nonexistent/ws"], "not a dp-tangent workspace"),
    (["report", "--format", "pdf", "--workspace", "."], "--format"),
    (["budget", "set", "digits", "-1", "--workspace", "{ws}"], "epsilon"),
    (["compose", "nope", "--name", "m", "--workspace", "{ws}"], "nope"),
    (["forget", "digit-1", "--workspace", "{empty}"], "NOT FOUND"),  # registered and tombstoned all the same
])
def test_cli_mistakes_are_one_line_errors(demo_run, tmp_path, args, message) -> None:
    root, _ = demo_run
    empty = tmp_path / "empty"
    Workspace.create(empty)
    result = cli(*[a.format(ws=root, empty=empty) for a in args])
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_composing_the_non_private_reference_says_so_at_once(demo_run, tmp_path, capsys) -> None:
    """Review 83: composing the non-private reference said nothing; the release was refused later."""
    import shutil

    from helpers import run_cli

    shutil.copytree(demo_run[0], tmp_path / "ws")
    code, out, err = run_cli(capsys, "compose", "digits-non-private-reference", "digits-shard-0", "--name", "mix",
                             "-w", str(tmp_path / "ws"))
    assert code == 0 and "composed mix" in out, err
    assert ("note: digits-non-private-reference was trained without differential privacy, so model mix has no DP "
            "guarantee: `dp-tangent release` refuses it unless --non-private") in err
    code, out, err = run_cli(capsys, "compose", "digits-non-private-reference", "digits-shard-0", "--name", "mix",
                             "-w", str(tmp_path / "ws"))  # asked again (review 85: the note was not repeated)
    assert code == 0 and "already; nothing was changed" in out and "note: digits-non-private-reference" in err, err
    code, out, err = run_cli(capsys, "compose", "digits-shard-0", "digits-shard-1.r1", "--name", "dp", "-w",
                             str(tmp_path / "ws"))
    assert code == 0 and "note:" not in err, err


def test_the_demo_command_runs_as_the_readme_runs_it(tmp_path: Path) -> None:
    """``dp-tangent demo --quick`` (its smoke-test size, default shards) in an empty folder, its workspace the
    default relative path; its local workers are started before the demo's modules (and torch) load, and handed
    to the story. An empty release folder made beforehand is used, as `release -o` uses one (helper 48)."""
    (tmp_path / "dp-tangent-workspace-release").mkdir()
    done = subprocess.run([sys.executable, "-m", "dp_tangent", "demo", "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Training the 4 components in parallel:" in done.stdout.replace("\n", " ")
    assert "digits-composed" in done.stdout and "Traceback" not in done.stderr
    ws = Workspace.open(tmp_path / "dp-tangent-workspace")
    assert ws.list_components() and (tmp_path / "dp-tangent-workspace-release" / "release.json").is_file()


def test_a_demo_that_stops_early_leaves_no_worker_behind(tmp_path: Path, capsys) -> None:
    """The workers started before the story are stopped when it fails (here at once: the workspace exists)."""
    from helpers import run_cli, worker_processes_of

    Workspace.create(tmp_path / "ws")
    code, _, err = run_cli(capsys, "demo", "-w", str(tmp_path / "ws"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert worker_processes_of(os.getpid()) == []


@pytest.mark.parametrize("args, message", [
    (["--shards", "0"], "shards must be at least 1, got 0"),
    (["--shards", "-2"], "shards must be at least 1, got -2"),
    (["--epsilon", "-1", "--quick"], "epsilon must be finite and > 0 (and twice it, each shard's budget, too), got -1"),
    (["--epsilon", "nan"], "epsilon must be finite and > 0 (and twice it, each shard's budget, too), got nan"),
    (["--workers", "0"], "workers must be at least 1, got 0"),
    (["--trainable", "bogus"], "trainable 'bogus' is not understood"),
    (["--task", "text", "--shards", "0"], "shards must be at least 1, got 0"),
    (["--epsilon", "1e308"], "twice it, each shard's budget, too), got 1e+308"),
])
def test_demo_setting_mistakes_create_nothing(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    """Refused in one line before any worker starts or the workspace exists (each used to leave a workspace
    behind, or to print that it was training zero components first)."""
    from helpers import run_cli, worker_processes_of

    code, out, err = run_cli(capsys, "demo", "-w", str(tmp_path / "ws"), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert out == "" and not (tmp_path / "ws").exists() and worker_processes_of(os.getpid()) == []


@pytest.mark.parametrize("args, message", [
    (["--quick", "--epsilon", "0.01"], "noise multiplier"),  # found while planning: calibration
    (["--quick", "--shards", "12"], "is larger than its shard"),  # found while planning: the batch
])
def test_a_demo_setting_found_unworkable_while_planning_leaves_no_workspace(tmp_path: Path, capsys, monkeypatch,
                                                                            args: list[str], message: str) -> None:
    """The story created its workspace, then stopped before reserving any budget: the workspace goes again, so
    the corrected command runs (it used to fail with 'already exists'); an empty folder given stays, empty."""
    from helpers import run_cli

    (tmp_path / "given").mkdir()
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for ws in (tmp_path / "ws", tmp_path / "given", "."):  # "." : the folder the user is in stays, empty
        code, _, err = run_cli(capsys, "demo", "-w", str(ws), *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ws").exists() and list((tmp_path / "given").iterdir()) == []
    assert Path.cwd() == tmp_path / "here" and list(Path.cwd().iterdir()) == []


def test_a_source_budget_is_not_held_against_the_split_declared_public(demo_run, tmp_path: Path) -> None:
    """Review 46: once a data-source budget was set, the demo's public split (its non-private reference run) showed
    "exceeded" in red in the report and 0 remaining in `budget show`: no budget applies to records declared public."""
    import shutil

    from dp_tangent.workspace.report_context import privacy_report

    root = tmp_path / "ws"
    shutil.copytree(demo_run[0], root)
    assert cli("budget", "set", "digits", "15", "-w", str(root)).returncode == 0  # lowered: the demo released a model
    shown = cli("budget", "show", "-w", str(root))
    public = next(line for line in shown.stdout.splitlines() if " public " in line)
    assert "none: declared" in public and " 0 " not in public, shown.stdout
    report = privacy_report(Workspace.open(root))
    status = {s.shard: s.budget_status for s in report.shards}
    assert status == {"public": "declared public", "shard-0": "within budget", "shard-1": "within budget"}
    assert "exceeded" not in report.to_markdown()


def test_a_demo_into_a_workspace_where_nothing_was_trained_says_it_may_be_deleted(tmp_path: Path, capsys,
                                                                                  monkeypatch) -> None:
    """Review 107: a demo killed before training left a workspace that `demo -w` then refused only as "a dp-tangent
    workspace already", without a word that it held nothing spent and could be deleted."""
    from helpers import run_cli

    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "init", "-w", "ws")[0] == 0
    code, out, err = run_cli(capsys, "demo", "-w", "ws")
    assert code == 2 and "is a workspace in which nothing was trained" in err and "delete it" in err, err
    assert len(err.strip().splitlines()) == 1
    assert run_cli(capsys, "forget", "rec-1", "--request-id", "R1", "-w", "ws")[0] in (0, 3)  # served: none held
    code, out, err = run_cli(capsys, "demo", "-w", "ws")  # review 108: not advised to delete a request's records
    assert code == 2 and "is a dp-tangent workspace already" in err and "delete it" not in err, err
