"""AST -> Program: a tuple of passes, plain data, and the code that runs it.

`compile` reads, parses and checks a spec (no JAX needed), evaluates its `let`
values with the caller's overrides, and makes one pass per action of each rule.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _ast as A
from ._check import check
from ._diagnostics import Diagnostic, did_you_mean
from ._errors import SpecError, UsageError
from ._expr import EvalError, evaluate
from ._hashing import stable_hash
from ._parse import parse_collect, parse_expr


def read_spec(spec: str | os.PathLike, name: str | None = None) -> tuple[str, str]:
    """(text, name) of a spec given as a path or as text."""
    if isinstance(spec, os.PathLike) or (
        isinstance(spec, str) and "\n" not in spec and spec.endswith(".eqx")
    ):
        path = Path(spec)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(
                Diagnostic("E401", f"spec file `{path}` does not exist", file=str(path))
            ) from None
        except OSError as e:
            raise UsageError(
                Diagnostic("E401", f"cannot read `{path}`: {e.strerror}", file=str(path))
            ) from None
        if data[:8] and _looks_like_model_file(data):
            raise UsageError(
                Diagnostic(
                    "E402",
                    f"`{path}` is a model file, not a spec",
                    file=str(path),
                    help="the spec comes first: `eqxform apply SPEC MODEL -o OUT`",
                )
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(
                Diagnostic("E402", f"`{path}` is not a text file", file=str(path))
            ) from None
        return text, name or str(path)
    return str(spec), name or "<spec>"


def _looks_like_model_file(data: bytes) -> bool:
    if len(data) < 10:
        return False
    size = int.from_bytes(data[:8], "little")
    return 0 < size < (1 << 40) and data[8:9] == b"{"


def parse_value(text: str, name: str) -> Any:
    """A `--set NAME=VALUE` value: a constant expression (`32`, `1e-3`, `"relu"`)."""
    expr = parse_expr(text, f"--set {name}")
    try:
        return evaluate(expr, {})
    except EvalError:
        # A bare word is a string (`--set act=gelu` means the function `gelu`
        # through the evaluator; anything else stays text).
        if isinstance(expr, A.Name):
            return expr.id
        raise UsageError(f"`--set {name}={text}` is not a constant") from None


class _Delegating:
    """A pass as plain data whose work is done by `impl`, loaded (with JAX) on
    first use."""

    def select(self, model):
        return self.impl.select(model)

    def __call__(self, model, key):
        return self.impl(model, key)


@dataclass(frozen=True, eq=False)
class Pass(_Delegating):
    """One action of one rule: a pure `(model, key) -> model` function.

    Plain data until it first runs; then the pass family that implements the
    action (in `_passes`) is loaded, with JAX.
    """

    rule: A.Rule
    action: A.Action
    env: Mapping[str, Any]
    source: A.Source
    identity: int
    allow: tuple[str, ...] = ()

    @functools.cached_property
    def impl(self):
        from ._passes._tree import PASSES

        cls = PASSES[self.action.name]
        return cls(self.rule, self.action, self.env, self.source, self.identity, self.allow)

    @property
    def line(self) -> int:
        return self.rule.span.line

    @property
    def text(self) -> str:
        return self.rule.text

    @property
    def label(self) -> str:
        """The action as written: `init he_normal`."""
        span = self.action.span
        line = self.source.line(span.line)
        end = span.end_column - 1 if span.end_line == span.line else len(line)
        return line[span.column - 1 : end]

    def __repr__(self) -> str:
        return f"Pass(line {self.line}: {self.label})"


@dataclass(frozen=True, eq=False)
class StatementPass(_Delegating):
    """A structural directive (`stack`, `unstack`, `ensemble`) as a pass."""

    stmt: A.Stmt
    env: Mapping[str, Any]
    source: A.Source
    identity: int
    action: A.Action | None = None  # directives have no action; passes duck-type on it

    @functools.cached_property
    def impl(self):
        from ._passes._struct import STRUCT_PASSES

        return STRUCT_PASSES[type(self.stmt)](self.stmt, self.env, self.source, self.identity)

    @property
    def line(self) -> int:
        return self.stmt.span.line

    @property
    def text(self) -> str:
        return self.source.line(self.stmt.span.line).split("#", 1)[0].strip()

    @property
    def label(self) -> str:
        return self.text.split(None, 1)[0]

    def __repr__(self) -> str:
        return f"StatementPass(line {self.line}: {self.text})"


@dataclass(frozen=True)
class Program:
    """A compiled spec: its passes and what they need. Apply it to models.

    **Attributes:**

    - `passes`: the tuple of passes, in the order the rules are written.
    - `env`: the `let` values, overrides applied.
    - `seed`: the spec's `seed` (0 when it has none).
    - `model_call`: the `model` directive's constructor call, if any.
    """

    spec: A.Spec
    passes: tuple
    env: Mapping[str, Any]
    params: Mapping[str, Any]
    seed: int
    model_call: A.Call | None
    allow: tuple[str, ...] = field(default=())

    @property
    def source(self) -> A.Source:
        return self.spec.source

    @property
    def text(self) -> str:
        return self.spec.source.text

    @property
    def name(self) -> str:
        return self.spec.source.name

    # ---- running -----------------------------------------------------------

    def base_constructor(self) -> str | None:
        from ._build import render_call

        return None if self.model_call is None else render_call(self.model_call, self.env)

    def build_model(self, key=None, *, seed: int | None = None):
        """The `model` directive's model, built from `key` (default: the seed)."""
        import jax

        from ._build import MODEL_TAG, build
        from ._io import remember

        if self.model_call is None:
            raise UsageError(
                Diagnostic(
                    "E403",
                    "no model given, and the spec has no `model` directive",
                    file=self.name,
                    help="pass a model file, or add e.g. `model MLP(in_size=2, out_size=2, "
                    "width_size=64, depth=2)` to the spec",
                )
            )
        seed = self.seed if seed is None else seed
        root = jax.random.key(seed) if key is None else key
        model = build(
            self.model_call, self.env, jax.random.fold_in(root, MODEL_TAG), self.source, self.allow
        )
        remember(model, _base_recipe(self.base_constructor(), seed if key is None else None))
        return model

    def apply(self, model=None, key=None, *, seed: int | None = None):
        """Run every pass on `model` and return the new model.

        **Arguments:**

        - `model`: an Equinox model; `None` builds the spec's `model` directive.
        - `key`: a `jax.random.key`; by default one is made from `seed`, or the
          spec's own `seed`.

        **Returns:** the transformed model. Raises `SpecError` when a rule does
        not fit the model (a selector that matches nothing, say).
        """
        import jax

        from ._io import recipe_of, remember

        seed = self.seed if seed is None else seed
        if key is None:
            key = jax.random.key(seed)
            recorded_seed = seed
        else:
            recorded_seed = None
        if model is None:
            model = (
                self.build_model(seed=seed) if recorded_seed is not None else self.build_model(key)
            )
        recipe = recipe_of(model)
        for i, p in enumerate(self.passes):
            if isinstance(p, StatementPass) and isinstance(p.stmt, A.EnsembleStmt):
                model = self._ensemble(p, model, key, recipe, self.passes[:i])
            else:
                model = p(model, key)
        if recipe is not None:
            remember(model, self.extend_recipe(recipe, recorded_seed))
        return model

    def _ensemble(self, p, model, key, recipe, before):
        """Run an `ensemble` pass; where the model's constructor is known (its
        recipe), members are built by it under `filter_vmap`, one key each,
        and the rules above the `ensemble` line are run on each member."""
        from ._io import recipe_builder
        from ._passes._struct import REBUILD

        rebuild = None
        if recipe is not None and recipe.get("base", {}).get("constructor"):
            base = recipe_builder(recipe, self.allow, self.name)

            def rebuild(k):
                m = base(k)
                for q in before:
                    m = q(m, k)
                return m

        token = REBUILD.set(rebuild)
        try:
            return p(model, key)
        finally:
            REBUILD.reset(token)

    def extend_recipe(self, recipe: dict, seed: int | None) -> dict:
        entry = {"name": os.path.basename(self.name), "text": self.text, "seed": seed}
        entry["params"] = dict(self.params)
        return {**recipe, "specs": [*recipe.get("specs", []), entry]}

    def check(self, model=None) -> list[Diagnostic]:
        """Every diagnostic of running this program on `model`, allocating no arrays."""
        return list(self.plan(model).diagnostics)

    def plan(self, model=None):
        """What each rule will change, computed with `eqx.filter_eval_shape`.

        **Returns:** a `Plan`: per rule, the matched paths with their shape and
        dtype before and after, and the change in parameter count.
        """
        from ._plan import make_plan

        return make_plan(self, model)


def _base_recipe(constructor: str | None, seed: int | None) -> dict | None:
    if constructor is None:
        return None
    return {"base": {"constructor": constructor, "seed": seed}, "specs": []}


def is_whole(value: Any, minimum: int) -> bool:
    """Is `value` an integer (not a boolean) of at least `minimum`?"""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _position(d: Diagnostic) -> tuple[int, int]:
    return (d.span.line, d.span.column) if d.span is not None else (0, 0)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip())


def compile(
    spec: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    allow: Iterable[str] = (),
) -> Program:
    """Read, parse and check a spec; return its `Program`.

    **Arguments:**

    - `spec`: a path to a `.eqx` spec file, or the spec's text.
    - `params`: values for the spec's `let` names (as `--set NAME=VALUE`).
    - `name`: the name diagnostics show for text given directly.
    - `allow`: top-level packages whose `package.module:function` constructors
      may be imported.

    **Returns:** a `Program`. Raises `SpecError` with every diagnostic of the
    spec at once when it has errors.

    ```python
    program = eqxform.compile("where Linear.weight -> init he_normal")
    model = program.apply(model, key=jax.random.key(0))
    ```
    """
    text, name = read_spec(spec, name)
    program, diagnostics = compile_collect(text, name, params, allow)
    if diagnostics:
        raise SpecError(diagnostics)
    assert program is not None
    return program


def compile_collect(
    text: str,
    name: str,
    params: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
) -> tuple[Program | None, list[Diagnostic]]:
    """Like `compile`, but returns the diagnostics instead of raising."""
    spec, diagnostics = parse_collect(text, name)
    diagnostics += check(spec, params)
    source = spec.source
    params = dict(params or {})

    lets = [s for s in spec.statements if isinstance(s, A.LetStmt)]
    let_names = [s.name for s in lets]
    for key in params:
        if key not in let_names:
            hint = did_you_mean(key, let_names)
            raise UsageError(
                Diagnostic(
                    "E116",
                    f"`--set {key}`: the spec has no `let {key}`",
                    file=name,
                    help=hint
                    or (
                        "its `let` names are " + ", ".join(f"`{n}`" for n in let_names)
                        if let_names
                        else "the spec defines no `let` names"
                    ),
                )
            )

    env: dict[str, Any] = {}
    seed = 0
    model_call = None
    if not diagnostics:
        for stmt in spec.statements:
            try:
                if isinstance(stmt, A.LetStmt):
                    env[stmt.name] = (
                        params[stmt.name] if stmt.name in params else evaluate(stmt.value, env)
                    )
                elif isinstance(stmt, A.SeedStmt):
                    value = evaluate(stmt.value, env)
                    if not is_whole(value, 0):
                        diagnostics.append(
                            Diagnostic(
                                "E113",
                                f"`seed` must be a whole number >= 0, not `{value}`",
                                stmt.value.span,
                                None,
                                source,
                            )
                        )
                    else:
                        seed = value
                elif isinstance(stmt, A.ModelStmt):
                    model_call = stmt.call
                elif isinstance(stmt, A.EnsembleStmt):
                    value = evaluate(stmt.count, env)
                    if not is_whole(value, 1):
                        diagnostics.append(
                            Diagnostic(
                                "E134",
                                f"`ensemble` needs a whole number of members >= 1, not `{value}`",
                                stmt.count.span,
                                "e.g. `ensemble 8`",
                                source,
                            )
                        )
            except EvalError as e:
                diagnostics.append(Diagnostic("E204", e.message, e.span, e.help, source))

    if diagnostics:
        return None, sorted(diagnostics, key=_position)

    passes: list = []
    seen: dict[str, int] = {}
    for stmt in spec.statements:
        if isinstance(stmt, A.Rule):
            text_key = _normalise(stmt.text)
        elif isinstance(stmt, (A.StackStmt, A.UnstackStmt, A.EnsembleStmt)):
            text_key = _normalise(source.line(stmt.span.line).split("#", 1)[0])
        else:
            continue
        occurrence = seen.get(text_key, 0)
        seen[text_key] = occurrence + 1
        if isinstance(stmt, A.Rule):
            for index, action in enumerate(stmt.actions):
                identity = stable_hash(f"{text_key}#{occurrence}#{index}")
                passes.append(Pass(stmt, action, env, source, identity, tuple(allow)))
        else:
            passes.append(StatementPass(stmt, env, source, stable_hash(f"{text_key}#{occurrence}")))
    return Program(spec, tuple(passes), env, params, seed, model_call, tuple(allow)), []
