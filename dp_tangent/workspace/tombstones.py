"""Tombstones (``tombstones.json``): the commitments of every record a deletion request removed.

A tombstoned record is never trained again in this workspace: every later training run (a new
recipe, a retry, a retraining after another deletion) drops it from its shard or is refused.
Only keyed commitments HMAC-SHA256(workspace key, record id) are stored, as in manifests, each with the commitment
of its id's canonical spelling (:mod:`.id_spellings`), so that the record is not trained again under another one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..io import atomic_write_bytes
from .names import WorkspaceError

FILE = "tombstones.json"
FORMAT = "dp-tangent-tombstones/1"


class Tombstone(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    request_id: str
    deleted_at: str


class TombstoneFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["dp-tangent-tombstones/1"] = FORMAT
    records: dict[str, Tombstone] = {}
    # commitment -> the commitment of its id's canonical spelling, for every record tombstoned since these were kept
    canonical: dict[str, str] = {}


@dataclass(frozen=True)
class Tombstones:
    """The tombstone list of the workspace at ``root``; :meth:`add` rewrites it atomically."""

    root: Path

    @property
    def path(self) -> Path:
        return self.root / FILE

    def read(self) -> dict[str, Tombstone]:
        """Commitment -> the request that deleted it (empty when no record was ever deleted). A list the
        audit log says was written but that is gone, or holds other bytes than the log's last record of it, is an
        error: deleted records would come back (training and deletions refuse to run on it)."""
        return dict(self._file().records)

    def canonical(self) -> dict[str, str | None]:
        """Each tombstoned commitment -> the commitment of its id's canonical spelling (None: tombstoned before
        these were kept)."""
        file = self._file()
        return {c: file.canonical.get(c) for c in file.records}

    def _file(self) -> TombstoneFile:
        logged = self._logged_sha256()
        if not self.path.exists():
            if logged is not None:
                raise WorkspaceError(f"{self.path} is missing but the audit log recorded it: deleted records would "
                                     "be trained again; restore it from a backup")
            return TombstoneFile()
        data = self.path.read_bytes()
        if logged is not None and hashlib.sha256(data).hexdigest() != logged:
            raise WorkspaceError(f"{self.path} is not the list the audit log recorded (edited behind the tool's back): "
                                 "deleted records could be trained again; restore it from a backup (`dp-tangent audit "
                                 "verify` names the difference)")
        try:
            return TombstoneFile.model_validate_json(data)
        except (ValidationError, ValueError) as err:
            raise WorkspaceError(f"{self.path} is not a valid tombstone list ({type(err).__name__}); restore it "
                                 "from a backup: deleted records must stay deleted") from err

    def _logged_sha256(self) -> str | None:
        """The sha256 the workspace's audit log last recorded for the list (None: never written through it)."""
        log = self.root / "audit.log"
        if not log.is_file() or f'"path":"{FILE}"'.encode() not in log.read_bytes():
            return None
        from .audit_log import AuditLog, written_digests

        return written_digests(AuditLog(log).entries(), lambda path: path == FILE).get(FILE)

    def added(self, commitments: Iterable[str], *, request_id: str, deleted_at: str,
              canonical: Mapping[str, str] | None = None) -> tuple[bytes | None, list[str]]:
        """The list's new content with ``commitments`` tombstoned (those already there keep their first
        request), and the new ones; written by the caller's change (:mod:`.commit`), and None if it holds all of
        them already as given. ``canonical``: commitment -> its canonical spelling's, for every one of them
        (:func:`~.id_spellings.canonical_commitments`); also kept for one tombstoned before these were kept."""
        file = self._file()
        current, spelled = dict(file.records), dict(file.canonical)
        commitments = set(commitments)
        new = sorted(commitments - set(current))
        current.update({c: Tombstone(request_id=request_id, deleted_at=deleted_at) for c in new})
        gained = {c: canonical[c] for c in commitments if canonical is not None and c in canonical
                  and c not in spelled}
        if not new and not gained:
            return None, []
        spelled.update(gained)
        text = TombstoneFile(records=dict(sorted(current.items())),
                             canonical=dict(sorted(spelled.items()))).model_dump_json(indent=2) + "\n"
        return text.encode(), new

    def add(self, commitments: Iterable[str], *, request_id: str, deleted_at: str,
            canonical: Mapping[str, str] | None = None) -> list[str]:
        """Tombstone ``commitments`` at once, unlogged (a workspace's deletion does it through a logged change)."""
        data, new = self.added(commitments, request_id=request_id, deleted_at=deleted_at, canonical=canonical)
        if data is not None:
            atomic_write_bytes(self.path, data)
        return new

    def requests_for(self, commitments: Iterable[str]) -> dict[str, str]:
        """For each tombstoned commitment among ``commitments``: the request that deleted it."""
        current = self.read()
        return {c: current[c].request_id for c in commitments if c in current}
