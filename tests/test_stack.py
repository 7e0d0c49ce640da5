import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqxform


class Net(eqx.Module):
    blocks: eqx.nn.Sequential

    def __init__(self, count, key):
        keys = jr.split(key, count)
        self.blocks = eqx.nn.Sequential([eqx.nn.MLP(4, 4, 8, 2, key=k) for k in keys])

    def __call__(self, x):
        return self.blocks(x)


def arrays(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model) if eqx.is_array(x)]


def same(a, b) -> bool:
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(arrays(a), arrays(b))
    )


def loss(model, x):
    return jnp.sum(jax.vmap(model)(x) ** 2)


@pytest.mark.parametrize("options", ["", "remat", "unroll 3", "remat unroll 2"])
def test_stacked_outputs_and_gradients_equal_unstacked(getkey, options):
    net = Net(6, getkey())
    stacked = eqxform.compile(f"stack blocks scan 6 {options}").apply(net, key=getkey())
    assert isinstance(stacked.blocks, eqxform.Stacked) and stacked.blocks.count == 6
    x = jr.normal(getkey(), (5, 4))
    assert np.allclose(jax.vmap(stacked)(x), jax.vmap(net)(x), atol=1e-6)
    assert np.allclose(jax.jit(jax.vmap(stacked))(x), jax.vmap(net)(x), atol=1e-6)
    g_stacked = eqx.filter_jit(eqx.filter_grad(loss))(stacked, x)
    g_net = eqx.filter_grad(loss)(net, x)
    for i in range(6):
        for a, b in zip(arrays(g_stacked.blocks[i]), arrays(g_net.blocks.layers[i])):
            assert np.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
    ("count", "options", "loop"),
    [(2, "", False), (3, "", False), (4, "", True), (2, "unroll 1", True), (8, "unroll 8", False)],
)
def test_a_short_scan_stack_runs_unrolled_unless_its_line_says(getkey, count, options, loop):
    """A `scan` stack of 3 layers or fewer compiles without a loop (XLA compiles a
    rolled loop of 2 or 3 blocks slower than the blocks themselves), forward and
    gradient; a longer one keeps its loop, and `unroll K` is the user's choice.
    Either way the numbers are the unstacked model's, and `plan` says which."""
    net = Net(count, getkey())
    program = eqxform.compile(f"stack blocks scan {options}")
    stacked = program.apply(net)
    assert stacked.blocks.unrolled is not loop
    assert ("scan unrolled" in str(program.plan(net))) is not loop
    x = jr.normal(getkey(), (5, 4))
    params, static = eqx.partition(stacked, eqx.is_array)

    def forward(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    def gradient(p, x):
        return jax.grad(lambda p: loss(eqx.combine(p, static), x))(p)

    for fn in (forward, gradient):
        hlo = jax.jit(fn).lower(params, x).as_text()
        assert ("stablehlo.while" in hlo) is loop, fn.__name__
    assert np.allclose(jax.jit(forward)(params, x), jax.vmap(net)(x), atol=1e-6)
    g_stacked, g_net = jax.jit(gradient)(params, x), eqx.filter_grad(loss)(net, x)
    for i in range(count):
        layer = eqx.combine(g_stacked, static).blocks[i]
        for a, b in zip(arrays(layer), arrays(g_net.blocks.layers[i])):
            assert np.allclose(a, b, atol=1e-5)


def test_vmap_mode_runs_layers_side_by_side(getkey):
    net = Net(3, getkey())
    out = eqxform.compile("stack blocks vmap").apply(net, key=getkey())
    x = jr.normal(getkey(), (4,))
    expected = jnp.stack([layer(x) for layer in net.blocks.layers])
    assert np.allclose(out.blocks(x), expected, atol=1e-6)


def test_ten_mlps_like_the_hand_written_class(getkey):
    class TenMLPs(eqx.Module):
        mlps: eqx.nn.MLP

        def __init__(self, size, key):
            keys = jr.split(key, 10)
            self.mlps = eqx.filter_vmap(lambda k: eqx.nn.MLP(size, size, size, 1, key=k))(keys)

        def __call__(self, x):
            dynamic, static = eqx.partition(self.mlps, eqx.is_array)

            def f(_x, _d):
                return eqx.combine(_d, static)(_x), None

            out, _ = jax.lax.scan(f, x, dynamic)
            return out

    theirs = TenMLPs(3, getkey())
    program = eqxform.compile("model Tower(size=3, width_size=3, depth=1)\nstack mlps scan 10")
    ours = program.apply()
    assert ours.mlps.count == 10
    ours_arrays = arrays(ours.mlps.layers)
    assert [a.shape for a in ours_arrays] == [a.shape for a in arrays(theirs.mlps)]
    # The copies are independent draws...
    w = ours.mlps.layers.layers[0].weight
    assert not np.array_equal(w[0], w[1])
    # ...and with the same weights, the same function.
    ours = eqx.tree_at(lambda m: m.mlps.layers, ours, theirs.mlps)
    x = jr.normal(getkey(), (3,))
    assert np.allclose(ours(x), theirs(x), atol=1e-6)


def test_unstack_after_stack_is_bit_identical(getkey):
    net = Net(5, getkey())
    back = eqxform.compile("stack blocks scan\nunstack blocks").apply(net, key=getkey())
    assert same(back, net)
    # A slice of a list goes back to its place too.
    model = [eqx.nn.Linear(3, 3, key=getkey()) for _ in range(6)]
    sliced = eqxform.compile("stack [1:4] scan 3").apply(model, key=getkey())
    assert len(sliced) == 4 and isinstance(sliced[1], eqxform.Stacked)
    assert same(eqxform.compile("unstack [1]").apply(sliced, key=getkey()), model)


def test_reinit_of_some_layers_leaves_the_others(getkey):
    net = Net(6, getkey())
    spec = "stack blocks scan\nwhere blocks[2:5].layers[0].weight -> init normal(stddev=1)"
    out = eqxform.compile(spec).apply(net, key=getkey())
    stacked_before = eqxform.compile("stack blocks scan").apply(net, key=getkey())
    w, w0 = out.blocks.layers.layers[0].weight, stacked_before.blocks.layers.layers[0].weight
    for i in range(6):
        assert np.array_equal(w[i], w0[i]) == (i not in (2, 3, 4)), i
    assert not np.array_equal(w[2], w[3])  # each layer draws its own
    assert np.array_equal(
        out.blocks.layers.layers[1].weight, stacked_before.blocks.layers.layers[1].weight
    )


def test_init_on_a_stacked_leaf_uses_per_layer_fans(getkey):
    model = [eqx.nn.Linear(256, 64, key=getkey()) for _ in range(4)]
    out = eqxform.compile("stack [*] scan\nwhere Linear.weight -> init he_normal").apply(
        model, key=getkey()
    )
    assert len(out) == 1  # the four elements became one stack
    w = out[0].layers.weight
    assert w.shape == (4, 64, 256)
    for i in range(4):
        assert np.var(w[i]) == pytest.approx(2 / 256, rel=0.1)


def test_ensemble_members_are_independent_and_evaluate(getkey):
    program = eqxform.compile("model MLP(in_size=2, out_size=3, width_size=8, depth=2)\nensemble 8")
    ens = program.apply()
    assert isinstance(ens, eqxform.Ensemble) and ens.count == 8
    w = ens.model.layers[0].weight
    assert w.shape == (8, 8, 2) and not np.array_equal(w[0], w[1])
    x = jr.normal(getkey(), (2,))
    assert ens(x).shape == (8, 3)
    assert eqxform.evaluate_ensemble(ens, x).shape == (8, 3)
    xs = jr.normal(getkey(), (8, 2))
    per = ens.per_member(xs)
    assert per.shape == (8, 3)
    assert np.allclose(per[5], ens.member(5)(xs[5]), atol=1e-6)
    with pytest.raises(ValueError, match="leading axis of 8"):
        ens.per_member(xs[:3])


def test_ensemble_rules_act_per_member(getkey):
    spec = "model MLP(in_size=2, out_size=2, width_size=64, depth=1)\nensemble 4\nwhere Linear.weight -> init he_normal"
    ens = eqxform.compile(spec).apply()
    w = ens.model.layers[1].weight
    assert w.shape == (4, 2, 64)
    for i in range(4):
        assert np.var(w[i]) == pytest.approx(2 / 64, rel=0.5)
    assert not np.array_equal(w[0], w[1])


def test_ensemble_without_constructor_draws_members_anew(getkey):
    # Without a constructor, each member's layers get Equinox's default draw,
    # uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)): members differ, none is a copy.
    model = eqx.nn.Linear(64, 32, key=getkey())
    ens = eqxform.compile("ensemble 3").apply(model, key=getkey())
    w = np.asarray(ens.model.weight)
    assert w.shape == (3, 32, 64)
    assert not np.array_equal(w[0], w[1]) and not np.array_equal(w[0], model.weight)
    assert np.abs(w).max() <= 1 / 8 and np.std(w) == pytest.approx(1 / 8 / np.sqrt(3), rel=0.1)


def test_stacked_and_ensembled_files_reload(tmp_path):
    for spec in (
        "model MLPChain(size=4, count=5)\nstack mlps scan 5",
        "model MLP(2, 2, 8, 2)\nensemble 3",
    ):
        model = eqxform.compile(spec).apply()
        eqxform.save(tmp_path / "m.eqx", model)
        back = eqxform.load(tmp_path / "m.eqx")
        assert same(back, model)


@pytest.mark.parametrize(
    "spec,code,words",
    [
        ("stack blocks scan 7", "E132", "found 6 members"),
        ("stack blocks.layers[0] scan", "E130", "say how many copies"),
        ("stack blocks sacn", "E135", "did you mean `scan`?"),
        ("stack blocks scan unrol 2", "E136", "did you mean `unroll`?"),
        ("ensemble 0", "E134", "whole number of members"),
        ("stack blocks scan\nwhere blocks[1:3] -> cast bfloat16", "E137", "some layers of a stack"),
        ("unstack blocks", "E203", "needs a stack"),
    ],
)
def test_bad_stacks(getkey, spec, code, words):
    net = Net(6, getkey())
    with pytest.raises(eqxform.EqxformError) as info:
        eqxform.compile(spec).apply(net, key=getkey())
    d = info.value.diagnostics[0]
    assert d.code == code and words in d.message + (d.help or "")


def test_members_of_different_structure(getkey):
    model = [eqx.nn.Linear(3, 3, key=getkey()), eqx.nn.Linear(3, 4, key=getkey())]
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("stack [*] scan").apply(model, key=getkey())
    d = info.value.diagnostics[0]
    assert d.code == "E133"
    assert "`[1]` has `out_features=4`, `[0]` has `out_features=3`" in d.message
    model = [eqx.nn.Linear(3, 3, key=getkey()), eqx.nn.Linear(3, 3, use_bias=False, key=getkey())]
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("stack [*] scan").apply(model, key=getkey())
    assert "`[1]`" in info.value.diagnostics[0].message
