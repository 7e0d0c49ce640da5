"""What every pass is: a pure function of the model, a key and a context.

A `Pass` is plain data (the statement it came from, the `let` values, a stable
identity for its random draws) plus two methods: `select` finds the nodes it
acts on, `run` changes them. `pass_(model, key, ctx)` is `run` of `select`;
`plan` calls the two apart, so that it selects once and runs under
`eval_shape`. Nothing reaches a pass but its arguments: the allow-list, the
constructor that rebuilds ensemble members and the device mesh travel in the
`Context`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import equinox as eqx
import jax

from .. import _ast as A
from .. import _names as N
from .._build import budget_diagnostic, nbytes
from .._diagnostics import Diagnostic, report
from .._errors import SpecError
from .._modules import join_state, restate, split_state
from .._select import GetAttrKey, Node, get


@dataclass(frozen=True)
class Context:
    """What a pass may use besides the model and the key.

    **Attributes:**

    - `allow`: top-level packages whose `package.module:function`
      constructors may be imported.
    - `base`: `key -> model`, the model the program was applied to, rebuilt
      from its constructor (its recipe); `None` when it is not known. An
      `ensemble` builds its members with it.
    - `inputs`: the model's inputs (`jax.ShapeDtypeStruct`s), when the spec
      declares them with `input`.
    - `verify`: run the model on random inputs to check that a `stack` keeps
      its outputs (`apply` does; `plan`, which allocates nothing, does not).
    - `report`: where a pass sends warnings (`plan` collects them, `apply`
      issues them as Python warnings); None drops them.
    - `mesh`: the `jax.sharding.Mesh` the arrays are placed on (the last
      pass of a program with a `mesh` puts each in its sharding); None
      leaves them where they are.
    - `shapes_only`: the pass runs under `eval_shape` for the shapes it
      makes, and no value it computes is read (a plan, a budget check): work
      that gives every leaf of one shape the same shape may be done once.
    """

    allow: tuple[str, ...] = ()
    base: Callable[[Any], Any] | None = None
    inputs: tuple[Any, ...] | None = None
    verify: bool = False
    report: Callable[[Diagnostic], None] | None = None
    mesh: Any = None
    shapes_only: bool = False


@dataclass(frozen=True, eq=False)
class Pass:
    """One step of a program. Subclasses define `select` and `run`."""

    stmt: A.Stmt
    env: Mapping[str, Any]
    source: A.Source
    identity: int

    # Does the pass draw random numbers (so that running it again per member
    # of an ensemble gives each member its own)?
    draws = False

    # ---- what the pass is, for plans and messages
    @property
    def line(self) -> int:
        return self.stmt.span.line

    @property
    def text(self) -> str:
        """The statement as written, comment removed."""
        if isinstance(self.stmt, A.Rule):
            return self.stmt.text
        return self.source.line(self.stmt.span.line).split("#", 1)[0].strip()

    @property
    def label(self) -> str:
        """What the pass does, as written: `init he_normal`, `stack`."""
        return self.text.split(None, 1)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(line {self.line}: {self.label})"

    # ---- what it does
    def select(self, model: Any, ctx: Context) -> list[Node]:
        raise NotImplementedError

    def run(self, model: Any, key: Any, ctx: Context, nodes: list[Node]) -> Any:
        raise NotImplementedError

    def run_stateful(self, model: Any, state: Any, key: Any, ctx: Context, nodes: list[Node]):
        """`run`, and the state of the new model made from `state` (an
        `eqx.nn.State`): stacked layers' states stack with them."""
        new = self.run(model, key, ctx, nodes)
        return new, restate(new, state)

    def run_on(self, subject: Any, key: Any, ctx: Context, nodes: list[Node]) -> Any:
        """`run` on a model, or `run_stateful` on a `(model, state)` pair."""
        model, state = split_state(subject)
        if state is None:
            return self.run(model, key, ctx, nodes)
        return join_state(*self.run_stateful(model, state, key, ctx, nodes))

    # Can the pass make the model larger (an ensemble, a stack of copies)? Then
    # its result is measured on shapes before it allocates anything.
    grows = False

    def __call__(self, subject: Any, key: Any, ctx: Context = Context()) -> Any:
        """The pass on a model, or on a stateful model's `(model, state)`."""
        nodes = self.select(split_state(subject)[0], ctx)
        # Measured when run for real, not traced (built per member, planned).
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(subject))
        if self.grows and not traced:
            size = self.size_after(subject)
            if size is None:
                # Shapes only: the forward check of a stack needs values, and
                # the warnings are issued once, by the run below.
                shaped = replace(ctx, verify=False, report=None, shapes_only=True)
                after = eqx.filter_eval_shape(
                    lambda m, k: self.run_on(m, k, shaped, nodes), subject, key
                )
                size = nbytes(after)
            bad = budget_diagnostic(size, "the model after this line", self.stmt.span, self.source)
            if bad is not None and size > nbytes(subject):
                raise SpecError(bad)
        return self.run_on(subject, key, ctx, nodes)

    def size_after(self, subject: Any) -> int | None:
        """The bytes of the model after a pass that `grows` it, where they
        follow from the model without running the pass; None otherwise."""
        return None

    # ---- helpers
    def error(self, code: str, span: A.Span, **fields) -> SpecError:
        return SpecError(report(code, span=span, source=self.source, **fields))

    def warn(self, ctx: Context, code: str, span: A.Span, **fields) -> None:
        """Sends warning `code` at `span` where `ctx` says (nowhere without `report`)."""
        if ctx.report is not None:
            ctx.report(report(code, span=span, source=self.source, **fields))


# The pass of each action that changes the model, by the action's name (its
# record in `_names.ACTIONS`): each pass class registers itself with
# `action_pass`, so no table repeats the actions.
PASSES: dict[str, type[Pass]] = {}


def action_pass(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator: the decorated pass is the one of action `name`."""

    def register(cls: type[Pass]) -> type[Pass]:
        assert name in N.ACTIONS and name not in PASSES, name
        PASSES[name] = cls
        return cls

    return register


def replace_at(model: Any, paths: list, values: list[Any]) -> Any:
    """`model` with the nodes at `paths` replaced, all in one walk, as
    `eqx.tree_at(lambda m: [get(m, p) for p in paths], model, values)` would.

    Only the nodes on the way from the root to a replaced node are rebuilt
    (each once, by its own pytree flattening); everything else is shared with
    `model`. `eqx.tree_at` maps over the whole tree five times and flattens
    every module on the way: for a pass over a few leaves of a large model, or
    the several calls of a plan, most of the time. The walk keeps its own
    stack, so a model nested deeper than Python's recursion limit is no error.
    A path under another path is replaced with it (the outer one wins).
    """
    if not paths:
        return model
    trie: dict = {}
    for path, value in zip(paths, values, strict=True):
        node = trie
        for key in path:
            node = node.setdefault(key, {})
        node[_VALUE] = value
    if _VALUE in trie:
        return trie[_VALUE]
    # Each frame: the object, its part of the trie, the keys of it still to
    # visit, its children replaced so far, and its key in its parent.
    frames = [(model, trie, list(trie), {}, None)]
    while True:
        obj, node, pending, changed, at = frames[-1]
        if pending:
            key = pending.pop()
            below = node[key]
            if _VALUE in below:
                changed[key] = below[_VALUE]
            else:
                frames.append((get(obj, (key,)), below, list(below), {}, key))
            continue
        frames.pop()
        new = _with_children(obj, changed)
        if not frames:
            return new
        frames[-1][3][at] = new


_VALUE = object()  # where a path of `replace_at` ends: the value there


def _with_children(obj: Any, changed: dict) -> Any:
    """`obj` (one pytree node) with the children at the keys of `changed`
    replaced, built as JAX unflattens it (no `__init__` runs)."""
    if type(obj) in (list, tuple):
        out = list(obj)
        for key, value in changed.items():
            out[key.idx] = value
        return type(obj)(out)
    if type(obj) is dict:
        out = dict(obj)
        for key, value in changed.items():
            out[key.key] = value
        return out
    if isinstance(obj, eqx.Module) and all(isinstance(k, GetAttrKey) for k in changed):
        # As Equinox's own unflattening: a new instance, its fields set
        # directly (one dict copy instead of a flatten and an unflatten).
        out = object.__new__(type(obj))
        out.__dict__.update(obj.__dict__)
        for key, value in changed.items():
            object.__setattr__(out, key.name, value)
        return out
    flat, treedef = jax.tree_util.tree_flatten_with_path(obj, is_leaf=lambda x: x is not obj)
    children = [changed.get(path[0], value) for path, value in flat]
    return jax.tree_util.tree_unflatten(treedef, children)
