"""Every example spec under specs/ checks clean and runs as it is."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqxform
from eqxform._compile import compile_collect

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.eqx"))


def test_there_are_examples():
    assert {p.stem for p in SPECS} >= {"surgery", "custom_init"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_checks_and_runs(path, tmp_path):
    _, diagnostics = compile_collect(path.read_text(), path.name)
    assert diagnostics == []
    program = eqxform.compile(path)
    assert program.check() == []
    model = program.apply()
    eqxform.save(tmp_path / "out.eqx", model)
    back = eqxform.load(tmp_path / "out.eqx")
    for a, b in zip(jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(back)):
        if eqx.is_array(a):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_surgery_spec_is_the_tricks_page_surgery():
    program = eqxform.compile(SPECS[[p.stem for p in SPECS].index("surgery")])
    model = program.apply()
    base = program.build_model()
    theirs = eqx.tree_at(lambda m: m.layers[-1], base, eqx.nn.Linear(64, 10, key=jax.random.key(0)))
    assert jax.tree_util.tree_structure(model) == jax.tree_util.tree_structure(theirs)
    assert model(jnp.ones(2)).shape == (10,)
    for a, b in zip(model.layers[:-1], base.layers[:-1]):
        assert np.array_equal(a.weight, b.weight)


def test_custom_init_spec_stays_in_bounds():
    model = eqxform.compile(SPECS[[p.stem for p in SPECS].index("custom_init")]).apply()
    for layer in model.layers:
        assert float(jnp.abs(layer.weight).max()) <= 2 / np.sqrt(layer.weight.shape[1]) + 1e-6
        assert not bool(layer.bias.any())
