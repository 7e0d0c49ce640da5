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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._diagnostics import did_you_mean
from .._errors import EqxformError, UsageError, first_line
from .._mesh import as_mesh
from .._modules import resolve as resolve_wrappers
from .._program import recipe_of, remember


class RetraceError(EqxformError):
    """A training step was called with inputs that would compile it again."""


def _signature(batch) -> tuple:
    return tuple(
        (np.shape(x), getattr(x, "dtype", type(x))) for x in jax.tree_util.tree_leaves(batch)
    )


class Step:
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
    - `mesh`: train on a device mesh (a `jax.sharding.Mesh`, `"data=2,model=4"`
      or a mapping); by default the mesh the model's arrays are placed on
      (`Program.apply` or `eqxform.load` with a mesh), if any. Parameters and
      the optimiser's state keep their shardings, arrays not on the mesh are
      replicated, and the step is compiled once.
    - `batch_axis`: the mesh axis the batch's first dimension is split over
      (data parallelism); by default `data` when the mesh has it, else the
      batch is replicated.
    - `stop_if_nonfinite`: from the first step whose loss or updated parameters
      are not finite (NaN or infinite) on, leave the model and the optimiser's
      state as they were before it; `step.nonfinite_step` names that step.
      It costs no wait for the device per step (`eqxform train` uses it).
    - `members`: train an ensemble whose `loss_fn` gives one loss per member
      (`[members]`): the step differentiates their sum (each member's gradient
      is its own loss's) and returns the vector. With `stop_if_nonfinite`, a
      member that diverges stops alone (`step.diverged`), its arrays kept at
      their last finite values inside the compiled step; the others train on.

    **Returns:** a compiled step with the model and optimiser state inside:
    call it with a batch and it returns the loss; `step.model`, `step.state`
    (the model's `eqx.nn.State`, for a stateful model) and `step.opt_state`
    rebuild the trees (only when asked). In a plain Python loop:

    ```python
    step = eqxform.make_step(loss_fn, eqxform.optimizer(program, model), model)
    for x, y in batches:
        loss = step(x, y)
    model = step.model
    ```
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
        mesh: Any = None,
        batch_axis: str | None = None,
        stop_if_nonfinite: bool = False,
        members: int | None = None,
    ):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        # The mesh the step runs on, or None.
        self.mesh = mesh = _mesh_of(mesh, params)
        if mesh is None:
            # One compiled program makes the optimiser's state and (for
            # donation, which hands the buffers to the step) the copies that
            # keep the caller's `model` and state usable: run op by op, each
            # leaf's shape would compile small programs of its own.
            params, state, opt_state = eqx.filter_jit(_start)(optimizer, params, state, donate)
        else:
            params, state, self._batch_sharding = _on_mesh(mesh, params, state, batch_axis)
            if donate:
                params, state = jax.tree_util.tree_map(jnp.copy, (params, state))
            # The optimiser's state follows the parameters it mirrors (Adam's
            # moments are split as their parameters are), the rest replicated.
            opt_state = jax.jit(
                optimizer.init, out_shardings=_opt_shardings(optimizer, params, mesh)
            )(params)
        self._params, self._params_def = jax.tree_util.tree_flatten(params)
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
        # With `stop_if_nonfinite`: (steps run, the first step whose loss or
        # update was not finite, 0 while there is none; per member with
        # `members`), carried on the device.
        self._guarded = stop_if_nonfinite
        self._members = members
        first_bad = () if members is None else (members,)
        self._guard = [
            jnp.asarray(np.zeros((), np.int32)),
            jnp.asarray(np.zeros(first_bad, np.int32)),
        ]
        params_def, opt_def, state_def = self._params_def, self._opt_def, self._state_def
        stateful = self._stateful

        def step(flat_params, flat_opt, flat_state, guard, *batch):
            self.traces += 1
            params = jax.tree_util.tree_unflatten(params_def, flat_params)
            opt_state = jax.tree_util.tree_unflatten(opt_def, flat_opt)
            model_state = jax.tree_util.tree_unflatten(state_def, flat_state)

            def loss_of(p):
                m = eqx.combine(p, static)
                m = resolve_wrappers(m) if resolve else m
                if stateful:
                    value, new_state = loss_fn(m, model_state, *batch)
                else:
                    value, new_state = loss_fn(m, *batch), model_state
                # Per member: each member's gradient is that of its own loss.
                total = value if members is None else jnp.sum(value)
                return total, (value, new_state)

            (_, (loss, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            out = [jax.tree_util.tree_leaves(t) for t in (params, opt_state, model_state)]
            if stop_if_nonfinite:
                old = [flat_params, flat_opt, flat_state]
                out, guard = _keep_if_finite(old, out, loss, guard, members)
            return (*out, guard, loss)

        donated = (0, 1, 2, 3) if donate else ()
        if mesh is None:
            self._compiled = jax.jit(step, donate_argnums=donated)
            return
        # On a mesh: the parameters, the optimiser's state and the model's
        # state keep their shardings from step to step (compiled once), the
        # batch comes split over the batch axis, the loss replicated.
        replicated = NamedSharding(mesh, PartitionSpec())
        self._guard = [jax.device_put(x, replicated) for x in self._guard]
        kept = tuple(
            [x.sharding for x in leaves]
            for leaves in (self._params, self._opt, self._state, self._guard)
        )
        self._compiled = jax.jit(
            lambda p, o, s, g, batch: step(p, o, s, g, *batch),
            in_shardings=(*kept, self._batch_sharding),
            out_shardings=(*kept, replicated),
            donate_argnums=donated,
        )

    def __call__(self, *batch) -> jax.Array:
        signature = _signature(batch)
        first = self._signature is None
        if not first and signature != self._signature and not self._allow_retrace:
            raise RetraceError.of(
                "E501", show__signature=_show(self._signature), show_signature=_show(signature)
            )
        try:
            args = (self._params, self._opt, self._state, self._guard)
            if self.mesh is None:
                out = self._compiled(*args, *batch)
            else:
                batch = jax.tree_util.tree_map(self._place, batch)
                out = self._compiled(*args, batch)
        except (TypeError, ValueError) as e:
            if not first:
                raise
            # The first call traces the loss on this batch: what fails here is
            # the batch (or the loss), said plainly rather than as a traceback.
            raise UsageError.of(
                "E502", show_signature=_show(signature), error=first_line(e)
            ) from None
        self._params, self._opt, self._state, self._guard, loss = out
        self._signature = signature
        return loss

    @property
    def nonfinite_step(self) -> int | None:
        """With `stop_if_nonfinite=True`: the first step (counted from 1) whose
        loss or updated parameters were not finite, or None. From that step on
        the model and the optimiser's state stay as they were before it.
        With `members`, the step at which the last member diverged, once every
        member has (None while one still trains; `diverged` names each).
        (Reading it waits for the steps in flight.)"""
        if not self._guarded:
            return None
        bad = self._first_bad()
        if self._members is not None:
            return int(bad.max()) if bad.size and bad.all() else None
        return int(bad) or None

    @property
    def diverged(self) -> dict[int, int]:
        """With `stop_if_nonfinite=True` and `members`: the members that
        diverged, each with the first step (counted from 1) whose loss or
        update of it was not finite; it stays as it was before that step.
        (Reading it waits for the steps in flight.)"""
        if not self._guarded or self._members is None:
            return {}
        bad = self._first_bad()
        return {int(k): int(bad[k]) for k in np.flatnonzero(bad)}

    def _first_bad(self) -> np.ndarray:
        bad = self._guard[1]
        if isinstance(bad, jax.Array) and not bad.is_fully_addressable:
            bad = bad.addressable_data(0)
        return np.asarray(bad)

    def _place(self, x: Any) -> jax.Array:
        """A batch array split over the mesh's batch axis (from the whole batch,
        which every process holds)."""
        sharding = self._batch_sharding
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = np.asarray(x)
        # Split over one axis (`_on_mesh`), or replicated.
        parts = sharding.mesh.shape[sharding.spec[0]] if len(sharding.spec) else 1
        if host.ndim == 0 or host.shape[0] % parts:
            raise UsageError.of(
                "E510",
                value=host.shape[0] if host.ndim else "no",
                spec=sharding.spec[0],
                parts=parts,
            )
        if jax.process_count() == 1:
            return jax.device_put(host, sharding)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

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


def _start(optimizer, params, state, copy: bool):
    """The optimiser's state of `params`, and (with `copy`) copies of the
    parameters and the model's state."""
    opt_state = optimizer.init(params)
    if copy:
        params, state = jax.tree_util.tree_map(jnp.copy, (params, state))
    return params, state, opt_state


def _keep_if_finite(
    old: list, new: list, loss, guard: list, members: int | None
) -> tuple[list, list]:
    """The step's new leaves if its loss and parameters are finite and no
    step before failed; else the old ones. `guard` counts the steps and
    remembers the first that failed, so that one check after many steps
    finds it (no wait for the device per step).

    With `members` (an ensemble, `loss` one value per member), per member: a
    member whose loss or updated parameters are not finite keeps its old
    arrays (its parameters, its optimiser state, its model state) from then
    on, inside the compiled step; the other members take the step. The
    arrays that carry the member axis first are kept per member, the others
    (an optimiser's shared step count) move on while any member does."""
    count, bad = guard
    count = count + 1
    finite = jnp.isfinite(loss)
    for x in new[0]:
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            continue
        if members is None:
            finite = finite & jnp.all(jnp.isfinite(x))
        elif x.ndim and x.shape[0] == members:
            finite = finite & jnp.all(jnp.isfinite(x.reshape(members, -1)), axis=1)
    ok = finite & (bad == 0)
    if members is None:
        # One conditional, not a `where` per leaf: a select per leaf costs a
        # kernel each on the CPU and can take XLA minutes to compile for a
        # deep model.
        kept = jax.lax.cond(ok, lambda: new, lambda: old)
    else:
        alive = jnp.any(ok)

        def keep(n, o):
            if n.ndim and n.shape[0] == members:
                return jnp.where(ok.reshape((members,) + (1,) * (n.ndim - 1)), n, o)
            return jnp.where(alive, n, o)

        kept = [[keep(n, o) for n, o in zip(*groups)] for groups in zip(new, old)]
    return kept, [count, jnp.where((bad == 0) & ~finite, count, bad)]


def _mesh_of(mesh: Any, params: Any) -> Mesh | None:
    """The mesh to train on: the one given, else the one the parameters are
    placed on (by `Program.apply` or `load` with a mesh); None for neither."""
    if mesh is not None:
        return as_mesh(mesh)
    for x in jax.tree_util.tree_leaves(params):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def _on_mesh(mesh: Mesh, params: Any, state: Any, batch_axis: str | None):
    """Parameters on the mesh (those placed on it keep their sharding, the
    rest replicated), the state replicated, and the batch's sharding."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def put(x):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return x
        return jax.device_put(x, replicated)

    params, state = jax.tree_util.tree_map(put, (params, state))
    axis = "data" if batch_axis is None else batch_axis
    if axis not in mesh.axis_names:
        if batch_axis is not None:
            raise UsageError.of(
                "E468",
                batch_axis=batch_axis,
                listing=", ".join(f"`{a}`" for a in mesh.axis_names),
                value=did_you_mean(batch_axis, mesh.axis_names) or "",
            )
        return params, state, replicated
    return params, state, NamedSharding(mesh, PartitionSpec(axis))


def _opt_shardings(optimizer, params: Any, mesh: Mesh) -> Any:
    """A sharding for each leaf of the optimiser's state: that of the
    parameter whose key path ends it and whose shape it has, else replicated."""
    by_path = {
        tuple(path): x
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if isinstance(x, jax.Array)
    }
    replicated = NamedSharding(mesh, PartitionSpec())

    def choose(path, leaf):
        path = tuple(path)
        for i in range(len(path)):
            param = by_path.get(path[i:])
            if param is not None and tuple(param.shape) == tuple(leaf.shape):
                return param.sharding
        return replicated

    shapes = jax.eval_shape(optimizer.init, params)
    return jax.tree_util.tree_map_with_path(choose, shapes)


def _show(signature: tuple) -> str:
    return ", ".join(f"{getattr(d, 'name', d)}{list(s)}" for s, d in signature)


# `eqxform.make_step(...)` builds a `Step`.
make_step = Step
