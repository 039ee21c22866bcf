"""DP events: builders, validation and inspection of the ``dp_accounting`` event algebra.

Events are the immutable values of Google's ``dp_accounting`` (used directly, not wrapped).
Supported subset:

* ``GaussianDpEvent(sigma)``: Gaussian mechanism, noise std = sigma * L2 sensitivity;
* ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``: each record enters the batch
  independently with probability q (the DP-SGD step);
* ``SelfComposedDpEvent(e, n)``: n adaptive repetitions of e;
* ``ComposedDpEvent([e1, e2, ...])``: adaptive sequential composition;
* ``NonPrivateDpEvent()``: no guarantee (epsilon = inf); ``NoOpDpEvent()``: touches no data.

Every inspection here also takes the event's JSON tree (``event_tree``), the form the ledger
holds; ``dp_accounting`` is imported only by the functions that build its values, so reading a
ledger never pays for it (its package import loads scipy: about a second).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Sequence, Union

from privacy_accounting import event_tree
from privacy_accounting.errors import InvalidParameterError, UnsupportedEventError
from privacy_accounting.event_tree import EventTree, HistoryEntry, SgdParameters
from privacy_accounting.validation import check_noise_multiplier, check_sample_rate, check_steps

if TYPE_CHECKING:
    from dp_accounting import DpEvent

__all__ = [
    "AnyEvent", "DpEvent", "EventTree", "HistoryEntry", "SgdParameters", "as_tree", "compose_events",
    "describe_event", "dp_sgd_event", "gaussian_event", "gaussian_history", "is_non_private", "merged_history",
    "normalize_event", "sgd_parameters", "to_dp_event", "total_steps", "uses_poisson_sampling", "validate_event",
]

#: A ``dp_accounting`` event value, or its JSON tree.
AnyEvent = Union["DpEvent", Mapping[str, Any]]


def __getattr__(name: str) -> Any:
    """``DpEvent`` (the ``dp_accounting`` base class), imported on first use."""
    if name == "DpEvent":
        import dp_accounting

        return dp_accounting.DpEvent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dp_sgd_event(noise_multiplier: float, sample_rate: float, steps: int) -> DpEvent:
    """DP-SGD: ``SelfComposed(PoissonSampled(q, Gaussian(sigma)), steps)``."""
    import dp_accounting

    sigma = check_noise_multiplier(noise_multiplier)
    q = check_sample_rate(sample_rate)
    n = check_steps(steps)
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), n
    )


def gaussian_event(noise_multiplier: float, count: int = 1) -> DpEvent:
    """``count`` adaptive Gaussian releases with noise multiplier sigma (no subsampling)."""
    import dp_accounting

    sigma = check_noise_multiplier(noise_multiplier)
    n = check_steps(count, "count")
    event = dp_accounting.GaussianDpEvent(sigma)
    return event if n == 1 else dp_accounting.SelfComposedDpEvent(event, n)


def compose_events(events: Sequence[AnyEvent]) -> DpEvent:
    """Sequential (adaptive) composition: NoOp for none, the event itself for one, else Composed."""
    import dp_accounting

    values = [to_dp_event(as_tree(e)) if isinstance(e, Mapping) else e for e in events]
    if not values:
        return dp_accounting.NoOpDpEvent()
    if len(values) == 1:
        return values[0]
    return dp_accounting.ComposedDpEvent(values)


def as_tree(event: AnyEvent) -> EventTree:
    """The validated JSON tree of an event (a ``dp_accounting`` value or a tree); a one-line error
    (:class:`UnsupportedEventError`, :class:`InvalidParameterError`) if it is not a supported one."""
    if isinstance(event, Mapping):
        return event_tree.check_tree(event)
    import dp_accounting  # already loaded: the caller holds one of its values

    if isinstance(event, dp_accounting.NoOpDpEvent):
        return dict(event_tree.NO_OP)
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return dict(event_tree.NON_PRIVATE)
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return {"type": "gaussian",
                "noise_multiplier": check_noise_multiplier(event.noise_multiplier, "GaussianDpEvent.noise_multiplier")}
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        q = check_sample_rate(event.sampling_probability, "PoissonSampledDpEvent.sampling_probability")
        if not isinstance(event.event, dp_accounting.GaussianDpEvent):
            raise UnsupportedEventError(
                "PoissonSampledDpEvent must wrap a GaussianDpEvent (Poisson-subsampled Gaussian), "
                f"got {type(event.event).__name__}"
            )
        return {"type": "poisson_sampled", "sampling_probability": q, "event": as_tree(event.event)}
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return {"type": "self_composed", "count": check_steps(event.count, "SelfComposedDpEvent.count"),
                "event": as_tree(event.event)}
    if isinstance(event, dp_accounting.ComposedDpEvent):
        if not isinstance(event.events, (list, tuple)):
            raise InvalidParameterError("ComposedDpEvent.events must be a list of events")
        return {"type": "composed", "events": [as_tree(sub) for sub in event.events]}
    raise UnsupportedEventError(
        f"unsupported DP event {type(event).__name__}; supported: GaussianDpEvent, "
        "PoissonSampledDpEvent(GaussianDpEvent), SelfComposedDpEvent, ComposedDpEvent, "
        "NonPrivateDpEvent, NoOpDpEvent"
    )


def to_dp_event(tree: EventTree) -> DpEvent:
    """The ``dp_accounting`` value of a validated tree (imports ``dp_accounting``)."""
    import dp_accounting

    kind = tree["type"]
    if kind == "gaussian":
        return dp_accounting.GaussianDpEvent(tree["noise_multiplier"])
    if kind == "poisson_sampled":
        return dp_accounting.PoissonSampledDpEvent(tree["sampling_probability"], to_dp_event(tree["event"]))
    if kind == "self_composed":
        return dp_accounting.SelfComposedDpEvent(to_dp_event(tree["event"]), tree["count"])
    if kind == "composed":
        return dp_accounting.ComposedDpEvent([to_dp_event(sub) for sub in tree["events"]])
    if kind == "non_private":
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.NoOpDpEvent()


def validate_event(event: AnyEvent) -> AnyEvent:
    """Return ``event`` if it is a supported, well-formed event; raise a one-line error otherwise."""
    as_tree(event)
    return event


def is_non_private(event: AnyEvent) -> bool:
    """True if the event contains a ``NonPrivateDpEvent`` anywhere (its epsilon is infinite)."""
    return event_tree.is_non_private(as_tree(event))


def gaussian_history(event: AnyEvent) -> list[HistoryEntry]:
    """Flatten an event into Opacus accountant history ``[(sigma, q, steps), ...]``.

    Composition is commutative for these accountants, so ``SelfComposed(Composed([a, b]), n)``
    becomes ``a`` and ``b`` each repeated n times; an unsampled Gaussian has q = 1.0.
    Non-private events have no history: check :func:`is_non_private` first.
    """
    return event_tree.gaussian_history(as_tree(event))


def merged_history(event: AnyEvent) -> list[HistoryEntry]:
    """:func:`gaussian_history` with equal (sigma, q) entries merged (steps added), first-seen order."""
    return event_tree.merged_history(as_tree(event))


def normalize_event(event: AnyEvent) -> DpEvent:
    """Canonical equivalent event: a composition of one self-composed block per distinct (sigma, q).

    Non-private events become ``NonPrivateDpEvent()``, events touching no data ``NoOpDpEvent()``.
    """
    return to_dp_event(event_tree.normalize(as_tree(event)))


def sgd_parameters(event: AnyEvent) -> SgdParameters | None:
    """(sigma, q, steps) if the event is one homogeneous (subsampled) Gaussian run, else None."""
    return event_tree.sgd_parameters(as_tree(event))


def total_steps(event: AnyEvent) -> int:
    """Number of elementary (subsampled) Gaussian releases in the event; 1 for a non-private one."""
    return event_tree.total_steps(as_tree(event))


def describe_event(event: AnyEvent) -> str:
    """Short human-readable description, e.g. ``Poisson-subsampled Gaussian (sigma=1.1, q=0.05) x 300``."""
    return event_tree.describe(as_tree(event))


def uses_poisson_sampling(event: AnyEvent) -> bool:
    """True if any part of the event is a Poisson-subsampled Gaussian."""
    return event_tree.uses_poisson_sampling(as_tree(event))
