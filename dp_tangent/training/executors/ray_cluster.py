"""The Ray executor: each task is a Ray task, on a local Ray instance or an existing cluster.

Resources per task (``num_cpus``, ``num_gpus``) come from the recipe; a task given a GPU trains on
it (``TrainConfig.device = "cuda"``). Tasks are never retried by Ray (``max_retries=0``): a retry
would run on the shard's records again under the same reservation, so a lost task is reported
failed and the user retries it under a new reservation. Progress is reported per finished task,
not per step. Needs the optional extra ``pip install 'dp-tangent[ray]'`` (Ray with its client).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from ...interrupts import blocked
from ..deltas import TrainedDeltas, train_deltas
from ..plan import TrainingTask
from .base import ExecutorError, TaskDone, TaskFailed, TaskOutcome, TaskProgressFn, worker_identity

INSTALL_HINT = "the ray executor needs Ray: pip install 'dp-tangent[ray]'"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ExecutorError(INSTALL_HINT) from err
    return ray


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """Ray changes the driver's SIGTERM handling: ``ray.init`` installs ``sys.exit`` as its handler (and its core a
    crash handler that aborts the process), and ``ray.shutdown`` leaves SIGTERM to its default action (the process
    dies) while Python still names the old handler. A program that handles SIGTERM itself (``dp-tangent``: as Ctrl-C,
    held back while a workspace change commits) gets its own handler back, re-armed, after either call; a SIGTERM
    that Ray's handler turned into ``SystemExit`` meanwhile goes to it. A program without a handler of its own gets
    Ray's behaviour unchanged."""
    own = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if own in (None, signal.SIG_DFL):
        yield
        return
    try:
        yield
    except SystemExit as stop:
        if stop.code != signal.SIGTERM or not callable(own):  # Ray's handler: sys.exit(signum)
            raise
        own(signal.SIGTERM, None)  # the program's answer to the signal (dp-tangent's raises KeyboardInterrupt)
        raise
    finally:
        signal.signal(signal.SIGTERM, own)


def _train_on_node(task: TrainingTask) -> TrainedDeltas:
    """Runs inside a Ray worker: as many torch threads as CPUs Ray gave the task, its GPU if any."""
    import ray
    import torch

    context = ray.get_runtime_context()
    assigned = context.get_assigned_resources()
    torch.set_num_threads(max(1, math.floor(assigned.get("CPU", 1))))
    if assigned.get("GPU", 0) > 0 and task.config.device == "cpu":
        task = replace(task, config=replace(task.config, device="cuda"))
    worker = worker_identity(RayExecutor.name, node_id=context.get_node_id(), resources=dict(assigned))
    return replace(train_deltas(task), worker=worker)


class RayExecutor:
    """Ray tasks with ``num_cpus``/``num_gpus`` each.

    ``address``: None starts a local Ray instance; "auto" joins the running cluster;
    "ray://host:10001" a remote one through the Ray client.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: float = 1, num_gpus: float = 0,
                 init_options: dict[str, Any] | None = None) -> None:
        self.ray = _import_ray()
        if not num_cpus > 0 or not num_gpus >= 0:
            raise ExecutorError(f"a Ray task needs num_cpus > 0 and num_gpus >= 0, got {num_cpus}, {num_gpus}")
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.init_options = init_options or {}
        self._started = False

    def start(self, tasks: int) -> None:
        """Initialise Ray unless the caller already has (then the caller also shuts it down)."""
        ray = self.ray
        if self._started or ray.is_initialized():
            return
        try:
            with _keeping_sigterm_handler():
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, **self.init_options)
        except (OSError, RuntimeError, ValueError) as err:  # ConnectionError, TimeoutError are OSErrors
            where = self.address or "a new local instance"
            raise ExecutorError(f"cannot start or reach Ray at {where}: {str(err).splitlines()[0]}") from err
        self._started = True

    def prepare(self, tasks: Sequence[TrainingTask]) -> None:
        """Refuse GPU training without GPUs per task: Ray would hide every GPU from the task."""
        import torch

        for device in sorted({task.config.device for task in tasks}):
            index = torch.device(device).index or 0
            if device.startswith("cuda") and index >= self.num_gpus:
                raise ExecutorError(f"training.device {device!r} needs resources.gpus >= {index + 1} per Ray task "
                                    f"(got {self.num_gpus:g})")

    def close(self) -> None:
        if self._started:
            self._started = False
            with blocked((signal.SIGTERM, signal.SIGHUP)), _keeping_sigterm_handler():
                self.ray.shutdown()  # meanwhile SIGTERM's action is the default (death): held until re-armed

    def run(self, tasks: Sequence[TrainingTask], progress: TaskProgressFn | None = None) -> Iterator[TaskOutcome]:
        ray = self.ray
        owned = not (self._started or ray.is_initialized())
        self.start(len(tasks))
        remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(_train_on_node)
        pending = {remote.remote(task): task for task in tasks}
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:  # the task raised: a failure of the run, not of Ray
                    cause = err.cause if getattr(err, "cause", None) is not None else err
                    yield TaskFailed(task, f"{type(cause).__name__}: {cause}".splitlines()[0], {"executor": self.name})
                except ray.exceptions.RayError as err:  # worker crashed, node died, object lost, cancelled
                    yield TaskFailed(task, f"Ray task lost ({type(err).__name__}: {str(err).splitlines()[0]})",
                                     {"executor": self.name}, lost=True)
                else:
                    if progress:
                        progress(task.name, result.steps, task.plan.steps)
                    yield TaskDone(task, result)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if owned:
                self.close()
