"""Empirical privacy audit in one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

The audit yields an **empirical lower bound** on epsilon: evidence that a run is *not*
(epsilon, delta)-DP for any smaller epsilon. It is never a privacy guarantee; the guarantee is the
accountant's upper bound (``claimed_epsilon``). A correct DP implementation keeps the lower bound
below the claim except with probability at most beta = 1 - confidence.

The game (their Algorithm 1). m canaries; each is included in the training set independently
with probability 1/2 (S_i in {-1, +1}). After one training run the auditor scores every canary
from the trained model, guesses T_i = +1 for the k+ highest scores, T_i = -1 for the k- lowest and
abstains on the rest: r = k+ + k- guesses, fixed before training, of which v are correct.

The bound. With q(eps) = e^eps / (1 + e^eps) and B ~ Binomial(r, q(eps)), write
F(x) = P[B >= x]. If training is (eps, delta)-DP with respect to each canary (add or remove one),
their Theorem 5.2 gives, for every v,

    P[V >= v] <= p(eps) = F(v) + 2·m·delta · max_{1<=i<=v} (F(v - i) - F(v)) / i

(for delta = 0 this is their pure-DP Theorem 3.1, P[V >= v] <= F(v)). p is a p-value for the
null hypothesis "the run is (eps, delta)-DP"; the audit reports the largest eps that p rejects at
level beta, found by bisection as in the paper's reference code: the returned eps always has
p(eps) < beta, so it is never above the exact crossing point.

The ceiling. Even with every guess correct (v = r) the bound is finite:
max_demonstrable_epsilon(m, r, delta, confidence), about ln(r / ln(1/beta)) for delta = 0. A
claimed epsilon above it is one the design cannot test, whatever the run leaks; the result then
says so instead of calling the claim consistent.
"""

from __future__ import annotations

import getpass
import operator as _operator
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import special, stats

from privacy_accounting import Ledger, ReservationRequest, epsilon_bounds
from privacy_accounting.figures import fmt_eps, significant

from ..data.records import RecordSet
from ..errors import DPTangentError, logged_reason
from .losses import ConvexLoss
from ..tangent import TangentModel
from .config import PrivacySpec, TrainConfig, TrainingError
from .plan import plan_run
from .sgd import fit
from .validation import validate_records

LOWER_BOUND_LABEL = "empirical lower bound (Steinke et al. 2023), not a privacy guarantee"
METHOD = "one-run audit (Steinke, Nasr & Jagielski 2023, Thm 5.2), loss-drop score, top-k+/bottom-k- guesses"
CANARY_KINDS = ("random", "mislabeled")
_BISECTION_TOLERANCE = 1e-6


class AuditError(DPTangentError):
    """An audit request that cannot run as asked."""


# -- the bound -------------------------------------------------------------------------------------

def _check_counts(m: int, r: int, v: int) -> tuple[int, int, int]:
    try:
        m, r, v = (_operator.index(x) for x in (m, r, v))
    except TypeError:
        raise AuditError(f"m, r, v must be integers, got {m!r}, {r!r}, {v!r}") from None
    if not 0 <= v <= r <= m:
        raise AuditError(f"need 0 <= v <= r <= m (correct <= guesses <= canaries), got v={v}, r={r}, m={m}")
    return m, r, v


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on P[at least v of r guesses correct] if training is (epsilon, delta)-DP.

    p = F(v) + 2·m·delta · max_{1<=i<=v} (F(v-i) - F(v)) / i, capped at 1, where
    F(x) = P[Binomial(r, e^eps/(1+e^eps)) >= x] (Steinke et al. 2023, Theorem 5.2). ``m`` counts
    all canaries (each included with probability 1/2), ``r`` the guesses (abstentions excluded).
    """
    m, r, v = _check_counts(m, r, v)
    if not epsilon >= 0:
        raise AuditError(f"epsilon must be >= 0, got {epsilon}")
    if not 0 <= delta <= 1:
        raise AuditError(f"delta must be in [0, 1], got {delta}")
    q = float(special.expit(epsilon))  # accuracy of epsilon-DP randomized response
    tail = float(stats.binom.sf(v - 1, r, q))  # F(v) = P[B >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    # F(v - i) - F(v) = P[v - i <= B <= v - 1] = sum_{j=1..i} P[B = v - j]
    band = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    slope = float(np.max(band / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * slope, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon at which ``v`` correct of ``r`` guesses on ``m`` canaries rejects (epsilon, delta)-DP.

    With probability >= ``confidence`` over the canary draw and training, a run that is truly
    (eps*, delta)-DP gives a value <= eps*: an empirical lower bound, not a guarantee. The result
    satisfies one_run_p_value(m, r, v, result, delta) < 1 - confidence (or is 0 when even epsilon
    = 0 is not rejected); it is within 1e-6 below the crossing point.
    """
    m, r, v = _check_counts(m, r, v)
    if not 0 < confidence < 1:
        raise AuditError(f"confidence must be in (0, 1), got {confidence}")
    if not 0 <= delta < 1:
        raise AuditError(f"delta must be in [0, 1), got {delta}")
    beta = 1.0 - confidence

    def rejects(eps: float) -> bool:
        return one_run_p_value(m, r, v, eps, delta) < beta

    if not rejects(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejects(high):  # terminates: p -> F(v) = 1 as epsilon -> inf when v <= r
        low, high = high, 2.0 * high
    while high - low > _BISECTION_TOLERANCE:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if rejects(mid) else (low, mid)
    return low


def max_demonstrable_epsilon(m: int, r: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon an audit with ``m`` canaries and ``r`` guesses could ever demonstrate.

    It is :func:`epsilon_lower_bound` when every guess is correct (v = r): a run whose claimed
    epsilon is above it cannot be shown to break its claim by this design, however leaky it is.
    """
    return epsilon_lower_bound(m, r, r, delta, confidence)


# -- the audit -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AuditResult:
    """Outcome of one audit run. ``epsilon_lower_bound`` is an empirical lower bound, never a guarantee.

    ``claimed_epsilon`` is the accountant's upper bound for the same run at ``delta`` (None when
    the run was non-private). ``canaries`` = m, ``guesses`` = r = guesses_in + guesses_out,
    ``correct`` = v; the bound holds at ``confidence`` over the canary draw and training noise.
    ``max_demonstrable_epsilon`` is the bound had all r guesses been correct: a claim above it is
    one this audit cannot test (``testable`` is False and ``consistent`` None).
    """

    epsilon_lower_bound: float
    claimed_epsilon: float | None
    max_demonstrable_epsilon: float
    delta: float
    confidence: float
    canaries: int
    canaries_included: int
    guesses: int
    guesses_in: int
    guesses_out: int
    correct: int
    canary_kind: str
    records: int
    steps: int
    noise_multiplier: float
    method: str = METHOD
    label: str = LOWER_BOUND_LABEL
    reservation_id: str | None = None
    audit_id: str | None = None

    @property
    def private(self) -> bool:
        return self.claimed_epsilon is not None

    @property
    def testable(self) -> bool | None:
        """Whether this design could demonstrate an epsilon above the claim (None when non-private)."""
        return None if self.claimed_epsilon is None else self.claimed_epsilon <= self.max_demonstrable_epsilon

    @property
    def consistent(self) -> bool | None:
        """Lower bound <= claimed upper bound; None when non-private or untestable. False points to a bug."""
        if not self.testable:
            return None
        return self.epsilon_lower_bound <= self.claimed_epsilon  # type: ignore[operator]

    def untestable_note(self) -> str:
        """What a claim above the ceiling means, in one sentence."""
        return (f"this audit cannot test this claim (it could demonstrate at most epsilon = "
                f"{self.max_demonstrable_epsilon:.3g} with {self.canaries} canaries and {self.guesses} guesses)")

    def summary(self) -> str:
        claim = (f"claimed (upper bound) epsilon = {fmt_eps(self.claimed_epsilon, 3)}" if self.private
                 else "non-private run (no claim)")
        if self.testable is False:
            claim += f"; {self.untestable_note()}"
        lower = significant(self.epsilon_lower_bound, 3, up=False)  # a lower bound: rounded down
        return (f"epsilon >= {lower} at delta = {self.delta:.3g}, confidence "
                f"{self.confidence:.0%} ({self.correct}/{self.guesses} guesses correct on {self.canaries} "
                f"canaries); {claim}. {self.label}")


def _draw_inclusion(m: int, generator: torch.Generator) -> torch.Tensor:
    """S_i ~ Bernoulli(1/2), independent: True = canary i joins the training set."""
    return torch.rand(m, generator=generator) < 0.5


def make_canaries(records: RecordSet, m: int, kind: str, num_classes: int, generator: torch.Generator) -> RecordSet:
    """m canaries with ids ``canary-<i>``.

    ``random``: inputs ~ N(0, 1) of the records' input shape with labels uniform over the classes
    (independent of the data). ``mislabeled``: copies of m distinct records with the label shifted
    by a uniform non-zero offset mod C, so a canary never carries its source's true label.
    """
    shape, dtype = tuple(records.inputs.shape[1:]), records.inputs.dtype
    if kind == "random":
        inputs = torch.randn((m, *shape), generator=generator).to(dtype)
        targets = torch.randint(0, num_classes, (m,), generator=generator)
    elif kind == "mislabeled":
        if m > len(records):
            raise AuditError(f"{m} mislabeled canaries need >= {m} records to copy, got {len(records)}")
        source = torch.randperm(len(records), generator=generator)[:m]
        shift = torch.randint(1, num_classes, (m,), generator=generator)
        inputs = records.inputs[source].clone()
        targets = (records.targets[source] + shift) % num_classes
    else:
        raise AuditError(f"canary kind must be one of {CANARY_KINDS}, got {kind!r}")
    ids = tuple(f"canary-{i}" for i in range(m))
    clash = set(ids) & set(records.record_ids)
    if clash:
        raise AuditError(f"record ids clash with canary ids, e.g. {sorted(clash)[0]!r}")
    return RecordSet(inputs, targets.to(records.targets.dtype), ids)


def canary_losses(tangent: TangentModel, canaries: RecordSet, loss: ConvexLoss, batch_size: int = 256) -> torch.Tensor:
    """Per-canary loss of the tangent model as it is now (eval mode, no gradients), shape (m,)."""
    tangent.train(False)
    out = []
    with torch.no_grad():
        for start in range(0, len(canaries), batch_size):
            stop = start + batch_size
            out.append(loss.per_sample(tangent(canaries.inputs[start:stop]), canaries.targets[start:stop]))
    return torch.cat(out).detach().to(torch.float64)


def guess_membership(scores: torch.Tensor, guesses_in: int, guesses_out: int) -> torch.Tensor:
    """+1 for the ``guesses_in`` highest scores, -1 for the ``guesses_out`` lowest, 0 (abstain) otherwise.

    Ties are broken by canary index (stable sort), which is independent of who was included.
    """
    m = len(scores)
    if guesses_in < 0 or guesses_out < 0 or guesses_in + guesses_out > m:
        raise AuditError(f"need guesses_in, guesses_out >= 0 and guesses_in + guesses_out <= {m}, "
                         f"got {guesses_in}, {guesses_out}")
    order = torch.sort(scores, descending=True, stable=True).indices
    guess = torch.zeros(m, dtype=torch.long)
    guess[order[:guesses_in]] = 1
    if guesses_out:
        guess[order[m - guesses_out:]] = -1
    return guess


def audit_privacy(
    tangent: TangentModel,
    records: RecordSet,
    privacy: PrivacySpec,
    config: TrainConfig = TrainConfig(),
    *,
    canaries: int = 200,
    guesses_in: int | None = None,
    guesses_out: int | None = None,
    canary_kind: str = "random",
    confidence: float = 0.95,
    seed: int = 0,
    ledger: Ledger | None = None,
    data_source: str | None = None,
    shard: str | None = None,
    component: str | None = None,
    operator: str | None = None,
    public_records: bool = False,
    record_keys: frozenset[str] = frozenset(),
    allow_overlap: bool = False,
) -> AuditResult:
    """One-run audit of ``fit`` on ``records`` plus canaries; returns an empirical lower bound on epsilon.

    Draws m = ``canaries`` canaries, includes each with probability 1/2, trains ``tangent``'s
    deltas with the project's own ``fit`` (same ``privacy`` and ``config`` as a real run) on the
    records plus the included canaries, scores each canary by how much training lowered its loss,
    s_i = loss_before_i - loss_after_i (higher = more likely included), guesses the top k+ IN and
    the bottom k- OUT (default k+ = k- = m // 10) and bounds epsilon with
    :func:`epsilon_lower_bound` at the run's own delta. ``tangent``'s deltas are restored after.
    The result also states the largest epsilon the design could demonstrate
    (:func:`max_demonstrable_epsilon`); a claim above it is reported as untestable.

    Privacy cost: the audit trains on ``records``. On a *private* shard it spends budget like
    training, so it goes through the ledger: pass ``ledger``, ``data_source``, ``shard`` and
    ``component``; the run is reserved (purpose ``hyperparameter_search``, or
    ``non_private_baseline`` when epsilon = inf) before any record is read, completed or failed
    like training, and the result is stored with ``ledger.record_audit``. Without a ledger the
    audit runs only on records declared public (``public_records=True``), which cost nothing.
    ``record_keys``: the keys (commitments) of ``records``, so the ledger charges exactly them and
    refuses records another shard read unless ``allow_overlap`` (without keys: every record of
    ``shard``); :meth:`dp_tangent.workspace.Workspace.audit_privacy` passes them.
    """
    k_in, k_out = _check_request(records, canaries, guesses_in, guesses_out, canary_kind, confidence)
    _check_ledger_use(ledger, (data_source, shard, component), public_records)
    if ledger is not None and canary_kind == "mislabeled":
        raise AuditError("mislabeled canaries copy private records, which the audit would then train twice while "
                         "the ledger charges them once; on private records use canary_kind='random' (mislabeled "
                         "canaries only on records declared public)")
    m = canaries
    generator = torch.Generator().manual_seed(seed)
    included = _draw_inclusion(m, generator)  # independent of the data: drawn before anything is read
    plan = plan_run(len(records) + int(included.sum()), privacy, config)
    claimed = epsilon_bounds(plan.event, plan.delta).epsilon if privacy.private else None
    ceiling = max_demonstrable_epsilon(m, k_in + k_out, plan.delta, confidence)
    classes = _validate(tangent, records, component)  # a data mistake is refused before the reservation
    reservation = None
    if ledger is not None:
        reservation = ledger.reserve_all([ReservationRequest(
            data_source=data_source, shard=shard, event=plan.event, delta=plan.delta,
            purpose="hyperparameter_search" if privacy.private else "non_private_baseline",
            operator=operator or getpass.getuser(), component=component, records=frozenset(record_keys),
            details={"kind": "privacy_audit", "method": METHOD, "canaries": m, "canary_kind": canary_kind,
                     "guesses": k_in + k_out, "max_demonstrable_epsilon": ceiling,
                     "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                     "steps": plan.steps, "records": plan.records, "planned_shard_size": plan.planned_size,
                     "trainable": tangent.trainable})],
            allow_overlap=allow_overlap)[0]
    start = {name: p.detach().clone() for name, p in tangent.named_deltas()}
    try:
        canary_set = make_canaries(records, m, canary_kind, classes, generator)
        before = canary_losses(tangent, canary_set, config.loss)
        train = _concat(records, canary_set.subset(torch.nonzero(included).flatten()))
        steps = fit(tangent, train, plan, privacy, config)
        scores = before - canary_losses(tangent, canary_set, config.loss)
        guess = guess_membership(scores, k_in, k_out)
        truth = torch.where(included, 1, -1)
        correct = int(((guess != 0) & (guess == truth)).sum())
        bound = epsilon_lower_bound(m, k_in + k_out, correct, plan.delta, confidence)
    except BaseException as err:
        if reservation is not None:
            ledger.fail(reservation, reason=logged_reason(err))  # its message may name a record
        raise
    finally:
        tangent.load_deltas(start)
    result = AuditResult(
        epsilon_lower_bound=bound, claimed_epsilon=claimed, max_demonstrable_epsilon=ceiling, delta=plan.delta,
        confidence=confidence, canaries=m, canaries_included=int(included.sum()), guesses=k_in + k_out,
        guesses_in=k_in, guesses_out=k_out, correct=correct, canary_kind=canary_kind, records=len(records),
        steps=steps, noise_multiplier=plan.noise_multiplier, reservation_id=reservation)
    if ledger is not None:
        result = _record(ledger, result, reservation, component, operator)  # type: ignore[arg-type]
    return result


def _check_request(records: RecordSet, m: int, guesses_in: int | None, guesses_out: int | None, kind: str,
                   confidence: float) -> tuple[int, int]:
    """The canary design is well-formed; returns (k+, k-), the guesses IN and OUT."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise AuditError(f"canaries must be an integer >= 2, got {m!r}")
    k_in = m // 10 if guesses_in is None else guesses_in
    k_out = m // 10 if guesses_out is None else guesses_out
    if k_in < 0 or k_out < 0 or k_in + k_out > m or k_in + k_out == 0:
        raise AuditError(f"need guesses_in, guesses_out >= 0 and 0 < guesses_in + guesses_out <= {m}, "
                         f"got {k_in}, {k_out}")
    if kind not in CANARY_KINDS:
        raise AuditError(f"canary kind must be one of {CANARY_KINDS}, got {kind!r}")
    if not 0 < confidence < 1:
        raise AuditError(f"confidence must be in (0, 1), got {confidence}")
    if kind == "mislabeled" and m > len(records):
        raise AuditError(f"{m} mislabeled canaries need >= {m} records to copy, got {len(records)}")
    if any(r.startswith("canary-") for r in records.record_ids):
        raise AuditError("record ids starting with 'canary-' clash with the canaries' ids; rename them")
    return k_in, k_out


def _check_ledger_use(ledger: Ledger | None, ledger_args: tuple[str | None, ...], public_records: bool) -> None:
    """An audit reads its records: private ones only through the ledger, public ones only without it."""
    if ledger is not None and public_records:
        raise AuditError("public_records=True with a ledger: give the ledger (private records, the audit spends "
                         "their budget) or public_records=True (no ledger, nothing spent), not both")
    if ledger is not None and any(a is None for a in ledger_args):
        raise AuditError("an audit recorded in a ledger needs data_source, shard and component")
    if ledger is None and any(a is not None for a in ledger_args):
        raise AuditError("data_source/shard/component given without a ledger: pass the ledger to record the spend")
    if ledger is None and not public_records:
        raise AuditError("an audit trains on its records: for private records pass ledger=, data_source=, shard= "
                         "and component= so its budget is reserved first; for public records pass "
                         "public_records=True")


def _validate(tangent: TangentModel, records: RecordSet, component: str | None) -> int:
    """The records fit the model (finite inputs of its shape, labels among its classes); returns the classes."""
    subject = f"audit {component!r}" if component else "audit"
    try:
        return validate_records(records, tangent, subject, "the tangent model", noun="network")
    except TrainingError as err:
        raise AuditError(str(err)) from None


def _record(ledger: Ledger, result: AuditResult, reservation: str, component: str, operator: str | None) -> AuditResult:
    """Complete the reservation and store the bound, with the ceiling and whether the claim was testable."""
    details = {"confidence": result.confidence, "canaries": result.canaries, "guesses": result.guesses,
               "correct": result.correct, "claimed_epsilon": result.claimed_epsilon,
               "max_demonstrable_epsilon": result.max_demonstrable_epsilon, "testable": result.testable,
               "canary_kind": result.canary_kind, "label": LOWER_BOUND_LABEL}
    if result.testable is False:
        details["note"] = result.untestable_note()
    ledger.complete(reservation, details={"epsilon_lower_bound": result.epsilon_lower_bound,
                                          "max_demonstrable_epsilon": result.max_demonstrable_epsilon,
                                          "label": LOWER_BOUND_LABEL})
    record = ledger.record_audit(component, result.epsilon_lower_bound, result.delta, method=METHOD,
                                 operator=operator or getpass.getuser(), details=details)
    return replace(result, audit_id=record.audit_id)


def _concat(a: RecordSet, b: RecordSet) -> RecordSet:
    return RecordSet(torch.cat([a.inputs, b.inputs]), torch.cat([a.targets, b.targets]), a.record_ids + b.record_ids)

