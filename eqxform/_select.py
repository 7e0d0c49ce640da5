"""Selectors -> the nodes of a model they name.

A model is walked once, in order, into `Node`s: each node is a module, a
container, an array or another leaf (an activation function), with its path of
steps from the root. A selector is matched against each node's path, steps and
the objects along it (a type step checks an object; `**` spans any number of
steps), so matching is linear in the size of the model.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from collections.abc import Iterator
from typing import Any

import equinox as eqx
import jax
import numpy as np

from . import _ast as A
from ._registry import resolve_type
from ._runtime._stack import Stacked, batched

Step = tuple[str, Any]  # ("attr", name) | ("idx", i) | ("key", k)


def is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))


@dataclasses.dataclass(frozen=True, eq=False)
class Node:
    path: tuple[Step, ...]
    obj: Any
    parents: tuple[Any, ...]  # the objects from the root down to (not including) obj
    # For a node inside a stack: the layers a selector picked (None: all).
    layers: frozenset[int] | None = None

    @property
    def text(self) -> str:
        return path_str(self.path, self.parents)

    @property
    def objects(self) -> tuple[Any, ...]:
        return self.parents + (self.obj,)

    @property
    def batch(self) -> int:
        """How many leading axes of this node's arrays are stack or member axes."""
        return sum(1 for p in self.parents if batched(p))


def path_str(path: tuple[Step, ...], parents: tuple[Any, ...] = ()) -> str:
    """`layers[0].weight`; the field of a stack or ensemble that holds the
    stacked layers is left out, as selectors see through it."""
    out = ""
    for k, (kind, value) in enumerate(path):
        if k < len(parents) and batched(parents[k]):
            continue
        if kind == "idx":
            out += f"[{value}]"
        else:
            out += ("." if out else "") + str(value)
    return out or "<root>"


@functools.cache
def _dynamic_fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get("static", False))


def children(obj: Any) -> Iterator[tuple[Step, Any]]:
    if isinstance(obj, eqx.Module):
        # Fields live in the instance dict; reading it there skips the Module's
        # own (slow) attribute lookup, which matters for models of many leaves.
        values = getattr(obj, "__dict__", {})
        for name in _dynamic_fields(type(obj)):
            value = values[name] if name in values else getattr(obj, name, None)
            if value is not None:
                yield ("attr", name), value
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            if value is not None:
                yield ("idx", i), value
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if value is not None:
                yield ("key", key), value


def walk(model: Any) -> list[Node]:
    """Every node of `model`, the root first, in tree order."""
    out: list[Node] = []

    def visit(obj, path, parents):
        out.append(Node(path, obj, parents))
        inner = parents + (obj,)
        for step, child in children(obj):
            visit(child, path + (step,), inner)

    visit(model, (), ())
    return out


def get(model: Any, path: tuple[Step, ...]) -> Any:
    obj = model
    for kind, value in path:
        obj = getattr(obj, value) if kind == "attr" else obj[value]
    return obj


def array_leaves(node: Node, inexact_only: bool) -> list[Node]:
    """The arrays at or under `node`."""
    if is_array(node.obj):
        return [node]
    out = []
    for sub in walk(node.obj):
        if sub.path and is_array(sub.obj):
            if inexact_only and not np.issubdtype(sub.obj.dtype, np.inexact):
                continue
            out.append(Node(node.path + sub.path, sub.obj, node.parents + sub.parents, node.layers))
    return out


# ---- matching ----------------------------------------------------------------


@functools.cache
def _type(name: str) -> type:
    return resolve_type(name)


def _index_matches(step: A.Step, index: int, length: int) -> bool:
    if isinstance(step, A.AllStep):
        return True
    if isinstance(step, A.IndexStep):
        i = step.index + length if step.index < 0 else step.index
        return i == index
    assert isinstance(step, A.SliceStep)
    return index in range(*slice(step.start, step.stop, step.step).indices(length))


def _steps(path: A.SelPath) -> tuple[A.Step, ...]:
    steps = path.steps
    first = steps[0]
    if isinstance(first, A.NameStep) and first.is_type:
        # A selector that starts with a type matches it anywhere in the tree.
        steps = (A.DeepStep(first.span),) + steps
    return steps


_NO = object()  # no match; a match is None (every layer) or a set of layers


def _union(a, b):
    if a is _NO:
        return b
    if b is _NO:
        return a
    if a is None or b is None:
        return None
    return a | b


def match(path: A.SelPath, node: Node):
    """`_NO`, or the layers of the innermost indexed stack that match (None: all)."""
    pattern = _steps(path)
    steps = node.path
    objects = node.objects
    n = len(steps)

    @functools.cache
    def m(i: int, k: int):
        result = _NO
        if i < len(pattern) and k < n and batched(objects[k]):
            # Stacks and ensembles are transparent: their field can be skipped.
            result = m(i, k + 1)
        return _union(result, step(i, k))

    def step(i: int, k: int):
        if i == len(pattern):
            return None if k == n else _NO
        s = pattern[i]
        if isinstance(s, A.DeepStep):
            return _union(m(i + 1, k), m(i, k + 1) if k < n else _NO)
        if isinstance(s, A.NameStep) and s.is_type:
            return m(i + 1, k) if isinstance(objects[k], _type(s.name)) else _NO
        if k == n:
            return _NO
        kind, value = steps[k]
        if isinstance(s, A.AnyStep):
            return m(i + 1, k + 1)
        if isinstance(s, A.NameStep):
            if kind in ("attr", "key") and value == s.name:
                return m(i + 1, k + 1)
            return _NO
        container = objects[k]
        if isinstance(container, Stacked):
            # `blocks[2:5]` names those layers of the stacked arrays.
            picked = frozenset(
                j for j in range(container.count) if _index_matches(s, j, container.count)
            )
            rest = m(i + 1, k + 1) if picked else _NO
            if rest is _NO:
                return _NO
            return picked if rest is None else rest
        if isinstance(container, eqx.nn.Sequential):
            # `seq[2]` names `seq.layers[2]`.
            if (kind, value) != ("attr", "layers") or k + 1 >= n:
                return _NO
            index, length, nxt = steps[k + 1][1], len(container.layers), k + 2
        elif isinstance(container, (list, tuple)) and kind == "idx":
            index, length, nxt = value, len(container), k + 1
        else:
            return _NO
        return m(i + 1, nxt) if _index_matches(s, index, length) else _NO

    return m(0, 0)


def matches(path: A.SelPath, node: Node) -> bool:
    return match(path, node) is not _NO


def _last_field(path: A.SelPath) -> str | None:
    """The field a match must end in, when the selector says (`Linear.weight`)."""
    last = path.steps[-1]
    if isinstance(last, A.NameStep) and not last.is_type:
        return last.name
    return None


def select(selector: A.Selector, nodes: list[Node]) -> list[Node]:
    """The nodes that `selector` names, in tree order, each once."""
    out = []
    lasts = [_last_field(p) for p in selector.paths]
    for node in nodes:
        # A cheap test on the last step first: most nodes fail it.
        end = node.path[-1][1] if node.path else None
        found = _NO
        for path, last in zip(selector.paths, lasts):
            if last is None or last == end:
                found = _union(found, match(path, node))
        if found is _NO:
            continue
        if found is not None and len(found) < _innermost_count(node):
            node = dataclasses.replace(node, layers=found)
        out.append(node)
    return out


def _innermost_count(node: Node) -> int:
    for p in reversed(node.parents):
        if isinstance(p, Stacked):
            return p.count
    return 0


def nearest_paths(selector: A.Selector, nodes: list[Node], n: int = 3) -> list[str]:
    """Real paths of the model that look most like `selector`, for did-you-mean."""
    candidates: dict[str, None] = {}
    for node in nodes:
        if not node.path:
            continue
        candidates[node.text] = None
        if node.parents and isinstance(node.parents[-1], eqx.Module) and node.path[-1][0] == "attr":
            candidates[f"{type(node.parents[-1]).__name__}.{node.path[-1][1]}"] = None
        if isinstance(node.obj, eqx.Module):
            candidates[type(node.obj).__name__] = None
    text = selector.text
    corrected = _respelt(selector, nodes)
    found = difflib.get_close_matches(text, list(candidates), n=n, cutoff=0.4)
    if corrected is not None:
        return [corrected]
    if not found:
        found = [c for c in candidates if "." not in c and "[" not in c][:n]
    return found


def _respelt(selector: A.Selector, nodes: list[Node]) -> str | None:
    """`selector` with each misspelt field corrected, if that then matches."""
    fields = {value for node in nodes for kind, value in node.path if kind in ("attr", "key")}
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
    from ._parse import parse

    try:
        fixed = parse(f"where {text} -> init zeros").rules[0].selector
    except Exception:  # a correction that does not parse is no suggestion
        return None
    return text if select(fixed, nodes) else None


# ---- what a match tells a filter -------------------------------------------


def fans(node: Node) -> tuple[int, int] | tuple[None, None]:
    """(fan_in, fan_out) of an array in Equinox's layouts.

    A weight is `(out, in, *kernel)`; a bias or another vector takes the fans of
    its module's `weight`, as Equinox's own initialisation does.
    """
    if not is_array(node.obj):
        return None, None
    batch = node.batch
    shape = tuple(node.obj.shape)[batch:]
    if len(shape) >= 2:
        receptive = math.prod(shape[2:])
        return shape[1] * receptive, shape[0] * receptive
    parent = node.parents[-1] if node.parents else None
    weight = getattr(parent, "weight", None) if isinstance(parent, eqx.Module) else None
    wshape = tuple(weight.shape)[batch:] if weight is not None and is_array(weight) else ()
    if weight is not node.obj and len(wshape) >= 2:
        receptive = math.prod(wshape[2:])
        return wshape[1] * receptive, wshape[0] * receptive
    size = math.prod(shape) if shape else 1
    return size, size


def context(node: Node) -> dict[str, Any]:
    indices = [value for kind, value in node.path if kind == "idx"]
    ctx: dict[str, Any] = {
        "path": node.text,
        "index": indices[-1] if indices else None,
        "shape": None,
        "ndim": None,
        "size": None,
        "dtype": None,
        "fan_in": None,
        "fan_out": None,
    }
    if is_array(node.obj):
        # Stack and member axes are not the array's own: a stacked layer's
        # `shape` is one layer's shape.
        shape = tuple(int(d) for d in node.obj.shape)[node.batch :]
        fan_in, fan_out = fans(node)
        ctx.update(
            shape=shape,
            ndim=len(shape),
            size=math.prod(shape) if shape else 1,
            dtype=np.dtype(node.obj.dtype).name,
            fan_in=fan_in,
            fan_out=fan_out,
        )
    return ctx
