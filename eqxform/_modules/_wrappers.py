"""Per-parameter behaviour: wrappers, resolved at the jit/grad boundary.

A wrapper is a module that stands where an array was (`Linear.weight` becomes
`Symmetric(matrix=...)`) and whose `get()` gives the array the model computes
with. `resolve(model)` replaces every wrapper by its value, innermost first, and
is an ordinary pure function: call it inside `jit`, `grad` and `vmap`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp


class Wrapper(eqx.Module):
    """Base class of wrappers. Subclasses define `get()`; the first field holds
    the wrapped value (an array or another wrapper)."""

    def get(self) -> jax.Array:
        raise NotImplementedError

    def _inner(self) -> Any:
        return getattr(self, wrapped_field(self))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._inner().shape)

    @property
    def dtype(self):
        return self._inner().dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def is_wrapper(x: Any) -> bool:
    return isinstance(x, Wrapper)


def wrapped_field(wrapper: Wrapper) -> str:
    """The field of `wrapper` that holds what it wraps: its first, by the contract
    of `Wrapper` (`Frozen.value`, `Symmetric.matrix`, `LoRAWeight.weight`)."""
    return dataclasses.fields(wrapper)[0].name


def _value(x: Any) -> jax.Array:
    return x.get() if isinstance(x, Wrapper) else x


def resolve(model: Any) -> Any:
    """Replace every wrapper in `model` by its value (innermost first).

    Use it where the model is called, after the jit and grad boundaries:

    ```python
    @eqx.filter_grad
    def loss_fn(model, x, y):
        model = eqxform.resolve(model)
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)
    ```
    """
    return jax.tree_util.tree_map(_value, model, is_leaf=is_wrapper)


def bake(model: Any) -> Any:
    """`model` with its wrappers replaced by plain arrays: a plain Equinox model.

    Unlike `resolve`, a frozen value is kept without `stop_gradient`: the result
    is for export, not for training. Prefer the spec form `where ** -> unwrap`,
    which records the step in the model's recipe.
    """
    return jax.tree_util.tree_map(_baked, model, is_leaf=is_wrapper)


def _baked(x: Any) -> Any:
    if isinstance(x, Frozen):
        return _baked(x.value)
    if isinstance(x, Wrapper):
        return x.get()
    return x


def _last_two(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


class Symmetric(Wrapper):
    """`0.5 * (W + W^T)` over the last two axes (any stack or ensemble axes lead)."""

    matrix: Any

    def __init__(self, matrix):
        if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
            raise ValueError(f"`symmetric` needs square matrices, not shape {tuple(matrix.shape)}")
        self.matrix = matrix

    def get(self):
        m = _value(self.matrix)
        return 0.5 * (m + _last_two(m))


class Positive(Wrapper):
    """`softplus(raw) + minimum`: a parameter that stays positive. Wrapping an
    array keeps its values (clipped to be positive)."""

    raw: Any
    minimum: float = eqx.field(static=True)

    def __init__(self, value, minimum: float = 0.0):
        x = jnp.maximum(_value(value) - minimum, 1e-6)
        # The inverse of softplus, written to stay finite for large x.
        self.raw = x + jnp.log(-jnp.expm1(-x))
        self.minimum = minimum

    def get(self):
        return jax.nn.softplus(_value(self.raw)) + self.minimum


class WeightNormed(Wrapper):
    """`g * v / ||v||`, the norm taken per output row over the input axes, as
    Equinox's `(out, in, *kernel)` layouts want. Wrapping keeps the values."""

    v: Any
    g: Any

    def __init__(self, weight):
        w = _value(weight)
        if w.ndim < 2:
            raise ValueError(f"`weight_norm` needs a weight of 2 or more dimensions, not {w.shape}")
        self.v = w
        self.g = _norm(w)

    def get(self):
        v = _value(self.v)
        return _value(self.g) * v / _norm(v)


def _norm(w):
    return jnp.sqrt(jnp.sum(w * w, axis=tuple(range(1, w.ndim)), keepdims=True))


class Frozen(Wrapper):
    """No gradient passes (`stop_gradient` at resolve), and the optimiser that
    eqxform builds leaves it alone, weight decay included.

    `layers` (with `axis`) freezes only those layers of a stacked array: the
    others train (`where blocks[0:4] -> freeze` on a stack).
    """

    value: Any
    layers: tuple[int, ...] | None = eqx.field(static=True, default=None)
    axis: int = eqx.field(static=True, default=0)

    def get(self):
        value = _value(self.value)
        if self.layers is None:
            return jax.lax.stop_gradient(value)
        return jnp.where(self.mask(value.shape), jax.lax.stop_gradient(value), value)

    def mask(self, shape: tuple[int, ...]) -> jax.Array:
        """True at the frozen layers, broadcastable to an array of `shape`."""
        count = shape[self.axis]
        frozen = jnp.zeros(count, bool).at[jnp.asarray(self.layers, jnp.int32)].set(True)
        return frozen.reshape([count if i == self.axis else 1 for i in range(len(shape))])


BUILTIN = {"symmetric": Symmetric, "positive": Positive, "weight_norm": WeightNormed}
