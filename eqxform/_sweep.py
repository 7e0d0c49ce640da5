"""A sweep: the hyper-parameters of each member of an `ensemble ... vary` or
`ensemble grid` line, evaluated from the line's expressions.

`ensemble 8 vary lr=logspace(1e-4, 1e-2), seed` gives each of 8 members its
own `lr` (8 values from 1e-4 to 1e-2, evenly spaced in log) and its own seed;
`ensemble grid lr=[1e-3, 1e-2] weight_decay=[0, 1e-4]` gives the 4 members of
the product (the first name varies slowest). A value may read `member`, the
member's index from 0 (`lr=1e-3 * 2 ** member`). A varied name is bound per
member like a `let` name; the checker holds it to the places where a number
changes no structure (`_check.py`). Nothing here knows about JAX.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import _ast as A
from . import _limits as L
from ._diagnostics import Diagnostic, report
from ._expr import EvalError, evaluate

MEMBER = "member"
SEED = "seed"
# Functions of a varied value that spread the members over a range: each takes
# the first and the last value, both included.
SPREADS = ("logspace", "linspace")


@dataclass(frozen=True)
class Sweep:
    """The members of a sweep and each one's values.

    **Attributes:**

    - `stmt`: the `ensemble` line.
    - `names`: the varied names, in the order the line gives them (`seed`
      among them when the seed varies).
    - `members`: per member, its values by name (`seed`: the member's seed).
    - `seed_offsets`: True when `seed` stands alone (`vary seed`): member `k`
      takes the spec's seed plus `k`, so `--seed` moves every member's seed.
    - `model_names`: the varied names that the model's rules read (`init`,
      `scale`; not the optimiser's); the others change only the training.
    """

    stmt: A.EnsembleStmt
    names: tuple[str, ...]
    members: tuple[Mapping[str, int | float], ...]
    seed_offsets: bool = False
    model_names: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def bound(self) -> tuple[str, ...]:
        """The names an expression of the spec reads (all but `seed`)."""
        return tuple(n for n in self.names if n != SEED)

    @property
    def varies_seed(self) -> bool:
        return SEED in self.names

    def env(self, env: Mapping[str, Any], k: int) -> dict[str, Any]:
        """`env` with member `k`'s values bound."""
        return {**env, **{n: self.members[k][n] for n in self.bound}}

    def seed(self, base: int, k: int) -> int:
        """Member `k`'s seed when the spec's (or `--seed`'s) seed is `base`."""
        if not self.varies_seed:
            return base
        if self.seed_offsets:
            return base + k
        return int(self.members[k][SEED])

    def alike(self, k: int, base: int) -> int:
        """The first member whose model is member `k`'s: built from the same
        seed with the same values of `model_names` (in a learning-rate sweep
        without `vary seed`, member 0 for every `k`), so that it is built once."""

        def built_from(j: int) -> tuple:
            seed = self.seed(base, j) if self.varies_seed else None
            return seed, tuple(self.members[j][n] for n in self.model_names)

        mine = built_from(k)
        return next(j for j in range(k + 1) if built_from(j) == mine)

    def values(self, k: int, base: int) -> dict[str, int | float]:
        """Member `k`'s values by name, its seed as it is built from `base`."""
        out = dict(self.members[k])
        if self.varies_seed:
            out[SEED] = self.seed(base, k)
        return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}` (a boolean)"
    if isinstance(value, str):
        return f'`"{value}"` (a string)'
    if isinstance(value, (list, tuple)):
        return "a list"
    if value is None:
        return "`none`"
    return f"`{value}`"


def _spread(vary: A.Vary, call: A.Call, env, count: int) -> list[float]:
    if len(call.args) != 2 or any(a.name is not None for a in call.args):
        raise EvalError("E171", call.span, callee=call.callee, count=count)
    lo, hi = (evaluate(a.value, env) for a in call.args)
    for a, v in zip(call.args, (lo, hi)):
        if not _number(v):
            raise EvalError(
                "E171",
                a.value.span,
                variant="needs_numbers",
                callee=call.callee,
                describe_v=_describe(v),
                name=vary.name,
            )
    if count == 1:
        return [float(lo)]
    if call.callee == "linspace":
        inner = [lo + (hi - lo) * k / (count - 1) for k in range(1, count - 1)]
        return [lo, *inner, hi]
    if lo <= 0 or hi <= 0:
        raise EvalError("E171", call.span, variant="logspace_needs", lo=lo, hi=hi)
    # Powers of ten, as `numpy.logspace` computes them; the ends exactly as written.
    a, b = math.log10(lo), math.log10(hi)
    inner = [10 ** (a + (b - a) * k / (count - 1)) for k in range(1, count - 1)]
    return [lo, *inner, hi]


def _per_member(vary: A.Vary, env, count: int, grid: bool) -> list:
    """The values of one varied name, one per member (or, for a grid axis, one
    per point of the axis)."""
    value = vary.value
    assert value is not None
    if isinstance(value, A.Call) and value.callee in SPREADS and not grid:
        return _spread(vary, value, env, count)
    if grid or isinstance(value, A.ListExpr):
        if not isinstance(value, A.ListExpr):
            raise EvalError("E171", value.span, variant="grid_axis", name=vary.name)
        items = evaluate(value, env)
        if not items:
            raise EvalError("E172", value.span, name=vary.name)
        if not grid and len(items) != count:
            raise EvalError(
                "E172",
                value.span,
                variant="gives_values",
                name=vary.name,
                len_items=len(items),
                count=count,
            )
        return list(items)
    return [evaluate(value, {**env, MEMBER: k}) for k in range(count)]


def _check_value(vary: A.Vary, k: int, value: Any, span: A.Span, grid: bool) -> None:
    # A grid axis's value `k` goes to several members: it is named by its place.
    if vary.name == SEED:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            variant = "seed_value" if grid else "seed_member"
            raise EvalError("E171", span, variant=variant, k=k, describe_value=_describe(value))
        if value > L.MAX_SEED:
            variant = "seed_value_max" if grid else "seed_member_max"
            raise EvalError("E171", span, variant=variant, k=k, value=value)
        return
    if not _number(value):
        raise EvalError(
            "E171",
            span,
            variant="grid_number" if grid else "member_number",
            name=vary.name,
            k=k,
            describe_value=_describe(value),
        )


def _too_many(stmt: A.EnsembleStmt, count: int, source: A.Source) -> Diagnostic:
    return report(
        "E155", variant="sweep", span=stmt.span, source=source, count=count, max_sweep=L.MAX_SWEEP
    )


def evaluate_sweep(
    stmt: A.EnsembleStmt, env: Mapping[str, Any], count: int | None, source: A.Source
) -> tuple[Sweep | None, list[Diagnostic]]:
    """The members of `stmt` (`count` of them for `vary`; None for `grid`),
    or the diagnostics that stop them."""
    problems: list[Diagnostic] = []
    if count is not None and count > L.MAX_SWEEP:
        return None, [_too_many(stmt, count, source)]
    columns: dict[str, list] = {}
    seed_offsets = False
    # The checker has refused a name given twice, and a name without values
    # other than `seed`.
    for vary in stmt.vary:
        if vary.value is None:
            seed_offsets = True
            columns[SEED] = [None] * (count or 1)
            continue
        try:
            values = _per_member(vary, env, count or 0, stmt.grid)
            for k, v in enumerate(values):
                _check_value(vary, k, v, vary.value.span, stmt.grid)
        except EvalError as e:
            d = e.diagnostic  # an expression's own failure is the sweep's E171
            problems.append(replace(d, code="E171" if d.code == "E204" else d.code, source=source))
            continue
        columns[vary.name] = values
    if problems:
        return None, problems
    names, points = tuple(columns), math.prod(len(c) for c in columns.values())
    if stmt.grid and points > L.MAX_SWEEP:
        return None, [_too_many(stmt, points, source)]
    if stmt.grid:
        rows = [dict(zip(names, point)) for point in itertools.product(*columns.values())]
    else:
        rows = [{n: columns[n][k] for n in names} for k in range(count or 0)]
    if seed_offsets:
        for row in rows:
            row.pop(SEED, None)
    return Sweep(stmt, names, tuple(rows), seed_offsets), []
