"""Loading a foreign checkpoint by `map` lines, against the hand-written load.

A transformer of 24 blocks at width 1024 (about 1 GB of float32) is written
as a safetensors file in PyTorch's names (`blocks.{i}.attn.qkv.weight`, ...)
in a temporary folder. Two loads fill the same Equinox model (its skeleton,
from `eqx.filter_eval_shape`, so that neither pays for initialisation):

- by hand: `safetensors.numpy.load_file` of the whole file, then
  `jax.device_put` of each tensor into the model with one `eqx.tree_at`;
- by rules: `Program.load_weights` of a spec of five `map` lines (the header
  checked first; tensors read one at a time).

Each load runs in its own fresh process (so that one's peak memory cannot
hide the other's), alternately, `--repeats` times; the table gives the best
time (the spec compiled before the clock starts; its compile time has
its own line) and the peak resident memory of each (`resource.getrusage`, `ru_maxrss`),
the peak above the process's memory before the load, and the ratios
(rules / by hand). Targets: time <= 1.2x, peak <= 1.2x, and the peak above
the start well under twice the file's size.

    python benchmarks/weights.py                      # ~1 GB
    python benchmarks/weights.py --smoke                  # the smallest size, once
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parent.parent

SPEC = """\
map "blocks.{i}.norm{n}.**" -> "blocks[{i}].norms[{n-1}].**"
map "blocks.{i}.attn.**" -> "blocks[{i}].attn.**"
map "blocks.{i}.mlp.fc{n}.**" -> "blocks[{i}].mlp[{n-1}].**"
map "norm.**" -> "norm.**"
map "head.**" -> "head.**"
"""

CHILD = r"""
import json, resource, sys, time
import equinox as eqx, jax, jax.numpy as jnp, numpy as np

blocks, width, path, how, spec = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
blocks, width = int(blocks), int(width)


class Block(eqx.Module):
    norms: list
    attn: dict
    mlp: list

    def __init__(self, width, key):
        k = jax.random.split(key, 4)
        self.norms = [eqx.nn.LayerNorm(width), eqx.nn.LayerNorm(width)]
        self.attn = {
            "qkv": eqx.nn.Linear(width, 3 * width, key=k[0]),
            "proj": eqx.nn.Linear(width, width, key=k[1]),
        }
        self.mlp = [eqx.nn.Linear(width, 3 * width, key=k[2]), eqx.nn.Linear(3 * width, width, key=k[3])]


class Net(eqx.Module):
    blocks: list
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(self, blocks, width, key):
        k = jax.random.split(key, blocks + 1)
        self.blocks = [Block(width, k[i]) for i in range(blocks)]
        self.norm = eqx.nn.LayerNorm(width)
        self.head = eqx.nn.Linear(width, 1000, key=k[-1])


skeleton = eqx.filter_eval_shape(Net, blocks, width, jax.random.key(0))
compile_seconds = 0.0
if how == "rules":
    import eqxform

    # The spec is compiled before the clock starts, as the hand-written code
    # is written before it: the table reports it on its own line.
    t0 = time.perf_counter()
    program = eqxform.compile(spec)
    compile_seconds = time.perf_counter() - t0
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
if how == "hand":
    import safetensors.numpy

    tensors = safetensors.numpy.load_file(path)
    names, wheres = [], []
    for i in range(blocks):
        for n in (1, 2):
            for p in ("weight", "bias"):
                names.append(f"blocks.{i}.norm{n}.{p}")
                wheres.append(lambda m, i=i, n=n, p=p: getattr(m.blocks[i].norms[n - 1], p))
        for a in ("qkv", "proj"):
            for p in ("weight", "bias"):
                names.append(f"blocks.{i}.attn.{a}.{p}")
                wheres.append(lambda m, i=i, a=a, p=p: getattr(m.blocks[i].attn[a], p))
        for n in (1, 2):
            for p in ("weight", "bias"):
                names.append(f"blocks.{i}.mlp.fc{n}.{p}")
                wheres.append(lambda m, i=i, n=n, p=p: getattr(m.blocks[i].mlp[n - 1], p))
    for part in ("norm", "head"):
        for p in ("weight", "bias"):
            names.append(f"{part}.{p}")
            wheres.append(lambda m, part=part, p=p: getattr(getattr(m, part), p))
    values = [jax.device_put(tensors[n]) for n in names]
    model = eqx.tree_at(lambda m: [w(m) for w in wheres], skeleton, values)
    del tensors, values
else:
    model = program.load_weights(skeleton, path)
jax.block_until_ready(jax.tree_util.tree_leaves(model))
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
check = float(np.asarray(model.blocks[-1].mlp[1].weight[0, :8]).sum())
out = {"seconds": seconds, "peak": peak, "start": start, "check": check}
print(json.dumps({**out, "compile": compile_seconds}))
"""


def write_checkpoint(path: Path, blocks: int, width: int) -> int:
    """The checkpoint in PyTorch's names, one block's tensors at a time in
    memory; returns its size in bytes."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    tensors = {}
    for i in range(blocks):
        for n in (1, 2):
            tensors[f"blocks.{i}.norm{n}.weight"] = f(width)
            tensors[f"blocks.{i}.norm{n}.bias"] = f(width)
        tensors[f"blocks.{i}.attn.qkv.weight"] = f(3 * width, width)
        tensors[f"blocks.{i}.attn.qkv.bias"] = f(3 * width)
        tensors[f"blocks.{i}.attn.proj.weight"] = f(width, width)
        tensors[f"blocks.{i}.attn.proj.bias"] = f(width)
        tensors[f"blocks.{i}.mlp.fc1.weight"] = f(3 * width, width)
        tensors[f"blocks.{i}.mlp.fc1.bias"] = f(3 * width)
        tensors[f"blocks.{i}.mlp.fc2.weight"] = f(width, 3 * width)
        tensors[f"blocks.{i}.mlp.fc2.bias"] = f(width)
    tensors["norm.weight"], tensors["norm.bias"] = f(width), f(width)
    tensors["head.weight"], tensors["head.bias"] = f(1000, width), f(1000)
    save_file(tensors, path)
    return path.stat().st_size


def run(how: str, blocks: int, width: int, path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(blocks), str(width), str(path), how, SPEC],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="The smallest size, once.")
    parser.add_argument(
        "--dir", default=None, help="Folder for the checkpoint (default: a temp dir)."
    )
    args = parser.parse_args()
    if args.smoke:
        args.blocks, args.width, args.repeats = 2, 128, 1
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "ckpt.safetensors"
        # Written by a child process: Linux carries a process's peak resident
        # memory over `fork` and `exec`, so the driver stays small for the
        # loads' peaks to be their own.
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; sys.path.insert(0, sys.argv[1]); import weights; "
                "weights.write_checkpoint(__import__('pathlib').Path(sys.argv[2]), "
                "int(sys.argv[3]), int(sys.argv[4]))",
                str(Path(__file__).parent),
                str(path),
                str(args.blocks),
                str(args.width),
            ],
            check=True,
        )
        size = path.stat().st_size
        results: dict[str, list[dict]] = {"hand": [], "rules": []}
        for _ in range(args.repeats):
            for how in ("hand", "rules"):
                results[how].append(run(how, args.blocks, args.width, path))
    assert results["hand"][0]["check"] == results["rules"][0]["check"], "the loads differ"
    best = {h: min(r["seconds"] for r in rs) for h, rs in results.items()}
    peak = {h: max(r["peak"] for r in rs) for h, rs in results.items()}
    above = {h: max(r["peak"] - r["start"] for r in rs) for h, rs in results.items()}
    mib = lambda n: f"{n / 2**20:,.0f} MiB"  # noqa: E731
    print(
        f"checkpoint: {args.blocks} blocks, width {args.width}, {mib(size)}; best of {args.repeats}"
    )
    print(f"{'':28} {'by hand':>12} {'by rules':>12} {'ratio':>7}")
    print(
        f"{'time (s)':28} {best['hand']:12.2f} {best['rules']:12.2f} "
        f"{best['rules'] / best['hand']:7.2f}x"
    )
    compile_s = min(r["compile"] for r in results["rules"])
    print(f"{'compiling the spec (s)':28} {'':>12} {compile_s:12.2f}")
    print(
        f"{'peak RSS':28} {mib(peak['hand']):>12} {mib(peak['rules']):>12} "
        f"{peak['rules'] / peak['hand']:7.2f}x"
    )
    print(
        f"{'peak RSS above the start':28} {mib(above['hand']):>12} {mib(above['rules']):>12} "
        f"{above['rules'] / above['hand']:7.2f}x"
    )
    print(f"{'  / checkpoint size':28} {above['hand'] / size:12.2f} {above['rules'] / size:12.2f}")


if __name__ == "__main__":
    main()
