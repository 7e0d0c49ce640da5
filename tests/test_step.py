import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
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
