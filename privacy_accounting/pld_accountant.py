"""dp-accounting's ``PLDAccountant`` with the one-step PLDs of DP-SGD kept in-process.

The PLD of a run of the Poisson-subsampled Gaussian mechanism is its one-step PLD self-composed ``count``
times, and building that one-step PLD is much of a run's cost. It depends on (sigma, q, grid, relation) only,
not on the count, and recurs: a report's epsilon-against-steps curve composes the same mechanism at a dozen
step counts per shard, shards trained by one recipe on equal-sized shards share it, and a figure is asked at
several deltas. :class:`MemoizedPLDAccountant` builds the PLD that ``PLDAccountant``'s own call
``from_gaussian_mechanism(standard_deviation=sigma, value_discretization_interval=..., sampling_prob=q,
neighboring_relation=...)`` builds, bit for bit and faster (``pld_gaussian.one_step_pld``), then
``self_compose(count)`` as ``PLDAccountant`` does, and keeps the last ones used, up to :data:`BUDGET_BYTES`.
PLDs are immutable (every operation returns a new one), so a kept one gives every later figure exactly as a
fresh one would: the epsilons are bit for bit those of ``PLDAccountant``
(tests/accounting/test_pld_accountant.py). The key holds each value's type as well (an ``np.float32`` q equals
its float64 value but gives another PLD). Every other event goes to ``PLDAccountant`` unchanged. The subclass
relies on ``_maybe_compose`` and ``_pld``, internals of the dp-accounting versions in
:data:`CHECKED_VERSIONS`; with another version, or without the package's metadata to tell,
:func:`pld_accountant` returns the stock class.
"""

from __future__ import annotations

import collections
import functools
import importlib.metadata
import threading

from dp_accounting import dp_event
from dp_accounting.pld import pld_pmf, privacy_loss_distribution
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

#: dp-accounting versions whose ``PLDAccountant`` internals the subclass was checked against.
CHECKED_VERSIONS = ("0.6.0",)
#: The most the kept PLDs take, in bytes (as estimated by :func:`_nbytes`): a long-lived process (a
#: notebook, a driver calibrating many sigmas) should not grow without bound.
BUDGET_BYTES = 64 * 2**20
#: Estimated bytes per entry of a sparse PMF (a dict of Python int -> float), and per kept PLD.
_SPARSE_ENTRY_BYTES, _PLD_BYTES = 160, 20 * 1024

PLD = privacy_loss_distribution.PrivacyLossDistribution


def _nbytes(pld: PLD) -> int:
    """Memory a PLD holds, estimated: 8 bytes per value of a dense PMF, a dict entry's worth per sparse one."""
    pmfs = {id(pmf): pmf for pmf in (pld._pmf_remove, pld._pmf_add)}  # one object when symmetric
    return _PLD_BYTES + sum(pmf.size * (_SPARSE_ENTRY_BYTES if isinstance(pmf, pld_pmf.SparsePLDPmf) else 8)
                            for pmf in pmfs.values())


class _Kept:
    """Least-recently-used one-step PLDs by key, at most :data:`BUDGET_BYTES` in all (a larger one is used,
    not kept)."""

    def __init__(self) -> None:
        self._plds: collections.OrderedDict[tuple, tuple[PLD, int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, noise_multiplier: float, sampling_probability: float, interval: float, relation: object) -> PLD:
        key = tuple((type(v), v) for v in (noise_multiplier, sampling_probability, interval, relation))
        with self._lock:
            if key in self._plds:
                self._plds.move_to_end(key)
                self.hits += 1
                return self._plds[key][0]
            self.misses += 1
        # outside the lock: another thread may build the same one, with the same result
        from privacy_accounting.pld_gaussian import one_step_pld  # dp-accounting internals: checked versions only

        pld = one_step_pld(noise_multiplier, sampling_probability, interval, relation)
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


_ONE_STEP = _Kept()


class MemoizedPLDAccountant(PLDAccountant):
    """``PLDAccountant`` whose subsampled-Gaussian steps come from the in-process memo (see the module)."""

    def _maybe_compose(self, event: dp_event.DpEvent, count: int, do_compose: bool):  # noqa: ANN201
        if (do_compose and isinstance(event, dp_event.PoissonSampledDpEvent)
                and isinstance(event.event, dp_event.GaussianDpEvent)
                and event.sampling_probability != 0 and event.event.noise_multiplier != 0):
            one_step = _ONE_STEP.get(event.event.noise_multiplier, event.sampling_probability,
                                     self._value_discretization_interval, self.neighboring_relation)
            self._pld = self._pld.compose(one_step.self_compose(count))
            return None
        return super()._maybe_compose(event, count, do_compose)


@functools.cache
def pld_accountant() -> type[PLDAccountant]:
    """:class:`MemoizedPLDAccountant` on a checked dp-accounting version, else dp-accounting's own class."""
    try:
        checked = importlib.metadata.version("dp-accounting") in CHECKED_VERSIONS
    except importlib.metadata.PackageNotFoundError:  # a copy without metadata: its version is unknown
        checked = False
    return MemoizedPLDAccountant if checked else PLDAccountant


def clear() -> None:
    """Drop the kept PLDs (tests; memory)."""
    _ONE_STEP.clear()
