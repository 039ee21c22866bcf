"""Accuracy without DP: tangent fine-tuning vs non-linear fine-tuning of the same blocks vs head only.

    python -m benchmarks.utility_accuracy            # full run (about 5 minutes on 2 cores)
    python -m benchmarks.utility_accuracy --quick    # smoke run; doc left alone

Goal (issue 8): the tangent model within 1 point of non-linear fine-tuning. Each method's learning
rate is chosen on a validation split carved from the training set (seed 0), then every seed trains
on the whole training set and is scored on the held-out test set. Seeds change the batch order
(the starting point is fixed: theta0, zero deltas).
"""

from __future__ import annotations

import math
import sys

from . import _utility as U
from ._plots import bar_chart

NAME = "utility_accuracy"
GOAL_POINTS = 1.0
FULL = U.Sweep(epsilons=(math.inf,), seeds=(0, 1, 2), epochs=10, batch_size=64, lr_grid_private=(),
               lr_grid_non_private=(0.003, 0.01, 0.03), tune_epsilon=math.inf)
QUICK = U.Sweep(epsilons=(math.inf,), seeds=(0, 1, 2), epochs=1, batch_size=64, lr_grid_private=(),
                lr_grid_non_private=(0.05,), tune_epsilon=math.inf, max_records=300)


def run(quick: bool, models: tuple[str, ...] = tuple(U.MODELS)) -> dict:
    return U.run_sweeps(NAME, QUICK if quick else FULL, quick, models)


def gap(entry: dict) -> float:
    """Tangent minus non-linear mean test accuracy, in points."""
    return 100 * (U.accuracies(entry, "tangent", math.inf)["mean"] - U.accuracies(entry, "nonlinear", math.inf)["mean"])


def render(results: dict) -> str:
    s = results["settings"]
    lines = U.header(results, "Accuracy without DP: tangent vs non-linear fine-tuning vs head only",
                     f"**Setup.** {U.models_text(results)} Digits: {{n}} training / {{t}} test images. "
                     f"{s['epochs']} epochs, batch {s['batch_size']}, SGD momentum {s['momentum']}, {s['loss']} loss, "
                     f"seeds {s['seeds']} (mean ± std over seeds). The learning rate of each method is the best of "
                     f"{s['lr_grid_non_private']} on a {s['validation_fraction']:.0%} validation split of the "
                     "training set (chosen: {lrs}). All three train the same way from the same cached frozen-prefix "
                     "features; non-linear fine-tuning updates the very parameters the tangent model linearizes, "
                     "with BatchNorm on its running statistics like the tangent model.")
    first = next(iter(results["models"].values()))
    lines[-2] = lines[-2].format(n=first["n_train"], t=first["n_test"],
                                 lrs="; ".join(f"{m}: {U.lr_text(e)}" for m, e in results["models"].items()))
    lines += ["| model | tangent, % | non-linear, % | head only, % | tangent − non-linear, points | goal: within "
              f"{GOAL_POINTS:g} point |", "|---|---:|---:|---:|---:|---|"]
    for name, entry in results["models"].items():
        g = gap(entry)
        verdict = "met" if g >= -GOAL_POINTS else f"**missed** by {-g - GOAL_POINTS:.1f} points"
        cells = [U.pct(U.accuracies(entry, m, math.inf)) for m in ("tangent", "nonlinear", "head")]
        lines.append(f"| {name} | {' | '.join(cells)} | {g:+.1f} | {verdict} |")
    lines += ["", U.image_link(NAME, "test accuracy per method and model"), ""]
    vit = results["models"].get("vit_small")
    if vit is not None:
        lines.append(f"The ViT is {U.RANDOM_VIT_NOTE}.")
    return "\n".join(lines)


def plot(results: dict, path) -> None:  # noqa: ANN001
    groups = {name: {U.METHODS[m]: U.accuracies(e, m, math.inf) for m in e["runs"]}
              for name, e in results["models"].items()}
    bar_chart(groups, "test accuracy (non-private), mean ± std over seeds", path)


if __name__ == "__main__":
    U.main(NAME, __doc__, run, render, plot, sys.argv[1:])
