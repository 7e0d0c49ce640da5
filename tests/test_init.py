import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqxform
from eqxform import _names


def wide_model(key):
    # Big enough that sample statistics are tight.
    return eqx.nn.MLP(in_size=256, out_size=128, width_size=512, depth=2, key=key)


def test_trunc_normal_as_in_the_tricks_page(getkey):
    model = wide_model(getkey())
    spec = "where Linear.weight -> init trunc_normal(stddev=1/sqrt(fan_in), lower=-2, upper=2)"
    out = eqxform.compile(spec).apply(model, key=getkey())
    for before, after in zip(model.layers, out.layers):
        w = np.asarray(after.weight)
        fan_in = w.shape[1]
        bound = 2 / math.sqrt(fan_in)
        assert w.shape == before.weight.shape and w.dtype == np.float32
        assert np.abs(w).max() <= bound * (1 + 1e-6)
        # A standard normal cut at +-2 has standard deviation 0.8796.
        assert np.std(w) == pytest.approx(0.8796 / math.sqrt(fan_in), rel=0.03)
        assert abs(np.mean(w)) < 0.02 / math.sqrt(fan_in) * 10
        # Biases were not selected: bit-identical.
        assert np.array_equal(np.asarray(after.bias), np.asarray(before.bias))
        assert after.bias is before.bias


def test_matches_the_hand_written_distribution(getkey):
    model = wide_model(getkey())

    def trunc_init(weight, key):
        out, in_ = weight.shape
        return math.sqrt(1 / in_) * jax.random.truncated_normal(key, -2, 2, (out, in_))

    ours = eqxform.compile(
        "where Linear.weight -> init trunc_normal(stddev=1/sqrt(fan_in), lower=-2, upper=2)"
    ).apply(model, key=getkey())
    for layer, key in zip(ours.layers, jax.random.split(getkey(), 3)):
        theirs = trunc_init(layer.weight, key)
        assert np.std(layer.weight) == pytest.approx(float(np.std(theirs)), rel=0.05)


@pytest.mark.parametrize(
    "name,variance",
    [
        ("he_normal", lambda fi, fo: 2 / fi),
        ("kaiming_uniform", lambda fi, fo: 2 / fi),
        ("lecun_normal", lambda fi, fo: 1 / fi),
        ("glorot_normal", lambda fi, fo: 2 / (fi + fo)),
        ("xavier_uniform", lambda fi, fo: 2 / (fi + fo)),
    ],
)
def test_fans_follow_equinox_layouts(getkey, name, variance):
    model = wide_model(getkey())
    out = eqxform.compile(f"where Linear.weight -> init {name}").apply(model, key=getkey())
    for layer in out.layers:
        fan_out, fan_in = layer.weight.shape  # Equinox: (out, in)
        assert np.var(layer.weight) == pytest.approx(variance(fan_in, fan_out), rel=0.06)


def test_conv_fans_include_the_kernel(getkey):
    conv = eqx.nn.Conv2d(64, 128, kernel_size=3, key=getkey())
    out = eqxform.compile("where Conv2d.weight -> init he_normal").apply(conv, key=getkey())
    fan_in = 64 * 3 * 3
    assert out.weight.shape == (128, 64, 3, 3)
    assert np.var(out.weight) == pytest.approx(2 / fan_in, rel=0.06)


def test_every_initialiser_runs(getkey):
    model = eqx.nn.MLP(4, 4, 16, 2, key=getkey())
    for name in _names.INITIALIZERS:
        if name == "delta_orthogonal":  # for convolutions: checked below
            continue
        args = {
            "constant": "(value=0.5)",
            "variance_scaling": '(scale=1.0, mode="fan_in", distribution="normal")',
        }.get(name, "")
        out = eqxform.compile(f"where Linear.weight -> init {name}{args}").apply(
            model, key=getkey()
        )
        for before, after in zip(model.layers, out.layers):
            assert after.weight.shape == before.weight.shape, name
            assert bool(jnp.isfinite(after.weight).all()), name
    conv = eqx.nn.Conv2d(4, 4, 3, key=getkey())
    out = eqxform.compile("where weight -> init delta_orthogonal").apply(conv, key=getkey())
    assert out.weight.shape == conv.weight.shape
    const = eqxform.compile("where Linear.weight -> init constant(0.5)").apply(model, key=getkey())
    assert all(bool((layer.weight == 0.5).all()) for layer in const.layers)


def test_each_layer_draws_its_own_numbers(getkey):
    model = eqx.nn.MLP(8, 8, 8, 3, key=getkey())
    out = eqxform.compile("where Linear.weight -> init normal(stddev=1)").apply(model, key=getkey())
    weights = [np.asarray(layer.weight) for layer in out.layers]
    for i in range(len(weights)):
        for j in range(i + 1, len(weights)):
            assert not np.array_equal(weights[i], weights[j])


def test_same_seed_same_numbers_and_rules_independent(getkey):
    model = eqx.nn.MLP(8, 8, 8, 2, key=getkey())
    a = "where Linear.weight -> init he_normal\nwhere Linear.bias -> init normal(stddev=1)"
    b = "where layers[0].weight -> init ones\n" + a + "\nwhere layers[-1].bias -> scale 1"
    out_a = eqxform.compile(a).apply(model, seed=3)
    out_a2 = eqxform.compile(a).apply(model, seed=3)
    out_b = eqxform.compile(b).apply(model, seed=3)
    out_c = eqxform.compile(a).apply(model, seed=4)
    for la, la2, lb, lc in zip(out_a.layers, out_a2.layers, out_b.layers, out_c.layers):
        assert np.array_equal(la.weight, la2.weight) and np.array_equal(la.bias, la2.bias)
        # Adding rules around these two does not change what they draw.
        assert np.array_equal(la.weight, lb.weight) and np.array_equal(la.bias, lb.bias)
        assert not np.array_equal(la.weight, lc.weight)


def test_init_on_a_module_covers_its_floating_arrays(getkey):
    model = eqx.nn.MLP(4, 4, 8, 2, key=getkey())
    out = eqxform.compile("where layers[-1] -> init zeros").apply(model, key=getkey())
    assert not bool(out.layers[-1].weight.any()) and not bool(out.layers[-1].bias.any())
    assert np.array_equal(out.layers[0].weight, model.layers[0].weight)


def test_fan_initialiser_on_a_vector_is_an_error(getkey):
    model = eqx.nn.MLP(4, 4, 8, 2, key=getkey())
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where Linear.bias -> init he_normal").apply(model, key=getkey())
    d = info.value.diagnostics[0]
    assert d.code == "E203" and "2 or more dimensions" in d.message


def test_registered_initialiser(getkey):
    def fill(key, shape, dtype, value=1.0):
        return jnp.full(shape, value, dtype)

    eqxform.register_initializer("fill", fill, params=["value?"])
    model = eqx.nn.Linear(3, 4, key=getkey())
    out = eqxform.compile("where weight -> init fill(value=fan_in)").apply(model, key=getkey())
    assert bool((out.weight == 3).all())


# ---- half-precision leaves ----------------------------------------------------

_ARGS = {
    "constant": "(value=0.5)",
    "variance_scaling": '(scale=1.0, mode="fan_in", distribution="normal")',
}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_initialiser_draws_half_precision_leaves_in_float32(getkey, dtype):
    """`cast bfloat16` then `init orthogonal` crashed `apply` (the CPU has no
    bfloat16 QR). Every built-in initialiser now draws in float32 and rounds:
    a half-precision leaf holds exactly the float32 model's numbers, rounded."""
    names = sorted(set(_names.INITIALIZERS) - {"delta_orthogonal"})
    # One layer per initialiser, so that one spec covers them all.
    model = eqx.nn.MLP(8, 8, 16, len(names) - 1, key=getkey())
    rules = "\n".join(
        f"where layers[{i}].weight -> init {name}{_ARGS.get(name, '')}"
        for i, name in enumerate(names)
    )
    conv = eqx.nn.Conv2d(4, 8, 3, key=getkey())
    conv_rule = "where weight -> init delta_orthogonal"
    for base, cast, spec, labels in [
        (model, "where Linear.weight", rules, names),
        (conv, "where weight", conv_rule, ["delta_orthogonal"]),
    ]:
        low = eqxform.compile(f"{cast} -> cast {dtype}\n{spec}").apply(base, seed=5)
        full = eqxform.compile(spec).apply(base, seed=5)
        for name, a, b in zip(labels, _weights(low), _weights(full), strict=True):
            assert a.dtype == jnp.dtype(dtype) and b.dtype == jnp.float32, name
            assert bool(jnp.isfinite(a.astype(jnp.float32)).all()), name
            np.testing.assert_array_equal(
                np.asarray(a.astype(jnp.float32)),
                np.asarray(b.astype(dtype).astype(jnp.float32)),
                err_msg=name,
            )


def _weights(model):
    return [layer.weight for layer in model.layers] if hasattr(model, "layers") else [model.weight]


def test_orthogonal_on_bfloat16_weights(getkey):
    model = eqx.nn.MLP(16, 16, 32, 2, key=getkey())
    program = eqxform.compile(
        "where Linear.weight -> cast bfloat16\nwhere Linear.weight -> init orthogonal"
    )
    assert [d for d in program.check(model) if d.severity == "error"] == []
    out = program.apply(model, key=getkey())
    drawn = eqxform.compile("where Linear.weight -> init orthogonal").apply(
        model, key=jax.random.key(0)
    )
    for layer in out.layers:
        assert layer.weight.dtype == jnp.bfloat16
        w = np.asarray(layer.weight.astype(jnp.float32))
        small = min(w.shape)
        gram = w @ w.T if w.shape[0] == small else w.T @ w
        # Orthogonal up to bfloat16's rounding (8 bits of mantissa).
        np.testing.assert_allclose(gram, np.eye(small), atol=3e-2)
    for layer in drawn.layers:  # the float32 draw itself: orthogonal to float32 precision
        w = np.asarray(layer.weight)
        small = min(w.shape)
        gram = w @ w.T if w.shape[0] == small else w.T @ w
        np.testing.assert_allclose(gram, np.eye(small), atol=1e-5)


def test_orthogonal_on_stacked_bfloat16_layers(getkey):
    import realmodels as R

    model = R.LoopingTransformer(key=getkey())
    spec = (
        "stack blocks scan\n"
        "where blocks.linear1.weight -> cast bfloat16\n"
        "where blocks.linear1.weight -> init orthogonal\n"
    )
    out = eqxform.compile(spec).apply(model, key=getkey())
    weights = out.blocks.layers.linear1.weight
    assert weights.dtype == jnp.bfloat16 and weights.shape == (3, 32, 16)
    stacked = np.asarray(weights.astype(jnp.float32))
    for w in stacked:  # (32, 16): orthonormal columns, each layer its own draw
        np.testing.assert_allclose(w.T @ w, np.eye(16), atol=3e-2)
    assert not np.array_equal(stacked[0], stacked[1])


def test_a_registered_initialiser_gets_the_leafs_own_dtype(getkey):
    seen = []

    def fill_dtype(key, shape, dtype):
        seen.append(jnp.dtype(dtype))
        return jnp.ones(shape, dtype)

    eqxform.register_initializer("fill_dtype", fill_dtype, params=[])
    model = eqx.nn.Linear(3, 4, key=getkey())
    out = eqxform.compile("where weight -> cast float16\nwhere weight -> init fill_dtype").apply(
        model, key=getkey()
    )
    assert seen and set(seen) == {jnp.dtype(jnp.float16)}
    assert out.weight.dtype == jnp.float16 and bool((out.weight == 1).all())
