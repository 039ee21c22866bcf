"""A cryptographically secure random source for DP-SGD: Gaussian noise and Poisson batches from ChaCha20.

Each :class:`SecureRandom` (one per private run) reads ChaCha20 keystreams under fresh 256-bit keys
from the operating system (``os.urandom``), held only by OpenSSL's cipher contexts. A keystream word
w gives v = floor(w / 2^11), uniform on the 2^53 integers of [-2^52, 2^52), and from it:

* uniforms u = (v + 2^52 + 1) / 2^53 in (0, 1] (53-bit mantissas, never 0), angles theta = 2π·v/2^53;
* Box–Muller in float64: r = sqrt(-2 ln u); z = r cos(theta), z' = r sin(theta) independent N(0, 1);
* noise of std s = (s/2)·(z1 + z2 + z3 + z4) from two pairs, Opacus's ``secure_mode`` defence against
  floating-point attacks on Gaussian sampling (Holohan & Braghin 2021, n = 2: each value depends on
  4 x 53 random bits). A pair enters as z + z' = √2·r·sin(theta + π/4), drawn as √2·r·sin(theta):
  theta + π/4 is theta relabelled on the same 2^53-point circle. Rounded to the parameter dtype;
* Poisson sampling: record i joins a batch iff u_i < q, independently (P = q up to 2^-53).

Noise is made in chunks of 32768 values (2^18 for a GPU), spread over one worker thread per torch
thread (at most 8, kept for the run; the calling thread is one of them), each reading its own
keystream (OpenSSL releases the GIL). On the CPU a worker computes with numpy, which releases the GIL
and starts no threads; each sine comes from the half angle's tangent, which numpy vectorises on
x86-64 with AVX-512 (its float64 sine is scalar). So the noise runs on every core, and no worker
starts an OpenMP team to compete with the training step's: workers calling torch ops did (even a
100-value torch sine starts one), which made the noise no faster on 2 cores and slowed the next
forward and backward by 10-20%. The calling thread makes the noise alone, with torch ops on its
OpenMP threads, where numpy's tangent is scalar (measured once per process), for a dtype numpy lacks
(bfloat16), and for tensors autograd tracks or inference tensors (whose in-place writes torch
checks). For a GPU a worker writes keystream into page-locked memory and copies it asynchronously on
the caller's stream, and the Box–Muller arithmetic runs on the GPU. The arithmetic runs in place in
the keystream words' buffer (on the CPU an anonymous memory mapping of its own, outside the malloc
heap), and the noise is written or added chunk by chunk where it goes
(:meth:`SecureRandom.add_gaussian_` adds it to the clipped sum without a noise tensor the size of the
model, rounding it to the tensor's dtype in the chunk's spent words: once with numpy; torch converts
float64 to float16 and bfloat16 through float32, which rounds twice).

Not covered: timing (a step's time reveals its Poisson batch size; Python and torch are not
constant-time); the float rounding of the final noise and of its sum with the clipped gradient
(the limit Opacus's secure mode has too); the key in process memory (CPython cannot wipe the bytes
``os.urandom`` returns, and OpenSSL holds the key for the run: a memory dump during the run
reveals it). A forked child would repeat its parent's streams, so a generator refuses to run in
another process than its creator's, and cannot be pickled or copied.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import math
import mmap
import os
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from .config import TrainingError
from .noise_sources import SECURE_NOISE_GENERATOR

GENERATOR_NAME = SECURE_NOISE_GENERATOR  # its description, as components record it
KEY_BYTES = 32
WORDS_PER_NORMAL_PAIR = 2  # one radius, one angle
NORMALS_PER_NOISE = 4
_MANTISSA = 53
_SHIFT = 64 - _MANTISSA
_INV_2_53 = 2.0 ** -_MANTISSA
_HALF_PLUS = 0.5 + _INV_2_53  # (2^52 + 1) / 2^53: v·2^-53 + this = (v + 2^52 + 1)/2^53, exact
_ANGLE = 2.0 * math.pi * _INV_2_53
# noise values per chunk (CPU: 1 MiB of keystream per worker, as fast as larger chunks; CUDA: 8 MiB, so that a
# model's noise is spread over the workers and one chunk's copy to the GPU overlaps the next one's keystream)
_CHUNK = {"cpu": 1 << 15, "cuda": 1 << 18}
# CPU dtypes whose noise numpy writes (numpy has no bfloat16)
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
_MAX_WORKERS = 8
_REKEY_BYTES = 1 << 36  # 64 GiB per key, far inside ChaCha20's 2^32-block counter (256 GiB)
_PLAINTEXT_BYTES = 1 << 16  # keystream = ChaCha20(zeros), encrypted this many zero bytes at a time
_ZEROS = bytes(_PLAINTEXT_BYTES)


def _fresh_cipher():  # noqa: ANN202 -- cryptography's CipherContext (a Rust type)
    """A ChaCha20 encryptor under a fresh OS key; the key buffer is wiped once OpenSSL has its own copy."""
    key = bytearray(os.urandom(KEY_BYTES))
    try:
        return Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    finally:
        key[:] = bytes(KEY_BYTES)


def _private_buffer(size: int) -> mmap.mmap | bytearray:
    """``size`` writable bytes outside the malloc heap: an anonymous mapping private to this process
    (copy-on-write after a fork, so no child ever sees keystream written later; Python's default anonymous
    mapping is shared). A bytearray where mmap has no MAP_PRIVATE (Windows)."""
    if not hasattr(mmap, "MAP_PRIVATE"):
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


class _Keystream:
    """One ChaCha20 keystream under its own fresh OS key, rekeyed from the OS every 64 GiB; one thread at a time."""

    def __init__(self) -> None:
        self._cipher = _fresh_cipher()
        self._bytes_left = _REKEY_BYTES
        self._scratch = _private_buffer(mmap.PAGESIZE)
        # two page-locked staging buffers for copies to a GPU, each with the event of the copy that last read it
        self._pinned: list[torch.Tensor | None] = [None, None]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._slot = 0

    def fill(self, buffer: bytearray | memoryview) -> None:
        """Overwrite ``buffer`` with the next keystream bytes."""
        n = len(buffer)
        if n > self._bytes_left:
            self._cipher, self._bytes_left = _fresh_cipher(), _REKEY_BYTES
        out = memoryview(buffer).cast("B")
        for start in range(0, n, _PLAINTEXT_BYTES):  # the plaintext zeros in pieces: no buffer of n zero bytes
            piece = out[start:start + _PLAINTEXT_BYTES]
            self._cipher.update_into(memoryview(_ZEROS)[:len(piece)], piece)
        self._bytes_left -= n

    def _fresh_scratch(self, n: int) -> None:
        """Fill the first ``n`` words of this stream's reused buffer with fresh keystream."""
        if len(self._scratch) < 8 * n:  # the old mapping is unmapped once no array views it
            self._scratch = _private_buffer(8 * n)
        self.fill(memoryview(self._scratch)[:8 * n])

    def scratch_words(self, n: int) -> torch.Tensor:
        """``n`` fresh words in this stream's reused buffer: valid until its next call."""
        self._fresh_scratch(n)
        return torch.frombuffer(self._scratch, dtype=torch.int64, count=n)

    def cpu_noise(self, m: int, std: float) -> tuple[np.ndarray, np.ndarray]:
        """``m`` draws of N(0, std²) (float64) from 4·m fresh words, and the chunk's spent bytes (room for
        ``m`` float64 values), both views of this stream's reused buffer: valid until its next call."""
        self._fresh_scratch(NORMALS_PER_NOISE * m)
        words = np.frombuffer(self._scratch, dtype=np.int64, count=NORMALS_PER_NOISE * m).reshape(-1, m)
        return _four_normal_noise_numpy(words, std), words[1].view(np.uint8)

    def words_on(self, n: int, device: torch.device) -> torch.Tensor:
        """``n`` fresh words on ``device``: this stream's reused buffer on the CPU (valid until its next
        call), a new tensor on a GPU, copied asynchronously from page-locked memory. A staging buffer is
        refilled only after the copy that last read it has finished, so no keystream byte reaches two chunks."""
        if device.type != "cuda":
            return self.scratch_words(n).to(device)
        self._slot ^= 1
        staging, copied = self._pinned[self._slot], self._copied[self._slot]
        if copied is not None:
            copied.synchronize()
        if staging is None or staging.numel() < 8 * n:
            staging = self._pinned[self._slot] = torch.empty(8 * n, dtype=torch.uint8, pin_memory=True)
        self.fill(memoryview(staging.numpy())[:8 * n])
        words = staging[:8 * n].view(torch.int64).to(device, non_blocking=True)
        copied = self._copied[self._slot] = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(device))
        return words


class SecureRandom:
    """Uniforms, Gaussian noise and Bernoulli masks from ChaCha20 keystreams under fresh OS keys.

    One per private run. Its state is cipher contexts and scratch buffers of spent keystream: no
    key, seed or counter that could reproduce a stream is an attribute, part of its repr, or
    recoverable by pickling or copying it.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._streams = [_Keystream()]  # one more per GPU noise worker, made when first needed
        self._pool: ThreadPoolExecutor | None = None  # the GPU noise workers, kept for the run (made when first needed)
        self._pool_size = 0

    def __repr__(self) -> str:
        return "SecureRandom(ChaCha20, fresh OS keys)"

    def __reduce_ex__(self, protocol: object) -> object:
        raise TypeError("a SecureRandom cannot be pickled or copied: two copies would repeat the same stream")

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise TrainingError("a secure generator was inherited by a forked process; create one per process")

    def words(self, n: int) -> torch.Tensor:
        """``n`` fresh 64-bit words (int64, CPU) in a new tensor."""
        self._check_process()
        if n == 0:
            return torch.empty(0, dtype=torch.int64)
        buffer = bytearray(8 * n)
        self._streams[0].fill(buffer)
        return torch.frombuffer(buffer, dtype=torch.int64)

    def uniform(self, n: int) -> torch.Tensor:
        """``n`` uniforms in (0, 1] (float64): (floor(w/2^11) + 2^52 + 1) / 2^53."""
        return _uniform_from(self.words(n))

    def bernoulli(self, n: int, p: float) -> torch.Tensor:
        """``n`` independent Bernoulli(p) draws (bool): u < p."""
        return self.uniform(n) < p

    def gaussian(self, n: int, std: float, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` draws of N(0, std²) as std/2 · (z1 + z2 + z3 + z4), computed in float64 on ``device``.

        In chunks spread over one worker thread per torch thread (at most 8, the calling thread among
        them), each reading its own keystream: with numpy on the CPU, on the GPU for a GPU."""
        out = torch.empty(n, dtype=dtype, device=device)
        self._draw([out], std, add=False)
        return out

    def add_gaussian_(self, tensors: Sequence[torch.Tensor], std: float) -> None:
        """Add fresh N(0, std²) noise to every tensor, in place: each draw computed in float64 and rounded
        to the tensor's dtype, as :meth:`noise_like` makes it, without a noise tensor the size of the
        model (only a chunk at a time, per GPU worker). One draw per (dtype, device), as :meth:`noise_like`."""
        if not all(tensor.is_contiguous() for tensor in tensors):
            raise ValueError("add_gaussian_ needs contiguous tensors (it adds through flat views)")
        self._draw_grouped(tensors, std, add=True)

    def _draw_grouped(self, tensors: Sequence[torch.Tensor], std: float, *, add: bool) -> None:
        """:meth:`_draw` once per (dtype, device) over the flat views of the contiguous ``tensors``."""
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for tensor in tensors:
            groups.setdefault((tensor.dtype, tensor.device), []).append(tensor.view(-1))
        for flats in groups.values():
            self._draw(flats, std, add=add)

    def _draw(self, flats: list[torch.Tensor], std: float, *, add: bool) -> None:
        """Write (``add``: add) N(0, std²) draws into the 1-D tensors ``flats`` (one dtype and device),
        in chunks of their concatenation spread over the worker threads."""
        self._check_process()
        device = flats[0].device
        ends = list(itertools.accumulate(t.numel() for t in flats))
        n = ends[-1] if ends else 0
        size = _CHUNK["cuda" if device.type == "cuda" else "cpu"]
        chunks = [(start, min(size, n - start)) for start in range(0, n, size)]
        arithmetic = _arithmetic(flats)
        workers = _worker_count(device, arithmetic, len(chunks))
        while len(self._streams) < workers:
            self._streams.append(_Keystream())
        with_numpy = arithmetic == "numpy"
        targets: list[np.ndarray] | list[torch.Tensor] = [t.detach().numpy() for t in flats] if with_numpy else flats
        # every GPU worker queues its copies and arithmetic on the caller's stream, where the tensors are used
        caller_stream = torch.cuda.current_stream(device) if device.type == "cuda" else None

        def work(worker: int) -> None:
            stream = self._streams[worker]
            with contextlib.nullcontext() if caller_stream is None else torch.cuda.stream(caller_stream):
                for start, m in chunks[worker::workers]:
                    if with_numpy:
                        noise, spare = stream.cpu_noise(m, std)
                    else:
                        words = stream.words_on(NORMALS_PER_NOISE * m, device).view(NORMALS_PER_NOISE, m)
                        noise = _four_normal_noise(words, std)  # row 0 of the words' memory: valid until the next chunk
                        spare = words[1].view(torch.uint8)  # spent words: the noise rounded to a dtype goes here
                    first = bisect.bisect_right(ends, start)
                    for i in range(first, len(targets)):  # the tensors this chunk of the concatenation covers
                        lo = start - (ends[i - 1] if i else 0)
                        piece = noise[max(0, -lo):min(m, ends[i] - start)]
                        (_write_numpy if with_numpy else _write_torch)(targets[i][max(0, lo):max(0, lo) + len(piece)],
                                                                       piece, spare, add=add)
                        if ends[i] >= start + m:
                            break

        helpers: list[futures.Future] = []
        try:
            if workers > 1:
                pool = self._workers(workers - 1)
                helpers = [pool.submit(work, worker) for worker in range(1, workers)]
            work(0)  # the calling thread is a worker too
        finally:  # returns or raises only once no worker writes into the tensors any more
            _wait_for(helpers)
            if with_numpy:  # numpy wrote behind autograd's back: tell it, as an in-place torch op would
                for flat in flats:
                    torch.autograd.graph.increment_version(flat)
        for helper in helpers:
            helper.result()

    def _workers(self, n: int) -> ThreadPoolExecutor:
        """A pool of at least ``n`` threads, kept between draws: threads made once per run (not per step),
        whose allocations stay in the same malloc arenas."""
        if self._pool is None or self._pool_size < n:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool, self._pool_size = ThreadPoolExecutor(max_workers=n, thread_name_prefix="secure-noise"), n
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    def noise_like(self, references: Sequence[torch.Tensor], std: float) -> list[torch.Tensor]:
        """Fresh N(0, std²) noise shaped, typed and placed like each of ``references``: one draw per
        (dtype, device), split into the references' shapes."""
        noise = [torch.empty(ref.shape, dtype=ref.dtype, device=ref.device) for ref in references]
        self._draw_grouped(noise, std, add=False)
        return noise


def _arithmetic(flats: Sequence[torch.Tensor]) -> str:
    """``"numpy"`` for CPU worker threads, or ``"torch"``: on a GPU; on the CPU where numpy's tangent is not
    vectorised, or for tensors numpy cannot write as torch would (a dtype numpy lacks, tensors autograd
    tracks or inference tensors, whose in-place writes torch checks)."""
    first = flats[0]
    if first.device.type != "cpu" or first.dtype not in _NUMPY_DTYPES or not _numpy_tangent_is_vectorised():
        return "torch"
    return "torch" if any(t.requires_grad or t.is_inference() for t in flats) else "numpy"


@functools.cache
def _numpy_tangent_is_vectorised() -> bool:
    """Whether numpy's float64 tangent runs vectorised here (SVML: x86-64 with AVX-512, outside Windows):
    within 4x its square root's time (measured 1.2x), where scalar libm code takes 15-25x."""
    x = np.linspace(0.1, 1.4, 1 << 14)
    out = np.empty_like(x)

    def fastest(ufunc: np.ufunc) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            ufunc(x, out=out)
            times.append(time.perf_counter() - start)
        return min(times)

    return fastest(np.tan) < 4 * fastest(np.sqrt)


def _wait_for(helpers: Sequence[futures.Future]) -> None:
    """Wait until every helper has finished, through Ctrl-C too (raised once they have: a worker still
    writing after the caller got control back would change tensors it considers final)."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            futures.wait(helpers)
            break
        except KeyboardInterrupt as stop:
            interrupted = stop
    if interrupted is not None:
        raise interrupted


def _worker_count(device: torch.device, arithmetic: str, chunks: int) -> int:
    """Threads that make a draw's chunks (the calling thread included): one per torch thread, at most 8;
    the calling thread alone for torch arithmetic on the CPU (its ops run on OpenMP threads)."""
    if device.type == "cpu" and arithmetic == "torch":
        return 1
    return max(1, min(chunks, torch.get_num_threads(), _MAX_WORKERS))


def _write_torch(target: torch.Tensor, piece: torch.Tensor, spare: torch.Tensor, *, add: bool) -> None:
    """Write or add the float64 noise ``piece`` to ``target``, rounded to its dtype (in ``spare``; through
    float32 for float16 and bfloat16, as torch converts float64)."""
    if add and piece.dtype == target.dtype:
        target.add_(piece)
    elif add:
        target.add_(spare[:len(piece) * target.element_size()].view(target.dtype).copy_(piece))
    else:
        target.copy_(piece)


def _write_numpy(target: np.ndarray, piece: np.ndarray, spare: np.ndarray, *, add: bool) -> None:
    """:func:`_write_torch` with numpy, which neither holds the GIL nor starts threads."""
    if not add:
        np.copyto(target, piece, casting="same_kind")
    elif piece.dtype == target.dtype:
        np.add(target, piece, out=target)
    else:
        rounded = spare[:piece.size * target.itemsize].view(target.dtype)
        np.copyto(rounded, piece, casting="same_kind")
        np.add(target, rounded, out=target)


def _uniform_from(words: torch.Tensor) -> torch.Tensor:
    """u = (floor(w / 2^11) + 2^52 + 1) / 2^53 in (0, 1], exactly (every step is exact in float64)."""
    return (words >> _SHIFT).to(torch.float64).mul_(_INV_2_53).add_(_HALF_PLUS)


def _four_normal_noise(words: torch.Tensor, std: float) -> torch.Tensor:
    """std/2 · (z1 + z2 + z3 + z4) from 4 words per value: rows 0-1 radii, rows 2-3 angles.

    Pair k gives z + z' = √2·r_k·sin(theta_k) (see the module doc), so the sum is
    std/√2 · (r_1 sin theta_1 + r_2 sin theta_2) = s_1 sin theta_1 + s_2 sin theta_2 with
    s_k = sqrt(-std² ln u_k). Computed in place: ``words`` (int64, contiguous) is reinterpreted as float64,
    and the result is a view of its first row."""
    shifted = words.bitwise_right_shift_(_SHIFT)
    v = shifted.view(torch.float64).copy_(shifted)  # same memory, element by element: exact, |v| < 2^52
    radius = v[:WORDS_PER_NORMAL_PAIR].mul_(_INV_2_53).add_(_HALF_PLUS).log_().mul_(-std * std).sqrt_()
    sine = v[WORDS_PER_NORMAL_PAIR:].mul_(_ANGLE).sin_()
    return radius[0].mul_(sine[0]).addcmul_(radius[1], sine[1])


def _four_normal_noise_numpy(words: np.ndarray, std: float) -> np.ndarray:
    """:func:`_four_normal_noise` with numpy, for a CPU worker thread: s_1 sin theta_1 + s_2 sin theta_2 from 4 words
    per value (rows 0-1 radii, rows 2-3 angles), computed in place in ``words``'s memory as float64; the result is
    a view of its first row.

    numpy's float64 sine is scalar (14 ns a value here) but its tangent is vectorised, so each sine comes from
    the same angle theta = 2·phi as sin theta = 2t / (1 + t²) with t = tan(phi), phi = π·v/2^53 in [-π/2, π/2)
    (within 3 ulps of the sine): s·sin theta = 2s·t / (1 + t²), with 2s = sqrt(-4·std² ln u)."""
    np.right_shift(words, _SHIFT, out=words)
    v = words.view(np.float64)
    # same memory, element by element (exact, |v| < 2^52); flat, as numpy copies an overlapping source first
    # unless both are 1-D
    np.copyto(v.reshape(-1), words.reshape(-1), casting="unsafe")
    radius, t = v[:WORDS_PER_NORMAL_PAIR], v[WORDS_PER_NORMAL_PAIR:]
    np.multiply(radius, _INV_2_53, out=radius)
    np.add(radius, _HALF_PLUS, out=radius)
    np.log(radius, out=radius)
    np.multiply(radius, -4.0 * std * std, out=radius)
    np.sqrt(radius, out=radius)
    np.multiply(t, _ANGLE / 2, out=t)
    np.tan(t, out=t)
    np.multiply(radius, t, out=radius)
    np.multiply(t, t, out=t)
    np.add(t, 1.0, out=t)
    np.divide(radius, t, out=radius)
    return np.add(radius[0], radius[1], out=radius[0])


class SecurePoissonSampler(UniformWithReplacementSampler):
    """Opacus's Poisson batch sampler driven by a :class:`SecureRandom`: each record joins each batch
    independently with probability q; ``steps`` batches per epoch (Opacus's default ``int(1/q)``), empty ones
    included."""

    def __init__(self, *, num_samples: int, sample_rate: float, rng: SecureRandom, steps: int | None = None) -> None:
        if not 0 < sample_rate <= 1:
            raise TrainingError(f"sample rate must be in (0, 1], got {sample_rate}")
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, generator=None, steps=steps)
        self.rng = rng

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield torch.nonzero(self.rng.bernoulli(self.num_samples, self.sample_rate)).flatten().tolist()
