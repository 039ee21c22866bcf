"""A per-user memo of accountant results on disk, so that a later process prints an epsilon without
importing the accountants (``dp_accounting`` loads scipy and Opacus loads torch: seconds).

An entry maps ``sha256(what was computed)`` to exactly what the accountant returned: a float, or
its error message. "What was computed" is given by the caller (``accountants``: the normalised
event's canonical JSON, delta, accountant name and settings, a digest of the accounting code)
plus the versions of the libraries that compute and the machine type. Keys are digests, so the
file names no workspace, data source or record; the values are figures of events a ledger holds
(which, like the ledger, reflect shard sizes through the sampling rate q).

Why an entry cannot make a figure lie: a cache inside a workspace could be planted by anyone who
can write the workspace, and would print a false epsilon while the audit log still verifies. This
one lives in the running user's own cache folder and is read only while that folder and its file
belong to the user and no one else can write them, and no one but the user or root can replace
any folder above (group- or world-writable only with the sticky bit, as /tmp): whoever can write
there can already run code as this user, and so change the accountants themselves. Any failure to
read or write the cache is ignored and the figure is computed. Off unless a folder is given:
``PRIVACY_ACCOUNTING_CACHE=<folder>`` or :func:`use_cache_dir` (the ``dp-tangent`` command line
uses :func:`user_cache_dir`); ``PRIVACY_ACCOUNTING_CACHE=off`` turns it off everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

ENV = "PRIVACY_ACCOUNTING_CACHE"
FILENAME = "bounds.sqlite"
#: Most recent entries kept (an entry is ~150 bytes).
MAX_ENTRIES = 100_000
#: Libraries whose code computes the figures.
LIBRARIES = ("dp-accounting", "opacus", "numpy", "scipy")
_OFF = ("", "0", "off", "no", "false")
_folder: Path | None = None

#: What an entry holds: (epsilon, "") or (None, error message).
Result = tuple[float | None, str]


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/privacy_accounting``, else ``~/.cache/privacy_accounting``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "privacy_accounting"


def cache_dir() -> Path | None:
    """The folder in use: ``PRIVACY_ACCOUNTING_CACHE`` if set (``off``: none), else :func:`use_cache_dir`'s."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env)
    return _folder


@contextmanager
def use_cache_dir(folder: str | os.PathLike[str] | None) -> Iterator[None]:
    """Use ``folder`` (None: no cache) while the block runs, unless ``PRIVACY_ACCOUNTING_CACHE`` says otherwise."""
    global _folder
    previous, _folder = _folder, None if folder is None else Path(folder)
    try:
        yield
    finally:
        _folder = previous


def entry_key(computation: str) -> str:
    """The digest an entry is stored under: ``computation`` (JSON text), library versions, machine."""
    payload = json.dumps({"computation": computation, "libraries": _versions(), "machine": os.uname().machine},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def lookup(computation: str) -> Result | None:
    """The stored result of ``computation``, or None (no cache, no entry, or a cache not to be trusted)."""
    path = _usable_file(create=False)
    if path is None:
        return None
    try:
        with closing(_connect(path)) as conn:
            row = conn.execute("SELECT epsilon, error FROM bounds WHERE key = ?", (entry_key(computation),)).fetchone()
    except sqlite3.Error:
        return None
    if row is None or (row[0] is None) == (not row[1]):
        return None
    return (None, str(row[1])) if row[0] is None else (float(row[0]), "")


def store(computation: str, result: Result) -> None:
    """Remember ``result`` for ``computation`` (silently nothing if there is no usable cache)."""
    value, error = result
    path = _usable_file(create=True)
    if path is None or (value is None) == (not error):
        return
    try:
        with closing(_connect(path)) as conn, conn:
            conn.execute("INSERT OR REPLACE INTO bounds (key, epsilon, error) VALUES (?, ?, ?)",
                         (entry_key(computation), value, error))
            conn.execute("DELETE FROM bounds WHERE rowid <= (SELECT max(rowid) FROM bounds) - ?", (MAX_ENTRIES,))
    except sqlite3.Error:
        return


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=2.0)
    conn.execute("CREATE TABLE IF NOT EXISTS bounds (key TEXT PRIMARY KEY, epsilon REAL, error TEXT NOT NULL)")
    return conn


def _usable_file(*, create: bool) -> Path | None:
    """The cache file if the folder in use is private to this user (created if ``create``), else None."""
    folder = cache_dir()
    if folder is None or not hasattr(os, "getuid"):  # no POSIX owners to check: no cache
        return None
    try:
        if create and not folder.exists():
            folder.mkdir(mode=0o700, parents=True)
        folder = Path(os.path.realpath(folder))
        path = folder / FILENAME
        if not folder.is_dir() or not _owned_unshared(os.stat(folder)):
            return None
        if not all(_private(p) for p in folder.parents):
            return None
        if os.path.lexists(path):
            mode = os.lstat(path)
            if not stat.S_ISREG(mode.st_mode) or not _owned_unshared(mode):
                return None
        elif not create:
            return None
    except OSError:
        return None
    return path


def _owned_unshared(mode: os.stat_result) -> bool:
    """Owned by this user and writable by no one else (the folder itself may not rely on a sticky bit:
    SQLite would read a journal file someone else left there)."""
    return mode.st_uid == os.getuid() and not mode.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _private(folder: Path) -> bool:
    """Only this user (or root) can change what ``folder`` holds: owned by either, and writable by no
    one else unless sticky (as /tmp: others then cannot rename or remove what is not theirs)."""
    mode = os.stat(folder)
    if mode.st_uid not in (0, os.getuid()):
        return False
    return not mode.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or bool(mode.st_mode & stat.S_ISVTX)


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out
