"""The memoised PLD accountant gives dp-accounting's ``PLDAccountant`` figures bit for bit, reusing the PLDs
of runs it built before, and falls back to the stock class on an unchecked dp-accounting version."""

from __future__ import annotations

import math

import dp_accounting
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
    # each of the 6 distinct runs with q, sigma > 0 was built once, and its one step once per mechanism: 1.1, 0.02
    # serves 300 and 40 steps
    runs = pld_accountant._RUNS
    assert runs.misses == 6 and runs.hits >= runs.misses
    assert pld_accountant._ONE_STEP.misses == 5
    pld_accountant.clear()


def test_the_memo_is_keyed_by_the_grid_and_the_relation() -> None:
    pld_accountant.clear()
    event = EVENTS["one run"]
    figures = {(relation, interval): _epsilon(MemoizedPLDAccountant, event, relation, interval)
               for relation in RELATIONS for interval in (1e-3, 1e-2)}
    assert figures == {key: _epsilon(PLDAccountant, event, *key) for key in figures}
    assert pld_accountant._ONE_STEP.misses == 4
    pld_accountant.clear()


def test_an_unchecked_dp_accounting_gets_the_stock_accountant(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pld_accountant.pld_accountant() is MemoizedPLDAccountant
    monkeypatch.setattr(pld_accountant, "CHECKED_VERSIONS", ("0.0.1",))
    assert pld_accountant.pld_accountant() is PLDAccountant


def test_the_kept_plds_stay_within_their_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    pld_accountant.clear()
    one = pld_accountant._run(1.0, 0.01, 10, 1e-3, RELATIONS[0])
    size = pld_accountant._nbytes(one)
    monkeypatch.setattr(pld_accountant, "BUDGET_BYTES", int(2.5 * size))
    for steps in (11, 12, 13):  # similar sizes: the oldest runs go first
        pld_accountant._run(1.0, 0.01, steps, 1e-3, RELATIONS[0])
    kept = pld_accountant._RUNS._plds
    assert [key[2] for key in kept] == [12, 13] and pld_accountant._RUNS._bytes <= 2.5 * size
    monkeypatch.setattr(pld_accountant, "BUDGET_BYTES", size // 2)  # larger than the whole budget: used, not kept
    big = pld_accountant._run(1.0, 0.01, 14, 1e-3, RELATIONS[0])
    assert big.get_epsilon_for_delta(1e-5) > 0 and 14 not in [key[2] for key in kept]
    pld_accountant.clear()
