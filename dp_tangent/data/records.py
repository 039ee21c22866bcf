"""Records with stable ids: inputs, integer labels and one unique id per record.

A :class:`RecordSet` is the unit a data owner trains on; a record's id is what a deletion request
names. Its inputs are a tensor, or :class:`LazyInputs`: rows produced (decoded, resized) only when
read, a batch at a time, so a large image folder is never held in memory. Lazy inputs index like a
tensor (``x[i]``, ``x[a:b]``, ``x[index_tensor]`` give decoded tensors; ``len``, ``shape``,
``dtype``, ``size``, ``to(device)``), and any torch function given them whole reads every row
(correct, but not memory-bounded: batch the reads instead).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

#: Rows read at a time when lazy inputs are read whole.
CHUNK = 256


class LazyInputs(ABC):
    """Model inputs produced on access, never all held (subclasses are frozen dataclasses with a
    ``device`` field): :meth:`rows` decodes some rows, :meth:`select` is a lazy subset."""

    #: Every value is finite by construction (e.g. 8-bit pixels under a fixed normalisation).
    finite: ClassVar[bool] = False
    device: str

    @property
    @abstractmethod
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one row."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _decode(self, index: Sequence[int]) -> torch.Tensor:
        """Rows ``index`` as a float32 CPU tensor of shape (len(index), *row_shape)."""

    @abstractmethod
    def select(self, index: Sequence[int]) -> "LazyInputs":
        """The rows ``index`` (in that order), still lazy."""

    def rows(self, index: Sequence[int]) -> torch.Tensor:
        if not len(index):
            return torch.empty((0, *self.row_shape), device=self.device)
        return self._decode(index).to(self.device)

    # -- what callers of a tensor use -------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.row_shape))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def to(self, device: str | torch.device, *args: object, **kwargs: object) -> "LazyInputs":
        return dataclasses.replace(self, device=str(device))  # type: ignore[type-var]

    def new_zeros(self, size: Sequence[int]) -> torch.Tensor:
        return torch.zeros(size, device=self.device)

    def __getitem__(self, key: int | slice | Sequence[int] | torch.Tensor) -> torch.Tensor:
        if isinstance(key, int):
            return self.rows([range(len(self))[key]])[0]
        if isinstance(key, slice):
            return self.rows(range(len(self))[key])
        index = key.tolist() if isinstance(key, torch.Tensor) else list(key)
        if isinstance(key, torch.Tensor) and key.dtype == torch.bool:
            index = [i for i, keep in enumerate(index) if keep]
        return self.rows([range(len(self))[i] for i in index])

    def materialize(self) -> torch.Tensor:
        """Every row, read a chunk at a time (memory grows with the data: prefer batched reads)."""
        chunks = [self[start:start + CHUNK] for start in range(0, len(self), CHUNK)]
        return torch.cat(chunks) if chunks else self.rows([])

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001,ANN206
        """A torch function given lazy inputs whole reads them (so every caller of a tensor still works)."""

        def dense(value: object) -> object:
            if isinstance(value, LazyInputs):
                return value.materialize()
            if isinstance(value, (list, tuple)):
                return type(value)(dense(v) for v in value)
            return value

        return func(*dense(args), **{k: dense(v) for k, v in (kwargs or {}).items()})


@dataclass(frozen=True)
class RecordSet:
    inputs: torch.Tensor | LazyInputs
    targets: torch.Tensor
    record_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if not len(self.inputs) == len(self.targets) == len(self.record_ids):
            raise ValueError("inputs, targets and record_ids need one row per record")
        if len(set(self.record_ids)) != len(self.record_ids):
            raise ValueError("record ids must be unique")

    def __len__(self) -> int:
        return len(self.record_ids)

    @property
    def lazy(self) -> bool:
        """Whether inputs are read only when used (see :class:`LazyInputs`)."""
        return isinstance(self.inputs, LazyInputs)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "RecordSet":
        index = torch.as_tensor(indices, dtype=torch.long)
        inputs = self.inputs.select(index.tolist()) if isinstance(self.inputs, LazyInputs) else self.inputs[index]
        return RecordSet(inputs, self.targets[index], tuple(self.record_ids[i] for i in index.tolist()))

    def without(self, record_ids: Iterable[str]) -> "RecordSet":
        drop = set(record_ids)
        return self.subset([i for i, r in enumerate(self.record_ids) if r not in drop])

    def with_ids(self, record_ids: Iterable[str]) -> "RecordSet":
        keep = set(record_ids)
        return self.subset([i for i, r in enumerate(self.record_ids) if r in keep])
