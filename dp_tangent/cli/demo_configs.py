"""The demos' settings (``dp-tangent demo``, image and text), importable without torch: the command reads them
to start its worker processes before it imports the demo itself (and torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from ..errors import DPTangentError
from ..tangent.trainable_forms import written_form
from ..training.config import TrainConfig
from ..training.losses import ConvexLoss

if TYPE_CHECKING:
    from ..training.executors import Executor

__all__ = ["DemoConfig", "DemoError", "TextDemoConfig", "check_demo_settings", "demo_executor"]


class DemoError(DPTangentError):
    """A demo step that failed."""


@dataclass(frozen=True)
class DemoConfig:
    epsilon: float = 8.0
    delta: float = 1e-5
    shards: int = 4
    image_size: int = 48
    trainable: str = "head"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    seed: int = 0
    test_fraction: float = 0.2
    max_records: int | None = None  # use the first N digits only (tests)
    workers: int | None = None  # local worker processes (default: one per core, at most one per shard)
    executor: str = "local"  # or "serial": every component in this process

    def quick(self) -> "DemoConfig":
        # 600 records split five ways leave about 96 per shard: the full run's batch of 128 would not fit
        return replace(self, epochs=4, max_records=self.max_records or 600, batch_size=min(self.batch_size, 64))

    @property
    def budget_epsilon(self) -> float:
        """Per-shard budget: room for the first run and one retraining after a deletion."""
        return 2 * self.epsilon

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, physical_batch_size=self.batch_size,
                           lr=self.lr, seed=self.seed, loss=ConvexLoss("cross_entropy"))


@dataclass(frozen=True)
class TextDemoConfig:
    epsilon: float = 8.0
    delta: float = 1e-5
    shards: int = 4
    max_length: int = 32  # tokens per message (about 2 in 3 messages fit whole)
    trainable: str = "blocks[-1:]"  # the last transformer layer (attention, MLP, LayerNorms) and the head
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.5
    grad_sample_mode: str = "gram"  # exact clipping from per-record 2x2 NTK Grams: no per-sample gradients
    seed: int = 0
    test_fraction: float = 0.2
    max_records: int | None = None  # the first N messages only (tests)
    workers: int | None = None  # local worker processes (default: one per core, at most one per shard)
    executor: str = "local"  # or "serial": every component in this process (tests)

    def quick(self) -> "TextDemoConfig":
        return replace(self, epochs=1, max_records=self.max_records or 600)

    @property
    def budget_epsilon(self) -> float:
        """Per-shard budget: room for the first run and one retraining after a deletion."""
        return 2 * self.epsilon

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, physical_batch_size=self.batch_size,
                           lr=self.lr, seed=self.seed, grad_sample_mode=self.grad_sample_mode,
                           loss=ConvexLoss("cross_entropy"))


class _ExecutorSettings(Protocol):
    executor: str
    workers: int | None


class _DemoSettings(_ExecutorSettings, Protocol):
    epsilon: float
    shards: int
    trainable: str


def check_demo_settings(config: _DemoSettings) -> None:
    """Refuse, in one line and before anything is created or loaded, settings the story cannot run with."""
    if config.shards < 1:
        raise DemoError(f"shards must be at least 1, got {config.shards}")
    if not (config.epsilon > 0 and math.isfinite(2 * config.epsilon)):  # private components, a budget of 2 epsilon
        raise DemoError(f"epsilon must be finite and > 0 (and twice it, each shard's budget, too), got "
                        f"{config.epsilon:g}")
    if config.workers is not None and config.workers < 1:
        raise DemoError(f"workers must be at least 1, got {config.workers}")
    try:
        written_form(config.trainable)
    except ValueError as error:
        raise DemoError(f"trainable {error}") from None


def demo_executor(config: _ExecutorSettings, jobs: int) -> "Executor":
    """The executor ``config`` names, for ``jobs`` components: local workers (one per core, at most one per
    shard, unless ``config.workers`` says), or another executor by name."""
    from ..training.executors import create_executor, local_executor_for

    if config.executor == "local":
        return local_executor_for(jobs, config.workers)
    return create_executor(config.executor)
