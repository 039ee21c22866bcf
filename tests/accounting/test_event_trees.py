"""Events as JSON trees: the ledger holds and inspects them without importing dp_accounting."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import dp_accounting
import pytest

from privacy_accounting import (InvalidParameterError, Ledger, LedgerCorruptError, UnsupportedEventError,
                                compose_events, dp_sgd_event, event_to_json, gaussian_event)
from privacy_accounting.events import (as_tree, describe_event, is_non_private, merged_history, sgd_parameters,
                                       to_dp_event, total_steps)

DELTA = 1e-5
EVENTS = [
    dp_accounting.GaussianDpEvent(0.7),
    gaussian_event(2.0, 5),
    dp_sgd_event(1.0, 256 / 50000, 1953),
    compose_events([dp_sgd_event(1.1, 0.05, 300), gaussian_event(3.0), dp_accounting.NoOpDpEvent()]),
    dp_accounting.SelfComposedDpEvent(dp_accounting.ComposedDpEvent([dp_sgd_event(1.0, 0.1, 2)]), 3),
    compose_events([dp_sgd_event(1.0, 0.1, 2), dp_accounting.NonPrivateDpEvent()]),
    dp_accounting.NoOpDpEvent(),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_a_tree_is_the_same_event_as_its_dp_accounting_value(event: dp_accounting.DpEvent) -> None:
    tree = as_tree(event)
    assert tree == json.loads(event_to_json(event)) and to_dp_event(tree) == event
    for inspect in (is_non_private, total_steps, describe_event, sgd_parameters):
        assert inspect(tree) == inspect(event)
    if not is_non_private(event):
        assert merged_history(tree) == merged_history(event)


def reserve(ledger: Ledger, event: object) -> str:
    return ledger.reserve(data_source="people", shard="all", event=event, delta=DELTA, purpose="training",
                          operator="alice", component="c0")


@pytest.mark.parametrize("tree, error", [
    ({"type": "gaussian", "noise_multiplier": -1.0}, InvalidParameterError),
    ({"type": "gaussian", "noise_multiplier": "1"}, InvalidParameterError),
    ({"type": "self_composed", "count": 2.5, "event": {"type": "gaussian", "noise_multiplier": 1.0}},
     InvalidParameterError),
    ({"type": "laplace", "parameter": 1.0}, UnsupportedEventError),
    ({"type": "poisson_sampled", "sampling_probability": 0.1, "event": {"type": "no_op"}}, UnsupportedEventError),
    ({"type": "gaussian", "noise_multiplier": 1.0, "extra": 1}, UnsupportedEventError),
])
def test_a_malformed_tree_is_refused_and_nothing_is_written(ledger: Ledger, tree: dict, error: type) -> None:
    with pytest.raises(error) as info:
        reserve(ledger, tree)
    assert "\n" not in str(info.value) and ledger.events() == []


def test_a_tree_is_recorded_like_its_value(ledger: Ledger) -> None:
    rid = reserve(ledger, {"type": "self_composed", "count": 20, "event": {
        "type": "poisson_sampled", "sampling_probability": 0.1, "event": {"type": "gaussian", "noise_multiplier": 1}}})
    stored = ledger.event(rid)
    assert stored.event == dp_sgd_event(1.0, 0.1, 20) and stored.event_json == event_to_json(dp_sgd_event(1.0, 0.1, 20))
    assert stored.tree["count"] == 20 and stored.tree["event"]["event"]["noise_multiplier"] == 1.0


def test_an_edited_event_in_the_file_is_still_refused_on_read(ledger: Ledger, ledger_path: Path) -> None:
    reserve(ledger, dp_sgd_event(1.0, 0.1, 20))
    with sqlite3.connect(ledger_path) as conn:
        conn.execute("UPDATE events SET event_json = replace(event_json, '\"noise_multiplier\":1.0', "
                     "'\"noise_multiplier\":-1.0')")
    with pytest.raises(LedgerCorruptError, match="unreadable DP event"):
        ledger.events()


READ = """
import sys
from privacy_accounting import Ledger
ledger = Ledger.open(sys.argv[1], create=False)
[event] = ledger.events()
print(event.tree["count"], ledger.budget("people", "all").epsilon, sorted(ledger.state_digest()))
print(sorted(m for m in ("dp_accounting", "scipy", "numpy", "opacus", "torch", "pydantic") if m in sys.modules))
"""


def test_reading_a_ledger_imports_no_accountant_library(ledger: Ledger, ledger_path: Path) -> None:
    ledger.set_budget("people", None, epsilon=4.0, delta=DELTA)
    reserve(ledger, dp_sgd_event(1.0, 0.1, 20))
    done = subprocess.run([sys.executable, "-c", READ, str(ledger_path)], capture_output=True, text=True,
                          timeout=120, check=True)
    figures, loaded = done.stdout.splitlines()
    assert figures.startswith("20 4.0 ") and loaded == "[]"
