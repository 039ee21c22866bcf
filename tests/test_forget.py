"""Deletion: exact recomposition, retraining, certificates without raw ids, not-found, the legal clock."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import date, datetime, timedelta, timezone

import pytest
import torch

from dp_tangent.workspace.audit_log import verify
from dp_tangent.components import compose
from dp_tangent.components.component import SEEDED_LABEL
from dp_tangent.errors import DPTangentError
from dp_tangent.data import RecordSet
from dp_tangent.workspace.deletion_requests import DeletionRequest, ForgetError, add_months, deadlines
from dp_tangent.workspace.certificate_check import check_certificate
from dp_tangent.workspace.forget import forget
from dp_tangent.workspace.tombstones import Tombstones
from dp_tangent.workspace.request_register import list_requests, open_requests, overdue_requests, receive
from dp_tangent.io import sha256_file
from dp_tangent.components.manifest import commit
from dp_tangent.training import PrivacySpec, TrainConfig
from dp_tangent.workspace import Workspace, WorkspaceError
from privacy_accounting.events import is_non_private
from privacy_accounting.figures import fmt_eps

FAST = TrainConfig(epochs=1, batch_size=16, lr=0.1)
NOW = datetime(2025, 3, 10, 9, 30, tzinfo=timezone.utc)




def shard(k: int, n: int = 24) -> RecordSet:
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(n, 8, generator=gen)
    return RecordSet(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long(), tuple(f"rec-{k}-{i}" for i in range(n)))


@pytest.fixture
def ws(tmp_path, mlp_backbone) -> Workspace:
    """Three components on disjoint shards and four models, one of which does not use c0."""
    ws = Workspace.create(tmp_path / "ws")
    for k in range(3):
        ws.train(mlp_backbone, None, shard(k), data_source="toy", shard=f"s{k}", name=f"c{k}",
                 privacy=PrivacySpec(noise_multiplier=1.0), config=FAST)
    ws.compose_model("mean_all", ["c0", "c1", "c2"])
    ws.compose_model("weighted", ["c2", "c0", "c1"], [2.0, 1.0, 0.5], "mean")
    ws.compose_model("arith", ["c1", "c0"], [1.0, -0.5], "task_arithmetic")
    ws.compose_model("others", ["c1", "c2"], method="sum")
    ws.compose_model("solo", ["c0"])
    return ws


def _request(*ids: str, request_id: str = "req-1") -> DeletionRequest:
    return DeletionRequest(request_id, ids, NOW)


def test_removing_a_component_recomposes_every_model_bit_identically(ws) -> None:
    before = {m: ws.load_model(m)[1] for m in ws.list_models()}
    result = forget(ws, _request("rec-0-5"), operator="dpo", now=NOW + timedelta(days=2))
    assert result.found and "removed 1 component" in result.message
    assert ws.list_components() == ["c1", "c2"] and not ws.component_path("c0").exists()
    c1, c2 = ws.load_component("c1"), ws.load_component("c2")
    want = {"mean_all": compose([c1, c2]), "weighted": compose([c2, c1], [2.0, 0.5], "mean"),
            "arith": compose([c1], [1.0], "task_arithmetic")}
    for name, composition in want.items():
        _, deltas = ws.load_model(name)
        assert all(torch.equal(deltas[n], composition.deltas[n]) for n in composition.deltas), name
        assert ws.ledger.models()[name] == composition.record.names
    _, others = ws.load_model("others")
    assert all(torch.equal(others[n], before["others"][n]) for n in others)
    assert "solo" not in ws.list_models() and not ws.model_deltas_path("solo").exists()

    cert = result.certificate
    actions = {m.name: m.action for m in cert.models}
    assert actions == {"mean_all": "recomposed", "weighted": "recomposed", "arith": "recomposed",
                       "others": "unchanged", "solo": "withdrawn"}
    changes = {m.name: m for m in cert.models}
    assert changes["mean_all"].after.deltas_sha256 == ws.model_record("mean_all").deltas_sha256
    assert changes["mean_all"].before.deltas_sha256 != changes["mean_all"].after.deltas_sha256
    assert changes["others"].before == changes["others"].after
    assert [r.name for r in cert.components_removed] == ["c0"] and cert.components_added == []
    assert cert.record_commitments == [commit("rec-0-5", ws.manifest_key())]
    assert cert.found_in == {cert.record_commitments[0]: ["c0"]} and cert.not_found == []
    assert cert.verification.verified and cert.verification.components_checked == 2
    assert cert.status == "completed" and cert.on_time and cert.due_by == "2025-04-10"
    text = result.text_path.read_text()
    assert "withdrawn" in text and cert.verification.statement.replace(
        "none of the 2 remaining", "none of the remaining") in text  # how many remain: not the requester's business
    assert json.loads(result.json_path.read_text())["request_id"] == "req-1"
    for path in ws.root.rglob("*"):
        if path.is_file():
            assert b"rec-0-5" not in path.read_bytes(), f"raw record id stored in {path}"
    last, sealed = ws.audit.entries()[-2:]
    assert last.operation == "deletion" and last.parameters["components_removed"] == ["c0"]
    assert sealed.operation == "certificate_sealed" and cert.checkpoint.size == last.seq + 1
    assert verify(ws).ok


def test_retraining_replaces_the_component_trained_without_the_record(ws) -> None:
    old = ws.load_component("c0").metadata
    result = forget(ws, _request("rec-0-5", "rec-0-7"), retrain=True, shard_records={"c0": shard(0)})
    [added] = result.certificate.components_added
    assert added.name == "c0.r1" and added.replaces == "c0" and added.records == 22
    new = ws.load_component("c0.r1").metadata
    # secure in, secure out: fresh noise from a new OS key, so no seed in the certificate or the metadata
    assert added.seed is None and new.training.seed is None and new.training.noise == old.training.noise == "secure"
    assert new.privacy.private and new.privacy.secure_mode and added.epsilon == new.privacy.epsilon
    key = ws.manifest_key()
    assert commit("rec-0-5", key) not in new.manifest.commitments and commit("rec-0-6", key) in new.manifest.commitments
    assert new.base_weights_sha256 == old.base_weights_sha256
    assert new.privacy.noise_multiplier == old.privacy.noise_multiplier
    [event] = ws.ledger.events(component="c0.r1")
    assert event.purpose.value == "retraining_after_deletion" and event.shard == "s0"
    assert ws.ledger.events(component="c0")[0].status.value == "completed"  # the old spend stays on the books
    c0r, c1, c2 = (ws.load_component(n) for n in ("c0.r1", "c1", "c2"))
    _, deltas = ws.load_model("mean_all")
    want = compose([c0r, c1, c2]).deltas
    assert all(torch.equal(deltas[n], want[n]) for n in want)
    assert ws.model_record("solo").component_names == ["c0.r1"]
    assert [e.operation for e in ws.audit.entries()[-6:]] == ["deletion_request", "tombstoned", "reservation",
                                                               "retraining", "deletion", "certificate_sealed"]
    assert verify(ws).ok


def test_retraining_a_seeded_component_stays_seeded_with_a_fresh_seed_and_not_private(ws, mlp_backbone) -> None:
    ws.train(mlp_backbone, None, shard(3), data_source="toy", shard="s3", name="c3",
             privacy=PrivacySpec(noise_multiplier=1.0), config=dataclasses.replace(FAST, seed=11, noise="seeded"))
    old = ws.load_component("c3").metadata
    assert not old.privacy.private and old.training.seed == 11
    result = forget(ws, _request("rec-3-2", request_id="req-seeded"), retrain=True, shard_records={"c3": shard(3)})
    [added] = result.certificate.components_added
    new = ws.load_component(added.name).metadata
    assert new.training.noise == "seeded" and added.seed == new.training.seed is not None and added.seed != 11
    assert not new.privacy.private and new.privacy.label == SEEDED_LABEL and added.epsilon is None
    assert new.privacy.noise_multiplier == old.privacy.noise_multiplier
    [event] = ws.ledger.events(component=added.name)
    assert event.purpose.value == "retraining_after_deletion" and is_non_private(event.event)


def test_a_record_no_component_holds_is_reported_and_still_logged(ws) -> None:
    digests = {m: sha256_file(ws.model_path(m)) for m in ws.list_models()}
    result = forget(ws, _request("nobody-42", request_id="req-none"))
    assert not result.found and "not found in any component" in result.message
    assert result.certificate.outcome == "not_found_in_any_component"
    assert result.certificate.not_found == [commit("nobody-42", ws.manifest_key())]
    assert ws.list_components() == ["c0", "c1", "c2"]
    assert digests == {m: sha256_file(ws.model_path(m)) for m in ws.list_models()}
    last = ws.audit.entries()[-2]
    assert last.operation == "deletion" and last.parameters["outcome"] == "not_found_in_any_component"
    partial = forget(ws, _request("rec-1-0", "nobody-43", request_id="req-partial"))
    assert partial.found and "1 record(s) not found" in partial.message
    assert len(partial.certificate.not_found) == 1 and ws.list_components() == ["c0", "c2"]


@pytest.mark.parametrize("away", ["component", "model"])
def test_a_deletion_is_refused_while_a_logged_component_or_model_is_away(ws, tmp_path, away: str) -> None:
    """A component (or model) archived out of the workspace could hold the record: forget must not certify "not
    found" (or rebuild without it) while it cannot see it. The records are tombstoned meanwhile; once the file is
    back, the deletion runs and the certificate checks out."""
    moved = [ws.component_path("c0")] if away == "component" else [ws.model_path("solo"),
                                                                   ws.model_deltas_path("solo")]
    archive = tmp_path / "archive"
    archive.mkdir()
    for path in moved:
        path.rename(archive / path.name)
    assert ws.audit.verify().ok  # archiving alone is not a problem
    with pytest.raises(ForgetError, match="not in the workspace .*stays open"):
        forget(ws, _request("rec-0-5"), now=NOW)
    assert commit("rec-0-5", ws.manifest_key()) in Tombstones(ws.root).read()
    assert [r.request_id for r in open_requests(ws, NOW)] == ["req-1"]
    for path in moved:
        (archive / path.name).rename(path)
    result = forget(ws, _request("rec-0-5"), now=NOW)
    assert result.found and "c0" not in ws.list_components() and "solo" not in ws.list_models()
    assert check_certificate(ws, result.certificate).ok


def test_a_certificate_check_fails_when_a_model_is_not_the_one_the_log_holds(ws, tmp_path) -> None:
    """The check reads models by their component lists; their bytes must be the logged ones too (a model composed
    before the deletion, copied back over the rebuilt one, keeps the rebuilt one's component list)."""
    old = ws.model_deltas_path("mean_all").read_bytes()
    result = forget(ws, _request("rec-0-5"), now=NOW)
    assert check_certificate(ws, result.certificate).ok
    ws.model_deltas_path("mean_all").write_bytes(old)
    check = check_certificate(ws, result.certificate)
    assert not check.ok and "does not verify against its audit log" in str(check)


def test_a_model_holding_records_of_an_unfinished_deletion_is_not_released(ws, tmp_path) -> None:
    """A deletion that stopped after tombstoning (here: retraining refused for the wrong records; in the review, a
    killed retraining) leaves its component in place; a release then would let the record leave after its erasure
    was requested."""
    ws.set_budget("toy", None, epsilon=50.0, delta=1e-5)
    with pytest.raises(ForgetError, match="not trained on"):
        forget(ws, _request("rec-0-1", request_id="r1"), retrain=True, shard_records={"c0": shard(1)})
    with pytest.raises(WorkspaceError, match="holds records of deletion request.s. r1, received and not yet served"):
        ws.release("solo", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    ws.release("others", tmp_path / "out")  # c1 and c2 hold none of them
    forget(ws, _request("rec-0-1", request_id="r1"))
    ws.release("mean_all", tmp_path / "out2")


def test_an_edited_tombstone_list_stops_training_and_deletions(ws, mlp_backbone) -> None:
    """Review: with the list emptied behind the tool's back, training went ahead on a deleted record (audit verify
    reported the edit, but nothing checked it before reading records)."""
    forget(ws, _request("rec-0-1", request_id="r1"))
    tombstones = ws.root / "tombstones.json"
    tombstones.write_text(tombstones.read_text().replace("r1", "r9"))
    edited = r"first: .*artifact tombstones.json: sha256 on disk differs"
    with pytest.raises(WorkspaceError, match=r"does not verify \(1 problem\(s\), " + edited):
        ws.train(mlp_backbone, None, shard(0), data_source="toy", shard="s0", name="again",
                 privacy=PrivacySpec(noise_multiplier=1.0), config=FAST)
    with pytest.raises(WorkspaceError, match=r"is not closed \(" + edited):  # refused again, not recorded again
        forget(ws, _request("rec-1-1", request_id="r2"))
    with pytest.raises(WorkspaceError, match="not the list the audit log recorded"):
        Tombstones(ws.root).read()  # the list's own check, for whatever reads it without the lock
    tombstones.unlink()
    assert "artifact tombstones.json is missing: it must stay" in str(ws.audit.verify())
    with pytest.raises(WorkspaceError, match="is missing but the audit log recorded it"):
        Tombstones(ws.root).read()


def test_a_release_is_logged_before_its_bundle_is_in_place(ws, tmp_path, monkeypatch) -> None:
    """Review: a bundle renamed into place before its log entry could leave unlogged (a full disk at the entry, a
    kill between). Logged first: a failed entry leaves no bundle; a failed move leaves a logged, complete bundle
    where the error says."""
    import dp_tangent.workspace.release as release_module

    ws.set_budget("toy", None, epsilon=50.0, delta=1e-5)
    entries = len(ws.audit.entries())

    def full(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Workspace, "record_release", full)
        with pytest.raises(OSError):
            ws.release("others", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    assert len(ws.audit.entries()) == entries
    with monkeypatch.context() as patch:
        patch.setattr(release_module.os, "rename", full)
        with pytest.raises(WorkspaceError, match="is logged, but its bundle could not be moved") as info:
            ws.release("others", tmp_path / "out")
    [staged] = tmp_path.glob(".out.*")
    assert str(staged) in str(info.value) and sorted(p.name for p in staged.iterdir()) == ["deltas.safetensors",
                                                                                           "release.json"]
    last = ws.audit.entries()[-1]
    assert last.operation == "release" and last.parameters["bundle"]["release.json"] == sha256_file(
        staged / "release.json")


def test_refusals_happen_before_anything_changes(ws, mlp_backbone) -> None:
    with pytest.raises(ForgetError, match="at least one record id"):
        DeletionRequest("req", (), NOW)
    with pytest.raises(ForgetError, match="a list, not a string"):
        DeletionRequest("req", "rec-0-1", NOW)  # type: ignore[arg-type]
    with pytest.raises(DPTangentError, match="must match"):
        DeletionRequest("../req", ("rec-0-1",), NOW)
    with pytest.raises(ForgetError, match="timezone-aware"):
        DeletionRequest("req", ("rec-0-1",), datetime(2025, 1, 1))
    with pytest.raises(ForgetError, match="needs shard_records"):
        forget(ws, _request("rec-0-1", request_id="r1"), retrain=True)
    with pytest.raises(ForgetError, match="not trained on"):
        forget(ws, _request("rec-0-1", request_id="r2"), retrain=True, shard_records={"c0": shard(1)})
    assert ws.list_components() == ["c0", "c1", "c2"] and len(ws.list_models()) == 5
    assert {r.request_id for r in open_requests(ws, NOW)} == {"r1", "r2"}
    first = forget(ws, _request("rec-0-1", request_id="r1"))
    entries = len(ws.audit.entries())
    again = forget(ws, _request("rec-0-1", request_id="r1"))  # a retry that lost the first answer: the same answer
    assert again.already_completed and again.certificate == first.certificate and "already completed" in again.message
    assert len(ws.audit.entries()) == entries
    with pytest.raises(ForgetError, match="other record ids and completed on .*the ids given now were not processed"):
        forget(ws, _request("rec-1-1", request_id="r1"))
    with pytest.raises(ForgetError, match="other record ids; the ids given now were not processed"):
        forget(ws, _request("rec-1-1", request_id="r2"))


def test_a_regmean_model_is_rebuilt_only_with_its_public_merge_data(ws) -> None:
    data = {f"c{k}": shard(10 + k, 12).inputs for k in range(3)}
    ws.compose_model("merged", ["c0", "c1", "c2"], method="regmean", merge_data=data, merge_data_public=True)
    before = sha256_file(ws.model_path("merged"))
    with pytest.raises(ForgetError, match="merge_data\\['c1'\\]"):
        forget(ws, _request("rec-0-2"))
    assert sha256_file(ws.model_path("merged")) == before and "c0" in ws.list_components()
    forget(ws, _request("rec-0-2"), merge_data={"c1": data["c1"], "c2": data["c2"]})
    want = compose([ws.load_component("c1"), ws.load_component("c2")], method="regmean",
                   merge_data={"c1": data["c1"], "c2": data["c2"]}, merge_data_public=True)
    _, deltas = ws.load_model("merged")
    assert all(torch.equal(deltas[n], want.deltas[n]) for n in want.deltas)


def test_deadlines_follow_gdpr_months_and_ccpa_days() -> None:
    assert add_months(date(2025, 1, 31), 1) == date(2025, 2, 28)
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)
    assert add_months(date(2025, 12, 15), 1) == date(2026, 1, 15)
    due = deadlines(datetime(2025, 1, 31, 23, 0, tzinfo=timezone.utc))
    assert due == {"gdpr": date(2025, 2, 28), "ccpa": date(2025, 3, 16)}  # day 45 counting Jan 31 as day 1
    early_on_feb_1_at_utc_plus_3 = datetime(2025, 2, 1, 1, 0, tzinfo=timezone(timedelta(hours=3)))
    assert deadlines(early_on_feb_1_at_utc_plus_3, ["ccpa"]) == {"ccpa": date(2025, 3, 16)}  # clock kept in UTC
    with pytest.raises(ForgetError, match="unknown regime"):
        deadlines(date(2025, 1, 1), ["hipaa"])


def test_open_and_overdue_requests_are_listed(tmp_path) -> None:
    ws = Workspace.create(tmp_path / "ws")
    receive(ws, DeletionRequest("old", ("a",), datetime(2025, 1, 2, tzinfo=timezone.utc)))
    receive(ws, DeletionRequest("new", ("b",), datetime(2025, 2, 20, tzinfo=timezone.utc), regimes=("ccpa",)))
    with pytest.raises(ForgetError, match="already received"):
        receive(ws, DeletionRequest("old", ("a",), NOW))
    now = datetime(2025, 2, 10, tzinfo=timezone.utc)
    status = {r.request_id: r for r in list_requests(ws, now)}
    assert status["old"].due_by == date(2025, 2, 2) and status["old"].overdue and status["old"].days_left == -8
    assert status["new"].due_by == date(2025, 4, 5) and not status["new"].overdue
    assert [r.request_id for r in overdue_requests(ws, now)] == ["old"]
    result = forget(ws, DeletionRequest("old", ("a",), datetime(2025, 1, 2, tzinfo=timezone.utc)), now=now)
    assert result.certificate.on_time is False and result.certificate.outcome == "not_found_in_any_component"
    assert [r.request_id for r in open_requests(ws, now)] == ["new"] and overdue_requests(ws, now) == []
    # helper 48: a request received is tombstoned at once (the docs said so; only forget did it), so that another
    # request's retraining while it is open never trains its records
    assert [e.operation for e in ws.audit.entries()] == ["workspace_created", "deletion_request", "tombstoned",
                                                         "deletion_request", "tombstoned", "deletion",
                                                         "certificate_sealed"]
    key = ws.manifest_key()
    assert {commit("a", key), commit("b", key)} <= set(Tombstones(ws.root).read())


def test_an_overdue_request_stays_listed_whatever_happens_to_its_files(tmp_path) -> None:
    """Review: the register was read from the certificate files, so a file edited to "completed", or removed, hid an
    overdue request from the scheduled check. It is read from the audit log now."""
    ws = Workspace.create(tmp_path / "ws")
    receive(ws, DeletionRequest("old", ("a",), datetime(2025, 1, 2, tzinfo=timezone.utc)))
    now = datetime(2025, 2, 10, tzinfo=timezone.utc)
    json_path, text_path = ws.certificate_paths("old")
    json_path.write_text(json_path.read_text().replace('"open"', '"completed"'))
    assert [r.request_id for r in overdue_requests(ws, now)] == ["old"]
    json_path.unlink()
    text_path.unlink()
    assert [r.request_id for r in overdue_requests(ws, now)] == ["old"]
    assert not ws.audit.verify().ok  # and the files' fate is reported


def test_a_request_received_through_the_library_is_never_trained_by_another_request_s_retraining(ws) -> None:
    """Helper 48: receive() logged the request but did not tombstone its records, so another request's retraining of
    the same shard, served while it was open, trained the record again (and spent budget on it)."""
    receive(ws, DeletionRequest("alice", ("rec-0-7",), NOW), operator="dpo", now=NOW)
    steps: list[tuple[str, int]] = []  # review 51: a retraining showed no progress (the CLI shows these)
    forget(ws, _request("rec-0-5", request_id="bob"), retrain=True, shard_records={"c0": shard(0)}, operator="dpo",
           now=NOW, progress=lambda name, step, total: steps.append((name, step)))
    assert steps and steps[-1][0].startswith("c0.") and steps[-1][1] >= 1
    key = ws.manifest_key()
    (replacement,) = [n for n in ws.list_components() if n.startswith("c0")]
    held = set(ws.load_component(replacement).metadata.manifest.commitments)
    assert commit("rec-0-5", key) not in held and commit("rec-0-7", key) not in held
    assert len(held) == 22  # the shard's 24 records less both requests'
    result = forget(ws, _request("rec-0-7", request_id="alice"), operator="dpo", now=NOW)
    assert result.certificate.status == "completed"


def _reload(meta):  # noqa: ANN001, ANN202 - a component's shard, as the CLI reloads it
    return shard(int(meta.shard[1:]))


def _stopped_after_one_replacement(ws: Workspace, monkeypatch, request: DeletionRequest) -> None:
    """``request`` served with --retrain and stopped (as by a kill) once its first replacement was trained."""
    train_all, calls = Workspace.train_all, []

    def stopped_after_one(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return train_all(self, *args, **kwargs)

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(Workspace, "train_all", stopped_after_one)
        forget(ws, request, retrain=True, shard_records=_reload, now=NOW)


def _lines(ws: Workspace, shard_name: str) -> list[str]:
    return sorted(n for n in ws.list_components() if ws.load_component(n).metadata.shard == shard_name)


def _completed_runs(ws: Workspace, shard_name: str) -> list[str]:
    return sorted(e.component for e in ws.ledger.events() if e.shard == shard_name and e.status.value == "completed")


def test_a_replacement_an_unfinished_request_trained_is_removed_not_retrained_by_another_request(ws, monkeypatch):
    """Review 75: a retraining stopped after its first shard left that shard's replacement current; a second request
    on the shard then retrained both the original and that replacement, and every later deletion retrained (and
    charged) both lines. Now the second request retrains the original only and removes the unfinished replacement;
    the first, run again, finds its records removed while it was open."""
    _stopped_after_one_replacement(ws, monkeypatch, _request("rec-0-1", "rec-1-1", request_id="first"))
    assert "c0.r1" in ws.list_components() and "c1" in ws.list_components()
    result = forget(ws, _request("rec-0-5", request_id="second"), retrain=True, shard_records=_reload, now=NOW)
    assert [a.replaces for a in result.certificate.components_added] == ["c0"]
    assert sorted(r.name for r in result.certificate.components_removed) == ["c0", "c0.r1"]
    assert _lines(ws, "s0") == ["c0.r2"]
    key = ws.manifest_key()
    held = set(ws.load_component("c0.r2").metadata.manifest.commitments)
    assert not held & {commit(r, key) for r in ("rec-0-1", "rec-0-5")} and len(held) == 22
    # the unfinished replacement's run stays charged, once: c0, c0.r1 (first request), c0.r2 (second)
    assert _completed_runs(ws, "s0") == ["c0", "c0.r1", "c0.r2"]
    again = forget(ws, _request("rec-0-1", "rec-1-1", request_id="first"), retrain=True, shard_records=_reload,
                   now=NOW)
    assert [a.replaces for a in again.certificate.components_added] == ["c1"]
    assert any("removed the component(s) of toy/s0, which held" in note for note in again.certificate.caveats)
    # review 91: the requester's copies name neither the components (c0.r1 counts a retrain) nor the unfinished
    # replacement removed with c0 (another request was being served), only the shard
    first, second = (r.text_path.read_text() for r in (again, result))
    assert not re.search(r"\bc[01](\.r\d)?\b", first + second), (first, second)
    assert f"  {commit('rec-0-1', key)}  toy/s0 (removed while this request was open)\n" in first
    assert "trained on\n  toy/s0\nAdded" in second and "trained on\n  toy/s1\nAdded" in first
    third = forget(ws, _request("rec-0-9", request_id="third"), retrain=True, shard_records=_reload, now=NOW)
    assert [a.replaces for a in third.certificate.components_added] == ["c0.r2"]  # one line per shard from now on
    assert sorted(ws.list_components()) == ["c0.r3", "c1.r1", "c2"]
    assert ws.model_record("solo").component_names == ["c0.r3"] and verify(ws).ok


def test_an_unfinished_replacement_goes_with_what_it_replaces_even_without_the_new_request_s_records(ws,
                                                                                                monkeypatch):
    """Review 77 F1: the second request names a record of the first (the same person again, under a new id), so
    the first's unfinished replacement, trained without it, is not touched; it stayed beside the second's, two
    lines of the shard from then on."""
    _stopped_after_one_replacement(ws, monkeypatch, _request("rec-0-1", "rec-1-1", request_id="first"))
    result = forget(ws, _request("rec-0-1", request_id="second"), retrain=True, shard_records=_reload, now=NOW)
    assert sorted(r.name for r in result.certificate.components_removed) == ["c0", "c0.r1"]
    assert _lines(ws, "s0") == ["c0.r2"]
    forget(ws, _request("rec-0-1", "rec-1-1", request_id="first"), retrain=True, shard_records=_reload, now=NOW)
    assert _lines(ws, "s0") == ["c0.r2"] and _lines(ws, "s1") == ["c1.r1"] and verify(ws).ok


def test_two_requests_stopped_on_one_shard_end_with_one_line_and_no_record_of_either(ws, monkeypatch) -> None:
    """Review 77 F2: the first request's replacement, trained before the second tombstoned records of its shard,
    was taken by its rerun (a record of the still-open second request back in the model), and the second's
    replacement stayed beside it."""
    _stopped_after_one_replacement(ws, monkeypatch, _request("rec-0-1", "rec-1-1", request_id="first"))
    _stopped_after_one_replacement(ws, monkeypatch, _request("rec-0-9", "rec-1-9", request_id="second"))
    assert _lines(ws, "s0") == ["c0", "c0.r1", "c0.r2"]
    result = forget(ws, _request("rec-0-1", "rec-1-1", request_id="first"), retrain=True, shard_records=_reload,
                    now=NOW)
    assert sorted(r.name for r in result.certificate.components_removed) == ["c0", "c0.r1", "c0.r2", "c1"]
    assert _lines(ws, "s0") == ["c0.r3"]
    key = ws.manifest_key()
    held = set(ws.load_component("c0.r3").metadata.manifest.commitments)
    assert not held & {commit(r, key) for r in ("rec-0-1", "rec-0-9")}
    assert not set(ws.load_component("c1.r1").metadata.manifest.commitments) & {commit("rec-1-9", key)}
    second = forget(ws, _request("rec-0-9", "rec-1-9", request_id="second"), retrain=True, shard_records=_reload,
                    now=NOW)
    assert second.certificate.components_added == [] and second.certificate.outcome == "deleted"
    assert sorted(ws.list_components()) == ["c0.r3", "c1.r1", "c2"] and verify(ws).ok


def test_a_request_run_again_without_retraining_removes_its_own_unfinished_replacement(ws, monkeypatch) -> None:
    """Review 77 F3 (before this version too): it stayed, in no model, to be retrained and charged by a later
    deletion."""
    _stopped_after_one_replacement(ws, monkeypatch, _request("rec-0-1", "rec-1-1", request_id="first"))
    result = forget(ws, _request("rec-0-1", "rec-1-1", request_id="first"), now=NOW)
    assert sorted(r.name for r in result.certificate.components_removed) == ["c0", "c0.r1", "c1"]
    assert sorted(ws.list_components()) == ["c2"] and verify(ws).ok


def test_an_unfinished_replacement_is_composed_only_once_its_request_has_finished(ws, monkeypatch) -> None:
    """Review 78: composed into a model, it was no longer unfinished, so the request's rerun trained (and charged)
    a second replacement beside it, a second line of the shard."""
    _stopped_after_one_replacement(ws, monkeypatch, _request("rec-0-1", "rec-1-1", request_id="first"))
    with pytest.raises(WorkspaceError, match=r"'c0.r1' is a replacement deletion request 'first' trained before it .*"
                                             r"--request-id first \[--retrain\] -- <its record ids>"):
        ws.compose_model("early", ["c0.r1", "c1"])
    forget(ws, _request("rec-0-1", "rec-1-1", request_id="first"), retrain=True, shard_records=_reload, now=NOW)
    assert ws.model_record("solo").component_names == ["c0.r1"]  # reused, not trained again
    assert _completed_runs(ws, "s0") == ["c0", "c0.r1"]
    ws.compose_model("later", ["c0.r1", "c1.r1"])


def test_the_requester_s_copy_names_a_replacement_s_run_epsilon_only_where_it_does_not_tell_the_shard_size(
        tmp_path, mlp_backbone) -> None:
    """Review 74: planned from a stated size, a replacement's run epsilon is the same whatever the shard holds, and
    the requester's copy names it; planned from its own count (test_cli_mistakes), it is left out."""
    ws = Workspace.create(tmp_path / "ws")
    ws.train(mlp_backbone, None, shard(0), data_source="toy", shard="s0", name="c0", config=FAST,
             privacy=PrivacySpec(noise_multiplier=1.0, planned_shard_size=24))
    result = forget(ws, _request("rec-0-5"), retrain=True, shard_records={"c0": shard(0)})
    [added] = result.certificate.components_added
    assert not added.size_public and added.epsilon is not None
    text = ws.certificate_paths("req-1")[1].read_text()
    assert f"  toy/s0 (its run's epsilon {fmt_eps(added.epsilon)}, delta" in text



def test_the_requester_s_copy_reads_the_same_whatever_was_retrained_before(ws) -> None:
    """Review 89, 91: listed by name, a component retrained for someone else (``cmp`` -> ``cmp.r1``) showed its
    retrain count, and moved after ``cmp-b``. The copy names the shards the components were trained on."""
    from dp_tangent.workspace.certificates import ComponentRef, render_certificate

    cert = forget(ws, _request("rec-0-5"), retrain=False).certificate
    commitment = cert.record_commitments[0]

    def held_by(first: str) -> str:
        parts = [ComponentRef(name=n, sha256=n * 8, data_source="toy", shard=shard, records=3)
                 for n, shard in ((first, "s1"), ("cmp-b", "s0"))]
        parts.sort(key=lambda r: r.name)  # as forget lists them
        return render_certificate(cert.model_copy(update={"components_removed": parts,
                                                          "found_in": {commitment: [first, "cmp-b"]}}))

    text = held_by("cmp")
    assert text == held_by("cmp.r1") and text == held_by("cmp.r12")
    assert f"  {commitment}  toy/s0, toy/s1\n" in text and "trained on\n  toy/s0\n  toy/s1\nAdded" in text
    assert "cmp" not in text


def test_a_certificate_check_names_current_components_it_could_not_check(ws, tmp_path) -> None:
    """Review 75, 77: with a current component moved away, the check said "none of the 3 current components holds"
    its records, exit 0, without saying one was not looked at."""
    import shutil

    result = forget(ws, _request("rec-0-5"), retrain=True, shard_records={"c0": shard(0)})
    shutil.move(ws.component_path("c2"), tmp_path / "c2.safetensors")
    check = check_certificate(ws, result.certificate)
    assert not check.ok and check.problems == (
        "1 current component(s) are away from the workspace and were not checked: c2; put them back and check again",)
    shutil.move(tmp_path / "c2.safetensors", ws.component_path("c2"))
    assert check_certificate(ws, result.certificate).ok


def test_a_certificate_whose_deletion_was_stopped_before_its_seal_says_how_to_seal_it(
        ws, monkeypatch, capsys) -> None:
    """Review 103: `certificate verify` on a deletion killed between its `deletion` entry and its seal said "is
    completed and has no checkpoint: only a completed deletion can be checked"; it says what `requests list` says."""
    from dp_tangent.workspace import forget as forget_module
    from helpers import run_cli

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill -9 there would

    monkeypatch.setattr(forget_module, "_seal", stopped)
    with pytest.raises(KeyboardInterrupt):
        forget(ws, _request("rec-0-5"))
    assert ws.audit.entries()[-1].operation == "deletion"
    monkeypatch.undo()
    code, out, err = run_cli(capsys, "certificate", "verify", "req-1", "-w", str(ws.root))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "its deletion completed, but the command was stopped before it sealed the certificate" in err, err
    assert "run the same `dp-tangent forget` command again to seal it" in err
    assert "certificate was never sealed" in run_cli(capsys, "requests", "list", "-w", str(ws.root))[2]
    forget(ws, _request("rec-0-5"))  # as the message says
    code, out, err = run_cli(capsys, "certificate", "verify", "req-1", "-w", str(ws.root))
    assert code == 0 and "holds" in out, (out, err)


def test_a_mean_left_with_only_zero_weights_is_withdrawn_not_a_deletion_refused(ws) -> None:
    """Review 106: `compose --weights 0,1` (mean), then a deletion removing the weight-1 component without retraining:
    the model's recompose ([0.0]) was refused, and so was the deletion, on every try (a legal request stuck open)."""
    ws.compose_model("zero", ["c1", "c0"], [0.0, 1.0], "mean")
    result = forget(ws, _request("rec-0-5"))
    changes = {c.name: c.action for c in result.certificate.models}
    assert changes["zero"] == "withdrawn" and "zero" not in ws.list_models()
    assert changes["mean_all"] == "recomposed" and verify(ws).ok
