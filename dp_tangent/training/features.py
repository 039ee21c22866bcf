"""Caching the frozen prefix: with no augmentation, features(x) never changes, so compute it once
and let every epoch pay only for the linearized suffix (``TangentModel.on_features()``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from ..tangent import TangentModel


def precompute_features(model: TangentModel, inputs: torch.Tensor, *, batch_size: int = 256,
                        progress: Callable[[int], None] | None = None,
                        rows: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """``model.features`` of every row of ``inputs``, in batches (no gradients, eval mode); ``rows`` sees
    each batch of inputs as read (e.g. to digest them without reading lazy inputs twice)."""
    chunks = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        if rows is not None:
            rows(batch)
        chunks.append(model.features(batch))
        if progress is not None:
            progress(min(start + batch_size, len(inputs)))
    return torch.cat(chunks) if chunks else inputs[:0]


class FeatureDataset(Dataset):
    """Rows of cached features with their aligned tensors (targets, indices): ``(h_i, y_i, ...)``."""

    def __init__(self, features: torch.Tensor, *aligned: torch.Tensor) -> None:
        if any(len(t) != len(features) for t in aligned):
            raise ValueError("every aligned tensor needs one row per feature row")
        self.features = features
        self.aligned = aligned

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return (self.features[index], *(t[index] for t in self.aligned))
