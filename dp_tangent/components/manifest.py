"""Record-id manifests: which records a component saw, as keyed commitments, never raw ids.

commitment(id) = HMAC-SHA256(key, id). The key stays with the operator (the workspace), so a
shipped component reveals nothing about its record ids; the key holder can test whether a record
id is in it (to serve a deletion request). ``root`` = SHA-256 of the sorted commitments.
The number of commitments is the shard size: internal to the workspace, never released.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

SCHEME = "hmac-sha256"


def new_key() -> bytes:
    return secrets.token_bytes(32)


def key_id(key: bytes) -> str:
    """Public identifier of a key (not the key): which key produced a manifest."""
    return hashlib.sha256(b"dp-tangent-manifest-key|" + key).hexdigest()[:16]


def commit(record_id: str, key: bytes) -> str:
    return hmac.new(key, record_id.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class RecordManifest:
    key_id: str
    commitments: tuple[str, ...]  # sorted
    scheme: str = SCHEME

    @classmethod
    def build(cls, record_ids: Iterable[str], key: bytes) -> "RecordManifest":
        ids = list(record_ids)
        if len(set(ids)) != len(ids):
            raise ValueError("record ids must be unique within a shard")
        return cls(key_id=key_id(key), commitments=tuple(sorted(commit(r, key) for r in ids)))

    @property
    def root(self) -> str:
        return hashlib.sha256("\n".join(self.commitments).encode()).hexdigest()

    def contains(self, record_id: str, key: bytes) -> bool:
        if key_id(key) != self.key_id:
            raise ValueError("this manifest was committed under another key")
        return commit(record_id, key) in set(self.commitments)

    def __len__(self) -> int:
        return len(self.commitments)
