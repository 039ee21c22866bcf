"""The ``dp-tangent`` command line: a thin layer over the Python API.

Every mistake a user can make ends in one line on stderr and exit code 2 (no traceback); Ctrl-C
ends with exit code 130 after the library has recorded what it must (a reserved budget stays spent).

``app`` holds the Typer application and the entry point :func:`main`; each other module registers
one command (or command group) on it: ``init``, ``demo`` (the run itself in ``demo_run``),
``report``, ``budget``, ``audit``, ``compose``, ``forget``, ``requests``, ``certificate``, ``release``,
``train``, ``inference`` (evaluate, predict) and ``pretrain`` (an MLP's theta0 on public tables).
"""

# Each import registers its commands, in the order ``--help`` lists them.
from . import init, demo, report, budget, audit, compose, forget, requests, certificate, release, train, inference, pretrain, data  # noqa: F401,I001,E501
from .app import app, main

__all__ = ["app", "main"]
