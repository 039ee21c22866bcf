"""What a private training run is asked for: the privacy target and the optimisation settings.

``epsilon = inf`` trains without clipping or noise, for comparison only: the component and the
ledger say NON-PRIVATE, and a shard with a finite budget refuses it. ``noise="seeded"`` runs DP-SGD
with noise and Poisson sampling from the public ``seed`` (reproducible, for tests and baselines):
anyone who knows the seed can recompute the noise, so such a run is not private either and is
labelled and accounted as such; the default ``noise="secure"`` draws both from a CSPRNG under a
fresh OS key (:mod:`.secure_random`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import DPTangentError
from .losses import ConvexLoss

GRAD_SAMPLE_MODES = ("gram", "hooks", "ghost")
NOISE_MODES = ("secure", "seeded")
ProgressFn = Callable[[int, int], None]


class TrainingError(DPTangentError):
    """A training request that cannot run as asked: refused before its reservation (nothing spent or
    written), or a run that failed (e.g. diverged) after it, whose reservation stays spent."""


@dataclass(frozen=True)
class PrivacySpec:
    """Target (epsilon, delta), or an explicit noise multiplier; ``epsilon=inf`` is non-private.

    ``delta=None`` becomes min(1e-5, 0.1/N) for a shard of N records (well below 1/N).

    ``planned_shard_size``: N, the shard size the run is planned for, stated in advance and public (e.g. the
    expected size of a random split of a dataset of known size). The sampling rate, steps, calibrated sigma,
    default delta and the batch mean's divisor then come from N, not from the count of records the shard holds,
    so none of them depends on whether any one record is in it. None: they come from the shard's own count,
    which the guarantee then treats as public (see docs/threat-model.md). A non-private run (epsilon = inf),
    which guarantees nothing, trains shuffled mini-batches of its own records whatever N says.
    """

    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "pld"
    planned_shard_size: int | None = None

    @property
    def private(self) -> bool:
        return not (self.epsilon is not None and math.isinf(self.epsilon))

    def validate(self, n: int) -> float:
        """Checks the request against a shard of ``n`` records; returns the delta to use."""
        if self.private and (self.epsilon is None) == (self.noise_multiplier is None):
            raise TrainingError("give exactly one of epsilon (a target) or noise_multiplier")
        if self.epsilon is not None and not self.epsilon > 0:
            raise TrainingError(f"epsilon must be > 0 (or inf for non-private), got {self.epsilon}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise TrainingError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise TrainingError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.planned_shard_size is not None and (isinstance(self.planned_shard_size, bool) or not isinstance(
                self.planned_shard_size, int) or self.planned_shard_size < 1):
            raise TrainingError(f"planned_shard_size must be a positive integer, got {self.planned_shard_size!r}")
        delta = self.delta if self.delta is not None else min(1e-5, 0.1 / n)
        if not 0 < delta < 1:
            raise TrainingError(f"delta must be in (0, 1), got {delta}")
        if self.private and delta >= 1.0 / n:
            raise TrainingError(f"delta {delta:g} >= 1/n = {1.0 / n:g} for a shard of {n} records: "
                                "such a delta allows releasing a record outright; use delta well below 1/n")
        return delta


def planned_size(details: Mapping[str, Any]) -> int | None:
    """The shard size N a run was planned for, from its reservation's details (``plan.reservation_request``): the
    size stated in advance, else the records it read (None where they do not say, e.g. another tool's run)."""
    return details.get("planned_shard_size") or details.get("records")


def check_budget_delta(delta: float, n: int, budget: str) -> None:
    """A budget's delta is below 1/n for a shard of ``n`` records (``budget`` names it in the message): every epsilon
    of the shard is stated at that delta, where a run's own delta is held below 1/n (:meth:`PrivacySpec.validate`).
    """
    if delta >= 1.0 / n:
        raise TrainingError(f"{budget}: delta {delta:g} >= 1/n = {1.0 / n:g} for a shard of {n} records, and every "
                            "epsilon of the shard is stated at the budget's delta: such a delta allows releasing a "
                            "record outright; set a delta well below 1/n (`dp-tangent budget set ... --delta`)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  # expected logical batch size (Poisson)
    physical_batch_size: int = 64
    lr: float = 0.5
    momentum: float = 0.9
    # "gram": exact clipping from per-example NTK Grams (falls back to "ghost" where it cannot run);
    # "hooks"/"ghost": Opacus's per-sample gradient hooks / ghost clipping (see training.sgd)
    grad_sample_mode: str = "gram"
    seed: int | None = 0  # shuffling of non-private runs and the "seeded" noise; a secure private run ignores it
    loss: ConvexLoss = field(default_factory=ConvexLoss)
    cache_features: bool = True
    # with the Gram mode in a workspace: keep the frozen-prefix features beside the Thetas, so that a later run on
    # the same records (a retraining after a deletion, a sweep) skips the prefix's forward (workspace.gram_cache);
    # None: as the data source's registry records for the shard (kept, unless a run declined them)
    keep_features: bool | None = None
    device: str = "cpu"  # "cuda" / "cuda:K" to train on a GPU (deltas come back on the CPU)
    noise: str = "secure"  # "seeded": reproducible from ``seed``, NOT differentially private

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "physical_batch_size"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise TrainingError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise TrainingError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise TrainingError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {self.grad_sample_mode!r}")
        import torch  # here, not at the top: a recipe's choices (GRAD_SAMPLE_MODES) are read before torch loads

        try:
            kind = torch.device(self.device).type
        except RuntimeError as err:
            raise TrainingError(f"device must be 'cpu' or 'cuda[:K]', got {self.device!r}") from err
        if kind not in ("cpu", "cuda"):
            raise TrainingError(f"device must be 'cpu' or 'cuda[:K]', got {self.device!r}")
        if self.noise not in NOISE_MODES:
            raise TrainingError(f"noise must be one of {NOISE_MODES}, got {self.noise!r}")
        if self.keep_features is not None and not isinstance(self.keep_features, bool):
            raise TrainingError(f"keep_features must be True, False or None, got {self.keep_features!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TrainingError(f"seed must be an integer or None, got {self.seed!r}")


def differentially_private(privacy: PrivacySpec, config: TrainConfig) -> bool:
    """True only for DP-SGD whose noise and sampling nobody can recompute: private and ``noise="secure"``."""
    return privacy.private and config.noise == "secure"


def uses_seed(privacy: PrivacySpec, config: TrainConfig) -> bool:
    """Whether ``config.seed`` determines the run: non-private shuffling, or the seeded noise mode."""
    return not differentially_private(privacy, config)
