"""Constructor calls -> modules: `model`, `replace`, `eqxform new` and loading."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from . import _ast as A
from . import _limits as L
from . import _names as N
from . import _registry as R
from ._diagnostics import Diagnostic, report
from ._errors import EqxformError, SpecError, UsageError, first_line
from ._expr import DTypeRef, EvalError, FunctionRef, evaluate, render, walk
from ._hashing import stable_hash
from ._select import too_deep
from ._values import byte_budget, constructor_limit, format_bytes


def to_python(value: Any) -> Any:
    """Spec values -> what a constructor takes (`gelu` -> `jax.nn.gelu`)."""
    if isinstance(value, FunctionRef):
        return R.function(value.name)
    if isinstance(value, DTypeRef):
        import jax.numpy as jnp

        return jnp.dtype(value.name)
    if isinstance(value, list):
        return [to_python(v) for v in value]
    return value


def build(
    call: A.Call,
    env: Mapping[str, Any],
    key: Any,
    source: A.Source | None = None,
    allow: Iterable[str] = (),
) -> Any:
    """Call the constructor `call` names, with `key` (nested calls get their own)."""
    import jax

    try:
        fn = R.resolve_constructor(call.callee, allow)
    except R.NotAllowed as e:
        raise SpecError(R.not_allowed_diagnostic(e.module, call.callee_span, source)) from None
    except R.ImportFailed as e:
        raise SpecError(
            R.import_failed_diagnostic(e, call.callee, call.callee_span, source)
        ) from None

    counter = iter(range(1, 1 << 30))

    def nested(inner: A.Call, env: Mapping[str, Any]) -> Any:
        return build(inner, env, jax.random.fold_in(key, next(counter)), source, allow)

    args, kwargs = [], {}
    signature = R.constructor_signature(call.callee) if ":" not in call.callee else None
    positional = [p for p in signature.positional if p != "key"] if signature else []
    try:
        for i, arg in enumerate(call.args):
            value = evaluate(arg.value, env, nested)
            name = arg.name or (positional[i] if i < len(positional) else None)
            # Before anything is built: a loop count such as `depth=1000000`
            # would hang even the skeleton.
            bad = constructor_limit(call.callee, name, value, arg.value.span, source)
            if bad is not None:
                raise SpecError(bad)
            value = to_python(value)
            if arg.name is None:
                args.append(value)
            else:
                kwargs[arg.name] = value
    except EvalError as e:
        raise SpecError(replace(e.diagnostic, source=source)) from None
    if signature is not None:
        takes_key = "key" in signature.names
    else:
        try:
            takes_key = "key" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes_key = False
    if takes_key:
        kwargs["key"] = key

    def measured():
        # Its depth before anything of JAX flattens it.
        model = fn(*args, **kwargs)
        bad = too_deep(model, f"the model `{call.callee}(...)` builds", call.span, source)
        if bad is not None:
            raise SpecError(bad)
        return model

    try:
        if not isinstance(key, jax.core.Tracer):
            # Built for real (not traced for a plan): its size first, on shapes
            # alone. A constructor that cannot be traced (one that reads its
            # key's value, say) is built as it is, unmeasured.
            import equinox as eqx

            try:
                skeleton = eqx.filter_eval_shape(measured)
            except EqxformError:
                raise
            except Exception:
                skeleton = None
            bad = budget_diagnostic(nbytes(skeleton), f"`{call.callee}(...)`", call.span, source)
            if bad is not None:
                raise SpecError(bad)
            if skeleton is not None:
                return fn(*args, **kwargs)
        return measured()
    except EqxformError:
        raise
    except Exception as e:  # the constructor's own complaint, shown where it was called
        raise SpecError.of(
            "E205", span=call.span, source=source, callee=call.callee, message=first_line(e)
        ) from None


def import_allowed(exprs: Iterable[A.Expr | None], allow: Iterable[str]) -> None:
    """Import the module of every `package.module:function` constructor that
    `exprs` call (nested calls too) and `allow` permits, now, before any JAX
    transformation runs: a module imported first under `filter_eval_shape`
    (loading builds the skeleton so) would keep the tracers of the arrays it
    creates at import time (a table of constants), and the model would fail
    later with `UnexpectedTracerError`. A module that fails to import is left
    to `build`, which reports it where the call is written (E117, E126)."""
    allow = tuple(allow)
    if not allow:
        return
    for expr in exprs:
        for e in walk(expr):
            if isinstance(e, A.Call) and ":" in e.callee:
                try:
                    R.resolve_constructor(e.callee, allow)
                except Exception:
                    pass


def nbytes(tree: Any) -> int:
    """The bytes of the arrays (or shape structs) of `tree`."""
    import jax
    import numpy as np

    total = 0
    for x in jax.tree_util.tree_leaves(tree):
        shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
        if shape is not None and dtype is not None:
            total += math.prod(shape) * np.dtype(dtype).itemsize
    return total


def budget_diagnostic(size: int, what: str, span, source) -> Diagnostic | None:
    """E158 when `size` bytes of arrays exceed the memory budget."""
    budget = byte_budget()
    if budget is None or size <= budget:
        return None
    return report(
        "E158",
        span=span,
        source=source,
        what=what,
        format_bytes_size=format_bytes(size),
        format_bytes_budget=format_bytes(budget),
        max_bytes_env=L.MAX_BYTES_ENV,
    )


def render_call(call: A.Call, env: Mapping[str, Any]) -> str:
    """The call with every argument evaluated: what a recipe stores."""

    def value(expr: A.Expr) -> str:
        if isinstance(expr, A.Call) and expr.callee not in N.EXPR_FUNCTIONS:
            return render_call(expr, env)
        if isinstance(expr, A.ListExpr):
            return "[" + ", ".join(value(i) for i in expr.items) + "]"
        return render(evaluate(expr, env))

    parts = [(f"{a.name}=" if a.name else "") + value(a.value) for a in call.args]
    return f"{call.callee}({', '.join(parts)})"


MODEL_TAG = stable_hash("model")


def is_constructor(subject: Any) -> bool:
    """Is `subject`, given where a model is taken, a constructor of one: a
    callable that is no model (a function of a key, as the Equinox Tricks
    page's `make_ensemble` vmaps)?"""
    import equinox as eqx

    return callable(subject) and not isinstance(subject, (eqx.Module, tuple, list, dict))


def from_constructor(constructor: Any, key: Any) -> Any:
    """The model `constructor` builds from `key` (the key folded with the
    model's tag, as a `model` directive's is)."""
    import jax

    name = getattr(constructor, "__name__", type(constructor).__name__)
    try:
        inspect.signature(constructor).bind(key)
    except TypeError:
        raise UsageError.of("E438", name=name) from None
    except ValueError:  # no signature to read (a builtin): the call says
        pass
    try:
        return constructor(jax.random.fold_in(key, MODEL_TAG))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as e:
        raise UsageError.of("E382", name=name, error=first_line(e)) from None
