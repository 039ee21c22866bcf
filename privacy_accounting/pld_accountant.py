"""dp-accounting's ``PLDAccountant`` with the PLDs of DP-SGD runs kept in-process.

A figure's composition is mostly Poisson-subsampled Gaussian runs, and the same run recurs: every shard
of a workspace composes its own runs with the same (sigma, q), a report's epsilon-against-steps curve
composes the same earlier runs again at every point, and one step's PLD (0.03 s on a 1e-3 grid, 0.4 s
on the default 1e-4, most of a run's cost) is the same for every step count.
:class:`MemoizedPLDAccountant` builds those PLDs with the call ``PLDAccountant`` makes itself --
``from_gaussian_mechanism(standard_deviation=sigma, value_discretization_interval=..., sampling_prob=q,
neighboring_relation=...).self_compose(count)`` -- and keeps the last ones used, up to
:data:`BUDGET_BYTES`; PLDs are immutable (every operation returns a new one), so a kept one composes
into every later figure exactly as a fresh one would: the epsilons are bit for bit those of
``PLDAccountant`` (tests/accounting/test_pld_accountant.py). Every other event goes to
``PLDAccountant`` unchanged. The subclass relies on ``_maybe_compose`` and ``_pld``, internals of the
dp-accounting versions in :data:`CHECKED_VERSIONS`; with another version :func:`pld_accountant` returns
the stock class.
"""

from __future__ import annotations

import collections
import importlib.metadata
import threading
from collections.abc import Callable

from dp_accounting import dp_event
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

#: dp-accounting versions whose ``PLDAccountant`` internals the subclass was checked against.
CHECKED_VERSIONS = ("0.6.0",)


#: The most the kept PLDs hold (their probability arrays), in bytes: a long run on a fine grid can take
#: tens of MiB, and a long-lived process (a notebook, a driver) should not grow without bound.
BUDGET_BYTES = 64 * 2**20

PLD = privacy_loss_distribution.PrivacyLossDistribution


def _nbytes(pld: PLD) -> int:
    pmfs = {id(pmf): pmf for pmf in (pld._pmf_remove, pld._pmf_add)}  # one object when symmetric
    return sum(8 * pmf.size for pmf in pmfs.values())


class _Kept:
    """Least-recently-used PLDs by key, at most :data:`BUDGET_BYTES` in all (one larger is used, not kept)."""

    def __init__(self) -> None:
        self._plds: collections.OrderedDict[tuple, tuple[PLD, int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple, build: Callable[[], PLD]) -> PLD:
        with self._lock:
            if key in self._plds:
                self._plds.move_to_end(key)
                self.hits += 1
                return self._plds[key][0]
            self.misses += 1
        pld = build()  # outside the lock: another thread may build the same one, with the same result
        size = _nbytes(pld)
        with self._lock:
            if key not in self._plds and size <= BUDGET_BYTES:
                self._plds[key] = (pld, size)
                self._bytes += size
                while self._bytes > BUDGET_BYTES:
                    _, (_, dropped) = self._plds.popitem(last=False)
                    self._bytes -= dropped
        return pld

    def clear(self) -> None:
        with self._lock:
            self._plds.clear()
            self._bytes = 0
            self.hits = self.misses = 0


_ONE_STEP, _RUNS = _Kept(), _Kept()


def _one_step(noise_multiplier: float, sampling_probability: float, interval: float, relation: object) -> PLD:
    return _ONE_STEP.get((noise_multiplier, sampling_probability, interval, relation),
                         lambda: privacy_loss_distribution.from_gaussian_mechanism(
                             standard_deviation=noise_multiplier, value_discretization_interval=interval,
                             sampling_prob=sampling_probability, neighboring_relation=relation))


def _run(noise_multiplier: float, sampling_probability: float, count: int, interval: float, relation: object) -> PLD:
    """PLD of ``count`` steps of the Poisson-subsampled Gaussian mechanism, as ``PLDAccountant`` builds it."""
    return _RUNS.get((noise_multiplier, sampling_probability, count, interval, relation),
                     lambda: _one_step(noise_multiplier, sampling_probability, interval, relation).self_compose(count))


class MemoizedPLDAccountant(PLDAccountant):
    """``PLDAccountant`` whose subsampled-Gaussian runs come from the in-process memo (see the module)."""

    def _maybe_compose(self, event: dp_event.DpEvent, count: int, do_compose: bool):  # noqa: ANN201
        if (do_compose and isinstance(event, dp_event.PoissonSampledDpEvent)
                and isinstance(event.event, dp_event.GaussianDpEvent)
                and event.sampling_probability != 0 and event.event.noise_multiplier != 0):
            self._pld = self._pld.compose(_run(event.event.noise_multiplier, event.sampling_probability, count,
                                               self._value_discretization_interval, self.neighboring_relation))
            return None
        return super()._maybe_compose(event, count, do_compose)


def pld_accountant() -> type[PLDAccountant]:
    """:class:`MemoizedPLDAccountant` on a checked dp-accounting version, else dp-accounting's own class."""
    if importlib.metadata.version("dp-accounting") in CHECKED_VERSIONS:
        return MemoizedPLDAccountant
    return PLDAccountant


def clear() -> None:
    """Drop the kept PLDs (tests; memory)."""
    _RUNS.clear()
    _ONE_STEP.clear()
