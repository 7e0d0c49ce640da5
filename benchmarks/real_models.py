"""eqxform on library-shaped models against the hand-written Equinox code.

1. Compile time (forward + gradient under `jax.jit`) of a 48-block model whose
   parent loops over its blocks in Python, passing keyword arguments:
   unstacked, `stack blocks scan`, and a hand-written `lax.scan` over the
   blocks. Each in a fresh process, so that nothing is cached.
   Targets: stack <= 1.1x hand-written, <= 0.5x unstacked.
2. `Program.apply` of a `trunc_normal` re-initialisation of every `Linear`
   weight of a 64-block vision-transformer shape (1,000+ leaves), warm,
   against the Equinox tricks page's `init_linear_weight`. Target <= 1.1x.
3. Evaluating an ensemble of 8 members through `Ensemble` (with an extra
   keyword argument) against a hand-written `eqx.filter_vmap` (the tricks
   page's). Target <= 1.05x.

Run: `python benchmarks/real_models.py` (`--quick` for fewer repeats, `--smoke`
for the smallest size: that it runs). Prints
a table of seconds and ratios (ours / baseline; below 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

BLOCKS = 48
VIT_BLOCKS = 64
WIDTH = 64


def _models():
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    class Block(eqx.Module):
        norm: eqx.nn.LayerNorm
        attn: eqx.nn.MultiheadAttention
        norm2: eqx.nn.LayerNorm
        fc1: eqx.nn.Linear
        fc2: eqx.nn.Linear

        def __init__(self, dim, key):
            k1, k2, k3 = jr.split(key, 3)
            self.norm = eqx.nn.LayerNorm(dim)
            self.attn = eqx.nn.MultiheadAttention(4, dim, key=k1)
            self.norm2 = eqx.nn.LayerNorm(dim)
            self.fc1 = eqx.nn.Linear(dim, 2 * dim, key=k2)
            self.fc2 = eqx.nn.Linear(2 * dim, dim, key=k3)

        def __call__(self, x, *, mask=None, key=None):
            y = jax.vmap(self.norm)(x)
            x = x + self.attn(y, y, y, mask=mask)
            y = jax.vmap(self.norm2)(x)
            return x + jax.vmap(self.fc2)(jax.nn.gelu(jax.vmap(self.fc1)(y)))

    class Looper(eqx.Module):
        """A parent that loops over its blocks, as ESM2 and ViT models do."""

        blocks: list
        head: eqx.nn.Linear

        def __init__(self, depth, dim, key):
            keys = jr.split(key, depth + 1)
            self.blocks = [Block(dim, k) for k in keys[:-1]]
            self.head = eqx.nn.Linear(dim, 1, key=keys[-1])

        def __call__(self, x, *, mask=None):
            for blk in self.blocks:
                x = blk(x, mask=mask)
            return jax.vmap(self.head)(x)

    def hand_scan(model, x, mask=None):
        """The hand-written scan-over-layers of the same model."""
        dynamic, static = eqx.partition(model.blocks, eqx.is_array)
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *dynamic)

        def step(h, d):
            return eqx.combine(d, static[0])(h, mask=mask), None

        x, _ = jax.lax.scan(step, x, stacked)
        return jax.vmap(model.head)(x)

    class ViT(eqx.Module):
        patch: eqx.nn.Conv2d
        cls_token: jax.Array
        pos: jax.Array
        blocks: list
        norm: eqx.nn.LayerNorm
        head: eqx.nn.Linear

        def __init__(self, depth, dim, key):
            keys = jr.split(key, depth + 4)
            self.patch = eqx.nn.Conv2d(3, dim, 4, stride=4, key=keys[0])
            self.cls_token = jr.normal(keys[1], (1, dim))
            self.pos = jr.normal(keys[2], (17, dim))
            self.blocks = [Block(dim, k) for k in keys[4:]]
            self.norm = eqx.nn.LayerNorm(dim)
            self.head = eqx.nn.Linear(dim, 10, key=keys[3])

    return Looper, hand_scan, ViT


def compile_worker(kind: str, blocks: int = BLOCKS) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import eqxform

    Looper, hand_scan, _ = _models()
    model = Looper(blocks, WIDTH, jr.key(0))
    if kind == "stack":
        model = eqxform.compile("stack blocks scan").apply(model, key=jr.key(1))
        forward = lambda m, x: m(x)  # noqa: E731
    elif kind == "hand":
        forward = hand_scan
    else:
        forward = lambda m, x: m(x)  # noqa: E731

    def loss(m, x):
        return jnp.sum(forward(m, x) ** 2)

    x = jr.normal(jr.key(2), (16, WIDTH))
    fn = eqx.filter_jit(eqx.filter_value_and_grad(loss))
    start = time.perf_counter()
    jax.block_until_ready(fn(model, x))
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(fn(model, x))
    return {"compile": first, "run": (time.perf_counter() - start) / 5}


def reinit(repeats: int, blocks: int = VIT_BLOCKS) -> dict:
    import math

    import equinox as eqx
    import jax
    import jax.random as jr

    import eqxform

    _, _, ViT = _models()
    model = ViT(blocks, WIDTH, jr.key(0))
    leaves = len([x for x in jax.tree_util.tree_leaves(model) if eqx.is_array(x)])
    program = eqxform.compile(
        "where Linear.weight -> init trunc_normal(stddev=1/sqrt(fan_in), lower=-2, upper=2)"
    )

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
        new = [init_fn(w, k) for w, k in zip(weights, jax.random.split(key, len(weights)))]
        return eqx.tree_at(get_weights, model, new)

    runs = {
        "ours": lambda k: program.apply(model, key=k),
        "hand": lambda k: init_linear_weight(model, trunc_init, k),
    }
    times = {name: [] for name in runs}
    for i in range(repeats + 2):  # interleaved, the first two are warm-up
        for name, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run(jr.key(i)))
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    return {
        "leaves": leaves,
        **{name: statistics.median(t) for name, t in times.items()},
    }


def ensemble(repeats: int) -> dict:
    import equinox as eqx
    import jax
    import jax.random as jr

    import eqxform

    Looper, _, _ = _models()
    program = eqxform.compile("ensemble 8")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ens = program.apply(Looper(4, 32, jr.key(0)), key=jr.key(1))
    members = ens.model
    x = jr.normal(jr.key(2), (16, 32))
    mask = None

    @eqx.filter_jit
    def ours(ens, x):
        return ens(x, mask=mask)

    @eqx.filter_jit
    def hand(models, x):
        return eqx.filter_vmap(lambda m, x: m(x, mask=mask), in_axes=(eqx.if_array(0), None))(
            models, x
        )

    runs = {"ours": lambda: ours(ens, x), "hand": lambda: hand(members, x)}
    assert jax.numpy.allclose(runs["ours"](), runs["hand"](), atol=1e-5)
    times = {name: [] for name in runs}
    for i in range(repeats + 3):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(20):
                out = run()
            jax.block_until_ready(out)
            if i >= 3:
                times[name].append((time.perf_counter() - start) / 20)
    return {name: statistics.median(t) for name, t in times.items()}


def _work(kind: str, *rest: str) -> dict:
    if kind == "compile":
        return compile_worker(rest[0], int(rest[1]))
    if kind == "reinit":
        return reinit(int(rest[0]), int(rest[1]))
    return ensemble(int(rest[0]))


def _subprocess(*args) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="the smallest size: that it runs")
    parser.add_argument("--worker", nargs="+")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_work(*args.worker)))
        return

    import jax
    from rich.console import Console
    from rich.table import Table

    repeats = 1 if args.smoke else 5 if args.quick else 15
    blocks, vit_blocks = (2, 2) if args.smoke else (BLOCKS, VIT_BLOCKS)
    # A smoke run (that it runs) spares itself the fresh processes.
    worker = _work if args.smoke else _subprocess
    compiled = {k: worker("compile", k, str(blocks)) for k in ("unstacked", "stack", "hand")}
    table = Table(title=f"compile, forward + gradient, {blocks} blocks looped by their parent (s)")
    for column in ("model", "compile", "ours / hand", "ours / unstacked", "run (ms)"):
        table.add_column(column, justify="right")
    for name, r in compiled.items():
        table.add_row(
            name,
            f"{r['compile']:.2f}",
            f"{r['compile'] / compiled['hand']['compile']:.2f}x" if name == "stack" else "",
            f"{r['compile'] / compiled['unstacked']['compile']:.2f}x" if name == "stack" else "",
            f"{r['run'] * 1e3:.2f}",
        )
    console = Console()
    console.print(table)

    r = worker("reinit", str(repeats), str(vit_blocks))
    table = Table(title=f"re-initialise every Linear weight, {r['leaves']:,} leaves, warm (s)")
    for column in ("ours", "hand-written tree_at", "ratio"):
        table.add_column(column, justify="right")
    table.add_row(f"{r['ours']:.4f}", f"{r['hand']:.4f}", f"{r['ours'] / r['hand']:.2f}x")
    console.print(table)

    e = worker("ensemble", str(repeats))
    table = Table(title="evaluate an ensemble of 8, with a keyword argument (us per call)")
    for column in ("Ensemble", "hand-written filter_vmap", "ratio"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{e['ours'] * 1e6:.1f}", f"{e['hand'] * 1e6:.1f}", f"{e['ours'] / e['hand']:.2f}x"
    )
    console.print(table)
    console.print(f"device: {jax.devices()[0].platform}")


if __name__ == "__main__":
    main()
