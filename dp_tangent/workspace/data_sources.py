"""The workspace's registry of data sources (``data-sources.json``): how each is re-read, and what it held.

Raw records stay with the data owner; for each registered source the workspace records *how* to
load it (a value of :mod:`dp_tangent.data.sources`: a path and the recipe's description of the
data, one type per data kind) and, per record, a keyed digest of its content: HMAC under a key
derived from the workspace's manifest key, of the record's id, label and content (file bytes for
images), stored under the record's commitment. Keyed, so that the registry cannot be used to test
a guess of a record's content without the workspace key.

Reloading (retraining after a deletion, ``evaluate``, ``predict``) checks that the source still
holds exactly those records, except records a deletion request removed (the owner may delete their
files); anything else is refused in one line. A component's shard is then the records its own
manifest names, less every tombstoned record: right after any number of deletions on the same
shard, however the remaining files are ordered.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import shlex
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..components.component import ComponentMetadata
from ..components.manifest import commit
from ..data.sources import DigitsSource, ReloadableSource, content_digests, parse_source
from ..errors import DataError, DPTangentError
from ..io import sha256_file
from .id_spellings import HeldIds, canonical, canonical_commitments, tagger
from .tombstones import Tombstones

if TYPE_CHECKING:
    from ..data.kinds import DataSection
    from ..data.records import RecordSet  # torch: loaded only by the commands that read records
    from .store import Workspace

FILE = "data-sources.json"
PUBLIC_SPLIT = "public"
_TAG_CONTEXT = b"dp-tangent data-source content digest v1"

__all__ = ["FILE", "PUBLIC_SPLIT", "DataSourceError", "DigitsSource", "Sources", "check_unchanged",
           "declared_public", "decoding_new", "held_spelling", "read_as_registered", "registered", "registered_test",
           "registry", "relocated", "reload", "shard_records_for", "source_of", "test_records", "typed_id_sources",
           "without_deleted", "without_records"]


class DataSourceError(DPTangentError):
    """A data source cannot be reloaded: not registered, or its records changed since."""


class Content(BaseModel):
    """Keyed content digests of a source's records when it was registered (commitment -> tag), and
    the commitments of its test split then (so that the test split stays the same records when
    deleted ones are later removed from the data)."""

    model_config = ConfigDict(extra="forbid")
    records: int
    tags: dict[str, str]
    test: list[str] = []
    # commitment -> the commitment of its id's canonical spelling (id_spellings), for ids not spelled canonically;
    # None: registered before these were kept (its next registration adds them)
    canonical: dict[str, str] | None = None
    # a table's or text file's keyed sha256 when last registered (None: not a file of rows, or registered before)
    file_tag: str | None = None
    # the commitments of its public table's record ids and of their canonical spellings (None: no public table, or
    # registered before these were kept: the table is read again), which no other source may hold as private
    public: list[str] | None = None
    # an image source's commitment -> keyed digest of the image alone (no id, no label): a byte-identical copy under
    # another name has the same (None: not images, or registered before these were kept: its next registration adds
    # them)
    images: dict[str, str] | None = None


class Sources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: dict[str, dict[str, Any]] = {}  # name -> a registered source value (see data.sources)
    content: dict[str, Content] = {}  # absent for sources registered before digests were recorded
    # name -> the shards whose records' frozen-prefix features the owner declined to keep (keep_features: false);
    # here, not in a cache file, which a new code version or selection replaces (review 57)
    features_declined: dict[str, list[str]] = {}


def features_declined(ws: Workspace, name: str) -> frozenset[str]:
    """The shards of data source ``name`` whose features a run declined to keep, until a run kept them again."""
    return frozenset(_read(ws).features_declined.get(name, ()))


def features_choice(ws: Workspace, name: str, shards: Sequence[str], keep: bool) -> bytes | None:
    """The registry's new content with ``shards`` of ``name`` declined (``keep`` false) or no longer declined
    (``keep`` true), or None if it says so already (written by the caller's change)."""
    sources = _read(ws)
    before = set(sources.features_declined.get(name, ()))
    after = before - set(shards) if keep else before | set(shards)
    if after == before:
        return None
    if after:
        sources.features_declined[name] = sorted(after)
    else:
        sources.features_declined.pop(name, None)
    return (sources.model_dump_json(indent=2) + "\n").encode()


def registry(ws: Workspace) -> Sources:
    """The workspace's data-source registry (empty when none is registered)."""
    return _read(ws)


def _read(ws: Workspace) -> Sources:
    path = ws.root / FILE
    if not path.exists():
        return Sources()
    try:
        return Sources.model_validate_json(path.read_text())
    except ValidationError as err:
        raise DPTangentError(f"{path} is not a valid data-source registry ({err.error_count()} errors)") from err


def _tags(ws: Workspace, records: RecordSet) -> dict[str, str]:
    """commitment -> keyed content tag of each record."""
    return _digested(ws, records)[0]


def _digested(ws: Workspace, records: RecordSet) -> tuple[dict[str, str], dict[str, str] | None]:
    """(commitment -> keyed content tag of each record, in record order; for images, commitment -> keyed tag of the
    image alone, else None), the records read once."""
    key = ws.manifest_key()
    tag_key = _tag_key(key)
    tagged, images = content_digests(records)
    commitments = [commit(r, key) for r in records.record_ids]
    tags = {c: hmac.new(tag_key, d, hashlib.sha256).hexdigest()[:32] for c, d in zip(commitments, tagged)}
    if images is None:
        return tags, None
    return tags, {c: hmac.new(tag_key, b"image\0" + d, hashlib.sha256).hexdigest()[:32]
                  for c, d in zip(commitments, images)}


def registered(ws: Workspace, name: str, source: ReloadableSource) -> bytes | None:
    """The registry's new content with ``source`` registered as ``name`` and the content of its records digested
    (written by the caller's :class:`~dp_tangent.workspace.commit.Change`), or None if it holds that already.

    A source is registered once: registering it again must read its records the same way (its models, their
    reloads and deletions depend on it) -- from another place if its records are all still there, in other shards
    (which leave its records, their ids and its test split as they are) -- and its data may only have gained
    records (its test split keeps the records it was, so that every model is measured on them, and gains the added
    records the split places there); records a deletion request removed are never digested again, whether or not the
    data still holds them. A file of rows another source reads is refused under other ids (:func:`_refuse_rekeyed`)."""
    sources, key = _read(ws), ws.manifest_key()
    source = _decoder_said(source)
    value = source.model_dump(mode="json")
    before = sources.sources.get(name)
    moved = False
    if before is not None:
        was, now = _flat(parse_source(before).model_dump(mode="json")), _flat(value)  # as read now: new defaults
        differ = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k) and not _split_only(k, was, now))
        if set(differ) - _LOCATIONS:
            # another name for the same records is refused as an overlap: the way on is the registration's reading
            same_records = {"data.decoder", "data.record_id", "data.record_ids"}  # refused under any name
            other = "" if set(differ) & same_records else ", or give this data another data_source name"
            raise DataSourceError(f"data source {name!r} is registered to be read otherwise ({', '.join(differ)} "
                                  "differ): its models, reloads and deletions depend on how its records are read; "
                                  f"keep the data section it was registered with{other}")
        moved = bool(differ)
    deleted_spelled = Tombstones(ws.root).canonical()
    deleted = set(deleted_spelled)
    if before is not None:  # its records are read as they were registered, whichever version did it
        source = _as_registered(source)
    records = source.records()
    every, images = _digested(ws, records)  # one per record, in record order
    spelled = canonical_commitments(records.record_ids, key)  # where an id is not spelled canonically
    tags = {c: t for c, t in every.items() if c not in deleted}
    old = sources.content.get(name) if before is not None else None
    if before is None or old is not None:  # (without digests, a source's new records cannot be told apart)
        new_ids = [r for r, c in zip(records.record_ids, every) if c not in deleted and not (old and c in old.tags)]
        _refuse_spaced(name, new_ids)
        _refuse_twice_spelled(name, new_ids)
    # a record deleted by an earlier version whose row the data still holds: its canonical spelling known again
    deleted_spelled.update({c: spelled.get(c, c) for c in every if c in deleted and deleted_spelled[c] is None})
    _refuse_respelled(name, records.record_ids, _held_ids(key, sources, lambda n: f"in data source {n!r}",
                                                          deleted_spelled, _REMOVED))
    own, public_ids = {c: spelled.get(c, c) for c in every}, _public_ids(source)  # (the public table read once)
    _refuse_public_held(name, source, public_ids, sources, own, deleted_spelled, key)
    _refuse_public_elsewhere(name, records.record_ids, own, sources, key)
    if moved and old is None:
        where = was.get("data.path") or was.get("data.root")
        raise DataSourceError(f"data source {name!r} was registered before its records' digests were kept, so its "
                              f"data cannot be checked at a new place; read it from {where}")
    if old is not None:
        differences = _differences(old.tags, tags, deleted, dict(zip(every, records.record_ids)))
        if differences:
            raise _not_as_registered(name, differences, source)
        if images is not None:
            _refuse_copies(name, records.record_ids, images, old, deleted, sources, _tag_key(key))
        if not moved and set(tags) <= set(old.tags) and old.canonical is not None and (images is None or
                                                                                        old.images is not None):
            return None
        added = set(tags) - set(old.tags)
        tags, test = {**old.tags, **tags}, set(old.test)  # the test split keeps the records it was
        if added:  # and gains the added records the split places there, which no shard holds (review 98: unused)
            test_split = source.test_split()
            test |= {c for c in (commit(r, key) for r in (test_split.record_ids if test_split else ())) if c in added}
    else:
        if images is not None:
            _refuse_copies(name, records.record_ids, images, None, deleted, sources, _tag_key(key))
        test_split = source.test_split()  # reads the data again: only for a first registration
        test = {commit(r, key) for r in (test_split.record_ids if test_split else ())}
    file_tag = _refuse_rekeyed(name, source, sources, key)
    sources.sources[name] = value
    sources.content[name] = Content(records=len(tags), tags=tags, test=sorted(test),
                                    canonical={c: s for c, s in spelled.items() if c in tags}, file_tag=file_tag,
                                    public=_public_commitments(public_ids, key),
                                    images=None if images is None else {c: t for c, t in images.items() if c in tags})
    return (sources.model_dump_json(indent=2) + "\n").encode()


def _refuse_copies(name: str, ids: Sequence[str], images: Mapping[str, str], old: Content | None, deleted: set[str],
                   sources: Sources, tag_key: bytes) -> None:
    """No image of data source ``name`` (``images``: commitment -> keyed tag of the image alone, in the order of
    record ``ids``, deleted records read too) is a byte-identical copy of another record's image: of another source,
    of a record a deletion removed whose file the data still holds, or of another record of this source (review
    112: a folder copied with its class folders renamed was new records, each copy trained and charged apart, so
    every printed epsilon understated what the images went through, and a deletion left the copies trained).
    Checked for the records new to the registry, or all of them where it kept no such tags before (an earlier
    version registered them). A deleted image whose file is gone is not recognised: nothing derived from it is
    kept. The refusal names the first copy and its original, and counts the others."""
    known = old.images if old is not None and old.images is not None else {}
    registered = old.tags if old is not None else {}
    record_id = dict(zip(images, ids))
    removed = {tag: c for c, tag in images.items() if c in deleted}  # their files are still in the data
    elsewhere = {tag: (other, c) for other, content in sources.content.items() if other != name and content.images
                 for c, tag in content.images.items()}
    first: dict[str, str] = {}  # tag -> the first record of this source holding it
    found: list[Callable[[], str]] = []  # each copy's refusal, made only for the first
    for commitment, tag in images.items():
        if commitment in deleted:
            continue
        other = first.setdefault(tag, commitment)
        checked = commitment in known  # when it was registered
        held = commitment in registered
        if tag in elsewhere and elsewhere[tag][1] != commitment and not checked:  # the same id there: one record
            found.append(functools.partial(_copied_elsewhere, name, record_id[commitment], elsewhere[tag][0], tag,
                                           held, sources, tag_key))
        elif tag in removed and not checked:
            advice = (f"the workspace holds it as a record: file a deletion request for it too (`dp-tangent forget "
                      f"{shlex.quote(record_id[commitment])} -w WORKSPACE`)" if held else "take it out of the data")
            found.append(functools.partial(str, f"data source {name!r}: image {record_id[commitment]!r} has the same "
                                                f"bytes as {record_id[removed[tag]]!r}, which a deletion request "
                                                f"removed: it would train the deleted image again; {advice}"))
        elif other != commitment and not (checked and other in known):
            copy, original = ((other, commitment) if other not in registered and held
                              else (commitment, other))  # the new one, else the later one
            if copy in registered:  # both: registered by an earlier version
                advice = (f"the workspace holds both as records: file a deletion request for one (`dp-tangent forget "
                          f"{shlex.quote(record_id[copy])} -w WORKSPACE`)")
            else:
                advice = "take it out of the data" if original in registered else "keep one of the two files"
            found.append(functools.partial(str, f"data source {name!r}: image {record_id[copy]!r} has the same bytes "
                                                f"as {record_id[original]!r}{_COPY}; {advice}"))
    if found:
        more = f" ({len(found)} images of it are copies; byte-identical images are one record here)" \
            if len(found) > 1 else ""
        raise DataSourceError(found[0]() + more)


_COPY = (": a copy would be trained and charged as a record of its own, and stay trained after a deletion of the "
         "other")


def _copied_elsewhere(name: str, record_id: str, other: str, tag: str, held: bool, sources: Sources,
                      tag_key: bytes) -> str:
    """The refusal of image ``record_id`` of data source ``name``, a copy of an image data source ``other`` holds
    (``tag``: their images' keyed tag); ``held``: registered already (by an earlier version). The original is named
    where that source's folder still holds it (read now: the registry keeps no ids)."""
    root = (sources.sources.get(other, {}).get("data") or {}).get("root")
    original = _image_with_tag(sources.sources.get(other), tag, tag_key)
    what = f"{original!r} of data source {other!r}" if original else f"an image of data source {other!r}"
    advice = (f"the workspace holds both as records: file a deletion request for one (`dp-tangent forget "
              f"{shlex.quote(record_id)} -w WORKSPACE` for this one)" if held else
              f"take it out of this data: data source {other!r} holds the image already")
    return (f"data source {name!r}: image {record_id!r} has the same bytes as {what}{f' ({root})' if root else ''}"
            f"{_COPY}; {advice}")


def _image_with_tag(entry: dict[str, Any] | None, tag: str, tag_key: bytes) -> str | None:
    """The id of the image of a registered source (its value ``entry``) whose keyed tag is ``tag``, reading its
    folder now, file by file, until found; None where it cannot tell."""
    from ..data.sources import image_digest

    try:
        source = parse_source(entry) if entry is not None else None
        records = source.records() if source is not None else None
        for record_id, digest in image_digest(records) if records is not None else ():
            if hmac.new(tag_key, b"image\0" + digest, hashlib.sha256).hexdigest()[:32] == tag:
                return record_id
    except (DPTangentError, OSError, ValueError):  # moved, unreadable: the source is named all the same
        return None
    return None


def refuse_copied_images(ws: Workspace, name: str, record_sets: Sequence[RecordSet]) -> None:
    """For records given to training directly (the Python API, which registers no loader): refuse any image that is
    a copy of another's, as a registration does (:func:`_refuse_copies`), unless the registry holds every one of
    them as data source ``name``'s already (a recipe's run, just registered: not read twice)."""
    sources, key = _read(ws), ws.manifest_key()
    content = sources.content.get(name)
    given = [records for records in record_sets if _holds_image_files(records)]
    held = content.images if content is not None and content.images is not None else {}
    if all(commit(r, key) in held for records in given for r in records.record_ids):
        return
    images = {c: t for records in given for c, t in (_digested(ws, records)[1] or {}).items()}
    ids = [r for records in given for r in records.record_ids]
    _refuse_copies(name, ids, images, content, set(Tombstones(ws.root).read()), sources, _tag_key(key))


def _holds_image_files(records: RecordSet) -> bool:
    from ..data.images import ImageFiles

    return isinstance(records.inputs, ImageFiles)


def _as_registered(source: ReloadableSource) -> ReloadableSource:
    """``source`` reading its records as a registered source is read (ids not checked for a new registration's
    forms: an earlier version registered them); new records are checked by :func:`registered` itself."""
    data = getattr(source, "data", None)
    if not hasattr(data, "as_registered"):
        return source
    return source.model_copy(update={"data": data.as_registered()})


def _refuse_spaced(name: str, new_ids: Sequence[str]) -> None:
    """No new record's id has spaces around it (one a source registered before holds is read as it is)."""
    spaced = [r for r in new_ids if r != r.strip()]
    if spaced:
        raise DataSourceError(f"data source {name!r}: {len(spaced)} new record id(s) have spaces around them (e.g. "
                              f"{spaced[0]!r}); a deletion request names an id exactly, so remove the spaces in the "
                              "file")


def _refuse_twice_spelled(name: str, new_ids: Sequence[str]) -> None:
    """No two new records are one id spelled twice (``00001`` and ``1``: a table merged with its own re-export), each
    trained as a record of its own while they are one."""
    seen: dict[str, str] = {}
    for record_id in new_ids:
        first = seen.setdefault(canonical(record_id), record_id)
        if first != record_id:
            raise DataSourceError(f"data source {name!r}: record ids {first!r} and {record_id!r} are two spellings of "
                                  "one id (the same record written twice, e.g. a table merged with its re-export); "
                                  "keep one, or give them ids of their own")


def held_spelling(ws: Workspace, record_ids: Iterable[str]) -> tuple[str, str | None, str] | None:
    """The first of ``record_ids`` a registered data source holds under another spelling (:mod:`.id_spellings`, or
    a path written with ``./``, a backslash or from the root): (the id, that spelling, or None where it cannot be
    listed, e.g. ``0017.00``; the source), else None. For a deletion request's ids that no component holds."""
    held = _held_ids(ws.manifest_key(), _read(ws), lambda n: n)  # once for every id
    for record_id in record_ids:
        path = record_id.strip().replace("\\", "/")
        while path.startswith(("./", "/")):
            path = path[1:] if path.startswith("/") else path[2:]
        found = held.other_spelling(record_id) or (held.find(path) if path != record_id else None)
        if found is not None:
            return record_id, *found
    return None


def _held_ids(key: bytes, sources: Sources, where: Callable[[str], str], deleted: Mapping[str, str | None] = {},
              deleted_where: str = "") -> HeldIds:
    """The ids every data source of ``sources`` holds (at ``where(its name)``) and the ``deleted`` ones (commitment ->
    its canonical spelling's, None where unknown: :meth:`~.tombstones.Tombstones.canonical`), as :class:`HeldIds`."""
    held = HeldIds(tagger(key))
    for name, content in sources.content.items():
        held.add(content.tags, where(name), content.canonical)
    known = {c: s for c, s in deleted.items() if s is not None}
    held.add(known, deleted_where, known, deleted=True)
    held.add([c for c, s in deleted.items() if s is None], deleted_where, None, deleted=True)
    return held


_REMOVED = "removed by a deletion request"


def _refuse_respelled(name: str, ids: Iterable[str], held: HeldIds) -> None:
    """No record of ``name`` is another spelling of an id a deletion removed, and no new one of an id the workspace
    holds (in any data source): the same table exported again (pandas reads the id ``00005`` as 5) would otherwise
    be new records, each trained and accounted afresh, and a deleted record trained again (a request naming 17
    where the data holds ``1.7E+1`` deletes nothing, and says so: that record is held here until deleted as
    spelled)."""
    if not held:
        return
    for record_id in ids:
        new = held.other_spelling(record_id)  # None for ids held as spelled (their own, or the overlap rule's)
        other = new or held.deleted_spelling(record_id)
        if other is not None:
            raise _respelled(name, record_id, other, held=new is None)


def _respelled(name: str, record_id: str, other: tuple[str | None, str], *, held: bool,
               retrain: bool = False) -> DataSourceError:
    """The refusal of record ``record_id`` of data source ``name``, another spelling of ``other`` (spelling or None;
    where); ``held``: a record the workspace holds as spelled (whose other spelling a deletion removed);
    ``retrain``: refused retraining its shard (the command it gives retrains too)."""
    spelling, where = other
    written = f"the record id {spelling!r}" if spelling is not None else "a record id"
    if spelling is not None and spelling != record_id and unicodedata.normalize("NFC", spelling) == \
            unicodedata.normalize("NFC", record_id):  # printed alike
        written += (f" (they differ only in Unicode form: {ascii(record_id)} and {ascii(spelling)}, e.g. an accent "
                    "as one character or as a letter and a combining mark)")
    if held:  # registered: its row can be neither renamed nor removed, so deleting it is the way on
        again = " --retrain" if retrain else ""
        advice = (": it is not trained again until deleted as the data spells it (`dp-tangent forget -w WORKSPACE "
                  f"--request-id NEW_ID{again} -- {shlex.quote(record_id)}`), as ids that differ only in spelling are "
                  "one record here, even where the request meant another")
    elif where == _REMOVED:
        advice = (" (if it is that record, take it out of the data: its row of a table, its file of a folder; if it "
                  "is another record, give it an id of its own, e.g. a prefix or another file name)")
    else:
        advice = (" (the same table exported again reads 00005 as 5, or 5 as 5.0): train the data as it was "
                  "registered, with its ids written as they were; if these are other records, give them ids of their "
                  "own (e.g. a prefix)")
    return DataSourceError(f"data source {name!r}: record id {record_id!r} is another spelling of {written} "
                           f"{where}{advice}")


def _refuse_public_held(name: str, source: ReloadableSource, public_ids: Sequence[str], sources: Sources,
                        own: Mapping[str, str], deleted: Mapping[str, str | None], key: bytes) -> None:
    """A table ``name`` declares public (``public_path``: its statistics scale the features and pretrain theta0,
    outside the guarantee) holds no record the workspace holds as a private one, in any data source (``own``: this
    one's, commitment -> its canonical spelling's where that differs), or a deletion removed, as spelled there or
    respelled (review 63: another source's records and a deleted one were taken as public; the table's own check
    compares it with its private table only). ``public_ids``: the record ids of its public table
    (:func:`_public_ids`)."""
    data = getattr(source, "data", None)
    if not public_ids:
        return
    held = _held_ids(key, sources, lambda n: f"a private record of data source {n!r}", deleted,
                     "a record a deletion request removed")
    held.add(own.keys(), f"a private record of data source {name!r}", {c: s for c, s in own.items() if s != c})
    for record_id in public_ids:
        found = held.find(record_id)
        if found is not None:
            spelling, where = found
            what = "" if spelling == record_id else (f" (another spelling of {spelling!r})" if spelling is not None
                                                     else " (another spelling of an id written otherwise there)")
            raise DataSourceError(f"data source {name!r}: the public table {data.public_path} holds the record id "
                                  f"{record_id!r}{what}, {where}; public records must be no private or deleted ones "
                                  "(their statistics and pretraining are outside the guarantee): take it out of the "
                                  "public table")


def _public_ids(source: ReloadableSource) -> list[str]:
    """The record ids of ``source``'s public table (none where it has none)."""
    data = getattr(source, "data", None)
    return data.public_record_ids() if hasattr(data, "public_record_ids") else []


def _public_commitments(ids: Sequence[str], key: bytes) -> list[str] | None:
    """The commitments of public record ``ids`` and of their canonical spellings (None where there are none)."""
    if not ids:
        return None
    return sorted({commit(i, key) for i in ids} | set(canonical_commitments(ids, key).values()))


def _refuse_public_elsewhere(name: str, ids: Sequence[str], own: Mapping[str, str], sources: Sources,
                             key: bytes) -> None:
    """No record of ``name`` (``own``: the commitment of each id, in order -> its canonical spelling's) is in
    another source's public table, whose statistics scale that source's features and may pretrain theta0 without
    noise: no guarantee could cover it here (review 102: only the other order was refused, by
    :func:`_refuse_public_held`)."""
    for other, value in sources.sources.items():
        content, table = sources.content.get(other), (value.get("data") or {}).get(PUBLIC_TABLE)
        if other == name or not table:
            continue
        kept = content.public if content is not None else None  # None: registered before they were kept
        public = set(kept if kept is not None else _public_commitments(_public_ids(parse_source(value)), key) or ())
        for record_id, (commitment, spelling) in zip(ids, own.items()):
            if commitment in public or spelling in public:
                raise DataSourceError(f"data source {name!r}: record {record_id!r} is in the public table of data "
                                      f"source {other!r} ({table}), whose statistics and pretraining took it without "
                                      "noise, so no guarantee can cover it here: leave it out of this data, or, if it "
                                      "is another record, give it an id of its own")


#: A table's public table (its statistics scale the features; it may pretrain theta0).
PUBLIC_TABLE = "public_path"
#: Where a kind's data is: registering a source again may move it there if its records are all still the same (a
#: public table's statistics scale them, so that its records unchanged mean its scaling unchanged).
_LOCATIONS = frozenset({"data.path", "data.root", f"data.{PUBLIC_TABLE}"})


def _split_only(key: str, was: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a source value's ``key`` only chooses the shards: the records, their ids and the test split do not
    depend on it (a recipe kind's ``shards``; the digits' ``shards`` and ``by``, unless a public split, whose
    records depend on the shard count, is declared)."""
    return key.startswith("shards.") or (key in ("shards", "by") and not (was.get("public_split")
                                                                         or now.get("public_split")))


def read_as_registered(ws: Workspace, name: str, data: DataSection) -> DataSection:
    """``data`` (of data source ``name``), read as the workspace registered it: its record ids typed where the
    workspace holds them so (:func:`_typed_where_held`), and, for a source registered already, unchecked for the
    forms a new registration refuses (an earlier version registered them: its records are read as they were), and
    an image folder's hidden images records as registered where the recipe does not say (``hidden_records``: not
    said, or false, reads as the registration; false where the registration holds them is refused as other data) and
    its files decoded as registered where the recipe does not say (``decoder``; another one is refused)."""
    registry = _read(ws)
    data = _typed_where_held(ws, registry, name, data)
    kind = data.source
    if name in registry.sources and hasattr(kind, "as_registered"):
        data = data.model_copy(update={data.kind: kind.as_registered()})
    if hasattr(kind, "hidden_records"):
        was = getattr(parse_source(registry.sources[name]), "data", None) if name in registry.sources else None
        held = getattr(was, "hidden_records", None)
        if was is not None and ((kind.hidden_records is None and held) or (not kind.hidden_records and not held)):
            data = data.model_copy(update={data.kind: data.source.model_copy(update={"hidden_records": held})})
        if kind.decoder is None:  # not said: as registered (None there: the one a new registration records)
            decoder = getattr(was, "decoder", None) or kind.decoding
            data = data.model_copy(update={data.kind: data.source.model_copy(update={"decoder": decoder})})
    return data


def decoding_new(ws: Workspace, name: str, data: DataSection) -> DataSection:
    """``data`` (of data source ``name``) listed and checked for training with only its new records decoded, where
    the workspace registered it with its records' digests and it can tell (an image folder): the others were
    decoded when registered, and :func:`registered` refuses any whose content changed since, before training.
    A second run on a folder of 30k photos decoded all of them again first (review 51)."""
    content, kind = _read(ws).content.get(name), data.source
    if content is None or not hasattr(kind, "decoding_new"):
        return data
    key, held = ws.manifest_key(), set(content.tags)
    return data.model_copy(update={data.kind: kind.decoding_new(lambda record: commit(record, key) in held)})


def _typed_where_held(ws: Workspace, registry: Sources, name: str, data: DataSection) -> DataSection:
    """``data`` reading its record ids typed where the workspace holds them so: a table or text registered before
    ids were read as written keeps the typed form its tombstones and manifests hold (``00017`` as 17). Adopted
    when ``name`` is such a source (wherever its file now is), or when the file's ids, read typed, name records
    such a source holds or a deletion removed (the same data under another name, path or export: on the safe side,
    ids that only read the same typed, ``000`` and ``0``, count as the same record)."""
    kind = data.source
    if getattr(kind, "record_ids_typed", True):
        return data
    typed = data.model_copy(update={data.kind: kind.model_copy(update={"record_ids_typed": True})})
    held = [n for n, stored in _typed(registry).items() if type(stored) is type(kind)]
    if name in held:
        return typed
    if not held:
        return data
    key = ws.manifest_key()
    known = set(Tombstones(ws.root).read()).union(*(registry.content[n].tags for n in held if n in registry.content))
    return typed if any(commit(r, key) in known for r in typed.source.record_ids_only()) else data


def typed_id_sources(ws: Workspace) -> list[str]:
    """The registered sources that hold their record ids typed (see :func:`read_as_registered`)."""
    return sorted(_typed(_read(ws)))


def _typed(registry: Sources) -> dict[str, Any]:
    """Each registered source whose data holds its record ids typed: name -> that data (a table or text kind)."""
    data = {name: getattr(parse_source(value), "data", None) for name, value in registry.sources.items()}
    return {name: d for name, d in data.items() if getattr(d, "record_ids_typed", False)}


def _flat(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested source value's leaves by dotted name (``data.path``)."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}{key}.") if isinstance(item, dict) else {f"{prefix}{key}": item})
    return out


def without_records(ws: Workspace, doomed: Iterable[str]) -> bytes | None:
    """The registry's new content without the content tags of the ``doomed`` records (keyed digests of their
    content: a deletion keeps nothing derived from a deleted record), or None if it holds none of them; written by
    the deletion's tombstoning change. Their commitments stay in a test split's list, like the tombstones'."""
    if not (ws.root / FILE).exists():
        return None
    sources, doomed = _read(ws), set(doomed)
    if not any(doomed & set(content.tags) for content in sources.content.values()):
        return None
    for content in sources.content.values():
        content.tags = {c: t for c, t in content.tags.items() if c not in doomed}
        if content.images is not None:
            content.images = {c: t for c, t in content.images.items() if c not in doomed}
        if content.canonical is not None:  # the tombstones keep it (Tombstones.canonical)
            content.canonical = {c: s for c, s in content.canonical.items() if c not in doomed}
    return (sources.model_dump_json(indent=2) + "\n").encode()


def _refuse_rekeyed(name: str, source: ReloadableSource, sources: Sources, key: bytes) -> str | None:
    """The keyed sha256 of the file of rows ``source`` reads (a table's, a text file's; None for other kinds), after
    refusing it where another registered source reads the same file (the same place, or the same bytes when that one
    was registered) with its record ids from another column (review 96: the same table under a second key, an MRN
    beside a patient id, was new records: a deleted one was trained again under its other id, and runs reading the
    same row under two ids did not compose), or takes a file another source reads as private as its public table."""
    data = getattr(source, "data", None)
    path, column = getattr(data, "path", None), _id_column(data)
    if path is None or column is ...:
        return None
    tag = _file_tag(Path(path), key)
    files = {other: (was, sources.content.get(other)) for other, was in
             ((n, getattr(parse_source(e), "data", None)) for n, e in sources.sources.items())
             if other != name and getattr(was, "path", None) is not None}  # the other sources reading a file

    def same_file(place: str, place_tag: str, was: Any, content: Content | None) -> bool:
        return Path(was.path).resolve() == Path(place).resolve() or (
            content is not None and content.file_tag == place_tag)

    public = getattr(data, "public_path", None)
    if public is not None:  # review 101: another source's private table as this one's public table, under other ids
        public_tag = _file_tag(Path(public), key)
        for other, (was, content) in files.items():
            if same_file(public, public_tag, was, content):
                raise DataSourceError(f"data source {name!r} takes {public} as its public table, which data source "
                                      f"{other!r} reads as private records: their statistics and the pretraining "
                                      "on them would be outside the guarantee; give a public table of other records")
    for other, (was, content) in files.items():
        if _id_column(was) in (..., column):
            continue
        if same_file(path, tag, was, content):
            held, (noun, field) = _id_column(was), (("array", "record_ids") if hasattr(was, "record_ids")
                                                     else ("column", "record_id"))
            ids = f"{noun} {held!r}" if held else "their row numbers"
            other_column = f", or give {field}: {held}" if held else ""
            raise DataSourceError(
                f"data source {name!r} reads {path}, which data source {other!r} reads already with record ids from "
                f"{ids}: with ids from {column!r} its records would be other records here (one deleted under one id "
                f"would be trained again under the other, and runs reading a row under two ids would not compose); "
                f"train it as data source {other!r}{other_column}")
    return tag


def _tag_key(key: bytes) -> bytes:
    """The key of the registry's content tags, derived from the workspace's manifest key."""
    return hmac.new(key, _TAG_CONTEXT, hashlib.sha256).digest()


def _file_tag(path: Path, key: bytes) -> str:
    """A file's keyed sha256 (the registry holds no plain digest of private data)."""
    return hmac.new(_tag_key(key), b"file\0" + bytes.fromhex(sha256_file(path)), hashlib.sha256).hexdigest()[:32]


def _id_column(data: object) -> Any:
    """The column (a table's, a text file's) or array (an ``.npz``'s) a file of rows takes its record ids from; None:
    row numbers (a table registered before ids were required); ``...``: not a file of rows."""
    return getattr(data, "record_id", getattr(data, "record_ids", ...))


def _decoder_said(source: ReloadableSource) -> ReloadableSource:
    """``source`` with its image folder's decoder written out where the recipe did not say: a registration records
    the one that reads it (a later version's newer decoder must not change how it is read)."""
    data = getattr(source, "data", None)
    if getattr(data, "decoder", 1) is not None:
        return source
    return source.model_copy(update={"data": data.model_copy(update={"decoder": data.decoding})})


def source_of(ws: Workspace, name: str) -> ReloadableSource | None:
    """How data source ``name`` is reloaded, or None if the workspace has no loader for it."""
    entry = _read(ws).sources.get(name)
    return None if entry is None else parse_source(entry)


def input_shape(ws: Workspace, names: Iterable[str]) -> tuple[int, ...] | None:
    """The shape of one model input that the data sources ``names`` (a model's) fix, where every one of them is
    registered with a loader that fixes it and they agree; else None."""
    sources = _read(ws).sources  # the registry read once, for every name
    registered = [parse_source(sources[name]) if name in sources else None for name in names]
    shapes = {source.input_shape() for source in registered if source is not None}
    return shapes.pop() if registered and len(shapes) == 1 and None not in shapes and None not in registered else None


def relocated(ws: Workspace, name: str, location: Path | None, public_table: Path | None = None
              ) -> tuple[ReloadableSource, bytes | None]:
    """The registered source ``name`` read from ``location`` (its file or folder moved there) and/or with its public
    table read from ``public_table`` (moved there), holding exactly the records it was registered with, less deleted
    ones, each unchanged by its keyed digest (scaled features included: the public table's statistics scale them): a
    record it did not hold is refused (training adds records, and checks them first), and so is a changed or missing
    one, and a public table holding a private or deleted record. With it, the registry's new content (what
    :func:`registered` would write for it, without reading the records again), or None where every place as
    registered (another spelling of it included) is the one given already."""
    sources = _read(ws)
    entry = sources.sources.get(name)
    source = None if entry is None else parse_source(entry)
    if source is None:
        raise DataSourceError(f"no loader registered for data source {name!r} (it was not trained from a recipe's "
                              "data in this workspace): nothing to relocate")
    value = source.model_dump(mode="json")
    data = value.get("data", {})
    moves: dict[str, Path] = {}
    if location is not None:
        field = next((f for f in ("path", "root") if f in data), None)
        if field is None:
            raise DataSourceError(f"data source {name!r} ({source.loader}) is not read from a file or folder of "
                                  "yours: nothing to relocate")
        moves[field] = location
    if public_table is not None:
        if not data.get(PUBLIC_TABLE):
            raise DataSourceError(f"data source {name!r} ({source.loader}) reads no public table: nothing to relocate "
                                  "with --public-table")
        moves[PUBLIC_TABLE] = public_table
    content = sources.content.get(name)
    if content is None:
        raise DataSourceError(f"data source {name!r} was registered before its records' digests were kept, so its "
                              f"data cannot be checked at a new place; read it from {data[next(iter(moves))]}")
    places = {f: os.path.realpath(p.expanduser()) for f, p in moves.items()}  # as a recipe's paths are stored:
    # links resolved; the registered spelling taken as it is (a link to the new place left while moving is not it)
    places = {f: place for f, place in places.items() if place != os.path.abspath(data[f])}
    if PUBLIC_TABLE not in moves and _gone(data, [PUBLIC_TABLE]):
        raise DataSourceError(f"the public table of data source {name!r}, {data[PUBLIC_TABLE]}, is not there: if it "
                              "moved too, give its new place with --public-table")
    if not places:
        return source, None
    data.update(places)
    moved = parse_source(value)
    deleted_spelled = Tombstones(ws.root).canonical()
    deleted = set(deleted_spelled)
    try:
        records = _as_registered(moved).records()
    except DataError as err:
        if not _gone(data, [f for f in ("path", "root") if f not in places]):
            raise
        raise DataSourceError(f"{err}; if it moved too, give its new place as well: `dp-tangent data relocate {name} "
                              f"NEW_PLACE --public-table ... -w {shlex.quote(str(ws.root))}`") from None
    every = _tags(ws, records)  # one per record, in record order
    where = next((str(moves[f]) for f in ("path", "root") if f in places), None)  # as typed
    new = [r for r, c in zip(records.record_ids, every) if c not in content.tags and c not in deleted]
    if new:
        raise DataSourceError(f"{where or data.get('path') or data.get('root')} holds {len(new)} record(s) data "
                              f"source {name!r} was not registered with "
                              f"(e.g. {sorted(new)[0]!r}): relocate moves the data as it was; train adds records")
    differences = _differences(content.tags, {c: t for c, t in every.items() if c not in deleted}, deleted,
                               dict(zip(every, records.record_ids)))
    if differences and PUBLIC_TABLE in places:
        raise DataSourceError(f"read with the public table {moves[PUBLIC_TABLE]}{f' from {where}' if where else ''}, "
                              f"data source {name!r} is not the data it was registered with ({differences}; the "
                              "public table's statistics scale every record's features): point it at the moved copy")
    if differences:
        raise DataSourceError(f"{where} is not the data {name!r} was registered with ({differences}"
                              f"{_scaled_by(moved, differences)}): relocate moves the data as it was; point it at "
                              "the moved copy")
    if PUBLIC_TABLE in places:  # the table now there, as train checks it: no private or deleted record
        key = ws.manifest_key()
        spelled = canonical_commitments(records.record_ids, key)
        _refuse_public_held(name, moved, _public_ids(moved), sources, {c: spelled.get(c, c) for c in every},
                            deleted_spelled, key)
    sources.sources[name] = moved.model_dump(mode="json")  # its content, test split included, stays as registered
    return moved, (sources.model_dump_json(indent=2) + "\n").encode()


def _gone(data: Mapping[str, Any], fields: Sequence[str]) -> list[str]:
    """The ``fields`` of a source's data section (``path``, ``root``, ``public_path``) naming a place that is not
    there."""
    return [f for f in fields if isinstance(data.get(f), str) and not Path(data[f]).exists()]


def _scaled_by(source: ReloadableSource | None, differences: str) -> str:
    """Where records changed and ``source`` scales its features with a public table's statistics, the note that
    a changed public table changes every record (else "")."""
    data = getattr(source, "data", None)
    if "changed" not in differences or getattr(data, "scaling", None) != "public":
        return ""
    return (f"; its features are scaled with the statistics of its public table {getattr(data, PUBLIC_TABLE)}, "
            "so a change there changes every record")


def _not_as_registered(name: str, differences: str, source: ReloadableSource | None) -> DataSourceError:
    """The refusal of data source ``name`` read with ``differences`` (:func:`_differences`) from its registration."""
    return DataSourceError(f"data source {name!r} is not the data it was registered with ({differences}"
                           f"{_scaled_by(source, differences)}): restore it (removing deleted records and adding new "
                           "ones is allowed)")


def _differences(registered: Mapping[str, str], tags: Mapping[str, str], deleted: set[str],
                 ids: Mapping[str, str]) -> str:
    """How records' content ``tags`` (commitment -> tag) differ from the ``registered`` ones: changed (the first
    named by its id, ``ids``: commitment -> record id), and missing that no deletion removed ("" if neither)."""
    changed = [c for c, t in tags.items() if c in registered and registered[c] != t]
    missing = len(set(registered) - set(tags) - deleted)
    return "; ".join(part for part in (f"{len(changed)} record(s) changed, e.g. {ids[changed[0]]!r}" if changed else "",
                                       f"{missing} missing that no deletion request removed" if missing else "")
                     if part)


def declared_public(ws: Workspace) -> frozenset[tuple[str, str]]:
    """The (data source, shard) splits their data owner declared public (``public_split``): no privacy budget
    applies to them (an unreadable registry declares none)."""
    try:
        sources = _read(ws).sources
        return frozenset((name, PUBLIC_SPLIT) for name, entry in sources.items()
                         if getattr(parse_source(entry), "public_split", False))
    except (DPTangentError, ValueError):
        return frozenset()


def check_unchanged(ws: Workspace, name: str, records: RecordSet, deleted: Iterable[str] = ()) -> list[str]:
    """The commitments of ``records`` (reloaded from source ``name``), after checking that every record registered
    is there with the same content, less only ``deleted`` (tombstoned) ones. Records added since are passed over:
    a reload reads the registered ones only (a shard's manifest, the registered test split), so a folder or table
    that grew does not block a deletion's retraining (training the data again registers them)."""
    content = _read(ws).content.get(name)
    tags = _tags(ws, records)
    if content is None:  # registered before content digests were recorded: nothing to compare with
        return list(tags)
    differences = _differences(content.tags, tags, set(deleted), dict(zip(tags, records.record_ids)))
    if differences:
        raise _not_as_registered(name, differences, source_of(ws, name))
    return list(tags)


def test_records(ws: Workspace, name: str) -> tuple[ReloadableSource, RecordSet | None]:
    """(source, its test split): the records that were its test split when it was registered (checked
    unchanged), or, for a source whose test split is its own (CIFAR's) or registered before this was
    recorded, the split as its loader makes it."""
    source, records, commitments = reload(ws, name)
    content = _read(ws).content.get(name)
    held = set(content.test) if content is not None else set()
    deleted = set(Tombstones(ws.root).read())  # a deleted record no longer counts in any figure, test ones included
    picked = [i for i, c in enumerate(commitments) if c in held and c not in deleted]
    if picked:
        return source, records.subset(picked)
    test = source.test_split()  # its own (CIFAR's), or one registered before it was recorded
    if test is None:
        return source, None
    # registered: those of its records, less deleted ones (none left: none; never records added since)
    return source, (registered_test(ws, name, test) if held else without_deleted(ws, test, deleted))


def registered_test(ws: Workspace, name: str, test: RecordSet) -> RecordSet:
    """``test`` (a source's test split as its data now places it) as the registered test split: the records that
    were the test split when the source was registered, or joined it with a later registration (records added since
    the last are not measured on until a ``train`` registers them, so that every model is measured on the same
    ones), less deleted ones."""
    content = _read(ws).content.get(name)
    test = without_deleted(ws, test)
    if content is None or not content.test:
        return test
    held, key = set(content.test), ws.manifest_key()
    return test.subset([i for i, r in enumerate(test.record_ids) if commit(r, key) in held])


def without_deleted(ws: Workspace, records: RecordSet, deleted: set[str] | None = None) -> RecordSet:
    """``records`` less those a deletion request removed (``deleted``: their commitments, if already read)."""
    deleted = set(Tombstones(ws.root).read()) if deleted is None else deleted
    key = ws.manifest_key()
    return records.subset([i for i, r in enumerate(records.record_ids) if commit(r, key) not in deleted])


def reload(ws: Workspace, name: str) -> tuple[ReloadableSource, RecordSet, list[str]]:
    """(source, every record it holds, their commitments), checked unchanged since registration."""
    source = source_of(ws, name)
    if source is None:
        raise DataSourceError(f"no loader registered for data source {name!r} (it was not trained from a recipe's "
                              "data in this workspace); give its data explicitly")
    try:
        records = source.records()
    except DataError as err:
        value = source.model_dump(mode="json").get("data", {})
        gone = _gone(value, ("path", "root", PUBLIC_TABLE))
        if not gone:
            raise
        command = " ".join(["dp-tangent data relocate", name] + [
            "--public-table NEW_PLACE" if f == PUBLIC_TABLE else "NEW_PLACE" for f in gone]
            + ["-w", shlex.quote(str(ws.root))])
        what = "it" if PUBLIC_TABLE not in gone else "its public table" if len(gone) == 1 else "it and its public table"
        raise DataSourceError(f"{err}; if {what} moved, point data source {name!r} there with `{command}` (no "
                              "training, no budget)") from None
    return source, records, check_unchanged(ws, name, records, Tombstones(ws.root).read())


def shard_records_for(ws: Workspace) -> Callable[[ComponentMetadata], RecordSet]:
    """A function from a component's metadata to the records of its shard (for ``forget(retrain=True)``):
    the reloaded source's records that the component's manifest names, less every tombstoned one."""
    cache: dict[str, tuple[RecordSet, list[str]]] = {}

    def records(meta: ComponentMetadata) -> RecordSet:
        if meta.data_source not in cache:
            if source_of(ws, meta.data_source) is None:
                raise DataSourceError(f"no loader registered for data source {meta.data_source!r}; retraining needs "
                                      "the shard's records (run forget without --retrain to drop the component)")
            _, pool, commitments = reload(ws, meta.data_source)
            cache[meta.data_source] = (pool, commitments)
        pool, commitments = cache[meta.data_source]
        spelled = Tombstones(ws.root).canonical()
        held = set(meta.manifest.commitments) - set(spelled)
        keep = [i for i, c in enumerate(commitments) if c in held]
        if len(keep) != len(held):
            raise DataSourceError(f"data source {meta.data_source!r} no longer holds {len(held) - len(keep)} record(s) "
                                  f"component {meta.name!r} was trained on (and no deletion request removed them)")
        # as registering it would refuse them: a record whose other spelling a deletion removed (review 69)
        deleted = _held_ids(ws.manifest_key(), Sources(), str, spelled, _REMOVED)
        for i in keep:
            other = deleted.deleted_spelling(pool.record_ids[i])
            if other is not None:
                raise _respelled(meta.data_source, pool.record_ids[i], other, held=True, retrain=True)
        return pool.subset(keep)

    return records
