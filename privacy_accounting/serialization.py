"""Explicit JSON (de)serialiser for the supported ``dp_accounting`` events.

Format (one JSON object per event, tagged by ``type``)::

    {"type": "gaussian", "noise_multiplier": 1.1}
    {"type": "poisson_sampled", "sampling_probability": 0.05, "event": {...}}
    {"type": "self_composed", "count": 300, "event": {...}}
    {"type": "composed", "events": [{...}, ...]}
    {"type": "non_private"}
    {"type": "no_op"}

Unknown types or keys are rejected with :class:`UnsupportedEventError`; floats round-trip
exactly (Python writes the shortest repr that reads back to the same double).
"""

from __future__ import annotations

import json
from typing import Any

import dp_accounting

from privacy_accounting.errors import InvalidParameterError, UnsupportedEventError
from privacy_accounting.events import DpEvent, validate_event

_KEYS: dict[str, frozenset[str]] = {
    "gaussian": frozenset({"type", "noise_multiplier"}),
    "poisson_sampled": frozenset({"type", "sampling_probability", "event"}),
    "self_composed": frozenset({"type", "count", "event"}),
    "composed": frozenset({"type", "events"}),
    "non_private": frozenset({"type"}),
    "no_op": frozenset({"type"}),
}


def event_to_dict(event: DpEvent) -> dict[str, Any]:
    """Plain-dict form of a supported event (validated first)."""
    validate_event(event)
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return {"type": "gaussian", "noise_multiplier": float(event.noise_multiplier)}
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        return {
            "type": "poisson_sampled",
            "sampling_probability": float(event.sampling_probability),
            "event": event_to_dict(event.event),
        }
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return {"type": "self_composed", "count": int(event.count), "event": event_to_dict(event.event)}
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return {"type": "composed", "events": [event_to_dict(e) for e in event.events]}
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return {"type": "non_private"}
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return {"type": "no_op"}
    raise UnsupportedEventError(f"cannot serialise DP event {type(event).__name__}")  # pragma: no cover


def event_from_dict(data: object) -> DpEvent:
    """Inverse of :func:`event_to_dict`; rejects unknown types and unexpected keys."""
    if not isinstance(data, dict):
        raise UnsupportedEventError(f"a serialised DP event must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in _KEYS:
        raise UnsupportedEventError(f"unknown DP event type {kind!r}; supported: {', '.join(sorted(_KEYS))}")
    if set(data) != _KEYS[kind]:
        raise UnsupportedEventError(
            f"DP event of type {kind!r} must have exactly the keys {sorted(_KEYS[kind])}, got {sorted(data)}"
        )
    try:
        if kind == "gaussian":
            event: DpEvent = dp_accounting.GaussianDpEvent(_number(data["noise_multiplier"]))
        elif kind == "poisson_sampled":
            event = dp_accounting.PoissonSampledDpEvent(
                _number(data["sampling_probability"]), event_from_dict(data["event"])
            )
        elif kind == "self_composed":
            count = data["count"]
            if isinstance(count, bool) or not isinstance(count, int):
                raise InvalidParameterError(f"self_composed count must be an integer, got {count!r}")
            event = dp_accounting.SelfComposedDpEvent(event_from_dict(data["event"]), count)
        elif kind == "composed":
            if not isinstance(data["events"], list):
                raise UnsupportedEventError("composed.events must be a JSON list")
            event = dp_accounting.ComposedDpEvent([event_from_dict(e) for e in data["events"]])
        elif kind == "non_private":
            event = dp_accounting.NonPrivateDpEvent()
        else:
            event = dp_accounting.NoOpDpEvent()
    except (TypeError, ValueError) as exc:  # attrs validators of dp_accounting
        if isinstance(exc, (UnsupportedEventError, InvalidParameterError)):
            raise
        raise UnsupportedEventError(f"malformed DP event of type {kind!r}: {exc}") from exc
    return validate_event(event)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameterError(f"expected a JSON number, got {value!r}")
    return float(value)


def event_to_json(event: DpEvent) -> str:
    """Canonical JSON text (sorted keys, no spaces): equal events give equal strings."""
    return json.dumps(event_to_dict(event), sort_keys=True, separators=(",", ":"), allow_nan=False)


def event_from_json(text: str) -> DpEvent:
    """Parse :func:`event_to_json` output; invalid JSON raises :class:`UnsupportedEventError`."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise UnsupportedEventError(f"serialised DP event is not valid JSON: {exc}") from exc
    return event_from_dict(data)
