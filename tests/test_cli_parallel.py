"""The command line with parallel executors: a worker killed mid-training, the retry message, the retry."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import worker_processes_of

from privacy_accounting import Ledger

RECIPE = """
backbone: {{name: efficientnet_lite0, pretrained: packaged, num_classes: 10}}
trainable: head
data: {{sklearn_digits: {{image_size: 32, test_fraction: 0.2, seed: 0, max_records: 300}}}}
shards: {{count: 1}}
privacy: {{epsilon: 8, delta: 1.0e-5}}
training: {{epochs: {epochs}, batch_size: 32, physical_batch_size: 32, lr: 0.05}}
data_source: digits
budget: {{epsilon: 20, delta: 1.0e-5}}
"""
#: CPU seconds after which a worker is surely training (start-up: imports, model, features, ~5 s).
TRAINING_CPU_S = 12.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_killed_worker_fails_its_shard_with_a_retry_command_that_then_completes_the_model(tmp_path) -> None:
    recipe, ws = tmp_path / "recipe.yaml", tmp_path / "ws"
    recipe.write_text(RECIPE.format(epochs=100000))
    cli = [sys.executable, "-m", "dp_tangent"]
    process = subprocess.Popen([*cli, "train", "--init", str(recipe), "--name", "m", "-w", str(ws), "--workers", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and process.poll() is None:
            for pid in worker_processes_of(process.pid):
                if _cpu_seconds(pid) > TRAINING_CPU_S:
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
            time.sleep(0.2)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert killed, (out, err)
    assert process.returncode == 2, out + err
    assert f"worker process {killed} was lost (killed by SIGKILL)" in err and "Traceback" not in err
    assert "its reserved budget stays spent" in err
    retry = err.split("retry them with: ", 1)[1].strip()
    assert retry == f"dp-tangent train {recipe} --name m -w {ws} --executor local --workers 1 --shard 0"
    [event] = Ledger.open(ws / "ledger.sqlite").events()
    assert event.status.value == "failed" and event.component == "m-shard-0"
    assert not list((ws / "components").glob("*")) and not list((ws / "models").glob("*"))

    recipe.write_text(RECIPE.format(epochs=2))  # the split does not depend on the epochs
    done = subprocess.run([*cli, *shlex.split(retry)[1:]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "m-shard-0-retry-1: its run's epsilon" in done.stdout and "model m: mean of 1 components" in done.stdout
    events = Ledger.open(ws / "ledger.sqlite").events()
    assert [(e.component, e.status.value) for e in events] == [("m-shard-0", "failed"),
                                                                ("m-shard-0-retry-1", "completed")]
    again = subprocess.run([*cli, *shlex.split(retry)[1:]], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_a_retry_must_see_the_same_split_as_the_components_already_trained(tmp_path) -> None:
    import pytest

    from dp_tangent.backbones import BackboneSpec
    from dp_tangent.cli.train import _check_same_split
    from dp_tangent.data import load_digits, split_shards
    from dp_tangent.training import PrivacySpec, TrainConfig
    from dp_tangent.workspace import ShardJob
    from dp_tangent.workspace import Workspace, WorkspaceError

    digits = load_digits(image_size=32).subset(range(200))
    _, parts = split_shards(digits, shards=2, seed=0)
    ws = Workspace.create(tmp_path / "ws")
    run = ws.train_all(BackboneSpec("efficientnet_lite0", pretrained="packaged", num_classes=10), "head",
                       [ShardJob("m-shard-0", "shard-0", parts[0])], data_source="digits",
                       privacy=PrivacySpec(epsilon=8, delta=1e-4), config=TrainConfig(epochs=1, batch_size=32))
    assert not run.failed
    _check_same_split(ws, "m", parts)  # the same recipe and options: fine
    for other in (split_shards(digits, shards=2, seed=1)[1], split_shards(digits, shards=3, seed=0)[1]):
        with pytest.raises(WorkspaceError, match="shard 0 of this recipe does not hold the records 'm-shard-0'"):
            _check_same_split(ws, "m", other)


def test_a_driver_killed_mid_training_leaves_a_reservation_the_next_command_fails_and_logs(tmp_path) -> None:
    """kill -9 of `dp-tangent train` itself: nobody is left to mark its reservation failed."""
    recipe, ws = tmp_path / "recipe.yaml", tmp_path / "ws"
    recipe.write_text(RECIPE.format(epochs=100000))
    cli = [sys.executable, "-m", "dp_tangent"]
    process = subprocess.Popen([*cli, "train", "--init", str(recipe), "--name", "m", "-w", str(ws), "--executor", "serial"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        reserved = False
        while not reserved and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
            if (ws / "ledger.sqlite").is_file():
                reserved = any(e.status.value == "reserved" for e in Ledger.open(ws / "ledger.sqlite").events())
        assert reserved, process.communicate(timeout=60) if process.poll() is not None else "no reservation"
        time.sleep(1.0)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    shown = subprocess.run([*cli, "budget", "show", "-w", str(ws)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr  # a check: it counts the reservation's spend and leaves it as it is
    assert [e.status.value for e in Ledger.open(ws / "ledger.sqlite").events()] == ["reserved"]
    listed = subprocess.run([*cli, "requests", "list", "-w", str(ws)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "1 reservation(s) a stopped training left open marked failed" in listed.stderr
    [event] = Ledger.open(ws / "ledger.sqlite").events()
    assert event.status.value == "failed" and "abandoned" in event.failure_reason
    log = subprocess.run([*cli, "audit", "log", "-w", str(ws)], capture_output=True, text=True, timeout=120)
    assert "reservation_abandoned" in log.stdout


def test_workers_start_once_the_recipe_schema_holds_and_stop_when_the_command_then_fails(tmp_path, capsys,
                                                                                           monkeypatch) -> None:
    """``train`` starts its local workers before checking the backbone and loading the data (they import torch
    meanwhile), once the checks that need no torch hold; a mistake found after that (an unknown backbone) stops
    them at once; none start for the serial executor or while another process holds the workspace."""
    import yaml
    from helpers import run_cli

    from dp_tangent.recipes import Recipe
    from dp_tangent.training.executors.local import LocalExecutor
    from dp_tangent.workspace import Workspace

    events: list[str] = []
    start, load_data = LocalExecutor.start, Recipe.load_data

    def recorded_start(self: LocalExecutor, tasks: int) -> None:
        events.append(f"start {tasks}")
        start(self, tasks)

    def recorded_load(self: Recipe) -> object:
        events.append("data")
        return load_data(self)

    monkeypatch.setattr(LocalExecutor, "start", recorded_start)
    monkeypatch.setattr(Recipe, "load_data", recorded_load)
    ws = Workspace.create(tmp_path / "ws")
    recipe = yaml.safe_load(RECIPE.format(epochs=1))
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(recipe))
    recipe["shards"]["count"], recipe["backbone"]["name"] = 2, "no_such_net"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe))
    for args, started, message in (
            (["bad.yaml"], ["start 2"], "backbone.name: unknown timm model 'no_such_net'"),
            # mistakes found without torch come before any worker starts
            (["good.yaml", "--shard", "7"], [], "--shard 7 is out of range"),
            (["good.yaml", "--epsilon", "-1"], [], "overrides: privacy.epsilon"),
            (["bad.yaml", "--executor", "serial"], [], "unknown timm model")):
        events.clear()
        began = time.monotonic()
        code, _, err = run_cli(capsys, "train", "--init", str(tmp_path / args[0]), *args[1:], "-w", str(ws.root))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert events == started and worker_processes_of(os.getpid()) == []  # started, then stopped and reaped
        assert time.monotonic() - began < 10  # not waiting for workers still importing torch to read a stop
    assert ws.list_components() == []

    # another run holds the workspace: no worker starts early, to wait for it idle
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(ws.root / "workspace.json")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        events.clear()
        code, _, err = run_cli(capsys, "train", "--init", str(tmp_path / "bad.yaml"), "-w", str(ws.root))
        assert code == 2 and "unknown timm model" in err and events == []
    finally:
        holder.kill()
        holder.wait()


def test_the_driver_of_a_local_run_leaves_opacus_to_its_workers(tmp_path) -> None:
    """With local workers, ``train``'s own process plans, reserves, writes and accounts without importing Opacus:
    the workers import it, the driver's epsilons come from the accountants' private copy (which memoises one
    step's RDP), and the component it writes names the secure generator as before."""
    from safetensors import safe_open

    from dp_tangent.training.secure_random import GENERATOR_NAME

    (tmp_path / "recipe.yaml").write_text(RECIPE.format(epochs=1))
    driver = ("import sys\nfrom dp_tangent.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
              "    print('DRIVER LOADED', sorted(m for m in ('opacus', 'torch') if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", driver, "train", "--init", "recipe.yaml", "--name", "m", "-w", "ws",
                           "--workers", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DRIVER LOADED ['torch']" in done.stderr  # torch for the backbone's check and the data; no Opacus
    assert "m-shard-0: its run's epsilon 7.9" in done.stdout and "model m: mean of 1 components" in done.stdout
    [component] = (tmp_path / "ws" / "components").glob("*.safetensors")
    with safe_open(str(component), "pt") as f:
        assert GENERATOR_NAME in f.metadata()["dp_tangent"]


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie waiting for its new parent to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_workers_die_with_a_driver_that_is_killed(tmp_path) -> None:
    """SIGKILL (or any death the driver cannot handle) of ``train``'s driver while its early workers import torch:
    the kernel kills them (parent-death signal) instead of leaving them to run on until they next touch their
    pipe."""
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(epochs=100000))
    process = subprocess.Popen([sys.executable, "-m", "dp_tangent", "train", "--init", "recipe.yaml", "--name", "m", "-w", "ws",
                                "--workers", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline, workers = time.monotonic() + 120, []
        while not workers and time.monotonic() < deadline and process.poll() is None:
            workers = worker_processes_of(process.pid)
            time.sleep(0.05)
        assert workers, process.communicate(timeout=60)
        process.kill()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 1  # at once: without the signal they ran on for seconds, importing torch
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_running(pid) for pid in workers)


def test_sigterm_ends_a_training_run_as_ctrl_c_does(tmp_path) -> None:
    """``kill``/``timeout``/a scheduler's stop mid-training: the run's reservation is marked failed and its worker
    stopped at once, with the retry command, as for Ctrl-C (not left reserved for the next
    command to find)."""
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(epochs=100000))
    process = subprocess.Popen([sys.executable, "-m", "dp_tangent", "train", "--init", "recipe.yaml", "--name", "m", "-w", "ws",
                                "--workers", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    ledger = tmp_path / "ws" / "ledger.sqlite"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None and not (
                ledger.exists() and Ledger.open(ledger).events()):
            time.sleep(0.2)
        workers = worker_processes_of(process.pid)
        assert workers, process.communicate(timeout=60)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM and "interrupted" in err and "Traceback" not in err, err
    assert "--shard 0" in err  # the retry command
    [event] = Ledger.open(ledger).events()
    assert event.component == "m-shard-0" and event.status.value == "failed"
    assert not any(_running(pid) for pid in workers)


def test_an_opacus_that_does_not_import_fails_training_before_any_budget_is_spent(tmp_path) -> None:
    """The driver plans and accounts without Opacus, so the executor checks that training can load before the
    budget is reserved: in its workers (local) or in this process (serial). One line, nothing reserved."""
    import importlib.util

    real = Path(next(iter(importlib.util.find_spec("opacus").submodule_search_locations)))
    broken = tmp_path / "shadow" / "opacus"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('opacus does not load with this torch (simulated)')\n")
    (broken / "accountants").symlink_to(real / "accountants")  # what the accountants' private copy reads
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(epochs=1))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken.parent), *sys.path])}
    for executor, message in ((["--executor", "serial"], "training cannot start in this process: ImportError"),
                              (["--workers", "1"], "local worker processes fail to start")):
        done = subprocess.run([sys.executable, "-m", "dp_tangent", "train", "--init", "recipe.yaml", "--name", "m", "-w", "ws",
                               *executor], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        ledger = tmp_path / "ws" / "ledger.sqlite"
        assert not ledger.exists() or Ledger.open(ledger).events() == []
