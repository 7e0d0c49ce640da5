"""Bytes per device of a model sharded 8 ways, against the unsharded model.

Runs on 8 simulated CPU devices (it sets `XLA_FLAGS` itself, before JAX
starts). The model is an MLP whose weights (4 to 16 MiB each) are far larger
than one device's share, and the spec splits every weight 8 ways over `model`
(biases, a few KiB, stay replicated).

- apply: bytes each device needs while `Program.apply` builds and transforms
  the model, from XLA's compiled memory analysis of the run `apply` compiles
  (arguments + outputs + temporaries, per device), sharded on the mesh
  against the same run on one device; and the bytes live on the fullest
  device afterwards (`jax.live_arrays()`, per addressable shard).
- load: bytes live on the fullest device after `eqxform.load` (each shard is
  placed as it is read, so that is the device's peak), sharded against
  unsharded, and the host's peak during the load (`tracemalloc`: numpy
  buffers are traced), since the file is read slice by slice.
- step: seconds per training step on 1 device against data=2 model=4 on 8
  simulated devices. The simulated devices share this machine's cores, so
  this shows the overhead of the sharded step, not a speed-up.

    python benchmarks/shard_memory.py [--smoke]

`--smoke` is the smallest size: that it runs.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import gc  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import eqxform  # noqa: E402

MODEL = "model MLP(in_size=512, out_size=512, width_size=2048, depth=3)\n"
INIT = "where Linear.weight -> init normal(stddev=0.02)\n"
SHARD = "mesh model=8\nwhere Linear.weight -> shard (model, none)\n"
TARGET = 1 / 8 * 1.10


def mib(n: float) -> str:
    return f"{n / 2**20:8.2f} MiB"


def compiled_bytes(lowered) -> int:
    """Per-device bytes of a compiled run: arguments, outputs, temporaries."""
    m = lowered.compile().memory_analysis()
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def live_per_device() -> dict:
    """Bytes of live arrays on each device (each shard counted where it lives)."""
    out = {d: 0 for d in jax.devices()}
    for array in jax.live_arrays():
        for shard in array.addressable_shards:
            out[shard.device] += shard.data.nbytes
    return out


def fullest(before: dict, after: dict) -> int:
    return max(after[d] - before[d] for d in after)


def apply_rows():
    sharded = eqxform.compile(MODEL + INIT + SHARD)
    plain = eqxform.compile(MODEL + INIT)
    rows = []
    one = compiled_bytes(plain.lower(mesh="data=1"))
    eight = compiled_bytes(sharded.lower())
    rows.append(("apply: compiled bytes per device", one, eight))

    gc.collect()
    before = live_per_device()
    model = plain.apply()
    one = fullest(before, live_per_device())
    del model
    gc.collect()
    before = live_per_device()
    model = sharded.apply()
    eight = fullest(before, live_per_device())
    rows.append(("apply: live bytes, fullest device", one, eight))
    return rows, model


def load_rows(model, folder: Path):
    path = folder / "model.eqx"
    eqxform.save(path, model)
    rows = []
    results = {}
    for name, mesh in (("unsharded", None), ("sharded", "model=8")):
        gc.collect()
        before = live_per_device()
        tracemalloc.start()
        loaded = eqxform.load(path, mesh=mesh)
        jax.block_until_ready(loaded)
        host = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results[name] = (fullest(before, live_per_device()), host)
        del loaded
    rows.append(
        ("load: live bytes, fullest device", results["unsharded"][0], results["sharded"][0])
    )
    rows.append(("load: host peak (tracemalloc)", results["unsharded"][1], results["sharded"][1]))
    return rows


def step_times(steps: int = 20, size: int = 256):
    spec = f"model MLP(in_size={size}, out_size={size}, width_size={4 * size}, depth=2)\n"
    spec += "optimizer adam(learning_rate=1e-3)\n"
    shard = (
        "mesh data=2 model=4\n"
        f"where Linear.weight if shape[0] == {4 * size} -> shard (model, none)\n"
        "where layers[-1].weight -> shard (none, model)\n"
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, size)).astype(np.float32)
    y = rng.normal(size=(64, size)).astype(np.float32)

    def loss_fn(m, x, y):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    out = {}
    for name, text in (("1 device", spec), ("8 devices (data=2 model=4)", spec + shard)):
        program = eqxform.compile(text)
        model = program.apply()
        step = eqxform.make_step(loss_fn, eqxform.optimizer(program, model), model)
        step(x, y).block_until_ready()  # compile
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(x, y)
        loss.block_until_ready()
        out[name] = (time.perf_counter() - start) / steps
        assert step.traces == 1
    return out


def main():
    assert jax.device_count() == 8, "run this script as it is: it sets XLA_FLAGS itself"
    smoke = "--smoke" in sys.argv[1:]
    if smoke:
        global MODEL
        MODEL = "model MLP(in_size=64, out_size=64, width_size=256, depth=2)\n"
    rows, model = apply_rows()
    with tempfile.TemporaryDirectory() as folder:
        rows += load_rows(model, Path(folder))
    print(f"bytes per device, 8-way `model` sharding (target: sharded/unsharded <= {TARGET:.4f})")
    print(f"{'measure':40s} {'unsharded':>13s} {'sharded':>13s} {'ratio':>8s}  target")
    for label, one, eight in rows:
        ratio = eight / one
        verdict = "met" if ratio <= TARGET else "MISSED"
        if label.startswith("load: host"):
            verdict = "(host, info)"
        print(f"{label:40s} {mib(one):>13s} {mib(eight):>13s} {ratio:8.4f}  {verdict}")
    times = step_times(2, 32) if smoke else step_times()
    base = times["1 device"]
    print()
    print(f"{'training step':40s} {'ms/step':>13s} {'vs 1 device':>13s}")
    for name, seconds in times.items():
        print(f"{name:40s} {seconds * 1e3:13.2f} {seconds / base:13.2f}x")


if __name__ == "__main__":
    main()
