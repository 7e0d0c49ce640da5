"""A program is plain data folded over a model: golden plans, and the
behaviours of passes on stacks and ensembles."""

import inspect
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _optim_labels import labels

import eqxform
from eqxform import _names as N
from eqxform._modules import BUILTIN

FIXTURES = Path(__file__).parent / "fixtures" / "plans"
CASES = sorted(FIXTURES.glob("*.eqx"))


def leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model) if eqx.is_array(x)]


def test_there_are_golden_plans():
    assert len(CASES) >= 6


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_golden_plan(path):
    plan = eqxform.compile(path).plan()
    assert plan.errors == ()
    got = str(plan) + "\n"
    expected = path.with_suffix(".expected")
    if os.environ.get("EQXFORM_UPDATE_GOLDEN"):
        expected.write_text(got)
    assert got == expected.read_text()


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_plan_agrees_with_apply(path):
    # The plan's structure is the applied model's, shape for shape.
    program = eqxform.compile(path)
    plan, model = program.plan(), program.apply()
    assert jax.tree_util.tree_structure(plan.result) == jax.tree_util.tree_structure(model)
    for a, b in zip(jax.tree_util.tree_leaves(plan.result), jax.tree_util.tree_leaves(model)):
        if eqx.is_array(b):
            assert (a.shape, a.dtype) == (b.shape, b.dtype)


def test_apply_is_a_fold_with_an_explicit_context(getkey):
    program = eqxform.compile(
        "model MLP(2, 2, 8, 2)\nwhere Linear.bias -> init normal(stddev=1)\nensemble 3"
    )
    key = jax.random.key(5)
    model = program.build_model(key)
    recipe = eqxform.recipe_of(model)
    ctx = eqxform.Context(allow=program.allow, base=recipe.build)
    by_hand = model
    for p in program.passes:
        by_hand = p(by_hand, key, ctx)
    assert all(
        np.array_equal(a, b) for a, b in zip(leaves(program.apply(model, key)), leaves(by_hand))
    )
    # Without a constructor in the context, the members are drawn from the
    # model itself: Equinox's default draw for its layers, and the `init`
    # rules above the line again per member.
    drawn = program.passes[-1](model, key, eqxform.Context())
    assert not np.array_equal(drawn.model.layers[0].bias[0], drawn.model.layers[0].bias[1])
    assert not np.array_equal(drawn.model.layers[0].weight[0], drawn.model.layers[0].weight[1])


def test_weight_norm_is_refused_on_stacks():
    program = eqxform.compile(
        "model MLPChain(size=4, count=3)\nstack mlps scan\nwhere Linear.weight -> wrap weight_norm"
    )
    with pytest.raises(eqxform.SpecError) as info:
        program.apply()
    assert info.value.diagnostics[0].code == "E139"
    assert [d.code for d in program.check()] == ["E139"]


def test_wrap_on_stacked_leaves(getkey):
    program = eqxform.compile(
        "model MLPChain(size=4, count=5)\nstack mlps scan\nwhere Linear.weight -> wrap symmetric"
    )
    model = program.apply()
    w = model.mlps.layers.layers[0].weight
    assert isinstance(w, eqxform.Symmetric) and w.matrix.shape == (5, 4, 4)
    resolved = eqxform.resolve(model)
    stacked = resolved.mlps.layers.layers[0].weight
    for i in range(5):
        assert np.allclose(stacked[i], stacked[i].T)
        # Each layer is symmetrised on its own, not across layers.
        m = w.matrix[i]
        assert np.allclose(stacked[i], 0.5 * (m + m.T))
    x = jax.random.normal(getkey(), (4,))
    plain = eqxform.compile("model MLPChain(size=4, count=5)").apply()
    by_hand = plain
    for i in range(5):
        m = w.matrix[i]
        by_hand = eqx.tree_at(lambda t: t.mlps.layers[i].layers[0].weight, by_hand, 0.5 * (m + m.T))
    by_hand = eqx.tree_at(
        lambda t: (
            [t.mlps.layers[i].layers[1].weight for i in range(5)]
            + [t.mlps.layers[i].layers[j].bias for i in range(5) for j in range(2)]
        ),
        by_hand,
        [model.mlps.layers.layers[1].weight.matrix[i] for i in range(5)]
        + [model.mlps.layers.layers[j].bias[i] for i in range(5) for j in range(2)],
    )
    by_hand = eqx.tree_at(
        lambda t: [t.mlps.layers[i].layers[1].weight for i in range(5)],
        by_hand,
        [0.5 * (m + m.T) for m in model.mlps.layers.layers[1].weight.matrix],
    )
    assert np.allclose(resolved(x), by_hand(x), atol=1e-5)


def test_freeze_and_lr_on_an_ensemble(getkey):
    program = eqxform.compile(
        "model MLP(in_size=2, out_size=2, width_size=8, depth=2)\n"
        "optimizer adam(learning_rate=1e-2)\n"
        "ensemble 4\n"
        "where layers[0] -> freeze\n"
        "where layers[-1].bias -> lr 0"
    )
    ens = program.apply()
    assert isinstance(ens.model.layers[0].weight, eqxform.Frozen)
    got = labels(program, ens)
    assert got["model.layers.0.weight.value"] == "frozen"
    assert got["model.layers.2.bias"] == "lr*0"
    x = jax.random.normal(getkey(), (16, 2))
    y = jax.random.normal(getkey(), (16, 4, 2))

    def loss(model, x, y):
        return jnp.mean((jax.vmap(model)(x) - y) ** 2)

    step = eqxform.make_step(loss, eqxform.optimizer(program, ens), ens)
    for _ in range(3):
        step(x, y)
    trained = step.model
    assert np.array_equal(trained.model.layers[0].weight.value, ens.model.layers[0].weight.value)
    assert np.array_equal(trained.model.layers[2].bias, ens.model.layers[2].bias)
    assert not np.array_equal(trained.model.layers[1].weight, ens.model.layers[1].weight)


def test_stack_vmap_with_a_count_makes_independent_copies(getkey):
    model = eqxform.compile("model Tower(size=3, width_size=5, depth=1)\nstack mlps vmap 4").apply()
    assert model.mlps.count == 4 and model.mlps.mode == "vmap"
    x = jax.random.normal(getkey(), (3,))
    out = model.mlps(x)
    assert out.shape == (4, 3)
    for i in range(4):
        assert np.allclose(out[i], model.mlps[i](x), atol=1e-6)
    assert not np.allclose(out[0], out[1])


def test_rules_above_the_ensemble_line_run_per_member():
    spec = (
        "model MLP(in_size=2, out_size=2, width_size=8, depth=1)\n"
        "where Linear.bias -> init normal(stddev=1)\n"
        "where layers[0].weight -> init ones\n"
        "ensemble 5\n"
    )
    ens = eqxform.compile(spec).apply()
    bias = ens.model.layers[0].bias
    assert bias.shape == (5, 8)
    assert len({tuple(np.asarray(b)) for b in bias}) == 5  # each member drew its own
    assert bool((ens.model.layers[0].weight == 1).all())  # the rule ran on every member
    assert float(jnp.std(bias)) == pytest.approx(1.0, rel=0.35)


def test_optimizer_table_matches_optax():
    for name, signature in N.OPTIMIZERS.items():
        params = inspect.signature(getattr(optax, name)).parameters
        assert list(params)[: len(signature.names)] == list(signature.names), name
        required = [p for p, v in params.items() if v.default is inspect.Parameter.empty]
        assert set(required) <= set(signature.required), name


def test_wrapper_table_matches_the_built_in_wrappers():
    assert set(N.WRAPPERS) == set(BUILTIN)
    for name, signature in N.WRAPPERS.items():
        params = list(inspect.signature(BUILTIN[name].__init__).parameters)[2:]
        assert params == list(signature.names), name


def test_make_step_does_not_flatten_per_call(getkey):
    flattens = []

    @jax.tree_util.register_pytree_with_keys_class
    class Counted:
        def __init__(self, w):
            self.w = w

        def tree_flatten_with_keys(self):
            flattens.append(1)
            return ((jax.tree_util.GetAttrKey("w"), self.w),), None

        @classmethod
        def tree_unflatten(cls, aux, children):
            return cls(*children)

        def __call__(self, x):
            return x @ self.w

    model = Counted(jax.random.normal(getkey(), (3, 2)))
    step = eqxform.make_step(lambda m, x, y: jnp.mean((m(x) - y) ** 2), optax.sgd(0.1), model)
    x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    step(x, y)
    after_first = len(flattens)
    for _ in range(20):
        step(x, y)
    assert len(flattens) == after_first
    assert step.traces == 1


def test_recipes_survive_tree_at_and_training(tmp_path, getkey):
    program = eqxform.compile(
        "model MLP(in_size=2, out_size=2, width_size=8, depth=1)\noptimizer sgd(learning_rate=0.1)"
    )
    model = program.apply(seed=3)
    edited = eqx.tree_at(lambda m: m.layers[0].bias, model, jnp.ones(8))
    assert eqxform.recipe_of(edited)["base"]["seed"] == 3
    step = eqxform.make_step(
        lambda m, x, y: jnp.mean((jax.vmap(m)(x) - y) ** 2),
        eqxform.optimizer(program, model),
        model,
    )
    step(jnp.ones((4, 2)), jnp.zeros((4, 2)))
    trained = step.model
    eqxform.save(tmp_path / "t.eqx", trained)
    back = eqxform.load(tmp_path / "t.eqx")
    assert all(np.array_equal(a, b) for a, b in zip(leaves(back), leaves(trained)))
    # Surgery that changes the structure drops the recipe: it no longer applies.
    cut = eqx.tree_at(lambda m: m.layers, model, model.layers[:1])
    assert eqxform.recipe_of(cut) is None


def test_two_models_of_one_structure_keep_their_own_recipes(tmp_path):
    program = eqxform.compile("model MLP(in_size=2, out_size=2, width_size=8, depth=1)")
    a, b = program.apply(seed=1), program.apply(seed=2)
    assert eqxform.recipe_of(a)["base"]["seed"] == 1
    assert eqxform.recipe_of(b)["base"]["seed"] == 2
    # A model edited from `a` keeps the arrays it did not replace: it is `a`'s.
    c = eqx.tree_at(lambda m: m.layers[0].bias, a, jnp.ones(8))
    assert eqxform.recipe_of(c)["base"]["seed"] == 1
    # A model of new arrays matches both: no recipe is guessed.
    d = jax.tree_util.tree_map(lambda x: x + 0 if eqx.is_array(x) else x, a)
    assert eqxform.recipe_of(d) is None


def test_saving_a_model_whose_recipe_is_ambiguous_asks_for_the_recipe(tmp_path):
    # A structure no other test builds, so that only `a` and `b` are filed under it.
    program = eqxform.compile("model MLP(in_size=3, out_size=5, width_size=7, depth=1)")
    a, b = program.apply(seed=1), program.apply(seed=2)
    doubled = jax.tree_util.tree_map(lambda x: x * 2 if eqx.is_array(x) else x, a)
    assert eqxform.recipe_of(doubled) is None
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.save(tmp_path / "d.eqx", doubled)
    (d,) = info.value.diagnostics
    assert d.code == "E590" and "2 different recipes" in d.message
    assert "recipe=eqxform.recipe_of(source)" in d.help
    assert not (tmp_path / "d.eqx").exists()
    # With the recipe given, the file loads by itself, with the doubled values.
    eqxform.save(tmp_path / "d.eqx", doubled, recipe=eqxform.recipe_of(a))
    back = eqxform.load(tmp_path / "d.eqx")
    assert eqxform.recipe_of(back)["base"]["seed"] == 1
    assert all(np.array_equal(x, y) for x, y in zip(leaves(back), leaves(doubled)))
    assert b is not None  # `b` alive is what makes the structure ambiguous
