"""Reusing per-example NTK Grams across runs: row digests, the Thetas offered to a run, the rows it computes.

Theta_i = J_i J_i^T depends on theta0, the trainable selection and record i's model input x_i only (not
on its label, the loss or any optimisation setting). A workspace keeps Thetas for later runs
(:mod:`dp_tangent.workspace.gram_cache`, keyed by theta0 and the selection); here each offered Theta_i
is matched to its record by the sha256 of x_i as the model is given it (preprocessing done; dtype and
shape included), computed by the run itself from the rows it reads: a record whose input changed
computes its Theta again, however the offer was made.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from ..tangent import TangentModel
from .gram_format import GRAM_DTYPE, GRAM_VERSION
from .progress import PrecomputeProgress

log = logging.getLogger(__name__)
DIGEST_BATCH = 256  # rows read at a time when digesting inputs that are not a tensor (lazy images)
# The code a Theta comes from besides theta0's weights: the network's forward (backbone families and the
# packages they build on), its tangent twins, layouts and op overrides, and the Gram kernels and samplers.
_PACKAGE = Path(__file__).resolve().parents[1]
_SOURCES = ("training/ntk_gram.py", "training/gram_format.py", "training/grad_samplers.py", "training/features.py",
            "tangent/*.py", "backbones/*.py")
_DISTRIBUTIONS = ("torch", "timm", "opacus", "transformers")


@functools.cache
def gram_code_version() -> dict[str, object]:
    """What identifies the code that computes Theta: :data:`~.gram_format.GRAM_VERSION`, the sha256 of the
    package's sources it runs (any edit changes it: cached Thetas of older code then miss) and the
    versions of the libraries the network's forward comes from."""
    digest = hashlib.sha256()
    for path in sorted(p for pattern in _SOURCES for p in _PACKAGE.glob(pattern)):
        digest.update(f"{path.relative_to(_PACKAGE).as_posix()}|".encode() + path.read_bytes())
    versions = {}
    for name in _DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"gram_version": GRAM_VERSION, "sources_sha256": digest.hexdigest(), "versions": versions}


@dataclass(frozen=True)
class KnownGrams:
    """Thetas offered to a run: for its records at positions ``index``, the sha256 of the model input each
    Theta was computed from (``digests``) and the Theta (``grams``: (len(index), K, K), float64, CPU); where the
    cache kept them, the records' frozen-prefix features too (``features``: (len(index), ...), CPU; None: none
    kept). Empty: nothing is known yet, but the run should report its Thetas for later runs."""

    index: tuple[int, ...] = ()
    digests: tuple[str, ...] = ()
    grams: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, 0, dtype=GRAM_DTYPE))
    features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not len(self.index) == len(self.digests) == len(self.grams):
            raise ValueError("KnownGrams needs one digest and one Theta per index")
        if self.features is not None and len(self.features) != len(self.index):
            raise ValueError("KnownGrams needs one row of features per index, or none")

    def offered_features(self, start: int, digests: Sequence[str]) -> dict[int, torch.Tensor]:
        """The offered features of the rows ``start``, ``start + 1``, ... whose input digests are ``digests``:
        position in that run of rows -> features, only where the offer's digest is the row's."""
        if self.features is None:
            return {}
        rows = ((j, self._rows.get(start + j)) for j in range(len(digests)))
        return {j: self.features[row] for j, row in rows if row is not None and self.digests[row] == digests[j]}

    @functools.cached_property
    def _rows(self) -> dict[int, int]:
        """Record position -> its row in the offer."""
        return {i: row for row, i in enumerate(self.index)}


@dataclass(frozen=True)
class GramsUsed:
    """What a run reports back: every record's input digest (in record order), the positions whose
    Theta it computed (the misses) and those Thetas (float64, CPU); the other records' came from the offer.
    When it trained on frozen-prefix features and keeps them (``TrainConfig.keep_features``, within
    :data:`~.gram_format.FEATURE_CACHE_MAX_BYTES`): the positions whose features it computed
    (``feature_rows``) and those features (``features``, CPU); the others' came from the offer. ``features``
    None: none to keep."""

    digests: tuple[str, ...]
    computed: tuple[int, ...]
    grams: torch.Tensor
    feature_rows: tuple[int, ...] = ()
    features: torch.Tensor | None = None
    features_note: str | None = None  # why the run kept none where it could have (over the cache's size limit)

    @property
    def misses(self) -> int:
        return len(self.computed)

    @property
    def hits(self) -> int:
        return len(self.digests) - len(self.computed)


@dataclass
class GramReuse:
    """One run's reuse of Thetas: ``known`` in; the records' input ``digests`` (set by :func:`~.sgd.fit`
    while it reads the inputs), the positions whose features it computed there (``feature_rows``; None: it
    did not train on features) and what the run did (``used``, set by :func:`~.sgd.run_sgd` when it
    clips from Grams; None when it fell back to another mode) out."""

    known: KnownGrams = field(default_factory=KnownGrams)
    digests: list[str] | None = None
    feature_rows: tuple[int, ...] | None = None
    used: GramsUsed | None = None


def row_digests(rows: torch.Tensor) -> list[str]:
    """sha256 of each row's bytes, prefixed by the dtype and the row's shape."""
    rows = rows.detach().cpu().contiguous()
    prefix = f"{rows.dtype}|{tuple(rows.shape[1:])}|".encode()
    flat = rows.reshape(len(rows), -1).view(torch.uint8).numpy() if rows.numel() else [b""] * len(rows)
    return [hashlib.sha256(prefix + bytes(row)).hexdigest() for row in flat]


def input_digests(inputs: torch.Tensor) -> list[str]:
    """:func:`row_digests` of every row of ``inputs`` (a tensor, or lazy inputs read a batch at a time)."""
    if isinstance(inputs, torch.Tensor):
        return row_digests(inputs)
    return [d for start in range(0, len(inputs), DIGEST_BATCH)
            for d in row_digests(inputs[start:start + DIGEST_BATCH])]


def complete_grams(tangent: TangentModel, inputs: torch.Tensor, digests: Sequence[str], known: KnownGrams, *,
                   outputs: int, from_features: bool, batch_size: int,
                   progress: PrecomputeProgress | None = None) -> tuple[torch.Tensor, GramsUsed]:
    """Theta of every row of ``inputs`` (see :func:`.ntk_gram.per_example_grams`): the offered one where its
    digest equals the row's and its shape is ``outputs`` x ``outputs``, else computed. Returns the
    (n, K, K) Thetas on the inputs' device and what was computed."""
    if len(digests) != len(inputs):
        raise ValueError(f"{len(digests)} input digests for {len(inputs)} rows")
    theta = torch.zeros(len(inputs), outputs, outputs, dtype=GRAM_DTYPE, device=inputs.device)
    have = torch.zeros(len(inputs), dtype=torch.bool)
    if tuple(known.grams.shape[1:]) == (outputs, outputs):
        hits = [(i, row) for row, (i, d) in enumerate(zip(known.index, known.digests))
                if 0 <= i < len(inputs) and digests[i] == d]
        if hits:
            at, rows = (list(t) for t in zip(*hits))
            theta[at] = known.grams[rows].to(theta.device, GRAM_DTYPE)
            have[at] = True
    missing = tuple(int(i) for i in (~have).nonzero().flatten())
    log.info("NTK Grams: %d of %d examples offered, computing %d", len(inputs) - len(missing), len(inputs),
             len(missing))
    computed = theta.new_zeros(0, outputs, outputs)
    if missing:
        # here: the driver matches Thetas with this module, and ntk_gram loads Opacus
        from .ntk_gram import per_example_grams

        computed = per_example_grams(tangent, inputs[list(missing)], from_features=from_features,
                                     batch_size=batch_size, progress=progress)
        theta[list(missing)] = computed
    log.info("NTK Grams: done")
    return theta, GramsUsed(tuple(digests), missing, computed.detach().cpu())
