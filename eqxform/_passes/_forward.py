"""Running a model on its declared inputs: the forward pass that `plan`
checks under `eval_shape` and that `apply` runs to verify a `stack`.

A model is called with one argument per `input` line, then its state when it
is a stateful `(model, state)` pair (`model(*inputs, state)`, as Equinox's
stateful layers are called), and a `key=` only when its `__call__` requires
one. Wrappers are resolved first, as at a training step.
"""

from __future__ import annotations

import inspect
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _ast as A
from .. import _names as N
from .._modules import resolve, split_state


def input_structs(inputs: tuple[A.InputStmt, ...]) -> tuple[jax.ShapeDtypeStruct, ...]:
    return tuple(
        jax.ShapeDtypeStruct(tuple(int(d) for d in i.shape), jnp.dtype(N.INPUT_DTYPES[i.dtype]))
        for i in inputs
    )


def random_inputs(structs, key) -> tuple[jax.Array, ...]:
    """Inputs of the declared shapes and dtypes: normal floats, small integers
    (valid token ids and class labels), random booleans."""
    out = []
    for i, s in enumerate(structs):
        k = jax.random.fold_in(key, i)
        if jnp.issubdtype(s.dtype, jnp.floating):
            out.append(jax.random.normal(k, s.shape, s.dtype))
        elif s.dtype == jnp.bool_:
            out.append(jax.random.bernoulli(k, 0.5, s.shape))
        else:
            out.append(jax.random.randint(k, s.shape, 0, 2).astype(s.dtype))
    return tuple(out)


def _needs_key(model: Any) -> bool:
    try:
        params = inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return False
    key = params.get("key")
    return key is not None and key.default is inspect.Parameter.empty


def call(subject: Any, xs: tuple) -> Any:
    """`model(*xs)`, or `model(*xs, state)` for a `(model, state)` pair."""
    model, state = split_state(subject)
    model = resolve(model)
    args = tuple(xs) + (() if state is None else (state,))
    if _needs_key(model):
        return model(*args, key=jax.random.key(0))
    return model(*args)


def output_shape(subject: Any, structs) -> Any:
    """The output of the forward pass, as `ShapeDtypeStruct`s; raises what the
    model raises on these inputs."""
    return eqx.filter_eval_shape(call, subject, structs)


def outputs(subject: Any, xs: tuple) -> list[np.ndarray]:
    """The arrays the model gives on `xs` (a stateful model's output only)."""
    out = eqx.filter_jit(call)(subject, xs)
    if split_state(subject)[1] is not None and isinstance(out, tuple):
        out = out[0]
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(out) if eqx.is_array(x)]
