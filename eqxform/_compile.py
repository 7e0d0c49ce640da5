"""AST -> Program: the passes of a checked spec, as plain data.

`compile` reads and parses a spec, runs the checker (which evaluates the
directives with the caller's overrides) and makes one pass per action of each
rule and one per structural directive. Nothing here runs a pass.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from . import _ast as A
from . import _names as N
from ._build import import_allowed
from ._check import USAGE_CODES, Checker
from ._diagnostics import Diagnostic, position, report
from ._errors import SpecError, UsageError
from ._hashing import stable_hash
from ._mesh import MeshSpec, as_mesh_spec
from ._parse import parse_collect
from ._passes import (
    PASSES,
    EnsemblePass,
    Pass,
    PlacePass,
    ShardRule,
    StackPass,
    UnstackPass,
)
from ._passes._shard import spec_dims
from ._program import Group, Program
from ._source import read_spec
from ._values import allowed
from ._wnames import weight_rules


def _normalise(text: str) -> str:
    # No whitespace at all: what identifies a rule's draws is its tokens, not
    # how they are spaced, so that `eqxform fmt` changes no number a spec draws.
    return re.sub(r"\s+", "", text)


def compile(
    spec: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    allow: Iterable[str] = (),
    inputs: Iterable[str] | None = None,
    mesh: Any = None,
) -> Program:
    """Read, parse and check a spec; return its `Program`.

    **Arguments:**

    - `spec`: the spec's text as a `str`, or a spec file as a path object
      (`pathlib.Path`, any `os.PathLike`). A `str` is never read as a file:
      one that looks like a path (`"specs/lora.eqx"`) is refused with `E435`,
      and a file that is not a spec with `E402`, its contents not shown.
    - `params`: values for the spec's `let` names (as `--set NAME=VALUE`).
    - `name`: the name diagnostics show for text given directly.
    - `allow`: top-level packages whose `package.module:function` constructors
      may be imported.
    - `inputs`: the model's inputs (`["f32[3,224,224]"]`), in place of the
      spec's `input` lines (as `--input` on the command line).
    - `mesh`: the device mesh, in place of the spec's `mesh` directive (as
      `--mesh` on the command line): `"data=2,model=4"`, `{"data": 2}`, or a
      `jax.sharding.Mesh`.

    **Returns:** a `Program`. Raises `SpecError` with every diagnostic of the
    spec at once when it has errors; its warnings (a `let` never used, say)
    are in `program.warnings` and in its plan.

    ```python
    program = eqxform.compile("where Linear.weight -> init he_normal")
    model = program.apply(model, key=jax.random.key(0))
    program = eqxform.compile(pathlib.Path("specs/lora.eqx"), params={"rank": 16})
    ```
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise _wrong_type("spec", spec, "spec text (a `str`) or a `pathlib.Path`")
    if params is not None and not (
        isinstance(params, Mapping) and all(isinstance(k, str) for k in params)
    ):
        raise _wrong_type("params", params, "a mapping from `let` names to values")
    allow = allowed(allow)
    if inputs is not None:
        inputs = _strings("inputs", inputs, 'input types such as `"f32[3,224,224]"`')
    if name is not None and not isinstance(name, str):
        raise _wrong_type("name", name, "a string")
    text, name = read_spec(spec, name)
    program, diagnostics = compile_collect(text, name, params, allow, inputs, mesh)
    if diagnostics:
        raise SpecError(diagnostics)
    assert program is not None
    return program


def _wrong_type(argument: str, value: Any, expected: str) -> UsageError:
    return UsageError(
        report("E434", argument=argument, expected=expected, name=type(value).__name__)
    )


def _strings(argument: str, value: Any, expected: str) -> tuple[str, ...]:
    """An argument that is a list of strings (a lone string is a mistake: it
    would be read letter by letter)."""
    items = None if isinstance(value, str) or not isinstance(value, Iterable) else tuple(value)
    if items is None or not all(isinstance(v, str) for v in items):
        raise _wrong_type(argument, value, f"a list of {expected}")
    return items


def compile_collect(
    text: str,
    name: str,
    params: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
    inputs: Iterable[str] | None = None,
    mesh: Any = None,
    cache: dict | None = None,
) -> tuple[Program | None, list[Diagnostic]]:
    """Like `compile`, but returns the diagnostics instead of raising; `cache`
    goes to `parse_collect` (the language server parses edits line by line)."""
    spec, diagnostics = parse_collect(text, name, cache)
    mesh = as_mesh_spec(mesh)
    checker = Checker(spec, params, mesh)
    return compile_checked(spec, checker, diagnostics + checker.run(), allow, inputs, mesh)


def compile_checked(
    spec: A.Spec,
    checker: Checker,
    diagnostics: list[Diagnostic],
    allow: Iterable[str] = (),
    inputs: Iterable[str] | None = None,
    mesh: MeshSpec | None = None,
) -> tuple[Program | None, list[Diagnostic]]:
    """`compile_collect` of a parsed spec whose `checker` has run (the
    language server checks each text once); `diagnostics` are those of the
    parse and the check."""
    # The checker's notes (a type name left to the model) are for `eqxform
    # check` and editors to show; a program is resolved against its model.
    diagnostics = [d for d in diagnostics if d.severity != "note"]
    if inputs is not None:
        bad = _override_inputs(checker, list(inputs))
        if bad:
            raise UsageError(bad)
    usage = [d for d in diagnostics if d.code in USAGE_CODES]
    if usage:
        raise UsageError(usage)
    if any(d.severity == "error" for d in diagnostics):
        # A `let` seems unused when the line that used it failed to parse:
        # dead text is worth a warning only once the spec has no errors.
        diagnostics = [d for d in diagnostics if d.code != "W205"]
        return None, sorted(diagnostics, key=position)
    # Warnings do not stop the compiler: the program carries them, and its
    # plan reports them with its own.
    program = (
        _program(spec, checker, tuple(allow), mesh)
        if checker.sweep is None
        else _sweep_program(spec, checker, tuple(allow), mesh)
    )
    return replace(program, warnings=tuple(sorted(diagnostics, key=position))), []


def compile_without_broken_rules(
    text: str,
    name: str,
    diagnostics: list[Diagnostic],
    params: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
    inputs: Iterable[str] | None = None,
) -> Program | None:
    """The program of `text` without the rules that `diagnostics` (its
    model-free errors) are about, so that the model-aware checks can run on
    the others at once; None when an error lies elsewhere (a `let`, the
    `model` line, a syntax error) or in a rule whose absence could change
    what later rules match (a `replace`, a `stack`, an unknown action)."""
    spec, _ = parse_collect(text, name)
    rules = {s.span.line: s for s in spec.statements if isinstance(s, A.Rule)}
    broken = set()
    for d in diagnostics:
        if d.severity != "error":
            continue
        rule = rules.get(d.span.line) if d.span is not None else None
        # A rule of actions that leave the model's structure, and what later
        # selectors see, as they are can be left out without changing what
        # the rules after it match.
        if rule is None or not all(
            a.name in N.ACTIONS and N.ACTIONS[a.name].transparent for a in rule.actions
        ):
            return None
        broken.add(rule.span.line)
    lines = text.split("\n")
    for line in broken:
        lines[line - 1] = ""
    try:
        program, more = compile_collect("\n".join(lines), name, params, allow, inputs)
    except UsageError:
        return None
    return program if not more else None


def _override_inputs(checker: Checker, inputs: list[str]) -> list[Diagnostic]:
    """`--input` values in place of the spec's `input` lines."""
    text = "".join(f"input {i}\n" for i in inputs)
    spec, diagnostics = parse_collect(text, "--input")
    given = Checker(spec)
    diagnostics += given.run()
    checker.inputs = given.inputs
    return diagnostics


def _changes(action: A.Action) -> str:
    """What an action of a checked spec changes: its record's `changes`."""
    return N.ACTIONS[action.name].changes


def _without_shard(rule: A.Rule) -> str:
    """A rule's identity, its `shard` actions left out: placing arrays
    changes no number a rule draws."""
    text = rule.text
    cuts = [
        a.span
        for a in rule.actions
        if _changes(a) == "placement" and a.span.line == rule.span.line == a.span.end_line
    ]
    if not cuts:
        return _normalise(text)
    for span in sorted(cuts, key=lambda s: -s.column):
        start, end = span.column - rule.span.column, span.end_column - rule.span.column
        text = text[:start] + text[end:]
    key = re.sub(",+", ",", _normalise(text)).replace("->,", "->")
    return key.rstrip(",")


def _overs(stmt: A.Stmt) -> list:
    """The `over AXIS` parts of a `stack` or `ensemble` line."""
    overs = [o.over for o in getattr(stmt, "options", ()) if o.over is not None]
    if isinstance(stmt, A.EnsembleStmt) and stmt.over is not None:
        overs.append(stmt.over)
    return overs


def _sweep_program(
    spec: A.Spec, checker: Checker, allow: tuple[str, ...], mesh: MeshSpec | None
) -> Program:
    """A sweep's program, and one program per member: the spec without its
    `ensemble` line, that member's values bound (its optimiser evaluated with
    them), and no placement (the whole ensemble is placed). The sweep's own
    passes see member 0's values, which give every member's shapes."""
    sweep = checker.sweep
    assert sweep is not None
    single = A.Spec(spec.source, tuple(s for s in spec.statements if s is not sweep.stmt))
    members = []
    for k in range(sweep.count):
        one = copy.copy(checker)
        one.env = sweep.env(checker.env, k)
        if checker.sweep_optimizers:
            one.optimizer = checker.sweep_optimizers[k]
        one.sweep = None
        if sweep.stmt.over is not None:
            one.axis_uses = [u for u in checker.axis_uses if u[1] != sweep.stmt.over.axis_span]
        program = _program(single, one, allow, None)
        members.append(
            replace(
                program, passes=tuple(p for p in program.passes if not isinstance(p, PlacePass))
            )
        )
    whole = copy.copy(checker)
    whole.env = sweep.env(checker.env, 0)
    program = _program(spec, whole, allow, mesh)
    how = "built per member by the spec with that member's values, " + (
        "each from its own seed" if sweep.varies_seed else "every member from the same seed"
    )
    passes = tuple(
        replace(p, sweep=how) if isinstance(p, EnsemblePass) else p for p in program.passes
    )
    return replace(program, passes=passes, sweep=sweep, members=tuple(members))


def _program(
    spec: A.Spec, checker: Checker, allow: tuple[str, ...], mesh: MeshSpec | None = None
) -> Program:
    source, env = spec.source, checker.env
    passes: list[Pass] = []
    groups: list[Group] = []
    shards: list[ShardRule] = []
    model_call = None
    # A pass's identity is a stable hash of its text and how often that text
    # came before, so adding a rule does not change what the others draw.
    seen: dict[str, int] = {}

    def identity(text: str, *more) -> int:
        return stable_hash("#".join([text, *map(str, more)]))

    statements = spec.statements
    for k, stmt in enumerate(statements):
        if isinstance(stmt, A.ModelStmt):
            model_call = stmt.call
            continue
        if isinstance(stmt, A.Rule):
            text_key = _without_shard(stmt)
        elif isinstance(stmt, (A.StackStmt, A.UnstackStmt, A.EnsembleStmt)):
            # The line less its `over AXIS`: where the arrays live changes no
            # number they are drawn with.
            line = source.line(stmt.span.line)
            for over in sorted(_overs(stmt), key=lambda o: -o.span.column):
                line = line[: over.span.column - 1] + line[over.span.end_column - 1 :]
            text_key = _normalise(line.split("#", 1)[0])
        else:
            continue
        occurrence = seen.get(text_key, 0)
        seen[text_key] = occurrence + 1
        if isinstance(stmt, A.Rule):
            drawing = [a for a in stmt.actions if _changes(a) != "placement"]
            for action in stmt.actions:
                index = drawing.index(action) if action in drawing else -1
                if _changes(action) == "optimiser":
                    groups.append(Group(stmt, action))
                    continue
                if _changes(action) == "placement":
                    shards.append(ShardRule(stmt, action, spec_dims(action.arg), env, source))
                    continue
                cls = PASSES[action.name]
                passes.append(cls(stmt, env, source, identity(text_key, occurrence, index), action))
        else:
            ident = identity(text_key, occurrence)
            # The `init` rules below the line may draw what it copies.
            later = tuple(
                s
                for s in statements[k + 1 :]
                if isinstance(s, A.Rule) and any(a.name == "init" for a in s.actions)
            )
            if isinstance(stmt, A.EnsembleStmt):
                count = checker.counts[id(stmt)]
                passes.append(EnsemblePass(stmt, env, source, ident, later, count, tuple(passes)))
            elif isinstance(stmt, A.StackStmt):
                passes.append(StackPass(stmt, env, source, ident, later))
            else:
                passes.append(UnstackPass(stmt, env, source, ident))
    # The mesh given from outside, else the spec's own.
    device_mesh, own = mesh, checker.mesh
    if device_mesh is None and own is not None:
        device_mesh = MeshSpec(tuple((a.name, a.size) for a in own.axes), own.span, source)
    if device_mesh is not None:
        # Placement comes last: `shard` rules select on the finished model.
        anchor = checker.mesh or (shards[0].rule if shards else None)
        if anchor is None:
            anchor = A.MeshStmt(A.Span(1, 1, 1, 1), ())
        overs = sorted(
            ((o.axis, o.axis_span) for s in statements for o in _overs(s)),
            key=lambda o: (o[1].line, o[1].column),
        )
        passes.append(
            PlacePass(
                anchor, env, source, identity("mesh"), tuple(shards), device_mesh, tuple(overs)
            )
        )
    # The modules the spec's constructors name, imported before any pass or
    # plan traces them.
    import_allowed(
        [s.call for s in statements if isinstance(s, A.ModelStmt)]
        + [a.arg for s in statements if isinstance(s, A.Rule) for a in s.actions],
        allow,
    )
    return Program(
        spec,
        tuple(passes),
        env,
        dict(checker.params),
        checker.seed,
        model_call,
        checker.optimizer,
        tuple(groups),
        allow,
        tuple(checker.inputs),
        device_mesh,
        tuple(shards),
        tuple(checker.axis_uses),
        mesh,
        weights=weight_rules(spec),
    )
