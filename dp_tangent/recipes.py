"""Training recipes: one YAML file says which backbone, what to linearize, which data, how private.

``load_recipe(path)`` validates the file with pydantic (unknown keys refused) and raises
:class:`RecipeError` with one line naming the file and the offending field, e.g.
``recipes/x.yaml: training.epochs: Input should be greater than 0``. Relative ``checkpoint`` and
data paths are resolved against the recipe's directory. See ``docs/recipes.md`` for the schema.

A recipe is checked in two steps, so that a mistake in it is reported at once: first the schema, with
nothing heavier than pydantic loaded; then, once that holds, the backbone against its family (which
imports torch and, for timm, timm's model registry: seconds).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from .data.kinds import DataSection, ShardsSection, load_data, preprocess_image
from .errors import RecipeError
from .tangent.trainable_forms import written_form
from .training.config import GRAD_SAMPLE_MODES
from .training.losses import LOSS_KINDS

if TYPE_CHECKING:
    import torch

    from .backbones import BackboneSpec
    from .data.records import RecordSet
    from .training.config import PrivacySpec, TrainConfig

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "digits-efficientnet-lite0.yaml"
#: Validation context of the first step: the schema only, the backbone not checked against its family (which
#: imports torch). Without it (any other validation of a Recipe) the backbone is checked.
_SCHEMA_ONLY = "schema_only"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneSection(_Strict):
    family: str = "timm"  # how it is built: a registered backbone family (timm, mlp, ...)
    name: str
    pretrained: Union[bool, Literal["packaged"]] = False
    checkpoint: str | None = None
    num_classes: PositiveInt | None = None
    head_seed: int = 0
    timm_kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {}  # the family's build options (mlp: in_features, hidden, activation)

    @field_validator("family")
    @classmethod
    def _family(cls, value: str, info: ValidationInfo) -> str:
        if not _checking_backbone(info):
            return value
        from .backbones import family_names

        if value not in family_names():
            raise ValueError(f"unknown backbone family {value!r}; registered: {', '.join(family_names())}")
        return value

    @field_validator("name")
    @classmethod
    def _known(cls, name: str, info: ValidationInfo) -> str:
        if not _checking_backbone(info):
            return name
        from .backbones import family

        if "family" in info.data:  # else the family was refused already
            family(info.data["family"]).check_name(name)
        return name

    @field_validator("pretrained", mode="before")
    @classmethod
    def _pretrained(cls, value: object) -> object:
        if value not in (True, False, "packaged") or isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f"must be false, true or \"packaged\", got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> "BackboneSection":
        if self.pretrained and self.checkpoint:
            raise ValueError("give either pretrained or checkpoint, not both")
        if _checking_backbone(info):
            from .backbones import family

            family(self.family).check(self.spec())  # e.g. an unknown timm name, an MLP without in_features
        return self

    def spec(self) -> BackboneSpec:
        from .backbones import BackboneSpec

        return BackboneSpec(self.name, pretrained=self.pretrained, checkpoint=self.checkpoint,
                            num_classes=self.num_classes, head_seed=self.head_seed,
                            timm_kwargs=tuple(sorted(self.timm_kwargs.items())), family=self.family,
                            options=tuple(sorted(self.options.items())))


class PrivacySection(_Strict):
    epsilon: float = Field(gt=0)  # "inf" (or YAML .inf): non-private, for comparison only
    delta: float | None = Field(default=None, gt=0, lt=1)
    max_grad_norm: PositiveFloat = 1.0
    accountant: Literal["pld", "prv", "rdp"] = "pld"
    # N, the shard size every shard's run is planned for, stated in advance (public): q, T, sigma, the default delta
    # and the batch mean's divisor come from it, not from whether one record is in a shard (PrivacySpec)
    planned_shard_size: PositiveInt | None = None


class TrainingSection(_Strict):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    physical_batch_size: PositiveInt | None = None  # default: batch_size
    lr: PositiveFloat = 0.5
    momentum: float = Field(default=0.9, ge=0, lt=1)
    grad_sample_mode: Literal[GRAD_SAMPLE_MODES] = "gram"  # type: ignore[valid-type]
    seed: int = 0
    loss: Literal[LOSS_KINDS] = "cross_entropy"  # type: ignore[valid-type]
    kappa: PositiveFloat = 15.0
    l2: float = Field(default=0.0, ge=0)
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    # keep the frozen-prefix features in the workspace's cache (docs/training.md); unset: as the shard's cache says
    keep_features: bool | None = None


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

    @model_validator(mode="after")
    def _non_private_without_budget(self) -> "Recipe":
        if math.isinf(self.privacy.epsilon) and self.budget is not None:  # the ledger would refuse every shard
            raise ValueError("privacy.epsilon inf (a non-private run) is refused under any budget: remove the "
                             "budget section to train a non-private baseline")
        return self

    @field_validator("trainable")
    @classmethod
    def _trainable(cls, value: str) -> str:
        return written_form(value)

    @field_validator("data_source")
    @classmethod
    def _source_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (at most 128 characters)")
        return value

    def with_overrides(self, *, shards: int | None = None, epsilon: float | None = None,
                       delta: float | None = None, schema_only: bool = False) -> "Recipe":
        """A re-validated copy with command-line overrides (``None`` keeps the recipe's value); ``schema_only``:
        without checking the backbone (which imports torch)."""
        data = self.model_dump()
        if shards is not None:
            data["shards"]["count"] = shards
        if epsilon is not None:
            data["privacy"]["epsilon"] = epsilon
        if delta is not None:
            data["privacy"]["delta"] = delta
        return _validate(data, "overrides", schema_only)

    # -- what the recipe builds --------------------------------------------------------------
    def privacy_spec(self) -> PrivacySpec:
        from .training.config import PrivacySpec

        p = self.privacy
        return PrivacySpec(epsilon=p.epsilon, delta=p.delta, max_grad_norm=p.max_grad_norm, accountant=p.accountant,
                           planned_shard_size=p.planned_shard_size)

    def train_config(self) -> TrainConfig:
        from .training.config import TrainConfig
        from .training.losses import ConvexLoss

        t = self.training
        return TrainConfig(epochs=t.epochs, batch_size=t.batch_size, physical_batch_size=t.physical_batch_size or
                           t.batch_size, lr=t.lr, momentum=t.momentum, grad_sample_mode=t.grad_sample_mode,
                           seed=t.seed, loss=ConvexLoss(t.loss, kappa=t.kappa, l2=t.l2), device=t.device,
                           keep_features=t.keep_features)

    def load_data(self) -> tuple[RecordSet | None, list[RecordSet]]:
        """(test split or None, one record set per shard), as the recipe describes them; a label outside the
        backbone's classes is refused here, before a workspace is made or a source registered."""
        from .training.validation import check_labels

        test, shards = load_data(self.data, self.shards, self.backbone.num_classes)
        if self.backbone.num_classes is not None:
            for subject, part in [("the test split", test), *((f"shard-{k}", s) for k, s in enumerate(shards))]:
                if part is not None and len(part):
                    check_labels(part, self.backbone.num_classes, subject, f"backbone {self.backbone.name!r}")
        return test, shards

    def preprocess_image(self, path: Path) -> torch.Tensor:
        """One image file as a (3, S, S) model input, resized and normalised like the recipe's data."""
        return preprocess_image(self.data, path)


def _checking_backbone(info: ValidationInfo) -> bool:
    return not (info.context and info.context.get(_SCHEMA_ONLY))


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith(("function-", "literal[", "bool")))


def _validate(data: object, origin: str, schema_only: bool = False) -> Recipe:
    """The recipe ``data`` describes, its backbone checked against its family unless ``schema_only``."""
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe must be a YAML mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data, context={_SCHEMA_ONLY: schema_only})
    except ValidationError as err:
        first = err.errors()[0]
        where = _location(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if isinstance(first.get("input"), bool) and first["type"] == "string_type":  # YAML 1.1: yes, no, on, off
            message += (f", got {first['input']} (YAML reads yes, no, on, off, true and false unquoted as booleans: "
                        "quote the word, e.g. 'no')")
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise RecipeError(f"{origin}: {where + ': ' if where else ''}{message}{more}") from None


def _resolve(recipe: Recipe, base: Path) -> dict[str, Any]:
    """The recipe's data, relative checkpoint and data paths made absolute against the recipe's directory."""
    data = recipe.model_dump()

    def absolute(section: dict[str, Any], key: str) -> None:
        if section.get(key) and not Path(section[key]).expanduser().is_absolute():
            section[key] = str((base / section[key]).resolve())
        elif section.get(key):
            section[key] = str(Path(section[key]).expanduser())

    absolute(data["backbone"], "checkpoint")
    source = data["data"][recipe.data.kind]
    for key in ("root", "path", "public_path"):
        if key in source:
            absolute(source, key)
    _local_directories(recipe, data, base)
    return data


def _local_directories(recipe: Recipe, data: dict[str, Any], base: Path) -> None:
    """A transformers model or tokenizer named by a directory relative to the recipe becomes absolute; a
    text kind without a tokenizer gets its transformers backbone's own (the packaged model's directory,
    or the model's name)."""
    from .backbones.hf_family import FAMILY, model_source

    def local(value: str) -> str:
        candidate = (base / value).expanduser()
        return str(candidate.resolve()) if not Path(value).expanduser().is_absolute() and candidate.is_dir() else value

    if recipe.backbone.family == FAMILY:
        data["backbone"]["name"] = local(recipe.backbone.name)
    if "tokenizer" in type(recipe.data.source).model_fields:  # text kinds
        text = data["data"][recipe.data.kind]
        if text.get("tokenizer"):
            text["tokenizer"] = local(text["tokenizer"])
        elif recipe.backbone.family == FAMILY:
            text["tokenizer"] = model_source(Recipe.model_validate(data).backbone.spec())


def load_recipe(path: str | Path, *, schema_checked: Callable[[Recipe], None] | None = None) -> Recipe:
    """Read and validate a recipe file; every problem is one :class:`RecipeError` line.

    ``schema_checked``, if given, is called with the recipe once everything but its backbone holds, before
    checking the backbone imports torch (the CLI starts its workers there, to import torch meanwhile)."""
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
    schema = _validate(data, str(path), schema_only=True)  # every mistake but the backbone's, before torch loads
    if schema_checked is not None:
        schema_checked(schema)
    recipe = _validate(data, str(path))  # then the backbone, before its name is used to resolve paths
    recipe = _validate(_resolve(recipe, path.resolve().parent), str(path))
    _check_text_length(recipe, str(path))
    return recipe


#: transformers model types whose position ids start after the pad id (RoBERTa's 514 positions hold 512 tokens).
_POSITIONS_AFTER_PAD = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                                  "data2vec-text", "longformer", "mpnet", "ibert", "xmod", "markuplm"})


def _check_text_length(recipe: Recipe, where: str) -> None:
    """A text kind's ``max_length`` within its transformers backbone's positions, when its local config says how
    many (a model id is checked when its inputs meet the model): refused before a workspace or data source is made
    (a data source registered with a length no model of this backbone takes could not be used again)."""
    import json

    from .backbones.hf_family import FAMILY, model_source

    length = getattr(recipe.data.source, "max_length", None)
    if recipe.backbone.family != FAMILY or not isinstance(length, int):
        return
    config = Path(model_source(recipe.backbone.spec())) / "config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
        limit = settings.get("max_position_embeddings")
        if isinstance(limit, int) and settings.get("model_type") in _POSITIONS_AFTER_PAD:
            limit -= int(settings.get("pad_token_id", 1)) + 1
    except (OSError, ValueError, AttributeError, TypeError):
        return
    if isinstance(limit, int) and length > limit:
        raise RecipeError(f"{where}: data.{recipe.data.kind}.max_length {length} is more than the {limit} positions "
                          f"{recipe.backbone.name} takes; give at most {limit}")


def default_recipe() -> Recipe:
    """The embedded default (packaged EfficientNet-Lite0 on scikit-learn digits)."""
    return load_recipe(DEFAULT_RECIPE)
