"""A local worker process: ``python -m dp_tangent.training.executors.local_worker READ_FD WRITE_FD THREADS``.

Started by :class:`~dp_tangent.training.executors.local.LocalExecutor` as a fresh interpreter (not a fork,
and not ``multiprocessing``'s spawn, which re-imports the caller's main script). Messages are
pickled values on two pipes: tasks (None: stop) in; ("ready" | "progress" | "done" | "failed", ...)
out.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def send(conn: Connection, *message: Any) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops us
    tasks = Connection(int(argv[0]), writable=False)
    results = Connection(int(argv[1]), readable=False)
    threads = int(argv[2])
    if len(argv) > 3 and int(argv[3]):
        _die_with(int(argv[3]))

    import torch

    from .. import sgd  # noqa: F401 -- the training stack (Opacus included) loads while the driver plans, not later
    from ..deltas import train_deltas
    from .base import worker_identity

    torch.set_num_threads(threads)
    worker = worker_identity("local", threads=threads)
    send(results, "ready", worker)
    while True:
        (task,) = receive(tasks)
        if task is None:
            _leave()
        try:
            result = train_deltas(task, lambda step, total: send(results, "progress", step, total))
        except Exception as err:  # noqa: BLE001 -- reported to the driver as this task's failure
            send(results, "failed", f"{type(err).__name__}: {err}", traceback.format_exc())
        else:
            send(results, "done", replace(result, worker=worker))


def _die_with(driver: int) -> None:
    """Have the kernel kill this worker when its driver exits, however it exits (SIGTERM, SIGKILL, a crash):
    else a worker would go on importing torch, or training on private records for nobody, until it next
    touches the pipe. Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``); elsewhere nothing is done.
    The driver asks for it only from its main thread: the signal follows the thread that started us."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl to call: the pipe's end of file still stops us later
        return
    if os.getppid() != driver:  # the driver left before the signal was set
        os._exit(0)


def _leave() -> None:
    """Exit at once: tearing down an interpreter that loaded torch and Opacus takes about a second, which the
    driver would spend waiting; every result went out on the pipe already and nothing here is kept."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
