"""`remat`: gradient checkpointing by selector. The model computes what it
computed (outputs and gradients), the memory of a training step drops as a
hand-written `eqx.filter_checkpoint` per block makes it drop, and selectors,
plans and model files see through the `Remat` it puts in the model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from realmodels import LoopingTransformer

import eqxform

HERE = Path(__file__).parent


def _loss(model, x, key):
    return jnp.mean(eqxform.resolve(model)(x, key=key) ** 2)


@pytest.mark.parametrize("action", ["remat", "remat(policy=dots_saveable)"])
def test_outputs_and_gradients_unchanged(action):
    # The parent loops `for blk, k in zip(self.blocks, keys): x = blk(x, pos,
    # mask=mask, key=k, inference=inference)`: keyword arguments and keys reach
    # each checkpointed block.
    model = LoopingTransformer(key=jr.key(0))
    new = eqxform.compile(f"where blocks[*] -> {action}\n").apply(model, key=jr.key(1))
    assert all(isinstance(b, eqxform.Remat) for b in new.blocks)
    assert [b.module for b in new.blocks] == model.blocks
    x, key = jr.normal(jr.key(2), (6, 5)), jr.key(3)
    assert np.allclose(new(x, key=key), model(x, key=key), atol=1e-6)
    assert np.allclose(new(x, inference=True), model(x, inference=True), atol=1e-6)
    expected = eqx.filter_grad(_loss)(model, x, key)
    got = eqx.filter_grad(_loss)(new, x, key)
    leaves, want = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)
    assert len(leaves) == len(want)
    for a, b in zip(leaves, want):
        assert np.allclose(a, b, atol=1e-6)


def test_policy_reaches_jax():
    model = LoopingTransformer(depth=1, key=jr.key(0))
    new = eqxform.compile('where blocks[*] -> remat(policy="dots_saveable")\n').apply(model)
    assert new.blocks[0].policy == "dots_saveable"
    # Traced, the block's call is one `jax.checkpoint` (a `remat` equation)
    # with JAX's `dots_saveable` as its policy.
    jaxpr = jax.make_jaxpr(lambda x: new(x, inference=True))(jnp.ones((4, 5)))
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name.startswith("remat")]
    assert eqn.params["policy"] is jax.checkpoint_policies.dots_saveable
    plain = jax.make_jaxpr(lambda x: model(x, inference=True))(jnp.ones((4, 5)))
    assert not [e for e in plain.eqns if e.primitive.name.startswith("remat")]


def test_peak_memory_of_a_training_step_drops_as_by_hand():
    # XLA's `cse_barrier_expander` folds the recomputation of `jax.checkpoint`
    # in an unrolled Python loop back into the forward pass on the CPU (a
    # hand-written checkpoint per block then saves nothing): measured without it.
    env = dict(os.environ, XLA_FLAGS="--xla_disable_hlo_passes=cse_barrier_expander")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), str(HERE)])
    out = subprocess.run(
        [sys.executable, str(HERE / "_remat_worker.py"), "everything_saveable", "dots_saveable"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    temp = json.loads(out.stdout.strip().splitlines()[-1])
    # The same memory as `eqx.filter_checkpoint` around each block by hand, and
    # well under the step without checkpoints (7.3 MB against 23.4 MB).
    assert temp["remat"] == temp["hand"]
    assert temp["remat"] < 0.5 * temp["plain"]
    # A policy that saves matrix products keeps more; one that saves all, most.
    assert temp["remat"] < temp["remat(policy=dots_saveable)"] < temp["plain"]
    assert temp["remat(policy=everything_saveable)"] > temp["remat(policy=dots_saveable)"]


def test_selectors_and_plans_see_through_remat():
    model = LoopingTransformer(key=jr.key(0))
    program = eqxform.compile(
        "where blocks[*] -> remat\n"
        "where blocks[0].linear1.weight -> init zeros\n"
        "where blocks[*] -> remat(policy=dots_saveable)\n"
    )
    new = program.apply(model, key=jr.key(1))
    assert np.all(new.blocks[0].module.linear1.weight == 0)
    # Checkpointing again sets the policy; it does not nest.
    assert all(type(b.module) is type(model.blocks[0]) for b in new.blocks)
    assert {b.policy for b in new.blocks} == {"dots_saveable"}
    plan = program.plan(model)
    assert [m.path for m in plan.steps[1].matches] == ["blocks[0].linear1.weight"]
    assert [m.path for m in plan.steps[0].matches] == [f"blocks[{i}]" for i in range(3)]
    assert plan.steps[0].matches[0].after.startswith("Remat")


def test_a_model_file_keeps_its_remat(tmp_path):
    program = eqxform.compile(
        "model MLPChain(size=4, count=3)\nwhere mlps[*] -> remat(policy=dots_saveable)\n"
    )
    model = program.apply(key=jr.key(0))
    eqxform.save(tmp_path / "m.eqx", model)
    loaded = eqxform.load(tmp_path / "m.eqx")
    assert [type(m).__name__ for m in loaded.mlps.layers] == ["Remat"] * 3
    assert loaded.mlps.layers[0].policy == "dots_saveable"
    x = jnp.arange(4.0)
    assert np.allclose(loaded(x), model(x))


@pytest.mark.parametrize(
    "rule, code, words",
    [
        ("where blocks[*] -> remat(policy=dots)", "E152", "must be one of `nothing_saveable`"),
        ('where blocks[*] -> remat(policy="dots")', "E152", "must be one of"),
        ("where blocks[*] -> remat(polcy=dots_saveable)", "E106", "did you mean `policy`?"),
        ("where blocks[*] -> remat 2", "E180", "remat(policy=dots_saveable)"),
        ("where blocks[0].linear1.weight -> remat", "E203", "`blocks[0].linear1.weight`"),
        ("where blocks -> remat", "E203", "select the modules"),
        ("stack blocks scan\nwhere blocks[*] -> remat", "E203", "`stack PATH scan remat`"),
        ("stack blocks scan\nwhere blocks[0] -> remat", "E137", "some layers of a stack"),
        ("stack blocks scan\nwhere blocks.linear1 -> remat", "E203", "inside a stack"),
    ],
)
def test_mistakes_are_diagnosed(rule, code, words):
    model = LoopingTransformer(key=jr.key(0))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile(rule + "\n").apply(model, key=jr.key(1))
    text = str(info.value)
    assert f"[{code}]" in text and words in text, text
