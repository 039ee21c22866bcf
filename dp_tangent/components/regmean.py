"""RegMean/MaTS-style merging of tangent components by conjugate gradients.

delta = argmin sum_i a_i·||J_i(delta - delta_i)||^2, i.e. (sum_i a_i J_i^T J_i) delta =
sum_i a_i J_i^T J_i delta_i, with J_i the tangent model's Jacobian on component i's merge inputs.
For the square loss J_i^T J_i is the exact curvature of shard i (up to the constant 2/classes), so
merging components that fit their shards exactly gives the least-squares fit on the union. Solved
by conjugate gradients with J·v and J^T·u products (``torch.func.vjp`` on the tangent model; J is
never formed). The statistics come from the merge data, so that data must be public: this module
cannot privatise them and refuses private data.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call, vjp

from ..tangent import TangentModel
from .component import Component, Deltas
from .errors import CompositionError, PrivateMergeDataError
from .rebuild import tangent_for


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 over dtype, shape and bytes of a tensor (identifies merge data)."""
    t = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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


def regmean(loaded: list[Component], weights: list[float] | None, merge_data: Mapping[str, torch.Tensor] | None,
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
