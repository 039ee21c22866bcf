"""What a workspace does on its own that the person running a command must hear of: a change a killed process left
half-done finished, a reservation a stopped training left open marked failed (review 107: a later `evaluate` applied
a killed budget change without a word). The command line listens and prints each as a note; the library alone is
silent."""

from __future__ import annotations

from collections.abc import Callable

_listener: Callable[[str], None] | None = None


def listen(listener: Callable[[str], None] | None) -> None:
    """Hand every notice to ``listener`` from now on (None: to nobody)."""
    global _listener
    _listener = listener


def notice(text: str) -> None:
    """Tell the listener, if any, ``text`` (one sentence, no "note:")."""
    if _listener is not None:
        _listener(text)
