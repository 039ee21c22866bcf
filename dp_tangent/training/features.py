"""Caching the frozen prefix: with no augmentation, features(x) never changes, so compute it once
and let every epoch pay only for the linearized suffix (``TangentModel.on_features()``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.utils.data import Dataset

from ..tangent import TangentModel


def precompute_features(model: TangentModel, inputs: torch.Tensor, *, batch_size: int = 256,
                        progress: Callable[[int], None] | None = None,
                        known: Callable[[int, torch.Tensor], Mapping[int, torch.Tensor]] | None = None
                        ) -> torch.Tensor:
    """``model.features`` of every row of ``inputs``, in batches (no gradients, eval mode). ``known`` sees
    each batch of inputs as read, with the position of its first row (e.g. to digest them without reading lazy
    inputs twice), and returns the features it already has for rows of it (position in the batch -> features):
    those rows are not computed."""
    chunks = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        have = {} if known is None else known(start, batch)
        todo = [j for j in range(len(batch)) if j not in have]
        computed = model.features(batch[todo] if len(todo) < len(batch) else batch) if todo else None
        if not have:
            chunks.append(computed)
        else:
            first = next(iter(have.values()))
            out = torch.empty(len(batch), *first.shape, dtype=first.dtype,
                              device=batch.device if computed is None else computed.device)
            for j, row in have.items():
                out[j] = row
            if computed is not None:
                out[todo] = computed.to(out.dtype)
            chunks.append(out)
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
