"""The temporary memory of one training step of a transformer whose parent
loops over its blocks with keyword arguments (`realmodels.LoopingTransformer`),
for tests/test_remat.py.

Run as `python _remat_worker.py` with `XLA_FLAGS` set by the test: it prints
one JSON line, the temp bytes (`memory_analysis()` of the compiled gradient
step) of the model as it is, after `where blocks[*] -> remat` (and with each
policy the test names), and with a hand-written `eqx.filter_checkpoint` around
each block's call. On the CPU, XLA's `cse_barrier_expander` pass folds the
recomputation of `jax.checkpoint` in an unrolled Python loop back into the
forward pass; the test turns that pass off.
"""

import json
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from realmodels import LoopingTransformer, sinusoidal_positions

import eqxform

SEQ, BATCH = 128, 4


class HandWritten(LoopingTransformer):
    """`LoopingTransformer` with each block's call checkpointed by hand."""

    def __call__(self, x, *, mask=None, key=None, inference: bool = False):
        keys = jr.split(key, len(self.blocks))
        x = jax.vmap(self.embed)(x)
        pos = sinusoidal_positions(x.shape[0], self.dim)
        for blk, k in zip(self.blocks, keys):
            x = eqx.filter_checkpoint(blk)(x, pos, mask=mask, key=k, inference=inference)
        return jax.vmap(self.head)(jax.vmap(self.norm)(x))


def temp_bytes(model) -> int:
    params, static = eqx.partition(model, eqx.is_array)

    def loss(params, x, y, key):
        m = eqxform.resolve(eqx.combine(params, static))
        keys = jr.split(key, x.shape[0])
        return jnp.mean((jax.vmap(lambda a, k: m(a, key=k))(x, keys) - y) ** 2)

    x = jnp.zeros((BATCH, SEQ, 5))
    y = jnp.zeros((BATCH, SEQ, 7))
    step = jax.jit(jax.grad(loss))
    compiled = step.lower(params, x, y, jr.key(0)).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def main(policies: list[str]) -> None:
    kwargs = dict(dim=64, depth=4, num_heads=2, mlp_ratio=4, key=jr.key(0))
    model = LoopingTransformer(**kwargs)
    out = {"plain": temp_bytes(model), "hand": temp_bytes(HandWritten(**kwargs))}
    for policy in ["", *policies]:
        action = f"remat(policy={policy})" if policy else "remat"
        program = eqxform.compile(f"where blocks[*] -> {action}\n")
        out[action] = temp_bytes(program.apply(model, key=jr.key(1)))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
