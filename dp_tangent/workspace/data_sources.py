"""The workspace's registry of data sources (``data-sources.json``): how each is re-read for retraining.

Raw records stay with the data owner; a workspace only records *how* to load a data source
(``data-sources.json``). The embedded default is scikit-learn's digits with a fixed split, so
``dp-tangent forget --retrain`` can rebuild exactly the shards the components were trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..components.component import ComponentMetadata
from ..data.records import RecordSet
from ..data.sources import DigitsSource
from ..errors import DPTangentError
from ..io import atomic_write_text

if TYPE_CHECKING:
    from .store import Workspace

FILE = "data-sources.json"
PUBLIC_SPLIT = "public"


class Sources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: dict[str, DigitsSource] = {}


def _read(ws: Workspace) -> Sources:
    path = ws.root / FILE
    if not path.exists():
        return Sources()
    try:
        return Sources.model_validate_json(path.read_text())
    except ValidationError as err:
        raise DPTangentError(f"{path} is not a valid data-source registry ({err.error_count()} errors)") from err


def register(ws: Workspace, name: str, source: DigitsSource) -> None:
    sources = _read(ws)
    sources.sources[name] = source
    atomic_write_text(ws.root / FILE, sources.model_dump_json(indent=2) + "\n")


def shard_records_for(ws: Workspace) -> Callable[[ComponentMetadata], RecordSet]:
    """A function from a component's metadata to the records of its shard (for ``forget(retrain=True)``):
    ``shard-<k>``, the ``public`` split, or (any other name) the union of the private shards."""
    sources = _read(ws)
    cache: dict[str, tuple[list[RecordSet], RecordSet | None]] = {}

    def records(meta: ComponentMetadata) -> RecordSet:
        source = sources.sources.get(meta.data_source)
        if source is None:
            raise DPTangentError(f"no loader registered for data source {meta.data_source!r}; retraining needs the "
                                 f"shard's records (run forget without --retrain to drop the component)")
        shards, public = cache.setdefault(meta.data_source, source.split())
        prefix, _, index = meta.shard.rpartition("-")
        if prefix == "shard" and index.isdigit() and int(index) < len(shards):
            return shards[int(index)]
        if meta.shard == PUBLIC_SPLIT and public is not None:
            return public
        return RecordSet(torch.cat([s.inputs for s in shards]), torch.cat([s.targets for s in shards]),
                         tuple(r for s in shards for r in s.record_ids))

    return records
