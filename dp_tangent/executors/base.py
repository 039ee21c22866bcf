"""What an executor is: it runs :class:`~dp_tangent.training.TrainingTask` values and reports outcomes.

An executor only trains. Reserving budget, writing components and the audit log stay with the
driver (:meth:`dp_tangent.workspace.Workspace.train_all`), so privacy bookkeeping is central and
an executor cannot spend or lose budget on its own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import DPTangentError
from ..training import TrainedDeltas, TrainingTask

#: ``progress(task_name, step, total)``: called by the driver as a task advances.
TaskProgressFn = Callable[[str, int, int], None]


class ExecutorError(DPTangentError):
    """An executor that cannot be created or started as asked (nothing was reserved or trained)."""


@dataclass(frozen=True)
class TaskDone:
    """A task that finished: its deltas and who trained them."""

    task: TrainingTask
    result: TrainedDeltas


@dataclass(frozen=True)
class TaskFailed:
    """A task that raised, or whose worker was lost (``lost``: killed, crashed, node gone).

    ``error`` is the exception itself where the executor ran the task in this process.
    """

    task: TrainingTask
    reason: str
    worker: dict[str, object]
    lost: bool = False
    error: BaseException | None = None


TaskOutcome = TaskDone | TaskFailed


@runtime_checkable
class Executor(Protocol):
    """Runs tasks, yielding one outcome per task as each ends (in any order).

    The driver calls ``start`` before it reserves any budget (so a cluster that cannot be reached
    costs nothing, and workers start up while the driver plans), then ``run``, and ``close`` always.
    ``run`` without ``start`` starts and closes by itself. Closing early (Ctrl-C in the driver, an
    error) stops the tasks still running.
    """

    name: str

    def start(self, tasks: int) -> None:
        """Get ready for ``tasks`` tasks: start workers, connect to the cluster."""

    def run(self, tasks: Sequence[TrainingTask], progress: TaskProgressFn | None = None) -> Iterator[TaskOutcome]:
        ...

    def close(self) -> None:
        """Release what ``start`` acquired (idempotent)."""


def worker_identity(executor: str, **extra: object) -> dict[str, object]:
    """Where a task ran, for the audit log: executor, host name and process id (plus e.g. a Ray node id)."""
    return {"executor": executor, "host": socket.gethostname(), "pid": os.getpid(), **extra}


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
