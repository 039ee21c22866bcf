"""How long torch's OpenMP threads spin between parallel ops in a dp-tangent process: briefly.

torch's CPU ops run on GNU OpenMP (libgomp) threads. After a parallel op each of them spins for
``GOMP_SPINCOUNT`` iterations (300,000 by default: libgomp's estimate is 3 ms, an AMD EPYC here
spent about 8 ms of CPU) before it sleeps. A DP step's secure noise runs right after the backward on
worker threads of its own (numpy, no OpenMP): for those milliseconds a spinning thread holds a core
the noise needs. Measured on 2 cores: 1 M noise values took 17–19 ms after a parallel op under the
default, 10 ms with a 10,000-iteration spin, which still keeps consecutive ops of a step from waking
sleeping threads as passive waiting (``OMP_WAIT_POLICY=PASSIVE``, no spin) does: fine-tuning steps of
many small ops took up to 1.4x as long under passive waiting.

libgomp reads its environment once, when torch loads it: :func:`use_short_spin` must run before
torch is imported, as the ``dp-tangent`` command does; child processes inherit it. A user's own
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is kept. Other OpenMP runtimes ignore the variable (LLVM's
libomp on macOS; Intel's, whose idle wait is ``KMP_BLOCKTIME``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

SPIN_COUNT = 10_000
#: Variables by which a user chooses how OpenMP threads wait; either one leaves the choice to them.
USER_CHOICE = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def use_short_spin(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` in ``environ`` (this process's environment, which its
    children inherit) unless the user set a wait policy. False when left alone, or when torch is already
    loaded and it would come too late for this process."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in USER_CHOICE) or (environ is os.environ and "torch" in sys.modules):
        return False
    environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True


def chosen_wait(environ: Mapping[str, str]) -> str | None:
    """The wait policy ``environ`` sets, as ``NAME=value`` (comma-separated), or None where it sets none."""
    return ", ".join(f"{name}={environ[name]}" for name in USER_CHOICE if name in environ) or None
