"""A small, safe evaluator for the expressions of a spec.

Nothing is `eval`ed or imported: names resolve through a mapping, calls through
a fixed table, and every error points at the span that caused it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import _ast as A
from . import _limits as L
from . import _names as N
from ._diagnostics import report


@dataclass(frozen=True)
class _Named:
    name: str

    def __str__(self) -> str:
        return self.name


class FunctionRef(_Named):
    """A `jax.nn` function named in a spec (`gelu`); resolved when a model is built."""


class DTypeRef(_Named):
    """A dtype named in a spec (`bfloat16`)."""


class EvalError(Exception):
    """An expression that cannot be evaluated: the diagnostic of `code` (its
    own where the problem has one, a limit; else `E204`), with no source yet:
    the caller knows which spec it is."""

    def __init__(self, code: str, span: A.Span, **fields):
        self.diagnostic = report(code, span=span, **fields)
        self.code, self.message = code, self.diagnostic.message
        super().__init__(self.message)


def _too_large(span: A.Span) -> EvalError:
    return EvalError("E150", span, max_int_bits=L.MAX_INT_BITS)


def _before(op: str, left: Any, right: Any, span: A.Span) -> None:
    """Refuse an operation whose result would be too large, before computing it:
    `9**9**9` would run for hours and `"a" * 10**10` allocate 10 GB."""
    if op == "**" and isinstance(left, int) and isinstance(right, int):
        if abs(left) > 1 and right > 0 and (abs(left).bit_length() - 1) * right > L.MAX_INT_BITS:
            raise _too_large(span)
    if op == "%" and isinstance(left, str):  # printf-style formatting: `"%.999999999f" % 1`
        raise EvalError("E204", span)
    if op == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list)) and isinstance(n, int) and not isinstance(n, bool):
                if len(seq) * n > L.MAX_SEQUENCE_LENGTH:
                    raise _too_long(span)


def _too_long(span: A.Span) -> EvalError:
    return EvalError("E151", span, max_sequence_length=L.MAX_SEQUENCE_LENGTH)


def _checked(value: Any, span: A.Span) -> Any:
    """A computed value within the limits (finite, not too large, not too long)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > L.MAX_INT_BITS:
            raise _too_large(span)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise EvalError("E150", span, variant="gives_finite", value=value)
    elif isinstance(value, (str, list)) and len(value) > L.MAX_SEQUENCE_LENGTH:
        raise _too_long(span)
    return value


def _sqrt(x):
    if x < 0:
        raise ValueError(f"`sqrt` of a negative number ({x})")
    return math.sqrt(x)


def _log(x):
    if x <= 0:
        raise ValueError(f"`log` of a number that is not positive ({x})")
    return math.log(x)


_FUNCTIONS: dict[str, Callable] = {
    "sqrt": _sqrt,
    "log": _log,
    "exp": math.exp,
    "abs": abs,
    "min": min,
    "max": max,
}

_BINARY = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _kind(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple):
        return "a shape"
    if isinstance(value, list):
        return "a list"
    return f"`{value}`"


def evaluate(
    expr: A.Expr,
    env: Mapping[str, Any],
    call: Callable[[A.Call, Mapping[str, Any]], Any] | None = None,
) -> Any:
    """Evaluate `expr` with names from `env`; `call` handles constructor calls."""
    if isinstance(expr, A.Number):
        return expr.value
    if isinstance(expr, A.String):
        return expr.value
    if isinstance(expr, A.Name):
        return lookup(expr, env)
    if isinstance(expr, A.ListExpr):
        return _checked([evaluate(item, env, call) for item in expr.items], expr.span)
    if isinstance(expr, A.TupleExpr):
        raise EvalError("E204", expr.span, variant="tuple_only")
    if isinstance(expr, A.Unary):
        value = evaluate(expr.operand, env, call)
        if expr.op == "not":
            return not value
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise EvalError(
                "E204", expr.span, variant="needs_number", op=expr.op, kind_value=_kind(value)
            )
        return -value if expr.op == "-" else value
    if isinstance(expr, A.Binary):
        if expr.op == "and":
            return evaluate(expr.left, env, call) and evaluate(expr.right, env, call)
        if expr.op == "or":
            return evaluate(expr.left, env, call) or evaluate(expr.right, env, call)
        left = evaluate(expr.left, env, call)
        right = evaluate(expr.right, env, call)
        _before(expr.op, left, right, expr.span)
        try:
            result = _BINARY[expr.op](left, right)
        except ZeroDivisionError:
            raise EvalError("E204", expr.span, variant="division_by_zero") from None
        except OverflowError:
            raise _too_large(expr.span) from None
        except TypeError:
            raise EvalError(
                "E204",
                expr.span,
                variant="cannot_apply",
                op=expr.op,
                kind_left=_kind(left),
                kind_right=_kind(right),
            ) from None
        if isinstance(result, complex):  # `(-8) ** 0.5`
            raise EvalError("E204", expr.span, variant="gives_complex", op=expr.op)
        return _checked(result, expr.span)
    if isinstance(expr, A.Conditional):
        branch = expr.then if evaluate(expr.test, env, call) else expr.orelse
        return evaluate(branch, env, call)
    if isinstance(expr, A.Subscript):
        value = evaluate(expr.value, env, call)
        index = evaluate(expr.index, env, call)
        if not isinstance(value, (tuple, list, str)):
            raise EvalError("E204", expr.span, variant="not_indexable", kind_value=_kind(value))
        if not isinstance(index, int) or isinstance(index, bool):
            raise EvalError(
                "E204", expr.index.span, variant="index_integer", kind_index=_kind(index)
            )
        try:
            return value[index]
        except IndexError:
            raise EvalError(
                "E204",
                expr.span,
                variant="out_of_range",
                index=index,
                kind_value=_kind(value),
                len_value=len(value),
            ) from None
    if isinstance(expr, A.Call):
        if expr.callee in _FUNCTIONS:
            args = [evaluate(a.value, env, call) for a in expr.args]
            if any(a.name is not None for a in expr.args):
                raise EvalError("E204", expr.span, variant="takes_keyword", callee=expr.callee)
            arity = N.EXPR_FUNCTIONS[expr.callee]
            if arity is not None and len(args) != arity:
                raise EvalError(
                    "E204",
                    expr.span,
                    variant="takes_argument",
                    callee=expr.callee,
                    arity=arity,
                    len_args=len(args),
                )
            try:
                return _checked(_FUNCTIONS[expr.callee](*args), expr.span)
            except OverflowError:
                raise _too_large(expr.span) from None
            except (ValueError, TypeError) as e:
                raise EvalError("E204", expr.span, variant="failed", error=str(e)) from None
        if call is None:
            raise EvalError(
                "E204", expr.callee_span, variant="unknown_function", callee=expr.callee
            )
        return call(expr, env)
    raise EvalError("E204", expr.span, variant="unevaluable")


def bare_word(expr: A.Expr, kind: Any) -> A.Expr | str:
    """An argument that is one of a few words (`policy=dots_saveable`) may be
    written bare: the word, for a name among `kind`'s; else the expression."""
    if isinstance(kind, tuple) and isinstance(expr, A.Name) and expr.id in kind:
        return expr.id
    return expr


def lookup(name: A.Name, env: Mapping[str, Any]) -> Any:
    if name.id in env:
        return env[name.id]
    if name.id in N.CONSTANTS:
        return N.CONSTANTS[name.id]
    if name.id in N.FUNCTIONS:
        return FunctionRef(name.id)
    if name.id in N.DTYPES:
        return DTypeRef(name.id)
    raise EvalError("E204", name.span, variant="unknown_name", id=name.id)


def walk(expr: A.Expr | None) -> Iterator[A.Expr]:
    """Every sub-expression of `expr`, itself first, in the text's order.
    (`A.nodes(expr)` finds the same, but visits every field of every node:
    the checker walks each expression, and this is several times faster.)"""
    if expr is None:
        return
    yield expr
    if isinstance(expr, A.Unary):
        yield from walk(expr.operand)
    elif isinstance(expr, A.Binary):
        yield from walk(expr.left)
        yield from walk(expr.right)
    elif isinstance(expr, A.Conditional):
        yield from walk(expr.then)
        yield from walk(expr.test)
        yield from walk(expr.orelse)
    elif isinstance(expr, A.Subscript):
        yield from walk(expr.value)
        yield from walk(expr.index)
    elif isinstance(expr, (A.ListExpr, A.TupleExpr)):
        for item in expr.items:
            yield from walk(item)
    elif isinstance(expr, A.Call):
        for arg in expr.args:
            yield from walk(arg.value)


def render(value: Any) -> str:
    """A value as spec text, for recipes and plans (`gelu`, `"x"`, `[1, 2]`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value + '"' if '"' not in value else "'" + value + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, _Named):
        return value.name
    raise TypeError(f"cannot write {value!r} into a spec")
