"""Component artifacts: one safetensors file holding the deltas, with its metadata inside.

The metadata (validated by pydantic) records what is needed to rebuild, compose, audit and forget
the component: the base model and the sha256 of its weights, the ``trainable`` selection, the loss,
the keyed record-id manifest, every DP parameter and the accountants' epsilons, the noise mode and
generator (and the seed, for runs that used one: never for a secure private run), and library
versions. ``deltas_sha256`` covers the tensors, so a file whose tensors were changed is refused on
load. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import DPTangentError
from ..io import atomic_write_bytes, sha256_file

FORMAT = "dp-tangent-component/1"
if TYPE_CHECKING:  # torch is imported where tensors are handled: reading metadata needs none
    import numpy as np
    import torch

    from privacy_accounting import Ledger, StoredEvent
    from privacy_accounting.composition import ModelGuarantee

Deltas = dict[str, "torch.Tensor | np.ndarray"]  # base-model parameter name -> delta (numpy: torch-free)
NON_PRIVATE_LABEL = "NON-PRIVATE (epsilon = infinity): no differential-privacy guarantee"
#: The neighbouring relation of a private run planned from a stated shard size, and of one planned from its own count
RELATION = "add or remove one record"
RELATION_SIZE_PUBLIC = "add or remove one record, the shard's size public (the run was planned from it)"
SEEDED_LABEL = "NOT DIFFERENTIALLY PRIVATE: noise from a public seed (reproducible test mode)"


def size_public(event: "StoredEvent") -> bool:
    """Whether a ledger event is a private run planned from its shard's own record count (its details name no
    ``planned_shard_size``): its guarantee holds under :data:`RELATION_SIZE_PUBLIC` only. Completed, failed or
    reserved alike, as each may have read records."""
    return event.details.get("planned_shard_size") is None and event.purpose.value != "non_private_baseline"


def guarantee_shards(guarantee: "ModelGuarantee") -> list[tuple[str, str]]:
    """Every shard a model's guarantee composes runs of: its own, and those whose runs read some of its records (an
    overlap allowed on purpose), as :func:`sizes_public` must be asked of them all (review 96)."""
    own = [(s.data_source, s.shard) for s in guarantee.shards]
    return list(dict.fromkeys([*own, *(key for key, _ in guarantee.record_shards)]))


def sizes_public(ledger: "Ledger", shards: Iterable[tuple[str, str]]) -> bool:
    """Whether a run on any of these (data source, shard) pairs was planned from its shard's own count
    (:func:`size_public`): a guarantee over them holds with the shards' sizes taken as public."""
    return any(size_public(e) for source, shard in shards for e in ledger.events(data_source=source, shard=shard))


class ComponentError(DPTangentError):
    """A component file is missing, corrupt, or does not match its metadata."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestInfo(_Strict):
    scheme: str
    key_id: str
    root: str
    records: int
    commitments: list[str]


class PrivacyInfo(_Strict):
    private: bool
    label: str
    epsilon: float | None = Field(description="reported (tightest valid upper bound); None = infinity")
    delta: float | None
    accountant: str | None
    epsilon_by_accountant: dict[str, float | None] = {}
    noise_multiplier: float
    max_grad_norm: float | None
    sample_rate: float
    steps: int
    sampling: str
    neighbouring_relation: str
    planned_shard_size: int | None = None  # N, stated in advance; None: planned from the shard's (public) count
    grad_sample_mode: str | None
    noise_generator: str
    secure_mode: bool
    ledger_reservation: str | None


class TrainingInfo(_Strict):
    seed: int | None  # None: a secure private run, whose noise no seed determines
    noise: Literal["secure", "seeded", "none"] | None = None  # "none": non-private; None: written before noise modes
    epochs: int
    batch_size: int
    physical_batch_size: int
    optimizer: str
    lr: float
    momentum: float
    l2: float
    device: str = "cpu"
    worker: dict[str, Any] | None = None  # executor, host, pid (and Ray node) that trained it


class ComponentMetadata(_Strict):
    """What a component file says about itself (internal to the workspace: it holds the shard's record
    count and manifest): base and theta0's digest, selection, loss, manifest, privacy, training."""

    format: Literal["dp-tangent-component/1"] = FORMAT
    name: str
    created_at: str
    base: dict
    base_weights_sha256: str
    trainable: str
    loss: dict
    data_source: str
    shard: str
    manifest: ManifestInfo
    privacy: PrivacyInfo
    training: TrainingInfo
    versions: dict[str, str]
    deltas_sha256: str

    @property
    def epsilon(self) -> float:
        return math.inf if self.privacy.epsilon is None else self.privacy.epsilon


def deltas_digest(deltas: Deltas) -> str:
    """sha256 over every delta's name, dtype (as torch names it), shape and bytes, in name order; the same for the
    deltas as torch tensors or as numpy arrays (:func:`load_component` with ``arrays=True``)."""
    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(deltas):
        t = deltas[name]
        if isinstance(t, np.ndarray):
            dtype, data = f"torch.{t.dtype.name}", np.ascontiguousarray(t).reshape(-1).view(np.uint8).tobytes()
        else:  # viewed as bytes by torch: bfloat16 has no numpy dtype
            import torch

            dtype, data = str(t.dtype), t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        digest.update(f"{name}|{dtype}|{tuple(t.shape)}|".encode())
        digest.update(data)
    return digest.hexdigest()


def component_bytes(deltas: dict[str, torch.Tensor], metadata: ComponentMetadata) -> bytes:
    """The component file's content: the deltas as safetensors, the metadata in its header."""
    if metadata.deltas_sha256 != deltas_digest(deltas):
        raise ComponentError("metadata.deltas_sha256 does not match the deltas being saved")
    return tensors_bytes(deltas, {"dp_tangent": metadata.model_dump_json()})


def save_component(path: str | Path, deltas: dict[str, torch.Tensor], metadata: ComponentMetadata) -> str:
    """Write atomically; returns the file's sha256."""
    atomic_write_bytes(path, component_bytes(deltas, metadata))
    return sha256_file(path)


class Component:
    """A loaded component: ``deltas`` (base parameter names), ``metadata``, ``sha256`` of the file."""

    def __init__(self, path: Path, deltas: dict[str, torch.Tensor], metadata: ComponentMetadata, sha256: str) -> None:
        self.path, self.deltas, self.metadata, self.sha256 = path, deltas, metadata, sha256

    @property
    def name(self) -> str:
        return self.metadata.name


def read_metadata(path: str | Path) -> ComponentMetadata:
    path = Path(path)
    if not path.is_file():
        raise ComponentError(f"component {path} does not exist")
    try:
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            if not 0 < header_len < 1 << 28:
                raise ValueError("bad header length")
            header = json.loads(handle.read(header_len))
        return ComponentMetadata.model_validate_json(header["__metadata__"]["dp_tangent"])
    except (ValueError, KeyError, TypeError, ValidationError, UnicodeDecodeError) as err:
        raise ComponentError(f"{path} is not a valid dp-tangent component ({type(err).__name__})") from err


def tensors_bytes(deltas: Deltas, metadata: dict[str, str] | None = None) -> bytes:
    """Tensors (deltas, or a checkpoint's weights) as a safetensors file's bytes: the same bytes for numpy arrays as
    for torch tensors."""
    import numpy as np

    if all(isinstance(t, np.ndarray) for t in deltas.values()):
        from safetensors.numpy import save

        # reshaped: ascontiguousarray gives a scalar one dimension, and the file must keep the shape ()
        return save({n: np.ascontiguousarray(t).reshape(t.shape) for n, t in deltas.items()}, metadata=metadata)
    from safetensors.torch import save

    return save({n: t.detach().cpu().contiguous() for n, t in deltas.items()}, metadata=metadata)


def load_deltas(path: str | Path, arrays: bool = False) -> Deltas:
    """A safetensors file's tensors; ``arrays``: as numpy arrays, without importing torch, where every one is float32 or
    float64 (:data:`_NUMPY_DTYPES`; otherwise torch tensors). Raises safetensors' errors, OSError or ValueError."""
    if arrays and _numpy_dtypes(Path(path)):
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file
    return load_file(str(path))


def load_component(path: str | Path, arrays: bool = False) -> Component:
    """Load and verify: schema, and the tensors' digest against ``deltas_sha256``. ``arrays``: the deltas as numpy
    arrays, without importing torch, where all are float32 or float64 (:func:`load_deltas`)."""
    path = Path(path)
    from safetensors import SafetensorError

    metadata = read_metadata(path)
    try:
        deltas = load_deltas(path, arrays)
    except (SafetensorError, OSError, ValueError) as err:
        raise ComponentError(f"{path} is corrupt: {err}") from err
    if deltas_digest(deltas) != metadata.deltas_sha256:
        raise ComponentError(f"{path}: the deltas do not match the digest in its metadata (modified or corrupt)")
    return Component(path, deltas, metadata, sha256_file(path))


#: The safetensors dtypes read as numpy arrays: numpy holds bfloat16 not at all, and a float16 sum would round once
#: where torch rounds twice (float64 to float32 to float16), so those two stay torch tensors.
_NUMPY_DTYPES = frozenset({"F32", "F64"})


def _numpy_dtypes(path: Path) -> bool:
    """Whether every tensor of a safetensors file has a dtype numpy holds (its header, read alone)."""
    with open(path, "rb") as handle:
        return dtypes_within(json.loads(handle.read(int.from_bytes(handle.read(8), "little"))), _NUMPY_DTYPES)


def dtypes_within(header: object, dtypes: frozenset[str]) -> bool:
    """Whether a parsed safetensors header is a mapping whose every tensor has one of ``dtypes`` (``F32``, ``U8``)."""
    return isinstance(header, dict) and all(isinstance(entry, dict) and entry.get("dtype") in dtypes
                                            for key, entry in header.items() if key != "__metadata__")
