"""Accounting tightness: epsilon from RDP, PRV and PLD for the DP configurations the benchmarks use.

    python -m benchmarks.accounting_tightness            # full run (under a minute)
    python -m benchmarks.accounting_tightness --quick    # the same configurations; doc left alone

The configurations are those of ``utility_dp`` (the whole training set, every finite target
epsilon) and of ``forgetting_cost`` (one shard of N, epsilon 8), planned with ``plan_run`` exactly
as those benchmarks plan them: sample rate q, steps T and the noise multiplier sigma calibrated
with the PLD accountant. For each, ``epsilon_bounds`` gives every accountant's upper bound at delta
and the one reported: the tightest valid upper bound. Opacus's GDP accountant is not a guarantee
and is not reported. No training runs here.
"""

from __future__ import annotations

import sys
import time

from dp_tangent.data import load_digits, split_shards
from dp_tangent.training import PrivacySpec, plan_run
from privacy_accounting import epsilon_bounds

from . import _utility as U
from . import forgetting_cost, utility_dp
from ._plots import line_panels

NAME = "accounting_tightness"
ACCOUNTANTS = ("rdp", "prv", "pld")


def configurations() -> list[dict]:
    """(benchmark, label, records, target epsilon, config) of every DP run the utility benchmarks make."""
    digits = load_digits(image_size=8)
    _, (train,) = split_shards(digits, shards=1, test_fraction=0.2, seed=0)
    sweep = utility_dp.FULL
    out = [{"benchmark": "utility_dp", "label": f"all {len(train)} training records", "records": len(train),
            "target_epsilon": eps, "config": U.train_config(sweep.epochs, 0.1, 0, sweep.batch_size)}
           for eps in sweep.epsilons if eps != float("inf")]
    f = forgetting_cost.FULL
    for shards in f.shards:
        _, parts = split_shards(digits, shards=shards, test_fraction=0.2, seed=0)
        out.append({"benchmark": "forgetting_cost", "label": f"one of {shards} shards", "records": len(parts[0]),
                    "target_epsilon": f.epsilon, "config": f.train_config()})
    return out


def run(quick: bool) -> dict:
    results = U.new_results(NAME, quick, {"delta": U.DELTA, "calibration_accountant": PrivacySpec().accountant,
                                          "accountants": list(ACCOUNTANTS)})
    rows = []
    for c in configurations():
        plan = plan_run(c["records"], PrivacySpec(epsilon=c["target_epsilon"], delta=U.DELTA), c["config"])
        start = time.perf_counter()
        bounds = epsilon_bounds(plan.event, plan.delta)
        rows.append({"benchmark": c["benchmark"], "label": c["label"], "records": c["records"],
                     "target_epsilon": c["target_epsilon"], "delta": plan.delta, "sample_rate": plan.sample_rate,
                     "steps": plan.steps, "noise_multiplier": plan.noise_multiplier,
                     "epsilon": {a: getattr(bounds, a) for a in ACCOUNTANTS}, "reported": bounds.epsilon,
                     "reported_accountant": bounds.accountant, "seconds": time.perf_counter() - start})
        U.progress(f"{c['label']}, target {c['target_epsilon']:g}: {rows[-1]['epsilon']} -> {bounds.accountant}")
    results["rows"] = rows
    return results


def tightest(row: dict) -> str:
    """The accountant with the smallest valid bound, recomputed from the figures."""
    valid = {a: e for a, e in row["epsilon"].items() if e is not None}
    return min(valid, key=valid.get)


def render(results: dict) -> str:
    s = results["settings"]
    lines = U.header(results, "Accounting tightness: RDP vs PRV vs PLD for the configurations used",
                     f"**Setup.** Every DP configuration of the utility benchmarks (`utility_dp`, `forgetting_cost`) "
                     f"planned by `plan_run`: σ calibrated with the {s['calibration_accountant'].upper()} accountant "
                     f"for the target ε at δ = {s['delta']:g}, then `epsilon_bounds` evaluates every accountant at "
                     "that (q, T, σ). All three are valid upper bounds under add-or-remove-one; the report uses the "
                     "smallest (marked in bold). Opacus's GDP accountant is a CLT approximation, not a guarantee, "
                     "and is not reported.")
    lines += ["| benchmark | run | target ε | q | steps | σ | ε RDP | ε PRV | ε PLD | reported (accountant) | "
              "RDP / reported |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results["rows"]:
        cells = [f"**{r['epsilon'][a]:.3f}**" if a == r["reported_accountant"] else f"{r['epsilon'][a]:.3f}"
                 for a in ACCOUNTANTS]
        lines.append(f"| {r['benchmark']} | {r['label']} | {r['target_epsilon']:g} | {r['sample_rate']:.4f} | "
                     f"{r['steps']} | {r['noise_multiplier']:.3f} | {' | '.join(cells)} | {r['reported']:.3f} "
                     f"({r['reported_accountant']}) | {r['epsilon']['rdp'] / r['reported']:.2f}x |")
    agree = all(r["reported_accountant"] == tightest(r) and r["reported"] == r["epsilon"][tightest(r)]
                for r in results["rows"])
    within = all(r["reported"] <= r["target_epsilon"] for r in results["rows"])
    chosen = sorted({r["reported_accountant"] for r in results["rows"]})
    lines += ["", U.image_link(NAME, "epsilon per accountant against the target"), "",
              f"The reported ε is the minimum of the three bounds in {'every' if agree else '**not every**'} row "
              f"(accountant chosen: {', '.join(chosen)}), and it is {'within' if within else '**above**'} the "
              "target in every row. RDP overstates the guarantee by the factor in the last column."]
    return "\n".join(lines)


def plot(results: dict, path) -> None:  # noqa: ANN001
    rows = [r for r in results["rows"] if r["benchmark"] == "utility_dp"]
    xs = [r["target_epsilon"] for r in rows]
    panels = {"utility_dp configurations": {
        a.upper(): (xs, [{"mean": r["epsilon"][a], "std": 0.0} for r in rows]) for a in ACCOUNTANTS}}
    panels["utility_dp configurations"]["target"] = (xs, [{"mean": x, "std": 0.0} for x in xs])
    line_panels(panels, "target ε (σ calibrated with PLD)", "ε upper bound at δ", path, scale=1.0)


if __name__ == "__main__":
    U.main(NAME, __doc__, run, render, plot, sys.argv[1:])
