"""Disjoint shards and a held-out test set, by random order or by label."""

from __future__ import annotations

import torch

from .records import RecordSet


def split_shards(records: RecordSet, *, shards: int, test_fraction: float = 0.2, seed: int = 0,
                 by: str = "random") -> tuple[RecordSet, list[RecordSet]]:
    """A held-out test set and ``shards`` disjoint shards of the rest.

    ``by="random"``: data-incremental split. ``by="label"``: class-incremental (shard k holds a
    contiguous block of labels), as in the Tangent Model Composition experiments.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(records)))
    test, rest = records.subset(order[:n_test]), order[n_test:]
    if by == "random":
        parts = [rest[k::shards] for k in range(shards)]
    elif by == "label":
        labels = records.targets[rest]
        classes = labels.unique().tolist()
        blocks = [classes[k * len(classes) // shards:(k + 1) * len(classes) // shards] for k in range(shards)]
        parts = [rest[torch.isin(labels, torch.tensor(block))] for block in blocks]
    else:
        raise ValueError(f"by must be 'random' or 'label', got {by!r}")
    if any(len(p) == 0 for p in parts):
        raise ValueError(f"{shards} shards leave some shard empty")
    return test, [records.subset(p.sort().values) for p in parts]
