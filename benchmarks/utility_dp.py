"""Accuracy under DP: DP tangent vs DP non-linear fine-tuning of the same blocks vs DP head only.

    python -m benchmarks.utility_dp            # full run (about 10 minutes on 2 cores)
    python -m benchmarks.utility_dp --quick    # smoke run; doc left alone

Epsilon in {0.5, 1, 2, 4, 8, inf} at delta = 1e-5 (below 1/n). Every method trains with Opacus
(Poisson sampling, clipping at C, ghost clipping) with the noise multiplier ``plan_run`` calibrates
for the target with the PLD accountant, from the same sample rate and steps, so the three methods
of one epsilon have the same (q, steps, sigma) and hence the same guarantee; the epsilon reported
is the tightest valid bound (see the accounting_tightness section). The private learning rate of
each method is chosen on a validation split at one epsilon and used for every finite epsilon
(that choice is not charged to the privacy budget, as usual in DP benchmarks; said in the doc).
"""

from __future__ import annotations

import math
import sys

from . import _utility as U
from ._plots import line_panels

NAME = "utility_dp"
EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
FULL = U.Sweep(epsilons=EPSILONS, seeds=(0, 1, 2), epochs=3, batch_size=128, lr_grid_private=(0.05, 0.2, 0.8),
               lr_grid_non_private=(0.003, 0.01, 0.03), tune_epsilon=2.0)
QUICK = U.Sweep(epsilons=(1.0, math.inf), seeds=(0, 1, 2), epochs=1, batch_size=64, lr_grid_private=(0.5,),
                lr_grid_non_private=(0.05,), tune_epsilon=1.0, max_records=300)


def run(quick: bool, models: tuple[str, ...] = tuple(U.MODELS)) -> dict:
    return U.run_sweeps(NAME, QUICK if quick else FULL, quick, models)


def _epsilons(results: dict) -> list[float]:
    return [U.from_json_epsilon(e) for e in results["settings"]["epsilons"]]


def _verdicts(entry: dict, epsilons: list[float]) -> list[str]:
    """Per finite epsilon: which method is best, and the tangent's gap to non-linear (from the numbers)."""
    out = []
    for eps in epsilons:
        stats = {m: U.accuracies(entry, m, eps)["mean"] for m in entry["runs"]}
        best = max(stats, key=stats.get)
        out.append(f"ε={U.eps_label(eps)}: best {best}, tangent − non-linear {100 * (stats['tangent'] - stats['nonlinear']):+.1f}")
    return out


def render(results: dict) -> str:
    s = results["settings"]
    eps = _epsilons(results)
    lines = U.header(results, "Accuracy under DP: tangent vs non-linear vs head only, against epsilon",
                     f"**Setup.** {U.models_text(results)} δ = {s['delta']:g}; {s['epochs']} epochs, expected batch "
                     f"{s['batch_size']} (Poisson), clipping C = {s['max_grad_norm']}, {s['grad_sample_mode']} clipping, "
                     f"SGD momentum {s['momentum']}, {s['loss']} loss; seeds {s['seeds']} (noise, sampling and "
                     f"batch order; mean ± std). The noise multiplier is calibrated by `plan_run` with the "
                     f"{s['accountant_for_noise'].upper()} accountant for the target ε from the same sample rate "
                     "and steps for all three methods. Learning rates: the best of "
                     f"{s['lr_grid_private']} on a {s['validation_fraction']:.0%} validation split at "
                     f"ε = {s['tune_epsilon']:g} for every finite ε, and of {s['lr_grid_non_private']} without DP "
                     "for ε = ∞ (the choice is not charged to the privacy budget, as usual in DP benchmarks).")
    lines += ["| model | method | " + " | ".join(f"ε={U.eps_label(e)}" for e in eps) + " |",
              "|---|---|" + "---:|" * len(eps)]
    for name, entry in results["models"].items():
        for method in entry["runs"]:
            cells = [U.pct(U.accuracies(entry, method, e)) for e in eps]
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "Test accuracy in %, mean ± std over seeds. Noise multipliers used (same for every method): "
              + "; ".join(f"{name}: " + ", ".join(
                  f"ε={U.eps_label(e)} σ={entry['runs']['tangent'][str(U.json_epsilon(e))][0]['noise_multiplier']:.2f}"
                  for e in eps if not math.isinf(e)) for name, entry in results["models"].items())
              + f". Learning rates chosen: " + "; ".join(f"{m}: {U.lr_text(e)}" for m, e in results["models"].items())
              + ".", "", U.image_link(NAME, "test accuracy against epsilon"), ""]
    for name, entry in results["models"].items():
        lines.append(f"- **{name}**: " + "; ".join(_verdicts(entry, [e for e in eps if not math.isinf(e)])) + " points.")
    if "vit_small" in results["models"]:
        lines += ["", f"The ViT is {U.RANDOM_VIT_NOTE}."]
    return "\n".join(lines)


def plot(results: dict, path) -> None:  # noqa: ANN001
    eps = _epsilons(results)
    xs = list(range(len(eps)))
    panels = {name: {U.METHODS[m]: (xs, [U.accuracies(entry, m, e) for e in eps]) for m in entry["runs"]}
              for name, entry in results["models"].items()}
    line_panels(panels, "ε (δ = 1e-5)", "test accuracy, %", path, xticklabels=[U.eps_label(e) for e in eps])


if __name__ == "__main__":
    U.main(NAME, __doc__, run, render, plot, sys.argv[1:])
