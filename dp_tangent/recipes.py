"""Training recipes: one YAML file says which backbone, what to linearize, which data, how private.

``load_recipe(path)`` validates the file with pydantic (unknown keys refused) and raises
:class:`RecipeError` with one line naming the file and the offending field, e.g.
``recipes/x.yaml: training.epochs: Input should be greater than 0``. Relative ``checkpoint`` and
data paths are resolved against the recipe's directory. See ``docs/recipes.md`` for the schema.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator

from .backbones import BackboneSpec
from .data import IMAGENET_MEAN, IMAGENET_STD, RecordSet, load_digits, split_shards
from .errors import DPTangentError
from .losses import LOSS_KINDS, ConvexLoss
from .selection import FORMS
from .training import GRAD_SAMPLE_MODES, PrivacySpec, TrainConfig

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "digits-efficientnet-lite0.yaml"
_TRAINABLE = re.compile(r"^(all|head|blocks\[-?\d+:\]|params:\s*[A-Za-z0-9_.]+(\s*,\s*[A-Za-z0-9_.]+)*)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
Fraction = Field(default=0.2, ge=0, lt=1)


class RecipeError(DPTangentError):
    """A recipe file is missing, not YAML, or does not validate (one line: file and field)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneSection(_Strict):
    name: str
    pretrained: Union[bool, Literal["packaged"]] = False
    checkpoint: str | None = None
    num_classes: PositiveInt | None = None
    head_seed: int = 0
    timm_kwargs: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        import timm

        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}")
        return name

    @field_validator("pretrained", mode="before")
    @classmethod
    def _pretrained(cls, value: object) -> object:
        if value not in (True, False, "packaged") or isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f"must be false, true or \"packaged\", got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "BackboneSection":
        if self.pretrained and self.checkpoint:
            raise ValueError("give either pretrained or checkpoint, not both")
        return self

    def spec(self) -> BackboneSpec:
        return BackboneSpec(self.name, pretrained=self.pretrained, checkpoint=self.checkpoint,
                            num_classes=self.num_classes, head_seed=self.head_seed,
                            timm_kwargs=tuple(sorted(self.timm_kwargs.items())))


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


class PrivacySection(_Strict):
    epsilon: float = Field(gt=0)  # "inf" (or YAML .inf): non-private, for comparison only
    delta: float | None = Field(default=None, gt=0, lt=1)
    max_grad_norm: PositiveFloat = 1.0
    accountant: Literal["pld", "prv", "rdp"] = "pld"


class TrainingSection(_Strict):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    physical_batch_size: PositiveInt | None = None  # default: batch_size
    lr: PositiveFloat = 0.5
    momentum: float = Field(default=0.9, ge=0, lt=1)
    grad_sample_mode: Literal[GRAD_SAMPLE_MODES] = "hooks"  # type: ignore[valid-type]
    seed: int = 0
    loss: Literal[LOSS_KINDS] = "cross_entropy"  # type: ignore[valid-type]
    kappa: PositiveFloat = 15.0
    l2: float = Field(default=0.0, ge=0)
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")


class ResourcesSection(_Strict):
    """What one component's training task asks a Ray cluster for (the ``ray`` executor)."""

    cpus: PositiveFloat = 1.0
    gpus: float = Field(default=0.0, ge=0)


class BudgetSection(_Strict):
    epsilon: PositiveFloat
    delta: float = Field(default=1e-5, gt=0, lt=1)

    @field_validator("epsilon")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("a budget must be finite")
        return value


class Recipe(_Strict):
    backbone: BackboneSection
    trainable: str = "head"
    data: DataSection
    shards: ShardsSection = ShardsSection()
    privacy: PrivacySection
    training: TrainingSection = TrainingSection()
    data_source: str
    budget: BudgetSection | None = None
    resources: ResourcesSection = ResourcesSection()

    @model_validator(mode="after")
    def _gpu_means_cuda(self) -> "Recipe":
        if self.resources.gpus > 0 and self.training.device == "cpu":
            raise ValueError("resources.gpus > 0 needs training.device: cuda (else the GPU would sit idle)")
        return self

    @field_validator("trainable")
    @classmethod
    def _trainable(cls, value: str) -> str:
        if not _TRAINABLE.match(value.strip()):
            raise ValueError(f"{value!r} is not understood; use {FORMS}")
        return value.strip()

    @field_validator("data_source")
    @classmethod
    def _source_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (at most 128 characters)")
        return value

    def with_overrides(self, *, shards: int | None = None, epsilon: float | None = None,
                       delta: float | None = None) -> "Recipe":
        """A re-validated copy with command-line overrides (``None`` keeps the recipe's value)."""
        data = self.model_dump()
        if shards is not None:
            data["shards"]["count"] = shards
        if epsilon is not None:
            data["privacy"]["epsilon"] = epsilon
        if delta is not None:
            data["privacy"]["delta"] = delta
        return _validate(data, "overrides")

    # -- what the recipe builds --------------------------------------------------------------
    def privacy_spec(self) -> PrivacySpec:
        p = self.privacy
        return PrivacySpec(epsilon=p.epsilon, delta=p.delta, max_grad_norm=p.max_grad_norm, accountant=p.accountant)

    def train_config(self) -> TrainConfig:
        t = self.training
        return TrainConfig(epochs=t.epochs, batch_size=t.batch_size, physical_batch_size=t.physical_batch_size or
                           t.batch_size, lr=t.lr, momentum=t.momentum, grad_sample_mode=t.grad_sample_mode,
                           seed=t.seed, loss=ConvexLoss(t.loss, kappa=t.kappa, l2=t.l2), device=t.device)

    def load_data(self) -> tuple[RecordSet | None, list[RecordSet]]:
        """(test split or None, one record set per shard), as the recipe describes them."""
        return _load_data(self)

    def preprocess_image(self, path: Path) -> torch.Tensor:
        """One image file as a (3, S, S) model input, resized and normalised like the recipe's data."""
        return _preprocess_image(self, path)


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith(("function-", "literal[", "bool")))


def _validate(data: object, origin: str) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe must be a YAML mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = _location(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise RecipeError(f"{origin}: {where + ': ' if where else ''}{message}{more}") from None


def _resolve(recipe: Recipe, base: Path) -> Recipe:
    """Relative checkpoint and data paths become absolute, against the recipe's directory."""
    data = recipe.model_dump()

    def absolute(section: dict[str, Any], key: str) -> None:
        if section.get(key) and not Path(section[key]).expanduser().is_absolute():
            section[key] = str((base / section[key]).resolve())
        elif section.get(key):
            section[key] = str(Path(section[key]).expanduser())

    absolute(data["backbone"], "checkpoint")
    source = data["data"][recipe.data.kind]
    absolute(source, "root" if "root" in source else "path") if recipe.data.kind != "sklearn_digits" else None
    return Recipe.model_validate(data)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every problem is one :class:`RecipeError` line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read the recipe ({type(err).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise RecipeError(f"{path}: invalid YAML{where}: {problem}") from None
    return _resolve(_validate(data, str(path)), path.resolve().parent)


def default_recipe() -> Recipe:
    """The embedded default (packaged EfficientNet-Lite0 on scikit-learn digits)."""
    return load_recipe(DEFAULT_RECIPE)


def load_array(path: Path) -> torch.Tensor:
    """A ``.npy`` file as float32 model inputs: one (C, H, W) input or a (N, C, H, W) batch."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise RecipeError(f"{path}: cannot read the array ({str(err).splitlines()[0]})") from None
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if tensor.ndim not in (3, 4):
        raise RecipeError(f"{path}: expected an array of shape (C, H, W) or (N, C, H, W), got {tuple(tensor.shape)}")
    return tensor if tensor.ndim == 4 else tensor.unsqueeze(0)



# -- data loaders ------------------------------------------------------------------------------------

def _normalise(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (N, 3, size, size), ImageNet-normalised."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images - mean) / std).contiguous()


def _npz(source: NpzData) -> RecordSet:
    path = Path(source.path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in (source.inputs, source.targets, source.record_ids) if k not in archive]
            if missing:
                raise RecipeError(f"{path}: no array {missing[0]!r} (arrays: {', '.join(archive.files)})")
            inputs, targets, ids = (archive[k] for k in (source.inputs, source.targets, source.record_ids))
    except (OSError, ValueError) as err:
        raise RecipeError(f"{path}: cannot read the npz file ({str(err).splitlines()[0]})") from None
    if not np.issubdtype(targets.dtype, np.integer):
        raise RecipeError(f"{path}: {source.targets!r} must hold integer class labels, got {targets.dtype}")
    return RecordSet(torch.as_tensor(inputs.astype(np.float32)), torch.as_tensor(targets.astype(np.int64)),
                     tuple(str(r) for r in ids.tolist()))


def _image_folder(source: ImageFolderData) -> RecordSet:
    from torchvision import datasets, transforms

    root = Path(source.root)
    if not root.is_dir():
        raise RecipeError(f"{root}: image folder not found (data.image_folder.root)")
    folder = datasets.ImageFolder(str(root), transform=transforms.ToTensor())
    images = [_normalise(folder[i][0].unsqueeze(0), source.image_size)[0] for i in range(len(folder))]
    ids = tuple(Path(p).relative_to(root).as_posix() for p, _ in folder.samples)
    return RecordSet(torch.stack(images), torch.tensor(folder.targets, dtype=torch.long), ids)


def _torchvision(source: TorchvisionData) -> tuple[RecordSet, RecordSet]:
    from torchvision import datasets

    make = getattr(datasets, source.name)
    splits = []
    for train in (True, False):
        try:
            dataset = make(source.root, train=train, download=source.download)
        except RuntimeError as err:
            raise RecipeError(f"{source.name} not found in {source.root}: set data.torchvision.download: true "
                              f"(needs internet) or point root: at a copy ({str(err).splitlines()[0]})") from None
        n = min(source.max_records or len(dataset.data), len(dataset.data)) if train else len(dataset.data)
        pixels = torch.as_tensor(dataset.data[:n]).permute(0, 3, 1, 2)
        images = torch.cat([_normalise(pixels[i:i + 256].float() / 255, source.image_size)
                            for i in range(0, n, 256)])
        prefix = f"{source.name.lower()}-{'train' if train else 'test'}"
        splits.append(RecordSet(images, torch.tensor(dataset.targets[:n], dtype=torch.long),
                                tuple(f"{prefix}-{i}" for i in range(n))))
    return splits[0], splits[1]


def _load_data(recipe: Recipe) -> tuple[RecordSet | None, list[RecordSet]]:
    kind, source, shards = recipe.data.kind, recipe.data.source, recipe.shards
    if isinstance(source, TorchvisionData):
        train, test = _torchvision(source)
        return test, split_shards(train, shards=shards.count, test_fraction=0.0, by=shards.by)[1]
    if isinstance(source, DigitsData):
        records = load_digits(image_size=source.image_size)
        if source.max_records:
            records = records.subset(range(min(source.max_records, len(records))))
    else:
        records = _npz(source) if isinstance(source, NpzData) else _image_folder(source)  # type: ignore[arg-type]
    try:
        test, parts = split_shards(records, shards=shards.count, test_fraction=source.test_fraction,
                                   seed=source.seed, by=shards.by)
    except ValueError as err:
        raise RecipeError(f"data.{kind}: {err}") from None
    return (test if len(test) else None), parts


def _preprocess_image(recipe: Recipe, path: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import to_tensor

    source = recipe.data.source
    size = getattr(source, "image_size", None)
    if size is None:
        raise RecipeError(f"{path}: the recipe's data ({recipe.data.kind}) has no image size; give a .npy array")
    try:
        with Image.open(path) as image:
            pixels = to_tensor(image.convert("L" if isinstance(source, DigitsData) else "RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise RecipeError(f"{path}: cannot read the image ({type(err).__name__})") from None
    return _normalise(pixels.unsqueeze(0), size)[0]
