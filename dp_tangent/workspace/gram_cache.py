"""The workspace's cache of per-record NTK Grams (``cache/grams/``): Theta_i kept for later runs on the same records,
with the record's frozen-prefix features h_i where the run keeps them (``TrainConfig.keep_features``), so that a
later run skips the prefix's forward too.

Theta_i = J_i J_i^T (:mod:`dp_tangent.training.ntk_gram`) costs about K backward passes per record and
depends on theta0, the trainable selection and the record's model input only, so a second training of
a shard (another lr, a sweep, a retraining after a deletion) can take it from here. It is derived from
a private record, so:

* it stays inside the workspace: written and removed only through the commit path (every file's
  sha256 is in the audit log), never put in a release bundle or a report;
* it is trusted only as logged: a file whose sha256 is not the one the audit log last recorded for
  it is not used (its Thetas are computed again and the file rewritten) -- a Theta edited behind the
  tool's back would change clipping and so the DP guarantee -- and the workspace lock's integrity
  check has recorded the edit for ``audit verify`` already;
* a deleted record's Theta goes with it: the change that tombstones a record rewrites every cache
  file without it (or removes the file), as does the deletion change for anything left; a file
  that cannot be vouched for is removed. Tombstoned records are never offered;
* nothing is kept that can no longer be used: a file records the version of the code that computed it,
  and a run's completion change removes the shard's files of another code version, which no run of this
  code can match (after an upgrade they would otherwise stay for good). A file that records no version
  (written before versions were recorded) is kept, since the running code may have written it.

Layout: ``cache/grams/KEY/DATA_SOURCE/SHARD.safetensors``, KEY the first 32 hex digits of the sha256 of
:func:`gram_key`'s fields: the backbone spec and theta0's weights digest, the selection (spec, delta
names and shapes, cut), whether Theta is computed from cached features, the deltas' dtype, the device
type, and the code (:func:`~dp_tangent.training.gram_reuse.gram_code_version`: ``GRAM_VERSION``, the
sha256 of the package sources that compute Theta, the versions of torch, timm, opacus and
transformers). A file holds, per record,
its commitment, the sha256 of the model input its Theta was computed from (checked against the row
by the run itself, :mod:`dp_tangent.training.gram_reuse`), Theta_i in float64 and, where kept, h_i (which
depends on theta0, the cut and the input only; it is under the same key and the same rules). After a run the file
holds exactly the run's records (it is rewritten only when a Theta was computed or the records changed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .audit_log import canonical_json, written_digests
from .commit import FileRemoval, FileWrite
from .names import WorkspaceError, check_name

# Training imports torch; a deletion without retraining reads and rewrites cache files as numpy arrays and does not.
if TYPE_CHECKING:
    import torch

    from ..backbones import BackboneSpec
    from ..tangent import TangentModel
    from ..training.config import TrainConfig
    from ..training.gram_reuse import GramsUsed, KnownGrams
    from .store import Workspace

CACHE_DIR = "cache/grams"
_MAX_HEADER = 1 << 20  # a cache file's safetensors header is a few hundred bytes
FORMAT = "dp-tangent-gram-cache/1"
LABEL = "gram cache"  # the artifact name in the audit log


@dataclass(frozen=True)
class GramKey:
    """What Theta depends on besides the record (``fields``) and its sha256 (``digest``)."""

    digest: str
    fields: dict[str, Any]


def gram_code_version() -> dict[str, Any]:
    """The version of the code that computes Thetas (:func:`~dp_tangent.training.gram_reuse.gram_code_version`)."""
    from ..training.gram_reuse import gram_code_version as version

    return version()


def gram_key(backbone: BackboneSpec, base_sha256: str, tangent: TangentModel, config: TrainConfig) -> GramKey:
    """The key of Thetas of ``tangent`` (``backbone`` linearized, theta0 of digest ``base_sha256``) as a run
    of ``config`` computes them."""
    import torch

    deltas = list(tangent.named_deltas())
    fields = {"format": FORMAT, "base": backbone.to_dict(), "base_weights_sha256": base_sha256,
              "trainable": tangent.trainable, "cut": tangent.cut,
              "deltas": [[name, list(p.shape)] for name, p in deltas],
              "from_features": bool(config.cache_features and tangent.cut is not None),
              "dtype": sorted({str(p.dtype) for _, p in deltas}), "device": torch.device(config.device).type,
              "code": gram_code_version()}
    return GramKey(hashlib.sha256(canonical_json(fields)).hexdigest(), fields)


def cache_path(key: GramKey, data_source: str, shard: str) -> str:
    """Where the Thetas of ``shard`` of ``data_source`` under ``key`` are kept (relative to the workspace)."""
    source, shard = check_name(data_source, "data_source"), check_name(shard, "shard")
    return f"{CACHE_DIR}/{key.digest[:32]}/{source}/{shard}.safetensors"


@dataclass(frozen=True)
class GramFile:
    """One cache file's content: per row, a record's commitment, its input digest, its Theta and, where
    kept, its frozen-prefix features."""

    key: str
    commitments: tuple[str, ...]
    digests: tuple[str, ...]
    grams: torch.Tensor  # (m, K, K) float64
    code: str | None = None  # the code version that computed the Thetas (canonical JSON; None: not recorded)
    features: torch.Tensor | None = None  # (m, ...): the frozen prefix's output for each row (None: not kept)
    declined: bool = False  # the run that wrote it declined features (its data source's registry is what counts)

    def encode(self, rows: Sequence[int] | None = None) -> bytes:
        """The file's bytes (only ``rows``, if given): the same whether it holds torch tensors or numpy arrays."""
        from ..components.component import tensors_bytes

        rows = list(range(len(self.commitments)) if rows is None else rows)
        arrays = isinstance(self.grams, np.ndarray)
        tensors = {"commitments": _hex_rows([self.commitments[j] for j in rows], arrays),
                   "inputs": _hex_rows([self.digests[j] for j in rows], arrays),
                   "grams": self.grams[rows].astype(np.float64) if arrays else self.grams[rows].to(_gram_dtype())}
        if self.features is not None:
            tensors["features"] = self.features[rows]
        code = {} if self.code is None else {"code": self.code}
        declined = {"features": "declined"} if self.declined else {}
        return tensors_bytes(tensors, metadata={"format": FORMAT, "key": self.key, **code, **declined})


def _gram_dtype() -> torch.dtype:
    from ..training.gram_format import GRAM_DTYPE

    return GRAM_DTYPE


def _hex_rows(values: Sequence[str], arrays: bool = False) -> torch.Tensor | np.ndarray:
    """32-byte hex digests as an (m, 32) uint8 tensor (``arrays``: numpy array)."""
    rows = np.frombuffer(bytearray(b"".join(bytes.fromhex(v) for v in values)), dtype=np.uint8).reshape(-1, 32)
    if arrays:
        return rows
    import torch

    return torch.from_numpy(rows)


def _row_hex(rows: torch.Tensor | np.ndarray) -> tuple[str, ...]:
    return tuple(row.tobytes().hex() for row in (rows if isinstance(rows, np.ndarray) else rows.numpy()))


def _metadata(data: bytes) -> dict[str, str]:
    """A safetensors file's metadata (from its header alone: ``data`` may stop after it)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]).get("__metadata__") or {}


def _code(key: GramKey) -> str | None:
    """The code version in ``key`` (canonical JSON), None for a key that names none."""
    return canonical_json(key.fields["code"]).decode("ascii") if "code" in key.fields else None


#: The dtypes a cache file holds that are read as numpy arrays (``arrays``): features of another dtype (bfloat16,
#: float16) keep the file's tensors torch's, so that a rewrite writes what torch writes.
_NUMPY_DTYPES = frozenset({"U8", "F32", "F64"})


def _decode(data: bytes, arrays: bool = False) -> GramFile:
    """Parse a cache file's bytes, its tensors as numpy arrays if ``arrays`` and every dtype is one of
    :data:`_NUMPY_DTYPES`; ValueError (or a safetensors error) if they are not one."""
    from ..components.component import dtypes_within

    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    meta = header.get("__metadata__") or {}
    if arrays and dtypes_within(header, _NUMPY_DTYPES):
        from safetensors.numpy import load as load_tensors
    else:
        from safetensors.torch import load as load_tensors
    tensors = load_tensors(data)
    commitments, inputs, grams = tensors["commitments"], tensors["inputs"], tensors["grams"]
    features = tensors.get("features")
    m = len(commitments)
    if (meta.get("format") != FORMAT or tuple(commitments.shape) != (m, 32) or tuple(inputs.shape) != (m, 32)
            or _dtype(commitments) != "uint8" or _dtype(inputs) != "uint8"
            or grams.ndim != 3 or len(grams) != m or grams.shape[1] != grams.shape[2] or _dtype(grams) != "float64"
            or set(tensors) - {"commitments", "inputs", "grams", "features"}
            or (features is not None and (features.ndim < 1 or len(features) != m
                                          or not _dtype(features).startswith(("float", "bfloat"))))):
        raise ValueError("not a gram cache file of this format")
    return GramFile(str(meta.get("key")), _row_hex(commitments), _row_hex(inputs), grams, meta.get("code"), features,
                    meta.get("features") == "declined")


def _dtype(values: torch.Tensor | np.ndarray) -> str:
    """A tensor's or an array's dtype by name (``float64``, ``uint8``, ``bfloat16``)."""
    return str(values.dtype).removeprefix("torch.")


def logged_digests(ws: "Workspace") -> dict[str, str | None]:
    """Each cache file's sha256 as the tool last wrote it, by the audit log (None: logged as removed; see
    :func:`~.audit_log.written_digests`)."""
    return written_digests(ws.audit.entries(), lambda path: path.startswith(CACHE_DIR + "/"))


def read(ws: "Workspace", rel: str, logged: Mapping[str, str | None],
         arrays: bool = False) -> tuple[GramFile | None, str | None]:
    """The cache file ``rel`` if it is there and is what the audit log recorded; else (None, why not),
    ``why`` None when there is simply no file. The bytes hashed are the bytes parsed (``arrays``: see
    :func:`_decode`)."""
    path = ws.root / rel
    if not path.is_file():
        return None, None
    data = path.read_bytes()
    if logged.get(rel) is None:
        return None, f"{rel} is not accounted for by the audit log: not used, its Thetas computed again"
    if hashlib.sha256(data).hexdigest() != logged[rel]:
        return None, (f"{rel} differs from the sha256 the audit log recorded for it (edited behind the tool's "
                      "back?): not used, its Thetas computed again")
    try:
        return _decode(data, arrays), None
    except Exception:  # noqa: BLE001 -- any parse failure: the file is not usable, and we say so
        return None, f"{rel} is not a readable gram cache file: not used, its Thetas computed again"


@dataclass(frozen=True)
class JobCache:
    """A training job's use of the cache: its file, the records' commitments, what was offered, and
    why a file on disk was not used (if one was not)."""

    path: str
    key: GramKey
    commitments: tuple[str, ...]
    file: GramFile | None
    known: KnownGrams
    note: str | None = None
    superseded: tuple[str, ...] = ()  # the shard's files no run of this code can use, removed on completion
    keep_features: bool = True  # whether the run keeps features (its choice, else its data source's recorded one)
    had_features: bool = False  # whether the file held features (``file`` keeps none: ``known`` has those offered)


def prepare(ws: "Workspace", key: GramKey, data_source: str, shard: str, commitments: Sequence[str],
            deleted: set[str] | frozenset[str], logged: Mapping[str, str | None],
            keep_features: bool | None = None) -> JobCache:
    """What to offer a job on ``shard``: the logged Thetas of its records (never a tombstoned one's), and whether it
    keeps features (``keep_features``; None: it does -- the caller resolves a data source's recorded decline)."""
    from ..training.gram_reuse import KnownGrams

    rel = cache_path(key, data_source, shard)
    file, note = read(ws, rel, logged)
    if file is not None and file.key != key.digest:
        file, note = None, f"{rel} was written under another key: not used, its Thetas computed again"
    dtypes = key.fields.get("dtype")  # of the model's deltas, as gram_key records them
    if file is not None and file.features is not None and dtypes is not None and str(file.features.dtype) not in dtypes:
        # features of another dtype than the model's (a file written otherwise, review 88): computed again
        file = dataclasses.replace(file, features=None)
    known = KnownGrams()
    if file is not None:
        at = {c: j for j, c in enumerate(file.commitments)}
        pairs = [(i, at[c]) for i, c in enumerate(commitments) if c in at and c not in deleted]
        if pairs:
            index, rows = (list(t) for t in zip(*pairs))
            known = KnownGrams(tuple(index), tuple(file.digests[j] for j in rows), file.grams[rows],
                               None if file.features is None else file.features[rows])
    keep = keep_features is not False
    if not keep:
        known = dataclasses.replace(known, features=None)
    had = file is not None and file.features is not None
    if had:  # held once, as offered: a driver preparing many jobs would otherwise hold the cache twice
        file = dataclasses.replace(file, features=None)
    return JobCache(rel, key, tuple(commitments), file, known, note, superseded(ws, key, data_source, shard), keep,
                    had)


def superseded(ws: "Workspace", key: GramKey, data_source: str, shard: str) -> tuple[str, ...]:
    """The other cache files of ``shard`` that code of ``key``'s version can never use: those that record
    another version of the code (one recording none, or not readable as a cache file, is not among them)."""
    own = cache_path(key, data_source, shard).split("/")
    current = _code(key)
    if current is None:
        return ()
    out = []
    for rel in cache_files(ws):
        parts = rel.split("/")
        if len(parts) == len(own) and parts[-2:] == own[-2:] and parts != own:
            recorded = _recorded_code(ws.root / rel)
            if recorded is not None and recorded != current:
                out.append(rel)
    return tuple(out)


def _recorded_code(path: Path) -> str | None:
    """The code version a cache file records in its header, or None (none recorded, or not a cache file)."""
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            size = int.from_bytes(prefix, "little")
            if not 0 < size <= _MAX_HEADER:
                return None
            meta = _metadata(prefix + handle.read(size))
    except (OSError, ValueError, AttributeError, RecursionError):  # whatever is there, it vouches for nothing
        return None
    code = meta.get("code") if isinstance(meta, dict) else None
    return code if isinstance(code, str) else None


def completion(ws: "Workspace", job: JobCache | None, used: GramsUsed | None
               ) -> tuple[list[FileWrite], list[FileRemoval], dict[str, Any] | None]:
    """The cache write of a finished job (none when nothing changed), the removal of the shard's files this
    code cannot use (:func:`superseded`), and what its log entry says: counts only (hits, misses, files
    superseded), never which records."""
    if job is None or used is None:
        return [], [], None
    removals = [FileRemoval(rel, LABEL) for rel in job.superseded if (ws.root / rel).exists()]
    writes, params = _written(job, used)
    return writes, removals, {**params, "superseded": len(removals)} if removals else params


def _written(job: JobCache, used: GramsUsed) -> tuple[list[FileWrite], dict[str, Any]]:
    import torch

    from ..training.gram_format import GRAM_DTYPE

    if len(used.digests) != len(job.commitments):
        raise WorkspaceError("the worker reported Thetas for another number of records than it was given")
    offered = {i: r for r, i in enumerate(job.known.index)}
    computed = set(used.computed)
    hits = [i for i in range(len(job.commitments)) if i not in computed]
    if any(i not in offered or job.known.digests[offered[i]] != used.digests[i] for i in hits):
        raise WorkspaceError("the worker reported a cached Theta it was not offered for that input")
    params: dict[str, Any] = {"hits": used.hits, "misses": used.misses}
    if job.note:
        params["ignored"] = job.note
    features = _kept_features(job, used, offered) if job.keep_features else None
    if features is not None:
        params["features"] = {"hits": len(job.commitments) - len(used.feature_rows), "misses": len(used.feature_rows)}
    elif not job.keep_features or used.features_note:
        params["features"] = "declined" if not job.keep_features else used.features_note
    had = job.had_features
    unchanged = (not computed and job.file is not None and set(job.file.commitments) == set(job.commitments)
                 and len(job.file.commitments) == len(job.commitments)
                 and job.file.code is not None  # else rewritten to record its code version
                 and had == (features is not None) and not used.feature_rows
                 and job.file.declined == (not job.keep_features))
    if unchanged or not job.commitments:
        return [], {**params, "file": "unchanged"}
    k = used.grams.shape[-1] if computed else job.known.grams.shape[-1]
    grams = torch.zeros(len(job.commitments), k, k, dtype=GRAM_DTYPE)
    if computed:
        grams[list(used.computed)] = used.grams.to(GRAM_DTYPE)
    if hits:
        grams[hits] = job.known.grams[[offered[i] for i in hits]].to(GRAM_DTYPE)
    data = GramFile(job.key.digest, job.commitments, used.digests, grams, _code(job.key), features,
                    not job.keep_features).encode()
    return [FileWrite(job.path, data, LABEL)], {**params, "file": "written"}


def _kept_features(job: JobCache, used: GramsUsed, offered: Mapping[int, int]) -> torch.Tensor | None:
    """Every record's frozen-prefix features for the file, in record order: those the run computed and those
    it took from the offer (which must have been offered for that input); None when the run keeps none."""
    import torch

    if used.features is None or not job.commitments:
        return None
    n, rows = len(job.commitments), set(used.feature_rows)
    if len(used.features) != len(rows) or not rows <= set(range(n)):
        raise WorkspaceError("the worker reported features for other records than it computed them for")
    taken = [i for i in range(n) if i not in rows]
    known = job.known.features
    if taken and (known is None or any(i not in offered or job.known.digests[offered[i]] != used.digests[i]
                                       for i in taken)):
        raise WorkspaceError("the worker reported cached features it was not offered for that input")
    like = used.features if len(used.features) else known
    out = torch.empty(n, *like.shape[1:], dtype=like.dtype)
    if rows:
        out[list(used.feature_rows)] = used.features.to(out.dtype)
    if taken:
        if tuple(known.shape[1:]) != tuple(out.shape[1:]):
            raise WorkspaceError("the worker's features have another shape than the cached ones it took")
        out[taken] = known[[offered[i] for i in taken]].to(out.dtype)
    return out


def declining(ws: "Workspace", data_source: str, shard: str, own: str | None = None) -> list[FileWrite]:
    """The shard's cache files under any key (but ``own``, the run's, written by :func:`completion`) that hold
    features, rewritten without them and marked declined: a run told ``keep_features=False`` keeps none of the
    shard's records' features anywhere, whatever selection or mode kept them (a file that cannot be vouched for
    is never used, and the workspace lock refuses to run while it is there)."""
    tail = cache_path(GramKey("0" * 32, {}), data_source, shard).split("/")[-2:]
    logged, writes = logged_digests(ws), []
    for rel in cache_files(ws):
        if rel == own or rel.split("/")[-2:] != tail:
            continue
        file, _ = read(ws, rel, logged)
        if file is not None and file.features is not None:
            writes.append(FileWrite(rel, dataclasses.replace(file, features=None, declined=True).encode(), LABEL))
    return writes


def cache_files(ws: "Workspace") -> list[str]:
    """Every file under ``cache/grams`` (relative paths), whatever wrote it."""
    folder = ws.root / CACHE_DIR
    # relative as found, not resolved: a link planted there may point anywhere, and is listed (and removed) itself
    return sorted(p.relative_to(ws.root).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()
                  ) if folder.is_dir() else []


def without_records(ws: "Workspace", doomed: set[str] | frozenset[str]) -> tuple[list[FileWrite], list[FileRemoval]]:
    """The cache with the Thetas of ``doomed`` commitments gone: each file holding one rewritten without
    it (removed when nothing is left), and every file that cannot be vouched for (not as logged,
    unreadable) removed, since what it holds is unknown."""
    logged = logged_digests(ws)
    writes, removals = [], []
    for rel in cache_files(ws):
        file, _ = read(ws, rel, logged, arrays=True)
        if file is None:
            removals.append(FileRemoval(rel, LABEL))
            continue
        keep = [j for j, c in enumerate(file.commitments) if c not in doomed]
        if len(keep) == len(file.commitments):
            continue
        if keep:
            writes.append(FileWrite(rel, file.encode(keep), LABEL))
        else:
            removals.append(FileRemoval(rel, LABEL))
    return writes, removals


def holding(ws: "Workspace", doomed: set[str] | frozenset[str]) -> list[str]:
    """Cache files that hold a Theta of a ``doomed`` commitment, or cannot be read to tell."""
    logged = logged_digests(ws)
    out = []
    for rel in cache_files(ws):
        file, _ = read(ws, rel, logged, arrays=True)
        if file is None or doomed & set(file.commitments):
            out.append(rel)
    return out
