"""The whole-job benchmark's two recipes (benchmarks/recipe_job.py): the default recipe with the job's settings,
and its non-private twin, both valid recipes that differ only in privacy."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import yaml

from dp_tangent.recipes import DEFAULT_RECIPE, load_recipe

ROOT = Path(__file__).resolve().parent.parent


def _recipe_job():  # noqa: ANN202 -- the module, loaded by path: opacus installs a top-level `benchmarks` package
    spec = importlib.util.spec_from_file_location("recipe_job", ROOT / "benchmarks" / "recipe_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_job_recipes_are_the_default_recipe_with_blocks_8_epochs_the_default_mode_and_a_non_private_twin(
        tmp_path: Path) -> None:
    recipe_job = _recipe_job()
    assert recipe_job.RECIPE == DEFAULT_RECIPE
    base = yaml.safe_load(DEFAULT_RECIPE.read_text(encoding="utf-8"))
    loaded = {}
    for name, recipe in recipe_job.job_recipes(base).items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        loaded[name] = load_recipe(path)
    dp, no_dp = loaded["dp"], loaded["no_dp"]
    assert dp.trainable == no_dp.trainable == "blocks[-1:]"
    assert dp.training.epochs == no_dp.training.epochs == 8
    assert dp.training.grad_sample_mode == "gram"  # the default mode
    assert dp.privacy_spec().private and dp.budget is not None
    assert not no_dp.privacy_spec().private and math.isinf(no_dp.privacy.epsilon) and no_dp.budget is None
    same = {key: value for key, value in dp.model_dump().items() if key not in ("privacy", "budget")}
    assert same == {key: value for key, value in no_dp.model_dump().items() if key not in ("privacy", "budget")}
    assert dp.model_dump()["privacy"] | {"epsilon": math.inf} == no_dp.model_dump()["privacy"]
