"""`dp-tangent` makes torch's OpenMP threads spin briefly after each parallel op (`dp_tangent.openmp`),
unless the user chose how they wait; the setting reaches the OpenMP runtime torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dp_tangent.openmp import SPIN_COUNT, USER_CHOICE, chosen_wait, use_short_spin

USER_FREE = {k: v for k, v in os.environ.items() if k not in USER_CHOICE}


def test_the_short_spin_is_set_unless_the_user_chose_a_wait_policy() -> None:
    environ: dict[str, str] = {}
    assert use_short_spin(environ) and environ == {"GOMP_SPINCOUNT": str(SPIN_COUNT)}
    assert chosen_wait(environ) == f"GOMP_SPINCOUNT={SPIN_COUNT}"
    for choice in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "0"}, {"OMP_WAIT_POLICY": "active"}):
        environ = dict(choice)
        assert not use_short_spin(environ) and environ == choice
    assert chosen_wait({}) is None
    both = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}
    assert chosen_wait(both) == "OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=0"


def _run(code: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=True)
    return done.stdout.strip()


def test_the_command_sets_it_before_any_command_runs_and_keeps_a_users_choice() -> None:
    code = ("import os, sys\nfrom dp_tangent.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    assert _run(code, USER_FREE).splitlines()[-1] == f"{SPIN_COUNT} False"
    assert _run(code, {**USER_FREE, "OMP_WAIT_POLICY": "PASSIVE"}).splitlines()[-1] == "None False"


SPIN_PROBE = """
import sys, time
from dp_tangent.openmp import use_short_spin
if sys.argv[1] == "short":
    assert use_short_spin()
import torch
torch.set_num_threads(2)
x = torch.ones(1 << 20)
x.mul_(2)
start = time.process_time()
for _ in range(40):  # a parallel op, then idle: the OpenMP thread spins for its spin count, then sleeps
    x.mul_(1.0001)
    time.sleep(0.02)
print(time.process_time() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch's Linux wheels use GNU OpenMP")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                    reason="libgomp shortens every spin when threads outnumber the CPUs it may use")
def test_the_runtime_torch_loads_spins_less_after_each_parallel_op() -> None:
    """The process's CPU time while idle between parallel ops: libgomp's default spin (3-8 ms a time)
    burns several times what the short spin does."""
    seconds = {mode: float(subprocess.run([sys.executable, "-c", SPIN_PROBE, mode], capture_output=True, text=True,
                                          env=USER_FREE, timeout=120, check=True).stdout)
               for mode in ("default", "short")}
    assert seconds["short"] < seconds["default"] / 3, seconds
