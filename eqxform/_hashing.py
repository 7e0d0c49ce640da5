"""Stable 31-bit hashes for deriving keys (never Python's salted `hash()`)."""

from __future__ import annotations

import hashlib


def stable_hash(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF
