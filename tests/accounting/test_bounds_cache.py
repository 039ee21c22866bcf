"""The on-disk cache of accountant results: exact figures back, and only from a folder no one else can write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from privacy_accounting import AccountantSettings, AccountingError, dp_sgd_event, epsilon_bounds
from privacy_accounting import accountants, bounds_cache
from privacy_accounting.bounds_cache import FILENAME, use_cache_dir

DELTA = 1e-5
EVENT = dp_sgd_event(1.0, 0.1, 20)
RDP = AccountantSettings(accountants=("rdp",))  # milliseconds per figure


@pytest.fixture(autouse=True)
def fresh_process_memo(monkeypatch: pytest.MonkeyPatch):
    """Each lookup goes to disk (the in-process memo is what a fresh process would not have)."""
    monkeypatch.delenv(bounds_cache.ENV, raising=False)
    accountants.clear_cache()
    yield
    accountants.clear_cache()


def accountants_return(monkeypatch: pytest.MonkeyPatch, value: float | None) -> None:
    """Replace every accountant: by a constant, or (None) by one that fails if it is asked at all."""
    def fake(*_args: object) -> float:
        if value is None:
            raise AccountingError("computed, not read from the cache")
        return value

    for name in ("rdp_epsilon", "prv_epsilon", "pld_epsilon"):
        monkeypatch.setattr(accountants, name, fake)


def test_a_figure_read_back_is_exactly_the_one_computed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with use_cache_dir(tmp_path / "cache"):
        computed = epsilon_bounds(EVENT, DELTA)
        accountants.clear_cache()
        with monkeypatch.context() as patch:
            accountants_return(patch, None)
            assert epsilon_bounds(EVENT, DELTA) == computed  # same floats, same accountant, no computation
            with pytest.raises(AccountingError, match="computed, not read"):  # another delta is another entry
                epsilon_bounds(EVENT, 2 * DELTA)
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    accountants.clear_cache()
    assert epsilon_bounds(EVENT, DELTA) == computed  # the cache off: what the accountants compute


def test_no_cache_unless_a_folder_is_given_and_off_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bounds_cache.cache_dir() is None
    monkeypatch.setenv(bounds_cache.ENV, "off")
    with use_cache_dir(tmp_path / "cache"):
        assert bounds_cache.cache_dir() is None
        bounds_cache.store("{}", (1.0, ""))
    assert not (tmp_path / "cache").exists()
    monkeypatch.setenv(bounds_cache.ENV, str(tmp_path / "env-cache"))
    bounds_cache.store("{}", (1.0, ""))
    assert bounds_cache.lookup("{}") == (1.0, "") and (tmp_path / "env-cache" / FILENAME).is_file()


def test_an_entry_others_could_have_planted_is_not_believed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted figure is read only from a folder that the user alone can write (who could as well edit the
    accountants); anywhere someone else can write, the cache is neither read nor written."""
    folder = tmp_path / "cache"
    with use_cache_dir(folder), monkeypatch.context() as patch:  # the owner's own cache, holding a false figure
        accountants_return(patch, 1e-3)
        assert epsilon_bounds(EVENT, DELTA, RDP).epsilon == 1e-3
    accountants.clear_cache()
    true = epsilon_bounds(EVENT, DELTA, RDP).epsilon  # no cache
    assert true > 0.1
    cache_file = folder / FILENAME
    before = cache_file.read_bytes()
    for path, mode in [(folder, 0o770), (folder, 0o707), (cache_file, 0o620), (tmp_path, 0o777)]:
        path.chmod(mode)
        accountants.clear_cache()
        with use_cache_dir(folder):
            assert epsilon_bounds(EVENT, DELTA, RDP).epsilon == true
            assert epsilon_bounds(EVENT, 3 * DELTA, RDP).epsilon > 0.1  # computed, and not written
        path.chmod(0o700 if path.is_dir() else 0o600)
        assert cache_file.read_bytes() == before, (path, oct(mode))
    tmp_path.chmod(0o1777)  # a sticky folder above (as /tmp): others cannot swap what is in it
    accountants.clear_cache()
    with use_cache_dir(folder):
        assert epsilon_bounds(EVENT, DELTA, RDP).epsilon == 1e-3
    tmp_path.chmod(0o700)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a file away")
def test_a_cache_file_of_another_user_is_not_believed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cache"
    with use_cache_dir(folder), monkeypatch.context() as patch:
        accountants_return(patch, 1e-3)
        assert epsilon_bounds(EVENT, DELTA, RDP).epsilon == 1e-3
    os.chown(folder / FILENAME, 4242, -1)
    accountants.clear_cache()
    with use_cache_dir(folder):
        assert epsilon_bounds(EVENT, DELTA, RDP).epsilon > 0.1
