"""Shared fixtures for the privacy_accounting tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from privacy_accounting import Ledger


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ws" / "ledger.sqlite"


@pytest.fixture
def ledger(ledger_path: Path) -> Ledger:
    return Ledger.open(ledger_path)
