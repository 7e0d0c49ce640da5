"""Parse + check of a 5,000-rule spec, and `eqxform check` against `python -c pass`.

Run: `python benchmarks/check_speed.py`. `check` is a linter: it imports no
JAX, so its start-up should stay within a small factor of Python's own.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RULES = 5000


def make_spec(rules: int) -> str:
    lines = ["model MLP(in_size=2, out_size=2, width_size=64, depth=3)", "let width = 64"]
    forms = [
        "where Linear.weight -> init trunc_normal(stddev=1/sqrt(fan_in), lower=-2, upper=2)",
        "where layers[{i}].bias if shape[0] == width -> init zeros",
        "where layers[-1] -> replace Linear(in_features=width, out_features={i})",
        "where **.weight | layers[1:3].bias -> scale 0.5, cast bfloat16",
    ]
    for i in range(rules):
        lines.append(forms[i % len(forms)].format(i=i % 3 + 1))
    return "\n".join(lines) + "\n"


def wall(cmd: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from eqxform._compile import compile_collect

    text = make_spec(RULES)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        program, diagnostics = compile_collect(text, "big.eqx")
        times.append(time.perf_counter() - start)
        assert not diagnostics and program is not None
    parse_check = statistics.median(times)

    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.eqx"
        small.write_text(make_spec(10))
        big = Path(tmp) / "big.eqx"
        big.write_text(text)
        python = wall([sys.executable, "-c", "pass"])
        check_small = wall([sys.executable, "-m", "eqxform", "check", str(small)])
        check_big = wall([sys.executable, "-m", "eqxform", "check", str(big)], repeats=3)

    table = Table(title="parse + check")
    for column in ("what", "seconds", "ratio"):
        table.add_column(column, justify="right")
    table.add_row(f"compile_collect, {RULES:,} rules (in process)", f"{parse_check:.3f}", "")
    table.add_row("per rule", f"{parse_check / RULES * 1e6:.0f} us", "")
    table.add_row("python -c pass", f"{python:.3f}", "1.00x")
    table.add_row("eqxform check (10 rules)", f"{check_small:.3f}", f"{check_small / python:.2f}x")
    table.add_row(
        f"eqxform check ({RULES:,} rules)", f"{check_big:.3f}", f"{check_big / python:.2f}x"
    )
    Console().print(table)


if __name__ == "__main__":
    main()
