"""DP training of components: Opacus clipping and noise, budgets before data, artifacts, honesty."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build
from opacus import GradSampleModule, PrivacyEngine
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from torch.utils.data import DataLoader, TensorDataset

from dp_tangent import linearize
from dp_tangent.components.component import NON_PRIVATE_LABEL, load_component
from dp_tangent.data import RecordSet
from dp_tangent.training.losses import ConvexLoss
from dp_tangent.components.manifest import commit
from dp_tangent.training.per_sample import reference_per_sample_gradients
from dp_tangent.training import PrivacySpec, TrainConfig, TrainingError, plan_run, train_component
from privacy_accounting import BudgetExceededError, Ledger

KEY = bytes(range(32))


def tiny_records(n: int = 96, seed: int = 0) -> RecordSet:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return RecordSet(x, y, tuple(f"rec-{i}" for i in range(n)))



def _dp_objects(arch: str, mode: str, noise: float, clip: float):
    model, x, suffix = build(arch, dtype=torch.float32)
    tangent = linearize(model, suffix)
    y = torch.randint(0, 3 if arch == "mlp" else 10, (len(x),), generator=torch.Generator().manual_seed(0))
    loss = ConvexLoss()
    if mode == "ghost":
        gsm = GradSampleModuleFastGradientClipping(tangent, max_grad_norm=clip, use_ghost_clipping=True, strict=False)
    else:
        gsm = GradSampleModule(tangent, strict=False)
    gsm.train()
    optimizer = torch.optim.SGD(tangent.deltas(), lr=1.0)
    criterion = _Crit(loss)
    prepared = PrivacyEngine().make_private(
        module=gsm, optimizer=optimizer, criterion=criterion, data_loader=DataLoader(TensorDataset(x, y), batch_size=len(x)),
        noise_multiplier=noise, max_grad_norm=clip, grad_sample_mode=mode, poisson_sampling=False,
        noise_generator=torch.Generator().manual_seed(5))
    return model, tangent, x, y, loss, prepared


class _Crit:
    def __init__(self, loss: ConvexLoss) -> None:
        self.loss, self.reduction = loss, "mean"

    def __call__(self, logits, y):  # noqa: ANN001, ANN204
        per = self.loss.per_sample(logits, y)
        return per if self.reduction == "none" else per.mean()


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_opacus_per_sample_gradients_match_vmap_reference_in_training_path(arch: str) -> None:
    model, tangent, x, y, loss, (gsm, optimizer, _) = _dp_objects(arch, "hooks", 1.0, 1.0)
    deltas = {n: 0.02 * torch.randn_like(p) for n, p in tangent.named_deltas()}
    tangent.load_deltas(deltas)
    loss.per_sample(gsm(x), y).mean().backward()
    want = reference_per_sample_gradients(model, deltas, x, y, loss)
    for name, p in tangent.named_deltas():
        scale = want[name].norm() + 1e-3
        # loss_reduction="mean": Opacus scales backprops by the batch size, so grad_sample is per example
        assert ((p.grad_sample - want[name]).norm() / scale).item() < 1e-5, name


def test_ghost_clipping_norms_match_the_reference() -> None:
    model, tangent, x, y, loss, (gsm, optimizer, criterion, _) = _dp_objects("vit", "ghost", 1.0, 1.0)
    deltas = {n: 0.02 * torch.randn_like(p) for n, p in tangent.named_deltas()}
    tangent.load_deltas(deltas)
    criterion(gsm(x), y).backward()
    want = reference_per_sample_gradients(model, deltas, x, y, loss)
    ref_norms = torch.stack([w.flatten(1).norm(dim=1) for w in want.values()]).norm(dim=0)
    assert torch.allclose(gsm.get_norm_sample(), ref_norms, rtol=1e-4)


def test_clipping_bounds_every_per_sample_gradient_and_noise_has_the_documented_std() -> None:
    clip, sigma = 0.05, 1.5
    model, tangent, x, y, loss, (gsm, optimizer, _) = _dp_objects("vit", "hooks", sigma, clip)
    loss.per_sample(gsm(x), y).mean().backward()
    params = tangent.deltas()
    per_sample = torch.cat([p.grad_sample.flatten(1) for p in params], dim=1)
    norms = per_sample.norm(dim=1)
    assert (norms > clip).all(), "precondition: every example needs clipping for the test to bite"
    optimizer.clip_and_accumulate()
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped = per_sample * factors[:, None]
    assert (clipped.norm(dim=1) <= clip * (1 + 1e-5)).all()  # float32 rounding of the norm
    summed = torch.cat([p.summed_grad.flatten() for p in params])
    assert torch.allclose(summed, clipped.sum(0), rtol=1e-4, atol=1e-7)
    optimizer.add_noise()
    optimizer.scale_grad()
    # Opacus (DPOptimizer.add_noise, loss_reduction="mean"): grad = (sum of clipped + N(0, (sigma*C)^2)) / B
    noise = torch.cat([p.grad.flatten() for p in params]) * optimizer.expected_batch_size - summed
    assert noise.numel() > 100_000
    std = noise.std().item()
    assert abs(std - sigma * clip) < 0.01 * sigma * clip, std
    assert abs(noise.mean().item()) < 5 * sigma * clip / math.sqrt(noise.numel())


def test_trained_function_is_the_tangent_of_the_eval_mode_network(tmp_path, mlp_backbone) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    result = train_component(mlp_backbone, None, tiny_records(), ledger=ledger, data_source="toy", shard="s0",
                             name="c0", output=tmp_path / "c0.safetensors", manifest_key=KEY,
                             privacy=PrivacySpec(epsilon=3.0), config=TrainConfig(epochs=2, batch_size=32, lr=0.1))
    component = load_component(result.path)
    base = mlp_backbone.build()
    assert any(d.abs().max() > 0 for d in component.deltas.values())
    x = torch.randn(5, 8)
    params = {n: p.detach() for n, p in base.named_parameters()}
    out, tangent_out = torch.func.jvp(lambda p: torch.func.functional_call(base, p, (x,)), (params,),
                                      ({n: component.deltas[n] for n in params},))
    fresh = linearize(base)
    fresh.load_deltas(component.deltas)
    assert torch.allclose(fresh(x), out + tangent_out, rtol=1e-5, atol=1e-6)


def test_component_artifact_records_everything_and_no_raw_ids(tmp_path, mlp_backbone) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    records = tiny_records()
    result = train_component(mlp_backbone, None, records, ledger=ledger, data_source="toy", shard="s0", name="c0",
                             output=tmp_path / "c0.safetensors", manifest_key=KEY, privacy=PrivacySpec(epsilon=2.0),
                             config=TrainConfig(epochs=2, batch_size=32, lr=0.1, seed=7))
    meta = load_component(result.path).metadata
    plan = plan_run(len(records), PrivacySpec(epsilon=2.0), TrainConfig(epochs=2, batch_size=32))
    p = meta.privacy
    assert p.private and p.epsilon <= 2.0 and p.epsilon > 1.9 and p.delta == pytest.approx(min(1e-5, 0.1 / 96))
    assert (p.noise_multiplier, p.sample_rate, p.steps) == (plan.noise_multiplier, plan.sample_rate, plan.steps)
    assert p.max_grad_norm == 1.0 and p.sampling == "poisson" and p.accountant in {"pld", "prv", "rdp"}
    assert min(v for v in p.epsilon_by_accountant.values() if v is not None) == p.epsilon
    assert p.secure_mode and "ChaCha20" in p.noise_generator and "fresh 256-bit OS key" in p.noise_generator
    # a secure run is not determined by any seed, so none is recorded (the config's 7 was not used)
    assert meta.training.seed is None and meta.training.noise == "secure"
    assert meta.trainable == "all" and meta.versions["opacus"] and meta.versions["cryptography"]
    assert meta.manifest.records == 96 and commit("rec-5", KEY) in meta.manifest.commitments
    blob = result.path.read_bytes()
    assert b"rec-5" not in blob and b"rec-" not in blob
    [event] = ledger.events(component="c0")
    assert event.status.value == "completed" and event.details["sha256"] == result.sha256


def test_budget_is_reserved_before_data_and_refusal_writes_nothing(tmp_path, mlp_backbone, monkeypatch) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    ledger.set_budget("toy", "s0", epsilon=1.0, delta=1e-5)
    out = tmp_path / "c0.safetensors"

    def touch_data(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("training started although the budget refuses the run")

    monkeypatch.setattr("dp_tangent.training.sgd.fit", touch_data)  # train_deltas takes it from there
    with pytest.raises(BudgetExceededError, match="s0"):
        train_component(mlp_backbone, None, tiny_records(), ledger=ledger, data_source="toy", shard="s0", name="c0",
                        output=out, manifest_key=KEY, privacy=PrivacySpec(epsilon=2.0, delta=1e-5),
                        config=TrainConfig(epochs=1, batch_size=32))
    assert not out.exists() and ledger.events(shard="s0") == []
    assert not list(tmp_path.glob(".c0*"))


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_a_crash_mid_training_counts_as_spent_and_leaves_no_component(tmp_path, mlp_backbone, interrupt) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    out = tmp_path / "c0.safetensors"

    def crash(step: int, total: int) -> None:
        if step == 2:
            raise interrupt("stop")

    with pytest.raises(interrupt):
        train_component(mlp_backbone, None, tiny_records(), ledger=ledger, data_source="toy", shard="s0", name="c0",
                        output=out, manifest_key=KEY, privacy=PrivacySpec(epsilon=2.0),
                        config=TrainConfig(epochs=2, batch_size=32), progress=crash)
    assert not out.exists() and not list(tmp_path.glob(".c0*"))
    [event] = ledger.events(shard="s0")
    assert event.status.value == "failed"
    assert ledger.shard_spend("toy", "s0", delta=1e-5).epsilon > 1.0


def test_non_private_training_is_labelled_and_never_claims_dp(tmp_path, mlp_backbone) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    result = train_component(mlp_backbone, None, tiny_records(), ledger=ledger, data_source="toy", shard="s0",
                             name="ref", output=tmp_path / "ref.safetensors", manifest_key=KEY,
                             privacy=PrivacySpec(epsilon=math.inf), config=TrainConfig(epochs=1, batch_size=32))
    p = load_component(result.path).metadata.privacy
    assert not p.private and p.epsilon is None and p.delta is None and p.label == NON_PRIVATE_LABEL
    [event] = ledger.events(shard="s0")
    assert event.purpose.value == "non_private_baseline"
    assert math.isinf(ledger.shard_spend("toy", "s0", delta=1e-5).epsilon)
    ledger.set_budget("toy", "s1", epsilon=8.0, delta=1e-5)
    with pytest.raises(BudgetExceededError):
        train_component(mlp_backbone, None, tiny_records(), ledger=ledger, data_source="toy", shard="s1",
                        name="ref1", output=tmp_path / "ref1.safetensors", manifest_key=KEY,
                        privacy=PrivacySpec(epsilon=math.inf), config=TrainConfig(epochs=1, batch_size=32))


@pytest.mark.parametrize("privacy, message", [
    (PrivacySpec(epsilon=1.0, delta=0.02), "1/n"),
    (PrivacySpec(epsilon=-1.0), "epsilon"),
    (PrivacySpec(), "exactly one"),
    (PrivacySpec(epsilon=1.0, noise_multiplier=1.0), "exactly one"),
    (PrivacySpec(noise_multiplier=1.0, max_grad_norm=0), "max_grad_norm"),
])
def test_bad_privacy_requests_are_refused_before_anything_happens(tmp_path, mlp_backbone, privacy, message) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    with pytest.raises(TrainingError, match=message):
        train_component(mlp_backbone, None, tiny_records(), ledger=ledger, data_source="toy", shard="s0", name="c0",
                        output=tmp_path / "c0.safetensors", manifest_key=KEY, privacy=privacy)
    assert ledger.events() == []


def test_gram_hooks_and_ghost_clipping_train_the_same_component(tmp_path, mlp_backbone) -> None:
    """Same noise and batches needed: the seeded (reproducible, non-private) mode."""
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    deltas = {}
    for mode in ("hooks", "ghost", "gram"):
        result = train_component(mlp_backbone, None, tiny_records(), ledger=ledger, data_source="toy", shard=mode,
                                 name=mode, output=tmp_path / f"{mode}.safetensors", manifest_key=KEY,
                                 privacy=PrivacySpec(noise_multiplier=0.8, max_grad_norm=0.5),
                                 config=TrainConfig(epochs=2, batch_size=32, physical_batch_size=16, lr=0.2,
                                                    grad_sample_mode=mode, noise="seeded"),
                                 allow_overlap=True)  # the same records twice, on purpose
        deltas[mode] = load_component(result.path).deltas
        assert load_component(result.path).metadata.privacy.grad_sample_mode == mode
    for name in deltas["hooks"]:
        for mode in ("ghost", "gram"):
            assert torch.allclose(deltas["hooks"][name], deltas[mode][name], rtol=1e-4, atol=1e-5), (mode, name)
    assert any(d.abs().max() > 1e-3 for d in deltas["hooks"].values())
