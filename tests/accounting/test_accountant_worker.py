"""The accountants' worker (``privacy_accounting.accountant_worker``): the figures it computes are the program's own,
bit for bit, the program then imports no accountant, and a worker that dies or is off changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dp_tangent.console import prints_figures

#: In a fresh interpreter: start the worker (unless told), compute the figures of three DP-SGD events with no
#: on-disk cache, kill the worker half-way if told, and print the figures, whether scipy came into this process
#: and whether the worker is gone after stop().
PROGRAM = """
import json, os, signal, sys
from privacy_accounting import accountant_worker
started = accountant_worker.start()
from privacy_accounting.accountants import epsilon_bounds
from privacy_accounting.event_tree import sgd
figures = []
for k, (sigma, q, steps) in enumerate([(1.0, 0.005, 2000), (0.9, 0.01, 300), (2.0, 0.02, 50)]):
    if k == 1 and sys.argv[1] == "kill":
        os.kill(accountant_worker._worker.pid, signal.SIGKILL)
    b = epsilon_bounds(sgd(sigma, q, steps), 1e-5)
    figures.append([b.rdp, b.prv, b.pld, b.epsilon, b.accountant])
pid = accountant_worker._worker.pid if accountant_worker._worker else None
accountant_worker.stop()
gone = pid is None or not os.path.exists(f"/proc/{pid}")
print(json.dumps({"started": started, "figures": figures, "scipy": "scipy" in sys.modules, "gone": gone}))
"""


def _run(mode: str, worker: str = "on") -> dict:
    env = {**os.environ, "PRIVACY_ACCOUNTING_CACHE": "off", "PRIVACY_ACCOUNTING_WORKER": worker}
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not hasattr(os, "fork") or (os.cpu_count() or 1) < 2, reason="the worker needs fork and 2 CPUs")
def test_the_worker_computes_the_programs_figures_bit_for_bit_and_the_program_imports_no_accountant() -> None:
    alone, helped, killed = _run("keep", worker="off"), _run("keep"), _run("kill")
    assert not alone["started"] and alone["scipy"]
    assert helped["started"] and not helped["scipy"] and helped["gone"]  # the figures came from the worker
    assert helped["figures"] == alone["figures"]  # JSON floats round-trip exactly: the same bits
    assert killed["started"] and killed["scipy"] and killed["figures"] == alone["figures"]  # computed here instead


def test_only_the_commands_that_print_every_shards_figures_start_it() -> None:
    assert prints_figures(["budget", "show", "-w", "ws"]) and prints_figures(["report", "-f", "html"])
    assert not any(prints_figures(args) for args in (["budget", "set", "d", "--epsilon", "1"], ["report", "--help"],
                                                     ["train", "r.yaml"], ["audit", "verify"], []))
