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
from .._errors import EqxformError, UsageError
from .._modules import resolve as resolve_wrappers
from .._program import recipe_of, remember


class RetraceError(EqxformError):
    """A training step was called with inputs that would compile it again."""


def _signature(batch) -> tuple:
    return tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in batch)


class Step:
    """A compiled training step with the model and optimiser state inside.

    Call it with a batch; it returns the loss. `step.model`, `step.state` (the
    model's `eqx.nn.State`, for a stateful model) and `step.opt_state`
    rebuild the trees (only when asked).
    """

    def __init__(
        self,
        loss_fn: Callable[..., Any],
        optimizer: optax.GradientTransformation,
        model: Any,
        *,
        state: Any = None,
        resolve: bool = True,
        donate: bool = True,
        allow_retrace: bool = False,
    ):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        if donate:
            # Donation hands the buffers to the step; copy them once, so that
            # the caller's `model` (and state) stay usable.
            params = jax.tree_util.tree_map(jnp.copy, params)
            state = None if state is None else jax.tree_util.tree_map(jnp.copy, state)
        self._params, self._params_def = jax.tree_util.tree_flatten(params)
        opt_state = optimizer.init(params)
        self._opt, self._opt_def = jax.tree_util.tree_flatten(opt_state)
        self._stateful = state is not None
        self._state, self._state_def = jax.tree_util.tree_flatten(state)
        self._static = static
        # The trained model is the model it started from, other values: it
        # keeps that model's recipe.
        self._recipe = recipe_of(model if state is None else (model, state))
        self._allow_retrace = allow_retrace
        self._signature: tuple | None = None
        self.traces = 0
        params_def, opt_def, state_def = self._params_def, self._opt_def, self._state_def
        stateful = self._stateful

        def step(flat_params, flat_opt, flat_state, *batch):
            self.traces += 1
            params = jax.tree_util.tree_unflatten(params_def, flat_params)
            opt_state = jax.tree_util.tree_unflatten(opt_def, flat_opt)
            model_state = jax.tree_util.tree_unflatten(state_def, flat_state)

            def loss_of(p):
                m = eqx.combine(p, static)
                m = resolve_wrappers(m) if resolve else m
                if stateful:
                    return loss_fn(m, model_state, *batch)
                return loss_fn(m, *batch), model_state

            (loss, model_state), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (
                jax.tree_util.tree_leaves(params),
                jax.tree_util.tree_leaves(opt_state),
                jax.tree_util.tree_leaves(model_state),
                loss,
            )

        self._compiled = jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())

    def __call__(self, *batch) -> jax.Array:
        signature = _signature(batch)
        if self._signature is None:
            first = True
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
        else:
            first = False
        try:
            out = self._compiled(self._params, self._opt, self._state, *batch)
        except (TypeError, ValueError) as e:
            if not first:
                raise
            # The first call traces the loss on this batch: what fails here is
            # the batch (or the loss), said plainly rather than as a traceback.
            raise UsageError(
                Diagnostic(
                    "E502",
                    f"the training step fails on a batch of {_show(signature)}: "
                    + (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__),
                    help="the loss is `loss_fn(model, *batch) -> scalar`, or for a stateful "
                    "model `loss_fn(model, state, *batch) -> (scalar, state)` with "
                    "`make_step(..., state=state)`; check the batch's shapes against the model",
                )
            ) from None
        self._params, self._opt, self._state, loss = out
        self._signature = signature
        return loss

    @property
    def model(self) -> Any:
        params = jax.tree_util.tree_unflatten(self._params_def, self._params)
        model = eqx.combine(params, self._static)
        if not self._stateful:
            remember(model, self._recipe)
        return model

    @property
    def state(self) -> Any:
        """The model's state (`eqx.nn.State`), for a stateful model; else None."""
        if not self._stateful:
            return None
        return jax.tree_util.tree_unflatten(self._state_def, self._state)

    @property
    def result(self) -> Any:
        """The trained model, with its state when it has one (`(model, state)`),
        as `eqxform.save` takes it; it keeps the recipe of what was trained."""
        subject = self.model if not self._stateful else (self.model, self.state)
        remember(subject, self._recipe)
        return subject

    @property
    def opt_state(self) -> Any:
        return jax.tree_util.tree_unflatten(self._opt_def, self._opt)


def _show(signature: tuple) -> str:
    return ", ".join(f"{getattr(d, 'name', d)}{list(s)}" for s, d in signature)


def make_step(
    loss_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    model: Any,
    *,
    state: Any = None,
    resolve: bool = True,
    donate: bool = True,
    allow_retrace: bool = False,
) -> Step:
    """A training step that pays for no pytree flattening per call.

    **Arguments:**

    - `loss_fn`: `loss_fn(model, *batch) -> scalar`; with `state`,
      `loss_fn(model, state, *batch) -> (scalar, state)`. The model it
      receives is resolved (`eqxform.resolve`) unless `resolve=False`.
    - `optimizer`: an `optax` optimiser, e.g. `eqxform.optimizer(program, model)`.
    - `model`: the model to train; its floating-point arrays are the parameters.
    - `state`: the model's `eqx.nn.State` (BatchNorm statistics, say), carried
      from step to step and not trained; `step.state` gives it back.
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
        loss_fn,
        optimizer,
        model,
        state=state,
        resolve=resolve,
        donate=donate,
        allow_retrace=allow_retrace,
    )
