"""Composition: N tangent components composed (mean of deltas) vs the paragon vs an ensemble of N non-linear models.

    python -m benchmarks.composition            # full run (about 10 minutes on 2 cores)
    python -m benchmarks.composition --quick    # smoke run; doc left alone

For N in {1, 2, 4, 8} disjoint shards of the training set, split at random (data-incremental) or
by blocks of labels (class-incremental, as in Tangent Model Composition), non-private as in the
TMC paper's comparison: one tangent component per shard, composed by the mean of their deltas
(one model); the paragon is the tangent model trained on all the data (N = 1); the ensemble
averages the logits of N non-linear models fine-tuned on the shards. Published claim compared
against (TMC, Liu & Soatto 2023): composition beats ensembling non-linear models by about 4
points at 2.5x-10x lower inference cost. Inference time per example is measured from raw
images (the full network) on the test set; the ensemble runs N full networks, and also, as a
cheaper variant, the shared frozen prefix once plus N suffixes.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn

from dp_tangent.components import weighted_sum
from dp_tangent.data import split_shards

from . import _utility as U
from ._plots import line_panels

NAME = "composition"
CLAIM_POINTS, CLAIM_COST = 4.0, (2.5, 10.0)


@dataclass(frozen=True)
class Config:
    shards: tuple[int, ...] = (1, 2, 4, 8)
    splits: tuple[str, ...] = ("random", "label")
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    batch_size: int = 64
    lr_grid: tuple[float, ...] = (0.003, 0.01, 0.03)
    timing_repeats: int = 5
    max_records: int | None = None


FULL = Config()
QUICK = Config(shards=(1, 2), seeds=(0, 1, 2), epochs=1, lr_grid=(0.01,), timing_repeats=1, max_records=300)


def shard_rows(prepared: U.Prepared, shards: int, by: str, seed: int) -> list[torch.Tensor]:
    """Row indices of the training set for each shard, from ``dp_tangent.data.split_shards``."""
    index = {rid: i for i, rid in enumerate(prepared.train.record_ids)}
    _, parts = split_shards(prepared.train, shards=shards, test_fraction=0.0, seed=seed, by=by)
    return [torch.tensor([index[r] for r in part.record_ids]) for part in parts]


def _median_seconds(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inference_times(prepared: U.Prepared, shards: int, repeats: int) -> dict[str, float]:
    """Seconds per test example: composed tangent, N full non-linear networks, shared prefix + N suffixes."""
    x = prepared.test.inputs
    tangent, suffix = prepared.tangent, U.NonLinearSuffix(prepared.base, prepared.tangent)
    suffixes = [suffix] * shards  # same cost as N different fine-tuned suffixes
    nets: list[nn.Module] = [suffix.net] * shards

    def ensemble_full() -> None:
        with torch.no_grad():
            torch.stack([net(x) for net in nets]).mean(0)

    def ensemble_shared() -> None:
        with torch.no_grad():
            h = tangent.features(x)
            torch.stack([s(h) for s in suffixes]).mean(0)

    def composed() -> None:
        with torch.no_grad():
            tangent(x)

    n = len(x)
    return {"composed_tangent": _median_seconds(composed, repeats) / n,
            "ensemble_full": _median_seconds(ensemble_full, repeats) / n,
            "ensemble_shared_prefix": _median_seconds(ensemble_shared, repeats) / n}


def one_setting(prepared: U.Prepared, shards: int, by: str, seed: int, lrs: dict[str, float], cfg: Config) -> dict:
    """Train N tangent components and N non-linear models on the shards of one split; score both."""
    h_t, h_n = prepared.inputs("tangent", "test"), prepared.inputs("nonlinear", "test")
    y = prepared.test.targets
    deltas, tangent_logits, nonlinear_logits = [], [], []
    for rows in shard_rows(prepared, shards, by, seed):
        cfg_t = U.train_config(cfg.epochs, lrs["tangent"], seed, cfg.batch_size)
        module, _, _ = U.fit_method(prepared, "tangent", rows, math.inf, cfg_t)
        deltas.append({n: p.detach().clone() for n, p in prepared.tangent.named_deltas()})
        tangent_logits.append(U.logits(module, h_t))
        module, _, _ = U.fit_method(prepared, "nonlinear", rows, math.inf, replace(cfg_t, lr=lrs["nonlinear"]))
        nonlinear_logits.append(U.logits(module, h_n))
    composed = weighted_sum(deltas, [1.0 / shards] * shards)
    prepared.tangent.load_deltas(composed)
    composed_logits = U.logits(prepared.tangent.on_features(), h_t)
    mean_of_components = torch.stack(tangent_logits).mean(0)
    return {"shards": shards, "split": by, "seed": seed,
            "composed_accuracy": U.accuracy_of(composed_logits, y),
            "ensemble_accuracy": U.accuracy_of(torch.stack(nonlinear_logits).mean(0), y),
            "component_accuracy_mean": statistics.fmean(U.accuracy_of(t, y) for t in tangent_logits),
            "composed_vs_logit_average_max_abs_diff": (composed_logits - mean_of_components).abs().max().item()}


def run(quick: bool, models: tuple[str, ...] = tuple(U.MODELS)) -> dict:
    cfg = QUICK if quick else FULL
    results = U.new_results(NAME, quick, {**asdict(cfg), "loss": "cross_entropy", "momentum": 0.9,
                                          "composition": "mean of deltas", "ensemble": "mean of logits"})
    for name in models:
        prepared = U.prepare(name, cfg.max_records)
        base_cfg = U.train_config(cfg.epochs, cfg.lr_grid[0], 0, cfg.batch_size)
        lrs, scores = {}, {}
        for method in ("tangent", "nonlinear"):
            lrs[method], scores[method] = U.choose_lr(prepared, method, cfg.lr_grid, math.inf, base_cfg)
        U.progress(f"{name}: learning rates {lrs}")
        rows = []
        for seed in cfg.seeds:
            for shards in cfg.shards:
                for by in cfg.splits if shards > 1 else cfg.splits[:1]:
                    rows.append(one_setting(prepared, shards, by, seed, lrs, cfg))
                    U.progress(f"{name}: seed {seed}, {shards} shards by {by}: composed "
                               f"{rows[-1]['composed_accuracy']:.3f}, ensemble {rows[-1]['ensemble_accuracy']:.3f}")
        timing = {str(n): inference_times(prepared, n, cfg.timing_repeats) for n in cfg.shards}
        results["models"][name] = {"description": prepared.spec.description, "trainable": prepared.spec.trainable,
                                   "pretrained": prepared.spec.pretrained, "n_train": len(prepared.train),
                                   "n_test": len(prepared.test),
                                   "lr": {"chosen": lrs, "validation_accuracy": scores}, "runs": rows,
                                   "inference_seconds_per_example": timing}
    return results


# -- report ----------------------------------------------------------------------------------------------
def stats(entry: dict, shards: int, by: str, key: str) -> dict[str, float]:
    """Over seeds; N = 1 has no split (the paragon), so any ``by`` returns it."""
    return U.summary([r[key] for r in entry["runs"] if r["shards"] == shards and (shards == 1 or r["split"] == by)])


def render(results: dict) -> str:
    s = results["settings"]
    lines = U.header(results, "Composition vs paragon vs ensembles of non-linear models",
                     f"**Setup.** {U.models_text(results)} Non-private, {s['epochs']} epochs per component at batch "
                     f"{s['batch_size']}, SGD momentum {s['momentum']}, {s['loss']} loss; each method's learning "
                     f"rate is the best of {', '.join(map(str, s['lr_grid']))} on a validation split at N = 1 (chosen: "
                     + "; ".join(f"{m}: tangent {e['lr']['chosen']['tangent']:g}, non-linear "
                                 f"{e['lr']['chosen']['nonlinear']:g}" for m, e in results["models"].items())
                     + f"). Seeds {', '.join(map(str, s['seeds']))} (shard assignment of the random split, batch order); mean ± std. "
                     "Composed: mean of the N components' deltas (one tangent model). Paragon: the tangent model "
                     "trained on all the training data (N = 1). Ensemble: mean of the logits of N non-linear models "
                     "fine-tuned on the same shards.")
    lines += ["| model | split | N | composed tangent, % | ensemble of N non-linear, % | composed − ensemble, points "
              "| mean single component, % | paragon (tangent, all data), % | inference μs/example: composed / "
              "ensemble (N full nets) / ensemble (shared prefix) |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    verdicts = []
    for name, entry in results["models"].items():
        paragon = stats(entry, 1, "random", "composed_accuracy")
        timing = entry["inference_seconds_per_example"]
        for by in s["splits"]:
            for n in s["shards"]:
                if n == 1 and by != s["splits"][0]:
                    continue
                comp, ens = stats(entry, n, by, "composed_accuracy"), stats(entry, n, by, "ensemble_accuracy")
                diff = 100 * (comp["mean"] - ens["mean"])
                t = timing[str(n)]
                lines.append(f"| {name} | {by if n > 1 else '—'} | {n} | {U.pct(comp)} | {U.pct(ens)} | {diff:+.1f} | "
                             f"{U.pct(stats(entry, n, by, 'component_accuracy_mean'))} | {U.pct(paragon)} | "
                             f"{1e6 * t['composed_tangent']:.0f} / {1e6 * t['ensemble_full']:.0f} / "
                             f"{1e6 * t['ensemble_shared_prefix']:.0f} |")
                if n > 1:
                    verdicts.append((name, by, n, diff, t["ensemble_full"] / t["composed_tangent"]))
        exact = max(r["composed_vs_logit_average_max_abs_diff"] for r in entry["runs"])
        lines.append(f"| {name} | | | composed logits = average of the components' logits, max abs difference "
                     f"{exact:.1e} | | | | | |")
    lines += ["", U.image_link(NAME, "composed vs ensemble vs paragon against N"), "",
              f"**Against the published claim** (composition beats ensembling by about {CLAIM_POINTS:g} points at "
              f"{CLAIM_COST[0]:g}x–{CLAIM_COST[1]:g}x lower inference cost):", ""]
    for name, by, n, diff, ratio in verdicts:
        if diff >= CLAIM_POINTS - 1:
            acc = "beats ensembling by about the claimed margin or more"
        elif diff >= 1:
            acc = f"beats ensembling, by less than the claimed ~{CLAIM_POINTS:g} points"
        elif diff > -1:
            acc = "ties with ensembling (within 1 point)"
        else:
            acc = "**loses to** ensembling"
        cost = f"{_cheaper(ratio, 1.0)} N full networks"
        lines.append(f"- {name}, {by}, N = {n}: composition {acc} ({diff:+.1f} points); "
                     f"one composed tangent model is {cost}.")
    lines += ["", _cost_text(results)]
    if "vit_small" in results["models"]:
        lines += ["", f"The ViT is {U.RANDOM_VIT_NOTE}."]
    return "\n".join(lines)


def _cheaper(other: float, composed: float) -> str:
    return f"{other / composed:.2f}x cheaper than" if other >= composed else f"**{composed / other:.2f}x dearer** than"


def _cost_text(results: dict) -> str:
    """Inference cost in words, computed from the timings."""
    s = results["settings"]
    parts = []
    for name, entry in results["models"].items():
        t = entry["inference_seconds_per_example"]
        one, top = t[str(s["shards"][0])], t[str(s["shards"][-1])]
        parts.append(f"{name}: the composed tangent model costs {one['composed_tangent'] / one['ensemble_full']:.2f}x "
                     f"one plain forward of the network; at N = {s['shards'][-1]} it is "
                     f"{_cheaper(top['ensemble_full'], top['composed_tangent'])} N full networks and "
                     f"{_cheaper(top['ensemble_shared_prefix'], top['composed_tangent'])} an ensemble that shares the "
                     "frozen prefix")
    return ("One composed tangent model runs the frozen prefix and one dual (forward-mode) pass over the linearized "
            "suffix, whatever N; an ensemble's cost grows with N. " + "; ".join(parts) + ". Per example, the whole "
            f"test set as one batch, median of {s['timing_repeats']} runs after a warm-up, on the 2 cores.")


def plot(results: dict, path) -> None:  # noqa: ANN001
    s = results["settings"]
    panels = {}
    for name, entry in results["models"].items():
        for by in s["splits"]:
            ns = list(s["shards"])
            panels[f"{name}, {by} split"] = {
                "composed tangent": (ns, [stats(entry, n, by, "composed_accuracy") for n in ns]),
                "ensemble of N non-linear": (ns, [stats(entry, n, by, "ensemble_accuracy") for n in ns]),
                "paragon (tangent, all data)": (ns, [stats(entry, 1, by, "composed_accuracy") for _ in ns])}
    line_panels(panels, "N shards", "test accuracy, %", path, xticklabels=[str(n) for n in s["shards"]])


if __name__ == "__main__":
    U.main(NAME, __doc__, run, render, plot, sys.argv[1:])
