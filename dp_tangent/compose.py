"""Composition: one tangent model whose delta combines the deltas of several components.

A tangent model is affine in its delta, f_lin(x; delta) = f(x; theta0) + J(x)·delta, so for
delta = sum_i c_i·delta_i its logits are exactly f0 + sum_i c_i·(f_lin(x; delta_i) - f0): the
weighted combination of the components' outputs (Tangent Model Composition), at the inference
cost of one model. Methods:

* ``mean``: c_i = w_i / sum_j w_j (w_i >= 0, default 1), a convex combination;
* ``sum``: c_i = 1;
* ``task_arithmetic``: c_i = w_i as given, any sign (a negative weight subtracts a component);
* ``regmean`` (RegMean/MaTS-style): delta = argmin sum_i a_i·||J_i(delta - delta_i)||^2, i.e.
  (sum_i a_i J_i^T J_i) delta = sum_i a_i J_i^T J_i delta_i, with J_i the tangent model's Jacobian
  on component i's merge inputs. For the square loss J_i^T J_i is the exact curvature of shard i
  (up to the constant 2/classes), so merging components that fit their shards exactly gives the
  least-squares fit on the union. Solved by conjugate gradients with J·v and J^T·u products
  (``torch.func.vjp`` on the tangent model; J is never formed). The statistics come from the merge
  data, so that data must be public: this module cannot privatise them and refuses private data.

All components must share the base weights (``base_weights_sha256``), the ``base`` spec and the
``trainable`` selection. :func:`centroid_base` averages public fine-tuned weights into a new
linearization point ("Knowledge is a Region in Weight Space", 2023).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save
from torch.func import functional_call, vjp

from .backbones import BackboneSpec, read_state_dict, weights_digest
from .component import Component, ComponentError, deltas_digest, load_component
from .errors import DPTangentError
from .io import atomic_write_bytes, sha256_file
from .tangent import TangentModel, linearize

METHODS = ("mean", "sum", "task_arithmetic", "regmean")
Deltas = dict[str, torch.Tensor]


class CompositionError(DPTangentError):
    """Components that cannot be composed as asked (nothing was written)."""


class PrivateMergeDataError(CompositionError):
    """Merge statistics were requested from data not declared public."""


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


def _check_weights(weights: Sequence[float] | None, k: int, method: str) -> list[float] | None:
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
                               "use method='task_arithmetic' to subtract a component")
    return out


def _coefficients(weights: list[float] | None, k: int, method: str) -> list[float]:
    if method == "mean":
        w = weights or [1.0] * k
        return [x / math.fsum(w) for x in w]
    if method == "sum":
        if weights is not None:
            raise CompositionError("method 'sum' takes no weights; use 'task_arithmetic' for coefficients")
        return [1.0] * k
    if weights is None:
        raise CompositionError("task_arithmetic needs weights: one scaling coefficient per component "
                               "(a negative one subtracts it)")
    return weights


def weighted_sum(deltas: Sequence[Deltas], coefficients: Sequence[float]) -> Deltas:
    """sum_i c_i·delta_i, accumulated in float64 in the given order, cast back to the deltas' dtype."""
    out = {}
    for name, ref in deltas[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for c, d in zip(coefficients, deltas):
            acc += c * d[name].to(torch.float64)
        out[name] = acc.to(ref.dtype)
    return out


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 over dtype, shape and bytes of a tensor (identifies merge data)."""
    t = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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
    merge_dtype: torch.dtype = torch.float64,
    batch_size: int = 512,
) -> Composition:
    """Compose ``components`` (loaded, or paths) with ``method`` (see module doc).

    ``weights``: mean -- relative weights (default equal); sum -- none; task_arithmetic -- the
    coefficients (required); regmean -- multipliers a_i of each curvature (default 1).
    regmean only: ``merge_data`` maps each component name to its merge inputs, which must be public
    (``merge_data_public=True``); ``ridge`` adds ridge·I to the system; CG stops at relative
    residual ``cg_tol`` and fails loudly after ``cg_max_iter`` iterations.
    """
    if method not in METHODS:
        raise CompositionError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(components, (str, Path)) or not components:
        raise CompositionError("compose needs at least one component")
    loaded = [_load(c) for c in components]
    check_compatible(loaded)
    w = _check_weights(weights, len(loaded), method)
    merge_info, merge_digests = None, [None] * len(loaded)
    if method == "regmean":
        deltas, merge_info, merge_digests = _regmean(
            loaded, w, merge_data, merge_data_public, base_model, ridge, cg_tol, cg_max_iter, merge_dtype, batch_size)
        coefficients: list[float | None] = [None] * len(loaded)
    else:
        if merge_data is not None:
            raise CompositionError(f"merge_data is only used by method 'regmean', not {method!r}")
        coefficients = list(_coefficients(w, len(loaded), method))
        deltas = weighted_sum([c.deltas for c in loaded], coefficients)  # type: ignore[arg-type]
    meta = loaded[0].metadata
    parts = tuple(
        ComposedPart(c.name, c.sha256, c.metadata.deltas_sha256, c.metadata.data_source, c.metadata.shard,
                     None if w is None else w[i], coefficients[i], merge_digests[i])
        for i, c in enumerate(loaded))
    record = CompositionRecord(method, parts, w is not None, dict(meta.base), meta.base_weights_sha256,
                               meta.trainable, deltas_digest(deltas), merge_info)
    return Composition(deltas, record)


# -- regmean by conjugate gradients -------------------------------------------------------------

def tangent_for(meta_base: Mapping[str, Any], base_weights_sha256: str, trainable: str,
                base_model: nn.Module | None = None, dtype: torch.dtype | None = None) -> TangentModel:
    """The components' tangent model, rebuilt from their metadata and checked against their digest."""
    base = base_model if base_model is not None else BackboneSpec.from_dict(meta_base).build()
    if weights_digest(base) != base_weights_sha256:
        raise CompositionError("the base model's weights do not match the components' base_weights_sha256: "
                               "they were linearized at another theta0")
    base = copy.deepcopy(base).eval()
    if dtype is not None:
        base = base.to(dtype)
    with torch.random.fork_rng(devices=[]):  # the probe input is random: leave the caller's stream alone
        return linearize(base, trainable)


@dataclass
class _Curvature:
    """v -> sum_i a_i J_i^T J_i v over the merge inputs of all components, stacked and chunked.

    Each chunk keeps its graphs: ``J^T u`` is the vjp of the tangent model at delta = 0 (the
    gradient through the primal), ``J v`` the vjp of that linear map (its transpose)."""

    chunks: list[tuple[Callable, Callable, torch.Tensor, torch.Tensor]]  # (J v, J^T u, row weight, row owner)

    def __call__(self, v: Deltas) -> Deltas:
        return self.transpose_weighted(lambda jvp_fn, owner: jvp_fn(v)[0], v)

    def rhs(self, deltas: Sequence[Deltas]) -> Deltas:
        """sum_i a_i J_i^T J_i delta_i: rows of component i see delta_i."""
        def jv(jvp_fn: Callable, owner: torch.Tensor) -> torch.Tensor:
            out = None
            for i in owner.unique().tolist():
                part = jvp_fn(deltas[i])[0]
                mask = (owner == i).view(-1, *[1] * (part.dim() - 1))
                out = part * mask if out is None else out + part * mask
            return out
        return self.transpose_weighted(jv, deltas[0])

    def transpose_weighted(self, jv: Callable[[Callable, torch.Tensor], torch.Tensor], like: Deltas) -> Deltas:
        out = {n: torch.zeros_like(t) for n, t in like.items()}
        for jvp_fn, vjp_fn, weight, owner in self.chunks:
            u = jv(jvp_fn, owner)
            (jtu,) = vjp_fn(u * weight.view(-1, *[1] * (u.dim() - 1)))
            out = {n: out[n] + jtu[n] for n in out}
        return out


def _curvature(tangent: TangentModel, inputs: Sequence[torch.Tensor], weights: Sequence[float], batch_size: int,
               dtype: torch.dtype) -> _Curvature:
    module = tangent.on_features()
    ids = {id(p): n for n, p in module.named_parameters()}
    internal = {base: ids[id(p)] for base, p in tangent.named_deltas()}
    zero = {b: torch.zeros_like(p) for b, p in tangent.named_deltas()}
    stacked = torch.cat([x.to(dtype) for x in inputs])
    row_weight = torch.cat([torch.full((len(x),), float(a), dtype=dtype) for x, a in zip(inputs, weights)])
    owner = torch.cat([torch.full((len(x),), i, dtype=torch.long) for i, x in enumerate(inputs)])
    chunks = []
    for start in range(0, len(stacked), batch_size):
        h = tangent.features(stacked[start:start + batch_size])

        def f(d: Deltas, h: torch.Tensor = h) -> torch.Tensor:
            return functional_call(module, {internal[n]: t for n, t in d.items()}, (h,))

        out, vjp_fn = vjp(f, zero)  # u -> J^T u
        _, jvp_fn = vjp(lambda u, g=vjp_fn: g(u)[0], torch.zeros_like(out))  # v -> J v
        chunks.append((jvp_fn, vjp_fn, row_weight[start:start + batch_size], owner[start:start + batch_size]))
    return _Curvature(chunks)


def _flat(d: Deltas, names: Sequence[str]) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1) for n in names])


def _unflat(x: torch.Tensor, like: Deltas) -> Deltas:
    out, at = {}, 0
    for name, ref in like.items():
        out[name] = x[at:at + ref.numel()].view_as(ref)
        at += ref.numel()
    return out


def _cg_pass(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, stop: float,
             max_iter: int) -> tuple[torch.Tensor, int]:
    """Plain CG from x0 = 0 until the recursive residual norm is <= ``stop``."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    iterations = 0
    while iterations < max_iter and rr.sqrt() > stop:
        ap = apply(p)
        pap = p @ ap
        if not pap > 0:
            break  # no curvature left along p: b is (numerically) outside the range of A
        alpha = rr / pap
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
        iterations += 1
    return x, iterations


def conjugate_gradients(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, tol: float,
                        max_iter: int) -> tuple[torch.Tensor, int, float]:
    """Solve A x = b for symmetric PSD A; from x0 = 0 this is the minimum-norm solution when consistent.

    Restarts on the true residual b - A x when the recursive one has drifted. Returns
    (x, iterations, ||b - A x|| / ||b||); stops once that relative residual is <= ``tol``.
    """
    x = torch.zeros_like(b)
    b_norm = float(b.norm())
    if b_norm == 0:
        return x, 0, 0.0
    total, residual = 0, b
    while float(residual.norm()) > tol * b_norm and total < max_iter:
        dx, iterations = _cg_pass(apply, residual, tol * b_norm, max_iter - total)
        if iterations == 0:
            break
        x += dx
        total += iterations
        residual = b - apply(x)
    return x, total, float(residual.norm()) / b_norm


def _regmean(loaded: list[Component], weights: list[float] | None, merge_data: Mapping[str, torch.Tensor] | None,
             public: bool, base_model: nn.Module | None, ridge: float, tol: float, max_iter: int | None,
             dtype: torch.dtype, batch_size: int) -> tuple[Deltas, dict[str, Any], list[str | None]]:
    if merge_data is None:
        raise CompositionError("regmean needs merge_data: a mapping from each component name to its merge inputs")
    if public is not True:
        raise PrivateMergeDataError(
            "regmean statistics J_i^T J_i are computed from the merge data and would leak private data; dp_tangent "
            "cannot privatise them, so pass public merge data with merge_data_public=True")
    names = [c.name for c in loaded]
    missing, extra = sorted(set(names) - set(merge_data)), sorted(set(merge_data) - set(names))
    if missing or extra:
        raise CompositionError(f"merge_data must have one entry per component: missing {missing}, unexpected {extra}")
    if not ridge >= 0 or not math.isfinite(ridge):
        raise CompositionError(f"ridge must be finite and >= 0, got {ridge}")
    empty = [n for n in names if len(merge_data[n]) == 0]
    if empty:
        raise CompositionError(f"merge data of {empty} is empty: every component needs merge inputs")
    if len({tuple(merge_data[n].shape[1:]) for n in names}) > 1:
        raise CompositionError("merge inputs of all components must have the same shape per example")
    meta = loaded[0].metadata
    tangent = tangent_for(meta.base, meta.base_weights_sha256, meta.trainable, base_model, dtype)
    like = {n: p.detach() for n, p in tangent.named_deltas()}
    if {n: tuple(t.shape) for n, t in like.items()} != {n: tuple(t.shape) for n, t in loaded[0].deltas.items()}:
        raise CompositionError("the rebuilt tangent model's deltas do not match the components' deltas")
    order = list(like)
    a = weights or [1.0] * len(loaded)
    curvature = _curvature(tangent, [merge_data[n] for n in names], a, batch_size, dtype)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return ridge * x + _flat(curvature(_unflat(x, like)), order)

    b = _flat(curvature.rhs([{n: c.deltas[n].to(dtype) for n in order} for c in loaded]), order)
    limit = max_iter if max_iter is not None else 2000
    x, iterations, residual = conjugate_gradients(apply, b, tol, limit)
    if residual > tol:
        raise CompositionError(f"regmean: conjugate gradients reached relative residual {residual:.2e} > {tol:.0e} "
                               f"after {iterations} iterations; raise cg_max_iter (now {limit}) or add ridge")
    solution = _unflat(x, like)
    deltas = {n: solution[n].to(loaded[0].deltas[n].dtype).clone() for n in loaded[0].deltas}
    digests: list[str | None] = [tensor_digest(merge_data[n]) for n in names]
    info = {"solver": "conjugate gradients on (sum_i a_i J_i^T J_i + ridge I) delta = sum_i a_i J_i^T J_i delta_i",
            "merge_data_public": True, "ridge": ridge, "cg_tol": tol, "cg_max_iter": limit,
            "iterations": iterations, "relative_residual": residual, "dtype": str(dtype).replace("torch.", ""),
            "batch_size": batch_size, "rows": {n: int(len(merge_data[n])) for n in names}}
    return deltas, info, digests


# -- centroid of public fine-tuned models -------------------------------------------------------

@dataclass(frozen=True)
class CentroidRecord:
    """Digests of the models averaged, their weights, and the digest of the average."""

    inputs: tuple[tuple[str, str], ...]  # (origin, weights sha256)
    weights: tuple[float, ...]
    weights_sha256: str  # weights_digest of a model holding the centroid
    public: bool = True
    method: str = "weight average of public fine-tuned models (Knowledge is a Region in Weight Space, 2023)"


@dataclass(frozen=True)
class Centroid:
    state_dict: "OrderedDict[str, torch.Tensor]"
    record: CentroidRecord


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """:func:`dp_tangent.backbones.weights_digest` of a model whose state dict is ``state``."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def centroid_base(models: Sequence[nn.Module | str | Path], weights: Sequence[float] | None = None, *,
                  public: bool) -> Centroid:
    """theta_c = sum_k w_k theta_k / sum_k w_k over *public* fine-tuned models of one architecture.

    The result is a new linearization point; it is not private (the inputs are used as is), so
    ``public=True`` must state that no input was trained on private data. Integer buffers must agree
    (``num_batches_tracked`` excepted: the first model's is kept).
    """
    if public is not True:
        raise CompositionError("centroid_base averages weights without any privacy protection: only public "
                               "fine-tuned models may go in; pass public=True to state that they are")
    if isinstance(models, (str, Path)) or not models:
        raise CompositionError("centroid_base needs at least one model")
    states, origins = [], []
    for i, m in enumerate(models):
        if isinstance(m, nn.Module):
            states.append(OrderedDict(m.state_dict()))
            origins.append(f"model[{i}] ({type(m).__name__})")
        else:
            states.append(read_state_dict(m))
            origins.append(str(m))
    w = _check_weights(weights, len(states), "mean") or [1.0] * len(states)
    ref = states[0]
    for origin, state in zip(origins[1:], states[1:]):
        if list(state) != list(ref) or any((s.shape, s.dtype) != (ref[n].shape, ref[n].dtype) for n, s in state.items()):
            raise CompositionError(f"{origin} has another architecture than {origins[0]} "
                                   "(tensor names, shapes or dtypes differ)")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, tensor in ref.items():
        if tensor.is_floating_point():
            acc = torch.zeros(tensor.shape, dtype=torch.float64)
            for wk, state in zip(w, states):
                acc += wk * state[name].to(torch.float64)
            out[name] = (acc / math.fsum(w)).to(tensor.dtype)
        else:
            if not name.endswith("num_batches_tracked") and any(not torch.equal(s[name], tensor) for s in states):
                raise CompositionError(f"integer tensor {name} differs between the models; cannot average it")
            out[name] = tensor.clone()
    record = CentroidRecord(tuple((o, state_digest(s)) for o, s in zip(origins, states)), tuple(w), state_digest(out))
    return Centroid(out, record)


def save_centroid(path: str | Path, centroid: Centroid) -> str:
    """Write the centroid as a safetensors checkpoint (record in its metadata), atomically; returns sha256.

    Use it as a base with ``BackboneSpec(name, checkpoint=path, ...)``.
    """
    record = centroid.record
    meta = {"dp_tangent_centroid": json.dumps({
        "inputs": [{"origin": o, "weights_sha256": d} for o, d in record.inputs], "weights": list(record.weights),
        "weights_sha256": record.weights_sha256, "public": record.public, "method": record.method}, sort_keys=True)}
    atomic_write_bytes(path, save({n: t.contiguous() for n, t in centroid.state_dict.items()}, metadata=meta))
    return sha256_file(path)
