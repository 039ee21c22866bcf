"""Seconds per logical step and peak memory of DP tangent training against its alternatives.

    python -m benchmarks.training_cost            # full run (several minutes on 2 cores)
    python -m benchmarks.training_cost --quick    # smoke run: fewer steps, doc left alone
    python -m benchmarks.training_cost --noise    # only the secure noise's share of a DP step, printed
    python -m benchmarks.training_cost --device cuda   # on a GPU (the default when one is available)

Ways to take one optimizer step on the same trainable blocks, fed the same cached frozen-prefix
features (``tangent.features(x)``), with the same batch (logical = physical):

(a)  ``nonprivate``: ordinary (non-linear) fine-tuning of the selected parameters, no DP;
(a') ``tangent``: the tangent model without DP (separates the cost of linearization from DP's);
(b)  ``gram``: DP-SGD on the tangent model, clipping from per-example NTK Grams (the default mode,
     :mod:`dp_tangent.training.ntk_gram`); the Grams are computed once per example beforehand and
     timed on their own (the precompute);
(c)  ``hooks``: DP-SGD on the tangent model, Opacus per-sample gradient hooks;
(d)  ``ghost``: DP-SGD on the tangent model, Opacus ghost clipping;
(e)  ``dp_hooks``: DP-SGD on the ordinary (non-linear) network, Opacus hooks: what a user would
     run instead of a tangent model;
(f)  ``dp_ghost``: the same with Opacus ghost clipping.

The DP cases draw their noise from the secure generator, as private training does
(:mod:`dp_tangent.training.secure_random`). Its cost is measured on its own as well: the share of
a (b)/(c)/(d) step spent in the optimizer's ``add_noise`` and in drawing one secure Poisson batch
from a shard of ``poisson_records`` records, and the generator's throughput in noise values (each
a sum of 4 normals) per second (``--noise`` measures only this and prints it).

Time: per model, all cases in one process, one step of each per round, interleaved, so that load
from other work hits them alike; once with the default allocator and once with glibc keeping freed
memory (both with OpenMP threads waiting as ``dp-tangent`` sets them, :mod:`dp_tangent.openmp`), and
on the CPU once with glibc returning freed memory and once with the OpenMP runtime's default wait. On
a GPU every clock reading follows ``torch.cuda.synchronize()``. The whole-job figures (Gram
precompute + E epochs, per example) are derived from the step and precompute medians. Memory: each
case alone in its own process (on the CPU the peak RSS increase with glibc returning freed memory to
the OS, and once more under glibc's default policy; the CUDA allocator's peak on a GPU). Child
processes are forked from this one, which imports everything but runs no model (spawned on a GPU,
where a forked child cannot use CUDA, and for the OpenMP runtime's default wait). A full run writes
``benchmarks/results/training_cost.json`` and its section of ``docs/benchmarks.md``; on a GPU,
``training_cost.cuda.json`` and a section of its own. ``--quick`` (batch 16, fewer steps) writes
the git-ignored ``training_cost.quick.json.tmp`` (``.cuda.quick.json.tmp``) and only prints the section.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

# First, before torch loads its OpenMP runtime: _measure sets the OpenMP wait policy.
from ._doc import write_section

from ._measure import (OMP_DEFAULT_FLAG, MiB, PeakRSS, StepFn, load_average, machine,  # isort: skip
                       minor_faults, profile_step, run_queue_wait, steal_time, time_step, user_environment,
                       wait_policy)
from ._malloc import keep_freed_memory, return_freed_memory  # isort: skip

import timm
import torch
import torch.nn as nn
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping

from dp_tangent import TangentModel, linearize
from dp_tangent.backbones import create_backbone
from dp_tangent.training import PrivacySpec, TrainConfig
from dp_tangent.training.ntk_gram import clipped_seeds, per_example_grams
from dp_tangent.training.secure_random import SecurePoissonSampler, SecureRandom
from dp_tangent.training.sgd import dp_parts, gram_optimizer
from dp_tangent.training.validation import check_per_sample_support

from . import recipe_job
from ._baselines import NonLinearSuffix

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RESULT_FILES = {False: "training_cost.json", True: "training_cost.quick.json.tmp"}  # quick: git-ignored *.tmp
SECTION = "training_cost"  # between <!-- training_cost:start --> and <!-- training_cost:end --> in docs/benchmarks.md


def result_file(quick: bool, device: str) -> str:
    """CPU and GPU runs keep separate raw numbers (``training_cost.cuda.json``), so neither overwrites the other."""
    name = RESULT_FILES[quick]
    return name if not device.startswith("cuda") else name.replace("training_cost.", "training_cost.cuda.", 1)


def section_name(device: str) -> str:
    """The GPU run has its own section of docs/benchmarks.md (``training_cost_cuda``)."""
    return SECTION + ("_cuda" if device.startswith("cuda") else "")

CASES = {
    "nonprivate": "(a) non-private, non-linear fine-tuning",
    "tangent": "(a') non-private tangent (reference: linearization alone)",
    "gram": "(b) DP tangent, NTK Gram clipping (default)",
    "hooks": "(c) DP tangent, Opacus hooks",
    "ghost": "(d) DP tangent, ghost clipping",
    "dp_hooks": "(e) DP non-linear, Opacus hooks",
    "dp_ghost": "(f) DP non-linear, Opacus ghost clipping",
}
PRECOMPUTE = "precompute"  # the Gram precompute of the batch: timed in the rounds, its memory measured like a case's
MEMORY_TARGET_CASES = ("nonprivate", "tangent", "gram")  # measured Config.memory_runs times: (a), (a') and (b)
JOB_EPOCHS = (3, 10, 30)  # whole-job figures: precompute + this many epochs
TARGET_JOB_EPOCHS = 8


@dataclass(frozen=True)
class ModelSpec:
    description: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    trainable: str


MODELS = {
    "vit_tiny": ModelSpec(
        "timm vit_tiny_patch16_224 at 32x32, patch 4, depth 3 (65 tokens, width 192), random weights",
        lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=3, num_classes=10),
        (3, 32, 32), "blocks[-2:]"),
    "efficientnet_lite0": ModelSpec(
        "EfficientNet-Lite0 at 48x48, packaged ImageNet weights",
        lambda: create_backbone("efficientnet_lite0", pretrained="packaged", num_classes=10),
        (3, 48, 48), "blocks[-1:]"),
}


@dataclass(frozen=True)
class Config:
    batch_size: int = 64  # logical = physical: one forward/backward per optimizer step in every case
    warmup: int = 2  # steps per case before timing
    steps: int = 9  # timed rounds; each round times one step of every case
    memory_steps: int = 2  # steps per case in its own process for peak memory (then one profiled step)
    memory_runs: int = 3  # fresh processes per case of the memory target (median): one's peak RSS is noisy
    threads: int = 2
    seed: int = 0
    poisson_records: int = 50_000  # shard size for the secure Poisson sampling cost (it grows with the shard)
    device: str = "cpu"


FULL, QUICK = Config(), Config(batch_size=16, warmup=1, steps=3, memory_runs=1)
TRAIN = TrainConfig()  # the project's defaults for lr, momentum and loss (batch sizes come from Config)
PRIVACY = PrivacySpec(noise_multiplier=1.0)  # and for the clipping norm


# -- one step of each case --------------------------------------------------------------------------------
def _nonprivate(base: nn.Module, tangent: TangentModel, h: torch.Tensor, y: torch.Tensor) -> StepFn:
    """(a) The ordinary network's suffix from the same features; only the selected parameters train.

    Eval mode, as the tangent model (running BatchNorm statistics, no dropout); timm's defaults
    otherwise (fused attention, in-place activations), i.e. what plain fine-tuning would run."""
    selected = set(tangent.selection.names)
    params = [p for n, p in base.named_parameters() if n in selected]
    for name, p in base.named_parameters():
        p.requires_grad_(name in selected)
    return _sgd_step(lambda: tangent.layout.run_suffix(base, h, tangent.cut), y, params)


def _sgd_step(forward: Callable[[], torch.Tensor], y: torch.Tensor, params: list[torch.Tensor]) -> StepFn:
    """One non-private SGD step on ``TRAIN.loss`` of ``forward()``, timed by phase."""
    optimizer = torch.optim.SGD(params, lr=TRAIN.lr, momentum=TRAIN.momentum, weight_decay=TRAIN.loss.l2)

    def step() -> Iterator[str]:
        loss = TRAIN.loss.per_sample(forward(), y).mean()
        yield "forward"
        loss.backward()
        yield "backward"
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        yield "update"

    return step


def _tangent(tangent: TangentModel, h: torch.Tensor, y: torch.Tensor) -> StepFn:
    """(a') The tangent model's own non-private step (``training._fit_non_private``): the cost of
    linearization without per-sample gradients, to split (b)/(c)'s overhead into its two causes."""
    module = tangent.on_features().train()
    return _sgd_step(lambda: module(h), y, tangent.deltas())


def _timed_noise(dp_optimizer: object, spent: list[float]) -> None:
    """Record the seconds of every ``add_noise`` call of ``dp_optimizer`` in ``spent``."""
    add_noise = dp_optimizer.add_noise

    def timed() -> None:
        start = time.perf_counter()
        add_noise()
        spent.append(time.perf_counter() - start)

    dp_optimizer.add_noise = timed


def _dp_step(model: nn.Module, dp_optimizer: object, criterion: Callable, h: torch.Tensor,
             y: torch.Tensor) -> StepFn:
    """One Opacus DP step: forward, backward (per-sample gradients or ghost norms), clip, noise, update."""

    def step() -> Iterator[str]:
        loss = criterion(model(h), y)
        yield "forward"
        loss.backward()  # ghost: both backward passes (norms, then the clipped loss)
        yield "backward"
        dp_optimizer.step()  # hooks: clip and sum per-sample gradients; both: noise, SGD update
        dp_optimizer.zero_grad(set_to_none=True)
        yield "update"

    return step


def _dp_config(mode: str) -> TrainConfig:
    return TrainConfig(lr=TRAIN.lr, momentum=TRAIN.momentum, loss=TRAIN.loss, grad_sample_mode=mode)


def _opacus(tangent: TangentModel, h: torch.Tensor, y: torch.Tensor, mode: str,
            noise_seconds: list[float] | None = None) -> StepFn:
    """(c)/(d) The per-sample module, DP optimizer (secure noise) and loss of ``training._fit_private``
    (``sgd.dp_parts``), on fixed batches (no Poisson sampling, so every case sees exactly the same batch).
    ``noise_seconds``, if given, receives the seconds of each step's ``add_noise``."""
    check_per_sample_support(tangent)
    model, dp_optimizer, criterion = dp_parts(tangent.on_features(), tangent.deltas(), PRIVACY.noise_multiplier,
                                              PRIVACY, _dp_config(mode), len(h), SecureRandom())
    if noise_seconds is not None:
        _timed_noise(dp_optimizer, noise_seconds)
    return _dp_step(model, dp_optimizer, criterion, h, y)


def _gram(tangent: TangentModel, h: torch.Tensor, y: torch.Tensor, noise_seconds: list[float] | None = None) -> StepFn:
    """(b) The Gram mode's step (``training._fit_private_gram``) on fixed batches: the per-example Grams
    are computed once here (timed on their own as the precompute), then each step runs one dual
    forward, the clip factors from the Grams, one backward seeded with c_i v_i, and the DP optimizer."""
    grams = per_example_grams(tangent, h)
    module = tangent.on_features()
    dp_optimizer = gram_optimizer(tangent.deltas(), PRIVACY.noise_multiplier, PRIVACY, _dp_config("gram"), len(h),
                                  SecureRandom())
    if noise_seconds is not None:
        _timed_noise(dp_optimizer, noise_seconds)

    def step() -> Iterator[str]:
        out, seeds, _ = clipped_seeds(module, h, y, grams, TRAIN.loss, PRIVACY.max_grad_norm)
        yield "forward"
        out.backward(seeds)
        yield "backward"
        dp_optimizer.step()  # noise, SGD update
        dp_optimizer.zero_grad(set_to_none=True)
        yield "update"

    return step


def _dp_nonlinear(base: nn.Module, tangent: TangentModel, h: torch.Tensor, y: torch.Tensor, mode: str) -> StepFn:
    """(e)/(f) DP-SGD on the ordinary network's suffix (``benchmarks._baselines.NonLinearSuffix``: eval-mode
    BatchNorm, timm's fused attention) with the library's Opacus parts (``sgd.dp_parts``), as
    ``run_sgd`` trains the non-linear baselines: the same parameters, batch, clipping and noise."""
    suffix = NonLinearSuffix(base, tangent).to(h.device)
    model, dp_optimizer, criterion = dp_parts(suffix, suffix.parameters_trained(), PRIVACY.noise_multiplier, PRIVACY,
                                              _dp_config(mode), len(h), SecureRandom())
    return _dp_step(model, dp_optimizer, criterion, h, y)


def _precompute(tangent: TangentModel, h: torch.Tensor) -> StepFn:
    """The Gram precompute of the batch's examples as a one-phase step (its memory is measured like a case's)."""

    def step() -> Iterator[str]:
        per_example_grams(tangent, h)
        yield "precompute"

    return step


def _make_step(case: str, base: nn.Module, tangent: TangentModel, h: torch.Tensor, y: torch.Tensor) -> StepFn:
    if case == "nonprivate":
        return _nonprivate(copy.deepcopy(base).to(h.device), tangent, h, y)
    if case == "tangent":
        return _tangent(tangent, h, y)
    if case == "gram":
        return _gram(tangent, h, y)
    if case in ("hooks", "ghost"):
        return _opacus(tangent, h, y, case)
    if case == PRECOMPUTE:
        return _precompute(tangent, h)
    return _dp_nonlinear(base, tangent, h, y, case.removeprefix("dp_"))


def _setup(model: str, config: Config) -> tuple[ModelSpec, nn.Module, torch.Tensor, torch.Tensor]:
    """(spec, base network on the CPU in eval mode, inputs and labels on the device)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    spec = MODELS[model]
    x = torch.randn(config.batch_size, *spec.input_shape)
    y = torch.randint(0, 10, (config.batch_size,))
    return spec, spec.build().eval(), x.to(config.device), y.to(config.device)


def _linearized(base: nn.Module, spec: ModelSpec, device: str) -> TangentModel:
    return linearize(base, spec.trainable).to(device)  # linearize probes on the CPU, then moves


def _sync(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def _seconds(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> float:
    if sync is not None:
        sync()
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start


def time_cases(model: str, config: Config, keep_memory: bool, return_memory: bool = False) -> dict[str, object]:
    """All cases in one process, one step of each per round (order rotated every round), so that the
    load from other work on a shared machine hits every case alike and ratios can be paired by round.
    The Gram precompute of the batch's examples takes part in the rounds like a case. ``keep_memory`` /
    ``return_memory``: glibc keeps freed memory / returns it to the OS, from the start (else its default)."""
    kept = keep_freed_memory() if keep_memory else False
    returned = return_freed_memory() if return_memory else False
    spec, base, x, y = _setup(model, config)
    sync = _sync(config.device)
    tangents = {case: _linearized(base, spec, config.device) for case in CASES}
    h = tangents["hooks"].features(x)
    steps = {case: _make_step(case, base, tangents[case], h, y) for case in CASES}
    steps[PRECOMPUTE] = _precompute(tangents["gram"], h)
    timed = list(steps)
    for case in timed:
        for _ in range(config.warmup):
            time_step(steps[case], sync)
    timings: dict[str, list[dict[str, float]]] = {case: [] for case in timed}
    loads = [load_average()]
    waited, stolen, wall = run_queue_wait(), steal_time(), time.perf_counter()
    for r in range(config.steps):
        for case in timed[r % len(timed):] + timed[:r % len(timed)]:
            timings[case].append(time_step(steps[case], sync))
        loads.append(load_average())
    precompute = [t["total"] for t in timings.pop(PRECOMPUTE)]
    wall = time.perf_counter() - wall
    waited = None if waited is None else (run_queue_wait() or 0.0) - waited
    stolen = None if stolen is None else (steal_time() or 0.0) - stolen
    return {
        "keep_freed_memory": kept,
        "return_freed_memory": returned,
        "cases": {case: {"seconds_per_step": statistics.median(t["total"] for t in ts),
                         "step_seconds": [t["total"] for t in ts],
                         "phase_seconds": {p: statistics.median(t[p] for t in ts) for p in ts[0] if p != "total"}}
                  for case, ts in timings.items()},
        # the Grams of the batch's examples, one round each (chunked as per_example_grams does in training)
        "precompute_seconds": precompute,
        "precompute_seconds_per_example": statistics.median(precompute) / len(h),
        "load_average_per_round": loads,
        "run_queue_wait_share": None if waited is None else waited / (wall * config.threads),  # per thread
        "steal_share": None if stolen is None else stolen / (wall * (os.cpu_count() or 1)),  # per CPU
        "omp_wait_policy": wait_policy(),
        "features_shape": list(h.shape),
        "trainable_parameters": sum(p.numel() for p in tangents["hooks"].deltas()),
    }


def _delta_layers(tangent: TangentModel) -> list[dict[str, object]]:
    """Layers holding deltas, with their size and whether Opacus has a ghost norm sampler for them."""
    return [{"name": name, "type": type(module).__name__,
             "parameters": sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad),
             "ghost_norm": type(module) in GradSampleModuleFastGradientClipping.NORM_SAMPLERS}
            for name, module in tangent.net.named_modules()
            if any(p.requires_grad for p in module.parameters(recurse=False))]


def measure_memory(model: str, case: str, config: Config, returning: bool = True) -> dict[str, object]:
    """One case alone in this process: peak memory over ``memory_steps`` steps (on the CPU the RSS
    increase, page faults in the last step, then one profiled step for the allocator peak and top
    ops; on a GPU the CUDA allocator's peak above the memory live before the first step). On the CPU,
    ``returning``: glibc returns freed memory to the OS from the start (:func:`return_freed_memory`),
    else its default policy."""
    returned = return_freed_memory() if returning and not config.device.startswith("cuda") else False
    spec, base, x, y = _setup(model, config)
    tangent = _linearized(base, spec, config.device)
    h = tangent.features(x)
    del x
    step = _make_step(case, base, tangent, h, y)
    cuda = config.device.startswith("cuda")
    sync = _sync(config.device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        live = torch.cuda.memory_allocated()
    rss = PeakRSS.start()
    for _ in range(config.memory_steps - 1):
        time_step(step, sync)
    faults = minor_faults()
    time_step(step, sync)  # the last one counts page faults: past the first step's one-time allocations
    faults, increase = minor_faults() - faults, rss.increase()
    result = {
        "glibc_returns_freed_memory": returned,
        "rss_baseline_mib": rss.baseline / MiB,
        "rss_peak_increase_mib": increase / MiB,
        "rss_method": rss.method,
        "fresh_pages_mib_per_step": faults * resource.getpagesize() / MiB,
        "delta_layers": _delta_layers(tangent),
    }
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - live) / MiB
        return {**result, "peak_mib": peak, "peak_method": "CUDA allocator peak above the live memory at start",
                "allocator_peak_mib": peak, "profiled_top_ops_ms": [], "profiled_dense_share": None}
    allocator_peak, top_ops, dense_share = profile_step(step)
    return {**result, "peak_mib": increase / MiB, "peak_method": rss.method,
            "allocator_peak_mib": None if allocator_peak is None else allocator_peak / MiB,
            "profiled_top_ops_ms": top_ops, "profiled_dense_share": dense_share}


def median_memory(runs: list[dict]) -> dict[str, object]:
    """The run with the median peak (an odd number of runs), and every run's peak and allocator peak."""
    ordered = sorted(runs, key=lambda run: run["peak_mib"])
    return {**ordered[len(ordered) // 2], "peak_mib_runs": [run["peak_mib"] for run in runs],
            "allocator_peak_mib_runs": [run["allocator_peak_mib"] for run in runs]}


NOISE_CASES = ("gram", "hooks", "ghost")


def measure_noise(model: str, config: Config) -> dict[str, object]:
    """The secure generator's share of a DP step: per (b)/(c)/(d) step, the seconds in ``add_noise`` (draw
    N(0, (sigma·C)²) for every delta, add it) over the step's seconds, median over rounds; the seconds
    of one secure Poisson batch over ``poisson_records`` records at the rate of this batch size; and
    noise values (each a sum of 4 normals) per second, in ``add_noise`` and for one bulk draw of 2^22."""
    spec, base, x, y = _setup(model, config)
    sync = _sync(config.device)
    tangent = _linearized(base, spec, config.device)
    h = tangent.features(x)
    parameters = sum(p.numel() for p in tangent.deltas())
    noise: dict[str, list[float]] = {case: [] for case in NOISE_CASES}
    steps = {case: (_gram(_linearized(base, spec, config.device), h, y, noise[case]) if case == "gram" else
                    _opacus(_linearized(base, spec, config.device), h, y, case, noise[case])) for case in NOISE_CASES}
    for case in NOISE_CASES:
        for _ in range(config.warmup):
            time_step(steps[case], sync)
        noise[case].clear()
    totals: dict[str, list[float]] = {case: [] for case in NOISE_CASES}
    for _ in range(config.steps):
        for case in NOISE_CASES:
            totals[case].append(time_step(steps[case], sync)["total"])
    n = config.poisson_records
    sampler = SecurePoissonSampler(num_samples=n, sample_rate=config.batch_size / n, rng=SecureRandom())
    poisson = statistics.median(_seconds(lambda: next(iter(sampler))) for _ in range(max(config.steps, 5)))
    rng, bulk = SecureRandom(), 1 << 22
    bulk_seconds = min(_seconds(lambda: rng.gaussian(bulk, 1.0, dtype=torch.float32, device=config.device), sync)
                       for _ in range(3))
    noise_seconds = statistics.median(t for case in NOISE_CASES for t in noise[case])
    return {
        "parameters": parameters, "poisson_records": n, "poisson_seconds": poisson,
        "noise_values_per_second_in_step": parameters / noise_seconds,
        "noise_values_per_second_bulk": bulk / bulk_seconds,
        "cases": {case: {"step_seconds": statistics.median(totals[case]),
                         "noise_seconds": statistics.median(noise[case]),
                         "noise_share": statistics.median(t / s for t, s in zip(noise[case], totals[case])),
                         "poisson_share": poisson / statistics.median(totals[case])} for case in NOISE_CASES},
    }


# -- orchestration ----------------------------------------------------------------------------------
def _in_fresh_process(fn: Callable[..., dict], *args: object, omp_default: bool = False) -> dict:
    """``fn(*args)`` in a new process, forked from this one (which has imported everything but has run
    no model: import time is paid once, and each measurement gets its own heap and RSS peak), or
    spawned for a GPU run, since a forked child cannot use CUDA. ``omp_default``: spawned in the user's
    environment, without the wait policy ``_measure`` set (a forked child keeps its parent's OpenMP runtime)."""
    config = next((a for a in args if isinstance(a, Config)), None)
    spawn = omp_default or sys.platform != "linux" or (config is not None and config.device.startswith("cuda"))
    saved = dict(os.environ)
    if omp_default:
        os.environ.clear()
        os.environ.update({**user_environment(), OMP_DEFAULT_FLAG: "1"})
    try:
        with multiprocessing.get_context("spawn" if spawn else "fork").Pool(1) as pool:  # its worker starts here
            return pool.apply(fn, args)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass(frozen=True)
class Target:
    key: str
    label: str  # "{limit}" is filled in per model
    numerator: str
    denominator: str
    measure: str  # "time": per-round paired ratio of step times; "memory": ratio of peak memory; "job": see _job
    limits: tuple[tuple[str, float], ...]  # (model, limit); model "*" for every other model
    at_most: bool = True

    def limit(self, model: str) -> float:
        limits = dict(self.limits)
        return limits.get(model, limits["*"])


TARGETS = (
    Target("gram_vs_dp_ghost", "(b) DP tangent step <= {limit}x (f) DP non-linear, Opacus ghost", "gram", "dp_ghost",
           "time", (("*", 1.0),)),
    Target("gram_vs_dp_hooks", "(b) DP tangent step <= {limit}x (e) DP non-linear, Opacus hooks", "gram", "dp_hooks",
           "time", (("*", 1.0),)),
    Target("gram_time", "(b) DP tangent step <= {limit}x (a) non-private non-linear", "gram", "nonprivate", "time",
           (("efficientnet_lite0", 1.6), ("*", 1.8))),
    Target("gram_memory", "(b) peak memory <= {limit}x (a)", "gram", "nonprivate", "memory", (("*", 1.3),)),
    Target("recipe_job", f"whole job of the default recipe (`{recipe_job.TRAINABLE}`, {recipe_job.EPOCHS} epochs) "
           "<= {limit}x the same job without DP", "dp", "no_dp", "recipe_job", (("*", 1.3),)),
    Target("gram_job", f"training part only: precompute + {TARGET_JOB_EPOCHS} epochs of (b) <= {{limit}}x "
           f"{TARGET_JOB_EPOCHS} epochs of (a')", "gram", "tangent", "job", (("*", 1.3),)),
)
RECIPE_JOB_MODEL = "default recipe"  # the recipe_job target's row: one job, not one per benchmark model


def _paired(timing: dict, numerator: str, denominator: str) -> dict[str, float]:
    top, bottom = (timing["cases"][c]["step_seconds"] for c in (numerator, denominator))
    paired = [a / b for a, b in zip(top, bottom)]
    return {"ratio": statistics.median(paired), "min": min(paired), "max": max(paired),
            "ratio_of_fastest": min(top) / min(bottom)}


def _divide(top: float, bottom: float) -> float:
    return top / bottom if bottom > 0 else float("inf")


def job_seconds_per_example(timing: dict, case: str, epochs: int, batch: int) -> float:
    """Seconds per training example of a job of ``epochs`` epochs of ``case`` steps (batch ``batch``),
    plus the Gram precompute for (b): precompute + epochs · step / batch."""
    per_epoch = timing["cases"][case]["seconds_per_step"] / batch
    return epochs * per_epoch + (timing["precompute_seconds_per_example"] if case == "gram" else 0.0)


def _paired_job(timing: dict, target: Target, batch: int) -> dict[str, float]:
    """Per round: (precompute + E·(b)'s step) / (E·denominator's step), E = TARGET_JOB_EPOCHS, per example."""
    epochs = TARGET_JOB_EPOCHS
    top = [pre / batch + epochs * step / batch for pre, step in
           zip(timing["precompute_seconds"], timing["cases"][target.numerator]["step_seconds"])]
    bottom = [epochs * step / batch for step in timing["cases"][target.denominator]["step_seconds"]]
    paired = [a / b for a, b in zip(top, bottom)]
    return {"ratio": statistics.median(paired), "min": min(paired), "max": max(paired),
            "ratio_of_fastest": min(top) / min(bottom)}


def _ratio(result: dict, target: Target, batch: int) -> dict[str, float | None]:
    if target.measure == "recipe_job":
        return {key: result[key] for key in ("ratio", "min", "max", "ratio_of_fastest")} | {
            "ratio_kept_memory": None, "ratio_omp_default": None}
    if target.measure in ("time", "job"):
        def paired(timing: dict) -> dict[str, float]:
            return (_paired(timing, target.numerator, target.denominator) if target.measure == "time" else
                    _paired_job(timing, target, batch))

        kept, omp = result["timing_kept_memory"], result.get("timing_omp_default")
        return {**paired(result["timing"]),
                "ratio_kept_memory": paired(kept)["ratio"] if kept["keep_freed_memory"] else None,
                "ratio_omp_default": None if omp is None else paired(omp)["ratio"]}
    memory = result["memory"]
    alloc = [memory[c]["allocator_peak_mib"] for c in (target.numerator, target.denominator)]
    top, bottom = (memory[c] for c in (target.numerator, target.denominator))
    ratio, low, high = _peak_ratios(top, bottom)
    row = {"ratio": ratio, "allocator_ratio": None if None in alloc else _divide(*alloc),
           "glibc_default_ratio": None, "runs": (len(_peak_runs(top)), len(_peak_runs(bottom))),
           "ratio_low": low, "ratio_high": high}
    if "glibc_default" in top and "glibc_default" in bottom:  # measured under glibc's default policy too
        ratio, low, high = _peak_ratios(top["glibc_default"], bottom["glibc_default"])
        row |= {"glibc_default_ratio": ratio, "glibc_default_low": low, "glibc_default_high": high}
    return row


def _peak_runs(memory: dict) -> list[float]:
    """A memory entry's peak in each of its processes (one, in results from before they were kept)."""
    return memory.get("peak_mib_runs", [memory["peak_mib"]])


def _peak_ratios(top: dict, bottom: dict) -> tuple[float, float, float]:
    """(ratio of the median peaks, lowest and highest ratio of the processes' extremes)."""
    tops, bottoms = _peak_runs(top), _peak_runs(bottom)
    return (_divide(top["peak_mib"], bottom["peak_mib"]), _divide(min(tops), max(bottoms)),
            _divide(max(tops), min(bottoms)))


def _meets(value: float, limit: float, at_most: bool) -> bool:
    return value <= limit if at_most else value >= limit


def evaluate(models: dict[str, dict], batch: int, job: dict | None = None) -> list[dict[str, object]]:
    """Each target on each model (the recipe job's once, when it was measured). Time: the median over
    rounds of the per-round ratio decides; the verdict holds in every round when the whole range of
    per-round ratios is on its side."""
    rows = []
    for target in TARGETS:
        if target.measure == "recipe_job":
            subjects = {RECIPE_JOB_MODEL: job} if job is not None else {}
        else:
            subjects = models
        for model, result in subjects.items():
            limit = target.limit(model)
            ratio = _ratio(result, target, batch)
            row = {"target": target.key, "label": target.label.format(limit=f"{limit:g}"), "model": model,
                   "limit": limit, "at_most": target.at_most, "measure": target.measure,
                   "pass": _meets(ratio["ratio"], limit, target.at_most), **ratio}
            if "min" in ratio:
                row["every_round"] = _meets(ratio["min"], limit, target.at_most) == _meets(ratio["max"], limit,
                                                                                            target.at_most)
                # rounds slowed by other work on the machine can pull the median either way: a pass needs the
                # fastest steps (the least disturbed) to pass too
                row["fastest_pass"] = _meets(ratio["ratio_of_fastest"], limit, target.at_most)
                row["pass"] = row["pass"] and row["fastest_pass"]
            rows.append(row)
    return rows


def run(config: Config, quick: bool) -> dict[str, object]:
    """Every measurement in a child process; this process runs no model (so it stays safe to fork)."""
    results: dict[str, object] = {
        "benchmark": "training_cost", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick, "config": asdict(config),
        "training": {"lr": TRAIN.lr, "momentum": TRAIN.momentum, "loss": TRAIN.loss.kind,
                     "noise_multiplier": PRIVACY.noise_multiplier, "max_grad_norm": PRIVACY.max_grad_norm},
        "load_average_at_start": load_average(), "models": {},
    }
    for model, spec in MODELS.items():
        entry: dict[str, object] = {"description": spec.description, "trainable": spec.trainable,
                                    "input_shape": list(spec.input_shape), "memory": {}}
        cpu = not config.device.startswith("cuda")
        for key, keep, give_back, omp_default, what in (
                ("timing", False, False, False, ""), ("timing_kept_memory", True, False, False, " (freed memory kept)"),
                ("timing_returned_memory", False, True, False, " (freed memory returned)"),
                ("timing_omp_default", False, False, True, " (OpenMP's default wait policy)")):
            if (give_back or omp_default) and not cpu:
                continue
            print(f"{model}: timing the {len(CASES)} cases, interleaved{what} ...", file=sys.stderr, flush=True)
            entry[key] = _in_fresh_process(time_cases, model, config, keep, give_back, omp_default=omp_default)
        for case in (*CASES, PRECOMPUTE):
            runs = config.memory_runs if case in MEMORY_TARGET_CASES else 1
            print(f"{model}: peak memory of {case} ({runs} run{'s' if runs > 1 else ''} per glibc policy) ...",
                  file=sys.stderr, flush=True)
            entry["memory"][case] = median_memory([_in_fresh_process(measure_memory, model, case, config)
                                                   for _ in range(runs)])
            if entry["memory"][case]["glibc_returns_freed_memory"]:  # and as a process runs by default
                entry["memory"][case]["glibc_default"] = median_memory(
                    [_in_fresh_process(measure_memory, model, case, config, False) for _ in range(runs)])
        print(f"{model}: secure noise and sampling share ...", file=sys.stderr, flush=True)
        entry["noise"] = _in_fresh_process(measure_noise, model, config)
        results["models"][model] = entry
    if not config.device.startswith("cuda"):  # the recipe trains on the CPU
        print("the default recipe's whole job, with and without DP ...", file=sys.stderr, flush=True)
        # as a user runs it: without the OpenMP wait policy this benchmark sets for itself
        results["recipe_job"] = recipe_job.measure_recipe_job(1 if quick else recipe_job.ROUNDS, env=user_environment())
    results["load_average_at_end"] = load_average()
    results["machine"] = machine(ROOT)
    results["device"] = _device_name(config.device)
    results["targets"] = evaluate(results["models"], config.batch_size, results.get("recipe_job"))
    return results


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


# -- report -------------------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f}"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:,.0f} KiB"


def _paragraph(text: str) -> str:
    return " ".join(text.split())


def _share(values: list[float]) -> str:
    return "n/a" if not values else f"{min(values):.0%} to {max(values):.0%}"


def _verdict(row: dict) -> str:
    fastest_only = not row["pass"] and not row.get("fastest_pass", True) and _meets(row["ratio"], row["limit"],
                                                                                    row["at_most"])
    value = row["ratio_of_fastest"] if fastest_only else row["ratio"]
    if row["pass"]:
        text = "PASS"
    elif row["at_most"]:
        text = f"MISS: {value / row['limit']:.2f}x the limit"
    else:
        text = f"MISS: {value / row['limit']:.0%} of the target"
    if fastest_only:
        text += " by the fastest steps (the median of the rounds passes: disturbed rounds)"
    elif "every_round" in row:
        text += " (every round)" if row["every_round"] else " (rounds straddle the limit)"
    elif max(row.get("runs", (1,))) > 1:
        same = _meets(row["ratio_low"], row["limit"], row["at_most"]) == _meets(row["ratio_high"], row["limit"],
                                                                                 row["at_most"])
        text += " (at the extremes too)" if same else " (the runs' extremes straddle the limit)"
    if row.get("glibc_default_ratio") is not None:
        default = row["glibc_default_ratio"]
        text = (f"{text} with freed memory returned; under glibc's default policy {default:.2f}x "
                f"({row['glibc_default_low']:.2f}–{row['glibc_default_high']:.2f}x at the extremes): "
                + ("within the limit" if _meets(default, row["limit"], row["at_most"]) else "over the limit"))
    return text


def _precompute_epochs(timing: dict, batch: int) -> float:
    """The Gram precompute in epochs of (b): seconds per example over (b)'s seconds per example per epoch."""
    return timing["precompute_seconds_per_example"] / (timing["cases"]["gram"]["seconds_per_step"] / batch)


def _model_table(model: str, entry: dict, batch: int, peak_label: str) -> list[str]:
    timing, kept, memory = entry["timing"], entry["timing_kept_memory"], entry["memory"]
    params = timing["trainable_parameters"]
    defaults = any("glibc_default" in m for m in memory.values())

    def step_time(key: str) -> Callable[[str], str]:
        return lambda case: f"{entry[key]['cases'][case]['seconds_per_step']:.3f}"

    def measured(case: str) -> str:
        t = timing["cases"][case]
        return f"{t['seconds_per_step']:.3f} ({min(t['step_seconds']):.3f}–{max(t['step_seconds']):.3f})"

    columns: list[tuple[str, Callable[[str], str]]] = [
        ("s / step, median (range)", measured),
        ("phases, median ms", lambda case: " · ".join(f"{name} {_ms(v)}" for name, v in
                                                      timing["cases"][case]["phase_seconds"].items())),
        ("s / step, freed memory kept", step_time("timing_kept_memory") if kept["keep_freed_memory"] else
         lambda case: "n/a (not glibc)")]
    if entry.get("timing_returned_memory", {}).get("return_freed_memory"):
        columns.append(("s / step, freed memory returned", step_time("timing_returned_memory")))
    if "timing_omp_default" in entry:
        columns.append(("s / step, OpenMP default wait policy", step_time("timing_omp_default")))
    columns += [(peak_label, lambda case: _mib(memory[case]["peak_mib"])),
                ("allocator peak, MiB", lambda case: _mib(memory[case]["allocator_peak_mib"]))]
    if defaults:
        columns.append(("peak RSS increase, glibc default, MiB",
                        lambda case: _mib(memory[case].get("glibc_default", {}).get("peak_mib"))))
    # fresh pages as the timed processes see them: under glibc's default policy
    columns.append(("fresh pages, MiB / step", lambda case: _mib(memory[case].get("glibc_default", memory[case])
                                                                 ["fresh_pages_mib_per_step"])))
    lines = [f"### {model}", "",
             f"{entry['description']}; trainable `{entry['trainable']}` = {params / 1e6:.2f} M parameters; "
             f"cached features {'x'.join(map(str, timing['features_shape']))}; per-sample gradients of all "
             f"deltas: {batch} x {params / 1e6:.2f} M floats = {_size(batch * params * 4)}; the NTK Grams (b) "
             f"keeps instead: {batch} x 10 x 10 float64 = {_size(batch * 100 * 8)}.", "",
             "| case | " + " | ".join(header for header, _ in columns) + " |",
             "|---|---:|---|" + "---:|" * (len(columns) - 2)]
    lines += [f"| {label} | " + " | ".join(cell(case) for _, cell in columns) + " |" for case, label in CASES.items()]
    pre, runs = memory[PRECOMPUTE], timing["precompute_seconds"]
    lines += ["", f"Gram precompute for (b): {timing['precompute_seconds_per_example'] * 1e3:,.1f} ms per example "
              f"(median over the {len(runs)} rounds, the batch of {batch} each; range "
              f"{min(runs) / batch * 1e3:,.1f}–{max(runs) / batch * 1e3:,.1f} ms), the time of "
              f"{_precompute_epochs(timing, batch):.1f} epochs of (b) steps; precomputing the batch alone: "
              f"{peak_label.split(',')[0]} {_mib(pre['peak_mib'])} MiB, allocator peak "
              f"{_mib(pre['allocator_peak_mib'])} MiB.", ""]
    return lines


def _job_table(models: dict[str, dict], batch: int) -> list[str]:
    """(b)'s whole job (precompute + E epochs) per example against the same E epochs of the other cases."""
    others = ("nonprivate", "tangent", "dp_hooks", "dp_ghost", "ghost")
    lines = ["### Whole job: Gram precompute + E epochs", "",
             "Per training example, from the medians above: (b)'s job is precompute + E x (b)'s step / batch, "
             "every other case's E x its step / batch (the frozen-prefix features, computed once in every "
             "case, are left out). Ratios of (b)'s job to each.", "",
             "| model | epochs | (b) job, ms / example | precompute share | "
             + " | ".join(f"÷ {CASES[c].split(' ', 1)[0]}" for c in others) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(others)]
    for model, entry in models.items():
        timing = entry["timing"]
        for epochs in JOB_EPOCHS:
            job = job_seconds_per_example(timing, "gram", epochs, batch)
            ratios = " | ".join(f"{job / job_seconds_per_example(timing, c, epochs, batch):.2f}x" for c in others)
            lines.append(f"| {model} | {epochs} | {job * 1e3:,.1f} "
                         f"| {timing['precompute_seconds_per_example'] / job:.0%} | {ratios} |")
    return lines + [""]


def _policy(user_choice: str | None) -> str:
    """How the whole job's OpenMP threads waited: ``user_choice`` is the wait policy the benchmark's
    environment set (``NAME=value``; a bare value is an older run's ``OMP_WAIT_POLICY``)."""
    if user_choice is None:
        return "in the user's environment, where `dp-tangent` sets its short OpenMP spin (`dp_tangent.openmp`)"
    return f"with `{_setting(user_choice)}` from the user's environment"


def _wait_text(recorded: str | None) -> str:
    """A timed process's recorded OpenMP wait as text (older runs recorded ``OMP_WAIT_POLICY``'s bare value)."""
    if recorded is None:
        return "the OpenMP runtime's default"
    return recorded if " " in recorded else f"`{_setting(recorded)}`"  # " ": already text (the runtime's default)


def _setting(recorded: str) -> str:
    """A recorded wait policy as ``NAME=value``: older runs recorded ``OMP_WAIT_POLICY``'s bare value."""
    return recorded if "=" in recorded else f"OMP_WAIT_POLICY={recorded}"


def _recipe_job_lines(job: dict) -> list[str]:
    """The default recipe's whole job with and without DP: the job target as the issue defines it."""
    dp, no_dp = job["seconds"]["dp"], job["seconds"]["no_dp"]
    median_dp, median_no_dp = statistics.median(dp), statistics.median(no_dp)
    return ["### Whole job of the default recipe", "",
            _paragraph(f"""`dp-tangent train` of `{job['recipe']}` with `trainable: {job['trainable']}` and
            {job['epochs']} epochs (its {job['shards']} shards, expected batch {job['batch_size']}, default executor,
            the default DP mode: Grams), against the same recipe with `epsilon: .inf` and no budget. Each job runs
            from a fresh process in a fresh directory (`-w ws`), {len(dp)} round{"s" if len(dp) != 1 else ""}
            alternating which job goes first, {_policy(job.get("omp_wait_policy", "PASSIVE"))};
            everything the command does is timed, from start to exit: imports, data, each shard's frozen-prefix
            features, the NTK Gram precompute, training, calibration and accounting, the ledger, composition and
            evaluation (`benchmarks/recipe_job.py`)."""), "",
            "| job | s, median (range) |", "|---|---:|",
            f"| with DP (ε = {job['epsilon']:g} per component) | {median_dp:.1f} ({min(dp):.1f}–{max(dp):.1f}) |",
            f"| without DP | {median_no_dp:.1f} ({min(no_dp):.1f}–{max(no_dp):.1f}) |", "",
            _paragraph(f"""Median ratio of the rounds {job['ratio']:.2f}x (range {job['min']:.2f}–{job['max']:.2f}x).
            What DP adds, {median_dp - median_no_dp:.1f} s of medians, is the Gram precompute, the DP steps' extra
            cost and calibration; the other {median_no_dp:.1f} s are the job without DP, most of it work the
            training-part figures above leave out (imports, data, features, evaluation, composition)."""), ""]


def _targets_table(rows: list[dict]) -> list[str]:
    omp_column = any(row.get("ratio_omp_default") is not None for row in rows)
    lines = ["| target | model | measured | range over rounds | ratio of fastest steps | with freed memory kept "
             + ("| OpenMP default wait policy " if omp_column else "") + "| verdict |",
             "|---|---|---:|---:|---:|---:|" + ("---:|" if omp_column else "") + "---|"]
    for row in rows:
        if "min" in row:
            kept, omp = ("n/a" if row.get(key) is None else f"{row[key]:.2f}x"
                         for key in ("ratio_kept_memory", "ratio_omp_default"))
            cells = [f"{row['ratio']:.2f}x", f"{row['min']:.2f}–{row['max']:.2f}x", f"{row['ratio_of_fastest']:.2f}x",
                     kept] + ([omp] if omp_column else [])
        else:
            alloc = "" if row["allocator_ratio"] is None else f" (allocator: {row['allocator_ratio']:.2f}x)"
            if "runs" in row and max(row["runs"]) > 1:
                spread = (f"medians of {' and '.join(map(str, sorted(set(row['runs']))))} runs; extremes "
                          f"{row['ratio_low']:.2f}–{row['ratio_high']:.2f}x")
            else:
                spread = "one run"
            cells = [f"{row['ratio']:.2f}x{alloc}", spread, "", ""] + ([""] if omp_column else [])
        lines.append(f"| {row['label']} | {row['model']} | {' | '.join(cells)} | {_verdict(row)} |")
    return lines + [""]


def _top(memory: dict, n: int = 3) -> str:
    return ", ".join(f"`{name}` {ms:,.0f} ms" for name, ms in memory["profiled_top_ops_ms"][:n]) or "n/a"


def _runs(memory: dict) -> str:
    runs = _peak_runs(memory)
    return _mib(runs[0]) if len(runs) == 1 else f"{_mib(min(runs))}–{_mib(max(runs))}"


def _glibc_default(models: dict[str, dict]) -> str:
    """What glibc's default policy adds to the peak RSS of (a) and (b), per model, and what returning freed
    memory costs in time."""
    measured = {model: entry for model, entry in models.items()
                if all("glibc_default" in entry["memory"][c] for c in ("nonprivate", "gram"))}
    figures = "; ".join(
        f"{model}: (b) {_mib(b['glibc_default']['peak_mib'])} MiB ({_runs(b['glibc_default'])} over the processes) "
        f"against (a) {_mib(a['glibc_default']['peak_mib'])} MiB ({_runs(a['glibc_default'])}), "
        f"{_divide(b['glibc_default']['peak_mib'], a['glibc_default']['peak_mib']):.2f}x, against "
        f"{_mib(b['peak_mib'])} ({_runs(b)}) and {_mib(a['peak_mib'])} MiB ({_runs(a)}), "
        f"{_divide(b['peak_mib'], a['peak_mib']):.2f}x, with freed memory returned"
        for model, entry in measured.items() for a, b in [(entry["memory"]["nonprivate"], entry["memory"]["gram"])])
    costs = "; ".join(
        f"{model}: (b) {_ratio_of_medians(entry, 'gram')}, (a) {_ratio_of_medians(entry, 'nonprivate')}, "
        f"{_mib(entry['memory']['gram']['fresh_pages_mib_per_step'])} MiB of fresh pages per (b) step against "
        f"{_mib(entry['memory']['gram']['glibc_default']['fresh_pages_mib_per_step'])} MiB"
        for model, entry in measured.items() if "timing_returned_memory" in entry)
    return _paragraph(f"""**Under glibc's default policy** a process's peak RSS also holds freed blocks that glibc
    keeps for reuse, and how many depends on what the process freed before: the mmap threshold rises to the
    largest mapped block freed so far (up to 32 MiB; model setup and the Gram precompute free such blocks), and
    from then on blocks below it come from the heap, where freed ones stay resident. Peak RSS increase, median of
    the processes: {figures}. The difference between the two policies is freed memory that glibc keeps resident:
    a process under the default policy does hold it, but the steps do not need it, and the figures with freed
    memory returned include everything they touch (the allocator peaks, tensors alone, lie below both). A user
    who needs the lower figure can train with `MALLOC_MMAP_THRESHOLD_=65536` in the environment, which sets the
    policy measured here; each step then maps and zeroes its large blocks afresh"""
                      + (f". Step time with freed memory returned over the default's (medians, separate processes): "
                         f"{costs}." if costs else "."))


def _ratio_of_medians(entry: dict, case: str) -> str:
    """A case's median step time with freed memory returned over its median under glibc's default policy."""
    returned, default = (entry[key]["cases"][case]["seconds_per_step"] for key in ("timing_returned_memory", "timing"))
    return f"{_divide(returned, default):.2f}x"


def _explain_time(model: str, entry: dict) -> str:
    cases = entry["timing"]["cases"]
    a, t, b, e, f = (cases[k] for k in ("nonprivate", "tangent", "gram", "dp_hooks", "dp_ghost"))
    pa, pt, pb = (x["phase_seconds"] for x in (a, t, b))
    noise = entry["noise"]["cases"]["gram"]
    return (f"- **{model}**: (b) {_ms(b['seconds_per_step'])} ms/step: forward {_ms(pb['forward'])} ms (the pass "
            f"at θ0 recorded for the backward, the dual pass for f_lin, v and the clip factors from the Grams), "
            f"backward {_ms(pb['backward'])} ms (one, seeded with c_i v_i), update {_ms(pb['update'])} ms (noise: "
            f"{noise['noise_share']:.0%} of a step in the noise measurement below). Linearization alone, (a'), takes "
            f"{_ms(t['seconds_per_step'])} ms ({t['seconds_per_step'] / a['seconds_per_step']:.2f}x (a)'s "
            f"{_ms(a['seconds_per_step'])} ms): forward {_ms(pt['forward'])} vs {_ms(pa['forward'])} ms, backward "
            f"{_ms(pt['backward'])} vs {_ms(pa['backward'])} ms; (b) is "
            f"{b['seconds_per_step'] / t['seconds_per_step']:.2f}x (a'). DP non-linear: (e) "
            f"{_ms(e['seconds_per_step'])} ms, (f) {_ms(f['seconds_per_step'])} ms.")


def _explain_memory(model: str, entry: dict, peak_label: str) -> str:
    memory = entry["memory"]
    a, t, b, d = (memory[k] for k in ("nonprivate", "tangent", "gram", "ghost"))
    name = peak_label.split(",")[0]
    return (f"- **{model}**: {name} {_mib(b['peak_mib'])} MiB for (b), {_mib(t['peak_mib'])} MiB for the "
            f"tangent model without DP (a'), {_mib(a['peak_mib'])} MiB for (a) and {_mib(d['peak_mib'])} MiB for "
            f"ghost clipping (d); allocator peaks {_mib(b['allocator_peak_mib'])}, {_mib(t['allocator_peak_mib'])}, "
            f"{_mib(a['allocator_peak_mib'])} and {_mib(d['allocator_peak_mib'])} MiB. (a') over (a) is the "
            "linearization's: the dual pass runs first and keeps the linear and convolution twins' primal inputs "
            "and outputs for the plain pass that records the graph (`twins.PrimalReuse`, so that their products "
            "at θ0 run once), so at its peak those recorded tensors and the pass's transient tangents are live "
            "together; math attention instead of fused for the ViT. (b) holds what (a') holds plus the batch's "
            "Grams and seeds (a few KiB); the DP "
            "optimizer adds its noise into the clipped sum in place, so what (b) adds to (a') lies outside the "
            "allocator: the secure generator's keystream buffer (2 MiB, a mapping of its own, in which the noise "
            "is computed), which every DP mode has.")


def _explain_job(model: str, entry: dict, batch: int) -> str:
    timing = entry["timing"]
    t, b = (timing["cases"][k]["seconds_per_step"] for k in ("tangent", "gram"))
    job = _divide(*(job_seconds_per_example(timing, c, TARGET_JOB_EPOCHS, batch) for c in ("gram", "tangent")))
    return (f"- **{model}**: the precompute takes {timing['precompute_seconds_per_example'] * 1e3:,.1f} ms per "
            f"example, {_precompute_epochs(timing, batch):.1f} epochs of (b), and each (b) epoch "
            f"{b / t:.2f}x an (a') epoch: over {TARGET_JOB_EPOCHS} epochs (b)'s job is {job:.2f}x "
            "(a')'s (from the medians). The precompute is K = 10 backward passes per example (all seeds at once); "
            "it is paid once per record and run, so its share falls with the epochs (table above).")


WHY_TIME = """\
Why (b) is slower than (a): *linearization*, (a') against (a). The tangent model's forward is two
passes: a forward-mode dual pass without autograd gives the value f(x; θ0) + J·δ, then a plain pass
at θ0 records the graph the backward runs through. In the plain pass the linear and convolution
twins take their outputs from the dual pass's primals (`twins.PrimalReuse`, inputs checked bit for
bit) with the layers' own backward, so the dual pass's primal and two tangent products, δW·x and
W0·dx (one for the first linearized layer), are their only products; GELU is replayed the same way
(`twins.register_op_replay`); every other op (LayerNorm, residuals, attention's products and
softmax, q's scaling, the heads' reshapes) runs its primal and its JVP formula in the dual pass and
its primal again in the plain pass (replaying attention too cost 25 MiB of peak memory for no
measurable time); the ViT suffix runs attention in math mode, since
fused SDPA has no forward derivative. Counting matmul/convolution
FLOPs, that is about 5 units against 3 for (a). DP adds little else in (b): no per-sample gradient
is materialized and there is one backward; what is left is v_i, the clip factors vᵢᵀΘᵢvᵢ (K²
products per example) and the secure noise, whose cost follows the number of deltas, not the batch
(4 float64 normals per delta: 20–35 ms per step for 1 M deltas on 2 cores, nearly all of (b) − (a')
where the step is short, as on EfficientNet-Lite0; larger batches dilute it). What would close the
rest: with no augmentation the suffix's inputs and θ0 never change, so its activations at θ0 are constants per example;
caching them would leave the tangent products and the backward (about 4 units against 3), at a
memory cost of the suffix's activations times the number of examples. Fused tangent kernels (primal
and tangent of LayerNorm, GELU and attention in one pass) or a compiled dual forward would shrink
the dual pass. The two kernel choices that differ between the cases (depthwise weight gradients,
1x1 convolution backward at small outputs) are stated under Setup."""

WHY_TIME_CUDA = """On a GPU at this batch and model size, the steps are bound by kernel launches and Python rather than
arithmetic: (a) runs in a few milliseconds, while the tangent model's dual pass launches several
kernels per op (primal and tangent) and `twins.PrimalReuse` compares each linear or convolution
input bit for bit, which waits for the GPU. (Measured before the dual pass was moved first and the
noise added in place.) The secure noise is drawn on the CPU (ChaCha20
keystream, written into page-locked memory) and copied to the GPU for the Box–Muller arithmetic,
so its cost does not shrink with the GPU and its share of a step is larger than on the CPU. Larger
batches and models, where arithmetic would weigh more, were not measured on a GPU."""


NOISE_SHARE_LIMIT = 0.10  # target: secure noise and Poisson sampling together at most 10% of a DP step


def render_noise(models: dict[str, dict], threads: int, cuda: bool = False) -> list[str]:
    """The secure generator's share of a DP step, per model and DP case, against the 10% target."""
    made_by = ("its keystream made on the CPU by one worker thread per torch thread, the arithmetic on the GPU"
               if cuda else
               "made by one worker thread per torch thread, the training thread among them, computing with numpy "
               "(no OpenMP threads of their own)")
    lines = ["### Secure noise and sampling: share of a DP step", "",
             "Noise: the DP optimizer's `add_noise` (ChaCha20 keystream, 4 float64 Box–Muller normals per value, "
             f"added to the summed gradient) as a share of the same step, median over rounds, {made_by}. Sampling: "
             "one secure Poisson batch (one uniform per record) from a shard of the stated size. "
             f"{threads} torch threads.", "",
             "| model | case | deltas | step, ms | noise, ms | noise share | Poisson batch, ms (records) "
             "| sampling share | noise values/s in step | noise values/s, bulk | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for model, entry in models.items():
        n = entry["noise"]
        for case, c in n["cases"].items():
            total = c["noise_share"] + c["poisson_share"]
            verdict = "PASS" if total <= NOISE_SHARE_LIMIT else f"MISS: {total:.0%} > {NOISE_SHARE_LIMIT:.0%}"
            lines.append(f"| {model} | {CASES[case].split(' ', 1)[0]} {case} | {n['parameters'] / 1e6:.2f} M "
                         f"| {c['step_seconds'] * 1e3:,.0f} "
                         f"| {c['noise_seconds'] * 1e3:,.1f} | {c['noise_share']:.1%} "
                         f"| {n['poisson_seconds'] * 1e3:,.2f} ({n['poisson_records']:,}) | {c['poisson_share']:.2%} "
                         f"| {n['noise_values_per_second_in_step'] / 1e6:,.0f} M "
                         f"| {n['noise_values_per_second_bulk'] / 1e6:,.0f} M "
                         f"| {verdict} |")
    return lines + [""]


def render(results: dict) -> str:
    m, cfg, tr = results["machine"], results["config"], results["training"]
    versions = m["versions"]
    batch = cfg["batch_size"]
    cuda = cfg.get("device", "cpu").startswith("cuda")
    returned = any(m.get("glibc_returns_freed_memory") for e in results["models"].values()
                   for m in e["memory"].values())
    peak_label = ("CUDA allocator peak, MiB" if cuda else
                  f"peak RSS increase{', freed memory returned' if returned else ''}, MiB")
    timings = [entry[key] for entry in results["models"].values() for key in ("timing", "timing_kept_memory")]
    loads = [load for t in timings for load in t["load_average_per_round"] if load is not None]
    waits = [t["run_queue_wait_share"] for t in timings if t["run_queue_wait_share"] is not None]
    steals = [t["steal_share"] for t in timings if t.get("steal_share") is not None]
    shared = (max(loads, default=0.0) > m["usable_cpus"] or max(waits, default=0.0) > 0.05
              or max(steals, default=0.0) > 0.05)
    policy = ", ".join(sorted({_wait_text(t["omp_wait_policy"]) for t in timings}))
    omp_default = any("timing_omp_default" in entry for entry in results["models"].values())
    quick = " --quick" if results["quick"] else ""
    device = f" GPU: {results['device']} (`{cfg['device']}`)." if cuda else ""
    machine_text = (
        f"**Machine.** {m['cpu']}{' (virtual machine)' if m['virtualized'] else ''}, {m['logical_cpus']} logical "
        f"CPUs ({m['usable_cpus']} usable), {m['memory_gib']} GiB RAM; {m['os']}; Python {m['python']}, torch "
        f"{versions['torch']}, opacus {versions['opacus']}, timm {versions['timm']}; {cfg['threads']} torch threads."
        f"{device} "
        + ("**The cores were shared with other work during the run**: " if shared else "Other load: ")
        + f"the 1-minute load average ranged from {min(loads):.1f} to {max(loads):.1f} while timing, and this "
        f"benchmark's compute threads spent {_share(waits)} of the timing wall time runnable but waiting for a "
        "CPU (Linux schedstat run-queue wait, per thread; 0% on an idle machine)"
        + (f", and the hypervisor gave {_share(steals)} of the CPUs' time to other guests (steal time, which the "
           "run-queue wait does not see)." if steals else ".")
        + (" Absolute times are inflated and noisy; the ratios are paired by round (below), which removes slow "
           "drifts in load but not fast ones: check the range over rounds before trusting a ratio near its "
           "limit." if shared else "")
        + f" OpenMP wait: {policy}"
        + (" (passive: spin-waiting OpenMP threads burn the time slices their descheduled peers need when other "
           "processes share the cores)" if "PASSIVE" in policy else
           " (as `dp-tangent` sets it: a spin after each parallel op 1/30 of libgomp's default, which held a "
           "core the secure noise's worker threads needed; `dp_tangent.openmp`)" if "GOMP_SPINCOUNT" in policy else "")
        + ("; another process per model times every case with the OpenMP runtime's default wait (spin about "
           "3-8 ms, then sleep), as a program that imports the library without setting it runs. That process and "
           "the one with freed memory returned run after the first two (on a machine whose load may have "
           "changed), so compare their ratios, not their absolute times, with the others'."
           if omp_default else "."))
    lines = [
        "## Training cost" + (" on a GPU" if cuda else "") + ": time per logical step and peak memory", "",
        f"_Generated by `python -m benchmarks.training_cost{quick}` at {results['created']} (git {m['git']}); do not "
        f"edit by hand. Raw numbers: `benchmarks/results/{result_file(bool(quick), cfg.get('device', 'cpu'))}`._",
        "",
        machine_text, "",
        f"**Setup.** Batch {batch} (logical = physical: one forward and backward per step), random "
        f"inputs and labels (the cost does not depend on the values), {tr['loss']} loss, SGD lr {tr['lr']} momentum "
        f"{tr['momentum']}; the DP cases clip at C = {tr['max_grad_norm']} and add Gaussian noise with σ = "
        f"{tr['noise_multiplier']} from the secure generator. Every case starts from the same cached frozen-prefix "
        "features (`tangent.features(x)`) and trains the same parameters. (a) runs the ordinary network's suffix "
        "(`layout.run_suffix`) in eval mode, like the tangent model (running BatchNorm statistics, no dropout), "
        "with timm's fused attention and in-place activations (and, as in every case, a ViT's last block "
        "computing the class token alone, which its head reads: `layouts._first_token_of_block`, since 2026-12-04); "
        "(a') is the tangent model's own non-private step, "
        "to separate the cost of linearization from the cost of DP; (b) is the default Gram mode "
        "(`training.ntk_gram`: one dual forward, clip factors from each example's precomputed K x K NTK Gram, one "
        "backward seeded with the clipped v_i, the DP optimizer of `sgd.gram_optimizer`), its Grams computed once "
        "beforehand and timed on their own; (c) and (d) build the `GradSampleModule` / ghost-clipping wrapper, "
        "the DP optimizer and the loss with `training.sgd.dp_parts`, as `training._fit_private` does; (e) and "
        "(f) are what a user would run instead of a tangent model: DP-SGD on the ordinary network's suffix "
        "(`benchmarks._baselines.NonLinearSuffix`: BatchNorm on its running statistics, timm's fused attention; "
        "convolutions with the grouped per-sample kernels of `training.grad_samplers`) through the same "
        "`dp_parts`, Opacus hooks and ghost clipping. Every case runs on fixed batches instead of Poisson "
        "sampling, so that every case sees exactly the same batch. Data loading and sampling are not timed."
        + ("" if cuda else
           " Two kernels differ: the tangent model's depthwise convolutions with small outputs, in (a') to (d), "
           "take their weight gradient from a Gram of positions (`tangent.depthwise`; on EfficientNet-Lite0, "
           "the last block's 2x2 output), and its 1x1 convolutions with at most 9 output positions their "
           "backward from two matrix products (`tangent.pointwise`), while stock timm in (a), (e) and (f) keeps "
           "PyTorch's kernels: both routes measured faster than PyTorch's kernels where they are taken (each "
           "module's docstring gives its per-layer timings)."), "",
        f"**Measures.** *Time*: for each model all cases run in one process; after {cfg['warmup']} warm-up steps "
        f"each, {cfg['steps']} rounds time one step of every case with `time.perf_counter`"
        + (" after `torch.cuda.synchronize()`" if cuda else "")
        + ", the order rotating every round. The tables give the median and range per case; a target's ratio is "
        "the median over rounds of the per-round ratio, and a target passes only if the ratio of the fastest steps "
        "(the least disturbed by other work) passes too. The same is repeated in a second process in which glibc "
        "keeps freed memory (`mallopt`: no `mmap`, no trimming)"
        + ("" if cuda else ", and in a third in which it returns freed memory (as for the memory figures below)")
        + ". The Gram "
        "precompute of the batch's examples takes part in every round like a case. *Memory*: "
        "each case runs alone in a fresh process"
        + (f"; (a), (a') and (b) in {cfg['memory_runs']} processes each, and their median counts. "
           if cfg.get("memory_runs", 1) > 1 else ". ")
        + ("The figure is the CUDA allocator's peak (`torch.cuda.max_memory_allocated`) above the memory live "
           f"before the first of {cfg['memory_steps']} steps." if cuda else
           ("Before setup, glibc is told to return freed memory to the OS (`mallopt`: a fixed mmap threshold of "
            "64 KiB, so that every larger block is a mapping of its own, unmapped when freed, and heap trimming "
            "above 128 KiB). " if returned else "")
           + "After setup (model, features, optimizer; for (b) its Grams) garbage is collected, free heap returned "
           "to the OS (`malloc_trim`) and the kernel's RSS high-water mark reset; the peak RSS increase is VmHWM "
           f"after {cfg['memory_steps']} steps minus RSS at that point, and the memory target uses it"
           + (": all the memory the steps touch (tensors, oneDNN scratch space, the secure generator's keystream "
              "buffer, Python objects) but not freed memory that glibc chooses to keep. As many processes per case "
              "measure the same under glibc's default policy (\"glibc default\"; see below)." if returned else ".")
           + " The allocator column is PyTorch's own view: the peak of live tensor bytes during one further, "
           "profiled step, from the profiler's allocation events (it leaves out oneDNN scratch space and Python "
           "objects). Fresh pages are minor page faults times the page size during the last of those steps"
           + (", under glibc's default policy as in the timed processes" if returned else "")
           + ": memory the kernel had to map and zero in a step."), "",
    ]
    if returned:
        lines += [_glibc_default(results["models"]), ""]
    for model, entry in results["models"].items():
        lines += _model_table(model, entry, batch, peak_label)
    lines += _job_table(results["models"], batch)
    if "recipe_job" in results:
        lines += _recipe_job_lines(results["recipe_job"])
    lines += ["### Targets", "",
              "The earlier target \"(hooks) ≥ 5x faster than vmap(grad(jvp))\" is retired: vmap runs every op once "
              "on the whole batch, so its premise does not hold where every op has a batching rule (the last run "
              "that measured it found hooks 0.7–1.3x the vmap step). It is replaced by the comparison a user "
              "makes: the DP tangent step against DP fine-tuning of the ordinary network.", "",
              *_targets_table(results["targets"])]
    lines += render_noise(results["models"], cfg["threads"], cuda)
    models = results["models"]
    missed = {t.key: [r["model"] for r in results["targets"] if r["target"] == t.key and not r["pass"]]
              for t in TARGETS}
    time_missed = sorted({model for key in ("gram_vs_dp_ghost", "gram_vs_dp_hooks", "gram_time")
                          for model in missed[key]}, key=list(models).index)
    if time_missed:
        lines += ["### Why time targets are missed", ""]
        lines += [_explain_time(model, models[model]) for model in time_missed]
        lines += ["", _paragraph(WHY_TIME_CUDA if cuda else WHY_TIME), ""]
    if missed["gram_memory"]:
        lines += ["### Why the memory target is missed", ""]
        lines += [_explain_memory(model, models[model], peak_label) for model in missed["gram_memory"]]
        lines += [""]
    if missed["recipe_job"]:
        lines += ["### Why the whole-job target is missed", "",
                  "What DP adds to the default recipe's job (table above) is mostly the Gram precompute and the "
                  "DP steps' extra cost, explained per model below.", ""]
    if missed["gram_job"]:
        lines += ["### Why the training part alone misses the job limit", ""]
        lines += [_explain_job(model, models[model], batch) for model in missed["gram_job"]]
        lines += [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 16, fewer steps; leaves the doc alone")
    parser.add_argument("--noise", action="store_true",
                        help="only the secure noise's share of a DP step (full batch size), printed; writes nothing")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:K (default: cuda when torch sees a GPU, else cpu)")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: torch sees no CUDA GPU here")
    warnings.filterwarnings("ignore")  # Opacus's full-backward-hook notices, timm deprecations
    if args.noise:
        config = replace(FULL, device=device)
        models = {model: {"noise": _in_fresh_process(measure_noise, model, config)} for model in MODELS}
        print("\n".join(render_noise(models, config.threads, device.startswith("cuda"))))
        print(json.dumps({model: entry["noise"] for model, entry in models.items()}, indent=2), file=sys.stderr)
        return
    results = run(replace(QUICK if args.quick else FULL, device=device), args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / result_file(args.quick, device)
    out.write_text(json.dumps(results, indent=2) + "\n")
    section = render(results)
    if not args.quick:
        write_section(section_name(device), section)
    print(section)
    print(f"\nwrote {out}" + ("" if args.quick else " and its section of docs/benchmarks.md"), file=sys.stderr)


if __name__ == "__main__":
    main()
