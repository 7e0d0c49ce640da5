"""Values that come from outside a spec's text, checked and shown one way.

The kinds of an action's arguments and the check that a value is of its kind
(used by the checker on literal arguments and by the passes on values known
only with the model), the seeds given to the API and the command line, and
bytes: the memory budget (`EQXFORM_MAX_BYTES`, else half of the machine's
memory) and how a number of bytes is printed. JAX-free, below the checker and
the passes, so that neither imports the other for these.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Mapping
from typing import Any

from . import _ast as A
from . import _limits as L
from . import _names as N
from . import _registry as R
from ._diagnostics import Diagnostic, report
from ._errors import UsageError
from ._expr import DTypeRef, _kind, render

# ---- argument kinds -------------------------------------------------------------


def is_number(v: Any) -> bool:
    """A Python number, not a boolean."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Each kind of argument (see `_names.INITIALIZER_ARGS`): what a message calls
# it, an example of it, and the test of a value.
_KINDS = {
    "real": ("a number", "`0.5`", is_number),
    "nonneg": ("a number >= 0", "`0.02`", lambda v: is_number(v) and v >= 0),
    "fraction": (
        "a number from 0 up to (not including) 1",
        "`0.9`",
        lambda v: is_number(v) and 0 <= v < 1,
    ),
    "int": ("a whole number", "`0`", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "bool": ("`true` or `false`", "`true`", lambda v: isinstance(v, bool)),
    "dtype": ("a dtype such as `float32`", "`float32`", lambda v: isinstance(v, DTypeRef)),
}


def fits(value: Any, kind: str | tuple) -> bool:
    """Is `value` of `kind` (see `_names.INITIALIZER_ARGS`)? `KIND?` also takes `none`."""
    if isinstance(kind, tuple):
        return isinstance(value, str) and value in kind
    if kind.endswith("?") and value is None:
        return True
    return _KINDS[kind.rstrip("?")][2](value)


def as_argument(value: Any, kind: str | tuple | None) -> Any:
    """A checked value as JAX should get it: a number as a Python float, so that
    `3000000000` or `-2**63` is no integer that overflows int32."""
    if (
        kind in ("real", "nonneg", "real?", "fraction", "fraction?")
        and isinstance(value, int)
        and not isinstance(value, bool)
    ):
        return float(value)
    return value


def describe_value(value: Any) -> str:
    try:
        text = render(value)
    except TypeError:
        text = str(value)
    if len(text) > 40:
        text = text[:37] + "..."
    kind = _kind(value)
    return f"`{text}`" if kind.startswith("`") else f"{kind} (`{text}`)"


def argument_diagnostic(
    what: str,
    value: Any,
    kind: str | tuple | None,
    span: A.Span,
    source: A.Source | None,
    at: str = "",
) -> Diagnostic | None:
    """E152 when `value` is not of `kind` (None: anything goes)."""
    if kind is None or fits(value, kind):
        return None
    if isinstance(kind, tuple):
        expected, example = "one of " + ", ".join(f'`"{k}"`' for k in kind), f'`"{kind[0]}"`'
    else:
        expected, example, _ = _KINDS[kind.rstrip("?")]
        expected += " or `none`" if kind.endswith("?") else ""
    return report(
        "E152",
        span=span,
        source=source,
        what=what,
        expected=expected,
        describe_value_value=describe_value(value),
        at=at,
        example=example,
    )


def argument_kinds(kind: str, name: str) -> Mapping[str, Any]:
    """The kinds of the arguments of initialiser, wrapper or optimiser `name`."""
    table = {
        "initialiser": N.INITIALIZER_ARGS,
        "wrapper": N.WRAPPER_ARGS,
        "optimiser": N.OPTIMIZER_ARGS,
    }[kind]
    if kind == "initialiser" and R.user_initializer(name) is not None:
        return {}
    if kind == "wrapper" and name not in N.WRAPPERS:
        return {}
    return table.get(name, {})


def constructor_limit(callee: str, name: str | None, value: Any, span, source) -> Diagnostic | None:
    """E156 for an integer argument of a built-in constructor beyond its bound:
    a loop count (`depth`) beyond `MAX_LAYERS`, any other beyond `MAX_DIMENSION`."""
    if not isinstance(value, int) or isinstance(value, bool) or ":" in callee:
        return None
    if callee not in N.EQUINOX_NN and callee not in N.EXAMPLE_MODELS:
        return None
    loop = name in N.LOOP_ARGS.get(callee, ())
    bound = L.MAX_LAYERS if loop else L.MAX_DIMENSION
    if abs(value) <= bound:
        return None
    label = f"`{name}` of `{callee}`" if name else f"an argument of `{callee}`"
    return report(
        "E156",
        span=span,
        source=source,
        help=f"`{name}` builds one layer per step, even to plan the model; no network has this many"
        if loop
        else "no array dimension is this large (XLA indexes with 32 bits)",
        label=label,
        value=value,
        bound=bound,
    )


def allowed(allow: Any) -> tuple[str, ...]:
    """`allow` (the packages whose constructors may be imported, given to the
    API) as a tuple, or a usage error: a single string would otherwise be read
    as its letters."""
    ok = not isinstance(allow, (str, bytes))
    if ok:
        try:
            allow = tuple(allow)
        except TypeError:
            ok = False
    if not ok or not all(isinstance(a, str) for a in allow):
        raise UsageError.of("E449", allow=allow)
    return allow


# ---- seeds ----------------------------------------------------------------------


def is_seed(value: Any) -> bool:
    """Is `value` a seed: a whole number (not a boolean) from 0 to 2**64 - 1?"""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and 0 <= int(value) <= L.MAX_SEED
    )


def check_seed(seed: Any, what: str = "`seed`") -> int:
    """A seed given to the API, as an `int`; anything but a whole number from
    0 to 2**64 - 1 is a usage error (E430)."""
    if is_seed(seed):
        return int(seed)
    raise UsageError.of("E430", what=what, describe_value_seed=describe_value(seed))


def parse_seed(text: str | None, option: str = "--seed") -> int | None:
    """A `--seed` value: a whole number from 0 to 2**64 - 1, in decimal digits."""
    if text is None:
        return None
    digits = text.strip()
    if re.fullmatch(r"[0-9]{1,20}", digits) and is_seed(int(digits)):
        return int(digits)
    raise UsageError.of("E430", variant="whole_number", option=option, text=text)


# ---- bytes ----------------------------------------------------------------------


def format_bytes(n: int) -> str:
    """`n` bytes as a person reads them, in binary units: `512 bytes`,
    `64.0 KiB`, `37.3 GiB`."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PiB"


def half_of_memory(default: int) -> int:
    """Half of the machine's memory in bytes (`default` where it cannot be
    read): what eqxform lets one model's arrays, or one data set, take."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return default


# `EQXFORM_MAX_BYTES`: a whole number of bytes, or a number with a unit, in
# ASCII digits (Python's `int` and `float` would also take `１`, `1_000` and
# `1e9`); `none` turns the check off.
_BUDGET = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>[KMGT]?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
BUDGET_OFF = "none"


def byte_budget() -> int | None:
    """The memory budget for one model's arrays, in bytes (None: no check).
    See `_limits.MAX_BYTES_ENV`."""
    text = os.environ.get(L.MAX_BYTES_ENV, "").strip()
    if not text:
        return half_of_memory(L.DEFAULT_MAX_BYTES)
    if text.lower() == BUDGET_OFF:
        return None
    found = _BUDGET.fullmatch(text)
    if found is None:
        why = "is negative" if text.startswith("-") else "is not a number of bytes"
    elif not found["unit"] and "." in found["number"]:
        why = "is not a whole number of bytes"
    else:
        value = float(found["number"]) * _UNITS[found["unit"].lower()]
        if value >= 1:
            return int(value)
        why = "would allow no array at all" if value == 0 else "is less than one byte"
    raise UsageError.of(
        "E432", max_bytes_env=L.MAX_BYTES_ENV, text=text, why=why, budget_off=BUDGET_OFF
    )
