"""Per-step time of `eqxform.make_step` against (a) a naive `eqx.filter_jit`
step in a Python loop and (b) the floor: `jax.jit` over the flat array leaves
with donated buffers; and of `make_step(stop_if_nonfinite=True)` (what
`eqxform train` runs: the step keeps the last finite model inside the compiled
step). MLPs of width 16, batch 16, adam, on the default device.

Run: `python benchmarks/step_speed.py` (`--quick` for fewer steps, `--smoke` for
the smallest size: that it runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import eqxform

DEPTHS = (2, 8, 32, 64)


def loss_fn(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def naive(model, opt, x, y):
    @eqx.filter_jit
    def step(model, state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, loss

    state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    box = [model, state]

    def run():
        box[0], box[1], loss = step(box[0], box[1], x, y)
        return loss

    return run


def floor(model, opt, x, y):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params = jax.tree_util.tree_map(jnp.copy, params)
    flat, pdef = jax.tree_util.tree_flatten(params)
    sflat, sdef = jax.tree_util.tree_flatten(opt.init(params))

    def step(flat, sflat, x, y):
        p = jax.tree_util.tree_unflatten(pdef, flat)
        s = jax.tree_util.tree_unflatten(sdef, sflat)
        loss, grads = jax.value_and_grad(lambda p: loss_fn(eqx.combine(p, static), x, y))(p)
        updates, s = opt.update(grads, s, p)
        p = optax.apply_updates(p, updates)
        return jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(s), loss

    compiled = jax.jit(step, donate_argnums=(0, 1))
    box = [flat, sflat]

    def run():
        box[0], box[1], loss = compiled(box[0], box[1], x, y)
        return loss

    return run


def ours(model, opt, x, y, **options):
    step = eqxform.make_step(loss_fn, opt, model, **options)
    return lambda: step(x, y)


def per_step(run, steps: int, repeats: int) -> float:
    jax.block_until_ready(run())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = run()
        jax.block_until_ready(loss)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="the smallest size: that it runs")
    args = parser.parse_args()
    steps, repeats = (100, 3) if args.quick else (300, 5)
    depths = DEPTHS[:1] if args.smoke else DEPTHS
    if args.smoke:
        steps, repeats = 5, 1

    table = Table(title=f"time per training step on {jax.devices()[0].platform} (microseconds)")
    for column in (
        "depth",
        "floor",
        "naive filter_jit",
        "naive / floor",
        "make_step",
        "make_step / floor",
        "guarded",
        "guarded / floor",
    ):
        table.add_column(column, justify="right")
    key = jax.random.key(0)
    x = jax.random.normal(key, (16, 16))
    y = jax.random.normal(jax.random.fold_in(key, 1), (16, 16))
    for depth in depths:
        model = eqx.nn.MLP(16, 16, 16, depth, key=jax.random.fold_in(key, depth))
        opt = optax.adam(1e-3)
        t_floor = per_step(floor(model, opt, x, y), steps, repeats)
        t_naive = per_step(naive(model, opt, x, y), steps, repeats)
        t_ours = per_step(ours(model, opt, x, y), steps, repeats)
        t_guarded = per_step(ours(model, opt, x, y, stop_if_nonfinite=True), steps, repeats)
        table.add_row(
            str(depth),
            f"{t_floor * 1e6:.0f}",
            f"{t_naive * 1e6:.0f}",
            f"{t_naive / t_floor:.2f}x",
            f"{t_ours * 1e6:.0f}",
            f"{t_ours / t_floor:.2f}x",
            f"{t_guarded * 1e6:.0f}",
            f"{t_guarded / t_floor:.2f}x",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
