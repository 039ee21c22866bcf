"""Helpers shared by test modules (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import pytest

from dp_tangent.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The ``dp-tangent`` command line in this process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
