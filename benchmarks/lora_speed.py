"""LoRA by eqxform against full fine-tuning and against LoRA written by hand.

On a 12-block transformer-like model (attention in and out projections and a
4x MLP per block, every one an `eqx.nn.Linear`):

- optimiser-state bytes (adam) and peak training memory (XLA's compiled memory
  analysis of the step, where the backend gives one): full fine-tuning vs
  `where ** -> freeze` + `where Linear -> lora(rank=8, alpha=16)`;
- step time of `eqxform.make_step` on the adapted model against a training
  step over a hand-written LoRA `Linear` in plain Equinox (only A and B passed
  to the optimiser, the base closed over as a jit argument), target <= 1.1x.

    python benchmarks/lora_speed.py [--quick | --smoke]

`--smoke` is the smallest size: that it runs.
"""

from __future__ import annotations

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import eqxform


class Block(eqx.Module):
    attn_in: eqx.nn.Linear
    attn_out: eqx.nn.Linear
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, dim, *, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.attn_in = eqx.nn.Linear(dim, 3 * dim, key=k1)
        self.attn_out = eqx.nn.Linear(dim, dim, key=k2)
        self.fc1 = eqx.nn.Linear(dim, 4 * dim, key=k3)
        self.fc2 = eqx.nn.Linear(4 * dim, dim, key=k4)

    def __call__(self, x):
        q, k, v = jnp.split(jax.vmap(self.attn_in)(x), 3, axis=-1)
        w = jax.nn.softmax(q @ k.T / math.sqrt(q.shape[-1]), axis=-1)
        x = x + jax.vmap(self.attn_out)(w @ v)
        return x + jax.vmap(self.fc2)(jax.nn.gelu(jax.vmap(self.fc1)(x)))


class Model(eqx.Module):
    blocks: list

    def __init__(self, dim, depth, *, key):
        self.blocks = [Block(dim, key=k) for k in jax.random.split(key, depth)]

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class HandLoRA(eqx.Module):
    """LoRA as a user writes it in plain Equinox."""

    weight: jax.Array
    bias: jax.Array
    a: jax.Array
    b: jax.Array
    scale: float = eqx.field(static=True)

    def __call__(self, x):
        return self.weight @ x + self.bias + self.scale * (self.b @ (self.a @ x))


def loss_fn(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def opt_bytes(state) -> int:
    return sum(
        x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state) if eqx.is_array(x)
    )


def peak(step_fn, *args) -> int | None:
    """Bytes a compiled step holds at once: arguments, outputs and temporaries
    (less what outputs reuse of donated arguments), from XLA's analysis."""
    try:
        stats = jax.jit(step_fn).lower(*args).compile().memory_analysis()
    except Exception:  # a backend without the analysis
        return None
    if stats is None:
        return None
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - getattr(stats, "alias_size_in_bytes", 0)
    )
    return total


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def timed(fn, repeats) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="the smallest size: that it runs")
    args = parser.parse_args()
    dim, depth, batch, seq, steps = (128, 12, 4, 32, 5) if args.quick else (256, 12, 8, 64, 20)
    if args.smoke:
        dim, depth, batch, seq, steps = 32, 2, 2, 8, 2
    key = jax.random.key(0)
    model = Model(dim, depth, key=key)
    x = jax.random.normal(jax.random.key(1), (batch, seq, dim))
    y = jax.random.normal(jax.random.key(2), (batch, seq, dim))
    adam = optax.adam(1e-3)

    # Full fine-tuning.
    full_params = eqx.filter(model, eqx.is_inexact_array)
    full_state = adam.init(full_params)

    def full_step(params, state, x, y):
        grads = jax.grad(loss_fn)(params, x, y)
        updates, state = adam.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # eqxform LoRA.
    program = eqxform.compile(
        "optimizer adam(learning_rate=1e-3)\n"
        "where ** -> freeze\n"
        "where Linear -> lora(rank=8, alpha=16)\n"
    )
    adapted = program.apply(model, key=key)
    opt = eqxform.optimizer(program, adapted)
    lora_params = eqx.filter(adapted, eqx.is_inexact_array)
    lora_state = opt.init(lora_params)

    def lora_step(params, state, x, y):
        grads = jax.grad(lambda p: loss_fn(eqxform.resolve(p), x, y))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # Hand-written LoRA: the same factors, the base an argument that is not trained.
    def to_hand(layer):
        if not isinstance(layer, eqxform.LoRA):
            return layer
        w = layer.base.weight.value
        return HandLoRA(w, layer.base.bias.value, layer.lora_a, layer.lora_b, 2.0)

    hand = jax.tree_util.tree_map(to_hand, adapted, is_leaf=lambda n: isinstance(n, eqxform.LoRA))
    is_factor = jax.tree_util.tree_map(lambda _: False, hand)
    is_factor = eqx.tree_at(
        lambda m: (
            [lin.a for b in m.blocks for lin in (b.attn_in, b.attn_out, b.fc1, b.fc2)]
            + [lin.b for b in m.blocks for lin in (b.attn_in, b.attn_out, b.fc1, b.fc2)]
        ),
        is_factor,
        replace_fn=lambda _: True,
    )
    train, frozen = eqx.partition(hand, is_factor)
    hand_state = adam.init(train)

    @jax.jit
    def hand_jit(train, state, frozen, x, y):
        grads = jax.grad(lambda t: loss_fn(eqx.combine(t, frozen), x, y))(train)
        updates, state = adam.update(grads, state, train)
        return optax.apply_updates(train, updates), state

    hand_jit = jax.jit(hand_jit, donate_argnums=(0, 1))

    peak_full = peak(full_step, full_params, full_state, x, y)
    peak_lora = peak(lora_step, lora_params, lora_state, x, y)
    rows = [
        ("optimizer state", f"{opt_bytes(full_state) / 2**20:.2f} MiB",
         f"{opt_bytes(lora_state) / 2**20:.3f} MiB",
         f"{opt_bytes(lora_state) / opt_bytes(full_state):.4f}"),
        ("peak step memory", _mib(peak_full), _mib(peak_lora),
         "n/a" if peak_full is None or peak_lora is None else f"{peak_lora / peak_full:.4f}"),
    ]  # fmt: skip

    step = eqxform.make_step(loss_fn, opt, adapted)

    def run_ours():
        for _ in range(steps):
            loss = step(x, y)
        loss.block_until_ready()

    carry = [jax.tree_util.tree_map(jnp.copy, train), hand_state]

    def run_hand():
        for _ in range(steps):
            carry[0], carry[1] = hand_jit(carry[0], carry[1], frozen, x, y)
        jax.block_until_ready(carry[0])

    repeats = 1 if args.smoke else 3
    t_ours, t_hand = timed(run_ours, repeats) / steps, timed(run_hand, repeats) / steps
    print(
        f"model: {depth} blocks, dim {dim}, batch {batch}x{seq}; adam; LoRA rank 8 on every Linear"
    )
    print(f"parameters: {sum(x.size for x in jax.tree_util.tree_leaves(full_params)):,}, "
          f"trainable with LoRA: {program.plan(model).trainable:,}")  # fmt: skip
    print()
    print(f"{'':<20}{'full fine-tuning':>20}{'eqxform LoRA':>18}{'ratio':>10}")
    for name, a, b, r in rows:
        print(f"{name:<20}{a:>20}{b:>18}{r:>10}")
    print()
    print(f"{'step time':<20}{'hand LoRA (Equinox)':>20}{'eqxform LoRA':>18}{'ratio':>10}")
    print(f"{'':<20}{t_hand * 1e3:>17.2f} ms{t_ours * 1e3:>15.2f} ms{t_ours / t_hand:>9.2f}x")


if __name__ == "__main__":
    main()
