"""DP events: builders, validation and inspection of the ``dp_accounting`` event algebra.

Events are the immutable values of Google's ``dp_accounting`` (used directly, not wrapped).
Supported subset:

* ``GaussianDpEvent(sigma)``: Gaussian mechanism, noise std = sigma * L2 sensitivity;
* ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``: each record enters the batch
  independently with probability q (the DP-SGD step);
* ``SelfComposedDpEvent(e, n)``: n adaptive repetitions of e;
* ``ComposedDpEvent([e1, e2, ...])``: adaptive sequential composition;
* ``NonPrivateDpEvent()``: no guarantee (epsilon = inf); ``NoOpDpEvent()``: touches no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import dp_accounting

from privacy_accounting.errors import InvalidParameterError, UnsupportedEventError
from privacy_accounting.validation import check_noise_multiplier, check_sample_rate, check_steps

DpEvent = dp_accounting.DpEvent

#: One entry of an Opacus accountant history: (noise_multiplier, sample_rate, steps).
HistoryEntry = tuple[float, float, int]


@dataclass(frozen=True)
class SgdParameters:
    """The (sigma, q, steps) of an event shaped like DP-SGD (q = 1.0 for an unsampled Gaussian)."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def dp_sgd_event(noise_multiplier: float, sample_rate: float, steps: int) -> DpEvent:
    """DP-SGD: ``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)``."""
    sigma = check_noise_multiplier(noise_multiplier)
    q = check_sample_rate(sample_rate)
    n = check_steps(steps)
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), n
    )


def gaussian_event(noise_multiplier: float, count: int = 1) -> DpEvent:
    """``count`` adaptive Gaussian releases with noise multiplier sigma (no subsampling)."""
    sigma = check_noise_multiplier(noise_multiplier)
    n = check_steps(count, "count")
    event = dp_accounting.GaussianDpEvent(sigma)
    return event if n == 1 else dp_accounting.SelfComposedDpEvent(event, n)


def compose_events(events: Sequence[DpEvent]) -> DpEvent:
    """Sequential (adaptive) composition: NoOp for none, the event itself for one, else Composed."""
    events = list(events)
    if not events:
        return dp_accounting.NoOpDpEvent()
    if len(events) == 1:
        return events[0]
    return dp_accounting.ComposedDpEvent(events)


def validate_event(event: object) -> DpEvent:
    """Return ``event`` if it is a supported, well-formed event; raise a one-line error otherwise."""
    if isinstance(event, (dp_accounting.NoOpDpEvent, dp_accounting.NonPrivateDpEvent)):
        return event
    if isinstance(event, dp_accounting.GaussianDpEvent):
        check_noise_multiplier(event.noise_multiplier, "GaussianDpEvent.noise_multiplier")
        return event
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        check_sample_rate(event.sampling_probability, "PoissonSampledDpEvent.sampling_probability")
        if not isinstance(event.event, dp_accounting.GaussianDpEvent):
            raise UnsupportedEventError(
                "PoissonSampledDpEvent must wrap a GaussianDpEvent (Poisson-subsampled Gaussian), "
                f"got {type(event.event).__name__}"
            )
        validate_event(event.event)
        return event
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        check_steps(event.count, "SelfComposedDpEvent.count")
        validate_event(event.event)
        return event
    if isinstance(event, dp_accounting.ComposedDpEvent):
        if not isinstance(event.events, (list, tuple)):
            raise InvalidParameterError("ComposedDpEvent.events must be a list of events")
        for sub in event.events:
            validate_event(sub)
        return event
    raise UnsupportedEventError(
        f"unsupported DP event {type(event).__name__}; supported: GaussianDpEvent, "
        "PoissonSampledDpEvent(GaussianDpEvent), SelfComposedDpEvent, ComposedDpEvent, "
        "NonPrivateDpEvent, NoOpDpEvent"
    )


def is_non_private(event: DpEvent) -> bool:
    """True if the event contains a ``NonPrivateDpEvent`` anywhere (its epsilon is infinite)."""
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return True
    if isinstance(event, (dp_accounting.SelfComposedDpEvent, dp_accounting.PoissonSampledDpEvent)):
        return is_non_private(event.event)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return any(is_non_private(e) for e in event.events)
    return False


def gaussian_history(event: DpEvent) -> list[HistoryEntry]:
    """Flatten an event into Opacus accountant history ``[(sigma, q, steps), ...]``.

    Composition is commutative for these accountants, so ``SelfComposed(Composed([a, b]), n)``
    becomes ``a`` and ``b`` each repeated n times; an unsampled Gaussian has q = 1.0.
    Non-private events have no history: check :func:`is_non_private` first.
    """
    out: list[HistoryEntry] = []

    def walk(ev: DpEvent, count: int) -> None:
        if isinstance(ev, dp_accounting.NoOpDpEvent):
            return
        if isinstance(ev, dp_accounting.GaussianDpEvent):
            out.append((float(ev.noise_multiplier), 1.0, count))
        elif isinstance(ev, dp_accounting.PoissonSampledDpEvent):
            validate_event(ev)
            out.append((float(ev.event.noise_multiplier), float(ev.sampling_probability), count))
        elif isinstance(ev, dp_accounting.SelfComposedDpEvent):
            walk(ev.event, count * int(ev.count))
        elif isinstance(ev, dp_accounting.ComposedDpEvent):
            for sub in ev.events:
                walk(sub, count)
        elif isinstance(ev, dp_accounting.NonPrivateDpEvent):
            raise UnsupportedEventError("a NonPrivateDpEvent has no Gaussian history (epsilon is infinite)")
        else:
            validate_event(ev)  # raises for unsupported types

    walk(event, 1)
    return out


def merged_history(event: DpEvent) -> list[HistoryEntry]:
    """:func:`gaussian_history` with equal (sigma, q) entries merged (steps added), first-seen order.

    Composition is commutative, so this describes the same mechanism.
    """
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in gaussian_history(event):
        merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def normalize_event(event: DpEvent) -> DpEvent:
    """Canonical equivalent event: a composition of one self-composed block per distinct (sigma, q).

    Non-private events become ``NonPrivateDpEvent()``, events touching no data ``NoOpDpEvent()``.
    Used as cache key and as what the accountants compute on (identical privacy, less work).
    """
    validate_event(event)
    if is_non_private(event):
        return dp_accounting.NonPrivateDpEvent()
    blocks: list[DpEvent] = []
    for sigma, q, steps in merged_history(event):
        base = dp_accounting.GaussianDpEvent(sigma)
        if q < 1.0:
            base = dp_accounting.PoissonSampledDpEvent(q, base)
        blocks.append(base if steps == 1 else dp_accounting.SelfComposedDpEvent(base, steps))
    return compose_events(blocks)


def sgd_parameters(event: DpEvent) -> SgdParameters | None:
    """(sigma, q, steps) if the event is one homogeneous (subsampled) Gaussian run, else None."""
    count = 1
    inner = event
    if isinstance(inner, dp_accounting.SelfComposedDpEvent):
        count, inner = int(inner.count), inner.event
    if isinstance(inner, dp_accounting.PoissonSampledDpEvent) and isinstance(
        inner.event, dp_accounting.GaussianDpEvent
    ):
        return SgdParameters(float(inner.event.noise_multiplier), float(inner.sampling_probability), count)
    if isinstance(inner, dp_accounting.GaussianDpEvent):
        return SgdParameters(float(inner.noise_multiplier), 1.0, count)
    return None


def total_steps(event: DpEvent) -> int:
    """Number of elementary (subsampled) Gaussian releases in the event; 1 for a non-private one."""
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return 0
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return int(event.count) * total_steps(event.event)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return sum(total_steps(e) for e in event.events)
    return 1


def describe_event(event: DpEvent) -> str:
    """Short human-readable description, e.g. ``Poisson-subsampled Gaussian (sigma=1.1, q=0.05) x 300``."""
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return "no-op (touches no data)"
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return "non-private (no DP guarantee)"
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return f"Gaussian (sigma={event.noise_multiplier:g})"
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        return f"Poisson-subsampled Gaussian (sigma={event.event.noise_multiplier:g}, q={event.sampling_probability:g})"
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return f"{describe_event(event.event)} x {int(event.count)}"
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return "composition of [" + "; ".join(describe_event(e) for e in event.events) + "]"
    return type(event).__name__


def uses_poisson_sampling(event: DpEvent) -> bool:
    """True if any part of the event is a Poisson-subsampled Gaussian."""
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        return True
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return uses_poisson_sampling(event.event)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return any(uses_poisson_sampling(e) for e in event.events)
    return False
