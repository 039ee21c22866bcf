"""Composition: one tangent model whose delta combines the deltas of several components.

A tangent model is affine in its delta, f_lin(x; delta) = f(x; theta0) + J(x)·delta, so for
delta = sum_i c_i·delta_i its logits are exactly f0 + sum_i c_i·(f_lin(x; delta_i) - f0): the
weighted combination of the components' outputs (Tangent Model Composition), at the inference
cost of one model. Methods:

* ``mean``: c_i = w_i / sum_j w_j (w_i >= 0, default 1), a convex combination;
* ``sum``: c_i = 1;
* ``task_arithmetic``: c_i = w_i as given, any sign (a negative weight subtracts a component);
* ``regmean`` (RegMean/MaTS-style, :mod:`dp_tangent.components.regmean`): the least-squares merge
  on public merge inputs, by conjugate gradients.

All components must share the base weights (``base_weights_sha256``), the ``base`` spec and the
``trainable`` selection. :func:`~dp_tangent.components.centroid.centroid_base` averages public
fine-tuned weights into a new linearization point ("Knowledge is a Region in Weight Space", 2023).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .component import Component, ComponentError, Deltas, deltas_digest, load_component
from .errors import CompositionError

if TYPE_CHECKING:  # a linear composition of deltas loaded as numpy arrays runs without torch (``dp-tangent compose``)
    import torch
    import torch.nn as nn

METHODS = ("mean", "sum", "task_arithmetic", "regmean")


@dataclass(frozen=True)
class ComposedPart:
    """One component as it went into a composition."""

    name: str
    sha256: str  # of the component file
    deltas_sha256: str
    data_source: str
    shard: str
    weight: float | None  # as requested (None: no weights were given)
    coefficient: float | None  # c_i applied to delta_i (linear methods); None for regmean
    merge_data_sha256: str | None = None


@dataclass(frozen=True)
class CompositionRecord:
    """What a composed delta is made of: enough to recompute it and to audit it."""

    method: str
    parts: tuple[ComposedPart, ...]
    weights_given: bool
    base: dict[str, Any]
    base_weights_sha256: str
    trainable: str
    deltas_sha256: str
    merge: dict[str, Any] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts)

    @property
    def weights(self) -> list[float] | None:
        """The weights to pass to :func:`compose` to reproduce this composition."""
        return [float(p.weight) for p in self.parts] if self.weights_given else None  # type: ignore[arg-type]


@dataclass(frozen=True)
class Composition:
    deltas: Deltas
    record: CompositionRecord


def _load(item: Component | str | Path) -> Component:
    if isinstance(item, Component):
        if deltas_digest(item.deltas) != item.metadata.deltas_sha256:
            raise ComponentError(f"component {item.name!r}: its deltas do not match the digest in its metadata")
        return item
    return load_component(item)


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def check_compatible(components: Sequence[Component]) -> None:
    """Same base weights, base spec, trainable selection and delta names/shapes/dtypes, or refuse."""
    ref = components[0]
    seen = {ref.name}
    for comp in components[1:]:
        if comp.name in seen:
            raise CompositionError(f"component {comp.name!r} is given twice; give it once with a weight instead")
        seen.add(comp.name)
        for attr in ("base_weights_sha256", "base", "trainable"):
            a, b = getattr(ref.metadata, attr), getattr(comp.metadata, attr)
            if a != b:
                raise CompositionError(
                    f"component {comp.name!r} differs from {ref.name!r} in {attr} ({_short(b)} vs {_short(a)}): "
                    "components must share the same base model and linearization")
        want = {n: (tuple(t.shape), t.dtype) for n, t in ref.deltas.items()}
        got = {n: (tuple(t.shape), t.dtype) for n, t in comp.deltas.items()}
        if want != got:
            diff = sorted(set(want) ^ set(got)) or sorted(n for n in want if want[n] != got[n])
            raise CompositionError(f"component {comp.name!r} has different deltas than {ref.name!r} (e.g. {diff[:3]})")


def check_weights(weights: Sequence[float] | None, k: int, method: str) -> list[float] | None:
    if weights is None:
        return None
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise CompositionError("weights must be a list of numbers, one per component")
    if len(weights) != k:
        raise CompositionError(f"{len(weights)} weights for {k} components: give one weight per component")
    out = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise CompositionError(f"weights must be finite numbers, got {w!r}")
        out.append(float(w))
    if method in ("mean", "regmean") and (min(out) < 0 or sum(out) <= 0):
        raise CompositionError(f"{method} weights must be >= 0 with a positive sum, got {out}; "
                               "use the task-arithmetic method (method='task_arithmetic', --method task-arithmetic) "
                               "to subtract a component")
    return out


def _coefficients(weights: list[float] | None, k: int, method: str) -> list[float]:
    if method == "mean":
        w = weights or [1.0] * k
        try:
            total = math.fsum(w)
        except OverflowError:  # huge weights: the same coefficients, from weights scaled down first
            top = max(w)
            return [x / top / math.fsum(v / top for v in w) for x in w]
        return [x / total for x in w]
    if method == "sum":
        if weights is not None:
            raise CompositionError("method 'sum' takes no weights; use 'task_arithmetic' for coefficients")
        return [1.0] * k
    if weights is None:
        raise CompositionError("task_arithmetic needs weights: one scaling coefficient per component "
                               "(a negative one subtracts it)")
    return weights


def weighted_sum(deltas: Sequence[Deltas], coefficients: Sequence[float]) -> Deltas:
    """sum_i c_i·delta_i, accumulated in float64 in the given order, cast back to the deltas' dtype (numpy arrays
    give numpy arrays, bit for bit the sums torch tensors give)."""
    if all(isinstance(t, np.ndarray) for d in deltas for t in d.values()):
        out = {}
        with np.errstate(over="ignore", invalid="ignore"):  # as torch: inf or nan, which compose() refuses in words
            for name, ref in deltas[0].items():
                acc = np.zeros(ref.shape, dtype=np.float64)
                for c, d in zip(coefficients, deltas):
                    acc += c * d[name].astype(np.float64)
                out[name] = acc.astype(ref.dtype)
        return out
    import torch

    out = {}
    for name, ref in deltas[0].items():
        acc = torch.zeros(tuple(ref.shape), dtype=torch.float64)
        for c, d in zip(coefficients, deltas):
            acc += c * torch.as_tensor(d[name]).to(torch.float64)
        out[name] = acc.to(torch.as_tensor(ref).dtype)
    return out


def _finite(values: object) -> bool:
    if isinstance(values, np.ndarray):
        return bool(np.isfinite(values).all())
    import torch

    return bool(torch.isfinite(values).all())


def compose(
    components: Sequence[Component | str | Path],
    weights: Sequence[float] | None = None,
    method: str = "mean",
    *,
    merge_data: Mapping[str, torch.Tensor] | None = None,
    merge_data_public: bool = False,
    base_model: nn.Module | None = None,
    ridge: float = 0.0,
    cg_tol: float = 1e-10,
    cg_max_iter: int | None = None,
    merge_dtype: torch.dtype | None = None,
    batch_size: int = 512,
) -> Composition:
    """Compose ``components`` (loaded, or paths) with ``method`` (see module doc).

    ``weights``: mean -- relative weights (default equal); sum -- none; task_arithmetic -- the
    coefficients (required); regmean -- multipliers a_i of each curvature (default 1).
    regmean only: ``merge_data`` maps each component name to its merge inputs, which must be public
    (``merge_data_public=True``); ``ridge`` adds ridge·I to the system; CG stops at relative
    residual ``cg_tol`` and fails loudly after ``cg_max_iter`` iterations, in ``merge_dtype`` (None: float64).
    """
    if method not in METHODS:
        raise CompositionError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(components, (str, Path)) or not components:
        raise CompositionError("compose needs at least one component")
    loaded = [_load(c) for c in components]
    check_compatible(loaded)
    w = check_weights(weights, len(loaded), method)
    merge_info, merge_digests = None, [None] * len(loaded)
    if method == "regmean":
        import torch

        from .regmean import regmean

        if any(isinstance(t, np.ndarray) for c in loaded for t in c.deltas.values()):
            raise CompositionError("regmean composes components loaded as torch tensors (load_component(path))")
        merge_dtype = torch.float64 if merge_dtype is None else merge_dtype
        deltas, merge_info, merge_digests = regmean(
            loaded, w, merge_data, merge_data_public, base_model, ridge, cg_tol, cg_max_iter, merge_dtype, batch_size)
        coefficients: list[float | None] = [None] * len(loaded)
    else:
        if merge_data is not None:
            raise CompositionError(f"merge_data is only used by method 'regmean', not {method!r}")
        coefficients = list(_coefficients(w, len(loaded), method))
        deltas = weighted_sum([c.deltas for c in loaded], coefficients)  # type: ignore[arg-type]
    bad = next((name for name, d in deltas.items() if not _finite(d)), None)
    if bad is not None:
        raise CompositionError(f"the composed delta {bad!r} is not finite (the weights overflow its values); "
                               "give smaller weights")
    meta = loaded[0].metadata
    parts = tuple(
        ComposedPart(c.name, c.sha256, c.metadata.deltas_sha256, c.metadata.data_source, c.metadata.shard,
                     None if w is None else w[i], coefficients[i], merge_digests[i])
        for i, c in enumerate(loaded))
    record = CompositionRecord(method, parts, w is not None, dict(meta.base), meta.base_weights_sha256,
                               meta.trainable, deltas_digest(deltas), merge_info)
    return Composition(deltas, record)
