"""The accountants, imported in a forked process while a program starts: its first figure sooner.

A figure no cache holds costs its process the import of scipy, dp-accounting and Opacus's accountant files
(about 0.5 s here) before any computing, and a command line has its own start to do first (about 0.35 s).
:func:`start`, called first thing (only the standard library and light modules loaded, no thread: a safe fork),
forks a worker that imports the accountants at once, so both happen together, and has ``accountants`` send each
figure no cache holds to :func:`compute`, which has the worker compute it with the same code as this process would,
bit for bit. Anything unexpected (no worker, a worker that died, an error other than the
accountants' own) returns None, and the caller computes in-process as it would without one.

The worker reads nothing but what :func:`compute` sends it, writes nothing but its answers (its standard streams go
to ``/dev/null``), ignores Ctrl-C (the program decides) and ends with the program: at exit, or when the program's
end of its pipe closes. POSIX only, and only with two or more CPUs (on one, the worker would only slow the
program). ``PRIVACY_ACCOUNTING_WORKER=off`` turns it off.
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe
from typing import Any

from privacy_accounting import accountants
from privacy_accounting.accountants import AccountantSettings

ENV = "PRIVACY_ACCOUNTING_WORKER"
_OFF = ("0", "off", "no", "false")


@dataclass
class _Worker:
    pid: int
    connection: Connection  # the program's end: requests out, answers in
    owner: int  # the program's pid: a process forked from it later has no worker of its own
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ours(self) -> bool:
        return os.getpid() == self.owner


_worker: _Worker | None = None


def available() -> bool:
    """Whether :func:`start` would start a worker here: POSIX, two CPUs or more, not turned off."""
    if os.environ.get(ENV, "").strip().lower() in _OFF or not hasattr(os, "fork"):
        return False
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus >= 2


def start() -> bool:
    """Fork the worker, once per process, where :func:`available`; whether one is running. Call it before the
    program imports anything heavy or starts a thread: the fork copies the process as it is."""
    global _worker
    if _worker is not None:
        return True
    if not available():
        return False
    program, worker = Pipe()
    try:
        pid = os.fork()
    except OSError:  # no process to spare: compute in-process
        program.close()
        worker.close()
        return False
    if pid == 0:  # the worker: never returns
        program.close()
        _serve(worker)
    worker.close()
    _worker = _Worker(pid, program, os.getpid())
    accountants.compute_elsewhere(compute)
    atexit.register(stop)
    return True


def compute(event_json: str, delta: float, accountant: str, settings: AccountantSettings
            ) -> tuple[float | None, str] | None:
    """The worker's answer for one figure, as ``accountants.compute_epsilon`` returns it; None where there is no
    worker or it did not answer (then the caller computes it)."""
    worker = _worker
    if worker is None or not worker.ours():
        return None
    with worker.lock:
        try:
            worker.connection.send((event_json, delta, accountant, settings))
            answer = worker.connection.recv()
        except (OSError, EOFError, pickle.UnpicklingError):
            answer = None
    if answer is None:  # it died or failed: not asked again
        stop()
        return None
    return answer  # type: ignore[no-any-return]


def stop() -> None:
    """End the worker (at exit, or once it failed); nothing it computed is lost, every answer was taken."""
    global _worker
    worker, _worker = _worker, None
    if worker is None or not worker.ours():
        return
    accountants.compute_elsewhere(None)
    worker.connection.close()
    try:
        os.kill(worker.pid, signal.SIGKILL)
        os.waitpid(worker.pid, 0)
    except (ChildProcessError, ProcessLookupError):
        pass


def _serve(connection: Connection) -> None:
    """The worker's life: import the accountants, then answer requests until the program's end of the pipe
    closes. An error answers None (the program computes that figure itself)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        accountants.import_accountants()
        while True:
            try:
                request = connection.recv()
            except EOFError:
                break
            try:
                answer: Any = accountants.compute_epsilon(*request)
            except Exception:  # noqa: BLE001 -- the program computes it, and meets the error itself
                answer = None
            connection.send(answer)
    except BaseException:  # noqa: BLE001 -- the worker never unwinds into the program's code
        code = 1
    finally:
        os._exit(code)

