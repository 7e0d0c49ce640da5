"""The abstract syntax tree of a spec: frozen dataclasses, each with its span.

Nothing here knows about Lark, JAX or models. The parser builds these nodes,
the checker reads them, the compiler turns them into passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class Span:
    """Where a node sits in its source: 1-based line and column, end exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int


@dataclass(frozen=True)
class Source:
    """The text of a spec and the name it is reported under."""

    name: str
    text: str

    @cached_property
    def lines(self) -> list[str]:
        # Lines end at `\n` (a `\r` before it belongs to the break), as the
        # parser counts them; `str.splitlines` would also break at `\x0b`,
        # `\x0c`, `\x85`, U+2028 and more, and put every later diagnostic on
        # the wrong line.
        lines = [line[:-1] if line.endswith("\r") else line for line in self.text.split("\n")]
        if lines and lines[-1] == "" and self.text.endswith("\n"):
            lines.pop()
        return lines

    def line(self, number: int) -> str:
        lines = self.lines
        if 1 <= number <= len(lines):
            return lines[number - 1]
        return ""

    def snippet(self, span: Span) -> str:
        """The text at `span` (to the end of its first line, if it runs on)."""
        line = self.line(span.line)
        return line[span.column - 1 : span.end_column - 1 if span.end_line == span.line else None]


# ---- expressions ---------------------------------------------------------


@dataclass(frozen=True)
class Expr:
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Number(Expr):
    value: int | float
    text: str


@dataclass(frozen=True)
class String(Expr):
    value: str


@dataclass(frozen=True)
class Name(Expr):
    id: str


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # "-", "+", "not"
    operand: Expr


@dataclass(frozen=True)
class Binary(Expr):
    op: str  # + - * / // % ** == != < <= > >= and or
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Conditional(Expr):
    """`then if test else orelse`, as in Python (the fields in the text's order)."""

    then: Expr
    test: Expr
    orelse: Expr


@dataclass(frozen=True)
class Subscript(Expr):
    value: Expr
    index: Expr


@dataclass(frozen=True)
class ListExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class TupleExpr(Expr):
    """`(a, b)`: only a `shard` spec (`(none, model)`) is a tuple."""

    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Arg:
    name: str | None
    value: Expr
    span: Span = field(compare=False)
    name_span: Span | None = field(compare=False, default=None)


@dataclass(frozen=True)
class Call(Expr):
    callee: str  # `Linear`, or `package.module:function`
    args: tuple[Arg, ...]
    callee_span: Span = field(compare=False)

    @property
    def is_module_path(self) -> bool:
        return ":" in self.callee


# ---- selectors -----------------------------------------------------------


@dataclass(frozen=True)
class Step:
    span: Span = field(compare=False)


@dataclass(frozen=True)
class NameStep(Step):
    """A field (`weight`) or, when capitalised, a type (`Linear`); a type may
    be qualified by its module (`mylib.norms:BatchNorm`)."""

    name: str

    @property
    def is_type(self) -> bool:
        return self.name[:1].isupper() or self.is_qualified

    @property
    def is_qualified(self) -> bool:
        return ":" in self.name


@dataclass(frozen=True)
class AnyStep(Step):
    """`*`: exactly one step."""


@dataclass(frozen=True)
class DeepStep(Step):
    """`**`: any number of steps, none included."""


@dataclass(frozen=True)
class IndexStep(Step):
    index: int


@dataclass(frozen=True)
class SliceStep(Step):
    start: int | None
    stop: int | None
    step: int | None


@dataclass(frozen=True)
class AllStep(Step):
    """`[*]`: every element."""


@dataclass(frozen=True)
class SelPath:
    steps: tuple[Step, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Selector:
    """Alternatives (`A | B`), less what `except` names (`** except head`)."""

    paths: tuple[SelPath, ...]
    span: Span = field(compare=False)
    text: str = ""
    excluded: tuple[SelPath, ...] = ()


@dataclass(frozen=True)
class Expect:
    """`expect N`, `expect >= N`, `expect <= N`, `expect any` (>= 0)."""

    op: str  # "==", ">=", "<="
    count: int | float
    span: Span = field(compare=False)
    text: str = ""

    def allows(self, n: int) -> bool:
        return {"==": n == self.count, ">=": n >= self.count, "<=": n <= self.count}[self.op]

    def describe(self) -> str:
        if self.op == "==":
            return f"the {self.count} expected"
        return ("at least " if self.op == ">=" else "at most ") + str(self.count)


# ---- statements ----------------------------------------------------------


@dataclass(frozen=True)
class Stmt:
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Action:
    name: str
    arg: Expr | None
    span: Span = field(compare=False)
    name_span: Span = field(compare=False)


@dataclass(frozen=True)
class Rule(Stmt):
    selector: Selector
    filter: Expr | None
    expect: Expect | None
    actions: tuple[Action, ...]
    text: str = ""


@dataclass(frozen=True)
class ModelStmt(Stmt):
    call: Call


@dataclass(frozen=True)
class SeedStmt(Stmt):
    value: Expr


@dataclass(frozen=True)
class LetStmt(Stmt):
    name: str
    value: Expr
    name_span: Span = field(compare=False)


@dataclass(frozen=True)
class OptimizerStmt(Stmt):
    value: Expr


@dataclass(frozen=True)
class Over:
    """`over AXIS`: the leading axis of a stack or an ensemble on a mesh axis."""

    axis: str
    span: Span = field(compare=False)
    axis_span: Span = field(compare=False)


@dataclass(frozen=True)
class Vary:
    """One hyper-parameter of a sweep: `lr=logspace(1e-4, 1e-2)` after `vary`
    (a value per member), `lr=[1e-3, 1e-2]` after `grid` (one axis of the
    product), or `seed` alone (each member its own seed)."""

    name: str
    value: Expr | None
    span: Span = field(compare=False)
    name_span: Span = field(compare=False)


@dataclass(frozen=True)
class EnsembleStmt(Stmt):
    """`ensemble N [over AXIS]`; a sweep names what varies per member:
    `ensemble N vary NAME=EXPR, ...` or `ensemble grid NAME=[...] ...` (then
    `count` is None: the product of the lists' lengths)."""

    count: Expr | None
    over: Over | None = None
    vary: tuple[Vary, ...] = ()
    grid: bool = False

    @property
    def is_sweep(self) -> bool:
        return bool(self.vary)


@dataclass(frozen=True)
class StackOption:
    name: str  # "count", "remat", "unroll", "layerwise", "over"
    value: int | None
    span: Span = field(compare=False)
    over: Over | None = None


@dataclass(frozen=True)
class StackStmt(Stmt):
    selector: Selector
    mode: str
    mode_span: Span
    options: tuple[StackOption, ...]


@dataclass(frozen=True)
class UnstackStmt(Stmt):
    selector: Selector


@dataclass(frozen=True)
class MeshAxis:
    name: str
    size: int  # -1: the rest of the devices
    span: Span = field(compare=False)
    name_span: Span = field(compare=False)


@dataclass(frozen=True)
class MeshStmt(Stmt):
    """`mesh data=2 model=4`: the device mesh of the `shard` rules."""

    axes: tuple[MeshAxis, ...]


@dataclass(frozen=True)
class InputStmt(Stmt):
    """`input f32[3,224,224]`: one positional argument of the model."""

    dtype: str
    shape: tuple[int | float, ...]
    dtype_span: Span = field(compare=False)

    def describe(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class WeightsStmt(Stmt):
    """`weights "model.safetensors"`: the checkpoint the `map` lines read."""

    path: String


@dataclass(frozen=True)
class MapStmt(Stmt):
    """`map "CKPT", ... -> "MODEL", ... with ACTION, ...`: checkpoint tensors
    (by name pattern) to model arrays (by path pattern)."""

    sources: tuple[String, ...]
    targets: tuple[String, ...]
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True)
class SkipStmt(Stmt):
    """`skip "PATTERN", ...`: checkpoint tensors left unread on purpose."""

    patterns: tuple[String, ...]


@dataclass(frozen=True)
class KeepStmt(Stmt):
    """`keep "PATTERN", ...`: model arrays that keep their values."""

    patterns: tuple[String, ...]


# The statements that map a checkpoint onto the model.
WEIGHT_STMTS = (WeightsStmt, MapStmt, SkipStmt, KeepStmt)


@dataclass(frozen=True)
class Spec:
    source: Source
    statements: tuple[Stmt, ...]

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(s for s in self.statements if isinstance(s, Rule))


def nodes(obj: Any) -> Iterator[Any]:
    """Every AST node under `obj` (a node or a tuple of them), found through the
    dataclass fields, so that a new kind of node needs no change here."""
    if isinstance(obj, tuple):
        for item in obj:
            yield from nodes(item)
    elif is_dataclass(obj) and not isinstance(obj, (Span, Source)):
        yield obj
        for f in fields(obj):
            yield from nodes(getattr(obj, f.name))
