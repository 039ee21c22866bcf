"""Forgetting cost: serving a deletion request by dropping a component, by dropping + retraining one
shard, and by retraining everything from scratch.

    python -m benchmarks.forgetting_cost            # full run (a few minutes on 2 cores)
    python -m benchmarks.forgetting_cost --quick    # smoke run; doc left alone

The real toolkit path, in a fresh workspace per (model, N): N DP components (one per disjoint
shard, ``Workspace.train``) composed into one model (``compose_model``), then two deletion
requests served by ``dp_tangent.workspace.forget.forget``: one for a record of shard 0 without retraining
(the component is dropped and the model recomposed from the others), one for a record of shard 1
with ``retrain=True`` (that shard is trained again without the record). Every timing includes
what the command does in a workspace: ledger, component files, certificate, audit log. "Retrain
everything" is the time it took to train all N components and compose them in the first place,
which is what serving the request from scratch costs. Timings are single runs after an untimed
warm-up (no randomness
in what is measured, but load on a shared machine adds noise; the load average is reported).
Exactness: the model after the drop must equal, bit for bit, the mean of the remaining components.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file

from dp_tangent.workspace import data_sources as sources
from dp_tangent.backbones import BackboneSpec
from dp_tangent.components import compose
from dp_tangent.data import load_digits, split_shards
from dp_tangent.training.evaluation import accuracy
from dp_tangent.workspace.deletion_requests import DeletionRequest
from dp_tangent.workspace.forget import forget
from dp_tangent.training.losses import ConvexLoss
from dp_tangent.tangent import linearize
from dp_tangent.training import PrivacySpec, TrainConfig
from dp_tangent.workspace import Workspace

from . import _utility as U
from ._plots import line_panels

NAME = "forgetting_cost"
SOURCE, MODEL = "digits", "composed"


@dataclass(frozen=True)
class Config:
    shards: tuple[int, ...] = (2, 4, 8)
    epsilon: float = 8.0
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.2
    seed: int = 0
    max_records: int | None = None

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, physical_batch_size=self.batch_size,
                           lr=self.lr, seed=self.seed, loss=ConvexLoss("cross_entropy"), grad_sample_mode="ghost")


FULL = Config()
QUICK = Config(shards=(2,), epochs=1, max_records=300)


def backbone_spec(name: str, folder: Path) -> BackboneSpec:
    """EfficientNet: packaged weights. The random ViT: its weights saved once to a local checkpoint, so
    that every component is trained around the same theta0 (``BackboneSpec`` must rebuild it exactly)."""
    if name == "efficientnet_lite0":
        return BackboneSpec("efficientnet_lite0", pretrained="packaged", num_classes=10)
    path = folder / f"{name}-random-init.safetensors"
    save_file({k: v.contiguous() for k, v in U.MODELS[name].build().state_dict().items()}, str(path))
    return BackboneSpec("vit_tiny_patch16_224", checkpoint=str(path), num_classes=10,
                        timm_kwargs=(("depth", 3), ("img_size", 16), ("patch_size", 4)))


def _seconds(fn) -> tuple[object, float]:  # noqa: ANN001
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_setting(name: str, shards: int, cfg: Config, folder: Path) -> dict:
    """Train N components in a fresh workspace, then serve a drop request and a drop + retrain request."""
    folder.mkdir(parents=True, exist_ok=True)
    ws = Workspace.create(folder / f"{name}-{shards}")
    spec = backbone_spec(name, folder)
    image_size = U.MODELS[name].image_size
    source = sources.DigitsSource(image_size=image_size, shards=shards, test_fraction=0.2, seed=0,
                                  max_records=cfg.max_records)
    ws.declare_data_source(SOURCE, description="scikit-learn load_digits()", loader=source,
                           shards=[f"shard-{k}" for k in range(shards)], operator="benchmark")
    digits = load_digits(image_size=image_size)
    if cfg.max_records:
        digits = digits.subset(range(min(cfg.max_records, len(digits))))
    test, parts = split_shards(digits, shards=shards, test_fraction=source.test_fraction, seed=source.seed)
    for k in range(shards):
        ws.set_budget(SOURCE, f"shard-{k}", 2 * cfg.epsilon, U.DELTA, operator="benchmark")
    privacy = PrivacySpec(epsilon=cfg.epsilon, delta=U.DELTA)
    names = [f"{name}-shard-{k}" for k in range(shards)]

    def train_all() -> None:
        for k, part in enumerate(parts):
            ws.train(spec, U.MODELS[name].trainable, part, data_source=SOURCE, shard=f"shard-{k}", name=names[k],
                     privacy=privacy, config=cfg.train_config(), operator="benchmark")
        ws.compose_model(MODEL, names, method="mean", operator="benchmark")

    _, scratch = _seconds(train_all)
    tangent = linearize(spec.build(), U.MODELS[name].trainable)
    features = tangent.features(test.inputs)

    def model_accuracy() -> float:
        tangent.load_deltas(ws.load_model(MODEL)[1])
        return accuracy(tangent, test, features=features)

    before = model_accuracy()
    request = DeletionRequest("drop-1", (parts[0].record_ids[0],), datetime.now(timezone.utc))
    dropped, drop_s = _seconds(lambda: forget(ws, request, retrain=False, operator="benchmark"))
    after_drop = ws.load_model(MODEL)[1]
    remaining = compose([ws.component_path(n) for n in names[1:]], method="mean").deltas
    exact = _equal(after_drop, remaining)
    acc_drop = model_accuracy()
    request = DeletionRequest("retrain-1", (parts[1].record_ids[0],), datetime.now(timezone.utc))
    retrained, retrain_s = _seconds(lambda: forget(ws, request, retrain=True, operator="benchmark",
                                                   shard_records=sources.shard_records_for(ws)))
    current = ws.list_components()
    exact_retrain = _equal(ws.load_model(MODEL)[1], compose([ws.component_path(n) for n in current]).deltas)
    return {"shards": shards, "shard_sizes": [len(p) for p in parts], "n_test": len(test),
            "seconds": {"retrain_everything": scratch, "drop_component": drop_s, "drop_and_retrain_shard": retrain_s},
            "accuracy": {"before": before, "after_drop": acc_drop, "after_drop_and_retrain": model_accuracy()},
            "drop_bit_identical_to_composing_the_rest": exact,
            "retrain_bit_identical_to_composing_the_current": exact_retrain,
            "verified": [bool(r.certificate.verification and r.certificate.verification.verified)
                         for r in (dropped, retrained)],
            "components_after": len(current)}


def run(quick: bool, models: tuple[str, ...] = tuple(U.MODELS)) -> dict:
    cfg = QUICK if quick else FULL
    results = U.new_results(NAME, quick, {**asdict(cfg), "delta": U.DELTA, "grad_sample_mode": "ghost"})
    folder = Path(tempfile.mkdtemp(prefix="dp-tangent-forgetting-"))
    try:
        for name in models:
            # warm-up, not recorded: the first workspace run in a process pays one-time costs (imports, caches)
            one_setting(name, 2, replace(cfg, epochs=1, max_records=200), folder / "warm-up")
            rows = []
            for shards in cfg.shards:
                rows.append(one_setting(name, shards, cfg, folder))
                U.progress(f"{name}, {shards} shards: {rows[-1]['seconds']}")
            spec = U.MODELS[name]
            results["models"][name] = {"description": spec.description, "trainable": spec.trainable,
                                       "pretrained": spec.pretrained, "runs": rows}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def render(results: dict) -> str:
    s = results["settings"]
    lines = U.header(results, "Forgetting cost: drop a component, drop + retrain a shard, or retrain everything",
                     f"**Setup.** {U.models_text(results)} Each component: (ε = {s['epsilon']:g}, δ = {s['delta']:g})-DP "
                     f"on one disjoint shard, {s['epochs']} epochs, expected batch {s['batch_size']}, lr {s['lr']:g}, "
                     f"{s['grad_sample_mode']} clipping; the model is the mean of the components' deltas. Times are "
                     "wall-clock seconds of the whole workspace operation (`Workspace.train` + `compose_model` for "
                     "retraining everything; `forget` for the other two: ledger, files, certificate, audit log), "
                     "one run each, after an untimed warm-up run in the same process.")
    lines += ["| model | N | retrain everything, s | drop component, s | drop + retrain 1 shard, s | speed-up of drop | "
              "speed-up of drop + retrain | accuracy before / after drop / after retrain, % | drop exact |",
              "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, entry in results["models"].items():
        for r in entry["runs"]:
            t, a = r["seconds"], r["accuracy"]
            exact = "bit-identical" if r["drop_bit_identical_to_composing_the_rest"] else "**NOT identical**"
            lines.append(f"| {name} | {r['shards']} | {t['retrain_everything']:.1f} | {t['drop_component']:.2f} | "
                         f"{t['drop_and_retrain_shard']:.1f} | {t['retrain_everything'] / t['drop_component']:.0f}x | "
                         f"{t['retrain_everything'] / t['drop_and_retrain_shard']:.1f}x | {100 * a['before']:.1f} / "
                         f"{100 * a['after_drop']:.1f} / {100 * a['after_drop_and_retrain']:.1f} | {exact} |")
    runs = [r for e in results["models"].values() for r in e["runs"]]
    all_exact = all(r["drop_bit_identical_to_composing_the_rest"] and r["retrain_bit_identical_to_composing_the_current"]
                    for r in runs)
    verified = all(all(r["verified"]) for r in runs)
    lines += ["", U.image_link(NAME, "seconds to serve a deletion request against N"), "",
              f"Exactness: after every drop the model's deltas {'equal' if all_exact else '**do not all equal**'} "
              "(`torch.equal`) the mean of the remaining components' deltas, and after every retrain the mean of the "
              f"current ones; every certificate's membership check {'passed' if verified else '**failed**'}. "
              + _speedups(runs)]
    if "vit_small" in results["models"]:
        lines += ["", f"The ViT is {U.RANDOM_VIT_NOTE}; its random weights are saved once to a local checkpoint so "
                  "that every component shares θ0."]
    return "\n".join(lines)


def _speedups(runs: list[dict]) -> str:
    """What the table shows, in words computed from it."""
    drop = [r["seconds"]["retrain_everything"] / r["seconds"]["drop_component"] for r in runs]
    retrain = [(r["shards"], r["seconds"]["retrain_everything"] / r["seconds"]["drop_and_retrain_shard"]) for r in runs]
    slower = sorted({n for n, x in retrain if x < 1})
    text = (f"Dropping a component trains nothing: it served the request {min(drop):.0f}x to {max(drop):.0f}x faster "
            "than retraining everything (its time is file, ledger and audit-log work). Dropping + retraining one "
            f"shard was {min(x for _, x in retrain):.1f}x to {max(x for _, x in retrain):.1f}x faster than retraining "
            "everything; the ideal is N x, less a fixed cost per request (rebuilding and linearizing the backbone, "
            "computing the shard's frozen-prefix features, the manifest checks, certificate and audit log).")
    if slower:
        text += (f" **For N = {', '.join(map(str, slower))} it was slower than retraining everything**: at these "
                 "sizes the fixed cost of serving the request outweighs the training it saves.")
    return text


def plot(results: dict, path) -> None:  # noqa: ANN001
    labels = {"retrain_everything": "retrain everything", "drop_and_retrain_shard": "drop + retrain one shard",
              "drop_component": "drop the component"}
    panels = {}
    for name, entry in results["models"].items():
        ns = [r["shards"] for r in entry["runs"]]
        panels[name] = {label: (ns, [{"mean": r["seconds"][key], "std": 0.0} for r in entry["runs"]])
                        for key, label in labels.items()}
    line_panels(panels, "N shards", "seconds (log scale)", path, scale=1.0, logy=True)


if __name__ == "__main__":
    U.main(NAME, __doc__, run, render, plot, sys.argv[1:])
