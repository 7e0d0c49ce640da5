"""Selectors -> the nodes of a model they name.

A model is walked once, in order, into `Node`s: each node is a module, a
container, an array or another leaf (an activation function), with its path
from the root. Paths are JAX key paths (`GetAttrKey`, `SequenceKey`,
`DictKey`), the same that `jax.tree_util.tree_flatten_with_path` gives, so a
selected array, its tensor name in a model file and its optimiser label are one
path written three ways and cannot drift apart. A selector is matched against
each node's path and the objects along it (a type step checks an object; `**`
spans any number of steps), so matching is linear in the size of the model.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import equinox as eqx
import jax
import numpy as np

from . import _ast as A
from . import _limits
from ._diagnostics import Diagnostic, did_you_mean, report
from ._errors import SpecError
from ._expr import EvalError, evaluate
from ._modules import (
    AROUND,
    Ensemble,
    Stacked,
    Wrapper,
    batched,
    is_state_index,
    wrapped_field,
)
from ._names import CONTEXT_NAMES
from ._parse import parse
from ._registry import registered_type, resolve_type, type_names

GetAttrKey = jax.tree_util.GetAttrKey
SequenceKey = jax.tree_util.SequenceKey
DictKey = jax.tree_util.DictKey

Path = tuple[Any, ...]  # a JAX key path


def is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))


def step_name(key: Any) -> Any:
    """The field, dict key or index a path step names."""
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, DictKey):
        return key.key
    if isinstance(key, SequenceKey):
        return key.idx
    return getattr(key, "key", key)


def is_index(key: Any) -> bool:
    return isinstance(key, SequenceKey)


def tensor_name(path: Path) -> str:
    """The name of the array at `path` in a model file: `layers.0.weight`."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator=".")


@dataclasses.dataclass(frozen=True, eq=False)
class Node:
    path: Path
    obj: Any
    parents: tuple[Any, ...]  # the objects from the root down to (not including) obj
    # For a node inside a stack: the layers a selector picked (None: all).
    layers: frozenset[int] | None = None

    @property
    def text(self) -> str:
        return path_str(self.path, self.parents)

    @property
    def name(self) -> str:
        return tensor_name(self.path)

    @property
    def objects(self) -> tuple[Any, ...]:
        return self.parents + (self.obj,)

    @functools.cached_property
    def batch(self) -> int:
        """How many leading axes of this node's array are layer or member axes:
        those of the stacks and ensembles it sits in, or, for an array of a
        known layer type, every axis beyond that type's layout (a `Linear`
        weight built under `eqx.filter_vmap` is `(layers, out, in)`)."""
        if is_array(self.obj):
            known = layout_ndim(self)
            if known is not None and self.obj.ndim >= known:
                return self.obj.ndim - known
        return sum(1 for p in self.parents if batched(p))

    @property
    def axis_names(self) -> tuple[str, ...]:
        """Names of the leading axes: `member` and `layer` for ensembles and
        stacks, `layer` for other leading axes of a known layout."""
        names = [
            "member" if isinstance(p, Ensemble) else "layer" for p in self.parents if batched(p)
        ]
        extra = self.batch - len(names)
        return tuple(names + ["layer"] * extra) if extra >= 0 else tuple(names[: self.batch])


def _field_layout(module: Any, field: str) -> int | None:
    """How many axes the array at `module.field` has in one layer, for the
    layer types whose layouts Equinox fixes; None for any other."""
    nn = eqx.nn
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return {"weight": 2, "bias": 1}.get(field)
    if isinstance(module, (nn.Conv, nn.ConvTranspose)):
        spatial = module.num_spatial_dims
        return {"weight": spatial + 2, "bias": spatial + 1}.get(field)
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        shape = module.shape
        return len(shape) if isinstance(shape, tuple) else 1
    if isinstance(module, (nn.GroupNorm, nn.BatchNorm)):
        return 1 if field in ("weight", "bias") else None
    if isinstance(module, (nn.GRUCell, nn.LSTMCell)):
        return {"weight_ih": 2, "weight_hh": 2, "bias": 1, "bias_n": 1}.get(field)
    return None


def layout_ndim(node: Node) -> int | None:
    """The layout of the array at `node` in one layer, if its module is a
    known layer type; wrappers between the module and the array are looked
    through (`Linear.weight` wrapped in `Symmetric` keeps its layout)."""
    for k in range(len(node.parents) - 1, -1, -1):
        owner = node.parents[k]
        if isinstance(owner, Wrapper):
            continue
        if isinstance(owner, eqx.Module) and isinstance(node.path[k], GetAttrKey):
            return _field_layout(owner, node.path[k].name)
        return None
    return None


def layer_axis(module: Any) -> int | None:
    """The length of the layer axis of a module built pre-stacked (by
    `eqx.filter_vmap` over keys, as esm2quinox and the Tricks page's TenMLPs
    build theirs), or None. It is one: the arrays of the layer types whose
    layouts Equinox fixes carry at least one axis more than their layout, and
    every array leads with an axis of one length.

    A module built by `filter_vmap` inside `filter_vmap` (transformer-flows'
    blocks, each holding its attention blocks pre-stacked again) carries two
    leading axes on its inner layers: the outer one is the layer axis, the
    inner one part of each layer (as the library's own scan sees it)."""
    length = None
    known = False
    for node in walk(module):
        if not is_array(node.obj):
            continue
        layout = layout_ndim(node)
        if layout is not None:
            if node.obj.ndim <= layout:
                return None
            known = True
        if node.obj.ndim == 0 or length not in (None, node.obj.shape[0]):
            return None
        length = node.obj.shape[0]
    return length if known else None


_SEEN_THROUGH = frozenset({Stacked, Ensemble, *AROUND})


def seen_through(obj: Any) -> bool:
    """Do selectors see through `obj`'s field: a stack's or an ensemble's
    layers, the module a `Remat` stands around?"""
    return type(obj) in _SEEN_THROUGH


def path_str(
    path: Path, parents: tuple[Any, ...] = (), skip: Callable[[Any], bool] = seen_through
) -> str:
    """`layers[0].weight`, as selectors write it; the step out of a parent
    that `skip` names is left out: by default the field of a stack or
    ensemble that holds the stacked layers, or of a `Remat`, as selectors see
    through it."""
    out = ""
    for k, key in enumerate(path):
        if k < len(parents) and skip(parents[k]):
            continue
        value = step_name(key)
        if is_index(key):
            out += f"[{value}]"
        else:
            out += ("." if out else "") + str(value)
    return out or "<root>"


def logical_path(node) -> str:
    """`layers[0].weight`, as selectors write it, for a node inside wrappers
    too: a frozen or wrapped weight is the same weight (`Frozen.value` is
    left out), so that rules before and after a `freeze` name one array."""
    return path_str(
        node.path, node.parents, lambda parent: seen_through(parent) or isinstance(parent, Wrapper)
    )


@functools.cache
def _dynamic_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get("static", False))


def children(obj: Any) -> Iterator[tuple[Any, Any]]:
    """(key, child) for each child of a pytree node, as JAX flattens it."""
    if isinstance(obj, eqx.Module):
        # Fields live in the instance dict; reading it there skips the Module's
        # own (slow) attribute lookup, which matters for models of many leaves.
        values = getattr(obj, "__dict__", {})
        for name in _dynamic_fields(type(obj)):
            value = values[name] if name in values else getattr(obj, name, None)
            if value is not None:
                yield GetAttrKey(name), value
    elif isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        for i, value in enumerate(obj):
            if value is not None:
                yield SequenceKey(i), value
    elif isinstance(obj, dict):
        for key in sorted(obj):
            if obj[key] is not None:
                yield DictKey(key), obj[key]
    elif not is_array(obj):
        # Any other registered pytree node (a NamedTuple, a user class): one
        # level of JAX's own flattening gives its children and their keys.
        flat = jax.tree_util.tree_flatten_with_path(
            obj, is_leaf=lambda x: x is not obj and x is not None
        )[0]
        for path, value in flat:
            if len(path) == 1:
                yield path[0], value


# The last few skeletons walked (models of `ShapeDtypeStruct`s, which hold no
# memory), with their nodes: a plan walks the skeleton a line left for the
# line's selection, and again for the next edit of that line.
_WALKED: list[tuple[Any, tuple[Node, ...]]] = []
_MAX_WALKED = 8


def walk(model: Any) -> list[Node]:
    """Every node of `model`, the root first, in tree order. The walk keeps
    its own stack: a model may nest deeper than Python's recursion limit."""
    for walked, nodes in _WALKED:
        if walked is model:
            return list(nodes)
    out: list[Node] = []
    todo = [((), model, ())]
    skeleton = True
    while todo:
        path, obj, parents = todo.pop()
        out.append(Node(path, obj, parents))
        if isinstance(obj, (jax.Array, np.ndarray)):
            skeleton = False
        inner = parents + (obj,)
        todo.extend((path + (key,), child, inner) for key, child in reversed(list(children(obj))))
    if skeleton and len(out) > 1:
        _WALKED.insert(0, (model, tuple(out)))
        del _WALKED[_MAX_WALKED:]
    return out


def nesting(tree: Any, limit: int = _limits.MAX_MODEL_DEPTH) -> int:
    """How many levels of pytree nodes `tree` nests (a list of arrays: 1, a
    `Linear`: 1, an `MLP`: 3), walked with a stack of its own and no deeper
    than `limit + 1`."""
    deepest = 0
    todo = [(tree, 0)]
    while todo:
        obj, level = todo.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                break
        if not is_array(obj):
            todo.extend((child, level + 1) for _, child in children(obj))
    return deepest


def too_deep(
    tree: Any, what: str, span: A.Span | None = None, source: A.Source | None = None, above: int = 0
) -> Diagnostic | None:
    """E159 when `tree`, `above` levels down a model, nests deeper than
    `_limits.MAX_MODEL_DEPTH`: JAX's own flattening would fail on it."""
    limit = _limits.MAX_MODEL_DEPTH
    depth = above + nesting(tree, limit - above)
    if depth <= limit:
        return None
    return report("E159", span=span, source=source, what=what, limit=limit)


def get(model: Any, path: Path) -> Any:
    obj = model
    for key in path:
        if isinstance(key, GetAttrKey):
            obj = getattr(obj, key.name)
        elif isinstance(key, SequenceKey):
            obj = obj[key.idx]
        elif isinstance(key, DictKey):
            obj = obj[key.key]
        else:  # a key of a custom pytree node: find the child by its key
            obj = dict(children(obj))[key]
    return obj


_HERE = object()  # marks where a path of a `PathSet` ends


class PathSet:
    """Key paths, asked whether one of them lies above (or below) a given path.

    A trie of the paths' steps: each question costs the length of the path
    asked about, not the number of paths held. Comparing every pair of paths
    (`any(p[: len(q)] == q for q in paths)`) made a rule over the 20,000
    layers of a model take minutes.
    """

    def __init__(self, paths: Iterable[Path] = ()):
        self._root: dict = {}
        for path in paths:
            self.add(path)

    def add(self, path: Path) -> None:
        node = self._root
        for key in path:
            node = node.setdefault(key, {})
        node[_HERE] = True

    def covers(self, path: Path, strict: bool = False) -> bool:
        """Is `path` (unless `strict`) or a path above it in the set?"""
        node = self._root
        for key in path:
            if _HERE in node:
                return True
            node = node.get(key)
            if node is None:
                return False
        return not strict and _HERE in node

    def reaches(self, path: Path) -> bool:
        """Is `path` or a path below it in the set?"""
        node = self._root
        for key in path:
            node = node.get(key)
            if node is None:
                return False
        return bool(node)  # a node of the trie holds a path's end or a way on


def outermost(items: Iterable[Any], path: Callable[[Any], Path] = lambda x: x) -> list:
    """The items whose path lies under no other item's path, in their order,
    one per path: what a pass acting on a node and everything under it
    replaces (a match inside another match goes with it)."""
    items = list(items)
    held = PathSet(path(item) for item in items)
    seen: set = set()
    out = []
    for item in items:
        p = path(item)
        if p not in seen and not held.covers(p, strict=True):
            seen.add(p)
            out.append(item)
    return out


def node_at(model: Any, path: Path) -> Node:
    """The node at `path`, with the objects along the way."""
    parents, obj = [], model
    for key in path:
        parents.append(obj)
        obj = get(obj, (key,))
    return Node(tuple(path), obj, tuple(parents))


def inexact(x: Any) -> bool:
    # `jnp.issubdtype` knows bfloat16 (an `ml_dtypes` type) is floating;
    # NumPy's does not, and would skip the arrays a `cast bfloat16` made.
    return bool(jax.numpy.issubdtype(x.dtype, jax.numpy.inexact))


def array_leaves(node: Node, inexact_only: bool, state: bool = True) -> list[Node]:
    """The arrays at or under `node` (with `inexact_only`, its floating-point
    ones: a bool mask or an int counter is no parameter to draw, cast, scale
    or freeze; without `state`, none held in an `eqx.nn.StateIndex`: a
    cache's or running statistics' initial value is no parameter either)."""
    if is_array(node.obj):
        found = [node]
    else:
        found = [
            Node(node.path + sub.path, sub.obj, node.parents + sub.parents, node.layers)
            for sub in walk(node.obj)
            if sub.path and is_array(sub.obj)
        ]
    return [
        n
        for n in found
        if (not inexact_only or inexact(n.obj)) and (state or not in_state(n.parents))
    ]


def in_state(objects: Iterable[Any]) -> bool:
    """Is any of `objects` (the objects along a path) an `eqx.nn.StateIndex`?"""
    return any(is_state_index(p) for p in objects)


# ---- matching ----------------------------------------------------------------


class Types:
    """The type names of selectors, resolved against one model.

    A name is a class of the model's own tree (any class in the MRO of any of
    its nodes: a library's `Block`, a base class such as `Conv`), a type
    registered with `eqxform.register_type` (which wins), or one eqxform knows
    without the model (`equinox.nn`, the example models). A name that two
    classes of the model share is ambiguous; `module:Name` picks one.
    """

    def __init__(self, nodes: list[Node], source: A.Source | None = None):
        self.source = source
        self.classes: dict[str, set[type]] = {}
        for t in {type(n.obj) for n in nodes}:
            for c in t.__mro__:
                if c is not object:
                    self.classes.setdefault(c.__name__, set()).add(c)
        self.resolved: dict[str, type | None] = {}
        self.nodes = nodes
        self._fields: set[str] | None = None

    def names_type(self, step: A.Step) -> bool:
        """Does `step` name a type? A capitalised name does, unless no class
        has that name and the model has a field of it: PyTorch-style code
        names its weights `W_src`, `Wq` or `A`, and those are fields."""
        if not (isinstance(step, A.NameStep) and step.is_type):
            return False
        name = step.name
        # (`type_names` holds the registered types too.)
        if step.is_qualified or name in self.classes or name in type_names():
            return True
        if self._fields is None:
            self._fields = {
                step_name(k) for n in self.nodes for k in n.path if isinstance(k, GetAttrKey)
            }
        return name not in self._fields

    def __call__(self, step: A.NameStep) -> type | None:
        """The class `step` names, or None when the model has no such class
        (the step then matches nothing)."""
        name = step.name
        if name not in self.resolved:
            self.resolved[name] = self._resolve(step)
        return self.resolved[name]

    def _resolve(self, step: A.NameStep) -> type | None:
        name = step.name
        if step.is_qualified:
            module, _, qualname = name.partition(":")
            for found in self.classes.values():
                for c in found:
                    if c.__qualname__ == qualname and (
                        c.__module__ == module or c.__module__.startswith(module + ".")
                    ):
                        return c
            return None
        registered = registered_type(name)
        if registered is not None:
            return registered
        found = self.classes.get(name, set())
        if len(found) == 1:
            return next(iter(found))
        if len(found) > 1:
            names = qualified_names(found)
            raise SpecError(
                report(
                    "E206",
                    span=step.span,
                    source=self.source,
                    name=name,
                    len_found=len(found),
                    listing=", ".join(f"`{n}`" for n in names),
                    names=names[0],
                )
            )
        if name in type_names():
            return resolve_type(name)
        known = sorted(set(self.classes) | type_names())
        raise SpecError(
            report(
                "E104",
                span=step.span,
                source=self.source,
                name=name,
                value=did_you_mean(name, [k for k in known if k != name]) or "",
            )
        )


def qualified_names(classes) -> list[str]:
    """`package:Name` for each class, with the whole module where the
    packages alone do not tell them apart."""
    classes = sorted(classes, key=lambda c: (c.__module__, c.__qualname__))
    tops = [c.__module__.split(".")[0] for c in classes]
    if len(set(tops)) == len(tops):
        return [f"{t}:{c.__qualname__}" for t, c in zip(tops, classes)]
    return [f"{c.__module__}:{c.__qualname__}" for c in classes]


def _index_matches(step: A.Step, index: int, length: int) -> bool:
    if isinstance(step, A.AllStep):
        return True
    if isinstance(step, A.IndexStep):
        i = step.index + length if step.index < 0 else step.index
        return i == index
    assert isinstance(step, A.SliceStep)
    return index in range(*slice(step.start, step.stop, step.step).indices(length))


_NO = object()  # no match; a match is None (every layer) or a set of layers


def _union(a, b):
    if a is _NO:
        return b
    if b is _NO:
        return a
    if a is None or b is None:
        return None
    return a | b


def match(path: A.SelPath, node: Node, types: Types | None = None):
    """`_NO`, or the layers of the innermost indexed stack that match (None: all).

    The match of pattern steps `i:` against path steps `k:` is a table over
    (i, k): its cells are found from (0, 0) by the moves below, then filled
    from the end, each cell from cells after it. No recursion: a model nested
    a thousand levels deep has paths a thousand steps long.
    """
    types = types if types is not None else Types([node])
    pattern = path.steps
    if types.names_type(pattern[0]):
        # A selector that starts with a type matches it anywhere in the tree.
        pattern = (A.DeepStep(pattern[0].span),) + pattern
    steps = node.path
    objects = node.objects
    n, last = len(steps), len(pattern)

    def moves(i: int, k: int) -> list[tuple[int, int]]:
        """The cells that cell (i, k) reads."""
        out = []
        if i < last and k < n and seen_through(objects[k]):
            # Stacks, ensembles and `Remat`s are transparent: their field can be skipped.
            out.append((i, k + 1))
        if i == last:
            return out
        s = pattern[i]
        if isinstance(s, A.DeepStep):
            return out + [(i + 1, k)] + ([(i, k + 1)] if k < n else [])
        if types.names_type(s):
            cls = types(s)
            # The MRO, not `isinstance`: Modules are ABCs, whose checks are slow.
            if cls is not None and cls in type(objects[k]).__mro__:
                out.append((i + 1, k))
            return out
        if k == n:
            return out
        key = steps[k]
        if isinstance(s, A.AnyStep):
            out.append((i + 1, k + 1))
        elif isinstance(s, A.NameStep):
            if not is_index(key) and step_name(key) == s.name:
                out.append((i + 1, k + 1))
        elif isinstance(objects[k], Stacked):
            if _picked(s, objects[k]):
                out.append((i + 1, k + 1))
        else:
            index = _indexed(s, k, steps, objects)
            if index is not None:
                out.append((i + 1, index))
        return out

    reads: dict[tuple[int, int], list[tuple[int, int]]] = {}
    todo = [(0, 0)]
    while todo:
        cell = todo.pop()
        if cell not in reads:
            reads[cell] = moves(*cell)
            todo.extend(reversed(reads[cell]))
    value: dict[tuple[int, int], Any] = {}
    for i, k in sorted(reads, reverse=True):
        result = _NO
        if i < last and k < n and seen_through(objects[k]):
            result = value[(i, k + 1)]
        if i == last:
            step = None if k == n else _NO
        elif isinstance(pattern[i], A.DeepStep):
            step = _union(value[(i + 1, k)], value[(i, k + 1)] if k < n else _NO)
        else:
            # Every other step moves to at most one cell, after the skip's.
            onward = [c for c in reads[(i, k)] if c[0] == i + 1]
            step = value[onward[0]] if onward else _NO
            if step is not _NO and k < n and isinstance(objects[k], Stacked):
                if not (isinstance(pattern[i], A.NameStep) or isinstance(pattern[i], A.AnyStep)):
                    # `blocks[2:5]` names those layers of the stacked arrays.
                    picked = _picked(pattern[i], objects[k])
                    step = picked if step is None else step
        value[(i, k)] = _union(result, step)
    return value[(0, 0)]


def _picked(step: A.Step, stacked: Stacked) -> frozenset[int]:
    """The layers of a stack that an index step (`[2]`, `[2:5]`, `[*]`) picks."""
    return frozenset(j for j in range(stacked.count) if _index_matches(step, j, stacked.count))


def _indexed(step: A.Step, k: int, steps: Path, objects: tuple) -> int | None:
    """Where an index step at path step `k` leads when it picks that element of
    a list, a tuple or a `Sequential` (`seq[2]` names `seq.layers[2]`); None
    when it does not."""
    container, key = objects[k], steps[k]
    if isinstance(container, eqx.nn.Sequential):
        if key != GetAttrKey("layers") or k + 1 >= len(steps):
            return None
        index, length, nxt = step_name(steps[k + 1]), len(container.layers), k + 2
    elif isinstance(container, (list, tuple)) and is_index(key):
        index, length, nxt = key.idx, len(container), k + 1
    else:
        return None
    return nxt if _index_matches(step, index, length) else None


def _last_field(path: A.SelPath, types: Types | None = None) -> str | None:
    """The field a match must end in, when the selector says (`Linear.weight`)."""
    last = path.steps[-1]
    if not isinstance(last, A.NameStep):
        return None
    if not (last.is_type if types is None else types.names_type(last)):
        return last.name
    return None


def _select_paths(paths, nodes, types):
    out = []
    lasts = [_last_field(p, types) for p in paths]
    for node in nodes:
        # A cheap test on the last step first: most nodes fail it.
        end = step_name(node.path[-1]) if node.path else None
        found = _NO
        for path, last in zip(paths, lasts):
            if last is None or last == end:
                found = _union(found, match(path, node, types))
        if found is _NO:
            continue
        # Fewer than all the layers of the innermost stack around the node.
        if found is not None and len(found) < next(
            (p.count for p in reversed(node.parents) if isinstance(p, Stacked)), 0
        ):
            node = dataclasses.replace(node, layers=found)
        out.append(node)
    return out


def select(selector: A.Selector, nodes: list[Node], source: A.Source | None = None) -> list[Node]:
    """The nodes that `selector` names, in tree order, each once. What its
    `except` part names is left out, with everything under it and every node
    that holds it (so that no action reaches it through an ancestor)."""
    types = Types(nodes, source)
    # Every type name is resolved before matching, which tries a name only on
    # the nodes its other steps reach: an unknown name is E104 at its step
    # (with the model's classes to suggest), not a selector matching nothing.
    for path in selector.paths + selector.excluded:
        for s in path.steps:
            if types.names_type(s):
                types(s)
    out = _select_paths(selector.paths, nodes, types)
    if selector.excluded:
        cut = PathSet(n.path for n in _select_paths(selector.excluded, nodes, types))
        out = [n for n in out if not (cut.covers(n.path) or cut.reaches(n.path))]
    return out


def stack_axis(node: Node) -> int:
    """The axis of the node's array that runs over the layers of its innermost
    stack (stacks and ensembles outside it have theirs before)."""
    axis = -1
    for p in node.parents:
        if batched(p):
            axis += 1
        if isinstance(p, Stacked):
            innermost = axis
    return innermost


def nearest_paths(selector: A.Selector, nodes: list[Node], n: int = 3) -> list[str]:
    """Real paths of the model that look most like `selector`, for did-you-mean."""
    corrected = _respelt(selector, nodes)
    if corrected is not None:
        return [corrected]
    candidates: dict[str, None] = {}
    for node in nodes:
        if not node.path:
            continue
        candidates[node.text] = None
        if (
            node.parents
            and isinstance(node.parents[-1], eqx.Module)
            and not is_index(node.path[-1])
        ):
            candidates[f"{type(node.parents[-1]).__name__}.{step_name(node.path[-1])}"] = None
        if isinstance(node.obj, eqx.Module):
            candidates[type(node.obj).__name__] = None
    found = difflib.get_close_matches(selector.text, list(candidates), n=n, cutoff=0.4)
    return found or [c for c in candidates if "." not in c and "[" not in c][:n]


def _respelt(selector: A.Selector, nodes: list[Node]) -> str | None:
    """`selector` with each misspelt field corrected, if that then matches."""
    fields = {step_name(key) for node in nodes for key in node.path if not is_index(key)}
    fields = {f for f in fields if isinstance(f, str)}
    text = selector.text
    start = selector.span.column
    edits = []
    for path in selector.paths:
        for step in path.steps:
            if isinstance(step, A.NameStep) and not step.is_type and step.name not in fields:
                close = difflib.get_close_matches(step.name, sorted(fields), n=1, cutoff=0.6)
                if not close or step.span.line != selector.span.line:
                    return None
                edits.append((step.span.column - start, step.span.end_column - start, close[0]))
    if not edits:
        return None
    for begin, end, word in sorted(edits, reverse=True):
        text = text[:begin] + word + text[end:]
    try:
        fixed = parse(f"where {text} -> init zeros").rules[0].selector
        return text if select(fixed, nodes) else None
    except SpecError:  # a correction that does not parse or resolve is no suggestion
        return None


# ---- what a match tells a filter -------------------------------------------


def fans(node: Node) -> tuple[int, int] | tuple[None, None]:
    """(fan_in, fan_out) of an array in Equinox's layouts.

    A weight is `(out, in, *kernel)`; a bias or another vector takes the fans of
    its module's `weight`, as Equinox's own initialisation does.
    """
    if not is_array(node.obj):
        return None, None
    shape = wshape = tuple(node.obj.shape)[node.batch :]
    parent = node.parents[-1] if len(shape) < 2 and node.parents else None
    weight = getattr(parent, "weight", None) if isinstance(parent, eqx.Module) else None
    if weight is not None and is_array(weight) and weight is not node.obj:
        sibling = Node(node.path[:-1] + (GetAttrKey("weight"),), weight, node.parents)
        wshape = tuple(weight.shape)[sibling.batch :]
    if len(wshape) >= 2:
        receptive = math.prod(wshape[2:])
        return wshape[1] * receptive, wshape[0] * receptive
    size = math.prod(shape) if shape else 1
    return size, size


def unwrapped(node: Node) -> Node:
    """The array a wrapped node stands for: through each wrapper's wrapped
    field (`Frozen.value`, `Symmetric.matrix`, `LoRAWeight.weight`, a
    registered wrapper's first field), down to the array. Any other node is
    itself."""
    while isinstance(node.obj, Wrapper):
        field = wrapped_field(node.obj)
        node = Node(
            node.path + (GetAttrKey(field),),
            getattr(node.obj, field),
            node.parents + (node.obj,),
            node.layers,
        )
    return node


def context(node: Node) -> dict[str, Any]:
    """The match's properties that filters and arguments read. A wrapped array
    (a frozen weight, a symmetric one) has the properties of the array it
    wraps, so that a rule reads the same whatever rules above it did; `path`
    stays the matched node's."""
    indices = [key.idx for key in node.path if is_index(key)]
    ctx: dict[str, Any] = dict.fromkeys(CONTEXT_NAMES)
    ctx.update(path=node.text, index=indices[-1] if indices else None)
    array = unwrapped(node)
    if is_array(array.obj):
        # Stack and member axes are not the array's own: a stacked layer's
        # `shape` is one layer's shape.
        shape = tuple(int(d) for d in array.obj.shape)[array.batch :]
        fan_in, fan_out = fans(array)
        ctx.update(
            shape=shape,
            ndim=len(shape),
            size=math.prod(shape) if shape else 1,
            dtype=np.dtype(array.obj.dtype).name,
            fan_in=fan_in,
            fan_out=fan_out,
        )
    return ctx


# ---- rules: a selector, a filter and an expected count ----------------------


def evaluate_at(
    expr: A.Expr, node: Node | None, env: Mapping[str, Any], source: A.Source, ctx=None
) -> Any:
    """`expr` with the `let` names and, given a node, the match's properties."""
    scope = dict(env)
    if node is not None:
        scope.update(ctx if ctx is not None else context(node))
    try:
        return evaluate(expr, scope)
    except EvalError as e:
        where = f" at `{node.text}`" if node is not None else ""
        d = e.diagnostic
        raise SpecError(dataclasses.replace(d, message=d.message + where, source=source)) from None


def no_match(selector: A.Selector, nodes: list[Node], source: A.Source) -> SpecError:
    found = _pre_stacked(selector, nodes)
    if found is not None:
        # `layers[0]` of a module built with a layer axis (not yet a stack).
        node, count = found
        return SpecError(
            report(
                "E201",
                variant="pre_stacked",
                span=selector.span,
                source=source,
                text=selector.text,
                text2=node.text,
                name=type(node.obj).__name__,
                count=count,
            )
        )
    hint = did_you_mean(selector.text, nearest_paths(selector, nodes))
    return SpecError(
        report(
            "E201",
            span=selector.span,
            source=source,
            text=selector.text,
            value=f"{hint} " if hint else "",
        )
    )


def _pre_stacked(selector: A.Selector, nodes: list[Node]) -> tuple[Node, int] | None:
    """The module, and its number of layers, where `selector` indexes (`[0]`,
    `[1:3]`, `[*]`) a module built with a leading layer axis that no `stack`
    line has adopted: it is one module, so no index reaches into it."""
    for path in selector.paths:
        cut = next(
            (k for k, s in enumerate(path.steps) if isinstance(s, _INDEXING)),
            None,
        )
        if not cut:
            continue
        prefix = A.Selector((A.SelPath(path.steps[:cut], path.span),), selector.span)
        try:
            found = select(prefix, nodes)
        except SpecError:
            continue
        for node in found:
            if isinstance(node.obj, eqx.Module) and not any(batched(p) for p in node.objects):
                count = layer_axis(node.obj)
                if count is not None:
                    return node, count
    return None


_INDEXING = (A.IndexStep, A.SliceStep, A.AllStep)


def describe_match(node: Node) -> str:
    array = unwrapped(node).obj
    if not is_array(array):
        return f"`{node.text}` ({type(node.obj).__name__})"
    inside = "" if array is node.obj else f" (in `{type(node.obj).__name__}`)"
    return f"`{node.text}` {np.dtype(array.dtype).name}{list(array.shape)}{inside}"


# The last selections made on kept skeletons (see `walk`): a rule whose
# actions are edited selects the same nodes again, on the same skeleton.
_SELECTED: list[tuple[Any, tuple, list[Node]]] = []


def select_rule(rule: A.Rule, model: Any, env: Mapping[str, Any], source: A.Source) -> list[Node]:
    """The nodes a rule acts on: its selector's matches that pass its `if`
    filter, checked against its `expect` count. Matching nothing is an error."""
    if not any(walked is model for walked, _ in _WALKED):
        return _select_rule(rule, model, env, source)
    # What else a selection depends on: the `let` values, the names of types.
    key = (rule.selector, rule.filter, rule.expect, repr(sorted(env.items())), type_names())
    for selected, found_key, found in _SELECTED:
        if selected is model and found_key == key:
            return list(found)
    found = _select_rule(rule, model, env, source)
    _SELECTED.insert(0, (model, key, list(found)))
    del _SELECTED[_MAX_WALKED:]
    return found


def _select_rule(rule: A.Rule, model: Any, env: Mapping[str, Any], source: A.Source) -> list[Node]:
    nodes = walk(model)
    found = select(rule.selector, nodes, source)
    expect = rule.expect
    if not found:
        if expect is not None and expect.allows(0):
            return []
        raise no_match(rule.selector, nodes, source)
    if rule.filter is not None:
        candidates = found
        found = [n for n in candidates if evaluate_at(rule.filter, n, env, source)]
        if not found and not (expect is not None and expect.allows(0)):
            raise SpecError(
                report(
                    "E201",
                    variant="filtered",
                    span=rule.filter.span,
                    source=source,
                    text=rule.selector.text,
                    len_candidates=len(candidates),
                    s="s" if len(candidates) != 1 else "",
                    listing=", ".join(describe_match(n) for n in candidates[:3]),
                )
            )
    if expect is not None and not expect.allows(len(found)):
        raise SpecError(
            report(
                "E202",
                span=expect.span,
                source=source,
                text=rule.selector.text,
                len_found=len(found),
                s="s" if len(found) != 1 else "",
                describe=expect.describe(),
                listing=", ".join(f"`{n.text}`" for n in found[:6]),
                value2=", ..." if len(found) > 6 else "",
            )
        )
    return found


def _describe_kind(obj: Any) -> str:
    # A module is callable too (its `__call__`), but it is no function.
    if callable(obj) and not isinstance(obj, eqx.Module):
        return f"the function `{getattr(obj, '__name__', type(obj).__name__)}`"
    return f"a `{type(obj).__name__}`"


def names_fields(selector: A.Selector) -> bool:
    """Does every alternative of `selector` end in a field name (`Linear.weight`,
    `activation`), rather than a wildcard, an index or a type?"""
    return all(_last_field(p) is not None for p in selector.paths)


def names_state(selector: A.Selector, node: Node) -> bool:
    """Does `selector` name the model state at `node` itself: is the node an
    `eqx.nn.StateIndex` or inside one, reached by a field, type or index (not
    by `*`, `**`, `[*]` or a slice)? Only then do actions act on a state's
    initial values; a module-wide action leaves them, as the state it makes."""
    return in_state(node.objects) and all(
        isinstance(p.steps[-1], (A.NameStep, A.IndexStep)) for p in selector.paths
    )


def matched_arrays(
    nodes: list[Node], action: str, selector: A.Selector, source: A.Source
) -> list[Node]:
    """The arrays matched nodes stand for: modules and containers by their
    floating-point arrays, arrays as they are. A selector that names fields
    must name arrays or modules (anything else is an error); a broad one
    (`**`, `[*]`, a type) skips other leaves and non-floating arrays. The
    initial values of model state (`eqx.nn.StateIndex`) count only where the
    selector names them (`names_state`)."""
    broad = not names_fields(selector)
    out: dict[tuple, Node] = {}
    for node in nodes:
        if not is_array(node.obj) and not isinstance(node.obj, (eqx.Module, list, tuple, dict)):
            if broad:
                continue
            raise SpecError(
                report(
                    "E203",
                    span=selector.span,
                    source=source,
                    action=action,
                    text=node.text,
                    describe_kind_obj=_describe_kind(node.obj),
                )
            )
        inexact_only = broad or not is_array(node.obj)
        for leaf in array_leaves(node, inexact_only, names_state(selector, node)):
            out.setdefault(leaf.path, leaf)
    return list(out.values())


def skipped(nodes: list[Node], selector: A.Selector) -> tuple[int, int]:
    """How many arrays at or under the matched nodes `matched_arrays` leaves
    out: (the non-floating ones (bool masks, int counters) under a matched
    module or matched by a broad selector (`**`, `[*]`, a type); the floating
    ones of model state (initial values held in an `eqx.nn.StateIndex`) that
    the selector does not name)."""
    broad = not names_fields(selector)
    other, state = set(), set()
    for node in nodes:
        if is_array(node.obj):
            if broad and not inexact(node.obj):
                other.add(node.path)
        elif isinstance(node.obj, (eqx.Module, list, tuple, dict)):
            other.update(n.path for n in array_leaves(node, False) if not inexact(n.obj))
        if not names_state(selector, node):
            state.update(n.path for n in array_leaves(node, True) if in_state(n.parents))
    return len(other), len(state)
