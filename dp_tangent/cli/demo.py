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
) -> None:
    """The whole story on the embedded default: packaged EfficientNet-Lite0 + scikit-learn digits."""
    from dataclasses import replace

    from .demo_run import DemoConfig, run_demo

    given = {"epsilon": epsilon, "shards": shards, "trainable": trainable, "workers": workers}
    config = replace(DemoConfig(), **{k: v for k, v in given.items() if v is not None})
    run_demo(workspace, config.quick() if quick else config)
