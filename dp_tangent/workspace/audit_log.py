"""Append-only, hash-chained audit log of a workspace: one canonical JSON object per line.

Entry k is ``{seq: k, time, operator, operation, inputs, outputs, parameters, prev_hash, hash}``
with ``hash_k = sha256(canonical JSON of entry k without "hash")`` and ``prev_hash_k = hash_(k-1)``
(64 zeros for k = 0). Canonical JSON: sorted keys, no spaces, ASCII only, no NaN. Every line must
*be* the canonical JSON of its entry, so changing any byte of the file breaks that line's parse,
its own hash, or the next entry's link; deleting or reordering entries breaks ``seq`` and the
links. Cutting entries off the end leaves a valid shorter chain: compare with a head hash or
Merkle root recorded elsewhere (``verify(..., expected_head=...)``).

Artifacts named in ``inputs``/``outputs`` are ``{name, sha256, path}``: ``path`` relative to the
log's folder (the workspace), ``sha256 = None`` in an output means the file was removed.
:func:`verify` replays the outputs to know which digest each file must have now, and checks every
file still on disk and every input against the version last logged for its path.
"""

from __future__ import annotations

import codecs
import fcntl
import getpass
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..io import fsync_dir, sha256_file, written_by_killed_write
from .audit_errors import AuditChainError, AuditLogError
from .checkpoint import Checkpoint, extends
from .merkle import merkle_root

GENESIS = "0" * 64
OPERATIONS = frozenset({
    "workspace_created", "training", "retraining", "composition", "deletion_request", "deletion",
    "budget_change", "release", "reservation_abandoned", "data_source", "certificate_sealed", "privacy_audit",
    "reservation", "tombstoned", "integrity_failure", "integrity_resolved",
})
_HEX64 = r"^[0-9a-f]{64}$"
_OPERATION = re.compile(r"^[a-z][a-z_]{0,63}$")


@dataclass(frozen=True)
class Artifact:
    """A file (``path`` relative to the workspace) or a digest-identified input (``path=None``)."""

    name: str
    sha256: str | None
    path: str | None = None

    @classmethod
    def of_file(cls, root: str | Path, path: str | Path, name: str | None = None) -> "Artifact":
        """The file ``path`` (relative to ``root``, or absolute inside it) with its current sha256
        (``None`` if it does not exist)."""
        root = Path(root)
        full = Path(path) if Path(path).is_absolute() else root / path
        rel = full.resolve().relative_to(root.resolve()).as_posix()
        return cls(name or full.name, sha256_file(full) if full.is_file() else None, rel)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "sha256": self.sha256}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ArtifactRecord(_Strict):
    name: str = Field(min_length=1)
    path: str | None
    sha256: str | None = Field(pattern=_HEX64)


class AuditEntry(_Strict):
    """One line of the log (validated on read)."""

    seq: int = Field(ge=0)
    time: str
    operator: str = Field(min_length=1)
    operation: str = Field(pattern=_OPERATION.pattern)
    inputs: list[ArtifactRecord]
    outputs: list[ArtifactRecord]
    parameters: dict[str, Any]
    ledger: dict[str, str] | None = None  # sha256 of each ledger table after the operation
    prev_hash: str = Field(pattern=_HEX64)
    hash: str = Field(pattern=_HEX64)


@dataclass(frozen=True)
class Problem:
    """What is wrong, and at which entry (``seq`` = position in the file, 0-based)."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify`: ``ok`` iff no problem. ``problems`` come in order of cause (:func:`by_cause`):
    damage to the log itself, then an interrupted operation (which explains the file and ledger differences it
    leaves), then the rest by entry; ``first_bad`` is the first, the one a refusal quotes."""

    path: Path
    entries: int
    head: str | None
    merkle_root: str | None
    problems: tuple[Problem, ...]
    artifacts_checked: int
    missing_artifacts: tuple[str, ...] = ()  # logged as present, not on disk (not counted as a problem)
    notes: tuple[str, ...] = ()  # what passes but a reader should know: closed integrity failures, leftover files

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def __str__(self) -> str:
        notes = [f"  note: {n}" for n in self.notes]
        if self.missing_artifacts:  # not tampering (the log keeps their digests), but named: what needs them refuses
            listed = ", ".join(self.missing_artifacts[:5]) + (
                f" and {len(self.missing_artifacts) - 5} more" if len(self.missing_artifacts) > 5 else "")
            notes.append(f"  note: not in the workspace, though the log holds them as current (moved away or "
                         f"archived?): {listed}; whatever reads them refuses until they are back, and so does a "
                         "deletion request while a component or model is away (a missing cached Gram file is "
                         "logged as removed instead)")
        if self.ok:
            gone = f", {len(self.missing_artifacts)} missing" if self.missing_artifacts else ""
            return "\n".join([f"{self.path}: {self.entries} entries, chain valid, {self.artifacts_checked} artifacts "
                              f"match{gone}", *notes])
        lines = [f"{self.path}: {len(self.problems)} problem(s) in {self.entries} entries"]
        return "\n".join(lines + [f"  {p}" for p in self.problems] + notes)


def by_cause(log: Sequence[Problem], others: Sequence[Problem]) -> tuple[Problem, ...]:
    """``log``'s problems (the log's own damage: a broken chain, a missing head) first, then an interrupted
    operation's, then the rest by entry: a deleted line or a killed operation otherwise came last, after the
    digest mismatches it causes (a review saw a refusal quote a follow-on mismatch and send the operator to the
    wrong file)."""
    interrupted = [p for p in others if INTERRUPTED_REASON in p.reason]
    rest = sorted((p for p in others if INTERRUPTED_REASON not in p.reason), key=lambda p: p.seq)
    return (*log, *interrupted, *rest)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII, NaN/inf refused: one byte string per JSON value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``entry`` without its ``hash`` field."""
    return hashlib.sha256(canonical_json({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


# -- reading and checking -------------------------------------------------------------------

def _parse(data: bytes) -> tuple[list[AuditEntry], Problem | None]:
    """The valid prefix of the chain in ``data``, and the first problem after it (if any)."""
    entries: list[AuditEntry] = []
    if not data:
        return entries, None
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    prev = GENESIS
    for seq, line in enumerate(complete):
        problem = _check_line(line, seq, prev)
        if isinstance(problem, Problem):
            return entries, problem
        entries.append(problem)
        prev = problem.hash
    if tail:
        return entries, Problem(len(complete), "incomplete last line (no newline): an interrupted or altered write")
    return entries, None


def _check_line(line: bytes, seq: int, prev: str) -> AuditEntry | Problem:
    try:
        raw = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return Problem(seq, "not a valid ASCII JSON line")
    if not isinstance(raw, dict):
        return Problem(seq, "not a JSON object")
    try:
        if canonical_json(raw) != line:
            return Problem(seq, "not in canonical form (altered)")
    except ValueError:
        return Problem(seq, "holds a value canonical JSON refuses (NaN or infinity)")
    try:
        entry = AuditEntry.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "entry"
        return Problem(seq, f"does not match the entry schema at {where}: {first['msg']}")
    if entry_hash(raw) != entry.hash:
        return Problem(seq, "hash does not match the entry's content (entry modified)")
    if entry.seq != seq:
        return Problem(seq, f"seq is {entry.seq}, expected {seq} (entries deleted, inserted or reordered)")
    if entry.prev_hash != prev:
        return Problem(seq, "prev_hash does not match the previous entry's hash (chain broken)")
    return entry


def _safe_path(root: Path, rel: str) -> Path | None:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return root / Path(*p.parts)


def _logged_artifacts(entries: Sequence[AuditEntry]) -> tuple[dict[str, tuple[str | None, int]], list[Problem]]:
    """Outputs replayed to each path's current digest: path -> (sha256, or None where removed; the entry that set it),
    and every input whose digest differs from the one its path had then."""
    expected: dict[str, tuple[str | None, int]] = {}
    problems: list[Problem] = []
    for entry in vouching(entries):
        for art in entry.inputs:
            if art.path is not None and art.path in expected and art.sha256 != expected[art.path][0]:
                problems.append(Problem(entry.seq, f"input {art.path} has sha256 {str(art.sha256)[:12]}, but entry "
                                                   f"{expected[art.path][1]} logged {str(expected[art.path][0])[:12]}"))
        for art in entry.outputs:
            if art.path is not None:
                expected[art.path] = (art.sha256, entry.seq)
    return expected, problems


def _away(path: Path | None, rel: str, sha: str | None) -> bool:
    """Whether the log holds ``rel`` (at ``path``, from :func:`_safe_path`) as current, it is not on disk, and it
    may be away (moved or archived): not a file that must stay, nor a path outside the workspace (None)."""
    return (sha is not None and path is not None and not path.is_file()
            and not (rel in MUST_STAY or rel.startswith(MUST_STAY_FOLDERS)))


def missing_artifacts(workspace_or_path: "str | os.PathLike[str] | _HasAuditLog") -> list[str]:
    """The files the log holds as current that are away from the workspace (moved or archived), as :func:`verify`
    lists them, found without checking anything else: no file is hashed and no ledger read."""
    path = _log_path(workspace_or_path)
    entries, _ = _parse(_read_locked(path))
    expected, _ = _logged_artifacts(entries)
    return [rel for rel, (sha, _) in sorted(expected.items()) if _away(_safe_path(path.parent, rel), rel, sha)]


def _check_artifacts(root: Path, entries: Sequence[AuditEntry]) -> tuple[list[Problem], int, list[str]]:
    """Replay outputs to the expected current digest of each path; compare inputs and files on disk.

    Returns (problems, files checked, paths logged as present but missing)."""
    expected, problems = _logged_artifacts(entries)
    checked, missing = 0, []
    for rel, (sha, seq) in sorted(expected.items()):
        path = _safe_path(root, rel)
        if path is None:
            problems.append(Problem(seq, f"artifact path {rel!r} leaves the workspace"))
            continue
        if path.is_symlink():  # the tool writes files, never links: the bytes checked would live elsewhere
            problems.append(Problem(seq, f"artifact {rel} is a symbolic link, not a file (made by hand: no operation "
                                         "makes one); put the file itself there"))
            continue
        if not path.is_file():
            if _away(path, rel, sha):
                missing.append(rel)  # reported, not a problem: moved away or archived
            elif sha is not None:
                problems.append(Problem(seq, f"artifact {rel} is missing: it must stay (deleted records or "
                                             "certificates depend on it)"))
            continue
        checked += 1
        if sha is None:
            problems.append(Problem(seq, f"artifact {rel} was logged as removed but is on disk"))
        elif sha256_file(path) != sha:
            problems.append(Problem(seq, f"artifact {rel}: sha256 on disk differs from the logged one "
                                         "(replaced or modified)"))
    return problems, checked, missing


#: Files of a workspace that are not artifacts (the log itself, the ledger, the key) and folders of
#: derived output (reports, checked to be reports only) that no operation reads: every other file must be
#: accounted for by the log.
NOT_ARTIFACTS = frozenset({"audit.log", "ledger.sqlite", "ledger.sqlite-journal", "manifest.key"})
DERIVED_FOLDERS = frozenset({"reports"})
#: Where a change stages its files and intent (dp_tangent.workspace.commit); checked on its own.
PENDING_FOLDER = ".pending"
#: What an operation stages (dp_tangent.workspace.commit): ``.pending/ID/`` holding its intent, the ledger's state once
#: its operations ran, the new files' bytes by sha256, and the temporary files of an atomic write killed half-way
_STAGED = re.compile(r"\.pending/[0-9a-f]{32}/(intent\.json|ledger-applied\.json|[0-9a-f]{64}"
                     r"|\.(intent|ledger-applied)\.json\.[^/]+\.tmp)")
#: Folders that hold files only, never folders (a folder named like a component would be listed as one).
ARTIFACT_FOLDERS = ("components", "models", "certificates")
#: Logged files whose disappearance is tampering, not archiving.
MUST_STAY = frozenset({"workspace.json", "tombstones.json", "data-sources.json"})
MUST_STAY_FOLDERS = ("certificates/",)


INTEGRITY_FAILURE_REASON = "the workspace did not verify when an operation began"
INTERRUPTED_REASON = "operation(s) were interrupted and are not finished"
KILLED_WRITE_REASON = "is the temporary file of a write killed half-way"
#: Which commands finish an interrupted operation (review 107: "any dp-tangent command" said so of the checks too).
FINISHED_BY = ("a command that is not a check finishes each (e.g. `dp-tangent requests list`; the audit and "
               "certificate checks, budget show and data list leave them as they are)")
#: The operations that record what was found (an ``integrity_failure``) or close such a record: they vouch for no
#: file or ledger state, so no check compares the workspace with what they recorded.
RECORDS_OF_FAILURES = frozenset({"integrity_failure", "integrity_resolved"})


def vouching(entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    """The entries whose outputs and ledger digests are states the tool wrote, or an operator accepted
    (``audit resolve --accept-ledger``: the ledger as it then was)."""
    return [e for e in entries if e.operation not in RECORDS_OF_FAILURES or _accepted_ledger(e)]


def _accepted_ledger(entry: AuditEntry) -> bool:
    return entry.operation == "integrity_resolved" and bool(entry.parameters.get("accepted_ledger"))


def written_digests(entries: Sequence[AuditEntry], wanted: Callable[[str], bool]) -> dict[str, str | None]:
    """Each ``wanted`` path's sha256 as the tool last wrote it (None: logged as removed). An ``integrity_failure``
    entry's snapshot of the files as it found them does not count: it records an edit, it does not vouch for it."""
    return {a.path: a.sha256 for e in vouching(entries) for a in e.outputs if a.path is not None and wanted(a.path)}


def unresolved_failures(entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    """The ``integrity_failure`` entries that no later ``integrity_resolved`` entry closed."""
    closed = {int(seq) for e in entries if e.operation == "integrity_resolved" for seq in e.parameters["resolves"]}
    return [e for e in entries if e.operation == "integrity_failure" and e.seq not in closed]


def resolvable_failures(entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    """The unresolved failures that an operator may close once the workspace verifies again: those after the last
    entry that wrote anything (a failure that later operations built on stays open for ever: their states include
    what it recorded, so that no check could tell it was undone)."""
    last_write = max((e.seq for e in vouching(entries) if not _accepted_ledger(e)), default=-1)
    return [e for e in unresolved_failures(entries) if e.seq > last_write]


def _resolutions(entries: Sequence[AuditEntry]) -> tuple[str, ...]:
    """Each operator's closing of integrity failures, as ``audit verify`` prints it."""
    return tuple(f"entry {e.seq}: {e.operator} closed the integrity failure(s) of entr"
                 f"{'y' if len(e.parameters['resolves']) == 1 else 'ies'} "
                 f"{', '.join(map(str, e.parameters['resolves']))}"
                 f"{', accepting the ledger as it was' if _accepted_ledger(e) else ''}: {e.parameters.get('reason')}"
                 for e in entries if e.operation == "integrity_resolved")


def _check_integrity_failures(entries: Sequence[AuditEntry]) -> list[Problem]:
    """Every recorded integrity failure stays a problem until an operator closes it (``audit resolve``), which the
    tool allows only when nothing was written since and the workspace is again the state the log vouches for."""
    return [Problem(e.seq, f"{INTEGRITY_FAILURE_REASON}: {e.parameters.get('count')} problem(s), first: "
                           f"{(e.parameters.get('problems') or ['?'])[0]}")
            for e in unresolved_failures(entries)]


def integrity_snapshot(root: Path, entries: Sequence[AuditEntry]) -> list[Artifact]:
    """The workspace's files as they are now (logged ones that are gone, as removed): what an
    ``integrity_failure`` entry records, so that later checks compare against the present."""
    present = {p.relative_to(root).as_posix(): p for p in _tree(root) if p.is_file()}
    logged = {a.path for e in entries for a in e.outputs if a.path is not None}
    out = []
    for rel in sorted(set(present) | logged):
        if rel in NOT_ARTIFACTS or rel.split("/", 1)[0] in DERIVED_FOLDERS | {PENDING_FOLDER}:
            continue
        path = present.get(rel)
        out.append(Artifact(rel, sha256_file(path) if path is not None else None, rel))
    return out


REPORT_SUFFIXES = (".md", ".html", ".json")


def is_report(path: Path) -> bool:
    """A regular file with a report's suffix that is UTF-8 text (a model's or component's bytes are not)."""
    if path.is_symlink() or path.suffix not in REPORT_SUFFIXES:
        return False
    try:
        path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return True


def _is_interrupted_report(path: Path) -> bool:
    """The temporary file of a report's atomic write killed half-way: a report's name, and text that is UTF-8 up to
    where the write stopped (which may be inside a character)."""
    target = written_by_killed_write(path.name)
    if path.is_symlink() or target is None or Path(target).suffix not in REPORT_SUFFIXES:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(path.read_bytes(), final=False)
    except FileNotFoundError:
        raise  # renamed into place while we looked: the caller skips it
    except (OSError, UnicodeDecodeError):
        return False
    return True


def _tree(root: Path, recurse: bool = True) -> Iterator[Path]:
    """Every path under ``root`` (links not followed), none where a folder is gone before it is listed: a change
    finishing while this looks removes its staging (pathlib's glob raised then, and ``audit verify`` stopped)."""
    for folder, folders, files in os.walk(root):
        yield from (Path(folder) / name for name in (*folders, *files))
        if not recurse:
            return


def _logged_under(present: Mapping[str, str | None], folder: str) -> int:
    """How many files the log holds as present under ``folder``."""
    return sum(1 for logged, sha in present.items() if sha is not None and logged.startswith(folder + "/"))


def _check_unaccounted(root: Path, entries: Sequence[AuditEntry]) -> tuple[list[Problem], list[str]]:
    """Files in the workspace that no entry of the log wrote (or that it logged as removed); and notes on what
    passes but is left over (an interrupted report's temporary file)."""
    present: dict[str, str | None] = {}
    for entry in vouching(entries):
        for art in entry.outputs:
            if art.path is not None:
                present[art.path] = art.sha256
    problems, notes = [], []
    for path in sorted(p for p in _tree(root) if p.is_file() or p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if rel.split("/", 1)[0] == PENDING_FOLDER:
            if not _STAGED.fullmatch(rel):
                problems.append(Problem(len(entries), f"file {rel} is not part of an interrupted operation's staging "
                                                      "(planted there: no operation would move or check it)"))
            elif not (root / PENDING_FOLDER / rel.split("/")[1] / "intent.json").is_file():
                problems.append(Problem(len(entries), f"file {rel} is staged by no operation (its folder has no "
                                                      "intent: the next command discards the staging of one killed "
                                                      "before its commit point; anything else was planted)"))
            continue
        if rel.split("/", 1)[0] in DERIVED_FOLDERS:
            try:
                interrupted = _is_interrupted_report(path)
            except FileNotFoundError:  # a report being written now: its rename completed while we looked
                continue
            if interrupted:
                notes.append(f"{rel} is what a report's write killed half-way left; remove it when you like")
            elif not is_report(path):
                problems.append(Problem(len(entries), f"file {rel} is not a report (a .md, .html or .json text that "
                                                      "`dp-tangent report` writes): nothing but reports may be kept "
                                                      "there unchecked"))
            continue
        if rel in NOT_ARTIFACTS:
            continue
        if path.is_symlink() and path.is_dir():  # reviews 95, 101: a folder, or a link planted where a file goes
            under = _logged_under(present, rel)
            read = f"; the {under} logged file(s) under it are read from elsewhere" if under else ""
            own = under or rel in ARTIFACT_FOLDERS
            problems.append(Problem(len(entries), f"{rel} is a symbolic link to a folder (made by hand: the tool "
                                                  f"makes folders and files, never links){read}: "
                                                  + ("put the folder itself there" if own else "remove it")))
        elif present.get(rel) is None and written_by_killed_write(path.name) is not None:
            problems.append(Problem(len(entries), f"file {rel} {KILLED_WRITE_REASON}: the next dp-tangent command "
                                                  "on the workspace removes it"))
        elif present.get(rel) is None:
            problems.append(Problem(len(entries), f"file {rel} is not accounted for by the log (added or restored "
                                                  "behind the tool's back)"))
    for folder in ARTIFACT_FOLDERS:
        for path in sorted(_tree(root / folder, recurse=False)):
            if path.is_dir() and not path.is_symlink():
                problems.append(Problem(len(entries), f"{folder}/{path.name} is a folder, not a file (made by hand: "
                                                      "no operation makes one there)"))
    staged = [p for p in _tree(root / PENDING_FOLDER, recurse=False) if (p / "intent.json").exists()]
    for folder in (p for p in staged if _STAGED.fullmatch(f"{PENDING_FOLDER}/{p.name}/intent.json")):
        if not _is_intent(folder):  # every command refuses it: no command finishes it (review 103)
            problems.append(Problem(len(entries), f"file {PENDING_FOLDER}/{folder.name}/intent.json is not an intent "
                                                  "this tool wrote (planted there, or damaged): every command "
                                                  f"refuses it; remove {PENDING_FOLDER}/{folder.name}"))
    pending = sorted(p.name for p in staged if _is_intent(p))
    if pending:
        problems.append(Problem(len(entries), f"{len(pending)} {INTERRUPTED_REASON}: {FINISHED_BY}"))
    return problems, notes


def _is_intent(folder: Path) -> bool:
    """Whether ``folder`` holds an intent as an operation writes one (its fields, and its folder's name as its commit
    id); ``dp_tangent.workspace.commit`` checks the rest (its paths, its ledger operations) before finishing it."""
    try:
        intent = json.loads((folder / "intent.json").read_text())
        return (isinstance(intent, dict) and intent.get("commit") == folder.name
                and all(isinstance(intent.get(k), list) for k in ("writes", "removals", "ledger")))
    except (OSError, ValueError):
        return False


def _check_ledger(entries: Sequence[AuditEntry], current: Mapping[str, str],
                  tables: Sequence[str] | None = None) -> list[Problem]:
    """The ledger as the log last saw it, table by table (``tables`` only, if given), against the ledger now."""
    last = next((e for e in reversed(vouching(entries)) if e.ledger is not None), None)
    if last is None:
        return []
    names = sorted(set(last.ledger) | set(current)) if tables is None else sorted(tables)
    return [Problem(last.seq, f"ledger table {table!r} differs from the state this entry recorded: rows were "
                              "added, removed or edited outside dp-tangent (or by an operation that did not finish)")
            for table in names if last.ledger.get(table) != current.get(table)]


class _HasAuditLog(Protocol):
    audit_log_path: Path


def _log_path(target: "str | os.PathLike[str] | _HasAuditLog") -> Path:
    if hasattr(target, "audit_log_path"):
        return Path(target.audit_log_path)  # type: ignore[union-attr]
    path = Path(target)  # type: ignore[arg-type]
    return path / "audit.log" if path.is_dir() else path


def verify(workspace_or_path: "str | os.PathLike[str] | _HasAuditLog", check_artifacts: bool = True,
           expected_head: str | None = None, checkpoint: Checkpoint | None = None,
           ledger_state: Mapping[str, str] | None = None, workspace: bool = False,
           ledger_tables: Sequence[str] | None = None) -> VerifyReport:
    """Recompute the chain (and, if asked, every artifact's sha256); report every problem found.

    ``expected_head``: an entry hash recorded earlier outside the log; missing means the log was
    truncated or rewritten since. ``checkpoint``: a checkpoint kept outside the workspace; the log
    must extend it (RFC 9162 consistency proof), which catches truncation and rollback.
    ``ledger_state``: the ledger's current table digests; each must equal what the last entry that
    recorded them says (a row deleted, added or edited outside an operation breaks that); ``ledger_tables``: only
    these tables are compared (``ledger_state`` holds their digests).
    ``workspace``: the log's folder is a workspace; every file in it must be accounted for by the log
    (apart from the log, the ledger, the key and derived reports).
    """
    path = _log_path(workspace_or_path)
    if not path.is_file():
        raise AuditLogError(f"no audit log at {path}")
    entries, problem = _parse(_read_locked(path))
    log = [problem] if problem else []
    emptied = not entries and not problem and path.stat().st_size == 0  # (a log is made with its first entry)
    if emptied:  # review 103: it blamed every file of the workspace as unaccounted for
        log.append(Problem(0, "the audit log is empty, and a workspace's log starts with its creation: its entries "
                              "were removed; restore it from a backup"))
    problems: list[Problem] = []
    checked, missing = 0, []
    if check_artifacts:
        artifact_problems, checked, missing = _check_artifacts(path.parent, entries)
        problems += artifact_problems
    hashes = [e.hash for e in entries]
    if expected_head is not None and expected_head not in hashes:
        log.append(Problem(len(entries), f"the expected head {expected_head[:12]} is not in the log (truncated or "
                                         "rewritten)"))
    problems += _check_integrity_failures(entries)
    if ledger_state is not None:
        problems += _check_ledger(entries, ledger_state, ledger_tables)
    notes: list[str] = []
    if workspace and not problem and not emptied:
        unaccounted, notes = _check_unaccounted(path.parent, entries)
        problems += unaccounted
        problems += [Problem(len(entries), f"{name} is a symbolic link, not a file (made by hand: the tool keeps "
                                           "it in the workspace); put the file itself there")
                     for name in sorted(NOT_ARTIFACTS - {"manifest.key"}) if (path.parent / name).is_symlink()]
        # (the key may live on a secrets mount: a replaced one is caught by its id, which workspace.json holds)
    if checkpoint is not None:
        why = extends(hashes, checkpoint)
        if why:
            log.append(Problem(len(entries), why))
    head = hashes[-1] if hashes else None
    return VerifyReport(path, len(entries), head, merkle_root(hashes), by_cause(log, problems), checked,
                        tuple(missing), (*_resolutions(entries), *notes))


class AuditLog:
    """The audit log file at ``path`` (created on first append)."""

    def __init__(self, path: str | os.PathLike[str],
                 ledger_state: Callable[[], Mapping[str, str]] | None = None, workspace: bool = False) -> None:
        """``ledger_state``: the digests of a ledger's tables, recorded in every entry appended and
        checked by :meth:`verify` (binds the ledger to the log). ``workspace``: the log's folder is a
        workspace, whose every file :meth:`verify` accounts for."""
        self.path = Path(path)
        self.ledger_state = ledger_state
        self.workspace = workspace

    def entries(self) -> list[AuditEntry]:
        """All entries; raises :class:`AuditChainError` if the chain is broken anywhere."""
        entries, problem = self.entries_before_damage()
        if problem:
            raise AuditChainError(f"{self.path}: {problem}")
        return entries

    def entries_before_damage(self) -> tuple[list[AuditEntry], Problem | None]:
        """The entries of the chain up to its first problem, and that problem (None: the whole chain holds)."""
        if not self.path.exists():
            return [], None
        return _parse(_read_locked(self.path))

    def append(
        self,
        operation: str,
        *,
        operator: str | None = None,
        inputs: Iterable[Artifact] = (),
        outputs: Iterable[Artifact] = (),
        parameters: Mapping[str, Any] | None = None,
        ledger_state: Mapping[str, str] | None = None,
    ) -> AuditEntry:
        """Append one entry under an exclusive lock, after re-checking the whole chain; fsyncs.

        ``ledger_state``: the ledger's table digests the entry records, as the caller computed them for the state its
        operation left (default: read afresh through the log's ``ledger_state``)."""
        if operation not in OPERATIONS:
            raise AuditLogError(f"unknown operation {operation!r}; one of: {', '.join(sorted(OPERATIONS))}")
        body: dict[str, Any] = {
            "operator": operator or getpass.getuser(),
            "operation": operation,
            "inputs": [_artifact_json(a) for a in inputs],
            "outputs": [_artifact_json(a) for a in outputs],
            "parameters": _json_object(parameters),
        }
        if self.ledger_state is not None:
            body["ledger"] = dict(self.ledger_state() if ledger_state is None else ledger_state)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries, problem = _parse(_read_all(fd))
            if problem:
                raise AuditChainError(f"refusing to append to a broken audit log {self.path}: {problem}")
            raw = {"seq": len(entries), "time": utc_now(), **body,
                   "prev_hash": entries[-1].hash if entries else GENESIS}
            raw["hash"] = entry_hash(raw)
            line = canonical_json(raw) + b"\n"
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, line) != len(line):
                    raise AuditLogError(f"short write to {self.path} (a full disk or a file-size limit?); the entry "
                                        "was not logged and the log is as it was")
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # no torn last line: the log stays what it was before this entry
                os.fsync(fd)
                raise
        finally:
            os.close(fd)  # closing releases the lock
        if created:
            fsync_dir(self.path.parent)
        return AuditEntry.model_validate(raw)

    def verify(self, check_artifacts: bool = True, expected_head: str | None = None,
               checkpoint: Checkpoint | None = None) -> VerifyReport:
        state = self.ledger_state() if self.ledger_state is not None else None
        return verify(self.path, check_artifacts, expected_head, checkpoint, state, self.workspace)


def _read_locked(path: Path) -> bytes:
    """The whole file under a shared lock: never half of an append in progress."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return _read_all(fd)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)



def _artifact_json(artifact: Artifact) -> dict[str, Any]:
    if not isinstance(artifact, Artifact):
        raise AuditLogError(f"inputs/outputs must be Artifact values, got {type(artifact).__name__}")
    record = ArtifactRecord(name=artifact.name, path=artifact.path, sha256=artifact.sha256)
    if record.path is not None and _safe_path(Path("."), record.path) is None:
        raise AuditLogError(f"artifact path {record.path!r} must be relative to the workspace, without '..'")
    return record.model_dump()


def _json_object(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    if parameters is None:
        return {}
    try:
        value = json.loads(canonical_json(dict(parameters)))
    except (TypeError, ValueError) as err:
        raise AuditLogError(f"parameters must be JSON-serialisable without NaN/inf: {err}") from None
    return value
