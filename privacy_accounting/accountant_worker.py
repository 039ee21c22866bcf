"""The accountants, imported in a forked process while a program starts: its first figure sooner, and two at once.

A figure no cache holds costs its process the import of scipy, dp-accounting and Opacus's accountant files
(about 0.4 s here) before any computing, and a command line has its own start to do first (about 0.25 s).
:func:`start`, called first thing (only the standard library and light modules loaded, no thread: a safe fork),
forks a worker that imports the accountants at once, so both happen together. Once they are loaded, the worker forks
a helper, which has them too, so the two compute two figures at once while the program waits (a shard's three
accountants, a report's curve, every shard that :func:`~privacy_accounting.accountants.prefetch` names). The pair is
the program's :class:`~privacy_accounting.accountants.FigureService`: each figure no cache holds is computed there
with the same code as this process would, bit for bit. Anything unexpected (no worker, one that died, an error other
than the accountants' own) answers None, and the caller computes in-process as it would without them.

The two read nothing but what they are sent, write nothing but their answers (their standard streams go to
``/dev/null``), ignore Ctrl-C (the program decides) and end with the program: at exit, when the program's ends of
their pipes close, and on Linux when it dies, even killed in the middle of a figure (the helper with the worker).
BLAS runs on one thread in each (the figures' bits do not depend on it: ``accountants``), so two fit two CPUs. POSIX
only, and only with two or more CPUs (on one, the worker would only slow the program).
``PRIVACY_ACCOUNTING_WORKER=off`` turns it off.
"""

from __future__ import annotations

import atexit
import collections
import os
import pickle
import signal
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

from privacy_accounting import accountants
from privacy_accounting.accountants import AccountantSettings, Request, Result

ENV = "PRIVACY_ACCOUNTING_WORKER"
_OFF = ("0", "off", "no", "false")


#: The processes that compute: the worker and its helper.
PROCESSES = 2
#: Set in them before numpy loads: no BLAS or OpenMP threads, whose idle spinning took the CPU the other process and
#: the program needed (the figures are computed on one BLAS thread in any case).
_ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


class _Pool:
    """The program's side: a pipe to each process that computes, one request in flight on each at most, the others
    queued; the answers kept until asked for."""

    def __init__(self, pid: int, connections: Sequence[Connection]) -> None:
        self.pid = pid  # the worker's; the helper is its child
        self.owner = os.getpid()  # a process forked from the program later has no pool of its own
        self.connections = list(connections)
        self._idle = list(connections)
        self._busy: dict[Connection, Request] = {}
        self._queue: collections.deque[Request] = collections.deque()
        self._answers: dict[Request, Result | None] = {}
        self._lock = threading.Lock()

    def ours(self) -> bool:
        return os.getpid() == self.owner

    def submit(self, requests: Sequence[Request]) -> None:
        """Queue ``requests`` (those not asked yet) and start as many as there are idle processes."""
        if not self.ours():
            return
        with self._lock:
            for request in requests:
                if request not in self._answers and request not in self._queue and not self._in_flight(request):
                    self._queue.append(request)
            self._dispatch()

    def compute(self, event_json: str, delta: float, accountant: str, settings: AccountantSettings
                ) -> Result | None:
        """The answer to one request, computed first unless it was submitted already; None where no process answered
        (then the caller computes it)."""
        if not self.ours():
            return None
        request = (event_json, delta, accountant, settings)
        with self._lock:
            if request not in self._answers and not self._in_flight(request):
                if request in self._queue:
                    self._queue.remove(request)
                self._queue.appendleft(request)  # asked for now: it goes first
            while request not in self._answers and self.connections:
                self._dispatch()
                self._collect()
            answer = self._answers.pop(request, None)
            gone = not self.connections
        if gone:  # both died: not asked again
            stop()
        return answer

    def _in_flight(self, request: Request) -> bool:
        return any(request == r for r in self._busy.values())

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            connection, request = self._idle.pop(), self._queue.popleft()
            try:
                connection.send(request)
            except OSError:  # that process is gone: the request goes back to the queue for the other
                self._queue.appendleft(request)
                self._drop(connection)
            else:
                self._busy[connection] = request

    def _collect(self) -> None:
        """Wait for at least one answer and keep every one that came."""
        if not self._busy:
            return
        for connection in wait(list(self._busy)):
            request = self._busy.pop(connection)  # type: ignore[call-overload]
            try:
                self._answers[request] = connection.recv()  # type: ignore[union-attr]
            except (OSError, EOFError, pickle.UnpicklingError):  # died while computing it: computed here instead
                self._answers[request] = None
                self._drop(connection)  # type: ignore[arg-type]
            else:
                self._idle.append(connection)  # type: ignore[arg-type]

    def _drop(self, connection: Connection) -> None:
        connection.close()
        self.connections.remove(connection)
        if not self.connections:  # nothing left to compute the queue: each is computed here when asked
            self._queue.clear()


_pool: _Pool | None = None


def available() -> bool:
    """Whether :func:`start` would start a worker here: POSIX, two CPUs or more, not turned off."""
    if os.environ.get(ENV, "").strip().lower() in _OFF or not hasattr(os, "fork"):
        return False
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus >= 2


def start() -> bool:
    """Fork the worker, once per process, where :func:`available`; whether one is running. Call it before the
    program imports anything heavy or starts a thread: the fork copies the process as it is. On Linux the worker
    ends when the thread that called this one does: call it from the main thread."""
    global _pool
    if _pool is not None:
        return True
    if not available():
        return False
    pairs = [Pipe() for _ in range(PROCESSES)]
    try:
        pid = os.fork()
    except OSError:  # no process to spare: compute in-process
        for program, worker in pairs:
            program.close()
            worker.close()
        return False
    if pid == 0:  # the worker: never returns
        for program, _ in pairs:
            program.close()
        _serve([worker for _, worker in pairs], program=os.getppid())
    for _, worker in pairs:
        worker.close()
    _pool = _Pool(pid, [program for program, _ in pairs])
    accountants.compute_elsewhere(_pool)
    atexit.register(stop)
    return True


def stop() -> None:
    """End the worker and its helper (at exit, or once both failed); nothing they computed and was asked for is
    lost: every such answer was taken."""
    global _pool
    pool, _pool = _pool, None
    if pool is None or not pool.ours():
        return
    accountants.compute_elsewhere(None)
    for connection in pool.connections:  # the helper ends when its pipe closes (or with the worker, on Linux)
        connection.close()
    try:
        os.kill(pool.pid, signal.SIGKILL)
        os.waitpid(pool.pid, 0)
    except (ChildProcessError, ProcessLookupError):
        pass


def _serve(ends: list[Connection], program: int) -> None:
    """The worker's life: import the accountants, fork a helper for each further pipe, then answer requests until
    the program's end of its pipe closes. Never returns."""
    code = 0
    try:
        _die_with(program)  # killed mid-figure with it, not left computing (review 111)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.environ.update(_ONE_THREAD)
        accountants.import_accountants()
        worker = os.getpid()
        for end in ends[1:]:
            try:
                helper = os.fork()
            except OSError:  # no helper: the program finds its pipe closed and sends everything to the worker
                helper = -1
            if helper == 0:
                _die_with(worker)
                for other in ends:
                    if other is not end:
                        other.close()
                _answer(end)
                os._exit(0)
            end.close()
        _answer(ends[0])
    except BaseException:  # noqa: BLE001 -- neither process ever unwinds into the program's code
        code = 1
    finally:
        os._exit(code)


def _answer(connection: Connection) -> None:
    """Answer requests until the other end closes. An error answers None (the program computes that figure itself,
    and meets the error)."""
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        try:
            answer: Any = accountants.compute_epsilon(*request)
        except Exception:  # noqa: BLE001
            answer = None
        connection.send(answer)


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` ends (Linux; elsewhere it ends when its pipe closes)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        return
    if os.getppid() != parent:  # it ended before the call
        os._exit(0)
