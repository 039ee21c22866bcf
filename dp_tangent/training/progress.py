"""Where the NTK Gram precompute reports its progress: torch-free, so that a driver process that only shows
the progress (the CLI's bar) imports neither the precompute nor Opacus, which it pulls in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

PrecomputeProgress = Callable[[int, int], None]  # (examples done, examples in all)
_PROGRESS: ContextVar[PrecomputeProgress | None] = ContextVar("dp_tangent_gram_precompute_progress", default=None)


@contextmanager
def precompute_progress(report: PrecomputeProgress | None) -> Iterator[None]:
    """Send the progress of every :func:`~dp_tangent.training.ntk_gram.per_example_grams` run meanwhile (in this
    thread) to ``report``."""
    token = _PROGRESS.set(report)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def current_precompute_progress() -> PrecomputeProgress | None:
    """The ``report`` of the innermost :func:`precompute_progress` in effect in this thread, if any."""
    return _PROGRESS.get()
