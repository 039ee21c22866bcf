"""Merkle tree over audit-log entry hashes, RFC 6962/9162 shape: leaf = H(0x00||h), node = H(0x01||l||r).

The root commits to every entry in order; an inclusion proof shows one entry is in the tree; a
consistency proof (RFC 9162 §2.1.4) shows that the tree of the first m entries is a prefix of the
tree of n entries, so whoever kept an older root can check that the log was only appended to.
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


def prefix_with_root(hashes: Sequence[str], root: str) -> int | None:
    """The entry count m >= 1 whose first m entries have Merkle root ``root``, or None (the first such m; a
    second would be a SHA-256 collision). One pass: the roots of the perfect subtrees that make up the first m
    entries (m's binary digits), folded from the right, are the tree hash of those m entries."""
    wanted, subtrees = bytes.fromhex(root), []  # (leaves, hash), leaves strictly decreasing
    for h in hashes:
        node, leaves = _leaf(h), 1
        while subtrees and subtrees[-1][0] == leaves:
            leaves, node = leaves * 2, _node(subtrees.pop()[1], node)
        subtrees.append((leaves, node))
        folded = subtrees[-1][1]
        for _, left in reversed(subtrees[:-1]):
            folded = _node(left, folded)
        if folded == wanted:
            return sum(n for n, _ in subtrees)
    return None


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


def consistency_proof(hashes: Sequence[str], first_size: int) -> list[str]:
    """RFC 9162 PROOF(m, D[n]): the node hashes that link the root of the first ``first_size``
    entries to the root of all of them (empty when m is 0 or n)."""
    n = len(hashes)
    if not 0 <= first_size <= n:
        raise AuditLogError(f"cannot prove a tree of {first_size} entries inside a log of {n}")
    if first_size in (0, n):
        return []
    leaves = [_leaf(h) for h in hashes]

    def subproof(m: int, nodes: Sequence[bytes], whole: bool) -> list[bytes]:
        if m == len(nodes):
            return [] if whole else [_mth(nodes)]
        k = _split(len(nodes))
        if m <= k:
            return subproof(m, nodes[:k], whole) + [_mth(nodes[k:])]
        return subproof(m - k, nodes[k:], False) + [_mth(nodes[:k])]

    return [node.hex() for node in subproof(first_size, leaves, True)]


def verify_consistency(first_size: int, first_root: str | None, second_size: int, second_root: str | None,
                       proof: Sequence[str]) -> bool:
    """True iff ``proof`` shows the tree (first_size, first_root) is a prefix of (second_size, second_root)
    (RFC 9162 §2.1.4.2; an empty first tree is a prefix of every tree)."""
    if first_size == 0:
        return not proof
    if first_size > second_size or first_root is None or second_root is None:
        return False
    if first_size == second_size:
        return not proof and first_root == second_root
    path = [bytes.fromhex(h) for h in proof]
    if first_size & (first_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path = [bytes.fromhex(first_root)] + path
    if not path:
        return False
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr.hex() == first_root and sr.hex() == second_root and sn == 0
