"""Retraining after a deletion on an image folder: with the frozen-prefix features kept in the workspace's cache,
and without (``training.keep_features: false``), as a user runs it.

    python -m benchmarks.retraining_cost            # 2 rounds, 600 images; writes its doc section
    python -m benchmarks.retraining_cost --quick    # smoke run (60 images, 1 round); doc left alone

The data is a folder of synthetic 256x256 JPEGs in two classes (``recipes/own-data-imagefolder.yaml``'s
layout); the job is that recipe (EfficientNet-Lite0, packaged weights, 224x224 inputs, its trainable
selection, 2 shards, the default DP mode) with fewer epochs. Each of two workspaces runs ``dp-tangent train
--init`` once, one with the recipe's defaults (features kept beside the NTK Grams) and one with
``keep_features: false`` (Grams only). Then each round serves, in each workspace, a deletion request for a
new record with ``dp-tangent forget ID --retrain``: the rounds alternate which workspace goes first, every
command is a fresh process timed from start to exit (imports, reading and decoding the shard, the frozen
prefix where it runs, training, ledger, certificate, audit log), and the ratio is the median of the
per-round ratios. Both workspaces take every remaining record's NTK Gram from the cache; they differ only
in the features.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ._doc import write_section
from ._measure import load_average, machine

NAME = "retraining_cost"
ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "own-data-imagefolder.yaml"
RESULTS = ROOT / "benchmarks" / "results"
CLASSES = ("cat", "dog")
WORKSPACES = ("kept", "not_kept")


def write_images(root: Path, per_class: int, seed: int = 0) -> list[str]:
    """``per_class`` synthetic 256x256 JPEGs per class (upscaled random 32x32 colour blocks); their record ids."""
    rng = np.random.default_rng(seed)
    ids = []
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).resize((256, 256), Image.BILINEAR).save(root / name / f"{i:05d}.jpg", quality=90)
            ids.append(f"{name}/{i:05d}.jpg")
    return ids


def recipe(root: Path, epochs: int, keep_features: bool, batch_size: int) -> dict:
    """The image-folder recipe on ``root`` with ``epochs`` and ``batch_size``, and ``keep_features`` as given."""
    out = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    out["data"]["image_folder"]["root"] = str(root)
    out["training"]["epochs"] = epochs
    out["training"]["batch_size"] = batch_size
    out["training"]["physical_batch_size"] = min(batch_size, out["training"].get("physical_batch_size", batch_size))
    out["training"]["keep_features"] = keep_features
    out["training"].pop("grad_sample_mode", None)
    return out


def run(folder: Path, *args: str) -> float:
    """Seconds of ``dp-tangent ARGS`` run in ``folder`` as a fresh process; raises if it fails."""
    command = [sys.executable, "-m", "dp_tangent", *args]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds


def retraining_use(folder: Path) -> dict:
    """The gram cache use of the last completed retraining, from the workspace's audit log."""
    from dp_tangent.workspace import Workspace

    entries = Workspace.open(folder / "ws").audit.entries()
    return next(e.parameters["gram_cache"] for e in reversed(entries)
                if e.operation == "retraining" and e.parameters.get("status") == "completed")


def measure(per_class: int, epochs: int, rounds: int, batch_size: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="dp-tangent-retraining-") as scratch:
        data = Path(scratch) / "images"
        ids = write_images(data, per_class)
        train_s: dict[str, float] = {}
        folders = {}
        for name in WORKSPACES:
            folders[name] = Path(scratch) / name
            folders[name].mkdir()
            (folders[name] / "job.yaml").write_text(yaml.safe_dump(recipe(data, epochs, name == "kept", batch_size)))
            print(f"{NAME}: train, features {name} ...", file=sys.stderr, flush=True)
            train_s[name] = run(folders[name], "train", "job.yaml", "--name", "job", "-w", "ws", "--init")
        from dp_tangent.recipes import load_recipe

        _, shards = load_recipe(folders["kept"] / "job.yaml").load_data()  # victims among the trained records
        trained = [r for shard in shards for r in shard.record_ids]
        forget_s: dict[str, list[float]] = {name: [] for name in WORKSPACES}
        uses: dict[str, list[dict]] = {name: [] for name in WORKSPACES}
        for r in range(rounds):
            victim = trained[r * 7]  # another record each round
            for name in (WORKSPACES if r % 2 == 0 else WORKSPACES[::-1]):
                print(f"{NAME}: round {r + 1}/{rounds}, forget, features {name} ...", file=sys.stderr, flush=True)
                forget_s[name].append(run(folders[name], "forget", victim, "--request-id", f"req-{r}", "--retrain",
                                          "-w", "ws"))
                uses[name].append(retraining_use(folders[name]))
    paired = [b / a for a, b in zip(forget_s["kept"], forget_s["not_kept"])]
    return {"images": len(ids), "shards": 2, "epochs": epochs, "batch_size": batch_size, "image_size": 224,
            "train_seconds": train_s,
            "forget_seconds": forget_s, "gram_cache": uses, "speedup": statistics.median(paired),
            "speedup_min": min(paired), "speedup_max": max(paired)}


def section(results: dict) -> str:
    m, v = results["machine"], results["machine"]["versions"]
    f, t = results["forget_seconds"], results["train_seconds"]
    use = results["gram_cache"]["kept"][0]
    lines = [
        "## Retraining after a deletion: frozen-prefix features kept or not", "",
        f"_Generated by `python -m benchmarks.{NAME}` at {results['created']} (git {m['git']}) in "
        f"{results['wall_seconds']:.0f} s; do not edit by hand. Raw numbers: `benchmarks/results/{NAME}.json`._", "",
        f"**Machine.** {m['cpu']}, {m['usable_cpus']} usable CPUs; torch {v['torch']}, opacus {v['opacus']}, "
        f"timm {v['timm']}; 1-minute load average {results['load_average_at_start']:.1f} at the start, "
        f"{results['load_average_at_end']:.1f} at the end.", "",
        f"**Setup.** {results['images']} synthetic 256x256 JPEGs in 2 classes, `recipes/own-data-imagefolder.yaml` "
        f"(EfficientNet-Lite0, packaged weights, {results['image_size']}x{results['image_size']} inputs, trainable "
        f"`head`, {results['shards']} shards, the default DP mode) with {results['epochs']} epochs, expected batch "
        f"{results['batch_size']}. One workspace "
        "keeps the features (the default), one has `training.keep_features: false`; each round serves one "
        "deletion request in each with `dp-tangent forget ID --retrain` (a fresh process, timed from start to "
        "exit), alternating which goes first. Both take every remaining record's NTK Gram from the cache "
        f"(first round, features kept: gram cache {json.dumps(use)}).", "",
        "| workspace | `train --init`, s | `forget --retrain`, s per round |",
        "|---|---:|---|",
    ]
    for name, label in (("kept", "features kept (default)"), ("not_kept", "`keep_features: false`")):
        lines.append(f"| {label} | {t[name]:.1f} | {', '.join(f'{s:.1f}' for s in f[name])} |")
    lines += ["", f"`forget --retrain` without kept features over with them: median of the rounds "
              f"{results['speedup']:.2f}x (range {results['speedup_min']:.2f}-{results['speedup_max']:.2f}x). What "
              "is left with features kept is reading and decoding the shard (its digests are the cache's match), "
              "the training steps, imports, and the ledger, certificate and audit-log work."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    start, load = time.perf_counter(), load_average()
    results = measure(per_class=30 if args.quick else 300, epochs=1 if args.quick else 2,
                      rounds=1 if args.quick else 2, batch_size=8 if args.quick else 64)
    results.update(benchmark=NAME, quick=args.quick, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   wall_seconds=time.perf_counter() - start, machine=machine(ROOT),
                   load_average_at_start=load or 0.0, load_average_at_end=load_average() or 0.0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / (f"{NAME}.quick.json.tmp" if args.quick else f"{NAME}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(section(results))
    if not args.quick:
        write_section(NAME, section(results))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
