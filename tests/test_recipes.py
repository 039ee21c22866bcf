"""Recipes: the shipped files validate, every mistake is one line naming file and field, and the
recipe-driven CLI (train / evaluate / predict) works end to end on a tiny digits run."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run_cli

from dp_tangent.cli.demo_run import DemoConfig
from dp_tangent.recipes import DEFAULT_RECIPE, RecipeError, default_recipe, load_recipe
from privacy_accounting.figures import fmt_eps, fmt_remaining

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SHIPPED = sorted(RECIPES.glob("*.yaml"))
TINY = {
    "backbone": {"name": "efficientnet_lite0", "pretrained": "packaged", "num_classes": 10},
    "trainable": "head",
    "data": {"sklearn_digits": {"image_size": 48, "max_records": 300, "test_fraction": 0.2, "seed": 0}},
    "shards": {"count": 2, "by": "random"},
    "privacy": {"epsilon": 8, "delta": 1e-5},
    "training": {"epochs": 6, "batch_size": 60, "lr": 0.3},  # a linear probe: epochs cost little
    "data_source": "digits",
    "budget": {"epsilon": 10, "delta": 1e-5},  # one run of epsilon 8 fits, a second does not
}


def write(path: Path, data: object) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# -- shipped recipes ---------------------------------------------------------------------------------

def test_every_shipped_recipe_is_there_and_validates() -> None:
    names = {p.name for p in SHIPPED}
    assert names >= {"own-data-text.yaml", "sms-spam-minilm.yaml"}  # text (tests/test_text.py)
    names -= {"own-data-text.yaml", "sms-spam-minilm.yaml"}
    assert names == {"digits-efficientnet-lite0.yaml", "own-data-npz.yaml", "own-data-imagefolder.yaml",
                     "breast-cancer-mlp.yaml",  # tables (tests/test_tabular.py)
                     *(f"vit-b16-{d}-taft{k}.yaml" for d in ("cifar10", "cifar100") for k in (1, 7))}
    for path in SHIPPED:
        recipe = load_recipe(path)
        assert recipe.train_config().epochs == recipe.training.epochs
        text = path.read_text()
        assert "offline" in text.lower() or "internet" in text.lower(), path
        assert "checkpoint:" in text, path


def test_default_recipe_is_the_demo_config() -> None:
    recipe, demo = default_recipe(), DemoConfig()
    digits = recipe.data.sklearn_digits
    assert recipe.backbone.spec().to_dict()["pretrained"] == "packaged" and recipe.backbone.name == "efficientnet_lite0"
    assert (recipe.trainable, recipe.shards.count, recipe.privacy.epsilon, recipe.privacy.delta) == \
        (demo.trainable, demo.shards, demo.epsilon, demo.delta)
    assert (digits.image_size, digits.test_fraction, digits.seed) == (demo.image_size, demo.test_fraction, demo.seed)
    assert recipe.train_config() == demo.train_config()  # every setting, the default DP mode (gram) included
    assert recipe.budget.epsilon == demo.budget_epsilon and DEFAULT_RECIPE.is_file()


@pytest.mark.parametrize("dataset, classes", [("cifar10", 10), ("cifar100", 100)])
@pytest.mark.parametrize("k", [1, 7])
def test_vit_taft_recipes(dataset: str, classes: int, k: int) -> None:
    path = RECIPES / f"vit-b16-{dataset}-taft{k}.yaml"
    recipe = load_recipe(path)
    assert recipe.backbone.name == "vit_base_patch16_224.augreg_in21k" and recipe.backbone.pretrained is True
    assert recipe.backbone.num_classes == classes and recipe.trainable == f"blocks[-{k}:]"
    assert recipe.data.torchvision.name == dataset.upper() and recipe.privacy.epsilon == 8
    text = path.read_text()
    assert all(f"--epsilon {e}" in text for e in (1, 3, 8)) and "root:" in text


# -- one-line errors naming the file and the field ------------------------------------------------------

def _with(section: str, key: str | None, value: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    if key is None:
        data[section] = value
    else:
        data[section][key] = value
    return data


@pytest.mark.parametrize("data, message", [
    ("backbone: [unclosed\n", "invalid YAML at line 2"),
    ("- a list\n", "a recipe must be a YAML mapping"),
    ({**TINY, "extra": 1}, "extra: Extra inputs are not permitted"),
    (_with("training", "warmup", 3), "training.warmup: Extra inputs are not permitted"),
    (_with("training", "epochs", "many"), "training.epochs: Input should be a valid integer"),
    (_with("training", "epochs", 0), "training.epochs: Input should be greater than 0"),
    (_with("training", "batch_size", 0), "training.batch_size: Input should be greater than 0"),
    (_with("training", "physical_batch_size", -4), "training.physical_batch_size: Input should be greater than 0"),
    (_with("privacy", "epsilon", 0), "privacy.epsilon: Input should be greater than 0"),
    (_with("privacy", "epsilon", -1.5), "privacy.epsilon: Input should be greater than 0"),
    (_with("privacy", "delta", 1), "privacy.delta: Input should be less than 1"),
    (_with("privacy", "delta", 0), "privacy.delta: Input should be greater than 0"),
    (_with("privacy", "accountant", "moments"), "privacy.accountant: Input should be 'pld', 'prv' or 'rdp'"),
    (_with("shards", "count", 0), "shards.count: Input should be greater than 0"),
    (_with("shards", "by", "size"), "shards.by: Input should be 'random' or 'label'"),
    (_with("budget", "epsilon", float("inf")), "budget.epsilon: a budget must be finite"),
    (_with("privacy", "epsilon", float("inf")), "privacy.epsilon inf (a non-private run) is refused under any budget"),
    (_with("backbone", "pretrained", "yes"), "backbone.pretrained: must be false, true or \"packaged\""),
    (_with("backbone", "name", "no_such_net"), "backbone.name: unknown timm model 'no_such_net'"),
    (_with("trainable", None, "blocks[-1]"), "trainable: 'blocks[-1]' is not understood"),
    (_with("data", "npz", {"path": "x.npz"}), "data: give exactly one of"),
    (_with("data", "sklearn_digits", {"test_fraction": 1.0}),
     "data.sklearn_digits.test_fraction: Input should be less than 1"),
    (_with("data_source", None, "../escape"), "data_source: '../escape' must match"),
    ({k: v for k, v in TINY.items() if k != "privacy"}, "privacy: Field required"),
    (_with("training", "device", "tpu"), "training.device: String should match pattern"),
    (_with("resources", None, {"gpus": 1}), "resources.gpus > 0 needs training.device: cuda"),
    (_with("resources", None, {"cpus": 0}), "resources.cpus: Input should be greater than 0"),
])
def test_bad_recipes_are_one_line_errors_naming_file_and_field(tmp_path: Path, data: object, message: str) -> None:
    path = write(tmp_path / "bad.yaml", data)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text, text
    assert "\n" not in text


def test_a_text_recipe_with_an_unknown_packaged_encoder_names_file_and_field(tmp_path: Path) -> None:
    """Its default tokenizer comes from the backbone: the backbone is checked before it is looked up."""
    path = tmp_path / "sms.yaml"
    path.write_text((RECIPES / "sms-spam-minilm.yaml").read_text().replace("name: all-MiniLM-L6-v2", "name: MiniLM-L6"))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value) == f"{path}: backbone: no packaged weights for 'MiniLM-L6'; packaged: all-MiniLM-L6-v2"


def test_a_recipe_built_in_code_has_its_backbone_checked() -> None:
    """Only ``load_recipe``'s first step skips the backbone's family check (to answer before torch loads)."""
    from pydantic import ValidationError

    from dp_tangent.recipes import Recipe

    data = yaml.safe_load(DEFAULT_RECIPE.read_text())
    for backbone, message in (({"family": "nope"}, "unknown backbone family 'nope'"),
                              ({"name": "no_such_net"}, "unknown timm model 'no_such_net'")):
        with pytest.raises(ValidationError, match=message):
            Recipe.model_validate({**data, "backbone": {**data["backbone"], **backbone}})


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=re.escape(f"{tmp_path / 'nope.yaml'}: recipe file not found")):
        load_recipe(tmp_path / "nope.yaml")


# -- overrides and paths ------------------------------------------------------------------------------------

def test_overrides_replace_only_what_is_given_and_are_validated(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path / "r.yaml", TINY))
    changed = recipe.with_overrides(shards=3, epsilon=1.5, delta=1e-6)
    assert (changed.shards.count, changed.privacy.epsilon, changed.privacy.delta) == (3, 1.5, 1e-6)
    assert changed.model_dump(exclude={"shards", "privacy"}) == recipe.model_dump(exclude={"shards", "privacy"})
    assert recipe.with_overrides() == recipe and recipe.shards.count == 2
    with pytest.raises(RecipeError, match="overrides: privacy.epsilon inf .* refused under any budget"):
        recipe.with_overrides(epsilon=math.inf)
    baseline = load_recipe(write(tmp_path / "b.yaml", {k: v for k, v in TINY.items() if k != "budget"}))
    assert math.isinf(baseline.with_overrides(epsilon=math.inf).privacy_spec().epsilon)
    with pytest.raises(RecipeError, match="overrides: privacy.epsilon: Input should be greater than 0"):
        recipe.with_overrides(epsilon=0)
    with pytest.raises(RecipeError, match="overrides: shards.count"):
        recipe.with_overrides(shards=0)


def test_npz_data_relative_path_record_ids_and_split(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    ids = np.array([f"patient-{i}" for i in range(40)])
    np.savez(tmp_path / "data" / "mine.npz", x=np.random.rand(40, 3, 8, 8).astype(np.float32),
             y=np.arange(40) % 10, ids=ids)
    data = {**TINY, "data": {"npz": {"path": "data/mine.npz", "inputs": "x", "targets": "y", "record_ids": "ids",
                                     "test_fraction": 0.25}}, "shards": {"count": 2, "by": "label"}}
    recipe = load_recipe(write(tmp_path / "r.yaml", data))
    assert recipe.data.npz.path == str((tmp_path / "data" / "mine.npz").resolve())
    test, shards = recipe.load_data()
    assert 0 < len(test) < 40 and len(test) + sum(len(s) for s in shards) == 40  # each record held out with p 0.25
    assert set(test.record_ids) | {r for s in shards for r in s.record_ids} == set(ids.tolist())
    assert [sorted(set(s.targets.tolist())) for s in shards] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]  # by label
    bad = load_recipe(write(tmp_path / "bad.yaml", {**data, "data": {"npz": {"path": "data/mine.npz"}}}))
    with pytest.raises(RecipeError, match="no array 'inputs'"):
        bad.load_data()


def test_image_folder_record_ids_are_relative_paths(tmp_path: Path) -> None:
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 12), (i * 80, 10, 200)).save(tmp_path / "imgs" / label / f"{i}.png")
    data = {**TINY, "data": {"image_folder": {"root": "imgs", "classes": ["cat", "dog"], "image_size": 16,
                                           "test_fraction": 0}}}
    recipe = load_recipe(write(tmp_path / "r.yaml", data))
    test, shards = recipe.load_data()
    assert test is None and sorted(r for s in shards for r in s.record_ids) == \
        sorted(f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3))
    assert shards[0].inputs.shape[1:] == (3, 16, 16)
    assert recipe.preprocess_image(tmp_path / "imgs" / "cat" / "0.png").shape == (3, 16, 16)


# -- the CLI ---------------------------------------------------------------------------------------------------

def test_train_evaluate_predict_then_budget_exhausted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One tiny run (300 digits, 2 shards, 6 epochs) covers the whole flow: training is the slow part."""
    from PIL import Image

    from dp_tangent.workspace import Workspace

    recipe, ws_path = write(tmp_path / "tiny.yaml", TINY), tmp_path / "ws"
    code, output, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "run1", "--workspace", str(ws_path))
    assert code == 0, err
    ws = Workspace.open(ws_path)
    assert ws.list_components() == ["run1-shard-0", "run1-shard-1"] and ws.list_models() == ["run1"]
    for k in range(2):
        meta = ws.load_component(f"run1-shard-{k}").metadata
        assert (meta.data_source, meta.shard, meta.privacy.private) == ("digits", f"shard-{k}", True)
        assert meta.epsilon <= 8 and (f"run1-shard-{k}: its run's epsilon {fmt_eps(meta.epsilon)} (the shard's size "
                                      "taken as public: planned from its record count), test accuracy") in output
        spent = ws.ledger.shard_spend("digits", f"shard-{k}", delta=meta.privacy.delta).epsilon
        assert (f"digits/shard-{k}: spent epsilon {fmt_eps(spent)} of its budget 10 at delta 1e-05, "
                f"{fmt_remaining(10, fmt_eps(spent))} left (with the shards' sizes taken as public: a run on them was "
                "planned from its shard's record count)") in output  # as `budget show` prints it, with its "*"
    assert ws.ledger.budget("digits", "shard-0").epsilon == 10
    assert (ws_path / "data-sources.json").is_file()  # digits can be re-read for retraining
    trained_acc = float(re.search(r"model run1: .* test accuracy ([\d.]+)%", output).group(1))
    # 10 classes, chance 10%. Secure DP noise makes this run's accuracy random. At 2 epochs and lr 0.1, 17 runs gave
    # 18.5-36.9% (mean 28, sd 5), and a bar of 12 failed once; at 6 epochs and lr 0.3, 4 runs gave 55-63%.
    assert trained_acc > 30

    code, out, err = run_cli(capsys, "evaluate", "run1", "--data", str(recipe), "--workspace", str(ws_path))
    assert code == 0, err
    held_out = len(load_recipe(recipe).load_data()[0])
    evaluated = float(re.fullmatch(rf"run1: test accuracy ([\d.]+)% on {held_out} records \(sklearn_digits; always "
                                   r"the most common label would score [\d.]+%\)\n", out).group(1))
    assert abs(evaluated - trained_acc) <= 0.06  # the same model and test split (printed at 1 and 2 decimals)

    test, _ = load_recipe(recipe).load_data()
    np.save(tmp_path / "batch.npy", test.inputs[:3].numpy())
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    code, out, err = run_cli(capsys, "predict", "run1-shard-0", str(tmp_path / "batch.npy"),
                             str(tmp_path / "digit.png"), "--data", str(recipe), "--workspace", str(ws_path))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert re.fullmatch(r".*batch\.npy: \d \d \d", lines[0]) and re.fullmatch(r".*digit\.png: \d", lines[1])

    np.save(tmp_path / "wrong.npy", np.zeros((2, 5), dtype=np.float32))
    np.save(tmp_path / "wrong4d.npy", np.zeros((1, 5, 48, 48), dtype=np.float32))
    for wrong, message in (("wrong.npy", "expected an array of shape (3, 48, 48) or (N, 3, 48, 48), got (2, 5)"),
                           ("wrong4d.npy", "inputs of shape (5, 48, 48), but model 'run1' takes (3, 48, 48)")):
        code, _, err = run_cli(capsys, "predict", "run1", str(tmp_path / wrong), "--workspace", str(ws_path))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err

    events = len(ws.ledger.events(data_source="digits"))
    code, _, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "run1", "--workspace", str(ws_path))
    assert code == 2 and "model 'run1' already exists" in err and len(ws.ledger.events(data_source="digits")) == events

    code, _, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "run2", "--workspace", str(ws_path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "budget exceeded" in err, err
    assert "Traceback" not in err and not ws.component_path("run2-shard-0").exists()


@pytest.mark.parametrize("args, message", [
    (["evaluate", "nope"], "no model or component 'nope'"),
    (["predict", "nope", "x.npy"], "no model or component 'nope'"),
    (["train", "--init", "{bad}", "--name", "x"], "backbone.name: unknown timm model 'no_such_net'"),
    (["train", "--init", "{tiny}", "--name", "x", "--epsilon", "-1"], "overrides: privacy.epsilon"),
    (["train", "--init", "{missing}"], "missing.yaml: recipe file not found"),
    (["evaluate", "x", "--data", "{missing}"], "no model or component 'x'"),
    (["train", "--init", "{tiny}", "--name", "x", "--executor", "slurm"], "unknown executor 'slurm'"),
    (["train", "--init", "{tiny}", "--name", "x", "--executor", "ray", "--workers", "2"], "--workers applies to the local"),
    (["train", "--init", "{tiny}", "--name", "x", "--address", "auto"], "--address applies to the ray executor only"),
    (["train", "--init", "{tiny}", "--name", "x", "--workers", "0"], "workers must be >= 1"),
    (["train", "--init", "{tiny}", "--name", "x", "--shard", "7"], "--shard 7 is out of range"),
])
def test_cli_mistakes_exit_2_with_one_line(capsys, tmp_path: Path, args: list[str], message: str) -> None:
    from dp_tangent.workspace import Workspace

    ws = Workspace.create(tmp_path / "ws")
    paths = {"bad": write(tmp_path / "bad.yaml", _with("backbone", "name", "no_such_net")),
             "tiny": write(tmp_path / "tiny.yaml", TINY), "missing": tmp_path / "missing.yaml"}
    code, out, err = run_cli(capsys, *[a.format(**paths) for a in args], "--workspace", str(ws.root))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out and ws.list_components() == []


def test_train_on_a_missing_recipe_creates_no_workspace(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "--init", str(tmp_path / "missing.yaml"), "--workspace", str(tmp_path / "ws"))
    assert code == 2 and err == f"error: {tmp_path / 'missing.yaml'}: recipe file not found\n"
    assert not (tmp_path / "ws").exists()


def test_schema_checked_is_called_once_everything_but_the_backbone_holds(tmp_path: Path) -> None:
    """The hook the CLI starts its workers from: after the schema, before the backbone (which imports torch)."""
    seen: list[int] = []
    load_recipe(write(tmp_path / "ok.yaml", TINY), schema_checked=lambda schema: seen.append(schema.shards.count))
    assert seen == [TINY["shards"]["count"]]
    with pytest.raises(RecipeError, match="unknown timm model"):
        load_recipe(write(tmp_path / "net.yaml", _with("backbone", "name", "no_such_net")),
                    schema_checked=lambda schema: seen.append(schema.shards.count))
    assert len(seen) == 2
    with pytest.raises(RecipeError, match="training.epochs"):
        load_recipe(write(tmp_path / "epochs.yaml", _with("training", "epochs", 0)), schema_checked=seen.append)
    assert len(seen) == 2
