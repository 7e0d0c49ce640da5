import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqxform


def test_replace_last_layer_like_tree_at(mlp, getkey):
    program = eqxform.compile(
        "let width = 8\nwhere layers[-1] -> replace Linear(in_features=width, out_features=10)"
    )
    ours = program.apply(mlp, key=getkey())
    theirs = eqx.tree_at(lambda m: m.layers[-1], mlp, eqx.nn.Linear(8, 10, key=getkey()))
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)

    def shapes(m):
        return [x.shape for x in jax.tree_util.tree_leaves(m) if eqx.is_array(x)]

    assert shapes(ours) == shapes(theirs)
    # Everything else is untouched, to the bit.
    for a, b in zip(ours.layers[:-1], mlp.layers[:-1]):
        assert a.weight is b.weight and a.bias is b.bias
    assert ours(jnp.ones(2)).shape == (10,)


def test_replace_activation_function(mlp, getkey):
    out = eqxform.compile("where activation -> replace gelu").apply(mlp, key=getkey())
    assert out.activation is jax.nn.gelu
    x = jnp.linspace(-1, 1, 2)
    expected = eqx.tree_at(lambda m: m.activation, mlp, jax.nn.gelu)(x)
    assert np.allclose(out(x), expected)


def test_replace_with_nested_constructor(mlp, getkey):
    spec = "where layers[1] -> replace Sequential([Linear(8, 8), Lambda(relu), Linear(8, 8)])"
    out = eqxform.compile(spec).apply(mlp, key=getkey())
    seq = out.layers[1]
    assert isinstance(seq, eqx.nn.Sequential) and len(seq.layers) == 3
    # The two new layers are drawn from different keys.
    assert not np.array_equal(seq.layers[0].weight, seq.layers[2].weight)


def test_replace_every_match_gets_its_own_weights(mlp, getkey):
    out = eqxform.compile("where layers[1:3] -> replace Linear(8, 8)").apply(mlp, key=getkey())
    assert not np.array_equal(out.layers[1].weight, out.layers[2].weight)


def test_cast_and_scale(mlp, getkey):
    spec = "where layers[0] -> cast bfloat16\nwhere layers[1].weight -> scale 0.5"
    out = eqxform.compile(spec).apply(mlp, key=getkey())
    assert out.layers[0].weight.dtype == jnp.bfloat16 and out.layers[0].bias.dtype == jnp.bfloat16
    assert np.allclose(out.layers[1].weight, mlp.layers[1].weight * 0.5)
    assert out.layers[2].weight is mlp.layers[2].weight


def test_scale_with_match_context(mlp, getkey):
    out = eqxform.compile("where Linear.weight -> scale 1/fan_in").apply(mlp, key=getkey())
    for a, b in zip(out.layers, mlp.layers):
        assert np.allclose(a.weight, b.weight / b.weight.shape[1])


def test_constructor_error_points_at_the_call(mlp, getkey):
    program = eqxform.compile('where layers[-1] -> replace Linear(in_features=8, out_features="x")')
    with pytest.raises(eqxform.SpecError) as info:
        program.apply(mlp, key=getkey())
    d = info.value.diagnostics[0]
    assert d.code == "E205" and d.span.column == 29


def test_init_on_a_function_is_an_error(mlp, getkey):
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where activation -> init zeros").apply(mlp, key=getkey())
    assert info.value.diagnostics[0].code == "E203"


def test_params_override_lets(mlp, getkey):
    program = eqxform.compile(
        "let width = 4\nlet out = width * 2\nwhere layers[-1] -> replace Linear(8, out)",
        params={"width": 16},
    )
    assert program.apply(mlp, key=getkey()).layers[-1].weight.shape == (32, 8)
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.compile("let width = 4", params={"widht": 3})
    assert "did you mean `width`?" in info.value.diagnostics[0].help


def test_model_directive_and_seed():
    program = eqxform.compile("model MLP(in_size=2, out_size=3, width_size=4, depth=1)\nseed 5")
    a, b = program.apply(), program.apply()
    assert a.layers[0].weight.shape == (4, 2)
    assert np.array_equal(a.layers[0].weight, b.layers[0].weight)
    c = program.apply(seed=6)
    assert not np.array_equal(a.layers[0].weight, c.layers[0].weight)


def test_no_model_at_all_is_a_usage_error():
    with pytest.raises(eqxform.UsageError, match="no `model` directive"):
        eqxform.compile("where Linear.weight -> init zeros").apply()


def test_passes_compose_like_applying_each_by_hand(mlp, getkey):
    spec = "where Linear.weight -> init he_normal\nwhere layers[-1] -> replace Linear(8, 3)"
    program = eqxform.compile(spec)
    key = getkey()
    by_hand = mlp
    for p in program.passes:
        by_hand = p(by_hand, key)
    whole = program.apply(mlp, key=key)
    assert all(
        np.array_equal(x, y)
        for x, y in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(by_hand))
        if eqx.is_array(x)
    )


def test_plan_allocates_nothing_and_reports_changes(mlp):
    program = eqxform.compile(
        "where Linear.weight -> init zeros\nwhere layers[-1] -> replace Linear(8, 10)\n"
        "where layers[0].weight -> cast bfloat16"
    )
    plan = program.plan(mlp)
    assert [len(s.matches) for s in plan.steps] == [4, 1, 1]
    assert plan.steps[1].params_delta == (8 * 10 + 10) - (8 * 2 + 2)
    assert plan.steps[2].matches[0].before == "f32[8,2]"
    assert plan.steps[2].matches[0].after == "bf16[8,2]"
    assert all(
        isinstance(x, jax.ShapeDtypeStruct)
        for x in jax.tree_util.tree_leaves(plan.result)
        if hasattr(x, "shape")
    )
    assert "parameters:" in str(plan)
    assert plan.to_dict()["steps"][1]["matches"][0]["path"] == "layers[3]"


def test_plan_collects_every_model_error(mlp):
    program = eqxform.compile(
        "where layrs.weight -> init zeros\nwhere Linear.weight expect 2 -> init zeros\n"
        "where Conv2d.weight -> init zeros"
    )
    assert [d.code for d in program.check(mlp)] == ["E201", "E202", "E201"]


def _peak_memory() -> int:
    """The most memory this process has held at once, in bytes."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # (Linux counts KiB)


def test_plan_of_a_huge_model_allocates_nothing():
    """The plan of a model of 3.2 GB of weights allocates none of them: its
    result is shapes, and the process's peak memory does not grow by a
    fraction of that. (Asserted on memory, not on time: a busy machine is
    slow, but it allocates no more.)"""
    program = eqxform.compile(
        "model MLP(in_size=8192, out_size=8192, width_size=8192, depth=12)\n"
        "where Linear.weight -> init he_normal"
    )
    before = _peak_memory()
    plan = program.plan()
    assert plan.params_after > 800_000_000
    leaves = jax.tree_util.tree_leaves(plan.result)
    assert sum(isinstance(x, jax.ShapeDtypeStruct) for x in leaves) == 26  # 13 weights, biases
    assert not any(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)
    assert _peak_memory() - before < 1 << 30  # the weights: 3.2 GB


# ---- `**` and modules act on floating-point arrays (issue 16) ----------------------------


class Masked(eqx.Module):
    """A model with a bool mask and an int counter beside its parameters, as
    attention masks and step counters sit in real models."""

    linear: eqx.nn.Linear
    mask: jax.Array
    count: jax.Array

    def __init__(self, key):
        self.linear = eqx.nn.Linear(4, 4, key=key)
        self.mask = jnp.array([True, False, True, True])
        self.count = jnp.array(3, jnp.int32)

    def __call__(self, x):
        return jnp.where(self.mask, self.linear(x), 0.0) * self.count


def _floats(model, f):
    """The hand-written form: `f` on the floating-point arrays, the rest kept."""
    return jax.tree_util.tree_map(lambda x: f(x) if eqx.is_inexact_array(x) else x, model)


@pytest.mark.parametrize(
    "action, hand",
    [
        ("scale 2", lambda x: x * 2),
        ("cast bfloat16", lambda x: x.astype(jnp.bfloat16)),
        ("init zeros", jnp.zeros_like),
    ],
)
@pytest.mark.parametrize("selector", ["**", "Masked"])
def test_broad_actions_skip_non_floating_arrays(getkey, selector, action, hand):
    model = Masked(getkey())
    program = eqxform.compile(f"where {selector} -> {action}")
    ours = program.apply(model, key=getkey())
    theirs = _floats(model, hand)
    assert ours.mask is model.mask and ours.count is model.count
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    [step] = program.plan(model).steps
    assert step.skipped == 2
    assert "2 non-floating arrays skipped" in str(program.plan(model))


def test_freeze_everything_leaves_masks_and_counters_plain(getkey):
    model = Masked(getkey())
    program = eqxform.compile("where ** -> freeze")
    frozen = program.apply(model, key=getkey())
    assert frozen.mask is model.mask and frozen.count is model.count
    assert isinstance(frozen.linear.weight, eqxform.Frozen)
    assert isinstance(frozen.linear.bias, eqxform.Frozen)
    x = jnp.arange(4.0)
    assert np.array_equal(eqxform.resolve(frozen)(x), model(x))
    assert program.plan(model).steps[0].skipped == 2
    # Named explicitly, a non-floating array is still what the rule says.
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where count -> init zeros").apply(model, key=getkey())
    assert info.value.diagnostics[0].code == "E208"
    assert eqxform.compile("where count -> scale 2").apply(model).count == 6
