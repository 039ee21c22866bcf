"""A workspace directory: components, composed models, the privacy ledger, the audit log, the key.

Layout::

    workspace.json                 format marker (pydantic), written last on create
    ledger.sqlite                  privacy_accounting Ledger
    audit.log                      hash-chained audit log (dp_tangent.workspace.audit_log)
    manifest.key                   32 random bytes, mode 0600, created once, never overwritten
    components/NAME.safetensors    trained components
    models/NAME.json               composed model records (+ NAME.safetensors: the composed delta)
    certificates/REQUEST.json|.txt deletion requests and certificates
    tombstones.json                keyed commitments of deleted records (never trained again)
    data-sources.json              how to reload each data source, with keyed content digests
    cache/grams/KEY/SOURCE/SHARD.safetensors  per-record NTK Grams for later runs (never released)
    reports/                       generated reports (derived; no operation reads them)

Every operation that changes the workspace (training, composition, deletion, budget changes,
releases) is a :class:`~dp_tangent.workspace.commit.Change` applied by
:func:`~dp_tangent.workspace.commit.apply`: files written atomically, ledger operations, and one
audit entry with the sha256 of every artifact it read or wrote, under the workspace lock (``flock``
on ``workspace.json``; re-entrant within a process). A change interrupted half-way is finished the
next time the workspace is opened or locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import glob
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..components.manifest import commit, key_id, new_key
from ..io import atomic_write_text, fsync_dir, sha256_file
from .audit_log import (ARTIFACT_FOLDERS, INTEGRITY_FAILURE_REASON, INTERRUPTED_REASON, KILLED_WRITE_REASON, Artifact,
                        AuditEntry, AuditLog, VerifyReport, integrity_snapshot, resolvable_failures,
                        unresolved_failures)
from .commit import (Change, FileWrite, apply, finish_earlier, named_ids, pending_change_explains_ledger,
                     placed_by_pending)
from .ledger_ops import FailReservation, RegisterModel, SetBudget, SetDataSource
from .lock import workspace_lock, workspace_lock_if_free
from .model_record import ModelPart, ModelRecord
from .names import WorkspaceError, WorkspaceIntegrityError, check_name
from .notices import notice
from .tombstones import Tombstones

# What trains, composes or loads tensors is imported where it is used: opening a workspace, reading its
# ledger and log, and verifying them (``budget``, ``audit``, ``requests``, ``certificate``) need no torch.
if TYPE_CHECKING:
    import torch

    from privacy_accounting import Budget, Ledger

    from ..backbones import BackboneSpec
    from ..components.component import Component, Deltas
    from ..components.compose import Composition
    from ..data.records import RecordSet
    from ..data.sources import ReloadableSource
    from ..tangent import TangentModel
    from ..training.config import PrivacySpec, ProgressFn, TrainConfig
    from ..training.executors import Executor, TaskProgressFn
    from ..training.privacy_audit import AuditResult
    from ..training.theta0 import CheckedTheta0
    from ..training.write import TrainedComponent
    from .release import ReleaseStatement
    from .train import DeletedRecords, ShardJob, TrainingRun

FORMAT = "dp-tangent-workspace/1"
KEY_BYTES = 32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkspaceInfo(_Strict):
    format: Literal["dp-tangent-workspace/1"]  # required: every version wrote it
    created_at: str
    manifest_key_id: str


def _check_finished(ws: "Workspace", components: Sequence[str]) -> None:
    """Refuse a replacement that a deletion request still open trained before it stopped: composed, it would be
    kept beside the one the request's next run trains or reuses, a second line of its shard (review 78)."""
    from .replacements import unfinished_replacements

    unfinished = unfinished_replacements(ws)
    for name in components:
        if name in unfinished:
            request = unfinished[name].request_id
            raise WorkspaceError(f"component {name!r} is a replacement deletion request {request!r} trained before "
                                 f"it stopped: finish the request first (`dp-tangent forget -w {ws.root} --request-id "
                                 f"{request} [--retrain] -- <its record ids>`), then compose what it leaves")


def _check_not_deleted(ws: "Workspace", components: Sequence[str]) -> None:
    """Refuse, by name, a component a deletion request removed (its file is gone on purpose), rather than report its
    file missing."""
    missing = [name for name in components if not ws.component_path(name).exists()]
    entries = ws.audit.entries() if missing else []  # read once, and only where a file is missing
    for name in missing:
        deletions = [e.parameters for e in entries
                     if e.operation == "deletion" and name in (e.parameters.get("components_removed") or [])]
        if deletions:
            request, added = deletions[-1].get("request_id"), deletions[-1].get("components_added") or []
            # the retraining entry of each replacement names the component it replaces
            replacement = next((e.parameters["component"] for e in entries if e.operation == "retraining"
                                and e.parameters.get("request_id") == request and e.parameters.get("replaces") == name
                                and e.parameters.get("component") in added), None)
            instead = f"its retrained replacement is {replacement!r}" if replacement else "it was not retrained"
            raise WorkspaceError(f"component {name!r} was removed by deletion request {request!r}: {instead}")


def _invalid_marker(marker: Path, err: Exception) -> str:
    """The one-line refusal of a workspace.json this version cannot read: a workspace another version of
    dp-tangent wrote (its ``format`` names another version; a later format change of any workspace file changes
    this one too) is told apart from a damaged marker."""
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        data = json.loads(marker.read_bytes())
        found = data.get("format") if isinstance(data, dict) else None
        if isinstance(found, str) and found != FORMAT and re.fullmatch(r"dp-tangent-workspace/[0-9]+", found):
            return (f"{marker} is a workspace of format {found!r}, written by another version of dp-tangent; this "
                    f"version reads {FORMAT!r}: use the version that wrote it")
    return f"{marker} is not a valid workspace marker ({type(err).__name__})"


def _names(problem: str, path: str) -> bool:
    """Whether ``problem`` is about the file ``path`` itself (``models/m.json``, not ``models/m.json.orig``: review
    64, a prefix excused a file added beside one an interrupted change placed)."""
    return re.search(rf" {re.escape(path)}(?=[ :,]|$)", problem) is not None


def _current_problems(report: VerifyReport) -> list[str]:
    """What does not verify now, less the records of earlier failures (their own problems are checked afresh)."""
    return [str(p) for p in report.problems if not p.reason.startswith(INTEGRITY_FAILURE_REASON)]


def enclosing_workspace(path: str | os.PathLike[str]) -> Path | None:
    """The dp-tangent workspace a file or folder at ``path`` would sit in (the nearest folder above it with a
    ``workspace.json`` and a ``manifest.key``; another tool's ``workspace.json`` alone does not count), or None."""
    resolved = Path(path).expanduser().absolute().resolve()
    return next((p for p in resolved.parents if (p / "workspace.json").is_file() and (p / "manifest.key").is_file()),
                None)


_BUILDING = ".creating-"  # a workspace being created, inside its empty folder
_FRESH_BYTES = {"manifest.key": KEY_BYTES, "audit.log": 4096, "workspace.json": 4096, "ledger.sqlite": 256 << 10}


def _fresh(entry: Path) -> bool:
    """Whether ``entry`` can only be what a creation writes before anything else happens: its folders empty, its key,
    marker and log of a new workspace's size, its ledger without a single event, or the temporary file of one of
    them; nothing someone could have put there with a workspace's name."""
    if entry.is_symlink():
        return False
    if entry.is_dir():
        return entry.name in ARTIFACT_FOLDERS and not any(entry.iterdir())
    size, largest = entry.stat().st_size, _FRESH_BYTES["ledger.sqlite"]
    if entry.name.endswith(".tmp") or entry.name == "ledger.sqlite-journal":  # an atomic write killed before its rename
        return entry.name.startswith((".workspace.json.", ".ledger.sqlite.", "ledger.sqlite")) and size <= largest
    if entry.name not in _FRESH_BYTES or size > _FRESH_BYTES[entry.name]:
        return False
    if entry.name == "manifest.key":
        return size == KEY_BYTES
    if entry.name == "ledger.sqlite":
        import sqlite3

        try:
            with contextlib.closing(sqlite3.connect(f"{entry.as_uri()}?mode=ro", uri=True)) as conn:
                return conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        except sqlite3.Error:
            return False
    return True


def _clear_killed_creation(root: Path) -> None:
    """Empty ``root`` of what a creation killed while building in it left -- a hidden ``.creating-*`` folder, and
    the entries it had moved up already (never ``workspace.json``, which moves last: it was no workspace yet),
    every one of them as a creation writes it (:func:`_fresh`) -- and only when that is all ``root`` holds; anything
    else, and ``root`` is left as it is (and refused as not empty)."""
    entries = list(root.iterdir())
    building = [e for e in entries
                if e.name.startswith(_BUILDING) and _abandoned(e) and all(_fresh(x) for x in e.iterdir())]
    moved = [e for e in entries if e not in building]
    if not building or any(e.name == "workspace.json" or not _fresh(e) for e in moved):
        return
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def _building_lock(folder: Path) -> Iterator[None]:
    """Hold a lock on the folder a creation builds in until it is in place: a leftover whose lock is free was left
    by a creation that was killed (a concurrent one that has not locked its new folder yet then fails cleanly)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _clear_killed_creations_beside(root: Path) -> None:
    """Remove the folders creations of ``root`` killed while building beside it left (``.NAME.creating-*``, each
    holding only what a creation writes, :func:`_fresh`, a new manifest key among them) where no process holds
    their lock (review 64: they were left for good)."""
    for folder in root.parent.glob(f".{glob.escape(root.name)}.creating-*"):
        if _abandoned(folder) and all(_fresh(entry) for entry in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)


def _abandoned(folder: Path) -> bool:
    """Whether ``folder`` (not a link) is one no creation holds the lock of: its creator was killed."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a creation still building: BlockingIOError
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


#: Words a hint or a habit puts where a reason goes: not a reason (``audit resolve``).
_PLACEHOLDERS = frozenset({"TEXT", "REASON", "TODO", "TBD", "FIXME", "XXX", "NA", "NONE", "NOTHING", "WHY"})


@dataclass(frozen=True)
class Workspace:
    """An opened workspace; use :meth:`create` or :meth:`open`. ``root`` is absolute, whatever path was
    given, so every artifact is found and hashed relative to it."""

    root: Path
    info: WorkspaceInfo
    read_only: bool = False  # a check's view: its ledger is never written (see ``open``)

    # -- create / open --------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], *, operator: str | None = None) -> "Workspace":
        """Create a workspace in a new or empty directory (a fresh manifest key, mode 0600)."""
        root = Path(path).expanduser().absolute()  # relative paths would log artifacts at the wrong place
        if root.is_dir():
            _clear_killed_creation(root)
        if (root / "workspace.json").is_file():  # the demo builds a new one: it cannot be pointed at one (review 97)
            raise WorkspaceError(f"{root} is a dp-tangent workspace already; a new workspace needs another path")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise WorkspaceError(f"{root} already exists and is not an empty directory; choose another path")
        outer = enclosing_workspace(root)
        if outer is not None:  # its files would be unaccounted for in the outer one, which would refuse every operation
            raise WorkspaceError(f"{root} is inside the workspace {outer}; create a workspace outside any other")
        # built in a hidden folder and moved into place, its marker last: a kill half-way never leaves a workspace
        # without its log (which every later command would refuse). An existing empty folder (the working
        # directory, a mounted volume) is built in and filled, never replaced; a new one is built beside it.
        try:
            if not root.exists():
                root.parent.mkdir(parents=True, exist_ok=True)
                _clear_killed_creations_beside(root)
            building = Path(tempfile.mkdtemp(prefix=_BUILDING if root.exists() else f".{root.name}.creating-",
                                             dir=root if root.exists() else root.parent))
        except OSError as err:
            raise WorkspaceError(f"{root} could not be created ({err.strerror})") from None
        moving = False
        try:
            with _building_lock(building):  # until it is in place
                info = cls._build(building, operator)
                if building.parent == root:
                    moving = True
                    for entry in sorted(building.iterdir(), key=lambda p: p.name == "workspace.json"):
                        os.rename(entry, root / entry.name)
                    moving = False
                    fsync_dir(root)
                    building.rmdir()
                else:
                    os.rename(building, root)
        except OSError as err:  # e.g. another process made it meanwhile: theirs stays
            raise WorkspaceError(f"{root} could not be created ({err.strerror}); choose another path") \
                from None
        finally:
            if not moving:  # stopped half-way through the moves: what is left is for the next init to clear
                shutil.rmtree(building, ignore_errors=True)
        fsync_dir(root.parent)
        return cls(root, info)

    @classmethod
    def _build(cls, building: Path, operator: str | None) -> WorkspaceInfo:
        """A new workspace's files in ``building``: folders, key, ledger, marker and the log's first entry."""
        for sub in ARTIFACT_FOLDERS:
            (building / sub).mkdir()
        key = new_key()
        fd = os.open(building / "manifest.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        from privacy_accounting import Ledger

        Ledger.open(building / "ledger.sqlite")
        info = WorkspaceInfo(format=FORMAT, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             manifest_key_id=key_id(key))
        atomic_write_text(building / "workspace.json", info.model_dump_json(indent=2) + "\n")
        draft = cls(building, info)
        draft.audit.append("workspace_created", operator=operator,
                           outputs=[draft.artifact(building / "workspace.json")],
                           parameters={"format": FORMAT, "manifest_key_id": info.manifest_key_id})
        return info

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, finish: bool = True, read_only: bool = False) -> "Workspace":
        """Open an existing workspace; anything else is refused in one line. ``finish=False`` (a verifier's view)
        writes nothing: a change a killed process left unfinished stays as it is, for the check to report;
        ``read_only`` (implies it) opens its ledger read-only too: not even SQLite rolling back an interrupted
        write's journal or an upgrade of an older schema touch the file (review 95; both are read from a private
        copy), and every write fails."""
        root = Path(path).expanduser().absolute()
        marker = root / "workspace.json"
        if not marker.is_file():
            raise WorkspaceError(f"{root} is not a dp-tangent workspace (no workspace.json); "
                                 "create one with `dp-tangent init -w PATH` (Workspace.create in Python)")
        try:
            info = WorkspaceInfo.model_validate_json(marker.read_bytes())
        except (ValidationError, ValueError) as err:
            raise WorkspaceError(_invalid_marker(marker, err)) from err
        ws = cls(root, info, read_only)
        if ws.key_id != info.manifest_key_id:
            raise WorkspaceError(f"{ws.key_path} does not match workspace.json (key id {ws.key_id}, "
                                 f"expected {info.manifest_key_id}): the manifest key was replaced")
        if finish and ws._writable():  # a read-only mount or workspace: a view
            ws.finish_interrupted_work()
        return ws

    def finish_interrupted_work(self) -> tuple[list[str], list[str]]:
        """If nobody holds the lock: finish every change a killed process left half-done (see
        :mod:`.commit`), then resolve abandoned reservations. Returns (operations finished,
        reservations resolved)."""
        with workspace_lock_if_free(self.root) as free:
            if not free or not self.audit_log_path.is_file() or self._waiting_failures():
                return [], []  # a failure waiting to be closed: nothing is logged after it first
            return finish_earlier(self), self._resolve_abandoned()

    def resolve_abandoned_reservations(self) -> list[str]:
        """Mark failed, and log, every reservation left ``reserved`` by a driver that died (e.g. a
        ``kill -9``): a driver holds the workspace lock for its whole run, so a reservation still open
        while the lock is free has no one left to finish it. Its budget stays spent (records may
        have been read). Returns the reservation ids resolved; does nothing while the lock is held."""
        with workspace_lock_if_free(self.root) as free:
            if not free or not self.ledger_path.is_file() or self._waiting_failures():
                return []  # as finish_interrupted_work: nothing is logged after a failure waiting to be closed
            return self._resolve_abandoned()

    def _resolve_abandoned(self) -> list[str]:
        resolved = []
        for event in self.ledger.events(status="reserved"):
            reason = ("abandoned: the process that reserved it did not record how it ended (it was killed, or "
                      "could not write its failure, e.g. on a full disk); marked failed when the workspace was next "
                      "opened; its budget stays spent")
            apply(self, Change("reservation_abandoned", operator=getpass.getuser(),
                               ledger=[FailReservation(event.reservation_id, reason)], parameters={
                "component": event.component, "data_source": event.data_source, "shard": event.shard,
                "ledger_reservation": event.reservation_id, "reserved_at": event.created_at, "reason": reason}))
            resolved.append(event.reservation_id)
        if resolved:
            notice(f"{len(resolved)} reservation(s) a stopped training left open marked failed (their budget stays "
                   "spent)")
        return resolved

    # -- paths ------------------------------------------------------------------------------------
    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def audit_log_path(self) -> Path:
        return self.root / "audit.log"

    @property
    def key_path(self) -> Path:
        return self.root / "manifest.key"

    @property
    def components_dir(self) -> Path:
        return self.root / "components"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def certificates_dir(self) -> Path:
        return self.root / "certificates"

    def component_path(self, name: str) -> Path:
        return self.components_dir / f"{check_name(name, 'component')}.safetensors"

    def component_name_used(self, name: str) -> bool:
        """Whether ``name`` has a component file or ledger events: names are never reused."""
        return self.component_path(name).exists() or bool(self.ledger.events(component=name))

    def model_path(self, name: str) -> Path:
        return self.models_dir / f"{check_name(name, 'model')}.json"

    def model_deltas_path(self, name: str) -> Path:
        return self.models_dir / f"{check_name(name, 'model')}.safetensors"

    def certificate_paths(self, request_id: str) -> tuple[Path, Path]:
        stem = self.certificates_dir / check_name(request_id, "request id")
        return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".txt")

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root.resolve()).as_posix()

    def artifact(self, path: Path, name: str | None = None) -> Artifact:
        """An audit-log artifact for a file in the workspace (sha256 None if it does not exist)."""
        return Artifact.of_file(self.root, path, name)

    # -- key, ledger, log ---------------------------------------------------------------------------
    def manifest_key(self) -> bytes:
        """The HMAC key of record-id manifests (refused if other users may read it)."""
        try:
            st = os.stat(self.key_path)
            data = self.key_path.read_bytes()
        except OSError as err:
            raise WorkspaceError(f"cannot read the manifest key {self.key_path}: {err.strerror}") from err
        if st.st_mode & 0o077:
            raise WorkspaceError(f"{self.key_path} is readable by others (mode {st.st_mode & 0o777:o}); "
                                 "run chmod 600 on it")
        if len(data) != KEY_BYTES:
            raise WorkspaceError(f"{self.key_path} holds {len(data)} bytes, expected {KEY_BYTES}: corrupt key")
        return data

    @property
    def key_id(self) -> str:
        return key_id(self.manifest_key())

    @cached_property
    def ledger(self) -> Ledger:
        """The workspace's ledger; a missing one is an error, never silently a new, empty one."""
        from privacy_accounting import Ledger

        if not self.ledger_path.is_file():
            raise WorkspaceError(f"{self.ledger_path} is missing: every privacy spend of this workspace is in it; "
                                 "restore it from a backup (dp-tangent audit verify checks the restored copy)")
        # a file or folder this process may not write (a read-only mount): read as a check reads it, in a private copy
        # where SQLite would have to write (an interrupted write's journal), rather than fail (review 99)
        return Ledger.open(self.ledger_path, create=False, read_only=not self._writable())

    def _writable(self) -> bool:
        """Whether this process may change the workspace: not opened read-only, and its folder and ledger writable."""
        ledger = not self.ledger_path.exists() or os.access(self.ledger_path, os.W_OK)  # (made by create)
        return not self.read_only and ledger and os.access(self.root, os.W_OK)

    @property
    def audit(self) -> AuditLog:
        """The audit log, bound to the ledger: every entry records the ledger's table digests."""
        return AuditLog(self.audit_log_path, ledger_state=self.ledger.state_digest, workspace=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive workspace lock across processes; re-entrant within this process.

        Taking it (outermost) first finishes what killed processes left (changes half-way, abandoned
        reservations), then checks the workspace against its log. If anything does not verify, it is
        recorded in an ``integrity_failure`` entry (once: not again while that entry is the last) and the
        operation is refused: an operation can never log over (and so launder) a tampered ledger or file.
        Once the workspace is restored, ``audit resolve`` closes the record (:meth:`resolve_integrity_failures`).
        A workspace this process may not write is refused first: the operation would write some files and fail on
        the ledger (review 101).
        """
        if not self._writable():
            raise WorkspaceError(f"{self.root} cannot be written by this process (opened read-only, a read-only "
                                 "mount, or the permissions of its folder or ledger): nothing was changed; the checks "
                                 "(`audit verify`, `budget show`, `report`) read it as it is")
        with workspace_lock(self.root) as outermost:
            if outermost:
                self._refuse_without_a_log()
                self._refuse_while_a_failure_waits()  # nothing is logged after it before it is closed
                finish_earlier(self)  # a change killed (or failed) half-way is finished, not mistaken for tampering
                self._resolve_abandoned()  # so is a reservation a killed driver left
                self._refuse_unverified()
            yield

    def _refuse_without_a_log(self) -> None:
        """Refuse when the audit log is gone: every check of the workspace is against it, so an operation would
        start a new log that vouches for whatever the ledger and files hold now (edits included)."""
        path = self.audit_log_path
        if not path.is_file() or not path.stat().st_size:  # an emptied log would start a new chain (review 103)
            state = "is missing" if not path.is_file() else "is empty (a workspace's log starts with its creation)"
            raise WorkspaceError(f"{path} {state}: the workspace's history and every check of its files are in it; "
                                 "restore it from a backup (dp-tangent audit verify checks the restored copy) -- "
                                 "nothing was changed")

    def _waiting_failures(self) -> list[AuditEntry]:
        """The recorded failures at the log's end not yet closed (none without a log)."""
        return resolvable_failures(self.audit.entries()) if self.audit_log_path.is_file() else []

    def _refuse_while_a_failure_waits(self) -> None:
        """Refuse while a recorded failure sits at the log's end unclosed: an operation logged after it would leave
        it closable only by accepting the ledger."""
        waiting = self._waiting_failures()
        if waiting:
            first = (waiting[-1].parameters.get("problems") or ["?"])[0]
            raise WorkspaceIntegrityError(
                f"{self.root}: the integrity failure recorded in entry {waiting[-1].seq} is not closed (first: "
                f"{first}); restore what `dp-tangent audit verify` names, close it with `dp-tangent audit resolve "
                "--reason ...` (what was found and what was done), then run this again")

    def _refuse_unverified(self) -> None:
        audit = self.audit
        problems = _current_problems(audit.verify())
        if not problems:
            return
        self.record_integrity_failure()
        # an interrupted operation is finished by the first command after the rest is restored: the rest is quoted
        # (review 113: the refusal quoted "a command that is not a check finishes each" while refusing to)
        blocking = [p for p in problems if INTERRUPTED_REASON not in p]
        quoted = (f"first: {blocking[0]}; an interrupted operation waits too, finished once the rest is restored"
                  if blocking and len(blocking) < len(problems) else f"first: {problems[0]}")
        raise WorkspaceIntegrityError(
            f"{self.root} does not verify ({len(problems)} problem(s), {quoted}): recorded in its audit "
            "log, and nothing was done; `dp-tangent audit verify` lists every problem; restore what it names (e.g. "
            "remove a file put there by hand), then close the record with `dp-tangent audit resolve --reason ...`")

    def record_integrity_failure(self, found: Sequence[str] = ()) -> None:
        """Record in an ``integrity_failure`` entry what does not verify: ``found`` (what a caller found, e.g. a
        ledger edit an interrupted change being finished does not explain) and every problem of the log's own
        check; not again while such an entry is the log's last. ``audit verify`` reports the entry until
        :meth:`resolve_integrity_failures` closes it."""
        audit = self.audit
        entries = audit.entries()
        if entries and entries[-1] in unresolved_failures(entries):
            return
        new = [*found, *_current_problems(audit.verify())]
        if new:
            audit.append("integrity_failure", outputs=integrity_snapshot(self.root, audit.entries()), parameters={
                "problems": new[:50], "count": len(new)})

    def resolve_integrity_failures(self, reason: str, operator: str | None = None, *,
                                   accept_ledger: bool = False) -> list[int]:
        """Close recorded integrity failures: an ``integrity_resolved`` entry names them, with ``reason`` and the
        operator. Allowed once the workspace verifies again (its files and ledger the state the log vouches for,
        nothing unaccounted; a killed driver's unlogged reservations and a killed change's staging aside), and only
        for failures nothing was logged after. ``accept_ledger``: the ledger cannot be restored (e.g. a privacy audit
        killed in the instant after it completed its run, or an edit no backup undoes): the operator accepts it as it is
        now, and the entry vouches for it from then on; every file must verify all the same. Returns the entries
        closed."""
        words = [w for w in re.findall(r"[^\W\d_]+", reason) if w.upper() not in _PLACEHOLDERS]
        if not any(len(w) >= 3 for w in words):  # '...', TEXT or <reason> copied from a hint; 'x', N/A
            raise WorkspaceError("give a reason in words: what was found and what was done about it (it is logged for "
                                 "good)")
        with workspace_lock(self.root):
            audit = self.audit
            entries = audit.entries()
            open_ones = unresolved_failures(entries)
            if not open_ones:
                raise WorkspaceError(f"{self.root} has no open integrity failure to resolve")
            closable = open_ones if accept_ledger else resolvable_failures(entries)
            staged = placed_by_pending(self.root)
            explained = accept_ledger or pending_change_explains_ledger(self)  # killed after its ledger operations
            problems = [p for p in _current_problems(self._verify_excusing_unlogged(ledger=not explained))
                        if INTERRUPTED_REASON not in p and KILLED_WRITE_REASON not in p
                        and not any(_names(p, path) for path in staged)]
            if problems:
                raise WorkspaceIntegrityError(f"{self.root} still does not verify ({len(problems)} problem(s), first: "
                                              f"{problems[0]}); restore it first (`dp-tangent audit verify` lists "
                                              "every problem)")
            if len(closable) < len(open_ones):
                stuck = [e.seq for e in open_ones if e not in closable]
                raise WorkspaceIntegrityError(
                    f"the integrity failure(s) of entr{'y' if len(stuck) == 1 else 'ies'} "
                    f"{', '.join(map(str, stuck))} cannot be resolved by the check alone: operations were logged after "
                    "them, so the ledger they vouch for includes what was found; --accept-ledger accepts it as it is "
                    "(logged with your reason)")
            seqs = [e.seq for e in closable]
            audit.append("integrity_resolved", operator=operator or getpass.getuser(),
                         parameters={"resolves": seqs, "reason": reason.strip(), "accepted_ledger": accept_ledger})
            return seqs

    def _verify_excusing_unlogged(self, *, ledger: bool) -> VerifyReport:
        """The log's check, the ledger (if ``ledger``) compared as if the reservations no entry names were not there."""
        from .audit_log import verify

        state = None
        if ledger:
            named = named_ids(self.audit.entries(), "ledger_reservation")
            unlogged = [e.seq for e in self.ledger.events(status="reserved") if e.reservation_id not in named]
            state = self.ledger.state_digest(without_events=unlogged) if unlogged else self.ledger.state_digest()
        return verify(self.audit_log_path, ledger_state=state, workspace=True)

    # -- listing and loading --------------------------------------------------------------------------
    def list_components(self) -> list[str]:
        return sorted(p.name[:-len(".safetensors")] for p in self.components_dir.glob("*.safetensors") if p.is_file())

    def list_models(self) -> list[str]:
        return sorted(p.stem for p in self.models_dir.glob("*.json") if p.is_file())

    def load_component(self, name: str, arrays: bool = False) -> Component:
        """Component ``name``, verified; ``arrays``: its deltas as numpy arrays where all are float32 or float64
        (:func:`~dp_tangent.components.component.load_component`)."""
        from ..components.component import load_component

        return load_component(self.component_path(name), arrays)

    def model_record(self, name: str) -> ModelRecord:
        path = self.model_path(name)
        if not path.is_file():
            known = ", ".join(self.list_models()) or "none"
            raise WorkspaceError(f"no model {name!r} in {self.root} (models: {known})")
        try:
            return ModelRecord.model_validate_json(path.read_bytes())
        except (ValidationError, ValueError) as err:
            raise WorkspaceError(f"{path} is not a valid model record ({type(err).__name__})") from err

    def load_model(self, name: str, arrays: bool = False) -> tuple[ModelRecord, Deltas]:
        """The record and the composed delta, both checked against the record's digests; ``arrays``: as numpy arrays
        where all are float32 or float64 (:func:`~dp_tangent.components.component.load_deltas`)."""
        from safetensors import SafetensorError

        from ..components.component import deltas_digest, load_deltas

        record = self.model_record(name)
        path = self.models_dir / record.deltas_file
        if not path.is_file() or sha256_file(path) != record.deltas_file_sha256:
            raise WorkspaceError(f"{path} is missing or does not match the sha256 in {self.model_path(name).name}")
        try:
            deltas = load_deltas(path, arrays)
        except (SafetensorError, OSError, ValueError) as err:
            raise WorkspaceError(f"{path} is corrupt: {err}") from err
        if deltas_digest(deltas) != record.deltas_sha256:
            raise WorkspaceError(f"{path}: the composed deltas do not match the digest in the model record")
        return record, deltas

    # -- operations (each appended to the audit log) ---------------------------------------------------
    def train(
        self,
        backbone: BackboneSpec,
        trainable: str | None,
        records: RecordSet,
        *,
        data_source: str,
        shard: str,
        name: str,
        privacy: PrivacySpec,
        config: TrainConfig | None = None,
        operator: str | None = None,
        purpose: str = "training",
        progress: ProgressFn | None = None,
        deleted: DeletedRecords = "refuse",
        allow_overlap: bool = False,
    ) -> TrainedComponent:
        """Train one component in this process into ``components/NAME.safetensors``, and log it.

        A failed or refused run is logged too (budget it reserved stays spent in the ledger) and its
        error re-raised. Names are never reused: a name the ledger has events for is refused, so
        each name's spend is its own. Several shards at once, in parallel: :meth:`train_all`, which
        also says what ``deleted`` and ``allow_overlap`` do.
        """
        from .train import ShardJob

        report = (lambda _name, step, total: progress(step, total)) if progress else None
        run = self.train_all(backbone, trainable, [ShardJob(name, shard, records)], data_source=data_source,
                             privacy=privacy, config=config, operator=operator, purpose=purpose, progress=report,
                             deleted=deleted, allow_overlap=allow_overlap)
        if run.failed:
            failure = run.failed[0]
            raise failure.error or WorkspaceError(f"component {name!r} failed: {failure.reason}")
        return run.completed[0]

    def train_all(self, backbone: BackboneSpec, trainable: str | None, jobs: Sequence[ShardJob], *,
                  data_source: str, privacy: PrivacySpec, config: TrainConfig | None = None,
                  executor: Executor | None = None, operator: str | None = None, purpose: str = "training",
                  progress: TaskProgressFn | None = None, deleted: DeletedRecords = "refuse",
                  allow_overlap: bool = False, theta0: "CheckedTheta0 | None" = None) -> TrainingRun:
        """One component per job, trained through ``executor`` (default: serial, in this process).

        Budget for every job is reserved before any task starts; components are written and logged
        (with the worker that trained each) by this process. Deleted records are refused (or, with
        ``deleted="exclude"``, dropped); records another shard already read are refused unless
        ``allow_overlap``; ``theta0``, the network checked before registering. See
        :func:`dp_tangent.workspace.train.train_all`.
        """
        from ..training.config import TrainConfig
        from .train import train_all

        return train_all(self, backbone, trainable, jobs, data_source=data_source, privacy=privacy,
                         config=config or TrainConfig(),
                         executor=executor, operator=operator, purpose=purpose, progress=progress, deleted=deleted,
                         allow_overlap=allow_overlap, theta0=theta0)

    def model_writes(self, name: str, composition: Composition) -> tuple[ModelRecord, list[FileWrite]]:
        """The record and the files of model ``name`` (``models/NAME.safetensors`` and ``.json``),
        to be written by a :class:`~dp_tangent.workspace.commit.Change`."""
        from ..components.component import tensors_bytes

        record_path, deltas_path = self.model_path(name), self.model_deltas_path(name)
        rec = composition.record
        blob = tensors_bytes(composition.deltas, {"dp_tangent_model": name})
        record = ModelRecord(
            name=name, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), method=rec.method,
            weights_given=rec.weights_given,
            components=[ModelPart(name=p.name, sha256=p.sha256, deltas_sha256=p.deltas_sha256,
                                  data_source=p.data_source, shard=p.shard, weight=p.weight,
                                  coefficient=p.coefficient, merge_data_sha256=p.merge_data_sha256) for p in rec.parts],
            base=rec.base, base_weights_sha256=rec.base_weights_sha256, trainable=rec.trainable,
            deltas_sha256=rec.deltas_sha256, deltas_file=deltas_path.name,
            deltas_file_sha256=hashlib.sha256(blob).hexdigest(), merge=rec.merge)
        return record, [FileWrite(self.relative(deltas_path), blob, f"model:{name} deltas"),
                        FileWrite(self.relative(record_path), (record.model_dump_json(indent=2) + "\n").encode(),
                                  f"model:{name}")]

    def model_artifacts(self, name: str) -> list[Artifact]:
        """The record and delta files of a model, with their current digests (None if absent)."""
        return [self.artifact(self.model_path(name), f"model:{name}"),
                self.artifact(self.model_deltas_path(name), f"model:{name} deltas")]

    def compose_model(
        self,
        name: str,
        components: Sequence[str],
        weights: Sequence[float] | None = None,
        method: str = "mean",
        *,
        operator: str | None = None,
        replace: bool = False,
        merge_data: Mapping[str, torch.Tensor] | None = None,
        merge_data_public: bool = False,
        **options: Any,
    ) -> ModelRecord:
        """Compose workspace components into ``models/NAME``, register it in the ledger, and log it."""
        from ..components.compose import compose

        check_name(name, "model")
        with self.lock():
            exists = self.model_path(name).exists() or name in self.ledger.models()  # its file may be away
            if exists and not replace:
                raise WorkspaceError(f"model {name!r} already exists; choose another name (in Python, replace=True "
                                     "overwrites it)")
            if self.component_name_used(name):  # evaluate, predict and release would take the model for it
                raise WorkspaceError(f"{name!r} is a component's name; give the model a name of its own")
            _check_finished(self, components)
            _check_not_deleted(self, components)
            # a linear composition adds numpy arrays: `dp-tangent compose` runs without importing torch
            loaded = [self.load_component(c, arrays=method != "regmean") for c in components]
            composition = compose(loaded, weights, method, merge_data=merge_data,
                                  merge_data_public=merge_data_public, **options)
            record, writes = self.model_writes(name, composition)
            apply(self, Change(
                "composition", operator=operator, writes=writes,
                inputs=[self.artifact(c.path, c.name) for c in loaded],
                ledger=[RegisterModel(name, record.component_names)],
                parameters={"model": name, "method": method, "weights": record.weights,
                            "coefficients": [p.coefficient for p in record.components],
                            "base_weights_sha256": record.base_weights_sha256, "trainable": record.trainable,
                            "deltas_sha256": record.deltas_sha256, "merge": record.merge, "replaced": exists}))
            return record

    def declare_data_source(self, name: str, *, description: str, shards: Sequence[str], unit: str = "record",
                            loader: ReloadableSource | None = None, operator: str | None = None,
                            before_write: Callable[[], None] | None = None) -> None:
        """Declare a data source and its shards in the ledger (and, with ``loader``, how to re-read it
        for retraining, in ``data-sources.json``), and log it. ``before_write``: a caller's last check, run once the
        registration's own have passed, before anything is written (what it raises leaves nothing registered)."""
        from . import data_sources

        if str(getattr(unit, "value", unit)) != "record":
            raise WorkspaceError(f"unit {unit!r}: dp-tangent samples and clips per record, so its guarantee is per "
                                 "record; declare unit 'record' (user-level privacy would need per-user sampling "
                                 "and clipping, which it does not do)")
        with self.lock():
            registry = None if loader is None else data_sources.registered(self, name, loader)
            if before_write is not None:
                before_write()
            self._declare(name, description, shards, str(getattr(unit, "value", unit)), registry,
                          reloadable=loader is not None, operator=operator)

    def relocate_data_source(self, name: str, location: Path | None, operator: str | None = None, *,
                             public_table: Path | None = None) -> ReloadableSource | None:
        """Re-point data source ``name`` at ``location``, its file or folder moved there, and/or its public table at
        ``public_table``, after :func:`~dp_tangent.workspace.data_sources.relocated` checked every record there (read
        once); logged as its declaration. None where it is read from there already (nothing is written)."""
        from . import data_sources

        with self.lock():
            moved, registry = data_sources.relocated(self, name, location, public_table)
            if registry is None:
                return None
            source = self.ledger.data_source(name)
            self._declare(name, source.description, [shard for _, shard in self.ledger.shards(name)], "record",
                          registry, reloadable=True, operator=operator)
        return moved

    def _declare(self, name: str, description: str, shards: Sequence[str], unit: str, registry: bytes | None, *,
                 reloadable: bool, operator: str | None) -> None:
        """Apply and log a data source's declaration, with the registry's new content where it changed."""
        from . import data_sources

        writes = [] if registry is None else [FileWrite(data_sources.FILE, registry, "data-source registry")]
        apply(self, Change("data_source", operator=operator, writes=writes,
                           ledger=[SetDataSource(name, unit, description, list(shards))], parameters={
            "data_source": name, "unit": unit, "description": description, "shards": list(shards),
            "reloadable": reloadable}))

    def audit_privacy(self, tangent: TangentModel, records: RecordSet, privacy: PrivacySpec,
                      config: TrainConfig | None = None, *, data_source: str, shard: str, component: str,
                      operator: str | None = None, **options: Any) -> AuditResult:
        """An empirical privacy audit (:func:`dp_tangent.training.privacy_audit.audit_privacy`) on this
        workspace's private records: charged to the ledger like training, logged, and refused on
        records a deletion request removed."""
        from ..training.config import TrainConfig
        from ..training.privacy_audit import audit_privacy

        config = config or TrainConfig()
        key = self.manifest_key()
        with self.lock():
            keys = frozenset(commit(r, key) for r in records.record_ids)
            deleted = Tombstones(self.root).requests_for(keys)
            if deleted:
                raise WorkspaceError(f"{len(deleted)} of these records were deleted by request(s) "
                                     f"{', '.join(sorted(set(deleted.values())))}; an audit may not train on them")
            common = {"component": component, "data_source": data_source, "shard": shard}
            try:
                result = audit_privacy(tangent, records, privacy, config, ledger=self.ledger, operator=operator,
                                       record_keys=keys, **common, **options)
            except BaseException as err:
                # the reservation it failed, if it got that far (the newest failed one of the component)
                failed = next((e.reservation_id for e in reversed(self.ledger.events(component=component))
                               if e.status.value == "failed"), None)
                apply(self, Change("privacy_audit", operator=operator, parameters={
                    **common, "status": "failed", "error": type(err).__name__, "ledger_reservation": failed}))
                raise
            apply(self, Change("privacy_audit", operator=operator, parameters={
                **common, "status": "completed", "epsilon_lower_bound": result.epsilon_lower_bound,
                "claimed_epsilon": result.claimed_epsilon, "max_demonstrable_epsilon": result.max_demonstrable_epsilon,
                "delta": result.delta, "ledger_reservation": result.reservation_id, "audit_id": result.audit_id}))
            return result

    def set_budget(self, data_source: str, shard: str | None, epsilon: float, delta: float, *,
                   operator: str | None = None, every_shard: bool = False,
                   shard_delta: float | None = None) -> Budget:
        """``Ledger.set_budget``, logged with the previous budget. ``every_shard`` (with ``shard=None``): the
        source's shards that have budgets of their own (which win over the source's) get the same epsilon, in the
        same logged change, so that the limit holds for every shard of the source; each keeps its own delta unless
        ``shard_delta`` is given (a delta is never loosened unasked)."""
        from .budget_rules import check_budget_change

        with self.lock():  # the rules checked under it: a release meanwhile would escape them (review 108)
            budgets = {(b.data_source, b.shard): b for b in self.ledger.budgets()}
            targets = [shard]
            if every_shard and shard is None:
                targets += sorted(s for d, s in budgets if d == data_source and s is not None)
            previous = {t: budgets.get((data_source, t)) for t in targets}
            deltas = {t: float(delta) if t == shard else float(shard_delta if shard_delta is not None
                                                                 else previous[t].delta)  # type: ignore[union-attr]
                      for t in targets}
            declared = [s for d, s in self.ledger.shards() if d == data_source] if shard is None else [shard]
            own = {s for d, s in budgets if d == data_source and s is not None}
            check_budget_change(self, data_source, {  # each shard's budget as it will apply
                s: (float(epsilon), deltas[s] if s in deltas else float(delta)) for s in declared
                if shard is not None or s not in own or s in deltas})
            was = {t: None if b is None else {"epsilon": b.epsilon, "delta": b.delta} for t, b in previous.items()}
            apply(self, Change("budget_change", operator=operator,
                               ledger=[SetBudget(data_source, t, float(epsilon), deltas[t]) for t in targets],
                               parameters={
                "data_source": data_source, "shard": shard, "epsilon": float(epsilon), "delta": float(delta),
                "previous": was[shard], **({"shards": {t: was[t] for t in targets[1:]}} if targets[1:] else {})}))
            return next(b for b in self.ledger.budgets() if (b.data_source, b.shard) == (data_source, shard))

    def release(self, model: str, out_dir: str | os.PathLike[str], *, operator: str | None = None,
                allow_non_private: bool = False) -> ReleaseStatement:
        """Write ``model``'s release bundle (deltas, base reference, privacy statement; no counts,
        manifests or seeds) to the new directory ``out_dir`` and log it; see :mod:`.release`."""
        from .release import release

        return release(self, model, out_dir, operator=operator, allow_non_private=allow_non_private)

    def record_release(self, model: str, *, destination: str, operator: str | None = None,
                       note: str = "", bundle: Mapping[str, str] | None = None) -> None:
        """Log that ``model`` (its current files) left the workspace for ``destination``
        (``bundle``: file name -> sha256 of what was written there, see :mod:`.release`)."""
        from privacy_accounting import PrivacyAccountingError

        with self.lock():
            record, _ = self.load_model(model, arrays=True)  # checked, not used: no torch
            guarantee = None
            with contextlib.suppress(PrivacyAccountingError):
                g = self.ledger.model_guarantee(model)
                guarantee = {"epsilon": g.epsilon if math.isfinite(g.epsilon) else "inf", "delta": g.delta}
            apply(self, Change("release", operator=operator, inputs=self.model_artifacts(model), parameters={
                "model": model, "destination": destination, "note": note, "components": record.component_names,
                "deltas_sha256": record.deltas_sha256, "guarantee": guarantee, "bundle": dict(bundle or {})}))
