"""`eqxform.check`: every problem of a spec, with or without its model.

Whether a check is the linter (parse and check the text, no JAX) or the
model-aware check (the plan's checks on the model's skeleton, allocating
nothing) is decided here, once, by what is given: a model, or a spec with a
`model` directive, makes it model-aware. The command line's `check` is a shell
over this function. The module imports no JAX: the model-aware half loads the
compiler and the planner when it runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import _ast as A
from ._check import USAGE_CODES, Checker
from ._diagnostics import Diagnostic, position
from ._errors import UsageError
from ._mesh import as_mesh_spec
from ._parse import parse_collect
from ._source import read_spec


@dataclass(frozen=True)
class CheckReport:
    """What `eqxform.check` found.

    **Attributes:**

    - `name`: the spec's name (its file, or `<spec>` for text).
    - `diagnostics`: every problem, in the order of the text.
    - `statements`: how many statements the spec has.
    - `model`: what it was checked against (the model file, or the `model`
      directive's call); None for the linter, and for a spec with errors of
      its own (whose other rules are checked against the model all the same).
    - `steps`: the plan's steps (`PlanStep`: each rule's action and match
      count), when the check was model-aware and the spec compiled.
    """

    name: str
    diagnostics: tuple[Diagnostic, ...]
    statements: int
    model: str | None = None
    steps: tuple | None = None

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)


def check(
    spec: str | os.PathLike,
    model: Any = None,
    *,
    params: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
    inputs: Iterable[str] | None = None,
    mesh: Any = None,
    weights: str | os.PathLike | None = None,
) -> CheckReport:
    """Every problem of a spec and, when there is a model, of applying it.

    **Arguments:**

    - `spec`: the spec's text (a `str`) or a spec file (a path object), as
      `eqxform.compile` takes it.
    - `model`: a model file (a `str` or path object), or a model; None: the
      spec's `model` directive, if it has one.
    - `params`, `allow`, `inputs`, `mesh`: as `eqxform.compile` takes them;
      `weights`: as `Program.plan` takes it.

    **Returns:** a `CheckReport`. With a model (given, or the spec's `model`
    directive) every rule is checked against the model's skeleton under
    `eqx.filter_eval_shape`, as `apply` checks it, allocating nothing; a spec
    with errors of its own still has its other rules checked against the
    model. Without one it is the linter: no JAX is imported. Raises
    `UsageError` for a problem of the arguments (`params` naming no `let`,
    say).

    ```python
    report = eqxform.check(pathlib.Path("specs/lora.eqx"))
    assert report.ok, report.diagnostics
    ```
    """
    text, name = read_spec(spec)
    params = dict(params or {})
    mesh = as_mesh_spec(mesh)
    parsed, diagnostics = parse_collect(text, name)
    statements = len(parsed.statements)
    if model is None and not any(isinstance(s, A.ModelStmt) for s in parsed.statements):
        # The linter: parse and check, no JAX.
        diagnostics = sorted(diagnostics + Checker(parsed, params, mesh).run(), key=position)
        usage = [d for d in diagnostics if d.code in USAGE_CODES]
        if usage:
            raise UsageError(usage)
        return CheckReport(name, tuple(diagnostics), statements)
    # Model-aware: the plan's checks, on the model's skeleton.
    from ._compile import compile_collect, compile_without_broken_rules

    allow = tuple(allow)
    given = list(inputs) if inputs is not None else None
    program, diagnostics = compile_collect(text, name, params, allow, given, mesh)
    if program is not None:
        struct, against = _skeleton(model, allow)
        plan = program.plan(struct, weights=weights)
        if against is None:
            against = f"`{program.base_constructor()}`"
        return CheckReport(name, plan.diagnostics, statements, against, plan.steps)
    # All at once: the rules without model-free errors are still checked
    # against the model (their errors only: what the others would have done
    # is unknown).
    rest = compile_without_broken_rules(text, name, diagnostics, params, allow, given)
    if rest is not None:
        more = rest.plan(_skeleton(model, allow)[0]).errors
        diagnostics = sorted(diagnostics + list(more), key=position)
    return CheckReport(name, tuple(diagnostics), statements)


def _skeleton(model: Any, allow: tuple[str, ...]) -> tuple[Any, str | None]:
    """The model to plan on (a model file's skeleton, read from its header),
    and what to call it."""
    if isinstance(model, (str, os.PathLike)):
        from ._recipes import skeleton

        return skeleton(model, allow)[2], str(model)
    if model is None:
        return None, None
    return model, f"a `{type(model).__name__}`"
