"""Shared measurement helpers for the benchmarks: phase timing, peak memory, machine description.

Import this module before torch: it sets how OpenMP threads wait (see below).

A step is a generator function that yields a phase name at the end of each phase (``"forward"``,
``"backward"``, ...), so one timed run gives the total and where it went without extra syncs: on
CPU every op has finished when Python regains control (on a GPU, pass ``sync`` to :func:`time_step`).
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dp_tangent.openmp import chosen_wait, use_short_spin

from ._malloc import release_free_memory, status_bytes

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler's stage logs out of the output
# OpenMP threads spin while they wait for each other; libgomp's default spin (3-8 ms) holds a core
# that the secure noise's worker threads need, and on cores shared with other processes a spinning
# thread burns the time slice its descheduled peer needs. Timed processes use what `dp-tangent` sets
# (a spin 1/30 as long, dp_tangent.openmp) before torch loads its OpenMP runtime, unless the user set a wait
# policy. A process started with OMP_DEFAULT_FLAG=1 keeps the runtime's own default instead, as a
# process that imports the library without setting anything runs.
OMP_DEFAULT_FLAG = "BENCHMARK_OMP_DEFAULT"
_USER_ENVIRONMENT = dict(os.environ)  # as the benchmark was started
if os.environ.get(OMP_DEFAULT_FLAG) != "1":
    use_short_spin()


def user_environment() -> dict[str, str]:
    """The environment the benchmark was started with (without the wait policy this module set): for a
    command timed as a user runs it."""
    return {key: value for key, value in _USER_ENVIRONMENT.items() if key != OMP_DEFAULT_FLAG}


def wait_policy() -> str:
    """How this process's OpenMP threads wait, as set in its environment."""
    return chosen_wait(os.environ) or "the OpenMP runtime's default"

import torch  # noqa: E402

StepFn = Callable[[], Iterator[str]]
MiB = 2**20


def time_step(step: StepFn, sync: Callable[[], object] | None = None) -> dict[str, float]:
    """Seconds spent in each phase of one run of ``step``, plus ``"total"``. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before every clock reading, so that queued GPU work counts
    in the phase that launched it."""
    phases: dict[str, float] = {}
    if sync is not None:
        sync()
    start = last = time.perf_counter()
    for phase in step():
        if sync is not None:
            sync()
        now = time.perf_counter()
        phases[phase] = phases.get(phase, 0.0) + now - last
        last = now
    phases["total"] = last - start
    return phases


def run_queue_wait() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU (Linux schedstat),
    summed over threads: zero on an idle machine, large when other work competes for the cores."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        try:
            total += int(Path(f"/proc/self/task/{task}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return total / 1e9


def steal_time() -> float | None:
    """Seconds of CPU time the hypervisor gave to other guests while this machine's CPUs wanted it (the
    ``steal`` column of Linux's /proc/stat, summed over CPUs): invisible to the run-queue wait above."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def minor_faults() -> int:
    """Minor page faults of this process so far: each maps a fresh (zeroed) page in."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@dataclass(frozen=True)
class PeakRSS:
    """Peak resident memory of this process above a baseline taken by :meth:`start`.

    On Linux the kernel's high-water mark is reset (``echo 5 > /proc/self/clear_refs``) and the
    baseline is the current RSS, so memory touched during setup cannot hide growth later on. Elsewhere
    the baseline is ``ru_maxrss``, the peak so far (growth below an earlier peak is then invisible).
    """

    baseline: int
    method: str

    @classmethod
    def start(cls) -> "PeakRSS":
        release_free_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            rss = status_bytes("VmRSS")
            if rss is not None:
                return cls(rss, "VmHWM - VmRSS at start (Linux, high-water mark reset)")
        except OSError:
            pass
        return cls(_ru_maxrss(), "ru_maxrss increase")

    def increase(self) -> int:
        peak = status_bytes("VmHWM") if self.method.startswith("VmHWM") else _ru_maxrss()
        return max(0, (peak or 0) - self.baseline)


def _ru_maxrss() -> int:
    scale = 1 if platform.system() == "Darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


DENSE_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
                       "aten::convolution_backward", "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward",
                       "aten::_conv_depthwise2d"})


def profile_step(step: StepFn, top: int = 8) -> tuple[int | None, list[tuple[str, float]], float]:
    """One run of ``step`` under the PyTorch profiler: (allocator peak in bytes, top ops as
    (name, self CPU ms), share of self CPU time in matmul/convolution kernels).

    The allocator peak is the highest running sum of the CPU allocator's allocation and free events
    during the step, i.e. peak bytes of live tensors above the step's start. It misses memory that
    does not go through PyTorch's allocator (oneDNN scratch, Python objects), and frees of blocks
    allocated before the step are not reported, so a step should not free earlier tensors (clear
    gradients at the end of a step, not the start). Op times carry profiler overhead: use as shares.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in step():
            pass
    try:  # the raw allocation timeline is only exposed on the kineto results
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        peak = None
    else:
        live = peak = 0
        for _, nbytes in sorted(events, key=lambda e: e[0]):
            live += nbytes
            peak = max(peak, live)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(op.self_cpu_time_total for op in ops) or 1.0
    dense = sum(op.self_cpu_time_total for op in ops if op.key in DENSE_OPS) / total
    return peak, [(op.key, op.self_cpu_time_total / 1e3) for op in ops[:top]], dense


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _virtualized() -> bool | None:
    try:
        return " hypervisor" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def _git_revision(root: Path) -> str | None:
    """Commit, plus the tracked Python files with uncommitted changes (then the commit is not what ran).

    ``BENCHMARK_GIT_REVISION``, when set, names it instead: a copy of the tree on a remote GPU machine may
    carry no ``.git``, or one whose HEAD is not the commit its files come from."""
    named = os.environ.get("BENCHMARK_GIT_REVISION")
    if named:
        return f"{named} (named by BENCHMARK_GIT_REVISION)"

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("diff", "HEAD", "--name-only", "--", "*.py").splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head} + uncommitted changes to {', '.join(changed)}" if changed else head


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(root: Path) -> dict[str, object]:
    """What the numbers were measured on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "virtualized": _virtualized(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {dist: _version(dist) for dist in ("torch", "opacus", "timm", "dp-tangent")},
        "torch_parallel_backend": torch.__config__.parallel_info().splitlines()[-1].strip(),
        "git": _git_revision(root),
    }


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None
