"""The one-run audit: the bound itself (Steinke, Nasr & Jagielski 2023) and the audit end to end."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from scipy import optimize, stats

from dp_tangent import TangentModel, linearize
from dp_tangent.data import RecordSet
from dp_tangent.training.privacy_audit import (LOWER_BOUND_LABEL, AuditError, AuditResult, audit_privacy,
                                      epsilon_lower_bound, guess_membership, max_demonstrable_epsilon,
                                      one_run_p_value)
from dp_tangent.training import PrivacySpec, TrainConfig
from privacy_accounting import BudgetExceededError, Ledger
from privacy_accounting.figures import significant

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
    result = audit_privacy(tangent, records, PrivacySpec(epsilon=target), CONFIG, canaries=200, seed=0,
                           public_records=True)
    print(f"\nDP target {target}: {result.summary()}")
    assert isinstance(result, AuditResult) and result.label == LOWER_BOUND_LABEL
    assert "not a privacy guarantee" in result.label and "lower bound" in result.label
    assert result.noise_multiplier > 0 and result.claimed_epsilon is not None
    assert result.claimed_epsilon <= target * (1 + 1e-6)
    assert (result.canaries, result.guesses, result.guesses_in, result.guesses_out) == (200, 40, 20, 20)
    assert result.max_demonstrable_epsilon == epsilon_lower_bound(200, 40, 40, result.delta)
    assert result.max_demonstrable_epsilon == pytest.approx(2.55, abs=0.01)  # the ceiling the docs quote
    assert result.epsilon_lower_bound < result.claimed_epsilon
    if target == 2.0:  # claim 1.99 is below the ceiling: the audit tests it
        assert result.testable and result.consistent is True
        assert "cannot test" not in result.summary()
    else:  # claim 3.99 is above anything 40 guesses could demonstrate
        assert result.testable is False and result.consistent is None
        assert ("; this audit cannot test this claim (it could demonstrate at most epsilon = 2.55 with 200 "
                "canaries and 40 guesses). ") in result.summary()
    assert result.delta == pytest.approx(min(1e-5, 0.1 / (len(records) + result.canaries_included)))
    after = _deltas(tangent)
    assert all(torch.equal(start[n], after[n]) for n in start)  # the caller's model is untouched


@pytest.mark.parametrize("kind", ["random", "mislabeled"])
def test_non_private_run_leaks_and_the_audit_sees_it(kind: str) -> None:
    tangent, records = _setup()
    result = audit_privacy(tangent, records, PrivacySpec(epsilon=float("inf")), CONFIG, canaries=200, seed=0,
                           canary_kind=kind, public_records=True)
    print(f"\nnon-private, {kind} canaries: {result.summary()}")
    assert result.claimed_epsilon is None and result.noise_multiplier == 0.0 and result.consistent is None
    assert result.testable is None and "cannot test" not in result.summary()
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
    # claim 3.99 is above the 2.55 that 40 guesses can show: the ledger says so, before and after
    assert event.details["max_demonstrable_epsilon"] == result.max_demonstrable_epsilon
    assert audit.details["max_demonstrable_epsilon"] == result.max_demonstrable_epsilon
    assert audit.details["testable"] is False and audit.details["note"].startswith("this audit cannot test this claim")


def test_an_audit_that_fails_keeps_no_record_named_in_its_error(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Review 50: a failed audit run's error message (a lazily read image's path: its id and its class folder) went
    whole into the ledger, and from there into the report."""
    from dp_tangent.errors import DataError
    from dp_tangent.training import privacy_audit

    def unreadable(*args, **kwargs):  # noqa: ANN002,ANN003,ANN202
        raise DataError("imgs/bob-patient/scan-17.png: cannot read the image (truncated)")

    monkeypatch.setattr(privacy_audit, "fit", unreadable)
    tangent, records = _setup()
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    ledger.set_budget("digits", "shard-0", epsilon=10.0, delta=1e-5)
    with pytest.raises(DataError, match="scan-17"):  # the operator is told
        audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), CONFIG, canaries=20, seed=0, ledger=ledger,
                      data_source="digits", shard="shard-0", component="audit-shard-0", operator="tester")
    (event,) = ledger.events(component="audit-shard-0")
    assert event.status.value == "failed" and "scan-17" not in event.failure_reason
    assert event.failure_reason.startswith("DataError (its message was shown to the operator, not logged")


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
        audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), CONFIG, shard="shard-0", public_records=True)


# -- what the design can show ----------------------------------------------------------------------

@pytest.mark.parametrize("m, r, delta", [(200, 40, 1e-5), (1000, 1000, 1e-5), (50, 20, 0.0), (10, 10, 1e-3)])
def test_the_ceiling_is_the_bound_with_every_guess_correct(m: int, r: int, delta: float) -> None:
    ceiling = max_demonstrable_epsilon(m, r, delta)
    assert ceiling == epsilon_lower_bound(m, r, r, delta)
    assert all(epsilon_lower_bound(m, r, v, delta) <= ceiling for v in range(0, r, max(1, r // 25)))
    assert max_demonstrable_epsilon(m, r, delta, confidence=0.99) < ceiling  # more confidence, less to show


def test_the_ceiling_quoted_in_the_docs() -> None:
    assert max_demonstrable_epsilon(10, 10, 0.0) == pytest.approx(1.0519, abs=1e-4)  # the hand check
    assert max_demonstrable_epsilon(200, 40, 1e-5) == pytest.approx(2.55, abs=0.005)
    assert max_demonstrable_epsilon(1000, 200, 1e-5) == pytest.approx(4.17, abs=0.005)
    assert max_demonstrable_epsilon(5000, 5000, 1e-5) == pytest.approx(7.28, abs=0.005)
    # the 2·m·delta term: past m ~ 1/(2 delta) more canaries show less
    assert max_demonstrable_epsilon(100_000, 100_000, 1e-5) < max_demonstrable_epsilon(50_000, 50_000, 1e-5) < 8.3


def _result(lower: float, claimed: float | None, ceiling: float) -> AuditResult:
    return AuditResult(epsilon_lower_bound=lower, claimed_epsilon=claimed, max_demonstrable_epsilon=ceiling,
                       delta=1e-5, confidence=0.95, canaries=200, canaries_included=97, guesses=40, guesses_in=20,
                       guesses_out=20, correct=30, canary_kind="random", records=200, steps=80, noise_multiplier=1.0)


def test_a_claim_above_the_ceiling_is_reported_as_untestable() -> None:
    result = _result(lower=0.4, claimed=8.0, ceiling=2.548)
    assert result.testable is False and result.consistent is None
    assert result.summary() == (
        "epsilon >= 0.4 at delta = 1e-05, confidence 95% (30/40 guesses correct on 200 canaries); claimed (upper "
        "bound) epsilon = 8; this audit cannot test this claim (it could demonstrate at most epsilon = 2.55 with "
        f"200 canaries and 40 guesses). {LOWER_BOUND_LABEL}")


@pytest.mark.parametrize("lower, consistent", [(0.4, True), (2.0, True), (2.5, False)])
def test_a_claim_below_the_ceiling_keeps_the_comparison(lower: float, consistent: bool) -> None:
    result = _result(lower=lower, claimed=2.0, ceiling=2.548)
    assert result.testable is True and result.consistent is consistent
    assert result.summary() == (
        f"epsilon >= {significant(lower, 3, up=False)} at delta = 1e-05, confidence 95% (30/40 guesses correct on 200 canaries); claimed "
        f"(upper bound) epsilon = 2. {LOWER_BOUND_LABEL}")


def test_non_private_results_have_no_claim_to_test() -> None:
    result = _result(lower=2.0, claimed=None, ceiling=2.548)
    assert result.testable is None and result.consistent is None and "cannot test" not in result.summary()


# -- private records go through the ledger ---------------------------------------------------------

def test_without_a_ledger_the_records_must_be_declared_public() -> None:
    tangent, records = _setup(n=20)
    start = _deltas(tangent)
    with pytest.raises(AuditError, match=r"^an audit trains on its records: for private records pass ledger=, "
                                         r"data_source=, shard= and component= so its budget is reserved first; for "
                                         r"public records pass public_records=True$"):
        audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), CONFIG, canaries=20)
    assert all(torch.equal(start[n], p) for n, p in tangent.named_deltas())


def test_mislabeled_canaries_are_refused_on_private_records(tmp_path: Path) -> None:
    """A mislabeled canary copies a private record: included, that record trains twice, charged once."""
    tangent, records = _setup(n=20)
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    with pytest.raises(AuditError, match=r"mislabeled canaries copy private records, .* use canary_kind='random'"):
        audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), CONFIG, canaries=20, ledger=ledger,
                      data_source="digits", shard="shard-0", component="audit-shard-0", canary_kind="mislabeled")
    assert ledger.events() == [] and ledger.audits() == []


def test_public_records_and_a_ledger_contradict_each_other(tmp_path: Path) -> None:
    tangent, records = _setup(n=20)
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    with pytest.raises(AuditError, match="give the ledger .* or public_records=True .*, not both"):
        audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), CONFIG, canaries=20, ledger=ledger,
                      data_source="digits", shard="shard-0", component="audit-shard-0", public_records=True)
    assert ledger.events() == [] and ledger.audits() == []


@pytest.mark.parametrize("mistake, message", [
    (lambda r: RecordSet(r.inputs, torch.where(torch.arange(len(r)) == 3, 9, r.targets), r.record_ids),
     ("audit 'audit-shard-0': labels must be in [0, 4) (the tangent model has 4 outputs), but 1 of 200 records are "
      "not, e.g. record 'r3' has label 9; set the network's num_classes to at least 10 or fix the labels")),
    (lambda r: RecordSet(torch.where(torch.arange(len(r)).unsqueeze(1) == 7, math.nan, r.inputs), r.targets,
                         r.record_ids),
     ("audit 'audit-shard-0': 1 of 200 records have NaN or infinite inputs (first: record 'r7'); remove or repair "
      "them before training")),
], ids=["label out of range", "NaN inputs"])
def test_a_data_mistake_in_an_audit_is_refused_before_its_reservation(tmp_path: Path, mistake: Callable,
                                                                       message: str) -> None:
    tangent, records = _setup()
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    ledger.set_budget("digits", "shard-0", epsilon=10.0, delta=1e-5)
    with pytest.raises(AuditError) as refused:
        audit_privacy(tangent, mistake(records), PrivacySpec(epsilon=4.0), CONFIG, canaries=200, ledger=ledger,
                      data_source="digits", shard="shard-0", component="audit-shard-0", operator="tester")
    assert str(refused.value) == message
    assert ledger.events() == [] and ledger.audits() == []


def test_a_workspace_audit_is_logged_and_never_trains_a_deleted_record(tmp_path) -> None:  # noqa: ANN001
    from datetime import datetime, timezone

    from dp_tangent.workspace import Workspace, WorkspaceError
    from dp_tangent.workspace.deletion_requests import DeletionRequest
    from dp_tangent.workspace.request_register import receive
    from dp_tangent.workspace.tombstones import Tombstones

    tangent, records = _setup(n=100)
    ws = Workspace.create(tmp_path / "ws")
    small = TrainConfig(epochs=2, batch_size=50, physical_batch_size=50, lr=0.5)
    result = ws.audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), small, canaries=40, data_source="digits",
                              shard="shard-0", component="audit-0", operator="tester")
    entry = ws.audit.entries()[-1]
    assert entry.operation == "privacy_audit" and entry.parameters["audit_id"] == result.audit_id
    assert ws.audit.verify().ok  # the ledger rows the audit wrote are accounted for by the log
    request = DeletionRequest("req-1", ("r7",), datetime(2026, 11, 30, tzinfo=timezone.utc))
    receive(ws, request)  # tombstones its records, through a logged change
    assert set(request.commitments(ws.manifest_key())) <= set(Tombstones(ws.root).read())
    events = len(ws.ledger.events())
    with pytest.raises(WorkspaceError, match=r"1 of these records were deleted by request\(s\) req-1"):
        ws.audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), small, canaries=40, data_source="digits",
                         shard="shard-0", component="audit-1")
    assert len(ws.ledger.events()) == events


def test_an_audit_stopped_after_its_ledger_writes_is_refused_until_its_ledger_is_accepted(tmp_path: Path) -> None:
    """A privacy audit killed in the instant after it completed its run in the ledger and before its log entry left
    a completed run no entry names: exactly what a completed run forged with sqlite3 looks like (review 4: the next
    opening logged such a forged audit as genuine). Fail-safe: recorded and refused; its operator, who knows it was a
    crash, accepts the ledger (logged), and the workspace runs again."""
    from dp_tangent.training.privacy_audit import audit_privacy
    from dp_tangent.workspace import Workspace
    from dp_tangent.workspace.names import WorkspaceIntegrityError

    tangent, records = _setup(n=100)
    ws = Workspace.create(tmp_path / "ws")
    small = TrainConfig(epochs=2, batch_size=50, physical_batch_size=50, lr=0.5)
    audit_privacy(tangent, records, PrivacySpec(epsilon=4.0), small, canaries=40, ledger=ws.ledger,
                  data_source="digits", shard="shard-0", component="audit-0", operator="tester")
    assert not ws.audit.verify().ok  # as the killed process left it: the ledger is ahead of its log
    with pytest.raises(WorkspaceIntegrityError, match="ledger table 'audits' differs|ledger table 'events' differs"):
        ws.set_budget("digits", "shard-0", 10.0, 1e-5)
    assert "privacy_audit" not in [e.operation for e in ws.audit.entries()]  # never logged as genuine
    ws.resolve_integrity_failures("the audit process was killed after its ledger writes", accept_ledger=True)
    ws.set_budget("digits", "shard-0", 10.0, 1e-5)
    assert ws.audit.verify().ok
