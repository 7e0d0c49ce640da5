"""Text -> AST. The only module that sees Lark.

The whole file is parsed in one go. When that fails, each line is parsed on its
own (a statement is one line), so that `check` reports every syntax error of a
file at once, and the lines that do parse still reach the semantic checks.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import re
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from . import _ast as A
from . import _limits as L
from . import _names as N
from ._diagnostics import Diagnostic, did_you_mean, report
from ._errors import SpecError

DIRECTIVES = tuple(N.DIRECTIVES)

# How a syntax error names what it expected, where that is not the terminal's
# own text in backticks (`LPAR` is "`(`", read from the grammar).
_TOKEN_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "PLUS": "`+`",
    "MUL_OP": "`/`",
    "COMP_OP": "a comparison",
    "_NL": "the end of the line",
    "$END": "the end of the line",
}


def grammar_path() -> Path:
    """The grammar file: inside the installed package (a wheel), else at the top
    of the source tree (a checkout or an editable install)."""
    packaged = Path(__file__).parent / "grammar" / "eqxform.lark"
    if packaged.is_file():
        return packaged
    return Path(__file__).parent.parent / "grammar" / "eqxform.lark"


def _open(**options) -> Lark:
    # Never `cache=True`: Lark would unpickle a grammar from a shared temp dir.
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        start=["start", "statement", "expr"],
        **options,
    )


@functools.cache
def _parser() -> Lark:
    # Lark's own transformer-while-parsing would skip the trees, but it cannot
    # pass positions (`meta`) to the transformer, and every node needs its span.
    return _open()


def _span(node) -> A.Span:
    if isinstance(node, Token):
        return A.Span(node.line, node.column, node.end_line, node.end_column)
    meta = node.meta if isinstance(node, Tree) else node
    return A.Span(meta.line, meta.column, meta.end_line, meta.end_column)


class _Refused(Exception):
    """A statement the parser reads but refuses (a number too long, nesting too
    deep): its diagnostic. The statement is left out, the others go on."""

    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def _number(token: Token) -> A.Number:
    text = str(token)
    span = _span(token)
    digits = sum(c.isdigit() for c in text)
    if digits > L.MAX_LITERAL_DIGITS:
        raise _Refused(
            report("E011", span=span, digits=digits, max_literal_digits=L.MAX_LITERAL_DIGITS)
        )
    value: int | float
    if any(c in text for c in ".eE"):
        value = float(text)
        if math.isinf(value):
            raise _Refused(report("E011", variant="out_range", span=span, clip_text=_clip(text)))
    else:
        value = int(text)
    return A.Number(span, value, text)


def _clip(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _node(cls, *fixed):
    """The method of a grammar alias whose node is `cls(span, *fixed, *children)`."""
    return lambda self, meta, children: cls(_span(meta), *fixed, *children)


def _first(self, meta, children):
    return children[0]


def _listed(self, meta, children):
    return [c for c in children if c is not None]


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark tree -> frozen dataclasses. Each method names one grammar alias."""

    def __init__(self, source: A.Source):
        super().__init__()
        self.source = source

    def _text(self, span: A.Span) -> str:
        lines = self.source.lines
        if span.line != span.end_line:
            return lines[span.line - 1][span.column - 1 :]
        return lines[span.line - 1][span.column - 1 : span.end_column - 1]

    # ---- statements
    def start(self, meta, children):
        return tuple(c for c in children if isinstance(c, A.Stmt))

    model_stmt = _node(A.ModelStmt)
    seed_stmt = _node(A.SeedStmt)
    optimizer_stmt = _node(A.OptimizerStmt)
    unstack_stmt = _node(A.UnstackStmt)
    skip_stmt = _node(A.SkipStmt)
    keep_stmt = _node(A.KeepStmt)
    vary = map_with = kw_arguments = arguments = _listed
    stack_over = rule_filter = _first

    def let_stmt(self, meta, children):
        name, value = children
        return A.LetStmt(_span(meta), str(name), value, _span(name))

    def ensemble_stmt(self, meta, children):
        count, vary, over = children
        return A.EnsembleStmt(_span(meta), count, over, tuple(vary or ()))

    def ensemble_grid(self, meta, children):
        *axes, over = children
        return A.EnsembleStmt(_span(meta), None, over, tuple(axes), grid=True)

    def vary_item(self, meta, children):
        name, value = children
        return A.Vary(str(name), value, _span(meta), _span(name))

    grid_axis = vary_item

    def vary_seed(self, meta, children):
        # `seed` is a keyword: its token is not kept; the span starts at it.
        span = _span(meta)
        name_span = A.Span(span.line, span.column, span.line, span.column + 4)
        return A.Vary("seed", children[0], span, name_span)

    grid_seed = vary_seed

    def over(self, meta, children):
        return A.Over(str(children[0]), _span(meta), _span(children[0]))

    def mesh_stmt(self, meta, children):
        return A.MeshStmt(_span(meta), tuple(children))

    def mesh_axis(self, meta, children):
        name, size = children
        return A.MeshAxis(str(name), size, _span(meta), _span(name))

    def stack_stmt(self, meta, children):
        selector, mode, *options = children
        options = [
            A.StackOption("over", None, o.span, o) if isinstance(o, A.Over) else o for o in options
        ]
        return A.StackStmt(_span(meta), selector, str(mode), _span(mode), tuple(options))

    def stack_count(self, meta, children):
        number = _number(children[0])
        return A.StackOption("count", number.value, number.span)

    def stack_flag(self, meta, children):
        name, value = children
        return A.StackOption(
            str(name), None if value is None else _number(value).value, _span(meta)
        )

    def input_stmt(self, meta, children):
        dtype, *dims = children
        shape = tuple(_number(d).value for d in dims if d is not None)
        return A.InputStmt(_span(meta), str(dtype), shape, _span(dtype))

    def weights_stmt(self, meta, children):
        return A.WeightsStmt(_span(meta), self.string(children[0], [children[0]]))

    def map_stmt(self, meta, children):
        sources, targets, actions = children
        return A.MapStmt(_span(meta), sources, targets, tuple(actions or ()))

    def names(self, meta, children):
        return tuple(self.string(c, [c]) for c in children)

    def rule(self, meta, children):
        selector, filt, expect, *actions = children
        span = _span(meta)
        return A.Rule(span, selector, filt, expect, tuple(actions), self._text(span))

    def expect_count(self, meta, children):
        op, number = children
        number = _number(number)
        return A.Expect(str(op) if op is not None else "==", number.value, number.span, number.text)

    def expect_any(self, meta, children):
        return A.Expect(">=", 0, _span(meta), "any")

    def action(self, meta, children):
        name, arg = children
        return A.Action(str(name), arg, _span(meta), _span(name))

    def action_call(self, meta, children):
        # `lora(rank=8)`: the arguments are held as a call of the action's own
        # name, so that checks, the formatter and passes read them as any call.
        name, arguments = children
        span = _span(meta)
        call = A.Call(span, str(name), tuple(arguments or ()), _span(name))
        return A.Action(str(name), call, span, _span(name))

    # ---- selectors
    def selector(self, meta, children):
        span = _span(meta)
        paths, excluded = children
        return A.Selector(paths, span, self._text(span), excluded or ())

    def sel_alts(self, meta, children):
        return tuple(children)

    def sel_path(self, meta, children):
        return A.SelPath(tuple(children), _span(meta))

    def sel_name(self, meta, children):
        return A.NameStep(_span(meta), str(children[0]))

    def sel_any(self, meta, children):
        return A.AnyStep(_span(meta))

    def sel_deep(self, meta, children):
        return A.DeepStep(_span(meta))

    def sel_index(self, meta, children):
        # The brackets belong to the step's span.
        return dataclasses.replace(children[0], span=_span(meta))

    idx_int = _node(A.IndexStep)

    def idx_all(self, meta, children):
        return A.AllStep(_span(meta))

    idx_slice = _node(A.SliceStep)

    def sint(self, meta, children):
        # A whole number: `1.5` and `1e3` are refused, not rounded.
        minus, token = children
        number = _number(token)
        if not isinstance(number.value, int):
            what = "an index or a slice bound"
            clip_text = _clip(number.text)
            raise _Refused(report("E013", span=number.span, what=what, clip_text=clip_text))
        return -number.value if minus is not None else number.value

    # ---- expressions
    def number(self, meta, children):
        return _number(children[0])

    def string(self, meta, children):
        return A.String(_span(meta), str(children[0])[1:-1])

    def name(self, meta, children):
        return A.Name(_span(meta), str(children[0]))

    def neg(self, meta, children):
        return A.Unary(_span(meta), "-", children[1])

    pos = _node(A.Unary, "+")
    not_ = _node(A.Unary, "not")
    pow = _node(A.Binary, "**")
    and_ = _node(A.Binary, "and")
    or_ = _node(A.Binary, "or")

    def binop(self, meta, children):
        left, op, right = children
        return A.Binary(_span(meta), str(op), left, right)

    compare = binop

    conditional = _node(A.Conditional)

    def list(self, meta, children):
        return A.ListExpr(_span(meta), tuple(c for c in children if c is not None))

    def tuple(self, meta, children):
        return A.TupleExpr(_span(meta), tuple(c for c in children if c is not None))

    subscript = _node(A.Subscript)

    def call(self, meta, children):
        (callee, callee_span), arguments = children
        return A.Call(_span(meta), callee, tuple(arguments or ()), callee_span)

    def callee(self, meta, children):
        return str(children[0]), _span(meta)

    module_callee = callee

    def pos_arg(self, meta, children):
        return A.Arg(None, children[0], _span(meta))

    def kw_arg(self, meta, children):
        name, value = children
        return A.Arg(str(name), value, _span(meta), _span(name))


# ---- syntax errors -------------------------------------------------------

# Each label maps to examples of that mistake; Lark's `match_examples` finds the
# label whose examples fail in the same parser state as the user's text.
_EXAMPLES = {
    "missing-arrow": [
        "where x init zeros",
        "where Linear.weight init zeros",
        "where layers[0] freeze",
        "where x.y if ndim == 2 init zeros",
        "where x expect 2 freeze",
        "where x.y = freeze",
    ],
    "stray-comma": [
        "where x -> init zeros,",
        "where x -> freeze,, lr 1",
        "model MLP(a=1,, b=2)",
        "model MLP(,)",
        "where x -> init normal(,stddev=1)",
        "where x, y -> freeze",
        "where x.y, z -> freeze",
    ],
}


def _unclosed(line: str) -> tuple[str, int] | None:
    """The last bracket of `line` left open, and its 0-based column."""
    stack: list[tuple[str, int]] = []
    quote = None
    pairs = {")": "(", "]": "["}
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c == "#":
            break
        elif c in "([":
            stack.append((c, i))
        elif c in ")]":
            if stack and stack[-1][0] == pairs[c]:
                stack.pop()
    return stack[-1] if stack else None


def _expected(exc: UnexpectedToken) -> str:
    # Every name `expected` holds but `$END` is a terminal of the parser.
    names = sorted(
        {
            _TOKEN_NAMES.get(t) or f"`{_parser().get_terminal(t).pattern.value}`"
            for t in exc.expected
        }
    )
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def _syntax_diagnostic(exc: UnexpectedInput, line_text: str, line_no: int) -> Diagnostic:
    def at(column: int, width: int = 1) -> A.Span:
        return A.Span(line_no, column, line_no, column + max(width, 1))

    first_col = len(line_text) - len(line_text.lstrip()) + 1

    if isinstance(exc, UnexpectedToken) and exc.token.type == "NAME" and exc.column == first_col:
        word = str(exc.token)
        hint = did_you_mean(word, DIRECTIVES)
        return report(
            "E006",
            span=at(exc.column, len(word)),
            word=word,
            hint=hint + " " if hint else "",
            directives=", ".join(f"`{d}`" for d in DIRECTIVES),
        )

    unclosed = _unclosed(line_text)
    if unclosed is not None and isinstance(exc, UnexpectedToken):
        bracket, col = unclosed
        closing = ")" if bracket == "(" else "]"
        wants_closing = ("RPAR" if bracket == "(" else "RSQB") in exc.expected
        if exc.token.type in ("$END", "_NL") or (wants_closing and exc.column > col):
            return report("E004", span=at(col + 1), bracket=bracket, closing=closing)

    if isinstance(exc, UnexpectedCharacters):
        char = line_text[exc.column - 1] if exc.column - 1 < len(line_text) else "?"
        helps = {
            "{": "selectors use `[...]` and calls use `(...)`",
            ";": "write one statement per line",
            "!": "write `not` for negation; `!=` compares",
            "&": "write `and`",
        }
        help = helps.get(char, "remove it, or quote it in a string")
        if char.isdigit():  # a digit of another script: `٣`
            help = "write numbers with the digits 0 to 9"
        if char == BOM:  # invisible in the source line: name it
            return report("E002", span=at(exc.column))
        return report("E002", variant="character", span=at(exc.column), help=help, char=char)

    assert isinstance(exc, UnexpectedToken)
    try:
        label = exc.match_examples(
            lambda text: _parser().parse(text, start="start"),
            {label: [e + "\n" for e in examples] for label, examples in _EXAMPLES.items()},
            use_accepts=True,
            token_type_match_fallback=True,
        )
    except Exception:  # match_examples is a heuristic; a failure is no label
        label = None
    token = exc.token
    width = len(str(token)) if token.type not in ("$END", "_NL") else 1
    column = exc.column if token.type not in ("$END", "_NL") else len(line_text.rstrip()) + 1
    if label == "stray-comma" or (token.type == "COMMA" and "`,`" not in _expected(exc)):
        comma = column
        if token.type != "COMMA":
            comma = line_text.rstrip().rfind(",") + 1 or column
        return report("E005", span=at(comma))
    if label == "missing-arrow":
        return report("E003", span=at(column, width))
    expected = _expected(exc)
    if token.type in ("$END", "_NL"):
        if expected:
            return report("E007", variant="expected", span=at(column), expected=expected)
        return report("E007", span=at(column))
    if str(token) == "->" and line_text.strip().split()[:2] == ["where", "->"]:
        return report("E009", span=at(column, width))
    if token.type == "NAME" and "COMMA" in exc.expected:
        inside = _unclosed(line_text[: column - 1]) is not None
        return report(
            "E008",
            span=at(column, width),
            things="arguments" if inside else "actions",
            token=token,
        )
    if len(exc.expected) > 6:
        expected = ""
    if expected:
        return report(
            "E001", variant="expected", span=at(column, width), token=token, expected=expected
        )
    return report("E001", span=at(column, width), token=token)


def parse(text: str, name: str = "<spec>") -> A.Spec:
    """Parse a spec. Raises `SpecError` with every syntax error of the text."""
    spec, diagnostics = parse_collect(text, name)
    if diagnostics:
        raise SpecError(diagnostics)
    return spec


# A UTF-8 byte-order mark, which editors on Windows write at the start of a file.
BOM = "\ufeff"


def without_bom(text: str) -> str:
    """`text` less the byte-order mark it begins with, if any. Editors do not
    show one, so the columns of line 1 are counted after it."""
    return text[1:] if text.startswith(BOM) else text


def parse_collect(
    text: str, name: str = "<spec>", cache: dict | None = None
) -> tuple[A.Spec, list[Diagnostic]]:
    """Parse what parses; return the spec of the good lines and the errors of the bad.

    With `cache` (a dict the caller keeps between calls) the text is parsed
    line by line, and a line whose number and text are in the cache is not
    parsed again: an editor's edit of one line costs the parse of one line.
    The cache is left holding the lines of `text`. A leading byte-order mark
    is not part of the spec.
    """
    text = without_bom(text)
    source = A.Source(name, text)
    diagnostics = _odd_breaks(text, source)
    if diagnostics:
        # One space for each: the other diagnostics keep their columns.
        text = _ODD_BREAK.sub(" ", text)
    if cache is not None:
        spec, more = _parse_lines(source, text, cache)
        return spec, diagnostics + more
    if not text.endswith("\n"):
        text = text + "\n"
    try:
        tree = _parser().parse(text, start="start")
        return A.Spec(source, _transform(tree, source)), diagnostics
    except (UnexpectedInput, _Refused):
        pass
    spec, more = _parse_lines(source, text, {})
    return spec, diagnostics + more


def _parse_lines(source: A.Source, text: str, cache: dict) -> tuple[A.Spec, list[Diagnostic]]:
    """Every line of `text` on its own (a statement is one line), through `cache`."""
    statements: list[A.Stmt] = []
    diagnostics: list[Diagnostic] = []
    used: dict[tuple[int, str], tuple] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        key = (number, line)
        found = cache.get(key)
        if found is None:
            found = _parse_line(source, number, line)
        used[key] = found
        statements.extend(found[0])
        if found[1] is not None:
            diagnostics.append(found[1].with_source(source))
    cache.clear()
    cache.update(used)
    return A.Spec(source, tuple(statements)), diagnostics


def _parse_line(source: A.Source, number: int, line: str) -> tuple[tuple, Diagnostic | None]:
    """The statements of line `number` (its AST depends on nothing else), or
    its syntax error."""
    body = line.split("#", 1)[0] if "#" in line and "'" not in line and '"' not in line else line
    if not body.strip():
        return (), None
    try:
        tree = _parser().parse(line + "\n", start="start")
    except UnexpectedInput as exc:
        return (), _syntax_diagnostic(exc, line, number)
    _shift_lines(tree, number - 1)
    try:
        return tuple(_transform(tree, source)), None
    except _Refused as refused:
        return (), refused.diagnostic


# The characters that some editor or `str.splitlines` reads as a line break but
# the grammar does not: a `\r` without its `\n`, the vertical tab, the
# information separators, NEL, and the Unicode line and paragraph separators.
# Within a comment they would hide the rest of a line from eqxform while an
# editor shows it as code (or the reverse), so they are refused wherever they
# are. A form feed is whitespace, as in Python; `\r\n` is a line break.
_ODD_BREAK = re.compile("\r(?!\n)|[\x0b\x1c\x1d\x1e\x85\u2028\u2029]")

_BREAK_NAMES = {
    "\r": "a carriage return (`\\r`) without a line feed",
    "\x0b": "a vertical tab (U+000B)",
    "\x1c": "a file separator (U+001C)",
    "\x1d": "a group separator (U+001D)",
    "\x1e": "a record separator (U+001E)",
    "\x85": "a next-line character (U+0085)",
    "\u2028": "a line separator (U+2028)",
    "\u2029": "a paragraph separator (U+2029)",
}


def _odd_breaks(text: str, source: A.Source) -> list[Diagnostic]:
    """One diagnostic, at the first of the odd line breaks of `text` (a file
    saved with old Mac line endings has thousands), noting how many there are."""
    found = _ODD_BREAK.search(text)
    if found is None:
        return []
    at = found.start()
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    more = len(_ODD_BREAK.findall(text)) - 1
    return [
        report(
            "E010",
            span=A.Span(line, column, line, column + 1),
            source=source,
            notes=(f"{more} more in this text",) if more else (),
            break_names=_BREAK_NAMES[found.group()],
        )
    ]


def _too_deep(tree: Tree) -> Tree | None:
    """The first node nested deeper than `MAX_NESTING`, found without recursion."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > L.MAX_NESTING:
            return node
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))
    return None


def _transform(tree: Tree, source: A.Source):
    """Lark tree -> AST. The tree's depth is bounded first: the transformer, the
    evaluator and the AST's equality all recurse once per level."""
    deep = _too_deep(tree)
    if deep is not None:
        # Where the limit is crossed (the node of level `MAX_NESTING + 1`).
        span = _span(deep) if not deep.meta.empty else _span(tree)
        raise _Refused(report("E012", span=span, max_nesting=L.MAX_NESTING))
    try:
        return _ToAst(source).transform(tree)
    except VisitError as exc:
        # A refused literal (`_Refused`) goes on as itself; so does any other
        # exception, as a transformer bug must not hide behind a parse error.
        raise exc.orig_exc from None


def _shift_lines(tree: Tree, offset: int) -> None:
    """Move the positions of a tree parsed from one line to that line of the file."""
    for subtree in tree.iter_subtrees():
        meta = subtree.meta
        if not meta.empty:
            meta.line += offset
            meta.end_line += offset
        for child in subtree.children:
            if isinstance(child, Token):
                child.line += offset
                child.end_line += offset


def parse_expr(text: str, name: str = "<expr>") -> A.Expr:
    """Parse one expression (a `--set` value, a constructor call on the command line)."""
    source = A.Source(name, text)
    odd = _odd_breaks(text, source)
    if odd:
        raise SpecError(odd)
    try:
        tree = _parser().parse(text, start="expr")
        return _transform(tree, source)
    except UnexpectedInput as exc:
        raise SpecError(_syntax_diagnostic(exc, text, 1).with_source(source)) from None
    except _Refused as refused:
        raise SpecError(refused.diagnostic.with_source(source)) from None


# ==== the token stream, for the formatter and the editors ===================
#
# Everything below exposes the lexer's tokens as plain records, so that the
# formatter, the highlighting tests and the language server read a spec exactly
# as the parser does, without importing Lark themselves. (The record is not
# called `Token`: that name is Lark's in this module.)


@dataclasses.dataclass(frozen=True)
class SpecToken:
    """One token of a spec: its terminal's name, its text and where it sits.

    `type` is the grammar's terminal name (`NAME`, `NUMBER`, `WHERE`, `LPAR`,
    `COMMENT`, ...), except that `->` is `ARROW`, `**` is `DOUBLESTAR`, a run of
    line breaks (with the indentation after it) is `NEWLINE`, and text the lexer
    cannot read is `ERROR`. Lines and columns are 1-based and count characters;
    the end is exclusive.
    """

    type: str
    text: str
    line: int
    column: int
    end_line: int
    end_column: int


_RENAMED = {"->": "ARROW", "**": "DOUBLESTAR"}

# Comments are ignored by the parser, so they never reach it; Lark still hands
# each one to a lexer callback, which collects them here.
_COMMENTS: contextvars.ContextVar[list] = contextvars.ContextVar("comments")


def _collect_comment(token: Token) -> Token:
    # Outside `_parsed_tokens` (a line lexed on its own) the token is kept by the caller.
    _COMMENTS.get([]).append(token)
    return token


@functools.cache
def _token_parser() -> Lark:
    return _open(lexer_callbacks={"COMMENT": _collect_comment})


@functools.cache
def _type_name(terminal: str) -> str:
    if terminal == "_NL":
        return "NEWLINE"
    if terminal.startswith("__"):
        value = _token_parser().get_terminal(terminal).pattern.value
        return _RENAMED.get(value, terminal)
    return terminal


def _record(token: Token, line_offset: int) -> SpecToken:
    return SpecToken(
        _type_name(token.type),
        str(token),
        token.line + line_offset,
        token.column,
        token.end_line + line_offset,
        token.end_column,
    )


def _parsed_tokens(text: str, line_offset: int = 0) -> list[SpecToken]:
    """The tokens of `text` as the contextual lexer feeds them to the parser,
    comments included. Raises `UnexpectedInput` when `text` does not parse."""
    comments: list[Token] = []
    reset = _COMMENTS.set(comments)
    try:
        interactive = _token_parser().parse_interactive(text, start="start")
        found = list(interactive.iter_parse())
        interactive.feed_eof()
    finally:
        _COMMENTS.reset(reset)
    found.extend(comments)
    found.sort(key=lambda t: (t.line, t.column))
    return [_record(t, line_offset) for t in found]


def _loose_tokens(line: str, number: int) -> list[SpecToken]:
    """The tokens of a line that does not parse, read without the parser's
    context (a keyword is always a keyword); what the lexer cannot read, up to
    the end of the line, is one `ERROR` token."""
    out: list[SpecToken] = []
    try:
        for token in _token_parser().lex(line + "\n", dont_ignore=True):
            if token.type != "WS":
                out.append(_record(token, number - 1))
    except UnexpectedCharacters as exc:
        rest = line[exc.column - 1 :].rstrip("\r")
        out.append(SpecToken("ERROR", rest, number, exc.column, number, exc.column + len(rest)))
        out.append(SpecToken("NEWLINE", "\n", number, len(line) + 1, number + 1, 1))
    return out


def tokens(text: str) -> list[SpecToken]:
    """Every token of `text`, comments and line breaks included, in order.

    Text that parses is read as the parser reads it (a keyword in the place of
    a field name is a `NAME`, as in `layers.model`). Text that does not is read
    line by line: a line that parses as above, any other as far as the lexer
    can. Spaces and tabs are left out; the gaps between tokens are theirs.

    **Arguments:**

    - `text`: a spec.

    **Returns:** a list of `SpecToken` records, in the order of the text
    (less a leading byte-order mark, as the parser reads it).
    """
    text = without_bom(text)
    padded = text if text.endswith("\n") else text + "\n"
    try:
        found = _parsed_tokens(padded)
    except UnexpectedInput:
        found = []
        for number, line in enumerate(padded.split("\n")[:-1], start=1):
            try:
                found.extend(_parsed_tokens(line + "\n", number - 1))
            except UnexpectedInput:
                found.extend(_loose_tokens(line, number))
    if padded is not text and found and found[-1].type == "NEWLINE":
        # The line break added above is not the text's: trim it off the last token.
        last = found.pop()
        kept = last.text[:-1]
        if kept:
            end_line = last.line + kept.count("\n")
            end_column = (1 if "\n" in kept else last.column) + len(kept.rsplit("\n", 1)[-1])
            found.append(
                dataclasses.replace(last, text=kept, end_line=end_line, end_column=end_column)
            )
    return found
