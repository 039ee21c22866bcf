"""The release bundle's format, and loading one where it was sent: what a recipient needs, no workspace.

A bundle is a folder: ``deltas.safetensors`` (the composed deltas, base-model parameter names), ``release.json``
(:class:`ReleaseStatement`: the base model's spec, theta0's sha256, the ``trainable`` selection, the deltas'
digests and the privacy statement) and, when theta0 is a checkpoint file (e.g. ``dp-tangent pretrain`` on public
data), its tensors alone as ``base-checkpoint.safetensors``, which the spec names relative to the bundle.
:func:`load_release` checks every digest, rebuilds theta0 and checks it against ``weights_sha256``, and returns
the tangent model f(x; theta0) + J(x)·delta with the released deltas loaded. The bundle carries no data
preprocessing: inputs are given as the model takes them (a recipe's preprocessing is the workspace's).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ..errors import DPTangentError
from ..io import sha256_file

if TYPE_CHECKING:
    import torch

    from ..tangent import TangentModel

FORMAT = "dp-tangent-release/1"
DELTAS_FILE = "deltas.safetensors"
STATEMENT_FILE = "release.json"
BASE_CHECKPOINT = "base-checkpoint"  # + the checkpoint's own suffix
NOT_INCLUDED = (
    "record manifests or record commitments",
    "record counts of any shard",
    "sampling rates, step counts and noise multipliers (each is set from a shard's size)",
    "seeds, keys or any other randomness",
    "component files, shard names and per-record figures",
    "per-record NTK Grams (the workspace's gram cache)",
)
CAVEATS = (
    "Training runs' sampling rates and numbers of steps were set from their shards' own sizes: this bundle does "
    "not state them, but the deltas may reveal a shard's size, and so whether one record is in it; as in standard "
    "DP-SGD accounting, the guarantee treats those settings as fixed, the shard sizes taken as public.",
    "The guarantee bounds what the released deltas reveal about one record; the base model is public and "
    "identified by its sha256.",
)
#: The first caveat when every run was planned from a shard size stated in advance (``planned_shard_size``).
PLANNED_CAVEAT = ("Each training run's sampling rate, number of steps and noise were set from a shard size stated in "
                  "advance, not from its shard's own record count: none of them depends on whether one record is in "
                  "the data.")


#: The only caveat of a model without a guarantee (a non-private run read some of its records).
NON_PRIVATE_CAVEAT = ("No differential-privacy guarantee holds for this model: the deltas may reveal any record that "
                      "a non-private run read. The base model is public and identified by its sha256.")
#: The neighbouring relation a model without a guarantee states: none applies.
NO_RELATION = "none (no differential-privacy guarantee)"


def caveats(sizes_public: bool, private: bool = True) -> list[str]:
    """The statement's caveats: the first says how the runs' settings were chosen (see :data:`PLANNED_CAVEAT`); a
    model without a guarantee has only :data:`NON_PRIVATE_CAVEAT`."""
    if not private:
        return [NON_PRIVATE_CAVEAT]
    return list(CAVEATS) if sizes_public else [PLANNED_CAVEAT, *CAVEATS[1:]]


class ReleaseError(DPTangentError):
    """A release bundle that is incomplete, altered, or not one this tool wrote."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReleasedBase(_Strict):
    spec: dict[str, object]
    weights_sha256: str
    trainable: str
    files: dict[str, str] = {}  # bundle file name -> sha256: theta0's checkpoint, when it is a file
    # one input's shape as the model's data sections prepare it (image size, features, tokens; set, not read from
    # the data): None where they do not fix it (an npz source) or a bundle was written before it was recorded
    input_shape: list[int] | None = None


class ReleasedPrivacy(_Strict):
    differentially_private: bool
    epsilon: float | None
    delta: float | None
    neighbouring_relation: str
    unit: str
    accountant: str
    covers: str
    statement: str

    @model_validator(mode="after")
    def _a_claim_that_means_something(self) -> "ReleasedPrivacy":
        """A private model states a finite epsilon > 0 and a delta in [0, 1); a non-private one states neither."""
        if self.differentially_private:
            if self.epsilon is None or not (math.isfinite(self.epsilon) and self.epsilon > 0):
                raise ValueError(f"a differentially private model states a finite epsilon > 0, not {self.epsilon}")
            if self.delta is None or not 0 <= self.delta < 1:
                raise ValueError(f"a differentially private model states a delta in [0, 1), not {self.delta}")
        elif self.epsilon is not None or self.delta is not None:
            raise ValueError("a model without a differential-privacy guarantee states no epsilon or delta")
        return self


class ReleaseStatement(_Strict):
    """``release.json``: everything a recipient needs to load and judge the released model."""

    format: Literal["dp-tangent-release/1"] = FORMAT
    model: str
    released_at: str
    base: ReleasedBase
    deltas_file: str = DELTAS_FILE
    deltas_sha256: str
    deltas_file_sha256: str
    privacy: ReleasedPrivacy
    not_included: list[str] = list(NOT_INCLUDED)
    caveats: list[str] = list(CAVEATS)

    def files(self) -> list[str]:
        """Every file of the bundle."""
        return sorted({self.deltas_file, STATEMENT_FILE, *self.base.files})


@dataclass(frozen=True)
class ReleasedModel:
    """A loaded bundle: its statement and the tangent model with the released deltas (eval mode)."""

    statement: ReleaseStatement
    tangent: TangentModel

    def predict(self, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits f(x; theta0) + J(x)·delta for every row of ``inputs`` (model inputs), ``batch_size`` at a time."""
        import torch

        with torch.no_grad():
            return torch.cat([self.tangent(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


#: timm keyword arguments that would read weights or configuration from outside the bundle
_OUTSIDE_KWARGS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def read_statement(folder: str | os.PathLike[str], expected_sha256: str | None = None) -> ReleaseStatement:
    """The bundle's statement; with ``expected_sha256``, only if ``release.json`` has that digest."""
    path = Path(folder) / STATEMENT_FILE
    if path.is_symlink() or not path.is_file():
        raise ReleaseError(f"{folder}: no {STATEMENT_FILE}; a release bundle is the folder `dp-tangent release` wrote")
    data = path.read_bytes()  # hashed and parsed from the same bytes
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.strip().lower():
        raise ReleaseError(f"{path} is not the statement expected (its sha256 is {digest}): the bundle is not the one "
                           "released, or was edited since")
    try:
        return ReleaseStatement.model_validate_json(data.decode())
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise ReleaseError(f"{path} is not a release statement this tool wrote ({where}: {first['msg']})") from None
    except UnicodeDecodeError:
        raise ReleaseError(f"{path} is not a release statement this tool wrote (not UTF-8 text)") from None


def _checked_spec(root: Path, stated: dict[str, object], files: dict[str, str]) -> dict[str, object]:
    """The base model's spec to build, if it is one `dp-tangent release` writes: a family's own name and settings
    (as a recipe is checked), theta0 from a public source (packaged weights, a model hub, a random initialisation)
    or from the bundle's own checkpoint -- never from another local file or folder, save a transformers model
    directory stated by its absolute path (the statement's caveat says so)."""
    from ..backbones import BackboneSpec, family

    spec = dict(stated)
    kwargs = spec.get("timm_kwargs") or {}
    if not isinstance(kwargs, dict) or not isinstance(spec.get("options") or {}, dict):
        raise ReleaseError(f"{root}: {STATEMENT_FILE}'s base model settings are not a mapping; this tool never "
                           "writes that")
    outside = sorted(set(_OUTSIDE_KWARGS) & set(kwargs))
    if outside:
        raise ReleaseError(f"{root}: {STATEMENT_FILE}'s base model reads {', '.join(outside)} from outside the "
                           "bundle; this tool never writes that")
    if spec.get("checkpoint") is not None:
        if not isinstance(spec["checkpoint"], str) or spec["checkpoint"] not in files:
            raise ReleaseError(f"{root}: theta0's checkpoint {spec['checkpoint']} is not in the bundle")
        spec["checkpoint"] = str(root / spec["checkpoint"])
    try:
        base = BackboneSpec.from_dict(spec)
        kind = family(base.family)
        kind.check_name(base.name)
        kind.check(base)
    except (DPTangentError, KeyError, TypeError, ValueError) as err:
        raise ReleaseError(f"{root}: {STATEMENT_FILE}'s base model is not one this tool releases "
                           f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    name = base.name
    if base.family == "transformers" and not Path(name).is_absolute() and Path(name).exists():
        raise ReleaseError(f"{root}: theta0 is stated as the local folder {name!r}, relative to where this runs; a "
                           "bundle names a model id, packaged weights or an absolute model directory")
    if base.family == "transformers" and Path(name).is_absolute() and not Path(name).is_dir():
        raise ReleaseError(f"{root}: theta0 is the local model directory {name}, which the bundle does not carry and "
                           "this machine does not have: put a copy of that model there (its weights are checked)")
    return spec


def _checked_deltas(path: Path, deltas: dict[str, "torch.Tensor"], tangent: "TangentModel") -> None:
    """Released deltas hold finite values of the dtype of the deltas they set (a copy would cast silently)."""
    import torch

    own = dict(tangent.named_deltas())
    for name, value in deltas.items():
        wanted = own[name].dtype if name in own else value.dtype
        if value.dtype != wanted:
            raise ReleaseError(f"{path}: delta {name} is {value.dtype}, where the model's is {wanted}; a release "
                               "holds the deltas as trained")
        if not bool(torch.isfinite(value).all()):
            raise ReleaseError(f"{path}: delta {name} holds NaN or infinite values; no trained model has them")


def load_release(folder: str | os.PathLike[str], expected_sha256: str | None = None) -> ReleasedModel:
    """The released model in ``folder``, every file checked against the statement's digests and theta0 against
    ``weights_sha256`` (a one-line :class:`ReleaseError` otherwise).

    The digests catch a changed file, not an edit made consistently (a new statement with digests to match):
    ``expected_sha256``, the sha256 of ``release.json`` that ``dp-tangent release`` printed and logged, binds
    the whole bundle to the release, as the recipient should check it whenever the bundle came over a channel
    someone else could write to."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .component import deltas_digest
    from .errors import CompositionError
    from .rebuild import tangent_for

    root = Path(folder)
    statement = read_statement(root, expected_sha256)
    wanted = {statement.deltas_file: statement.deltas_file_sha256, **statement.base.files}
    for name, sha in wanted.items():
        path = root / name
        if Path(name).name != name or path.is_symlink() or not path.is_file():
            raise ReleaseError(f"{root}: {name} is missing (a bundle holds {', '.join(statement.files())})")
        if sha256_file(path) != sha:
            raise ReleaseError(f"{path} does not have the sha256 {STATEMENT_FILE} gives: the bundle was altered")
    spec = _checked_spec(root, dict(statement.base.spec), statement.base.files)
    try:
        tangent = tangent_for(spec, statement.base.weights_sha256, statement.base.trainable)
    except CompositionError:
        raise ReleaseError(f"{root}: the base model built from {STATEMENT_FILE} is not the theta0 the deltas were "
                           "trained at (its weights' sha256 differs)") from None
    except OSError as err:
        raise ReleaseError(f"{root}: the base model {STATEMENT_FILE} states cannot be built ({err})") from None
    except (DPTangentError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ReleaseError(f"{root}: the base model {STATEMENT_FILE} states cannot be built "
                           f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    try:
        deltas = load_file(root / statement.deltas_file)
        if deltas_digest(deltas) != statement.deltas_sha256:
            raise ReleaseError(f"{root / statement.deltas_file}: the deltas' digest differs from {STATEMENT_FILE}'s")
        _checked_deltas(root / statement.deltas_file, deltas, tangent)
        tangent.load_deltas(deltas)
    except (SafetensorError, OSError) as err:
        raise ReleaseError(f"{root / statement.deltas_file} cannot be read ({err})") from None
    except ReleaseError:
        raise
    except (DPTangentError, KeyError, TypeError, ValueError, RuntimeError) as err:  # a spec or deltas no release has
        raise ReleaseError(f"{root}: {STATEMENT_FILE} and the deltas do not make a model this tool released "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    return ReleasedModel(statement, tangent.eval())
