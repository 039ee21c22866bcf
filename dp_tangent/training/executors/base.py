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
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ...errors import DPTangentError

if TYPE_CHECKING:  # the command line starts workers before the driver imports torch: no training imports here
    from ..deltas import TrainedDeltas
    from ..plan import TrainingTask

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

    The driver calls ``start`` first (workers start up while it plans), then ``prepare`` with the
    planned tasks, both before any budget is reserved: an executor that cannot run the tasks (a
    cluster out of reach, workers that do not start, a GPU that is not there) raises
    :class:`ExecutorError` there and costs nothing. Then ``run``, and ``close`` always. ``run``
    alone starts and closes by itself. Closing early (Ctrl-C, an error) stops running tasks.
    """

    name: str

    def start(self, tasks: int) -> None:
        """Get ready for ``tasks`` tasks: start workers, connect to the cluster."""

    def prepare(self, tasks: Sequence[TrainingTask]) -> None:
        """Block until ready to run ``tasks``; raise :class:`ExecutorError` if they cannot run."""

    def run(self, tasks: Sequence[TrainingTask], progress: TaskProgressFn | None = None) -> Iterator[TaskOutcome]:
        ...

    def close(self) -> None:
        """Release what ``start`` acquired (idempotent)."""


def check_local_device(tasks: Sequence[TrainingTask]) -> None:
    """Refuse tasks asking for a CUDA device this machine does not have (before budget is spent)."""
    import torch

    for device in sorted({task.config.device for task in tasks}):
        kind = torch.device(device)
        if kind.type != "cuda":
            continue
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (kind.index or 0) >= count:
            raise ExecutorError(f"training.device {device!r} is not available on this machine "
                                f"({count} CUDA device(s)); use device: cpu")


def worker_identity(executor: str, **extra: object) -> dict[str, object]:
    """Where a task ran, for the audit log: executor, host name and process id (plus e.g. a Ray node id)."""
    return {"executor": executor, "host": socket.gethostname(), "pid": os.getpid(), **extra}


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
