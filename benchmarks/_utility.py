"""Shared setup of the utility benchmarks: models, data, cached features, methods, statistics, output.

Every utility benchmark runs on the embedded default data (scikit-learn's digits, ``load_digits``)
with a fixed held-out test set (20%, split seed 0) and two backbones:

* ``efficientnet_lite0``: the packaged ImageNet EfficientNet-Lite0 at 48x48 (the headline);
* ``vit_small``: a small timm ViT, **randomly initialised** (no pretrained ViT weights install
  offline), so its numbers show cost and the tangent-vs-non-linear gap around a random base, not
  pretrained utility.

The frozen prefix is computed once per model (``tangent.features``) and every method trains from
those cached features: the tangent model (``tangent.on_features()``), the ordinary network's suffix
(:class:`benchmarks._baselines.NonLinearSuffix`, same parameters), and the head-only linear probe.
"""

from __future__ import annotations

# First, before torch loads its OpenMP runtime: _measure sets the OpenMP wait policy.
from ._measure import load_average, machine  # isort: skip

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn

from dp_tangent import TangentModel, linearize
from dp_tangent.backbones import create_backbone
from dp_tangent.data import RecordSet, load_digits, split_shards
from dp_tangent.training.losses import ConvexLoss
from dp_tangent.training import Plan, PrivacySpec, TrainConfig, plan_run

from ._baselines import NonLinearSuffix, train
from ._doc import write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
IMAGES = ROOT / "docs" / "images" / "benchmarks"
THREADS = 2
DELTA = 1e-5
METHODS = {
    "tangent": "tangent fine-tuning (dp-tangent)",
    "nonlinear": "non-linear fine-tuning of the same parameters",
    "head": "head only (linear probe)",
    "lora": "LoRA adapters on the same blocks' linear layers, and the head (peft)",
}
IMAGE_METHODS = ("tangent", "nonlinear", "head")
RANDOM_VIT_NOTE = ("randomly initialised (no pretrained ViT weights install offline), so its numbers show cost and "
                   "the tangent-vs-non-linear gap around a random base, not pretrained utility")


@dataclass(frozen=True)
class ModelSpec:
    description: str
    build: Callable[[], nn.Module]
    image_size: int | None  # None: not an image model
    trainable: str
    pretrained: bool


def _vit() -> nn.Module:
    torch.manual_seed(0)  # random initialisation, fixed
    return create_backbone("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=16, patch_size=4,
                           depth=3)


MODELS = {
    "efficientnet_lite0": ModelSpec(
        "EfficientNet-Lite0, packaged ImageNet weights, 48x48 inputs", lambda: create_backbone(
            "efficientnet_lite0", pretrained="packaged", num_classes=10), 48, "blocks[-1:]", True),
    "vit_small": ModelSpec(
        f"timm vit_tiny_patch16_224 at 16x16, patch 4, depth 3 (17 tokens, width 192), {RANDOM_VIT_NOTE}",
        _vit, 16, "blocks[-1:]", False),
}


def train_config(epochs: int, lr: float, seed: int, batch_size: int, mode: str = "ghost") -> TrainConfig:
    """The one optimiser setting of every method (SGD, momentum 0.9, cross-entropy; ghost clipping unless
    ``mode`` says otherwise: the clipped sums are exact in every mode, so the choice changes cost only)."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, physical_batch_size=batch_size, lr=lr, seed=seed,
                       loss=ConvexLoss("cross_entropy"), grad_sample_mode=mode)


@dataclass
class StepClock:
    """When each optimizer step of one run ended (the train loop's progress callback), to time the steps
    apart from the set-up before the first one (e.g. the NTK Gram precompute)."""

    started: float = field(default_factory=time.perf_counter)
    ends: list[float] = field(default_factory=list)

    def __call__(self, done: int, total: int) -> None:
        self.ends.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        """Mean time of the steps after the first (the first also pays one-off costs)."""
        if len(self.ends) < 2:
            return math.nan
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)

    def setup_seconds(self) -> float:
        """Time before the first step's own work began: start to first step end, less one mean step."""
        return (self.ends[0] - self.started - self.seconds_per_step()) if len(self.ends) > 1 else math.nan


@dataclass
class Prepared:
    """One model's base network, tangent models (blocks and head) and cached features of train and test."""

    name: str
    spec: ModelSpec
    base: nn.Module
    tangent: TangentModel
    head: TangentModel
    train: RecordSet
    test: RecordSet
    features: dict[str, dict[str, torch.Tensor]]  # {"tangent"|"head": {"train"|"test": h}}

    def module(self, method: str) -> nn.Module:
        """A fresh, untrained model of ``method`` taking that method's cached features."""
        if method == "nonlinear":
            return NonLinearSuffix(self.base, self.tangent)
        if method == "lora":
            from ._lora import LoRASuffix  # peft loads only where LoRA runs

            return LoRASuffix(self.base, self.tangent)
        tangent = self.head if method == "head" else self.tangent
        tangent.load_deltas({n: torch.zeros_like(p) for n, p in tangent.named_deltas()})
        return tangent.on_features()

    def inputs(self, method: str, part: str) -> torch.Tensor:
        return self.features["head" if method == "head" else "tangent"][part]


def prepare(name: str, max_records: int | None = None) -> Prepared:
    """Build, linearize and cache features for ``name`` (``max_records``: first N digits, for tests)."""
    spec = MODELS[name]
    digits = load_digits(image_size=spec.image_size)
    if max_records:
        digits = digits.subset(range(min(max_records, len(digits))))
    test, (train_set,) = split_shards(digits, shards=1, test_fraction=0.2, seed=0)
    base = spec.build().eval()
    tangent, head = linearize(base, spec.trainable), linearize(base, "head")
    features = {key: {"train": t.features(train_set.inputs), "test": t.features(test.inputs)}
                for key, t in (("tangent", tangent), ("head", head))}
    return Prepared(name, spec, base, tangent, head, train_set, test, features)


def logits(module: nn.Module, h: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    module.train(False)
    with torch.no_grad():
        return torch.cat([module(h[i:i + batch_size]) for i in range(0, len(h), batch_size)])


def accuracy_of(out: torch.Tensor, targets: torch.Tensor) -> float:
    return (out.argmax(-1) == targets).float().mean().item()


def fit_method(prepared: Prepared, method: str, rows: torch.Tensor | None, epsilon: float, config: TrainConfig,
               part: str = "train", clock: StepClock | None = None) -> tuple[nn.Module, Plan, float]:
    """Train a fresh model of ``method`` on ``rows`` of the training set; returns it, the plan and seconds
    (``clock``, if given, times each step)."""
    h, y = prepared.inputs(method, part), getattr(prepared, part).targets
    if rows is not None:
        h, y = h[rows], y[rows]
    privacy = PrivacySpec(epsilon=epsilon, delta=DELTA)
    plan = plan_run(len(y), privacy, config)
    module = prepared.module(method)
    start = time.perf_counter()
    if clock is not None:
        clock.started = start
    train(module, h, y, plan, privacy, config, progress=clock)
    return module, plan, time.perf_counter() - start


def test_accuracy(prepared: Prepared, method: str, module: nn.Module) -> float:
    return accuracy_of(logits(module, prepared.inputs(method, "test")), prepared.test.targets)


def validation_split(n: int, fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, validation) of the training set for choosing a learning rate."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(fraction * n))
    return order[k:].sort().values, order[:k].sort().values


def choose_lr(prepared: Prepared, method: str, grid: Sequence[float], epsilon: float, config: TrainConfig
              ) -> tuple[float, dict[str, float]]:
    """The grid's learning rate with the best validation accuracy (a validation split carved from train)."""
    fit_rows, val_rows = validation_split(len(prepared.train))
    h_val, y_val = prepared.inputs(method, "train")[val_rows], prepared.train.targets[val_rows]
    scores = {}
    for lr in grid:
        module, _, _ = fit_method(prepared, method, fit_rows, epsilon, replace(config, lr=lr))
        scores[str(lr)] = accuracy_of(logits(module, h_val), y_val)
    best = max(grid, key=lambda lr: (scores[str(lr)], -lr))
    return best, scores


# -- statistics and formatting ------------------------------------------------------------------------------
def summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def pct(s: dict[str, float]) -> str:
    """``93.1 ± 0.4`` (percent, mean ± std over seeds)."""
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def eps_label(epsilon: float) -> str:
    return "∞" if math.isinf(epsilon) else f"{epsilon:g}"


def json_epsilon(epsilon: float) -> float | str:
    return "inf" if math.isinf(epsilon) else epsilon


def from_json_epsilon(value: float | str) -> float:
    return math.inf if value == "inf" else float(value)


def header(results: dict, title: str, what: str) -> list[str]:
    """Section title, provenance line and machine line, all from the JSON."""
    m = results["machine"]
    quick = " --quick" if results["quick"] else ""
    v = m["versions"]
    return [
        f"## {title}", "",
        f"_Generated by `python -m benchmarks.{results['benchmark']}{quick}` at {results['created']} (git {m['git']}) "
        f"in {results['wall_seconds']:.0f} s; do not edit by hand. Raw numbers: `benchmarks/results/"
        f"{result_file(results['benchmark'], results['quick']).name}`._", "",
        f"**Machine.** {m['cpu']}, {m['usable_cpus']} usable CPUs, {THREADS} torch threads; torch {v['torch']}, "
        f"opacus {v['opacus']}, timm {v['timm']}; 1-minute load average {results['load_average_at_start']:.1f} at "
        f"the start, {results['load_average_at_end']:.1f} at the end.", "", what, "",
    ]


def models_text(results: dict) -> str:
    return " ".join(f"**{name}**: {entry['description']}; trainable `{entry['trainable']}`."
                    for name, entry in results["models"].items())


# -- output --------------------------------------------------------------------------------------------------
def result_file(name: str, quick: bool) -> Path:
    return RESULTS / (f"{name}.quick.json.tmp" if quick else f"{name}.json")


def image_path(name: str, quick: bool) -> Path:
    """PNG under docs/images/benchmarks (quick runs write to benchmarks/results, git-ignored)."""
    return RESULTS / f"{name}.quick.png.tmp" if quick else IMAGES / f"{name}.png"


def image_link(name: str, alt: str) -> str:
    return f"![{alt}](images/benchmarks/{name}.png)"


def new_results(name: str, quick: bool, settings: dict) -> dict:
    return {"benchmark": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": quick,
            "settings": settings, "load_average_at_start": load_average(), "models": {}}


def finish(results: dict, started: float) -> dict:
    results["load_average_at_end"] = load_average()
    results["wall_seconds"] = time.perf_counter() - started
    results["machine"] = machine(ROOT)
    return results


def main(name: str, doc: str, run: Callable[[bool], dict], render: Callable[[dict], str],
         plot: Callable[[dict, Path], None] | None, argv: list[str] | None = None) -> dict:
    """``--quick``: tiny sizes, writes ``NAME.quick.json.tmp`` and leaves the doc alone; else JSON, PNG, doc."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run at tiny sizes; leaves the doc alone")
    parser.add_argument("--render", action="store_true",
                        help="no run: regenerate the doc section and plot from the recorded JSON")
    args = parser.parse_args(argv)
    out = result_file(name, args.quick)
    if args.render:
        results = json.loads(out.read_text())
    else:
        import warnings
        warnings.filterwarnings("ignore")  # Opacus's secure-RNG and hook notices, timm deprecations
        torch.set_num_threads(THREADS)  # in the benchmark process only (tests keep their own setting)
        started = time.perf_counter()
        results = finish(run(args.quick), started)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    if plot is not None:
        png = image_path(name, args.quick)
        png.parent.mkdir(parents=True, exist_ok=True)
        plot(results, png)
    section = render(results)
    if not args.quick:
        write_section(name, section)
    print(section)
    print(("rendered from " if args.render else "wrote ") + f"{out}" + ("" if args.quick else "; section of docs/benchmarks.md written"), file=sys.stderr)
    return results


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the accuracy sweep shared by utility_accuracy and utility_dp --------------------------------------------
@dataclass(frozen=True)
class Sweep:
    """Methods x epsilons x seeds on one model; learning rates chosen per method on a validation split."""

    epsilons: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int
    lr_grid_private: tuple[float, ...]
    lr_grid_non_private: tuple[float, ...]
    tune_epsilon: float  # the private learning rate is chosen at this epsilon and used for every finite one
    methods: tuple[str, ...] = IMAGE_METHODS
    max_records: int | None = None
    tangent_mode: str = "ghost"  # the tangent's clipping mode (the others use Opacus ghost clipping)

    def config(self, method: str, lr: float, seed: int) -> TrainConfig:
        return train_config(self.epochs, lr, seed, self.batch_size,
                            self.tangent_mode if method == "tangent" else "ghost")

    def settings(self) -> dict:
        return {"epsilons": [json_epsilon(e) for e in self.epsilons], "seeds": list(self.seeds),
                "epochs": self.epochs, "batch_size": self.batch_size, "lr_grid_private": list(self.lr_grid_private),
                "lr_grid_non_private": list(self.lr_grid_non_private), "tune_epsilon": self.tune_epsilon,
                "methods": {m: METHODS[m] for m in self.methods}, "delta": DELTA, "momentum": 0.9,
                "loss": "cross_entropy", "grad_sample_mode": "ghost", "tangent_grad_sample_mode": self.tangent_mode,
                "max_grad_norm": PrivacySpec().max_grad_norm,
                "accountant_for_noise": PrivacySpec().accountant, "max_records": self.max_records,
                "test_fraction": 0.2, "validation_fraction": 0.2}


def run_sweep(name: str, sweep: Sweep) -> dict:
    """Every (method, epsilon, seed) of ``sweep`` on model ``name``: raw test accuracies and their plans."""
    return sweep_prepared(prepare(name, sweep.max_records), sweep)


def sweep_prepared(prepared: Prepared, sweep: Sweep) -> dict:
    """Every (method, epsilon, seed) of ``sweep`` on ``prepared``: raw test accuracies, their plans, and
    the time of each run's steps (per epoch) and of its set-up before the first step."""
    name = prepared.name
    entry: dict = {"description": prepared.spec.description, "trainable": prepared.spec.trainable,
                   "pretrained": prepared.spec.pretrained, "n_train": len(prepared.train),
                   "n_test": len(prepared.test), "lr": {}, "runs": {}}
    for method in sweep.methods:
        entry["lr"][method], entry["runs"][method] = {}, {}
        chosen: dict[bool, float] = {}
        for private in sorted({not math.isinf(e) for e in sweep.epsilons}):
            grid = sweep.lr_grid_private if private else sweep.lr_grid_non_private
            tune_at = sweep.tune_epsilon if private else math.inf
            progress(f"{name}/{method}: choosing the learning rate at epsilon {eps_label(tune_at)} from {grid}")
            chosen[private], scores = choose_lr(prepared, method, grid, tune_at, sweep.config(method, grid[0], 0))
            entry["lr"][method]["private" if private else "non_private"] = {
                "chosen": chosen[private], "tuned_at_epsilon": json_epsilon(tune_at), "validation_accuracy": scores}
        for epsilon in sweep.epsilons:
            lr = chosen[not math.isinf(epsilon)]
            runs = []
            for seed in sweep.seeds:
                clock = StepClock()
                module, plan, seconds = fit_method(prepared, method, None, epsilon, sweep.config(method, lr, seed),
                                                   clock=clock)
                runs.append({"seed": seed, "accuracy": test_accuracy(prepared, method, module), "seconds": seconds,
                             "seconds_per_epoch": clock.seconds_per_step() * plan.steps / sweep.epochs,
                             "setup_seconds": clock.setup_seconds(), "lr": lr,
                             "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                             "steps": plan.steps, "delta": plan.delta})
            progress(f"{name}/{method}: epsilon {eps_label(epsilon)}: "
                     f"{pct(summary([r['accuracy'] for r in runs]))}% ({sum(r['seconds'] for r in runs):.0f} s)")
            entry["runs"][method][str(json_epsilon(epsilon))] = runs
    return entry


def run_sweeps(benchmark: str, sweep: Sweep, quick: bool, models: Sequence[str]) -> dict:
    """``sweep`` on every model: the results of ``utility_accuracy`` and ``utility_dp``."""
    results = new_results(benchmark, quick, sweep.settings())
    for name in models:
        results["models"][name] = run_sweep(name, sweep)
    return results


def accuracies(entry: dict, method: str, epsilon: float) -> dict[str, float]:
    return summary([r["accuracy"] for r in entry["runs"][method][str(json_epsilon(epsilon))]])


def lr_text(entry: dict) -> str:
    parts = []
    for method, by in entry["lr"].items():
        parts += [f"{method} {'DP' if key == 'private' else 'non-private'} {v['chosen']:g}" for key, v in by.items()]
    return ", ".join(parts)
