"""Executors: where components' training runs (serial, local worker processes, a Ray cluster).

``create_executor(name, **options)`` is the front door; executors register by name, like
Opacus's grad samplers. Budget, components and the audit log stay with the driver
(:meth:`dp_tangent.workspace.Workspace.train_all`).
"""

from __future__ import annotations

from collections.abc import Callable

from .base import (Executor, ExecutorError, TaskDone, TaskFailed, TaskOutcome, TaskProgressFn, available_cores,
                   worker_identity)

_REGISTRY: dict[str, Callable[..., Executor]] = {}
DEFAULT_EXECUTOR = "local"


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Make ``create_executor(name, **options)`` call ``factory(**options)``."""
    _REGISTRY[name] = factory


def executor_names() -> list[str]:
    return sorted(_REGISTRY)


def create_executor(name: str = DEFAULT_EXECUTOR, **options: object) -> Executor:
    """An executor by registered name; options that are None are left to its defaults."""
    if name not in _REGISTRY:
        raise ExecutorError(f"unknown executor {name!r}; known: {', '.join(executor_names())}")
    return _REGISTRY[name](**{k: v for k, v in options.items() if v is not None})


def _serial(**options: object) -> Executor:
    from .serial import SerialExecutor

    return SerialExecutor(**options)


def local_executor_for(jobs: int, workers: int | None = None) -> Executor:
    """The local executor for ``jobs`` tasks: ``workers`` processes (default: one per core), never more than the
    tasks (an idle worker would only import torch)."""
    return create_executor("local", workers=min(available_cores() if workers is None else workers, jobs))


def _local(**options: object) -> Executor:
    from .local import LocalExecutor

    return LocalExecutor(**options)  # type: ignore[arg-type]


def _ray(**options: object) -> Executor:
    from .ray_cluster import RayExecutor

    return RayExecutor(**options)  # type: ignore[arg-type]


register_executor("serial", _serial)
register_executor("local", _local)
register_executor("ray", _ray)

__all__ = ["DEFAULT_EXECUTOR", "Executor", "ExecutorError", "TaskDone", "TaskFailed", "TaskOutcome", "TaskProgressFn",
           "available_cores", "create_executor", "executor_names", "local_executor_for", "register_executor",
           "worker_identity"]
