"""Helpers shared by test modules (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

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


def worker_processes_of(pid: int) -> list[int]:
    """The local executor's worker processes whose parent is ``pid`` (live or not yet reaped)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and b"dp_tangent.training.executors.local_worker" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found
