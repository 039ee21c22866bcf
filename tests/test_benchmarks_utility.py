"""The utility benchmarks' cores at tiny sizes: real outcomes, no timings asserted, offline, CPU only."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from benchmarks import _utility as U
from benchmarks import accounting_tightness, composition, forgetting_cost, utility_accuracy, utility_dp, utility_text
from benchmarks._baselines import NonLinearSuffix, train
from dp_tangent.training import PrivacySpec, fit, plan_run

TINY = 120  # digits


@pytest.fixture(scope="module")
def vit() -> U.Prepared:
    return U.prepare("vit_small", max_records=TINY)


def _sweep(epsilons: tuple[float, ...]) -> U.Sweep:
    return U.Sweep(epsilons=epsilons, seeds=(0, 1, 2), epochs=1, batch_size=32, lr_grid_private=(0.5,),
                   lr_grid_non_private=(0.05,), tune_epsilon=1.0, max_records=TINY)


def _finish(results: dict) -> dict:
    results["wall_seconds"] = 1.0
    results["load_average_at_end"] = 0.0
    results["load_average_at_start"] = 0.0
    results["machine"] = {"cpu": "test", "usable_cpus": 2, "git": "test", "versions": {
        "torch": "x", "opacus": "x", "timm": "x"}}
    return results


def test_train_loop_matches_the_library_fit_on_a_tangent_model(vit: U.Prepared) -> None:
    """The shared loop used for every method reproduces dp_tangent.training.fit on the tangent model (DP,
    in the seeded mode the benchmarks train in: secure noise would differ between any two runs)."""
    config = dataclasses.replace(U.train_config(1, 0.5, 3, 32), noise="seeded")
    privacy = PrivacySpec(epsilon=2.0, delta=U.DELTA)
    plan = plan_run(len(vit.train), privacy, config)
    module = vit.module("tangent")
    train(module, vit.inputs("tangent", "train"), vit.train.targets, plan, privacy, config)
    ours = {n: p.detach().clone() for n, p in vit.tangent.named_deltas()}
    vit.module("tangent")  # zero deltas again
    fit(vit.tangent, vit.train, plan, privacy, config)
    for name, delta in vit.tangent.named_deltas():
        torch.testing.assert_close(ours[name], delta.detach(), rtol=1e-5, atol=1e-6)
    assert any(d.abs().sum() > 0 for d in ours.values())


def test_nonlinear_baseline_trains_exactly_the_tangent_parameters(vit: U.Prepared) -> None:
    module = vit.module("nonlinear")
    assert isinstance(module, NonLinearSuffix)
    trained = {n for n, p in module.net.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in vit.tangent.named_deltas()}
    with torch.no_grad():  # at theta0 the non-linear suffix and the tangent model agree
        h = vit.inputs("tangent", "test")[:8]
        torch.testing.assert_close(module(h), vit.module("tangent")(h), rtol=1e-4, atol=1e-4)


def _check_sweep(results: dict, epsilons: tuple[float, ...]) -> None:
    entry = results["models"]["vit_small"]
    assert set(entry["runs"]) == set(U.IMAGE_METHODS)
    for method, by_eps in entry["runs"].items():
        assert list(by_eps) == [str(U.json_epsilon(e)) for e in epsilons]
        for eps, runs in by_eps.items():
            assert [r["seed"] for r in runs] == [0, 1, 2]
            assert all(0.0 <= r["accuracy"] <= 1.0 for r in runs)
            sigmas = {r["noise_multiplier"] for r in runs}
            assert len(sigmas) == 1 and (eps == "inf") == (sigmas == {0.0})


def test_utility_sweeps_and_their_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(utility_accuracy, "QUICK", _sweep((math.inf,)))
    monkeypatch.setattr(utility_dp, "QUICK", _sweep((1.0, math.inf)))
    for module, eps in ((utility_accuracy, (math.inf,)), (utility_dp, (1.0, math.inf))):
        results = _finish(module.run(True, models=("vit_small",)))
        _check_sweep(results, eps)
        text = module.render(results)
        first = U.accuracies(results["models"]["vit_small"], "tangent", eps[0])
        assert U.pct(first) in text  # the doc's numbers are the JSON's
        assert "randomly initialised" in text
    # same sigma for every method at one epsilon: the same guarantee
    dp = results["models"]["vit_small"]["runs"]
    assert len({runs["1.0"][0]["noise_multiplier"] for runs in dp.values()}) == 1


def test_composition_is_the_average_of_component_logits(vit: U.Prepared) -> None:
    cfg = composition.Config(shards=(1, 2), splits=("random", "label"), seeds=(0,), epochs=1, lr_grid=(0.01,),
                             timing_repeats=1)
    lrs = {"tangent": 0.01, "nonlinear": 0.01}
    rows = [composition.one_setting(vit, n, by, 0, lrs, cfg) for n, by in ((1, "random"), (2, "random"), (2, "label"))]
    for row in rows:
        assert 0 <= row["composed_accuracy"] <= 1 and 0 <= row["ensemble_accuracy"] <= 1
        assert row["composed_vs_logit_average_max_abs_diff"] < 1e-4
    label_shards = composition.shard_rows(vit, 2, "label", 0)
    labels = [set(vit.train.targets[r].tolist()) for r in label_shards]
    assert not labels[0] & labels[1]  # class-incremental: disjoint label blocks
    timing = composition.inference_times(vit, 2, 1)
    assert set(timing) == {"composed_tangent", "ensemble_full", "ensemble_shared_prefix"}
    results = _finish({"benchmark": "composition", "quick": True, "created": "now",
                       "settings": {**composition.asdict(cfg), "loss": "cross_entropy", "momentum": 0.9},
                       "models": {"vit_small": {"description": "d", "trainable": "t", "runs": rows,
                                                "lr": {"chosen": lrs}, "inference_seconds_per_example": {
                                                    "1": timing, "2": timing}}}})
    text = composition.render(results)
    assert "composition" in text and U.pct(composition.stats(results["models"]["vit_small"], 2, "label",
                                                             "composed_accuracy")) in text


def test_forgetting_drop_is_bit_identical_to_composing_the_rest(tmp_path: Path) -> None:
    cfg = forgetting_cost.Config(shards=(2,), epochs=1, batch_size=32, max_records=TINY)
    row = forgetting_cost.one_setting("vit_small", 2, cfg, tmp_path)
    assert row["drop_bit_identical_to_composing_the_rest"] is True
    assert row["retrain_bit_identical_to_composing_the_current"] is True
    assert row["verified"] == [True, True]
    assert row["components_after"] == 1  # shard 0 dropped, shard 1 replaced by its retrained component
    assert all(0 <= a <= 1 for a in row["accuracy"].values())
    text = forgetting_cost.render(_finish({"benchmark": "forgetting_cost", "quick": True, "created": "now",
                                           "settings": {**forgetting_cost.asdict(cfg), "delta": U.DELTA,
                                                        "grad_sample_mode": "ghost"},
                                           "models": {"vit_small": {"description": "d", "trainable": "t",
                                                                    "runs": [row]}}}))
    assert "bit-identical" in text and "NOT" not in text


def test_accounting_reports_the_tightest_valid_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    configs = accounting_tightness.configurations()
    monkeypatch.setattr(accounting_tightness, "configurations", lambda: configs[:1] + configs[-1:])
    results = _finish(accounting_tightness.run(True))
    for row in results["rows"]:
        valid = [e for e in row["epsilon"].values() if e is not None]
        assert row["reported"] == min(valid)
        assert row["reported_accountant"] == accounting_tightness.tightest(row)
        assert row["reported"] <= row["target_epsilon"]
    text = accounting_tightness.render(results)
    assert "not every" not in text and f"{results['rows'][0]['reported']:.3f}" in text


def test_committed_sections_render_from_their_json() -> None:
    """Every committed result JSON renders to exactly the section in docs/benchmarks.md."""
    doc = (Path(U.ROOT) / "docs" / "benchmarks.md").read_text()
    for module in (utility_accuracy, utility_dp, utility_text, composition, forgetting_cost, accounting_tightness):
        path = U.result_file(module.NAME, quick=False)
        if not path.exists():
            continue
        import json
        section = module.render(json.loads(path.read_text())).strip()
        assert f"<!-- {module.NAME}:start -->\n{section}\n<!-- {module.NAME}:end -->" in doc
