"""Spellings of one record id: the forms an export, another system or an earlier version gives it.

``00017``, `` 17``, ``17.0``, ``+17``, ``1.7E+1`` and full-width ``１７`` name one record; a deleted record must
not come back, nor a held one be trained afresh, under another of them. Each id has one :func:`canonical` spelling,
and the workspace keeps the keyed commitment of it beside each record's own (registry and tombstones), so that
finding another spelling of a held or deleted id costs two HMACs, whichever of the two spellings came first.
:func:`respellings` lists the finite part of the relation, for ids held before the canonical commitments were kept
(and to name the held spelling in a message).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["HeldIds", "canonical", "canonical_commitments", "integer_form", "respellings", "tagger"]

#: The widest zero-padded spelling of an integer id looked for (a 20-digit account number).
PADDED_WIDTH = 20
_INTEGER = re.compile(r"([+-]?)(\d+)(?:\.0*)?")  # 17, 017, 17.0, 17. (a float written without zeros)
#: A spreadsheet's exponent form: a mantissa with a decimal point (``1.7E+1``) or an exponent with a sign (``1E+05``);
#: never ``0e1`` or ``1e2`` (hexadecimal ids). Each part unambiguous: a long run of digits is matched in one pass.
_EXPONENT = re.compile(r"[+-]?(?:\d+\.\d*[eE][+-]?|\.\d+[eE][+-]?|\d+[eE][+-])\d+")
#: Full-width digits and signs, as an East Asian input method or spreadsheet writes them.
FULL_WIDTH = str.maketrans("0123456789+-.Ee", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19"
                                             "\uff0b\uff0d\uff0e\uff25\uff45")
_FROM_FULL_WIDTH = {wide: narrow for narrow, wide in FULL_WIDTH.items()}


def integer_form(bare: str) -> tuple[str, str] | None:
    """(sign, digits without leading zeros) of an id that spells an integer -- ``17``, ``+17``, ``-017``, ``17.0``,
    ``1.7E+1`` (a spreadsheet's form), in full-width digits -- else None; ``-0`` and ``+0`` are ``0``."""
    text = bare.translate(_FROM_FULL_WIDTH)
    if not text.isascii():  # \d also matches other scripts' digits: those are other ids
        return None
    number = _INTEGER.fullmatch(text)
    if number is not None:
        sign, core = number.group(1), number.group(2).lstrip("0") or "0"
    elif ("e" in text or "E" in text) and _EXPONENT.fullmatch(text):
        try:
            value = Decimal(text)
            if value.is_zero():
                sign, core = "", "0"
            elif value.adjusted() >= PADDED_WIDTH or value != value.to_integral_value():
                return None
            else:
                sign, core = "-" if value < 0 else "", str(abs(int(value)))
        except ArithmeticError:  # InvalidOperation, or an exponent beyond what Decimal holds
            return None
    else:
        return None
    return ("" if sign == "+" or core == "0" else sign), core


def canonical(record_id: str) -> str:
    """One spelling per id: no spaces around it, NFC, an integer without zeros, sign ``+`` or decimal part."""
    bare = unicodedata.normalize("NFC", record_id.strip())
    integer = integer_form(bare)
    return bare if integer is None else "".join(integer)


def respellings(record_id: str) -> set[str]:
    """The other spellings of an id that can be listed: spaces around it (a CSV written ``a, 17``), its Unicode
    normal forms, and for an integer id its typed form, its float form and its zero-padded forms (``00017``, ``17``,
    ``17.0``, ``017``, ...: pandas writes an integer column with a gap as floats), with a plus sign and in full-width
    digits; an id in exponent form (``1.7E+1``) is related to its integer, not the other way (exponent forms, like
    ``0017.00``, are endless: :func:`canonical` relates those)."""
    bare = record_id.strip()
    out = {bare, f" {bare}", f"{bare} ", f" {bare} "}
    if not bare.isascii():  # é as one code point or as e and an accent: the same text, two ids (macOS writes NFD)
        out.update(unicodedata.normalize(form, bare) for form in ("NFC", "NFD"))
    integer = integer_form(bare)
    if integer is not None:
        sign, core = integer
        signs = [sign] if sign else ["", "+", *(["-"] if core == "0" else [])]  # +17 is 17; -0 and +0 are 0
        for mark in signs:
            out.update((f"{mark}{core}", f"{mark}{core}.0", f"{mark}{core}".translate(FULL_WIDTH)))
            out.update(mark + core.zfill(w) for w in range(len(core) + 1, PADDED_WIDTH + 1))
    out.discard(record_id)
    return out


def tagger(key: bytes) -> Callable[[str], bytes]:
    """A record id's commitment (:func:`~dp_tangent.components.manifest.commit`) as bytes, the key set up once."""
    keyed = hmac.new(key, digestmod=hashlib.sha256)

    def tag(record_id: str) -> bytes:
        h = keyed.copy()
        h.update(record_id.encode("utf-8"))
        return h.digest()

    return tag


def canonical_commitments(record_ids: Iterable[str], key: bytes, *, every: bool = False) -> dict[str, str]:
    """Commitment of each id -> the commitment of its canonical spelling: for the ids not spelled canonically only
    (the others' is their own), or for ``every`` id."""
    tag, out = tagger(key), {}
    for record_id in record_ids:
        spelled = canonical(record_id)
        if every or spelled != record_id:
            out[tag(record_id).hex()] = tag(spelled).hex()
    return out


@dataclass
class HeldIds:
    """Record ids the workspace holds or deleted, as keyed commitments, each with where it is: the ids' own
    (``exact``), their canonical spellings' (``canonical``), and those whose canonical spelling is unknown
    (``legacy``: held or deleted before it was kept), which only :func:`respellings` finds; and of the deleted ones
    apart, their own and their canonical spellings' (``removed``)."""

    tag: Callable[[str], bytes]
    exact: dict[bytes, str] = field(default_factory=dict)
    canonical: dict[bytes, str] = field(default_factory=dict)
    legacy: dict[bytes, str] = field(default_factory=dict)
    removed: dict[bytes, str] = field(default_factory=dict)
    removed_canonical: dict[bytes, str] = field(default_factory=dict)

    def add(self, commitments: Iterable[str], where: str, spelled: Mapping[str, str] | None, *,
            deleted: bool = False) -> None:
        """Hold ``commitments`` (hex) at ``where`` (``deleted``: records a deletion removed); ``spelled``: commitment
        -> its canonical spelling's, where that differs from its own (:func:`canonical_commitments`), or None when
        unknown for every one of them."""
        for c in commitments:
            mine = bytes.fromhex(c)
            self.exact.setdefault(mine, where)
            if deleted:
                self.removed.setdefault(mine, where)
            if spelled is None:
                self.legacy.setdefault(mine, where)
            else:
                canon = bytes.fromhex(spelled.get(c, c))
                self.canonical.setdefault(canon, where)
                if deleted:
                    self.removed_canonical.setdefault(canon, where)

    def __bool__(self) -> bool:
        return bool(self.exact)

    def find(self, record_id: str) -> tuple[str | None, str] | None:
        """Where ``record_id`` is held as spelled -- (``record_id``, where) -- else :meth:`other_spelling`."""
        where = self.exact.get(self.tag(record_id))
        return (record_id, where) if where is not None else self.other_spelling(record_id)

    def other_spelling(self, record_id: str) -> tuple[str | None, str] | None:
        """Where another spelling of ``record_id`` is held -- (that spelling if :func:`respellings` names it, else
        None; where) -- or None: held as spelled (the overlap rule decides then), or not at all."""
        if self.tag(record_id) in self.exact:
            return None
        spelled = canonical(record_id)
        where = self.canonical.get(self.tag(spelled))
        if where is None and not self.legacy:
            return None
        return self._named(record_id, spelled, self.exact if where else self.legacy) or (
            None if where is None else (None, where))

    def deleted_spelling(self, record_id: str) -> tuple[str | None, str] | None:
        """For an id held as spelled, not deleted: where another spelling of it was deleted (that spelling if
        :func:`respellings` names it, else None; where), else None. (Only deletions whose canonical spelling is
        known: a deletion by an earlier version is found for new ids only.)"""
        spelled = canonical(record_id)
        where = self.removed_canonical.get(self.tag(spelled))
        if where is None or self.tag(record_id) in self.removed:
            return None
        return self._named(record_id, spelled, self.removed) or (None, where)

    def _named(self, record_id: str, spelled: str, among: Mapping[bytes, str]) -> tuple[str, str] | None:
        """(a spelling of ``record_id`` held in ``among``, where): its canonical one, else the first listed one."""
        if spelled != record_id and self.tag(spelled) in among:
            return spelled, among[self.tag(spelled)]
        hits = sorted(r for r in respellings(record_id) if self.tag(r) in among)
        return (hits[0], among[self.tag(hits[0])]) if hits else None
