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


def send(conn: Connection, *message: Any) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops us
    tasks = Connection(int(argv[0]), writable=False)
    results = Connection(int(argv[1]), readable=False)
    threads = int(argv[2])

    import torch

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


def _leave() -> None:
    """Exit at once: tearing down an interpreter that loaded torch and Opacus takes about a second, which the
    driver would spend waiting; every result went out on the pipe already and nothing here is kept."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
