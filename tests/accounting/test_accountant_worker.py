"""The accountants' worker (``privacy_accounting.accountant_worker``): the figures it computes are the program's own,
bit for bit, the program then imports no accountant, and a worker that dies or is off changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection, Pipe
from pathlib import Path

import pytest

from dp_tangent.console import prints_figures
from privacy_accounting import Ledger, accountant_worker
from privacy_accounting.accountants import DEFAULT_SETTINGS
from privacy_accounting.event_tree import sgd

#: In a fresh interpreter: start the worker (unless told), compute the figures of three DP-SGD events with no
#: on-disk cache, kill the worker half-way if told, and print the figures, whether scipy came into this process
#: and whether the worker is gone after stop().
PROGRAM = """
import json, os, signal, sys, time
from privacy_accounting import accountant_worker, accountants
started = accountant_worker.start()
from privacy_accounting.accountants import epsilon_bounds
from privacy_accounting.event_tree import sgd
events = [sgd(1.0, 0.005, 2000), sgd(0.9, 0.01, 300), sgd(2.0, 0.02, 50)]
if sys.argv[1] != "one-by-one":
    accountants.prefetch([(e, 1e-5) for e in events])  # all nine figures queued, two computed at once
figures, helper = [], None
for k, event in enumerate(events):
    if k == 1 and sys.argv[1] == "kill":
        os.kill(accountant_worker._pool.pid, signal.SIGKILL)
    b = epsilon_bounds(event, 1e-5)
    if k == 0 and started:  # the worker forked its helper once the accountants were loaded
        pid = accountant_worker._pool.pid
        children = open(f"/proc/{pid}/task/{pid}/children").read().split() if sys.argv[1] != "kill" else []
        helper = int(children[0]) if children else None
    figures.append([b.rdp, b.prv, b.pld, b.epsilon, b.accountant])
pid = accountant_worker._pool.pid if accountant_worker._pool else None


def gone(pid):
    for _ in range(500):  # the helper ends on its own once its pipe closes: give it a moment
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] in "ZX":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


accountant_worker.stop()
print(json.dumps({"started": started, "figures": figures, "scipy": "scipy" in sys.modules, "helper": helper,
                  "gone": all(gone(p) for p in (pid, helper) if p is not None)}))
"""


def _run(mode: str, worker: str = "on") -> dict:
    env = {**os.environ, "PRIVACY_ACCOUNTING_CACHE": "off", "PRIVACY_ACCOUNTING_WORKER": worker}
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


LINUX_FORK = pytest.mark.skipif(not hasattr(os, "fork") or (os.cpu_count() or 1) < 2 or not os.path.isdir("/proc"),
                                reason="the worker needs fork and 2 CPUs (and the test reads /proc)")


@LINUX_FORK
def test_the_worker_computes_the_programs_figures_bit_for_bit_and_the_program_imports_no_accountant() -> None:
    alone, helped, one_by_one, killed = _run("keep", worker="off"), _run("keep"), _run("one-by-one"), _run("kill")
    assert not alone["started"] and alone["scipy"]
    for run in (helped, one_by_one):  # the figures came from the worker and its helper
        assert run["started"] and not run["scipy"] and run["helper"] and run["gone"]
        assert run["figures"] == alone["figures"]  # JSON floats round-trip exactly: the same bits
    # the worker killed with figures queued: its helper died with it, and the rest were computed here
    assert killed["started"] and killed["scipy"] and killed["figures"] == alone["figures"] and killed["gone"]


def test_the_pool_computes_two_figures_at_once_and_gives_each_answer_to_its_request() -> None:
    """The program's side of the pool, against two stand-in processes (threads) that answer only once both hold a
    request: they do, so the two computed side by side; every answer reached the request it was for."""
    pairs = [Pipe() for _ in range(2)]
    got: list[list[tuple]] = [[], []]
    both = threading.Barrier(2, timeout=30)

    def serve(k: int, end: Connection) -> None:
        try:
            while True:
                try:
                    request = end.recv()
                except EOFError:
                    return
                got[k].append(request)
                if len(got[k]) == 1:
                    both.wait()
                end.send((float(len(request[0])), f"from {k}"))
        finally:
            end.close()

    threads = [threading.Thread(target=serve, args=(k, worker), daemon=True) for k, (_, worker) in enumerate(pairs)]
    for thread in threads:
        thread.start()
    pool = accountant_worker._Pool(os.getpid(), [program for program, _ in pairs])
    requests = [("e" * n, 1e-5, "pld", DEFAULT_SETTINGS) for n in range(1, 7)]
    pool.submit(requests[:4])
    asked = [pool.compute(*r) for r in reversed(requests)]  # two never submitted: computed when asked
    assert [value for value, _ in asked] == [float(len(r[0])) for r in reversed(requests)]
    assert got[0] and got[1] and sorted(got[0] + got[1]) == sorted(requests)  # each computed once, by one of them
    for program, _ in pairs:
        program.close()
    for thread in threads:
        thread.join(10)


def test_a_process_of_the_pool_that_is_gone_leaves_its_figures_to_the_other_or_the_program() -> None:
    (alive, alive_end), (dead, dead_end) = Pipe(), Pipe()
    dead_end.close()

    def serve() -> None:
        while True:
            try:
                alive_end.recv()
            except EOFError:
                return
            alive_end.send((1.0, ""))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    pool = accountant_worker._Pool(os.getpid(), [alive, dead])
    requests = [(f"e{n}", 1e-5, "rdp", DEFAULT_SETTINGS) for n in range(4)]
    pool.submit(requests)
    answers = [pool.compute(*r) for r in requests]
    assert all(a in ((1.0, ""), None) for a in answers) and answers.count((1.0, "")) >= 3  # None: computed here
    assert pool.connections == [alive]
    alive.close()
    thread.join(10)


@LINUX_FORK
def test_a_program_killed_mid_figure_takes_the_worker_and_its_helper_with_it(tmp_path: Path) -> None:
    """Review 111: killed with figures in flight (as a report always has), the program left both computing, at full
    CPU, for minutes."""
    code = ("import os, sys, time; from privacy_accounting import accountant_worker, accountants; "
            "from privacy_accounting.event_tree import sgd; accountant_worker.start(); "
            "accountants.prefetch([(sgd(0.4, 0.2, 1000), 1e-5), (sgd(0.4, 0.19, 1000), 1e-5)]); "
            "pid = accountant_worker._pool.pid; children = f'/proc/{pid}/task/{pid}/children'\n"
            "while not open(children).read().split(): time.sleep(0.05)\n"
            "print(pid, open(children).read().split()[0], flush=True)\n"
            "accountants.epsilon_bounds(sgd(0.4, 0.2, 1000), 1e-5)")  # waiting for them, as a report does
    env = {**os.environ, "PRIVACY_ACCOUNTING_CACHE": "off", "PRIVACY_ACCOUNTING_WORKER": "on"}
    program = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        worker, helper = (int(p) for p in program.stdout.readline().split())
        time.sleep(0.5)  # both computing
        assert all(_alive(p) for p in (worker, helper))
    finally:
        program.kill()
        program.wait(60)
    deadline = time.monotonic() + 3  # each of those figures takes seconds more (PRV: about 5 s here)
    while time.monotonic() < deadline and (_alive(worker) or _alive(helper)):
        time.sleep(0.05)
    assert not _alive(worker) and not _alive(helper)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="BLAS uses one thread on one CPU")
def test_figures_computed_by_several_threads_at_once_leave_blas_as_they_found_it() -> None:
    """Review 111: each figure set BLAS to one thread and put back the count it found; two threads overlapping left
    the program's BLAS on one thread for good."""
    code = ("import threading, threadpoolctl, numpy; from privacy_accounting.accountants import epsilon_bounds; "
            "from privacy_accounting.event_tree import sgd\n"
            "def counts(): return sorted(i['num_threads'] for i in threadpoolctl.threadpool_info() "
            "if i['user_api'] == 'blas')\n"
            "epsilon_bounds(sgd(1.0, 0.01, 10), 1e-5); before = counts()\n"
            "threads = [threading.Thread(target=epsilon_bounds, args=(sgd(1.0 + k / 10, 0.01, 500 + k), 1e-5)) "
            "for k in range(4)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]; print(before, counts())")
    env = {**os.environ, "PRIVACY_ACCOUNTING_CACHE": "off", "PRIVACY_ACCOUNTING_WORKER": "off",
           "OPENBLAS_NUM_THREADS": "2"}
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                              check=True)
        before, _, after = done.stdout.strip().partition("] ")
        assert "2" in before and before + "]" == after, done.stdout


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="BLAS uses one thread on one CPU")
def test_a_figure_has_the_same_bits_whatever_the_number_of_blas_threads() -> None:
    """A threaded BLAS dot product sums in another order: PRV's figure of this run changed in its last bits between
    one and two threads. Every figure is computed on one thread now."""
    code = ("from privacy_accounting.accountants import epsilon_for; from privacy_accounting.event_tree import sgd; "
            "print(float(epsilon_for(sgd(1.0, 256 / 50000, 1953), 1e-5, 'prv')).hex())")
    bits = set()
    for threads in ("1", "2"):
        env = {**os.environ, "PRIVACY_ACCOUNTING_CACHE": "off", "PRIVACY_ACCOUNTING_WORKER": "off",
               "OPENBLAS_NUM_THREADS": threads}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                              check=True)
        bits.add(done.stdout.strip())
    assert len(bits) == 1, bits


@LINUX_FORK
def test_a_report_computed_by_the_worker_is_the_report_computed_in_process(tmp_path: Path) -> None:
    """The report names its figures first (every run's, every shard's, their curves'), computed two at a time: the
    same report as one computed alone."""
    ledger = Ledger.open(tmp_path / "ledger.sqlite")
    ledger.set_data_source(data_source="toy", unit="record")
    ledger.set_budget(data_source="toy", shard=None, epsilon=8.0, delta=1e-5)
    for k, (shard, n) in enumerate([("s0", 5001), ("s1", 5001), ("s2", 5000), ("s1", 5001)]):
        ledger.complete(ledger.reserve(data_source="toy", shard=shard, event=sgd(1.0, 64 / n, 300), delta=1e-5,
                                       purpose="training", operator="test", component=f"c{k}"))
    ledger.register_model("m", ["c0", "c2"])
    code = ("import json, sys; from privacy_accounting import accountant_worker; accountant_worker.start(); "
            "from privacy_accounting import Ledger, build_report; "
            "report = json.loads(build_report(Ledger.open(sys.argv[1], read_only=True), curve_points=6).to_json()); "
            "report.pop('generated_at'); print(json.dumps(report))")
    reports = []
    for worker in ("off", "on"):
        env = {**os.environ, "PRIVACY_ACCOUNTING_CACHE": "off", "PRIVACY_ACCOUNTING_WORKER": worker}
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ledger.sqlite")], env=env,
                              capture_output=True, text=True, timeout=300, check=True)
        reports.append(json.loads(done.stdout))
    assert reports[0] == reports[1]
    assert [p["epsilon"] for p in reports[0]["shards"][1]["curve"]][-1] > 0


def test_only_the_commands_that_print_every_shards_figures_start_it() -> None:
    assert prints_figures(["budget", "show", "-w", "ws"]) and prints_figures(["report", "-f", "html"])
    assert not any(prints_figures(args) for args in (["budget", "set", "d", "--epsilon", "1"], ["report", "--help"],
                                                     ["train", "r.yaml"], ["audit", "verify"], []))
