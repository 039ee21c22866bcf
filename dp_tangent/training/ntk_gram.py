"""Per-example NTK Grams of a tangent model, and exact DP-SGD clipping from them without per-sample gradients.

The tangent model's Jacobian J_i = d f(x_i; theta0) / d delta is fixed during training, so a per-sample
gradient is g_i = J_i^T v_i with v_i = d loss_i / d output (K outputs) at f_lin(x_i), and

    ||g_i||^2 = v_i^T Theta_i v_i,   Theta_i = J_i J_i^T   (the K x K empirical NTK Gram over the deltas).

Theta_i is computed once per example (:func:`per_example_grams`): one forward at theta0 (eval-mode
BatchNorm run as the affine map it is, whose backward batches cheaply), all K one-hot output seeds back
at once (``is_grads_batched``), then Theta_i = sum over the delta layers of the layer's J J^T, from its
input activations and its output's gradients for the K seeds, by registered kernels
(:func:`register_gram_kernel`): Linear and Conv2d ghost-style (Gram of the T positions' inputs, no
per-seed gradient) or from the K per-seed gradients, whichever costs fewer products; BatchNorm (with a
BatchNormAct's activation) and LayerNorm directly from their per-seed gradients (a few values per
channel). Any other layer with an Opacus grad sampler, and a layer called more than once per forward
(cross terms), goes through that sampler on the K seeds. A DP step is then one dual forward for f_lin,
c_i = min(1, C / ||g_i||) from Theta_i (in float64), and ONE vector-Jacobian product at theta0 seeded
with c_i v_i, which is sum_i c_i g_i exactly (:func:`add_clipped_gradient`).

Theta is derived from private records: a run holds it in memory; a workspace may keep it for later runs
on the same records (:mod:`dp_tangent.workspace.gram_cache`, matched row by row in :mod:`.gram_reuse`),
inside the workspace only. :data:`~.gram_format.GRAM_VERSION` names this code's Theta in that cache's key. The
precompute reports ``(done, total)`` examples to a ``progress`` callback, or to the one
:func:`~dp_tangent.training.progress.precompute_progress` installs for the calls it wraps (e.g. the CLI's
progress bar, in-process; re-exported here).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from opacus.grad_sample.grad_sample_module import GradSampleHooks

from ..errors import UnsupportedModelError
from ..lazy import run_pending, when_imported
from ..tangent import TangentModel
from ..tangent.ops import TangentOps
from ..tangent.twins import TangentLayer, is_batch_norm, is_batch_norm_act
from . import grad_samplers  # noqa: F401 -- registers the twins' grad samplers (the per-sample route)
from .grad_samplers import batch_norm_samples, batch_norm_x_hat, conv2d_columns, unfoldable
from .gram_format import GRAM_DTYPE, GRAM_VERSION  # noqa: F401 -- defined there, for the driver too
from .losses import ConvexLoss
from .progress import PrecomputeProgress, current_precompute_progress, precompute_progress  # noqa: F401

# Fall back to ghost clipping above these: Theta holds n·K² float64 values for the run, and its
# precompute costs about K backward passes per example (worth it while K is small against the epochs).
GRAM_MAX_OUTPUTS = 64
GRAM_MAX_BYTES = 1 << 30
PRECOMPUTE_BATCH = 64  # at most this many examples per precompute chunk ...
PRECOMPUTE_MEMORY = 64 << 20  # ... and about this many bytes of the K seeds' output gradients of a chunk

# kernel(layer, x, g) -> (n, K, K) Gram of the layer's deltas, or None when it does not apply to this
# call; x is the layer's input (n, ...), g the gradients of its output for the K seeds (K, n, ...)
# (for a BatchNormAct, of its normalisation's output, before the activation).
GramKernel = Callable[[TangentLayer, torch.Tensor, torch.Tensor], "torch.Tensor | None"]
_KERNELS: dict[type[nn.Module], GramKernel] = {}


def register_gram_kernel(*base_types: type[nn.Module]) -> Callable[[GramKernel], GramKernel]:
    """Register a Gram kernel for the tangent twins of ``base_types`` (by the twin's base layer type)."""

    def decorator(fn: GramKernel) -> GramKernel:
        for base in base_types:
            _KERNELS[base] = fn
        return fn

    return decorator


def _pair_gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(K, n, ...) x (K, n, ...) -> (n, K, K): entry [i, k, l] = <a[k, i], b[l, i]>, summed in float64.

    The seeds' rows (a, b: per-seed gradients, or such a row and a Gram of positions times another) may come in
    the model's dtype, whose rounding stays in the rows where :func:`clip_factors` allows for it. Their inner
    products may not: Theta's entries are of the order of A_i² (:func:`clip_scales`) and v^T Theta v cancels
    them down to ||g_i||², so an entry summed in float32 is off by far more than ||g_i||² where the rows share a
    large component (review 73: a norm of 0 for a gradient of 0.2, a record unclipped)."""
    same = a is b
    a = a.to(GRAM_DTYPE).flatten(2).transpose(0, 1)
    b = a if same else b.to(GRAM_DTYPE).flatten(2).transpose(0, 1)
    return a @ b.transpose(1, 2)


@register_gram_kernel(nn.Linear)
def linear_gram(layer: TangentLayer, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """W: sum_{t,s} (g_kt . g_ls)(a_t . a_s), as g_k^T (A g_l) with A = a a^T over the T positions (ghost),
    or from the materialised K per-seed gradients when that costs fewer products; b: (sum_t g_kt).(sum_t g_lt)."""
    k, n = g.shape[:2]
    a = x.to(g.dtype).reshape(n, -1, x.shape[-1])  # (n, T, P)
    b = g.reshape(k, n, a.shape[1], -1)  # (K, n, T, O)
    t, p, o = a.shape[1], a.shape[2], b.shape[-1]
    gram = g.new_zeros(n, k, k, dtype=GRAM_DTYPE)
    if "weight" in layer.delta_names:
        if t * t * p + k * t * t * o + k * k * t * o <= k * t * o * p + k * k * o * p:
            wide = b.to(GRAM_DTYPE)  # once: the positions' Gram multiplies it in float64, as _pair_gram needs it
            gram += _pair_gram(wide, (a @ a.transpose(1, 2)).to(GRAM_DTYPE) @ wide)
        else:
            per_seed = b.transpose(2, 3) @ a  # (K, n, O, P)
            gram += _pair_gram(per_seed, per_seed)
    if "bias" in layer.delta_names:
        summed = b.sum(dim=2)
        gram += _pair_gram(summed, summed)
    return gram


@register_gram_kernel(nn.Conv2d)
def conv2d_gram(layer: TangentLayer, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """The Linear kernel per group over unfolded patches: L output positions, P = C_in/G·k·k inputs."""
    if not unfoldable(layer):
        return None
    k, n = g.shape[:2]
    cols = conv2d_columns(layer, x.to(g.dtype))  # (n, G, P, L)
    groups, p, length = cols.shape[1:]
    b = g.reshape(k, n, groups, -1, length)  # (K, n, G, O, L)
    o = b.shape[3]
    gram = g.new_zeros(n, k, k, dtype=GRAM_DTYPE)
    if "weight" in layer.delta_names:
        ghost = groups * (p * length * length + k * o * length * length + k * k * o * length)
        if ghost <= groups * (k * o * p * length + k * k * o * p):
            positions = cols.transpose(2, 3) @ cols  # (n, G, L, L)
            if groups == 1:
                gram += _pair_gram(b, b @ positions)
            else:  # the K seeds as rows of one product per (example, group): K times fewer, larger matmuls
                rows = b.permute(1, 2, 0, 3, 4).reshape(n, groups, k * o, length)
                gram += torch.einsum("ngkos,nglos->nkl",  # summed in float64, as in _pair_gram
                                     (rows @ positions).view(n, groups, k, o, length).to(GRAM_DTYPE),
                                     rows.view(n, groups, k, o, length).to(GRAM_DTYPE))
        else:
            per_seed = b @ cols.transpose(2, 3)  # (K, n, G, O, P)
            gram += _pair_gram(per_seed, per_seed)
    if "bias" in layer.delta_names:
        summed = g.flatten(3).sum(dim=3)
        gram += _pair_gram(summed, summed)
    return gram


@register_gram_kernel(nn.Embedding)
def embedding_gram(layer: TangentLayer, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """The Linear kernel with one-hot inputs: sum_{t,s} [id_t = id_s] (g_kt . g_ls), positions holding
    ``padding_idx`` left out (their row gets no gradient); None (grad sampler) for ``max_norm`` or
    ``scale_grad_by_freq``, which change the gradient."""
    if layer.max_norm is not None or layer.scale_grad_by_freq:
        return None
    k, n = g.shape[:2]
    ids = x.reshape(n, -1)  # (n, T)
    b = g.reshape(k, n, ids.shape[1], -1)  # (K, n, T, D)
    if layer.padding_idx is not None:
        b = b * (ids != layer.padding_idx).unsqueeze(-1).to(b.dtype)
    same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(b.dtype)  # (n, T, T)
    return _pair_gram(b, same @ b)


def _norm_gram(layer: TangentLayer, x_hat: torch.Tensor, g: torch.Tensor, reduce: tuple[int, ...]) -> torch.Tensor:
    """Grams of an affine normalisation's deltas: w from sum(x_hat·g), b from sum(g) over ``reduce`` (per seed)."""
    k, n = g.shape[:2]
    gram = g.new_zeros(n, k, k, dtype=GRAM_DTYPE)
    if "weight" in layer.delta_names:
        per_seed = (x_hat * g).sum(dim=reduce) if reduce else x_hat * g
        gram += _pair_gram(per_seed, per_seed)
    if "bias" in layer.delta_names:
        per_seed = g.sum(dim=reduce) if reduce else g
        gram += _pair_gram(per_seed, per_seed)
    return gram


@register_gram_kernel(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def batch_norm_gram(layer: TangentLayer, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm, an affine map per channel: w from sum over positions of x_hat·g, b from sum of g
    (g taken before a BatchNormAct's activation, see :func:`_affine_batch_norm`)."""
    return _norm_gram(layer, batch_norm_x_hat(layer, x.to(g.dtype)), g, tuple(range(3, g.dim())))


@register_gram_kernel(nn.LayerNorm)
def layer_norm_gram(layer: TangentLayer, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """LayerNorm over its last dims: w from sum over the other positions of x_hat·g, b from sum of g."""
    x_hat = F.layer_norm(x.to(g.dtype), layer.normalized_shape, eps=layer.eps)
    return _norm_gram(layer, x_hat, g, tuple(range(2, g.dim() - len(layer.normalized_shape))))


def _register_timm_kernels() -> None:
    from timm.layers import BatchNormAct2d
    from timm.layers import LayerNorm as TimmLayerNorm

    register_gram_kernel(BatchNormAct2d)(batch_norm_gram)
    register_gram_kernel(TimmLayerNorm)(layer_norm_gram)


when_imported("timm", _register_timm_kernels)


def _pre_activation_sampler(layer: TangentLayer, activations: list[torch.Tensor], g: torch.Tensor) -> dict:
    return batch_norm_samples(layer, activations[0].to(g.dtype), g)


def _per_sample_gram(layer: TangentLayer, calls: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The layer's Opacus grad sampler on the K seeds (as K·n examples), summed over its calls, then Grams
    (a BatchNormAct's seeds are taken before its activation, see :func:`_affine_batch_norm`)."""
    sampler = (_pre_activation_sampler if is_batch_norm_act(layer)
               else GradSampleHooks.GRAD_SAMPLERS[type(layer)])
    total: dict[int, torch.Tensor] = {}
    for x, g in calls:
        k, n = g.shape[:2]
        repeated = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
        for param, sample in sampler(layer, [repeated], g.reshape(k * n, *g.shape[2:])).items():
            sample = sample.reshape(k, n, -1)
            total[id(param)] = total[id(param)] + sample if id(param) in total else sample
    k, n = calls[0][1].shape[:2]
    gram = torch.zeros(n, k, k, dtype=GRAM_DTYPE, device=calls[0][1].device)
    for sample in total.values():
        gram += _pair_gram(sample, sample)
    return gram


def delta_layers(tangent: TangentModel) -> dict[str, TangentLayer]:
    """The layers holding deltas, by name."""
    return {name: m for name, m in tangent.net.named_modules() if isinstance(m, TangentLayer) and m.delta_names}


def layer_routes(tangent: TangentModel) -> dict[str, str | None]:
    """How each delta layer's Gram is computed: ``"kernel"`` (registered Gram kernel, falling back to the
    grad sampler for calls it does not cover), ``"per-sample"`` (its grad sampler), or None (no route)."""
    run_pending()  # timm's kernels and samplers, registered once timm is imported
    routes: dict[str, str | None] = {}
    for name, layer in delta_layers(tangent).items():
        sampler = type(layer) in GradSampleHooks.GRAD_SAMPLERS
        routes[name] = ("kernel" if layer._tangent_base in _KERNELS and sampler else
                        "per-sample" if sampler else None)
    return routes


#: The dtypes whose rounding :func:`clip_factors`' margin covers: a half-precision step rounds its clip factors and
#: its backward by more than the margin's 1e-3 (review 76: clipped contributions up to 1.004 C on ordinary models).
GRAM_MODEL_DTYPES = (torch.float32, torch.float64)


def _unsupported(tangent: TangentModel) -> str | None:
    dtypes = sorted({str(p.dtype) for p in tangent.deltas() if p.dtype not in GRAM_MODEL_DTYPES})
    if dtypes:
        return f"deltas in {', '.join(dtypes)} (Gram clipping holds for float32 and float64 models)"
    if tangent.fallback_parameters:
        return f"parameters outside a tangent layer ({', '.join(tangent.fallback_parameters[:3])})"
    missing = [name for name, route in layer_routes(tangent).items() if route is None]
    return f"no Gram route for layer(s) {', '.join(missing[:3])}" if missing else None


def gram_bytes(records: int, outputs: int) -> int:
    """Memory the Grams of ``records`` examples with ``outputs`` outputs take."""
    return records * outputs * outputs * (torch.finfo(GRAM_DTYPE).bits // 8)


def gram_fallback_reason(tangent: TangentModel, records: int, outputs: int) -> str | None:
    """Why the Gram path cannot train ``tangent`` on ``records`` examples with ``outputs`` outputs (None: it can)."""
    if (reason := _unsupported(tangent)) is not None:
        return reason
    if outputs > GRAM_MAX_OUTPUTS:
        return f"{outputs} outputs > {GRAM_MAX_OUTPUTS} (each example's Gram is K x K)"
    size = gram_bytes(records, outputs)
    if size > GRAM_MAX_BYTES:
        return f"the Grams of {records} examples would take {size / 2**20:,.0f} MiB > {GRAM_MAX_BYTES / 2**20:,.0f} MiB"
    return None


# The tensor a layer's call asks to be recorded instead of its output: set by the call, taken by the hook
# that follows it (a BatchNormAct's normalisation before its activation, see _affine_batch_norm).
RecordInstead = dict[nn.Module, torch.Tensor]


@contextmanager
def _captured(layers: dict[str, TangentLayer],
              instead: RecordInstead) -> Iterator[dict[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Each delta layer's (input, output) of every call recorded in the autograd graph (the output, or
    the tensor the call put in ``instead``)."""
    calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in layers}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            output = instead.pop(module, output)
            if isinstance(output, torch.Tensor) and output.requires_grad:
                calls[name].append((inputs[0].detach(), output))
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _affine_batch_norm(layer: TangentLayer, x: torch.Tensor, instead: RecordInstead) -> torch.Tensor:
    """Eval-mode BatchNorm as the affine map it is, (x - mean)·rsqrt(var + eps)·w + b (then a BatchNormAct's
    activation): the same function, whose backward batches over the K seeds as cheap elementwise products
    (the batched backward of ``batch_norm`` costs several times more). A BatchNormAct's normalisation
    output is recorded instead of its activation's, so that its Gram needs no pullback through the
    activation (which would run the activation once per seed)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    x_hat = batch_norm_x_hat(layer, x)
    weight, bias = layer.effective("weight"), layer.effective("bias")
    y = x_hat if weight is None else x_hat * weight.view(shape)
    y = y if bias is None else y + bias.view(shape)
    if not is_batch_norm_act(layer):
        return y
    instead[layer] = y
    return layer.act(layer.drop(y))


@contextmanager
def _batch_norms_as_affine(net: nn.Module, instead: RecordInstead) -> Iterator[None]:
    """Run every BatchNorm twin of ``net`` through :func:`_affine_batch_norm` meanwhile (per instance)."""
    patched = [m for m in net.modules() if isinstance(m, TangentLayer) and is_batch_norm(m)]
    for module in patched:
        module.forward = functools.partial(_affine_batch_norm, module, instead=instead)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _chunk_grams(tangent: TangentModel, layers: dict[str, TangentLayer], h: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(n, K, K) Grams of the features ``h`` of n examples (one forward at theta0, K seeds back at once),
    and the bytes per example of the seeds' gradients of the delta layers' outputs."""
    instead: RecordInstead = {}
    with (_captured(layers, instead) as calls, torch.enable_grad(), TangentOps(),
          _batch_norms_as_affine(tangent.net, instead)):
        out = tangent._suffix(h)  # the plain pass at theta0 that forward_from_features records
    n, k = out.shape
    seeds = torch.eye(k, dtype=out.dtype, device=out.device).unsqueeze(1).expand(k, n, k)
    recorded = [(name, i) for name in layers for i in range(len(calls[name]))]
    grads = _seed_gradients(out, [calls[name][i][1] for name, i in recorded], seeds)
    gram = torch.zeros(n, k, k, dtype=GRAM_DTYPE, device=out.device)
    by_layer: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in layers}
    for (name, i), g in zip(recorded, grads):
        if g is not None:  # None: this output does not reach the model's output (zero Jacobian)
            by_layer[name].append((calls[name][i][0], g))
    for name, layer_calls in by_layer.items():
        if layer_calls:
            gram += _layer_gram(layers[name], layer_calls).to(GRAM_DTYPE)
    return gram, sum(g.numel() * g.element_size() for g in grads if g is not None) // n


def _seed_gradients(out: torch.Tensor, outputs: list[torch.Tensor], seeds: torch.Tensor) -> list[torch.Tensor | None]:
    """d<out, seed_k>/d output for every seed k and recorded output: (K, n, ...) each, None where the
    output does not reach ``out``. All seeds in one batched backward; one backward per seed where an op
    has no batching rule (or the batched one runs out of memory)."""
    try:
        return list(torch.autograd.grad(out, outputs, seeds, is_grads_batched=True, allow_unused=True,
                                        retain_graph=True))
    except RuntimeError:
        per_seed = [torch.autograd.grad(out, outputs, seed, allow_unused=True, retain_graph=True) for seed in seeds]
    return [None if grads[0] is None else torch.stack(grads) for grads in zip(*per_seed)]


def _layer_gram(layer: TangentLayer, calls: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    run_pending()  # timm's kernels, registered once timm is imported
    kernel = _KERNELS.get(layer._tangent_base)
    if kernel is not None and len(calls) == 1:  # a layer called twice has cross terms: per-sample route
        gram = kernel(layer, *calls[0])
        if gram is not None:
            return gram
    if type(layer) not in GradSampleHooks.GRAD_SAMPLERS:
        raise UnsupportedModelError(f"no Gram route for {type(layer).__name__} called {len(calls)} times")
    return _per_sample_gram(layer, calls)


def per_example_grams(tangent: TangentModel, inputs: torch.Tensor, *, from_features: bool = True,
                      batch_size: int = PRECOMPUTE_BATCH, progress: PrecomputeProgress | None = None) -> torch.Tensor:
    """Theta_i = J_i J_i^T over ``tangent``'s deltas for every row of ``inputs`` (cached features when
    ``from_features``, else raw inputs): (n, K, K) in float64, on the inputs' device.

    In chunks of at most ``batch_size`` examples, sized after the first (4 examples) so that the K
    seeds' gradients of a chunk take about ``PRECOMPUTE_MEMORY`` bytes. ``progress(done, n)`` is called
    before the first chunk and after each (default: the :func:`precompute_progress` in effect)."""
    reason = _unsupported(tangent)
    if reason is not None:
        raise UnsupportedModelError(f"cannot compute NTK Grams: {reason}")
    report = progress or current_precompute_progress()
    layers = delta_layers(tangent)
    was_training = tangent.training
    tangent.train(False)
    chunks, start, size = [], 0, min(4, batch_size)
    try:
        if report is not None:
            report(0, len(inputs))
        while start < len(inputs):
            chunk = inputs[start:start + size]
            gram, per_example = _chunk_grams(tangent, layers, chunk if from_features else tangent.features(chunk))
            chunks.append(gram)
            start += len(chunk)
            size = max(1, min(batch_size, PRECOMPUTE_MEMORY // max(per_example, 1)))
            if report is not None:
                report(start, len(inputs))
    finally:
        tangent.train(was_training)
        for param in tangent.deltas():
            param.grad = None
    if not chunks:
        raise UnsupportedModelError("cannot compute NTK Grams of no examples")
    return torch.cat(chunks)


def clip_factors(squared_norms: torch.Tensor, scales: torch.Tensor, max_grad_norm: float,
                 dtype: torch.dtype) -> torch.Tensor:
    """c_i = min(1, C (1 - s) / (||g_i|| + s·A_i + 1e-6)), Opacus's formula with s = min(1e-3, 64·eps(dtype))
    and A_i = sum_k |v_ik| ||J_i^T e_k|| (``scales``, >= ||g_i||): the model's dtype computes g_i = sum_k v_ik
    J_i^T e_k with rounding of the order of eps·A_i, not eps·||g_i||, which is far smaller where the terms
    cancel. So the clipped norm stays within C by the rounding's own scale, and s·A_i is a relative s of
    ||g_i|| where they do not cancel. c_i = 0 where ||g_i||² or A_i is not finite (see
    :func:`add_clipped_gradient`)."""
    slack = min(1e-3, 64 * torch.finfo(dtype).eps)
    bound = squared_norms.clamp(min=0).sqrt() + slack * scales + 1e-6
    factors = (max_grad_norm * (1.0 - slack) / bound).clamp(max=1.0)
    return torch.where(torch.isfinite(squared_norms) & torch.isfinite(scales), factors, torch.zeros_like(factors))


def clip_scales(v: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
    """A_i = sum_k |v_ik| sqrt(Theta_i,kk), the scale of the terms summed into g_i = J_i^T v_i."""
    return (v.abs() * grams.diagonal(dim1=1, dim2=2).clamp(min=0).sqrt()).sum(1)


def clipped_seeds(module: nn.Module, h: torch.Tensor, y: torch.Tensor, grams: torch.Tensor, loss: ConvexLoss,
                  max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward half of a Gram step: (output, seeds c_i v_i, clip factors c_i).

    ``module`` is a tangent model or its ``on_features()`` view and ``grams`` the Theta_i of the rows
    of ``h``. One dual forward gives f_lin and v_i = d loss_i / d output at it; ``output.backward(seeds)``
    then runs the pass at theta0 backwards and adds sum_i c_i J_i^T v_i to the deltas' ``.grad``."""
    out = module(h)
    value = out.detach().requires_grad_(True)
    with torch.enable_grad():
        (v,) = torch.autograd.grad(loss.per_sample(value, y).sum(), value)
    v64 = v.to(GRAM_DTYPE)
    factors = clip_factors(torch.einsum("nk,nkl,nl->n", v64, grams, v64), clip_scales(v64, grams), max_grad_norm,
                           out.dtype)
    return out, factors.to(v.dtype).unsqueeze(1) * v, factors


def add_clipped_gradient(module: nn.Module, h: torch.Tensor, y: torch.Tensor, grams: torch.Tensor,
                         loss: ConvexLoss, max_grad_norm: float) -> torch.Tensor:
    """Add sum_i c_i g_i (clipped per-sample gradients, never materialised) to the deltas' ``.grad``:
    :func:`clipped_seeds`, then ONE backward. Returns the clip factors c_i.

    A record whose gradient is not finite in the model's arithmetic (its norm from Theta, output or v_i
    overflowed, e.g. a huge input value) adds zero, a clipped contribution like any other (norm 0 <= C):
    otherwise its NaN would reach the sum, and whether training fails would tell whether it is in the data.
    Its row leaves the batch, whose pass then runs again without it (0 · inf is NaN in a backward)."""
    out, seeds, factors = clipped_seeds(module, h, y, grams, loss, max_grad_norm)
    usable = (factors > 0) & torch.isfinite(seeds).all(1) & torch.isfinite(out.detach()).all(1)  # c_i > 0 iff finite
    if not bool(usable.all()):
        del out, seeds
        kept = usable.nonzero().squeeze(1)
        factors = torch.zeros_like(factors)
        if len(kept) == 0:
            return factors
        out, seeds, factors[kept] = clipped_seeds(module, h[kept], y[kept], grams[kept], loss, max_grad_norm)
    out.backward(seeds)
    return factors
