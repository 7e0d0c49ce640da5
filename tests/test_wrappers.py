import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import eqxform

SYMMETRIC = "where Linear.weight if ndim == 2 and shape[0] == shape[1] -> wrap symmetric"


def loss_fn(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


@pytest.fixture
def data(getkey):
    return jax.random.normal(getkey(), (16, 8)), jax.random.normal(getkey(), (16, 8))


def test_symmetric_square_weights_only(getkey):
    model = eqx.nn.MLP(8, 3, 8, 2, key=getkey())
    wrapped = eqxform.compile(SYMMETRIC).apply(model, key=getkey())
    resolved = eqxform.resolve(wrapped)
    assert isinstance(wrapped.layers[0].weight, eqxform.Symmetric)
    assert isinstance(wrapped.layers[1].weight, eqxform.Symmetric)
    assert wrapped.layers[2].weight is model.layers[2].weight  # (3, 8): untouched
    for layer in resolved.layers[:2]:
        assert np.allclose(layer.weight, layer.weight.T)
    w = model.layers[1].weight
    assert np.allclose(resolved.layers[1].weight, 0.5 * (w + w.T))


def test_symmetric_stays_symmetric_through_training(getkey, data):
    program = eqxform.compile("optimizer adam(learning_rate=1e-2)\n" + SYMMETRIC)
    model = program.apply(eqx.nn.MLP(8, 8, 8, 2, key=getkey()), key=getkey())
    step = eqxform.make_step(loss_fn, eqxform.optimizer(program, model), model)
    for _ in range(5):
        step(*data)
    trained = eqxform.resolve(step.model)
    for layer in trained.layers:
        assert np.allclose(layer.weight, layer.weight.T, atol=1e-6)
    assert not np.allclose(trained.layers[0].weight, eqxform.resolve(model).layers[0].weight)


def test_frozen_is_bit_identical_after_adamw_with_decay(getkey, data):
    spec = """
optimizer adamw(learning_rate=1e-2, weight_decay=0.5)
where layers[:-1] -> freeze
"""
    program = eqxform.compile(spec)
    model = program.apply(eqx.nn.MLP(8, 8, 16, 2, key=getkey()), key=getkey())
    step = eqxform.make_step(loss_fn, eqxform.optimizer(program, model), model)
    for _ in range(10):
        step(*data)
    trained = step.model
    for before, after in zip(model.layers[:-1], trained.layers[:-1]):
        assert np.array_equal(after.weight.value, before.weight.value)
        assert np.array_equal(after.bias.value, before.bias.value)
    assert not np.array_equal(trained.layers[-1].weight, model.layers[-1].weight)
    # Gradients of frozen leaves are zero.
    grads = eqx.filter_grad(lambda m: loss_fn(eqxform.resolve(m), *data))(model)
    assert not bool(grads.layers[0].weight.value.any())
    assert bool(grads.layers[-1].weight.any())


def test_plain_stop_gradient_is_not_enough_with_adamw(getkey, data):
    # The bug users hit: stop_gradient alone lets AdamW's decay move a weight.
    model = eqx.nn.MLP(8, 8, 16, 2, key=getkey())
    frozen = eqxform.compile("where layers[0] -> freeze").apply(model, key=getkey())
    opt = optax.adamw(1e-2, weight_decay=0.5)
    params = eqx.filter(frozen, eqx.is_inexact_array)
    state = opt.init(params)
    grads = eqx.filter_grad(lambda m: loss_fn(eqxform.resolve(m), *data))(frozen)
    updates, _ = opt.update(grads, state, params)
    moved = optax.apply_updates(params, updates)
    assert not np.array_equal(moved.layers[0].weight.value, frozen.layers[0].weight.value)


def test_nested_wrappers_resolve_innermost_first(getkey, data):
    spec = "optimizer adam(learning_rate=1e-2)\n" + SYMMETRIC + "\nwhere layers[0].weight -> freeze"
    program = eqxform.compile(spec)
    model = program.apply(eqx.nn.MLP(8, 8, 8, 2, key=getkey()), key=getkey())
    assert isinstance(model.layers[0].weight, eqxform.Frozen)
    assert isinstance(model.layers[0].weight.value, eqxform.Symmetric)
    resolved = eqxform.resolve(model)
    assert np.allclose(resolved.layers[0].weight, resolved.layers[0].weight.T)
    step = eqxform.make_step(loss_fn, eqxform.optimizer(program, model), model)
    for _ in range(5):
        step(*data)
    assert np.array_equal(
        step.model.layers[0].weight.value.matrix, model.layers[0].weight.value.matrix
    )
    assert np.allclose(
        eqxform.resolve(step.model).layers[1].weight, eqxform.resolve(step.model).layers[1].weight.T
    )


def test_positive_and_weight_norm_keep_values(getkey):
    model = eqx.nn.Linear(4, 3, key=getkey())
    model = eqx.tree_at(lambda m: m.bias, model, jnp.array([0.5, 2.0, 30.0]))
    out = eqxform.compile("where bias -> wrap positive\nwhere weight -> wrap weight_norm").apply(
        model, key=getkey()
    )
    resolved = eqxform.resolve(out)
    assert np.allclose(resolved.bias, model.bias, rtol=1e-5)
    assert np.allclose(resolved.weight, model.weight, rtol=1e-5)
    moved = eqx.tree_at(lambda m: m.bias.raw, out, out.bias.raw - 10.0)
    assert bool((eqxform.resolve(moved).bias > 0).all())


def test_registered_wrapper(getkey):
    class Scaled(eqxform.Wrapper):
        value: jax.Array
        factor: float = eqx.field(static=True)

        def __init__(self, value, factor=1.0):
            self.value, self.factor = value, factor

        def get(self):
            return self.factor * self.value

    eqxform.register_wrapper("scaled", Scaled)
    model = eqx.nn.Linear(4, 3, key=getkey())
    out = eqxform.compile("where weight -> wrap scaled(factor=3)").apply(model, key=getkey())
    assert np.allclose(eqxform.resolve(out).weight, 3 * model.weight)


def test_unwrap_bakes_plain_arrays(getkey, tmp_path):
    program = eqxform.compile(
        "model MLP(in_size=8, out_size=8, width_size=8, depth=2)\n"
        + SYMMETRIC
        + "\nwhere layers[0] -> freeze\nwhere ** -> unwrap"
    )
    model = program.apply()
    assert all(eqx.is_array(layer.weight) for layer in model.layers)
    assert np.allclose(model.layers[1].weight, model.layers[1].weight.T)
    eqxform.save(tmp_path / "plain.eqx", model)
    assert eqxform.load(tmp_path / "plain.eqx").layers[0].weight.shape == (8, 8)
    assert eqxform.bake(eqxform.compile(SYMMETRIC).apply(model)).layers[1].weight.shape == (8, 8)


def test_wrapped_model_file_round_trip(getkey, tmp_path):
    program = eqxform.compile(
        "model MLP(8, 8, 8, 2)\n" + SYMMETRIC + "\nwhere layers[-1] -> freeze"
    )
    model = program.apply()
    eqxform.save(tmp_path / "m.eqx", model)
    back = eqxform.load(tmp_path / "m.eqx")
    assert isinstance(back.layers[0].weight, eqxform.Symmetric)
    assert isinstance(back.layers[-1].bias, eqxform.Frozen)
    assert np.array_equal(back.layers[0].weight.matrix, model.layers[0].weight.matrix)


def test_wrap_errors(getkey):
    model = eqx.nn.MLP(8, 3, 8, 2, key=getkey())
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where layers[-1].weight -> wrap symmetric").apply(model, key=getkey())
    d = info.value.diagnostics[0]
    assert d.code == "E205" and "square" in d.message and "shape[0] == shape[1]" in d.help
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where activation -> wrap symmetric").apply(model, key=getkey())
    assert info.value.diagnostics[0].code == "E203"
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where layers[0] -> wrap symmetric").apply(model, key=getkey())
    assert "select the arrays themselves" in info.value.diagnostics[0].help


# ---- match properties read through wrappers ---------------------------------


class Scaled(eqxform.Wrapper):
    """A user's wrapper, registered as users register theirs."""

    value: jax.Array
    factor: float = eqx.field(static=True)

    def __init__(self, value, factor=1.0):
        self.value, self.factor = value, factor

    def get(self):
        return self.factor * eqxform.resolve(self.value)


# (the lines that wrap the weights first, the wrapper the weight is then in)
WRAPPED_FIRST = {
    "frozen": ("where ** -> freeze", "Frozen"),
    "symmetric": ("where Linear.weight if shape[0] == shape[1] -> wrap symmetric", "Symmetric"),
    "weight_norm": ("where Linear.weight -> wrap weight_norm", "WeightNormed"),
    "positive": ("where Linear.weight -> wrap positive", "Positive"),
    "registered": ("where Linear.weight -> wrap scaled(factor=2.0)", "Scaled"),
    "nested": (
        "where Linear.weight if shape[0] == shape[1] -> wrap symmetric\nwhere ** -> freeze",
        "Frozen",
    ),
    "adapter": ("where Linear -> lora(rank=2)", "Frozen"),  # the base weight of a LoRA
}


@pytest.mark.parametrize("kind", sorted(WRAPPED_FIRST))
def test_filters_read_the_wrapped_arrays_properties(getkey, kind):
    """A library model (ViT blocks of a hand-written attention): after any
    wrapper, `Linear.weight if ...` selects by the wrapped array's own
    properties, exactly the weights it selects on the plain model."""
    import realmodels as R

    eqxform.register_wrapper("scaled", Scaled)
    vit = R.TinyViT(key=getkey())
    first, wrapper = WRAPPED_FIRST[kind]
    wrapped = eqxform.compile(first).apply(vit, key=getkey())
    square = "ndim == 2 and shape[0] == shape[1]"
    # The three `attn.proj` weights are the model's only square ones (16, 16).
    for condition, count in [
        (square, 3),
        (f'{square} and size == 256 and dtype == "float32"', 3),
        ("fan_in == 16 and fan_out == 48", 3),  # the `qkv` weights, (48, 16)
        ("fan_in == 32", 3),  # `fc2`, (16, 32)
        ("ndim == 2", 3 * 4 + 1),
    ]:
        spec = f"where Linear.weight if {condition} expect {count} -> scale 2"
        plain = eqxform.compile(spec).apply(vit, key=getkey())
        out = eqxform.compile(spec).apply(wrapped, key=getkey())
        changed = [
            path
            for path, a, b in _weights(eqxform.bake(wrapped), eqxform.bake(out))
            if not np.array_equal(a, b)
        ]
        expected = [path for path, a, b in _weights(vit, plain) if not np.array_equal(a, b)]
        assert changed == expected and len(changed) == count, (kind, condition)
    proj = wrapped.blocks[0].attn.proj
    node = proj.base.weight if isinstance(proj, eqxform.LoRA) else proj.weight
    assert type(node).__name__ == wrapper  # the filter did read through a wrapper


def _weights(a, b):
    """(path, leaf of a, leaf of b) for every `weight` of two models of one structure."""
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = jax.tree_util.tree_leaves(b)
    return [
        (jax.tree_util.keystr(path).replace(".base.", "."), x, y)
        for (path, x), y in zip(leaves_a, leaves_b)
        if jax.tree_util.keystr(path).endswith(".weight")
    ]


def test_adapter_arguments_read_a_frozen_weights_fans(getkey):
    # `lora(rank=...)` reads the match's `fan_in`: the weights an earlier
    # `freeze` wrapped keep their fans.
    model = eqx.nn.MLP(16, 4, 32, 2, key=getkey())
    spec = "where ** -> freeze\nwhere Linear -> lora(rank=4 if fan_in >= 32 else 2)"
    out = eqxform.compile(spec).apply(model, key=getkey())
    assert [layer.rank for layer in out.layers] == [2, 4, 4]


def test_a_filter_that_no_wrapped_weight_passes_names_the_wrapped_shapes(getkey):
    model = eqx.nn.MLP(4, 4, 8, 2, key=getkey())
    spec = "where ** -> freeze\nwhere Linear.weight if shape[0] == 99 -> init zeros"
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile(spec).apply(model, key=getkey())
    d = info.value.diagnostics[0]
    assert d.code == "E201" and d.span.line == 2
    assert "`layers[0].weight` float32[8, 4] (in `Frozen`)" in d.help


def test_stacked_frozen_layers_have_one_layers_shape(getkey):
    import realmodels as R

    model = R.LoopingTransformer(key=getkey())
    spec = (
        "stack blocks scan\n"
        "where ** -> freeze\n"
        "where blocks.linear1.weight if ndim == 2 and shape[0] == 32 and shape[1] == 16"
        " expect 1 -> init zeros\n"
    )
    out = eqxform.compile(spec).apply(model, key=getkey())
    weight = eqxform.bake(out).blocks.layers.linear1.weight
    assert weight.shape == (3, 32, 16) and not bool(weight.any())


@pytest.mark.parametrize("adapter", ["lora(rank=2)", "ia3"])
def test_an_adapted_raw_weight_has_its_base_weights_properties(getkey, adapter):
    # A raw `(width, out)` parameter that no `Linear` owns gets a weight-level
    # adapter (`LoRAWeight`, `IA3Weight`); filters then read the base weight.
    import realmodels as R

    model = R.RawHead(key=getkey())
    adapted = eqxform.compile(f"where w -> {adapter}").apply(model, key=getkey())
    assert type(adapted.w).__name__ in ("LoRAWeight", "IA3Weight")
    spec = (
        'where w if ndim == 2 and shape[0] == 16 and shape[1] == 3 and dtype == "float32" '
        "and fan_in == 3 and fan_out == 16 and size == 48 expect 1 -> init zeros"
    )
    out = eqxform.compile(spec).apply(adapted, key=getkey())
    base = out.w.weight  # frozen by the adapter
    assert isinstance(base, eqxform.Frozen) and not bool(base.value.any())
    assert np.array_equal(out.layers[0].weight, adapted.layers[0].weight)
