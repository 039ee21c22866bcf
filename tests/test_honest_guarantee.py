"""The printed guarantee is true: per-record accounting, no overlap by accident, deleted means deleted,
and a release bundle that carries nothing but the DP output (privacy review findings 2, 3 and 4)."""

from __future__ import annotations

import json
import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch.utils.data import TensorDataset

from dp_tangent.cli import main
from helpers import run_cli
from dp_tangent.components.component import RELATION, RELATION_SIZE_PUBLIC, read_metadata
from dp_tangent.components.manifest import commit
from dp_tangent.data import RecordSet, split_shards
from dp_tangent.errors import DPTangentError
from dp_tangent.recipes import load_recipe
from dp_tangent.training import PrivacySpec, TrainConfig
from dp_tangent.training.plan import plan_run
from dp_tangent.training.sgd import _private_loader
from dp_tangent.workspace import ShardJob, Workspace, WorkspaceError
from dp_tangent.workspace.audit_log import verify
from dp_tangent.workspace.deletion_requests import DeletionRequest
from dp_tangent.workspace.forget import forget
from dp_tangent.workspace.tombstones import Tombstones
from privacy_accounting import RecordOverlapError, compose_events, epsilon_bounds

FAST = TrainConfig(epochs=1, batch_size=16, lr=0.1)
PRIVATE = PrivacySpec(noise_multiplier=1.0)
PLANNED = PrivacySpec(noise_multiplier=1.0, planned_shard_size=48)  # N stated in advance, whatever a shard holds
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)


def records(k: int, n: int = 48) -> RecordSet:
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(n, 8, generator=gen)
    return RecordSet(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long(), tuple(f"rec-{k}-{i}" for i in range(n)))


def composed_epsilon(ws: Workspace, *components: str) -> float:
    events = [e for c in components for e in ws.ledger.events(component=c)]
    return epsilon_bounds(compose_events([e.event for e in events]), events[0].delta).epsilon


def test_the_same_records_as_three_shards_are_refused_before_anything_is_spent(tmp_path, mlp_backbone) -> None:
    """Finding 2: three 'shards' holding the same 200 records were each accepted under one budget."""
    ws = Workspace.create(tmp_path / "ws")
    same = records(0, 200)
    jobs = [ShardJob(f"c{k}", f"shard-{k}", same) for k in range(3)]
    with pytest.raises(RecordOverlapError, match=r"overlaps other shards: 200 record\(s\) with shard 'shard-0'"):
        ws.train_all(mlp_backbone, None, jobs, data_source="toy", privacy=PRIVATE, config=FAST)
    assert ws.ledger.events() == [] and ws.list_components() == []
    # A later run on another shard holding some of shard-0's records is refused too.
    ws.train(mlp_backbone, None, same, data_source="toy", shard="shard-0", name="c0", privacy=PRIVATE, config=FAST)
    with pytest.raises(RecordOverlapError, match="20 record"):
        ws.train(mlp_backbone, None, RecordSet(same.inputs[:20], same.targets[:20], same.record_ids[:20]),
                 data_source="toy", shard="shard-1", name="c1", privacy=PRIVATE, config=FAST)
    assert [e.component for e in ws.ledger.events()] == ["c0"]


def test_an_allowed_overlap_is_charged_by_sequential_composition(tmp_path, mlp_backbone) -> None:
    ws = Workspace.create(tmp_path / "ws")
    same = records(0, 200)
    ws.train_all(mlp_backbone, None, [ShardJob(f"c{k}", f"shard-{k}", same) for k in range(3)], data_source="toy",
                 privacy=PRIVATE, config=FAST, allow_overlap=True)
    ws.compose_model("m", ["c0", "c1", "c2"])
    one = ws.load_component("c0").metadata.privacy.epsilon
    guarantee = ws.ledger.model_guarantee("m")
    assert guarantee.epsilon == pytest.approx(composed_epsilon(ws, "c0", "c1", "c2"))
    assert guarantee.epsilon > 1.3 * one  # not the parallel-composition figure
    report = ws.ledger.record_guarantees("toy", guarantee.delta)
    assert [(round(b.epsilon, 6), n) for b, n in report] == [(round(guarantee.epsilon, 6), 200)]


def test_a_model_guarantee_counts_the_runs_of_removed_components(tmp_path, mlp_backbone) -> None:
    ws = Workspace.create(tmp_path / "ws")
    shards = {k: records(k) for k in range(2)}
    for k, recs in shards.items():
        ws.train(mlp_backbone, None, recs, data_source="toy", shard=f"s{k}", name=f"c{k}", privacy=PRIVATE,
                 config=FAST)
    ws.compose_model("m", ["c0", "c1"])
    before = ws.ledger.model_guarantee("m").epsilon
    forget(ws, DeletionRequest("req-1", ("rec-0-3",), NOW), retrain=True, shard_records={"c0": shards[0]},
           now=NOW)
    assert ws.model_record("m").component_names == ["c0.r1", "c1"]
    after = ws.ledger.model_guarantee("m")
    assert after.binding == ("toy", "s0")
    assert after.epsilon == pytest.approx(composed_epsilon(ws, "c0", "c0.r1")) and after.epsilon > before


def test_a_deleted_record_is_never_trained_again(tmp_path, mlp_backbone) -> None:
    """Finding 3: after `forget`, training the same data again brought the record back."""
    ws = Workspace.create(tmp_path / "ws")
    recs = records(0)
    ws.train(mlp_backbone, None, recs, data_source="toy", shard="s0", name="c0", privacy=PRIVATE, config=FAST)
    forget(ws, DeletionRequest("req-1", ("rec-0-3",), NOW), now=NOW)
    key = ws.manifest_key()
    assert commit("rec-0-3", key) in Tombstones(ws.root).read()
    with pytest.raises(WorkspaceError, match=r"shard 's0' holds 1 record\(s\) deleted by request\(s\) req-1"):
        ws.train(mlp_backbone, None, recs, data_source="toy", shard="s0", name="again", privacy=PRIVATE,
                 config=FAST)
    assert not ws.ledger.events(component="again")
    run = ws.train_all(mlp_backbone, None, [ShardJob("again", "s0", recs)], data_source="toy", privacy=PRIVATE,
                       config=FAST, deleted="exclude")
    assert run.excluded_deleted == {"again": 1}
    meta = read_metadata(ws.component_path("again"))
    assert meta.manifest.records == len(recs) - 1 and commit("rec-0-3", key) not in meta.manifest.commitments
    assert verify(ws).ok


def test_repeated_deletions_with_retraining_on_one_shard(tmp_path, mlp_backbone) -> None:
    """The loader re-supplies the whole shard each time; every record deleted so far stays out."""
    ws = Workspace.create(tmp_path / "ws")
    recs = records(0)
    ws.train(mlp_backbone, None, recs, data_source="toy", shard="s0", name="c0", privacy=PRIVATE, config=FAST)
    ws.compose_model("m", ["c0"])
    for i, victim in enumerate(("rec-0-3", "rec-0-4", "rec-0-5"), start=1):
        result = forget(ws, DeletionRequest(f"req-{i}", (victim,), NOW), retrain=True,
                        shard_records=lambda meta: recs, now=NOW)
        assert result.found and result.certificate.verification.verified
    (name,) = ws.list_components()
    assert name == "c0.r3" and ws.model_record("m").component_names == ["c0.r3"]
    held = set(read_metadata(ws.component_path(name)).manifest.commitments)
    key = ws.manifest_key()
    assert len(held) == len(recs) - 3
    assert not {commit(r, key) for r in ("rec-0-3", "rec-0-4", "rec-0-5")} & held
    assert verify(ws).ok


def test_an_id_found_nowhere_is_still_tombstoned(tmp_path, mlp_backbone) -> None:
    ws = Workspace.create(tmp_path / "ws")
    ws.train(mlp_backbone, None, records(0), data_source="toy", shard="s0", name="c0", privacy=PRIVATE, config=FAST)
    result = forget(ws, DeletionRequest("req-9", ("rec-1-7",), NOW), now=NOW)
    assert not result.found
    with pytest.raises(WorkspaceError, match="req-9"):
        ws.train(mlp_backbone, None, records(1), data_source="toy", shard="s1", name="c1", privacy=PRIVATE,
                 config=FAST)


def _numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_a_release_bundle_holds_no_manifest_count_or_seed(tmp_path, mlp_backbone, monkeypatch) -> None:
    """Finding 4: component files carry n and one commitment per record; the release carries neither."""
    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")  # relative, as users type it
    sizes = {k: 40 + 7 * k for k in range(2)}
    ws.set_budget("toy", None, epsilon=20.0, delta=1e-5)
    with pytest.raises(WorkspaceError, match="has no privacy budget"):
        ws.train(mlp_backbone, None, records(5, 40), data_source="nobudget", shard="s", name="x", privacy=PRIVATE,
                 config=FAST)
        ws.compose_model("xm", ["x"])
        ws.release("xm", "never")
    for k, n in sizes.items():
        ws.train(mlp_backbone, None, records(k, n), data_source="toy", shard=f"s{k}", name=f"c{k}",
                 privacy=PLANNED, config=FAST)
    ws.compose_model("m", ["c0", "c1"])
    statement = ws.release("m", "out")
    bundle = tmp_path / "out"
    assert sorted(p.name for p in bundle.iterdir()) == ["deltas.safetensors", "release.json"]
    data = json.loads((bundle / "release.json").read_text())
    # The budget, not the exact figure: the exact one is a function of the shard sizes (through q and T).
    assert data["privacy"]["epsilon"] == 20.0 and data["privacy"]["delta"] == 1e-5
    assert ws.ledger.model_guarantee("m").epsilon < 20.0
    assert data["privacy"]["neighbouring_relation"] == "add or remove one record"
    forbidden = {"manifest", "commitments", "records", "seed", "sample_rate", "steps", "noise_multiplier", "shard",
                 "components", "key_id"}
    assert not forbidden & _keys(data), forbidden & _keys(data)
    for k, n in sizes.items():
        assert n not in _numbers(data)
    text = (bundle / "release.json").read_text()
    for k in sizes:
        meta = read_metadata(ws.component_path(f"c{k}"))
        assert meta.manifest.root not in text and meta.manifest.commitments[0] not in text
    with safe_open(str(bundle / "deltas.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "dp-tangent-release/1"}
        loaded = {n: f.get_tensor(n) for n in f.keys()}
    assert all(torch.equal(loaded[n], t) for n, t in ws.load_model("m")[1].items())
    assert statement.deltas_sha256 == ws.model_record("m").deltas_sha256
    entry = ws.audit.entries()[-1]
    assert entry.operation == "release" and set(entry.parameters["bundle"]) == {"deltas.safetensors", "release.json"}


def test_release_mistakes_are_one_line_errors_that_write_nothing(tmp_path, mlp_backbone, monkeypatch,
                                                                  capsys) -> None:
    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")
    ws.train(mlp_backbone, None, records(0), data_source="toy", shard="s0", name="c0", privacy=PRIVATE, config=FAST)
    ws.train(mlp_backbone, None, records(1), data_source="toy", shard="public", name="ref",
             privacy=PrivacySpec(epsilon=float("inf")), config=FAST)
    ws.compose_model("m", ["c0"])
    ws.compose_model("with-ref", ["c0", "ref"])
    ws.set_budget("toy", None, epsilon=50.0, delta=1e-5)
    entries = len(ws.audit.entries())
    for args, message in ((["release", "m", "-o", "ws/inside", "-w", "ws"], "inside the workspace"),
                          (["release", "with-ref", "-o", "out", "-w", "ws"], "no differential-privacy guarantee"),
                          (["release", "nope", "-o", "out", "-w", "ws"], "no model 'nope'")):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ws" / "inside").exists()
    assert len(ws.audit.entries()) == entries
    os.mkdir(tmp_path / "taken")
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(SystemExit):
        main(["release", "m", "-o", "taken", "-w", "ws"])
    assert "not an empty directory" in capsys.readouterr().err
    main(["release", "with-ref", "-o", "out", "--non-private", "-w", "ws"])
    released = json.loads((tmp_path / "out" / "release.json").read_text())
    assert released["privacy"]["differentially_private"] is False
    assert "stated in advance" not in released["caveats"][0]  # review 41: a non-private run's plan follows n
    # review 43: no relation and no guarantee's caveats for a model without a guarantee
    assert released["privacy"]["neighbouring_relation"] == "none (no differential-privacy guarantee)"
    assert released["caveats"][0].startswith("No differential-privacy guarantee holds for this model")
    assert not any("guarantee treats" in c or "bounds what" in c for c in released["caveats"])
    assert Path("out/deltas.safetensors").is_file()


def test_a_release_killed_before_its_bundle_was_moved_is_finished_by_asking_for_it_again(tmp_path, mlp_backbone,
                                                                                          monkeypatch) -> None:
    """Review: killed between logging and the rename, the complete bundle stayed in a hidden sibling that nothing
    pointed to, and the rerun logged a second release. Asked again (same model and destination), it is moved into
    place and not logged twice; another model's release to that folder leaves it alone."""
    from dp_tangent.workspace import release as release_module

    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")
    ws.set_budget("toy", None, epsilon=50.0, delta=1e-5)
    ws.train(mlp_backbone, None, records(0), data_source="toy", shard="s0", name="c0", privacy=PLANNED, config=FAST)
    ws.compose_model("m", ["c0"])
    ws.compose_model("other", ["c0"])
    move = release_module._move_into_place

    def killed(staging, target):  # noqa: ANN001
        raise SystemExit("killed")

    monkeypatch.setattr(release_module, "_move_into_place", killed)
    with pytest.raises(SystemExit):
        ws.release("m", "out")
    [hidden] = tmp_path.glob(".out.*")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in hidden.iterdir()) == [
        "deltas.safetensors", "release.json"]
    monkeypatch.setattr(release_module, "_move_into_place", move)
    releases = lambda: [e for e in ws.audit.entries() if e.operation == "release"]  # noqa: E731
    assert len(releases()) == 1
    ws.release("other", "elsewhere")
    assert hidden.is_dir()  # another model, another destination: not this bundle's
    statement = ws.release("m", "out")
    assert statement.model == "m" and not hidden.exists() and len(releases()) == 2  # "elsewhere" and "m" once
    assert release_module.sha256_file(Path("out/release.json")) == releases()[0].parameters["bundle"]["release.json"]
    hidden.mkdir()  # a copy of a bundle that is in place already is removed; asked again, the bundle is the answer
    for name in ("deltas.safetensors", "release.json"):
        (hidden / name).write_bytes((tmp_path / "out" / name).read_bytes())
    assert ws.release("m", "sub/../out") == statement and not hidden.exists() and len(releases()) == 2
    assert verify(ws.root).ok

    # review: a bundle left waiting, then the model retrained after a deletion; asked again, the waiting bundle (which
    # holds the deleted record) must not be moved into place: it is removed, and the release made afresh
    monkeypatch.setattr(release_module, "_move_into_place", killed)
    with pytest.raises(SystemExit):
        ws.release("m", "out2")
    monkeypatch.setattr(release_module, "_move_into_place", move)
    [waiting] = tmp_path.glob(".out2.*")
    forget(ws, DeletionRequest("r1", ("rec-0-3",), NOW), retrain=True, shard_records={"c0": records(0)}, now=NOW)
    fresh = ws.release("m", "out2")
    assert not waiting.exists() and len(releases()) == 4 and fresh.deltas_sha256 != statement.deltas_sha256
    assert json.loads(Path("out2/release.json").read_text())["deltas_sha256"] == fresh.deltas_sha256
    Path("link").symlink_to("empty", target_is_directory=True)
    Path("empty").mkdir()
    with pytest.raises(WorkspaceError, match="is a symbolic link"):
        ws.release("m", "link")
    assert oct(Path("out2").stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # recipients may read it
    assert oct((Path("out2") / "release.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    # review: a release killed before it was logged left a complete hidden copy nothing cleaned up; and a waiting
    # bundle of a model withdrawn since was kept for good
    unlogged = tmp_path / ".out3.k1lled00"  # what a release killed (kill -9) before its entry leaves
    shutil.copytree("out2", unlogged)
    staged = json.loads((unlogged / "release.json").read_text())  # review 42: a version from before a deletion too
    (unlogged / "release.json").write_text(json.dumps({**staged, "released_at": "2026-12-02T00:00:00+00:00",
                                                       "deltas_sha256": "0" * 64}))
    kept = [tmp_path / ".out3.backup", tmp_path / ".out3.v2.abcd1234", tmp_path / ".out3.logged00"]  # review 41
    for folder in kept[:2]:
        shutil.copytree(unlogged, folder)  # a user's copy, another destination's staging: not this release's
    shutil.copytree("out2", kept[2])  # a bundle some release logged: never removed by another
    ws.release("m", "out3")
    assert not unlogged.exists() and Path("out3/release.json").is_file() and all(f.is_dir() for f in kept)

    # review 64: a release killed while staging left the model's deltas (and half-written files) in a hidden sibling
    # that no rerun removed, as it held no statement naming the model
    killed_staging = {".out5.aaaaaaaa": ["deltas.safetensors"], ".out5.bbbbbbbb": [".deltas.safetensors.x1y2z3w4.tmp"],
                      ".out5.cccccccc": ["deltas.safetensors", ".release.json.q1w2e3r4.tmp"], ".out5.dddddddd": []}
    mine = {".out5.eeeeeeee": ["deltas.safetensors", "notes.txt"]}  # something else in it: a user's, left alone
    for name, files in {**killed_staging, **mine}.items():
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_bytes(b"deltas")
    ws.release("m", "out5")
    assert not any((tmp_path / name).exists() for name in killed_staging) and (tmp_path / ".out5.eeeeeeee").is_dir()

    monkeypatch.setattr(release_module, "_move_into_place", killed)
    with pytest.raises(SystemExit):
        ws.release("other", "out4")
    monkeypatch.setattr(release_module, "_move_into_place", move)
    [waiting] = tmp_path.glob(".out4.*")
    forget(ws, DeletionRequest("r2", ("rec-0-5",), NOW), now=NOW)  # no retraining: "other" is withdrawn
    with pytest.raises(WorkspaceError, match="no model 'other'"):
        ws.release("other", "out4")
    assert not waiting.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_retraining_from_everything_recorded_does_not_reproduce_a_private_component(tmp_path, mlp_backbone,
                                                                                   monkeypatch) -> None:
    """Finding 1: the noise regenerated from the seed stored in the component, log and certificate."""
    import base64

    import dp_tangent.training.secure_random as secure_random

    keys: list[bytes] = []
    real = secure_random.os.urandom

    def recording(n: int) -> bytes:  # os is global: record only the cipher keys, not uuid4's 16 bytes
        key = real(n)
        if n == secure_random.KEY_BYTES:
            keys.append(key)
        return key

    monkeypatch.setattr(secure_random.os, "urandom", recording)
    ws = Workspace.create(tmp_path / "ws")
    recs = records(0, 64)
    ws.train(mlp_backbone, None, recs, data_source="toy", shard="s0", name="c0", privacy=PRIVATE, config=FAST)
    forget(ws, DeletionRequest("req-1", ("rec-0-3",), NOW), retrain=True, shard_records={"c0": recs}, now=NOW)
    meta = read_metadata(ws.component_path("c0.r1"))
    assert keys and meta.privacy.private and meta.training.seed is None and meta.privacy.secure_mode
    # Everything the workspace recorded about the run: no seed anywhere, and no key bytes in any file.
    logged = [e.parameters for e in ws.audit.entries() if e.parameters.get("component") == "c0.r1"]
    assert logged and all(p.get("seed") is None for p in logged)
    cert = json.loads((ws.certificates_dir / "req-1.json").read_text())
    assert [a["seed"] for a in cert["components_added"]] == [None]
    files = [p.read_bytes() for p in ws.root.rglob("*") if p.is_file()]
    for key in keys:
        for form in (key, key.hex().encode(), base64.b64encode(key)):
            assert not any(form in data for data in files)
    # Retraining with the recorded settings, in every way a seed could be supplied, gives other deltas.
    remaining = recs.without(["rec-0-3"])
    t = meta.training
    for noise, seed in (("secure", None), ("seeded", 0), ("seeded", 1)):
        config = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, physical_batch_size=t.physical_batch_size,
                             lr=t.lr, momentum=t.momentum, seed=seed, noise=noise)
        again = ws.train(mlp_backbone, None, remaining, data_source="toy", shard="s0", name=f"again-{noise}-{seed}",
                         privacy=PrivacySpec(noise_multiplier=meta.privacy.noise_multiplier), config=config,
                         deleted="exclude")
        assert again.metadata.deltas_sha256 != meta.deltas_sha256


def test_the_released_epsilon_does_not_tell_whether_one_record_was_added(tmp_path, mlp_backbone) -> None:
    """Review B3: the exact epsilon moved from 1.99511 to 1.99513 when one record joined a shard."""
    statements = []
    for n in (80, 81):
        ws = Workspace.create(tmp_path / f"ws{n}")
        ws.set_budget("toy", None, epsilon=10.0, delta=1e-5)
        ws.train(mlp_backbone, None, records(0, n), data_source="toy", shard="s0", name="c0",
                 privacy=PrivacySpec(epsilon=2.0), config=TrainConfig(epochs=1, batch_size=20, lr=0.1))
        ws.compose_model("m", ["c0"])
        statements.append((ws.ledger.model_guarantee("m").epsilon, ws.release("m", tmp_path / f"out{n}").privacy))
    (exact_80, released_80), (exact_81, released_81) = statements
    assert exact_80 != exact_81  # inside the workspace, the shard size shows
    assert released_80 == released_81  # in the bundle, it does not


def test_the_same_records_under_another_data_source_name_are_one_record(tmp_path, mlp_backbone) -> None:
    """Review M1: renaming the data source must not launder an overlap."""
    ws = Workspace.create(tmp_path / "ws")
    same = records(0, 60)
    ws.train(mlp_backbone, None, same, data_source="src", shard="s0", name="a", privacy=PRIVATE, config=FAST)
    with pytest.raises(RecordOverlapError, match=r"60 record\(s\) with shard 'src/s0'"):
        ws.train(mlp_backbone, None, same, data_source="src-copy", shard="s0", name="b", privacy=PRIVATE,
                 config=FAST)
    ws.train(mlp_backbone, None, same, data_source="src-copy", shard="s0", name="b", privacy=PRIVATE, config=FAST,
             allow_overlap=True)
    ws.compose_model("both", ["a", "b"])
    assert ws.ledger.model_guarantee("both").epsilon == pytest.approx(composed_epsilon(ws, "a", "b"))


def test_records_shared_with_another_source_are_judged_against_both_budgets(tmp_path, mlp_backbone) -> None:
    """Review 63: with an overlap allowed, a shard's spend, `budget show`'s remaining figure and the report's verdict
    counted only that shard's runs, and a model on the copy was released past the original's lowered budget."""
    from privacy_accounting.report import build_report

    ws = Workspace.create(tmp_path / "ws")
    same = records(0, 60)
    for source in ("src", "src-copy"):
        ws.set_budget(source, None, epsilon=50.0, delta=1e-5)
    ws.train(mlp_backbone, None, same, data_source="src", shard="s0", name="a", privacy=PRIVATE, config=FAST)
    ws.train(mlp_backbone, None, same, data_source="src-copy", shard="s0", name="b", privacy=PRIVATE, config=FAST,
             allow_overlap=True)
    ws.compose_model("copy", ["b"])
    both, one = composed_epsilon(ws, "a", "b"), composed_epsilon(ws, "b")
    assert both > 1.2 * one
    for source in ("src", "src-copy"):  # every record of either shard was read by both runs
        assert ws.ledger.shard_spend(source, "s0", 1e-5).epsilon == pytest.approx(both)
        assert ws.ledger.remaining(source, "s0") == pytest.approx(50.0 - both)
    reached = ws.ledger.model_guarantee("copy").record_shards
    assert [key for key, _ in reached] == [("src", "s0"), ("src-copy", "s0")]
    assert [bounds.epsilon for _, bounds in reached] == pytest.approx([both, both])
    (head,) = build_report(ws.ledger, curve_points=0).headlines
    assert head.verdict == "within budget"
    ws.set_budget("src", None, epsilon=(both + one) / 2, delta=1e-5)  # lowered: the records are above it now
    report = build_report(ws.ledger, curve_points=0)
    (head,) = report.headlines
    assert head.verdict == "over budget" and head.verdict_text.startswith("OVER BUDGET: src/s0 has spent ε = ")
    assert {(s.data_source, s.budget_status) for s in report.shards} == {("src", "exceeded"),
                                                                        ("src-copy", "within budget")}
    assert [s.shared_with for s in report.shards] == [["src-copy/s0"], ["src/s0"]]
    assert "runs of src-copy/s0 that read some of its records too" in report.statement
    assert "all 1 event(s) ever run on it" not in report.statement
    with pytest.raises(WorkspaceError, match="also on shard src/s0, where they have spent epsilon"):
        ws.release("copy", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_budget_show_vouches_for_the_records_read_where_an_overlap_was_allowed(tmp_path, mlp_backbone,
                                                                               capsys) -> None:
    """Review 65: shard figures read which records each run read once an overlap was allowed, but budget show checked
    the log's digests of the other tables only: a deleted row of event_records lowered the printed spend silently."""
    import sqlite3

    ws = Workspace.create(tmp_path / "ws")
    ws.train(mlp_backbone, None, records(0, 60), data_source="src", shard="s0", name="a", privacy=PRIVATE,
             config=FAST)
    assert not ws.ledger.overlap_possible()  # no run may read another shard's records: the table cannot matter
    ws.train(mlp_backbone, None, records(0, 60), data_source="src-copy", shard="s0", name="b", privacy=PRIVATE,
             config=FAST, allow_overlap=True)
    assert ws.ledger.overlap_possible()
    code, before, err = run_cli(capsys, "budget", "show", "-w", str(ws.root))
    assert code == 0 and "warning" not in err, err
    b = ws.ledger.events(component="b")[0].seq
    with sqlite3.connect(ws.ledger_path) as conn:  # b "read" none of src's records now: src's spend drops to a's
        conn.execute("DELETE FROM event_records WHERE seq = ?", (b,))
    assert ws.ledger.shard_spend("src", "s0", 1e-5).epsilon < composed_epsilon(ws, "a", "b")
    code, after, err = run_cli(capsys, "budget", "show", "-w", str(ws.root))
    assert code == 1 and after != before
    assert err.startswith("warning: the workspace does not verify (") and "event_records" in err, err


def test_a_shard_reached_through_an_overlap_judges_only_the_models_records_on_it(tmp_path, mlp_backbone) -> None:
    """Review 65: release and the report's verdict judged a model against the whole spend of a shard that holds some
    of its records, so a heavy run on that shard's OTHER records refused the model and called it over budget."""
    from privacy_accounting.report import build_report

    ws = Workspace.create(tmp_path / "ws")
    quiet = PrivacySpec(noise_multiplier=3.0)
    ws.train(mlp_backbone, None, records(0, 60), data_source="src", shard="s0", name="a", privacy=quiet, config=FAST)
    ws.train(mlp_backbone, None, records(0, 60), data_source="copy", shard="s0", name="b", privacy=quiet,
             config=FAST, allow_overlap=True)
    ws.train(mlp_backbone, None, records(100, 60), data_source="copy", shard="s0", name="heavy",  # other records
             privacy=PrivacySpec(noise_multiplier=0.7), config=FAST)
    ws.compose_model("ma", ["a"])
    mine = composed_epsilon(ws, "a", "b")
    heavy = ws.ledger.shard_spend("copy", "s0", 1e-5).epsilon
    assert heavy > 2 * mine
    ws.set_budget("src", None, epsilon=2 * mine, delta=1e-5)
    # review 67: a run reading copy/s0 whole is held to copy's budget only: without one, nothing bounds ma's records
    # there, as the verdict says; release allowed it (review 66)
    (head,) = [h for h in build_report(ws.ledger, curve_points=0).headlines if h.model == "ma"]
    assert head.verdict == "no budget set" and "copy/s0" in head.verdict_text, head.verdict_text
    with pytest.raises(WorkspaceError, match="also on shard copy/s0, which has no privacy budget"):
        ws.release("ma", tmp_path / "out")
    ws.set_budget("copy", None, epsilon=(mine + heavy) / 2, delta=1e-5)  # copy/s0 is over it; ma's records are not
    (head,) = [h for h in build_report(ws.ledger, curve_points=0).headlines if h.model == "ma"]
    assert head.verdict == "within budget", head.verdict_text
    ws.release("ma", tmp_path / "out")
    ws.set_budget("copy", "s0", epsilon=mine * 1.1, delta=1e-5)  # the most used now, by ma's records alone
    (head,) = [h for h in build_report(ws.ledger, curve_points=0).headlines if h.model == "ma"]
    assert head.verdict == "within budget" and "The most used, copy/s0, has spent ε = " in head.verdict_text
    assert "on the model's records it holds (91%)" in head.verdict_text, head.verdict_text
    ws.set_budget("copy", "s0", epsilon=mine * 0.9, delta=1e-5)  # now the shard holding ma's records is below them
    (head,) = [h for h in build_report(ws.ledger, curve_points=0).headlines if h.model == "ma"]
    assert head.verdict == "over budget" and "copy/s0 has spent ε = " in head.verdict_text, head.verdict_text
    assert "on the model's records it holds" in head.verdict_text
    with pytest.raises(WorkspaceError, match="also on shard copy/s0, where they have spent epsilon"):
        ws.release("ma", tmp_path / "out2")


def test_an_audit_is_charged_to_the_records_it_reads(tmp_path, mlp_backbone) -> None:
    """Review M2: an audit under another shard name left the model's records uncharged."""
    from dp_tangent import linearize

    recs = records(0, 100)
    ws = Workspace.create(tmp_path / "ws")
    ws.train(mlp_backbone, None, recs, data_source="toy", shard="s0", name="c0", privacy=PRIVATE, config=FAST)
    ws.compose_model("m", ["c0"])
    before = ws.ledger.model_guarantee("m").epsilon
    tangent = linearize(mlp_backbone.build(), None)
    audit = {"canaries": 40, "data_source": "toy", "component": "audit-0"}
    small = TrainConfig(epochs=1, batch_size=50, lr=0.5)
    with pytest.raises(RecordOverlapError, match="with shard 's0'"):
        ws.audit_privacy(tangent, recs, PrivacySpec(epsilon=4.0), small, shard="audit-x", **audit)
    ws.audit_privacy(tangent, recs, PrivacySpec(epsilon=4.0), small, shard="s0", **audit)
    assert ws.ledger.model_guarantee("m").epsilon > before + 1.0  # the model's records paid for the audit
    assert ws.audit.verify().ok


@pytest.mark.parametrize("n", [255, 257])
def test_with_a_planned_size_the_mechanism_does_not_depend_on_one_record(n: int) -> None:
    """Review: q, T, sigma (calibrated), delta and the batch mean's divisor all followed the shard's count, so the
    deltas' noise scale told 256 from 255 or 257 records. Planned from a stated N they are the same either way."""
    privacy = PrivacySpec(epsilon=8.0, planned_shard_size=256)
    config = TrainConfig(epochs=20, batch_size=128)
    here, there = plan_run(256, privacy, config), plan_run(n, privacy, config)
    assert (here.sample_rate, here.steps, here.noise_multiplier, here.delta, here.expected_batch_size) == \
        (there.sample_rate, there.steps, there.noise_multiplier, there.delta, there.expected_batch_size)
    assert here.event == there.event and here.records != there.records  # the count itself stays internal
    unplanned = PrivacySpec(epsilon=8.0)
    assert plan_run(256, unplanned, config).noise_multiplier != plan_run(257, unplanned, config).noise_multiplier


@pytest.mark.parametrize("n", [32, 40])
def test_the_batch_mean_divides_by_the_planned_size_not_the_count(n: int) -> None:
    plan = plan_run(n, PrivacySpec(noise_multiplier=1.0, planned_shard_size=48), FAST)
    dataset = TensorDataset(torch.zeros(n, 2), torch.zeros(n, dtype=torch.long))
    loader, divisor, _ = _private_loader(dataset, plan, FAST)
    assert divisor == 16 and len(loader) == 3  # N q = 48 / 3, and 3 batches an epoch, for either count


@pytest.mark.parametrize("n", [300, 400])
def test_a_non_private_run_takes_the_steps_of_its_own_records_whatever_the_planned_size(n: int, mlp_backbone) -> None:
    """A non-private run (epsilon = inf) has no mechanism to keep independent of n: it trains shuffled mini-batches of
    its records, so its steps follow them. Planned from N = 359 instead, a shard of 400 took 32 steps against 24
    planned and failed after its reservation (the default recipe's shard 3 without DP)."""
    from dp_tangent import linearize
    from dp_tangent.training.sgd import fit

    privacy = PrivacySpec(epsilon=float("inf"), planned_shard_size=359)
    config = TrainConfig(epochs=2, batch_size=128, seed=0)
    plan = plan_run(n, privacy, config)
    assert plan.steps == 2 * -(-n // 128)
    tangent = linearize(mlp_backbone.build(), None)
    records = RecordSet(torch.randn(n, 8), torch.randint(0, 3, (n,)), tuple(f"r{i}" for i in range(n)))
    assert fit(tangent, records, plan, privacy, config) == plan.steps


@pytest.mark.parametrize("k", [93, 99, 105])
def test_every_planned_batch_count_gets_its_loader(k: int) -> None:
    """1/(1/k) rounds below k for these k, and Opacus's int(1/q) made k - 1 batches: the run failed after its
    budget was reserved. The loader now takes the plan's count."""
    plan = plan_run(4 * k, PrivacySpec(noise_multiplier=1.0), TrainConfig(epochs=1, batch_size=4))
    dataset = TensorDataset(torch.zeros(4 * k, 2), torch.zeros(4 * k, dtype=torch.long))
    assert len(_private_loader(dataset, plan, TrainConfig(epochs=1, batch_size=4))[0]) == k == plan.batches


def test_a_planned_size_is_recorded_and_kept_by_the_retraining_after_a_deletion(tmp_path, mlp_backbone) -> None:
    """The replacement of a component planned from N is planned from N as well: the same q, T and sigma as a run
    on a shard that never held the deleted record (from its own count, both would follow the count)."""
    ws = Workspace.create(tmp_path / "ws")
    ws.train(mlp_backbone, None, records(0, 40), data_source="toy", shard="s0", name="c0", privacy=PLANNED,
             config=FAST)
    ws.train(mlp_backbone, None, records(1, 40), data_source="toy", shard="s1", name="c1", privacy=PRIVATE,
             config=FAST)
    before = read_metadata(ws.component_path("c0")).privacy
    assert before.planned_shard_size == 48 and before.neighbouring_relation == RELATION
    assert read_metadata(ws.component_path("c1")).privacy.neighbouring_relation == RELATION_SIZE_PUBLIC
    result = forget(ws, DeletionRequest("r1", ("rec-0-3",), NOW), retrain=True,
                    shard_records={"c0": records(0, 40)}, now=NOW)
    [added] = result.certificate.components_added
    after = read_metadata(ws.component_path(added.name)).privacy
    assert (after.sample_rate, after.steps, after.noise_multiplier, after.planned_shard_size) == \
        (before.sample_rate, before.steps, before.noise_multiplier, 48)
    fresh = plan_run(39, PLANNED, FAST)
    assert (after.sample_rate, after.steps, after.noise_multiplier) == (fresh.sample_rate, fresh.steps,
                                                                       fresh.noise_multiplier)


def test_a_run_of_another_source_on_the_same_records_planned_from_its_own_count_is_said_too(
        tmp_path, mlp_backbone, monkeypatch, capsys) -> None:
    """Review 96: the figure of a planned model composes the runs of another data source that read its records (an
    overlap allowed on purpose); where those were planned from their shard's own count, the release, the report and
    `budget show` stated plain add/remove-one DP, deciding from the model's own shards only."""
    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")
    for source in ("P", "U"):
        ws.set_budget(source, None, epsilon=20.0, delta=1e-5)
    ws.train(mlp_backbone, None, records(0), data_source="P", shard="s0", name="p0", privacy=PLANNED, config=FAST)
    ws.train(mlp_backbone, None, records(0), data_source="U", shard="s0", name="u0", privacy=PRIVATE, config=FAST,
             allow_overlap=True)
    ws.compose_model("mp", ["p0"])
    released = ws.release("mp", tmp_path / "out").privacy
    assert released.neighbouring_relation == RELATION_SIZE_PUBLIC and "taken as public" in released.statement
    code, out, _ = run_cli(capsys, "report", "--format", "json", "-w", "ws")
    report = json.loads(out)
    assert code == 0 and {m["model"]: m["sizes_public"] for m in report["models"]} == {"mp": True}
    assert {(s["data_source"], s["size_public"]) for s in report["shards"]} == {("P", True), ("U", True)}
    assert "only if its shards' sizes are taken as public" in report["headlines"][0]["sentence"]
    code, out, _ = run_cli(capsys, "budget", "show", "-w", "ws")
    assert code == 0 and "* P/s0, U/s0: a run that read its records" in out, out


def test_a_refusal_for_records_a_non_private_run_read_names_those_records_not_the_shard(
        tmp_path, mlp_backbone) -> None:
    """Review 95: refused because records it shares with another source's non-private run have an infinite spend,
    a run was told "the shard's spend is already infinite" while the shard's own figure was finite."""
    from privacy_accounting import BudgetExceededError

    ws = Workspace.create(tmp_path / "ws")
    ws.set_budget("P", None, epsilon=20.0, delta=1e-5)
    ws.train(mlp_backbone, None, records(0), data_source="U", shard="s0", name="u0",
             privacy=PrivacySpec(epsilon=math.inf), config=FAST)
    ws.train(mlp_backbone, None, records(1), data_source="P", shard="s0", name="p0", privacy=PLANNED, config=FAST)
    with pytest.raises(BudgetExceededError) as refused:
        ws.train(mlp_backbone, None, records(0), data_source="P", shard="s0", name="p1", privacy=PLANNED,
                 config=FAST, allow_overlap=True)
    message = str(refused.value)
    assert refused.value.shared and "budget exceeded for records the run shares with runs on other shards, held " \
        "by shard 's0' of data source 'P': spent epsilon=inf" in message
    assert "as those records' spend is already infinite: a non-private run read them" in message
    assert math.isfinite(ws.ledger.shard_spend("P", "s0").epsilon)  # the shard's own figure: finite


def test_the_release_report_and_budget_say_when_shard_sizes_are_taken_as_public(tmp_path, mlp_backbone,
                                                                               monkeypatch, capsys) -> None:
    """Review: only the release and the component said so; the report's headline, which a privacy officer reads,
    stated plain add/remove-one DP for a model whose runs were planned from their shards' own counts."""
    monkeypatch.chdir(tmp_path)
    statements, reports, budgets = {}, {}, {}
    for privacy in (PLANNED, PRIVATE):
        name = f"ws{privacy.planned_shard_size}"
        ws = Workspace.create(name)
        ws.set_budget("toy", None, epsilon=20.0, delta=1e-5)
        ws.train(mlp_backbone, None, records(0), data_source="toy", shard="s0", name="c0", privacy=privacy,
                 config=FAST)
        ws.train(mlp_backbone, None, records(1), data_source="toy", shard="s1", name="c1", privacy=PLANNED,
                 config=FAST)
        ws.compose_model("m", ["c0", "c1"])
        ws.compose_model("planned", ["c1"])
        statements[privacy.planned_shard_size] = ws.release("m", tmp_path / f"out{privacy.planned_shard_size}").privacy
        code, out, _ = run_cli(capsys, "report", "--format", "json", "-w", name)
        assert code == 0
        reports[privacy.planned_shard_size] = json.loads(out)
        code, out, _ = run_cli(capsys, "budget", "show", "-w", name)
        assert code == 0
        budgets[privacy.planned_shard_size] = out
    assert statements[48].neighbouring_relation == RELATION and "public" not in statements[48].statement
    assert statements[None].neighbouring_relation == RELATION_SIZE_PUBLIC
    assert "taken as public" in statements[None].statement
    caveats = {p: json.loads((tmp_path / f"out{p}" / "release.json").read_text())["caveats"][0] for p in (48, None)}
    assert "stated in advance" in caveats[48] and "set from their shards' own sizes" in caveats[None]
    assert "the deltas may reveal a shard's size" in caveats[None]  # review 86: it read as if the size stayed hidden
    for planned, report in reports.items():
        headlines = {h["model"]: h for h in report["headlines"]}
        models = {m["model"]: m for m in report["models"]}
        shards = {s["shard"]: s["size_public"] for s in report["shards"]}
        assert shards == {"s0": planned is None, "s1": False}
        assert models["m"]["sizes_public"] is (planned is None) and models["planned"]["sizes_public"] is False
        assert ("only if its shards' sizes are taken as public" in headlines["m"]["sentence"]) is (planned is None)
        assert ("count taken as public" in report["neighbouring_relation"]) is (planned is None)
        assert ("taken as public" in models["m"]["statement"]) is (planned is None)
        assert "public" not in headlines["planned"]["sentence"] + headlines["planned"]["meaning"]
    assert "* toy/s0: a run that read its records was planned from its shard's own record count" in budgets[None]
    assert "*" not in budgets[48]


@pytest.mark.parametrize("by", ["random", "label"])
def test_adding_or_removing_a_record_moves_no_other_record(by: str) -> None:
    """Review: a permutation of the whole set placed records, so removing one of 1797 digits moved 1461 others
    between shards and the test set; each record is now placed by its own id."""
    full = records(7, 400)
    without = full.subset(list(range(399)))
    count = 4 if by == "random" else 3  # three labels
    (test_a, shards_a), (test_b, shards_b) = (split_shards(r, shards=count, seed=3, by=by) for r in (full, without))
    place = [{i: k for k, part in enumerate([test, *parts]) for i in part.record_ids}
             for test, parts in ((test_a, shards_a), (test_b, shards_b))]
    assert {i for i in place[1] if place[0][i] != place[1][i]} == set()
    assert set(place[0]) - set(place[1]) == {full.record_ids[399]}
    if by == "random":
        assert 50 <= len(test_a) <= 110 and all(60 <= len(part) <= 110 for part in shards_a)  # about 80, 80 each
    assert split_shards(full, shards=count, seed=4, by=by)[0].record_ids != test_a.record_ids  # the seed matters


def test_one_record_of_a_new_label_moves_no_other_record_between_label_blocks(tmp_path) -> None:
    """Review: ``shards.by: label`` made its blocks from the labels present, so one record of a label no other
    record had moved every record of the other labels to another shard. The blocks now follow the model's
    classes, in the recipe too."""
    full = records(7, 400)  # labels 0, 1, 2 of a 4-class model
    odd = RecordSet(torch.cat([full.inputs, full.inputs[:1]]), torch.cat([full.targets, torch.tensor([3])]),
                    (*full.record_ids, "rec-new"))
    places = []
    for data in (full, odd):
        test, parts = split_shards(data, shards=2, seed=3, by="label", classes=4)
        places.append({i: k for k, part in enumerate([test, *parts]) for i in part.record_ids})
        assert {int(y) for y in parts[0].targets} <= {0, 1} and {int(y) for y in parts[1].targets} <= {2, 3}
    assert all(places[1][i] == k for i, k in places[0].items())
    before = [split_shards(data, shards=2, test_fraction=0.0, by="label")[1] for data in (full, odd)]
    assert before[0][0].record_ids != before[1][0].record_ids  # the labels present: the new label moved records

    rows = ["id,a,label"] + [f"r{i},{i % 7},{i % 3}" for i in range(60)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "t4.csv").write_text("\n".join(rows + ["odd,1,3"]) + "\n")
    recipe = {"backbone": {"family": "mlp", "name": "mlp", "num_classes": 4, "options": {"in_features": 1}},
              "shards": {"count": 2, "by": "label"}, "data_source": "t", "training": {"epochs": 1},
              "privacy": {"epsilon": 8, "delta": 1e-5},
              "data": {"table": {"path": "t.csv", "record_id": "id", "label": "label", "features": ["a"],
                                 "scaling": "none", "test_fraction": 0.0}}}
    shards = []
    for name in ("t.csv", "t4.csv"):
        recipe["data"]["table"]["path"] = name
        (tmp_path / "r.yaml").write_text(json.dumps(recipe))
        shards.append([set(p.record_ids) for p in load_recipe(tmp_path / "r.yaml").load_data()[1]])
    assert shards[0][0] == shards[1][0] and shards[1][1] == shards[0][1] | {"odd"}
    (tmp_path / "t5.csv").write_text("\n".join(rows + ["odd,1,4"]) + "\n")  # review: a label >= 4 was dropped
    recipe["data"]["table"]["path"] = "t5.csv"
    (tmp_path / "r.yaml").write_text(json.dumps(recipe))
    with pytest.raises(DPTangentError, match="record 'odd' has label 4, outside the model's 4 classes"):
        load_recipe(tmp_path / "r.yaml").load_data()


def test_the_batch_is_checked_against_the_planned_size() -> None:
    """A shard left with fewer records than a batch (after deletions) trains when its run is planned for N >= B."""
    from dp_tangent.training.config import TrainingError
    from dp_tangent.training.validation import check_batch_size

    check_batch_size(records(0, 10), 16, "c0", planned=48)
    with pytest.raises(TrainingError, match="larger than its shard of 10 records"):
        check_batch_size(records(0, 10), 16, "c0")


def test_a_budget_a_release_stated_may_be_lowered_but_never_raised(tmp_path, mlp_backbone, monkeypatch,
                                                                   capsys) -> None:
    """Review 106: a release states its shards' budget as a bound on every later run on its records, yet `budget set`
    then raised it silently, and later runs took those records past the bound already shipped."""
    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")
    for k in (0, 1):
        ws.train(mlp_backbone, None, records(k), data_source="toy", shard=f"s{k}", name=f"c{k}", privacy=PRIVATE,
                 config=FAST)
    ws.compose_model("m", ["c0"])
    ws.set_budget("toy", None, epsilon=50.0, delta=1e-5)
    main(["release", "m", "-o", "out", "-w", "ws"])
    capsys.readouterr()
    for args, raised in ((["toy", "60"], "toy/s0"), (["toy/s0", "51"], "toy/s0"),
                         (["toy", "50", "--delta", "2e-5"], "toy/s0")):
        with pytest.raises(SystemExit) as stop:
            main(["budget", "set", *args, "-w", "ws"])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1, err
        assert f"budget {raised}: model 'm' was released with records of it" in err and "never raised" in err, err
    assert {(b.shard, b.epsilon) for b in ws.ledger.budgets()} == {(None, 50.0)}  # nothing was set
    with pytest.raises(WorkspaceError, match="after a release a budget may be lowered, never raised"):
        ws.set_budget("toy", None, 60.0, 1e-5)  # review 108: the Python API raised it freely
    main(["budget", "set", "toy/s1", "80", "-w", "ws"])  # a shard no release holds records of
    main(["budget", "set", "toy", "40", "-w", "ws"])  # lowered: the statement still holds
    assert {(b.shard, b.epsilon) for b in ws.ledger.budgets()} == {(None, 40.0), ("s1", 40.0)}


def test_the_budget_rules_are_checked_under_the_lock_a_release_holds(tmp_path, mlp_backbone, monkeypatch) -> None:
    """Review 108: `budget set` checked for releases before taking the lock, so a release holding it meanwhile was
    not seen, and the budget raised once it was free."""
    from dp_tangent.workspace import budget_rules

    monkeypatch.chdir(tmp_path)
    ws = Workspace.create("ws")
    ws.train(mlp_backbone, None, records(0), data_source="toy", shard="s0", name="c0", privacy=PRIVATE, config=FAST)
    ws.compose_model("m", ["c0"])
    ws.set_budget("toy", None, epsilon=50.0, delta=1e-5)
    seen = []
    check = budget_rules.check_budget_change

    def under_lock(*args, **kwargs):  # the rules run while the workspace's lock is held, so no release is under way
        from dp_tangent.workspace.lock import _HELD

        seen.append(_HELD.get(str(ws.root.resolve()), (-1, 0))[1] > 0)
        return check(*args, **kwargs)

    monkeypatch.setattr(budget_rules, "check_budget_change", under_lock)
    ws.set_budget("toy", None, epsilon=45.0, delta=1e-5)
    assert seen == [True]


def test_a_run_planned_from_its_shard_s_count_may_not_weaken_a_plain_release(tmp_path, mlp_backbone) -> None:
    """Review 112: a release stated without the shard-size caveat bounds every later run on its records, but a later
    run planned from its shard's own count (holding only with the size public) was accepted without a word."""
    ws = Workspace.create(tmp_path / "ws")
    ws.set_budget("toy", None, epsilon=20.0, delta=1e-5)
    ws.train(mlp_backbone, None, records(0), data_source="toy", shard="s0", name="c0", privacy=PLANNED, config=FAST)
    ws.compose_model("m", ["c0"])
    ws.release("m", tmp_path / "out")
    with pytest.raises(WorkspaceError, match=r"toy/s0 holds records of model\(s\) m released under add-or-remove-one"):
        ws.train(mlp_backbone, None, records(0), data_source="toy", shard="s0", name="later", privacy=PRIVATE,
                 config=FAST)
    assert [e.component for e in ws.ledger.events()] == ["c0"]  # refused before anything was reserved
    ws.train(mlp_backbone, None, records(0), data_source="toy", shard="s0", name="later", privacy=PLANNED,
             config=FAST)  # planned in advance: the statement still holds
    ws.train(mlp_backbone, None, records(1), data_source="toy", shard="s1", name="other", privacy=PRIVATE,
             config=FAST)  # records no release holds
    # a release that already says the sizes are public is not weakened by one more such run
    ws.compose_model("n", ["other"])
    ws.release("n", tmp_path / "out-n")
    ws.train(mlp_backbone, None, records(1), data_source="toy", shard="s1", name="other3", privacy=PRIVATE,
             config=FAST)
