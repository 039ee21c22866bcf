"""The workspace's NTK Gram cache (issue 15): reused across runs on the same records, trusted only as the
audit log recorded it, gone with a deleted record, never released; and the precompute's progress."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from owndata import mlp_recipe, write_npz, write_recipe

from dp_tangent import linearize
from dp_tangent.components.manifest import commit
from dp_tangent.data import RecordSet
from dp_tangent.training import PrivacySpec, TrainConfig
from dp_tangent.training.ntk_gram import per_example_grams, precompute_progress
from dp_tangent.workspace import ShardJob, Workspace, WorkspaceError, gram_cache
from dp_tangent.workspace.audit_log import verify
from dp_tangent.workspace.commit import Change, FileWrite, apply
from privacy_accounting.figures import fmt_eps, fmt_remaining

SEEDED = TrainConfig(epochs=1, batch_size=16, lr=0.1, noise="seeded", seed=0)  # reproducible: deltas compared
CLIPPED = PrivacySpec(noise_multiplier=1.0, max_grad_norm=0.01)  # every per-sample gradient clipped: Theta matters


def records(n: int = 32, changed: int | None = None) -> RecordSet:
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    if changed is not None:
        x[changed] += 1.0
    return RecordSet(x, (x[:, 0] > 0).long(), tuple(f"rec-{i}" for i in range(n)))


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlp_backbone) -> Workspace:
    monkeypatch.chdir(tmp_path)
    return Workspace.create("ws")


def train(ws: Workspace, backbone, name: str, recs: RecordSet, trainable: str | None = None) -> dict:
    run = ws.train_all(backbone, trainable, [ShardJob(name, "s0", recs)], data_source="toy", privacy=CLIPPED,
                       config=SEEDED)
    assert not run.failed, run.failed
    entry = ws.audit.entries()[-1]
    assert entry.parameters["component"] == name and entry.parameters["gram_cache"] == run.gram_cache[name]
    return {k: v for k, v in run.gram_cache[name].items() if k != "features"}  # features_used() tells those


def features_used(ws: Workspace) -> dict | None:
    """The last run's use of cached features, as its log entry says (None: it kept none)."""
    return ws.audit.entries()[-1].parameters["gram_cache"].get("features")


def only_file(ws: Workspace) -> tuple[str, gram_cache.GramFile]:
    (rel,) = gram_cache.cache_files(ws)
    file, note = gram_cache.read(ws, rel, gram_cache.logged_digests(ws))
    assert note is None and file is not None
    return rel, file


def same_deltas(ws: Workspace, a: str, b: str) -> bool:
    x, y = ws.load_component(a).deltas, ws.load_component(b).deltas
    return all(torch.equal(x[k], y[k]) for k in x)


def fresh_grams(backbone, trainable: str | None, recs: RecordSet) -> torch.Tensor:
    tangent = linearize(backbone.build(), trainable)
    return per_example_grams(tangent, tangent.features(recs.inputs), from_features=tangent.cut is not None)


@pytest.mark.parametrize("trainable", [None, "blocks[-1:]"])  # Thetas from raw inputs; from cached features
def test_a_second_training_of_the_same_shard_reuses_every_gram_and_trains_the_same_component(
        ws, mlp_backbone, trainable) -> None:
    recs = records()
    assert train(ws, mlp_backbone, "a", recs, trainable) == {"hits": 0, "misses": 32, "file": "written"}
    rel, file = only_file(ws)
    assert rel.startswith("cache/grams/") and rel.endswith("/toy/s0.safetensors")
    key = ws.manifest_key()
    assert file.commitments == tuple(commit(r, key) for r in recs.record_ids)
    assert torch.equal(file.grams, fresh_grams(mlp_backbone, trainable, recs))
    assert train(ws, mlp_backbone, "b", recs, trainable) == {"hits": 32, "misses": 0, "file": "unchanged"}
    assert same_deltas(ws, "a", "b")
    assert verify(ws, workspace=True).ok


def test_the_cached_gram_is_what_clips(ws, mlp_backbone) -> None:
    """A Theta the log vouches for is used as it is: one ten times too large (written through the commit
    path, as if the tool had) changes the component -- so equal components above are not vacuous."""
    recs = records()
    train(ws, mlp_backbone, "a", recs)
    rel, file = only_file(ws)
    scaled = gram_cache.GramFile(file.key, file.commitments, file.digests, 100 * file.grams)
    apply(ws, Change("training", writes=[FileWrite(rel, scaled.encode(), gram_cache.LABEL)]))
    assert train(ws, mlp_backbone, "b", recs)["hits"] == 32
    assert not same_deltas(ws, "a", "b")


def test_an_edited_cache_file_is_not_used_and_fails_verification(ws, mlp_backbone) -> None:
    recs = records()
    train(ws, mlp_backbone, "a", recs)
    rel, file = only_file(ws)
    (ws.root / rel).write_bytes(gram_cache.GramFile(file.key, file.commitments, file.digests,
                                                    100 * file.grams).encode())
    report = verify(ws, workspace=True)
    assert not report.ok and any(rel in p.reason for p in report.problems)
    with pytest.raises(WorkspaceError, match=f"does not verify .*artifact {rel}: sha256 on disk differs"):
        train(ws, mlp_backbone, "b", recs)  # refused: the edited Theta is never used
    (ws.root / rel).unlink()  # the operator removes the edited (derived) file, and closes the record
    ws.resolve_integrity_failures("an edited Gram cache file, removed")
    use = train(ws, mlp_backbone, "b", recs)
    assert (use["hits"], use["misses"], use["file"]) == (0, 32, "written")
    assert same_deltas(ws, "a", "b")  # computed afresh
    assert torch.equal(only_file(ws)[1].grams, file.grams)  # and the file rewritten through the commit path
    after = ws.audit.verify()
    assert after.ok, after  # the failure stays in the log, closed by the operator's logged resolution
    assert [e.operation for e in ws.audit.entries()].count("integrity_resolved") == 1


def test_a_changed_input_misses_and_only_its_gram_is_computed(ws, mlp_backbone) -> None:
    train(ws, mlp_backbone, "a", records())
    changed = records(changed=5)  # same record ids, one input different
    assert train(ws, mlp_backbone, "b", changed) == {"hits": 31, "misses": 1, "file": "written"}
    _, file = only_file(ws)
    assert torch.allclose(file.grams, fresh_grams(mlp_backbone, None, changed), rtol=1e-6, atol=0)


def test_another_theta0_or_selection_misses(ws, mlp_backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = records()
    train(ws, mlp_backbone, "a", recs)
    assert train(ws, mlp_backbone, "b", recs, "blocks[-1:]")["hits"] == 0  # another selection: another key
    build = type(mlp_backbone).build

    def other_theta0(self: object) -> torch.nn.Module:
        net = build(self)
        torch.nn.init.normal_(net[0].weight)
        return net

    monkeypatch.setattr(type(mlp_backbone), "build", other_theta0)
    assert train(ws, mlp_backbone, "c", recs)["hits"] == 0
    assert len(gram_cache.cache_files(ws)) == 3


def test_a_run_removes_the_files_of_its_shard_no_run_of_this_code_can_use(ws, mlp_backbone, monkeypatch) -> None:
    """After an upgrade the old code's Thetas would stay for good (no key of the new code matches theirs): the next
    run on the shard removes them in its logged change. A file recording no code version (written before versions
    were recorded, maybe by this very code) stays, as do this code's files under another selection."""
    recs = records()
    current = gram_cache.gram_code_version()
    with monkeypatch.context() as patch:  # the same run as older code made it
        patch.setattr(gram_cache, "gram_code_version", lambda: {**current, "sources_sha256": "0" * 64})
        train(ws, mlp_backbone, "old", recs)
    [old], old_file = gram_cache.cache_files(ws), only_file(ws)[1]
    unrecorded = f"{gram_cache.CACHE_DIR}/{'f' * 32}/toy/s0.safetensors"
    apply(ws, Change("training", writes=[FileWrite(unrecorded, dataclasses.replace(old_file, code=None).encode(),
                                                   gram_cache.LABEL)]))
    assert train(ws, mlp_backbone, "b", recs, "blocks[-1:]") == {"hits": 0, "misses": 32, "file": "written",
                                                                  "superseded": 1}
    entry = ws.audit.entries()[-1]
    assert [(a.path, a.sha256) for a in entry.outputs if a.sha256 is None] == [(old, None)]
    assert old not in gram_cache.cache_files(ws) and unrecorded in gram_cache.cache_files(ws)
    assert train(ws, mlp_backbone, "c", recs) == {"hits": 0, "misses": 32, "file": "written"}  # nothing to remove
    assert len(gram_cache.cache_files(ws)) == 3
    assert train(ws, mlp_backbone, "d", recs)["hits"] == 32  # and this code's files are still used
    assert verify(ws, workspace=True).ok


def test_a_file_of_this_key_without_a_code_version_is_used_and_rewritten_to_record_it(ws, mlp_backbone) -> None:
    recs = records()
    train(ws, mlp_backbone, "a", recs)
    rel, file = only_file(ws)
    assert file.code is not None
    apply(ws, Change("training", writes=[FileWrite(rel, dataclasses.replace(file, code=None).encode(),
                                                   gram_cache.LABEL)]))  # as written before versions were recorded
    assert train(ws, mlp_backbone, "b", recs) == {"hits": 32, "misses": 0, "file": "written"}
    assert only_file(ws)[1].code == file.code and same_deltas(ws, "a", "b")


def test_a_link_planted_in_the_cache_is_listed_not_followed_and_stops_training(ws, mlp_backbone,
                                                                               tmp_path: Path) -> None:
    recs = records()
    train(ws, mlp_backbone, "a", recs)
    rel, _ = only_file(ws)
    planted = ws.root / gram_cache.CACHE_DIR / ("d" * 32) / "toy" / "s0.safetensors"
    planted.parent.mkdir(parents=True)
    planted.symlink_to(tmp_path)  # outside the workspace
    assert gram_cache.cache_files(ws) == sorted([rel, ws.relative(planted.parent) + "/s0.safetensors"])
    with pytest.raises(WorkspaceError, match="does not verify .*s0.safetensors is a symbolic link to a folder .*"
                                             "remove it"):
        train(ws, mlp_backbone, "b", recs)
    planted.unlink()
    ws.resolve_integrity_failures("a link put in the cache by hand, removed")
    assert train(ws, mlp_backbone, "b", recs) == {"hits": 32, "misses": 0, "file": "unchanged"}


def test_a_tombstoned_records_gram_is_never_offered(ws, mlp_backbone) -> None:
    train(ws, mlp_backbone, "a", records())
    rel, file = only_file(ws)
    logged = gram_cache.logged_digests(ws)
    key = gram_cache.GramKey(file.key, {})
    job = gram_cache.prepare(ws, key, "toy", "s0", file.commitments, {file.commitments[3]}, logged)
    assert job.path == rel and job.known.index == tuple(i for i in range(32) if i != 3) and job.note is None
    other = gram_cache.GramKey(file.key[:32] + "0" * 32, {})  # same folder, another key: not used
    assert gram_cache.prepare(ws, other, "toy", "s0", file.commitments, set(), logged).known.index == ()


def fresh_features(backbone, trainable: str | None, recs: RecordSet) -> torch.Tensor:
    return linearize(backbone.build(), trainable).features(recs.inputs)


def with_features(ws: Workspace, features: torch.Tensor | None) -> None:
    """The cache file rewritten through the commit path (as the tool would) with these features."""
    rel, file = only_file(ws)
    apply(ws, Change("training", writes=[FileWrite(rel, dataclasses.replace(file, features=features).encode(),
                                                   gram_cache.LABEL)]))


def test_the_frozen_prefix_features_are_kept_and_a_later_run_trains_on_them_without_the_prefix(
        ws, mlp_backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    """A retraining (or sweep) of a shard skips the prefix's forward: the kept features are what it trains on."""
    recs = records()
    train(ws, mlp_backbone, "a", recs)
    assert features_used(ws) == {"hits": 0, "misses": 32}
    _, file = only_file(ws)
    assert torch.equal(file.features, fresh_features(mlp_backbone, None, recs))
    from dp_tangent.tangent.model import TangentModel

    ran = []
    prefix = TangentModel.features
    monkeypatch.setattr(TangentModel, "features", lambda self, x: ran.append(len(x)) or prefix(self, x))
    assert train(ws, mlp_backbone, "b", recs) == {"hits": 32, "misses": 0, "file": "unchanged"}
    # the prefix ran on no batch of the shard, only on the one- and two-row probes of the model's output shape
    assert features_used(ws) == {"hits": 32, "misses": 0} and max(ran) <= 2
    assert same_deltas(ws, "a", "b")
    with_features(ws, 3 * file.features)  # as if the tool had kept other features: they are what the suffix sees
    train(ws, mlp_backbone, "c", recs)
    assert features_used(ws) == {"hits": 32, "misses": 0} and not same_deltas(ws, "a", "c") and max(ran) <= 2
    assert verify(ws, workspace=True).ok


def test_a_changed_input_computes_its_features_alone(ws, mlp_backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    train(ws, mlp_backbone, "a", records())
    from dp_tangent.tangent.model import TangentModel

    ran = []
    prefix = TangentModel.features
    monkeypatch.setattr(TangentModel, "features", lambda self, x: ran.append(len(x)) or prefix(self, x))
    changed = records(changed=5)
    train(ws, mlp_backbone, "b", changed)
    assert features_used(ws) == {"hits": 31, "misses": 1} and max(ran) <= 2  # probes, and the changed row
    assert torch.allclose(only_file(ws)[1].features, fresh_features(mlp_backbone, None, changed), atol=1e-6)


def train_keeping(ws: Workspace, backbone, name: str, recs: RecordSet, keep: bool | None,
                  trainable: str | None = None) -> dict:
    run = ws.train_all(backbone, trainable, [ShardJob(name, "s0", recs)], data_source="toy", privacy=CLIPPED,
                       config=dataclasses.replace(SEEDED, keep_features=keep))
    assert not run.failed, run.failed
    return run.gram_cache[name]


def test_a_file_without_features_gets_them_and_keep_features_false_drops_them_for_good(ws, mlp_backbone) -> None:
    """A file written before features were kept is rewritten with them; a run of ``keep_features=False`` rewrites
    the file without them, marked declined, and so do the shard's files under other selections. Later runs that
    do not say (a retraining after a deletion has no recipe) keep none; only ``keep_features=True`` keeps them
    again (review 56: the setting lived in each component, and whichever was retrained last won)."""
    recs = records()
    train(ws, mlp_backbone, "a", recs)
    kept = only_file(ws)[1].features
    with_features(ws, None)
    assert train(ws, mlp_backbone, "b", recs) == {"hits": 32, "misses": 0, "file": "written"}
    assert features_used(ws) == {"hits": 0, "misses": 32} and torch.equal(only_file(ws)[1].features, kept)
    train(ws, mlp_backbone, "other", recs, "blocks[-1:]")  # another selection: another file holding features
    own, other = cache_file_of(ws, "a"), cache_file_of(ws, "other")
    assert own != other and gram_cache.read(ws, other, gram_cache.logged_digests(ws))[0].features is not None
    # stripped (and marked) with the decline's record, before the run: its own completion finds nothing to change
    assert train_keeping(ws, mlp_backbone, "c", recs, False) == {"hits": 32, "misses": 0, "file": "unchanged",
                                                                 "features": "declined"}
    logged = gram_cache.logged_digests(ws)
    for rel in (own, other):
        file = gram_cache.read(ws, rel, logged)[0]
        assert file.features is None and file.declined, rel
    assert same_deltas(ws, "a", "c")
    assert train_keeping(ws, mlp_backbone, "d", recs, None) == {"hits": 32, "misses": 0, "file": "unchanged",
                                                                "features": "declined"}
    from datetime import datetime, timezone

    from dp_tangent.workspace.deletion_requests import DeletionRequest
    from dp_tangent.workspace.forget import forget

    forget(ws, DeletionRequest("req-1", ("rec-3",), datetime(2026, 12, 1, tzinfo=timezone.utc)), retrain=True,
           shard_records=lambda meta: recs.subset([i for i in range(32) if i != 3]))
    assert gram_cache.read(ws, own, gram_cache.logged_digests(ws))[0].features is None  # every retraining declined
    assert train_keeping(ws, mlp_backbone, "e", recs.subset(list(range(4, 32))), True)["features"] == {
        "hits": 0, "misses": 28}
    assert gram_cache.read(ws, own, gram_cache.logged_digests(ws))[0].features is not None
    assert verify(ws, workspace=True).ok


def test_a_decline_strips_the_shards_files_before_the_run_so_a_failed_run_leaves_none(ws, mlp_backbone,
                                                                                       monkeypatch) -> None:
    """Review 58: the decline was recorded before the run and the files stripped after it: a run that failed in
    between left the shard declined and its files under other selections holding features for good."""
    from dp_tangent.workspace import data_sources

    recs = records()
    train(ws, mlp_backbone, "a", recs, "blocks[-1:]")
    from dp_tangent.training import sgd

    monkeypatch.setattr(sgd, "_fit_private_gram", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop")))
    run = ws.train_all(mlp_backbone, None, [ShardJob("b", "s0", recs)], data_source="toy", privacy=CLIPPED,
                       config=dataclasses.replace(SEEDED, keep_features=False))
    assert run.failed and data_sources.features_declined(ws, "toy") == {"s0"}
    assert all(gram_cache.read(ws, rel, gram_cache.logged_digests(ws))[0].features is None
               for rel in gram_cache.cache_files(ws))
    assert verify(ws, workspace=True).ok


def test_a_declined_shard_stays_declined_when_its_cache_file_is_replaced(ws, mlp_backbone, monkeypatch) -> None:
    """Review 57: the decline lived in the cache file, which an upgrade of the code (another key: the old file is
    removed as superseded), another selection or a removal replaces; a retraining then kept features again. It is
    the data source's, in the registry."""
    from dp_tangent.workspace import data_sources

    recs = records()
    train_keeping(ws, mlp_backbone, "a", recs, False)
    assert data_sources.features_declined(ws, "toy") == {"s0"}
    (entry,) = [e for e in ws.audit.entries() if e.operation == "data_source"
                and e.parameters.get("features") == "declined"]
    assert entry.parameters["shards"] == ["s0"]
    current = gram_cache.gram_code_version()
    monkeypatch.setattr(gram_cache, "gram_code_version", lambda: {**current, "sources_sha256": "1" * 64})
    assert train_keeping(ws, mlp_backbone, "b", recs, None)["features"] == "declined"  # a new key: still declined
    assert all(gram_cache.read(ws, rel, gram_cache.logged_digests(ws))[0].features is None
               for rel in gram_cache.cache_files(ws))
    assert train_keeping(ws, mlp_backbone, "c", recs, None, "blocks[-1:]")["features"] == "declined"
    train_keeping(ws, mlp_backbone, "d", recs, True)
    assert data_sources.features_declined(ws, "toy") == frozenset()
    assert train_keeping(ws, mlp_backbone, "e", recs, None, "blocks[-1:]")["features"] == {"hits": 0, "misses": 32}
    assert verify(ws, workspace=True).ok


def cache_file_of(ws: Workspace, component: str) -> str:
    """The gram-cache file the component's completion entry wrote."""
    entry = next(e for e in ws.audit.entries() if e.parameters.get("component") == component
                 and any(a.path.startswith(gram_cache.CACHE_DIR) for a in e.outputs))
    (rel,) = [a.path for a in entry.outputs if a.path.startswith(gram_cache.CACHE_DIR)]
    return rel


def test_features_above_the_cache_limit_are_not_kept(ws, mlp_backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    from dp_tangent.training import sgd

    monkeypatch.setattr(sgd, "FEATURE_CACHE_MAX_BYTES", 32 * 8 * 4 - 1)  # one byte short of the shard's features
    assert train(ws, mlp_backbone, "a", records()) == {"hits": 0, "misses": 32, "file": "written"}
    assert features_used(ws).startswith("not kept: 0.0 MiB for the shard, above the cache's limit of 0.000")
    assert only_file(ws)[1].features is None and not only_file(ws)[1].declined  # the next run tries again


def test_a_tombstoned_records_features_go_with_its_gram(ws, mlp_backbone) -> None:
    recs = records()
    train(ws, mlp_backbone, "a", recs)
    writes, removals = gram_cache.without_records(ws, {commit("rec-3", ws.manifest_key())})
    apply(ws, Change("tombstoned", writes=writes, removals=removals))
    _, file = only_file(ws)
    keep = [i for i in range(32) if i != 3]
    assert len(file.commitments) == len(file.features) == 31
    assert torch.equal(file.features, fresh_features(mlp_backbone, None, recs)[keep])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_deletion_rewrites_a_cache_file_from_numpy_arrays_as_torch_would(ws, mlp_backbone, dtype) -> None:
    """`forget` without retraining reads and rewrites cache files as numpy arrays (it imports no torch): the same
    tensors, header and metadata as from torch tensors; features numpy cannot hold (bfloat16) keep the file torch's.
    (Not the same bytes: safetensors orders a file's metadata keys as it pleases, from one call to the next.)"""
    import json

    import numpy as np
    from safetensors.torch import load

    train(ws, mlp_backbone, "a", records())
    rel, file = only_file(ws)
    apply(ws, Change("training", writes=[FileWrite(rel, dataclasses.replace(file, features=file.features.to(dtype))
                                                   .encode(), gram_cache.LABEL)]))
    data = (ws.root / rel).read_bytes()
    as_arrays, as_tensors = gram_cache._decode(data, arrays=True), gram_cache._decode(data)
    assert isinstance(as_arrays.grams, np.ndarray) is (dtype is torch.float32)
    assert as_arrays.commitments == as_tensors.commitments and as_arrays.digests == as_tensors.digests
    keep = [i for i in range(32) if i not in (3, 7)]
    a, t = as_arrays.encode(keep), as_tensors.encode(keep)

    def header(blob: bytes) -> dict:
        return {k: v for k, v in json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")]).items()
                if k != "__metadata__"}

    assert header(a) == header(t) and gram_cache._metadata(a) == gram_cache._metadata(t)
    loaded_a, loaded_t = load(a), load(t)
    assert loaded_a.keys() == loaded_t.keys() and all(torch.equal(loaded_a[k], loaded_t[k]) for k in loaded_a)
    assert torch.equal(loaded_a["grams"], file.grams[keep]) and loaded_a["features"].dtype == dtype
    writes, removals = gram_cache.without_records(ws, {commit("rec-3", ws.manifest_key())})
    assert not removals and gram_cache._decode(writes[0].data).commitments == tuple(
        c for i, c in enumerate(file.commitments) if i != 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_cached_features_of_another_dtype_than_the_model_s_are_computed_again(ws, mlp_backbone, dtype) -> None:
    """Review 88: features of another dtype in a logged cache file stopped the run after its budget was reserved
    ("mat1 and mat2 must have the same dtype"): they are not offered, and computed again; the Thetas still hit."""
    recs = records()
    train(ws, mlp_backbone, "a", recs)
    rel, file = only_file(ws)
    apply(ws, Change("training", writes=[FileWrite(rel, dataclasses.replace(file, features=file.features.to(dtype))
                                                   .encode(), gram_cache.LABEL)]))
    use = ws.train_all(mlp_backbone, None, [ShardJob("b", "s0", recs)], data_source="toy", privacy=CLIPPED,
                       config=SEEDED).gram_cache["b"]
    assert (use["hits"], use["misses"], use["features"]) == (32, 0, {"hits": 0, "misses": 32})
    assert same_deltas(ws, "a", "b") and only_file(ws)[1].features.dtype == torch.float32  # rewritten as computed


def test_a_cache_file_with_malformed_features_is_not_used(ws, mlp_backbone) -> None:
    recs = records()
    train(ws, mlp_backbone, "a", recs)
    rel, file = only_file(ws)
    data = gram_cache.GramFile(file.key, file.commitments, file.digests, file.grams, file.code,
                               file.features).encode()
    from safetensors.torch import load, save

    tensors = load(data)
    tensors["features"] = tensors["features"][:5]  # not one row per record
    apply(ws, Change("training", writes=[FileWrite(rel, save(tensors, metadata=gram_cache._metadata(data)),
                                                   gram_cache.LABEL)]))
    assert "not a readable gram cache file" in gram_cache.read(ws, rel, gram_cache.logged_digests(ws))[1]
    use = ws.train_all(mlp_backbone, None, [ShardJob("b", "s0", recs)], data_source="toy", privacy=CLIPPED,
                       config=SEEDED).gram_cache["b"]
    assert (use["hits"], use["misses"], use["features"]) == (0, 32, {"hits": 0, "misses": 32})
    assert same_deltas(ws, "a", "b")


def test_the_precompute_reports_its_progress(mlp_backbone) -> None:
    tangent = linearize(mlp_backbone.build(), None)
    seen: list[tuple[int, int]] = []
    per_example_grams(tangent, records(10).inputs, from_features=False, batch_size=4,
                      progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 10) and seen[-1] == (10, 10) and len(seen) >= 3
    with precompute_progress(lambda done, total: seen.append((-done, total))):
        per_example_grams(tangent, records(3).inputs, from_features=False)
    assert seen[-1] == (-3, 3)


def test_cli_train_again_then_forget_retrain_reuses_the_rest_and_the_release_has_no_cache(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_npz(Path("rows.npz"))
    recipe = write_recipe(Path("rows.yaml"), mlp_recipe({"npz": {"path": "rows.npz"}}, in_features=6, classes=2,
                                                        source="rows", budget={"epsilon": 100, "delta": 1e-4},
                                                        training={"epochs": 1, "batch_size": 64, "lr": 0.2},
                                                        shards={"count": 1}, privacy={"epsilon": 2, "delta": 1e-4}))
    code, out, err = run_cli(capsys, "train", "--init", str(recipe), "-w", "ws", "--executor", "serial")
    assert code == 0, err
    assert "from the workspace's cache" not in out
    ws = Workspace.open("ws")
    files = gram_cache.cache_files(ws)
    assert len(files) == 1 and files[0].endswith("/rows/shard-0.safetensors")
    code, out, err = run_cli(capsys, "train", "--init", str(recipe), "--name", "again", "-w", "ws", "--executor", "serial")
    assert code == 0, err
    size = len(ws.load_component("rows-shard-0").metadata.manifest.commitments)
    assert (f"again-shard-0: NTK Grams of {size} record(s) from the workspace's cache, 0 computed; "
            f"frozen-prefix features of {size}") in out
    assert gram_cache.cache_files(ws) == files

    from dp_tangent.recipes import load_recipe

    _, shards = load_recipe(recipe).load_data()
    victim = shards[0].record_ids[0]
    doomed = commit(victim, ws.manifest_key())
    code, out, err = run_cli(capsys, "forget", victim, "--request-id", "req-1", "--retrain", "-w", "ws")
    assert code == 0, err
    spent = ws.ledger.shard_spend("rows", "shard-0", delta=1e-4).epsilon  # both runs, and both retrainings
    assert (f"rows/shard-0: spent epsilon {fmt_eps(spent)} of its budget 100 at delta 0.0001, "
            f"{fmt_remaining(100, fmt_eps(spent))} left") in out
    assert out.count("rows/shard-0: spent epsilon") == 1  # review 84: once per retrained component, the same line
    entries = ws.audit.entries()
    (tombstoned,) = [e for e in entries if e.operation == "tombstoned"]
    assert tombstoned.parameters["gram_cache_files"] == {"rewritten": 1, "removed": 0}
    assert [a.path for a in tombstoned.outputs if a.path in files] == files  # the Theta went in the same change
    retrained = [e.parameters["gram_cache"] for e in entries if e.operation == "retraining"
                 and e.parameters["status"] == "completed"]
    assert retrained == [{"hits": size - 1, "misses": 0, "file": "unchanged",  # rows and again
                          "features": {"hits": size - 1, "misses": 0}}] * 2  # the prefix ran on none of them
    held = gram_cache.read(ws, files[0], gram_cache.logged_digests(ws))[0].commitments
    assert doomed not in held and len(held) == size - 1
    code, out, err = run_cli(capsys, "audit", "verify", "-w", "ws")
    assert code == 0, out + err

    code, out, err = run_cli(capsys, "release", "rows", "-o", "bundle", "-w", "ws")
    assert code == 0, err
    bundle = tmp_path / "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == ["deltas.safetensors", "release.json"]
    assert "gram" in (bundle / "release.json").read_text()  # named among what is left out, nothing of it put in
    assert b"cache/grams" not in b"".join(p.read_bytes() for p in bundle.iterdir())


def test_a_missing_cache_does_not_stop_a_deletion_and_is_logged_removed(ws, mlp_backbone) -> None:
    """Review: with cache/grams deleted (derived files, rebuilt on demand), every deletion was refused as if a
    component were away. The tombstoning now logs the missing cache files as removed."""
    import shutil
    from datetime import datetime, timezone

    from dp_tangent.workspace.deletion_requests import DeletionRequest
    from dp_tangent.workspace.forget import forget

    train(ws, mlp_backbone, "a", records())
    rel, _ = only_file(ws)
    shutil.rmtree(ws.root / "cache")
    assert ws.audit.verify().ok  # a missing derived file is not a problem
    result = forget(ws, DeletionRequest("req-1", ("rec-3",), datetime(2026, 12, 1, tzinfo=timezone.utc)))
    assert result.found and ws.audit.verify().ok and not ws.audit.verify().missing_artifacts
    tombstoning = next(e for e in ws.audit.entries() if e.operation == "tombstoned")
    assert any(a.path == rel and a.sha256 is None for a in tombstoning.outputs)
