"""Executors: local worker processes and Ray train components bit-identical to serial training (in
the seeded mode: secure noise is fresh in every run); budget is reserved centrally before any task;
a killed worker fails only its own shard."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys

import pytest

from dp_tangent.backbones import BackboneSpec
from dp_tangent.data import load_digits, split_shards
from dp_tangent.interrupts import interrupt
from dp_tangent.training import PrivacySpec, TrainConfig, plan_task
from dp_tangent.training.executors import ExecutorError, create_executor
from dp_tangent.training.executors.local import LocalExecutor
from dp_tangent.workspace import ShardJob, Workspace
from privacy_accounting import BudgetExceededError

SPEC = BackboneSpec("efficientnet_lite0", pretrained="packaged", num_classes=10)
PRIVACY = PrivacySpec(epsilon=8.0, delta=1e-4)
CONFIG = TrainConfig(epochs=3, batch_size=32, physical_batch_size=32, lr=0.05)
SEEDED = dataclasses.replace(CONFIG, noise="seeded")  # reproducible, hence NOT private: for comparing executors


@pytest.fixture(scope="module")
def jobs() -> list[ShardJob]:
    digits = load_digits(image_size=48).subset(range(300))
    _, shards = split_shards(digits, shards=3, seed=0)
    return [ShardJob(f"c{k}", f"shard-{k}", records) for k, records in enumerate(shards)]


def train(tmp_path, jobs, executor=None, config=CONFIG, progress=None):  # noqa: ANN001, ANN201
    ws = Workspace.create(tmp_path / f"ws-{getattr(executor, 'name', 'serial')}")
    run = ws.train_all(SPEC, "head", jobs, data_source="digits", privacy=PRIVACY, config=config,
                       executor=executor, operator="tester", progress=progress)
    return ws, run


def digests(run) -> dict[str, str]:  # noqa: ANN001
    return {c.metadata.name: c.metadata.deltas_sha256 for c in run.completed}


@pytest.fixture(scope="module")
def serial(tmp_path_factory, jobs) -> dict[str, str]:  # noqa: ANN001
    _, run = train(tmp_path_factory.mktemp("serial"), jobs, config=SEEDED)
    assert not run.failed and len(run.completed) == 3
    return digests(run)


def test_local_workers_train_bit_identical_components_and_log_who_trained_them(tmp_path, jobs, serial) -> None:
    executor = LocalExecutor(workers=2, threads=1)
    ws, run = train(tmp_path, jobs, executor, config=SEEDED)
    assert not run.failed and digests(run) == serial
    trained = [e for e in ws.audit.entries() if e.operation == "training"]
    assert {e.parameters["status"] for e in trained} == {"completed"}
    pids = {e.parameters["worker"]["pid"] for e in trained}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all(e.parameters["executor"] == "local" and e.parameters["worker"]["host"] for e in trained)
    for event in ws.ledger.events():
        assert event.status.value == "completed" and event.details["worker"]["pid"] in pids
    assert ws.load_component("c0").metadata.training.worker["pid"] in pids


def test_ray_tasks_train_bit_identical_components(tmp_path, jobs, serial) -> None:
    """Also: the command line's SIGTERM handler (Ctrl-C's behaviour, held back while a workspace change commits)
    survives ``ray.init``, which installs its own (with Ray's, SIGTERM aborted ``train`` mid-run: SIGABRT), and
    ``ray.shutdown``, which leaves SIGTERM to kill the process."""
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    executor = create_executor("ray", init_options={"num_cpus": 2})
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        ws, run = train(tmp_path, jobs, executor, config=SEEDED)
        assert signal.getsignal(signal.SIGTERM) is interrupt
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):  # armed, too: ray.shutdown leaves the default action
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not run.failed and digests(run) == serial
    workers = [e.parameters["worker"] for e in ws.audit.entries() if e.operation == "training"]
    assert all(w["executor"] == "ray" and w["node_id"] and w["pid"] != os.getpid() for w in workers)


def test_a_killed_worker_fails_only_its_shard_and_its_budget_stays_spent(tmp_path, jobs, serial) -> None:
    executor = LocalExecutor(workers=2, threads=1)
    killed: list[int] = []

    def kill_c1(name: str, step: int, total: int) -> None:
        if name == "c1" and step >= 2 and not killed:
            killed.append(executor.running["c1"])
            os.kill(killed[0], signal.SIGKILL)

    # enough epochs that c1 is still running when the parent reads its step-2 report, even on a loaded machine
    ws, run = train(tmp_path, jobs, executor, config=TrainConfig(**{**CONFIG.__dict__, "epochs": 40}),
                    progress=kill_c1)
    assert killed, "the kill never happened"
    [failed] = run.failed
    assert failed.name == "c1" and failed.lost and "SIGKILL" in failed.reason and str(killed[0]) in failed.reason
    assert sorted(c.metadata.name for c in run.completed) == ["c0", "c2"]
    # secure noise drawn in the workers: private, and no seed recorded
    assert all(c.metadata.privacy.private and c.metadata.privacy.secure_mode and c.metadata.training.seed is None
               for c in run.completed)
    assert ws.list_components() == ["c0", "c2"] and not ws.component_path("c1").exists()
    [event] = ws.ledger.events(component="c1")
    assert event.status.value == "failed" and "SIGKILL" in event.failure_reason
    assert ws.ledger.shard_spend("digits", "shard-1", delta=1e-4).epsilon > 0  # a lost run counts as spent
    [entry] = [e for e in ws.audit.entries() if e.parameters.get("component") == "c1"]
    assert entry.parameters["status"] == "failed" and entry.parameters["lost"] is True
    assert ws.audit.verify().ok


def test_budget_for_every_shard_is_reserved_before_any_task_or_none_is(tmp_path, jobs) -> None:
    """A run the ledger would refuse is refused before any worker starts or any feature is computed."""
    class Never:
        name = "never"
        closed = False

        def start(self, tasks: int) -> None:
            raise AssertionError("no worker may start when a reservation would be refused")

        def prepare(self, tasks) -> None:  # noqa: ANN001
            raise AssertionError("nothing may be prepared when a reservation would be refused")

        def run(self, tasks, progress=None):  # noqa: ANN001, ANN201
            raise AssertionError("no task may start when a reservation is refused")

        def close(self) -> None:
            Never.closed = True

    ws = Workspace.create(tmp_path / "ws")
    ws.set_budget("digits", "shard-2", epsilon=1.0, delta=1e-4)  # too small for an epsilon-8 run
    with pytest.raises(BudgetExceededError):
        ws.train_all(SPEC, "head", jobs, data_source="digits", privacy=PRIVACY, config=CONFIG, executor=Never())
    assert ws.ledger.events() == [] and ws.list_components() == [] and Never.closed
    assert [e.parameters["status"] for e in ws.audit.entries() if e.operation == "training"] == ["failed"] * 3


def test_an_executor_that_cannot_start_spends_no_budget(tmp_path, jobs) -> None:
    class Unreachable:
        name = "unreachable"

        def start(self, tasks: int) -> None:
            raise ExecutorError("cannot start or reach the cluster")

        def prepare(self, tasks) -> None:  # noqa: ANN001
            raise AssertionError("never started")

        def run(self, tasks, progress=None):  # noqa: ANN001, ANN201
            raise AssertionError("never started")

        def close(self) -> None:
            pass

    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(ExecutorError, match="cannot start or reach"):
        ws.train_all(SPEC, "head", jobs, data_source="digits", privacy=PRIVACY, config=CONFIG, executor=Unreachable())
    assert ws.ledger.events() == [] and ws.list_components() == []


def test_ray_without_the_extra_gives_an_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ExecutorError, match=r"pip install 'dp-tangent\[ray\]'"):
        create_executor("ray")


@pytest.mark.parametrize("options, message", [({"workers": 0}, "workers must be >= 1"),
                                              ({"threads": 0}, "threads must be >= 1")])
def test_bad_local_options_are_refused(options, message) -> None:
    with pytest.raises(ExecutorError, match=message):
        create_executor("local", **options)


def test_unknown_executor_is_refused() -> None:
    with pytest.raises(ExecutorError, match="unknown executor 'slurm'"):
        create_executor("slurm")


@pytest.mark.parametrize("executor", ["serial", "local"])
def test_a_gpu_this_machine_lacks_is_refused_before_any_budget_is_spent(tmp_path, jobs, executor) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(ExecutorError, match="training.device 'cuda' is not available on this machine"):
        ws.train_all(SPEC, "head", jobs, data_source="digits", privacy=PRIVACY,
                     config=TrainConfig(**{**CONFIG.__dict__, "device": "cuda"}), executor=create_executor(executor))
    assert ws.ledger.events() == [] and ws.list_components() == []


def test_ray_refuses_gpu_training_without_gpus_per_task(tmp_path, jobs) -> None:
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    executor = create_executor("ray", num_gpus=0)
    with pytest.raises(ExecutorError, match=r"needs resources.gpus >= 1 per Ray task"):
        executor.prepare([plan_task(SPEC, "head", jobs[0].records, name="c", shard="s", privacy=PRIVACY,
                                    config=TrainConfig(device="cuda"))])


def test_local_workers_that_cannot_start_cost_no_budget(tmp_path, jobs, monkeypatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")  # every worker process exits at once
    ws = Workspace.create(tmp_path / "ws")
    with pytest.raises(ExecutorError, match="local worker processes fail to start"):
        ws.train_all(SPEC, "head", jobs, data_source="digits", privacy=PRIVACY, config=CONFIG,
                     executor=LocalExecutor(workers=2))
    assert ws.ledger.events() == [] and ws.list_components() == []
