"""Replacements a deletion request trained before it stopped (a kill, a shard that failed): what they are and
which are on disk. :mod:`.forget` reuses or removes them; ``compose`` and ``train --shard`` leave them to their
request. Apart from :mod:`.forget` so that the store, which refuses to compose one, need not import it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .request_register import open_request_ids

if TYPE_CHECKING:
    from .store import Workspace


@dataclass(frozen=True)
class Unfinished:
    """A replacement that retraining for a still-open request trained before that request stopped (a kill, a shard
    that failed): in no model yet."""

    request_id: str
    replaces: str
    ledger_reservation: str


def unfinished_replacements(ws: Workspace) -> dict[str, Unfinished]:
    """Every unfinished replacement on disk, by name (see :class:`Unfinished`)."""
    still_open = open_request_ids(ws)
    present = set(ws.list_components())
    composed = {n for m in ws.list_models() for n in ws.model_record(m).component_names}
    return {p["component"]: Unfinished(p["request_id"], p["replaces"], p["ledger_reservation"])
            for p in (entry.parameters for entry in ws.audit.entries() if entry.operation == "retraining")
            if p.get("status") == "completed" and p.get("request_id") in still_open
            and p.get("component") in present and p.get("component") not in composed}
