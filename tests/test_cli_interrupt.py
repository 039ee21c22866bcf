"""Users' mistakes at the command line that involve a running or stored component."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privacy_accounting import Ledger

RECIPE = """
backbone: {{name: efficientnet_lite0, pretrained: packaged, num_classes: 10}}
trainable: head
data: {{sklearn_digits: {{image_size: 32, test_fraction: 0.2, seed: 0, max_records: 400}}}}
shards: {{count: 1}}
privacy: {{epsilon: 8, delta: 1.0e-5}}
training: {{epochs: {epochs}, batch_size: 32, physical_batch_size: 32, lr: 0.05}}
data_source: digits
"""


def _recipe(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / f"recipe-{epochs}.yaml"
    path.write_text(RECIPE.format(epochs=epochs))
    return path


def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an
    # inherited SIG_IGN (no KeyboardInterrupt): the child must get Ctrl-C as a user's terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args: str, **kwargs) -> subprocess.Popen:  # noqa: ANN003
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "dp_tangent", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint, **kwargs)


def test_ctrl_c_during_training_keeps_no_component_and_the_budget_stays_spent(tmp_path) -> None:
    ws = tmp_path / "ws"
    process = _cli("train", "--init", str(_recipe(tmp_path, epochs=400)), "--name", "long", "--workspace", str(ws))
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (ws / "ledger.sqlite").exists() and Ledger.open(ws / "ledger.sqlite").events():
                break  # the run is reserved: training is starting
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        time.sleep(2.0)  # well into the training loop
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, out + err
    assert "interrupted" in err and "Traceback" not in err
    assert not list((ws / "components").glob("*")), "no half-written component"
    [event] = Ledger.open(ws / "ledger.sqlite").events()
    assert event.status.value == "failed" and "KeyboardInterrupt" in event.failure_reason
    report = subprocess.run([sys.executable, "-m", "dp_tangent", "report", "--workspace", str(ws)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and "failed" in report.stdout


def test_corrupt_component_file_is_refused_in_one_line(tmp_path) -> None:
    ws = tmp_path / "ws"
    trained = _cli("train", "--init", str(_recipe(tmp_path, epochs=1)), "--name", "m", "--workspace", str(ws))
    out, err = trained.communicate(timeout=300)
    assert trained.returncode == 0, out + err
    [component] = list((ws / "components").glob("*.safetensors"))
    blob = bytearray(component.read_bytes())
    blob[-5] ^= 0xFF  # flip a bit inside the tensors
    component.write_bytes(bytes(blob))
    for args, message in ((["evaluate", component.stem], "do not match the digest"),  # reads: the file's own check
                          (["compose", component.stem, "--name", "again"],  # writes: the workspace's check first
                           f"components/{component.name}: sha256 on disk differs from the logged one")):
        result = subprocess.run([sys.executable, "-m", "dp_tangent", *args, "--workspace", str(ws)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    verify = subprocess.run([sys.executable, "-m", "dp_tangent", "audit", "verify", "--workspace", str(ws)],
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 1


@pytest.mark.parametrize("stop, status", [(None, 130), (signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_exit_status_names_the_signal_that_stopped_this_command(tmp_path, monkeypatch, capsys, stop,
                                                                    status) -> None:
    """SIGTERM: 143, SIGHUP: 129, Ctrl-C: 130 (128 + the signal, as a shell reports it): the first signal that
    reached this command, not one a later signal during its clean-up, nor one an earlier command of the same
    process received."""
    from helpers import run_cli

    from dp_tangent.interrupts import exit_status, forget_received, interrupt
    from dp_tangent.workspace import Workspace

    for first, then in ((signal.SIGTERM, None), (signal.SIGHUP, signal.SIGTERM)):
        forget_received()
        for sig in filter(None, (first, then)):
            with pytest.raises(KeyboardInterrupt):
                interrupt(sig, None)
        assert exit_status() == 128 + first

    def stopped(*args: object, **kwargs: object) -> None:
        if stop is None:
            raise KeyboardInterrupt  # as Python's own SIGINT handler raises it, recording nothing
        os.kill(os.getpid(), stop)  # through the handlers the command line installed
        time.sleep(5)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Workspace, "create", stopped)
    code, _, err = run_cli(capsys, "init", "-w", "ws")  # after the SIGHUP and SIGTERM above, in this process
    assert code == status and "interrupted" in err


def test_a_full_disk_while_training_is_one_line_with_the_retry_command(tmp_path, monkeypatch, capsys) -> None:
    """The disk fills as the reservation is logged (after the ledger reserved): the shard is failed with its budget
    spent, and the operator gets the cause in one line and the retry command, not a traceback."""
    import errno

    from helpers import run_cli

    import dp_tangent.workspace.train as train_module

    def apply_but_the_reservation(ws: object, change: object) -> object:
        if change.operation == "reservation":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_apply(ws, change)

    real_apply = train_module.apply
    monkeypatch.setattr(train_module, "apply", apply_but_the_reservation)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", "--init", str(_recipe(tmp_path, 1)), "--name", "m", "-w", "ws",
                           "--executor", "serial")
    assert code == 2 and "Traceback" not in err, err
    assert "error: [Errno 28] No space left on device" in err and "--shard 0" in err
    [event] = Ledger.open(tmp_path / "ws" / "ledger.sqlite").events()
    assert event.status.value == "failed"
