"""The adapter passes: `lora(rank=R, alpha=A)`, `ia3` and `merge`.

`lora` on a `Linear` (or on its `weight`) puts a `LoRA` module in its place,
whose forward adds `scale * B (A x)` to the base's output; on a 2-D weight that
no `Linear` owns it puts a `LoRAWeight` wrapper. A is drawn as PEFT draws it
(`kaiming_uniform(a=sqrt(5))`, i.e. uniform in `+-1/sqrt(in)`), B is zeros, and
the base's weight and bias are frozen. `rank` and `alpha` are expressions of
the match (`fan_in`, `shape`, ...), evaluated on the adapted weight.

On some layers of a stack (`blocks[0:6].attn.qkv`) the adapter still covers
every layer, as one scan needs one structure per layer: the layers outside the
slice hold `scale = 0` and zero factors, frozen for those layers, so they
compute exactly their base and never train. The alternative, adapters of rank
0 or a second scan, would change the structure the user stacked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _ast as A
from .. import _names as N
from .._build import to_python
from .._hashing import stable_hash
from .._modules import IA3, Frozen, IA3Weight, LoRA, LoRAWeight, Wrapper, is_adapter, thaw, unfrozen
from .._select import (
    GetAttrKey,
    Node,
    _describe_kind,
    context,
    get,
    is_array,
    outermost,
    stack_axis,
    walk,
)
from ._base import action_pass, replace_at
from ._tree import RulePass

# An adapter's matrices that train (its base and scale are frozen by it).
_TRAINED = ("lora_a", "lora_b", "ia3")


def _freeze(x: Any) -> Any:
    """`x` frozen whole (an array, or one frozen for some layers only)."""
    if x is None or not (is_array(x) or isinstance(x, Wrapper)):
        return x
    if isinstance(x, Frozen) and x.layers is None:
        return x
    return Frozen(unfrozen(x))


@dataclass(frozen=True)
class _Target:
    """Where an adapter goes (`node`): a module (`kind="module"`) or a weight."""

    kind: str
    node: Node
    weight: Node


class AdapterPass(RulePass):
    """What `lora` and `ia3` share: finding the `Linear`s and 2-D weights to
    adapt, their arguments, and freezing the base."""

    draws = True

    def select(self, model: Any, ctx: Any) -> list[Node]:
        # What the adapters replace: a `Linear` matched by its weight is
        # reported (and replaced) as the module.
        return [t.node for t in self.targets(super().select(model, ctx))]

    def arguments(self, weight: Node) -> dict[str, Any]:
        defaults = dict(N.ACTIONS[self.action.name].defaults)
        arg = self.action.arg
        if isinstance(arg, A.Call):
            ctx = context(weight)
            for a in arg.args:
                defaults[a.name] = to_python(self.eval(a.value, weight, ctx))
        return defaults

    def arg_span(self, name: str) -> A.Span:
        args = self.action.arg.args if isinstance(self.action.arg, A.Call) else ()
        return next((a.value.span for a in args if a.name == name), self.action.span)

    def targets(self, nodes: list[Node]) -> list[_Target]:
        out: dict[tuple, _Target] = {}
        for node in nodes:
            target = self.target(node)
            weight = target.weight.obj
            if self.action.name == "lora" and jnp.issubdtype(weight.dtype, jnp.complexfloating):
                raise self.error(
                    "E381",
                    self.rule.selector.span,
                    text=node.text,
                    dtype=f"`{np.dtype(weight.dtype).name}`",
                )
            out.setdefault(tuple(target.node.path), target)
        # A `Linear` and its own weight may both match: one adapter each place.
        return list(out.values())

    def target(self, node: Node) -> _Target:
        obj = node.obj
        if is_adapter(obj) or any(is_adapter(p) for p in node.parents):
            raise self.error("E223", self.rule.selector.span, text=node.text)
        if isinstance(obj, eqx.Module) and not isinstance(obj, Wrapper):
            weight = getattr(obj, "weight", None)
            inner = unfrozen(weight)
            if weight is not None and is_array(inner):
                wnode = Node(node.path + (GetAttrKey("weight"),), weight, node.objects, node.layers)
                if self.per_layer_ndim(wnode, inner) == 2:
                    if not isinstance(obj, eqx.nn.Linear):
                        # A module of unknown layout (a ported `(in, out)`
                        # dense layer): adapt its weight matrix, whatever its
                        # layout, as a wrapper.
                        return _Target("weight", wnode, self.array_node(wnode))
                    if obj.in_features == "scalar":
                        raise self._not_adaptable(node, "takes scalar inputs")
                    return _Target("module", node, self.array_node(wnode))
            raise self._not_adaptable(node, f"is {_describe_kind(obj)} without a 2-D `weight`")
        inner = unfrozen(obj)
        if is_array(inner) and (is_array(obj) or isinstance(obj, Frozen)):
            wnode = self.array_node(node)
            if self.per_layer_ndim(node, inner) != 2:
                shape = tuple(inner.shape)[wnode.batch :]
                raise self._not_adaptable(node, f"has shape {shape}, not 2 dimensions")
            k = len(node.parents) - 1
            # A `Linear`'s weight (frozen already or not): adapt the module,
            # so that `W + B A` is never formed.
            while k >= 0 and isinstance(node.parents[k], Frozen):
                k -= 1
            owner = node.parents[k] if k >= 0 else None
            if (
                isinstance(owner, eqx.nn.Linear)
                and node.path[k] == GetAttrKey("weight")
                and owner.in_features != "scalar"
            ):
                module = Node(node.path[:k], owner, node.parents[:k], node.layers)
                return _Target("module", module, wnode)
            return _Target("weight", node, wnode)
        raise self._not_adaptable(node, f"is {_describe_kind(obj)}")

    def per_layer_ndim(self, node: Node, array: Any) -> int:
        return array.ndim - self.array_node(node).batch

    def array_node(self, node: Node) -> Node:
        """`node`, or the array inside the `Frozen` it is."""
        obj, path, parents = node.obj, node.path, node.parents
        while isinstance(obj, Frozen):
            parents = parents + (obj,)
            path = path + (GetAttrKey("value"),)
            obj = obj.value
        return Node(path, obj, parents, node.layers)

    def _not_adaptable(self, node: Node, why: str):
        return self.error(
            "E220", self.rule.selector.span, name=self.action.name, text=node.text, why=why
        )

    def lead_and_layers(self, target: _Target) -> tuple[tuple[int, ...], Any]:
        """The weight's leading (stack, member) axes, and a `(mask, axis)` of
        the layers the rule adapts when it picked some layers of a stack."""
        weight = target.weight
        lead = tuple(weight.obj.shape)[: weight.obj.ndim - 2]
        if weight.layers is None:
            return lead, None
        axis = stack_axis(weight)
        count = lead[axis]
        picked = np.zeros(count, bool)
        picked[sorted(weight.layers)] = True
        return lead, (picked, axis)

    def run(self, model, key, ctx, nodes):
        targets = self.targets(nodes)
        values = []
        for target in targets:
            w, base = get(model, target.weight.path), get(model, target.node.path)
            if target.kind == "module":  # the module with its weight and bias frozen
                names = [n for n in ("weight", "bias") if getattr(base, n, None) is not None]
                frozen = [_freeze(getattr(base, n)) for n in names]
                base = eqx.tree_at(lambda m: [getattr(m, n) for n in names], base, frozen)
            else:
                base = _freeze(base)
            values.append(self.adapter(key, target, w, base, *self.lead_and_layers(target)))
        return replace_at(model, [t.node.path for t in targets], values)

    def adapter(self, key, target: _Target, w, base, lead: tuple[int, ...], part) -> Any:
        """The adapter at `target`, of weight `w`, around `base` (the frozen
        module, or the frozen weight); `lead` and `part` as `lead_and_layers`."""
        raise NotImplementedError


def _mask(picked: np.ndarray, axis: int, lead: tuple[int, ...], ndim: int) -> jax.Array:
    shape = [1] * ndim
    shape[axis] = lead[axis]
    return jnp.asarray(picked).reshape(shape)


def _others(picked: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(~picked))


@action_pass("lora")
class LoraPass(AdapterPass):
    def adapter(self, key, target, w, base, lead, part):
        kwargs = self.arguments(target.weight)
        rank, alpha = kwargs["rank"], kwargs["alpha"]
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise self.error("E221", self.arg_span("rank"), rank=rank, text=target.node.text)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
            raise self.error("E222", self.arg_span("alpha"), alpha=alpha, text=target.node.text)
        out_features, in_features = w.shape[-2:]
        # PEFT's default: `kaiming_uniform_(a=sqrt(5))` on A's `(r, in)`
        # weight, a bound of `sqrt(6 / ((1 + 5) * in)) = 1 / sqrt(in)`.
        bound = 1.0 / math.sqrt(in_features)
        key = jax.random.fold_in(self.rule_key(key), stable_hash(target.node.text))
        a = jax.random.uniform(key, lead + (rank, in_features), w.dtype, -bound, bound)
        b = jnp.zeros(lead + (out_features, rank), w.dtype)
        scale = jnp.full(lead, alpha / rank, jnp.float32)
        if part is not None:
            picked, axis = part
            a = jnp.where(_mask(picked, axis, lead, a.ndim), a, 0).astype(w.dtype)
            scale = jnp.where(_mask(picked, axis, lead, scale.ndim), scale, 0.0)
            others = _others(picked)
            if others:
                a, b = Frozen(a, others, axis - a.ndim), Frozen(b, others, axis - b.ndim)
        return (LoRA if target.kind == "module" else LoRAWeight)(base, a, b, Frozen(scale))


@action_pass("ia3")
class IA3Pass(AdapterPass):
    def adapter(self, key, target, w, base, lead, part):
        feedforward = self.arguments(target.weight)["feedforward"]
        if not isinstance(feedforward, bool):
            raise self.error("E225", self.arg_span("feedforward"), feedforward=feedforward)
        out_features, in_features = w.shape[-2:]
        vector = jnp.ones(lead + (in_features if feedforward else out_features,), w.dtype)
        if part is not None and _others(part[0]):
            vector = Frozen(vector, _others(part[0]), part[1] - vector.ndim)
        return (IA3 if target.kind == "module" else IA3Weight)(base, vector, feedforward)


@action_pass("merge")
class MergePass(RulePass):
    """`merge`: every adapter at or under the matched nodes baked into its
    base (a `LoRA` becomes its `Linear`, weight `W + scale * B A`)."""

    def run(self, model, key, ctx, nodes):
        found: dict[tuple, None] = {}
        for node in nodes:
            for k in range(len(node.parents)):
                if is_adapter(node.parents[k]):
                    found.setdefault(node.path[:k])
                    break
            else:
                for sub in walk(node.obj):
                    if is_adapter(sub.obj):
                        found.setdefault(node.path + sub.path)
        outer = outermost(found)
        if not outer:
            raise self.error("E224", self.rule.selector.span, text=self.rule.selector.text)
        model = replace_at(model, outer, [get(model, p).merged() for p in outer])
        # A merged model is a model to call: the `freeze` marks under the
        # matched nodes go with the adapters (values kept).
        roots = []
        for node in nodes:
            try:
                get(model, node.path)
            except (AttributeError, IndexError, KeyError, TypeError):
                continue  # inside an adapter that is merged now
            roots.append(node.path)
        roots = outermost(roots)
        return replace_at(model, roots, [thaw(get(model, p)) for p in roots])

    def thawed(self, nodes) -> int:
        """How many of the user's `freeze` marks `run` removes: the outermost
        `Frozen`s at or under the matched nodes, outside the adapters (whose
        own marks go with them), and a whole freeze of an adapter's trained
        matrices (`freeze` of an adapted module: the merged weight trains)."""
        paths = set()
        for node in nodes:
            if any(is_adapter(p) for p in node.parents):
                continue
            for sub in walk(node.obj):
                if not isinstance(sub.obj, Frozen) or any(
                    isinstance(p, Frozen) for p in sub.parents
                ):
                    continue
                owner = [p for p in sub.parents if is_adapter(p)]
                trained = getattr(sub.path[-1], "name", None) in _TRAINED if sub.path else False
                if not owner or (
                    len(owner) == 1
                    and sub.parents[-1] is owner[0]
                    and trained
                    and sub.obj.layers is None
                ):
                    paths.add(node.path + sub.path)
        return len(paths)
