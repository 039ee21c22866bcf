"""Signed checkpoints of the audit log: C2SP ``tlog-checkpoint`` bodies in C2SP signed notes (Ed25519).

A checkpoint commits to the first ``size`` entries of a workspace's log by their RFC 9162 Merkle
root::

    dp-tangent.workspace/<manifest key id>
    <size>
    <base64 root hash>

    — <key name> <base64(4-byte key hash || Ed25519 signature of the three lines above)>

Whoever keeps a checkpoint can later check, with a consistency proof, that the log still extends
it: truncation, an emptied log and a whole-workspace rollback all fail that check. The signing key
lives outside the workspace (``PRIVATE+KEY+<name>+<hash>+<base64>``, the format of Go's
``golang.org/x/mod/sumdb/note``); the verifier key ``<name>+<hash>+<base64>`` may be published.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .audit_errors import AuditLogError
from .merkle import consistency_proof, merkle_root, verify_consistency

ORIGIN_PREFIX = "dp-tangent.workspace/"
ED25519 = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").hexdigest()  # RFC 9162: the hash of an empty tree
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DASH = "\u2014"


class CheckpointError(AuditLogError):
    """A key or checkpoint that cannot be read, or a signature that does not verify."""


class SignatureError(CheckpointError):
    """A checkpoint whose signature does not verify with the verifier key given: a failed check (forged, edited, or
    another key's), not a usage mistake."""


@dataclass(frozen=True)
class Checkpoint:
    """The first ``size`` entries of the log of workspace ``origin`` have Merkle root ``root`` (hex)."""

    origin: str
    size: int
    root: str

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(bytes.fromhex(self.root)).decode()}\n"


def origin_of(manifest_key_id: str) -> str:
    return ORIGIN_PREFIX + manifest_key_id


def checkpoint_of(hashes: list[str], origin: str) -> Checkpoint:
    """The checkpoint of a log whose entry hashes are ``hashes``."""
    return Checkpoint(origin, len(hashes), merkle_root(hashes) or EMPTY_ROOT)


def _key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public).digest()[:4]


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def verifier_key(name: str, key: Ed25519PublicKey) -> str:
    public = _public_bytes(key)
    return f"{name}+{_key_hash(name, public).hex()}+{base64.b64encode(ED25519 + public).decode()}"


def generate_key(path: str | os.PathLike[str], name: str) -> str:
    """Write a new signing key to ``path`` (mode 0600, never overwritten); returns its verifier key."""
    if not _NAME.match(name):
        raise CheckpointError(f"key name {name!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (at most 64 characters)")
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = key.public_key()
    text = f"PRIVATE+KEY+{name}+{_key_hash(name, _public_bytes(public)).hex()}+" \
           f"{base64.b64encode(ED25519 + seed).decode()}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CheckpointError(f"{path} already exists; a signing key is never overwritten") from None
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return verifier_key(name, public)


def load_signing_key(path: str | os.PathLike[str]) -> tuple[str, Ed25519PrivateKey]:
    """(key name, key) from a ``PRIVATE+KEY+...`` file."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        hint = "; make one with `dp-tangent audit keygen PATH`" if isinstance(err, FileNotFoundError) else ""
        raise CheckpointError(f"cannot read the signing key {path}: {err.strerror}{hint}") from None
    except UnicodeDecodeError:  # a binary file (review 113: the codec's own message named neither)
        text = ""
    parts = text.split("+", 4)
    try:
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise ValueError
        name, raw = parts[2], base64.b64decode(parts[4], validate=True)
        if raw[:1] != ED25519 or len(raw) != 33:
            raise ValueError
        key = Ed25519PrivateKey.from_private_bytes(raw[1:])
    except ValueError:
        raise CheckpointError(f"{path} is not a dp-tangent signing key (PRIVATE+KEY+name+hash+key)") from None
    if bytes.fromhex(parts[3]) != _key_hash(name, _public_bytes(key.public_key())):
        raise CheckpointError(f"{path}: the key hash does not match the key")
    return name, key


def sign(checkpoint: Checkpoint, key_path: str | os.PathLike[str]) -> str:
    """The checkpoint as a signed note."""
    name, key = load_signing_key(key_path)
    body = checkpoint.body()
    signature = _key_hash(name, _public_bytes(key.public_key())) + key.sign(body.encode())
    return f"{body}\n{_DASH} {name} {base64.b64encode(signature).decode()}\n"


def parse_verifier_key(text: str) -> tuple[str, bytes, Ed25519PublicKey]:
    parts = text.strip().split("+", 2)
    try:
        if len(parts) != 3:
            raise ValueError
        raw = base64.b64decode(parts[2], validate=True)
        if raw[:1] != ED25519 or len(raw) != 33:
            raise ValueError
        key = Ed25519PublicKey.from_public_bytes(raw[1:])
        key_hash = bytes.fromhex(parts[1])
    except ValueError:
        raise CheckpointError("not a verifier key (name+hash+key, as `dp-tangent audit keygen` prints)") from None
    if key_hash != _key_hash(parts[0], raw[1:]):
        raise CheckpointError("the verifier key's hash does not match its key")
    return parts[0], key_hash, key


def parse(note: str) -> tuple[Checkpoint, list[tuple[str, bytes]]]:
    """(checkpoint, [(key name, 4-byte key hash + signature)]) of a signed note."""
    body, sep, signatures = note.partition("\n\n")
    lines = body.split("\n")
    try:
        if not sep or len(lines) < 3:
            raise ValueError
        origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
        if not origin.startswith(ORIGIN_PREFIX) or size < 0 or len(root) != 32 or lines[1] != str(size):
            raise ValueError
        sigs = []
        for line in signatures.splitlines():
            dash, name, value = line.split(" ")
            if dash != _DASH:
                raise ValueError
            sigs.append((name, base64.b64decode(value, validate=True)))
    except ValueError:
        raise CheckpointError("not a dp-tangent checkpoint (origin, size, root hash, a blank line, "
                              "signature lines)") from None
    return Checkpoint(origin, size, root.hex()), sigs


def verify_signature(note: str, verifier: str) -> bool:
    """Whether ``note`` carries a valid signature by the key ``verifier``."""
    checkpoint, signatures = parse(note)
    name, key_hash, key = parse_verifier_key(verifier)
    for signer, value in signatures:
        if signer == name and value[:4] == key_hash:
            try:
                key.verify(value[4:], checkpoint.body().encode())
                return True
            except InvalidSignature:
                return False
    return False


def extends(hashes: list[str], checkpoint: Checkpoint) -> str | None:
    """None if the log with entry hashes ``hashes`` extends ``checkpoint`` (checked by an RFC 9162
    consistency proof), else why not, in one line."""
    if checkpoint.size > len(hashes):
        return (f"the log has {len(hashes)} entries but the checkpoint commits to {checkpoint.size}: "
                "entries were removed (truncated, emptied or rolled back)")
    proof = consistency_proof(hashes, checkpoint.size)
    first = checkpoint.root if checkpoint.size else None
    if not verify_consistency(checkpoint.size, first, len(hashes), merkle_root(hashes) or EMPTY_ROOT, proof) or (
            checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT):
        return (f"the log's first {checkpoint.size} entries do not match the checkpoint's root hash: "
                "the log was rewritten or rolled back")
    return None


def read_kept_checkpoint(path: str | os.PathLike[str], origin: str, verifier: str | None) -> Checkpoint:
    """A checkpoint file kept outside the workspace whose origin is ``origin``; with ``verifier``, its
    signature must verify (else :class:`SignatureError`). Anything else is refused in one line."""
    try:
        note = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {getattr(err, 'strerror', None) or err}") from None
    kept, _ = parse(note)
    if kept.origin != origin:
        raise CheckpointError(f"{path} is a checkpoint of another workspace ({kept.origin})")
    if verifier is not None and not verify_signature(note, verifier):
        raise SignatureError(f"{path}: the signature does not verify with the given verifier key (a forged or "
                             "edited checkpoint, or another key's)")
    return kept
