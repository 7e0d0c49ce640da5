"""`Program.apply` of a re-initialisation against the hand-written code.

The baseline is `init_linear_weight` from the Equinox documentation's tricks
page, with its `trunc_init`. Each case runs in a fresh process, so "cold" is a
real first call (tracing and compilation included); "warm" is the median of the
calls after it. Run: `python benchmarks/init_speed.py` (`--quick` for fewer
repeats, `--smoke` for the smallest size: that it runs). Prints ratios ours / hand-written; below 1 means eqxform is faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SPEC = "where Linear.weight -> init trunc_normal(stddev=1/sqrt(fan_in), lower=-2, upper=2)"

CASES = {
    "1000 x Linear(32, 32)": (1000, 32),
    "8 x Linear(2048, 2048)": (8, 2048),
}
SCALING = (100, 1000, 10000)


def worker(kind: str, count: int, size: int, repeats: int) -> dict:
    import math

    import equinox as eqx
    import jax

    import eqxform

    keys = jax.random.split(jax.random.key(0), count)
    model = [eqx.nn.Linear(size, size, key=k) for k in keys]
    jax.block_until_ready(model)

    def trunc_init(weight, key):
        out, in_ = weight.shape
        stddev = math.sqrt(1 / in_)
        return stddev * jax.random.truncated_normal(key, shape=(out, in_), lower=-2, upper=2)

    def init_linear_weight(model, init_fn, key):
        is_linear = lambda x: isinstance(x, eqx.nn.Linear)  # noqa: E731
        get_weights = lambda m: [  # noqa: E731
            x.weight for x in jax.tree_util.tree_leaves(m, is_leaf=is_linear) if is_linear(x)
        ]
        weights = get_weights(model)
        new_weights = [
            init_fn(weight, subkey)
            for weight, subkey in zip(weights, jax.random.split(key, len(weights)))
        ]
        return eqx.tree_at(get_weights, model, new_weights)

    if kind == "ours":
        program = eqxform.compile(SPEC)
        run = lambda key: program.apply(model, key=key)  # noqa: E731
    else:
        run = lambda key: init_linear_weight(model, trunc_init, key)  # noqa: E731

    times = []
    for i in range(repeats + 1):
        key = jax.random.key(i + 1)
        start = time.perf_counter()
        out = run(key)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    return {"cold": times[0], "warm": statistics.median(times[1:])}


def measure(kind: str, count: int, size: int, repeats: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(count), str(size), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="the smallest size: that it runs")
    parser.add_argument("--worker", nargs=4)
    args = parser.parse_args()
    if args.smoke:  # that it runs: small, and in this process (no cold starts)
        global CASES, SCALING, measure
        CASES, SCALING, measure = {"10 x Linear(8, 8)": (10, 8)}, (10,), worker
    if args.worker:
        kind, count, size, repeats = args.worker
        print(json.dumps(worker(kind, int(count), int(size), int(repeats))))
        return
    repeats = 1 if args.smoke else 3 if args.quick else 7
    console = Console()

    table = Table(title="init trunc_normal: eqxform vs hand-written (seconds)")
    for column in ("model", "hand cold", "ours cold", "ratio", "hand warm", "ours warm", "ratio"):
        table.add_column(column, justify="right")
    for name, (count, size) in CASES.items():
        hand = measure("hand", count, size, repeats)
        ours = measure("ours", count, size, repeats)
        table.add_row(
            name,
            f"{hand['cold']:.3f}",
            f"{ours['cold']:.3f}",
            f"{ours['cold'] / hand['cold']:.2f}x",
            f"{hand['warm']:.4f}",
            f"{ours['warm']:.4f}",
            f"{ours['warm'] / hand['warm']:.2f}x",
        )
    console.print(table)

    table = Table(title="scaling: warm time per matched leaf, Linear(8, 8) layers")
    for column in ("leaves", "ours warm (s)", "per leaf (us)", "hand warm (s)", "ratio"):
        table.add_column(column, justify="right")
    for count in SCALING:
        ours = measure("ours", count, 8, repeats)
        hand = measure("hand", count, 8, repeats)
        table.add_row(
            f"{count:,}",
            f"{ours['warm']:.4f}",
            f"{ours['warm'] / count * 1e6:.1f}",
            f"{hand['warm']:.4f}",
            f"{ours['warm'] / hand['warm']:.2f}x",
        )
    console.print(table)


if __name__ == "__main__":
    main()
