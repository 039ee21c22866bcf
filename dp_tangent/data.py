"""Records with stable ids, the embedded default data set, and disjoint shards.

A :class:`RecordSet` is the unit a data owner trains on: inputs, integer labels and one stable,
unique id per record (the id a deletion request names). The embedded default is scikit-learn's
bundled handwritten digits (1,797 real 8x8 images, shipped inside the scikit-learn wheel),
upsampled and normalised for an ImageNet backbone; record ``i`` is ``digit-<i>``, its row in
``sklearn.datasets.load_digits()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def load_digits(image_size: int = 32, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> RecordSet:
    """scikit-learn's digits as (N, 3, S, S) float32 images normalised with ``mean``/``std``."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1)
    images = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    ids = tuple(f"digit-{i}" for i in range(len(images)))
    return RecordSet(images.contiguous(), torch.tensor(bunch.target, dtype=torch.long), ids)


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
