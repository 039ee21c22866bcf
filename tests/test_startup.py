"""Commands that train nothing do not import torch, timm or Opacus, nor the accountants' libraries
unless they compute an epsilon (issue 15: start-up).

Each command runs in a fresh interpreter, which reports the heavy modules it loaded on exit; the
time they take is measured by ``benchmarks/startup.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from dp_tangent.workspace import Workspace
from dp_tangent.workspace.deletion_requests import DeletionRequest
from dp_tangent.workspace.forget import forget
from privacy_accounting import dp_sgd_event
from privacy_accounting.bounds_cache import ENV as CACHE_ENV

HEAVY = ("torch", "timm", "opacus", "torchvision", "transformers", "matplotlib")
ACCOUNTING = ("dp_accounting", "scipy")  # what an accountant computes with: a second to import
PROBE = """
import atexit, json, sys
atexit.register(lambda: print("LOADED " + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr))
from dp_tangent.cli import main
main(sys.argv[1:])
"""


def run_probed(*args: str, cwd: Path) -> tuple[str, list[str]]:
    """(stdout, heavy modules loaded) of ``dp-tangent *args`` in a fresh interpreter, its epsilon cache
    in ``cwd/cache`` (never the user's own)."""
    env = {**os.environ, CACHE_ENV: str(cwd / "cache")}
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY + ACCOUNTING), *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120, check=False)
    assert done.returncode == 0, (args, done.stdout[-1000:], done.stderr[-2000:])
    line = next(x for x in done.stderr.splitlines() if x.startswith("LOADED "))
    return done.stdout, json.loads(line[len("LOADED "):])


def small_workspace(root: Path) -> Workspace:
    ws = Workspace.create(root / "ws")
    ws.declare_data_source("toy", description="toy records", shards=["s0"])
    ws.set_budget("toy", None, epsilon=4.0, delta=1e-5)
    forget(ws, DeletionRequest("r1", ("someone",), date(2026, 11, 30)))  # no component: registered, certified
    return ws


def test_importing_the_command_line_pulls_in_no_heavy_module() -> None:
    code = f"import sys, dp_tangent.cli; print([m for m in {HEAVY + ACCOUNTING!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("command", [
    ["--help"],
    ["audit", "verify", "-w", "ws"],
    ["audit", "log", "-w", "ws"],
    ["requests", "list", "-w", "ws"],
    ["certificate", "verify", "ws/certificates/r1.txt", "-w", "ws"],
    ["budget", "show", "-w", "ws"],  # nothing spent yet: no epsilon to compute
])
def test_commands_that_train_nothing_import_no_torch_and_no_accountant(tmp_path, command: list[str]) -> None:
    small_workspace(tmp_path)
    assert run_probed(*command, cwd=tmp_path)[1] == []


def test_budget_show_reads_epsilons_this_user_computed_before_without_the_accountants(tmp_path,
                                                                                      monkeypatch) -> None:
    from privacy_accounting.accountants import clear_cache

    ws = small_workspace(tmp_path)
    rid = ws.ledger.reserve(data_source="toy", shard="s0", event=dp_sgd_event(1.0, 0.1, 20), delta=1e-5,
                            purpose="training", operator="tester", component="c0")
    ws.ledger.complete(rid)
    clear_cache()  # figures computed in this process so far were not written to that cache
    with monkeypatch.context() as patch:  # what an earlier command of this user computed
        patch.setenv(CACHE_ENV, str(tmp_path / "cache"))
        spent = ws.ledger.shard_spend("toy", "s0")
    assert 0 < spent.epsilon < 4.0 and spent.accountant in ("prv", "pld")
    out, loaded = run_probed("budget", "show", "-w", "ws", cwd=tmp_path)
    assert loaded == [] and f"{spent.epsilon:.3g}" in out and f"{4.0 - spent.epsilon:.3g}" in out
