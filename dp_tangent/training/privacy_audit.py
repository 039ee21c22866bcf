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
"""

from __future__ import annotations

import getpass
import operator as _operator
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import special, stats

from privacy_accounting import Ledger, epsilon_bounds

from ..data.records import RecordSet
from ..errors import DPTangentError
from .losses import ConvexLoss
from ..tangent import TangentModel
from .config import PrivacySpec, TrainConfig
from .plan import plan_run
from .sgd import fit

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


# -- the audit -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AuditResult:
    """Outcome of one audit run. ``epsilon_lower_bound`` is an empirical lower bound, never a guarantee.

    ``claimed_epsilon`` is the accountant's upper bound for the same run at ``delta`` (None when
    the run was non-private). ``canaries`` = m, ``guesses`` = r = guesses_in + guesses_out,
    ``correct`` = v; the bound holds at ``confidence`` over the canary draw and training noise.
    """

    epsilon_lower_bound: float
    claimed_epsilon: float | None
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
    def consistent(self) -> bool | None:
        """Lower bound <= claimed upper bound (None when non-private). False points to a bug."""
        return None if self.claimed_epsilon is None else self.epsilon_lower_bound <= self.claimed_epsilon

    def summary(self) -> str:
        claim = (f"claimed (upper bound) epsilon = {self.claimed_epsilon:.3g}" if self.private
                 else "non-private run (no claim)")
        return (f"epsilon >= {self.epsilon_lower_bound:.3g} at delta = {self.delta:.3g}, confidence "
                f"{self.confidence:.0%} ({self.correct}/{self.guesses} guesses correct on {self.canaries} "
                f"canaries); {claim}. {self.label}")


def _draw_inclusion(m: int, generator: torch.Generator) -> torch.Tensor:
    """S_i ~ Bernoulli(1/2), independent: True = canary i joins the training set."""
    return torch.rand(m, generator=generator) < 0.5


def _num_classes(tangent: TangentModel, example: torch.Tensor) -> int:
    with torch.no_grad():
        logits = tangent.base_forward(example[:1])
    if logits.dim() != 2 or logits.shape[-1] < 2:
        raise AuditError(f"the model must output (batch, classes) logits with >= 2 classes, got {tuple(logits.shape)}")
    return int(logits.shape[-1])


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
) -> AuditResult:
    """One-run audit of ``fit`` on ``records`` plus canaries; returns an empirical lower bound on epsilon.

    Draws m = ``canaries`` canaries, includes each with probability 1/2, trains ``tangent``'s
    deltas with the project's own ``fit`` (same ``privacy`` and ``config`` as a real run) on the
    records plus the included canaries, scores each canary by how much training lowered its loss,
    s_i = loss_before_i - loss_after_i (higher = more likely included), guesses the top k+ IN and
    the bottom k- OUT (default k+ = k- = m // 10) and bounds epsilon with
    :func:`epsilon_lower_bound` at the run's own delta. ``tangent``'s deltas are restored after.

    Privacy cost: synthetic canaries plus *public* records cost nothing. On a *private* shard the
    run reads private data and spends budget: pass ``ledger``, ``data_source``, ``shard`` and
    ``component``; the run is reserved (purpose ``hyperparameter_search``, or
    ``non_private_baseline`` when epsilon = inf) before any record is read, completed or failed
    like training, and the result is stored with ``ledger.record_audit``.
    """
    m = canaries
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise AuditError(f"canaries must be an integer >= 2, got {m!r}")
    k_in = m // 10 if guesses_in is None else guesses_in
    k_out = m // 10 if guesses_out is None else guesses_out
    if k_in < 0 or k_out < 0 or k_in + k_out > m or k_in + k_out == 0:
        raise AuditError(f"need guesses_in, guesses_out >= 0 and 0 < guesses_in + guesses_out <= {m}, got {k_in}, {k_out}")
    if canary_kind not in CANARY_KINDS:
        raise AuditError(f"canary kind must be one of {CANARY_KINDS}, got {canary_kind!r}")
    if not 0 < confidence < 1:
        raise AuditError(f"confidence must be in (0, 1), got {confidence}")
    ledger_args = (data_source, shard, component)
    if ledger is not None and any(a is None for a in ledger_args):
        raise AuditError("an audit recorded in a ledger needs data_source, shard and component")
    if ledger is None and any(a is not None for a in ledger_args):
        raise AuditError("data_source/shard/component given without a ledger: pass the ledger to record the spend")

    if canary_kind == "mislabeled" and m > len(records):
        raise AuditError(f"{m} mislabeled canaries need >= {m} records to copy, got {len(records)}")
    if any(r.startswith("canary-") for r in records.record_ids):
        raise AuditError("record ids starting with 'canary-' clash with the canaries' ids; rename them")

    generator = torch.Generator().manual_seed(seed)
    included = _draw_inclusion(m, generator)  # independent of the data: drawn before anything is read
    plan = plan_run(len(records) + int(included.sum()), privacy, config)
    claimed = epsilon_bounds(plan.event, plan.delta).epsilon if privacy.private else None
    reservation = None
    if ledger is not None:
        reservation = ledger.reserve(
            data_source=data_source, shard=shard, event=plan.event, delta=plan.delta,
            purpose="hyperparameter_search" if privacy.private else "non_private_baseline",
            operator=operator or getpass.getuser(), component=component,
            details={"kind": "privacy_audit", "method": METHOD, "canaries": m, "canary_kind": canary_kind,
                     "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                     "steps": plan.steps, "records": plan.records, "trainable": tangent.trainable})
    start = {name: p.detach().clone() for name, p in tangent.named_deltas()}
    try:
        canary_set = make_canaries(records, m, canary_kind, _num_classes(tangent, records.inputs), generator)
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
            ledger.fail(reservation, reason=f"{type(err).__name__}: {err}".strip()[:500])
        raise
    finally:
        tangent.load_deltas(start)
    result = AuditResult(
        epsilon_lower_bound=bound, claimed_epsilon=claimed, delta=plan.delta, confidence=confidence,
        canaries=m, canaries_included=int(included.sum()), guesses=k_in + k_out, guesses_in=k_in,
        guesses_out=k_out, correct=correct, canary_kind=canary_kind, records=len(records), steps=steps,
        noise_multiplier=plan.noise_multiplier, reservation_id=reservation)
    if ledger is not None:
        details = {"confidence": confidence, "canaries": m, "guesses": result.guesses, "correct": correct,
                   "claimed_epsilon": claimed, "canary_kind": canary_kind, "label": LOWER_BOUND_LABEL}
        ledger.complete(reservation, details={"epsilon_lower_bound": bound, "label": LOWER_BOUND_LABEL})
        record = ledger.record_audit(component, bound, plan.delta, method=METHOD,
                                     operator=operator or getpass.getuser(), details=details)
        result = replace(result, audit_id=record.audit_id)
    return result


def _concat(a: RecordSet, b: RecordSet) -> RecordSet:
    return RecordSet(torch.cat([a.inputs, b.inputs]), torch.cat([a.targets, b.targets]), a.record_ids + b.record_ids)

