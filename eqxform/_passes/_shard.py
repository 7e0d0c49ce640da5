"""Placement on a device mesh: the `mesh` directive, `shard` rules, and the
pass that puts every array of the finished model in its sharding.

`shard` rules, like `lr` and `weight_decay`, select on the model after every
rule, so that a spec reads the same whatever order its lines come in: a rule
names the arrays of one layer (`Linear.weight -> shard (model, none)`), and
the leading axes of the stacks and ensembles an array sits in are added in
front, unsplit, or split over the axis their `stack ... over AXIS` or
`ensemble N over AXIS` names. An array no rule matches is replicated.

`PlacePass` is the last pass of a program with a mesh. It is a pure function
of (model, key, context) like every pass: with a `jax.sharding.Mesh` in the
context it constrains each array to its `NamedSharding` (under `jit`, where
`Program.apply` runs it with the same shardings as outputs, so that every
array is created in place and no device holds a whole sharded one), and
without one it returns the model as it is (the replay of a recipe, a plan).
The arithmetic of a placement needs only the axis sizes, so `plan` computes
bytes per device without touching a device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import _ast as A
from .._diagnostics import Diagnostic, did_you_mean, report
from .._errors import SpecError
from .._mesh import MeshSpec
from .._modules import Ensemble, Stacked, split_state
from .._select import Node, is_array, matched_arrays, select_rule, walk
from ._base import Context, Pass

# One dimension of a spec: unsplit (None), one mesh axis, or several.
Dim = None | str | tuple[str, ...]


# ---- shard rules --------------------------------------------------------------------


@dataclass(frozen=True)
class ShardRule:
    """One `shard` action: the partition spec of one layer's arrays."""

    rule: A.Rule
    action: A.Action
    dims: tuple[Dim, ...]
    env: Mapping[str, Any]
    source: A.Source

    @property
    def line(self) -> int:
        return self.rule.span.line


def spec_dims(arg: A.Expr | None) -> tuple[Dim, ...]:
    """The dimensions of a checked `shard` argument: `model` -> `("model",)`,
    `(none, model)` -> `(None, "model")`, `((data, model), none)`."""

    def one(e: A.Expr, top: bool) -> Dim:
        if isinstance(e, A.Name):
            return None if e.id == "none" else e.id
        assert isinstance(e, A.TupleExpr) and not top
        return tuple(i.id for i in e.items if isinstance(i, A.Name))

    if isinstance(arg, A.TupleExpr):
        return tuple(one(i, False) for i in arg.items)
    assert arg is not None
    return (one(arg, True),)


def show_spec(dims) -> str:
    """`(none, (data, model))`: the dimensions as a `shard` rule writes them."""
    parts = [f"({', '.join(d)})" if isinstance(d, tuple) else d or "none" for d in dims]
    return "(" + ", ".join(parts) + ")"


def _axes_of(d: Dim) -> tuple[str, ...]:
    if d is None:
        return ()
    return d if isinstance(d, tuple) else (d,)


# ---- placements -----------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where one array lives: its full partition spec (leading stack and
    ensemble axes included) and the rule that gave it (None: replicated)."""

    node: Node
    dims: tuple[Dim, ...]
    rule: ShardRule | None

    @property
    def spec(self) -> PartitionSpec:
        return PartitionSpec(*self.dims)

    def bytes_per_device(self, sizes: Mapping[str, int]) -> int:
        """The bytes of one device's shard: each split dimension divided by its axes' sizes."""
        shape = tuple(self.node.obj.shape)
        split = [d // math.prod(sizes[a] for a in _axes_of(p)) for d, p in zip(shape, self.dims)]
        itemsize = np.dtype(self.node.obj.dtype).itemsize
        return math.prod(split + list(shape[len(self.dims) :])) * itemsize

    def describe(self) -> str:
        if self.rule is None and not any(d is not None for d in self.dims):
            return "replicated"
        return show_spec(self.dims)


def placements(
    model: Any,
    rules: tuple[ShardRule, ...],
    sizes: Mapping[str, int],
    overs: Mapping[str, tuple[A.Span, A.Source]] | None = None,
) -> list[Placement]:
    """The placement of every array of `model` (a model, or `(model, state)`;
    the state is replicated), in tree order. The last rule that matches an
    array wins. Raises `SpecError` with every rank and divisibility problem;
    `overs` (mesh axis -> where an `over` names it) locates those of the
    leading axes of stacks and ensembles."""
    model, _ = split_state(model)
    arrays = [n for n in walk(model) if n.path and is_array(n.obj)]
    chosen: dict[tuple, ShardRule] = {}
    diagnostics: list[Diagnostic] = []
    for rule in rules:
        try:
            nodes = select_rule(rule.rule, model, rule.env, rule.source)
            for leaf in matched_arrays(nodes, "shard", rule.rule.selector, rule.source):
                chosen[leaf.path] = rule
        except SpecError as e:
            diagnostics.extend(e.diagnostics)
    out = []
    reported: set[tuple] = set()
    for node in arrays:
        rule = chosen.get(node.path)
        # The dims of its leading stack and member axes: the `over` axis of
        # each stack or ensemble it sits in, outermost first, unsplit beyond.
        lead = [p.over for p in node.parents if isinstance(p, (Stacked, Ensemble))]
        lead = (lead + [None] * node.batch)[: node.batch]
        dims: tuple[Dim, ...] = tuple(lead)
        if rule is not None:
            layer_rank = node.obj.ndim - node.batch
            if len(rule.dims) != layer_rank:
                diagnostics.append(
                    report(
                        "E230",
                        span=rule.action.span,
                        source=rule.source,
                        text=show_spec(rule.dims),
                        len_dims=len(rule.dims),
                        s="s" if len(rule.dims) != 1 else "",
                        text2=node.text,
                        layer_rank=layer_rank,
                        list_shape=list(node.obj.shape[node.batch :]),
                        value2=f"; the {node.batch} leading stack or member axes are added for you"
                        if node.batch
                        else "",
                    )
                )
                continue
            dims = tuple(lead) + rule.dims
        problem = _check_dims(node, dims, sizes, rule)
        if problem is not None and rule is None:
            # A stack or an ensemble over an axis that does not divide it: once
            # per stack, not once per array in it.
            seen = (problem.code, tuple(node.obj.shape[: node.batch]), tuple(lead))
            if seen in reported:
                continue
            reported.add(seen)
        if problem is not None and rule is not None:
            problem = problem.with_source(rule.source)
        elif problem is not None and overs:
            # Not a rule's doing: the `over` of the stack or ensemble around it.
            where = next((overs[a] for d in lead for a in _axes_of(d) if a in overs), None)
            if where is not None:
                problem = dataclasses.replace(problem, span=where[0], source=where[1])
        if problem is not None:
            diagnostics.append(problem)
            continue
        out.append(Placement(node, dims, rule))
    if diagnostics:
        raise SpecError(diagnostics)
    return out


def _check_dims(node: Node, dims, sizes, rule: ShardRule | None) -> Diagnostic | None:
    span = rule.action.span if rule is not None else None
    used: list[str] = []
    for axis, d in enumerate(dims):
        for a in _axes_of(d):
            if a not in sizes:
                return report(
                    "E190",
                    variant="split_over",
                    span=span,
                    help=did_you_mean(a, list(sizes)),
                    text=node.text,
                    a=a,
                    listing=", ".join(f"`{n}`" for n in sizes),
                )
            if a in used:
                return report(
                    "E232",
                    variant="mesh_axis",
                    span=span,
                    help="a mesh axis splits one dimension of an array; a stack or ensemble "
                    "`over` that axis uses it for the leading axis already"
                    if axis >= node.batch and any(a in _axes_of(x) for x in dims[: node.batch])
                    else "use each mesh axis once per array",
                    a=a,
                    text=node.text,
                    show_spec_dims=show_spec(dims),
                )
            used.append(a)
        parts = math.prod(sizes[a] for a in _axes_of(d))
        size = node.obj.shape[axis]
        if size % parts:
            named = " x ".join(f"`{a}`={sizes[a]}" for a in _axes_of(d))
            kind = ""
            if axis < node.batch:
                kind = " (its leading stack or member axis)"
            return report(
                "E231", span=span, axis=axis, text=node.text, kind=kind, size=size, named=named
            )
    return None


def sharding_tree(subject: Any, placed: list[Placement], mesh: Mesh) -> Any:
    """A tree like `subject` with a `NamedSharding` for each array (a state's
    arrays replicated) and None elsewhere."""
    model, state = split_state(subject)
    by_path = {p.node.path: NamedSharding(mesh, p.spec) for p in placed}
    replicated = NamedSharding(mesh, PartitionSpec())
    flat, treedef = jax.tree_util.tree_flatten_with_path(model)
    model_sh = jax.tree_util.tree_unflatten(
        treedef, [by_path.get(tuple(p), replicated) if is_array(x) else None for p, x in flat]
    )
    if state is None:
        return model_sh
    state_sh = jax.tree_util.tree_map(lambda x: replicated if is_array(x) else None, state)
    return (model_sh, state_sh)


@dataclass(frozen=True, eq=False)
class PlacePass(Pass):
    """The last pass of a program with a mesh: every array in its sharding.
    `stmt` is the `mesh` directive (or, with the mesh given from outside,
    the first `shard` rule)."""

    rules: tuple[ShardRule, ...] = ()
    mesh: MeshSpec | None = None
    overs: tuple[tuple[str, A.Span], ...] = ()  # where each `over` names its axis

    @property
    def label(self) -> str:
        return "mesh"

    def placements(self, model: Any, sizes: Mapping[str, int]) -> list[Placement]:
        overs = {axis: (span, self.source) for axis, span in reversed(self.overs)}
        return placements(model, self.rules, sizes, overs)

    def select(self, model: Any, ctx: Context) -> list[Node]:
        return []

    def run_on(self, subject, key, ctx, nodes):
        return subject if ctx.mesh is None else self.place(subject, ctx.mesh)

    def place(self, subject: Any, mesh: Mesh) -> Any:
        """Every array of `subject` in its sharding: a constraint under a
        trace, a transfer outside one."""

        def put(x, s):
            if s is None or not is_array(x):
                return x
            if isinstance(x, jax.core.Tracer):
                return jax.lax.with_sharding_constraint(x, s)
            return jax.device_put(x, s)

        shardings = sharding_tree(subject, self.placements(subject, dict(mesh.shape)), mesh)
        return jax.tree_util.tree_map(put, subject, shardings, is_leaf=lambda x: x is None)


def check_axes(names: list[tuple[str, A.Span]], mesh: MeshSpec, source) -> list[Diagnostic]:
    """Every axis named (`shard` specs, `over`) is an axis of `mesh`."""
    out = []
    for name, span in names:
        if name not in mesh.names:
            out.append(
                report(
                    "E190",
                    variant="mesh",
                    span=span,
                    source=source,
                    help=did_you_mean(name, mesh.names),
                    name=name,
                    origin=mesh.origin,
                    text=mesh.text(),
                    listing=", ".join(f"`{n}`" for n in mesh.names),
                )
            )
    return out
