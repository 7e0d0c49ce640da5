"""`eqxform check`: the JAX-free linter, and the model-aware check, against
`python -c pass`.

`check` of a spec with no model (no `model` line, no model file) is a linter:
it imports no JAX, so its start-up should stay within a small factor of
Python's own. The benchmark makes sure of that before it times it (a spec that
names a model makes `check` model-aware, and the linter row would silently
measure JAX). With a `model` line, `check` plans every rule on the model's
shapes: that is the second kind of row. Both kinds check the same rules, which
are clean against the model (warnings aside), so every run exits 0.

Run: `python benchmarks/check_speed.py` (`--smoke` for the smallest size: that
it runs at all).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RULES = 5000  # the linter
MODEL_RULES = 1000  # the model-aware check, which plans every rule
MODEL = "model MLP(in_size=2, out_size=2, width_size=64, depth=3)"

# `python -m eqxform check SPEC`, as `-m` runs it, then whether JAX was imported.
_PROBE = """
import runpy, sys
sys.argv = ["eqxform", "check", sys.argv[1]]
try:
    runpy.run_module("eqxform", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print("jax" in sys.modules)
"""


def make_spec(rules: int, model: bool) -> str:
    """`rules` rules over the model's layers; with `model`, the spec names the
    model, and `check` becomes model-aware."""
    lines = ([MODEL] if model else []) + ["let width = 64"]
    forms = [
        "where Linear.weight -> init trunc_normal(stddev=1 / sqrt(fan_in), lower=-2, upper=2)",
        "where layers[{i}].bias if shape[0] == width -> init zeros",  # the hidden layers
        "where layers[-1] -> replace Linear(in_features=width, out_features={o})",
        "where **.weight | layers[1:3].bias -> scale 0.5, cast bfloat16",
    ]
    for i in range(rules):
        lines.append(forms[i % len(forms)].format(i=i % 3, o=i % 3 + 1))
    return "\n".join(lines) + "\n"


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check(spec: Path, repeats: int, model_aware: bool) -> float:
    """The median wall time of `eqxform check SPEC`, each run making sure that
    it imported JAX exactly when it is `model_aware`: what the row says."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, str(spec)], check=True, capture_output=True, text=True
        )
        times.append(time.perf_counter() - start)
        if (result.stdout.strip().splitlines()[-1] == "True") != model_aware:
            raise SystemExit(
                f"`eqxform check {spec.name}` {'did not import' if model_aware else 'imported'} "
                "JAX: the row would not measure what it says"
            )
    return statistics.median(times)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from eqxform._compile import compile_collect

    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="the smallest size: that it runs")
    args = parser.parse_args()
    rules, model_rules = (100, 20) if args.smoke else (RULES, MODEL_RULES)
    repeats = 1 if args.smoke else 5

    text = make_spec(rules, model=False)
    times = []
    for _ in range(1 if args.smoke else 3):
        start = time.perf_counter()
        program, diagnostics = compile_collect(text, "big.eqx")
        times.append(time.perf_counter() - start)
        assert program is not None and not diagnostics, diagnostics
    parse_check = statistics.median(times)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        python = wall([sys.executable, "-c", "pass"], repeats)
        for name, n, model in (
            ("linter", 10, False),
            ("linter", rules, False),
            ("model-aware", 10, True),
            ("model-aware", model_rules, True),
        ):
            path = Path(tmp) / f"{name}-{n}.eqx"
            path.write_text(make_spec(n, model))
            rows.append((f"eqxform check, {name} ({n:,} rules)", check(path, repeats, model)))

    table = Table(title="eqxform check against python -c pass")
    for column in ("what", "seconds", "ratio"):
        table.add_column(column, justify="right")
    table.add_row(f"compile_collect, {rules:,} rules (in process)", f"{parse_check:.3f}", "")
    table.add_row("per rule", f"{parse_check / rules * 1e6:.0f} us", "")
    table.add_row("python -c pass", f"{python:.3f}", "1.00x")
    for what, seconds in rows:
        table.add_row(what, f"{seconds:.3f}", f"{seconds / python:.2f}x")
    Console(width=100).print(table)


if __name__ == "__main__":
    main()
