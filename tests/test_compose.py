"""Composition: exact linearity, one model's cost, refusals, RegMean by CG = joint least squares, centroids."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, jacrev

from dp_tangent import linearize
from dp_tangent.backbones import BackboneSpec, weights_digest
from dp_tangent.components.component import (NON_PRIVATE_LABEL, Component, ComponentError, ComponentMetadata, ManifestInfo,
                                  PrivacyInfo, TrainingInfo, deltas_digest, load_component, save_component)
from dp_tangent.components import (CompositionError, PrivateMergeDataError, centroid_base, compose, save_centroid,
                                weighted_sum)

SPEC = BackboneSpec("test_mlp64")  # not a timm name: only used via the monkeypatched build()


def mlp64() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double().eval()



@pytest.fixture
def backbone(monkeypatch: pytest.MonkeyPatch) -> BackboneSpec:
    monkeypatch.setattr(BackboneSpec, "build", lambda self: mlp64())
    return SPEC


def make_component(path: Path, deltas: dict[str, torch.Tensor], name: str, *, trainable: str = "all",
                   base_sha: str | None = None, base: dict | None = None) -> Component:
    """A component file with honest non-private metadata around given deltas (e.g. an exact fit)."""
    meta = ComponentMetadata(
        name=name, created_at="2025-01-01T00:00:00+00:00", base=base or SPEC.to_dict(),
        base_weights_sha256=base_sha or weights_digest(mlp64()), trainable=trainable,
        loss={"kind": "square", "kappa": 1.0, "l2": 0.0}, data_source="toy", shard=name,
        manifest=ManifestInfo(scheme="hmac-sha256", key_id="0" * 16, root="0" * 64, records=0, commitments=[]),
        privacy=PrivacyInfo(private=False, label=NON_PRIVATE_LABEL, epsilon=None, delta=None, accountant=None,
                            noise_multiplier=0.0, max_grad_norm=None, sample_rate=1.0, steps=1, sampling="none",
                            neighbouring_relation="add or remove one record", grad_sample_mode=None,
                            noise_generator="none", secure_mode=False, ledger_reservation=None),
        training=TrainingInfo(seed=0, epochs=1, batch_size=1, physical_batch_size=1, optimizer="lstsq", lr=1.0,
                              momentum=0.0, l2=0.0),
        versions={}, deltas_sha256=deltas_digest(deltas))
    save_component(path / f"{name}.safetensors", deltas, meta)
    return load_component(path / f"{name}.safetensors")


def random_deltas(seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in mlp64().named_parameters()}


def logits(deltas: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    tangent = linearize(mlp64())
    tangent.load_deltas(deltas)
    with torch.no_grad():
        return tangent(x)


@pytest.mark.parametrize("method, weights", [("mean", None), ("mean", [1.0, 3.0, 0.5]), ("sum", None),
                                             ("task_arithmetic", [1.0, -0.7, 0.25])])
def test_composed_logits_are_the_weighted_combination_of_component_logits(tmp_path, method, weights) -> None:
    comps = [make_component(tmp_path, random_deltas(i), f"c{i}") for i in range(3)]
    composed = compose(comps, weights, method)
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    f0 = logits({n: torch.zeros_like(t) for n, t in comps[0].deltas.items()}, x)
    coefficients = [p.coefficient for p in composed.record.parts]
    if method == "task_arithmetic":
        assert coefficients == weights
    want = f0 + sum(c * (logits(comp.deltas, x) - f0) for c, comp in zip(coefficients, comps))
    got = logits(composed.deltas, x)
    assert (want - f0).abs().max() > 1e-2, "the components must move the logits for the test to mean anything"
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    if method == "mean":
        assert math.isclose(sum(p.coefficient for p in composed.record.parts), 1.0, rel_tol=1e-15)
    assert composed.record.names == ("c0", "c1", "c2")
    assert [p.sha256 for p in composed.record.parts] == [c.sha256 for c in comps]
    assert composed.record.base_weights_sha256 == weights_digest(mlp64()) and composed.record.trainable == "all"
    assert composed.record.deltas_sha256 == deltas_digest(composed.deltas)


def test_ten_components_cost_one_tangent_model(tmp_path) -> None:
    comps = [make_component(tmp_path, random_deltas(i), f"c{i}") for i in range(10)]
    composed = compose(comps)
    one = linearize(mlp64())
    params_one = sum(p.numel() for p in one.parameters())
    composed_model = linearize(mlp64())
    composed_model.load_deltas(composed.deltas)
    assert sum(p.numel() for p in composed_model.parameters()) == params_one
    assert {n: t.shape for n, t in composed.deltas.items()} == {n: t.shape for n, t in comps[0].deltas.items()}
    assert sum(t.numel() for t in composed.deltas.values()) == sum(t.numel() for t in comps[0].deltas.values())


def test_weighted_sum_is_deterministic_and_negative_weight_subtracts(tmp_path) -> None:
    a, b = random_deltas(1), random_deltas(2)
    ca, cb = make_component(tmp_path, a, "a"), make_component(tmp_path, b, "b")
    diff = compose([ca, cb], [1.0, -1.0], "task_arithmetic").deltas
    for name in a:
        assert torch.allclose(diff[name], a[name] - b[name], rtol=0, atol=1e-15)
    assert all(torch.equal(weighted_sum([a, b], [0.3, 0.7])[n], weighted_sum([a, b], [0.3, 0.7])[n]) for n in a)


@pytest.mark.parametrize("method, weights", [("mean", [1.0, 3.0, 0.5]), ("sum", None),
                                             ("task_arithmetic", [0.3, -1.7, 2.0])])
def test_components_loaded_as_numpy_arrays_compose_bit_for_bit_as_tensors(tmp_path, method, weights) -> None:
    """`dp-tangent compose` adds the deltas as numpy arrays (no torch import): the same digests, sums and file bytes
    as with torch tensors, for float32 and float64 deltas and a scalar one (review 87: written with shape [1]);
    bfloat16 and float16 ones stay tensors (review 87: numpy rounds a float16 sum once, torch twice)."""
    import numpy as np

    from dp_tangent.workspace import Workspace

    ws = Workspace.create(tmp_path / "ws")
    for i in range(3):  # float32 weights, float64 biases, a float32 scalar
        deltas = {n: t.to(torch.float32 if n.endswith("weight") else torch.float64)
                  for n, t in random_deltas(i).items()}
        make_component(ws.components_dir, {**deltas, "scale": torch.tensor(0.5 + i)}, f"c{i}")
    names = ["c0", "c1", "c2"]
    tensors = [ws.load_component(n) for n in names]
    arrays = [ws.load_component(n, arrays=True) for n in names]
    assert all(isinstance(t, np.ndarray) for c in arrays for t in c.deltas.values())
    assert all(isinstance(t, torch.Tensor) for c in tensors for t in c.deltas.values())
    assert [deltas_digest(c.deltas) for c in arrays] == [deltas_digest(c.deltas) for c in tensors]
    by_arrays, by_tensors = compose(arrays, weights, method), compose(tensors, weights, method)
    assert by_arrays.record == by_tensors.record
    for name, t in by_tensors.deltas.items():
        a = by_arrays.deltas[name]
        assert isinstance(a, np.ndarray) and str(t.dtype) == f"torch.{a.dtype}"
        assert torch.equal(torch.from_numpy(a), t)  # bit for bit
    assert ws.model_writes("m", by_arrays)[1][0].data == ws.model_writes("m", by_tensors)[1][0].data
    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).removeprefix("torch.")
        make_component(ws.components_dir, {n: torch.ones_like(t, dtype=dtype) for n, t in random_deltas(5).items()},
                       f"{name}-0")
        make_component(ws.components_dir, {n: torch.ones_like(t, dtype=dtype) for n, t in random_deltas(6).items()},
                       f"{name}-1")
        loaded = [ws.load_component(f"{name}-{i}", arrays=True) for i in (0, 1)]
        assert all(isinstance(t, torch.Tensor) for c in loaded for t in c.deltas.values())
        summed = compose(loaded, [1.0, 2**-11 + 2**-40], "task_arithmetic").deltas
        assert all(torch.equal(t, torch.ones_like(t)) for t in summed.values())  # torch's float16 1.0, numpy's 1.001
    with pytest.raises(CompositionError, match="regmean composes components loaded as torch tensors"):
        compose(arrays, None, "regmean", merge_data={}, merge_data_public=True)


def test_mismatched_components_are_refused_saying_what_differs(tmp_path) -> None:
    good = make_component(tmp_path, random_deltas(0), "good")
    other_base = make_component(tmp_path, random_deltas(1), "other_base", base_sha="f" * 64)
    with pytest.raises(CompositionError, match="base_weights_sha256"):
        compose([good, other_base])
    other_spec = make_component(tmp_path, random_deltas(2), "other_spec", base={**SPEC.to_dict(), "head_seed": 3})
    with pytest.raises(CompositionError, match="differs from 'good' in base "):
        compose([good, other_spec])
    head = {n: t for n, t in random_deltas(3).items() if n.startswith("2.")}
    other_trainable = make_component(tmp_path, head, "head_only", trainable="head")
    with pytest.raises(CompositionError, match="trainable"):
        compose([good, other_trainable])


@pytest.mark.parametrize("components, weights, method, message", [
    ([], None, "mean", "at least one"),
    (["a", "b"], [1.0], "mean", "1 weights for 2 components"),
    (["a", "b"], [1.0, 2.0, 3.0], "task_arithmetic", "3 weights for 2 components"),
    (["a", "b"], None, "task_arithmetic", "needs weights"),
    (["a", "b"], [1.0, 1.0], "sum", "takes no weights"),
    (["a", "b"], [1.0, -1.0], "mean", ">= 0"),
    (["a", "b"], [1.0, float("nan")], "task_arithmetic", "finite"),
    (["a", "a"], None, "mean", "given twice"),
    (["a"], None, "median", "method must be one of"),
])
def test_bad_requests_are_refused(tmp_path, components, weights, method, message) -> None:
    made = {n: make_component(tmp_path, random_deltas(i), n) for i, n in enumerate(["a", "b"])}
    with pytest.raises(CompositionError, match=message):
        compose([made[n] for n in components], weights, method)


def test_a_component_file_whose_deltas_do_not_match_its_metadata_is_refused(tmp_path) -> None:
    comp = make_component(tmp_path, random_deltas(0), "c0")
    other = make_component(tmp_path, random_deltas(1), "c1")
    blob = bytearray(comp.path.read_bytes())
    blob[-1] ^= 0x01  # last byte of the tensor data
    comp.path.write_bytes(bytes(blob))
    with pytest.raises(ComponentError, match="do not match the digest"):
        compose([comp.path, other.path])
    tampered = Component(other.path, {n: t + 1 for n, t in other.deltas.items()}, other.metadata, other.sha256)
    with pytest.raises(ComponentError, match="do not match the digest"):
        compose([tampered])


# -- RegMean by conjugate gradients -----------------------------------------------------------

def _jacobian(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Explicit J (rows: example x class, columns: parameters in model order); the test's reference only."""
    params = {n: p.detach() for n, p in net.named_parameters()}
    jac = jacrev(lambda p: functional_call(net, p, (x,)))(params)
    return torch.cat([jac[n].reshape(x.shape[0] * 2, -1) for n in params], dim=1)


def _unflatten(vector: torch.Tensor, like: nn.Module) -> dict[str, torch.Tensor]:
    out, at = {}, 0
    for n, p in like.named_parameters():
        out[n] = vector[at:at + p.numel()].reshape(p.shape).clone()
        at += p.numel()
    return out


def test_regmean_merge_of_exact_shard_fits_is_the_joint_least_squares_solution(tmp_path, backbone) -> None:
    net, kappa = mlp64(), 1.0
    gen = torch.Generator().manual_seed(4)
    shards = []
    for _ in range(3):  # 16 examples x 2 outputs = 32 equations < 37 parameters: each shard is fit exactly
        x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 2, (16,), generator=gen)
        target = kappa * torch.nn.functional.one_hot(y, 2).double()  # ConvexLoss("square") minimiser
        with torch.no_grad():
            shards.append((x, (target - net(x)).reshape(-1)))
    comps, merge_data = [], {}
    for i, (x, r) in enumerate(shards):
        J = _jacobian(net, x)
        delta = torch.linalg.pinv(J) @ r
        assert torch.allclose(J @ delta, r, atol=1e-10), "each component fits its shard exactly"
        comps.append(make_component(tmp_path, _unflatten(delta, net), f"shard{i}"))
        merge_data[f"shard{i}"] = x
    J_all = torch.cat([_jacobian(net, x) for x, _ in shards])
    assert torch.linalg.matrix_rank(J_all) == J_all.shape[1], "the joint problem must have a unique solution"
    joint = torch.linalg.lstsq(J_all, torch.cat([r for _, r in shards])).solution

    merged = compose(comps, method="regmean", merge_data=merge_data, merge_data_public=True, cg_tol=1e-13)
    got = torch.cat([merged.deltas[n].reshape(-1) for n, _ in net.named_parameters()])
    assert ((got - joint).norm() / joint.norm()).item() < 1e-7
    mean = torch.cat([compose(comps).deltas[n].reshape(-1) for n, _ in net.named_parameters()])
    assert ((mean - joint).norm() / joint.norm()).item() > 0.1, "plain averaging must not already be the answer"
    info = merged.record.merge
    assert info["merge_data_public"] is True and 0 < info["iterations"] and info["relative_residual"] <= 1e-13
    print(f"regmean CG: {info['iterations']} iterations for {got.numel()} parameters")
    assert all(p.merge_data_sha256 for p in merged.record.parts)


def test_regmean_refuses_private_or_missing_merge_data(tmp_path, backbone) -> None:
    comps = [make_component(tmp_path, random_deltas(i), f"c{i}") for i in range(2)]
    data = {f"c{i}": torch.randn(5, 4, dtype=torch.float64) for i in range(2)}
    with pytest.raises(PrivateMergeDataError, match="cannot privatise"):
        compose(comps, method="regmean", merge_data=data)
    with pytest.raises(CompositionError, match="needs merge_data"):
        compose(comps, method="regmean", merge_data_public=True)
    with pytest.raises(CompositionError, match="missing \\['c1'\\]"):
        compose(comps, method="regmean", merge_data={"c0": data["c0"]}, merge_data_public=True)
    with pytest.raises(CompositionError, match="only used by method 'regmean'"):
        compose(comps, merge_data=data, merge_data_public=True)


def test_regmean_refuses_a_base_model_with_other_weights(tmp_path, backbone) -> None:
    comps = [make_component(tmp_path, random_deltas(i), f"c{i}") for i in range(2)]
    other = mlp64()
    with torch.no_grad():
        other[0].bias.add_(1.0)
    data = {f"c{i}": torch.randn(5, 4, dtype=torch.float64) for i in range(2)}
    with pytest.raises(CompositionError, match="another theta0"):
        compose(comps, method="regmean", merge_data=data, merge_data_public=True, base_model=other)


# -- centroid of public fine-tuned models ------------------------------------------------------

def test_centroid_base_averages_public_models_and_records_their_digests(tmp_path, monkeypatch) -> None:
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).eval())
    torch.save(models[2].state_dict(), tmp_path / "m2.pt")
    centroid = centroid_base([models[0], models[1], tmp_path / "m2.pt"], [1.0, 1.0, 2.0], public=True)
    for name, tensor in models[0].state_dict().items():
        if tensor.is_floating_point():
            want = (models[0].state_dict()[name] + models[1].state_dict()[name] + 2 * models[2].state_dict()[name]) / 4
            assert torch.allclose(centroid.state_dict[name], want, atol=1e-7), name
    assert [d for _, d in centroid.record.inputs] == [weights_digest(m) for m in models]
    assert centroid.record.weights == (1.0, 1.0, 2.0) and centroid.record.public
    path = tmp_path / "centroid.safetensors"
    save_centroid(path, centroid)
    rebuilt = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).eval()
    from dp_tangent.backbones import read_state_dict
    rebuilt.load_state_dict(read_state_dict(path))
    assert weights_digest(rebuilt) == centroid.record.weights_sha256
    linearize(rebuilt)  # a usable linearization point


def test_centroid_base_refuses_non_public_inputs_and_other_architectures() -> None:
    a, b = nn.Linear(4, 2), nn.Linear(4, 3)
    with pytest.raises(CompositionError, match="public=True"):
        centroid_base([a, a], public=False)
    with pytest.raises(CompositionError, match="another architecture"):
        centroid_base([a, b], public=True)
    with pytest.raises(CompositionError, match="at least one"):
        centroid_base([], public=True)
