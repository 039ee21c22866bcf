"""benchmarks.retraining_cost's parts (the full run is the benchmark): its images, recipes and section."""

from __future__ import annotations

from pathlib import Path

import yaml

from benchmarks import retraining_cost


def test_its_recipes_load_and_differ_only_in_keep_features(tmp_path: Path) -> None:
    from dp_tangent.recipes import load_recipe

    ids = retraining_cost.write_images(tmp_path / "images", per_class=3)
    assert ids == [f"{c}/{i:05d}.jpg" for c in ("cat", "dog") for i in range(3)]
    loaded = {}
    for keep in (True, False):
        path = tmp_path / f"{keep}.yaml"
        path.write_text(yaml.safe_dump(retraining_cost.recipe(tmp_path / "images", 2, keep, 4)))
        loaded[keep] = load_recipe(path)
    assert loaded[True].train_config().keep_features and not loaded[False].train_config().keep_features
    assert loaded[True].training.batch_size == 4 and loaded[True].training.epochs == 2
    assert loaded[True].data == loaded[False].data


def test_its_section_states_the_measured_ratio() -> None:
    results = {"created": "now", "wall_seconds": 1.0, "load_average_at_start": 0.5, "load_average_at_end": 0.5,
               "machine": {"git": "abc", "cpu": "cpu", "usable_cpus": 2,
                           "versions": {"torch": "t", "opacus": "o", "timm": "m"}},
               "images": 600, "image_size": 224, "shards": 2, "epochs": 2, "batch_size": 64,
               "train_seconds": {"kept": 30.0, "not_kept": 29.0},
               "forget_seconds": {"kept": [5.0, 6.0], "not_kept": [15.0, 12.0]},
               "gram_cache": {"kept": [{"hits": 9, "misses": 0, "features": {"hits": 9, "misses": 0}}]},
               "speedup": 2.5, "speedup_min": 2.0, "speedup_max": 3.0}
    text = retraining_cost.section(results)
    assert "| features kept (default) | 30.0 | 5.0, 6.0 |" in text and "median of the rounds 2.50x" in text
