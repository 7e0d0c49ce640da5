"""The `eqx.tree_at` passes: init, replace, cast, scale.

Each pass selects its nodes once and makes one `tree_at` call for all of them,
never one per leaf.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _ast as A
from .._build import build, to_python
from .._diagnostics import Diagnostic, did_you_mean
from .._errors import SpecError
from .._expr import EvalError, FunctionRef, evaluate
from .._expr import walk as walk_expr
from .._hashing import stable_hash
from .._names import FAN_INITIALIZERS
from .._select import Node, array_leaves, context, fans, get, is_array, nearest_paths, select, walk
from . import _init


@dataclass(frozen=True, eq=False)
class RulePass:
    """One action of one rule, as a pure `(model, key) -> model` function."""

    rule: A.Rule
    action: A.Action
    env: Mapping[str, Any]
    source: A.Source
    identity: int
    allow: tuple[str, ...] = ()

    # -- diagnostics
    def error(self, code: str, message: str, span: A.Span, help: str | None = None) -> SpecError:
        return SpecError(Diagnostic(code, message, span, help, self.source))

    def eval(self, expr: A.Expr, node: Node | None = None, ctx: dict | None = None) -> Any:
        env = dict(self.env)
        if node is not None:
            env.update(ctx if ctx is not None else context(node))
        try:
            return evaluate(expr, env)
        except EvalError as e:
            where = f" at `{node.text}`" if node is not None else ""
            raise self.error("E204", e.message + where, e.span, e.help) from None

    # -- selection
    def select(self, model: Any) -> list[Node]:
        rule = self.rule
        nodes = walk(model)
        found = select(rule.selector, nodes)
        if not found:
            raise no_match(rule.selector, nodes, self.source)
        if rule.filter is not None:
            candidates = found
            found = [n for n in candidates if self.eval(rule.filter, n)]
            if not found:
                raise self.error(
                    "E201",
                    f"`{rule.selector.text}` matches {len(candidates)} "
                    f"node{'s' if len(candidates) != 1 else ''}, but none passes the `if` filter",
                    rule.filter.span,
                    "e.g. " + ", ".join(_describe(n) for n in candidates[:3]),
                )
        partial = [n for n in found if n.layers is not None]
        if partial and self.action.name not in ("init", "scale"):
            raise self.error(
                "E137",
                f"`{self.action.name}` cannot act on some layers of a stack: "
                f"`{rule.selector.text}` picks layers "
                + ", ".join(str(i) for i in sorted(partial[0].layers))
                + f" of `{partial[0].text}`",
                rule.selector.span,
                "select the whole stack, or `unstack` it first",
            )
        if self.action.name == "replace" and any(n.batch for n in found):
            raise self.error(
                "E137",
                f"`replace` cannot act inside a stack or an ensemble (`{found[0].text}`)",
                rule.selector.span,
                "replace before the `stack`/`ensemble` line, or `unstack` first",
            )
        if rule.expect is not None and len(found) != rule.expect.value:
            raise self.error(
                "E202",
                f"`{rule.selector.text}` matches {len(found)} "
                f"node{'s' if len(found) != 1 else ''}, not the {rule.expect.value} expected",
                rule.expect.span,
                "matched: "
                + ", ".join(f"`{n.text}`" for n in found[:6])
                + (", ..." if len(found) > 6 else ""),
            )
        return found

    def __call__(self, model: Any, key: Any) -> Any:
        return self.run(model, key, self.select(model))

    def rule_key(self, key: Any) -> Any:
        return jax.random.fold_in(key, self.identity)

    def run(self, model: Any, key: Any, nodes: list[Node]) -> Any:
        raise NotImplementedError

    def arrays(self, nodes: list[Node]) -> list[Node]:
        """The arrays the matched nodes stand for: arrays as they are, modules
        and containers by their floating-point arrays."""
        out: dict[tuple, Node] = {}
        for node in nodes:
            if not is_array(node.obj) and not isinstance(node.obj, (eqx.Module, list, tuple, dict)):
                raise self.error(
                    "E203",
                    f"`{self.action.name}` needs arrays, but `{node.text}` is "
                    f"{_describe_kind(node.obj)}",
                    self.rule.selector.span,
                    "select arrays (e.g. `Linear.weight`) or the modules that hold them",
                )
            for leaf in array_leaves(node, inexact_only=not is_array(node.obj)):
                out.setdefault(leaf.path, leaf)
        return list(out.values())

    @staticmethod
    def tree_at(model: Any, nodes: list[Node], values: list[Any]) -> Any:
        if not nodes:
            return model
        paths = [n.path for n in nodes]
        return eqx.tree_at(lambda m: [get(m, p) for p in paths], model, values)


def no_match(selector: A.Selector, nodes: list[Node], source: A.Source) -> SpecError:
    near = nearest_paths(selector, nodes)
    return SpecError(
        Diagnostic(
            "E201",
            f"`{selector.text}` matches nothing in the model",
            selector.span,
            (did_you_mean(selector.text, near) or "")
            + (" " if near else "")
            + "(`eqxform show MODEL` lists every path)",
            source,
        )
    )


def _describe_kind(obj: Any) -> str:
    if callable(obj):
        return f"the function `{getattr(obj, '__name__', type(obj).__name__)}`"
    return f"a `{type(obj).__name__}`"


def _describe(node: Node) -> str:
    if is_array(node.obj):
        return f"`{node.text}` {_short(node.obj)}"
    return f"`{node.text}` ({type(node.obj).__name__})"


def _short(x) -> str:
    return f"{np.dtype(x.dtype).name}{list(x.shape)}"


class InitPass(RulePass):
    def run(self, model, key, nodes):
        arg = self.action.arg
        if isinstance(arg, A.Call):
            name, args = arg.callee, arg.args
        else:
            assert isinstance(arg, A.Name)
            name, args = arg.id, ()
        leaves = self.arrays(nodes)
        from .._registry import initializer_signature

        signature = initializer_signature(name)
        positional = [p for p in signature.positional] if signature else []
        groups: dict[tuple, list[Node]] = {}
        per_path = any(
            isinstance(e, A.Name) and e.id in ("path", "index")
            for a in args
            for e in walk_expr(a.value)
        )
        cache: dict[tuple, tuple] = {}
        for leaf in leaves:
            if not np.issubdtype(leaf.obj.dtype, np.inexact):
                raise self.error(
                    "E203",
                    f"`init` draws floating-point numbers, but `{leaf.text}` is "
                    f"{np.dtype(leaf.obj.dtype).name}",
                    self.rule.selector.span,
                    'narrow the selector, e.g. with `if dtype == "float32"`',
                )
            if name in FAN_INITIALIZERS and leaf.obj.ndim - leaf.batch < 2:
                raise self.error(
                    "E203",
                    f"`{name}` needs a weight of 2 or more dimensions, but `{leaf.text}` "
                    f"has shape {tuple(leaf.obj.shape)}",
                    self.action.span,
                    "select weights only (e.g. `Linear.weight`), or use an initialiser "
                    "without fans such as `zeros` or `normal(stddev=0.01)`",
                )
            # Arguments that read only shape-like properties are the same for
            # every leaf of one shape: evaluate them once per shape.
            shape, dtype = tuple(leaf.obj.shape)[leaf.batch :], np.dtype(leaf.obj.dtype)
            memo = (shape, dtype, fans(leaf)) if not per_path else None
            kwargs = cache.get(memo) if memo is not None else None
            if kwargs is None:
                ctx = context(leaf)
                kwargs = tuple(
                    sorted(
                        (a.name or positional[i], to_python(self.eval(a.value, leaf, ctx)))
                        for i, a in enumerate(args)
                    )
                )
                if memo is not None:
                    cache[memo] = kwargs
            group = (shape, dtype, kwargs)
            groups.setdefault(group, []).append(leaf)
        order, values = [], []
        for (shape, dtype, kwargs), members in groups.items():
            for member in members:
                try:
                    value = self.draw_leaf(name, kwargs, shape, dtype, key, member)
                except (TypeError, ValueError) as e:
                    raise self.error(
                        "E204",
                        f"`{name}` cannot draw an array of shape {shape}: {str(e).splitlines()[0]}",
                        self.action.span,
                    ) from None
                order.append(member)
                values.append(value)
        return self.tree_at(model, order, values)

    def draw_leaf(self, name, kwargs, shape, dtype, key, leaf):
        h = stable_hash(leaf.text)
        if not leaf.batch:
            return _init.drawer(name, kwargs, shape, dtype)(key, self.identity, h)
        # A stacked or ensembled leaf: each layer (or member) draws its own.
        draw = _init.drawer_layers(name, kwargs, shape, dtype)
        lead = tuple(leaf.obj.shape)[: leaf.batch]
        if leaf.layers is None:
            ids = jnp.arange(math.prod(lead), dtype=jnp.uint32)
            return draw(key, self.identity, h, ids).reshape(leaf.obj.shape)
        ids = jnp.asarray(sorted(leaf.layers), dtype=jnp.uint32)
        return leaf.obj.at[ids.astype(jnp.int32)].set(draw(key, self.identity, h, ids))


class ReplacePass(RulePass):
    def run(self, model, key, nodes):
        # A match inside another match is replaced with it.
        outer = []
        for node in nodes:
            if not any(node.path[: len(o.path)] == o.path for o in outer):
                outer.append(node)
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
            values.append(build(arg, env, leaf_key, self.source, self.allow))
        return self.tree_at(model, outer, values)


class CastPass(RulePass):
    def run(self, model, key, nodes):
        import jax.numpy as jnp

        dtype = jnp.dtype(self.action.arg.id)
        leaves = self.arrays(nodes)
        return self.tree_at(model, leaves, [_astype(leaf.obj, dtype) for leaf in leaves])


def _astype(x, dtype):
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, dtype)
    return x.astype(dtype)


class ScalePass(RulePass):
    def run(self, model, key, nodes):
        leaves = self.arrays(nodes)
        values = []
        for leaf in leaves:
            factor = self.eval(self.action.arg, leaf)
            if not isinstance(factor, (int, float)) or isinstance(factor, bool):
                raise self.error(
                    "E204",
                    f"`scale` needs a number, but this gives `{factor}` at `{leaf.text}`",
                    self.action.arg.span,
                )
            if leaf.layers is not None:
                ids = jnp.asarray(sorted(leaf.layers))
                values.append(leaf.obj.at[ids].multiply(factor))
            else:
                values.append((leaf.obj * factor).astype(leaf.obj.dtype))
        return self.tree_at(model, leaves, values)


PASSES = {"init": InitPass, "replace": ReplacePass, "cast": CastPass, "scale": ScalePass}


def _wrapper_types():
    from .._runtime import _wrappers

    return _wrappers


class WrapPass(RulePass):
    def run(self, model, key, nodes):
        w = _wrapper_types()
        arg = self.action.arg
        name = arg.id if isinstance(arg, A.Name) else arg.callee
        args = () if isinstance(arg, A.Name) else arg.args
        from .._registry import resolve_wrapper, wrapper_signature

        cls = resolve_wrapper(name)
        positional = list(wrapper_signature(name).positional)
        targets = []
        for node in nodes:
            if not (is_array(node.obj) or isinstance(node.obj, w.Wrapper)):
                raise self.error(
                    "E203",
                    f"`wrap` needs arrays, but `{node.text}` is {_describe_kind(node.obj)}",
                    self.rule.selector.span,
                    "select the arrays themselves, e.g. `Linear.weight`",
                )
            if name == "weight_norm" and node.batch:
                raise self.error(
                    "E203",
                    f"`weight_norm` takes its norm over one layer's axes and cannot wrap the "
                    f"stacked `{node.text}`",
                    self.rule.selector.span,
                    "wrap before the `stack`/`ensemble` line",
                )
            targets.append(node)
        values = []
        for node in targets:
            kwargs = {
                (a.name or positional[i]): to_python(self.eval(a.value, node))
                for i, a in enumerate(args)
            }
            try:
                values.append(cls(node.obj, **kwargs))
            except (ValueError, TypeError) as e:
                raise self.error(
                    "E205",
                    f"`wrap {name}` failed at `{node.text}`: {str(e).splitlines()[0]}",
                    self.action.span,
                    "narrow the selector, e.g. `if ndim == 2 and shape[0] == shape[1]`"
                    if name == "symmetric"
                    else None,
                ) from None
        return self.tree_at(model, targets, values)


class FreezePass(RulePass):
    def run(self, model, key, nodes):
        w = _wrapper_types()
        leaves = []
        for node in nodes:
            if isinstance(node.obj, w.Frozen) or any(isinstance(p, w.Frozen) for p in node.parents):
                continue  # frozen already
            if isinstance(node.obj, w.Wrapper):
                leaves.append(node)
            else:
                leaves.extend(
                    leaf
                    for leaf in self.arrays([node])
                    if not any(isinstance(p, w.Frozen) for p in leaf.parents)
                )
        unique = list({leaf.path: leaf for leaf in leaves}.values())
        # A wrapper and an array inside it may both be listed: keep the outer.
        outer = [
            n
            for n in unique
            if not any(o.path == n.path[: len(o.path)] and o is not n for o in unique)
        ]
        return self.tree_at(model, outer, [w.Frozen(n.obj) for n in outer])


class UnwrapPass(RulePass):
    def run(self, model, key, nodes):
        w = _wrapper_types()
        found: dict[tuple, Node] = {}
        for node in nodes:
            for sub in walk(node.obj):
                if isinstance(sub.obj, w.Wrapper):
                    path = node.path + sub.path
                    found.setdefault(path, Node(path, sub.obj, node.parents + sub.parents))
        outer = [
            n
            for n in found.values()
            if not any(p != n.path and n.path[: len(p)] == p for p in found)
        ]
        return self.tree_at(model, outer, [w.bake(n.obj) for n in outer])


class GroupPass(RulePass):
    """`lr` and `weight_decay`: they shape the optimiser, not the model. The pass
    checks that its selector matches; `eqxform.optimizer` reads the groups."""

    def run(self, model, key, nodes):
        return model


PASSES.update(
    wrap=WrapPass, freeze=FreezePass, unwrap=UnwrapPass, lr=GroupPass, weight_decay=GroupPass
)
