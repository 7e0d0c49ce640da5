"""The name patterns of weight mapping rules (`map`, `skip`, `keep`).

Pure text: no JAX, no model. The checker reads a pattern to report its
mistakes at the spec's line; the loader (`_weights.py`) matches patterns
against a checkpoint's tensor names and a model's array paths.

- A checkpoint pattern is a tensor name with captures:
  `layer{a}.{b}.conv1.weight`. A capture matches a whole number (`0`, `12`,
  never `012`); `{a-1}` and `{a+1}` shift it, so that `layer{a}` (1-based) can
  name `layers[{a-1}]` (0-based).
- A model pattern is an array's path, as `eqxform` prints paths:
  `layers[{a-1}][{b}].conv1.weight`. A capture stands only in an index.
- A glob (`skip`, `keep`) is a name or a path where `*` matches within one
  dotted part, `**` anything, and `{a}` a whole number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import _ast as A
from . import _names as N
from ._diagnostics import Diagnostic, did_you_mean, report

_NAME = r"[A-Za-z_][A-Za-z_0-9]*"
_CAPTURE = re.compile(r"\{(" + _NAME + r")(?:([+-])([0-9]+))?\}")
_NUMBER = r"(0|[1-9][0-9]*)"


class PatternError(ValueError):
    """What is wrong with a pattern, and where in it (a column offset)."""

    def __init__(self, message: str, offset: int = 0):
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class Capture:
    """`{name}`, `{name+k}`, `{name-k}`: a whole number; the text shows the
    bound value plus `offset`."""

    name: str
    offset: int = 0

    def show(self, bindings: dict[str, int]) -> str:
        return str(bindings[self.name] + self.offset)

    def bind(self, text: str, bindings: dict[str, int]) -> bool:
        """Bind `name` from `text` as written; False when the value does not
        agree with an earlier binding or falls below zero."""
        value = int(text) - self.offset
        return value >= 0 and bindings.setdefault(self.name, value) == value


@dataclass(frozen=True)
class Rest(Capture):
    """`**` at the end of a `map`'s name and path: the rest of the name, one
    or more dotted parts, which the path repeats with its numbers as indices
    (`layer1.0.downsample.0.weight` <-> `...downsample[0].weight`)."""

    name: str = "**"

    def show(self, bindings: dict) -> str:
        return bindings[self.name]

    def bind(self, text: str, bindings: dict) -> bool:
        return bindings.setdefault(self.name, text) == text


_REST = r"([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)"


def _capture(match: re.Match) -> Capture:
    name, sign, amount = match.groups()
    offset = 0 if sign is None else (int(amount) if sign == "+" else -int(amount))
    return Capture(name, offset)


def _pieces(text: str) -> tuple[str | Capture, ...]:
    pieces: list[str | Capture] = []
    at = 0
    for m in _CAPTURE.finditer(text):
        if m.start() > at:
            pieces.append(text[at : m.start()])
        pieces.append(_capture(m))
        at = m.end()
    if at < len(text):
        pieces.append(text[at:])
    for piece in pieces:
        if isinstance(piece, str) and ("{" in piece or "}" in piece):
            offset = text.find(piece) + max(piece.find("{"), piece.find("}"))
            raise PatternError(
                "a `{` or `}` that is no capture; a capture is `{name}`, `{name+1}` or `{name-1}`",
                offset,
            )
    return tuple(pieces)


@dataclass(frozen=True)
class NamePattern:
    """A checkpoint tensor name with captures."""

    text: str
    pieces: tuple[str | Capture, ...]
    regex: re.Pattern

    @property
    def captures(self) -> tuple[Capture, ...]:
        return tuple(p for p in self.pieces if isinstance(p, Capture))

    def match(self, name: str) -> dict[str, int] | None:
        m = self.regex.fullmatch(name)
        if m is None:
            return None
        bindings: dict[str, int] = {}
        for capture, text in zip(self.captures, m.groups()):
            if not capture.bind(text, bindings):
                return None
        return bindings

    def format(self, bindings: dict[str, int]) -> str:
        return "".join(p if isinstance(p, str) else p.show(bindings) for p in self.pieces)


def name_pattern(text: str) -> NamePattern:
    """A checkpoint pattern; raises `PatternError`."""
    if not text:
        raise PatternError("an empty tensor name")
    if any(c.isspace() for c in text):
        raise PatternError(
            "a tensor name with a space", next(i for i, c in enumerate(text) if c.isspace())
        )
    rest = text == "**" or text.endswith(".**")
    head = text[:-2] if rest else text
    if "**" in head:
        raise PatternError(
            "`**` stands only at the end of a name (`blocks.{i}.**`)", head.find("**")
        )
    pieces = _pieces(head) + ((Rest(),) if rest else ())
    regex = "".join(
        re.escape(p) if isinstance(p, str) else _REST if isinstance(p, Rest) else _NUMBER
        for p in pieces
    )
    return NamePattern(text, pieces, re.compile(regex))


# ---- model paths -------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Index:
    value: int | Capture


@dataclass(frozen=True)
class RestStep:
    """`.**` at the end of a model path: one or more steps (see `Rest`)."""


Step = Field | Index | RestStep

_STEP = re.compile(
    r"(?P<dot>\.)?(?P<name>" + _NAME + r")|\[(?P<index>[0-9]+|\{[^}\]]*\})\]",
)


@dataclass(frozen=True)
class PathPattern:
    """A model array's path with captures in its indices."""

    text: str
    steps: tuple[Step, ...]

    @property
    def captures(self) -> tuple[Capture, ...]:
        found = tuple(
            s.value for s in self.steps if isinstance(s, Index) and isinstance(s.value, Capture)
        )
        return found + ((Rest(),) if self.steps and isinstance(self.steps[-1], RestStep) else ())


def path_pattern(text: str) -> PathPattern:
    """A model pattern (`layers[{i}].conv1.weight`); raises `PatternError`."""
    if not text:
        raise PatternError("an empty model path")
    rest = text == "**" or text.endswith(".**")
    end = len(text) - (2 if text == "**" else 3 if rest else 0)
    steps: list[Step] = []
    at = 0
    while at < end:
        m = _STEP.match(text, at)
        if (
            m is None
            or (m.group("name") and steps and not m.group("dot"))
            or (m.group("dot") and not steps)
        ):
            raise PatternError(
                f"`{text[at : at + 12]}` is no part of a path; write fields with `.` and indices "
                "in brackets, e.g. `layers[{i}].conv1.weight`",
                at,
            )
        if m.group("name"):
            steps.append(Field(m.group("name")))
        else:
            index = m.group("index")
            if index.startswith("{"):
                c = _CAPTURE.fullmatch(index)
                if c is None:
                    raise PatternError(
                        f"`{index}` is no capture; write `{{name}}`, `{{name+1}}` or `{{name-1}}`",
                        at + 1,
                    )
                steps.append(Index(_capture(c)))
            else:
                steps.append(Index(int(index)))
        at = m.end()
    if rest:
        steps.append(RestStep())
    return PathPattern(text, tuple(steps))


def show_steps(steps: tuple[Step, ...] | list[Step]) -> str:
    out = []
    for s in steps:
        if isinstance(s, RestStep):
            out.append(".**" if out else "**")
        elif isinstance(s, Field):
            out.append(("." if out else "") + s.name)
        else:
            out.append(f"[{s.value}]")
    return "".join(out)


# ---- globs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Glob:
    text: str
    regex: re.Pattern

    def match(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None


def glob(text: str) -> Glob:
    """A `skip` or `keep` pattern; raises `PatternError`."""
    if not text:
        raise PatternError("an empty pattern")
    out = []
    at = 0
    while at < len(text):
        if text.startswith("**", at):
            out.append(".*")
            at += 2
        elif text[at] == "*":
            out.append(r"[^.\[\]]*")
            at += 1
        elif text[at] == "{":
            m = _CAPTURE.match(text, at)
            if m is None:
                raise PatternError("a `{` that is no capture; a capture is `{name}`", at)
            out.append(_NUMBER)
            at = m.end()
        else:
            out.append(re.escape(text[at]))
            at += 1
    return Glob(text, re.compile("".join(out)))


# ---- the rules, from the spec's statements -------------------------------------


@dataclass(frozen=True)
class MapRule:
    """A `map` line, read: checkpoint patterns (`sources`), model patterns
    (`targets`), the layout changes in written order (`ops`: `("transpose",
    perm or None)`, `("reshape", shape or None)`), `cast`, and the `axis`
    along which several tensors fuse into one, or one splits into several."""

    stmt: A.MapStmt
    sources: tuple[NamePattern, ...]
    targets: tuple[PathPattern, ...]
    ops: tuple[tuple[str, tuple[int, ...] | None], ...] = ()
    cast: bool = False
    axis: int = 0

    @property
    def line(self) -> int:
        return self.stmt.span.line


@dataclass(frozen=True)
class GlobRule:
    """A `skip` (checkpoint tensors) or `keep` (model arrays) line, read."""

    stmt: A.SkipStmt | A.KeepStmt
    globs: tuple[tuple[Glob, A.String], ...]


def _inside(string: A.String, offset: int, length: int = 1) -> A.Span:
    """The span of `length` characters at `offset` inside a string literal."""
    s = string.span
    if s.line != s.end_line:
        return s
    start = min(s.column + 1 + offset, s.end_column - 1)
    return A.Span(s.line, start, s.line, min(start + max(length, 1), s.end_column))


def _literal(expr: A.Expr | None) -> int | tuple[int, ...] | None:
    """A whole number or a list of them, as written; raises ValueError."""
    if expr is None:
        return None
    if isinstance(expr, A.Number) and isinstance(expr.value, int):
        return expr.value
    if isinstance(expr, A.Unary) and expr.op == "-" and isinstance(expr.operand, A.Number):
        value = _literal(expr.operand)
        if isinstance(value, int):
            return -value
    if isinstance(expr, A.ListExpr):
        items = tuple(_literal(i) for i in expr.items)
        if all(isinstance(i, int) for i in items):
            return items  # type: ignore[return-value]
    raise ValueError


# What a `map` action's argument (its kind in `_names.MAP_ACTIONS`) must be,
# and the variant of E163 that says so.
_TAKES = {
    "none": ("takes_argument", lambda v: v is None),
    "axes?": ("takes_list", lambda v: v is None or isinstance(v, tuple)),
    "shape?": ("takes_shape", lambda v: v is None or isinstance(v, tuple)),
    "axis": ("takes_one", lambda v: isinstance(v, int)),
}


def read_map(stmt: A.MapStmt, source: A.Source) -> tuple[MapRule | None, list[Diagnostic]]:
    """The rule of a `map` line, or its diagnostics (every one at once)."""
    problems: list[Diagnostic] = []

    def bad(code: str, span: A.Span, **fields):
        problems.append(report(code, span=span, source=source, **fields))

    sources, targets = [], []
    for s in stmt.sources:
        try:
            sources.append(name_pattern(s.value))
        except PatternError as e:
            bad("E160", _inside(s, e.offset), variant="checkpoint_tensor", value=s.value, error=e)
    for t in stmt.targets:
        try:
            targets.append(path_pattern(t.value))
        except PatternError as e:
            bad("E160", _inside(t, e.offset), variant="model_path", value=t.value, error=e)
    if len(stmt.sources) > 1 and len(stmt.targets) > 1:
        bad("E161", stmt.span, len_sources=len(stmt.sources), len_targets=len(stmt.targets))
    if not problems:
        names = {p.text: {c.name for c in p.captures} for p in [*sources, *targets]}
        want = names[sources[0].text]
        for string, pattern in zip([*stmt.sources, *stmt.targets], [*sources, *targets]):
            if names[pattern.text] != want:
                missing = sorted(want - names[pattern.text])
                bad(
                    "E162",
                    string.span,
                    value=string.value,
                    value2="s " if len(missing) > 1 else " ",
                    listing=", ".join(f"`{{{m}}}`" for m in missing),
                    listing2=", ".join(
                        f"`{k}` has {sorted(v) or 'none'}" for k, v in names.items()
                    ),
                )
                break
    ops: list[tuple[str, tuple[int, ...] | None]] = []
    cast = False
    axis = 0
    seen: set[str] = set()
    for action in stmt.actions:
        kind = N.MAP_ACTIONS.get(action.name)
        if kind is None:
            hint = did_you_mean(action.name, N.MAP_ACTIONS)
            bad(
                "E163",
                action.name_span,
                name=action.name,
                value=hint + " " if hint else "",
                listing=", ".join(f"`{a}`" for a in N.MAP_ACTIONS),
            )
            continue
        if action.name in seen:
            bad("E163", action.span, variant="given_twice", name=action.name)
            continue
        seen.add(action.name)
        try:
            value = _literal(action.arg)
        except ValueError:
            value = "bad"
        takes, fits = _TAKES[kind.arg]
        if not fits(value):
            bad("E163", action.span, variant=takes, help=kind.example, name=action.name)
        elif isinstance(value, tuple) and (
            sorted(value) != list(range(len(value)))
            if action.name == "transpose"
            else sum(d == -1 for d in value) > 1 or any(d < -1 for d in value)
        ):
            variant = "transpose_permutation" if action.name == "transpose" else "reshape_shape"
            bad("E163", action.span, variant=variant, help=kind.example, list_value=list(value))
        elif action.name == "axis":
            if len(stmt.sources) == 1 and len(stmt.targets) == 1:
                bad("E163", action.span, variant="axis_says")
            axis = value  # type: ignore[assignment]
        elif action.name == "cast":
            cast = True
        else:
            ops.append((action.name, value))  # type: ignore[arg-type]
    if problems:
        return None, problems
    return MapRule(stmt, tuple(sources), tuple(targets), tuple(ops), cast, axis), []


def read_globs(
    stmt: A.SkipStmt | A.KeepStmt, source: A.Source
) -> tuple[GlobRule | None, list[Diagnostic]]:
    """The patterns of a `skip` or `keep` line, or their diagnostics."""
    globs, problems = [], []
    for s in stmt.patterns:
        try:
            globs.append((glob(s.value), s))
        except PatternError as e:
            at = _inside(s, e.offset)
            problems.append(
                report("E160", variant="pattern", span=at, source=source, value=s.value, error=e)
            )
    return (None, problems) if problems else (GlobRule(stmt, tuple(globs)), [])


@dataclass(frozen=True)
class WeightRules:
    """Every weight line of a spec, read: the checkpoint it names (`path`, at
    `path_stmt`), its `map`, `skip` and `keep` lines, and the spec's source
    (for diagnostics at their lines)."""

    source: A.Source
    path_stmt: A.WeightsStmt | None
    maps: tuple[MapRule, ...]
    skips: tuple[GlobRule, ...]
    keeps: tuple[GlobRule, ...]

    @property
    def path(self) -> str | None:
        return None if self.path_stmt is None else self.path_stmt.path.value

    @property
    def anchor(self) -> A.Stmt:
        """Where a diagnostic about the whole mapping points: the `weights`
        line, else the first weight line."""
        if self.path_stmt is not None:
            return self.path_stmt
        return min(
            [r.stmt for r in (*self.maps, *self.skips, *self.keeps)], key=lambda s: s.span.line
        )


def weight_rules(spec: A.Spec) -> WeightRules | None:
    """The weight lines of a checked spec (no errors), or None if it has none."""
    stmts = [s for s in spec.statements if isinstance(s, A.WEIGHT_STMTS)]
    if not stmts:
        return None
    path = next((s for s in stmts if isinstance(s, A.WeightsStmt)), None)
    maps, skips, keeps = [], [], []
    for s in stmts:
        if isinstance(s, A.MapStmt):
            rule, problems = read_map(s, spec.source)
            assert rule is not None, problems
            maps.append(rule)
        elif isinstance(s, (A.SkipStmt, A.KeepStmt)):
            globs, problems = read_globs(s, spec.source)
            assert globs is not None, problems
            (skips if isinstance(s, A.SkipStmt) else keeps).append(globs)
    return WeightRules(spec.source, path, tuple(maps), tuple(skips), tuple(keeps))
