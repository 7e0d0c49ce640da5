"""The `eqx.tree_at` passes: one per action of a rule (init, replace, cast,
scale, wrap, freeze, unwrap, remat).

Each pass selects its nodes once and replaces them all in one `replace_at`
(what one `eqx.tree_at` call would do, rebuilding only the nodes on the way to
them), never one call per leaf. Values are read from the model it is given (by path), not
from the selected nodes, so that `plan` can run a pass under `eval_shape` on
the nodes it selected from a skeleton.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _ast as A
from .. import _names as N
from .. import _registry as R
from .._build import build, to_python
from .._errors import SpecError
from .._expr import FunctionRef, bare_word
from .._expr import walk as walk_expr
from .._hashing import stable_hash
from .._modules import Frozen, Remat, Stacked, Wrapper, bake
from .._select import (
    Node,
    _describe_kind,
    context,
    evaluate_at,
    fans,
    get,
    is_array,
    is_index,
    layout_ndim,
    matched_arrays,
    outermost,
    path_str,
    select_rule,
    skipped,
    stack_axis,
    step_name,
    too_deep,
    walk,
)
from .._values import argument_diagnostic, argument_kinds, as_argument
from . import _init
from ._base import Context, Pass, action_pass, replace_at


@dataclass(frozen=True, eq=False)
class RulePass(Pass):
    """One action of one rule."""

    action: A.Action

    @property
    def rule(self) -> A.Rule:
        return self.stmt

    @property
    def label(self) -> str:
        return self.source.snippet(self.action.span)

    def eval(self, expr: A.Expr, node: Node | None = None, ctx: dict | None = None) -> Any:
        return evaluate_at(expr, node, self.env, self.source, ctx)

    def argument(self, what: str, expr: A.Expr, kind, node: Node, ctx: dict | None = None) -> Any:
        """An argument evaluated at a match and checked against its kind (the
        checker has checked those that need no match); numbers come as floats."""
        value = self.eval(expr, node, ctx)
        bad = argument_diagnostic(what, value, kind, expr.span, self.source, f" at `{node.text}`")
        if bad is not None:
            raise SpecError(bad)
        return as_argument(value, kind)

    def call_arguments(self, name, args, positional, kinds, node, dtype, ctx=None) -> dict:
        """The arguments of `name(ARGS)` at a match, each checked against its
        kind, and a number against what an array of `dtype` holds (if given)."""
        out = {}
        for i, a in enumerate(args):
            param = a.name or positional[i]
            what = f"`{param}` of `{name}`"
            value = self.argument(what, a.value, kinds.get(param), node, ctx)
            if kinds.get(param) in ("real", "nonneg") and dtype is not None:
                self.in_range(what, value, a.value, node, dtype)
            out[param] = to_python(value)
        return out

    def in_range(self, what: str, value: Any, expr: A.Expr, node: Node, dtype) -> None:
        """A number an array of `dtype` cannot hold (`scale 1e300` on float32) is
        refused: JAX would silently make it infinite."""
        if not isinstance(value, float) or not jnp.issubdtype(dtype, jnp.inexact):
            return
        limit = float(jnp.finfo(dtype).max)
        if abs(value) > limit:
            raise self.error(
                "E153",
                expr.span,
                what=what,
                value=value,
                name=np.dtype(dtype).name,
                limit=limit,
                text=node.text,
            )

    def select(self, model: Any, ctx: Context) -> list[Node]:
        rule = self.rule
        found = select_rule(rule, model, self.env, self.source)
        partial = [n for n in found if n.layers is not None]
        if partial and not N.ACTIONS[self.action.name].per_layer:
            raise self.error(
                "E137",
                rule.selector.span,
                name=self.action.name,
                text=rule.selector.text,
                listing=", ".join(str(i) for i in sorted(partial[0].layers)),
                text2=partial[0].text,
            )
        if self.action.name == "replace" and any(n.batch for n in found):
            raise self.error("E138", rule.selector.span, text=found[0].text)
        if ctx.report is not None and self.action is rule.actions[0]:
            self.report_shifted(found, ctx)
        return found

    def report_shifted(self, found: list[Node], ctx: Context) -> None:
        """W211, once a rule, where its selector indexes a list that an
        earlier `stack` of some of its elements made shorter: the index names
        the list as it is, which is not the model's layer of that number."""
        indexed = _indexed_names(self.rule.selector)
        for node in found:
            for k, key in enumerate(node.path):
                seq = node.objects[k]
                if not (isinstance(seq, (list, tuple)) and is_index(key) and k):
                    continue
                owner = (
                    k - 2 if k > 1 and isinstance(node.objects[k - 1], eqx.nn.Sequential) else k - 1
                )
                if step_name(node.path[owner]) not in indexed:
                    continue
                # Where each element starts among the model's layers.
                starts = [0, *itertools.accumulate(e.count if _part_stack(e) else 1 for e in seq)]
                i = key.idx
                if starts[i] == i and not _part_stack(seq[i]):
                    continue
                text = path_str(node.path[:k], node.parents[:k])
                if _part_stack(seq[i]):
                    names = (
                        f"the stack of the model's `{text}[{starts[i]}:{starts[i] + seq[i].count}]`"
                    )
                else:
                    names = f"the model's `{text}[{starts[i]}]`"
                self.warn(
                    ctx,
                    "W211",
                    self.rule.selector.span,
                    text=self.rule.selector.text,
                    text2=text,
                    listing=f"`{text}[{i}]` is {names}",
                    index=next(j for j, e in enumerate(seq) if _part_stack(e)),
                    value=0,
                )
                return

    def rule_key(self, key: Any) -> Any:
        return jax.random.fold_in(key, self.identity)

    def arrays(self, nodes: list[Node]) -> list[Node]:
        return matched_arrays(nodes, self.action.name, self.rule.selector, self.source)

    def skipped(self, nodes: list[Node]) -> tuple[int, int]:
        """How many arrays at or under `nodes` the action leaves as they are:
        (non-floating ones, floating ones of model state), as `skipped`."""
        return skipped(nodes, self.rule.selector)


def _part_stack(element: Any) -> bool:
    """Is a list's element a stack made of some of that list's elements (not
    a module adopted with its own layer axis, which stays one element)?"""
    return isinstance(element, Stacked) and element.kind != "adopted"


def _indexed_names(selector: A.Selector) -> set[str]:
    """The names a selector indexes by number or slice (`layers` of
    `layers[1].weight`; not of `layers[*]`, nor of `layers[0][1]`, which
    names a stacked layer through its stack)."""
    out = set()
    for path in selector.paths:
        steps = (*path.steps, None)
        for before, step, after in zip(steps, steps[1:], steps[2:]):
            if (
                isinstance(before, A.NameStep)
                and isinstance(step, (A.IndexStep, A.SliceStep))
                and not isinstance(after, (A.IndexStep, A.SliceStep, A.AllStep))
            ):
                out.add(before.name)
    return out


@action_pass("init")
class InitPass(RulePass):
    draws = True

    def run(self, model, key, ctx, nodes):
        arg = self.action.arg
        name, args = (arg.id, ()) if isinstance(arg, A.Name) else (arg.callee, arg.args)
        leaves = self.arrays(nodes)
        signature = R.initializer_signature(name)
        positional = list(signature.positional) if signature else []
        groups: dict[tuple, list[Node]] = {}
        per_path = any(
            isinstance(e, A.Name) and e.id in ("path", "index")
            for a in args
            for e in walk_expr(a.value)
        )
        cache: dict[tuple, tuple] = {}
        kinds = argument_kinds("initialiser", name)
        for leaf in leaves:
            if not jnp.issubdtype(leaf.obj.dtype, jnp.inexact):
                raise self.error(
                    "E208",
                    self.rule.selector.span,
                    text=leaf.text,
                    name=np.dtype(leaf.obj.dtype).name,
                )
            if name in N.FAN_INITIALIZERS and leaf.obj.ndim - leaf.batch < 2:
                raise self.error(
                    "E203",
                    self.action.span,
                    variant="weight",
                    name=name,
                    text=leaf.text,
                    tuple_shape=tuple(leaf.obj.shape),
                )
            # Arguments that read only shape-like properties are the same for
            # every leaf of one shape: evaluate them once per shape.
            shape, dtype = tuple(leaf.obj.shape)[leaf.batch :], np.dtype(leaf.obj.dtype)
            memo = (shape, dtype, fans(leaf)) if not per_path else None
            kwargs = cache.get(memo) if memo is not None else None
            if kwargs is None:
                found = self.call_arguments(
                    name, args, positional, kinds, leaf, dtype, context(leaf)
                )
                kwargs = tuple(sorted(found.items()))
                if memo is not None:
                    cache[memo] = kwargs
            groups.setdefault((shape, dtype, kwargs), []).append(leaf)
        order, values = [], []
        for (shape, dtype, kwargs), members in groups.items():
            # For shapes alone (a plan), one draw per shape stands for all:
            # tracing a draw per leaf cost a plan most of its time.
            drawn: dict[tuple, Any] = {}
            for member in members:
                same = (tuple(member.obj.shape), member.batch, member.layers)
                if same in drawn:
                    order.append(member.path)
                    values.append(drawn[same])
                    continue
                try:
                    value = self.draw_leaf(model, name, kwargs, shape, dtype, key, member)
                except (TypeError, ValueError, IndexError, OverflowError, ZeroDivisionError) as e:
                    raise self.error(
                        "E209",
                        self.action.span,
                        name=name,
                        shape=shape,
                        splitlines=str(e).splitlines()[0],
                    ) from None
                if ctx.shapes_only:
                    drawn[same] = value
                order.append(member.path)
                values.append(value)
        return replace_at(model, order, values)

    def draw_leaf(self, model, name, kwargs, shape, dtype, key, leaf):
        h, draw = stable_hash(leaf.text), _init.drawer(name, kwargs, shape, dtype)
        if not leaf.batch:
            return draw(key, self.identity, h)
        # A stacked or ensembled leaf: each layer (or member) draws its own.
        full = tuple(leaf.obj.shape)
        lead = full[: leaf.batch]
        if leaf.layers is None:
            ids = jnp.arange(math.prod(lead), dtype=jnp.uint32)
            return draw(key, self.identity, h, ids).reshape(full)
        ids = jnp.asarray(sorted(leaf.layers), dtype=jnp.uint32)
        current = get(model, leaf.path)
        return current.at[ids.astype(jnp.int32)].set(draw(key, self.identity, h, ids))


@action_pass("replace")
class ReplacePass(RulePass):
    def run(self, model, key, ctx, nodes):
        # A match inside another match is replaced with it.
        outer = outermost(nodes, lambda n: n.path)
        arg = self.action.arg
        values = []
        rule_key = self.rule_key(key)
        for node in outer:
            if isinstance(arg, A.Name):
                values.append(to_python(FunctionRef(arg.id)))
                continue
            env = dict(self.env)
            env.update(context(node))
            leaf_key = jax.random.fold_in(rule_key, stable_hash(node.text))
            value = build(arg, env, leaf_key, self.source, ctx.allow)
            lead = _layer_lead(node.obj, value)
            if lead:
                # A module of a library's pre-stacked layers (built under
                # `eqx.filter_vmap`): one replacement per layer, each drawn
                # with its own key, as the library built what it replaces.
                value = _per_layer(
                    lambda k, env=env: build(arg, env, k, self.source, ctx.allow), leaf_key, lead
                )
            what = f"the model with `{arg.callee}(...)` at `{node.text}`"
            bad = too_deep(value, what, arg.span, self.source, above=len(node.path))
            if bad is not None:
                raise SpecError(bad)
            values.append(value)
        return replace_at(model, [n.path for n in outer], values)


def _layer_lead(old: Any, new: Any) -> tuple[int, ...]:
    """The leading layer axes that every array of `old` carries and a one-layer
    `new` lacks: `(2,)` for a `Linear` of esm2quinox's layers, `(2, 2)` inside
    transformer-flows' blocks; `()` for a module of one layer."""
    olds = [n for n in walk(old) if is_array(n.obj)]
    news = [x for x in jax.tree_util.tree_leaves(new) if is_array(x)]
    if not olds:
        return ()
    leads = set()
    for node in olds:
        known = layout_ndim(node)
        if known is not None:
            leads.add(tuple(node.obj.shape[: node.obj.ndim - known]))
    if not leads and len(olds) == len(news):
        # Layer types of the library's own (no known layout): by the shapes a
        # one-layer replacement has.
        for node, x in zip(olds, news):
            shape, one = tuple(node.obj.shape), tuple(x.shape)
            if len(shape) <= len(one) or shape[len(shape) - len(one) :] != one:
                return ()
            leads.add(shape[: len(shape) - len(one)])
    return next(iter(leads)) if len(leads) == 1 else ()


def _per_layer(make, key, lead: tuple[int, ...]) -> Any:
    """`make(key)` for each layer of the leading axes `lead`, stacked."""
    keys = jax.random.split(key, math.prod(lead)).reshape(lead)
    for _ in lead:
        make = eqx.filter_vmap(make)
    return make(keys)


@action_pass("cast")
class CastPass(RulePass):
    def run(self, model, key, ctx, nodes):
        dtype = jnp.dtype(self.action.arg.id)
        leaves = self.arrays(nodes)
        paths = [leaf.path for leaf in leaves]
        return replace_at(model, paths, [get(model, p).astype(dtype) for p in paths])

    def arrays(self, nodes: list[Node]) -> list[Node]:
        # A complex array cast to a real dtype would lose its imaginary part:
        # skipped under a module or a broad selector, refused where named.
        leaves = super().arrays(nodes)
        if jnp.issubdtype(jnp.dtype(self.action.arg.id), jnp.complexfloating):
            return leaves
        named = {
            p.steps[-1].name
            for p in self.rule.selector.paths
            if isinstance(p.steps[-1], A.NameStep)
        }
        for node in nodes:
            field = getattr(node.path[-1], "name", None) if node.path else None
            if is_array(node.obj) and _complex(node.obj) and field in named:
                raise self.error(
                    "E380",
                    self.rule.selector.span,
                    name=self.action.arg.id,
                    text=node.text,
                    dtype=np.dtype(node.obj.dtype).name,
                    owner=path_str(node.path[:-1], node.parents[:-1]) or "**",
                )
        return [leaf for leaf in leaves if not _complex(leaf.obj)]

    def skipped(self, nodes: list[Node]) -> tuple[int, int]:
        other, state = super().skipped(nodes)
        if jnp.issubdtype(jnp.dtype(self.action.arg.id), jnp.complexfloating):
            return other, state
        return other + sum(_complex(n.obj) for n in super().arrays(nodes)), state


def _complex(x: Any) -> bool:
    return bool(jnp.issubdtype(x.dtype, jnp.complexfloating))


@action_pass("scale")
class ScalePass(RulePass):
    def run(self, model, key, ctx, nodes):
        leaves = self.arrays(nodes)
        values = []
        for leaf in leaves:
            factor = self.eval(self.action.arg, leaf)
            if not isinstance(factor, (int, float)) or isinstance(factor, bool):
                raise self.error("E210", self.action.arg.span, factor=factor, text=leaf.text)
            # A float: `3000000000` as a Python int would not fit JAX's int32.
            factor = float(factor)
            self.in_range("`scale`", factor, self.action.arg, leaf, leaf.obj.dtype)
            current = get(model, leaf.path)
            if leaf.layers is not None:
                ids = jnp.asarray(sorted(leaf.layers))
                values.append(current.at[ids].multiply(factor))
            else:
                values.append((current * factor).astype(current.dtype))
        return replace_at(model, [leaf.path for leaf in leaves], values)


@action_pass("wrap")
class WrapPass(RulePass):
    def run(self, model, key, ctx, nodes):
        arg = self.action.arg
        name, args = (arg.id, ()) if isinstance(arg, A.Name) else (arg.callee, arg.args)
        cls = R.resolve_wrapper(name)
        positional = list(R.wrapper_signature(name).positional)
        for node in nodes:
            if not (is_array(node.obj) or isinstance(node.obj, Wrapper)):
                raise self.error(
                    "E203",
                    self.rule.selector.span,
                    variant="wrap",
                    text=node.text,
                    describe_kind_obj=_describe_kind(node.obj),
                )
            if name == "weight_norm" and node.batch:
                raise self.error("E139", self.rule.selector.span, text=node.text)
        values = []
        kinds = argument_kinds("wrapper", name)
        for node in nodes:
            dtype = node.obj.dtype if is_array(node.obj) else None
            kwargs = self.call_arguments(name, args, positional, kinds, node, dtype)
            try:
                values.append(cls(get(model, node.path), **kwargs))
            except (ValueError, TypeError) as e:
                raise self.error(
                    "E205",
                    self.action.span,
                    variant="wrap_at",
                    help="narrow the selector, e.g. `if ndim == 2 and shape[0] == shape[1]`"
                    if name == "symmetric"
                    else None,
                    name=name,
                    text=node.text,
                    splitlines=str(e).splitlines()[0],
                ) from None
        return replace_at(model, [n.path for n in nodes], values)


@action_pass("freeze")
class FreezePass(RulePass):
    def run(self, model, key, ctx, nodes):
        leaves = []
        for node in nodes:
            if any(_wholly_frozen(p) for p in node.objects):
                continue  # frozen already
            if isinstance(node.obj, Wrapper) and not isinstance(node.obj, Frozen):
                leaves.append(node)
            else:
                leaves.extend(
                    leaf
                    for leaf in self.arrays([node])
                    if not any(_wholly_frozen(p) for p in leaf.parents)
                )
        unique = list({leaf.path: leaf for leaf in leaves}.values())
        # A wrapper and an array inside it may both be listed: keep the outer.
        outer = outermost(unique, lambda n: n.path)
        targets = [_frozen(model, n) for n in outer]
        return replace_at(model, [p for p, _ in targets], [v for _, v in targets])


def _wholly_frozen(obj) -> bool:
    return isinstance(obj, Frozen) and obj.layers is None


def _frozen(model, node: Node) -> tuple:
    """(path, `Frozen`) for the node: its value frozen whole, or the layers a
    selector picked of a stack (joined with those frozen before)."""
    parent = node.parents[-1] if node.parents else None
    if isinstance(parent, Frozen):  # some layers frozen before: replace that wrapper
        path, before = node.path[:-1], set(parent.layers)
    else:
        path, before = node.path, set()
    value = get(model, node.path)
    if node.layers is None:
        return path, Frozen(value)
    axis = stack_axis(node) - len(node.obj.shape)  # from the end: the same in a member's view
    return path, Frozen(value, tuple(sorted(before | set(node.layers))), axis)


@action_pass("unwrap")
class UnwrapPass(RulePass):
    def run(self, model, key, ctx, nodes):
        found: dict[tuple, None] = {}
        for node in nodes:
            for sub in walk(node.obj):
                if isinstance(sub.obj, Wrapper):
                    found.setdefault(node.path + sub.path)
        outer = outermost(found)
        return replace_at(model, outer, [bake(get(model, p)) for p in outer])


@action_pass("remat")
class RematPass(RulePass):
    """`remat(policy=NAME)`: each matched module (the outermost of nested
    matches) is called under `eqx.filter_checkpoint`; one already so is given
    the new policy."""

    def run(self, model, key, ctx, nodes):
        policy = None
        for a in self.action.arg.args if isinstance(self.action.arg, A.Call) else ():
            kind = dict(N.ACTIONS["remat"].kinds)[a.name]
            policy = bare_word(a.value, kind)
            if not isinstance(policy, str) and nodes:
                policy = self.argument(f"`{a.name}` of `remat`", a.value, kind, nodes[0])
        outer = outermost(nodes, lambda n: n.path)
        for node in outer:
            if not (isinstance(node.obj, eqx.Module) and callable(node.obj)) or isinstance(
                node.obj, Wrapper
            ):
                raise self.error(
                    "E203",
                    self.rule.selector.span,
                    variant="remat_checkpoints",
                    text=node.text,
                    describe_kind_obj=_describe_kind(node.obj),
                )
            if node.batch:
                raise self.error(
                    "E203", self.rule.selector.span, variant="remat_cannot", text=node.text
                )
        # A module a `Remat` stands around already gets the new policy.
        paths = [
            n.path[:-1] if n.parents and type(n.parents[-1]) is Remat else n.path for n in outer
        ]
        values = []
        for path in paths:
            module = get(model, path)
            values.append(Remat(module.module if type(module) is Remat else module, policy))
        return replace_at(model, paths, values)
