"""Temporary memory of a training step with `where blocks[*] -> remat`, against
`eqx.filter_checkpoint` written by hand around each block's call.

The model's parent loops over its blocks in Python and calls each with keyword
arguments and its own key (`x = blk(x, key=k, inference=inference)`), as
ESM2 and ViT do. The memory is XLA's compiled `memory_analysis()` of one
jitted gradient step (`temp_size_in_bytes`). On the CPU, XLA's
`cse_barrier_expander` pass folds the recomputation of `jax.checkpoint` in an
unrolled loop back into the forward pass, so that a checkpoint saves nothing;
this script turns that pass off (it sets `XLA_FLAGS` before JAX starts).

    python benchmarks/remat_memory.py [--smoke]

`--smoke` is the smallest size: that it runs.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_disable_hlo_passes=cse_barrier_expander"
).strip()

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402

import eqxform  # noqa: E402


class Block(eqx.Module):
    norm: eqx.nn.LayerNorm
    up: eqx.nn.Linear
    down: eqx.nn.Linear
    drop: eqx.nn.Dropout

    def __init__(self, dim, *, key):
        k1, k2 = jr.split(key)
        self.norm = eqx.nn.LayerNorm(dim)
        self.up = eqx.nn.Linear(dim, 4 * dim, key=k1)
        self.down = eqx.nn.Linear(4 * dim, dim, key=k2)
        self.drop = eqx.nn.Dropout(0.1)

    def __call__(self, x, *, key=None, inference=False):
        y = jax.vmap(self.up)(jax.vmap(self.norm)(x))
        y = jax.vmap(self.down)(jax.nn.gelu(y))
        return x + self.drop(y, key=key, inference=inference)


class Model(eqx.Module):
    blocks: list
    head: eqx.nn.Linear

    def __init__(self, dim, depth, *, key):
        keys = jr.split(key, depth + 1)
        self.blocks = [Block(dim, key=k) for k in keys[:-1]]
        self.head = eqx.nn.Linear(dim, dim, key=keys[-1])

    def __call__(self, x, *, key, inference=False, checkpoint=False):
        for blk, k in zip(self.blocks, jr.split(key, len(self.blocks))):
            call = eqx.filter_checkpoint(blk) if checkpoint else blk
            x = call(x, key=k, inference=inference)
        return jax.vmap(self.head)(x)


def temp_bytes(model, x, checkpoint=False) -> int:
    params, static = eqx.partition(model, eqx.is_array)

    def loss(params, x, key):
        m = eqxform.resolve(eqx.combine(params, static))
        keys = jr.split(key, x.shape[0])
        out = jax.vmap(lambda a, k: m(a, key=k, checkpoint=checkpoint))(x, keys)
        return jnp.mean(out**2)

    compiled = jax.jit(jax.grad(loss)).lower(params, x, jr.key(0)).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def main(smoke: bool) -> None:
    seq, dim, depth, batch = (32, 32, 2, 2) if smoke else (512, 256, 8, 8)
    model = Model(dim, depth, key=jr.key(0))
    x = jnp.zeros((batch, seq, dim))
    hand = temp_bytes(model, x, checkpoint=True)
    rows = [("no checkpoints", temp_bytes(model, x)), ("eqx.filter_checkpoint by hand", hand)]
    for action in ("remat", "remat(policy=dots_saveable)"):
        program = eqxform.compile(f"where blocks[*] -> {action}\n")
        rows.append((f"where blocks[*] -> {action}", temp_bytes(program.apply(model), x)))
    print(
        f"temp bytes of one training step: batch {batch}, sequence {seq}, width {dim}, "
        f"{depth} blocks ({jax.devices()[0].platform})"
    )
    print(f"{'variant':48} {'temp bytes':>14} {'vs by hand':>11}")
    for name, size in rows:
        print(f"{name:48} {size:>14,} {size / hand:>10.2f}x")


if __name__ == "__main__":
    main("--smoke" in sys.argv[1:])
