"""Release bundles: what leaves the workspace -- a composed model's deltas, the reference of its base
model and its privacy statement, and nothing else that depends on the data.

``DIR/deltas.safetensors`` holds the composed deltas (base-model parameter names); ``DIR/release.json``
the base model's spec, theta0's sha256, the ``trainable`` selection, the deltas' digests and the
guarantee (the format, and loading a bundle where it was sent: :mod:`dp_tangent.components.release_bundle`);
a theta0 read from a checkpoint file comes along as ``DIR/base-checkpoint.safetensors`` (its tensors alone).
The guarantee:
(epsilon, delta) per record under add-or-remove-one, covering every run that read any of the model's
records -- stated as the shards' budgets, which the ledger enforces for every record:
the exact figure (:meth:`privacy_accounting.Ledger.model_guarantee`) is a function of the shard
sizes through q and T, so printing it would reveal whether one record was added. Left out on purpose:
record manifests and commitments, record counts, sampling rates, step counts and noise multipliers
(each is set from a shard's size), seeds and keys, component files, per-record figures and the
workspace's cache of per-record NTK Grams (``cache/grams/``, derived from the records). The
bundle is written to a new directory outside the workspace, atomically (a temporary sibling
renamed into place), and the release is appended to the audit log with the bundle's digests.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from privacy_accounting import ModelShardGuarantee
from privacy_accounting.composition import record_shards_at
from privacy_accounting.figures import fmt_eps, fmt_set

from ..components.component import (RELATION, RELATION_SIZE_PUBLIC, deltas_digest, guarantee_shards, sizes_public,
                                    tensors_bytes)
from ..components.release_bundle import (BASE_CHECKPOINT, DELTAS_FILE, FORMAT, NO_RELATION, STATEMENT_FILE,
                                         ReleasedBase, ReleaseError, ReleasedPrivacy, ReleaseStatement, caveats,
                                         read_statement)
from ..interrupts import deferred_interrupts
from ..io import atomic_write_bytes, atomic_write_text, fsync_dir, sha256_file, written_by_killed_write
from .commit import ChangeCommittedError
from .names import WorkspaceError

if TYPE_CHECKING:
    from .store import Workspace

def _privacy(ws: "Workspace", model: str) -> ReleasedPrivacy:
    guarantee = ws.ledger.model_guarantee(model)
    sources = sorted({s.data_source for s in guarantee.shards})
    units = sorted({ws.ledger.data_source(s).unit.value for s in sources}) or ["record"]
    unit = " and ".join(units)
    covers = ("every training run that read any record of the model, including runs of components later removed "
              "or feeding other models; composing components is post-processing and adds nothing")
    if not math.isfinite(guarantee.epsilon):
        return ReleasedPrivacy(differentially_private=False, epsilon=None, delta=None,
                               neighbouring_relation=NO_RELATION, unit=unit, accountant="non-private", covers=covers,
                               statement=f"Model {model!r} has NO differential-privacy guarantee: a non-private run "
                                         "read some of its records.")
    epsilon, delta = _budget_bound(ws, model, guarantee.shards)
    public_sizes = sizes_public(ws.ledger, guarantee_shards(guarantee))
    bound, slack = fmt_set(epsilon), fmt_set(delta)
    statement = (f"Model {model!r} is (epsilon <= {bound}, delta <= {slack})-differentially private for each "
                 f"{unit} of its training data: adding or removing any one {unit} changes the probability of any "
                 f"outcome computed from these deltas by at most a factor e^{bound} (plus {slack}). These are "
                 "the privacy budgets of its shards, which the ledger enforces for every record; the exact figure "
                 "stays in the workspace, as it depends on the shards' sizes. The bound covers " + covers + ".")
    if public_sizes:
        statement += (" Some of these runs were planned from their shard's own record count (no planned_shard_size "
                      "was stated): their sampling rate, steps, noise and batch mean follow that count, so for them "
                      "the guarantee holds only with the shard sizes taken as public: the deltas can reveal a shard's "
                      f"size, and so whether one {unit} is in it.")
    return ReleasedPrivacy(differentially_private=True, epsilon=epsilon, delta=delta,
                           neighbouring_relation=RELATION_SIZE_PUBLIC if public_sizes else RELATION,
                           unit=unit, accountant="budget (upper bound on every accountant's figure)", covers=covers,
                           statement=statement)


def _input_shape(ws: "Workspace", components: Sequence[str]) -> list[int] | None:
    """One input's shape as the data sources of ``components`` prepare it (fixed by their settings), if they do."""
    from ..components.component import read_metadata
    from .data_sources import input_shape

    shape = input_shape(ws, dict.fromkeys(read_metadata(ws.component_path(c)).data_source for c in components))
    return None if shape is None else list(shape)


def _budget_bound(ws: "Workspace", model: str, shards: Sequence[ModelShardGuarantee]) -> tuple[float, float]:
    """(epsilon, delta): the largest budget of the model's shards, once the ledger's exact per-record
    figure is checked against it. The exact figure is a function of the shard sizes (through q and T),
    so printing it would tell one record's presence; the budget is set by the operator, not the data."""
    budgets = {}
    for shard in shards:
        budget = ws.ledger.budget(shard.data_source, shard.shard)
        if budget is None:
            raise WorkspaceError(f"shard {shard.data_source}/{shard.shard} of model {model!r} has no privacy budget; a "
                                 "release states the budgets, a bound that does not depend on the data: set one with "
                                 f"`dp-tangent budget set {shard.data_source} EPSILON`")
        budgets[(shard.data_source, shard.shard)] = budget
    epsilon = max(b.epsilon for b in budgets.values())
    delta = max(b.delta for b in budgets.values())
    exact = ws.ledger.model_guarantee(model, delta=delta)
    if exact.epsilon > epsilon:
        raise WorkspaceError(f"model {model!r} has spent epsilon {fmt_eps(exact.epsilon)} at delta {fmt_set(delta)}, "
                             f"above its shards' budget {fmt_set(epsilon)} (a budget lowered after training); it "
                             "cannot be released under that budget")
    limits = {key: ws.ledger.budget(*key) for key, _ in exact.record_shards}
    held_there = record_shards_at(exact, lambda key: limits[key].delta if limits[key] else None,
                                  lambda at: ws.ledger.model_guarantee(model, delta=at))
    for (source, shard), (_, records_spent) in held_there.items():  # each budget of a shard holding them binds them
        budget = limits[(source, shard)]
        if budget is None:  # nothing would bound further runs on them there (the report says "no budget set")
            raise WorkspaceError(f"records of model {model!r} are also on shard {source}/{shard}, which has no privacy "
                                 "budget: nothing bounds further runs on them there; set one with `dp-tangent budget "
                                 f"set {source} EPSILON`")
        if (source, shard) in budgets:  # a shard it draws on: the shard's own spend, as its report verdict reads
            spent = ws.ledger.shard_spend(source, shard, budget.delta).epsilon
        else:  # reached through an allowed overlap: what the model's records held there have spent
            spent = records_spent.epsilon
        if spent > budget.epsilon:
            held = (f"shard {source}/{shard} of model {model!r}, whose records have" if (source, shard) in budgets
                    else f"records of model {model!r} are also on shard {source}/{shard}, where they have")
            raise WorkspaceError(f"{held} spent epsilon {fmt_eps(spent)} at delta {fmt_set(budget.delta)}, above its "
                                 f"budget {fmt_set(budget.epsilon)}; it cannot be released under that budget")
    return epsilon, delta


def released_shards(ws: "Workspace") -> dict[tuple[str, str], list[str]]:
    """(data source, shard) -> the models released with records of it (their release statements bound every later run
    on those records by the budgets they stated): the shards their components ran on, and the shards whose runs
    read some of those records too (an overlap allowed on purpose)."""
    held: dict[tuple[str, str], list[str]] = {}
    for entry in (e for e in ws.audit.entries() if e.operation == "release"):
        model = str(entry.parameters.get("model"))
        shards = {(e.data_source, e.shard) for c in entry.parameters.get("components") or ()
                  for e in ws.ledger.events(component=c)}
        if ws.ledger.overlap_possible():
            shards |= {reader for key in list(shards) for reader in ws.ledger.shard_spend_and_readers(*key, 1e-5)[1]}
        for key in shards:
            models = held.setdefault(key, [])
            if model not in models:
                models.append(model)
    return held


def _readable(path: Path) -> None:
    """A bundle is meant to be read by others: the modes a new file or folder gets under the umask (the temporary
    folder and atomic writes make them private)."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def _umask() -> int:
    """The process's umask, read without setting it where Linux says it (setting it is not thread-safe)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def destination(out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir`` as the log names a release's destination: absolute, its folder resolved as the system resolves
    it (links, then ``..``: resolving ``..`` by name would name another folder than the one written when a link
    precedes it), its own name kept (a link there is refused)."""
    path = Path(out_dir).expanduser().absolute()
    if path.name in ("", ".", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


def _checkdestination(ws: "Workspace", out_dir: Path) -> Path:
    target = destination(out_dir)
    if target.is_symlink():
        raise WorkspaceError(f"{out_dir} is a symbolic link; a release goes to a new directory of its own")
    root = ws.root.resolve()
    if target.resolve() == root or root in target.resolve().parents:
        raise WorkspaceError(f"{out_dir} is inside the workspace {ws.root}: a release must leave it; choose a "
                             "directory outside")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise WorkspaceError(f"{out_dir} already exists and is not an empty directory; choose a new one")
    return target


def release(ws: "Workspace", model: str, out_dir: str | os.PathLike[str], *, operator: str | None = None,
            allow_non_private: bool = False) -> ReleaseStatement:
    """Write ``model``'s release bundle to the new directory ``out_dir`` and log the release.

    A model some non-private run fed is refused unless ``allow_non_private`` (its statement then
    says it has no guarantee).
    """
    operator = operator or getpass.getuser()
    with ws.lock():
        finished = _finish_interrupted(ws, model, destination(out_dir))
        if finished is not None:
            return finished
        target = _checkdestination(ws, Path(out_dir))
        check = ws.audit.verify()
        if not check.ok:  # never put a DP statement on files the log cannot vouch for
            raise WorkspaceError(f"the workspace does not verify ({check.first_bad}); run `dp-tangent audit verify` "
                                 "and resolve it before releasing")
        record, deltas = ws.load_model(model, arrays=True)  # torch is imported only to rebuild a checkpoint's theta0
        _check_no_deleted_records(ws, model, record.component_names)
        privacy = _privacy(ws, model)
        if not privacy.differentially_private and not allow_non_private:
            raise WorkspaceError(f"model {model!r} has no differential-privacy guarantee (a non-private run read "
                                 "its records); refusing to release it (allow_non_private=True, or the CLI's "
                                 "--non-private, releases it labelled as such)")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _readable(staging)
            deltas_path = staging / DELTAS_FILE
            atomic_write_bytes(deltas_path, tensors_bytes(deltas, {"format": FORMAT}))
            spec, base_files = _base_in_bundle(record.base, record.base_weights_sha256, staging)
            statement = ReleaseStatement(
                model=model, released_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                base=ReleasedBase(spec=spec, weights_sha256=record.base_weights_sha256, trainable=record.trainable,
                                  files=base_files, input_shape=_input_shape(ws, record.component_names)),
                deltas_sha256=deltas_digest(deltas), deltas_file_sha256=sha256_file(deltas_path), privacy=privacy,
                caveats=caveats(privacy.neighbouring_relation == RELATION_SIZE_PUBLIC,
                                private=privacy.differentially_private) + _local_base(spec))
            atomic_write_text(staging / STATEMENT_FILE, statement.model_dump_json(indent=2) + "\n")
            digests = {name: sha256_file(staging / name) for name in statement.files()}
            for name in digests:
                _readable(staging / name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # logged before the bundle is in place: a bundle may be logged and not moved (the error then says where it
        # waits; killed, the same release asked again moves it), never moved and not logged; Ctrl-C waits for both
        with deferred_interrupts():
            try:
                ws.record_release(model, destination=str(target), operator=operator, bundle=digests)
            except ChangeCommittedError as err:  # logged by the next command, so in place now (reviews 115, 116:
                try:                             # any command then logged a release whose bundle was hidden)
                    _move_into_place(staging, target)
                except OSError:
                    raise WorkspaceError(f"{err.cause} -- the release of {model!r} to {target} passed its commit "
                                         f"point, so it is not lost, and its bundle is complete in {staging}: once "
                                         f"this is resolved, release the same model to {target} again, which moves "
                                         "the bundle there") from err
                raise WorkspaceError(f"{err.cause} -- the release of {model!r} to {target} passed its commit point and "
                                     "its bundle is in place; its log entry is written by the next command that is "
                                     "not a check (e.g. `dp-tangent requests list`)") from err
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            try:
                _move_into_place(staging, target)
            except OSError as err:
                raise WorkspaceError(f"the release of {model!r} to {target} is logged, but its bundle could not be "
                                     f"moved there ({err.strerror}); it is complete in {staging}: move it to {target}, "
                                     "or release the same model to it again") from None
        return statement


def _base_in_bundle(spec: Mapping[str, object], weights_sha256: str,
                    staging: Path) -> tuple[dict[str, object], dict[str, str]]:
    """The base model's spec as the bundle states it, and the files it adds: theta0, when it comes from a checkpoint
    file, as ``base-checkpoint.safetensors`` named relative to the bundle (a recipient has no access to the
    workspace's paths; theta0 is the base model, which the guarantee takes as public). The file is written afresh
    from the weights alone, never copied: a checkpoint may hold more than its weights (training arguments, paths,
    counts in a ``.pt``'s other keys or a safetensors header, the original file's name inside a ``.pt`` archive), and
    none of that may leave. Refused if the file no longer holds that theta0."""
    if spec.get("checkpoint") is None:
        return dict(spec), {}
    from ..backbones import BackboneSpec, weights_digest  # torch: rebuilding theta0 from its checkpoint
    from ..backbones.weights import loaded_weights
    from ..errors import WeightsError

    source = Path(str(spec["checkpoint"]))
    name = BASE_CHECKPOINT + ".safetensors"
    try:
        with loaded_weights() as loads:  # the checkpoint's tensors as the model took them: its names, its order
            base = BackboneSpec.from_dict(spec).build()
    except (OSError, WeightsError) as err:
        raise WorkspaceError(f"theta0's checkpoint {source} cannot be read ({err}); a release carries theta0, as "
                             "its recipients cannot rebuild the base model without it") from None
    if not loads or weights_digest(base) != weights_sha256:
        raise WorkspaceError(f"theta0's checkpoint {source} no longer holds the weights the model was trained at "
                             "(their sha256 differs); restore that file to release the model")
    # a fresh file under the model's own parameter names (a checkpoint mapped by position keeps none of its own, and
    # safetensors would reorder them): no header metadata, no shared storage (safetensors refuses it)
    atomic_write_bytes(staging / name, tensors_bytes({k: v.detach().clone() for k, v in loads[-1].items()}))
    copied = BackboneSpec.from_dict({**spec, "checkpoint": str(staging / name)})
    if weights_digest(copied.build()) != weights_sha256:
        raise WorkspaceError(f"theta0 rebuilt from the bundle's {name} is not the theta0 the model was trained at; "
                             "the release was not written")
    stated = {**spec, "checkpoint": name}
    if "theta0" in spec:
        stated["theta0"] = BackboneSpec.from_dict(stated).describe()
    return stated, {name: sha256_file(staging / name)}


def _local_base(spec: Mapping[str, object]) -> list[str]:
    """A caveat for a base model read from a local model directory (a transformers ``name`` that is a path): the
    bundle names that path and does not carry the directory."""
    name = spec.get("name")
    if spec.get("family") != "transformers" or not isinstance(name, str) or not Path(name).is_absolute():
        return []
    return [f"The base model is read from the local model directory {name} of the machine that released it; the "
            "bundle does not carry it: a recipient needs the same model at that path (its weights are checked by "
            "their sha256)."]


def _move_into_place(staging: Path, target: Path) -> None:
    if target.exists():
        target.rmdir()  # checked empty
    os.rename(staging, target)
    fsync_dir(target.parent)


def _finish_interrupted(ws: "Workspace", model: str, target: Path) -> ReleaseStatement | None:
    """A release to ``target`` killed after it was logged and before its bundle was moved there left the complete
    bundle in a hidden sibling (``.NAME.xxxxxxxx``): asked for the same model and destination again, it is moved into
    place (not logged twice) if ``target`` is free; a bundle already in place is the answer (nothing new is logged).
    Only bundles whose files have the digests the log recorded for a release of ``model`` to ``target`` count, and
    only while they hold the model as it is now, none of its records deleted since: a waiting bundle of an earlier
    version (the model composed or retrained again, e.g. after a deletion, or withdrawn) is removed, never moved,
    and the release is made afresh. So is a hidden bundle of ``model`` that no entry logged (a release killed before
    it was logged): copies of a model stay nowhere the log does not know of."""
    releases = [e.parameters for e in ws.audit.entries() if e.operation == "release"]
    logged = [p.get("bundle") for p in releases if p.get("destination") == str(target) and p.get("model") == model]
    if not target.parent.is_dir():
        return None
    current = _current_bundle(ws, model)
    anywhere = [p.get("bundle") for p in releases]
    in_place = _released(target, logged)
    if in_place is not None and not current(target):
        in_place = None  # an earlier version's bundle: the destination is taken (_check_destination says so)
    shape = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}")  # tempfile.mkdtemp's, and nothing else
    for staging in sorted(p for p in target.parent.iterdir() if shape.fullmatch(p.name)):
        digests = _released(staging, anywhere)
        if digests is None:  # removed only if no release to any destination logged it
            if _unlogged_bundle_of(staging, model) or _killed_staging(staging):
                shutil.rmtree(staging)
            continue
        if digests not in logged:
            continue  # another destination's or model's logged bundle
        if digests == in_place or not current(staging):
            shutil.rmtree(staging)  # a copy of the bundle in place, or an earlier version's: never moved
            continue
        if in_place is None and not (target.exists() or target.is_symlink()):
            _move_into_place(staging, target)
            return read_statement(target)
    return None if in_place is None else read_statement(target)


def _released(folder: Path, logged: Sequence[object]) -> dict[str, str] | None:
    """The folder's digests if it holds one of the ``logged`` bundles (file name -> sha256), else None."""
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []
    if not names or not any(isinstance(b, dict) and sorted(b) == names for b in logged):
        return None
    digests = {name: sha256_file(folder / name) for name in names}
    return digests if digests in logged else None


def _unlogged_bundle_of(folder: Path, model: str) -> bool:
    """Whether a hidden sibling is a bundle of ``model`` as release stages one (its files and nothing else, in
    ``tempfile``'s folder name for this destination), which no entry logged: what a release killed before logging
    leaves, whatever version of the model it holds (one from before a deletion must not stay)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    names = {p.name for p in folder.iterdir()}
    if not {DELTAS_FILE, STATEMENT_FILE} <= names or any(
            n not in (DELTAS_FILE, STATEMENT_FILE) and not n.startswith(BASE_CHECKPOINT) for n in names):
        return False
    try:
        return read_statement(folder).model == model
    except (ReleaseError, OSError):
        return False


def _killed_staging(folder: Path) -> bool:
    """Whether a hidden sibling is what a release killed while staging left (review 64: the model's deltas, outside
    the workspace, named nowhere): only files a release stages, or their killed atomic writes, and no statement yet
    -- which every logged bundle has, so no release logged it."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    names = [p.name for p in folder.iterdir()]
    placing = [written_by_killed_write(n) or n for n in names]  # a killed atomic write, as the file it was writing
    return STATEMENT_FILE not in names and all(
        n in (DELTAS_FILE, STATEMENT_FILE) or n.startswith(BASE_CHECKPOINT) for n in placing)


@dataclass(frozen=True)
class _Current:
    """Whether a bundle folder holds ``model`` as it is now (its deltas), none of its records deleted since; never,
    once the model is gone (``deltas_sha256`` None)."""

    deltas_sha256: str | None
    clean: bool

    def __call__(self, folder: Path) -> bool:
        try:
            statement = read_statement(folder)
        except (ReleaseError, OSError):
            return False
        return self.clean and self.deltas_sha256 is not None and statement.deltas_sha256 == self.deltas_sha256


def _current_bundle(ws: "Workspace", model: str) -> _Current:
    try:
        record, deltas = ws.load_model(model, arrays=True)
    except WorkspaceError:
        return _Current(None, False)
    try:
        _check_no_deleted_records(ws, model, record.component_names)
        clean = True
    except WorkspaceError:
        clean = False
    return _Current(deltas_digest(deltas), clean)


def _check_no_deleted_records(ws: "Workspace", model: str, components: Sequence[str]) -> None:
    """Refuse a model one of whose components holds a tombstoned record: a deletion that has not finished (its
    retraining failed or was interrupted) would otherwise let the record leave after its erasure was requested."""
    from ..components.component import read_metadata
    from .tombstones import Tombstones

    deleted = Tombstones(ws.root).read()
    for name in components:
        held = sorted({deleted[c].request_id for c in read_metadata(ws.component_path(name)).manifest.commitments
                       if c in deleted})
        if held:
            raise WorkspaceError(f"model {model!r} includes component {name!r}, which holds records of deletion "
                                 f"request(s) {', '.join(held)}, received and not yet served: serve them with "
                                 "`dp-tangent forget` (the ids each was received with, --request-id), then release")
