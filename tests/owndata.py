"""Small own-data sets the tests write: tables (scikit-learn's bundled wine), npz arrays, image folders, recipes."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

WINE_FEATURES = 13


def write_wine_csv(path: Path, *, rows: Sequence[int] | None = None, text_labels: bool = True,
                   extra_text_column: str | None = None) -> list[str]:
    """scikit-learn's wine table (178 rows, 13 features, 3 classes; or the ``rows`` given) as CSV with
    ``wine_id`` and ``cultivar`` columns (and a column of text, ``extra_text_column``, if named); returns the
    feature column names."""
    from sklearn.datasets import load_wine

    wine = load_wine()
    names = [n.replace("/", "_") for n in wine.feature_names]
    ids = [f"wine-{i:03d}" for i in range(len(wine.target))]
    labels = [f"class_{y}" if text_labels else int(y) for y in wine.target]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        extra = [extra_text_column] if extra_text_column else []
        writer.writerow(["wine_id", *names, "cultivar", *extra])
        for i in range(len(ids)) if rows is None else rows:
            regions = ["north" if i % 2 else "south"] * len(extra)
            writer.writerow([ids[i], *wine.data[i].tolist(), labels[i], *regions])
    return names


def wine_bounds() -> tuple[list[float], list[float]]:
    """Declared feature ranges (rounded outward from the published ranges of the UCI wine data)."""
    from sklearn.datasets import load_wine

    x = load_wine().data
    return np.floor(x.min(0) * 0.9).tolist(), np.ceil(x.max(0) * 1.1 + 1e-3).tolist()


def write_npz(path: Path, n: int = 96, features: int = 6, seed: int = 0) -> list[str]:
    """A separable 2-class table as ``inputs``/``targets``/``record_ids`` arrays; returns the ids."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    ids = [f"row-{i:03d}" for i in range(n)]
    np.savez(path, inputs=x, targets=y, record_ids=np.array(ids))
    return ids


def write_image_folder(root: Path, n: int, size: int = 12) -> list[str]:
    """``n`` PNGs in two class folders (``a``/``b``, told apart by colour); returns their ids."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ids = []
    for i in range(n):
        label = "a" if i % 2 else "b"
        pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        pixels[..., i % 2] += 180
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / label / f"{i:04d}.png")
        ids.append(f"{label}/{i:04d}.png")
    return ids


def mlp_recipe(data: dict[str, Any], *, in_features: int, classes: int, source: str, **extra: Any) -> dict[str, Any]:
    """A fast recipe: a small random-theta0 MLP, its last two blocks linearized, 2 shards, epsilon 8."""
    return {"backbone": {"family": "mlp", "name": "mlp", "num_classes": classes,
                         "options": {"in_features": in_features, "hidden": [16]}},
            "trainable": "blocks[-2:]", "data": data, "shards": {"count": 2},
            "privacy": {"epsilon": 8, "delta": 1e-5}, "training": {"epochs": 4, "batch_size": 16, "lr": 0.2},
            "data_source": source, **extra}


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
