"""The serial executor: every task in this process, one after another (the reference for the others)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from .base import ExecutorError, TaskDone, TaskFailed, TaskOutcome, TaskProgressFn, check_local_device, worker_identity

if TYPE_CHECKING:
    from ..plan import TrainingTask


class SerialExecutor:
    name = "serial"

    def start(self, tasks: int) -> None:
        pass

    def prepare(self, tasks: Sequence[TrainingTask]) -> None:
        check_local_device(tasks)
        try:  # the training stack (Opacus) loads now, before anything is reserved: a broken install spends nothing
            from .. import sgd  # noqa: F401
        except Exception as err:  # noqa: BLE001 -- ImportError, or e.g. an AttributeError of an Opacus/torch mismatch
            raise ExecutorError(f"training cannot start in this process: {type(err).__name__}: {err}") from err

    def close(self) -> None:
        pass

    def run(self, tasks: Sequence[TrainingTask], progress: TaskProgressFn | None = None) -> Iterator[TaskOutcome]:
        from ..deltas import train_deltas  # here: a driver that only creates this executor imports no training

        for task in tasks:
            report = (lambda step, total, name=task.name: progress(name, step, total)) if progress else None
            worker = worker_identity(self.name)
            try:
                result = train_deltas(task, report)
            except Exception as err:  # noqa: BLE001 -- an outcome, not a crash of the driver (Ctrl-C still is)
                yield TaskFailed(task, f"{type(err).__name__}: {err}", worker, error=err)
            else:
                yield TaskDone(task, replace(result, worker=worker))
