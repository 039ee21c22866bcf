"""Wall time of a whole training job of the default recipe, with DP and without, as a user runs it.

    python -m benchmarks.recipe_job            # 3 rounds, prints the figures (training_cost runs it too)

The job is ``dp-tangent train`` of ``recipes/digits-efficientnet-lite0.yaml`` with ``trainable:
blocks[-1:]`` and 8 epochs, the recipe's data, shards, batch size and executor, and the default DP
mode (any ``grad_sample_mode`` the recipe sets removed): everything the command does, from its start to its
exit (imports, data, the shards' frozen-prefix features, the NTK Gram precompute, training, accounting,
the ledger, composition and evaluation). The job without DP is the same recipe with ``epsilon: .inf``
and no budget (a budget refuses non-private runs). Each run starts in a fresh temporary directory
with a relative workspace (``-w ws``); the rounds alternate which job runs first, and the ratio is the
median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dp_tangent.openmp import chosen_wait

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "digits-efficientnet-lite0.yaml"
TRAINABLE = "blocks[-1:]"
EPOCHS = 8
ROUNDS = 3
JOBS = ("dp", "no_dp")


def job_recipes(base: dict) -> dict[str, dict]:
    """The two recipes: ``base`` with the job's trainable blocks, epochs and default DP mode, and its
    non-private twin (epsilon inf, no budget)."""
    dp = copy.deepcopy(base)
    dp["trainable"] = TRAINABLE
    dp["training"]["epochs"] = EPOCHS
    dp["training"].pop("grad_sample_mode", None)
    no_dp = copy.deepcopy(dp)
    no_dp["privacy"]["epsilon"] = float("inf")
    no_dp.pop("budget", None)
    return {"dp": dp, "no_dp": no_dp}


def run_job(recipe: dict, scratch: Path, env: dict[str, str] | None = None) -> float:
    """Seconds of ``dp-tangent train`` on ``recipe`` in a fresh directory under ``scratch``, workspace ``ws``,
    in ``env`` (default: this process's environment)."""
    folder = Path(tempfile.mkdtemp(dir=scratch))
    (folder / "job.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    command = [sys.executable, "-m", "dp_tangent", "train", "job.yaml", "--name", "job", "-w", "ws", "--init"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds


def measure_recipe_job(rounds: int = ROUNDS, recipe_path: Path = RECIPE,
                       env: dict[str, str] | None = None) -> dict[str, object]:
    """Both jobs ``rounds`` times, alternating which goes first, in ``env`` (default: this process's
    environment); seconds per job and the paired ratios."""
    environment = os.environ if env is None else env
    base = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    recipes = job_recipes(base)
    seconds: dict[str, list[float]] = {job: [] for job in JOBS}
    with tempfile.TemporaryDirectory(prefix="dp-tangent-recipe-job-") as scratch:
        for r in range(rounds):
            for job in (JOBS if r % 2 == 0 else JOBS[::-1]):
                print(f"recipe job: round {r + 1}/{rounds}, {job} ...", file=sys.stderr, flush=True)
                seconds[job].append(run_job(recipes[job], Path(scratch), env))
    paired = [a / b for a, b in zip(seconds["dp"], seconds["no_dp"])]
    return {"recipe": str(recipe_path.relative_to(ROOT)), "trainable": TRAINABLE, "epochs": EPOCHS,
            "shards": base["shards"]["count"], "epsilon": base["privacy"]["epsilon"],
            "batch_size": base["training"]["batch_size"],
            "seconds": seconds, "ratio": statistics.median(paired), "min": min(paired), "max": max(paired),
            "ratio_of_fastest": min(seconds["dp"]) / min(seconds["no_dp"]),
            # the wait policy the environment chose, if any (else `dp-tangent` sets its own)
            "omp_wait_policy": chosen_wait(environment)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args(argv)
    print(json.dumps(measure_recipe_job(args.rounds), indent=2))


if __name__ == "__main__":
    main()
