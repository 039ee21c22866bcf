"""Arrays as records: ``.npz`` archives of inputs, labels and ids, and ``.npy`` model inputs."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .records import RecordSet

# What numpy raises for a file that is empty (EOFError), not a zip (BadZipFile), truncated or corrupt.
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _reason(path: Path, err: BaseException) -> str:
    """Why ``path`` could not be read, in a few words (an empty file is named as such)."""
    try:
        if path.is_file() and path.stat().st_size == 0:
            return "empty file, 0 bytes"
        with path.open("rb") as file:  # numpy reads anything without its magic as a pickle, and says so
            head = file.read(6)
        if head != b"\x93NUMPY" and not head.startswith(b"PK\x03\x04"):
            return "not a file numpy wrote: it does not start as an .npy or .npz file does"
    except OSError:
        pass
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}".rstrip(": ")


def npz_records(path: Path, *, inputs: str, targets: str, record_ids: str) -> RecordSet:
    """The arrays named ``inputs``, ``targets`` (integer labels) and ``record_ids`` of an ``.npz`` file."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in (inputs, targets, record_ids) if k not in archive]
            if missing:
                raise DataError(f"{path}: no array {missing[0]!r} (arrays: {', '.join(archive.files)})")
            x, y, ids = (archive[k] for k in (inputs, targets, record_ids))
    except _UNREADABLE as err:
        raise DataError(f"{path}: cannot read the npz file ({_reason(path, err)}); "
                        "give a complete file written by numpy.savez") from None
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {targets!r} must hold integer class labels, got {y.dtype}")
    try:
        return RecordSet(torch.as_tensor(x.astype(np.float32)), torch.as_tensor(y.astype(np.int64)),
                         _record_ids(path, record_ids, ids))
    except (ValueError, TypeError) as err:  # e.g. text inputs, or arrays of different lengths
        raise DataError(f"{path}: {(str(err).strip().splitlines() or [type(err).__name__])[0]}") from None


def load_array(path: Path, rank: int = 3, token_ids: bool = False,
               shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A ``.npy`` file as float32 model inputs: one input of ``rank`` dimensions ((C, H, W) images by
    default, (F,) feature vectors with ``rank=1``) or a batch of them; with ``token_ids``, int64 token ids of a
    text model (an integer array, as its tokenizer gave them)."""
    try:
        array = np.load(path, allow_pickle=False)
    except _UNREADABLE as err:
        raise DataError(f"{path}: cannot read the array ({_reason(path, err)}); "
                        "give a complete file written by numpy.save") from None
    if token_ids:
        if not np.issubdtype(array.dtype, np.integer) or array.ndim not in (rank, rank + 1) or array.size == 0:
            raise DataError(f"{path}: expected integer token ids of shape (L,) or (N, L), got an array of "
                            f"{array.dtype} and shape {tuple(array.shape)}")
        if array.min() < 0 or (np.issubdtype(array.dtype, np.unsignedinteger) and array.max() > np.iinfo(np.int64).max):
            raise DataError(f"{path}: token ids must be >= 0 (and fit int64), got values from {array.min()} to "
                            f"{array.max()}")
        ids = torch.as_tensor(array.astype(np.int64))
        return ids if ids.ndim == rank + 1 else ids.unsqueeze(0)
    if np.iscomplexobj(array):  # casting would drop the imaginary parts (with only numpy's warning)
        raise DataError(f"{path}: expected real numbers, got an array of {array.dtype}")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # reported below, in one line
            tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
    except (ValueError, TypeError):
        raise DataError(f"{path}: expected numbers, got an array of {array.dtype}") from None
    if tensor.ndim not in (rank, rank + 1):
        one, batch = ("(F,)", "(N, F)") if rank == 1 else ("(C, H, W)", "(N, C, H, W)")
        if shape is not None and len(shape) == rank:  # the model's own (review 97: the other error named it)
            one, batch = str(tuple(shape)), "(N, " + ", ".join(map(str, shape)) + ")"
        raise DataError(f"{path}: expected an array of shape {one} or {batch}, got {tuple(tensor.shape)}")
    if tensor.numel() == 0:
        raise DataError(f"{path}: the array is empty (shape {tuple(tensor.shape)}); give at least one input")
    if not torch.isfinite(tensor).all():
        raise DataError(f"{path}: {int((~torch.isfinite(tensor)).sum())} value(s) are not finite (NaN, infinity, or "
                        "beyond float32's range)")
    return tensor if tensor.ndim == rank + 1 else tensor.unsqueeze(0)


def _record_ids(path: Path, name: str, ids: np.ndarray) -> tuple[str, ...]:
    """Record ids as the strings a deletion request names: text or integers; bytes are decoded as UTF-8
    (``str(b"x")`` would be ``"b'x'"``, an id no request would ever match)."""
    if ids.dtype.kind == "S":
        try:
            return tuple(r.decode("utf-8") for r in ids.tolist())
        except UnicodeDecodeError:
            raise DataError(f"{path}: {name!r} holds byte strings that are not UTF-8 text") from None
    if ids.dtype.kind not in ("U", "i", "u"):
        raise DataError(f"{path}: {name!r} must hold text or integer record ids, got {ids.dtype}")
    return tuple(str(r) for r in ids.tolist())
