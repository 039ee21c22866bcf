"""Commands that train nothing do not import torch, timm or Opacus, nor the accountants' libraries
unless they compute an epsilon (issue 15: start-up).

Each command runs in a fresh interpreter, which reports the heavy modules it loaded on exit; the
time they take is measured by ``benchmarks/startup.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import startup
from dp_tangent.recipes import DEFAULT_RECIPE
from dp_tangent.workspace import Workspace
from privacy_accounting import dp_sgd_event
from privacy_accounting.bounds_cache import ENV as CACHE_ENV
from privacy_accounting.figures import fmt_eps, fmt_remaining

HEAVY = ("torch", "timm", "opacus", "torchvision", "transformers", "matplotlib")
ACCOUNTING = ("dp_accounting", "scipy")  # what an accountant computes with: a second to import
PROBE = """
import atexit, json, sys
atexit.register(lambda: print("LOADED " + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr))
from dp_tangent.cli import main
main(sys.argv[1:])
"""


def run_probed(*args: str, cwd: Path, exit_code: int = 0) -> tuple[str, list[str]]:
    """(stdout, or stderr if it fails, and the heavy modules loaded) of ``dp-tangent *args`` in a fresh
    interpreter, its epsilon cache in ``cwd/cache`` (never the user's own)."""
    env = {**os.environ, CACHE_ENV: str(cwd / "cache")}
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY + ACCOUNTING), *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120, check=False)
    assert done.returncode == exit_code, (args, done.stdout[-1000:], done.stderr[-2000:])
    lines = done.stderr.splitlines()
    loaded = next(x for x in lines if x.startswith("LOADED "))
    output = done.stdout if exit_code == 0 else "\n".join(x for x in lines if x != loaded)
    return output, json.loads(loaded[len("LOADED "):])


def small_workspace(root: Path) -> Workspace:
    return startup.small_workspace(root / "ws")


def test_importing_the_command_line_pulls_in_no_heavy_module() -> None:
    code = f"import sys, dp_tangent.cli; print([m for m in {HEAVY + ACCOUNTING!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("command", [
    ["--help"],
    ["audit", "verify", "-w", "ws"],
    ["audit", "log", "-w", "ws"],
    ["requests", "list", "-w", "ws"],
    ["certificate", "verify", "ws/certificates/r1.txt", "-w", "ws"],
    ["budget", "show", "-w", "ws"],  # nothing spent yet: no epsilon to compute
])
def test_commands_that_train_nothing_import_no_torch_and_no_accountant(tmp_path, command: list[str]) -> None:
    small_workspace(tmp_path)
    assert run_probed(*command, cwd=tmp_path)[1] == []


def _spent_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached: bool) -> tuple[Workspace, float]:
    """The small workspace with one DP-SGD run on ``toy/s0`` and that shard's spent epsilon, computed in this
    process, written to the children's cache (``cache/``) only if ``cached``."""
    from privacy_accounting.accountants import clear_cache

    ws = small_workspace(tmp_path)
    startup.spend(ws, dp_sgd_event(1.0, 0.1, 20))
    clear_cache()  # figures computed in this process so far were not written to that cache
    with monkeypatch.context() as patch:  # what an earlier command of this user computed, or nothing
        patch.setenv(CACHE_ENV, str(tmp_path / "cache") if cached else "off")
        spent = ws.ledger.shard_spend("toy", "s0")
    clear_cache()
    assert 0 < spent.epsilon < 4.0 and spent.accountant in ("prv", "pld")
    return ws, spent.epsilon


def test_budget_show_reads_epsilons_this_user_computed_before_without_the_accountants(tmp_path,
                                                                                      monkeypatch) -> None:
    _, epsilon = _spent_workspace(tmp_path, monkeypatch, cached=True)
    out, loaded = run_probed("budget", "show", "-w", "ws", cwd=tmp_path)
    assert loaded == [] and fmt_eps(epsilon) in out and fmt_remaining(4.0, fmt_eps(epsilon)) in out


def test_budget_show_computes_an_epsilon_with_the_accountants_libraries_only(tmp_path, monkeypatch) -> None:
    _, epsilon = _spent_workspace(tmp_path, monkeypatch, cached=False)
    out, loaded = run_probed("budget", "show", "-w", "ws", cwd=tmp_path)
    assert fmt_eps(epsilon) in out and fmt_remaining(4.0, fmt_eps(epsilon)) in out  # as with Opacus imported whole
    assert loaded == sorted(ACCOUNTING)  # no torch: Opacus's accountant files ran without it
    out, loaded = run_probed("budget", "show", "-w", "ws", cwd=tmp_path)
    assert loaded == [] and fmt_eps(epsilon) in out  # and the figures it computed were cached


@pytest.mark.parametrize("form", ["md", "json", "html"])
def test_the_report_reads_a_workspace_without_torch(tmp_path, monkeypatch, form: str) -> None:
    _, epsilon = _spent_workspace(tmp_path, monkeypatch, cached=True)
    # its epsilon curves computed, then read from the cache; Markdown draws none and computes none
    for libraries in ((), ()) if form == "md" else (ACCOUNTING, ()):
        (tmp_path / f"report.{form}").unlink(missing_ok=True)
        _, loaded = run_probed("report", "-w", "ws", "-f", form, "-o", f"report.{form}", cwd=tmp_path)
        assert loaded == sorted(libraries)  # the HTML report's figures are drawn without a plotting library
        assert fmt_eps(epsilon) in (tmp_path / f"report.{form}").read_text()


def test_compose_and_release_run_without_torch(tmp_path, mlp_backbone) -> None:
    """`dp-tangent compose` (4 s and 685 MB with torch, 0.5 s and 63 MB without) composes the deltas a process
    holding torch composes (tests/test_compose.py: bit for bit, file bytes too), and the log verifies."""
    import torch

    from dp_tangent.data import RecordSet
    from dp_tangent.training import PrivacySpec, TrainConfig

    ws = small_workspace(tmp_path)
    for k in range(2):
        x = torch.randn(24, 8, generator=torch.Generator().manual_seed(k))
        ws.train(mlp_backbone, None, RecordSet(x, (x[:, 0] > 0).long(), tuple(f"r{k}-{i}" for i in range(24))),
                 data_source="free", shard=f"s{k}", name=f"c{k}", privacy=PrivacySpec(epsilon=float("inf")),
                 config=TrainConfig(epochs=1, batch_size=8, lr=0.1))
    ws.compose_model("here", ["c0", "c1"], [1.0, 2.0])
    out, loaded = run_probed("compose", "c0", "c1", "--weights", "1,2", "--name", "there", "-w", "ws", cwd=tmp_path)
    assert loaded == [] and "composed there from c0, c1 (mean)" in out
    assert ws.model_record("there").deltas_sha256 == ws.model_record("here").deltas_sha256
    # and `release` (3.2 s and 677 MB with torch, 0.8 s and 62 MB without): the bytes torch's writer writes
    out, loaded = run_probed("release", "there", "-o", "bundle", "--non-private", "-w", "ws", cwd=tmp_path)
    assert "torch" not in loaded and "released there to" in out
    from safetensors.torch import save

    from dp_tangent.components.release_bundle import FORMAT
    assert (tmp_path / "bundle" / "deltas.safetensors").read_bytes() == save(ws.load_model("there")[1],
                                                                             metadata={"format": FORMAT})
    stated = json.loads((tmp_path / "bundle" / "release.json").read_text())["deltas_sha256"]
    assert stated == ws.model_record("there").deltas_sha256
    run_probed("audit", "verify", "-w", "ws", cwd=tmp_path)


def test_forget_without_retraining_runs_without_torch(tmp_path, mlp_backbone) -> None:
    """`forget` without retraining (5.1 s and 754 MB on the demo's workspace with torch, 0.9 s and 71 MB without):
    the component removed, the model recomposed from numpy arrays, the gram cache rewritten without the record."""
    import torch

    from dp_tangent.data import RecordSet
    from dp_tangent.training import PrivacySpec, TrainConfig
    from dp_tangent.workspace import gram_cache

    ws = small_workspace(tmp_path)
    ws.set_budget("toy", None, epsilon=40.0, delta=1e-5)
    for k, shard in enumerate(("s0", "s1")):
        x = torch.randn(24, 8, generator=torch.Generator().manual_seed(k))
        ws.train(mlp_backbone, None, RecordSet(x, (x[:, 0] > 0).long(), tuple(f"{shard}-{i}" for i in range(24))),
                 data_source="toy" if k == 0 else "more", shard=shard, name=f"c{k}",
                 privacy=PrivacySpec(noise_multiplier=1.0), config=TrainConfig(epochs=1, batch_size=8, lr=0.1))
    ws.compose_model("m", ["c0", "c1"], [1.0, 3.0])
    [cache] = [f for f in gram_cache.cache_files(ws) if "/toy/" in f]
    before = gram_cache._decode((ws.root / cache).read_bytes())
    out, loaded = run_probed("forget", "s0-3", "-w", "ws", cwd=tmp_path)
    assert not set(loaded) & {"torch", "timm", "opacus"} and "removed 1 component(s)" in out, (out, loaded)
    after = gram_cache._decode((ws.root / cache).read_bytes())
    assert after.commitments == before.commitments[:3] + before.commitments[4:]
    assert torch.equal(after.grams, torch.cat([before.grams[:3], before.grams[4:]]))
    record, deltas = ws.load_model("m")  # recomposed from c1 alone: its weight 3 of 3, its deltas exactly
    own = ws.load_component("c1").deltas
    assert record.component_names == ["c1"] and deltas.keys() == own.keys()
    assert all(torch.equal(deltas[n], own[n]) for n in deltas)
    run_probed("audit", "verify", "-w", "ws", cwd=tmp_path)


RECIPE_MISTAKES = [  # (section, key, value, the error's field and message)
    ("training", "epochz", 20, "training.epochz: Extra inputs are not permitted"),
    ("privacy", "epsilon", -1, "privacy.epsilon: Input should be greater than 0"),
    ("training", "loss", "hinge", "training.loss: Input should be 'cross_entropy' or 'square'"),
    ("training", "grad_sample_mode", "vmap", "training.grad_sample_mode: Input should be 'gram', 'hooks' or 'ghost'"),
    (None, "trainable", "blocks[-1]", "trainable: 'blocks[-1]' is not understood; use None/'all', 'blocks[-K:]'"),
    (None, "trainable", "blocks[-0:]", "trainable: 'blocks[-0:]': -0 is 0, every block; write 'blocks[-K:]' with K"),
]


@pytest.mark.parametrize("command", ["train", "pretrain"])
@pytest.mark.parametrize("section, key, value, message", RECIPE_MISTAKES)
def test_a_mistake_in_a_recipe_is_reported_before_torch_loads(tmp_path, command: str, section: str | None, key: str,
                                                               value: object, message: str) -> None:
    """The default recipe with one mistake, as a user writes it: one line naming the file and the field, exit 2,
    and neither torch, timm nor Opacus loaded (they took 6 s before the error)."""
    recipe = yaml.safe_load(DEFAULT_RECIPE.read_text())
    (recipe[section] if section else recipe)[key] = value
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(recipe))
    args = ["train", "--init", "mine.yaml", "-w", "ws"] if command == "train" else ["pretrain", "mine.yaml"]
    output, loaded = run_probed(*args, cwd=tmp_path, exit_code=2)
    assert output.startswith(f"error: mine.yaml: {message}"), output
    assert "\n" not in output and loaded == []
    assert not (tmp_path / "ws").exists()  # nothing created
