"""Records with stable ids: inputs, integer labels and one unique id per record.

A :class:`RecordSet` is the unit a data owner trains on; a record's id is what a deletion request
names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RecordSet:
    inputs: torch.Tensor
    targets: torch.Tensor
    record_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if not len(self.inputs) == len(self.targets) == len(self.record_ids):
            raise ValueError("inputs, targets and record_ids need one row per record")
        if len(set(self.record_ids)) != len(self.record_ids):
            raise ValueError("record ids must be unique")

    def __len__(self) -> int:
        return len(self.record_ids)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "RecordSet":
        index = torch.as_tensor(indices, dtype=torch.long)
        return RecordSet(self.inputs[index], self.targets[index], tuple(self.record_ids[i] for i in index.tolist()))

    def without(self, record_ids: Iterable[str]) -> "RecordSet":
        drop = set(record_ids)
        return self.subset([i for i, r in enumerate(self.record_ids) if r not in drop])

    def with_ids(self, record_ids: Iterable[str]) -> "RecordSet":
        keep = set(record_ids)
        return self.subset([i for i, r in enumerate(self.record_ids) if r in keep])
