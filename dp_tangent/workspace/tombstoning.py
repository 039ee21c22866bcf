"""Tombstoning: a deletion request's records put on the workspace's tombstone list, never trained again here.

Done when a request is received (:func:`~dp_tangent.workspace.request_register.receive`) and again, a no-op then,
first thing when it is served (:func:`~dp_tangent.workspace.forget.forget`: a request received by an older version
was not tombstoned on receipt)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from . import data_sources, gram_cache
from .audit_log import missing_artifacts
from .commit import Change, FileRemoval, FileWrite, apply
from .deletion_requests import DeletionRequest, resolve_now
from .id_spellings import canonical_commitments
from .tombstones import FILE as TOMBSTONES_FILE
from .tombstones import Tombstones

if TYPE_CHECKING:
    from .store import Workspace


def missing_cache_files(missing: Sequence[str]) -> list[FileRemoval]:
    """Cached Gram files the log holds as current that are not in the workspace, as removals for the tombstoning to
    log: a cache is derived from the records and rebuilt when needed, so a missing one does not stop a deletion, but
    the log must not go on holding it as current (a copy kept elsewhere is the operator's, outside the certificate)."""
    prefix = gram_cache.CACHE_DIR + "/"
    return [FileRemoval(p, gram_cache.LABEL) for p in missing if p.startswith(prefix)]


def tombstone(ws: Workspace, request: DeletionRequest, *, operator: str, now: datetime | None = None) -> list[str]:
    """Put ``request``'s records on the tombstone list (their commitments, each with its id's canonical spelling's),
    in one logged change that also drops them from the data-source registry and their cached NTK Grams (the deletion
    change drops any left), so that no later run trains them, under any spelling of their ids; nothing is written
    when that is done already. Returns the artifacts the audit log finds missing (read once here: the tombstoning
    removes no component or model)."""
    key, request_id = ws.manifest_key(), request.request_id
    doomed = set(request.commitments(key))
    data, new = Tombstones(ws.root).added(doomed, request_id=request_id, deleted_at=resolve_now(now).isoformat(),
                                          canonical=canonical_commitments(request.record_ids, key, every=True))
    registry = data_sources.without_records(ws, doomed)
    missing = missing_artifacts(ws)  # the operation verified the workspace when it began; nothing hashed again here
    gone = missing_cache_files(missing)
    if data is not None or registry is not None or gone:
        cache_writes, cache_removals = gram_cache.without_records(ws, doomed)
        cache_removals = [*cache_removals, *gone]
        registry_write = [] if registry is None else [FileWrite(data_sources.FILE, registry, "data-source registry")]
        tombstones_write = [] if data is None else [FileWrite(TOMBSTONES_FILE, data, "tombstones")]
        apply(ws, Change("tombstoned", operator=operator,
                         writes=[*tombstones_write, *cache_writes, *registry_write],
                         removals=cache_removals,
                         parameters={"request_id": request_id, "record_commitments": sorted(doomed),
                                     "gram_cache_files": {"rewritten": len(cache_writes),
                                                          "removed": len(cache_removals)}}))
    return missing
