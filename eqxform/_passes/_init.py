"""Initialisers by name, in Equinox's layouts, and the grouped draw.

Leaves of one shape, dtype and initialiser share a single jitted, vmapped draw,
so re-initialising a thousand layers compiles one function, not a thousand.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .. import _registry as R

# Equinox stores a weight as `(out, in, *kernel)`; `jax.nn.initializers`
# defaults to `(..., in, out)`. These axes make the fans come out right.
_AXES = {"in_axis": 1, "out_axis": 0}

_VARIANCE = {
    "glorot_normal": "glorot_normal",
    "xavier_normal": "glorot_normal",
    "glorot_uniform": "glorot_uniform",
    "xavier_uniform": "glorot_uniform",
    "he_normal": "he_normal",
    "kaiming_normal": "he_normal",
    "he_uniform": "he_uniform",
    "kaiming_uniform": "he_uniform",
    "lecun_normal": "lecun_normal",
    "lecun_uniform": "lecun_uniform",
}


def _trunc_normal(stddev: float = 1.0, lower: float = -2.0, upper: float = 2.0):
    # As the Equinox documentation's `trunc_init`: a standard normal cut at
    # [lower, upper], then scaled (no variance correction).
    def init(key, shape, dtype):
        return stddev * jax.random.truncated_normal(key, lower, upper, shape, dtype)

    return init


def make(name: str, kwargs: dict[str, Any]) -> Callable:
    """`name(**kwargs)` as a `(key, shape, dtype) -> array` function."""
    user = R.user_initializer(name)
    if user is not None:
        return lambda key, shape, dtype: user(key, shape, dtype, **kwargs)
    inits = jax.nn.initializers
    if name == "trunc_normal":
        return _trunc_normal(**kwargs)
    if name in ("zeros", "ones"):
        return getattr(inits, name)
    if name in _VARIANCE:
        return getattr(inits, _VARIANCE[name])(**_AXES)
    if name == "variance_scaling":
        return inits.variance_scaling(**kwargs, **_AXES)
    return getattr(inits, name)(**kwargs)


@functools.partial(jax.jit, static_argnames=("name", "kwargs", "shape", "dtype"))
def draw(rule_key, hashes, *, name, kwargs, shape, dtype):
    """One draw per entry of `hashes`, each from `fold_in(rule_key, hash)`."""
    init = make(name, dict(kwargs))

    def one(h):
        return init(jax.random.fold_in(rule_key, h), shape, dtype)

    return jax.vmap(one)(hashes)


@jax.jit
def _take(stacked, i):
    return jax.lax.dynamic_index_in_dim(stacked, i, keepdims=False)


def unstack(stacked) -> list:
    """Split a draw into its leaves. One small compiled slice, called per leaf:
    returning the leaves from `draw` itself would compile a program with one
    output per leaf, which takes seconds for a thousand."""
    return [_take(stacked, i) for i in range(stacked.shape[0])]


def hashes_array(values: list[int]):
    return jnp.asarray(values, dtype=jnp.uint32)
