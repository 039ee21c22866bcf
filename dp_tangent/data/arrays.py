"""Arrays as records: ``.npz`` archives of inputs, labels and ids, and ``.npy`` model inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .records import RecordSet


def npz_records(path: Path, *, inputs: str, targets: str, record_ids: str) -> RecordSet:
    """The arrays named ``inputs``, ``targets`` (integer labels) and ``record_ids`` of an ``.npz`` file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in (inputs, targets, record_ids) if k not in archive]
            if missing:
                raise DataError(f"{path}: no array {missing[0]!r} (arrays: {', '.join(archive.files)})")
            x, y, ids = (archive[k] for k in (inputs, targets, record_ids))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the npz file ({str(err).splitlines()[0]})") from None
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {targets!r} must hold integer class labels, got {y.dtype}")
    return RecordSet(torch.as_tensor(x.astype(np.float32)), torch.as_tensor(y.astype(np.int64)),
                     tuple(str(r) for r in ids.tolist()))


def load_array(path: Path) -> torch.Tensor:
    """A ``.npy`` file as float32 model inputs: one (C, H, W) input or a (N, C, H, W) batch."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the array ({str(err).splitlines()[0]})") from None
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if tensor.ndim not in (3, 4):
        raise DataError(f"{path}: expected an array of shape (C, H, W) or (N, C, H, W), got {tuple(tensor.shape)}")
    return tensor if tensor.ndim == 4 else tensor.unsqueeze(0)
