"""Where a workspace's training data can be re-read from, for retraining after a deletion.

Raw records stay with the data owner; a workspace only records *how* to load a data source
(``data-sources.json``). The embedded default is scikit-learn's digits with a fixed split, so
``dp-tangent forget --retrain`` can rebuild exactly the shards the components were trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from .component import ComponentMetadata
from .data import RecordSet, load_digits, split_shards
from .errors import DPTangentError
from .io import atomic_write_text
from .workspace import Workspace

FILE = "data-sources.json"


class DigitsSource(BaseModel):
    """scikit-learn digits split into a test set and ``shards`` shards named ``shard-<k>``; any other
    shard name (e.g. a reference run) is the union of all shards."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    loader: str = "sklearn_digits"
    image_size: int
    shards: int
    test_fraction: float
    seed: int
    max_records: int | None = None
    by: str = "random"

    def shard_records(self) -> list[RecordSet]:
        digits = load_digits(image_size=self.image_size)
        if self.max_records:
            digits = digits.subset(range(min(self.max_records, len(digits))))
        return split_shards(digits, shards=self.shards, test_fraction=self.test_fraction, seed=self.seed,
                            by=self.by)[1]


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
    """A function from a component's metadata to the records of its shard (for ``forget(retrain=True)``)."""
    sources = _read(ws)
    cache: dict[str, list[RecordSet]] = {}

    def records(meta: ComponentMetadata) -> RecordSet:
        source = sources.sources.get(meta.data_source)
        if source is None:
            raise DPTangentError(f"no loader registered for data source {meta.data_source!r}; retraining needs the "
                                 f"shard's records (run forget without --retrain to drop the component)")
        shards = cache.setdefault(meta.data_source, source.shard_records())
        prefix, _, index = meta.shard.rpartition("-")
        if prefix == "shard" and index.isdigit() and int(index) < len(shards):
            return shards[int(index)]
        return RecordSet(torch.cat([s.inputs for s in shards]), torch.cat([s.targets for s in shards]),
                         tuple(r for s in shards for r in s.record_ids))

    return records
