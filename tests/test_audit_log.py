"""The audit log: every tampering is detected, appends are serialised across processes."""

from __future__ import annotations

import json
import multiprocessing
import runpy
from pathlib import Path

import pytest

import dp_tangent.workspace.audit_log
from dp_tangent.workspace.audit_log import GENESIS, Artifact, AuditChainError, AuditLog, AuditLogError, entry_hash, verify
from dp_tangent.workspace.merkle import inclusion_proof, merkle_root, prefix_with_root, verify_inclusion


def _log_with_artifacts(root: Path, entries: int = 3) -> AuditLog:
    log = AuditLog(root / "audit.log")
    (root / "components").mkdir(exist_ok=True)
    for i in range(entries):
        path = root / "components" / f"c{i}.safetensors"
        path.write_bytes(f"component {i}".encode())
        log.append("training", operator="alice", inputs=[Artifact("base:mlp", "ab" * 32)],
                   outputs=[Artifact.of_file(root, path, f"c{i}")], parameters={"epsilon": 1.5, "shard": f"s{i}"})
    return log


def test_a_fresh_chain_verifies_and_links_every_entry(tmp_path) -> None:
    log = _log_with_artifacts(tmp_path, 4)
    entries = log.entries()
    assert [e.seq for e in entries] == [0, 1, 2, 3] and entries[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:]))
    raw = json.loads((tmp_path / "audit.log").read_text().splitlines()[2])
    assert entry_hash(raw) == raw["hash"]
    report = verify(tmp_path)
    assert report.ok and report.entries == 4 and report.artifacts_checked == 4 and report.head == entries[-1].hash
    assert entries[1].outputs[0].path == "components/c1.safetensors"


def test_every_single_byte_change_is_detected_at_its_entry(tmp_path) -> None:
    _log_with_artifacts(tmp_path, 3)
    path = tmp_path / "audit.log"
    original = path.read_bytes()
    starts = [0] + [i + 1 for i, b in enumerate(original) if b == ord("\n")][:-1]
    for position in range(len(original)):
        changed = bytearray(original)
        changed[position] ^= 0x01
        path.write_bytes(bytes(changed))
        report = verify(path, check_artifacts=False)
        entry = max(k for k, s in enumerate(starts) if s <= position)
        assert not report.ok, f"flipping byte {position} went unnoticed"
        assert report.first_bad.seq == entry, (position, str(report))
    path.write_bytes(original)
    assert verify(path).ok


@pytest.mark.parametrize("edit, seq, reason", [
    (lambda lines: lines[:1] + lines[2:], 1, "seq is 2, expected 1"),
    (lambda lines: lines[1:], 0, "seq is 1, expected 0"),
    (lambda lines: [lines[0], lines[2], lines[1]], 1, "expected 1"),
    (lambda lines: [lines[1], lines[0], lines[2]], 0, "expected 0"),
])
def test_deleting_or_reordering_entries_is_detected(tmp_path, edit, seq, reason) -> None:
    _log_with_artifacts(tmp_path, 3)
    path = tmp_path / "audit.log"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(edit(lines)))
    report = verify(path, check_artifacts=False)
    assert not report.ok and report.first_bad.seq == seq and reason in report.first_bad.reason


def test_a_rewritten_chain_needs_every_later_hash_and_truncation_needs_an_anchor(tmp_path) -> None:
    log = _log_with_artifacts(tmp_path, 3)
    head = log.entries()[-1].hash
    path = tmp_path / "audit.log"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))  # cut the last entry off: a valid, shorter chain
    assert verify(path, check_artifacts=False).ok
    report = verify(path, check_artifacts=False, expected_head=head)
    assert not report.ok and "truncated" in report.first_bad.reason
    raw = json.loads(lines[1])
    raw["parameters"]["epsilon"] = 0.1  # a forger who recomputes this entry's hash...
    raw["hash"] = entry_hash(raw)
    path.write_bytes(lines[0] + json.dumps(raw, sort_keys=True, separators=(",", ":")).encode() + b"\n" + lines[2])
    report = verify(path, check_artifacts=False)  # ...breaks the next entry's link
    assert not report.ok and report.first_bad.seq == 2 and "prev_hash" in report.first_bad.reason


def test_swapped_modified_or_resurrected_artifacts_are_detected(tmp_path) -> None:
    log = _log_with_artifacts(tmp_path, 3)
    c0, c1 = tmp_path / "components" / "c0.safetensors", tmp_path / "components" / "c1.safetensors"
    a, b = c0.read_bytes(), c1.read_bytes()
    c0.write_bytes(b), c1.write_bytes(a)
    report = verify(tmp_path)
    assert not report.ok and report.first_bad.seq == 0 and "components/c0.safetensors" in report.first_bad.reason
    assert len(report.problems) == 2
    c0.write_bytes(a), c1.write_bytes(b)
    log.append("deletion", operator="bob", inputs=[Artifact.of_file(tmp_path, c0, "c0")],
               outputs=[Artifact("c0", None, "components/c0.safetensors")])
    c0.unlink()
    c1.unlink()  # gone without a log entry: reported as missing, not as tampering
    report = verify(tmp_path)
    assert report.ok and report.missing_artifacts == ("components/c1.safetensors",) and "1 missing" in str(report)
    assert "moved away or archived?): components/c1.safetensors; whatever reads them" in str(report)  # named
    assert "a missing cached Gram file is logged as removed instead" in str(report)  # review 88: what forget does
    c1.write_bytes(b)
    c0.write_bytes(a)  # the deleted component comes back
    report = verify(tmp_path)
    assert not report.ok and "logged as removed" in report.first_bad.reason and report.first_bad.seq == 3


def test_an_input_that_is_not_the_logged_version_is_detected(tmp_path) -> None:
    log = _log_with_artifacts(tmp_path, 1)
    c0 = tmp_path / "components" / "c0.safetensors"
    c0.write_bytes(b"swapped in before composing")
    log.append("composition", operator="carol", inputs=[Artifact.of_file(tmp_path, c0, "c0")], outputs=[])
    report = verify(tmp_path)
    assert not report.ok and {p.seq for p in report.problems} == {0, 1}
    assert "input components/c0.safetensors" in [p for p in report.problems if p.seq == 1][0].reason


def test_append_refuses_a_corrupt_log_and_leaves_it_as_is(tmp_path) -> None:
    log = _log_with_artifacts(tmp_path, 2)
    path = tmp_path / "audit.log"
    original = path.read_bytes()
    corrupt = bytearray(original)
    corrupt[10] ^= 0x20
    path.write_bytes(bytes(corrupt))
    with pytest.raises(AuditChainError, match="refusing to append"):
        log.append("release", operator="dave")
    assert path.read_bytes() == bytes(corrupt)
    path.write_bytes(original[:-1])  # an interrupted write: no final newline
    with pytest.raises(AuditChainError, match="entry 1: incomplete last line"):
        log.append("release", operator="dave")


def test_bad_entries_are_refused_before_writing(tmp_path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    with pytest.raises(AuditLogError, match="unknown operation"):
        log.append("training; rm -rf /")
    with pytest.raises(AuditLogError, match="JSON"):
        log.append("training", parameters={"epsilon": float("nan")})
    with pytest.raises(AuditLogError, match="relative"):
        log.append("training", outputs=[Artifact("x", "ab" * 32, "../outside")])
    assert not (tmp_path / "audit.log").exists() or (tmp_path / "audit.log").read_bytes() == b""


def test_merkle_root_and_inclusion_proofs(tmp_path) -> None:
    log = _log_with_artifacts(tmp_path, 7)
    hashes = [e.hash for e in log.entries()]
    root = merkle_root(hashes)
    assert verify(tmp_path).merkle_root == root
    for i, h in enumerate(hashes):
        proof = inclusion_proof(hashes, i)
        assert verify_inclusion(h, proof, root)
        assert not verify_inclusion(hashes[(i + 1) % len(hashes)], proof, root)
    assert merkle_root(hashes[:6]) != root and merkle_root([]) is None



def test_the_entry_count_of_a_root_is_found_from_the_root_alone() -> None:
    """The requester's certificate gives its checkpoint's root without the entry count (which would tell what was
    logged between two certificates): every prefix of a log is found again from its root, any other root is not."""
    import hashlib

    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(70)]
    for m in range(1, len(hashes) + 1):
        assert prefix_with_root(hashes, merkle_root(hashes[:m])) == m
        assert prefix_with_root(hashes[:m - 1], merkle_root(hashes[:m])) is None  # the log lost its m-th entry
    assert prefix_with_root(hashes, merkle_root(hashes[1:9])) is None  # not a prefix
    assert prefix_with_root(hashes, hashes[0]) is None and prefix_with_root([], merkle_root(hashes)) is None

# The children load dp_tangent/audit_log.py under a bare package object, skipping dp_tangent/__init__
# (which imports torch and timm: about 10 s per process here); the code under test is the same file.
_WORKER = """
import sys, types
package = types.ModuleType("dp_tangent")
package.__path__ = [PACKAGE_DIR]
sys.modules["dp_tangent"] = package
from dp_tangent.workspace.audit_log import AuditLog
log = AuditLog(LOG)
START.wait(60)
for i in range(COUNT):
    log.append("release", operator=f"worker-{WORKER}", parameters={"worker": WORKER, "i": i})
"""


def test_two_processes_appending_at_once_lose_nothing(tmp_path) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path).append("workspace_created", operator="setup")
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    package_dir = str(Path(dp_tangent.workspace.audit_log.__file__).parent.parent)
    workers = [ctx.Process(target=runpy.run_path, args=(str(script),), kwargs={"init_globals": {
        "PACKAGE_DIR": package_dir, "LOG": str(path), "COUNT": 100, "WORKER": w, "START": start}}) for w in range(2)]
    for p in workers:
        p.start()
    start.set()
    for p in workers:
        p.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0]
    report = verify(path)
    assert report.ok and report.entries == 201
    seen = sorted((e.parameters["worker"], e.parameters["i"]) for e in AuditLog(path).entries()[1:])
    assert seen == sorted((w, i) for w in range(2) for i in range(100))


def test_a_short_write_leaves_no_torn_line(tmp_path, monkeypatch) -> None:
    """Review 4: a full disk or a file-size limit cut an entry half-way, and every later command refused the torn
    log (until it was truncated by hand). The append now truncates back to where it began."""
    import os

    log = _log_with_artifacts(tmp_path)
    before = log.path.read_bytes()
    real_write = os.write

    def half(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(dp_tangent.workspace.audit_log.os, "write", half)
    with pytest.raises(AuditLogError, match="short write .* the entry was not logged and the log is as it was"):
        log.append("training", parameters={"n": 1})
    monkeypatch.setattr(dp_tangent.workspace.audit_log.os, "write", real_write)
    assert log.path.read_bytes() == before and verify(log.path).ok
    assert log.append("training", parameters={"n": 2}).seq == len(log.entries()) - 1 and verify(log.path).ok


def test_a_folder_removed_while_the_check_lists_the_workspace_is_skipped_not_an_error(tmp_path: Path) -> None:
    """A change finishing while ``audit verify`` looks removes its ``.pending`` staging: pathlib's glob raised
    FileNotFoundError mid-walk and the command stopped with a traceback (review 61)."""
    import shutil

    from dp_tangent.workspace import audit_log

    (tmp_path / ".pending" / "abc").mkdir(parents=True)
    (tmp_path / ".pending" / "abc" / "intent.json").write_text("{}")
    (tmp_path / "workspace.json").write_text("{}")
    walk = audit_log._tree(tmp_path)
    first = next(walk)  # the top folder's entries come before any folder under it is listed
    shutil.rmtree(tmp_path / ".pending")
    assert {p.name for p in [first, *walk]} == {".pending", "workspace.json"}
    assert list(audit_log._tree(tmp_path / "gone")) == []
