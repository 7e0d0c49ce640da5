"""`plan`: what each rule will change, computed on shapes alone.

Every pass runs under `eqx.filter_eval_shape`, so no array is allocated and a
plan of a billion-parameter model answers as fast as one of a toy. Each pass
selects once: its nodes are found on the skeleton, then it runs on them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _names as N
from ._build import budget_diagnostic, from_constructor, is_constructor, nbytes
from ._diagnostics import Diagnostic, plural, position, printable, report
from ._errors import ModelFileError, SpecError, UsageError, first_line
from ._hashing import seed_key
from ._modules import Ensemble, Frozen, LoRA, Stacked, Wrapper, is_state_index, split_state
from ._passes import Context, PlacePass, RulePass
from ._passes._base import replace_at
from ._passes._forward import (
    failing_call,
    formed_adapters,
    missing_state,
    output_shape,
    retyped,
)
from ._passes._struct import EnsemblePass, StackCallError, StackPass
from ._registry import registered_type
from ._select import (
    evaluate_at,
    get,
    in_state,
    inexact,
    is_array,
    logical_path,
    matched_arrays,
    node_at,
    outermost,
    qualified_names,
    select_rule,
    walk,
)
from ._values import argument_diagnostic, format_bytes


@dataclass(frozen=True)
class PlanMatch:
    path: str
    before: str
    after: str


@dataclass(frozen=True)
class PlanStep:
    """What one pass (one action of a rule, or a structural directive) did.

    `kind` is the action's name (`init`, `lr`, ...) or `structure` for a
    `stack`, `unstack` or `ensemble` line; `writes` holds what it changed, for
    the match accounting: each array (or, for `replace`, each module) as its
    logical path (wrappers and stacks seen through) and the layers of a stack
    it picked (None: all of them); `span` is the action's (the statement's
    for a structural directive), where warnings about the step point.
    """

    line: int
    rule: str
    action: str
    matches: tuple[PlanMatch, ...]
    params_before: int
    params_after: int
    kind: str = ""
    writes: tuple[tuple[str, frozenset[int] | None], ...] = ()
    span: Any = None
    unit: str = "array"  # what `matches` holds: see `unit_of`
    # The non-floating arrays (masks, counters) that `init`/`cast`/`scale`/
    # `freeze` left, and the floating arrays of model state (`StateIndex`
    # initial values) those left.
    skipped: int = 0
    state_skipped: int = 0
    freezes_removed: int = 0  # the user's `freeze` marks a `merge` removed

    @property
    def params_delta(self) -> int:
        return self.params_after - self.params_before

    @property
    def count(self) -> int:
        """How many arrays (or modules, functions, lists: see `unit`) the step acts on."""
        return len(self.matches)

    @property
    def counted(self) -> str:
        """`3 arrays`, `1 module`: the count and what it counts."""
        return plural(self.count, self.unit)


@dataclass(frozen=True)
class PlanPlacement:
    """One array on the mesh: its partition spec (`replicated` when no rule
    splits it), the `shard` rule's line (None: none), its bytes per device."""

    path: str
    shape: str
    spec: str
    line: int | None
    bytes_per_device: int
    bytes: int


@dataclass(frozen=True)
class PlanMesh:
    """The placement of a model on a mesh: every array, and the totals."""

    mesh: str
    devices: int
    arrays: tuple[PlanPlacement, ...]

    @property
    def bytes_per_device(self) -> int:
        return sum(a.bytes_per_device for a in self.arrays)

    @property
    def bytes(self) -> int:
        return sum(a.bytes for a in self.arrays)

    def to_dict(self) -> dict:
        return {
            "mesh": self.mesh,
            "devices": self.devices,
            "bytes_per_device": self.bytes_per_device,
            "bytes": self.bytes,
            "arrays": [
                {k: v for k, v in dataclasses.asdict(a).items() if k != "bytes"}
                for a in self.arrays
            ],
        }

    def lines(self, width: int | None = None) -> list[str]:
        """The placement as lines of text, fitted to `width` as `Plan.lines` is."""
        out = [f"mesh {self.mesh} ({self.devices} devices):"]
        shape_width = max((len(a.shape) for a in self.arrays), default=0)
        spec_width = max((len(a.spec) for a in self.arrays), default=0)
        rows = [
            (
                a.path,
                f"{a.shape.ljust(shape_width)}  {a.spec.ljust(spec_width)}  "
                f"{format_bytes(a.bytes_per_device)}/device"
                + (f"  line {a.line}" if a.line is not None else ""),
            )
            for a in self.arrays
        ]
        out += _columns("    ", rows, width)
        out += _wrap(
            f"  per device: {format_bytes(self.bytes_per_device)} "
            f"(the whole model: {format_bytes(self.bytes)})",
            "    ",
            width,
        )
        return out


@dataclass(frozen=True)
class PlanMembers:
    """A sweep's members: each one's hyper-parameters (the seed as the spec's
    seed gives it); the bytes of one member's arrays and of all of them."""

    count: int
    names: tuple[str, ...]
    rows: tuple[dict, ...]  # {"member": k, "values": {name: number}}
    bytes_per_member: int
    bytes: int

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        return {**out, "names": list(self.names), "rows": list(out["rows"])}

    def lines(self, opt_state_bytes: int | None, width: int | None = None) -> list[str]:
        """The member table and the memory per member and in total."""
        out = [f"members: {self.count}"]
        if self.names:
            head = ["member", *self.names]
            table = [
                [str(r["member"])] + [f"{r['values'][n]:.4g}" for n in self.names]
                for r in self.rows
            ]
            widths = [max(len(c) for c in col) for col in zip(head, *table)]
            out += [
                "  " + "  ".join(c.rjust(w) for c, w in zip(line, widths))
                for line in [head, *table]
            ]
        per, total = self.bytes_per_member, self.bytes
        what = "arrays"
        if opt_state_bytes is not None:
            per += opt_state_bytes // self.count
            total += opt_state_bytes
            what = "arrays and optimizer state"
        out += _wrap(
            f"  memory ({what}): {format_bytes(per)} per member, {format_bytes(total)} in total",
            "    ",
            width,
        )
        return out


@dataclass(frozen=True)
class Plan:
    """The plan of a program on a model. `str(plan)` is its text: what `eqxform
    plan` prints when the terminal is too narrow for its table."""

    steps: tuple[PlanStep, ...]
    params_before: int
    params_after: int
    diagnostics: tuple[Diagnostic, ...] = field(default=())
    result: Any = None  # the model's structure after every pass
    output: str | None = None  # the forward pass's output, when the inputs are declared
    opt_state_bytes: int | None = None  # the spec's optimiser's state, when it has one
    placement: PlanMesh | None = None  # each array on the mesh, when there is one
    # The checkpoint's mapping (model path, checkpoint name, transform, shape),
    # when the spec has `map` lines and a checkpoint to read.
    weights: tuple[dict, ...] | None = None
    # The plan line by line, with the skeleton after each (what `Planner` reuses).
    rules: tuple[PlannedRule, ...] = field(default=(), repr=False, compare=False)
    members: PlanMembers | None = None  # a sweep's members, their values and memory

    @functools.cached_property
    def _counts(self) -> tuple[int, int, int]:
        if self.result is None:
            return (0, 0, 0)
        return trainable_frozen(split_state(self.result)[0])

    @property
    def trainable(self) -> int:
        """Floating-point parameters the optimiser updates."""
        return self._counts[0]

    @property
    def frozen(self) -> int:
        """Floating-point parameters held still (`freeze`, an adapter's base)."""
        return self._counts[1]

    @property
    def state(self) -> int:
        """Floating-point initial values of model state (`eqx.nn.StateIndex`):
        neither trainable nor frozen."""
        return self._counts[2]

    @functools.cached_property
    def untouched(self) -> tuple[str, ...]:
        """The arrays of the result that no rule touched (`plan --untouched`)."""
        return () if self.result is None else untouched(self.steps, self.result)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "warning")

    def to_dict(self) -> dict:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "steps": [
                {
                    "line": s.line,
                    "rule": s.rule,
                    "action": s.action,
                    "count": s.count,
                    "unit": s.unit,
                    "skipped": s.skipped,
                    "state_skipped": s.state_skipped,
                    "freezes_removed": s.freezes_removed,
                    "params_before": s.params_before,
                    "params_after": s.params_after,
                    "matches": [
                        {"path": m.path, "before": m.before, "after": m.after} for m in s.matches
                    ],
                }
                for s in self.steps
            ],
            "output": self.output,
            "untouched": list(self.untouched),
            "trainable": self.trainable,
            "frozen": self.frozen,
            "state": self.state,
            "opt_state_bytes": self.opt_state_bytes,
            "placement": None if self.placement is None else self.placement.to_dict(),
            "members": None if self.members is None else self.members.to_dict(),
            "weights": None if self.weights is None else list(self.weights),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }

    def weight_lines(self) -> list[str]:
        """The checkpoint's mapping as text lines, one per model array (or
        stack slice); none without `map` lines."""
        if self.weights is None:
            return []
        out = [f"weights: {len(self.weights):,} arrays from the checkpoint"]
        width = max((len(r["model"]) for r in self.weights), default=0)
        for r in self.weights:
            shape = "[" + ",".join(map(str, r["shape"])) + "]"
            how = "" if r["transform"] == "-" else f"  ({r['transform']})"
            out.append(f"  {r['model'].ljust(width)}  <- {r['checkpoint']}  {shape}{how}")
        return out

    def __str__(self) -> str:
        # The checkpoint's mapping first, when there is one: the rules
        # run on the loaded model.
        mapping = [printable(line) for line in self.weight_lines()]
        return "\n".join(mapping + self.lines())

    def lines(self, width: int | None = None) -> list[str]:
        """The plan as lines of text: what `str(plan)` is, and what `eqxform
        plan` prints on a terminal too narrow for its table. With `width`, a
        line longer than that is broken (a match's change below its path,
        a rule at its spaces), never a path: a path is printed whole."""
        lines = []
        for s in self.steps:
            delta = f"{s.params_delta:+,} params" if s.params_delta else "params unchanged"
            lines += _wrap(f"line {s.line}: {s.rule}", "    ", width)
            skipped = f", {plural(s.skipped, 'non-floating array')} skipped" if s.skipped else ""
            if s.state_skipped:
                skipped += f", {plural(s.state_skipped, 'array')} of model state skipped"
            if s.freezes_removed:
                skipped += f", {plural(s.freezes_removed, 'freeze')} removed"
            lines += _wrap(f"  {s.action}: {s.counted}{skipped}, {delta}", "      ", width)
            rows = [
                (m.path, m.before if m.before == m.after else f"{m.before} -> {m.after}")
                for m in s.matches
            ]
            lines += _columns("    ", rows, width) if rows else ["    (nothing)"]
        # Rules and paths come from the spec and the model: printed as text.
        return [printable(line) for line in lines] + self.totals(width)

    def totals(self, width: int | None = None) -> list[str]:
        """The lines below the steps: the parameter counts, the forward
        pass's output, the placement on the mesh."""
        lines = [f"parameters: {self.params_before:,} -> {self.params_after:,}"]
        # `trainable: 1,024 (frozen: 1,048,576), optimizer state: 8,192 bytes`
        parts = [f"trainable: {self.trainable:,} (frozen: {self.frozen:,})"]
        if self.state:
            parts.append(f"model state: {self.state:,}")
        if self.opt_state_bytes is not None:
            parts.append(f"optimizer state: {self.opt_state_bytes:,} bytes")
        if width is None or len(", ".join(parts)) <= width:
            lines.append(", ".join(parts))
        else:  # a part a line, no number split from its unit
            lines += [parts[0] + ("," if len(parts) > 1 else "")] + ["  " + p for p in parts[1:]]
        if self.output is not None:
            lines += _wrap(f"output: {self.output}", "  ", width)
        if self.members is not None:
            lines += self.members.lines(self.opt_state_bytes, width)
        if self.placement is not None:
            lines += self.placement.lines(width)
        return [printable(line) for line in lines]


def _wrap(text: str, indent: str, width: int | None) -> list[str]:
    """`text` broken at its spaces to fit `width` (None: one line), the lines
    after the first indented; a word longer than the width (a path) stays whole."""
    if width is None or len(text) <= width:
        return [text]
    lead = text[: len(text) - len(text.lstrip(" "))]
    return textwrap.wrap(
        text.lstrip(" "),
        width,
        initial_indent=lead,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _columns(indent: str, rows: list[tuple[str, str]], width: int | None) -> list[str]:
    """Rows of (path, what): aligned in two columns when they fit `width`,
    else each path whole on its line and what follows it on the next."""
    column = max((len(path) for path, _ in rows), default=0)
    aligned = [f"{indent}{path.ljust(column)}  {what}".rstrip() for path, what in rows]
    if width is None or all(len(line) <= width for line in aligned):
        return aligned
    out = []
    for path, what in rows:
        out.append(indent + path)
        out += _wrap(indent + "  " + what, indent + "    ", width) if what else []
    return out


def describe(obj: Any, axes: tuple[str, ...] = ()) -> str:
    """`f32[64,2]`; leading stack and member axes are named: `f32[layer:10, 3,3]`."""
    if is_array(obj):
        dtype = np.dtype(obj.dtype).name
        short = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
        shape = [str(d) for d in obj.shape]
        lead = [f"{a}:{d}" for a, d in zip(axes, shape)]
        rest = ",".join(shape[len(lead) :])
        inner = ", ".join(lead + [rest] if rest else lead)  # `f32[layer:4]` per layer a scalar
        return f"{short.get(dtype, dtype)}[{inner}]"
    if isinstance(obj, Wrapper):
        # `Frozen(f32[8,8])`: the wrappers around an array, innermost last.
        return f"{type(obj).__name__}({describe(obj._inner(), axes)})"
    if isinstance(obj, Stacked) and obj.unrolled:
        return f"{type(obj).__name__} ({count_params(obj):,} params, scan unrolled)"
    if isinstance(obj, Stacked) and obj.kind == "adopted":
        # The module's own layer axis taken as it is; of a library's blocks
        # pre-stacked again, the outer one (the inner ones stay in each layer).
        axis = f" from the outer of {obj.inner + 1} layer axes" if obj.inner else ""
        return (
            f"{type(obj).__name__} ({count_params(obj):,} params, "
            f"{obj.count} layers adopted as built{axis}, no copies)"
        )
    if isinstance(obj, eqx.Module):
        return f"{type(obj).__name__} ({count_params(obj):,} params)"
    if callable(obj):
        return getattr(obj, "__name__", type(obj).__name__)
    return type(obj).__name__


def trainable_frozen(model: Any) -> tuple[int, int, int]:
    """(trainable, frozen, state) floating-point values of `model`: those
    inside a `Frozen` (for one frozen on some layers of a stack, those layers)
    are frozen; the initial values of model state (in an `eqx.nn.StateIndex`)
    are state, neither."""
    trainable = frozen = state = 0
    for node in walk(model):
        x = node.obj
        if not is_array(x) or not inexact(x):
            continue
        size = math.prod(x.shape)
        if in_state(node.parents):
            state += size
            continue
        wrapper = next((p for p in reversed(node.parents) if isinstance(p, Frozen)), None)
        if wrapper is None:
            trainable += size
            continue
        if wrapper.layers is None:
            frozen += size
            continue
        share = size * len(wrapper.layers) // x.shape[wrapper.axis]
        frozen += share
        trainable += size - share
    return trainable, frozen, state


def count_params(model: Any) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(model) if is_array(x))


def structure(model: Any) -> Any:
    """`model` with every array replaced by its `ShapeDtypeStruct`."""
    # A skeleton already (a model file's, or a plan's result): tracing it again
    # would cost as much as a pass and change nothing.
    leaves, treedef = jax.tree_util.tree_flatten(model)
    if not any(isinstance(x, (jax.Array, np.ndarray)) for x in leaves):
        return model
    # What `eqx.filter_eval_shape(lambda m: m, model)` gives, without tracing
    # an identity over every leaf.
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=getattr(x, "weak_type", False))
            if isinstance(x, (jax.Array, np.ndarray))
            else x
            for x in leaves
        ],
    )


def _describe_node(node) -> str:
    return describe(node.obj, node.axis_names if is_array(node.obj) else ())


def _matches(nodes, after_model, gathered: bool = False) -> tuple[PlanMatch, ...]:
    """What each node was and became. `gathered`: the nodes became one (a
    stack of list items, in the first one's place), so the later ones are said
    to be in it, not compared with what now stands at their old place."""
    out = []
    for k, node in enumerate(nodes):
        if is_array(node.obj):
            # An array is shown with its wrappers (`Frozen(f32[8,8])`), under
            # its logical path, as selectors name it; what became of it is
            # looked for at its outermost wrapper.
            depth = len(node.path)
            while depth > 0 and isinstance(node.parents[depth - 1], Wrapper):
                depth -= 1
            axes, outer = node.axis_names, node.path[:depth]
            holder = node.parents[len(outer)] if len(outer) < len(node.path) else node.obj
            before = describe(holder, axes)
            text = logical_path(node)
        else:
            axes, outer, before, text = (), node.path, _describe_node(node), node.text
        try:
            after = describe(node_at(after_model, outer).obj, axes)
        except (AttributeError, IndexError, KeyError, TypeError):
            after = "(removed)"
        if gathered and k:
            after = f"(stacked into {nodes[0].text})"
        if node.layers is not None:
            text += " (layers " + ",".join(str(i) for i in sorted(node.layers)) + ")"
        out.append(PlanMatch(text, before, after))
    return tuple(out)


def _forward_error(program, e: Exception, line_span, what: str) -> Diagnostic:
    if isinstance(e, StackCallError) and what == "rule":
        # The stack said what is wrong, with its own code: at the `stack` line.
        return dataclasses.replace(e.diagnostics[0], span=line_span, source=program.source)
    code = "E207" if what == "rule" else "E212"
    return report(code, span=line_span, source=program.source, message=first_line(e))


def _forward(subject, structs):
    """The model's output on the declared inputs, or the exception it raises."""
    try:
        return output_shape(subject, structs), None
    except StackCallError as e:  # a stack that cannot run its layers: the rule is wrong
        return None, e
    except SpecError:
        raise
    except Exception as e:  # the model's own complaint about its input
        return None, e


def _placement(placer: PlacePass, struct, diagnostics: list) -> PlanMesh | None:
    """Each array's partition spec and bytes per device, from the axis sizes
    alone (no device is touched)."""
    try:
        sizes = placer.mesh.sizes()
        placed = placer.placements(struct, sizes)
    except SpecError as e:
        diagnostics.extend(e.diagnostics)
        return None
    rows = tuple(
        PlanPlacement(
            p.node.text,
            _describe_node(p.node),
            p.describe(),
            None if p.rule is None else p.rule.line,
            p.bytes_per_device(sizes),
            math.prod(p.node.obj.shape) * np.dtype(p.node.obj.dtype).itemsize,
        )
        for p in placed
    )
    text = " ".join(f"{n}={s}" for n, s in sizes.items())
    return PlanMesh(text, math.prod(sizes.values()), rows)


@dataclass(frozen=True, eq=False)
class PlannedRule:
    """The plan of one line's passes (a rule's actions, or a structural
    directive), and the model's skeleton after them: what `Planner` keeps.

    `key` stands for the line (its number and text) and everything above it
    that shapes the model; `history` holds each pass with the skeleton after it.
    """

    key: int
    line: int
    struct: Any
    steps: tuple[PlanStep, ...]
    diagnostics: tuple[Diagnostic, ...]
    history: tuple[tuple[Any, Any], ...]
    params: int  # the parameters of `struct`
    size: int  # its bytes
    over_budget: bool  # a line up to this one made the model larger than the budget


class Planner:
    """Plans programs, remembering each rule's plan for the next call.

    A rule's plan depends on its text and line, on what is above it (the model
    it sees, the directives that shape it) and on the model planned; it is
    kept under a key made of all of them, so that planning an edited spec
    again plans only the lines from the first edited one down. One planner
    serves one document (an editor's buffer, a file planned again and again):
    the model given, or the spec's `model` directive, starts the plan, and a
    different model object starts it afresh.

    **Attributes:** `replanned`, how many lines the last `plan` planned (the
    others were reused).

    ```python
    planner = eqxform.Planner()
    program.plan(model, planner=planner)  # every line planned
    edited.plan(model, planner=planner)   # the lines from the first edited one down
    ```
    """

    def __init__(self):
        self.replanned = 0
        self._rules: tuple[PlannedRule, ...] = ()
        self._model: Any = None
        # The skeleton of the model given last, with its parameters and bytes.
        self._start: tuple[Any, int, int] | None = None

    def plan(
        self,
        program,
        model=None,
        mesh=None,
        weights=None,
        base=None,
        between: Callable[[], None] | None = None,
        detail: bool = True,
    ) -> Plan:
        """The plan of `program` on `model` (a model, its skeleton, or None for
        the spec's `model` directive); `base` rebuilds the model from a key
        (its constructor), where it is known. `between` is called before each
        line that is planned anew; it may raise to stop the plan (an editor's
        text that changed meanwhile). Without `detail`, the plan's errors only
        (what `apply` checks before it allocates): no step lists the arrays
        a rule acts on, and the warnings drawn from the steps are left out."""
        key = seed_key(program.seed)
        try:
            placer = program.placer(mesh)
        except SpecError as e:
            return Plan((), 0, 0, tuple(e.diagnostics))
        first, start_params, start_size = self._start_struct(program, model, key)
        diagnostics: list[Diagnostic] = list(program.warnings)
        # The checkpoint against the model as given, from its header alone.
        named = weights is not None or (program.weights is not None and program.weights.path)
        try:
            # Without a checkpoint to read (none given, no `weights` line), the
            # `map` lines are checked as text only; `apply` asks for one (E450).
            mapped = program.plan_weights(first, weights) if named else None
        except (UsageError, ModelFileError) as e:
            if weights is not None:
                raise  # a path given on the command line or to the API
            # The spec's own `weights` line names a file that cannot be read.
            mapped = None
            anchor = program.weights.anchor.span
            diagnostics += [
                dataclasses.replace(d, span=anchor, source=program.source) for d in e.diagnostics
            ]
        if mapped is not None:
            diagnostics += mapped.diagnostics
        structs = program.input_structs()
        ctx = Context(allow=program.allow, inputs=structs, shapes_only=True, base=base)
        if model is None and program.model_call is not None:
            # The spec's own model: it is built for real by `apply`.
            too_large = budget_diagnostic(
                start_size,
                f"`{program.model_call.callee}(...)`",
                program.model_call.span,
                program.source,
            )
            if too_large is not None:
                diagnostics.append(too_large)
        rules = self._fold(
            program, model, first, start_params, start_size, key, ctx, between, detail
        )
        steps = [s for r in rules for s in r.steps]
        diagnostics += [d for r in rules for d in r.diagnostics]
        history = [h for r in rules for h in r.history]
        struct = rules[-1].struct if rules else first
        params = rules[-1].params if rules else start_params
        quiet = dataclasses.replace(ctx, report=lambda d: None)

        def replay(model, after: int):
            """`model` through the passes of `history` after its `after`-th."""
            for p, _ in history[after + 1 :]:
                nodes = p.select(split_state(model)[0], quiet)
                model = _run_shapes(p, model, key, quiet, nodes)
            return model

        group_steps, more, output = finish(program, first, struct, history, params, replay)
        steps += group_steps
        diagnostics += more
        placement = None
        if placer is not None and not any(d.severity == "error" for d in diagnostics):
            placement = _placement(placer, struct, diagnostics)
        steps.sort(key=lambda s: s.line)
        if detail:
            diagnostics += overwritten(steps, program.source)
        diagnostics.sort(key=position)
        return Plan(
            tuple(steps),
            start_params,
            params,
            tuple(diagnostics),
            struct,
            None if output is None else _describe_output(output),
            placement=placement,
            weights=None if mapped is None else tuple(mapped.table()),
            rules=rules,
            members=_members(program, struct),
        )

    def _start_struct(self, program, model, key) -> tuple[Any, int, int]:
        """The skeleton the plan starts from (`model`'s, its constructor's, or
        the `model` directive's), with its parameters and bytes; kept for the
        model object given (the `model` directive's is not: the plan's key
        holds its call)."""
        if model is not None and self._start is not None and model is self._model:
            return self._start
        if model is None:
            struct = eqx.filter_eval_shape(program.construct, key)
        elif is_constructor(model):
            struct = eqx.filter_eval_shape(from_constructor, model, key)
        else:
            struct = structure(model)
        start = (struct, _params(struct), nbytes(struct))
        if model is not None:
            self._model, self._start, self._rules = model, start, ()
        return start

    def _fold(
        self, program, model, struct, params, size, key, ctx, between, detail
    ) -> tuple[PlannedRule, ...]:
        """The fold over the passes, line by line, reusing the lines whose key
        is unchanged: those above the first line that differs."""
        chain = hash(
            (
                # The model given (kept alive by `_start_struct`, so its id
                # is not reused), or the `model` directive's call.
                id(model) if model is not None else program.base_constructor(),
                repr(sorted(program.env.items())),
                program.seed,
                program.allow,
                repr(program.inputs),  # the `input` lines, or those given to `compile`
                detail,
            )
        )
        old, done = self._rules, []
        over = False
        self.replanned = 0
        try:
            for i, (line, text, passes) in enumerate(_by_line(program.passes)):
                chain = hash((chain, line, text))
                if i < len(old) and old[i].key == chain:
                    rule = old[i]
                else:
                    if between is not None:
                        between()
                    rule = _plan_line(
                        program, passes, struct, params, size, over, key, ctx, chain, line, detail
                    )
                    self.replanned += 1
                done.append(rule)
                struct, params, size, over = rule.struct, rule.params, rule.size, rule.over_budget
        finally:
            self._rules = tuple(done)
        return tuple(done)


def _by_line(passes) -> list[tuple[int, str, list]]:
    """The passes by line (the placement, run on the final skeleton, left out)."""
    groups: list[tuple[int, str, list]] = []
    for p in passes:
        if isinstance(p, PlacePass):
            continue
        if groups and groups[-1][0] == p.line:
            groups[-1][2].append(p)
        else:
            groups.append((p.line, p.text, [p]))
    return groups


def _plan_line(
    program, passes, struct, params, size, over, key, ctx, chain, line, detail=True
) -> PlannedRule:
    """One line's passes on the skeleton `struct`, under `eval_shape` (with
    `detail`, each with its step: what it acts on)."""
    diagnostics: list[Diagnostic] = []
    ctx = dataclasses.replace(ctx, report=diagnostics.append)
    steps, history = [], []
    for p in passes:
        try:
            nodes = p.select(split_state(struct)[0], ctx)
            new = _run_shapes(p, struct, key, ctx, nodes)
        except SpecError as e:
            diagnostics.extend(e.diagnostics)
            continue
        if isinstance(p, StackPass):
            diagnostics += p.unread(struct, ctx, nodes)
        new_size, new_params = nbytes(new), _params(new)
        if not over and new_size > size:
            too_large = budget_diagnostic(
                new_size, "the model after this line", p.stmt.span, program.source
            )
            if too_large is not None:
                diagnostics.append(too_large)
                over = True
        if detail:
            step = step_of(p, nodes, split_state(new)[0], params, new_params)
            if isinstance(p, EnsemblePass):
                step = dataclasses.replace(step, matches=_draws(p, struct, new, ctx), unit="array")
            steps.append(step)
        history.append((p, new))
        struct, params, size = new, new_params, new_size
    return PlannedRule(
        chain, line, struct, tuple(steps), tuple(diagnostics), tuple(history), params, size, over
    )


def _members(program, struct) -> PlanMembers | None:
    """The members of the sweep the program makes, if it makes one."""
    ensemble = split_state(struct)[0]
    sweep = getattr(program, "sweep", None)
    if not isinstance(ensemble, Ensemble) or sweep is None:
        return None
    total = nbytes(ensemble)
    rows = tuple({"member": k, "values": sweep.values(k, program.seed)} for k in range(sweep.count))
    return PlanMembers(ensemble.count, sweep.names, rows, total // ensemble.count, total)


def _draws(p, before, after, ctx) -> tuple[PlanMatch, ...]:
    """An `ensemble` step's rows: each array, and how its members draw it."""
    members = split_state(after)[0]
    rows = []
    for node, how in p.draws(split_state(before)[0], ctx):
        try:
            # The member axis comes first, then the axes the array had (a
            # stack's `layer`).
            axes = ("member", *node.axis_names)
            grown = describe(node_at(members.model, node.path).obj, axes)
        except (AttributeError, IndexError, KeyError, TypeError):
            grown = "?"
        rows.append(PlanMatch(node.text, _describe_node(node), f"{grown}  {how}"))
    return tuple(rows)


def _run_shapes(p, struct, key, ctx, nodes):
    """Pass `p` on the skeleton `struct`, under `eval_shape`.

    An action of a rule reads and writes only the nodes it matched, so only
    those are traced; the rest of the skeleton rides along as it is. Tracing
    the whole model would cost time in proportion to all its leaves, for
    every rule: on a model of a thousand leaves, most of a plan's time."""
    model, state = split_state(struct)
    outer = outermost(n.path for n in nodes)
    # `freeze` may rewrap the `Frozen` above a node; a stateful model's state
    # follows its modules.
    local = isinstance(p, RulePass) and p.action.name != "freeze" and state is None
    if not local or not outer or () in outer:
        return eqx.filter_eval_shape(lambda m, k: p.run_on(m, k, ctx, nodes), struct, key)

    def run(parts, k):
        new = p.run_on(replace_at(model, outer, parts), k, ctx, nodes)
        return [get(new, path) for path in outer]

    parts = eqx.filter_eval_shape(run, [get(model, path) for path in outer], key)
    return replace_at(model, outer, parts)


def step_of(p, nodes, after, params_before: int, params_after: int) -> PlanStep:
    """The plan's step of pass `p`, which matched `nodes` and gave `after`."""
    if isinstance(p, RulePass):
        kind, info = p.action.name, N.ACTIONS[p.action.name]
        if kind == "replace":
            targets = nodes  # a module, or a function (`replace gelu`)
        elif info.nodes:
            targets = acted_on(nodes)
        else:
            try:
                targets = p.arrays(nodes)
            except SpecError:
                targets = acted_on(nodes)
        writes = tuple((logical_path(n), n.layers) for n in targets)
        span = p.action.span
        skipped, state = p.skipped(nodes) if info.floats else (0, 0)
        thawed = p.thawed(nodes) if kind == "merge" else 0
    else:
        # A structural directive acts on the list, tuple or module it names.
        targets = nodes
        kind, writes = "structure", tuple((logical_path(n), None) for n in targets)
        span, skipped, state, thawed = p.stmt.span, 0, 0, 0
    return PlanStep(
        p.line,
        p.text,
        p.label,
        _matches(targets, after, gathered=isinstance(p, StackPass)),
        params_before,
        params_after,
        kind,
        writes,
        span,
        unit_of(targets),
        skipped,
        state,
        thawed,
    )


def acted_on(nodes) -> list:
    """The matched nodes an action can act on: arrays and modules (wrapped
    arrays included), not functions, numbers or strings."""
    return [n for n in nodes if is_array(n.obj) or isinstance(n.obj, eqx.Module)]


def unit_of(targets) -> str:
    """What a step counts: `array` (wrapped arrays too), `module`, `function`,
    `list` (a list or tuple a `stack` names), or `node` when its targets are
    of several kinds."""
    kinds = {_kind(n.obj) for n in targets}
    return kinds.pop() if len(kinds) == 1 else "array" if not kinds else "node"


def _kind(obj: Any) -> str:
    if is_array(obj) or isinstance(obj, Wrapper):
        return "array"
    if isinstance(obj, eqx.Module):
        return "module"
    if isinstance(obj, (list, tuple)):
        return "list"
    return "function" if callable(obj) else "node"


# ---- match accounting --------------------------------------------------------------

# What a later action does to what an earlier one wrote (the records' flags).
# `init` writes values without reading them (`overwrites`), so it overwrites
# an earlier `init` or `scale` of the same array (`writes_values`; not a
# `cast`: it draws in the array's dtype; not a `wrap` or a `freeze`: it draws
# inside them). `replace` discards everything below the node it replaces.
# Every other action reads what it changes (`scale` reads the values `init`
# drew), so what came before it lives on. The optimiser's groups (`lr`,
# `weight_decay`) are accounted apart.


def _flag(kind: str, flag: str) -> Any:
    """Field `flag` of the record of a step's kind (None for a structure)."""
    info = N.ACTIONS.get(kind)
    return None if info is None else getattr(info, flag)


def _group(kind: str) -> bool:
    return _flag(kind, "changes") == "optimiser"


def _covers(killer: frozenset[int] | None, victim: frozenset[int] | None) -> bool:
    """Does a write of the layers `killer` (None: all) cover the layers `victim`?"""
    return killer is None or (victim is not None and victim <= killer)


def _under(path: str, root: str) -> bool:
    return root == "<root>" or path == root or (path.startswith(root) and path[len(root)] in ".[")


def overwritten(steps, source) -> list[Diagnostic]:
    """The warnings of rules whose work a later rule undoes.

    - `W202`: every array (or module) a rule changed is overwritten later
      without being read: re-drawn by an `init`, or discarded by a `replace`
      of it or of a module above it. An `init` followed by a `scale` is not
      overwritten (the `scale` reads what `init` drew).
    - `W203`: some arrays an `init` drew are discarded by a later `replace`
      (the new module is not drawn by that `init`: move the `replace` up).
    - `W202` too for an `lr` or `weight_decay` whose every array a later one
      of the same kind sets (later rules win).

    A `stack`, `unstack` or `ensemble` line ends the accounting of the rules
    above it (it reads every array and renames many), so nothing is reported
    across one. `steps` are the plan's, in the order of the passes.
    """
    diagnostics: list[Diagnostic] = []
    # For each step that wrote something: which of its writes are still live,
    # and by which steps the others were undone.
    live: list[tuple[PlanStep, list[tuple[str, frozenset[int] | None]], dict]] = []
    writers: dict[str, list[int]] = {}  # path -> the indices in `live` of its writers

    def settle():
        for step, alive, killers in live:
            if not step.writes:
                continue
            replaced = killers.get("replace", [])
            if step.kind == "init" and replaced:
                lines = sorted({k.line for k in replaced})
                n = len(
                    {
                        w
                        for w, _ in step.writes
                        if any(_under(w, r) for k in replaced for r, _ in k.writes)
                    }
                )
                diagnostics.append(
                    report(
                        "W203",
                        span=step.span,
                        source=source,
                        count_n=plural(n, "array"),
                        lines_lines=_lines(lines),
                    )
                )
            elif not alive:
                by = sorted({k.line for ks in killers.values() for k in ks})
                diagnostics.append(
                    _overwritten(
                        step,
                        by,
                        "remove this action, or move it below the rules that overwrite it "
                        "(a later `init` draws anew, a `replace` discards the module)",
                        source,
                    )
                )
        live.clear()
        writers.clear()

    for step in steps:
        if _group(step.kind):
            continue
        if step.kind == "structure":
            settle()
            continue
        if step.kind == "replace":
            roots = [w for w, _ in step.writes]
            for earlier, alive, killers in live:
                dead = [w for w in alive if any(_under(w[0], r) for r in roots)]
                if dead:
                    alive[:] = [w for w in alive if w not in dead]
                    killers.setdefault("replace", []).append(step)
        elif _flag(step.kind, "overwrites"):
            written = _by_path(step.writes)
            # Only the steps that wrote one of these paths (most wrote none).
            hit = sorted({i for w in written for i in writers.get(w, ())})
            for earlier, alive, killers in (live[i] for i in hit):
                if not _flag(earlier.kind, "writes_values"):
                    continue
                dead = [w for w in alive if any(_covers(k, w[1]) for k in written.get(w[0], ()))]
                if dead:
                    alive[:] = [w for w in alive if w not in dead]
                    killers.setdefault("init", []).append(step)
        if step.writes:
            for w, _ in step.writes:
                writers.setdefault(w, []).append(len(live))
            live.append((step, list(step.writes), {}))
    settle()
    # `lr` and `weight_decay` select on the final model, and a later one sets
    # what an earlier one of the same kind set.
    groups = [s for s in steps if _group(s.kind)]
    for i, step in enumerate(groups):
        alive, by = list(step.writes), set()
        for later in groups[i + 1 :]:
            if later.kind != step.kind:
                continue
            written = _by_path(later.writes)
            kept = [w for w in alive if not any(_covers(k, w[1]) for k in written.get(w[0], ()))]
            if len(kept) < len(alive):
                by.add(later.line)
            alive = kept
        if step.writes and not alive:
            diagnostics.append(
                _overwritten(
                    step,
                    by,
                    f"remove this action: the later `{step.kind}` sets these parameters",
                    source,
                )
            )
    return diagnostics


def _overwritten(step, by, help: str, source) -> Diagnostic:
    """W202: every match of `step`'s action is overwritten by the lines `by`."""
    return report(
        "W202",
        span=step.span,
        source=source,
        help=help,
        action=step.action,
        lines_by=_lines(by),
        count_len_writes=plural(len(step.writes), "match"),
    )


def _by_path(writes) -> dict[str, list]:
    """The layers each path of `writes` was written at, by path."""
    out: dict[str, list] = {}
    for w, layers in writes:
        out.setdefault(w, []).append(layers)
    return out


def _lines(lines) -> str:
    lines = sorted(set(lines))
    if len(lines) == 1:
        return f"line {lines[0]}"
    return "lines " + ", ".join(str(n) for n in lines[:-1]) + f" and {lines[-1]}"


def untouched(steps, model) -> tuple[str, ...]:
    """The arrays of `model` (the plan's result) that no step touched: not
    matched, and under no matched module."""
    touched: set[str] = set()
    for step in steps:
        touched.update(w for w, _ in step.writes)
    if "<root>" in touched:
        return ()
    out = []
    for node in walk(split_state(model)[0]):
        if not is_array(node.obj):
            continue
        text = logical_path(node)
        cut = [i for i, c in enumerate(text) if c in ".["] + [len(text)]
        if not any(text[:i] in touched for i in cut):
            out.append(text)
    return tuple(out)


def finish(program, start, struct, history, params, replay=None):
    """What a plan checks after the passes, on the final skeleton `struct`
    (of `params` parameters): the `lr`/`weight_decay` groups (their steps) and
    the forward pass on the declared inputs (the rule that breaks it found in
    `history`, the list of (pass, skeleton after it); `replay` runs a changed
    skeleton through the passes after one of them). Returns (steps,
    diagnostics, output)."""
    steps, diagnostics = [], []
    final = split_state(struct)[0]
    for group in program.groups:
        try:
            nodes = select_rule(group.rule, final, program.env, program.source)
            leaves = matched_arrays(nodes, group.action.name, group.rule.selector, program.source)
            for leaf in leaves:
                group_value(program, group.action, leaf)
        except SpecError as e:
            diagnostics.extend(e.diagnostics)
            continue
        steps.append(
            PlanStep(
                group.line,
                group.rule.text,
                program.source.snippet(group.action.span),
                _matches(leaves, final),
                params,
                params,
                group.action.name,
                tuple((logical_path(n), n.layers) for n in leaves),
                group.action.span,
            )
        )
        if leaves and all(_is_frozen(leaf) for leaf in leaves):
            diagnostics.append(
                report(
                    "W204",
                    span=group.action.span,
                    source=program.source,
                    name=group.action.name,
                    count_len_leaves=plural(len(leaves), "array"),
                )
            )
    output = None
    structs = program.input_structs()
    if structs is not None and not any(d.severity == "error" for d in diagnostics):
        output, problem = _forward(struct, structs)
        if problem is not None:
            diagnostics.append(_locate_break(program, start, structs, history, problem, replay))
        else:
            diagnostics += _formed(program, struct, structs, history)
    return steps, diagnostics, output


def _formed(program, struct, structs, history) -> list[Diagnostic]:
    """I221 for each `lora` rule whose adapted matrices the forward pass forms
    (the parent reads the module's `weight` itself): their cost, at the rule."""
    try:
        formed = formed_adapters(struct, structs)
    except Exception:  # traced once more for its jaxpr: best effort, the pass itself ran
        return []
    made: dict[str, Any] = {}  # each adapted module's path -> the `lora` action that made it
    for p, after in history:
        action = getattr(p, "action", None)
        if action is not None and action.name == "lora":
            for n in walk(split_state(after)[0]):
                if isinstance(n.obj, LoRA):
                    made.setdefault(n.text, action.span)
    by_rule: dict[Any, list[tuple[str, int]]] = {}
    for path, (rows, cols) in formed:
        by_rule.setdefault(made.get(path), []).append((path, rows * cols))
    out = []
    for span, found in by_rule.items():
        paths = ", ".join(f"`{p}`" for p, _ in found[:3]) + (", ..." if len(found) > 3 else "")
        total = sum(n for _, n in found)
        out.append(
            report(
                "I221",
                span=span,
                source=program.source,
                count_len_found=plural(len(found), "adapted module"),
                paths=paths,
                value="it" if len(found) == 1 else "them",
                total=total,
            )
        )
    return out


def group_value(program, action, leaf) -> float:
    """The number an `lr` or `weight_decay` rule gives one matched array."""
    value = evaluate_at(action.arg, leaf, program.env, program.source)
    bad = argument_diagnostic(
        f"`{action.name}`",
        value,
        N.ACTIONS[action.name].value,
        action.arg.span,
        program.source,
        f" at `{leaf.text}`",
    )
    if bad is not None:
        raise SpecError(bad)
    return float(value)


def _locate_break(program, start, structs, history, problem, replay=None) -> Diagnostic:
    """The diagnostic of a forward pass that fails after the rules: at the
    first rule after which it fails (found by bisection), or at the `input`
    line when the model never took its input."""
    first_input = program.inputs[0].span
    model = split_state(start)[0]
    if not callable(model):
        # Its entry point is a method (`forward`): there is no call to check.
        name = type(model).__name__
        return report(
            "E212", variant="not_callable", span=first_input, source=program.source, name=name
        )
    failure = _forward(start, structs)[1]
    if failure is not None and missing_state(start) and _runs_with_state(model, structs):
        return report("E238", span=first_input, source=program.source)
    cause = _dtype_cause(program, start, structs, history, replay)
    if cause is not None:
        return cause
    if failure is not None or not history:
        return _forward_error(program, failure or problem, first_input, "input")
    lo, hi = 0, len(history) - 1  # the model works before history[0], fails after history[hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if _forward(history[mid][1], structs)[1] is None:
            lo = mid + 1
        else:
            hi = mid
    breaker, after = history[lo]
    error = _forward(after, structs)[1] or problem
    span = breaker.stmt.span
    cast = _cast_help(program, breaker, structs)
    if cast is not None and not isinstance(error, StackCallError):
        message = first_line(error)
        return report(
            "E207", variant="cast", span=span, source=program.source, message=message, **cast
        )
    return _forward_error(program, error, span, "rule")


def _cast_help(program, breaker, structs) -> dict[str, str] | None:
    """What a `cast` that broke the forward pass says: the input is declared in
    another floating dtype than the one the arrays now have (`input f32[...]`
    after `where ** -> cast bfloat16`). None for any other rule."""
    action = getattr(breaker, "action", None)
    if action is None or action.name != "cast":
        return None
    dtype = jnp.dtype(action.arg.id)
    first = program.inputs[0]
    declared = jnp.dtype(structs[0].dtype)
    if not jnp.issubdtype(dtype, jnp.floating) or not jnp.issubdtype(declared, jnp.floating):
        return None
    if declared == dtype:
        return None
    return {"dtype": dtype.name, "declared": first.describe(), "suggested": _input_in(first, dtype)}


def _input_in(stmt, dtype) -> str:
    """The `input` line `stmt`'s array in `dtype` (`bf16[3,16,16]`)."""
    short = {long: s for s, long in reversed(list(N.INPUT_DTYPES.items()))}
    return f"{short.get(dtype.name, dtype.name)}[{','.join(str(d) for d in stmt.shape)}]"


def _floating(tree) -> set:
    return {
        jnp.dtype(x.dtype)
        for x in jax.tree_util.tree_leaves(tree)
        if is_array(x) and jnp.issubdtype(x.dtype, jnp.floating)
    }


def _dtype_cause(program, start, structs, history, replay=None) -> Diagnostic | None:
    """E213, where the forward pass fails only because of a dtype that a
    `cast` gave (with the `input` lines, when they declare it too): the model
    runs with every array and input in its own floating dtype, but not after
    the cast, on inputs in the cast's dtype either. At the cast after which
    the failure first comes, with the JAX function that failed, the module
    that called it, and a fix that was tried and runs. None for any other
    failure."""
    own = _floating(start)
    own = own.pop() if len(own) == 1 else jnp.dtype("float32")
    casts = []
    for k, (p, _) in enumerate(history):
        action = getattr(p, "action", None)
        if action is not None and action.name == "cast":
            dtype = jnp.dtype(action.arg.id)
            if jnp.issubdtype(dtype, jnp.floating) and dtype != own:
                casts.append((k, p, dtype))
    if not casts:
        return None
    final = history[-1][1]
    wide = retyped(structs, own)
    if _forward(retyped(final, own), wide)[1] is not None:
        return None  # not a matter of dtypes alone
    narrow = casts[-1][2]
    # On inputs in the cast's dtype (what E207 suggests) a model that runs
    # had only its `input` lines wrong: E207 says so.
    given = retyped(structs, narrow)
    error = _forward(final, given)[1]
    if error is None or isinstance(error, StackCallError):
        return None
    site = _site(error)
    at, breaker, dtype = next(
        ((k, p, d) for k, p, d in casts if _site(_forward(history[k][1], given)[1]) == site),
        casts[-1],
    )
    op, owner, where = _called(error)
    name = None if owner is None else _type_name(type(owner), final)
    own_name = {"own": own.name}
    notes = []
    for stmt, struct in zip(program.inputs, structs):
        if struct.dtype == narrow:
            notes.append(
                f"line {stmt.span.line}, `input {stmt.describe()}`, gives the model "
                f"{narrow.name} arrays too"
            )
    first = _forward(final, structs)[1]
    if first is not None and _site(first) != site:
        notes.append(
            f"with the input as declared, the model fails before that, {_where_failed(first)}"
        )
    inputs = {"inputs": ", ".join(f"`input {_input_in(i, own)}`" for i in program.inputs)}
    # Fixes tried in turn (the help's variant, the model, its inputs, the
    # help's values); the first that runs is the help.
    tries = []
    if owner is not None:
        # The rule the help gives, directly below the cast (the rules after
        # it run on), and as the spec's last rule.
        below = retyped(history[at][1], own, type(owner))
        try:
            below = below if replay is None else replay(below, at)
        except Exception:  # a later rule that cannot run so: that help is not given
            below = None
        kept = retyped(final, own, type(owner))
        if below is not None:
            tries.append((None, below, structs, {"name": name, **own_name}))
        tries.append(("last", kept, structs, {"name": name, **own_name}))
    if any(s.dtype == narrow for s in structs):
        tries.append(("input", final, wide, {**own_name, **inputs}))
        if owner is not None and below is not None:
            tries.append(("keep_input", below, wide, {"name": name, **own_name, **inputs}))
    tries.append(
        ("general", None, None, own_name)
        if owner is None
        else ("module", None, None, {"name": name, **own_name})
    )
    variant, helps = next((v, h) for v, m, x, h in tries if m is None or _forward(m, x)[1] is None)
    return report(
        "E213",
        variant=variant,
        span=breaker.stmt.span,
        source=program.source,
        notes=tuple(notes),
        op=op,
        dtype=dtype.name,
        error=first_line(error),
        where=where,
        **helps,
    )


def _type_name(cls: type, model: Any) -> str:
    """`cls` as a selector names it in `model`: its short name, or its
    qualified one where the short name is another class's too (in the model,
    or a registered type), as E206 asks."""
    short = cls.__name__
    same = {
        c for n in walk(split_state(model)[0]) for c in type(n.obj).__mro__ if c.__name__ == short
    }
    if registered_type(short) in (None, cls) and same <= {cls}:
        return short
    same = sorted(same | {cls}, key=lambda c: (c.__module__, c.__qualname__))
    return qualified_names(same)[same.index(cls)]


def _called(error: Exception) -> tuple[str, Any, str]:
    """The function that raised `error`, the module whose code called it, and
    where that is in words (" in `SpectralConv` (`blocks[0].spectral_conv`)")."""
    op, owner, path = failing_call(error)
    where = "" if owner is None else f" in `{type(owner).__name__}`"
    return op, owner, where + ("" if path is None else f" (`{path}`)")


def _where_failed(error: Exception) -> str:
    """What raised `error` and where, then what it said."""
    op, _, where = _called(error)
    return f"at `{op}`{where}: {first_line(error)}"


def _site(error) -> tuple | None:
    """Where in the model's code `error` was raised (file and line of the
    innermost frame), to tell two failures of one call from others."""
    if error is None or error.__traceback__ is None:
        return None
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return (tb.tb_frame.f_code.co_filename, tb.tb_lineno)


def _runs_with_state(model, structs) -> bool:
    """Does the model run on its input given the state made for it? Then the
    state is what it lacked; a model that holds an `eqx.nn.StateIndex` but does
    not read it in `__call__` (a KV cache for sampling) failed for another
    reason, which is said instead."""
    # A plan's model is a skeleton: only the state's own initial values (small,
    # the model's weights stay shapes) are made to build the state from.
    concrete = lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x  # noqa: E731
    indexed = jax.tree_util.tree_map(
        lambda x: jax.tree_util.tree_map(concrete, x) if is_state_index(x) else x,
        model,
        is_leaf=is_state_index,
    )
    try:
        state = eqx.nn.State(indexed)
    except Exception:  # no state to make from this model: say it lacks one
        return True
    return _forward((model, state), structs)[1] is None


def _is_frozen(leaf) -> bool:
    """Is the array at `leaf` frozen: inside a `Frozen`, which holds all its
    layers or at least those the selector picked?"""
    for parent in leaf.parents:
        if isinstance(parent, Frozen):
            if parent.layers is None:
                return True
            if leaf.layers is not None and leaf.layers <= set(parent.layers):
                return True
    return False


def _params(subject: Any) -> int:
    return count_params(split_state(subject)[0])


def _describe_output(out: Any) -> str:
    """The output's arrays (a stateful model's output, its state left out)."""
    leaves = jax.tree_util.tree_leaves(split_state(out)[0])
    return ", ".join(describe(x) for x in leaves if is_array(x))
