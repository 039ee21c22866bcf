"""``dp-tangent demo``: the whole story on the embedded default (the run itself: :mod:`.demo_run`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import DEFAULT_WORKSPACE, WorkspaceOption, app


@app.command()
def demo(
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    epsilon: Annotated[Optional[float], typer.Option(help="Target epsilon of every component (default: 8).")] = None,
    shards: Annotated[Optional[int], typer.Option(help="Disjoint private shards (default: 4).")] = None,
    trainable: Annotated[Optional[str], typer.Option(help="What to linearize, e.g. 'head' or 'blocks[-1:]' (default: head).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Local worker processes training the shards "
                                                        "(default: one per core, at most one per shard).")] = None,
    quick: Annotated[bool, typer.Option(help="A smaller run (fewer records and epochs), for smoke tests.")] = False,
    task: Annotated[str, typer.Option(help="image: EfficientNet-Lite0 on handwritten digits; text: all-MiniLM-L6-v2 "
                                           "on SMS spam (default trainable: blocks[-1:]).")] = "image",
) -> None:
    """The whole story on the embedded default: packaged EfficientNet-Lite0 + scikit-learn digits
    (``--task text``: packaged all-MiniLM-L6-v2 + the SMS Spam Collection)."""
    from dataclasses import replace

    from .demo_configs import DemoConfig, DemoError, TextDemoConfig, check_demo_settings, demo_executor

    if task not in ("image", "text"):
        raise DemoError(f"--task must be image or text, got {task!r}")
    given = {"epsilon": epsilon, "shards": shards, "trainable": trainable, "workers": workers}
    config = replace(TextDemoConfig() if task == "text" else DemoConfig(),
                     **{k: v for k, v in given.items() if v is not None})
    config = config.quick() if quick else config
    check_demo_settings(config)  # before any worker starts or the workspace is created
    jobs = config.shards
    executor = demo_executor(config, jobs)
    executor.start(jobs)  # local workers import torch while this process does (the demo imports it)
    try:
        if task == "text":
            from .demo_text import run_text_demo

            run_text_demo(workspace, config, executor=executor)
        else:
            from .demo_run import run_demo

            run_demo(workspace, config, executor=executor)
    finally:
        executor.close()  # idempotent: the story closed it once the components were trained
