"""Explicit JSON (de)serialiser for the supported ``dp_accounting`` events.

Format: one JSON object per event, tagged by ``type`` (listed in ``event_tree``).
Unknown types or keys are rejected with :class:`UnsupportedEventError`; floats round-trip
exactly (Python writes the shortest repr that reads back to the same double). The checks and the
JSON text live in ``event_tree`` (no ``dp_accounting`` needed); this module adds the conversion
to and from ``dp_accounting`` values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from privacy_accounting import event_tree
from privacy_accounting.events import AnyEvent, as_tree, to_dp_event

if TYPE_CHECKING:
    from dp_accounting import DpEvent


def event_to_dict(event: AnyEvent) -> dict[str, Any]:
    """Plain-dict form of a supported event (validated first)."""
    return as_tree(event)


def event_from_dict(data: object) -> DpEvent:
    """Inverse of :func:`event_to_dict`; rejects unknown types and unexpected keys."""
    return to_dp_event(event_tree.check_tree(data))


def event_to_json(event: AnyEvent) -> str:
    """Canonical JSON text (sorted keys, no spaces): equal events give equal strings."""
    return event_tree.to_json(as_tree(event))


def event_from_json(text: str) -> DpEvent:
    """Parse :func:`event_to_json` output; invalid JSON raises :class:`UnsupportedEventError`."""
    return to_dp_event(event_tree.from_json(text))
