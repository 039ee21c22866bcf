"""The one-run audit: the bound itself (Steinke, Nasr & Jagielski 2023) and the audit end to end."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn
from scipy import optimize, stats

from dp_tangent import TangentModel, linearize
from dp_tangent.data import RecordSet
from dp_tangent.training.privacy_audit import (LOWER_BOUND_LABEL, AuditError, AuditResult, audit_privacy,
                                      epsilon_lower_bound, guess_membership, one_run_p_value)
from dp_tangent.training import PrivacySpec, TrainConfig
from privacy_accounting import BudgetExceededError, Ledger

BETA = 0.05  # 1 - confidence


# -- the bound -------------------------------------------------------------------------------------

def _pure_dp_bound(r: int, v: int, beta: float = BETA) -> float:
    """Independent solve of P[Binomial(r, e^eps / (1 + e^eps)) >= v] = beta (Theorem 3.1)."""
    def gap(eps: float) -> float:
        return stats.binom.sf(v - 1, r, math.exp(eps) / (1 + math.exp(eps))) - beta
    return 0.0 if gap(0.0) >= 0 else optimize.brentq(gap, 0.0, 50.0, xtol=1e-12)


def test_bound_is_zero_at_chance() -> None:
    for m, r in [(10, 10), (200, 40), (1000, 500)]:
        for v in range(0, r // 2 + 1):
            assert epsilon_lower_bound(m, r, v, delta=1e-5) == 0.0
        assert epsilon_lower_bound(m, 0, 0, delta=1e-5) == 0.0  # no guesses, no evidence


def test_bound_is_monotone_in_correct_guesses() -> None:
    m, r = 200, 40
    bounds = [epsilon_lower_bound(m, r, v, delta=1e-5) for v in range(r + 1)]
    assert all(a <= b for a, b in zip(bounds, bounds[1:]))
    positive = [b for b in bounds if b > 0]
    assert len(positive) >= 10 and all(a < b for a, b in zip(positive, positive[1:]))


def test_pure_dp_bound_matches_binomial_tail() -> None:
    for m, r, v in [(200, 40, 35), (100, 100, 80), (2000, 1000, 600), (50, 20, 20)]:
        assert epsilon_lower_bound(m, r, v, delta=0.0) == pytest.approx(_pure_dp_bound(r, v), abs=2e-6)
        for eps in (0.0, 0.7, 3.0):
            q = math.exp(eps) / (1 + math.exp(eps))
            assert one_run_p_value(m, r, v, eps, 0.0) == pytest.approx(stats.binom.sf(v - 1, r, q), rel=1e-12)


def test_hand_checked_all_correct_pure_dp() -> None:
    # r = v = 10, delta = 0: p(eps) = q^10, so the bound solves q = 0.05^(1/10) = 0.74113,
    # eps = ln(q / (1 - q)) = ln(2.8630) = 1.0519.
    assert epsilon_lower_bound(10, 10, 10, delta=0.0) == pytest.approx(1.0519, abs=1e-4)


def test_hand_checked_delta_term() -> None:
    # m = 10, r = v = 2, eps = ln 3 so q = 3/4: F(2) = 9/16; i = 1: P[B = 1] = 6/16;
    # i = 2: P[B <= 1] / 2 = 7/32; max = 3/8. p = 9/16 + 2·10·1e-3 · 3/8 = 0.5625 + 0.0075 = 0.57.
    assert one_run_p_value(10, 2, 2, math.log(3.0), 1e-3) == pytest.approx(0.57, abs=1e-12)


def test_delta_weakens_the_bound() -> None:
    pure = epsilon_lower_bound(1000, 100, 100, delta=0.0)
    assert epsilon_lower_bound(1000, 100, 100, delta=1e-6) <= pure
    assert epsilon_lower_bound(1000, 100, 100, delta=1e-4) < pure - 0.05  # 2·m·delta = 0.2


def test_returned_epsilon_is_rejected_and_tight() -> None:
    for m, r, v, delta in [(200, 40, 39, 1e-5), (1000, 1000, 700, 1e-5), (100, 20, 20, 1e-3)]:
        eps = epsilon_lower_bound(m, r, v, delta)
        assert eps > 0
        assert one_run_p_value(m, r, v, eps, delta) < BETA <= one_run_p_value(m, r, v, eps + 1e-5, delta)


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0, 4.0])
def test_randomized_response_exceeds_its_epsilon_with_probability_at_most_beta(eps: float) -> None:
    # eps-DP randomized response is the worst case of Theorem 3.1: each of r guesses is correct
    # independently with probability e^eps / (1 + e^eps). The bound is monotone in v, so
    # P[bound > eps] = P[V >= v*] for the smallest v* whose bound exceeds eps -- exactly.
    m, r, delta = 2000, 1000, 1e-5
    q = math.exp(eps) / (1 + math.exp(eps))
    assert epsilon_lower_bound(m, r, r, delta) > eps
    low, high = 0, r  # bound(low) <= eps < bound(high): bisect for v*
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if epsilon_lower_bound(m, r, mid, delta) > eps else (mid, high)
    exceed = stats.binom.sf(high - 1, r, q)
    assert exceed <= BETA
    assert exceed > BETA / 10  # not vacuous: the bound is nearly tight for the worst case


def test_bound_rejects_impossible_counts() -> None:
    with pytest.raises(AuditError):
        epsilon_lower_bound(10, 5, 6, delta=1e-5)
    with pytest.raises(AuditError):
        epsilon_lower_bound(10, 11, 5, delta=1e-5)
    with pytest.raises(AuditError):
        epsilon_lower_bound(10, 5, 5, delta=1e-5, confidence=1.0)


def test_guesses_top_in_bottom_out_and_abstain() -> None:
    scores = torch.tensor([0.1, 5.0, -3.0, 2.0, 0.0, -1.0])
    assert guess_membership(scores, 2, 1).tolist() == [0, 1, -1, 1, 0, 0]


# -- end to end ------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matrices: one thread avoids oversubscription on a shared 2-core machine (10x faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _setup(n: int = 200, dim: int = 64, hidden: int = 512, classes: int = 4) -> tuple[TangentModel, RecordSet]:
    """A head-only tangent model (linear probe on 512 tanh features) and a 4-class Gaussian mixture."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, classes)).eval()
    g = torch.Generator().manual_seed(1)
    centers = 2 * torch.randn(classes, dim, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    inputs = centers[labels] + torch.randn(n, dim, generator=g)
    return linearize(net, "head"), RecordSet(inputs, labels, tuple(f"r{i}" for i in range(n)))


CONFIG = TrainConfig(epochs=20, batch_size=50, physical_batch_size=50, lr=0.5, momentum=0.9, seed=0)


def _deltas(tangent: TangentModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in tangent.named_deltas()}


@pytest.mark.parametrize("target", [2.0, 4.0])
def test_dp_run_stays_below_its_claim(target: float) -> None:
    tangent, records = _setup()
    start = _deltas(tangent)
    result = audit_privacy(tangent, records, PrivacySpec(epsilon=target), CONFIG, canaries=200, seed=0)
    print(f"\nDP target {target}: {result.summary()}")
    assert isinstance(result, AuditResult) and result.label == LOWER_BOUND_LABEL
    assert "not a privacy guarantee" in result.label and "lower bound" in result.label
    assert result.noise_multiplier > 0 and result.claimed_epsilon is not None
    assert result.claimed_epsilon <= target * (1 + 1e-6)
    assert (result.canaries, result.guesses, result.guesses_in, result.guesses_out) == (200, 40, 20, 20)
    assert result.epsilon_lower_bound < result.claimed_epsilon and result.consistent
    assert result.delta == pytest.approx(min(1e-5, 0.1 / (len(records) + result.canaries_included)))
    after = _deltas(tangent)
    assert all(torch.equal(start[n], after[n]) for n in start)  # the caller's model is untouched


@pytest.mark.parametrize("kind", ["random", "mislabeled"])
def test_non_private_run_leaks_and_the_audit_sees_it(kind: str) -> None:
    tangent, records = _setup()
    result = audit_privacy(tangent, records, PrivacySpec(epsilon=float("inf")), CONFIG, canaries=200, seed=0,
                           canary_kind=kind)
    print(f"\nnon-private, {kind} canaries: {result.summary()}")
    assert result.claimed_epsilon is None and result.noise_multiplier == 0.0 and result.consistent is None
    assert result.epsilon_lower_bound > 0.5


def test_audit_on_a_private_shard_spends_budget_and_records_the_bound(tmp_path) -> None:  # noqa: ANN001
    tangent, records = _setup()
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    ledger.set_budget("digits", "shard-0", epsilon=10.0, delta=1e-5)
    result = audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), CONFIG, canaries=200, seed=0,
                           ledger=ledger, data_source="digits", shard="shard-0", component="audit-shard-0",
                           operator="tester")
    (event,) = ledger.events(component="audit-shard-0")
    assert event.purpose.value == "hyperparameter_search" and event.status.value == "completed"
    assert event.reservation_id == result.reservation_id
    assert ledger.shard_spend("digits", "shard-0").epsilon == pytest.approx(result.claimed_epsilon, rel=1e-6)
    (audit,) = ledger.audits()
    assert audit.audit_id == result.audit_id and audit.component == "audit-shard-0"
    assert audit.epsilon_lower_bound == result.epsilon_lower_bound and audit.delta == result.delta
    assert audit.details["label"] == LOWER_BOUND_LABEL and "Steinke" in audit.method


def test_audit_over_budget_is_refused_before_training(tmp_path) -> None:  # noqa: ANN001
    tangent, records = _setup()
    start = _deltas(tangent)
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    ledger.set_budget("digits", "shard-0", epsilon=1.0, delta=1e-5)
    with pytest.raises(BudgetExceededError):
        audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), CONFIG, canaries=200, ledger=ledger,
                      data_source="digits", shard="shard-0", component="audit-shard-0", operator="tester")
    assert ledger.events() == [] and ledger.audits() == []
    assert all(torch.equal(start[n], p) for n, p in tangent.named_deltas())


def test_ledger_arguments_come_together() -> None:
    tangent, records = _setup(n=20)
    with pytest.raises(AuditError):
        audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), CONFIG, shard="shard-0")
