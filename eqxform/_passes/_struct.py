"""The structural passes: `stack` and `unstack` (scan-over-layers), `ensemble`.

`stack` turns N modules of one structure into one `Stacked` module whose
arrays carry a leading layer axis; `ensemble` turns the model into an
`Ensemble` of N members. Both are `tree_at` (one call) plus `jnp.stack` or a
`filter_vmap` over keys.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _ast as A
from .. import _names as N
from .._build import nbytes
from .._diagnostics import plural, report
from .._errors import EqxformError, SpecError, UsageError, first_line
from .._hashing import stable_hash
from .._modules import (
    Ensemble,
    Stacked,
    StackedMarker,
    first_layout_weight,
    is_state_index,
    join_state,
    make_ensemble,
    marked,
    restate,
    split_state,
    state_indices,
)
from .._select import (
    Node,
    PathSet,
    get,
    in_state,
    is_array,
    layer_axis,
    logical_path,
    no_match,
    node_at,
    outermost,
    path_str,
    select,
    walk,
)
from ._base import Pass
from ._forward import missing_state, outputs, random_inputs, read_arrays


@dataclass(frozen=True, eq=False)
class StructPass(Pass):
    """A structural directive. Its draws use the key folded with its identity.
    `later_inits` are the rules below it with an `init` action (they may
    draw what the directive copies)."""

    later_inits: tuple[A.Rule, ...] = ()

    def run(self, model, key, ctx, nodes):
        return self.restructure(model, jax.random.fold_in(key, self.identity), ctx, nodes)

    def restructure(self, model, key, ctx, nodes):
        raise NotImplementedError

    def matched(self, model) -> list[Node]:
        """The nodes the line's selector names; none is an error (E201)."""
        nodes = select(self.stmt.selector, walk(model))
        if not nodes:
            raise no_match(self.stmt.selector, walk(model), self.source)
        return nodes

    def report_copies(self, ctx, model, copied: list, what: str, extra=()) -> None:
        """Tell the user which arrays every copy shares (a warning), leaving
        out those an `init` rule below this line (or in `extra`) draws anew."""
        if not copied or ctx.report is None:
            return
        drawn = []
        for rule in self.later_inits + tuple(extra):
            try:
                drawn += [n.path for n in select(rule.selector, walk(model))]
            except SpecError:  # the rule's own error is reported at its line
                continue
        drawn = PathSet(drawn)
        # An empty array (a layer of no inputs) is the same in every copy,
        # whatever draws it: nothing is shared that could differ.
        copied = [
            node.text
            for node in (node_at(model, p) for p in copied if not drawn.covers(p))
            if getattr(node.obj, "size", 1) != 0
        ]
        if not copied:
            return
        self.warn(
            ctx,
            "W201",
            self.stmt.span,
            what=what,
            len_copied=len(copied),
            s="s" if len(copied) != 1 else "",
            listing=", ".join(f"`{c}`" for c in copied[:5]),
            value2=", ..." if len(copied) > 5 else "",
            first=copied[0],
        )


class StackCallError(SpecError):
    """A stacked model's call failed because of the stack: its layers change
    what they pass on (E235). Raised by the call; `plan`, `check` and `apply`
    report it at the `stack` line."""


class StackStateError(UsageError):
    """A stacked model was called with a state made for another model (E436)."""


def stack_error(code: str, **fields) -> EqxformError:
    """What a stack raises when it is called in a way it cannot run."""
    kind = StackCallError if code.startswith("E2") else StackStateError
    return kind(report(code, **fields))


def _describe(x) -> str:
    if is_array(x):
        return f"{np.dtype(x.dtype).name}{list(x.shape)}"
    return type(x).__name__


def _structure_problem(items: list, names: list[str]) -> str | None:
    """Why `items` cannot be stacked, naming the first member that differs."""
    first = walk(items[0])
    for name, item in zip(names[1:], items[1:]):
        other = walk(item)
        if len(other) != len(first):
            return f"`{name}` has {len(other)} nodes, `{names[0]}` has {len(first)}"
        for a, b in zip(first, other):
            where = path_str(a.path) if a.path else ""
            where = ("." if where and not where.startswith("[") else "") + where
            here, there = f"`{name}{where}`", f"`{names[0]}{where}`"
            if a.path != b.path or type(a.obj) is not type(b.obj):
                return f"{here} is a `{type(b.obj).__name__}`, {there} a `{type(a.obj).__name__}`"
            if is_array(a.obj):
                if tuple(a.obj.shape) != tuple(b.obj.shape) or a.obj.dtype != b.obj.dtype:
                    return f"{here} is {_describe(b.obj)}, {there} is {_describe(a.obj)}"
            elif isinstance(a.obj, eqx.Module):
                for field in dataclasses.fields(a.obj):
                    if field.metadata.get("static", False):
                        x, y = getattr(a.obj, field.name), getattr(b.obj, field.name)
                        if not _same_value(x, y):
                            return (
                                f"{here} has `{field.name}={y!r}`, {there} has `{field.name}={x!r}`"
                            )
            elif not isinstance(a.obj, (list, tuple, dict)) and not _same_value(a.obj, b.obj):
                return f"{here} differs from {there}"
        if jax.tree_util.tree_structure(item) != jax.tree_util.tree_structure(items[0]):
            return f"`{name}` has another structure than `{names[0]}`"
    return None


def _same_value(x: Any, y: Any) -> bool:
    """Equal, or two functions made by one definition with equal closures
    (a library that stores `lambda x: x` in each block makes a new one each)."""
    if x is y:
        return True
    if isinstance(x, types.FunctionType) and isinstance(y, types.FunctionType):
        cells = lambda f: tuple(c.cell_contents for c in f.__closure__ or ())  # noqa: E731
        return (
            x.__code__ is y.__code__
            and x.__defaults__ == y.__defaults__
            and all(_same_value(a, b) for a, b in zip(cells(x), cells(y)))
        )
    try:
        return bool(x == y)
    except Exception:  # values that do not compare (arrays in a static field)
        return False


def stack_arrays(items: list) -> Any:
    """Trees of one structure as one, each array stacked along a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs) if is_array(xs[0]) else xs[0], *items)


_LOOP_HELP = (
    "a stack runs its layers as one scan, `h = layer(h, *args, **kwargs)` for each, "
    "also when the parent loops over them; a loop that does more per layer (collects "
    "outputs, uses the layer's index, zips with another list) needs `layerwise` on the "
    "`stack` line, which iterates layer by layer"
)


def _one_state_key_per_position(items: list) -> list:
    """The items with each stateful layer's `StateIndex` keyed by one
    `StackedMarker` per position, so that they stack into one index whose
    state holds every layer's."""
    indices = [state_indices(i) for i in items]
    if not indices[0] or any(len(found) != len(indices[0]) for found in indices):
        return items  # no state, or different layers: the structure check says which
    markers = [
        StackedMarker(tuple(found[j].marker for found in indices)) for j in range(len(indices[0]))
    ]
    out = []
    for item in items:
        position = iter(range(len(markers)))
        out.append(
            jax.tree_util.tree_map(
                lambda x: marked(x, markers[next(position)]) if is_state_index(x) else x,
                item,
                is_leaf=is_state_index,
            )
        )
    return out


def _constant_by_design(module: Any) -> bool:
    """Layers whose arrays Equinox initialises to constants: their copies are
    what a fresh construction would give."""
    nn = eqx.nn
    constant = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm, nn.PReLU)
    return isinstance(module, constant) or is_state_index(module)


# The fields that hold a layer's parameters, in Equinox's layers and in the
# libraries' own (`weight`, `bias`, `weights_real`, `weight_ih`, `kernel`).
_PARAMETER_FIELD = re.compile(r"(weights?|bias(es)?|kernel)(_\w*)?")


def is_parameter(node: Node) -> bool:
    """Is the array at `node` a layer's parameter: a floating array of more
    than one value in a `weight`- or `bias`-like field of a module?"""
    field = getattr(node.path[-1], "name", None) if node.path else None
    return (
        is_array(node.obj)
        and jnp.issubdtype(node.obj.dtype, jnp.inexact)
        and math.prod(node.obj.shape) > 1
        and field is not None
        and isinstance(node.parents[-1], eqx.Module)
        and _PARAMETER_FIELD.fullmatch(field) is not None
    )


def redrawn_copies(module: Any, count: int, key) -> tuple[Any, list]:
    """`count` copies of `module` with a leading axis. Each layer parameter
    (`is_parameter`) is drawn anew for each copy from the module's own values
    (each value one of the array's, picked at random): its distribution is
    the module's, whatever library drew it and however (a library's own
    initialisation kept, zeros stay zeros). The other arrays are copied.
    Returns the copies and the key paths (within `module`) of the copied
    floating arrays that are no constants by design (every copy shares them)."""
    targets, copied = [], []
    for node in walk(module):
        if not is_array(node.obj) or not node.path:
            continue
        if is_parameter(node):
            targets.append(node)
        elif jnp.issubdtype(node.obj.dtype, jnp.inexact) and not any(
            _constant_by_design(p) for p in node.parents
        ):
            copied.append(node.path)
    leaves, treedef = jax.tree_util.tree_flatten(module)
    at = {id(n.obj): k for k, n in enumerate(targets)}
    # Each array's draw depends on its own path, not on the others.
    salts = np.array([stable_hash(n.name) % 2**31 for n in targets], np.uint32)
    arrays = [x for x in leaves if is_array(x)]
    made = iter(_copies(arrays, key, salts, count, [at.get(id(x), -1) for x in arrays]))
    stacked = jax.tree_util.tree_unflatten(
        treedef, [next(made) if is_array(x) else x for x in leaves]
    )
    return stacked, copied


def _copies(arrays: list, key, salts, count: int, which: list) -> list:
    """`count` copies of `arrays`, `(count, *shape)` each: array i drawn anew
    from its own values with salt `salts[which[i]]`, or broadcast where that
    is -1. One compiled function makes every draw, into one array (eager,
    each shape would compile its own), which is then cut; for concrete arrays
    the cuts and broadcasts are made on the host and put back where each
    array was (compiled, the cuts of a hundred arrays cost the CPU compiler
    seconds; on the host they cost nothing)."""
    traced = any(isinstance(x, jax.core.Tracer) for x in arrays)
    xp = jnp if traced else np
    targets = [i for i, w in enumerate(which) if w >= 0]
    chosen = tuple(arrays[i] for i in targets)
    drawn = {}
    if chosen:
        flat = _drawn(chosen, key, salts[np.array([which[i] for i in targets], np.int32)], count)
        ends = np.cumsum([count * math.prod(a.shape) for a in chosen])
        for i, part in zip(targets, xp.split(xp.asarray(flat), ends[:-1])):
            drawn[i] = part.reshape((count, *arrays[i].shape)).astype(arrays[i].dtype)
    out = []
    for i, a in enumerate(arrays):
        value = drawn[i] if i in drawn else xp.broadcast_to(xp.asarray(a), (count, *a.shape))
        host = not traced and isinstance(a, jax.Array)
        out.append(jax.device_put(value, a.sharding) if host else value)
    return out


@functools.partial(jax.jit, static_argnums=3)
def _drawn(arrays: tuple, key, salts, count: int) -> jax.Array:
    """`count` new draws of each of `arrays`, all in one flat array (array
    i's `(count, *shape)` after those before it), each value drawn from the
    array's own values (its empirical distribution: whatever drew it, a
    constant stays that constant).

    Each array gets a seed from `jax.random` (its key folded with its salt,
    one vmapped draw for all); the indices into its values are a counter-based
    integer hash (lowbias32) of that seed and the position. Threefry draws per
    array would be the same numbers' worth, but XLA takes about a second on
    the CPU to compile each one."""
    seeds = jax.vmap(lambda s: jax.random.key_data(jax.random.fold_in(key, s)))(salts)
    seeds = _mix(seeds[:, 0] ^ _mix(seeds[:, -1]))
    # Every array in one gather: the arrays concatenated, and each position
    # of the output (array i's block of `count * size_i`) mapped to its array
    # by a search over the blocks' starts. (A gather per array, or per size,
    # costs the compiler about a second each.)
    dtype = jnp.result_type(*arrays)
    sizes = np.array([math.prod(a.shape) for a in arrays], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    blocks = count * starts
    if blocks[-1] >= 2**31:
        raise ValueError("too many values to draw at once")
    flat = jnp.concatenate([a.reshape(-1).astype(dtype) for a in arrays])
    position = jnp.arange(int(blocks[-1]), dtype=jnp.int32)
    which = jnp.searchsorted(jnp.asarray(blocks[1:-1], jnp.int32), position, side="right")
    local = (position - jnp.asarray(blocks[:-1], jnp.int32)[which]).astype(jnp.uint32)
    seed = seeds[which]
    size = jnp.asarray(sizes, jnp.uint32)[which]
    picks = (_mix(_mix(local ^ seed) + seed) % size).astype(jnp.int32)
    return flat[jnp.asarray(starts[:-1], jnp.int32)[which] + picks]


def _mix(x):
    """lowbias32: a 32-bit integer hash with good avalanche."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


class StackPass(StructPass):
    grows = True

    @property
    def options(self) -> dict[str, Any]:
        return {o.name: o.value for o in self.stmt.options}

    # A stack changes how the layers are called (one scan, where a parent may
    # have looped in Python). With the model's inputs declared, `apply` runs
    # the model before and after on random inputs and refuses a stack that
    # changes what it computes.
    # `stack PATH scan N` of one module makes N new layers: the model is meant
    # to compute something else then, so only its output shapes are held.
    def run(self, model, key, ctx, nodes):
        return self.run_stateful(model, None, key, ctx, nodes)[0]

    def run_stateful(self, model, state, key, ctx, nodes):
        new = super().run(model, key, ctx, nodes)
        new_state = None if state is None else restate(new, state)
        if ctx.verify and ctx.inputs:
            values = not self.makes_copies(model, nodes)
            self.verify(join_state(model, state), join_state(new, new_state), ctx, values=values)
        return new, new_state

    def makes_copies(self, model, nodes) -> bool:
        if len(nodes) != 1:
            return False
        obj = get(model, nodes[0].path)
        if isinstance(obj, eqx.Module) and layer_axis(obj) is not None:
            return "copies" in self.options
        return isinstance(obj, eqx.Module) and not isinstance(obj, (eqx.nn.Sequential, Stacked))

    def verify(self, before, after, ctx, values: bool = True) -> None:
        if missing_state(before):
            raise self.error("E238", self.stmt.span)
        xs = random_inputs(ctx.inputs, jax.random.key(0))
        try:
            want = outputs(before, xs)
        except Exception:
            # The model fails above the stack too (a rule before it broke it,
            # one after it may mend it): not the stack's doing, and the plan's
            # forward check says what fails in the end.
            return
        try:
            got = outputs(after, xs)
        except StackCallError as e:  # the stack cannot run these layers: said at its line
            raise SpecError(
                dataclasses.replace(e.diagnostics[0], span=self.stmt.span, source=self.source)
            ) from None
        except Exception as e:  # the stacked model's own complaint
            raise self.error(
                "E144",
                self.stmt.span,
                help=_LOOP_HELP,
                text=self.stmt.selector.text,
                message=first_line(e),
            ) from None
        same = len(want) == len(got) and all(
            a.shape == b.shape
            and (not values or np.allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + np.abs(a).max())))
            for a, b in zip(want, got)
        )
        if not same and not values:
            raise self.error(
                "E144",
                self.stmt.span,
                variant="stacking_copies",
                text=self.stmt.selector.text,
                value=[a.shape for a in want],
                value2=[b.shape for b in got],
            )
        if not same:
            gap = max(
                (float(np.abs(a - b).max()) for a, b in zip(want, got) if a.shape == b.shape),
                default=float("nan"),
            )
            raise self.error(
                "E144",
                self.stmt.span,
                variant="stacking_changes",
                help=_LOOP_HELP,
                text=self.stmt.selector.text,
                gap=gap,
            )

    def unread(self, before, ctx, nodes) -> list:
        """`plan`'s counterpart of `verify`, with no numbers: the forward pass
        of the stacked model (traced from `before`'s arrays) must still read
        every array of the model the model's own reads (E144 if not). A
        parent that zips the stacked list with another (`zip(self.layers,
        self.mixers)`) reaches only the other list's first element; one that
        zips it with keys reads all it read."""
        if not ctx.inputs or self.makes_copies(split_state(before)[0], nodes):
            return []
        model, state = split_state(before)
        prefix = () if state is None else (jax.tree_util.SequenceKey(0),)
        # The model's arrays, but the initial values of its state: a forward
        # pass reads the `State` made from them.
        names = {
            prefix + n.path: logical_path(n)
            for n in walk(model)
            if is_array(n.obj) and not in_state(n.parents)
        }
        plain = dataclasses.replace(ctx, verify=False, report=None, shapes_only=False)
        try:
            leaves, got = read_arrays(
                before, ctx.inputs, lambda m: self.run_on(m, jax.random.key(0), plain, nodes)
            )
            mine = {i for i, (path, _) in enumerate(leaves) if tuple(path) in names}
            if mine <= got:
                return []  # all of them read: the model's own pass need not be traced
            lost = sorted((read_arrays(before, ctx.inputs)[1] & mine) - got)
        except Exception:  # a forward pass that fails is said by the plan, at its rule
            return []
        if not lost:
            return []
        texts = [f"`{names[tuple(leaves[i][0])]}`" for i in lost[:3]]
        return self.error(
            "E144",
            self.stmt.span,
            variant="stacking_unread",
            help=_LOOP_HELP,
            text=self.stmt.selector.text,
            count_arrays=plural(len(lost), "array"),
            paths=", ".join(texts) + (", ..." if len(lost) > 3 else ""),
        ).diagnostics

    def select(self, model, ctx):
        return outermost(self.matched(model), lambda n: n.path)

    def restructure(self, model, key, ctx, nodes):
        stmt, options = self.stmt, self.options
        count = options.get("count")
        span = stmt.selector.span
        if any(n.batch for n in nodes):
            raise self.error("E140", span, text=stmt.selector.text)
        if len(nodes) == 1:
            node = nodes[0]
            obj = get(model, node.path)
            if isinstance(obj, eqx.nn.Sequential):
                items, kind = list(obj.layers), "sequential"
            elif isinstance(obj, (list, tuple)):
                items, kind = list(obj), "tuple" if isinstance(obj, tuple) else "list"
            elif isinstance(obj, eqx.Module) and not isinstance(obj, Stacked):
                layers = layer_axis(obj)
                copies = "copies" in options
                if layers is not None and not copies:
                    if count is not None and count != layers:
                        raise self.error(
                            "E132",
                            span,
                            text=node.text,
                            layers=layers,
                            count=count,
                            text2=stmt.selector.text,
                            mode=stmt.mode,
                        )
                    # Adopted as it is: no copy, the library's own layer axis.
                    adopted = self.wrap(obj, layers, "adopted")
                    return eqx.tree_at(lambda m: get(m, node.path), model, adopted)
                if count is None:
                    raise self.error(
                        "E130",
                        span,
                        text=node.text,
                        name=type(obj).__name__,
                        text2=stmt.selector.text,
                        mode=stmt.mode,
                    )
                if layers is not None:
                    self.report_stacked_copies(ctx, node, obj, layers, count)
                stacked, copied = redrawn_copies(obj, count, key)
                new = eqx.tree_at(
                    lambda m: get(m, node.path), model, self.wrap(stacked, count, "module")
                )
                inner = node.path + (jax.tree_util.GetAttrKey("layers"),)
                self.report_copies(
                    ctx, new, [inner + p for p in copied], f"the {count} copies of `{node.text}`"
                )
                return new
            else:
                raise self.error("E131", span, text=node.text, name=type(obj).__name__)
            names = [f"{node.text}[{i}]" for i in range(len(items))]
            items = _one_state_key_per_position(items)
            self.check(items, names, count)
            stacked = self.wrap(stack_arrays(items), len(items), kind)
            return eqx.tree_at(lambda m: get(m, node.path), model, stacked)
        return self.run_slice(model, nodes, count)

    def run_slice(self, model, nodes, count):
        span = self.stmt.selector.span
        parents = {n.path[:-1] for n in nodes}
        indices = [getattr(n.path[-1], "idx", None) for n in nodes]
        if (
            len(parents) != 1
            or None in indices
            or indices != list(range(indices[0], indices[0] + len(indices)))
        ):
            raise self.error(
                "E131",
                span,
                variant="nodes",
                text=self.stmt.selector.text,
                len_nodes=len(nodes),
                listing=", ".join(f"`{n.text}`" for n in nodes[:4]),
            )
        items = _one_state_key_per_position([get(model, n.path) for n in nodes])
        self.check(items, [n.text for n in nodes], count)
        stacked = self.wrap(stack_arrays(items), len(items), "slice")
        return _splice(model, nodes[0].path[:-1], indices[0], indices[-1] + 1, [stacked])

    def check(self, items: list, names: list[str], count: int | None) -> None:
        span = self.stmt.selector.span
        if count is not None and count != len(items):
            raise self.error(
                "E132",
                span,
                variant="stack_found",
                len_items=len(items),
                text=self.stmt.selector.text,
                count=count,
                mode=self.stmt.mode,
            )
        if len(items) < 1:
            raise self.error("E143", span, text=self.stmt.selector.text)
        problem = _structure_problem(items, names)
        if problem is not None:
            raise self.error("E133", span, text=self.stmt.selector.text, problem=problem)

    def wrap(self, layers, count: int, kind: str) -> Stacked:
        options = self.options
        unroll = options.get("unroll")
        # A short stack compiles faster unrolled (see `UNROLLED_UP_TO`); an adopted
        # one is run by its library's own scan.
        short = count <= N.UNROLLED_UP_TO and kind != "adopted"
        if unroll is None and self.stmt.mode == "scan" and short:
            unroll = count
        # Layers that hold their own layers pre-stacked carry those axes inside.
        found = first_layout_weight(layers)
        inner = found[0].ndim - 1 - found[1] if found is not None else 0
        return Stacked(
            layers,
            count,
            self.stmt.mode,
            "remat" in options,
            unroll or 1,
            kind,
            "layerwise" in options,
            next((o.over.axis for o in self.stmt.options if o.over is not None), None),
            tuple(x.ndim - 1 for x in jax.tree_util.tree_leaves(layers) if is_array(x)),
            stack_error,
            max(inner, 0),
        )

    def report_stacked_copies(self, ctx, node: Node, obj, layers: int, count: int) -> None:
        """Copies of a module that carries a layer axis already: said, as they
        multiply its parameters."""
        params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(obj) if is_array(x))
        self.warn(
            ctx,
            "W210",
            self.stmt.span,
            text=node.text,
            layers=layers,
            count=count,
            value=count * layers,
            params=params,
            value2=count * params,
            text2=self.stmt.selector.text,
            mode=self.stmt.mode,
        )


def _splice(model, path, start: int, stop: int, items: list) -> Any:
    """`model` with `items` in place of `[start:stop]` of the list or tuple at `path`."""
    container = get(model, path)
    new = [*container[:start], *items, *container[stop:]]
    return eqx.tree_at(
        lambda m: get(m, path), model, tuple(new) if isinstance(container, tuple) else new
    )


class UnstackPass(StructPass):
    def select(self, model, ctx):
        nodes = self.matched(model)
        for n in nodes:
            if not isinstance(n.obj, Stacked):
                raise self.error(
                    "E203",
                    self.stmt.selector.span,
                    variant="unstack_stack",
                    text=n.text,
                    name=type(n.obj).__name__,
                )
        return nodes

    def restructure(self, model, key, ctx, nodes):
        for node in reversed(nodes):  # later paths first: splicing keeps earlier ones valid
            stacked = get(model, node.path)
            items = [stacked[i] for i in range(stacked.count)]
            if stacked.kind == "slice":
                index = node.path[-1].idx
                model = _splice(model, node.path[:-1], index, index + 1, items)
                continue
            if stacked.kind == "adopted":
                # Back to the library's own form: one module with a layer axis.
                model = eqx.tree_at(lambda m: get(m, node.path), model, stacked.layers)
                continue
            value = {
                "tuple": tuple(items),
                "sequential": eqx.nn.Sequential(items),
            }.get(stacked.kind, items)
            model = eqx.tree_at(lambda m: get(m, node.path), model, value)
        return model


@dataclass(frozen=True, eq=False)
class EnsemblePass(StructPass):
    """`ensemble N`. Where the model's constructor is known (`ctx.base`), each
    member is built by it from its own key under `filter_vmap` and the passes
    above this line (`before`) run on each member. Otherwise each member's
    arrays of the layer types Equinox knows are drawn anew with its default
    initialisation, the `init` rules above this line draw again per member,
    and what stays a copy is reported."""

    count: int = 1
    before: tuple[Pass, ...] = ()
    # A sweep's members are built by their own programs (`Program.members`);
    # this says how, for the plan.
    sweep: str | None = None
    grows = True

    def select(self, model, ctx):
        if isinstance(model, Ensemble):
            raise self.error("E141", self.stmt.span)
        return [Node((), model, ())]

    @property
    def over(self) -> str | None:
        return None if self.stmt.over is None else self.stmt.over.axis

    def size_after(self, subject):
        # Every member is the model's size: known without building one.
        return self.count * nbytes(subject)

    def draws(self, model, ctx) -> list[tuple[Node, str]]:
        """How each floating array of `model` is drawn for the members, as the
        plan says it: by the model's constructor, by an `init` rule above this
        line, from the array's own values, or copied."""
        if self.sweep is not None or ctx.base is not None:
            how = self.sweep or "drawn per member by the model's constructor" + (
                " and the rules above" if self.before else ""
            )
            return [(n, how) for n in walk(model) if is_array(n.obj) and n.path]
        by_init = {}
        for p in self.before:
            if p.draws:
                for node in select(p.rule.selector, walk(model)):
                    by_init.setdefault(node.path, p.line)
        out = []
        for node in walk(model):
            if not is_array(node.obj) or not jnp.issubdtype(node.obj.dtype, jnp.inexact):
                continue
            line = next((v for k, v in by_init.items() if node.path[: len(k)] == k), None)
            if line is not None:
                how = f"drawn per member by the `init` rule of line {line}"
            elif is_parameter(node):
                how = "drawn per member from its own values"
            elif any(_constant_by_design(p) for p in node.parents):
                how = "copied (a constant by design)"
            else:
                how = "copied: every member shares it"
            out.append((node, how))
        return out

    def restructure(self, model, key, ctx, nodes):
        return self.members(model, None, key, ctx)[0]

    def run_stateful(self, model, state, key, ctx, nodes):
        return self.members(model, state, jax.random.fold_in(key, self.identity), ctx)

    def members(self, model, state, key, ctx):
        count = self.count
        keys = jax.random.split(key, count)
        if ctx.base is not None:
            before = self.before
            # A `stack` above was verified on the model itself; under the vmap
            # its layers are tracers, which cannot be run on random inputs.
            traced = dataclasses.replace(ctx, verify=False)

            def member(k):
                subject = ctx.base(k)
                for p in before:
                    subject = p(subject, k, traced)
                return subject

            built, built_state = split_state(eqx.filter_vmap(member)(keys))
            if _same_structure(built, model) and (built_state is None) == (state is None):
                return make_ensemble(built, count, self.over), built_state
        stacked, copied = redrawn_copies(model, count, key)
        inits = tuple(p for p in self.before if p.draws)
        if inits:

            def redraw(m, k):
                for p in inits:
                    m = p(m, k, ctx)
                return m

            stacked = eqx.filter_vmap(redraw)(stacked, keys)
        ensemble = make_ensemble(stacked, count, self.over)
        inner = (jax.tree_util.GetAttrKey("model"),)
        self.report_copies(
            ctx,
            ensemble,
            [inner + p for p in copied],
            f"the {count} members",
            extra=tuple(p.rule for p in inits),
        )
        return ensemble, None if state is None else restate(ensemble, state, members=count)


def _same_structure(members, model) -> bool:
    a, b = jax.tree_util.tree_leaves(members), jax.tree_util.tree_leaves(model)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if is_array(x) != is_array(y):
            return False
        if is_array(x) and (tuple(x.shape[1:]) != tuple(y.shape) or x.dtype != y.dtype):
            return False
    # The leaves' paths, not the tree structures: those hold the static
    # fields, and a build makes new objects of its own there (a `StateIndex`'s
    # marker, a library's layer objects compared by identity, as e3nn's
    # `FunctionalLinear`s in nequip-eqx), so two builds of one constructor
    # never have equal structures.
    return _leaf_paths(members) == _leaf_paths(model)


def _leaf_paths(tree) -> list:
    return [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
