"""The local executor: a pool of worker processes on this machine, one task at a time each.

Each worker is a fresh interpreter (``python -m dp_tangent.training.executors.local_worker``): no fork
(torch's thread pools do not survive one) and no re-import of the caller's script (which
``multiprocessing``'s spawn does, breaking scripts without a ``__main__`` guard). Workers are kept
for the whole run, each with ``threads`` torch/OpenMP threads (default: cores // workers) so they
do not fight over cores. A worker that dies (killed, out of memory, segfault) fails only the task
it was running; a fresh worker takes over the queue. Workers run in their own session and ignore
SIGINT: Ctrl-C reaches the driver, which stops them. On Linux a worker started from the driver's main thread
also dies with the driver, however the driver ends (SIGTERM, SIGKILL): nothing trains on for nobody.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import IO, TYPE_CHECKING

from .base import (ExecutorError, TaskDone, TaskFailed, TaskOutcome, TaskProgressFn, available_cores,
                   check_local_device)
from .local_worker import receive, send

if TYPE_CHECKING:
    from ..plan import TrainingTask

_STOP_GRACE_S = 5.0


@dataclass
class _Worker:
    process: subprocess.Popen
    tasks: Connection
    results: Connection
    stderr: IO[bytes]
    identity: dict[str, object] | None = None
    task: TrainingTask | None = None

    def close(self) -> None:
        for handle in (self.tasks, self.results, self.stderr):
            handle.close()

    def last_error_line(self) -> str:
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class LocalExecutor:
    """``workers`` processes (default: one per core), ``threads`` torch threads each (default: cores // workers)."""

    name = "local"

    def __init__(self, workers: int | None = None, *, threads: int | None = None) -> None:
        cores = available_cores()
        if workers is not None and workers < 1:
            raise ExecutorError(f"workers must be >= 1, got {workers}")
        if threads is not None and threads < 1:
            raise ExecutorError(f"threads must be >= 1, got {threads}")
        self.workers = workers or cores
        self.threads = threads or max(1, cores // self.workers)
        self.running: dict[str, int] = {}  # task name -> pid of the worker training it (for monitoring)
        self._startup_failures = 0
        self._pool: list[_Worker] | None = None

    def _start(self) -> _Worker:
        task_read, task_write = os.pipe()
        result_read, result_write = os.pipe()
        threads = str(self.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        # the worker dies with this process (local_worker._die_with), which follows the starting thread: main only
        driver = str(os.getpid() if threading.current_thread() is threading.main_thread() else 0)
        stderr = tempfile.TemporaryFile()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "dp_tangent.training.executors.local_worker", str(task_read), str(result_write),
                 threads, driver],
                pass_fds=(task_read, result_write), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, start_new_session=True)  # a terminal's Ctrl-C goes to the driver only
        finally:
            os.close(task_read)
            os.close(result_write)
        return _Worker(process, Connection(task_write, readable=False), Connection(result_read, writable=False), stderr)

    def start(self, tasks: int) -> None:
        """Start min(workers, tasks) worker processes; they import torch while the driver plans."""
        if self._pool is None:
            self._startup_failures = 0
            self._pool = []
            for _ in range(min(self.workers, max(1, tasks))):  # each in the pool at once: close() stops it
                self._pool.append(self._start())

    def prepare(self, tasks: Sequence[TrainingTask]) -> None:
        """Wait until every worker has started (replacing any that die), so a failed start costs no budget."""
        check_local_device(tasks)
        self.start(len(tasks))
        pool = self._pool
        assert pool is not None
        while any(w.identity is None for w in pool):
            starting = [w for w in pool if w.identity is None]
            ready = set(wait([w.results for w in starting]))
            for worker in [w for w in starting if w.results in ready]:
                _, alive = self._receive(worker, None)
                if not alive:
                    self._retire(worker, replace=True)

    def _retire(self, worker: _Worker, *, replace: bool) -> None:
        """Drop a dead worker from the pool, starting a fresh one in its place if asked."""
        assert self._pool is not None
        self._pool.remove(worker)
        worker.close()
        if replace:
            self._pool.append(self._start())

    def close(self) -> None:
        self.running.clear()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            _stop(pool)

    def run(self, tasks: Sequence[TrainingTask], progress: TaskProgressFn | None = None) -> Iterator[TaskOutcome]:
        owned = self._pool is None
        self.start(len(tasks))
        pool, queue = self._pool, deque(tasks)
        assert pool is not None
        try:
            while queue or any(w.task is not None for w in pool):
                for worker in pool:
                    if worker.task is None and worker.identity is not None and queue:
                        worker.task = queue.popleft()
                        self.running[worker.task.name] = worker.process.pid
                        try:
                            send(worker.tasks, worker.task)
                        except OSError:  # it just died: its end of file fails this task as lost, below
                            pass
                ready = set(wait([w.results for w in pool]))
                for worker in [w for w in pool if w.results in ready]:
                    outcome, alive = self._receive(worker, progress)
                    if outcome is not None:
                        yield outcome
                    if not alive:
                        self._retire(worker, replace=bool(queue) and len(pool) <= self.workers)
        finally:
            if owned:
                self.close()

    def _receive(self, worker: _Worker, progress: TaskProgressFn | None) -> tuple[TaskOutcome | None, bool]:
        """Handle one message from a worker, or its death (end of file); returns (outcome or None, still alive)."""
        try:
            kind, *payload = receive(worker.results)
        except (EOFError, OSError):
            return self._lost(worker), False
        if kind == "ready":
            worker.identity = payload[0]
        elif kind == "progress" and progress and worker.task is not None:
            progress(worker.task.name, *payload)
        elif kind in ("done", "failed") and worker.task is not None:
            task, worker.task = worker.task, None
            self.running.pop(task.name, None)
            if kind == "done":
                return TaskDone(task, payload[0]), True
            return TaskFailed(task, payload[0], worker.identity or {}), True
        return None, True

    def _lost(self, worker: _Worker) -> TaskOutcome | None:
        try:
            code = worker.process.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:  # closed its pipe but lingers: make sure it is gone
            worker.process.kill()
            code = worker.process.wait()
        if worker.identity is None:  # died before taking a task: replace it, unless starting itself fails
            self._startup_failures += 1
            if self._startup_failures >= max(2, self.workers):
                detail = worker.last_error_line()
                raise ExecutorError(f"local worker processes fail to start ({_exit_reason(code)})"
                                    + (f": {detail}" if detail else ""))
        if worker.task is None:
            return None
        task, worker.task = worker.task, None
        self.running.pop(task.name, None)
        reason = f"worker process {worker.process.pid} was lost ({_exit_reason(code)})"
        return TaskFailed(task, reason, worker.identity, lost=True)


def _stop(pool: list[_Worker]) -> None:
    """Ask idle workers to stop, terminate busy ones and those still starting (the driver is leaving: one still
    importing torch would read the stop only seconds later), reap all."""
    for worker in pool:
        try:
            if worker.task is None and worker.identity is not None:
                send(worker.tasks, None)
            else:
                worker.process.terminate()
        except OSError:
            pass
    for worker in pool:
        try:
            worker.process.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        worker.close()
