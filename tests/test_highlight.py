"""The editors' TextMate grammar, run by the small tokenizer in `_textmate.py`
and held to the lexer: every token of every example spec gets the scope its
kind and place call for."""

import json
import re
from pathlib import Path

import pytest
from _textmate import Grammar, leaf

from eqxform import _ast as A
from eqxform import _names as N
from eqxform._parse import parse, parse_collect, tokens

ROOT = Path(__file__).parent.parent
GRAMMAR_PATH = ROOT / "grammar" / "eqxform.tmLanguage.json"
SPECS = sorted((ROOT / "specs").glob("*.eqx"))
FIXTURES = sorted((ROOT / "tests" / "fixtures").rglob("*.eqx"))

ACTIONS = set(N.ACTIONS) | {"lora", "merge", "shard"}
DIRECTIVE_TOKENS = {
    "MODEL",
    "SEED",
    "LET",
    "WHERE",
    "OPTIMIZER",
    "ENSEMBLE",
    "STACK",
    "UNSTACK",
    "INPUT",
    "MESH",
}

# Lark token type -> scope, for the tokens whose scope does not depend on place.
BY_TYPE = {
    "COMMENT": "comment.line.number-sign.eqxform",
    "QUALNAME": "entity.name.type.qualified.eqxform",
    "EXCEPT": "keyword.operator.except.eqxform",
    "ANY": "keyword.other.eqxform",
    "OVER": "keyword.other.eqxform",
    "VARY": "keyword.other.eqxform",
    "GRID": "keyword.other.eqxform",
    "IF": "keyword.control.eqxform",
    "ELSE": "keyword.control.eqxform",
    "EXPECT": "keyword.control.eqxform",
    "AND": "keyword.operator.logical.eqxform",
    "OR": "keyword.operator.logical.eqxform",
    "NOT": "keyword.operator.logical.eqxform",
    "ARROW": "keyword.operator.arrow.eqxform",
    "NUMBER": "constant.numeric.eqxform",
    "ADD_OP": "keyword.operator.arithmetic.eqxform",
    "PLUS": "keyword.operator.arithmetic.eqxform",
    "MINUS": "keyword.operator.arithmetic.eqxform",
    "MUL_OP": "keyword.operator.arithmetic.eqxform",
    "COMP_OP": "keyword.operator.comparison.eqxform",
    "EQUAL": "keyword.operator.assignment.eqxform",
    "VBAR": "keyword.operator.alternation.eqxform",
    "DOT": "punctuation.accessor.eqxform",
    "COMMA": "punctuation.separator.comma.eqxform",
    "LPAR": "punctuation.section.parens.begin.eqxform",
    "RPAR": "punctuation.section.parens.end.eqxform",
    "LSQB": "punctuation.section.brackets.begin.eqxform",
    "RSQB": "punctuation.section.brackets.end.eqxform",
    **{t: "keyword.control.directive.eqxform" for t in DIRECTIVE_TOKENS},
}


@pytest.fixture(scope="module")
def grammar():
    return Grammar.load(GRAMMAR_PATH)


def scope_of(grammar, text: str, line: int, column: int, end_column: int) -> str | None:
    """The one leaf scope of the characters `[column, end_column)` of `line`."""
    lines = grammar.tokenize(text)
    found = {leaf(s) for s in lines[line - 1][column - 1 : end_column - 1]}
    assert len(found) == 1, (text.splitlines()[line - 1], column, found)
    return found.pop()


class Roles:
    """What the parsed spec says each name token is, by its position."""

    def __init__(self, spec: A.Spec):
        self.selectors: list[A.Span] = []
        self.names: dict[tuple[int, int], str] = {}
        for stmt in spec.statements:
            if isinstance(stmt, A.Rule):
                self.selectors.append(stmt.selector.span)
                for action in stmt.actions:
                    start = (action.name_span.line, action.name_span.column)
                    if action.name in ACTIONS:
                        self.names[start] = "keyword.other.action.eqxform"
                    table = {"init": N.INITIALIZERS, "wrap": N.WRAPPERS}.get(action.name)
                    self.named(action.arg, table, action.name)
            elif isinstance(stmt, (A.StackStmt, A.UnstackStmt)):
                self.selectors.append(stmt.selector.span)
                if isinstance(stmt, A.StackStmt):
                    self.names[(stmt.mode_span.line, stmt.mode_span.column)] = (
                        "keyword.other.eqxform"
                    )
                    for option in stmt.options:
                        if option.name != "count":
                            key = (option.span.line, option.span.column)
                            self.names[key] = "keyword.other.eqxform"
            elif isinstance(stmt, A.LetStmt):
                key = (stmt.name_span.line, stmt.name_span.column)
                self.names[key] = "entity.name.variable.eqxform"
            elif isinstance(stmt, A.OptimizerStmt):
                self.named(stmt.value, N.OPTIMIZERS, "optimizer")
            elif isinstance(stmt, A.MeshStmt):
                for axis in stmt.axes:
                    key = (axis.name_span.line, axis.name_span.column)
                    self.names[key] = "variable.parameter.eqxform"
            elif isinstance(stmt, A.EnsembleStmt):
                # A sweep's `NAME=VALUE` reads as a keyword argument.
                for vary in stmt.vary:
                    key = (vary.name_span.line, vary.name_span.column)
                    # `seed=...` too; `seed` alone is a plain name.
                    self.names[key] = (
                        "variable.other.eqxform"
                        if vary.value is None
                        else "variable.parameter.eqxform"
                    )
            for node in _nodes(stmt):
                if isinstance(node, A.Arg) and node.name_span is not None:
                    key = (node.name_span.line, node.name_span.column)
                    self.names[key] = "variable.parameter.eqxform"
                elif isinstance(node, A.Call) and node.callee in N.EXPR_FUNCTIONS:
                    key = (node.callee_span.line, node.callee_span.column)
                    self.names.setdefault(key, "support.function.builtin.eqxform")

    def named(self, arg, table, action):
        """`init NAME`, `wrap NAME(...)`, `optimizer NAME(...)`: a name from a table."""
        if table is None:
            return
        if isinstance(arg, A.Name):
            name, span = arg.id, arg.span
        elif isinstance(arg, A.Call):
            name, span = arg.callee, arg.callee_span
        else:
            return
        if name in table:
            kind = {"init": "initializer", "wrap": "wrapper", "optimizer": "optimizer"}[action]
            self.names[(span.line, span.column)] = f"support.function.{kind}.eqxform"

    def in_selector(self, token) -> bool:
        return any(
            s.line == token.line and s.column <= token.column < s.end_column for s in self.selectors
        )

    def expected(self, token) -> str | None:
        kind = token.type
        if kind == "STRING":
            quote = "double" if token.text.startswith('"') else "single"
            return f"string.quoted.{quote}.eqxform"
        if kind in ("STAR", "DOUBLESTAR"):
            if self.in_selector(token):
                return "variable.language.wildcard.eqxform"
            return "keyword.operator.arithmetic.eqxform"
        if kind == "COLON":
            if self.in_selector(token):
                return "punctuation.separator.slice.eqxform"
            return "punctuation.separator.colon.eqxform"
        if kind == "SEED" and (token.line, token.column) in self.names:
            return self.names[(token.line, token.column)]  # `vary seed`: a name
        if kind != "NAME":
            return BY_TYPE[kind]
        if self.in_selector(token):
            if token.text[0].isupper():
                return "entity.name.type.eqxform"
            return "variable.other.member.eqxform"
        role = self.names.get((token.line, token.column))
        if role is not None:
            return role
        word = token.text
        if word[0].isupper():
            return "entity.name.type.eqxform"
        if word in N.CONSTANTS:
            return "constant.language.eqxform"
        if word in N.CONTEXT_NAMES:
            return "variable.language.eqxform"
        if word in N.FUNCTIONS:
            return "support.function.activation.eqxform"
        if word in N.DTYPES:
            return "support.type.dtype.eqxform"
        return "variable.other.eqxform"


def _nodes(obj):
    import dataclasses

    if isinstance(obj, tuple):
        for item in obj:
            yield from _nodes(item)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, (A.Span, A.Source)):
        yield obj
        for f in dataclasses.fields(obj):
            yield from _nodes(getattr(obj, f.name))


def check_every_token(grammar, text: str):
    spec = parse(text)
    roles = Roles(spec)
    scopes = grammar.tokenize(text)
    checked = 0
    for token in tokens(text):
        if token.type == "NEWLINE":
            continue
        found = {leaf(s) for s in scopes[token.line - 1][token.column - 1 : token.end_column - 1]}
        expected = roles.expected(token)
        assert found == {expected}, (text.splitlines()[token.line - 1], token, found, expected)
        checked += 1
    return checked


def test_every_token_of_every_example_spec_gets_its_scope(grammar):
    assert SPECS
    total = 0
    for path in SPECS:
        total += check_every_token(grammar, path.read_text())
    assert total > 200


def test_every_token_of_every_fixture_that_parses_gets_its_scope(grammar):
    parsing = [p for p in FIXTURES if not parse_collect(p.read_text())[1]]
    assert parsing
    for path in parsing:
        check_every_token(grammar, path.read_text())


# One hand-written case or more for each scope of the grammar: (line, the text
# of the token, which occurrence of it on the line, the scope).
CASES = [
    ("# a comment", "# a comment", 0, "comment.line.number-sign.eqxform"),
    ("seed 0  # trailing", "# trailing", 0, "comment.line.number-sign.eqxform"),
    ("model MLP(depth=2)", "model", 0, "keyword.control.directive.eqxform"),
    ("seed 0", "seed", 0, "keyword.control.directive.eqxform"),
    ("let width = 64", "let", 0, "keyword.control.directive.eqxform"),
    ("let width = 64", "width", 0, "entity.name.variable.eqxform"),
    ("where x -> freeze", "where", 0, "keyword.control.directive.eqxform"),
    ("optimizer adam(learning_rate=1)", "optimizer", 0, "keyword.control.directive.eqxform"),
    ("optimizer adamw(learning_rate=1)", "adamw", 0, "support.function.optimizer.eqxform"),
    ("optimizer adamx(learning_rate=1)", "adamx", 0, "variable.other.eqxform"),
    ("ensemble 8", "ensemble", 0, "keyword.control.directive.eqxform"),
    ("stack mlps scan 10 remat", "stack", 0, "keyword.control.directive.eqxform"),
    ("stack mlps scan 10 remat", "scan", 0, "keyword.other.eqxform"),
    ("stack mlps vmap unroll 2", "unroll", 0, "keyword.other.eqxform"),
    ("stack mlps scan 10 remat", "remat", 0, "keyword.other.eqxform"),
    ("stack mlps scan 10 remat", "mlps", 0, "variable.other.member.eqxform"),
    ("stack layers scan 4 copies", "copies", 0, "keyword.other.eqxform"),
    ("unstack blocks[0:4]", "unstack", 0, "keyword.control.directive.eqxform"),
    ("mesh data=2 model=4", "mesh", 0, "keyword.control.directive.eqxform"),
    ("mesh data=2 model=4", "model", 0, "variable.parameter.eqxform"),
    ("input f32[3,224,224]", "input", 0, "keyword.control.directive.eqxform"),
    ("where x -> freeze", "->", 0, "keyword.operator.arrow.eqxform"),
    ("where x -> freeze, lr 0.1", "freeze", 0, "keyword.other.action.eqxform"),
    ("where x -> freeze, lr 0.1", "lr", 0, "keyword.other.action.eqxform"),
    ("where x -> lora(rank=4, alpha=8)", "lora", 0, "keyword.other.action.eqxform"),
    ("where x -> merge", "merge", 0, "keyword.other.action.eqxform"),
    ("where x -> shard (none, model)", "shard", 0, "keyword.other.action.eqxform"),
    ("where x -> frieze", "frieze", 0, "variable.other.eqxform"),
    ("where x -> init he_normal", "init", 0, "keyword.other.action.eqxform"),
    ("where x -> init he_normal", "he_normal", 0, "support.function.initializer.eqxform"),
    ("where x -> init normal(stddev=1)", "normal", 0, "support.function.initializer.eqxform"),
    ("where x -> init normal(stddev=1)", "stddev", 0, "variable.parameter.eqxform"),
    ("where x -> wrap positive(minimum=0.1)", "positive", 0, "support.function.wrapper.eqxform"),
    ("where x -> replace Linear(in_features=2)", "Linear", 0, "entity.name.type.eqxform"),
    ("where Linear.weight -> freeze", "Linear", 0, "entity.name.type.eqxform"),
    ("where Linear.weight -> freeze", "weight", 0, "variable.other.member.eqxform"),
    ("where Linear.weight -> freeze", ".", 0, "punctuation.accessor.eqxform"),
    ("where **.bias -> freeze", "**", 0, "variable.language.wildcard.eqxform"),
    ("where layers[*].* -> freeze", "*", 0, "variable.language.wildcard.eqxform"),
    ("where layers[*].* -> freeze", "*", 1, "variable.language.wildcard.eqxform"),
    ("where layers[1:-1] -> freeze", ":", 0, "punctuation.separator.slice.eqxform"),
    ("where layers[1:-1] -> freeze", "[", 0, "punctuation.section.brackets.begin.eqxform"),
    ("where layers[1:-1] -> freeze", "]", 0, "punctuation.section.brackets.end.eqxform"),
    ("where layers[1:-1] -> freeze", "-", 0, "keyword.operator.arithmetic.eqxform"),
    ("where layers[1:-1] -> freeze", "1", 1, "constant.numeric.eqxform"),
    ("where a | b -> freeze", "|", 0, "keyword.operator.alternation.eqxform"),
    ("where x if ndim == 2 -> freeze", "if", 0, "keyword.control.eqxform"),
    ("where x if ndim == 2 -> freeze", "ndim", 0, "variable.language.eqxform"),
    ("where x if ndim == 2 -> freeze", "==", 0, "keyword.operator.comparison.eqxform"),
    ("where x if ndim >= 2 -> freeze", ">=", 0, "keyword.operator.comparison.eqxform"),
    ("where x expect 2 -> freeze", "expect", 0, "keyword.control.eqxform"),
    ("where x if a and not b or c -> freeze", "and", 0, "keyword.operator.logical.eqxform"),
    ("where x if a and not b or c -> freeze", "not", 0, "keyword.operator.logical.eqxform"),
    ("where x if a and not b or c -> freeze", "or", 0, "keyword.operator.logical.eqxform"),
    ("let a = true", "true", 0, "constant.language.eqxform"),
    ("let a = none", "none", 0, "constant.language.eqxform"),
    ("let a = 1e-3", "1e-3", 0, "constant.numeric.eqxform"),
    ("let a = .5", ".5", 0, "constant.numeric.eqxform"),
    ("let a = x2", "x2", 0, "variable.other.eqxform"),
    ('let a = "text # not a comment"', '"text # not a comment"', 0, "string.quoted.double.eqxform"),
    ("let a = 'single'", "'single'", 0, "string.quoted.single.eqxform"),
    ("let a = 2 ** 3", "**", 0, "keyword.operator.arithmetic.eqxform"),
    ("let a = 2 * 3", "*", 0, "keyword.operator.arithmetic.eqxform"),
    ("let a = 7 // 2 % 3", "//", 0, "keyword.operator.arithmetic.eqxform"),
    ("let a = 1 + 2", "+", 0, "keyword.operator.arithmetic.eqxform"),
    ("let a = 1", "=", 0, "keyword.operator.assignment.eqxform"),
    ("let a = sqrt(2)", "sqrt", 0, "support.function.builtin.eqxform"),
    ("let a = max(1, 2)", ",", 0, "punctuation.separator.comma.eqxform"),
    ("let a = max(1, 2)", "(", 0, "punctuation.section.parens.begin.eqxform"),
    ("let a = max(1, 2)", ")", 0, "punctuation.section.parens.end.eqxform"),
    ("let a = [1, 2]", "[", 0, "punctuation.section.brackets.begin.eqxform"),
    ("where x -> replace gelu", "gelu", 0, "support.function.activation.eqxform"),
    ("where x -> cast bfloat16", "bfloat16", 0, "support.type.dtype.eqxform"),
    ("model pkg.mod:make(width=3)", "pkg.mod:make", 0, "entity.name.type.qualified.eqxform"),
    (
        "where equinox:BatchNorm except head -> freeze",
        "equinox:BatchNorm",
        0,
        "entity.name.type.qualified.eqxform",
    ),
    ("where ** except head -> freeze", "except", 0, "keyword.operator.except.eqxform"),
    ("where x expect any -> freeze", "any", 0, "keyword.other.eqxform"),
    ("input f32[3,8,8]", "input", 0, "keyword.control.directive.eqxform"),
    ("model MLP(scan=true)", "scan", 0, "variable.parameter.eqxform"),
    ("ensemble 4 over data", "over", 0, "keyword.other.eqxform"),
    ("ensemble 4 vary lr=logspace(1e-4, 1e-2)", "vary", 0, "keyword.other.eqxform"),
    ("ensemble 4 vary lr=logspace(1e-4, 1e-2)", "lr", 0, "variable.parameter.eqxform"),
    ("ensemble grid lr=[1e-3, 1e-2]", "grid", 0, "keyword.other.eqxform"),
]


@pytest.mark.parametrize("text, word, occurrence, scope", CASES)
def test_hand_written_case(grammar, text, word, occurrence, scope):
    column = [m.start() for m in re.finditer(re.escape(word), text)][occurrence] + 1
    assert scope_of(grammar, text, 1, column, column + len(word)) == scope


def test_every_scope_of_the_grammar_has_a_hand_written_case():
    named = set(re.findall(r'"(?:name|contentName)": "([^"]+)"', GRAMMAR_PATH.read_text()))
    named = {s for s in named if s.endswith(".eqxform") and not s.startswith("meta.")}
    assert named - {case[3] for case in CASES} == set()


def test_word_lists_follow_the_names_tables(grammar):
    """Every name the interpreter knows gets its scope in its place, so the
    grammar's lists cannot drift from `_names`."""
    cases = (
        [(f"where x -> {a}", a, "keyword.other.action.eqxform") for a in ACTIONS]
        + [
            (f"where x -> init {i}", i, "support.function.initializer.eqxform")
            for i in N.INITIALIZERS
        ]
        + [(f"where x -> wrap {w}", w, "support.function.wrapper.eqxform") for w in N.WRAPPERS]
        + [
            (f"optimizer {o}(learning_rate=1)", o, "support.function.optimizer.eqxform")
            for o in N.OPTIMIZERS
        ]
        + [
            (f"where x -> replace {f}", f, "support.function.activation.eqxform")
            for f in N.FUNCTIONS
        ]
        + [(f"where x -> cast {d}", d, "support.type.dtype.eqxform") for d in N.DTYPES]
        + [(f"where x if {c} -> freeze", c, "variable.language.eqxform") for c in N.CONTEXT_NAMES]
        + [(f"let a = {f}(1)", f, "support.function.builtin.eqxform") for f in N.EXPR_FUNCTIONS]
        + [
            (f"{d} x", d, "keyword.control.directive.eqxform")
            for d in (
                "model",
                "seed",
                "let",
                "where",
                "optimizer",
                "ensemble",
                "stack",
                "unstack",
                "mesh",
                "input",
            )
        ]
    )
    for text, word, scope in cases:
        column = text.rindex(word) + 1
        assert scope_of(grammar, text, 1, column, column + len(word)) == scope, text


def test_regions_close_at_the_end_of_the_line(grammar):
    # An unclosed bracket must not colour the lines after it.
    text = "model MLP(in_size=2\nseed 0\nwhere x -> freeze\n"
    assert scope_of(grammar, text, 2, 1, 5) == "keyword.control.directive.eqxform"
    assert scope_of(grammar, text, 3, 1, 6) == "keyword.control.directive.eqxform"


def test_regexes_mean_the_same_in_python():
    # The tokenizer runs the grammar's (Oniguruma) patterns with Python's `re`;
    # keep them to the syntax the two share.
    data = json.loads(GRAMMAR_PATH.read_text())
    sources = re.findall(r'"(?:match|begin|end)": ("(?:[^"\\]|\\.)*")', GRAMMAR_PATH.read_text())
    assert len(sources) > 20
    for source in sources:
        pattern = json.loads(source)
        re.compile(pattern)
        for construct in (r"\h", r"\G", r"\A", r"\z", "(?<name>", "*+", "++", "?+", r"\k<"):
            assert construct not in pattern, pattern
    assert data["scopeName"] == "source.eqxform"


def test_every_token_of_the_mesh_syntax_gets_its_scope(grammar):
    text = (
        "mesh data=2 model=-1\n"
        "stack blocks scan 4 remat over model\n"
        "ensemble 8 over data\n"
        "where Linear.weight -> shard (none, (data, model)), init zeros\n"
        "where **.bias -> shard model\n"
    )
    assert check_every_token(grammar, text) > 20
