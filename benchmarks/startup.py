"""Start-up of commands that train nothing: wall time and peak memory of each, in a fresh interpreter.

Target from issue 15: every non-training command answers in under 1 s. Each command runs ``REPEATS``
times in a new process on a small workspace (one data source, a budget, a served deletion request);
the reference is ``python -c "import torch, timm"``, what every command paid before imports were
made lazy. ``budget show`` also runs on a workspace whose shard has spent budget (one DP-SGD event
at the reference point of docs/privacy-accounting.md, recorded on the ledger directly: no training),
once with its epsilons in the user's cache (``privacy_accounting.bounds_cache``), once with an empty
cache before every run (the accountants compute); ``budget show`` and ``report`` compute every figure of a
four-shard workspace too. ``train`` runs on the default recipe with a mistake
in it (an unknown key): it trains nothing and must say so at once. The children use a cache folder of
their own, never the user's. Writes ``benchmarks/results/startup.json`` and its section of ``docs/benchmarks.md``.
Run: ``python -m benchmarks.startup``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from privacy_accounting.bounds_cache import ENV as CACHE_ENV

from ._doc import write_section

if TYPE_CHECKING:
    from dp_tangent.workspace import Workspace
    from privacy_accounting.events import AnyEvent

REPEATS = 5
LIMIT_S = 1.0
RESULTS = Path(__file__).resolve().parent / "results" / "startup.json"
COMMANDS = {
    "--help": ["--help"],
    "budget show": ["budget", "show", "-w", "ws"],
    "audit verify": ["audit", "verify", "-w", "ws"],
    "audit log": ["audit", "log", "-w", "ws"],
    "requests list": ["requests", "list", "-w", "ws"],
    "certificate verify": ["certificate", "verify", "ws/certificates/r1.txt", "-w", "ws"],
}
SPENT = ["budget", "show", "-w", "ws-spent"]
#: The spent shard's one DP-SGD run: (sigma, q, steps), the reference point of docs/privacy-accounting.md.
SPENT_RUN = (1.0, 256 / 50000, 1953)
#: The report of the spent workspace in each format, its epsilons cached.
REPORTS = {f"report -f {f}": ["report", "-w", "ws-spent", "-f", f, "-o", f"report.{f}"] for f in ("md", "json", "html")}
#: ``train`` on the default recipe with one mistake (exit 2, nothing created): checked before torch loads.
MISTAKE = "train, a mistake in the recipe"
MISTAKE_ARGS = ["train", "mistake.yaml", "-w", "ws-new", "--init"]
CACHED, COMPUTED = "budget show, spent shard, ε cached", "budget show, spent shard, ε computed"
#: Four shards trained by one recipe, one of them twice, like the demo's workspace after a retrain: the same
#: sigma and steps, and a q that differs with the shards' sizes (a split of 200,002 records into four).
SHARDS = ("s0", "s1", "s2", "s3")
SHARD_RUNS = [(1.0, 256 / n, 1953) for n in (50001, 50001, 50000, 50000)]
SHARDS_COMPUTED = {"budget show, 4 shards, ε computed": ["budget", "show", "-w", "ws-shards"],
                   "report -f md, 4 shards, ε computed": ["report", "-w", "ws-shards", "-f", "md", "-o", "shards.md"],
                   "report -f html, 4 shards, ε computed": ["report", "-w", "ws-shards", "-f", "html", "-o",
                                                            "shards.html"]}
#: Commands that write but train nothing, each run on a fresh copy (``ws-run``) of the demo's workspace (``dp-tangent
#: demo``: EfficientNet-Lite0, digits components, a composed model, a served deletion request). ``forget`` without
#: retraining removes the record's component, recomposes the model and rewrites the NTK Gram cache without the record.
DEMO, RUN = "ws-demo", "ws-run"
DEMO_WRITES = {
    "compose, demo workspace": ["compose", "digits-shard-0", "digits-shard-2", "--name", "pair", "-w", RUN],
    "release, demo workspace": ["release", "digits-composed", "-o", "bundle", "-w", RUN],
    "forget without retraining, demo workspace": ["forget", "digit-18", "-w", RUN],
}
# Peak RSS of the child: VmHWM from /proc, which starts afresh at exec (getrusage's ru_maxrss is kept
# across fork and exec on Linux, so a child of this process would report this process's peak).
PEAK = """
def _peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""
# The ``dp-tangent`` console script's own entry (``dp_tangent.console``: the accountants' worker first, then the command
# line), as a user runs it; ``sys.argv[1:]`` are the command's arguments.
RUNNER = PEAK + """
import sys
from dp_tangent.console import main
try:
    main()
finally:
    print("PEAK_MIB", _peak_mib(), file=sys.stderr)
"""
REFERENCE = PEAK + """
import sys, torch, timm
print("PEAK_MIB", _peak_mib(), file=sys.stderr)
"""
ACCOUNTING_LIBRARIES = PEAK + """
import sys
from privacy_accounting.opacus_accountants import accountant_classes
accountant_classes()
import dp_accounting.pld
print("PEAK_MIB", _peak_mib(), file=sys.stderr)
"""


def small_workspace(root: Path, shards: tuple[str, ...] = ("s0",)) -> "Workspace":
    """``root``: one data source with a budget, a served deletion request, nothing spent."""
    from dp_tangent.workspace import Workspace
    from dp_tangent.workspace.deletion_requests import DeletionRequest
    from dp_tangent.workspace.forget import forget

    ws = Workspace.create(root)
    ws.declare_data_source("toy", description="toy records", shards=list(shards))
    ws.set_budget("toy", None, epsilon=4.0, delta=1e-5)
    forget(ws, DeletionRequest("r1", ("someone",), date(2026, 11, 30)))  # no component: registered, certified
    return ws


def spend(ws: "Workspace", event: "AnyEvent" = None, shard: str = "s0", component: str = "c0") -> None:
    """Record one completed training run of ``event`` (default: the spent shard's) on ``toy/shard`` as training
    records it (reserved and logged under the lock, completed in a logged change), without training."""
    from dp_tangent.workspace.commit import Change, apply
    from dp_tangent.workspace.ledger_ops import CompleteReservation
    from privacy_accounting import dp_sgd_event

    event = event if event is not None else dp_sgd_event(*SPENT_RUN)
    with ws.lock():  # held from the reservation to its completion, as a driver holds it for its whole run
        rid = ws.ledger.reserve(data_source="toy", shard=shard, event=event, delta=1e-5, purpose="training",
                                operator="benchmark", component=component)
        apply(ws, Change("reservation", operator="benchmark", parameters={
            "purpose": "training", "data_source": "toy",
            "reservations": {component: {"shard": shard, "ledger_reservation": rid}}}))
        apply(ws, Change("training", operator="benchmark", ledger=[CompleteReservation(rid)]))


def _workspace(root: Path) -> None:
    import yaml

    from dp_tangent.recipes import DEFAULT_RECIPE
    from privacy_accounting import dp_sgd_event

    small_workspace(root / "ws")
    spend(small_workspace(root / "ws-spent"))
    shards = small_workspace(root / "ws-shards", SHARDS)
    for event, shard in zip(SHARD_RUNS, SHARDS):
        spend(shards, dp_sgd_event(*event), shard=shard, component=f"c-{shard}")
    spend(shards, dp_sgd_event(*SHARD_RUNS[1]), shard="s1", component="c-s1-retrain")
    subprocess.run([sys.executable, "-m", "dp_tangent", "demo", "-w", DEMO], cwd=root, capture_output=True, check=True,
                   env={**os.environ, CACHE_ENV: str(root / "cache")})
    recipe = yaml.safe_load(DEFAULT_RECIPE.read_text())
    recipe["training"]["epochz"] = recipe["training"].pop("epochs")  # a typo
    (root / "mistake.yaml").write_text(yaml.safe_dump(recipe))


def _run(code: str, args: list[str], cwd: Path) -> tuple[float, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", CACHE_ENV: str(cwd / "cache")})
    seconds = time.perf_counter() - start
    expected = 2 if args == MISTAKE_ARGS else 0
    if done.returncode != expected or (expected and "training.epochz" not in done.stderr):
        raise RuntimeError(f"{args}: exit {done.returncode}: {done.stderr[-500:]}")
    return seconds, next(float(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_MIB"))


def measure() -> dict[str, dict[str, float]]:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        _workspace(cwd)

        def empty_cache() -> None:
            (cwd / "cache" / "bounds.sqlite").unlink(missing_ok=True)

        def keep() -> None:
            pass

        def fresh_demo() -> None:
            for path in (cwd / RUN, cwd / "bundle"):
                shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(cwd / DEMO, cwd / RUN)

        cases: dict[str, tuple[str, list[str], Callable[[], None]]] = {
            "import torch, timm (reference)": (REFERENCE, [], keep),
            **{k: (RUNNER, v, keep) for k, v in COMMANDS.items()},
            MISTAKE: (RUNNER, MISTAKE_ARGS, keep),
            CACHED: (RUNNER, SPENT, keep),  # its first run, untimed, fills the cache
            **{k: (RUNNER, v, keep) for k, v in REPORTS.items()},
            COMPUTED: (RUNNER, SPENT, empty_cache),
            **{k: (RUNNER, v, empty_cache) for k, v in SHARDS_COMPUTED.items()},
            "import the accountants' libraries (reference)": (ACCOUNTING_LIBRARIES, [], keep),
            **{k: (RUNNER, v, fresh_demo) for k, v in DEMO_WRITES.items()},
        }
        for name, (code, args, before) in cases.items():
            before()
            _run(code, args, cwd)  # warm the page cache outside the timing
            runs = []
            for _ in range(REPEATS):
                before()
                runs.append(_run(code, args, cwd))
            rows[name] = {"median_s": statistics.median(s for s, _ in runs), "max_s": max(s for s, _ in runs),
                          "peak_rss_mib": max(m for _, m in runs)}
    return rows


def render(rows: dict[str, dict[str, float]]) -> str:
    reference = rows["import torch, timm (reference)"]["median_s"]
    lines = ["## Start-up of commands that train nothing", "",
             f"_Generated by `python -m benchmarks.startup` on {platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}, {os.cpu_count()} CPUs; median and max of {REPEATS} fresh "
             f"processes each. Target: under {LIMIT_S:g} s. Reference: importing torch and timm, which every "
             "command did before._", "",
             "| command | median s | max s | peak RSS MiB | vs. importing torch+timm | within target |",
             "|---|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        within = "" if "reference" in name else ("yes" if r["max_s"] < LIMIT_S else "NO")
        lines.append(f"| `{name}` | {r['median_s']:.2f} | {r['max_s']:.2f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['median_s'] / reference:.2f}x | {within} |")
    sigma, q, steps = SPENT_RUN
    lines += ["", f"The spent shard holds one DP-SGD event (σ = {sigma:g}, q = {q:g}, {steps} steps). `budget show` "
              "and `report` print its epsilons from the user's cache of accountant results "
              "(`privacy_accounting.bounds_cache`, filled by whichever command of this user computed them first). "
              "When a figure is not there, the three accountants compute it (the `ε computed` row): Opacus's RDP and "
              "PRV files run without torch (`privacy_accounting.opacus_accountants`), dp-accounting's PLD with "
              "scipy. Loading those libraries alone is the `accountants' libraries` reference row (scipy.signal and "
              "scipy.stats, which Opacus's PRV and dp-accounting's PLD import, are most of it; constraints.txt pins "
              "scipy 1.15.3, which loads them 0.2 s faster than 1.17.1); the rest is the computation, mostly the "
              "PLD's self-composition and ε search (its one-step PLD is built with the grid inverted at once: "
              "`privacy_accounting.pld_gaussian`). `budget show` and `report` fork a worker process first thing "
              "(`privacy_accounting.accountant_worker`), which loads those libraries while the command line starts "
              "and, once they are loaded, forks a helper: the two compute the figures the cache lacks, two at a "
              "time, BLAS on one thread in each (the command itself never imports them; the report names every "
              "figure it will ask for first, `accountants.prefetch`; the peak RSS column is the command's own "
              "process, without the worker's and its helper's). Each row runs the console script's entry, "
              "`dp_tangent.console` (until 2026-12-04 this benchmark called the command line without it, so without "
              "the worker). `dp-tangent train` and `forget --retrain` print each shard they trained with its spent "
              "ε (the figure `budget show` prints), so after the tool's own changes the figure is there already; "
              "the `ε computed` row is what a user pays after a "
              "ledger change made elsewhere (another user, or with the cache off). The cache is each user's own on "
              "purpose: a privacy officer reading a workspace that a data owner trained recomputes every figure "
              "from the ledger rather than trusting figures the data owner's commands stored. The `4 shards` rows "
              "compute every figure of a "
              f"workspace whose {len(SHARDS)} shards each hold such a run (q differing with the shards' sizes, "
              f"{', '.join(f'{r[1]:.7f}' for r in SHARD_RUNS)}) and one shard a second, as one recipe trains them "
              "and a retrain adds; the HTML report also computes each shard's ε-against-steps curve, the shard's "
              "mechanism at a dozen step counts, which it draws (the JSON report holds them; the Markdown report "
              "draws none and leaves them out). Within a process the accountants build each mechanism's one-step "
              "PLD and RDP once (`privacy_accounting.pld_accountant`, docs/privacy-accounting.md). "
              "The HTML report draws its two figures as inline SVG (`privacy_accounting.svg`), without a "
              "plotting library. "
              "`train, a mistake in the recipe` is `dp-tangent train` on the default recipe with "
              "`training.epochs` misspelt: the recipe's schema is checked before torch loads "
              "(`dp_tangent.recipes`), where the error used to come after importing torch and timm, and the "
              "backbone's name against its family only once the rest holds. The `demo workspace` rows write, "
              "each run on a fresh copy of the workspace `dp-tangent demo` leaves (EfficientNet-Lite0, four digits "
              "components of its last block's deltas, a composed model): `compose` two components into a new "
              "model and `release` the composed one read the deltas as numpy arrays and write them with "
              "safetensors' numpy writer, the same bytes as torch's (`components.component.load_deltas`, "
              "`tensors_bytes`; torch is imported only for RegMean, float16 or bfloat16 deltas, or a θ₀ rebuilt "
              "from a checkpoint file). `forget` without retraining (a record of shard 2: its component removed, "
              "the model recomposed, the NTK Gram cache file of the shard rewritten without the record, the "
              "certificate) reads and writes those files as numpy arrays too (`workspace.gram_cache`); retraining "
              "imports torch."]
    return "\n".join(lines)


def main() -> None:
    rows = measure()
    RESULTS.write_text(json.dumps({"limit_s": LIMIT_S, "repeats": REPEATS, "rows": rows}, indent=2) + "\n")
    write_section("startup", render(rows))
    print(render(rows))


if __name__ == "__main__":
    main()
