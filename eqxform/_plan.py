"""`plan`: what each rule will change, computed on shapes alone.

Every pass runs under `eqx.filter_eval_shape`, so no array is allocated and a
plan of a billion-parameter model answers as fast as one of a toy. Each pass
selects once: its nodes are found on the skeleton, then it runs on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._diagnostics import Diagnostic
from ._errors import SpecError
from ._passes import Context
from ._select import is_array, node_at, select_rule


@dataclass(frozen=True)
class PlanMatch:
    path: str
    before: str
    after: str


@dataclass(frozen=True)
class PlanStep:
    line: int
    rule: str
    action: str
    matches: tuple[PlanMatch, ...]
    params_before: int
    params_after: int

    @property
    def params_delta(self) -> int:
        return self.params_after - self.params_before


@dataclass(frozen=True)
class Plan:
    """The plan of a program on a model. `str(plan)` is the CLI's table."""

    steps: tuple[PlanStep, ...]
    params_before: int
    params_after: int
    diagnostics: tuple[Diagnostic, ...] = field(default=())
    result: Any = None  # the model's structure after every pass

    def to_dict(self) -> dict:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "steps": [
                {
                    "line": s.line,
                    "rule": s.rule,
                    "action": s.action,
                    "params_before": s.params_before,
                    "params_after": s.params_after,
                    "matches": [
                        {"path": m.path, "before": m.before, "after": m.after} for m in s.matches
                    ],
                }
                for s in self.steps
            ],
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }

    def __str__(self) -> str:
        lines = []
        for s in self.steps:
            delta = f"{s.params_delta:+,} params" if s.params_delta else "params unchanged"
            lines.append(f"line {s.line}: {s.rule}")
            lines.append(f"  {s.action}: {len(s.matches)} matched, {delta}")
            width = max((len(m.path) for m in s.matches), default=0)
            for m in s.matches:
                change = m.before if m.before == m.after else f"{m.before} -> {m.after}"
                lines.append(f"    {m.path.ljust(width)}  {change}")
        lines.append(f"parameters: {self.params_before:,} -> {self.params_after:,}")
        return "\n".join(lines)


def describe(obj: Any, axes: tuple[str, ...] = ()) -> str:
    """`f32[64,2]`; leading stack and member axes are named: `f32[layer:10, 3,3]`."""
    if is_array(obj):
        dtype = np.dtype(obj.dtype).name
        short = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
        shape = [str(d) for d in obj.shape]
        lead = [f"{a}:{d}" for a, d in zip(axes, shape)]
        rest = ",".join(shape[len(lead) :])
        inner = ", ".join(lead + [rest]) if lead else rest
        return f"{short.get(dtype, dtype)}[{inner}]"
    if isinstance(obj, eqx.Module):
        return f"{type(obj).__name__} ({count_params(obj):,} params)"
    if callable(obj):
        return getattr(obj, "__name__", type(obj).__name__)
    return type(obj).__name__


def count_params(model: Any) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(model) if is_array(x))


def structure(model: Any) -> Any:
    """`model` with every array replaced by its `ShapeDtypeStruct`."""
    return eqx.filter_eval_shape(lambda m: m, model)


def _position(d: Diagnostic) -> tuple[int, int]:
    return (d.span.line, d.span.column) if d.span is not None else (0, 0)


def _describe_node(node) -> str:
    return describe(node.obj, node.axis_names if is_array(node.obj) else ())


def _matches(nodes, after_model) -> tuple[PlanMatch, ...]:
    out = []
    for node in nodes:
        try:
            after = _describe_node(node_at(after_model, node.path))
        except (AttributeError, IndexError, KeyError, TypeError):
            after = "(removed)"
        text = node.text
        if node.layers is not None:
            text += " (layers " + ",".join(str(i) for i in sorted(node.layers)) + ")"
        out.append(PlanMatch(text, _describe_node(node), after))
    return tuple(out)


def make_plan(program, model=None) -> Plan:
    key = jax.random.key(program.seed)
    if model is None:
        struct = eqx.filter_eval_shape(program.construct, key)
    else:
        struct = structure(model)
    ctx = Context(allow=program.allow)
    start = count_params(struct)
    steps, diagnostics = [], []
    for p in program.passes:
        before = count_params(struct)
        try:
            nodes = p.select(struct, ctx)
            new = eqx.filter_eval_shape(lambda m, k: p.run(m, k, ctx, nodes), struct, key)
        except SpecError as e:
            diagnostics.extend(e.diagnostics)
            continue
        steps.append(
            PlanStep(p.line, p.text, p.label, _matches(nodes, new), before, count_params(new))
        )
        struct = new
    # `lr` and `weight_decay` select on the model after every rule.
    params = count_params(struct)
    for group in program.groups:
        try:
            nodes = select_rule(group.rule, struct, program.env, program.source)
        except SpecError as e:
            diagnostics.extend(e.diagnostics)
            continue
        label = program.source.line(group.action.span.line)[
            group.action.span.column - 1 : group.action.span.end_column - 1
        ]
        steps.append(
            PlanStep(group.line, group.rule.text, label, _matches(nodes, struct), params, params)
        )
    steps.sort(key=lambda s: s.line)
    diagnostics.sort(key=_position)
    return Plan(tuple(steps), start, count_params(struct), tuple(diagnostics), struct)
