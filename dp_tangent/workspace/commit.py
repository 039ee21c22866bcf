"""The one commit path: every change to a workspace is a :class:`Change` value, applied by :func:`apply`.

A change names the files it writes (their bytes) and removes, the ledger operations it performs
(small values, :mod:`.ledger_ops`) and the audit entry that records it. :func:`apply`, under the
workspace lock:

1. stages the new files' bytes in ``.pending/ID/`` and writes the intent ``.pending/ID/intent.json``
   last (fsynced): the commit point. Killed before it, nothing changed and the staging is discarded;
2. moves each staged file into place (a rename: atomic), removes the files the change removes;
3. applies the ledger operations;
4. appends one audit entry whose outputs are every written file's sha256 (removed ones as ``None``),
   whose ``ledger`` field holds the ledger's table digests after step 3, and whose parameters carry
   ``commit: ID``;
5. deletes the intent.

A process killed between 1 and 5 leaves an intent that :func:`finish_interrupted` rolls forward the
next time the workspace is opened or locked, before anything else: each step is idempotent (a file
already in place is left, a removed one stays removed, an entry is not appended twice), so an
interrupted training, composition or deletion ends exactly as if it had not been interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..interrupts import deferred_interrupts
from ..io import atomic_write_bytes, atomic_write_text, fsync_dir, sha256_file, written_by_killed_write
from .audit_log import DERIVED_FOLDERS, OPERATIONS, Artifact, AuditEntry, vouching
from .ledger_ops import LedgerOp, ledger_op_from_json
from .names import WorkspaceError, WorkspaceIntegrityError
from .notices import notice

if TYPE_CHECKING:
    from .store import Workspace

PENDING = ".pending"
INTENT = "intent.json"
LEDGER_APPLIED = "ledger-applied.json"  # in a staging folder: the ledger's digests once the change's operations ran
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FileWrite:
    """``data`` written atomically at ``path`` (relative to the workspace); ``name`` labels it in the log."""

    path: str
    data: bytes
    name: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class FileRemoval:
    """The file at ``path`` (relative to the workspace) removed; logged with sha256 ``None``."""

    path: str
    name: str | None = None


@dataclass(frozen=True)
class Change:
    """One operation on a workspace: what it reads (``inputs``), writes, removes and does to the ledger,
    and the audit entry (``operation``, ``parameters``) that records it."""

    operation: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    operator: str | None = None
    inputs: Sequence[Artifact] = ()
    writes: Sequence[FileWrite] = ()
    removals: Sequence[FileRemoval] = ()
    ledger: Sequence[LedgerOp] = ()

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:  # refused before staging: the entry could never be appended
            raise WorkspaceError(f"unknown operation {self.operation!r}; one of: {', '.join(sorted(OPERATIONS))}")
        _check_paths([w.path for w in self.writes] + [r.path for r in self.removals])

    @property
    def outputs(self) -> list[Artifact]:
        return ([Artifact(w.name or Path(w.path).name, w.sha256, w.path) for w in self.writes]
                + [Artifact(r.name or Path(r.path).name, None, r.path) for r in self.removals])


def _check_paths(paths: Sequence[str]) -> None:
    """Paths relative to the workspace, inside it, outside the staging area, each named once; also
    applied to an interrupted change's intent before it is finished (a planted intent must not make
    the tool write outside the workspace)."""
    if len(set(paths)) != len(paths):
        raise WorkspaceError(f"a change writes or removes the same file twice: {sorted(paths)}")
    for path in paths:
        parts = Path(path).parts
        if not isinstance(path, str) or Path(path).is_absolute() or ".." in parts or not parts or parts[0] == PENDING:
            raise WorkspaceError(f"a change may only write inside the workspace, got {path!r}")


def _check_real_folders(root: Path, paths: Sequence[str]) -> None:
    """No folder between the workspace and a file a change writes or removes is a symbolic link (review 64: a
    ``components`` linked to another place had a change, or a planted intent, write and remove files there; the
    tool writes only inside the workspace, and ``audit verify`` names such a link)."""
    for path in paths:
        for above in reversed(Path(path).parents[:-1]):  # components, then components/sub, ...
            if (root / above).is_symlink():
                raise WorkspaceError(f"{root / above} is a symbolic link: dp-tangent writes and removes files only "
                                     "inside the workspace; put the folder itself there, then run "
                                     "`dp-tangent audit verify`")


def apply(ws: "Workspace", change: Change) -> AuditEntry:
    """Carry out ``change`` as the module doc says, and return its audit entry. Ctrl-C or SIGTERM meanwhile is
    raised once the change is done (:func:`~dp_tangent.interrupts.deferred_interrupts`), never half-way."""
    with ws.lock():
        for op in change.ledger:  # what the ledger would refuse is refused before anything is written
            op.check(ws.ledger)
        if has_pending_changes(ws.root):  # one of this command's, failed past its commit point (review 115): it
            finish_earlier(ws)             # explains the ledger this change is checked against, so it goes first
        commit_id = uuid.uuid4().hex
        staging = ws.root / PENDING / commit_id
        with deferred_interrupts():
            try:
                _stage(staging, change, commit_id)
            except Exception as err:
                if (staging / INTENT).is_file():  # its commit point passed: finishing it is all that is left
                    raise ChangeCommittedError(change.operation, err) from err
                _discard(staging)  # (review 113: left, it read as planted until another command ran)
                if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                    raise WorkspaceError(f"no space left on the disk of {ws.root} to stage the {change.operation}, "
                                         "which was therefore not made; free some space and run the command "
                                         "again") from err
                raise
            try:
                return _finish(ws, staging)
            except WorkspaceIntegrityError:  # refused, recorded: the change stays unfinished until that is resolved
                raise
            except Exception as err:  # a full disk, a short write to the log: finished by the next command
                raise ChangeCommittedError(change.operation, err) from err


def has_pending_changes(root: Path) -> bool:
    """Whether a change of the workspace at ``root`` passed its commit point and is not finished."""
    return any(_pending_intents(root))


class EarlierChangeWaitingError(WorkspaceError):
    """A change passed its commit point and cannot be finished yet (e.g. the disk still full): no other is made."""


def finish_earlier(ws: "Workspace") -> list[str]:
    """Finish the changes that passed their commit point (:func:`finish_interrupted`), or refuse what comes next
    (review 116: other commands said only the errno of the earlier change's temporary file)."""
    try:
        return finish_interrupted(ws)
    except WorkspaceIntegrityError:
        raise
    except Exception as err:
        raise EarlierChangeWaitingError(
            f"{err} -- an earlier change passed its commit point and cannot be finished yet, so nothing more is done: "
            "once this is resolved, the next command that is not a check finishes it (e.g. `dp-tangent requests "
            "list`)") from err


def pending_components(root: Path) -> set[str]:
    """The components whose completion passed its commit point and is not finished (their intents name them)."""
    return {str(intent["parameters"]["component"]) for _, intent in _pending_intents(root)
            if isinstance(intent.get("parameters"), dict) and intent["parameters"].get("component")
            and intent["parameters"].get("status") == "completed"}


def _discard(staging: Path) -> None:
    """Remove the staging of a change that failed before its commit point (nothing of it happened)."""
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):  # other changes' staging, or gone already
        staging.parent.rmdir()


class ChangeCommittedError(WorkspaceError):
    """A change failed past its commit point (e.g. a full disk): it is not lost, and the next command that is not a
    check finishes it (review 113: "ledger cannot be read: no such savepoint" and exit 2, then the next command
    applied the change the operator took as failed). ``operation``: the change's; ``cause``: the error."""

    def __init__(self, operation: str, cause: BaseException) -> None:
        self.operation, self.cause = operation, cause
        super().__init__(f"{cause} -- the {operation} passed its commit point, so it is not lost: once this is "
                         "resolved, the next command that is not a check finishes it (e.g. `dp-tangent requests "
                         "list`)")


def finish_interrupted(ws: "Workspace") -> list[str]:
    """Roll forward every change whose intent was written (discard staging without one) and remove the temporary
    files of atomic writes killed half-way; the caller holds the lock. Returns the operations finished."""
    _remove_killed_writes(ws.root)
    pending = ws.root / PENDING
    if pending.is_symlink() or not pending.is_dir():  # a link put there by hand is never followed (review 64: its
        return []                                      # target's folders were removed); `audit verify` names it
    done = []
    for staging in sorted(p for p in pending.iterdir() if not p.is_symlink()):
        if (staging / INTENT).is_file():
            done.append(_finish(ws, staging).operation)
            notice(f"finished the {done[-1]} a command stopped before it completed")
        else:
            shutil.rmtree(staging, ignore_errors=True)  # killed before its commit point: nothing happened
    with contextlib.suppress(OSError):  # gone already, or not empty
        pending.rmdir()
    fsync_dir(ws.root)
    return done


def _remove_killed_writes(root: Path) -> None:
    """Remove what atomic writes killed before their rename left (a copy of a file being placed, which may hold a
    record's influence): no operation reads them, and with the lock held no write of the workspace is under way.
    Staging is finished or discarded on its own; reports are written without the lock, so theirs are left
    (``audit verify`` notes them)."""
    for folder, dirs, files in os.walk(root):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d not in (PENDING, *DERIVED_FOLDERS)]
        leftovers = [name for name in files if written_by_killed_write(name) is not None]
        for name in leftovers:
            (Path(folder) / name).unlink(missing_ok=True)
        if leftovers:
            fsync_dir(folder)


def _stage(staging: Path, change: Change, commit_id: str) -> None:
    if staging.parent.is_symlink():
        raise WorkspaceError(f"{staging.parent} is a symbolic link: dp-tangent stages its changes only inside the "
                             "workspace; remove the link, then run `dp-tangent audit verify`")
    staging.mkdir(parents=True)
    for write in change.writes:
        blob = staging / write.sha256
        if not blob.exists():
            with open(blob, "wb") as handle:
                handle.write(write.data)
                handle.flush()
                os.fsync(handle.fileno())
    intent = {
        "commit": commit_id, "operation": change.operation, "operator": change.operator,
        "parameters": dict(change.parameters),
        "inputs": [a.to_json() for a in change.inputs],
        "writes": [{"path": w.path, "name": w.name, "sha256": w.sha256} for w in change.writes],
        "removals": [{"path": r.path, "name": r.name} for r in change.removals],
        "ledger": [op.to_json() for op in change.ledger],
    }
    try:
        text = json.dumps(intent, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise WorkspaceError(f"the {change.operation} entry's parameters are not plain JSON: {err}") from None
    fsync_dir(staging)
    atomic_write_text(staging / INTENT, text)  # the commit point


def _read_intent(staging: Path) -> tuple[dict[str, Any], Change, list[str]]:
    """The intent staged in ``staging``, the change it stands for and the paths it writes or removes; a one-line
    refusal for a file this tool did not write there."""
    not_ours = WorkspaceError(f"{staging / INTENT} is not an intent this tool wrote; remove {staging} and run "
                              "`dp-tangent audit verify`")
    try:
        intent = json.loads((staging / INTENT).read_text())
        commit_id = intent["commit"]
        paths = [w["path"] for w in intent["writes"]] + [r["path"] for r in intent["removals"]]
        _check_paths(paths)
        if commit_id != staging.name or not all(_SHA256.fullmatch(str(w["sha256"])) and "name" in w
                                                for w in intent["writes"]):
            raise not_ours
        return intent, _intended_change(intent), paths
    except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, or not an intent's fields
        raise not_ours from None


def _finish(ws: "Workspace", staging: Path) -> AuditEntry:
    intent, change, paths = _read_intent(staging)
    commit_id = intent["commit"]
    _check_real_folders(ws.root, paths)
    entries = ws.audit.entries()
    if entries and entries[-1].parameters.get("commit") == commit_id:
        entry = entries[-1]  # only the intent's removal was left to do
    else:
        if change.ledger:
            # checked inside the transaction its operations run in: it holds the ledger's write lock from the check to
            # the commit, so no write lands between the state checked and the state recorded
            with ws.ledger.atomically():  # one transaction: a kill at any instant leaves the old state or the new one
                unexplained, state = _ledger_check(ws, entries, staging, change)
                if not unexplained and not _applied_already(staging, state):
                    for op in change.ledger:
                        op.apply(ws.ledger)
                    # the state they leave, recorded before it commits, in case of a kill before the entry
                    state = ws.ledger.state_digest()
                    atomic_write_text(staging / LEDGER_APPLIED, json.dumps(state, sort_keys=True))
        else:
            unexplained, state = _ledger_check(ws, entries, staging, change)
        if unexplained:  # recorded, and nothing logged over it: the change stays unfinished, the operation refused
            found = [f"ledger table {table!r} differs from the state the log last recorded, in a way the "
                     f"{change.operation} being logged does not explain: rows were added, removed or edited outside "
                     "dp-tangent"
                     for table in unexplained]
            ws.record_integrity_failure(found)
            raise WorkspaceIntegrityError(
                f"{ws.root}: {found[0]}; recorded in its audit log, and nothing was done; restore the ledger from a "
                "backup, or, if no one edited it, accept it as it is with `dp-tangent audit resolve --accept-ledger "
                "--reason ...`")
        uses = Counter(w["sha256"] for w in intent["writes"])
        for write in intent["writes"]:
            _put(ws.root, staging, write["path"], write["sha256"], shared=uses[write["sha256"]] > 1)
        for removal in change.removals:
            (ws.root / removal.path).unlink(missing_ok=True)
        for folder in {(ws.root / w["path"]).parent for w in intent["writes"]} | \
                {(ws.root / r.path).parent for r in change.removals}:
            if folder.is_dir():  # a removal in a folder already gone (a deleted cache) has nothing to make durable
                fsync_dir(folder)
        outputs = ([Artifact(w["name"] or Path(w["path"]).name, w["sha256"], w["path"]) for w in intent["writes"]]
                   + change.outputs)
        # the entry vouches for the state this change was checked against or made (read inside its transaction), not
        # for one read again afterwards: an edit made after that reading is found by the next check, not logged over
        entry = ws.audit.append(change.operation, operator=change.operator, inputs=change.inputs, outputs=outputs,
                                parameters=change.parameters, ledger_state=state)
    shutil.rmtree(staging)
    with contextlib.suppress(OSError):  # the last one out removes the staging area
        staging.parent.rmdir()
    return entry


def _applied_already(staging: Path, state: Mapping[str, str] | None) -> bool:
    """Whether the ledger is the state this change's operations recorded they leave (they committed, then the process
    was killed): running them again would rewrite their timestamps, and a kill of that rerun after it recorded its own
    state but before it committed would leave a record no ledger state matches (review 61)."""
    marker = staging / LEDGER_APPLIED
    return state is not None and marker.is_file() and json.loads(marker.read_text()) == state


def _ledger_check(ws: "Workspace", entries: Sequence[AuditEntry], staging: Path,
                  change: Change) -> tuple[list[str], dict[str, str] | None]:
    """(:func:`_unexplained_ledger`, the ledger's table digests it read; None where it read none: no entry records a
    ledger state yet)."""
    last = next((e.ledger for e in reversed(vouching(entries)) if e.ledger is not None), None)  # not a failure's
    if last is None:
        return [], None
    now = ws.ledger.state_digest()
    return _unexplained(ws, entries, staging, change, last, now), now


def _unexplained_ledger(ws: "Workspace", entries: Sequence[AuditEntry], staging: Path, change: Change) -> list[str]:
    """The ledger tables that differ from the log's last record of them in a way the change being logged does not
    explain. Explained, and only by rows added since, which is all these can leave out: the reservations no entry
    names yet (made just before this change, or by a process killed before logging them) and the audits this change
    names that no entry named before (a privacy audit's result); the ledger must then be the logged state. A change
    killed after its own ledger operations ran is explained by what ``LEDGER_APPLIED`` recorded, in the tables those
    operations write and no other: the operations run in one ledger transaction, and the record is written before
    it commits, so no instant leaves their changes on disk without it (before, a kill between the two was reported
    as an edit and needed ``audit resolve --accept-ledger``)."""
    return _ledger_check(ws, entries, staging, change)[0]


def _unexplained(ws: "Workspace", entries: Sequence[AuditEntry], staging: Path, change: Change,
                 last: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    if now == last:
        return []
    named = named_ids(entries, "ledger_reservation")
    events = ws.ledger.events()
    newest_named = max((e.seq for e in events if e.reservation_id in named), default=0)
    own = named_ids([change], "ledger_reservation")  # what this change completes (a privacy audit's own run)
    unlogged = [e.seq for e in events if e.reservation_id not in named and e.seq > newest_named
                and (e.status.value == "reserved" or e.reservation_id in own)]
    audits = sorted(named_ids([change], "audit_id") - named_ids(entries, "audit_id"))
    base = ws.ledger.state_digest(without_events=unlogged, without_audits=audits) if unlogged or audits else now
    differing = {t for t in set(last) | set(base) if last.get(t) != base.get(t)}
    if not differing:
        return []
    if _applied_already(staging, now) and differing <= {table for op in change.ledger for table in op.tables}:
        return []
    return sorted(differing)


def _intended_change(intent: Mapping[str, Any]) -> Change:
    """The change an intent describes, its files already staged (no writes): what finishing it logs."""
    return Change(operation=intent["operation"], parameters={**intent["parameters"], "commit": intent["commit"]},
                  operator=intent["operator"], inputs=[Artifact(**a) for a in intent["inputs"]],
                  writes=(), removals=[_removal(r) for r in intent["removals"]],
                  ledger=[ledger_op_from_json(op) for op in intent["ledger"]])


def _pending_intents(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(staging folder, intent) of each interrupted change whose intent reads (one that does not is finishing's to
    report)."""
    for path in sorted((root / PENDING).glob(f"*/{INTENT}")):
        with contextlib.suppress(OSError, ValueError):
            intent = json.loads(path.read_text())
            if isinstance(intent, dict):
                yield path.parent, intent


def pending_change_explains_ledger(ws: "Workspace") -> bool:
    """Whether an interrupted change (its intent written, its entry not) explains how the ledger differs from the
    log's last record of it, by the rule finishing it applies (:func:`_unexplained_ledger`)."""
    entries = ws.audit.entries()
    for staging, intent in _pending_intents(ws.root):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if not _unexplained_ledger(ws, entries, staging, _intended_change(intent)):
                return True
    return False


def placed_by_pending(root: Path) -> set[str]:
    """The paths an interrupted change already put in place, with the bytes its intent names (finishing it logs
    them): not an edit."""
    placed = set()
    for _, intent in _pending_intents(root):
        with contextlib.suppress(KeyError, TypeError, OSError):
            for write in intent["writes"]:
                target = root / write["path"]
                if target.is_file() and sha256_file(target) == write["sha256"]:
                    placed.add(write["path"])
    return placed


def named_ids(entries: Sequence[AuditEntry | Change], key: str) -> set[str]:
    """Every id the entries' parameters name under ``key`` (at any depth): ``ledger_reservation``, ``audit_id``."""
    named: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for name, item in value.items():
                if name == key and isinstance(item, str):
                    named.add(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for entry in entries:
        walk(entry.parameters)
    return named


def _removal(raw: Mapping[str, Any]) -> FileRemoval:
    return FileRemoval(raw["path"], raw.get("name"))


def _put(root: Path, staging: Path, rel: str, sha: str, shared: bool) -> None:
    """Move the staged bytes to ``rel`` (copy them if another write shares them) unless the file is
    already there with that digest."""
    target = root / rel
    blob = staging / sha
    if blob.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if shared:
            atomic_write_bytes(target, blob.read_bytes())
        else:
            os.replace(blob, target)
        return
    if target.is_file() and sha256_file(target) == sha:
        return
    raise WorkspaceError(f"cannot finish an interrupted operation: the staged copy of {rel} is gone and the file "
                         f"does not hold it; restore {staging} or the workspace from a backup")
