"""Commands that train nothing do not import torch, timm or Opacus (issue 15: start-up).

Each command runs in a fresh interpreter, which reports the heavy modules it loaded on exit; the
time they take is measured by ``benchmarks/startup.py``, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date

import pytest

from dp_tangent.workspace import Workspace
from dp_tangent.workspace.deletion_requests import DeletionRequest
from dp_tangent.workspace.forget import forget

HEAVY = ("torch", "timm", "opacus", "torchvision", "transformers", "matplotlib")
PROBE = """
import atexit, json, sys
atexit.register(lambda: print("LOADED " + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr))
from dp_tangent.cli import main
main(sys.argv[1:])
"""


def loaded_by(*args: str, cwd) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False)
    assert done.returncode == 0, (args, done.stdout[-1000:], done.stderr[-2000:])
    line = next(x for x in done.stderr.splitlines() if x.startswith("LOADED "))
    return json.loads(line[len("LOADED "):])


def test_importing_the_command_line_pulls_in_no_heavy_module() -> None:
    code = f"import sys, dp_tangent.cli; print([m for m in {HEAVY!r} + ('dp_accounting',) if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("command", [
    ["--help"],
    ["audit", "verify", "-w", "ws"],
    ["audit", "log", "-w", "ws"],
    ["requests", "list", "-w", "ws"],
    ["certificate", "verify", "ws/certificates/r1.txt", "-w", "ws"],
    ["budget", "show", "-w", "ws"],
])
def test_commands_that_train_nothing_import_no_torch(tmp_path, monkeypatch, command: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")
    ws.declare_data_source("toy", description="toy records", shards=["s0"])
    ws.set_budget("toy", None, epsilon=4.0, delta=1e-5)
    forget(ws, DeletionRequest("r1", ("someone",), date(2026, 11, 30)))  # no component: registered, certified
    assert loaded_by(*command, cwd=tmp_path) == []
