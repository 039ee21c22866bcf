"""DP events as JSON trees: validation and inspection without importing ``dp_accounting``.

An event tree is the plain-dict form of a supported ``dp_accounting`` event, the format the
ledger stores (see ``serialization``)::

    {"type": "gaussian", "noise_multiplier": 1.1}
    {"type": "poisson_sampled", "sampling_probability": 0.05, "event": {...}}
    {"type": "self_composed", "count": 300, "event": {...}}
    {"type": "composed", "events": [{...}, ...]}
    {"type": "non_private"}
    {"type": "no_op"}

The ledger and the reports hold events in this form; ``dp_accounting`` (whose package import
loads scipy.signal and scipy.stats, about a second) is imported only where a ``DpEvent`` value is
built (``events``) or an accountant computes (``accountants``). Every function below except
:func:`check_tree` takes a tree that :func:`check_tree` returned (it does not re-validate).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Sequence

from privacy_accounting.errors import UnsupportedEventError
from privacy_accounting.validation import check_noise_multiplier, check_sample_rate, check_steps

#: A validated event in its JSON form (treat as read-only).
EventTree = dict[str, Any]

#: One entry of an Opacus accountant history: (noise_multiplier, sample_rate, steps).
HistoryEntry = tuple[float, float, int]

NO_OP: EventTree = {"type": "no_op"}
NON_PRIVATE: EventTree = {"type": "non_private"}

_KEYS: dict[str, frozenset[str]] = {
    "gaussian": frozenset({"type", "noise_multiplier"}),
    "poisson_sampled": frozenset({"type", "sampling_probability", "event"}),
    "self_composed": frozenset({"type", "count", "event"}),
    "composed": frozenset({"type", "events"}),
    "non_private": frozenset({"type"}),
    "no_op": frozenset({"type"}),
}


@dataclass(frozen=True)
class SgdParameters:
    """The (sigma, q, steps) of an event shaped like DP-SGD (q = 1.0 for an unsampled Gaussian)."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def check_tree(data: object) -> EventTree:
    """A fresh, canonical copy of ``data`` if it is a well-formed supported event tree.

    Unknown types, missing or extra keys and a Poisson sampling of anything but a Gaussian raise
    :class:`UnsupportedEventError`; out-of-range or non-numeric values :class:`InvalidParameterError`.
    """
    if not isinstance(data, Mapping):
        raise UnsupportedEventError(f"a serialised DP event must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in _KEYS:
        raise UnsupportedEventError(f"unknown DP event type {kind!r}; supported: {', '.join(sorted(_KEYS))}")
    if set(data) != _KEYS[kind]:
        raise UnsupportedEventError(
            f"DP event of type {kind!r} must have exactly the keys {sorted(_KEYS[kind])}, got {sorted(data)}"
        )
    if kind == "gaussian":
        return {"type": kind, "noise_multiplier": check_noise_multiplier(data["noise_multiplier"],
                                                                         "gaussian.noise_multiplier", new=False)}
    if kind == "poisson_sampled":
        q = check_sample_rate(data["sampling_probability"], "poisson_sampled.sampling_probability")
        inner = check_tree(data["event"])
        if inner["type"] != "gaussian":
            raise UnsupportedEventError(
                "PoissonSampledDpEvent must wrap a GaussianDpEvent (Poisson-subsampled Gaussian), "
                f"got {inner['type']!r}"
            )
        return {"type": kind, "sampling_probability": q, "event": inner}
    if kind == "self_composed":
        return {"type": kind, "count": check_steps(data["count"], "self_composed.count"),
                "event": check_tree(data["event"])}
    if kind == "composed":
        if not isinstance(data["events"], (list, tuple)):
            raise UnsupportedEventError("composed.events must be a JSON list")
        return {"type": kind, "events": [check_tree(e) for e in data["events"]]}
    return {"type": kind}


def to_json(tree: EventTree) -> str:
    """Canonical JSON text (sorted keys, no spaces): equal events give equal strings.

    Floats round-trip exactly (Python writes the shortest repr that reads back to the same double).
    """
    return json.dumps(tree, sort_keys=True, separators=(",", ":"), allow_nan=False)


def from_json(text: str) -> EventTree:
    """Parse and validate :func:`to_json` output; invalid JSON raises :class:`UnsupportedEventError`."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise UnsupportedEventError(f"serialised DP event is not valid JSON: {exc}") from exc
    return check_tree(data)


def sgd(noise_multiplier: float, sample_rate: float, steps: int) -> EventTree:
    """DP-SGD's tree: ``steps`` releases of the Gaussian (sigma), Poisson-subsampled at q if q < 1."""
    tree: EventTree = {"type": "gaussian", "noise_multiplier": check_noise_multiplier(noise_multiplier)}
    if check_sample_rate(sample_rate) < 1.0:
        tree = {"type": "poisson_sampled", "sampling_probability": float(sample_rate), "event": tree}
    return tree if check_steps(steps) == 1 else {"type": "self_composed", "count": int(steps), "event": tree}


def compose(trees: Sequence[EventTree]) -> EventTree:
    """Sequential (adaptive) composition: no-op for none, the event itself for one, else composed."""
    trees = list(trees)
    if not trees:
        return dict(NO_OP)
    if len(trees) == 1:
        return trees[0]
    return {"type": "composed", "events": trees}


def is_non_private(tree: EventTree) -> bool:
    """True if the event contains a non-private event anywhere (its epsilon is infinite)."""
    kind = tree["type"]
    if kind == "non_private":
        return True
    if kind in ("self_composed", "poisson_sampled"):
        return is_non_private(tree["event"])
    if kind == "composed":
        return any(is_non_private(e) for e in tree["events"])
    return False


def gaussian_history(tree: EventTree) -> list[HistoryEntry]:
    """Flatten an event into Opacus accountant history ``[(sigma, q, steps), ...]``.

    Composition is commutative for these accountants, so ``SelfComposed(Composed([a, b]), n)``
    becomes ``a`` and ``b`` each repeated n times; an unsampled Gaussian has q = 1.0.
    Non-private events have no history: check :func:`is_non_private` first.
    """
    out: list[HistoryEntry] = []

    def walk(node: EventTree, count: int) -> None:
        kind = node["type"]
        if kind == "gaussian":
            out.append((node["noise_multiplier"], 1.0, count))
        elif kind == "poisson_sampled":
            out.append((node["event"]["noise_multiplier"], node["sampling_probability"], count))
        elif kind == "self_composed":
            walk(node["event"], count * node["count"])
        elif kind == "composed":
            for sub in node["events"]:
                walk(sub, count)
        elif kind == "non_private":
            raise UnsupportedEventError("a NonPrivateDpEvent has no Gaussian history (epsilon is infinite)")

    walk(tree, 1)
    return out


def merged_history(tree: EventTree) -> list[HistoryEntry]:
    """:func:`gaussian_history` with equal (sigma, q) entries merged (steps added), first-seen order.

    Composition is commutative, so this describes the same mechanism.
    """
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in gaussian_history(tree):
        merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]


def normalize(tree: EventTree) -> EventTree:
    """Canonical equivalent event: a composition of one self-composed block per distinct (sigma, q).

    Non-private events become ``non_private``, events touching no data ``no_op``. Used as cache key
    and as what the accountants compute on (identical privacy, less work).
    """
    if is_non_private(tree):
        return dict(NON_PRIVATE)
    blocks: list[EventTree] = []
    for sigma, q, steps in merged_history(tree):
        base: EventTree = {"type": "gaussian", "noise_multiplier": sigma}
        if q < 1.0:
            base = {"type": "poisson_sampled", "sampling_probability": q, "event": base}
        blocks.append(base if steps == 1 else {"type": "self_composed", "count": steps, "event": base})
    return compose(blocks)


def sgd_parameters(tree: EventTree) -> SgdParameters | None:
    """(sigma, q, steps) if the event is one homogeneous (subsampled) Gaussian run, else None."""
    count, inner = 1, tree
    if inner["type"] == "self_composed":
        count, inner = inner["count"], inner["event"]
    if inner["type"] == "poisson_sampled":
        return SgdParameters(inner["event"]["noise_multiplier"], inner["sampling_probability"], count)
    if inner["type"] == "gaussian":
        return SgdParameters(inner["noise_multiplier"], 1.0, count)
    return None


def total_steps(tree: EventTree) -> int:
    """Number of elementary (subsampled) Gaussian releases in the event; 1 for a non-private one."""
    kind = tree["type"]
    if kind == "no_op":
        return 0
    if kind == "self_composed":
        return tree["count"] * total_steps(tree["event"])
    if kind == "composed":
        return sum(total_steps(e) for e in tree["events"])
    return 1


def describe(tree: EventTree) -> str:
    """Short human-readable description, e.g. ``Poisson-subsampled Gaussian (sigma=1.1, q=0.05) x 300``."""
    kind = tree["type"]
    if kind == "no_op":
        return "no-op (touches no data)"
    if kind == "non_private":
        return "non-private (no DP guarantee)"
    if kind == "gaussian":
        return f"Gaussian (sigma={tree['noise_multiplier']:g})"
    if kind == "poisson_sampled":
        sigma, q = tree["event"]["noise_multiplier"], tree["sampling_probability"]
        return f"Poisson-subsampled Gaussian (sigma={sigma:g}, q={q:g})"
    if kind == "self_composed":
        return f"{describe(tree['event'])} x {tree['count']}"
    return "composition of [" + "; ".join(describe(e) for e in tree["events"]) + "]"


def uses_poisson_sampling(tree: EventTree) -> bool:
    """True if any part of the event is a Poisson-subsampled Gaussian."""
    kind = tree["type"]
    if kind == "poisson_sampled":
        return True
    if kind == "self_composed":
        return uses_poisson_sampling(tree["event"])
    if kind == "composed":
        return any(uses_poisson_sampling(e) for e in tree["events"])
    return False
