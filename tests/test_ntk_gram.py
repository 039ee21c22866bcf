"""DP-SGD from per-example NTK Grams: exact clipped sums against the vmap(grad(jvp)) reference, the same
training run as the Opacus hooks, and the fallbacks chosen and recorded."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from conftest import build
from timm.layers import BatchNormAct2d

from dp_tangent import TangentModel, linearize
from dp_tangent.components.component import load_component
from dp_tangent.data import RecordSet
from dp_tangent.errors import UnsupportedModelError
from dp_tangent.data.records import LazyInputs
from dp_tangent.tangent.twins import make_twin
from dp_tangent.training import (
    PrivacySpec,
    TrainConfig,
    ntk_gram,
    plan_run,
    run_sgd,
    train_component,
)
from dp_tangent.training.losses import LOSS_KINDS, ConvexLoss
from dp_tangent.training.ntk_gram import add_clipped_gradient, per_example_grams
from dp_tangent.training.per_sample import (
    per_sample_gradients,
    reference_per_sample_gradients,
)
from dp_tangent.training import sgd as sgd_module
from dp_tangent.training.sgd import features_first, fit, resolved_grad_sample_mode
from privacy_accounting import Ledger

KEY = bytes(range(32))


def _half_clipped_norm(norms: torch.Tensor) -> float:
    """A clipping norm between the middle two per-sample norms: half the examples are clipped."""
    ordered = norms.sort().values
    middle = len(ordered) // 2
    return float((ordered[middle - 1] + ordered[middle]) / 2)


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "resnet", "vit"])  # conv+BN(+act)+linear; attention+LN
@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_gram_clipped_sum_equals_the_clipped_sum_of_the_vmap_reference(arch: str, kind: str) -> None:
    model, x, suffix = build(arch)  # float64
    x = torch.cat([x, 0.5 * x.flip(0)])  # 8 examples
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(1))
    tangent = linearize(model, suffix)
    deltas = {n: 0.05 * torch.randn_like(p) for n, p in tangent.named_deltas()}
    tangent.load_deltas(deltas)
    loss = ConvexLoss(kind)
    want = reference_per_sample_gradients(model, deltas, x, y, loss)
    names = [n for n, _ in tangent.named_deltas()]
    flat = torch.cat([want[n].flatten(1) for n in names], dim=1)
    norms = flat.norm(dim=1)
    clip = _half_clipped_norm(norms)
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)  # Opacus's clip factors
    assert int((factors < 1).sum()) == len(x) // 2
    reference = (factors[:, None] * flat).sum(dim=0)

    h = tangent.features(x)
    grams = per_example_grams(tangent, h)
    assert grams.shape == (len(x), 10, 10) and grams.dtype == torch.float64
    assert torch.allclose(grams, grams.transpose(1, 2), rtol=0, atol=1e-12 * grams.abs().max())
    got_factors = add_clipped_gradient(tangent.on_features(), h, y, grams, loss, clip)
    got = torch.cat([p.grad.flatten() for p in tangent.deltas()])
    assert (got - reference).norm() <= 1e-10 * reference.norm()
    assert torch.allclose(got_factors, factors, rtol=1e-10, atol=0)


def test_float32_clip_factors_never_let_a_gradient_exceed_the_clipping_norm() -> None:
    """In the model's float32, the Gram's norms and the per-sample gradients' norms round differently:
    the factors' slack keeps every clipped per-sample gradient (as the hooks compute it) within C."""
    model, x, suffix = build("vit", dtype=torch.float32)
    y = torch.arange(len(x)) % 10
    tangent = linearize(model, suffix)
    tangent.load_deltas({n: 0.05 * torch.randn_like(p) for n, p in tangent.named_deltas()})
    loss = ConvexLoss()
    per_sample = per_sample_gradients(tangent, x, y, loss)
    norms = torch.cat([g.flatten(1) for g in per_sample.values()], dim=1).double().norm(dim=1)
    h = tangent.features(x)
    for clip in (norms.min().item(), _half_clipped_norm(norms), norms.max().item()):
        factors = add_clipped_gradient(tangent.on_features(), h, y, per_example_grams(tangent, h), loss, clip)
        assert (factors * norms <= clip).all()
        assert torch.allclose(factors, (clip / norms).clamp(max=1.0), rtol=1e-4)


@pytest.mark.parametrize("common", [1.0, 1e3, 1e4])
def test_float32_clipping_holds_where_the_jacobian_rows_share_a_large_component(common: float) -> None:
    """Review 73: a head whose rows share a component of norm ``common`` (cross-entropy's v_i sums to zero, so
    g_i = sum_k v_ik J^T e_k cancels it). Theta formed in float32 then gave v^T Theta v = 0 for gradients of 0.2
    (a record unclipped: 306x C added). Every record adds at most C, as the step adds it in float32."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 64), nn.GELU(), nn.Linear(64, 10)).float()
    with torch.no_grad():
        shared = torch.randn(64)
        net[2].weight.copy_(shared * common / shared.norm() + 0.01 * torch.randn(10, 64))
    tangent = linearize(net, ["0"], example_input=torch.randn(2, 20))
    x, y = torch.randn(32, 20), torch.randint(0, 10, (32,))
    grams, loss, clip = per_example_grams(tangent, x, from_features=False), ConvexLoss(), 1e-3
    added = []
    for i in range(len(x)):
        for param in tangent.deltas():
            param.grad = None
        add_clipped_gradient(tangent, x[i:i + 1], y[i:i + 1], grams[i:i + 1], loss, clip)
        added.append(torch.cat([p.grad.flatten().double() for p in tangent.deltas()]).norm().item())
    assert max(added) <= clip
    assert min(added) > 0.1 * clip  # every record still counts: clipped with a margin for the rounding, not dropped


@pytest.mark.parametrize("layer, shape", [
    (nn.Linear(6, 5), (4, 6)),  # one position: the Gram of the per-seed gradients is cheaper to get directly
    (nn.Linear(6, 5), (4, 40, 6)),  # 40 tokens, narrow: materialising is cheaper
    (nn.Linear(48, 40), (4, 7, 48)),  # wide: ghost-style
    (nn.Conv2d(4, 6, 3, padding=1), (3, 4, 5, 5)),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), (3, 8, 6, 6)),  # depthwise
    (nn.Conv2d(8, 12, 3, stride=2, dilation=2, padding=2, groups=4), (3, 8, 9, 9)),
    (nn.Conv2d(16, 24, 1, bias=False), (3, 16, 2, 2)),  # pointwise, few positions: ghost-style
    (nn.Conv2d(8, 8, 5, padding=2, groups=8), (3, 8, 2, 2)),  # depthwise, few positions: ghost-style, seeds folded
    (nn.Conv2d(8, 16, 3, padding=1, groups=4), (3, 8, 2, 2)),  # grouped, 4 filters per group: the same
    (nn.BatchNorm2d(6), (3, 6, 4, 4)),
    (nn.BatchNorm1d(6), (3, 6)),
    (BatchNormAct2d(6, act_layer=nn.ReLU6, inplace=False), (3, 6, 3, 3)),  # as linearize leaves it
    (nn.LayerNorm(8), (3, 5, 8)),
    (nn.Embedding(7, 4, padding_idx=0), (3, 6)),  # token ids, repeated ones included
])
def test_gram_kernels_equal_the_grams_of_the_per_sample_gradients(layer: nn.Module, shape: tuple[int, ...]) -> None:
    """Both branches of each kernel against the Grams of per-seed gradients from the layer's grad sampler
    (a BatchNormAct's seeds taken before its activation, in both)."""
    torch.manual_seed(0)
    layer = layer.double().eval()
    for name, buffer in layer.named_buffers():  # pretrained-like BatchNorm statistics
        if name in ("running_mean", "running_var"):
            buffer.uniform_(0.5, 1.5)
    twin = make_twin(layer, {name for name, _ in layer.named_parameters()})
    with torch.no_grad():
        for name in twin.delta_names:
            getattr(twin, f"{name}_theta0").uniform_(-1, 1)
    x = (torch.randint(0, 7, shape) if isinstance(layer, nn.Embedding)
         else 2 * torch.randn(*shape, dtype=torch.float64))
    out = twin(x)
    g = torch.randn(5, *out.shape, dtype=torch.float64)  # 5 seeds
    kernel = ntk_gram._KERNELS[twin._tangent_base]
    got = kernel(twin, x, g)
    want = ntk_gram._per_sample_gram(twin, [(x, g)])
    assert got.shape == (shape[0], 5, 5) and want.abs().max() > 1e-3
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12 * want.abs().max())


class _SharedLayers(nn.Module):
    """A Conv1d (no Gram kernel: its grad sampler) and a Linear called twice per forward (cross terms)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.fc = nn.Linear(12, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x).flatten(1))
        return self.head(torch.tanh(self.fc(torch.tanh(self.fc(h)))))


def _assert_gram_clipped_sum_is_the_reference(model: nn.Module, tangent: TangentModel, x: torch.Tensor, y: torch.Tensor,
                                              checks: Callable[[dict], None] | None = None) -> None:
    """With random deltas and half the examples clipped, the Gram mode's clipped sum (Grams from the raw
    inputs) equals the clipped sum of the vmap reference's per-sample gradients to 1e-10."""
    deltas = {n: 0.1 * torch.randn_like(p) for n, p in tangent.named_deltas()}
    tangent.load_deltas(deltas)
    loss = ConvexLoss()
    want = reference_per_sample_gradients(model, deltas, x, y, loss)
    if checks is not None:
        checks(want)
    flat = torch.cat([want[n].flatten(1) for n, _ in tangent.named_deltas()], dim=1)
    norms = flat.norm(dim=1)
    clip = _half_clipped_norm(norms)
    reference = ((clip / (norms + 1e-6)).clamp(max=1.0)[:, None] * flat).sum(dim=0)
    add_clipped_gradient(tangent, x, y, per_example_grams(tangent, x, from_features=False), loss, clip)
    got = torch.cat([p.grad.flatten() for p in tangent.deltas()])
    assert (got - reference).norm() <= 1e-10 * reference.norm()


def test_layers_without_a_kernel_and_layers_called_twice_take_their_grad_samplers_route() -> None:
    torch.manual_seed(0)
    model = _SharedLayers().double().eval()
    x = torch.randn(8, 2, 4, dtype=torch.float64)
    y = torch.arange(8) % 4
    tangent = linearize(model, example_input=x[:2])
    assert ntk_gram.layer_routes(tangent) == {"conv": "per-sample", "fc": "kernel", "head": "kernel"}
    _assert_gram_clipped_sum_is_the_reference(model, tangent, x, y)


class _NormActTwice(nn.Module):
    """A BatchNormAct (SiLU: a slope that is not 0 or 1, so a second pullback through it would show)
    applied twice per forward: cross terms, so its grad sampler's route, on seeds recorded before the activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = BatchNormAct2d(3, act_layer=nn.SiLU, inplace=False)
        self.head = nn.Linear(3 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(2.0 * self.bn(self.conv(x))).flatten(1))


def test_a_batch_norm_act_called_twice_takes_its_grad_samplers_route_before_the_activation() -> None:
    torch.manual_seed(0)
    model = _NormActTwice().double().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    y = torch.arange(8) % 4
    tangent = linearize(model, example_input=x[:2])
    assert ntk_gram.layer_routes(tangent)["bn"] == "kernel"  # ... which falls back per call pattern
    _assert_gram_clipped_sum_is_the_reference(model, tangent, x, y)


class _Tokens(nn.Module):
    """Token ids -> embedding (padding id 0) -> mean over positions -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(9, 4, padding_idx=0)
        self.head = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(ids)).mean(dim=1))


def test_embeddings_with_a_padding_id_match_the_reference_in_gram_and_hooks_modes() -> None:
    """F.embedding gives the padding row no gradient; Opacus's sampler alone would (grad_samplers fixes it)."""
    torch.manual_seed(0)
    model = _Tokens().double().eval()
    ids = torch.tensor([[1, 2, 0, 0], [3, 3, 4, 0], [5, 6, 7, 8], [0, 2, 2, 1], [8, 0, 1, 1], [4, 4, 4, 4]])
    y = torch.arange(6) % 3
    tangent = linearize(model, example_input=ids[:2])

    def hooks_match(want: dict) -> None:
        assert want["embed.weight"][:, 0].abs().max() == 0 and want["embed.weight"].abs().max() > 1e-3
        hooks = per_sample_gradients(tangent, ids, y, ConvexLoss())
        assert all(torch.allclose(hooks[n], want[n], rtol=1e-10, atol=1e-14) for n in want)

    _assert_gram_clipped_sum_is_the_reference(model, tangent, ids, y, hooks_match)


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.double().eval()


def _conv_records(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, 2, 4, 4, generator=gen, dtype=torch.float64)
    return x, (x[:, 0].mean(dim=(1, 2)) > 0).long() + (x[:, 1].mean(dim=(1, 2)) > 0).long()


def test_a_gram_run_trains_the_same_deltas_as_the_hooks_given_the_same_noise_and_batches() -> None:
    """Seeded noise (the same noise and Poisson batches in both runs), physical batches smaller than the
    logical ones, clipping active: a conv + BatchNorm + linear tangent model in float64."""
    x, y = _conv_records()
    privacy = PrivacySpec(noise_multiplier=0.7, max_grad_norm=0.3)
    deltas = {}
    for mode in ("gram", "hooks"):
        tangent = linearize(_conv_net(), example_input=x[:2])
        config = TrainConfig(epochs=3, batch_size=8, physical_batch_size=3, lr=0.2, grad_sample_mode=mode,
                             noise="seeded", seed=5)
        plan = plan_run(len(x), privacy, config)
        assert run_sgd(tangent, tangent.deltas(), x, y, plan, privacy, config) == plan.steps
        deltas[mode] = dict(tangent.named_deltas())
    for name, delta in deltas["hooks"].items():
        assert torch.allclose(deltas["gram"][name], delta, rtol=1e-9, atol=1e-12), name
    assert all(d.abs().max() > 1e-3 for d in deltas["hooks"].values())


def _overflowing(x: torch.Tensor, row: int) -> torch.Tensor:
    """``x`` with one row whose values overflow float32 in the network (its gradient is not finite)."""
    x = x.clone()
    x[row] = 3e38
    return x


def test_a_record_whose_gradient_overflows_adds_zero_in_the_gram_sum() -> None:
    """A huge input makes the record's Theta, output and gradient non-finite in float32: it adds zero (factor 0),
    the other records' clipped sum is unchanged, and nothing NaN reaches the deltas' gradient."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3)).eval()
    x = torch.randn(6, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    tangent = linearize(net, example_input=x[:2])
    loss = ConvexLoss()
    bad = _overflowing(x, 2)
    grams = per_example_grams(tangent, bad)
    assert not torch.isfinite(grams[2]).all() and torch.isfinite(grams[[0, 1, 3, 4, 5]]).all()
    factors = add_clipped_gradient(tangent, bad, y, grams, loss, 0.5)
    got = [p.grad.clone() for p in tangent.deltas()]
    assert factors[2] == 0 and (factors[[0, 1, 3, 4, 5]] > 0).all()
    for p in tangent.deltas():
        p.grad = None
    keep = torch.tensor([0, 1, 3, 4, 5])
    want_factors = add_clipped_gradient(tangent, x[keep], y[keep], grams[keep], loss, 0.5)
    assert torch.equal(factors[keep], want_factors)
    for g, p in zip(got, tangent.deltas()):
        assert torch.isfinite(g).all() and torch.allclose(g, p.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["gram", "hooks", "ghost"])
def test_a_run_with_a_record_whose_gradient_overflows_trains_as_if_it_added_zero(mode: str) -> None:
    """Whether training fails must not tell whether such a record is in the data: with the same noise and batches
    (seeded), each mode trains finite deltas, the same in every mode."""
    x, y = _records().inputs.float(), _records().targets
    x = _overflowing(x, 5)
    privacy = PrivacySpec(noise_multiplier=0.7, max_grad_norm=0.3)
    config = TrainConfig(epochs=2, batch_size=32, physical_batch_size=16, lr=0.2, grad_sample_mode=mode,
                         noise="seeded", seed=5)
    torch.manual_seed(0)
    tangent = linearize(nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3)).eval(), example_input=x[:2])
    plan = plan_run(len(x), privacy, config)
    assert run_sgd(tangent, tangent.deltas(), x, y, plan, privacy, config) == plan.steps
    deltas = {n: d.detach().clone() for n, d in tangent.named_deltas()}
    assert all(torch.isfinite(d).all() and d.abs().max() > 1e-3 for d in deltas.values())
    if mode != "gram":
        torch.manual_seed(0)
        again = linearize(nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3)).eval(), example_input=x[:2])
        gram = replace(config, grad_sample_mode="gram")
        assert run_sgd(again, again.deltas(), x, y, plan, privacy, gram) == plan.steps
        for name, delta in again.named_deltas():
            assert torch.allclose(deltas[name], delta, rtol=1e-4, atol=1e-6), name


def _records(n: int = 96) -> RecordSet:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    return RecordSet(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long(), tuple(f"rec-{i}" for i in range(n)))


def test_the_default_mode_is_gram_and_the_component_records_the_mode_that_ran(tmp_path, mlp_backbone,
                                                                                monkeypatch) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    assert TrainConfig().grad_sample_mode == "gram"

    def train(name: str) -> str:
        result = train_component(mlp_backbone, None, _records(), ledger=ledger, data_source="toy", shard=name,
                                 name=name, output=tmp_path / f"{name}.safetensors", manifest_key=KEY,
                                 privacy=PrivacySpec(epsilon=4.0), config=TrainConfig(epochs=1, batch_size=32),
                                 allow_overlap=True)
        return load_component(result.path).metadata.privacy.grad_sample_mode

    assert train("default") == "gram"
    monkeypatch.setattr(ntk_gram, "GRAM_MAX_OUTPUTS", 2)  # the MLP has 3 outputs
    assert train("many-outputs") == "ghost"
    monkeypatch.setattr(ntk_gram, "GRAM_MAX_OUTPUTS", 64)
    monkeypatch.setattr(ntk_gram, "GRAM_MAX_BYTES", 96 * 9 * 8 - 1)  # one byte short of 96 records' Grams
    assert train("large-shard") == "ghost"


def test_gram_mode_on_a_module_that_is_not_a_tangent_model_runs_ghost_clipping() -> None:
    net = nn.Sequential(nn.Linear(8, 3))
    records = _records(32)
    privacy, config = PrivacySpec(noise_multiplier=1.0), TrainConfig(epochs=1, batch_size=8, lr=0.1)
    params = list(net.parameters())
    assert resolved_grad_sample_mode(net, params, records.inputs, privacy, config) == "ghost"
    tangent = linearize(net)
    assert resolved_grad_sample_mode(tangent, tangent.deltas(), records.inputs, privacy, config) == "gram"
    assert resolved_grad_sample_mode(tangent, tangent.deltas(), records.inputs, PrivacySpec(epsilon=float("inf")),
                                     config) == "gram"  # non-private: no clipping, nothing to resolve
    before = [p.detach().clone() for p in params]
    plan = plan_run(len(records), privacy, config)
    assert run_sgd(net, params, records.inputs, records.targets, plan, privacy, config) == plan.steps
    assert any(not torch.equal(a, b) for a, b in zip(before, params))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_takes_ghost_clipping(dtype: torch.dtype) -> None:
    """Review 76: in bfloat16 and float16 the Gram step rounds its clip factors and its backward by more than the
    margin allows (clipped contributions up to 1.004 C on a plain MLP): such models fall back to ghost clipping."""
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3)).to(dtype).eval()
    x = torch.randn(16, 8).to(dtype)
    tangent = linearize(net, ["2"], example_input=x[:2])
    privacy, config = PrivacySpec(noise_multiplier=1.0), TrainConfig(epochs=1, batch_size=8, lr=0.1)
    assert resolved_grad_sample_mode(tangent, tangent.deltas(), x, privacy, config) == "ghost"
    with pytest.raises(UnsupportedModelError, match=f"deltas in {dtype}"):
        per_example_grams(tangent, x, from_features=False)


@dataclasses.dataclass(frozen=True)
class _Files(LazyInputs):
    """Rows decoded on access, as image files are; ``reads`` counts each record's decodes."""

    table: torch.Tensor
    reads: collections.Counter
    index: tuple[int, ...]
    device: str = "cpu"

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.table.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def select(self, index):  # noqa: ANN001, ANN201
        return dataclasses.replace(self, index=tuple(self.index[i] for i in index))

    def _decode(self, index) -> torch.Tensor:  # noqa: ANN001
        self.reads.update(self.index[i] for i in index)
        return self.table[[self.index[i] for i in index]]


def test_inputs_decoded_for_every_batch_take_ghost_clipping_and_features_read_them_once(monkeypatch) -> None:
    """Review 73: with no frozen prefix, lazily decoded inputs were read for Theta and again for every batch, so a
    file replaced in between was clipped with its old content's Gram (220x C). Such a run takes ghost clipping;
    a run that turns the inputs into features reads each record once, and its Thetas come from those."""
    table, targets = torch.randn(24, 8), torch.randint(0, 3, (24,))
    privacy, config = PrivacySpec(noise_multiplier=1.0), TrainConfig(epochs=1, batch_size=8, lr=0.1)

    def records() -> tuple[RecordSet, collections.Counter]:
        reads: collections.Counter = collections.Counter()
        files = _Files(table, reads, tuple(range(len(table))))
        return RecordSet(files, targets, tuple(f"r{i}" for i in range(len(table)))), reads

    whole = linearize(_Unlayered().eval(), example_input=table[:2])  # no block layout: no frozen prefix
    assert whole.cut is None
    lazy, _ = records()
    assert resolved_grad_sample_mode(whole, whole.deltas(), lazy.inputs, privacy, config) == "ghost"
    assert resolved_grad_sample_mode(whole, whole.deltas(), table, privacy, config) == "gram"  # held: read once
    computed = []
    monkeypatch.setattr(sgd_module, "per_example_grams", lambda *a, **k: computed.append(1) or _no_grams())
    fit(whole, lazy, plan_run(len(table), privacy, config), privacy, config)
    assert computed == []

    monkeypatch.undo()
    suffix = linearize(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).eval(), ["2"])
    assert suffix.cut is not None
    lazy, reads = records()
    assert resolved_grad_sample_mode(suffix, suffix.deltas(), lazy.inputs, privacy, config,
                                     read_once=features_first(suffix, config)) == "gram"
    reads.clear()  # the mode's probe decoded a row, for the number of outputs only
    fit(suffix, lazy, plan_run(len(table), privacy, replace(config, grad_sample_mode="gram")), privacy, config)
    assert sorted(reads.values()) == [1] * len(table)


class _Unlayered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _no_grams() -> torch.Tensor:
    raise AssertionError("a Theta was computed for inputs decoded again for every batch")


def test_secure_gram_runs_take_every_planned_step_through_empty_batches() -> None:
    """q = 1/6 on 6 records: about a third of the batches are empty, and each still is a noisy step."""
    tangent = linearize(nn.Sequential(nn.Linear(8, 3)).eval())
    records = _records(6)
    privacy = PrivacySpec(noise_multiplier=1.0)
    config = TrainConfig(epochs=8, batch_size=1, physical_batch_size=1, lr=0.1)
    plan = plan_run(len(records), privacy, config)
    assert run_sgd(tangent, tangent.deltas(), records.inputs, records.targets, plan, privacy, config) == 48
    assert all(torch.isfinite(d).all() and d.abs().max() > 0 for d in tangent.deltas())


def test_one_backward_per_seed_where_the_batched_backward_fails(monkeypatch) -> None:
    """An op without a batching rule (or memory for K seeds at once): the Grams come from K backwards."""
    model, x, suffix = build("vit")
    tangent = linearize(model, suffix)
    h = tangent.features(x)
    batched = per_example_grams(tangent, h)
    grad = torch.autograd.grad

    def no_batching(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("vmap: no batching rule")
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    assert torch.allclose(per_example_grams(tangent, h), batched, rtol=1e-12, atol=0)
