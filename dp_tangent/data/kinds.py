"""The data kinds a recipe can name, as validated descriptions, and how each one loads.

Each kind is a pydantic section (unknown keys refused); :func:`load_data` turns a
:class:`DataSection` and a :class:`ShardsSection` into (test split or None, one record set per
shard). Relative paths are resolved by the recipe before loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from ..errors import DataError
from .arrays import npz_records
from .digits import load_digits
from .images import image_folder_records, load_image, torchvision_records
from .records import RecordSet
from .splits import split_shards

Fraction = Field(default=0.2, ge=0, lt=1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DigitsData(_Strict):
    image_size: PositiveInt = 48
    test_fraction: float = Fraction
    seed: int = 0
    max_records: PositiveInt | None = None


class NpzData(_Strict):
    path: str
    inputs: str = "inputs"
    targets: str = "targets"
    record_ids: str = "record_ids"
    test_fraction: float = Fraction
    seed: int = 0


class ImageFolderData(_Strict):
    root: str
    image_size: PositiveInt = 224
    test_fraction: float = Fraction
    seed: int = 0


class TorchvisionData(_Strict):
    name: Literal["CIFAR10", "CIFAR100"]
    root: str
    download: bool = False
    image_size: PositiveInt = 224
    max_records: PositiveInt | None = None  # first N training images (the test split is kept whole)


class DataSection(_Strict):
    sklearn_digits: DigitsData | None = None
    npz: NpzData | None = None
    image_folder: ImageFolderData | None = None
    torchvision: TorchvisionData | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "DataSection":
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(type(self).model_fields)}, got {len(given)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @property
    def source(self) -> DigitsData | NpzData | ImageFolderData | TorchvisionData:
        return getattr(self, self.kind)


class ShardsSection(_Strict):
    count: PositiveInt = 1
    by: Literal["random", "label"] = "random"


def load_data(data: DataSection, shards: ShardsSection) -> tuple[RecordSet | None, list[RecordSet]]:
    """(test split or None, one record set per shard), as ``data`` and ``shards`` describe them."""
    kind, source = data.kind, data.source
    if isinstance(source, TorchvisionData):
        train, test = torchvision_records(source.name, source.root, download=source.download,
                                          image_size=source.image_size, max_records=source.max_records)
        return test, split_shards(train, shards=shards.count, test_fraction=0.0, by=shards.by)[1]
    if isinstance(source, DigitsData):
        records = load_digits(image_size=source.image_size)
        if source.max_records:
            records = records.subset(range(min(source.max_records, len(records))))
    elif isinstance(source, NpzData):
        records = npz_records(Path(source.path), inputs=source.inputs, targets=source.targets,
                              record_ids=source.record_ids)
    else:
        records = image_folder_records(Path(source.root), source.image_size)
    try:
        test, parts = split_shards(records, shards=shards.count, test_fraction=source.test_fraction,
                                   seed=source.seed, by=shards.by)
    except ValueError as err:
        raise DataError(f"data.{kind}: {err}") from None
    return (test if len(test) else None), parts


def preprocess_image(data: DataSection, path: Path) -> torch.Tensor:
    """One image file as a (3, S, S) model input, resized and normalised like ``data``'s images."""
    size = getattr(data.source, "image_size", None)
    if size is None:
        raise DataError(f"{path}: the recipe's data ({data.kind}) has no image size; give a .npy array")
    return load_image(path, size, grayscale=isinstance(data.source, DigitsData))
