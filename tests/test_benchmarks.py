"""Every benchmark runs: a smoke run of each, at its smallest size.

The convention, for every script `benchmarks/*.py` (found by globbing, so a new
one is covered without a change here):

- `python benchmarks/NAME.py --smoke` runs it at its smallest size, in seconds:
  the point is that it still runs, not what it measures;
- it prints its table of ratios against the named baseline, each ratio written
  as `1.23x`;
- it exits 0; a benchmark that finds it would not measure what it says (such
  as `check_speed.py`'s linter importing JAX) exits non-zero with the reason.

Only that is asserted, never a timing: machines are noisy. Each runs in its
own process, as a user runs it (some set `XLA_FLAGS` before JAX starts).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))

# A ratio cell, `0.93x` or `12.40x`, as every benchmark's table writes them.
_RATIO = re.compile(r"(?<![\w.])\d+\.\d+x(?!\w)")


def test_there_are_benchmarks():
    assert len(BENCHMARKS) >= 8


# `libraries.py` compiles each published library's model several times even
# at its smallest size (over a minute); the jobs it times are run and checked
# against hand-written code by tests/test_libraries.py and
# tests/test_library_stacks.py, so its smoke run is `slow` (EQXFORM_SLOW=1).
_SLOW = {"libraries"}


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem in _SLOW else p for p in BENCHMARKS],
    ids=lambda p: p.stem,
)
def test_benchmark_runs_at_its_smallest_size(path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "160"}
    result = subprocess.run(
        [sys.executable, str(path), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert _RATIO.search(result.stdout), f"no ratio (`1.23x`) in its table:\n{result.stdout}"
