"""The DP-SGD loop on a tangent model's deltas (or, with Opacus's per-sample machinery, any Opacus-ready module).

Frozen-prefix features are computed once. The default ``grad_sample_mode="gram"`` then computes each
record's K x K NTK Gram once (:mod:`.ntk_gram`) and clips exactly from it: per step one dual forward,
c_i = min(1, C/||g_i||) with ||g_i||^2 = v_i^T Theta_i v_i, one backward seeded with c_i v_i (the sum
of the clipped per-sample gradients, none materialised); where it cannot (too many outputs, a layer
without a Gram route, a module that is not a tangent model) ghost clipping runs instead. Thetas an
earlier run computed can be offered (:class:`.gram_reuse.GramReuse`): rows whose model input has the
same digest take them, the others are computed. The
``"hooks"``/``"ghost"`` modes use Opacus's parts: a ``GradSampleModule`` (hooks) or ghost
clipping's module and loss wrapper. Every mode shares the rest: a DP optimizer that adds Gaussian
noise of std sigma·C to the clipped sum (Opacus's ``DPOptimizer``; the Gram and ghost modes its
fast-gradient-clipping variant, which takes the sum from ``.grad``), a Poisson data loader (each
record joins each batch with probability q), and ``BatchMemoryManager`` for physical batches: the
mechanism, and so the ledger's DP event, is the same in every mode. By default
(``noise="secure"``) the noise and the Poisson batches come from :class:`.secure_random.SecureRandom`
(ChaCha20 under a fresh OS key per run); ``noise="seeded"`` uses Opacus's own seeded draws, which
are reproducible and therefore not private.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import replace

import torch
from opacus import GradSampleModule
from opacus.data_loader import dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data._utils.collate import default_collate

from ..data.records import LazyInputs, RecordSet
from ..tangent import TangentModel
from . import grad_samplers  # noqa: F401 -- registers the twins' grad samplers
from .config import PrivacySpec, ProgressFn, TrainConfig, TrainingError, uses_seed
from .features import precompute_features
from .gram_format import FEATURE_CACHE_MAX_BYTES
from .gram_reuse import GramReuse, GramsUsed, complete_grams, input_digests, row_digests
from .losses import ConvexLoss
from .noise_sources import SEEDED_NOISE_GENERATOR, noise_generator_name  # noqa: F401 -- re-exported
from .ntk_gram import add_clipped_gradient, gram_fallback_reason, per_example_grams
from .plan import Plan
from .secure_random import GENERATOR_NAME, SecurePoissonSampler, SecureRandom
from .validation import check_per_sample_support

NOISE_GENERATOR = GENERATOR_NAME  # what private (noise="secure") runs draw from
log = logging.getLogger(__name__)


class _SecureNoise:
    """Replaces Opacus's ``add_noise``: p.grad = p.summed_grad + N(0, (sigma·C)²) from a SecureRandom.

    Same contract as Opacus's: every ``summed_grad`` is used once (checked, then marked), and the
    noise multiplier may be overridden by ``_adjusted_noise_multiplier`` (adaptive clipping). The noise
    is added into ``summed_grad`` in place, chunk by chunk, and ``p.grad`` becomes that tensor: Opacus
    makes a noise tensor and a third copy the size of the model (add_noise runs once per logical
    step, and the optimizer's ``zero_grad`` drops ``summed_grad`` after it)."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, rng: SecureRandom, **kwargs: object) -> None:
        # Opacus's generator and secure_mode are read only by the add_noise replaced below
        super().__init__(optimizer, generator=None, secure_mode=False, **kwargs)  # type: ignore[call-arg]
        self.rng = rng

    def add_noise(self) -> None:
        params = self.params
        for p in params:
            _check_processed_flag(p.summed_grad)
        sigma = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        summed = [p.summed_grad if p.summed_grad.is_contiguous() else p.summed_grad.contiguous() for p in params]
        self.rng.add_gaussian_(summed, sigma * self.max_grad_norm)
        for p, noised in zip(params, summed):
            p.grad = noised.view_as(p)
            _mark_as_processed(p.summed_grad)


class _FiniteClipping:
    """Per-sample clipping that maps a gradient which is not finite (an overflow, e.g. from a huge input value) to
    zero, a contribution of norm 0 <= C like any clipped one: Opacus's factor C/||g|| is 0 or NaN there, and 0 · inf
    is NaN, which would reach the sum and make training fail exactly when that record is in the batch."""

    def clip_and_accumulate(self) -> None:
        # checked on the clipped sum, the size of the model (a mask over every per-sample gradient cost a ViT step
        # about half its time): a finite sum has no inf or NaN term
        before = [None if p.summed_grad is None else p.summed_grad.clone() for p in self.params]
        samples = [self._get_flat_grad_sample(p) for p in self.params]
        super().clip_and_accumulate()
        if not samples or not len(samples[0]) or all(bool(torch.isfinite(p.summed_grad.sum())) for p in self.params):
            return
        finite = torch.stack([torch.isfinite(g.reshape(len(g), -1)).all(1) for g in samples]).all(0)
        if bool(finite.all()):
            return  # the sum overflowed, every clipped term finite: Opacus's sum stands
        for p, kept, g in zip(self.params, before, samples):
            p.summed_grad = kept
            p.grad_sample = torch.where(finite.view(-1, *[1] * (g.dim() - 1)), g, torch.zeros_like(g))
        super().clip_and_accumulate()


class SeededDPOptimizer(_FiniteClipping, DPOptimizer):
    """Opacus's ``DPOptimizer`` (per-sample clipping by hooks, seeded noise), non-finite gradients clipped to zero."""


class SecureDPOptimizer(_SecureNoise, _FiniteClipping, DPOptimizer):
    """Opacus's ``DPOptimizer`` (per-sample clipping by hooks) with noise from a SecureRandom."""


class SecureDPOptimizerFastGradientClipping(_SecureNoise, DPOptimizerFastGradientClipping):
    """Opacus's ghost-clipping optimizer with noise from a SecureRandom."""

    def accumulate(self) -> None:
        """``summed_grad`` += ``.grad`` (the clipped sum), taking the first one over instead of copying it
        as Opacus does: ``.grad`` is cleared, so a later backward, or zero_grad in either mode, cannot
        touch the sum (add_noise sets ``.grad`` again)."""
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad.data)
            else:
                p.summed_grad = p.grad.data
            p.grad = None


class _Criterion:
    """``ConvexLoss`` with the ``reduction`` switch Opacus's ghost-clipping wrapper expects."""

    def __init__(self, loss: ConvexLoss, reduction: str = "mean") -> None:
        self.loss, self.reduction = loss, reduction

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = self.loss.per_sample(logits, target)
        return {"none": per_sample, "mean": per_sample.mean(), "sum": per_sample.sum()}[self.reduction]


def _inputs_for(tangent: TangentModel, inputs: torch.Tensor, config: TrainConfig,
                reuse: GramReuse | None = None) -> tuple[torch.nn.Module, torch.Tensor]:
    """The module to train and its inputs (cached features where it can); with ``reuse``, the digests of
    the raw inputs are set there as they are read, and the features it offers for rows of the same digest
    are taken instead of computed (the positions computed are set there too)."""
    digests: list[str] = []
    if features_first(tangent, config):
        computed: list[int] = []

        def known(start: int, batch: torch.Tensor) -> dict[int, torch.Tensor]:
            digests.extend(row_digests(batch))
            have = reuse.known.offered_features(start, digests[start:])
            computed.extend(start + j for j in range(len(batch)) if j not in have)
            return have

        module = tangent.on_features()
        inputs = precompute_features(tangent, inputs, batch_size=256, known=None if reuse is None else known)
        if reuse is not None:
            reuse.feature_rows = tuple(computed)
    else:
        module = tangent
        if reuse is not None:
            digests = input_digests(inputs)
    if reuse is not None:
        reuse.digests = digests
    return module, inputs


def _poisson_loader(dataset: TensorDataset, sample_rate: float, rng: SecureRandom | None, batches: int) -> DataLoader:
    """``batches`` Poisson batches per epoch at rate q, empty ones included: Opacus's ``DPDataLoader``'s sampler
    (global torch RNG) when ``rng`` is None, else a :class:`SecurePoissonSampler`. The count is the plan's, not
    Opacus's ``int(1/q)``, which falls one short where 1/(1/k) rounds below k (k = 93, 99, 105, ...)."""
    first = dataset[0]
    collate = wrap_collate_with_empty(collate_fn=default_collate,
                                      sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
                                      dtypes=[dtype_safe(x) for x in first])
    sampler = (UniformWithReplacementSampler(num_samples=len(dataset), sample_rate=sample_rate, steps=batches)
               if rng is None else SecurePoissonSampler(num_samples=len(dataset), sample_rate=sample_rate, rng=rng,
                                                        steps=batches))
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)


def _dp_optimizer(optimizer: torch.optim.Optimizer, noise_multiplier: float, privacy: PrivacySpec,
                  config: TrainConfig, expected_batch_size: int, rng: SecureRandom | None) -> DPOptimizer:
    """Opacus's optimizer for the grad-sample mode; its noise from ``rng``, or seeded (``rng`` None).

    Ghost and Gram modes leave the clipped sum in ``.grad``: the fast-gradient-clipping optimizer takes
    it from there (no clipping of its own), then adds the same noise, scales and steps as ``DPOptimizer``."""
    ghost = config.grad_sample_mode in ("ghost", "gram")
    kwargs = {"noise_multiplier": noise_multiplier, "max_grad_norm": privacy.max_grad_norm,
              "expected_batch_size": expected_batch_size, "loss_reduction": "mean"}
    if rng is not None:
        cls = SecureDPOptimizerFastGradientClipping if ghost else SecureDPOptimizer
        return cls(optimizer, rng=rng, **kwargs)
    generator = torch.Generator(device=config.device).manual_seed(config.seed + 1)
    return (DPOptimizerFastGradientClipping if ghost else SeededDPOptimizer)(optimizer, generator=generator, **kwargs)


class _GhostClipping(GradSampleModuleFastGradientClipping):
    """Opacus's ghost-clipping module whose clip factor is 0 for a record whose gradient norm is not finite (NaN
    there, which Opacus's ``clamp`` keeps); :func:`_fit_private` runs a batch whose sum still is not finite again
    without those records."""

    def get_clipping_coef(self) -> torch.Tensor:
        coef = super().get_clipping_coef()
        return torch.where(torch.isfinite(self.per_sample_gradient_norms.to(coef.device)), coef, torch.zeros_like(coef))


def dp_parts(module: torch.nn.Module, params: list[torch.nn.Parameter], noise_multiplier: float,
             privacy: PrivacySpec, config: TrainConfig, expected_batch_size: int,
             rng: SecureRandom | None) -> tuple[torch.nn.Module, DPOptimizer, Callable]:
    """What a private run trains with: Opacus's per-sample module (hooks, or ghost clipping), a DP
    optimizer over ``params`` (clip at C, noise sigma·C from ``rng``, or seeded when ``rng`` is None,
    SGD with the config's lr, momentum and l2) and the loss to call on the module's output."""
    # Twins hold theta0 and pretraining statistics in buffers: public, frozen, never updated from
    # this data, so Opacus's buffer check (strict) does not apply.
    if config.grad_sample_mode == "ghost":
        gsm = _GhostClipping(module, batch_first=True, loss_reduction="mean", strict=False,
                             max_grad_norm=privacy.max_grad_norm, use_ghost_clipping=True)
    else:
        gsm = GradSampleModule(module, batch_first=True, loss_reduction="mean", strict=False)
    ModuleValidator.validate(gsm, strict=True)  # what PrivacyEngine.make_private checks
    gsm.train()
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.loss.l2)
    dp_optimizer = _dp_optimizer(optimizer, noise_multiplier, privacy, config, expected_batch_size, rng)
    criterion = _Criterion(config.loss)
    if config.grad_sample_mode == "ghost":
        return gsm, dp_optimizer, DPLossFastGradientClipping(gsm, dp_optimizer, criterion, "mean")
    return gsm, dp_optimizer, criterion


def _private_loader(dataset: TensorDataset, plan: Plan, config: TrainConfig) -> tuple[DataLoader, int, SecureRandom | None]:
    """The Poisson loader at the planned rate, the expected batch size N·q that the "mean" divides by (the plan's
    N: as Opacus's ``make_private`` with the planned size, never the shard's count unless that is what the run is
    planned from), and the secure generator (None in the seeded mode)."""
    rng = SecureRandom() if config.noise == "secure" else None
    loader = _poisson_loader(dataset, plan.sample_rate, rng, plan.batches)
    if abs(1.0 / len(loader) - plan.sample_rate) > 1e-12:
        raise TrainingError("the Poisson loader's sample rate differs from the planned one")
    return loader, plan.expected_batch_size, rng


def _dp_epochs(loader: DataLoader, dp_optimizer: DPOptimizer, plan: Plan, config: TrainConfig,
               progress: ProgressFn | None, gradient: Callable[..., None]) -> int:
    """The DP-SGD loop every private mode shares: each epoch's Poisson batches split into physical
    batches, ``gradient(*batch)`` filling ``.grad``/``.grad_sample``, one optimizer step per logical
    batch; returns the steps taken (a skipped partial step is not counted)."""
    steps = 0
    for _ in range(config.epochs):
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=config.physical_batch_size,
                                optimizer=dp_optimizer) as physical:
            for batch in physical:
                dp_optimizer.zero_grad(set_to_none=True)
                gradient(*batch)
                dp_optimizer.step()
                if not dp_optimizer._is_last_step_skipped:
                    steps += 1
                    if progress:
                        progress(steps, plan.steps)
    return steps


def _fit_private(module: torch.nn.Module, params: list[torch.nn.Parameter], dataset: TensorDataset, plan: Plan,
                 privacy: PrivacySpec, config: TrainConfig, progress: ProgressFn | None) -> int:
    """Opacus DP-SGD (hooks or ghost clipping); returns the number of optimizer steps taken."""
    loader, expected_batch_size, rng = _private_loader(dataset, plan, config)
    gsm, dp_optimizer, criterion = dp_parts(module, params, plan.noise_multiplier, privacy, config,
                                            expected_batch_size, rng)
    gsm.forbid_grad_accumulation()  # Poisson sampling: one logical batch per step

    def gradient(h: torch.Tensor, y: torch.Tensor) -> None:
        criterion(gsm(h), y).backward()
        if isinstance(gsm, _GhostClipping) and not all(p.grad is None or bool(torch.isfinite(p.grad.sum()))
                                                        for p in params):
            # a record whose clip factor is 0 still multiplies its own infinite activations (0 · inf is NaN): the
            # batch runs again without the records whose norm was not finite, which add zero
            kept = torch.isfinite(gsm.per_sample_gradient_norms).nonzero().squeeze(1).to(h.device)
            for p in params:
                p.grad = None
            if len(kept):
                criterion(gsm(h[kept]), y[kept]).backward()
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            steps = _dp_epochs(loader, dp_optimizer, plan, config, progress, gradient)
    finally:
        if hasattr(gsm, "_close"):
            gsm._close()
        for p in params:
            p.grad, p.grad_sample = None, None
    return steps


def gram_optimizer(params: list[torch.nn.Parameter], noise_multiplier: float, privacy: PrivacySpec,
                   config: TrainConfig, expected_batch_size: int, rng: SecureRandom | None) -> DPOptimizer:
    """The Gram mode's DP optimizer over ``params``: it takes the clipped sum from ``.grad``, adds noise
    sigma·C from ``rng`` (seeded when None), divides by ``expected_batch_size`` and steps SGD with the
    config's lr, momentum and l2, as the Opacus modes' optimizers do."""
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.loss.l2)
    return _dp_optimizer(optimizer, noise_multiplier, privacy, replace(config, grad_sample_mode="gram"),
                         expected_batch_size, rng)


def _fit_private_gram(module: torch.nn.Module, tangent: TangentModel, dataset: TensorDataset, plan: Plan,
                      privacy: PrivacySpec, config: TrainConfig, progress: ProgressFn | None) -> int:
    """DP-SGD with clipping from per-example NTK Grams (``dataset`` rows: input, target, Theta); returns
    the optimizer steps taken. Same loader, noise, scaling and update as the Opacus modes."""
    loader, expected_batch_size, rng = _private_loader(dataset, plan, config)
    params = tangent.deltas()
    dp_optimizer = gram_optimizer(params, plan.noise_multiplier, privacy, config, expected_batch_size, rng)
    module.train(False)  # the eval-mode tangent, as the Opacus modes train it (only hooked layers change mode)

    def clipped_sum(h: torch.Tensor, y: torch.Tensor, grams: torch.Tensor) -> None:
        if len(h):
            add_clipped_gradient(module, h, y, grams, config.loss, privacy.max_grad_norm)
        for p in params:  # an empty batch (or a delta the batch does not reach) adds zero
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    try:
        steps = _dp_epochs(loader, dp_optimizer, plan, config, progress, clipped_sum)
    finally:
        for p in params:
            p.grad = None
    return steps


def _tangent_of(module: torch.nn.Module, params: list[torch.nn.Parameter]) -> TangentModel | None:
    """The tangent model ``module`` is (or views through ``on_features()``) when ``params`` are its deltas."""
    tangent = getattr(module, "tangent", module)
    if not isinstance(tangent, TangentModel):
        return None
    return tangent if [id(p) for p in params] == [id(p) for p in tangent.deltas()] else None


def features_first(tangent: TangentModel, config: TrainConfig) -> bool:
    """Whether :func:`fit` turns the inputs into frozen-prefix features once and trains on those."""
    return config.cache_features and tangent.cut is not None


def gram_fallback(module: torch.nn.Module, params: list[torch.nn.Parameter], inputs: torch.Tensor, *,
                  read_once: bool = False) -> str | None:
    """Why ``grad_sample_mode="gram"`` cannot train ``params`` of ``module`` on ``inputs`` (None: it can).
    Inputs decoded on access (:class:`LazyInputs`, e.g. image files) are decoded again for every batch unless
    the caller reads them once first (``read_once``: :func:`fit` into features, see :func:`features_first`): a
    file changed since its Theta was computed would be clipped by another input's Gram (review 73), so such
    runs take ghost clipping, which takes each norm from the batch it clips."""
    tangent = _tangent_of(module, params)
    if tangent is None:
        return "not the deltas of a tangent model"
    if isinstance(inputs, LazyInputs) and not read_once:
        return "inputs decoded on access for every batch, not once into features"
    with torch.no_grad():
        outputs = module(inputs[:1]).shape[-1]
    return gram_fallback_reason(tangent, len(inputs), outputs)


def resolved_grad_sample_mode(module: torch.nn.Module, params: list[torch.nn.Parameter], inputs: torch.Tensor,
                              privacy: PrivacySpec, config: TrainConfig, *, read_once: bool = False) -> str:
    """The mode a run of ``config`` trains with: ``"gram"`` falls back to ``"ghost"`` where it cannot run
    (see :func:`gram_fallback`); other modes, and non-private runs, keep theirs."""
    if (privacy.private and config.grad_sample_mode == "gram"
            and gram_fallback(module, params, inputs, read_once=read_once) is not None):
        return "ghost"
    return config.grad_sample_mode


def _fit_non_private(module: torch.nn.Module, params: list[torch.nn.Parameter], dataset: TensorDataset, plan: Plan,
                     config: TrainConfig, progress: ProgressFn | None) -> int:
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.loss.l2)
    generator = torch.Generator().manual_seed(config.seed + 1)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
    module.train()
    steps = 0
    for _ in range(config.epochs):
        for h, y in loader:
            optimizer.zero_grad(set_to_none=True)
            config.loss.per_sample(module(h), y).mean().backward()
            optimizer.step()
            steps += 1
            if progress:
                progress(steps, plan.steps)
    return steps


def _grams(module: torch.nn.Module, tangent: TangentModel, inputs: torch.Tensor, config: TrainConfig,
           reuse: GramReuse | None) -> torch.Tensor:
    """Theta of every row of ``inputs``: all computed, or those ``reuse`` offers for rows of the same
    digest taken and the rest computed (recorded in ``reuse.used``, with the features to keep when the
    inputs are frozen-prefix features: :func:`_kept_features`)."""
    from_features = module is not tangent
    if reuse is None:
        return per_example_grams(tangent, inputs, from_features=from_features, batch_size=config.physical_batch_size)
    if reuse.digests is None:  # called without fit: the rows given are the ones to match
        reuse.digests = input_digests(inputs)
    with torch.no_grad():
        outputs = module(inputs[:1]).shape[-1]
    grams, used = complete_grams(tangent, inputs, reuse.digests, reuse.known, outputs=outputs,
                                 from_features=from_features, batch_size=config.physical_batch_size)
    reuse.used = _kept_features(used, inputs, reuse, config) if from_features else used
    return grams


def _kept_features(used: GramsUsed, features: torch.Tensor, reuse: GramReuse, config: TrainConfig) -> GramsUsed:
    """``used`` with the features computed this run, for the cache to keep (``config.keep_features``, and the
    shard's features within :data:`~.gram_format.FEATURE_CACHE_MAX_BYTES`); unchanged otherwise."""
    size = features.element_size() * features.numel()
    if config.keep_features is False or reuse.feature_rows is None:
        return used
    if size > FEATURE_CACHE_MAX_BYTES:
        note = (f"not kept: {size / 2**20:.1f} MiB for the shard, above the cache's limit of "
                f"{FEATURE_CACHE_MAX_BYTES / 2**20:g} MiB")
        log.info("features %s", note)
        return replace(used, features_note=note)
    rows = reuse.feature_rows
    kept = features if len(rows) == len(features) else features[list(rows)]
    return replace(used, feature_rows=rows, features=kept.detach().cpu())


def run_sgd(module: torch.nn.Module, params: list[torch.nn.Parameter], inputs: torch.Tensor, targets: torch.Tensor,
            plan: Plan, privacy: PrivacySpec, config: TrainConfig, progress: ProgressFn | None = None,
            grams: GramReuse | None = None) -> int:
    """The planned optimisation of ``params`` (of ``module``) on (inputs, targets); returns steps taken.

    Private: DP-SGD with Poisson sampling at ``plan.sample_rate``, clipping at C and noise sigma·C
    (from per-example NTK Grams, hooks or ghost clipping: :func:`resolved_grad_sample_mode`), noise
    and batches from a fresh :class:`SecureRandom` (``noise="secure"``) or from ``config.seed``
    (``noise="seeded"``); else shuffled mini-batches seeded by ``config.seed``. Any module whose
    trainable layers Opacus supports will do with hooks or ghost clipping (the benchmarks train
    non-linear baselines with it); :func:`fit` calls it on a tangent model. ``grams``: Thetas offered
    from earlier runs, and where the Gram mode reports what it reused and computed.
    """
    mode = resolved_grad_sample_mode(module, params, inputs, privacy, config)
    config = replace(config, grad_sample_mode=mode)
    with torch.random.fork_rng(devices=[]):
        if uses_seed(privacy, config):
            torch.manual_seed(config.seed)
        try:
            if privacy.private and mode == "gram":
                tangent = _tangent_of(module, params)
                theta = _grams(module, tangent, inputs, config, grams)
                return _fit_private_gram(module, tangent, TensorDataset(inputs, targets, theta), plan, privacy,
                                         config, progress)
            dataset = TensorDataset(inputs, targets)
            if privacy.private:
                return _fit_private(module, params, dataset, plan, privacy, config, progress)
            return _fit_non_private(module, params, dataset, plan, config, progress)
        finally:
            module.train(False)


def fit(tangent: TangentModel, records: RecordSet, plan: Plan, privacy: PrivacySpec, config: TrainConfig,
        progress: ProgressFn | None = None, grams: GramReuse | None = None) -> int:
    """Train ``tangent``'s deltas in place on ``records`` as planned; returns optimizer steps.

    Runs on ``config.device`` (the model is moved there). A secure private run draws fresh noise
    every time; any other run depends only on the inputs and ``config.seed``, not on the process
    it runs in. ``grams``: see :func:`run_sgd`; the records' input digests are taken as they are read.
    """
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {config.device!r} was asked for but this machine has no CUDA GPU")
    if privacy.private:
        check_per_sample_support(tangent)
    tangent.to(config.device)
    try:
        reuse = grams if privacy.private and config.grad_sample_mode == "gram" else None
        module, inputs = _inputs_for(tangent, records.inputs.to(config.device), config, reuse)
        return run_sgd(module, tangent.deltas(), inputs, records.targets.to(config.device), plan, privacy, config,
                       progress, grams=reuse)
    finally:
        tangent.train(False)
