"""Disjoint shards and a held-out test set, each record placed by its own id.

A record's place (test set, and shard) is drawn from a keyed hash of its id alone: with a permutation of the whole
set, as before, adding or removing one record reshuffled hundreds of others between shards and the test set, so a
shard's contents, and every run on it, depended on records it never held (the per-shard accounting charges a record
only for the runs that read it). The key is the public split seed; which shard a record would land in is no secret.
"""

from __future__ import annotations

import hashlib

import torch

from .records import RecordSet


def placement(record_ids: tuple[str, ...], seed: int, purpose: bytes) -> torch.Tensor:
    """u in [0, 1) per record, a function of its id, the seed and ``purpose`` (at most 16 bytes) only: the first 8
    bytes of BLAKE2b(id, key=seed, person=purpose) over 2^64."""
    key = (int(seed) % 2**128).to_bytes(16, "little")
    return torch.tensor([int.from_bytes(hashlib.blake2b(r.encode(), key=key, person=purpose, digest_size=8).digest(),
                                        "big") / 2.0**64 for r in record_ids], dtype=torch.float64)


def split_shards(records: RecordSet, *, shards: int, test_fraction: float = 0.2, seed: int = 0,
                 by: str = "random", classes: int | None = None) -> tuple[RecordSet, list[RecordSet]]:
    """A held-out test set and ``shards`` disjoint shards of the rest, each record placed by its id (see the module
    doc): each record is held out with probability ``test_fraction``, so sizes vary around their expected values.

    ``by="random"``: data-incremental split, each record in shard k with probability 1/shards. ``by="label"``:
    class-incremental (shard k holds the k-th contiguous block of the labels 0 .. ``classes`` - 1), as in the
    Tangent Model Composition experiments. Without ``classes`` the blocks follow the set of labels present,
    which one record of a label no other record has would change (every record's shard would move).
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    held_out = placement(records.record_ids, seed, b"dp-tangent-test") < test_fraction
    test, rest = records.subset(torch.nonzero(held_out).flatten()), torch.nonzero(~held_out).flatten()
    if by == "random":
        shard_of = (placement(records.record_ids, seed, b"dp-tangent-shard") * shards).long().clamp_(max=shards - 1)
        parts = [rest[shard_of[rest] == k] for k in range(shards)]
    elif by == "label":
        labels = records.targets[rest]
        outside = (records.targets < 0) | (records.targets >= classes) if classes is not None else None
        if outside is not None and bool(outside.any()):  # in no block: refused, never dropped silently
            bad = int(outside.nonzero()[0, 0])
            raise ValueError(f"record {records.record_ids[bad]!r} has label {int(records.targets[bad])}, outside the "
                             f"model's {classes} classes [0, {classes}) that shards.by label divides")
        names = list(range(classes)) if classes is not None else labels.unique().tolist()
        blocks = [names[k * len(names) // shards:(k + 1) * len(names) // shards] for k in range(shards)]
        parts = [rest[torch.isin(labels, torch.tensor(block))] for block in blocks]
    else:
        raise ValueError(f"by must be 'random' or 'label', got {by!r}")
    if any(len(p) == 0 for p in parts):
        raise ValueError(f"{shards} shards leave some shard empty" + (
            f" (shards.by label: {classes} classes in blocks of about {classes // shards})" if by == "label" and
            classes is not None else ""))
    return test, [records.subset(p.sort().values) for p in parts]
