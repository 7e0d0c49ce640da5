"""What the actions put around parts of a model: wrappers of arrays, resolved
at the jit/grad boundary, and `Remat`, a module whose call is checkpointed.

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

# Said when JAX is handed a wrapper as an array: the model was called
# unresolved. (The model types import nothing of eqxform, so this is an
# `UnresolvedError` carrying the code, not an `EqxformError`.)
UNRESOLVED_CODE = "E437"
UNRESOLVED = (
    "error[{code}]: `{name}` stands where an array was and is resolved at the jit/grad "
    "boundary, but the model was called without `eqxform.resolve`\n"
    "  = help: call `eqxform.resolve(model)(x)` inside your jit/grad (it gives every "
    "wrapper's array, a frozen one under `stop_gradient`), or make a plain model with "
    "`where ** -> unwrap` or `eqxform.bake(model)`"
)


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

    def __jax_array__(self):
        # JAX asks for this when a layer computes with the wrapper itself:
        # the model was called without `resolve`. Say so, not JAX's "not a
        # valid JAX type" deep in a convolution.
        _unresolved(self)


class UnresolvedError(ValueError):
    """A wrapper reached JAX as if it were an array: the model was called
    without `eqxform.resolve`. (A `ValueError`: JAX rewrites a `TypeError`
    raised while it reads an argument into its own message.)"""


def _unresolved(x: Any):
    raise UnresolvedError(UNRESOLVED.format(code=UNRESOLVED_CODE, name=type(x).__name__))


def _hook_primitives() -> None:
    """JAX's primitives (a convolution, say) look an argument's type up in two
    tables (its canonical value, then its abstract value) before anything
    else, and refuse `__jax_array__` there: a wrapper is entered in both, so
    that they say what `__jax_array__` says. The tables are JAX's own and
    unpublished; where they are missing, JAX's message stands."""
    try:
        from jax._src import core, dtypes
    except ImportError:
        return
    register = getattr(dtypes, "register_canonicalize_value_handler", None)
    avals = getattr(core, "pytype_aval_mappings", None)
    if callable(register) and isinstance(avals, dict):
        register(Wrapper, _unresolved)
        avals[Wrapper] = _unresolved


_hook_primitives()


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


class Symmetric(Wrapper):
    """`0.5 * (W + W^T)` over the last two axes (any stack or ensemble axes lead)."""

    matrix: Any

    def __init__(self, matrix):
        if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
            raise ValueError(f"`symmetric` needs square matrices, not shape {tuple(matrix.shape)}")
        self.matrix = matrix

    def get(self):
        m = _value(self.matrix)
        return 0.5 * (m + jnp.swapaxes(m, -1, -2))


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
    others train (`where blocks[0:4] -> freeze` on a stack). `axis` counts
    from the end (negative), so that it names the layer axis both in the
    whole ensemble and in one member's view of it, under `vmap`.
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
        axis = self.axis % len(shape)
        return frozen.reshape([count if i == axis else 1 for i in range(len(shape))])


BUILTIN = {"symmetric": Symmetric, "positive": Positive, "weight_norm": WeightNormed}


class Remat(eqx.Module):
    """A module whose call is checkpointed (`eqx.filter_checkpoint`, that is
    `jax.checkpoint`): on the backward pass its activations are recomputed
    rather than kept, save what `policy` (a name in `jax.checkpoint_policies`;
    None: only the inputs) keeps. Outputs and gradients are the module's own.
    Any arguments pass through, keyword arguments and keys included."""

    module: Any
    policy: str | None = eqx.field(static=True, default=None)

    def __call__(self, *args, **kwargs):
        policy = None if self.policy is None else getattr(jax.checkpoint_policies, self.policy)
        return eqx.filter_checkpoint(_call, policy=policy)(self.module, args, kwargs)


def _call(module, args, kwargs):
    return module(*args, **kwargs)


# The module types that stand around a module (in their first field) and that
# selectors and paths see through: `blocks[0].mlp` is the `mlp` of a block
# that `remat` wrapped.
AROUND = frozenset({Remat})
