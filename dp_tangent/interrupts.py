"""Critical sections that Ctrl-C, SIGTERM and SIGHUP do not cut in two.

A workspace change has a commit point (:mod:`dp_tangent.workspace.commit`): killed after it, the next command
finishes the change. An interrupt raised *inside* the process after that point is different: the failure path
then runs with the change half applied and records, say, a failed reservation that the change being finished
later marks completed. Inside :func:`deferred_interrupts` such a signal is only noted, and raised as
``KeyboardInterrupt`` once the section has ended, with everything it did done (a change takes milliseconds).
Signals are a main-thread matter: elsewhere, and for a signal whose handler is neither Python's default
(SIGINT) nor :func:`interrupt` (which the command line installs for SIGTERM and SIGHUP), nothing is changed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


#: The interrupting signals this process received through :func:`interrupt` or a deferred section, in order.
_received: list[int] = []


def interrupt(signum: int, frame: object) -> None:
    """A signal handler that ends the program as Ctrl-C does (``KeyboardInterrupt`` naming the signal)."""
    _received.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def exit_status() -> int:
    """What a program stopped by an interrupt exits with: 128 + the number of the signal that stopped it (the first
    received through here since :func:`forget_received`), as a shell reports a process the signal killed
    (SIGINT: 130, SIGHUP: 129, SIGTERM: 143); SIGINT's if none came through here."""
    return 128 + (_received[0] if _received else signal.SIGINT)


def forget_received() -> None:
    """Start a new command: the signals an earlier one received in this process do not decide its exit status."""
    _received.clear()


#: The handlers a deferred section stands in for: SIGINT's default, and :func:`interrupt`.
_DEFERRABLE = (signal.default_int_handler, interrupt)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Meanwhile, an interrupting signal is noted and raised as ``KeyboardInterrupt`` when the section ends (from
    the section's own exception, if it raised one: the operator's stop is not lost)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def note(signum: int, frame: object) -> None:
        caught.append(signum)
        _received.append(signum)

    replaced: dict[int, object] = {}
    with blocked():  # swapped all at once: a signal between two swaps would leave a recorder installed
        for sig in _SIGNALS:
            if signal.getsignal(sig) in _DEFERRABLE:
                replaced[sig] = signal.signal(sig, note)
    try:
        yield
    except BaseException as err:
        if caught and not isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt(signal.Signals(caught[0]).name) from err
        raise
    finally:
        with blocked():
            for sig, handler in replaced.items():
                signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt(signal.Signals(caught[0]).name)


@contextlib.contextmanager
def blocked(signals: tuple[int, ...] = _SIGNALS) -> Iterator[None]:
    """``signals`` (default: the interrupting ones) held by the kernel meanwhile, in this thread (delivered when it
    ends), where the platform can."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
