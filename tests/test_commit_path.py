"""One commit path (issue 13): every change is staged, committed by its intent, and finished after a kill.

The kills are real: a child process dies with ``os._exit`` (no ``finally`` runs, as with ``kill -9``)
at a chosen point of an operation; the parent then opens the workspace as the next command would.
"""

from __future__ import annotations

import ast
import json
import sqlite3
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import pytest
import torch

from dp_tangent.data import RecordSet
from dp_tangent.training import PrivacySpec, TrainConfig
from dp_tangent.workspace import Workspace, WorkspaceError
from dp_tangent.workspace.certificate_check import check_certificate
from dp_tangent.workspace.commit import PENDING, Change, FileWrite, apply
from dp_tangent.workspace.deletion_requests import DeletionRequest
from dp_tangent.workspace.forget import forget
from dp_tangent.workspace.names import WorkspaceIntegrityError
from dp_tangent.workspace.report_context import report_sections
from privacy_accounting import build_report

PACKAGE = Path(__file__).resolve().parents[1] / "dp_tangent"

# The child: the workspace of the parent (relative path ``ws`` in its working directory), the same
# tiny backbone as the mlp_backbone fixture, then the operation, killed where KILL says.
CHILD = textwrap.dedent('''
    import os, sys, torch, torch.nn as nn
    torch.set_num_threads(1)
    from dp_tangent.backbones import BackboneSpec
    def build(self):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3)).eval()
    BackboneSpec.build = build
    from dp_tangent.data import RecordSet
    from dp_tangent.workspace import Workspace
    from dp_tangent.workspace.deletion_requests import DeletionRequest
    import dp_tangent.workspace.forget as forget_module
    import privacy_accounting
    def records(k, n=32):
        gen = torch.Generator().manual_seed(k)
        x = torch.randn(n, 8, generator=gen)
        return RecordSet(x, (x[:, 0] > 0).long(), tuple(f"rec-{k}-{i}" for i in range(n)))
    def die(*args, **kwargs):
        os._exit(9)
    ws = Workspace.open("ws")
    where = sys.argv[1]
    if where == "compose-ledger":
        privacy_accounting.Ledger.register_model = die
        ws.compose_model("m2", ["c0", "c1"])
    elif where == "compose-entry":  # the ledger operation applied and its state recorded, the entry not appended
        import dp_tangent.workspace.audit_log as audit_log
        audit_log.AuditLog.append = die
        ws.compose_model("m2", ["c0", "c1"])
    elif where == "compose-after-ledger":  # killed in the instant after the ledger operation, nothing recorded
        register = privacy_accounting.Ledger.register_model
        def register_then_die(self, *args, **kwargs):
            register(self, *args, **kwargs)
            os._exit(9)
        privacy_accounting.Ledger.register_model = register_then_die
        ws.compose_model("m2", ["c0", "c1"])
    elif where in ("compose-after-record", "compose-after-commit"):  # the state recorded; then before/after it commits
        import contextlib
        import dp_tangent.workspace.commit as commit_module
        write = commit_module.atomic_write_text
        def write_then_die(path, text):
            write(path, text)
            if where == "compose-after-record" and path.name == commit_module.LEDGER_APPLIED:
                os._exit(9)
        commit_module.atomic_write_text = write_then_die
        atomically = privacy_accounting.Ledger.atomically
        @contextlib.contextmanager
        def atomically_then_die(self):
            with atomically(self):
                yield
            os._exit(9)
        privacy_accounting.Ledger.atomically = atomically_then_die
        ws.compose_model("m2", ["c0", "c1"])
    else:
        if where == "deletion-ledger":
            privacy_accounting.Ledger.register_model = die
        elif where == "after-retraining":
            forget_module._rebuild_models = die
        elif where == "before-seal":
            forget_module.check_certificate = die
        import datetime
        request = DeletionRequest("req-1", ("rec-0-3",), datetime.date(2026, 11, 30))
        forget_module.forget(ws, request, retrain=True, shard_records={"c0": records(0)})
    raise SystemExit("not killed")
''')

FAST = TrainConfig(epochs=1, batch_size=16, lr=0.1)
REQUEST = DeletionRequest("req-1", ("rec-0-3",), date(2026, 11, 30))


def records(k: int, n: int = 32) -> RecordSet:
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(n, 8, generator=gen)
    return RecordSet(x, (x[:, 0] > 0).long(), tuple(f"rec-{k}-{i}" for i in range(n)))


@pytest.fixture
def ws(tmp_path, monkeypatch, mlp_backbone) -> Workspace:
    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")
    for k in range(2):
        ws.train(mlp_backbone, None, records(k), data_source="toy", shard=f"s{k}", name=f"c{k}",
                 privacy=PrivacySpec(noise_multiplier=1.0), config=FAST)
    ws.compose_model("m", ["c0", "c1"])
    return ws


def kill_child(where: str) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, where], capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, (done.returncode, done.stderr[-2000:])


def pending(ws: Workspace) -> list[Path]:
    return sorted((ws.root / PENDING).glob("*/intent.json"))


def test_every_change_to_a_workspace_goes_through_the_commit_path() -> None:
    """No module but the commit path appends to the audit log (workspace creation and the
    integrity-failure record and its resolution, which change nothing, excepted)."""
    allowed = {("workspace/commit.py", 1), ("workspace/store.py", 3)}
    found = {}
    for path in PACKAGE.rglob("*.py"):
        calls = [node for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"
                 and ast.unparse(node.func.value).split(".")[-1] == "audit"]
        if calls:
            found[path.relative_to(PACKAGE).as_posix()] = len(calls)
    assert set(found.items()) == allowed, found


def test_a_composition_killed_after_moving_its_files_is_finished_when_the_workspace_is_next_opened(ws) -> None:
    kill_child("compose-ledger")
    report = ws.audit.verify()  # before anything opens the workspace: seen as interrupted, not as fine
    assert len(pending(ws)) == 1 and not report.ok and "interrupted" in str(report)
    reopened = Workspace.open("ws")
    assert not pending(reopened) and not (reopened.root / PENDING).exists()
    assert reopened.ledger.models()["m2"] == ("c0", "c1")
    entry = reopened.audit.entries()[-1]
    assert entry.operation == "composition" and entry.parameters["model"] == "m2" and entry.parameters["commit"]
    assert reopened.audit.verify().ok
    assert reopened.load_model("m2")[0].component_names == ["c0", "c1"]


def test_the_command_that_finishes_a_killed_change_says_so_and_the_checks_say_which_commands_do(ws, capsys) -> None:
    """Review 107: a later `evaluate` or `predict` finished a killed budget change without a word, and `audit verify`
    said "any dp-tangent command" finishes it, itself included."""
    from helpers import run_cli

    kill_child("compose-ledger")
    assert "a command that is not a check finishes each" in str(ws.audit.verify())
    for check in (["audit", "verify"], ["budget", "show"], ["data", "list"]):  # checks: they leave it
        run_cli(capsys, *check, "-w", "ws")
        assert len(pending(ws)) == 1, check
    code, out, err = run_cli(capsys, "requests", "list", "-w", "ws")
    assert code == 0 and "note: finished the composition a command stopped before it completed" in err, err
    assert not pending(ws) and ws.audit.verify().ok


def test_a_change_killed_after_its_ledger_operation_is_finished_without_an_integrity_failure(ws) -> None:
    kill_child("compose-entry")
    log_before = (ws.root / "audit.log").read_bytes()
    done = subprocess.run([sys.executable, "-m", "dp_tangent", "audit", "verify", "-w", "ws"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "interrupted" in done.stdout  # reported, and left as it was: a check writes nothing
    # the cause comes first, before the ledger and file differences it explains (a review read it as tampering)
    assert "interrupted" in done.stdout.splitlines()[1] and "interrupted" in ws.audit.verify().first_bad.reason
    assert (ws.root / "audit.log").read_bytes() == log_before and len(pending(ws)) == 1
    reopened = Workspace.open("ws")
    assert [e.operation for e in reopened.audit.entries()][-1] == "composition"
    assert reopened.ledger.models()["m2"] == ("c0", "c1") and reopened.audit.verify().ok


@pytest.mark.parametrize("where", ["compose-after-ledger", "compose-after-record", "compose-after-commit"])
def test_a_kill_at_any_instant_of_the_ledger_operations_is_finished_without_an_integrity_failure(ws, where) -> None:
    """Review: killed in the instant after the ledger operation ran and before the state it left was recorded, the
    difference looked like an edit (an integrity failure that only --accept-ledger closed). The operations now run in
    one ledger transaction whose resulting state is recorded before it commits: killed before the commit the ledger
    is as it was, after it the record explains it; either way the next command finishes the change cleanly."""
    kill_child(where)
    committed = where == "compose-after-commit"
    assert ("m2" in Workspace.open("ws", finish=False).ledger.models()) is committed
    reopened = Workspace.open("ws")
    assert [e.operation for e in reopened.audit.entries()][-1] == "composition" and not pending(reopened)
    assert "integrity_failure" not in [e.operation for e in reopened.audit.entries()]
    assert reopened.ledger.models()["m2"] == ("c0", "c1") and reopened.audit.verify().ok


@pytest.mark.parametrize("planted", ["marker", "no marker"])
def test_a_planted_intent_does_not_launder_a_ledger_edit(ws, planted: str) -> None:
    """Review: an intent with no ledger operations and a ledger-applied record of the edited ledger, planted under
    .pending, made the next command log a deleted event as the reference state."""
    with sqlite3.connect(ws.ledger_path) as conn:
        conn.execute("DELETE FROM events WHERE component = 'c1'")
    staging = ws.root / PENDING / ("b" * 32)
    staging.mkdir(parents=True)
    (staging / "intent.json").write_text(json.dumps({
        "commit": "b" * 32, "operation": "budget_change", "operator": "demo", "parameters": {}, "inputs": [],
        "writes": [], "removals": [], "ledger": []}))
    if planted == "marker":
        (staging / "ledger-applied.json").write_text(json.dumps(ws.ledger.state_digest()))
    with pytest.raises(WorkspaceIntegrityError, match="ledger table 'events' differs"):
        Workspace.open("ws")
    reopened = Workspace.open("ws", finish=False)
    assert [e.operation for e in reopened.audit.entries()][-1] == "integrity_failure"
    assert not reopened.audit.verify().ok and "'events'" in str(reopened.audit.verify())


def test_a_ledger_edit_next_to_a_killed_change_is_recorded_before_the_change_is_finished(ws) -> None:
    """The change's own ledger operation is explained by what its intent recorded; a training event edited
    besides is not, and is recorded in an integrity_failure entry before the entry that logs the ledger as it is."""
    kill_child("compose-entry")
    with sqlite3.connect(ws.ledger_path) as conn:
        conn.execute("UPDATE events SET event_json = replace(event_json, '1.0', '9.0') WHERE component = 'c1'")
    with pytest.raises(WorkspaceIntegrityError, match="ledger table 'events' differs"):
        Workspace.open("ws")  # refused, recorded once, and nothing logged over it
    reopened = Workspace.open("ws")  # while the record waits to be closed, opening finishes nothing
    assert len(pending(reopened)) == 1
    with pytest.raises(WorkspaceIntegrityError, match="is not closed .*ledger table 'events' differs"):
        reopened.set_budget("toy", None, 9.0, 1e-5)
    operations = [e.operation for e in reopened.audit.entries()]
    assert operations[-1] == "integrity_failure" and operations.count("integrity_failure") == 1
    report = reopened.audit.verify()
    assert not report.ok and "'events'" in str(report)


def test_resolving_excuses_the_files_a_killed_change_placed_and_no_file_named_like_them(ws) -> None:
    """Review 64: the files an interrupted change placed were excused by a prefix match, so a file added beside one
    (``models/m2.json.orig``) passed `audit resolve`."""
    import shutil

    kill_child("compose-entry")
    shutil.copy(ws.ledger_path, "ledger.bak")
    with sqlite3.connect(ws.ledger_path) as conn:
        conn.execute("UPDATE events SET event_json = replace(event_json, '1.0', '9.0') WHERE component = 'c1'")
    with pytest.raises(WorkspaceIntegrityError, match="ledger table 'events' differs"):
        Workspace.open("ws")
    shutil.copy("ledger.bak", ws.ledger_path)  # restored
    assert (ws.root / "models" / "m2.json").is_file() and len(pending(ws)) == 1  # placed, not logged yet
    shutil.copy(ws.root / "models" / "m2.json", ws.root / "models" / "m2.json.orig")
    with pytest.raises(WorkspaceIntegrityError, match="still does not verify .*models/m2.json.orig"):
        ws.resolve_integrity_failures("restored the ledger")
    (ws.root / "models" / "m2.json.orig").unlink()
    ws.resolve_integrity_failures("restored the ledger")
    assert Workspace.open("ws").audit.verify().ok


def _plant_reservation(ws: Workspace, reservation_id: str = "planted") -> None:
    """A reserved events row as a driver killed right after reserving leaves it (no entry names it)."""
    columns = ("data_source, shard, component, purpose, operator, event_json, delta, checkpoints_released, "
               "details_json, created_at, updated_at, records_read")
    with sqlite3.connect(ws.ledger_path) as conn:
        conn.execute(f"INSERT INTO events (reservation_id, status, {columns}) SELECT ?, 'reserved', {columns} "
                     "FROM events WHERE component = 'c0' ORDER BY seq LIMIT 1", (reservation_id,))


@pytest.mark.parametrize("table, edit", [
    ("budgets", "INSERT OR REPLACE INTO budgets VALUES ('toy', 's0', 1000.0, 1e-05, '2026-01-01T00:00:00')"),
    ("events", "UPDATE events SET event_json = replace(event_json, '1.0', '9.0') WHERE component = 'c1'")])
def test_a_killed_drivers_reservation_is_resolved_cleanly_but_an_edit_beside_it_is_recorded_first(
        ws, table: str, edit: str) -> None:
    """Review: resolving the reservation (its failure touches the events table) laundered any events edit."""
    _plant_reservation(ws, "killed")
    reopened = Workspace.open("ws")
    assert reopened.audit.entries()[-1].operation == "reservation_abandoned" and reopened.audit.verify().ok
    _plant_reservation(ws, "planted")
    with sqlite3.connect(ws.ledger_path) as conn:  # laundered before, by the resolution
        conn.execute(edit)
    with pytest.raises(WorkspaceIntegrityError, match=f"ledger table '{table}' differs"):
        Workspace.open("ws")  # review 4: recorded, then carried on, so a training ran over the edited budget
    reopened = Workspace.open("ws", finish=False)
    assert [e.operation for e in reopened.audit.entries()][-1] == "integrity_failure"
    report = reopened.audit.verify()
    assert not report.ok and f"'{table}'" in str(report)


def test_a_deletion_killed_half_way_is_finished_then_sealed_by_running_it_again(ws, mlp_backbone) -> None:
    kill_child("deletion-ledger")
    reopened = Workspace.open("ws")  # finishes the deletion change
    assert reopened.audit.verify().ok
    assert "c0" not in reopened.list_components() and "c0.r1" in reopened.list_components()
    assert reopened.model_record("m").component_names == ["c0.r1", "c1"]
    result = forget(reopened, REQUEST, retrain=True, shard_records={"c0": records(0)})  # seals it
    assert result.certificate.status == "completed" and result.certificate.checkpoint is not None
    assert check_certificate(reopened, result.certificate).ok and reopened.audit.verify().ok
    retrainings = reopened.ledger.events(purpose="retraining_after_deletion")
    assert len(retrainings) == 1  # never trained (and charged) twice


def test_a_deletion_killed_after_retraining_reuses_the_replacement(ws, mlp_backbone) -> None:
    kill_child("after-retraining")
    reopened = Workspace.open("ws")
    assert reopened.audit.verify().ok and "c0.r1" in reopened.list_components()
    assert "c0" in reopened.list_components()  # nothing deleted yet: the request is still open
    result = forget(reopened, REQUEST, retrain=True, shard_records={"c0": records(0)})
    assert [a.name for a in result.certificate.components_added] == ["c0.r1"]
    assert len(reopened.ledger.events(purpose="retraining_after_deletion")) == 1
    assert check_certificate(reopened, result.certificate).ok and reopened.audit.verify().ok


def test_a_deletion_killed_before_its_seal_is_sealed_by_running_it_again(ws, mlp_backbone) -> None:
    kill_child("before-seal")
    reopened = Workspace.open("ws")
    assert reopened.audit.verify().ok
    report = build_report(reopened.ledger, workspace=report_sections(reopened))
    (deletion,) = report.workspace.deletions
    assert deletion.status == "unsealed"  # the report said "completed" while the certificate was never sealed
    for text in (report.to_markdown(), report.to_html()):
        assert "UNSEALED" in text and "completed on time" not in text
    result = forget(reopened, REQUEST, retrain=True, shard_records={"c0": records(0)})
    assert result.certificate.checkpoint is not None and check_certificate(reopened, result.certificate).ok
    assert [e.operation for e in reopened.audit.entries()].count("deletion") == 1
    assert [d.status for d in build_report(reopened.ledger, workspace=report_sections(reopened)).workspace.deletions
            ] == ["completed"]


def test_a_deleted_log_line_is_the_first_problem_reported_not_its_follow_on_mismatches(ws) -> None:
    lines = (ws.root / "audit.log").read_text().splitlines(keepends=True)
    removed = next(i for i, line in enumerate(lines) if '"operation":"training"' in line)
    (ws.root / "audit.log").write_text("".join(lines[:removed] + lines[removed + 1:]))
    report = ws.audit.verify()
    assert len(report.problems) > 1 and f"seq is {removed + 1}, expected {removed}" in report.first_bad.reason
    assert str(report).splitlines()[1].endswith("(entries deleted, inserted or reordered)")


@pytest.mark.parametrize("text", ["{not json", "{}", '{"commit": 3}', "[1, 2]",
                                  '{"commit": "0123456789abcdef0123456789abcdef", "writes": [], "removals": []}'])
def test_an_intent_this_tool_did_not_write_is_a_one_line_error_not_a_traceback(ws, text: str) -> None:
    staging = ws.root / PENDING / "0123456789abcdef0123456789abcdef"
    staging.mkdir(parents=True)
    (staging / "intent.json").write_text(text)
    with pytest.raises(WorkspaceError, match="is not an intent this tool wrote; remove"):
        Workspace.open("ws")


def test_a_change_killed_before_its_commit_point_leaves_nothing(ws) -> None:
    staging = ws.root / PENDING / "0123"
    staging.mkdir(parents=True)
    (staging / "deadbeef").write_bytes(b"half a file")  # staged bytes, no intent: nothing was committed
    before = ws.audit.entries()
    reopened = Workspace.open("ws")
    assert not (reopened.root / PENDING).exists() and reopened.audit.entries() == before
    assert reopened.audit.verify().ok


# A process killed inside an atomic write, between its temporary file and the rename (as ``kill -9`` there).
KILLED_WRITE = textwrap.dedent('''
    import os, sys
    from dp_tangent import io
    os.replace = lambda *args: os._exit(9)
    io.atomic_write_bytes(sys.argv[1], bytes.fromhex(sys.argv[2]))
''')


def kill_write(path: str, data: bytes) -> Path:
    """Kill an atomic write of ``data`` to ``path``; the temporary file it left."""
    done = subprocess.run([sys.executable, "-c", KILLED_WRITE, path, data.hex()], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 9, (done.returncode, done.stderr[-2000:])
    (left,) = Path(path).parent.glob(f".{Path(path).name}.*.tmp")
    return left


def test_a_write_killed_half_way_is_cleaned_up_by_the_next_command_not_recorded_as_tampering(ws) -> None:
    """A file being placed (a shared blob's copy) or rewritten, killed before its rename: its temporary file may hold
    a component's bytes, so the next command removes it (it used to block the workspace as an unaccounted file)."""
    left = kill_write("ws/components/c0.safetensors", (ws.root / "components/c0.safetensors").read_bytes()[:100])
    report = ws.audit.verify()
    assert not report.ok and f"components/{left.name} is the temporary file of a write killed" in str(report)
    reopened = Workspace.open("ws")
    assert not left.exists() and reopened.audit.verify().ok
    reopened.compose_model("m2", ["c0", "c1"])
    assert "integrity_failure" not in [e.operation for e in reopened.audit.entries()]


def test_a_report_killed_half_way_is_noted_and_left_but_other_bytes_in_reports_are_not(ws) -> None:
    """Reports are written without the lock (so a command cannot remove the temporary file of one being written):
    a report's, UTF-8 up to where it stopped (here inside the two bytes of an epsilon), is a note, not a problem."""
    (ws.root / "reports").mkdir()
    left = kill_write("ws/reports/privacy-report.html", "<p>spent \u03b5".encode()[:-1])
    report = ws.audit.verify()
    assert report.ok and any(left.name in note and "killed half-way" in note for note in report.notes), report
    ws.compose_model("m2", ["c0", "c1"])
    assert left.exists() and "integrity_failure" not in [e.operation for e in ws.audit.entries()]
    left.unlink()
    binary = kill_write("ws/reports/privacy-report.html", (ws.root / "components/c0.safetensors").read_bytes())
    assert "is not a report" in str(ws.audit.verify()), binary


def test_what_the_ledger_refuses_is_refused_before_anything_is_staged(ws) -> None:
    before = ws.audit.entries()
    with pytest.raises(Exception, match="epsilon"):
        ws.set_budget("toy", None, epsilon=-1.0, delta=1e-5)
    assert ws.audit.entries() == before and not (ws.root / PENDING).exists()


def test_a_change_writes_only_inside_the_workspace(ws) -> None:
    with pytest.raises(WorkspaceError, match="inside the workspace"):
        apply(ws, Change("composition", writes=[FileWrite("../outside.txt", b"x")]))
    with pytest.raises(WorkspaceError, match="twice"):
        Change("composition", writes=[FileWrite("a", b"x"), FileWrite("a", b"y")])


def _plant_intent(ws: Workspace, data: bytes, writes: str, removes: str | None = None) -> None:
    """An intent someone else put in ``.pending``: writing ``data`` to ``writes`` (and removing ``removes``)."""
    import hashlib

    staging = ws.root / PENDING / "feed"
    staging.mkdir(parents=True)
    sha = hashlib.sha256(data).hexdigest()
    (staging / sha).write_bytes(data)
    (staging / "intent.json").write_text(json.dumps({
        "commit": "feed", "operation": "composition", "operator": "mallory", "parameters": {}, "inputs": [],
        "writes": [{"path": writes, "name": None, "sha256": sha}],
        "removals": [] if removes is None else [{"path": removes, "name": None}], "ledger": []}))


def test_a_planted_intent_cannot_make_the_tool_write_outside_the_workspace(ws, tmp_path) -> None:
    """An intent is finished by whoever opens the workspace next: one planted by someone else must
    not write (or remove) files outside it."""
    _plant_intent(ws, b"echo owned\n", "../victim.sh")
    with pytest.raises(WorkspaceError, match="only write inside the workspace"):
        Workspace.open("ws")
    assert not (tmp_path / "victim.sh").exists()


def test_verify_says_when_another_command_holds_the_lock(ws, capsys) -> None:
    """Review 64: `audit verify` while a change was under way in another command reported it as interrupted, with
    "open the workspace to finish them", and no word that it was still running. It now reads the files holding the
    lock when it is free, and says so when it is not."""
    from helpers import run_cli

    from dp_tangent.workspace.lock import workspace_lock

    kill_child("compose-entry")  # an unfinished change, as one under way leaves it
    code, out, _ = run_cli(capsys, "audit", "verify", "-w", "ws")
    assert code == 1 and "interrupted" in out and "another dp-tangent command" not in out
    with workspace_lock(ws.root):  # another command at work
        code, out, _ = run_cli(capsys, "audit", "verify", "-w", "ws")
    assert code == 1 and "note: another dp-tangent command held this workspace's lock meanwhile" in out
    assert len(pending(ws)) == 1  # verify finished nothing


def test_a_linked_staging_area_is_never_followed(ws, tmp_path) -> None:
    """Review 64: with ``.pending`` a link to another folder, opening the workspace (any command, `budget show`
    included) removed every subfolder there without an intent."""
    victim = tmp_path / "victim"
    (victim / "photos").mkdir(parents=True)
    (victim / "photos" / "a.jpg").write_bytes(b"x")
    (ws.root / PENDING).symlink_to(victim)
    (ws.root / PENDING / "linked").symlink_to(victim / "photos")  # and a link inside it (made in the victim folder)
    Workspace.open("ws")
    assert (victim / "photos" / "a.jpg").read_bytes() == b"x" and (victim / "linked").is_symlink()
    with pytest.raises(WorkspaceError):  # a change is refused: the lock's check names the link, nothing is staged
        ws.set_budget("toy", None, epsilon=50.0, delta=1e-5)
    assert sorted(p.name for p in victim.iterdir()) == ["linked", "photos"]
    (ws.root / PENDING).unlink()
    staging = ws.root / PENDING
    staging.mkdir()
    (staging / "away").symlink_to(victim)  # a linked staging folder inside a real staging area: not followed
    Workspace.open("ws")
    assert (victim / "photos" / "a.jpg").is_file()


def test_a_change_never_writes_or_removes_through_a_linked_folder(ws, tmp_path) -> None:
    """Review 64: with ``components`` a link to another place, finishing an intent (an honest one killed, or one
    planted) wrote and removed files there."""
    import shutil

    logged = len(ws.audit.entries())
    away = tmp_path / "elsewhere"
    shutil.move(ws.root / "components", away)
    (ws.root / "components").symlink_to(away)
    (away / "precious.txt").write_bytes(b"keep")
    _plant_intent(ws, b"planted", "components/written.txt", removes="components/precious.txt")
    with pytest.raises(WorkspaceError, match=r"components is a symbolic link: dp-tangent writes and removes files"):
        Workspace.open("ws")
    assert (away / "precious.txt").read_bytes() == b"keep" and not (away / "written.txt").exists()
    assert len(ws.audit.entries()) == logged  # nothing logged either
    shutil.rmtree(ws.root / PENDING / "feed")  # the planted intent gone: the link alone
    from dp_tangent.workspace.audit_log import verify

    report = verify(ws.root / "audit.log", ledger_state=ws.ledger.state_digest(), workspace=True)
    certificates = ws.root / "certificates"  # review 101: an empty folder of the workspace's, linked: a "file"
    certificates.mkdir(exist_ok=True)
    certificates.rename(tmp_path / "certs")
    certificates.symlink_to(tmp_path / "certs")
    report = verify(ws.root / "audit.log", ledger_state=ws.ledger.state_digest(), workspace=True)
    assert any("certificates is a symbolic link to a folder (made by hand: the tool makes folders and files, never "
               "links): put the folder itself there" in str(p) for p in report.problems), report.problems
    assert not report.ok and any(  # review 95: it read "file components is not accounted for by the log"
        "components is a symbolic link to a folder (made by hand: the tool makes folders and files, never links); "
        "the " in str(p)
        and "logged file(s) under it are read from elsewhere" in str(p) for p in report.problems), report.problems


def test_a_component_replaced_by_a_link_to_its_bytes_elsewhere_is_a_problem_and_no_deletion_starts(ws, tmp_path):
    """Review 75: a component moved out of the workspace and linked back passed `audit verify` (the link was
    followed), then `forget` failed half-way with a Python error, its request left open."""
    import shutil

    from dp_tangent.workspace.audit_log import verify

    away = tmp_path / "elsewhere.safetensors"
    path = ws.component_path("c0")
    shutil.move(path, away)
    path.symlink_to(away)
    report = verify(ws)
    assert not report.ok and any("components/c0.safetensors is a symbolic link" in str(p) for p in report.problems)
    with pytest.raises(WorkspaceIntegrityError, match="is a symbolic link, not a file"):
        forget(ws, DeletionRequest("r1", ("rec-0-1",), date(2026, 12, 3)))
    assert not (ws.root / "certificates" / "r1.json").exists() and away.is_file()


def test_the_log_linked_to_a_copy_elsewhere_is_a_problem(ws, tmp_path) -> None:
    """Review 77: ``audit.log`` (or the ledger) made a link to a file outside the workspace verified."""
    import shutil

    log = tmp_path / "audit.log"
    shutil.move(ws.audit.path, log)
    ws.audit.path.symlink_to(log)
    assert [str(p).split(": ", 1)[1] for p in ws.audit.verify().problems] == [
        "audit.log is a symbolic link, not a file (made by hand: the tool keeps it in the workspace); put the file "
        "itself there"]
    shutil.move(log, ws.audit.path.with_suffix(".moved"))
    ws.audit.path.unlink()
    ws.audit.path.with_suffix(".moved").rename(ws.audit.path)
    key = tmp_path / "secrets" / "manifest.key"  # review 79: a key on a secrets mount, linked, is the operator's choice
    key.parent.mkdir()
    shutil.move(ws.key_path, key)
    ws.key_path.symlink_to(key)
    assert ws.audit.verify().ok and Workspace.open("ws").manifest_key() == key.read_bytes()


def test_an_unknown_operation_is_refused_before_anything_is_staged(ws) -> None:
    with pytest.raises(WorkspaceError, match="unknown operation"):
        apply(ws, Change("teleport", writes=[FileWrite("models/x.json", b"{}")]))
    assert not (ws.root / PENDING).exists() and not (ws.root / "models" / "x.json").exists()


def after_the_first_component_moves(monkeypatch: pytest.MonkeyPatch, action) -> list[str]:  # noqa: ANN001
    """Run ``action`` in the commit path right after the first component file is moved into place (between the
    commit point and the ledger's update); returns the list of such moves, for the test to check it happened."""
    import dp_tangent.workspace.commit as commit_module

    put, moved = commit_module._put, []

    def put_then(root: Path, staging: Path, rel: str, sha: str, shared: bool) -> None:
        put(root, staging, rel, sha, shared)
        if rel.endswith(".safetensors") and not moved:
            moved.append(rel)
            action()

    monkeypatch.setattr(commit_module, "_put", put_then)
    return moved


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupt_during_a_commit_is_raised_once_the_change_is_done(tmp_path, monkeypatch, mlp_backbone,
                                                                        signum: str) -> None:
    """Ctrl-C (or SIGTERM under the command line) landing just after a training's component file was moved into
    place, before its reservation is completed: held back until the change is done, then raised. The run's
    failure handling then finds the reservation completed, not half so; before, it marked it failed and every
    later command refused to finish the change ("reservation ... is failed, cannot mark it completed")."""
    import os
    import signal

    from dp_tangent.cli.app import _termination_as_interrupt
    from dp_tangent.workspace import ShardJob

    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")
    sent = after_the_first_component_moves(monkeypatch, lambda: os.kill(os.getpid(), getattr(signal, signum)))
    with _termination_as_interrupt(), pytest.raises(KeyboardInterrupt):
        ws.train_all(mlp_backbone, None, [ShardJob("c0", "s0", records(0))], data_source="toy",
                     privacy=PrivacySpec(noise_multiplier=1.0), config=FAST)
    assert sent
    reopened = Workspace.open("ws")  # the next command
    [event] = reopened.ledger.events()
    assert event.status.value == "completed" and reopened.list_components() == ["c0"]
    assert not pending(reopened) and reopened.audit.verify().ok
    assert [e.operation for e in reopened.audit.entries()][-2:] == ["reservation", "training"]


def test_an_interrupt_while_reserving_fails_the_reservations_it_waited_for(tmp_path, monkeypatch,
                                                                            mlp_backbone) -> None:
    """Ctrl-C between the ledger's reservation and its audit entry: held back until both are made, then the run's
    failure handling marks the reservation failed (budget spent, logged), rather than logging 'failed before any
    budget was reserved' and leaving the reservation for the next command."""
    import os
    import signal

    from dp_tangent.workspace import ShardJob
    from privacy_accounting import Ledger

    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")
    reserve_all = Ledger.reserve_all

    def reserve_then_interrupt(self: Ledger, *args: object, **kwargs: object) -> list[str]:
        made = reserve_all(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return made

    monkeypatch.setattr(Ledger, "reserve_all", reserve_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ws.train_all(mlp_backbone, None, [ShardJob("c0", "s0", records(0))], data_source="toy",
                     privacy=PrivacySpec(noise_multiplier=1.0), config=FAST)
    [event] = ws.ledger.events()
    assert event.status.value == "failed" and ws.list_components() == []
    failures = [e for e in ws.audit.entries() if e.operation == "training"]
    assert failures and all(e.parameters.get("reserved", True) for e in failures), failures
    assert ws.audit.verify().ok


def test_an_interrupt_is_not_lost_when_the_held_section_fails(monkeypatch) -> None:
    """Ctrl-C noted during a section that then raises (a disk filling up): the interrupt is raised, from that
    error, so the operator's stop is not swallowed by code that handles the error and carries on."""
    import errno
    import os
    import signal

    from dp_tangent.interrupts import deferred_interrupts

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as raised:
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(raised.value.__cause__, OSError) and signal.getsignal(signal.SIGINT) is before


def test_a_completion_that_fails_after_its_commit_point_is_finished_not_failed(tmp_path, monkeypatch,
                                                                               mlp_backbone) -> None:
    """The component's file moved into place, then the disk fills before the ledger is updated: the run's failure
    path first finishes the committed change, as the next command would (before, it marked the reservation failed
    and every later command refused to finish the change)."""
    import errno

    from dp_tangent.workspace import ShardJob

    def fill_the_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")
    failures = after_the_first_component_moves(monkeypatch, fill_the_disk)
    run = ws.train_all(mlp_backbone, None, [ShardJob("c0", "s0", records(0))], data_source="toy",
                       privacy=PrivacySpec(noise_multiplier=1.0), config=FAST)
    assert failures and run.failed == []
    reopened = Workspace.open("ws")
    [event] = reopened.ledger.events()
    assert event.status.value == "completed" and reopened.list_components() == ["c0"]
    assert not pending(reopened) and reopened.audit.verify().ok


def test_a_reservation_whose_log_entry_fails_is_failed_and_logged_as_reserved(tmp_path, monkeypatch,
                                                                               mlp_backbone) -> None:
    """The ledger reserves, then the disk fills before the reservation's audit entry is written: the run marks the
    reservation failed (its budget spent) and logs that, instead of logging 'failed before any budget was reserved'
    over a reservation the ledger holds."""
    import errno

    import dp_tangent.workspace.train as train_module
    from dp_tangent.workspace import ShardJob

    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")

    def apply_but_the_reservation(ws: Workspace, change: Change) -> object:
        if change.operation == "reservation":
            raise OSError(errno.ENOSPC, "No space left on device")
        return apply(ws, change)

    monkeypatch.setattr(train_module, "apply", apply_but_the_reservation)
    with pytest.raises(OSError, match="No space left"):
        ws.train_all(mlp_backbone, None, [ShardJob("c0", "s0", records(0)), ShardJob("c1", "s1", records(1))],
                     data_source="toy", privacy=PrivacySpec(noise_multiplier=1.0), config=FAST)
    events = ws.ledger.events()
    assert [e.status.value for e in events] == ["failed", "failed"] and ws.list_components() == []
    failures = [e.parameters for e in ws.audit.entries() if e.operation == "training"]
    assert sorted(f["ledger_reservation"] for f in failures) == sorted(e.reservation_id for e in events)
    assert all(f["reserved"] is True and f["error"].startswith("OSError after the budget was reserved")
               for f in failures)
    reopened = Workspace.open("ws")  # nothing left for the next command to resolve
    assert not [e for e in reopened.audit.entries() if e.operation == "reservation_abandoned"]
    assert reopened.audit.verify().ok


def _counting_digests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every full reading of the ledger's table digests (one list item per reading)."""
    import privacy_accounting.ledger as ledger_module

    reads: list[int] = []
    digest = ledger_module.Ledger.state_digest

    def counted(self, *args, **kwargs):  # noqa: ANN001, ANN202
        reads.append(1)
        return digest(self, *args, **kwargs)

    monkeypatch.setattr(ledger_module.Ledger, "state_digest", counted)
    return reads


def test_a_change_reads_the_ledgers_digests_once_to_check_it_and_once_in_the_transaction_it_makes(
        ws, monkeypatch) -> None:
    """Each reading hashes every ledger row (1.8 s per million rows of event_records): a change logged the digests it
    had read inside its own transaction a third time, afterwards."""
    reads = _counting_digests(monkeypatch)
    ws.compose_model("m2", ["c0", "c1"])  # a change with ledger operations
    assert len(reads) == 3  # the lock's verification of the workspace, the change's check, its transaction
    reads.clear()
    apply(ws, Change("composition", writes=[FileWrite("models/notes.txt", b"no ledger operation")]))
    assert len(reads) == 2  # the verification and the check
    assert ws.audit.verify().ok


def test_an_entry_vouches_for_the_ledger_its_change_made_not_for_an_edit_made_before_it_is_appended(
        ws, monkeypatch) -> None:
    """An edit slipped in between a change's ledger transaction and its log entry is found by the next check; before,
    the entry read the ledger again and vouched for the edit."""
    import dp_tangent.workspace.audit_log as audit_log

    append = audit_log.AuditLog.append

    def edit_then_append(self, *args, **kwargs):  # noqa: ANN001, ANN202
        with sqlite3.connect(ws.ledger_path) as conn:
            conn.execute("DELETE FROM event_records WHERE rowid IN (SELECT rowid FROM event_records LIMIT 2)")
        return append(self, *args, **kwargs)

    monkeypatch.setattr(audit_log.AuditLog, "append", edit_then_append)
    ws.compose_model("m2", ["c0", "c1"])
    monkeypatch.setattr(audit_log.AuditLog, "append", append)
    report = ws.audit.verify()
    assert not report.ok and "event_records" in str(report), str(report)
    with pytest.raises(WorkspaceIntegrityError, match="event_records"):
        Workspace.open("ws").compose_model("m3", ["c0"])


def test_the_files_away_are_found_without_hashing_any_file_or_reading_the_ledger(ws, monkeypatch) -> None:
    """A deletion's tombstoning asks only which logged files are away; it re-hashed every file (a feature cache of a
    GiB takes 1.5 s a pass) and read the whole ledger for it."""
    import dp_tangent.workspace.audit_log as audit_log

    away = ws.root.parent / "c1.safetensors"
    (ws.root / "components" / "c1.safetensors").rename(away)
    (ws.root / "tombstones.json").unlink(missing_ok=True)  # must stay: a problem, never "away"
    expected = ws.audit.verify().missing_artifacts
    assert "components/c1.safetensors" in expected and "tombstones.json" not in expected
    reads = _counting_digests(monkeypatch)
    monkeypatch.setattr(audit_log, "sha256_file", lambda path: pytest.fail(f"hashed {path}"))
    assert audit_log.missing_artifacts(ws) == list(expected) and audit_log.missing_artifacts(ws.root) == list(expected)
    assert not reads


def test_an_edit_made_while_a_change_puts_its_files_is_not_vouched_for(ws, monkeypatch) -> None:
    """A change with ledger operations is checked inside their transaction, and puts its files after it commits: an edit
    that landed between the check and the transaction was read inside it and vouched for (review 60)."""
    import dp_tangent.workspace.commit as commit_module

    put = commit_module._put

    def edit_then_put(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with sqlite3.connect(ws.ledger_path) as conn:
            conn.execute("UPDATE events SET operator = 'mallory'")
        return put(*args, **kwargs)

    monkeypatch.setattr(commit_module, "_put", edit_then_put)
    ws.compose_model("m2", ["c0", "c1"])
    monkeypatch.setattr(commit_module, "_put", put)
    report = ws.audit.verify()
    assert not report.ok and "'events'" in str(report), str(report)


def test_no_other_writer_can_change_the_ledger_between_a_changes_check_and_its_commit(ws, monkeypatch) -> None:
    import dp_tangent.workspace.commit as commit_module

    check, refused = commit_module._ledger_check, []

    def check_then_try_an_edit(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        found = check(*args, **kwargs)
        try:
            with sqlite3.connect(ws.ledger_path, timeout=0.2) as conn:
                conn.execute("UPDATE events SET operator = 'mallory'")
        except sqlite3.OperationalError as err:
            refused.append(str(err))
        return found

    monkeypatch.setattr(commit_module, "_ledger_check", check_then_try_an_edit)
    ws.compose_model("m2", ["c0", "c1"])
    assert refused and "locked" in refused[0]
    assert ws.audit.verify().ok


KILLED_TWICE = textwrap.dedent('''
    import os, sys
    import dp_tangent.workspace.commit as commit_module
    from dp_tangent.workspace import Workspace
    if sys.argv[1] == "after-commit":  # the composition's ledger transaction committed, none of its files placed
        commit_module._put = lambda *args, **kwargs: os._exit(9)
        Workspace.open("ws").compose_model("m2", ["c0", "c1"])
    else:  # the next command finishing it, killed after it recorded the state its rerun would leave
        write = commit_module.atomic_write_text
        def write_then_die(path, text):
            write(path, text)
            if path.name == commit_module.LEDGER_APPLIED:
                os._exit(9)
        commit_module.atomic_write_text = write_then_die
        Workspace.open("ws")
''')


def test_a_change_whose_ledger_operations_committed_is_finished_without_running_them_again(ws) -> None:
    """Finishing re-ran them: a composition's model was registered again with a new time, and a kill of that rerun after
    it recorded its state, before its commit, left a record no ledger matched: a false integrity failure (review 61)."""
    first = subprocess.run([sys.executable, "-c", KILLED_TWICE, "after-commit"], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 9, first.stderr[-2000:]
    with sqlite3.connect(ws.ledger_path) as conn:
        registered = conn.execute("SELECT registered_at FROM models WHERE name = 'm2'").fetchall()
    assert registered and not (ws.root / "models" / "m2.safetensors").exists()
    second = subprocess.run([sys.executable, "-c", KILLED_TWICE, "finish"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]  # nothing ran again, so nothing recorded again
    reopened = Workspace.open("ws")
    assert not pending(reopened) and reopened.audit.verify().ok
    with sqlite3.connect(ws.ledger_path) as conn:
        assert conn.execute("SELECT registered_at FROM models WHERE name = 'm2'").fetchall() == registered
    assert reopened.load_model("m2")[0].component_names == ["c0", "c1"]
    assert "integrity_failure" not in [e.operation for e in reopened.audit.entries()]


def test_a_train_that_finishes_a_killed_change_says_so(ws, capsys, tmp_path) -> None:
    """Review 108: `train` opened the workspace its own way, and finished a killed change without the note."""
    import yaml
    from helpers import run_cli

    kill_child("compose-ledger")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"backbone": {"name": "efficientnet_lite0", "pretrained": "nonsense"}}))
    code, out, err = run_cli(capsys, "train", str(recipe), "-w", "ws")  # refused, once it opened the workspace
    assert code == 2 and not pending(ws), err
    assert "note: finished the composition a command stopped before it completed" in err, err



def _full_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on a write to the ledger fails as on a full disk: SQLite's SQLITE_FULL, which rolls the whole
    transaction back (shown on a real SQLite file in tests/accounting/test_ledger_full_disk.py)."""
    from privacy_accounting.sqlite_storage import SQLiteStorage

    class Full(sqlite3.Connection):
        def execute(self, sql: str, *args):  # noqa: ANN002, ANN202
            if sql.lstrip().split()[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
                super().execute("ROLLBACK")
                raise sqlite3.OperationalError("database or disk is full")
            return super().execute(sql, *args)

    connect = SQLiteStorage._connect

    def full(self):  # noqa: ANN001, ANN202
        conn = connect(self)
        conn.close()
        return sqlite3.connect(self._path.as_uri() + "?mode=rw", uri=True, timeout=self._busy_timeout,
                               isolation_level=None, factory=Full)

    monkeypatch.setattr(SQLiteStorage, "_connect", full)


def test_a_full_disk_at_the_ledger_step_names_the_cause_and_the_change_is_finished_later(ws, monkeypatch,
                                                                                         capsys) -> None:
    """Review 113: SQLITE_FULL rolls SQLite's whole transaction back, so the savepoint's rollback that followed failed,
    and its "no such savepoint: call" replaced the cause ("ledger cannot be read"); the change, past its commit point,
    was then finished by the next command, unannounced."""
    from helpers import run_cli

    with monkeypatch.context() as disk:
        _full_ledger(disk)
        code, _, err = run_cli(capsys, "budget", "set", "toy/s0", "12", "-w", "ws")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "savepoint" not in err and "cannot be read" not in err
    assert "cannot write ledger" in err and "its disk is full (database or disk is full)" in err
    assert "the budget_change passed its commit point, so it is not lost: once this is resolved, the next command " \
           "that is not a check finishes it" in err
    assert len(pending(ws)) == 1
    code, _, err = run_cli(capsys, "requests", "list", "-w", "ws")
    assert code == 0 and "finished the budget_change" in err
    reopened = Workspace.open("ws")
    assert reopened.ledger.budget("toy", "s0").epsilon == 12 and reopened.audit.verify().ok


def test_a_full_disk_before_the_commit_point_leaves_no_staging_and_says_nothing_was_changed(ws, monkeypatch,
                                                                                          capsys) -> None:
    """Review 113: the staging of a change that failed before its commit point stayed in .pending/, and `audit verify`
    called it possibly planted until another command ran; the error was a bare "[Errno 28] No space left on device"."""
    import errno

    import dp_tangent.workspace.commit as commit_module
    from helpers import run_cli

    write = commit_module.atomic_write_text

    def full(path, text):  # noqa: ANN001, ANN202
        if Path(path).name == "intent.json":  # the staged bytes are written; the intent does not fit
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(path, text)

    entries = ws.audit.entries()
    with monkeypatch.context() as disk:
        disk.setattr(commit_module, "atomic_write_text", full)
        code, _, err = run_cli(capsys, "compose", "c0", "c1", "--name", "m2", "-w", "ws")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"no space left on the disk of {Path('ws').absolute()} to stage the composition, which was therefore not " \
           "made; free some space and run the command again" in err, err
    assert not (ws.root / PENDING).exists() and ws.audit.entries() == entries
    assert ws.audit.verify().ok
    code, _, err = run_cli(capsys, "compose", "c0", "c1", "--name", "m2", "-w", "ws")
    assert code == 0, err


def test_a_refusal_quotes_what_blocks_an_interrupted_operation_not_the_interruption(ws, tmp_path, capsys) -> None:
    """Review 113: with an interrupted change and a real problem both there, the refusal quoted the interruption ("a
    command that is not a check finishes each") while refusing to finish it."""
    import shutil

    from helpers import run_cli

    kill_child("compose-ledger")
    shutil.move(ws.root / PENDING, tmp_path / "elsewhere")
    (ws.root / PENDING).symlink_to(tmp_path / "elsewhere")
    code, _, err = run_cli(capsys, "budget", "set", "toy/s0", "12", "-w", "ws")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    quoted = err.split("first: ", 1)[1]
    assert quoted.startswith("entry 6: file .pending is not part of an interrupted operation's staging"), err
    assert "were interrupted" not in quoted, err
    assert "; an interrupted operation waits too, finished once the rest is restored)" in err


def test_a_short_write_to_the_log_past_the_commit_point_says_the_change_is_not_lost(ws, monkeypatch, capsys) -> None:
    """Review 115: any failure past the commit point (a short write to the audit log, not only a full disk) is
    finished by the next command, and says so."""
    from dp_tangent.workspace.audit_log import AuditLog, AuditLogError
    from helpers import run_cli

    append = AuditLog.append

    def short(self, operation, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if operation == "budget_change":
            raise AuditLogError(f"short write to {self.path} (a full disk or a file-size limit?); the entry was not "
                                "logged and the log is as it was")
        return append(self, operation, **kwargs)

    with monkeypatch.context() as disk:
        disk.setattr(AuditLog, "append", short)
        code, _, err = run_cli(capsys, "budget", "set", "toy/s0", "12", "-w", "ws")
    assert code == 2 and "short write to" in err and "the budget_change passed its commit point, so it is not " \
        "lost" in err, err
    code, _, err = run_cli(capsys, "requests", "list", "-w", "ws")
    assert code == 0 and "finished the budget_change" in err and Workspace.open("ws").audit.verify().ok


def test_a_release_failing_past_its_commit_point_puts_its_bundle_in_place_for_the_entry_to_follow(ws, monkeypatch,
                                                                                          capsys) -> None:
    """Review 115: the bundle was removed, and the next command logged a release of a bundle that existed nowhere."""
    import errno

    import dp_tangent.workspace.commit as commit_module
    from helpers import run_cli

    finish = commit_module._finish

    def full(ws_, staging):  # noqa: ANN001, ANN202
        change = json.loads((staging / "intent.json").read_text())
        if change["operation"] == "release":
            raise OSError(errno.ENOSPC, "No space left on device")
        return finish(ws_, staging)

    assert run_cli(capsys, "budget", "set", "toy", "50", "-w", "ws")[0] == 0  # a release states the budgets
    with monkeypatch.context() as disk:
        disk.setattr(commit_module, "_finish", full)
        code, _, err = run_cli(capsys, "release", "m", "-o", "out", "-w", "ws")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"the release of 'm' to {Path('out').absolute()} passed its commit point and its bundle is in place; its " \
           "log entry is written by the next command that is not a check" in err, err
    assert Path("out/release.json").is_file() and not list(Path(".").glob(".out.*"))  # review 116: not hidden
    code, out, err = run_cli(capsys, "release", "m", "-o", "out", "-w", "ws")  # the same again: nothing new
    assert code == 0 and "finished the release" in err, err
    releases = [e for e in Workspace.open("ws").audit.entries() if e.operation == "release"]
    assert len(releases) == 1 and Workspace.open("ws").audit.verify().ok


def test_a_trained_shard_whose_completion_cannot_be_finished_yet_is_not_called_missing(ws, monkeypatch,
                                                                                       mlp_backbone) -> None:
    """Review 115: the completion failed past its commit point while the disk stayed full: the shard was reported as
    having no component, with a bare errno, and to be trained again (which the next command then refused)."""
    import errno

    from dp_tangent.workspace import ShardJob

    from dp_tangent.workspace.audit_log import AuditLog

    append = AuditLog.append

    def full(self, operation, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if operation == "training":  # the completion's entry: its files moved, its ledger operation done
            raise OSError(errno.ENOSPC, "No space left on device")
        return append(self, operation, **kwargs)

    with monkeypatch.context() as disk:
        disk.setattr(AuditLog, "append", full)  # and so the disk stays while train_all runs
        run = ws.train_all(mlp_backbone, None, [ShardJob("c2", "s2", records(2))], data_source="toy",
                           privacy=PrivacySpec(noise_multiplier=1.0), config=FAST)
    assert run.completed == [] and [f.name for f in run.failed] == ["c2"] and run.failed[0].committed
    assert "the training passed its commit point, so it is not lost" in run.failed[0].reason
    reopened = Workspace.open("ws")  # the disk has room again: the next command finishes it
    assert "c2" in reopened.list_components() and reopened.audit.verify().ok
    assert [e.status.value for e in reopened.ledger.events() if e.component == "c2"] == ["completed"]


def test_a_write_the_disk_cannot_take_names_its_file_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    """Review 115: a report or a release bundle on a full disk said only "[Errno 28] No space left on device"."""
    import errno
    import os

    from dp_tangent.io import atomic_write_bytes

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"No space left on device: '.*report\.html'") as raised:
        atomic_write_bytes(tmp_path / "report.html", b"<html>")
    assert raised.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


def test_train_says_a_shard_whose_component_waits_is_trained_and_leaves_it_out_of_the_retry(
        tmp_path, capsys, monkeypatch) -> None:
    """Review 115: the command line listed such a shard among those to train again."""
    from helpers import run_cli

    code, err = _train_while_the_first_completion_cannot_be_logged(tmp_path, capsys, monkeypatch, rows=64, shards=1)
    assert code == 2, err
    assert "rows-shard-0 (shard-0) trained, its component not yet in place: [Errno 28] No space left on device -- " \
           "the training passed its commit point, so it is not lost" in err, err
    assert "retry them with" not in err and "FAILED" not in err
    assert "is finished by the next command that is not a check (e.g. `dp-tangent requests list`); then compose the " \
           "model (no training, no budget): dp-tangent compose rows-shard-0 --name rows -w" in err
    code, _, err = run_cli(capsys, "requests", "list", "-w", "ws")
    assert code == 0 and "finished the training" in err
    code, _, err = run_cli(capsys, "compose", "rows-shard-0", "--name", "rows", "-w", "ws")
    assert code == 0 and Workspace.open("ws").audit.verify().ok, err


def test_train_names_a_waiting_shard_and_retries_only_the_others_when_the_disk_stays_full(
        tmp_path, capsys, monkeypatch) -> None:
    """Review 116: with several shards, the next shard's completion stopped the run with one line, naming neither the
    trained shard whose component waits nor the shards to train again."""
    from helpers import run_cli

    code, err = _train_while_the_first_completion_cannot_be_logged(tmp_path, capsys, monkeypatch, rows=96, shards=3)
    assert code == 2, err
    assert "rows-shard-0: trained, its component not yet in place: the next command that is not a check finishes " \
           "it" in err, err
    assert "to train the shards without a component: " in err and "--shard 0" not in err, err
    assert "--shard 1 --shard 2" in err and "an earlier change passed its commit point and cannot be finished yet, " \
           "so nothing more is done" in err, err
    code, _, err = run_cli(capsys, "requests", "list", "-w", "ws")
    assert code == 0 and "finished the training" in err
    reopened = Workspace.open("ws")
    assert "rows-shard-0" in reopened.list_components() and reopened.audit.verify().ok


def test_only_a_waiting_completion_counts_as_a_trained_component(tmp_path) -> None:
    """A failed run's log entry waiting past its commit point names its component too: it is no trained one."""
    from dp_tangent.workspace.commit import pending_components

    for commit_id, status in (("a" * 32, "completed"), ("b" * 32, "failed")):
        (tmp_path / PENDING / commit_id).mkdir(parents=True)
        (tmp_path / PENDING / commit_id / "intent.json").write_text(json.dumps(
            {"commit": commit_id, "parameters": {"component": f"c-{status}", "status": status}}))
    assert pending_components(tmp_path) == {"c-completed"}


def _train_while_the_first_completion_cannot_be_logged(tmp_path, capsys, monkeypatch, *,  # noqa: ANN001
                                                       rows: int, shards: int) -> tuple[int, str]:
    """`dp-tangent train` of a fast recipe (``rows`` npz rows, ``shards`` shards, in ``tmp_path``, workspace ``ws``)
    while the log entry of the first shard's completion, and every try to finish it, fails as on a full disk: (exit
    code, stderr)."""
    import errno

    from dp_tangent.workspace.audit_log import AuditLog
    from helpers import run_cli
    from owndata import mlp_recipe, write_npz, write_recipe

    monkeypatch.chdir(tmp_path)
    write_npz(Path("rows.npz"), n=rows)
    recipe = write_recipe(Path("rows.yaml"), mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2,
                                                        source="rows", shards={"count": shards}))
    append = AuditLog.append

    def full(self, operation, **kwargs):  # noqa: ANN001, ANN003, ANN202
        parameters = kwargs.get("parameters", {})
        if operation == "training" and parameters.get("component") == "rows-shard-0" and \
                parameters.get("status") == "completed":
            raise OSError(errno.ENOSPC, "No space left on device")
        return append(self, operation, **kwargs)

    with monkeypatch.context() as disk:
        disk.setattr(AuditLog, "append", full)
        code, _, err = run_cli(capsys, "train", "--init", str(recipe), "-w", "ws", "--executor", "serial")
    return code, err
