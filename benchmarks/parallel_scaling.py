"""Wall time to train 4 DP components of the embedded default with 1 vs 2 local workers.

    python -m benchmarks.parallel_scaling            # full run: 3 rounds, writes JSON and the doc section
    python -m benchmarks.parallel_scaling --quick    # smoke run: 1 round, fewer epochs, doc left alone
    python -m benchmarks.parallel_scaling --render   # the doc section again from the recorded JSON

The embedded default recipe (packaged EfficientNet-Lite0, scikit-learn digits at 48 px, epsilon 8,
4 random shards), with two workloads: its own ``head`` (a DP linear probe on cached features: light,
so start-up costs weigh) and ``blocks[-1:]`` (TAFT-1: the last stage linearized too, fewer epochs:
heavy). Cases, each in a fresh workspace through
``Workspace.train_all`` (planning, all-or-nothing reservation, training, atomic writes, audit log):

* ``serial``: in this process, torch threads = all cores;
* ``local-1``: one worker process with all cores' threads;
* ``local-2``: two worker processes, cores // 2 threads each.

Times include starting the worker processes (importing torch, timm and opacus there). Cases are
interleaved round by round so that load from other work hits them alike; the figure is the
median over rounds. The ``deltas_sha256`` of each case is recorded; with the recipe's secure noise (fresh
secret keys every run, as users run it) no two runs agree, so which executors agree bit for bit at a
thread count is the test suite's to check, with seeded noise (see docs/parallel-training.md).
A full run takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from dp_tangent.training.executors import Executor, available_cores, create_executor
from dp_tangent.recipes import default_recipe
from dp_tangent.workspace import ShardJob
from dp_tangent.workspace import Workspace

from ._doc import write_section
from ._measure import load_average, machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "parallel_scaling.json"
SHARDS = 4
CASES = ("serial", "local-1", "local-2")
WORKLOADS = {"head": None, "blocks[-1:]": 4}  # trainable -> epochs (None: the recipe's)


def _executor(case: str, cores: int) -> Executor:
    if case == "serial":
        torch.set_num_threads(cores)
        return create_executor("serial")
    workers = int(case.split("-")[1])
    return create_executor("local", workers=workers, threads=max(1, cores // workers))


def measure(rounds: int, quick: bool) -> dict[str, object]:
    recipe = default_recipe()
    _, parts = recipe.load_data()
    jobs = [ShardJob(f"c{k}", f"shard-{k}", records) for k, records in enumerate(parts[:SHARDS])]
    cores = available_cores()
    runs: list[dict[str, object]] = []
    epochs = {w: 1 if quick else (e or recipe.training.epochs) for w, e in WORKLOADS.items()}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(rounds):
            for workload, case in itertools.product(WORKLOADS, CASES):
                ws = Workspace.create(Path(scratch) / f"{case}-{workload}-{r}")
                config = dataclasses.replace(recipe.train_config(), epochs=epochs[workload])
                executor = _executor(case, cores)
                load = load_average()
                start = time.perf_counter()
                run = ws.train_all(recipe.backbone.spec(), workload, jobs, data_source=recipe.data_source,
                                   privacy=recipe.privacy_spec(), config=config, executor=executor)
                seconds = time.perf_counter() - start
                if run.failed:
                    raise RuntimeError(f"{case}: {run.failed[0].name} failed: {run.failed[0].reason}")
                runs.append({"workload": workload, "case": case, "round": r, "seconds": seconds, "load_before": load,
                             "deltas_sha256": {c.metadata.name: c.metadata.deltas_sha256 for c in run.completed}})
                print(f"round {r} {workload} {case}: {seconds:.1f} s", flush=True)
    return {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(ROOT),
            "settings": {"shards": SHARDS, "records": [len(j.records) for j in jobs], "epochs": epochs,
                         "batch_size": recipe.training.batch_size, "epsilon": recipe.privacy.epsilon,
                         "noise": recipe.train_config().noise,
                         "image_size": recipe.data.source.image_size, "rounds": rounds, "cores": cores},
            "runs": runs}


def summary(results: dict[str, object], workload: str) -> dict[str, dict[str, float]]:
    """Per case: median, min and max seconds over rounds."""
    out = {}
    for case in CASES:
        seconds = [r["seconds"] for r in results["runs"] if (r["workload"], r["case"]) == (workload, case)]
        out[case] = {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}
    return out


def _agreement(results: dict[str, object], workload: str) -> str:
    if results["settings"].get("noise", "seeded") == "secure":  # runs recorded before the setting was: seeded
        return ("every run's differ, as they must: its noise comes from fresh secret keys (the recipe's secure "
                "noise)")
    digests = {case: next(r["deltas_sha256"] for r in results["runs"] if (r["workload"], r["case"]) == (workload, case))
               for case in CASES}
    pairs = list(itertools.combinations(CASES, 2))
    return ", ".join(f"{a} {'=' if digests[a] == digests[b] else '≠'} {b}" for a, b in pairs)


def render(results: dict[str, object]) -> str:
    s, m = results["settings"], results["machine"]
    shape = {"serial": f"this process × {s['cores']}", "local-1": f"1 × {s['cores']}",
             "local-2": f"2 × {max(1, s['cores'] // 2)}"}
    lines = ["## Parallel scaling", "",
             f"_Generated by `python -m benchmarks.parallel_scaling` at {results['created_at']} "
             f"(git {m['git']}) on {m['cpu']}, {m['usable_cpus']} usable cores. {s['shards']} DP components "
             f"(ε = {s['epsilon']:g}) of the embedded default: EfficientNet-Lite0, digits at {s['image_size']} px, "
             f"{s['records']} records, batch {s['batch_size']}. Wall time of `Workspace.train_all` (planning, "
             f"reservation, training, atomic writes, audit log), worker start-up included; median (min–max) over "
             f"{s['rounds']} interleaved rounds. Raw numbers: `benchmarks/results/parallel_scaling.json`._", "",
             "| trainable (epochs) | executor | workers × torch threads | seconds | time of 1 worker / this |",
             "|---|---|---|---:|---:|"]
    verdicts = []
    for workload in WORKLOADS:
        stats = summary(results, workload)
        for case in CASES:
            st = stats[case]
            lines.append(f"| `{workload}` ({s['epochs'][workload]}) | {case} | {shape[case]} | {st['median']:.1f} "
                         f"({st['min']:.1f}–{st['max']:.1f}) | {stats['local-1']['median'] / st['median']:.2f}x |")
        one, two, serial = (stats[c]["median"] for c in CASES[1:] + CASES[:1])
        verdicts.append(f"`{workload}`: 2 workers take {two:.1f} s, 1 worker {one:.1f} s (2 workers are "
                        f"{one / two:.2f}x as fast), serial in this process {serial:.1f} s; starting a worker process "
                        f"costs about {one - serial:.1f} s (1 worker minus serial). Deltas: "
                        f"{_agreement(results, workload)}.")
    lines += ["", *[f"* {v}" for v in verdicts], "",
              f"On {s['cores']} cores one process already keeps both cores busy with torch's intra-op threads, so "
              "worker processes gain only what they save in per-op threading overhead, minus their start-up "
              "(importing torch, timm and Opacus, building the backbone). They pay off with more cores per "
              "machine and with Ray across machines, which this machine cannot show.",
              "",
              "With seeded noise, cases with the same torch thread count agree bit for bit (the test suite checks "
              "serial = local = Ray at one thread); with other thread counts some CPU kernels may round "
              "differently."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 1 epoch; the doc is left alone")
    parser.add_argument("--render", action="store_true", help="only rewrite the doc section from the recorded JSON")
    args = parser.parse_args()
    if args.render:
        write_section("parallel_scaling", render(json.loads(RESULTS.read_text())))
        return
    results = measure(rounds=1 if args.quick else 3, quick=args.quick)
    path = RESULTS.with_suffix(".quick.json.tmp") if args.quick else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    if not args.quick:
        write_section("parallel_scaling", render(results))
    print(render(results))


if __name__ == "__main__":
    main()
