"""Stacks and ensembles: modules whose arrays carry a leading axis.

`Stacked` holds N layers of one structure as a single module with a leading
layer axis and runs them with `lax.scan` (one after another) or `vmap` (side
by side): the scan-over-layers trick, which compiles one layer, not N.
`Ensemble` holds N members with a leading member axis: the ensembling trick.
Selectors see through both: `blocks[2:5].weight` names those layers' slices.

Both call their layers the way a parent's loop would: extra positional and
keyword arguments go to every layer, a `key=` is split into one key per layer
(or member), and an `eqx.nn.State` is threaded through. Stateful layers keep
their state under one `StackedMarker` per stacked `StateIndex`, whose value
carries the layer axis; `restate` rebuilds a `State` for a model whose stacks
changed.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._wrappers import Frozen, Wrapper, resolve

State = eqx.nn.State
StateIndex = eqx.nn.StateIndex


def _take(tree: Any, index) -> Any:
    """Layer `index` (or a slice of layers) of every array of `tree`. A freeze
    of some layers along this axis goes with them: a layer taken is frozen
    whole or not at all, a slice keeps the layers it holds."""

    def plain(tree):
        return jax.tree_util.tree_map(lambda x: x[index] if eqx.is_array(x) else x, tree)

    def take(x):
        if not (isinstance(x, Frozen) and x.layers is not None and eqx.is_array(x.value)):
            return plain(x)
        value = x.value[index]
        if x.axis % x.value.ndim != 0:  # another stack's layers: its axis counts from the end
            return dataclasses.replace(x, value=value)
        picked = range(len(x.value))[index]
        if isinstance(picked, int):
            return Frozen(value) if picked in x.layers else value
        layers = tuple(k for k, i in enumerate(picked) if i in x.layers)
        if not layers:
            return value
        return Frozen(value) if len(layers) == len(picked) else Frozen(value, layers, x.axis)

    return jax.tree_util.tree_map(take, tree, is_leaf=lambda x: isinstance(x, Frozen))


def is_state_index(x: Any) -> bool:
    """Is `x` an `eqx.nn.StateIndex` (where a stateful layer keeps its state)?"""
    return isinstance(x, StateIndex)


@dataclass(frozen=True)
class StackedMarker:
    """The state key of a stacked `StateIndex`: the keys of the layers'
    indices it stands for, in layer order."""

    parts: tuple


def marked(index: StateIndex, marker: Any) -> StateIndex:
    """A copy of `index` under another state key (as `make_with_state` does)."""
    new = StateIndex(index.init)
    object.__setattr__(new, "marker", marker)
    return new


def _states(args: tuple, kwargs: dict) -> tuple[list, State | None]:
    """Where a `State` is among the call's arguments (positions and names),
    and the first one (None: the call passes none)."""
    where: list = [i for i, a in enumerate(args) if isinstance(a, State)]
    where += [k for k, v in kwargs.items() if isinstance(v, State)]
    if not where:
        return where, None
    return where, args[where[0]] if isinstance(where[0], int) else kwargs[where[0]]


def _with_state(args: tuple, kwargs: dict, where, state) -> tuple[tuple, dict]:
    if isinstance(where, int):
        args = args[:where] + (state,) + args[where + 1 :]
    else:
        kwargs = {**kwargs, where: state}
    return args, kwargs


def _split_output(out: Any, what: str) -> tuple[Any, State]:
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], State):
        return out
    raise TypeError(
        f"{what} was given an `eqx.nn.State`, so each layer must return `(output, state)`; "
        f"this one returned {type(out).__name__}"
    )


def _one_call(static, args, kwargs, where, state_def, what: str, prepare=lambda m: m):
    """The call of one layer of a stack (or member of an ensemble) as a function
    `(arrays, input, key, state leaves) -> (output, state leaves)` to map over the
    layers: the layer is `static` with `arrays`, made ready by `prepare`; `key`
    (when not None) and the layer's part of the state (when the call passes a
    state at `where`, flattened by `state_def`) join the call's own arguments."""

    def call(d, h, k, s):
        layer = prepare(eqx.combine(d, static))
        call_args, call_kwargs = args, dict(kwargs)
        if k is not None:
            call_kwargs["key"] = k
        if state_def is None:
            return layer(h, *call_args, **call_kwargs), s
        layer_state = jax.tree_util.tree_unflatten(state_def, s)
        call_args, call_kwargs = _with_state(call_args, call_kwargs, where[0], layer_state)
        out, new_state = _split_output(layer(h, *call_args, **call_kwargs), what)
        return out, jax.tree_util.tree_leaves(new_state)

    return call


def _has_layout(x: Any) -> bool:
    return isinstance(x, (eqx.nn.Linear, eqx.nn.Embedding, eqx.nn.Conv, eqx.nn.ConvTranspose))


def first_layout_weight(tree: Any) -> tuple[Any, int] | None:
    """The first `weight` in `tree` of a layer type whose layout Equinox fixes
    (seen through its wrappers), and that layout's number of axes; None when
    `tree` has none."""
    for module in jax.tree_util.tree_leaves(tree, is_leaf=_has_layout):
        if _has_layout(module):
            weight = module.weight
            while isinstance(weight, Wrapper):
                weight = weight._inner()
            if eqx.is_array(weight) or isinstance(weight, jax.ShapeDtypeStruct):
                # `(out, in)`, and a convolution's kernel axes after.
                return weight, getattr(module, "num_spatial_dims", 0) + 2
    return None


def plain_error(code: str, **fields) -> Exception:
    """The error a stack raises when it is called in a way it cannot run, made
    by the `error` its builder gave it (eqxform's passes give one that makes an
    `EqxformError` from the code's record); this default, for a stack built
    without them (the model types import nothing else of eqxform), makes a
    `TypeError` that names the code and its fields."""
    said = "".join(f"; {name}: {value}" for name, value in fields.items())
    return TypeError(f"error[{code}]: see `eqxform explain {code}`{said}")


def _shape_text(tree: Any) -> str:
    """A value's structure in a line: `f32[16,64]`, `(f32[16,64], Cache)`."""
    if isinstance(tree, jax.ShapeDtypeStruct) or eqx.is_array(tree):
        name = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(
            str(tree.dtype), str(tree.dtype)
        )
        return f"{name}[{','.join(str(d) for d in tree.shape)}]"
    if isinstance(tree, (tuple, list)):
        inner = ", ".join(_shape_text(t) for t in tree)
        return f"({inner})" if isinstance(tree, tuple) else f"[{inner}]"
    if tree is None:
        return "None"
    return f"`{type(tree).__name__}`"


def _carry_change(body, x, xs) -> dict[str, str]:
    """What a scan's layers return, when it is not what they take."""
    first = jax.tree_util.tree_map(lambda a: a[0], xs)
    try:
        out = jax.eval_shape(lambda: body(x, first)[0])
        returned = _shape_text(out)
    except Exception:  # the layer fails on its own input: its own error is the news
        returned = "something else"
    return dict(takes=_shape_text(x), returns=returned)


def state_indices(tree: Any) -> list:
    """The `eqx.nn.StateIndex`es in `tree`, in tree order."""
    return [x for x in jax.tree_util.tree_leaves(tree, is_leaf=is_state_index) if is_state_index(x)]


def _unstacked_state(state: State, layers: Any, error):
    """For a `state` that holds the stacked layers' values per layer (made for
    the model before `stack`): that state with the values stacked, and a
    function that turns the stacked state after the call back into per-layer
    values. None when `state` holds the stack's own values."""
    markers = list(dict.fromkeys(x.marker for x in state_indices(layers)))
    values = state_values(state)
    if all(m in values for m in markers):
        return None
    stacked = {}
    for m in markers:
        if m in values:
            stacked[m] = values[m]
        elif isinstance(m, StackedMarker) and all(p in values for p in m.parts):
            parts = [values[p] for p in m.parts]
            stacked[m] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *parts)
        else:
            raise error("E436")

    def back(new: State) -> State:
        out = {}
        for m, v in state_values(new).items():
            if m in values:
                out[m] = v
            else:
                for i, p in enumerate(m.parts):
                    out[p] = _take(v, i)
        return make_state(out)

    return make_state(stacked), back


class Stacked(eqx.Module):
    """N layers of one structure, stacked. Call it like the layers in a row.

    **Attributes:** `layers` (one module whose arrays have a leading axis of
    length `count`), `mode` (`"scan"`: each layer's output feeds the next;
    `"vmap"`: every layer sees the same input, outputs stacked), `remat`
    (checkpoint each layer), `unroll` (passed to `lax.scan`), `kind` (what
    `unstack` gives back: `list`, `tuple`, `sequential`, `module` or `slice`),
    `layerwise` (what iterating gives: by default the stack itself, once, so
    that a parent's `for block in self.blocks: x = block(x, ...)` runs one
    scan over every layer; with `layerwise`, each layer in turn).

    `stacked(x, *args, key=None, **kwargs)` calls layer i as
    `layer_i(h, *args, key=key_i, **kwargs)`, where `key_i` is the i-th key
    split from `key`; an `eqx.nn.State` among the arguments is threaded
    through, each layer returning `(h, state)`.
    """

    layers: Any
    count: int = eqx.field(static=True)
    mode: str = eqx.field(static=True, default="scan")
    remat: bool = eqx.field(static=True, default=False)
    unroll: int = eqx.field(static=True, default=1)
    kind: str = eqx.field(static=True, default="list")
    layerwise: bool = eqx.field(static=True, default=False)
    # The mesh axis the layer axis is split over (`stack ... over model`).
    over: str | None = eqx.field(static=True, default=None)
    # The number of axes of each array of one layer, to tell the whole stack
    # from one layer of it inside someone else's `scan` (a library that scans
    # over its pre-stacked layers itself, as esm2quinox does).
    layer_ndims: tuple = eqx.field(static=True, default=())
    # Makes the error raised when the stack is called in a way it cannot run.
    error: Any = eqx.field(static=True, default=plain_error)
    # The layer axes each layer carries inside, before its layouts: 1 for a
    # library's blocks that hold their own layers pre-stacked again
    # (transformer-flows' attention blocks, `filter_vmap` inside `filter_vmap`).
    inner: int = eqx.field(static=True, default=0)

    def __len__(self) -> int:
        return self.count

    @property
    def unrolled(self) -> bool:
        """Does the scan run every layer in one step (no loop)?"""
        return self.mode == "scan" and self.count > 1 and self.unroll >= self.count

    def _is_one_layer(self) -> bool:
        """Are these one layer's arrays (a parent's own scan sliced the stack)?
        Told by the first weight of a layer type whose layout Equinox fixes
        (adapters and wrappers add arrays, but leave that one's axes), else
        by the first array."""
        if not self.layer_ndims:
            return False
        found = first_layout_weight(self.layers)
        if found is not None:
            weight, layout = found
            return weight.ndim == layout + self.inner
        leaves = [x for x in jax.tree_util.tree_leaves(self.layers) if eqx.is_array(x)]
        return bool(leaves) and leaves[0].ndim == self.layer_ndims[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            count = len(range(*index.indices(self.count)))
            return dataclasses.replace(self, layers=_take(self.layers, index), count=count)
        if not -self.count <= index < self.count:
            raise IndexError(f"the stack has {self.count} layers, not {index}")
        i = index % self.count
        layer = _take(self.layers, i)
        # Each layer's state goes back under its own key.
        return jax.tree_util.tree_map(
            lambda x: (
                marked(x, x.marker.parts[i])
                if is_state_index(x) and isinstance(x.marker, StackedMarker)
                else x
            ),
            layer,
            is_leaf=is_state_index,
        )

    def __iter__(self):
        if self.layerwise:
            return (self[i] for i in range(self.count))
        # One item: the stack itself, which runs every layer when called. A
        # parent's `for block in blocks: x = block(x, ...)` becomes one scan.
        return iter((self,))

    def __getattr__(self, name: str) -> Any:
        # A parent that iterates the stack may reach into its block
        # (`block.attn`): that is the stacked block's attribute, layer axis
        # included.
        if name.startswith("__") or name == "layers":
            raise AttributeError(name)
        return getattr(self.layers, name)

    def __call__(self, x, *args, key=None, **kwargs):
        if self._is_one_layer():
            # One layer, sliced out by the parent's own scan over the stack.
            if key is not None:
                kwargs["key"] = key
            return self.layers(x, *args, **kwargs)
        where, state = _states(args, kwargs)
        if len(where) > 1:
            raise TypeError("a stack threads one `eqx.nn.State`; the call passes several")
        if state is not None:
            unstacked = _unstacked_state(state, self.layers, self.error)
            if unstacked is not None:
                # A state made for the model before it was stacked: its layers'
                # values are stacked for the call and written back per layer.
                stacked, back = unstacked
                call_args, call_kwargs = _with_state(args, kwargs, where[0], stacked)
                out, new = self(x, *call_args, key=key, **call_kwargs)
                return out, state.update(back(new))
        return self._run(x, args, kwargs, key, where, state)

    def _run(self, x, args, kwargs, key, where, state):
        dynamic, static = eqx.partition(self.layers, eqx.is_array)
        keys = None if key is None else jax.random.split(key, self.count)
        # The state of the indices inside the layers: its leaves and structure.
        state_leaves, state_def = (
            ([], None) if state is None else jax.tree_util.tree_flatten(state.substate(self.layers))
        )

        apply = _one_call(static, args, kwargs, where, state_def, "a stack")
        if self.remat:
            apply = eqx.filter_checkpoint(apply)
        if self.mode == "vmap":
            out, new_leaves = jax.vmap(apply, in_axes=(0, None, 0, 0))(
                dynamic, x, keys, state_leaves
            )
        else:

            def body(h, xs):
                d, k, s = xs
                h, s = apply(d, h, k, s)
                return h, s

            try:
                out, new_leaves = jax.lax.scan(
                    body, x, (dynamic, keys, state_leaves), unroll=self.unroll
                )
            except TypeError as e:
                if "carry" not in str(e):
                    raise
                raise self.error(
                    "E235", **_carry_change(body, x, (dynamic, keys, state_leaves))
                ) from None
        if state_def is None:
            return out
        return out, state.update(jax.tree_util.tree_unflatten(state_def, new_leaves))


class Ensemble(eqx.Module):
    """N members of one model, each array with a leading member axis.

    `ensemble(x, *args, key=None, **kwargs)` evaluates every member on the
    same `x` (outputs with a leading member axis), `key` split per member, an
    `eqx.nn.State` (whose values carry the member axis) threaded per member;
    `ensemble.per_member(xs)` gives member i the input `xs[i]`;
    `ensemble.member(i)` is member i as a plain model. Wrappers are resolved.
    Attributes read through to the member-axis model (`ens.layers[0].weight`).

    Called on one member's arrays, as the Equinox tricks page's
    `eqx.filter_vmap(lambda m, x: m(x), in_axes=(eqx.if_array(0), None))`
    does, it is that member.
    """

    model: Any
    count: int = eqx.field(static=True)
    # The number of axes of each array of one member, to tell a whole
    # ensemble from a member of it inside someone else's `vmap`.
    member_ndims: tuple = eqx.field(static=True, default=())
    # The mesh axis the member axis is split over (`ensemble 8 over data`).
    over: str | None = eqx.field(static=True, default=None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("model", "count", "member_ndims", "over"):
            raise AttributeError(name)
        if inspect.isfunction(inspect.getattr_static(type(self.model), name, None)):
            # A method of the model (`members.forward(x)`) runs per member, as a
            # call does; the member-axis model's own would see every member's arrays.
            return functools.partial(self._method, name)
        return getattr(self.model, name)

    def _method(self, name: str, *args, key=None, **kwargs):
        def prepare(m):
            bound = getattr(resolve(m), name)
            # A method without positional arguments ignores the mapped input.
            return bound if args else lambda _, *a, **kw: bound(*a, **kw)

        if self._is_one_member():
            if key is not None:
                kwargs["key"] = key
            return getattr(resolve(self.model), name)(*args, **kwargs)
        x, rest = (args[0], args[1:]) if args else (None, ())
        return _evaluate(self, x, False, rest, key, kwargs, prepare)

    def _is_one_member(self) -> bool:
        leaves = [x for x in jax.tree_util.tree_leaves(self.model) if eqx.is_array(x)]
        if not leaves or not self.member_ndims:
            return False
        return tuple(x.ndim for x in leaves) == self.member_ndims

    def __call__(self, x, *args, key=None, **kwargs):
        return self._method("__call__", x, *args, key=key, **kwargs)

    def per_member(self, xs, *args, key=None, **kwargs):
        return _evaluate(self, xs, True, args, key, kwargs)

    def member(self, i: int) -> Any:
        if not -self.count <= i < self.count:
            raise IndexError(f"the ensemble has {self.count} members, not {i}")
        return _take(self.model, i)


def make_ensemble(members: Any, count: int, over: str | None = None) -> Ensemble:
    """An `Ensemble` of `members` (arrays with a leading member axis)."""
    ndims = tuple(x.ndim - 1 for x in jax.tree_util.tree_leaves(members) if eqx.is_array(x))
    return Ensemble(members, count, ndims, over)


def _evaluate(ensemble: Ensemble, x, per_member: bool, args, key, kwargs, prepare=resolve):
    if per_member and jnp.shape(x)[:1] != (ensemble.count,):
        raise ValueError(
            f"per-member data needs a leading axis of {ensemble.count}, got shape {jnp.shape(x)}"
        )
    dynamic, static = eqx.partition(ensemble.model, eqx.is_array)
    keys = None if key is None else jax.random.split(key, ensemble.count)
    where, state = _states(args, kwargs)
    state_leaves, state_def = ([], None) if state is None else jax.tree_util.tree_flatten(state)

    one = _one_call(static, args, kwargs, where, state_def, "an ensemble", prepare)
    out, new_leaves = jax.vmap(one, in_axes=(0, 0 if per_member else None, 0, 0))(
        dynamic, x, keys, state_leaves
    )
    if state_def is None:
        return out
    return out, jax.tree_util.tree_unflatten(state_def, new_leaves)


def evaluate_ensemble(ensemble: Ensemble, x, *args, **kwargs):
    """Every member of `ensemble` on the same input: `(N, ...)` out."""
    return ensemble(x, *args, **kwargs)


def evaluate_per_member(ensemble: Ensemble, xs, *args, **kwargs):
    """Member i on `xs[i]`; `xs` has a leading axis of length N."""
    return ensemble.per_member(xs, *args, **kwargs)


def batched(obj: Any) -> bool:
    """Is `obj` a stack or an ensemble, whose arrays carry a leading axis?"""
    # A type test, not `isinstance`: Modules are ABCs, whose instance checks
    # cost more than the rest of a selection on models of many leaves.
    return type(obj) in _BATCHED


_BATCHED = frozenset({Stacked, Ensemble})


# ---- state ------------------------------------------------------------------------


def split_state(subject: Any) -> tuple[Any, State | None]:
    """(model, state) of what a spec is applied to: a model, or a stateful
    model's `(model, state)` pair, as `eqx.nn.make_with_state` returns it."""
    if isinstance(subject, tuple) and len(subject) == 2 and isinstance(subject[1], State):
        return subject[0], subject[1]
    return subject, None


def join_state(model: Any, state: State | None) -> Any:
    return model if state is None else (model, state)


def state_values(state: State) -> dict:
    """A `State` as a dict from state keys to values."""
    values, keys = state.tree_flatten()
    return dict(zip(keys, values))


def make_state(values: dict) -> State:
    return State.tree_unflatten(tuple(values), tuple(values.values()))


def restate(model: Any, state: State, members: int | None = None) -> State:
    """The `State` of `model` made from `state`, the state of the model it was
    made from: a stacked index's value is its layers' values stacked, a layer
    taken out of a stack gets its slice, and with `members`, values gain a
    member axis (copied)."""
    old = state_values(state)
    owner = {}
    for marker in old:
        if isinstance(marker, StackedMarker):
            for i, part in enumerate(marker.parts):
                owner[part] = (marker, i)

    def value(marker, index=None):
        if marker in old:
            return old[marker]
        if isinstance(marker, StackedMarker):
            parts = [value(p) for p in marker.parts]
            return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *parts)
        if marker in owner:
            whole, i = owner[marker]
            return _take(value(whole), i)
        if index is not None and not isinstance(index.init, eqx.Module):
            # A new stateful layer (from `replace`) starts from its initial state.
            return jax.tree_util.tree_map(jnp.asarray, index.init)
        raise KeyError(marker)

    new = {}
    for leaf in state_indices(model):
        if leaf.marker not in new:
            v = value(leaf.marker, leaf)
            if members is not None:
                v = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (members, *a.shape)), v)
            new[leaf.marker] = v
    return make_state(new)
