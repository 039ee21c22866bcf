"""The ``dp-tangent`` console script (and ``python -m dp_tangent``): the command line, with the accountants'
worker started first for the commands that print figures of every shard.

``budget show`` and ``report`` compute each figure no cache holds; the worker
(:mod:`privacy_accounting.accountant_worker`) imports the accountants while the command line starts, instead of
after it (a fork at once: nothing but the standard library is loaded yet).
"""

from __future__ import annotations

import sys

#: The commands (their first words) that print the figures of every shard of a workspace.
FIGURE_COMMANDS = (("budget", "show"), ("report",))


def prints_figures(args: list[str]) -> bool:
    """Whether ``args`` (the command line's, program name excluded) run a command of :data:`FIGURE_COMMANDS`
    (not its ``--help``)."""
    if "--help" in args:
        return False
    return any(tuple(args[:len(words)]) == words for words in FIGURE_COMMANDS)


def main() -> None:
    """Run the command line (:func:`dp_tangent.cli.main`) on ``sys.argv``."""
    if prints_figures(sys.argv[1:]):
        from privacy_accounting import accountant_worker

        accountant_worker.start()
    from .cli import main as command_line

    command_line()
