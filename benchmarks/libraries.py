"""eqxform on the published libraries' shapes, against the hand-written Equinox code.

1. `ensemble 4` apply, cold (a fresh process: tracing and compilation
   included) and warm (the same call again, other keys), on a 12-block
   equimo ViT (small width) and on a ResNet-18-shaped model (four stages of
   two basic blocks, BatchNorm state). Baseline: the Tricks page's
   `eqx.filter_vmap(make)(keys)` of the same constructor. Ours twice: given
   the constructor (`program.apply(make)`: members are its draws) and given
   only the model (`program.apply(model)`: each parameter drawn anew from
   the model's own values). Target <= 1.5x, cold and warm.
2. Compile time of the forward pass and its gradient under `jax.jit`,
   `stack PATH scan` against the model unstacked: the equimo ViT (8 blocks),
   a CLIP-like text transformer (8 blocks looped in Python), and a ResNet's
   `layer1` (2 blocks with BatchNorm state). Targets: <= 0.5x at 8 blocks,
   <= 1.1x at 2 blocks. Beside it, the same stacked model against the
   hand-written scan of the Tricks page (`lax.scan` over `eqx.filter_vmap`-made
   layers, a module the parent's loop calls once; for the ResNet, the
   blocks' BatchNorm state threaded through the scan by hand): the cost of
   eqxform itself, ~1x when its program is the hand-written one.
   Each compile time is given twice: wall-clock seconds, and the CPU
   seconds of the process (all its threads), which other work on a shared
   machine changes far less.

Every number is measured in a fresh process, so that nothing is cached.
Run: `python benchmarks/libraries.py` (`--quick`: one repeat; `--smoke`: the
smallest size, in one process, to see that it runs; `--part stack` or
`--part ensemble`: one of the two). Prints a table of seconds and ratios
(ours / baseline; below 1 is faster). Needs equimo.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

SETUP = r'''
import time, warnings
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
warnings.simplefilter("ignore")
import eqxform


def vit(key, depth=VIT_DEPTH):
    import equimo.models as em
    return em.VisionTransformer(img_size=32, in_channels=3, dim=32, patch_size=8, num_heads=2,
                                depths=[depth], num_classes=10, key=key)


class Basic(eqx.nn.StatefulLayer):
    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    down: eqx.nn.Sequential | None

    def __init__(self, cin, cout, stride, key):
        k1, k2, k3 = jr.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, use_bias=False, key=k1)
        self.bn1 = eqx.nn.BatchNorm(cout, axis_name="batch", mode="batch")
        self.conv2 = eqx.nn.Conv2d(cout, cout, 3, padding=1, use_bias=False, key=k2)
        self.bn2 = eqx.nn.BatchNorm(cout, axis_name="batch", mode="batch")
        self.down = None if stride == 1 and cin == cout else eqx.nn.Sequential([
            eqx.nn.Conv2d(cin, cout, 1, stride=stride, use_bias=False, key=k3),
            eqx.nn.BatchNorm(cout, axis_name="batch", mode="batch")])

    def __call__(self, x, state, *, key=None):
        y, state = self.bn1(self.conv1(x), state)
        y, state = self.bn2(self.conv2(jax.nn.relu(y)), state)
        if self.down is not None:
            x, state = self.down(x, state)
        return jax.nn.relu(x + y), state


class ResNet18(eqx.Module):
    stem: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    layer1: eqx.nn.Sequential
    layer2: eqx.nn.Sequential
    layer3: eqx.nn.Sequential
    layer4: eqx.nn.Sequential
    fc: eqx.nn.Linear

    def __init__(self, width=8, key=None):
        ks = jr.split(key, 10)
        self.stem = eqx.nn.Conv2d(3, width, 3, padding=1, use_bias=False, key=ks[0])
        self.bn = eqx.nn.BatchNorm(width, axis_name="batch", mode="batch")
        stages, cin = [], width
        for s in range(4):
            cout = width * 2**s
            stride = 1 if s == 0 else 2
            stages.append(eqx.nn.Sequential([Basic(cin, cout, stride, ks[1 + 2 * s]),
                                             Basic(cout, cout, 1, ks[2 + 2 * s])]))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = eqx.nn.Linear(cin, 10, key=ks[9])

    def __call__(self, x, state, *, key=None):
        x, state = self.bn(self.stem(x), state)
        x = jax.nn.relu(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x, state = stage(x, state)
        return self.fc(jnp.mean(x, axis=(1, 2))), state


def resnet(key):
    return eqx.nn.make_with_state(ResNet18)(key=key)


class TextBlock(eqx.Module):
    norm1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, dim, key):
        k1, k2, k3 = jr.split(key, 3)
        self.norm1, self.norm2 = eqx.nn.LayerNorm(dim), eqx.nn.LayerNorm(dim)
        self.attn = eqx.nn.MultiheadAttention(4, dim, key=k1)
        self.fc1, self.fc2 = eqx.nn.Linear(dim, 4 * dim, key=k2), eqx.nn.Linear(4 * dim, dim, key=k3)

    def __call__(self, x, *, mask=None):
        y = jax.vmap(self.norm1)(x)
        x = x + self.attn(y, y, y, mask=mask)
        y = jax.vmap(self.norm2)(x)
        return x + jax.vmap(self.fc2)(jax.nn.gelu(jax.vmap(self.fc1)(y)))


class ClipText(eqx.Module):
    """CLIP's text tower: blocks looped in Python with a causal mask."""
    embed: eqx.nn.Embedding
    blocks: list
    norm: eqx.nn.LayerNorm

    def __init__(self, depth=8, dim=64, key=None):
        ks = jr.split(key, depth + 1)
        self.embed = eqx.nn.Embedding(100, dim, key=ks[0])
        self.blocks = [TextBlock(dim, k) for k in ks[1:]]
        self.norm = eqx.nn.LayerNorm(dim)

    def __call__(self, tokens):
        x = jax.vmap(self.embed)(tokens)
        mask = jnp.tril(jnp.ones((tokens.shape[0],) * 2, bool))
        for block in self.blocks:
            x = block(x, mask=mask)
        return jax.vmap(self.norm)(x)


class HandScan(eqx.Module):
    """The Tricks page's scan over layers, written by hand for a parent that
    loops over its blocks in Python: iterating gives this module once, and
    its call scans the stacked blocks (a key, if given, split per block)."""
    layers: eqx.Module
    count: int = eqx.field(static=True)

    def __iter__(self):
        return iter((self,))

    def __len__(self):
        return self.count

    def __call__(self, x, *, key=None, **kwargs):
        dynamic, static = eqx.partition(self.layers, eqx.is_array)
        keys = None if key is None else jr.split(key, self.count)

        def f(h, xs):
            d, k = xs
            extra = {} if k is None else {"key": k}
            return eqx.combine(d, static)(h, **extra, **kwargs), None

        out, _ = jax.lax.scan(f, x, (dynamic, keys))
        return out


class HandStatefulScan(eqx.Module):
    """The same for blocks with BatchNorm state, called `(x, state)`: the
    blocks' state values (stacked, as `filter_vmap` made them) are scanned
    over with the blocks, one `State` per step."""
    layers: eqx.Module
    count: int = eqx.field(static=True)

    def __call__(self, x, state, *, key=None):
        dynamic, static = eqx.partition(self.layers, eqx.is_array)
        values, treedef = jax.tree_util.tree_flatten(state.substate(self.layers))

        def f(h, xs):
            d, s = xs
            h, s = eqx.combine(d, static)(h, jax.tree_util.tree_unflatten(treedef, s))
            return h, jax.tree_util.tree_leaves(s)

        out, values = jax.lax.scan(f, x, (dynamic, values))
        return out, state.update(jax.tree_util.tree_unflatten(treedef, values))


def stacked(blocks):
    """The blocks' own arrays stacked: one block with a leading layer axis."""
    return jax.tree_util.tree_map(
        lambda *xs: jnp.stack(xs) if eqx.is_array(xs[0]) else xs[0], *blocks)


def resnet_by_hand(key):
    """The ResNet with `layer1`'s two blocks made by `filter_vmap` over keys, as
    the Tricks page makes layers (their state indices then hold stacked values)."""
    def make(key):
        model = ResNet18(key=key)
        layer1 = eqx.filter_vmap(lambda k: Basic(8, 8, 1, k))(jr.split(key, 2))
        return eqx.tree_at(lambda m: m.layer1, model, HandStatefulScan(layer1, 2))
    return eqx.nn.make_with_state(make)(key)


def ready(tree):
    jax.block_until_ready([x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)])


def timed(fn):
    start = time.perf_counter()
    ready(fn())
    return time.perf_counter() - start
'''

ENSEMBLE = r"""
make = {"vit": vit, "resnet": resnet}[MODEL]
program = eqxform.compile("ensemble 4")
if WHO == "hand":
    run = lambda k: eqx.filter_vmap(make)(jr.split(k, 4))
elif WHO == "constructor":
    run = lambda k: program.apply(make, key=k)
else:
    model = make(jr.key(99))
    ready(model)
    run = lambda k: program.apply(model, key=k)
cold = timed(lambda: run(jr.key(0)))
warm = timed(lambda: run(jr.key(1)))
print(json.dumps({"cold": cold, "warm": warm}))
"""

COMPILE = r"""
if MODEL == "vit":
    model, state = vit(jr.key(0), depth=STACK_DEPTH), None
    spec, x = "stack blocks[0].blocks scan", jnp.ones((3, 32, 32))
    call = lambda m, s, x: m(x, key=jr.key(0), inference=True)
    if WHO == "hand":
        blocks = HandScan(stacked(model.blocks[0].blocks), STACK_DEPTH)
        model = eqx.tree_at(lambda m: m.blocks[0].blocks, model, blocks)
elif MODEL == "clip":
    model, state = ClipText(depth=STACK_DEPTH, key=jr.key(0)), None
    spec, x = "stack blocks scan", jnp.arange(16) % 100
    call = lambda m, s, x: m(x)
    if WHO == "hand":
        model = eqx.tree_at(lambda m: m.blocks, model, HandScan(stacked(model.blocks), STACK_DEPTH))
else:
    model, state = (resnet_by_hand if WHO == "hand" else resnet)(jr.key(0))
    spec, x = "stack layer1 scan", jnp.ones((2, 3, 16, 16))
    call = lambda m, s, x: jax.vmap(lambda xi: m(xi, s), axis_name="batch",
                                    out_axes=(0, None))(x)[0]
if WHO == "stack":
    subject = model if state is None else (model, state)
    subject = eqxform.compile(spec).apply(subject)
    model, state = subject if state is not None else (subject, None)
dynamic, static = eqx.partition(model, eqx.is_array)

def loss(d, s, x):
    m = eqxform.resolve(eqx.combine(d, static))
    return jnp.sum(call(m, s, x) ** 2)

wall, cpu = time.perf_counter(), time.process_time()
jax.jit(lambda d, s, x: call(eqxform.resolve(eqx.combine(d, static)), s, x)).lower(
    dynamic, state, x).compile()
jax.jit(jax.grad(loss)).lower(dynamic, state, x).compile()
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}))
"""


# The sizes: as the issue states them, and the smallest (`--smoke`).
SIZES = {
    "full": {"VIT_DEPTH": 12, "STACK_DEPTH": 8},
    "smoke": {"VIT_DEPTH": 2, "STACK_DEPTH": 2},
}
SIZE = dict(SIZES["full"])
IN_PROCESS = False


def measure(body: str, **names) -> dict:
    names = {**SIZE, **names}
    code = "import json\n" + "".join(f"{k} = {v!r}\n" for k, v in names.items()) + SETUP + body
    if IN_PROCESS:  # `--smoke`: that it runs, not what it measures
        import contextlib
        import io

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "<benchmark>", "exec"), {"__name__": __name__})
        return json.loads(printed.getvalue().strip().splitlines()[-1])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=1800
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(body: str, repeats: int, key: str, **names) -> float:
    return statistics.median(measure(body, **names)[key] for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat per number")
    parser.add_argument(
        "--smoke", action="store_true", help="the smallest size, in this process: that it runs"
    )
    parser.add_argument(
        "--part", choices=("ensemble", "stack"), help="only the ensemble or only the stack rows"
    )
    args = parser.parse_args()
    repeats = 1 if args.quick or args.smoke else 3
    if args.smoke:
        global IN_PROCESS
        IN_PROCESS = True
        SIZE.update(SIZES["smoke"])
    rows = []
    depth, blocks = SIZE["VIT_DEPTH"], SIZE["STACK_DEPTH"]
    ensembles = () if args.part == "stack" else ("vit", "resnet")
    labels = {"vit": f"equimo ViT, {depth} blocks", "resnet": "ResNet-18 shape"}
    for model, label in ((m, labels[m]) for m in ensembles):
        runs = {
            who: [measure(ENSEMBLE, MODEL=model, WHO=who) for _ in range(repeats)]
            for who in ("hand", "constructor", "model")
        }
        for phase in ("cold", "warm"):
            hand = statistics.median(r[phase] for r in runs["hand"])
            for who in ("constructor", "model"):
                ours = statistics.median(r[phase] for r in runs[who])
                rows.append((f"ensemble 4, {label}, {phase}, given the {who}", ours, hand, 1.5))
    stacks = (
        ("vit", f"equimo ViT, {blocks} blocks", 0.5),
        ("clip", f"CLIP-like text, {blocks} blocks", 0.5),
        ("resnet", "ResNet layer1, 2 blocks", 1.1),
    )
    for model, label, target in () if args.part == "ensemble" else stacks:
        runs = {
            who: [measure(COMPILE, MODEL=model, WHO=who) for _ in range(repeats)]
            for who in ("stack", "unstacked", "hand")
        }
        for clock in ("wall", "cpu"):
            ours, base, hand = (
                statistics.median(r[clock] for r in runs[who])
                for who in ("stack", "unstacked", "hand")
            )
            name = f"stack compile (fwd+grad, {clock}), {label}"
            rows.append((f"{name}: stacked / unstacked", ours, base, target))
            rows.append((f"{name}: eqxform / hand-written scan", ours, hand, 1.0))
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement'.ljust(width)}  {'ours s':>8}  {'base s':>8}  {'ratio':>7}  target")
    for name, ours, base, target in rows:
        ratio = f"{ours / base:.2f}x"
        print(f"{name.ljust(width)}  {ours:8.2f}  {base:8.2f}  {ratio:>7}  <= {target}x")


if __name__ == "__main__":
    main()
