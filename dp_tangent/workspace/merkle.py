"""Merkle tree over audit-log entry hashes, RFC 6962/9162 shape: leaf = H(0x00||h), node = H(0x01||l||r).

The root commits to every entry in order; an inclusion proof shows one entry is in the tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from .audit_errors import AuditLogError


def _leaf(h: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(_mth(leaves[:k]), _mth(leaves[k:]))


def merkle_root(hashes: Sequence[str]) -> str | None:
    """Merkle tree hash over entry hashes in log order (None for an empty log)."""
    return _mth([_leaf(h) for h in hashes]).hex() if hashes else None


def inclusion_proof(hashes: Sequence[str], index: int) -> list[tuple[str, str]]:
    """Siblings from leaf ``index`` up to the root, each ``("L"|"R", hex)``: which side it sits on."""
    if not 0 <= index < len(hashes):
        raise AuditLogError(f"index {index} is outside a log of {len(hashes)} entries")
    leaves, proof = [_leaf(h) for h in hashes], []

    def walk(nodes: Sequence[bytes], i: int) -> None:
        if len(nodes) == 1:
            return
        k = _split(len(nodes))
        if i < k:
            walk(nodes[:k], i)
            proof.append(("R", _mth(nodes[k:]).hex()))
        else:
            walk(nodes[k:], i - k)
            proof.append(("L", _mth(nodes[:k]).hex()))

    walk(leaves, index)
    return proof


def verify_inclusion(entry_hash_hex: str, proof: Iterable[tuple[str, str]], root: str) -> bool:
    """True iff folding ``proof`` onto the entry's leaf gives ``root``."""
    node = _leaf(entry_hash_hex)
    for side, sibling in proof:
        node = _node(bytes.fromhex(sibling), node) if side == "L" else _node(node, bytes.fromhex(sibling))
    return node.hex() == root
