"""AST -> diagnostics, with no model and no JAX.

Every check that does not need the model lives here: each is its own method
and reports with its own stable code, and the checker never stops at the first
error, so `eqxform check` lists them all at once. When the static checks pass,
the checker evaluates the directives (`let`, `seed`, `ensemble`, `optimizer`)
with the caller's overrides; the compiler takes those values from it. Checks
that need the model (does a selector match?) live with the passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from . import _ast as A
from . import _limits as L
from . import _names as N
from . import _registry as R
from ._diagnostics import Diagnostic, did_you_mean, report, suggest
from ._expr import EvalError, bare_word, evaluate, render, walk
from ._sweep import MEMBER, SEED, SPREADS, Sweep, evaluate_sweep
from ._values import (
    argument_diagnostic,
    argument_kinds,
    as_argument,
    byte_budget,
    constructor_limit,
    format_bytes,
    is_seed,
)
from ._wnames import read_globs, read_map


def _listing(names: Iterable[str], after: str = "") -> str:
    """`` `a`, `b` ``: names in backticks (each followed by `after`)."""
    return ", ".join(f"`{n}{after}`" for n in names)


def _hint(word: str, names: Iterable[str], what: str) -> str:
    """Did-you-mean for `word` among `names`, else `{what} are` and them all."""
    return did_you_mean(word, names) or f"{what} are " + _listing(names)


def is_whole(value: Any, minimum: int) -> bool:
    """Is `value` an integer (not a boolean) of at least `minimum`?"""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# The actions whose argument may read a sweep's varied names: a number there
# changes values, never the model's structure (a shape, a count, a dtype).
SWEEP_ACTIONS = ("init", "scale", "lr", "weight_decay")


# The names a `let` or a varied name may not take: those an expression
# already reads as something else.
RESERVED = frozenset((*N.CONTEXT_NAMES, *N.CONSTANTS, *N.EXPR_FUNCTIONS, *N.FUNCTIONS, *N.DTYPES))

# The codes of diagnostics about what the caller passed (`--set`, `params=`),
# which `compile` raises as `UsageError` (exit code 2).
USAGE_CODES = ("E116", "E431")


class Checker:
    """The checks of one spec. After `run()`, when it found no errors, the
    evaluated directives are in `env`, `seed`, `counts` and `optimizer`."""

    def __init__(self, spec: A.Spec, params: Mapping[str, Any] | None = None, mesh: Any = None):
        self.spec = spec
        self.source = spec.source
        self.params = dict(params or {})
        self.diagnostics: list[Diagnostic] = []
        self.lets: list[str] = []
        self.env: dict[str, Any] = {}
        self.seed = 0
        self.counts: dict[int, int] = {}  # id(ensemble statement) -> members
        self.optimizer: tuple[str, dict[str, Any]] | None = None
        self.inputs: list[A.InputStmt] = []
        self.used: set[str] = set()  # every name an expression reads
        # A sweep (`ensemble ... vary`, `ensemble grid`): its varied names
        # (`seed` aside), where each is read, and once evaluated its members.
        self.varied: dict[str, A.Vary] = {}
        self.varied_used: set[str] = set()
        # The varied names that rules changing the model read (`init`,
        # `scale`): members that agree on them (and on their seed) are alike.
        self.varied_model: set[str] = set()
        self.sweep: Sweep | None = None
        self.sweep_optimizers: list[tuple[str, dict[str, Any]]] = []
        # The mesh: given from outside (`--mesh`, a `MeshOverride`), else the
        # spec's `mesh` directive; and every mesh axis the spec names, with
        # where (`shard` specs, `over`), checked against it at the end.
        self.mesh_override = mesh
        self.mesh: A.MeshStmt | None = None
        self.axis_uses: list[tuple[str, A.Span]] = []

    def error(self, code: str, span: A.Span | None, **fields):
        """Reports `code` at `span`, its record's templates filled with
        `fields`. Its severity is the code's: a note (`I`) is what a check
        without the model cannot decide, shown by `eqxform check` and editors."""
        self.diagnostics.append(report(code, span=span, source=self.source, **fields))

    warn = note = error

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def run(self) -> list[Diagnostic]:
        """Every diagnostic, warnings included (their severity says which)."""
        self.overrides()
        self.statements()
        # A varied name that no expression reads makes every member the same.
        for name, vary in self.varied.items():
            if name not in self.varied_used and vary.value is not None:
                self.error("E170", vary.name_span, name=name)
        if not self.errors:
            self.evaluate()
        # Dead text is worth a warning only once the spec has no errors: a
        # `let` that is misspelt, reserved or fails is reported as that.
        if not self.errors:
            self.unused_lets()
        return self.diagnostics

    def unused_lets(self):
        """A `let` that no expression reads is dead text, or a misspelling of
        the name a rule meant to use (which then fails as unknown)."""
        for stmt in self.spec.statements:
            if isinstance(stmt, A.LetStmt) and stmt.name not in self.used:
                self.warn(
                    "W205",
                    stmt.name_span,
                    name=stmt.name,
                    outside=" (it is set from outside with `--set`)"
                    if stmt.name in self.params
                    else "",
                )

    def overrides(self):
        """Every `--set NAME` names a `let` of the spec, with a constant value."""
        let_names = [s.name for s in self.spec.statements if isinstance(s, A.LetStmt)]
        for key, value in self.params.items():
            problem = override_problem(value)
            if problem is not None:
                self.diagnostics.append(
                    report("E431", file=self.source.name, key=key, problem=problem)
                )
            if key not in let_names:
                hint = _hint(key, let_names, "its `let` names") if let_names else None
                help = hint or "the spec defines no `let` names"
                self.diagnostics.append(report("E116", file=self.source.name, help=help, key=key))

    def evaluate(self):
        """The values of the directives, overrides applied."""
        env = self.env
        deferred: list[A.Stmt] = []
        sweeping = any(isinstance(s, A.EnsembleStmt) and s.is_sweep for s in self.spec.statements)
        for stmt in self.spec.statements:
            if sweeping and isinstance(stmt, (A.OptimizerStmt, A.Rule)):
                # They read the varied names: evaluated per member below.
                deferred.append(stmt)
                continue
            try:
                if isinstance(stmt, A.LetStmt):
                    env[stmt.name] = (
                        self.params[stmt.name]
                        if stmt.name in self.params
                        else evaluate(stmt.value, env)
                    )
                elif isinstance(stmt, A.SeedStmt):
                    value = evaluate(stmt.value, env)
                    if not is_whole(value, 0):
                        self.error("E113", stmt.value.span, value=value)
                    elif not is_seed(value):
                        self.error("E113", stmt.value.span, variant="at_most", value=value)
                    else:
                        self.seed = value
                elif isinstance(stmt, A.EnsembleStmt) and stmt.grid:
                    self.evaluate_sweep(stmt, None)
                elif isinstance(stmt, A.EnsembleStmt):
                    value = evaluate(stmt.count, env)
                    if not is_whole(value, 1):
                        self.error("E134", stmt.count.span, value=value)
                    elif value > L.MAX_COUNT:
                        self.error("E155", stmt.count.span, value=value, max_count=L.MAX_COUNT)
                    else:
                        self.counts[id(stmt)] = value
                        if stmt.is_sweep:
                            self.evaluate_sweep(stmt, value)
                elif isinstance(stmt, A.OptimizerStmt):
                    self.optimizer = self.optimizer_call(stmt.value)
                elif isinstance(stmt, A.Rule):
                    self.rule_arguments(stmt)
            except EvalError as e:
                self.diagnostics.append(replace(e.diagnostic, source=self.source))
        if deferred and self.sweep is not None:
            self.evaluate_members(deferred)

    def evaluate_sweep(self, stmt: A.EnsembleStmt, count: int | None):
        sweep, problems = evaluate_sweep(stmt, self.env, count, self.source)
        self.diagnostics += problems
        if sweep is None:
            return
        self.sweep = replace(
            sweep, model_names=tuple(n for n in sweep.bound if n in self.varied_model)
        )
        self.counts[id(stmt)] = sweep.count

    def evaluate_members(self, statements: list[A.Stmt]):
        """The optimiser and the rules' arguments, evaluated for each member of
        the sweep. A value that does not fit where it goes (a negative learning
        rate) is reported at the varied value that gives it, naming the member."""
        sweep, base = self.sweep, self.env
        assert sweep is not None
        reported: set[tuple[str, str]] = set()
        for k in range(sweep.count):
            self.env = sweep.env(base, k)
            before = len(self.diagnostics)
            optimizer = None
            for stmt in statements:
                try:
                    if isinstance(stmt, A.OptimizerStmt):
                        optimizer = self.optimizer_call(stmt.value)
                    else:
                        self.rule_arguments(stmt)
                except EvalError as e:
                    self.diagnostics.append(replace(e.diagnostic, source=self.source))
            found = self.diagnostics[before:]
            del self.diagnostics[before:]
            for d in found:
                vary = self.culprit(d.span)
                seen = (d.code, "" if vary is None else vary.name)
                if seen in reported:
                    continue
                reported.add(seen)
                if vary is None:
                    self.diagnostics.append(d)
                    continue
                self.error(
                    "E173",
                    vary.value.span if vary.value is not None else vary.span,
                    k=k,
                    name=vary.name,
                    render_members=render(sweep.members[k][vary.name]),
                    message=d.message,
                    value=f"{d.help}; " if d.help else "",
                    line=d.span.line,
                )
            if optimizer is not None:
                self.sweep_optimizers.append(optimizer)
        self.env = base
        if self.sweep_optimizers:
            self.optimizer = self.sweep_optimizers[0]

    def culprit(self, span: A.Span | None) -> A.Vary | None:
        """The varied name read inside `span`, if any."""
        if span is None:
            return None
        for stmt in self.spec.statements:
            exprs: list[A.Expr] = []
            if isinstance(stmt, A.OptimizerStmt):
                exprs = [stmt.value]
            elif isinstance(stmt, A.Rule):
                exprs = [a.arg for a in stmt.actions if a.arg is not None]
            for expr in exprs:
                for node in walk(expr):
                    if (
                        isinstance(node, A.Name)
                        and node.id in self.varied
                        and _inside(node.span, span)
                    ):
                        return self.varied[node.id]
        return None

    def optimizer_call(self, expr: A.Expr) -> tuple[str, dict[str, Any]]:
        if isinstance(expr, A.Name):
            return expr.id, {}
        assert isinstance(expr, A.Call)
        positional = N.OPTIMIZERS[expr.callee].positional
        kinds = argument_kinds("optimiser", expr.callee)
        values = {}
        for i, a in enumerate(expr.args):
            param = a.name or positional[i]
            value = evaluate(a.value, self.env)
            self.argument(f"`{param}` of `{expr.callee}`", value, kinds.get(param), a.value)
            values[param] = as_argument(value, kinds.get(param))
        return expr.callee, values

    def argument(self, what: str, value: Any, kind: Any, expr: A.Expr):
        """Reports `value` (of the argument `expr`) where it is not of `kind`."""
        bad = argument_diagnostic(what, value, kind, expr.span, self.source)
        if bad is not None:
            self.diagnostics.append(bad)

    def rule_arguments(self, rule: A.Rule):
        """The types of a rule's arguments that need no match (`stddev=0.02`);
        those that read the match (`stddev=1/sqrt(fan_in)`) are checked per
        match, when the rule runs or is planned."""
        for action in rule.actions:
            arg = action.arg
            if arg is None:
                continue
            info = N.ACTIONS.get(action.name)
            if info is not None and info.value is not None:
                if not _reads_match(arg):
                    self.argument(f"`{action.name}`", evaluate(arg, self.env), info.value, arg)
                continue
            if info is not None and info.kinds and isinstance(arg, A.Call):
                kinds = dict(info.kinds)
                for a in arg.args:
                    value = bare_word(a.value, kinds.get(a.name))
                    if isinstance(value, A.Expr) and _reads_match(value):
                        continue
                    self.argument(
                        f"`{a.name}` of `{action.name}`",
                        value if isinstance(value, str) else evaluate(value, self.env),
                        kinds.get(a.name),
                        a.value,
                    )
            kind = {"init": "initialiser", "wrap": "wrapper"}.get(action.name)
            if kind is None or not isinstance(arg, A.Call):
                continue
            signature = (
                R.initializer_signature(arg.callee)
                if kind == "initialiser"
                else R.wrapper_signature(arg.callee)
            )
            if signature is None:
                continue
            positional = signature.positional
            kinds = argument_kinds(kind, arg.callee)
            for i, a in enumerate(arg.args):
                if _reads_match(a.value) or (a.name is None and i >= len(positional)):
                    continue
                param = a.name or positional[i]
                what = f"`{param}` of `{arg.callee}`"
                self.argument(what, evaluate(a.value, self.env), kinds.get(param), a.value)

    def statements(self):
        seen: dict[type, A.Stmt] = {}
        self.sweep_names()
        for stmt in self.spec.statements:
            # A directive's statement is its word's (`ModelStmt`: `model`).
            word = type(stmt).__name__.removesuffix("Stmt").lower()
            if word in N.DIRECTIVES and N.DIRECTIVES[word].once:
                first = seen.get(type(stmt))
                if first is not None:
                    self.error("E109", stmt.span, word=word, line=first.span.line)
                seen.setdefault(type(stmt), stmt)
            getattr(self, "check_" + type(stmt).__name__)(stmt)
        self.mesh_axes()
        if A.OptimizerStmt not in seen:
            for rule in self.spec.rules:
                for action in rule.actions:
                    if action.name in N.ACTIONS and N.ACTIONS[action.name].changes == "optimiser":
                        self.error("E123", action.name_span, name=action.name)

    # ---- statements ------------------------------------------------------

    def sweep_names(self):
        """The varied names of the (first) sweep line, known to every line
        before and after it; a name that is also a `let` or a reserved word
        is refused."""
        sweeps = [s for s in self.spec.statements if isinstance(s, A.EnsembleStmt) and s.is_sweep]
        if not sweeps:
            return
        lets = {s.name for s in self.spec.statements if isinstance(s, A.LetStmt)}
        reserved = RESERVED | {MEMBER, *SPREADS}
        for vary in sweeps[0].vary:
            if vary.name == SEED or vary.name in self.varied:
                continue
            if vary.name in lets:
                self.error("E175", vary.name_span, name=vary.name)
            elif vary.name in reserved:
                self.error("E175", vary.name_span, variant="reserved", name=vary.name)
            else:
                self.varied[vary.name] = vary

    def check_ModelStmt(self, stmt: A.ModelStmt):
        self.constructor_call(stmt.call, set(self.lets))

    def check_SeedStmt(self, stmt: A.SeedStmt):
        self.names(stmt.value, set(self.lets), "a `seed`")

    def check_LetStmt(self, stmt: A.LetStmt):
        if stmt.name in RESERVED:
            self.error("E118", stmt.name_span, name=stmt.name)
        elif stmt.name in self.lets:
            self.error("E109", stmt.name_span, variant="defined", name=stmt.name)
        self.names(stmt.value, set(self.lets), "a `let`")
        self.lets.append(stmt.name)

    def check_Rule(self, rule: A.Rule):
        self.selector(rule.selector)
        context = set(self.lets) | set(N.CONTEXT_NAMES)
        if rule.filter is not None:
            self.names(rule.filter, context, "an `if` filter")
        expect = rule.expect
        if expect is not None and not is_whole(expect.count, 0):
            self.error("E121", expect.span, text=expect.text)
        elif expect is not None and expect.op not in ("==", ">=", "<="):
            self.error("E121", expect.span, variant="count", op=expect.op, text=expect.text)
        for action in rule.actions:
            varied = set(self.varied) if action.name in SWEEP_ACTIONS else set()
            info = N.ACTIONS.get(action.name)
            if info is not None and info.changes == "optimiser":
                self.action(action, context | varied)
                continue
            used, self.varied_used = self.varied_used, set()
            self.action(action, context | varied)
            self.varied_model |= self.varied_used
            self.varied_used |= used

    # ---- weights from a checkpoint (the patterns; the checkpoint and the
    # model are held to them when both are known, in `_weights.py`)

    def check_WeightsStmt(self, stmt: A.WeightsStmt):
        if not stmt.path.value.strip():
            self.error("E160", stmt.path.span)

    def check_MapStmt(self, stmt: A.MapStmt):
        self.diagnostics += read_map(stmt, self.source)[1]

    def check_SkipStmt(self, stmt: A.SkipStmt | A.KeepStmt):
        self.diagnostics += read_globs(stmt, self.source)[1]

    check_KeepStmt = check_SkipStmt

    def check_OptimizerStmt(self, stmt: A.OptimizerStmt):
        self.named_call(
            stmt.value,
            "optimiser",
            N.OPTIMIZERS,
            set(self.lets) | set(self.varied),
            "E124",
            "e.g. `optimizer adamw(learning_rate=1e-3)`",
            _listing(N.OPTIMIZERS),
        )

    def check_EnsembleStmt(self, stmt: A.EnsembleStmt):
        if stmt.count is not None:
            self.names(stmt.count, set(self.lets), "`ensemble`")
        seen: set[str] = set()
        for vary in stmt.vary:
            value = vary.value
            if vary.name in seen:
                self.error("E175", vary.name_span, variant="varies_twice", name=vary.name)
            seen.add(vary.name)
            if value is None and vary.name != SEED:
                variant = "grid" if stmt.grid else None
                self.error("E176", vary.span, variant=variant, name=vary.name)
            if value is None:
                continue
            spread = isinstance(value, A.Call) and value.callee in SPREADS
            for v in [a.value for a in value.args] if spread else [value]:
                self.names(v, set(self.lets) | {MEMBER}, "a varied value")
        if stmt.over is not None:
            self.axis_uses.append((stmt.over.axis, stmt.over.axis_span))

    def check_MeshStmt(self, stmt: A.MeshStmt):
        self.mesh = self.mesh or stmt
        seen: set[str] = set()
        for axis in stmt.axes:
            if axis.name in seen:
                self.error("E193", axis.name_span, name=axis.name)
            seen.add(axis.name)
            if axis.size != -1 and axis.size < 1:
                self.error("E192", axis.span, name=axis.name, size=axis.size)
        rest = [a for a in stmt.axes if a.size == -1]
        if len(rest) > 1:
            self.error("E192", rest[1].span, variant="only_one")

    def mesh_axes(self):
        """Every mesh axis a `shard` spec or an `over` names is an axis of the
        mesh; naming one needs a mesh."""
        if not self.axis_uses:
            return
        names: tuple[str, ...]
        if self.mesh_override is not None:
            given = self.mesh_override
            names, where = given.names, f"`{given.origin} {given.text()}`"
        elif self.mesh is not None:
            names = tuple(a.name for a in self.mesh.axes)
            where = f"the `mesh` on line {self.mesh.span.line}"
        else:
            name, span = self.axis_uses[0]
            self.error("E191", span, name=name)
            return
        for name, span in self.axis_uses:
            if name not in names:
                help = _hint(name, names, "the mesh's axes")
                self.error("E190", span, help=help, name=name, where=where)

    def check_StackStmt(self, stmt: A.StackStmt):
        self.selector(stmt.selector)
        if stmt.mode not in ("scan", "vmap"):
            self.error(
                "E135",
                stmt.mode_span,
                mode=stmt.mode,
                hint=did_you_mean(stmt.mode, ("scan", "vmap")) or "",
            )
        seen: set[str] = set()
        for option in stmt.options:
            if option.name in seen:
                self.error("E114", option.span, name=option.name)
            seen.add(option.name)
            if option.name in ("count", "unroll"):  # a number of layers, at least one
                count = option.name == "count"
                if not isinstance(option.value, int) or option.value < 1:
                    if count:
                        self.error("E142", option.span, value=option.value)
                    else:
                        self.error("E136", option.span, variant="unroll_needs")
                elif option.value > L.MAX_COUNT:
                    self.error(
                        "E155",
                        option.span,
                        variant="stack_layers" if count else "unroll",
                        value=option.value,
                        max_count=L.MAX_COUNT,
                    )
            elif option.name in N.STACK_OPTIONS and option.name not in N.STACK_NUMBERED:
                if option.value is not None:
                    self.error("E136", option.span, name=option.name)
            elif option.name == "over":
                assert option.over is not None
                self.axis_uses.append((option.over.axis, option.over.axis_span))
            else:
                self.error(
                    "E136",
                    option.span,
                    variant="unknown_stack",
                    name=option.name,
                    hint=did_you_mean(option.name, N.STACK_OPTIONS) or "",
                    options=", ".join(
                        f"`{o} K`" if o in N.STACK_NUMBERED else f"`{o}`" for o in N.STACK_OPTIONS
                    ),
                )

    def check_InputStmt(self, stmt: A.InputStmt):
        if stmt.dtype not in N.INPUT_DTYPES:
            self.error(
                "E127",
                stmt.dtype_span,
                help=did_you_mean(stmt.dtype, N.INPUT_DTYPES)
                or "e.g. `input f32[3,224,224]` or `input i32[128]`",
                dtype=stmt.dtype,
            )
        for d in stmt.shape:
            if not is_whole(d, 0):
                self.error("E127", stmt.span, variant="dimension", d=d)
                break
        else:
            size = math.prod(stmt.shape)
            budget = byte_budget()
            if any(d > L.MAX_DIMENSION for d in stmt.shape):
                self.error(
                    "E157", stmt.span, describe=stmt.describe(), max_dimension=L.MAX_DIMENSION
                )
            elif budget is not None and size * 8 > budget:
                self.error(
                    "E157",
                    stmt.span,
                    variant="budget",
                    describe=stmt.describe(),
                    format_bytes_value=format_bytes(size * 8),
                    format_bytes_budget=format_bytes(budget),
                    max_bytes_env=L.MAX_BYTES_ENV,
                )
        self.inputs.append(stmt)

    def check_UnstackStmt(self, stmt: A.UnstackStmt):
        self.selector(stmt.selector)

    # ---- parts -----------------------------------------------------------

    def selector(self, selector: A.Selector):
        known = R.type_names()
        for path in selector.paths + selector.excluded:
            for step in path.steps:
                if (
                    isinstance(step, A.NameStep)
                    and step.is_type
                    and not step.is_qualified
                    and step.name not in known
                ):
                    # Any class of the model's own tree is a type too, and only
                    # the model knows those (`MegalodonAttention`): without it,
                    # an unknown name is no error, only a note that the model
                    # decides (E104 there, with the model's classes to suggest).
                    hint = did_you_mean(step.name, known)
                    self.note(
                        "I104",
                        step.span,
                        name=step.name,
                        meant=f"if you meant a known type, {hint} " if hint else "",
                    )
                if isinstance(step, A.SliceStep) and step.step == 0:
                    self.error("E122", step.span)

    def action(self, action: A.Action, context: set[str]):
        name = action.name
        info = N.ACTIONS.get(name)
        if info is None:
            self.error("E101", action.name_span, help=_hint(name, N.ACTIONS, "actions"), name=name)
            return
        arg = action.arg
        if info.arg == "spec":
            self.shard_spec(action)
            return
        if info.arg == "none":
            if arg is not None:
                self.error("E112", arg.span, name=name)
            return
        if arg is None and info.arg == "keywords":
            return  # every argument has a default
        if arg is None:
            self.error("E112", action.span, variant="needs", name=name, example=info.example)
            return
        if info.arg == "keywords":
            self.keywords(action, info, context)
        elif info.arg == "initializer":
            self.initializer(arg, context)
        elif info.arg == "wrapper":
            signatures = {n: R.wrapper_signature(n) for n in R.wrapper_names()}
            self.named_call(
                arg,
                "wrapper",
                signatures,
                context,
                "E125",
                "e.g. `wrap symmetric` or `wrap positive(minimum=0.01)`",
                _listing(sorted(signatures)),
            )
        elif info.arg == "constructor":
            if isinstance(arg, A.Name) and arg.id in N.FUNCTIONS:
                return
            if not isinstance(arg, A.Call):
                self.error("E112", arg.span, variant="replace_needs")
                return
            self.constructor_call(arg, set(self.lets))
        elif info.arg == "dtype":
            if not isinstance(arg, A.Name) or arg.id not in N.DTYPES:
                word = arg.id if isinstance(arg, A.Name) else self.source.snippet(arg.span)
                self.error("E111", arg.span, help=_hint(word, N.DTYPES, "dtypes"), word=word)
        else:
            self.names(arg, context, f"`{name}`")

    def keywords(self, action: A.Action, info: N.Action, context: set[str]):
        """`lora(rank=8, alpha=16)`: the keyword arguments of the action's record.
        An argument of a few words (`remat(policy=dots_saveable)`) is one of
        them, bare or quoted."""
        name, arg = action.name, action.arg
        if not (isinstance(arg, A.Call) and arg.callee == name and arg.span == action.span):
            self.error("E180", arg.span, name=name, example=info.example)
            return
        self.arguments(name, "action", info.keywords, arg.args, arg.span)
        for a in arg.args:
            kind = dict(info.kinds).get(a.name)
            value = a.value
            if isinstance(bare_word(value, kind), str):
                continue
            if isinstance(kind, tuple) and isinstance(value, A.Name) and value.id not in context:
                self.error(
                    "E152",
                    value.span,
                    variant="choice",
                    help=did_you_mean(value.id, kind),
                    name=a.name,
                    name2=name,
                    listing=_listing(kind),
                    id=value.id,
                    example=info.example,
                )
                continue
            self.names(value, context, f"a `{name}` argument")

    def shard_spec(self, action: A.Action):
        """`shard (AXIS | none, ...)`: names, `none`, or tuples of names."""
        arg = action.arg
        example = "e.g. `shard (none, model)`, or `shard ((data, model), none)`"
        if arg is None:
            self.error("E194", action.span, help=example)
            return

        def dim(e: A.Expr, top: bool) -> bool:
            if isinstance(e, A.Name):
                return True
            if isinstance(e, A.TupleExpr) and not top:
                if all(isinstance(i, A.Name) and i.id != "none" for i in e.items):
                    return True
            self.error(
                "E194",
                e.span,
                variant="dimension",
                text=self.source.snippet(e.span),
                example=example,
            )
            return False

        items = arg.items if isinstance(arg, A.TupleExpr) else (arg,)
        if not all([dim(i, not isinstance(arg, A.TupleExpr)) for i in items]):
            return
        seen: set[str] = set()
        for name in walk(arg):  # the axes named, `none` aside
            if not isinstance(name, A.Name) or name.id == "none":
                continue
            if name.id in seen:
                self.error("E232", name.span, id=name.id)
            seen.add(name.id)
            self.axis_uses.append((name.id, name.span))

    def named_call(self, arg, kind, signatures, context, code, example, listing):
        """`NAME` or `NAME(ARGS)` from a table of signatures."""
        if isinstance(arg, A.Name):
            name, span, args = arg.id, arg.span, ()
        elif isinstance(arg, A.Call) and not arg.is_module_path:
            name, span, args = arg.callee, arg.callee_span, arg.args
        else:
            self.error("E112", arg.span, variant="expected_name", help=example, kind=kind)
            return
        signature = signatures.get(name)
        if signature is None:
            self.error(code, span, help=did_you_mean(name, signatures), name=name, names=listing)
            return
        self.arguments(name, kind, signature, args, arg.span)
        for a in args:
            self.names(a.value, context, f"a {kind} argument")

    def initializer(self, arg: A.Expr, context: set[str]):
        if isinstance(arg, A.Name):
            name, span, args = arg.id, arg.span, ()
        elif isinstance(arg, A.Call) and not arg.is_module_path:
            name, span, args = arg.callee, arg.callee_span, arg.args
        else:
            self.error("E112", arg.span, variant="init_needs")
            return
        signature = R.initializer_signature(name)
        if signature is None:
            hint = did_you_mean(name, R.initializer_names())
            self.error(
                "E102",
                span,
                help=hint
                or "see `jax.nn.initializers`; add your own with `eqxform.register_initializer`",
                name=name,
            )
            return
        self.arguments(name, "initialiser", signature, args, arg.span)
        for a in args:
            self.names(a.value, context, "an initialiser argument")

    def constructor_call(self, call: A.Call, names: set[str]):
        if not call.is_module_path:
            signature = R.constructor_signature(call.callee)
            if signature is None:
                hint = did_you_mean(call.callee, R.constructor_names())
                self.error(
                    "E103",
                    call.callee_span,
                    help=hint
                    or "constructors are the `equinox.nn` classes, the example models, and "
                    "those registered with `eqxform.register_constructor`",
                    callee=call.callee,
                )
            else:
                self.arguments(call.callee, "constructor", signature, call.args, call.span)
                positional = [p for p in signature.positional if p != "key"]
                for i, arg in enumerate(call.args):
                    value = arg.value
                    negative = isinstance(value, A.Unary) and value.op == "-"
                    if negative:
                        value = value.operand
                    if isinstance(value, A.Number):
                        name = arg.name or (positional[i] if i < len(positional) else None)
                        number = -value.value if negative else value.value
                        bad = constructor_limit(
                            call.callee, name, number, arg.value.span, self.source
                        )
                        if bad is not None:
                            self.diagnostics.append(bad)
        for arg in call.args:
            self.constructor_arg(arg.value, names)

    def constructor_arg(self, expr: A.Expr, names: set[str]):
        if isinstance(expr, A.Call) and expr.callee not in N.EXPR_FUNCTIONS:
            self.constructor_call(expr, names)
        elif isinstance(expr, A.ListExpr):
            for item in expr.items:
                self.constructor_arg(item, names)
        else:
            self.names(expr, names, "a constructor argument")

    def arguments(
        self,
        name: str,
        kind: str,
        signature: N.Signature,
        args: Iterable[A.Arg],
        span: A.Span,
    ):
        args = list(args)
        suggested: set[str] = set()
        positional = [a for a in args if a.name is None]
        params = [p for p in signature.positional if p != "key"]
        given = dict(zip(params, positional))
        if len(positional) > len(params) and not signature.varargs:
            extra = positional[len(params)]
            self.error(
                "E115",
                extra.span,
                name=name,
                names=_listing((p for p in signature.names if p != "key"), "="),
                len_params=len(params),
                s="s" if len(params) != 1 else "",
                len_positional=len(positional),
            )
        for arg in args:
            if arg.name is None:
                continue
            if arg.name == "key" and kind == "constructor":
                self.error("E119", arg.name_span)
                continue
            if arg.name in given:
                self.error("E114", arg.name_span or arg.span, variant="argument", name=arg.name)
                continue
            if arg.name not in signature.names and not signature.varkw:
                names = [n for n in signature.names if n != "key"]
                hint = did_you_mean(arg.name, names)
                suggested.update(suggest(arg.name, names)[:1])
                self.error(
                    "E106",
                    arg.name_span or arg.span,
                    help=hint
                    or f"`{name}` takes "
                    + (_listing(n for n in signature.names if n != "key") or "no arguments"),
                    kind=kind,
                    name=name,
                    name2=arg.name,
                )
                continue
            given[arg.name] = arg
        # A misspelt argument is reported once, as misspelt, not also as missing.
        missing = [
            p for p in signature.required if p != "key" and p not in given and p not in suggested
        ]
        if missing:
            self.error(
                "E107",
                span,
                kind=kind,
                name=name,
                missing=_listing(missing),
                additions=_listing(missing, "=..."),
            )

    def names(self, expr: A.Expr, allowed: set[str], where: str):
        for node in walk(expr):
            if isinstance(node, A.TupleExpr):
                self.error("E194", node.span, variant="tuple")
                return
            if isinstance(node, A.Name) and node.id in self.varied:
                self.varied_used.add(node.id)
                if node.id not in allowed:
                    self.error("E174", node.span, id=node.id, where=where)
            elif isinstance(node, A.Name):
                self.used.add(node.id)
                known = node.id in allowed or node.id in N.CONSTANTS
                known = known or node.id in N.FUNCTIONS or node.id in N.DTYPES
                if not known:
                    hint = did_you_mean(node.id, allowed | set(N.CONSTANTS))
                    in_scope = sorted(allowed)
                    self.error(
                        "E105",
                        node.span,
                        help=hint
                        or (
                            f"names known in {where}: " + _listing(in_scope)
                            if in_scope
                            else f"define it above this line with `let {node.id} = ...`"
                        ),
                        id=node.id,
                    )
            elif isinstance(node, A.Call) and node.callee not in N.EXPR_FUNCTIONS:
                help = _hint(node.callee, N.EXPR_FUNCTIONS, "functions")
                self.error("E110", node.callee_span, help=help, callee=node.callee)


def _inside(inner: A.Span, outer: A.Span) -> bool:
    starts = (outer.line, outer.column) <= (inner.line, inner.column)
    return starts and (inner.end_line, inner.end_column) <= (outer.end_line, outer.end_column)


def _reads_match(expr: A.Expr) -> bool:
    """Does `expr` read a match's properties (`fan_in`, `shape`, ...)?"""
    return any(isinstance(e, A.Name) and e.id in N.CONTEXT_NAMES for e in walk(expr))


def override_problem(value: Any, depth: int = 0) -> str | None:
    """What is wrong with a `let` value given from outside, if anything."""
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str) and len(value) > L.MAX_SEQUENCE_LENGTH:
            return f"is a string of more than {L.MAX_SEQUENCE_LENGTH:,} characters"
        return None
    if isinstance(value, int):
        return (
            f"has more than {L.MAX_INT_BITS} bits" if value.bit_length() > L.MAX_INT_BITS else None
        )
    if isinstance(value, float):
        return None if math.isfinite(value) else f"is `{value}`, not a finite number"
    if isinstance(value, (list, tuple)):
        if len(value) > L.MAX_SEQUENCE_LENGTH or depth > 8:
            return "is a list too long or too deeply nested"
        for item in value:
            problem = override_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    return f"is a `{type(value).__name__}`, not a constant"


def check(
    spec: A.Spec, params: Mapping[str, Any] | None = None, mesh: Any = None
) -> list[Diagnostic]:
    """Every model-independent diagnostic of `spec` (with `mesh`, a mesh given
    from outside: anything with `names`, `origin` and `text()`)."""
    return Checker(spec, params, mesh).run()
