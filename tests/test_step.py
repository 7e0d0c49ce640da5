import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import realmodels as R
from _optim_labels import labels

import eqxform


def loss_fn(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


@pytest.fixture
def batch(getkey):
    return jax.random.normal(getkey(), (16, 4)), jax.random.normal(getkey(), (16, 2))


def leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model) if eqx.is_array(x)]


def test_make_step_matches_a_plain_filter_jit_step(getkey, batch):
    model = eqx.nn.MLP(4, 2, 16, 3, key=getkey())
    opt = optax.adam(1e-2)

    @eqx.filter_jit
    def plain(model, state, x, y):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, loss

    state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    reference = model
    step = eqxform.make_step(loss_fn, opt, model)
    for _ in range(8):
        reference, state, ref_loss = plain(reference, state, *batch)
        loss = step(*batch)
    assert np.allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(leaves(step.model), leaves(reference)):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert step.traces == 1
    # The caller's model is not consumed by donation.
    assert np.isfinite(leaves(model)[0]).all()


def test_retrace_guard(getkey, batch):
    model = eqx.nn.MLP(4, 2, 8, 1, key=getkey())
    step = eqxform.make_step(loss_fn, optax.sgd(0.1), model)
    step(*batch)
    with pytest.raises(eqxform.RetraceError) as info:
        step(batch[0][:5], batch[1][:5])
    assert "float32[16, 4]" in str(info.value) and "float32[5, 4]" in str(info.value)
    relaxed = eqxform.make_step(loss_fn, optax.sgd(0.1), model, allow_retrace=True)
    relaxed(*batch)
    relaxed(batch[0][:5], batch[1][:5])
    assert relaxed.traces == 2


def test_lr_groups_scale_the_base_rate(getkey, batch):
    base = eqx.nn.MLP(4, 2, 8, 1, key=getkey())
    spec = "optimizer sgd(learning_rate=0.1)\nwhere **.bias -> lr 0\nwhere layers[0].weight -> lr 2"
    program = eqxform.compile(spec)
    model = program.apply(base, key=getkey())
    step = eqxform.make_step(loss_fn, eqxform.optimizer(program, model), model)
    step(*batch)
    plain = eqxform.make_step(loss_fn, optax.sgd(0.1), model)
    plain(*batch)
    for layer, before in zip(step.model.layers, model.layers):
        assert np.array_equal(layer.bias, before.bias)  # lr 0
    moved = step.model.layers[0].weight - model.layers[0].weight
    plain_moved = plain.model.layers[0].weight - model.layers[0].weight
    assert np.allclose(moved, 2 * plain_moved, rtol=1e-4, atol=1e-6)
    assert np.allclose(step.model.layers[1].weight, plain.model.layers[1].weight)


def test_weight_decay_groups(getkey):
    base = eqx.nn.MLP(4, 2, 8, 1, key=getkey())
    x, y = jnp.zeros((4, 4)), jnp.zeros((4, 2))
    zero_loss = lambda m, x, y: 0.0 * loss_fn(m, x, y)  # noqa: E731
    for optimizer in ("adamw(learning_rate=0.1, weight_decay=0.5)", "adam(learning_rate=0.1)"):
        program = eqxform.compile(
            f"optimizer {optimizer}\nwhere Linear.weight -> weight_decay 0.5\nwhere **.bias -> weight_decay 0"
        )
        model = program.apply(base, key=jax.random.key(0))
        step = eqxform.make_step(zero_loss, eqxform.optimizer(program, model), model)
        step(x, y)
        trained = step.model
        # With no gradient, only decay moves parameters: weights shrink, biases stay.
        assert np.abs(trained.layers[0].weight).sum() < np.abs(model.layers[0].weight).sum()
        assert np.array_equal(trained.layers[0].bias, model.layers[0].bias), optimizer


def test_labels_follow_the_final_model(getkey):
    program = eqxform.compile(
        "optimizer adam(learning_rate=1e-3)\nwhere layers[0] -> freeze\nwhere **.bias -> lr 0.5"
    )
    model = program.apply(eqx.nn.MLP(4, 2, 8, 1, key=getkey()), key=getkey())
    got = labels(program, model)
    assert got["layers.0.weight.value"] == "frozen" and got["layers.0.bias.value"] == "frozen"
    assert got["layers.1.bias"] == "lr*0.5"
    assert "layers.1.weight" not in got


def test_optimizer_needs_the_directive(getkey):
    program = eqxform.compile("where **.bias -> init zeros")
    with pytest.raises(eqxform.UsageError, match="no `optimizer` directive"):
        eqxform.optimizer(program, eqx.nn.MLP(4, 2, 8, 1, key=getkey()))


def _inits(model) -> list:
    """The floating-point initial values in `model`'s `eqx.nn.StateIndex`es."""
    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731
    indices = [i for i in jax.tree_util.tree_leaves(model, is_leaf=is_index) if is_index(i)]
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(indices) if eqx.is_inexact_array(a)]


def _zero_loss(model, state, x, y):
    # No gradient anywhere: only weight decay moves parameters.
    logits, state = R.call_with_state(eqxform.resolve(model), x, state)
    return 0.0 * optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state


@pytest.mark.parametrize("name", ["lion", "nadamw", "lamb", "novograd"])
def test_no_optimizer_decays_model_state_and_each_equals_optax_masked_by_hand(name):
    # Each optimiser with decoupled decay leaves the running statistics'
    # initial values, as a hand-written optax one masked there does: by its
    # `mask=`, or (novograd, whose decay acts inside its moments) by a group of
    # its own without decay.
    model = R.MixedNorms(width=4, key=jax.random.key(0))
    state = eqx.nn.State(model)
    x = jax.random.normal(jax.random.key(1), (8, 3, 6, 6))
    y = jax.random.randint(jax.random.key(2), (8,), 0, 10)
    program = eqxform.compile(f"optimizer {name}(learning_rate=0.01, weight_decay=0.5)")
    step = eqxform.make_step(_zero_loss, eqxform.optimizer(program, model), model, state=state)
    for _ in range(2):
        step(x, y)
    for got, want in zip(_inits(step.model), _inits(model), strict=True):
        np.testing.assert_array_equal(got, want)
    assert np.abs(step.model.fc.weight).sum() < np.abs(model.fc.weight).sum()

    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731

    def decays(params):
        return jax.tree_util.tree_map(
            lambda x: jax.tree_util.tree_map(lambda _: False, x) if is_index(x) else True,
            params,
            is_leaf=is_index,
        )

    make = getattr(optax, name)
    if name == "novograd":

        def group(params):
            return jax.tree_util.tree_map(lambda d: "decay" if d else "state", decays(params))

        opt = optax.partition(
            {"decay": make(0.01, weight_decay=0.5), "state": make(0.01, weight_decay=0.0)}, group
        )
    else:
        opt = make(0.01, weight_decay=0.5, mask=decays)
    hand, opt_state = model, opt.init(eqx.filter(model, eqx.is_inexact_array))
    for _ in range(2):
        grads = jax.tree_util.tree_map(jnp.zeros_like, eqx.filter(hand, eqx.is_inexact_array))
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(hand, eqx.is_inexact_array))
        hand = eqx.apply_updates(hand, updates)
    for a, b in zip(leaves(step.model), leaves(hand), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_decay_of_a_stack_with_a_frozen_layer_leaves_its_state_and_a_rule_naming_state_decays_it():
    # Stacked stateful blocks, one frozen: the per-layer optimiser (here also
    # of one layer's state, named by an `lr` rule) leaves model state; a `weight_decay` rule that names the state acts on it, as
    # every action naming the state does.
    model = R.TinyResNet(width=4, depth=3, key=jax.random.key(0))
    state = eqx.nn.State(model)
    spec = (
        "optimizer adamw(learning_rate=0.01, weight_decay=0.5)\n"
        "stack blocks scan\n"
        "where blocks[0] -> freeze\n"
        "where blocks[1] -> lr 2\n"
        "where blocks[2].bn1.batch_state_index -> lr 3\n"
        "where bn.batch_state_index -> weight_decay 0.5"
    )
    program = eqxform.compile(spec)
    stacked, stacked_state = program.apply((model, state), key=jax.random.key(1))
    x = jax.random.normal(jax.random.key(1), (8, 3, 6, 6))
    y = jax.random.randint(jax.random.key(2), (8,), 0, 10)
    opt = eqxform.optimizer(program, stacked)
    step = eqxform.make_step(_zero_loss, opt, stacked, state=stacked_state)
    step(x, y)
    blocks, before = step.model.blocks.layers, stacked.blocks.layers
    for got, want in zip(_inits(blocks), _inits(before), strict=True):
        np.testing.assert_array_equal(got, want)
    weight = eqxform.bake(step.model).blocks.layers.conv1.weight
    start = eqxform.bake(stacked).blocks.layers.conv1.weight
    assert np.array_equal(weight[0], start[0])  # frozen
    # Decoupled decay: each step multiplies by 1 - lr * decay (lr doubled in layer 1).
    np.testing.assert_allclose(weight[1], start[1] * (1 - 0.02 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(weight[2], start[2] * (1 - 0.01 * 0.5), rtol=1e-6)
    mean, var = step.model.bn.batch_state_index.init
    assert np.array_equal(mean, np.zeros(4))
    np.testing.assert_allclose(var, np.full(4, 1 - 0.01 * 0.5), rtol=1e-6)
