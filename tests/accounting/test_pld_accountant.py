"""The memoised PLD accountant gives dp-accounting's ``PLDAccountant`` figures bit for bit, reusing the PLDs
of runs it built before, and falls back to the stock class on an unchecked dp-accounting version."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant

from privacy_accounting import pld_accountant
from privacy_accounting.pld_accountant import MemoizedPLDAccountant


def _sgd(sigma: float, q: float, steps: int) -> dp_event.DpEvent:
    return dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)


EVENTS = {
    "one run": _sgd(1.0, 256 / 50000, 1953),
    "two runs, same mechanism": dp_event.ComposedDpEvent([_sgd(1.1, 0.02, 300), _sgd(1.1, 0.02, 40)]),
    "nested counts": dp_event.SelfComposedDpEvent(
        dp_event.ComposedDpEvent([_sgd(0.8, 0.01, 25), _sgd(2.0, 0.1, 3)]), 4),
    "with a plain Gaussian": dp_event.ComposedDpEvent([_sgd(1.1, 0.02, 300), dp_event.GaussianDpEvent(30.0)]),
    "q = 1": _sgd(3.0, 1.0, 10),
    "q = 0": dp_event.ComposedDpEvent([_sgd(1.1, 0.0, 300), _sgd(1.1, 0.02, 40)]),
    "sigma = 0": dp_event.ComposedDpEvent([_sgd(0.0, 0.02, 3), _sgd(1.1, 0.02, 40)]),
}
RELATIONS = [dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, dp_accounting.NeighboringRelation.REPLACE_ONE]


def _epsilon(cls: type, event: dp_event.DpEvent, relation: object, interval: float = 1e-3) -> float:
    accountant = cls(neighboring_relation=relation, value_discretization_interval=interval)
    accountant.compose(event)
    return accountant.get_epsilon(1e-5)


@pytest.mark.parametrize("relation", RELATIONS, ids=lambda r: r.name)
def test_figures_are_pld_accountant_figures_bit_for_bit(relation: object) -> None:
    pld_accountant.clear()
    for _ in range(2):  # the second round composes the kept PLDs
        for name, event in EVENTS.items():
            expected = _epsilon(PLDAccountant, event, relation)
            got = _epsilon(MemoizedPLDAccountant, event, relation)
            assert got.hex() == expected.hex(), name
    assert _epsilon(MemoizedPLDAccountant, EVENTS["sigma = 0"], relation) == math.inf
    # one step's PLD built once per mechanism (sigma, q) with q, sigma > 0: 1.1, 0.02 serves 300 and 40 steps
    assert pld_accountant._ONE_STEP.misses == 5 and pld_accountant._ONE_STEP.hits >= 5
    pld_accountant.clear()


def test_the_memo_is_keyed_by_the_grid_and_the_relation() -> None:
    pld_accountant.clear()
    event = EVENTS["one run"]
    figures = {(relation, interval): _epsilon(MemoizedPLDAccountant, event, relation, interval)
               for relation in RELATIONS for interval in (1e-3, 1e-2)}
    assert figures == {key: _epsilon(PLDAccountant, event, *key) for key in figures}
    assert pld_accountant._ONE_STEP.misses == 4
    pld_accountant.clear()


def test_the_memo_tells_equal_values_of_other_types_apart() -> None:
    """An np.float32 q equals its float64 value (and hashes alike) but gives another PLD: never the other's."""
    relation = RELATIONS[0]
    for first, second in ((np.float32(2**-7), 2**-7), (2**-7, np.float32(2**-7))):
        pld_accountant.clear()
        for q in (first, second):
            expected = _epsilon(PLDAccountant, _sgd(1.0, q, 100), relation)
            assert _epsilon(MemoizedPLDAccountant, _sgd(1.0, q, 100), relation).hex() == expected.hex()
    assert pld_accountant._ONE_STEP.misses == 2
    pld_accountant.clear()


def test_the_kept_plds_stay_within_their_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    pld_accountant.clear()
    relation, kept = RELATIONS[0], pld_accountant._ONE_STEP
    size = pld_accountant._nbytes(kept.get(1.0, 0.01, 1e-3, relation))
    monkeypatch.setattr(pld_accountant, "BUDGET_BYTES", int(2.5 * size))
    for sigma in (1.0001, 1.0002, 1.0003):  # similar sizes: the least recently used go first
        kept.get(sigma, 0.01, 1e-3, relation)
    assert [key[0][1] for key in kept._plds] == [1.0002, 1.0003] and kept._bytes <= 2.5 * size
    monkeypatch.setattr(pld_accountant, "BUDGET_BYTES", size // 2)  # larger than the whole budget: used, not kept
    big = kept.get(1.0004, 0.01, 1e-3, relation)
    assert big.get_epsilon_for_delta(1e-5) > 0 and 1.0004 not in [key[0][1] for key in kept._plds]
    pld_accountant.clear()


def test_a_sparse_pmf_is_counted_as_the_dict_it_is() -> None:
    """On a coarse grid with a large sigma the PMF is a dict of Python objects, not 8 bytes a value."""
    pld = pld_accountant._ONE_STEP.get(3.0, 0.01, 1e-3, RELATIONS[0])
    assert type(pld._pmf_remove).__name__ == "SparsePLDPmf"
    assert pld_accountant._nbytes(pld) >= 100 * pld._pmf_remove.size
    pld_accountant.clear()


def test_an_unchecked_or_unknown_dp_accounting_gets_the_stock_accountant(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pld_accountant.pld_accountant() is MemoizedPLDAccountant
    for version in (lambda name: "0.0.1", _no_metadata):
        pld_accountant.pld_accountant.cache_clear()
        monkeypatch.setattr(pld_accountant.importlib.metadata, "version", version)
        assert pld_accountant.pld_accountant() is PLDAccountant
    monkeypatch.undo()
    pld_accountant.pld_accountant.cache_clear()


def _no_metadata(name: str) -> str:
    raise pld_accountant.importlib.metadata.PackageNotFoundError(name)
