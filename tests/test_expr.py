"""The expression language against Python's own: every documented operator,
infix and prefix, with Python's precedence and associativity.

The operators are read from the language reference (docs/language.md), so an
operator documented there and not parsed here fails; expressions drawn by
hypothesis are evaluated by eqxform and by Python, and must agree value for
value (and type for type).
"""

import math
import re
from pathlib import Path

import equinox as eqx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eqxform
from eqxform import _limits as L
from eqxform._expr import EvalError, evaluate
from eqxform._format import format_spec
from eqxform._parse import parse, parse_expr

LANGUAGE = Path(__file__).parent.parent / "docs" / "language.md"


def documented_operators() -> list[str]:
    """The operators the `## Expressions` section lists in backticks."""
    section = LANGUAGE.read_text(encoding="utf-8").split("## Expressions", 1)[1]
    paragraph = section.split("\n\n", 2)[1]
    found = []
    for quoted in re.findall(r"`([^`]+)`", paragraph):
        for word in quoted.split():
            if re.fullmatch(r"[-+*/%<>=!]+|and|or|not", word):
                found.append(word)
    return found


OPERATORS = documented_operators()
PREFIX = {"-", "+", "not"}  # the operators Python also has as prefixes


def ours(text: str):
    return evaluate(parse_expr(text), {})


def python(text: str):
    # The test's own oracle: Python evaluating the same text, nothing else in scope.
    return eval(text, {"__builtins__": {}}, {})  # noqa: S307


def test_the_reference_lists_the_operators():
    # Not vacuous: the extraction finds the arithmetic, comparisons and logic.
    assert {"+", "-", "*", "/", "//", "%", "**", "==", "<", "and", "or", "not"} <= set(OPERATORS)


@pytest.mark.parametrize("op", [o for o in OPERATORS if o != "not"])
@pytest.mark.parametrize("left,right", [(7, 2), (2, 7), (-3, 2), (2.5, 4), (0, 3)])
def test_every_documented_operator_infix(op, left, right):
    text = f"{left} {op} {right}"
    got, want = ours(text), python(text)
    assert got == want and type(got) is type(want), text
    # Also inside a statement, spaced or not: `let n = 7-2`, `scale 7 - 2`.
    tight = f"{left}{op}{right}" if op.isascii() and not op.isalpha() else text
    let = parse(f"let n = {tight}").statements[0]
    assert evaluate(let.value, {}) == want, tight


@pytest.mark.parametrize("op", sorted(PREFIX & set(OPERATORS)))
@pytest.mark.parametrize("operand", ["3", "0", "2.5", "(1 - 4)"])
def test_every_documented_prefix_operator(op, operand):
    text = f"{op} {operand}"
    assert ours(text) == python(text), text
    assert ours(f"{op}{operand}" if op != "not" else text) == python(text)


@pytest.mark.parametrize(
    "text",
    [
        "a - -b",
        "a - - - b",
        "a--b",
        "2 ** -1",
        "-2 ** 2",
        "-2 ** -2",
        "2 ** 3 ** 2",
        "(2 ** 3) ** 2",
        "10 - 4 - 3",
        "10 - (4 - 3)",
        "100 / 10 / 5",
        "17 // 5 * 3",
        "17 % 5 ** 2",
        "-17 % 5",
        "-7 // 2",
        "+-+3",
        "2 * -3",
        "1 + 2 * 3 - 4 / 8",
        "not 1 < 2",
        "not 1 - 1",
        "1 < 2 and 3 - 3 or 5",
        "1 - 1 or not 0 and 2",
        "3 - 1 if 1 - 1 else 4 - 2",
        "a - b if a > b else b - a",
    ],
)
def test_precedence_and_associativity_as_in_python(text):
    env = {"a": 5, "b": 3}
    want = eval(text, {"__builtins__": {}}, dict(env))  # noqa: S307
    got = evaluate(parse_expr(text), env)
    assert got == want and type(got) is type(want), text


# ---- drawn expressions -------------------------------------------------------
#
# Flat chains of operators over small numbers, with prefixes and brackets, so
# that eqxform and Python each decide the grouping. At most two `**` per
# expression: `5 ** 5 ** 5 ** 5` would take Python hours.

_NUMBERS = st.sampled_from(["0", "1", "2", "3", "5", "0.5", "2.5", "4.0"])
_ARITH = st.sampled_from(["+", "-", "*", "/", "//", "%", "**"])
_COMPARE = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])


@st.composite
def _arith(draw, depth=0):
    def operand():
        prefix = "".join(draw(st.lists(st.sampled_from(["-", "+"]), max_size=2)))
        if depth < 2 and draw(st.booleans()):
            inner = draw(_arith(depth + 1))
            return f"{prefix}({inner})"
        return prefix + draw(_NUMBERS)

    parts = [operand()]
    for _ in range(draw(st.integers(0, 4))):
        spaced = draw(st.booleans())
        op = draw(_ARITH)
        parts.append(f" {op} " if spaced else op)
        parts.append(operand())
    return "".join(parts)


@st.composite
def _logic(draw):
    def clause():
        text = draw(_arith())
        if draw(st.booleans()):
            text = f"{text} {draw(_COMPARE)} {draw(_arith())}"
        return ("not " if draw(st.booleans()) else "") + text

    parts = [clause()]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(st.sampled_from([" and ", " or "])), clause()]
    text = "".join(parts)
    if draw(st.booleans()):
        text = f"{clause()} if {text} else {clause()}"
    return text


def _agree(text: str) -> bool:
    """Do eqxform and Python agree on `text`? True when both gave a value."""
    if text.count("**") > 2:
        return False
    try:
        want = python(text)
    except (ZeroDivisionError, OverflowError, TypeError):
        # Python failed (a division by zero, an overflow, arithmetic on a complex
        # number): so does eqxform, with its own diagnostic for the first it meets.
        with pytest.raises(EvalError) as info:
            ours(text)
        message = info.value.message
        assert (
            "division by zero" in message or "complex" in message or (info.value.code == "E150")
        ), (text, message)
        return False
    too_large = (isinstance(want, int) and want.bit_length() > L.MAX_INT_BITS) or (
        isinstance(want, float) and not math.isfinite(want)
    )
    if isinstance(want, complex) or too_large:
        with pytest.raises(EvalError):
            ours(text)
        return False
    try:
        got = ours(text)
    except EvalError as e:
        # Python compared a complex intermediate (`(-2.0) ** 0.5 == 1` is False);
        # eqxform refuses the complex number where it arises.
        assert "complex" in e.message and "**" in text, (text, e.message)
        return False
    assert got == want and type(got) is type(want), (text, got, want)
    return True


_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_drawn_arithmetic_agrees_with_python():
    compared = []

    @_SETTINGS
    @given(_arith())
    def check(text):
        compared.append(_agree(text))

    check()
    assert sum(compared) >= 50  # many drawn expressions have a value to compare


def test_drawn_logic_agrees_with_python():
    compared = []

    @_SETTINGS
    @given(_logic())
    def check(text):
        compared.append(_agree(text))

    check()
    assert sum(compared) >= 50  # many drawn expressions have a value to compare


# ---- binary minus where users write it ----------------------------------------


def test_binary_minus_in_lets_and_actions(getkey):
    model = eqx.nn.MLP(4, 4, 8, 2, key=getkey())
    spec = (
        "let width = 8\n"
        "let n = width - 1\n"
        "where Linear.weight if shape[0] == n + 1 -> scale 3 - 1\n"
        "where layers[-1].bias -> scale n-width\n"
    )
    out = eqxform.compile(spec).apply(model, key=getkey())
    for before, after in zip(model.layers, out.layers):
        if before.weight.shape[0] == 8:
            np.testing.assert_array_equal(after.weight, 2 * before.weight)
        else:
            np.testing.assert_array_equal(after.weight, before.weight)
    np.testing.assert_array_equal(out.layers[-1].bias, -model.layers[-1].bias)


def test_the_formatter_prints_binary_minus_back():
    cases = {
        "let a = 1-2": "let a = 1 - 2\n",
        "let a = 1 - -2": "let a = 1 - -2\n",
        "let a = 1--2": "let a = 1 - -2\n",
        "let a = -2**2": "let a = -2 ** 2\n",
        "let a = (1-2)-3": "let a = (1 - 2) - 3\n",
        "where x -> scale 3-1": "where x -> scale 3 - 1\n",
        "where x[-1] -> lr 1e-3-1e-4": "where x[-1] -> lr 1e-3 - 1e-4\n",
    }
    for text, expected in cases.items():
        assert format_spec(text) == expected, text
        assert format_spec(expected) == expected
        before = parse(text).statements[0]
        after = parse(expected).statements[0]
        value = getattr(before, "value", None)
        if value is not None:
            assert evaluate(value, {}) == evaluate(after.value, {})
