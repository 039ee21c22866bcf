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

    from .demo_run import DemoConfig, DemoError, run_demo

    given = {"epsilon": epsilon, "shards": shards, "trainable": trainable, "workers": workers}
    if task == "text":
        from .demo_text import TextDemoConfig, run_text_demo

        text_config = replace(TextDemoConfig(), **{k: v for k, v in given.items() if v is not None})
        run_text_demo(workspace, text_config.quick() if quick else text_config)
        return
    if task != "image":
        raise DemoError(f"--task must be image or text, got {task!r}")
    config = replace(DemoConfig(), **{k: v for k, v in given.items() if v is not None})
    run_demo(workspace, config.quick() if quick else config)
