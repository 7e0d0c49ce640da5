"""The low-overhead training step.

Equinox's tricks page: flattening the model and optimiser state on every call
into `filter_jit` costs time that small models notice. `make_step` flattens
once, unflattens inside the compiled region, returns flat leaves, and donates
their buffers, so a step costs what a `jax.jit` over flat arrays costs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._diagnostics import Diagnostic
from .._errors import EqxformError
from .._modules import resolve as resolve_wrappers
from .._program import recipe_of, remember


class RetraceError(EqxformError):
    """A training step was called with inputs that would compile it again."""


def _signature(batch) -> tuple:
    return tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in batch)


class Step:
    """A compiled training step with the model and optimiser state inside.

    Call it with a batch; it returns the loss. `step.model` and
    `step.opt_state` rebuild the trees (only when asked).
    """

    def __init__(
        self,
        loss_fn: Callable[..., Any],
        optimizer: optax.GradientTransformation,
        model: Any,
        *,
        resolve: bool = True,
        donate: bool = True,
        allow_retrace: bool = False,
    ):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        if donate:
            # Donation hands the buffers to the step; copy them once, so that
            # the caller's `model` stays usable.
            params = jax.tree_util.tree_map(jnp.copy, params)
        self._params, self._params_def = jax.tree_util.tree_flatten(params)
        state = optimizer.init(params)
        self._state, self._state_def = jax.tree_util.tree_flatten(state)
        self._static = static
        # The trained model is the model it started from, other values: it
        # keeps that model's recipe.
        self._recipe = recipe_of(model)
        self._allow_retrace = allow_retrace
        self._signature: tuple | None = None
        self.traces = 0
        params_def, state_def = self._params_def, self._state_def

        def step(flat_params, flat_state, *batch):
            self.traces += 1
            params = jax.tree_util.tree_unflatten(params_def, flat_params)
            state = jax.tree_util.tree_unflatten(state_def, flat_state)

            def loss_of(p):
                m = eqx.combine(p, static)
                return loss_fn(resolve_wrappers(m) if resolve else m, *batch)

            loss, grads = jax.value_and_grad(loss_of)(params)
            updates, state = optimizer.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(state), loss

        self._compiled = jax.jit(step, donate_argnums=(0, 1) if donate else ())

    def __call__(self, *batch) -> jax.Array:
        signature = _signature(batch)
        if self._signature is None:
            self._signature = signature
        elif signature != self._signature and not self._allow_retrace:
            raise RetraceError(
                Diagnostic(
                    "E501",
                    "the batch changed shape or dtype, which would compile the step again: "
                    f"{_show(self._signature)} before, {_show(signature)} now",
                    help="give every batch the same shape (drop or pad the last one), or "
                    "pass `allow_retrace=True` to `make_step`",
                )
            )
        self._params, self._state, loss = self._compiled(self._params, self._state, *batch)
        return loss

    @property
    def model(self) -> Any:
        params = jax.tree_util.tree_unflatten(self._params_def, self._params)
        model = eqx.combine(params, self._static)
        remember(model, self._recipe)
        return model

    @property
    def opt_state(self) -> Any:
        return jax.tree_util.tree_unflatten(self._state_def, self._state)


def _show(signature: tuple) -> str:
    return ", ".join(f"{getattr(d, 'name', d)}{list(s)}" for s, d in signature)


def make_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    model: Any,
    *,
    resolve: bool = True,
    donate: bool = True,
    allow_retrace: bool = False,
) -> Step:
    """A training step that pays for no pytree flattening per call.

    **Arguments:**

    - `loss_fn`: `loss_fn(model, *batch) -> scalar`. The model it receives is
      resolved (`eqxform.resolve`) unless `resolve=False`.
    - `optimizer`: an `optax` optimiser, e.g. `eqxform.optimizer(program, model)`.
    - `model`: the model to train; its floating-point arrays are the parameters.
    - `donate`: reuse the old buffers for the new parameters and state.
    - `allow_retrace`: accept batches of a new shape (each compiles the step
      again); by default such a batch raises `RetraceError`.

    **Returns:** a `Step`. In a plain Python loop:

    ```python
    step = eqxform.make_step(loss_fn, eqxform.optimizer(program, model), model)
    for x, y in batches:
        loss = step(x, y)
    model = step.model
    ```
    """
    return Step(
        loss_fn, optimizer, model, resolve=resolve, donate=donate, allow_retrace=allow_retrace
    )
