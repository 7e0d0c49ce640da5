"""The canonical layout of a spec (`eqxform fmt`, and the editors' "format").

The formatter works from the lexer's tokens (`_parse.tokens`), never from
patterns over the text, and from the parsed spec, which tells the tokens that
look alike apart: a `-` that negates from one that subtracts, a `*` in a
selector from one that multiplies, a call's `(` from a bracketed expression.

A statement is one line, so the layout is decided line by line:

- tokens are re-spaced (one space around `->`, a `let`'s `=`, the binary
  operators and `|`, and after commas; none inside brackets, around `.` and
  `:`, after a sign, before a call's `(` or a subscript's `[`, or around the
  `=` of a keyword argument, as in Python, or of a mesh axis, `data=2`);
- a run of consecutive `where` rules has its arrows in one column;
- in a run of consecutive statements, trailing comments start in one column,
  two spaces past the longest statement that carries one;
- full-line comments are kept, without indentation; blank lines are kept, a
  run of them as one; the text ends in exactly one line break.

A blank line or a comment line ends a run. The result parses to the same spec
as the input (checked on every call), and formatting it again changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import _ast as A
from ._diagnostics import report
from ._errors import EqxformError
from ._parse import BOM, SpecToken, parse, tokens, without_bom

_NO_SPACE_BEFORE = frozenset({"RPAR", "RSQB", "COMMA", "DOT", "COLON"})
_NO_SPACE_AFTER = frozenset({"LPAR", "LSQB", "DOT", "COLON"})
# Tokens an expression can end with; a `[` right after one is a subscript.
_OPERAND_END = frozenset({"NAME", "NUMBER", "STRING", "RPAR", "RSQB"})

# The fields of the AST that hold a slice of the source as written. They differ
# between a spec and its formatted text by construction, so the check that the
# formatter keeps the meaning leaves them out.
_SOURCE_SLICES = frozenset({(A.Rule, "text"), (A.Selector, "text")})


class FormatError(EqxformError):
    """The formatter failed to keep a spec's meaning (a bug, never the user's)."""


def format_spec(text: str, name: str = "<spec>") -> str:
    """The canonical layout of a spec.

    **Arguments:**

    - `text`: the spec.
    - `name`: the name its diagnostics are reported under.

    **Returns:** the formatted text. `format_spec(format_spec(t)) ==
    format_spec(t)`, and the result parses to the same spec as `text`.

    Raises `SpecError`, with every syntax error, when `text` does not parse:
    broken text is never formatted.

    ```python
    format_spec("where Linear.weight->init zeros\\nwhere **.bias -> freeze")
    # 'where Linear.weight -> init zeros\\nwhere **.bias       -> freeze\\n'
    ```
    """
    spec = parse(text, name)
    out = _render(_lines(tokens(text)), _Roles(spec))
    if not equivalent(spec, parse(out, name)):
        raise FormatError(report("E601", file=name))
    # A leading byte-order mark is kept: the editor that wrote it expects it.
    return out if without_bom(text) == text or not out else BOM + out


def equivalent(a: A.Spec, b: A.Spec) -> bool:
    """Do two parsed specs say the same thing?

    Spans are never compared (even one the AST would compare, such as a
    stack's `mode_span`); neither is the source text that rules and selectors
    keep as written.
    """
    return len(a.statements) == len(b.statements) and all(
        _same(x, y) for x, y in zip(a.statements, b.statements)
    )


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, A.Span):
        return True
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if not dataclasses.is_dataclass(a):
        return a == b
    return all(
        _same(getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(a)
        if f.compare and (type(a), f.name) not in _SOURCE_SLICES
    )


# ---- what each token is, from the parsed spec ------------------------------


class _Roles:
    """The positions of the tokens whose spacing depends on their role."""

    def __init__(self, spec: A.Spec):
        self.selectors: dict[int, list[A.Span]] = {}  # by line
        self.signs: set[tuple[int, int]] = set()  # a unary `-` or `+`
        self.callees: set[tuple[int, int]] = set()  # where a call's name ends
        self.keywords: set[tuple[int, int]] = set()  # where a keyword argument's name ends
        self.actions: set[tuple[int, int]] = set()  # where an action's name starts
        self.mesh_names: set[tuple[int, int]] = set()  # where a mesh axis's name ends
        for node in A.nodes(spec.statements):
            if isinstance(node, A.Selector):
                self.selectors.setdefault(node.span.line, []).append(node.span)
            elif isinstance(node, A.Unary) and node.op in ("-", "+"):
                self.signs.add((node.span.line, node.span.column))
            elif isinstance(node, A.Call):
                self.callees.add((node.callee_span.end_line, node.callee_span.end_column))
            elif isinstance(node, (A.Arg, A.Vary, A.MeshAxis)) and node.name_span is not None:
                # `vary lr=...`, `grid lr=[...]`, `mesh data=2`: written as
                # keyword arguments are.
                end = (node.name_span.end_line, node.name_span.end_column)
                self.keywords.add(end)
                if isinstance(node, A.MeshAxis):
                    self.mesh_names.add(end)
            elif isinstance(node, A.Action):
                self.actions.add((node.name_span.line, node.name_span.column))

        self.qualified_dots: set[tuple[int, int]] = set()  # a `.` just before `mod:Type`

    def in_selector(self, token: SpecToken) -> bool:
        return any(
            s.column <= token.column < s.end_column for s in self.selectors.get(token.line, ())
        )

    def note(self, tokens: list[SpecToken]) -> None:
        for token, after in zip(tokens, tokens[1:]):
            if token.type == "DOT" and after.type == "QUALNAME":
                self.qualified_dots.add((token.line, token.column))
        # A mesh axis's size is a signed number, not an expression: its `-`
        # (`model=-1`) is a sign, which no AST node marks.
        for name, equals, sign in zip(tokens, tokens[1:], tokens[2:]):
            if (
                (name.end_line, name.end_column) in self.mesh_names
                and equals.type == "EQUAL"
                and sign.type == "MINUS"
            ):
                self.signs.add((sign.line, sign.column))


# ---- lines -----------------------------------------------------------------


@dataclass
class _Line:
    kind: str  # "statement", "comment" or "blank"
    tokens: list[SpecToken]
    comment: str | None = None


def _lines(found: list[SpecToken]) -> list[_Line]:
    """The text as lines: statements (with their trailing comment), comment
    lines and blank lines (a run of them as one, none at the start)."""
    out: list[_Line] = []
    current: list[SpecToken] = []

    def flush():
        if not current:
            return
        comment = current.pop().text.rstrip() if current[-1].type == "COMMENT" else None
        if current:
            out.append(_Line("statement", list(current), comment))
        elif comment is not None:
            out.append(_Line("comment", [], comment))
        current.clear()

    for token in found:
        if token.type != "NEWLINE":
            current.append(token)
            continue
        flush()
        if token.text.count("\n") > 1 and out and out[-1].kind != "blank":
            out.append(_Line("blank", []))
    flush()
    while out and out[-1].kind == "blank":
        out.pop()
    return out


def _spaced(tokens: list[SpecToken], roles: _Roles) -> str:
    """One statement's tokens (or a part of one), with the canonical spacing."""
    out = ""
    prev: SpecToken | None = None
    keyword_equals = False  # `prev` is the `=` of a keyword argument
    for token in tokens:
        is_keyword_equals = (
            token.type == "EQUAL"
            and prev is not None
            and (prev.end_line, prev.end_column) in roles.keywords
        )
        if prev is not None and _space_between(prev, token, roles, keyword_equals):
            out += " "
        out += token.text
        keyword_equals = is_keyword_equals
        prev = token
    return out


def _space_between(prev: SpecToken, token: SpecToken, roles: _Roles, keyword_equals: bool) -> bool:
    if roles.in_selector(prev) and roles.in_selector(token):
        # `layers[-1].weight`, `**.bias`: a selector is written solid, but for
        # `|` and `except`, and before the dot of `blocks .mylib:Block`, which
        # written solid would read as the module `blocks.mylib`.
        if token.type == "DOT" and (token.line, token.column) in roles.qualified_dots:
            return True
        return bool({"VBAR", "EXCEPT"} & {prev.type, token.type})
    if token.type in _NO_SPACE_BEFORE or prev.type in _NO_SPACE_AFTER:
        return False
    if (prev.line, prev.column) in roles.signs or keyword_equals:
        return False
    if token.type == "EQUAL" and (prev.end_line, prev.end_column) in roles.keywords:
        return False
    if token.type == "LPAR" and (prev.end_line, prev.end_column) in roles.callees:
        return False
    if (
        token.type == "LSQB"
        and prev.type in _OPERAND_END
        and (prev.line, prev.column) not in roles.actions
    ):
        return False  # a subscript, `shape[0]`
    return True


def _render(lines: list[_Line], roles: _Roles) -> str:
    for line in lines:
        roles.note(line.tokens)
    codes = [_spaced(line.tokens, roles) if line.kind == "statement" else "" for line in lines]
    _align_arrows(lines, codes, roles)
    _attach_comments(lines, codes)
    return "".join(code + "\n" for code in codes)


def _runs(lines: list[_Line], member) -> Iterator[list[int]]:
    """The runs of consecutive lines for which `member` holds."""
    run: list[int] = []
    for i, line in enumerate(lines):
        if member(line):
            run.append(i)
        else:
            if run:
                yield run
            run = []
    if run:
        yield run


def _arrow(line: _Line) -> int | None:
    if line.kind != "statement" or line.tokens[0].type != "WHERE":
        return None
    return next(i for i, t in enumerate(line.tokens) if t.type == "ARROW")


def _align_arrows(lines: list[_Line], codes: list[str], roles: _Roles) -> None:
    for run in _runs(lines, lambda line: _arrow(line) is not None):
        parts = []
        for i in run:
            arrow = _arrow(lines[i])
            parts.append(
                (
                    _spaced(lines[i].tokens[:arrow], roles),
                    _spaced(lines[i].tokens[arrow:], roles),
                )
            )
        width = max(len(left) for left, _ in parts)
        for i, (left, right) in zip(run, parts):
            codes[i] = left.ljust(width) + " " + right


def _attach_comments(lines: list[_Line], codes: list[str]) -> None:
    for i, line in enumerate(lines):
        if line.kind == "comment":
            codes[i] = line.comment or ""
    for run in _runs(lines, lambda line: line.kind == "statement"):
        commented = [i for i in run if lines[i].comment is not None]
        if not commented:
            continue
        column = max(len(codes[i]) for i in commented) + 2
        for i in commented:
            codes[i] = codes[i].ljust(column) + (lines[i].comment or "")
