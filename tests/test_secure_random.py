"""The secure noise source: its distributions, its key hygiene, and how private and seeded runs are labelled.

The statistical tests draw from a CSPRNG under a fresh key, so they cannot be seeded: each uses a
fixed significance of ALPHA = 1e-6, i.e. a correct sampler fails one in a million runs.
"""

from __future__ import annotations

import copy
import json
import math
import mmap
import os
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dp_accounting
import numpy as np
import pytest
import torch
import torch.nn as nn
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from opacus import GradSampleModule
from scipy import stats

from dp_tangent import linearize
from dp_tangent.components.component import SEEDED_LABEL, load_component, read_metadata
from dp_tangent.data import RecordSet
from dp_tangent.training import (
    PrivacySpec,
    TrainConfig,
    TrainingError,
    plan_run,
    run_sgd,
    secure_random,
    sgd,
    train_component,
)
from dp_tangent.training.secure_random import SecurePoissonSampler, SecureRandom
from dp_tangent.training.sgd import SecureDPOptimizer
from privacy_accounting import BudgetExceededError, Ledger
from privacy_accounting.events import is_non_private

ALPHA = 1e-6
KEY = bytes(range(32))
NOISY = PrivacySpec(noise_multiplier=1.0)


def tiny_records(n: int = 96) -> RecordSet:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    return RecordSet(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long(), tuple(f"rec-{i}" for i in range(n)))


# -- distributions --------------------------------------------------------------------------------
@pytest.fixture
def numpy_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU draws by numpy workers even on a machine whose numpy tangent is scalar (where the calling
    thread would make them with torch ops, for speed alone)."""
    monkeypatch.setattr(secure_random, "_numpy_tangent_is_vectorised", lambda: True)


@pytest.fixture(params=[(1, "numpy"), (3, "numpy"), (3, "torch")], ids=["1-thread", "3-threads", "torch-3-workers"])
def workers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, numpy_workers: None) -> int:
    """A CPU draw spreads its chunks over one worker per torch thread (1 or 3 here), each with a keystream,
    computing with numpy; a GPU draw computes with torch ops, a path run here on the CPU (3 workers)."""
    threads, arithmetic = request.param
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    if arithmetic == "torch":
        monkeypatch.setattr(secure_random, "_arithmetic", lambda flats: "torch")
        monkeypatch.setattr(secure_random, "_worker_count", lambda device, arithmetic, chunks: min(threads, chunks))
    yield threads
    torch.set_num_threads(before)


def _os_threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_a_cpu_draw_runs_on_one_worker_per_torch_thread_none_of_which_starts_an_openmp_team(numpy_workers) -> None:
    """Workers whose torch ops went parallel would each start an OpenMP team (torch threads - 1 more OS
    threads per worker) competing with the training step's: only the pool's own threads may appear."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert [secure_random._worker_count(cpu, "numpy", n) for n in (100, 2)] == [3, 2]
        assert secure_random._worker_count(cpu, "torch", 100) == 1  # torch ops: on the calling thread's team
        assert [secure_random._worker_count(cuda, "torch", n) for n in (100, 2)] == [3, 2]
        torch.ones(1 << 20).mul_(2)  # the calling thread's own OpenMP team exists before counting
        warm = threading.Thread(target=lambda: torch.ones(8).sin_())  # torch's per-thread set-up, in a thread
        warm.start()
        warm.join()
        threads = _os_threads()
        rng = SecureRandom()
        x = rng.gaussian(1_000_000, 1.0)
        assert len(rng._streams) == 3 and len(_os_threads() - threads) == 2  # the two pool threads, nothing else
        assert torch.unique(x).numel() == x.numel()  # no chunk drawn twice
        single = SecureRandom()
        single.gaussian(100_000, 1.0, dtype=torch.bfloat16)
        assert len(single._streams) == 1 and single._pool is None
    finally:
        torch.set_num_threads(before)


def test_a_failed_draw_returns_only_once_no_worker_writes_any_more(monkeypatch, numpy_workers) -> None:
    """The calling thread fails on its first chunk while the other workers are still drawing: the error
    reaches the caller only after they finished, so nothing changes the tensor once the caller has it."""
    real = secure_random._Keystream.cpu_noise

    def failing_in_the_calling_thread(stream, m: int, std: float):  # noqa: ANN001, ANN202
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("boom")
        time.sleep(0.01)
        return real(stream, m, std)

    monkeypatch.setattr(secure_random._Keystream, "cpu_noise", failing_in_the_calling_thread)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        target = torch.zeros(20 * secure_random._CHUNK["cpu"])
        with pytest.raises(RuntimeError, match="boom"):
            SecureRandom().add_gaussian_([target], 1.0)
        seen = target.clone()
        time.sleep(0.1)
        assert torch.equal(target, seen) and bool((seen != 0).any())  # the helpers drew, and had finished
    finally:
        torch.set_num_threads(before)


def test_waiting_for_the_workers_outlasts_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the calling thread waits for its helpers is raised only once they finished writing."""
    finished = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        helper = pool.submit(lambda: (time.sleep(0.05), finished.set()))
        real, calls = secure_random.futures.wait, []

        def interrupted_once(pending):  # noqa: ANN001, ANN202
            calls.append(1)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return real(pending)

        monkeypatch.setattr(secure_random.futures, "wait", interrupted_once)
        with pytest.raises(KeyboardInterrupt):
            secure_random._wait_for([helper])
        assert finished.is_set() and len(calls) == 2


def test_cpu_noise_goes_to_numpy_workers_only_where_numpy_computes_and_writes_as_torch_would(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy workers where numpy's tangent is vectorised and the tensors are plain float CPU tensors; torch ops in
    the calling thread otherwise: where the tangent is scalar (slower than torch), for bfloat16 (numpy has none),
    and where torch checks in-place writes (autograd, inference tensors), whose errors torch then raises."""
    assert isinstance(secure_random._numpy_tangent_is_vectorised(), bool)
    monkeypatch.setattr(secure_random, "_numpy_tangent_is_vectorised", lambda: True)
    arithmetic = secure_random._arithmetic
    assert arithmetic([torch.zeros(3), torch.zeros(2, dtype=torch.float64)]) == "numpy"
    assert arithmetic([torch.zeros(3, dtype=torch.float16)]) == "numpy"
    assert arithmetic([torch.zeros(3, dtype=torch.bfloat16)]) == "torch"
    leaf = torch.zeros(3, requires_grad=True)
    assert arithmetic([torch.zeros(3), leaf]) == "torch"
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        SecureRandom().add_gaussian_([leaf], 1.0)
    with torch.inference_mode():
        frozen = torch.zeros(3)
    assert arithmetic([frozen]) == "torch"
    with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        SecureRandom().add_gaussian_([frozen], 1.0)
    plain = torch.zeros(1000)
    version = plain._version
    SecureRandom().add_gaussian_([plain], 1.0)  # numpy wrote it: autograd's version counter still moves
    assert plain._version > version and bool((plain != 0).all())
    monkeypatch.setattr(secure_random, "_numpy_tangent_is_vectorised", lambda: False)
    assert arithmetic([torch.zeros(3)]) == "torch"


def test_noise_is_gaussian_with_the_asked_std(workers: int) -> None:
    std, n = 2.5, 1_000_000
    rng = SecureRandom()
    x = rng.gaussian(n, std).numpy()
    assert len(rng._streams) == workers  # one keystream per worker
    assert x.dtype == np.float64 and np.isfinite(x).all()
    assert np.unique(x).size == n  # no chunk repeats another's
    assert stats.kstest(x, stats.norm(scale=std).cdf).pvalue > ALPHA
    assert abs(x.mean()) < 4.9 * std / math.sqrt(n)  # two-sided z at 1e-6
    assert abs(x.var() / std**2 - 1) < 4.9 * math.sqrt(2 / n)
    # the same test has the power to see a 2% error in the std (p about 1e-20)
    assert stats.kstest(x * 1.02, stats.norm(scale=std).cdf).pvalue < ALPHA


def test_noise_from_words_is_the_stated_formula_computed_in_place() -> None:
    """s_1 sin(theta_1) + s_2 sin(theta_2), s_k = sqrt(-std² ln u_k), from 4 words per value, written over the words'
    own memory (int64 reinterpreted as float64): the same values as the formula computed in fresh tensors."""
    torch.manual_seed(0)
    words = torch.randint(-2**63, 2**63 - 1, (4, 50_000), dtype=torch.int64)
    v = (words >> 11).double()
    radius = (v[:2] * 2.0**-53 + (0.5 + 2.0**-53)).log().mul(-0.7**2).sqrt()
    want = radius[0] * (v[2] * 2 * math.pi * 2.0**-53).sin() + radius[1] * (v[3] * 2 * math.pi * 2.0**-53).sin()
    array = words.numpy().copy()
    address = words.data_ptr()
    got = secure_random._four_normal_noise(words, 0.7)
    assert got.data_ptr() == address and torch.allclose(got, want, rtol=1e-13, atol=1e-15)  # addcmul may fuse
    # the CPU workers' numpy version: sin theta = 2t / (1 + t²), t = tan(theta / 2), within a few ulps
    got = secure_random._four_normal_noise_numpy(array, 0.7)
    assert got.ctypes.data == array.ctypes.data
    assert torch.allclose(torch.from_numpy(got), want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_noise_in_lower_precision_keeps_its_distribution(dtype: torch.dtype) -> None:
    x = SecureRandom().gaussian(400_000, 0.3, dtype=dtype)
    assert x.dtype == dtype
    assert stats.kstest(x.double().numpy(), stats.norm(scale=0.3).cdf).pvalue > ALPHA


def test_uniforms_are_53_bit_and_never_zero() -> None:
    u = SecureRandom().uniform(1_000_000)
    assert u.dtype == torch.float64 and bool((u > 0).all()) and bool((u <= 1).all())
    grid = u * 2.0**53
    assert torch.equal(grid, grid.round())  # multiples of 2^-53: 53-bit mantissas
    assert stats.kstest(u.numpy(), "uniform").pvalue > ALPHA


def test_noise_added_in_place_spans_chunks_and_tensors_with_the_asked_std(workers: int) -> None:
    """Tensors of odd sizes whose concatenation crosses chunk boundaries mid-tensor: every value gets its own
    draw, rounded to the tensor's dtype, and the sums keep the asked std."""
    std, chunk = 1.5, secure_random._CHUNK["cpu"]
    sizes = [3, chunk + 11, 5, 2 * chunk - 7, 1]
    base = [torch.zeros(n, dtype=torch.float32) for n in sizes[:3]] + [
        torch.full((n,), -4.0, dtype=torch.float64) for n in sizes[3:]]
    tensors = [t.clone() for t in base]
    SecureRandom().add_gaussian_(tensors, std)
    assert [(t.shape, t.dtype) for t in tensors] == [(b.shape, b.dtype) for b in base]
    noise = torch.cat([(t - b).double() for t, b in zip(tensors, base)]).numpy()
    wide = noise[sum(sizes[:3]):]  # float64: distinct values unless a draw repeats
    assert np.unique(wide).size == wide.size and (noise != 0).all()  # no chunk or piece drawn twice or skipped
    assert stats.kstest(noise, stats.norm(scale=std).cdf).pvalue > ALPHA
    with pytest.raises(ValueError, match="contiguous"):
        SecureRandom().add_gaussian_([torch.zeros(4, 4).t()], std)


def test_noise_added_to_a_lower_precision_tensor_is_the_float64_draw_rounded_once(monkeypatch, numpy_workers) -> None:
    """The same keystream (a fixed OS key) as a float64 draw and as noise added in place to float32 and float16
    zeros, across chunk boundaries: each added value is the float64 draw rounded once to the tensor's dtype
    (rounded in the chunk's spent words, not in a temporary)."""
    monkeypatch.setattr(secure_random.os, "urandom", lambda n: KEY[:n])
    chunk = secure_random._CHUNK["cpu"]
    sizes = [chunk - 3, chunk + 5, 7]
    drawn = SecureRandom().gaussian(sum(sizes), 2.0)
    for dtype, numpy_dtype in ((torch.float32, np.float32), (torch.float16, np.float16)):
        tensors = [torch.zeros(n, dtype=dtype) for n in sizes]
        SecureRandom().add_gaussian_(tensors, 2.0)
        # numpy rounds float64 to float16 once; torch's .to() goes through float32 (twice, off in rare ties)
        assert torch.equal(torch.cat(tensors), torch.from_numpy(drawn.numpy().astype(numpy_dtype)))


def test_noise_like_shapes_types_and_places_like_the_references() -> None:
    refs = [torch.zeros(3, 4), torch.zeros(5, dtype=torch.float64), torch.zeros(2, 2, 2)]
    noise = SecureRandom().noise_like(refs, 1.0)
    assert [(n.shape, n.dtype) for n in noise] == [(r.shape, r.dtype) for r in refs]
    flat = torch.cat([n.double().flatten() for n in noise])
    assert len(set(flat.tolist())) == flat.numel()  # fresh values everywhere, no repeated block


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_noise_generated_on_the_gpu_is_gaussian() -> None:
    x = SecureRandom().gaussian(1_000_000, 1.5, dtype=torch.float32, device="cuda")
    assert x.device.type == "cuda"
    assert stats.kstest(x.double().cpu().numpy(), stats.norm(scale=1.5).cdf).pvalue > ALPHA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_noise_never_repeats_a_chunk_of_its_double_buffered_staging() -> None:
    """Many chunks per worker pass through each page-locked buffer: a buffer refilled before its copy
    finished would hand the same keystream to two chunks, and repeat noise values."""
    rng = SecureRandom()
    with torch.device("cpu"):
        draws = [rng.gaussian(3_000_000, 1.0, device="cuda") for _ in range(3)]
    flat = torch.cat(draws).cpu()
    assert torch.unique(flat).numel() == flat.numel()


# -- Poisson sampling -------------------------------------------------------------------------------
def test_poisson_sampler_includes_each_record_independently_with_probability_q() -> None:
    n, q, epochs = 500, 0.04, 40
    sampler = SecurePoissonSampler(num_samples=n, sample_rate=q, rng=SecureRandom())
    assert len(sampler) == int(1 / q) == 25  # as many batches per epoch as Opacus's sampler
    batches = [b for _ in range(epochs) for b in sampler]
    assert len(batches) == epochs * 25
    sizes = np.array([len(b) for b in batches])
    steps = len(batches)
    # the inclusion rate: every (record, step) is one Bernoulli(q) trial
    assert stats.binomtest(int(sizes.sum()), n * steps, q).pvalue > ALPHA
    # batch sizes follow Binomial(n, q): chi-square over bins of >= 5 expected batches
    edges = [0, 14, 17, 19, 21, 23, 25, 28, n + 1]
    expected = np.diff(stats.binom(n, q).cdf(np.array(edges) - 1)) * steps
    observed = np.histogram(sizes, bins=edges)[0]
    assert expected.min() >= 5 and stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > ALPHA
    # consecutive batch sizes are uncorrelated
    assert stats.pearsonr(sizes[:-1], sizes[1:]).pvalue > ALPHA
    # no record is favoured: per-record counts are Binomial(steps, q) around the same mean
    counts = np.bincount(np.concatenate([np.array(b, dtype=int) for b in batches]), minlength=n)
    statistic = ((counts - steps * q) ** 2 / (steps * q * (1 - q))).sum()
    assert stats.chi2(n).sf(statistic) > ALPHA and stats.chi2(n).cdf(statistic) > ALPHA
    assert all(b == sorted(set(b)) for b in batches)  # each record at most once per batch


def test_poisson_sampler_refuses_a_rate_outside_0_1() -> None:
    with pytest.raises(TrainingError, match="sample rate"):
        SecurePoissonSampler(num_samples=10, sample_rate=0.0, rng=SecureRandom())


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_secure_runs_take_every_planned_step_through_empty_batches(mode: str, monkeypatch) -> None:
    """q = 1/6 on 6 records: about a third of the batches are empty, and each still is a noisy step."""
    sizes: list[int] = []

    class Recording(SecurePoissonSampler):
        def __iter__(self):  # noqa: ANN204
            for batch in super().__iter__():
                sizes.append(len(batch))
                yield batch

    monkeypatch.setattr(sgd, "SecurePoissonSampler", Recording)
    net = nn.Sequential(nn.Linear(8, 3)).eval()
    tangent = linearize(net)
    records = tiny_records(6)
    privacy, config = PrivacySpec(noise_multiplier=1.0), TrainConfig(epochs=8, batch_size=1, physical_batch_size=1,
                                                                     lr=0.1, grad_sample_mode=mode)
    plan = plan_run(len(records), privacy, config)
    assert plan.steps == 48
    steps = run_sgd(tangent, tangent.deltas(), records.inputs, records.targets, plan, privacy, config)
    assert steps == plan.steps == len(sizes) and all(torch.isfinite(d).all() for d in tangent.deltas())
    assert 0 in sizes, sizes  # P(no empty batch in 48) = (1 - (5/6)^6)^48, about 3e-9


# -- the DP optimizer ---------------------------------------------------------------------------------
def test_secure_optimizer_adds_noise_of_std_sigma_c_once_per_summed_gradient() -> None:
    sigma, clip, batch = 1.5, 0.05, 8
    layer = nn.Linear(300, 400)
    gsm = GradSampleModule(layer)
    optimizer = SecureDPOptimizer(torch.optim.SGD(layer.parameters(), lr=1.0), rng=SecureRandom(),
                                  noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=batch)
    gsm(torch.randn(batch, 300)).sum().backward()
    optimizer.clip_and_accumulate()
    summed = torch.cat([p.summed_grad.flatten() for p in optimizer.params])
    optimizer.add_noise()
    noise = (torch.cat([p.grad.flatten() for p in optimizer.params]) - summed).double().numpy()
    assert noise.size == 120_400
    assert stats.kstest(noise, stats.norm(scale=sigma * clip).cdf).pvalue > ALPHA
    with pytest.raises(ValueError, match="zero_grad"):  # Opacus's rule: a summed gradient is noised once
        optimizer.add_noise()


def test_ghost_and_gram_optimizer_sums_physical_batches_without_a_copy_and_either_zero_grad_keeps_it() -> None:
    """The clipped sum in ``.grad`` becomes ``summed_grad`` (not a copy); ``.grad`` is cleared, so neither a
    zero_grad that zeroes in place nor the next backward touches it; the noised sum comes back in ``.grad``."""
    layer = nn.Linear(3, 2)
    optimizer = sgd.SecureDPOptimizerFastGradientClipping(
        torch.optim.SGD(layer.parameters(), lr=1.0), rng=SecureRandom(), noise_multiplier=0.0, max_grad_norm=1.0,
        expected_batch_size=4)
    first, second = [torch.randn_like(p) for p in layer.parameters()], [torch.randn_like(p) for p in layer.parameters()]
    for p, g in zip(layer.parameters(), first):
        p.grad = g.clone()
    grads = [p.grad.data_ptr() for p in layer.parameters()]
    optimizer.signal_skip_step(do_skip=True)  # the first physical batch of a logical one
    assert optimizer.pre_step() is False
    assert [p.summed_grad.data_ptr() for p in layer.parameters()] == grads and all(
        p.grad is None for p in layer.parameters())
    optimizer.zero_grad(set_to_none=False)
    for p, g in zip(layer.parameters(), second):
        p.grad = g.clone()
    assert optimizer.pre_step() is True
    for p, a, b in zip(layer.parameters(), first, second):
        assert torch.allclose(p.grad, (a + b) / 4)  # sigma 0: the sum of both, scaled by the expected batch


# -- the key --------------------------------------------------------------------------------------------
def test_the_stream_is_chacha20_under_the_os_key_and_the_key_buffer_is_wiped(monkeypatch) -> None:
    passed: list[bytearray] = []
    real = algorithms.ChaCha20

    def capture(key: bytearray, nonce: bytes) -> algorithms.ChaCha20:
        passed.append(key)
        return real(key, nonce)

    monkeypatch.setattr(secure_random.os, "urandom", lambda n: KEY[:n])
    monkeypatch.setattr(secure_random.algorithms, "ChaCha20", capture)
    rng = SecureRandom()
    want = Cipher(real(KEY, bytes(16)), mode=None).encryptor().update(bytes(64))
    assert rng.words(8).numpy().tobytes() == want  # the keystream under the OS key, from its start
    long = Cipher(real(KEY, bytes(16)), mode=None).encryptor().update(bytes(64 + 3 * secure_random._PLAINTEXT_BYTES))
    assert rng.words(3 * secure_random._PLAINTEXT_BYTES // 8).numpy().tobytes() == long[64:]  # over several pieces
    [buffer] = passed
    assert bytes(buffer) == bytes(32)  # wiped: OpenSSL kept its own copy and the stream goes on
    assert KEY.hex() not in repr(rng) and KEY not in repr(rng).encode()
    rng.gaussian(1 << 17, 1.0)  # the streams' scratch buffers now hold spent keystream
    for owner in [rng, *rng._streams]:
        for name, value in vars(owner).items():
            assert not (isinstance(value, (bytes, bytearray, memoryview, mmap.mmap)) and KEY in bytes(value)), name
            assert "key" not in name.lower() and "seed" not in name.lower(), name


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_sees_keystream_its_parent_writes_later() -> None:
    """The CPU keystream buffer is a private mapping: after a fork, the parent's next draws stay out of the
    child's memory (a shared mapping, Python's default, would hand the child the parent's noise)."""
    rng = SecureRandom()
    rng.gaussian(1 << 10, 1.0)
    scratch = rng._streams[0]._scratch
    go_read, go_write = os.pipe()
    seen_read, seen_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait until the parent has drawn again, then report its view of the buffer
        try:
            os.close(go_write)
            os.close(seen_read)
            os.read(go_read, 1)
            os.write(seen_write, bytes(scratch[:4096]))
        finally:
            os._exit(0)
    os.close(go_read)
    os.close(seen_write)
    try:
        rng.gaussian(1 << 10, 1.0)  # overwrites the buffer with fresh keystream (the same size: no new buffer)
        same_buffer = rng._streams[0]._scratch is scratch
        parent_view = bytes(scratch[:4096])
    finally:  # the child is released and reaped whatever happened here
        os.write(go_write, b"x")
        os.close(go_write)
        child_view = b""
        while piece := os.read(seen_read, 4096):
            child_view += piece
        os.close(seen_read)
        os.waitpid(pid, 0)
    assert same_buffer and len(child_view) == 4096
    assert child_view != parent_view


def test_a_generator_cannot_be_copied_pickled_or_used_after_a_fork(monkeypatch) -> None:
    rng = SecureRandom()
    for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="repeat the same stream"):
            duplicate(rng)
    monkeypatch.setattr(secure_random.os, "getpid", lambda: -1)
    with pytest.raises(TrainingError, match="forked"):
        rng.uniform(4)


# -- runs and their labels ------------------------------------------------------------------------------
def _train(tmp_path, backbone, name: str, config: TrainConfig, ledger: Ledger | None = None, shard: str = "s0",
           privacy: PrivacySpec = NOISY):  # noqa: ANN001, ANN202
    ledger = ledger or Ledger.open(tmp_path / "ledger.sqlite")
    return train_component(backbone, None, tiny_records(), ledger=ledger, data_source="toy", shard=shard, name=name,
                           output=tmp_path / f"{name}.safetensors", manifest_key=KEY, privacy=privacy, config=config)


def test_two_secure_runs_differ_and_two_seeded_runs_are_identical(tmp_path, mlp_backbone) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    secure = TrainConfig(epochs=2, batch_size=32, lr=0.1, seed=5)
    seeded = TrainConfig(epochs=2, batch_size=32, lr=0.1, seed=5, noise="seeded")
    deltas = {name: load_component(_train(tmp_path, mlp_backbone, name, config, ledger).path).deltas
              for name, config in (("a", secure), ("b", secure), ("c", seeded), ("d", seeded))}
    assert all(torch.equal(deltas["c"][n], deltas["d"][n]) for n in deltas["c"])
    assert all(not torch.equal(deltas["a"][n], deltas["b"][n]) for n in deltas["a"])
    assert all(not torch.equal(deltas["a"][n], deltas["c"][n]) for n in deltas["a"])


def test_a_secure_component_records_no_seed_and_claims_its_guarantee(tmp_path, mlp_backbone) -> None:
    result = _train(tmp_path, mlp_backbone, "c0", TrainConfig(epochs=1, batch_size=32, lr=0.1, seed=918273645))
    meta = read_metadata(result.path)
    assert meta.privacy.private and meta.privacy.secure_mode and meta.privacy.epsilon is not None
    assert meta.training.seed is None and meta.training.noise == "secure"
    header = json.loads(result.path.read_bytes()[8:8 + int.from_bytes(result.path.read_bytes()[:8], "little")])
    training = json.loads(header["__metadata__"]["dp_tangent"])["training"]
    assert training["seed"] is None and b"918273645" not in result.path.read_bytes()


def test_a_seeded_run_is_labelled_not_private_everywhere(tmp_path, mlp_backbone) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    config = TrainConfig(epochs=1, batch_size=32, lr=0.1, seed=7, noise="seeded")
    privacy = PrivacySpec(epsilon=2.0)
    result = _train(tmp_path, mlp_backbone, "c0", config, ledger, privacy=privacy)
    meta = read_metadata(result.path)
    p = meta.privacy
    assert not p.private and p.label == SEEDED_LABEL and "NOT DIFFERENTIALLY PRIVATE" in p.label
    assert p.epsilon is None and p.delta is None and p.epsilon_by_accountant == {} and not p.secure_mode
    assert "not a CSPRNG" in p.noise_generator and p.sampling == "poisson (seeded)" and meta.epsilon == math.inf
    assert meta.training.seed == 7 and meta.training.noise == "seeded"
    secure_plan = plan_run(96, privacy, TrainConfig(epochs=1, batch_size=32))
    assert p.noise_multiplier == secure_plan.noise_multiplier > 0  # the same mechanism, minus the secrecy
    [event] = ledger.events(component="c0")
    assert is_non_private(event.event) and event.details["noise_multiplier"] == secure_plan.noise_multiplier
    assert (event.details["sample_rate"], event.details["steps"]) == (secure_plan.sample_rate, secure_plan.steps)
    assert event.details["epsilon"] is None and math.isinf(ledger.shard_spend("toy", "s0", delta=1e-5).epsilon)
    ledger.set_budget("toy", "s1", epsilon=100.0, delta=1e-5)
    with pytest.raises(BudgetExceededError):
        _train(tmp_path, mlp_backbone, "c1", config, ledger, shard="s1", privacy=privacy)


def test_plan_gives_a_seeded_run_a_non_private_event_and_needs_its_seed() -> None:
    privacy = PrivacySpec(epsilon=3.0)
    secure = plan_run(200, privacy, TrainConfig(batch_size=20))
    seeded = plan_run(200, privacy, TrainConfig(batch_size=20, noise="seeded"))
    assert isinstance(seeded.event, dp_accounting.NonPrivateDpEvent) and not is_non_private(secure.event)
    assert (seeded.noise_multiplier, seeded.sample_rate, seeded.steps) == \
        (secure.noise_multiplier, secure.sample_rate, secure.steps)
    assert plan_run(200, privacy, TrainConfig(batch_size=20, seed=None)).noise_multiplier == secure.noise_multiplier
    with pytest.raises(TrainingError, match="integer seed"):
        plan_run(200, privacy, TrainConfig(seed=None, noise="seeded"))
    with pytest.raises(TrainingError, match="integer seed"):
        plan_run(200, PrivacySpec(epsilon=math.inf), TrainConfig(seed=None))
    with pytest.raises(TrainingError, match="noise must be one of"):
        plan_run(200, privacy, TrainConfig(noise="mersenne"))
