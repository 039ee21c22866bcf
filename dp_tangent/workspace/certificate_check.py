"""Checking a deletion certificate at any later time: the deletion still holds in the workspace.

For a completed certificate: the audit log still extends the checkpoint embedded after the deletion
(RFC 9162 consistency proof; the requester's ``.txt`` gives its root without the entry count, which is
found as the count whose root it is) and holds the deletion entry for this request; no current component's
manifest holds any of the certified commitments; no composed model includes a removed component;
and every commitment is still on the tombstone list, so no later training can have used it. Only
commitments are compared: the certificate never holds raw record ids.

What is checked is the certificate the *requester* holds: its ``.txt`` copy works as well as the
``.json`` (:func:`load_certificate` reads either), and nothing is taken from the workspace's own
copy: the commitments must equal those the deletion entry logged, and the components removed are
the entry's. A checkpoint kept outside the workspace (``external``) must be extended too, which
also catches a rollback of the log to a point after the certificate's own checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ..components.component import read_metadata
from .audit_log import AuditEntry
from .certificates import DeletionCertificate
from .checkpoint import Checkpoint, extends, origin_of
from .deletion_requests import ForgetError
from .merkle import prefix_with_root
from .names import WorkspaceError
from .tombstones import Tombstones

if TYPE_CHECKING:
    from .store import Workspace


@dataclass(frozen=True)
class CertificateCheck:
    """Outcome of :func:`check_certificate`: ``ok`` iff no problem."""

    request_id: str
    problems: tuple[str, ...]
    commitments: int
    components_checked: int

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return (f"certificate {self.request_id} holds: the audit log extends its checkpoint; none of the "
                    f"{self.components_checked} current components holds any of its {self.commitments} record(s); "
                    "no model includes a removed component; the records are still tombstoned")
        return "\n".join([f"certificate {self.request_id} does NOT hold ({len(self.problems)} problem(s)):"]
                         + [f"  {p}" for p in self.problems])


@dataclass(frozen=True)
class ClaimedCheckpoint:
    """A certificate's checkpoint: the requester's copy gives no entry count (``size`` None, see
    ``certificates._requester_shards``), and the check finds the count whose root it is."""

    origin: str
    size: int | None
    root: str


@dataclass(frozen=True)
class CertificateClaim:
    """What a certificate asserts that can be checked later: its request, commitments, key and checkpoint."""

    request_id: str
    status: str
    key_id: str
    record_commitments: tuple[str, ...]
    checkpoint: ClaimedCheckpoint | None
    components_removed: tuple[str, ...] = ()
    sha256: str | None = None  # of the file the claim was read from (None: not read from a file)

    @classmethod
    def of(cls, cert: DeletionCertificate) -> "CertificateClaim":
        kept = cert.checkpoint
        point = kept and ClaimedCheckpoint(kept.origin, kept.size, kept.root)
        return cls(cert.request_id, cert.status, cert.key_id, tuple(cert.record_commitments), point,
                   tuple(r.name for r in cert.components_removed))


_TEXT_REQUEST = re.compile(r"^DELETION CERTIFICATE -- request (\S+)$", re.M)
_TEXT_STATUS = re.compile(r"^Status:\s+(\w+) ", re.M)
_TEXT_KEY = re.compile(r"^Records \(\d+\), as \S+ commitments under key ([0-9a-f]+):$", re.M)
_TEXT_COMMITMENT = re.compile(r"^  ([0-9a-f]{64})  ", re.M)
_TEXT_CHECKPOINT = re.compile(r"^  (\S+), (?:(\d+) entries, )?Merkle root ([0-9a-f]{64})$", re.M)


def parse_certificate_text(text: str) -> CertificateClaim:
    """The claim of a certificate's ``.txt`` copy (:func:`~.certificates.render_certificate`)."""
    request, status, key = _TEXT_REQUEST.search(text), _TEXT_STATUS.search(text), _TEXT_KEY.search(text)
    if request is None or status is None or key is None:
        raise ValueError("not a dp-tangent deletion certificate")
    point = _TEXT_CHECKPOINT.search(text)
    checkpoint = None if point is None else ClaimedCheckpoint(point[1], None if point[2] is None else int(point[2]),
                                                              point[3])
    return CertificateClaim(request[1], status[1], key[1], tuple(_TEXT_COMMITMENT.findall(text)), checkpoint)


def _as_issued(data: bytes) -> bytes:
    """A certificate copy's bytes (``.txt`` or ``.json``) with the line endings the tool wrote: a copy that went
    through a mail client or a Windows editor (CRLF or CR line ends, a byte-order mark, the last line end lost) is
    the same text, and is hashed as issued; any other change still changes the hash."""
    text = data.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return text if text.endswith(b"\n") or not text else text + b"\n"


def load_certificate(path: Path) -> CertificateClaim:
    """The claim of a certificate file: the ``.json`` or the requester's ``.txt`` copy."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ForgetError(f"cannot read the certificate {path}: {err.strerror}") from None
    try:
        data = _as_issued(data)
        if data.lstrip().startswith(b"{"):
            claim = CertificateClaim.of(DeletionCertificate.model_validate_json(data))
        else:
            claim = parse_certificate_text(data.decode("utf-8"))
        return dataclasses.replace(claim, sha256=hashlib.sha256(data).hexdigest())
    except (ValidationError, ValueError) as err:
        raise ForgetError(f"{path} is not a deletion certificate (its .json or .txt file; {type(err).__name__})") \
            from None


def _written_certificates(entries: Sequence[AuditEntry], request_id: str) -> set[str]:
    """The sha256 of every version of the request's certificate files (``.txt`` and ``.json``) the tool wrote (an
    integrity failure's snapshot of the files as it found them vouches for none)."""
    paths = {f"certificates/{request_id}.txt", f"certificates/{request_id}.json"}
    return {a.sha256 for e in entries if e.operation in _WRITES_CERTIFICATES for a in e.outputs
            if a.path in paths and a.sha256 is not None}


_WRITES_CERTIFICATES = frozenset({"deletion_request", "deletion", "certificate_sealed"})


def check_certificate(ws: "Workspace", cert: DeletionCertificate | CertificateClaim,
                      external: Checkpoint | None = None) -> CertificateCheck:
    """Re-check ``cert`` against the workspace as it is now (see the module doc); ``external``: a
    checkpoint kept outside the workspace, which the log must extend too."""
    if isinstance(cert, DeletionCertificate):
        cert = CertificateClaim.of(cert)
    if cert.key_id != ws.key_id:
        raise ForgetError(f"certificate {cert.request_id} was issued under key {cert.key_id}, not this workspace's "
                          f"({ws.key_id}): check it against the workspace that issued it")
    if cert.status == "completed" and cert.checkpoint is None:  # review 103: it read "is completed ... only a
        # completed deletion can be checked"
        raise ForgetError(f"certificate {cert.request_id}: its deletion completed, but the command was stopped before "
                          "it sealed the certificate: run the same `dp-tangent forget` command again to seal it, then "
                          "check it again")
    if cert.status != "completed" or cert.checkpoint is None:
        raise ForgetError(f"certificate {cert.request_id} is {cert.status}: only a completed deletion can be checked")
    problems: list[str] = []
    report = ws.audit.verify()  # every file the checks below read is the one the log holds (a model's bytes too)
    if not report.ok:
        problems.append(f"the workspace does not verify against its audit log ({len(report.problems)} problem(s), "
                        f"the first: {report.first_bad}); `dp-tangent audit verify` lists them")
    entries = ws.audit.entries()
    point = cert.checkpoint
    if point.origin != origin_of(ws.info.manifest_key_id):
        problems.append(f"its checkpoint is of another workspace ({point.origin})")
    hashes = [e.hash for e in entries]
    size = point.size if point.size is not None else prefix_with_root(hashes, point.root)
    if size is None:
        problems.append("no first entries of the audit log have the checkpoint's root hash: the log was rewritten or "
                        "rolled back, or the certificate edited")
    elif why := extends(hashes, Checkpoint(point.origin, size, point.root)):
        problems.append(why)
    if external is not None:
        if external.origin != origin_of(ws.info.manifest_key_id):
            problems.append(f"the given checkpoint is of another workspace ({external.origin})")
        elif why := extends([e.hash for e in entries], external):
            problems.append(f"against the given checkpoint: {why}")
    if cert.sha256 is not None and cert.sha256 not in _written_certificates(entries, cert.request_id):
        problems.append(f"the file is not a certificate the tool wrote for request {cert.request_id} (its sha256 is "
                        "in no audit log entry): it was edited (dates, outcome or components are not checked "
                        "otherwise)")
    deletion = next((e for e in entries[:size] if e.operation == "deletion"
                     and e.parameters.get("request_id") == cert.request_id), None)
    if deletion is None:
        problems.append(f"the audit log holds no deletion entry for request {cert.request_id} before its checkpoint")
    elif sorted(deletion.parameters.get("record_commitments", [])) != sorted(cert.record_commitments):
        problems.append("the certificate's record commitments differ from those its deletion entry logged "
                        "(the certificate was edited)")
    doomed = set(cert.record_commitments)
    components = ws.list_components()
    for name in components:
        held = doomed & set(read_metadata(ws.component_path(name)).manifest.commitments)
        if held:
            problems.append(f"component {name!r} holds {len(held)} of the deleted record(s)")
    removed = set(deletion.parameters.get("components_removed", []) if deletion else cert.components_removed)
    for model in ws.list_models():
        used = removed & set(ws.model_record(model).component_names)
        if used:
            problems.append(f"model {model!r} includes removed component(s) {sorted(used)}")
    try:
        tombstoned = set(Tombstones(ws.root).read())
    except WorkspaceError as err:  # edited or removed behind the tool's back: it vouches for nothing
        problems.append(str(err))
        tombstoned = set()
    lost = doomed - tombstoned
    if lost:
        problems.append(f"{len(lost)} of the deleted record(s) are no longer tombstoned: later training may use them")
    away = sorted(Path(rel).stem for rel in report.missing_artifacts
                  if rel.startswith("components/") and rel.endswith(".safetensors"))
    if away:  # review 75, 77: not a tampering (audit verify notes it), but what they hold is unchecked
        problems.append(f"{len(away)} current component(s) are away from the workspace and were not checked: "
                        f"{', '.join(away)}; put them back and check again")
    return CertificateCheck(cert.request_id, tuple(problems), len(doomed), len(components))
