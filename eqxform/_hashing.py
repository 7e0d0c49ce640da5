"""Stable 31-bit hashes for deriving keys (never Python's salted `hash()`)."""

from __future__ import annotations

import hashlib


def stable_hash(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


# Seeds run from 0 to 2**64 - 1 (`_limits.MAX_SEED`).
_LOW = 0xFFFFFFFF


def seed_key(seed: int):
    """The `jax.random` key of a seed from 0 to 2**64 - 1, a different key for
    each seed.

    `jax.random.key(seed)` keeps only the low 32 bits of a seed unless JAX runs
    with 64-bit integers (so `2**32` would give the key of `0`), and refuses
    seeds of 2**63 and more. Here the low 32 bits make the key as ever, so a
    seed below 2**32 draws what it always drew, and the high 32 bits fill the
    key's high word, as `jax.random.key` does with 64-bit integers enabled.
    (With a key implementation of another layout the high bits are folded in.)
    The caller checks the range (`_values.check_seed`).
    """
    import jax
    import numpy as np

    low, high = seed & _LOW, seed >> 32
    key = jax.random.key(low)
    if high:
        data = jax.random.key_data(key)
        if data.shape == (2,):
            data = data.at[0].set(np.uint32(high))
            key = jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))
        else:
            key = jax.random.fold_in(key, high)
    return key
