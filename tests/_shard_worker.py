"""One process of a multi-process training run, for tests/test_shard.py.

Run as `python _shard_worker.py CONFIG_JSON`: joins the run (when it has more
than one process), builds the spec's model on the mesh, trains a few steps on
fixed data, saves the model (process 0 writes), and prints one JSON line: the
losses, and a digest of every array of the trained model (gathered from all
processes), so that the test can check that the processes agree.
"""

import hashlib
import json
import sys

import numpy as np


def main(config: dict) -> None:
    import jax
    import jax.numpy as jnp

    import eqxform
    from eqxform._recipes import _host

    if config["num_processes"] > 1:
        eqxform.initialize_distributed(
            config["coordinator"], config["num_processes"], config["process_id"], timeout_s=60
        )
    program = eqxform.compile(config["spec"], mesh=config.get("mesh"))
    model = program.apply()

    def loss_fn(m, x, y):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(config["batch"], config["in_size"])).astype(np.float32)
    y = rng.normal(size=(config["batch"], config["out_size"])).astype(np.float32)
    step = eqxform.make_step(loss_fn, eqxform.optimizer(program, model), model)
    losses = []
    for _ in range(config["steps"]):
        loss = step(x, y)
        losses.append(float(loss.addressable_data(0)))
    trained = step.model
    eqxform.save(config["output"], trained)
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(trained):
        if isinstance(leaf, jax.Array):
            digest.update(_host(leaf).tobytes())
    print(
        json.dumps(
            {
                "losses": losses,
                "digest": digest.hexdigest(),
                "devices": jax.device_count(),
                "processes": jax.process_count(),
                "traces": step.traces,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
