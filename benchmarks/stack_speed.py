"""Scan-over-layers and ensembles: eqxform against the hand-written tricks.

1. Compile time (forward and gradient, under `jax.jit`) of a chain of N MLPs
   (width 64): unrolled, `stack mlps scan`, and the hand-written scan of the
   Equinox tricks page. Then run time per call after compilation.
2. An ensemble of 8 evaluated through `evaluate_ensemble` against a
   hand-written `filter_vmap` and a Python loop over 8 models.

Run: `python benchmarks/stack_speed.py` (`--quick` for N up to 64, `--smoke` for
the smallest size: that it runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

import eqxform
from eqxform.models import MLPChain

WIDTH = 64


def hand_scan(chain: MLPChain):
    # The tricks page's `TenMLPs.__call__`, over the same weights.
    stacked = jax.tree_util.tree_map(
        lambda *xs: jnp.stack(xs) if eqx.is_array(xs[0]) else xs[0], *chain.mlps.layers
    )
    dynamic, static = eqx.partition(stacked, eqx.is_array)

    def call(dynamic, x):
        def f(_x, _d):
            return eqx.combine(_d, static)(_x), None

        out, _ = jax.lax.scan(f, x, dynamic)
        return out

    return dynamic, call


def compile_times(fn, args) -> tuple[float, float, float]:
    """(forward compile, gradient compile, run time per call) in seconds."""

    def loss(*a):
        return jnp.sum(fn(*a) ** 2)

    start = time.perf_counter()
    fwd = jax.jit(fn).lower(*args).compile()
    t_fwd = time.perf_counter() - start
    start = time.perf_counter()
    jax.jit(jax.grad(loss)).lower(*args).compile()
    t_grad = time.perf_counter() - start
    jax.block_until_ready(fwd(*args))
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            out = fwd(*args)
        jax.block_until_ready(out)
        runs.append((time.perf_counter() - start) / 20)
    return t_fwd, t_grad, statistics.median(runs)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="the smallest size: that it runs")
    args = parser.parse_args()
    counts = (8, 32, 64) if args.quick else (8, 32, 64, 128, 256)
    if args.smoke:
        counts = (2,)
    console = Console()
    x = jnp.ones(WIDTH)

    table = Table(
        title=f"compile time, chain of N MLPs (width {WIDTH}), seconds: forward + gradient"
    )
    for column in (
        "N",
        "unrolled",
        "hand scan",
        "stack scan",
        "ours/hand",
        "ours/unrolled",
        "run unrolled (us)",
        "run stacked (us)",
    ):
        table.add_column(column, justify="right")
    for n in counts:
        chain = MLPChain(WIDTH, n, key=jax.random.key(n))
        params, static = eqx.partition(chain, eqx.is_array)
        unrolled = compile_times(lambda p, x: eqx.combine(p, static)(x), (params, x))
        dynamic, call = hand_scan(chain)
        hand = compile_times(call, (dynamic, x))
        stacked = eqxform.compile(f"stack mlps scan {n}").apply(chain, key=jax.random.key(0))
        sp, ss = eqx.partition(stacked, eqx.is_array)
        ours = compile_times(lambda p, x: eqx.combine(p, ss)(x), (sp, x))
        t_u, t_h, t_o = (sum(t[:2]) for t in (unrolled, hand, ours))
        table.add_row(
            str(n),
            f"{unrolled[0]:.2f} + {unrolled[1]:.2f}",
            f"{hand[0]:.2f} + {hand[1]:.2f}",
            f"{ours[0]:.2f} + {ours[1]:.2f}",
            f"{t_o / t_h:.2f}x",
            f"{t_o / t_u:.2f}x",
            f"{unrolled[2] * 1e6:.0f}",
            f"{ours[2] * 1e6:.0f}",
        )
    console.print(table)

    table = Table(title="ensemble of 8 MLP(2, 2, 64, 2): time per evaluation (us)")
    for column in ("hand filter_vmap", "evaluate_ensemble", "ratio", "Python loop", "loop / ours"):
        table.add_column(column, justify="right")
    ens = eqxform.compile(
        "model MLP(in_size=2, out_size=2, width_size=64, depth=2)\nensemble 8"
    ).apply()
    x = jnp.ones(2)
    hand = eqx.filter_jit(eqx.filter_vmap(lambda m, x: m(x), in_axes=(eqx.if_array(0), None)))
    ours = eqx.filter_jit(eqxform.evaluate_ensemble)
    members = [ens.member(i) for i in range(8)]
    loop = eqx.filter_jit(lambda m, x: m(x))

    def timed(f, repeats=25 if args.smoke else 2000):
        jax.block_until_ready(f())
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(repeats // 5):
                out = f()
            jax.block_until_ready(out)
            samples.append((time.perf_counter() - start) / (repeats // 5))
        return statistics.median(samples)

    t_hand = timed(lambda: hand(ens.model, x))
    t_ours = timed(lambda: ours(ens, x))
    t_loop = timed(lambda: [loop(m, x) for m in members], 5 if args.smoke else 400)
    table.add_row(
        f"{t_hand * 1e6:.0f}",
        f"{t_ours * 1e6:.0f}",
        f"{t_ours / t_hand:.2f}x",
        f"{t_loop * 1e6:.0f}",
        f"{t_loop / t_ours:.1f}x",
    )
    console.print(table)


if __name__ == "__main__":
    main()
