"""The library-shaped test models of `realmodels.py` build, run and train, and
the hand-written references there equal the models' own forward passes. None
of this uses eqxform: it proves the references, so that eqxform's tests can
trust them.

Compilation dominates the time on the CPU, so each test compiles once: the
model's own loop and the reference go through one `filter_jit`, ensembles are
built inside one, and shapes are checked with `filter_eval_shape`."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import realmodels as rm

SEQ = 6
MASK = jnp.arange(SEQ) < 4  # the last two positions are padding


def key(n: int):
    """A fixed key of the `unsafe_rbg` implementation: building the models is
    most of this file's time, and their draws compile several times faster
    from it than from threefry's. No test here depends on the quality of the
    random bits; the references split keys exactly as the models do, whatever
    the implementation."""
    return jr.key(n, impl="unsafe_rbg")


def arrays(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]


def assert_trees_close(a, b, atol=1e-5):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(arrays(a), arrays(b)):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-4)


def assert_trains(grads, model):
    """Gradients for every array of `model`, finite, not all zero."""
    structure = jax.tree_util.tree_structure
    assert structure(grads) == structure(eqx.filter(model, eqx.is_inexact_array))
    flat = arrays(grads)
    assert all(np.all(np.isfinite(g)) for g in flat)
    assert sum(float(np.abs(g).sum()) for g in flat) > 0


def resolve(model, path: str):
    """The object at eqxform's path text (`mlps.layers[0].weight`)."""
    obj = model
    for name, index in re.findall(r"([A-Za-z_]\w*)|\[(\d+)\]", path):
        obj = getattr(obj, name) if name else obj[int(index)]
    return obj


def out_shape(fn, *args, **kwargs):
    return jax.tree.map(lambda s: s.shape, eqx.filter_eval_shape(fn, *args, **kwargs))


# ---- the looping transformers: they train, and a scan equals their loop -----


@pytest.fixture(scope="module")
def transformer():
    return rm.LoopingTransformer(depth=2, key=key(0))


def test_looping_transformer_trains_and_a_scan_equals_its_loop(transformer):
    model = transformer
    # The same sequence twice, with two keys: dropout is on, so the rows
    # differ, and the scan matches the loop only with the loop's per-block keys.
    x = jnp.broadcast_to(jr.normal(key(1), (SEQ, 5)), (2, SEQ, 5))
    assert out_shape(jax.vmap(lambda x: model(x, inference=True)), x) == (2, SEQ, 7)

    def loss(model, x, key, call):
        keys = jr.split(key, x.shape[0])
        y = jax.vmap(lambda x, k: call(model, x, mask=MASK, key=k))(x, keys)
        return jnp.sum(y**2), y

    @eqx.filter_jit
    def run(model, x, key):
        grad = eqx.filter_grad(loss, has_aux=True)
        loop, scan = type(model).__call__, rm.looping_transformer_scanned
        return grad(model, x, key, loop), grad(model, x, key, scan)

    (g_loop, y_loop), (g_scan, y_scan) = run(model, x, key(2))
    assert_trains(g_loop, model)
    assert not np.allclose(y_loop[0], y_loop[1], atol=1e-3)
    assert_trees_close(y_scan, y_loop)
    assert_trees_close(g_scan, g_loop)


def test_tiny_vit_trains_and_a_scan_equals_its_loop():
    # Inference and no key: the blocks get `key=None` from the scan too.
    model = rm.TinyViT(depth=2, key=key(4))
    x = jr.normal(key(5), (2, 3, 8, 8))
    assert out_shape(jax.vmap(lambda x: model(x, inference=True)), x) == (2, 10)

    def loss(model, x, call):
        return jnp.sum(jax.vmap(lambda x: call(model, x, inference=True))(x) ** 2)

    @eqx.filter_jit
    def run(model, x):
        grad = eqx.filter_value_and_grad(loss)
        return grad(model, x, type(model).__call__), grad(model, x, rm.tiny_vit_scanned)

    (v_loop, g_loop), (v_scan, g_scan) = run(model, x)
    assert_trains(g_loop, model)
    np.testing.assert_allclose(v_scan, v_loop, rtol=1e-5)
    assert_trees_close(g_scan, g_loop)


def test_tuple_out_trains_and_a_scan_equals_its_loop():
    model = rm.TupleOut(key=key(7))
    x = jr.normal(key(8), (4, 4))
    assert out_shape(jax.vmap(model), x) == ((4, 3), (4,))

    def loss(model, x, call):
        logits, aux = jax.vmap(lambda x: call(model, x))(x)
        return jnp.sum(logits**2) + jnp.sum(aux), (logits, aux)

    @eqx.filter_jit
    def run(model, x):
        grad = eqx.filter_grad(loss, has_aux=True)
        return grad(model, x, type(model).__call__), grad(model, x, rm.tuple_out_scanned)

    (g_loop, y_loop), (g_scan, y_scan) = run(model, x)
    assert_trains(g_loop, model)
    assert_trees_close(y_scan, y_loop)
    assert_trees_close(g_scan, g_loop)


# ---- the stateful ResNet: it trains, and a stateful scan equals its loop ----


@pytest.mark.parametrize(
    "options",
    [{"depth": 2, "sequential": True}, {"depth": 3, "downsample": True, "bn_mode": "ema"}],
    ids=["sequential-of-identical-blocks", "list-stage-then-identical"],
)
def test_tiny_resnet_trains_and_a_stateful_scan_equals_its_loop(options):
    model, state = rm.make_tiny_resnet(key=key(9), **options)
    x = jr.normal(key(10), (4, 3, 8, 8))
    if "downsample" in options:
        with pytest.raises(ValueError, match="block 1 differs"):
            rm.stack_blocks(model.blocks)

    def loss(model, state, x, call):
        y, state = jax.vmap(
            lambda x, s: call(model, x, s), axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )(x, state)
        return jnp.sum(y**2), (y, state)

    @eqx.filter_jit
    def run(model, state, x):
        grad = eqx.filter_grad(loss, has_aux=True)
        return grad(model, state, x, type(model).__call__), grad(
            model, state, x, rm.tiny_resnet_scanned
        )

    (g_loop, (y_loop, s_loop)), (g_scan, (y_scan, s_scan)) = run(model, state, x)
    assert y_loop.shape == (4, 10)
    assert_trains(g_loop, model)
    assert any(not np.array_equal(a, b) for a, b in zip(arrays(state), arrays(s_loop)))
    assert_trees_close(y_scan, y_loop)
    assert_trees_close(s_scan, s_loop)
    assert_trees_close(g_scan, g_loop)
    # Each block's statistics went back under its own index.
    blocks = model.blocks.layers if options.get("sequential") else model.blocks
    bns = [blk.bn1 for blk in blocks]
    indices = [bn.batch_state_index if bn.mode == "batch" else bn.ema_state_index for bn in bns]
    means = {np.asarray(s_scan.get(i)[0]).tobytes() for i in indices}
    assert len(means) == len(bns)


# ---- the pre-stacked models: a loop over their layers equals their scan ----


def test_prestacked_trains_and_a_loop_over_its_layers_equals_its_scan():
    tower = eqx.filter_jit(rm.PreStacked)(size=3, count=4, width=8, key=key(11))
    assert tower.mlps.layers[0].weight.shape == (4, 8, 3)
    make_trunk = eqx.filter_jit(rm.PreStackedTransformer)
    trunk = make_trunk(embed_size=16, num_layers=2, num_heads=2, key=key(12))
    assert trunk.layers.linear1.weight.shape == (2, 64, 16)
    v = jr.normal(key(13), (4, 3))
    seq = jr.normal(key(14), (SEQ, 16))
    is_pad = jnp.logical_not(MASK)

    def tower_loss(model, loop):
        return jnp.sum(
            jax.vmap(lambda x: rm.prestacked_loop(model, x) if loop else model(x))(v) ** 2
        )

    def trunk_loss(model, loop):
        y = rm.prestacked_transformer_loop(model, seq, is_pad) if loop else model(seq, is_pad)
        return jnp.sum(y**2)

    @eqx.filter_jit
    def run(tower, trunk):
        out = []
        for loss, model in ((tower_loss, tower), (trunk_loss, trunk)):
            grad = eqx.filter_value_and_grad(loss)
            out.append((grad(model, False), grad(model, True)))
        return out

    for (v_scan, g_scan), (v_loop, g_loop) in run(tower, trunk):
        np.testing.assert_allclose(v_scan, v_loop, rtol=1e-5)
        assert_trees_close(g_scan, g_loop, atol=1e-4)
    assert_trains(run(tower, trunk)[1][0][1], trunk)


# ---- the other models: they run and train ----------------------------------


@pytest.mark.parametrize("make", [rm.RawHead, rm.MixedLinears], ids=lambda m: m.__name__)
def test_model_runs_and_trains(make):
    model = make(key=key(15))
    x = jr.normal(key(16), (4, 4))
    y, grads = eqx.filter_jit(
        lambda m, x: (jax.vmap(m)(x), eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(x) ** 2))(m))
    )(model, x)
    assert y.shape == (4, 3)
    assert_trains(grads, model)


def test_mixed_norms_run_update_both_states_and_train():
    model, state = rm.make_mixed_norms(key=key(17))

    @eqx.filter_jit
    @eqx.filter_grad(has_aux=True)
    def grad(model, state, x):
        y, state = rm.call_with_state(model, x, state)
        return jnp.sum(y**2), (y, state)

    grads, (y, new_state) = grad(model, state, jr.normal(key(18), (4, 3, 8, 8)))
    assert y.shape == (4, 10)
    assert_trains(grads, model)
    # Both norms, the two `BatchNorm` classes, keep their statistics in one `State`.
    for index in (model.bn1.batch_state_index, model.bn2.index):
        assert not np.array_equal(new_state.get(index)[0], state.get(index)[0])


def test_third_party_classes_share_equinox_names():
    for ours, theirs in [(rm.BatchNorm, eqx.nn.BatchNorm), (rm.Linear, eqx.nn.Linear)]:
        assert ours.__name__ == theirs.__name__ and ours is not theirs
        assert not issubclass(ours, theirs) and not ours.__module__.startswith("equinox")
    assert not issubclass(rm.BatchNorm, eqx.nn.StatefulLayer)
    model = eqx.filter_eval_shape(rm.MixedNorms, key=key(0))
    norms = [type(model.bn1), type(model.bn2)]
    assert [t.__name__ for t in norms] == ["BatchNorm", "BatchNorm"] and norms[0] is not norms[1]
    mixed = eqx.filter_eval_shape(rm.MixedLinears, key=key(0))
    assert [type(m).__name__ for m in (mixed.inp, mixed.mid, mixed.out)] == ["Linear"] * 3


# ---- ensembles, as on the Tricks page ----------------------------------------


def test_ensemble_of_a_vit_that_draws_its_patches_from_a_fixed_key():
    make = lambda k: rm.TinyViT(depth=1, shared_patch_init=True, key=k)  # noqa: E731
    models = eqx.filter_jit(rm.make_ensemble)(make, jr.split(key(22), 2))
    # Members differ, except where the constructor ignores its key.
    patch = models.patch_embed.weight
    assert patch.shape[0] == 2 and np.array_equal(patch[0], patch[1])
    assert not np.array_equal(models.cls_token[0], models.cls_token[1])
    w = models.blocks[0].fc1.weight
    assert w.shape == (2, 32, 16) and not np.array_equal(w[0], w[1])
    xs = jr.normal(key(21), (2, 3, 8, 8))

    @eqx.filter_jit
    def run(models, xs):
        shared = rm.evaluate_ensemble(models, xs[0], inference=True)
        per = rm.evaluate_per_member(models, xs, inference=True)
        alone = rm.ensemble_member(models, 1)(xs[0], inference=True)
        return shared, per, alone

    shared, per, alone = run(models, xs)
    assert shared.shape == (2, 10) and not np.allclose(shared[0], shared[1])
    np.testing.assert_allclose(shared[1], alone, atol=1e-5)
    np.testing.assert_allclose(per[0], shared[0], atol=1e-5)
    assert not np.allclose(per[1], shared[1])


def test_ensemble_of_a_prestacked_model():
    models = rm.make_ensemble(lambda k: rm.PreStacked(count=5, key=k), jr.split(key(23), 2))
    assert models.mlps.layers[0].weight.shape == (2, 5, 3, 3)
    x = jr.normal(key(24), (3,))
    out, alone = eqx.filter_jit(
        lambda ms, x: (rm.evaluate_ensemble(ms, x), rm.ensemble_member(ms, 1)(x))
    )(models, x)
    np.testing.assert_allclose(out[1], alone, atol=1e-6)


def test_ensemble_of_a_stateful_resnet():
    make = lambda k: rm.make_tiny_resnet(depth=1, key=k)  # noqa: E731
    models, states = eqx.filter_jit(rm.make_ensemble)(make, jr.split(key(25), 2))
    assert models.stem.weight.shape[0] == 2
    assert not np.array_equal(models.stem.weight[0], models.stem.weight[1])
    x = jr.normal(key(26), (4, 3, 8, 8))

    @eqx.filter_jit
    def run(models, states, x):
        alone = rm.call_with_state(rm.ensemble_member(models, 1), x, rm.ensemble_member(states, 1))
        return rm.evaluate_stateful_ensemble(models, states, x), alone

    (out, new_states), (y, s) = run(models, states, x)
    assert out.shape == (2, 4, 10) and not np.allclose(out[0], out[1])
    np.testing.assert_allclose(out[1], y, atol=1e-5)
    assert_trees_close(rm.ensemble_member(new_states, 1), s)


# ---- re-initialisation, as on the Tricks page, and the fans it must use ------


def _assert_trunc(w, fan_in):
    """`w` looks drawn by `trunc_init` with this fan_in: bounded by
    `2 / sqrt(fan_in)`, with the truncated normal's variance over fan_in
    (checked where there are enough numbers to tell)."""
    scaled = np.asarray(w) * np.sqrt(fan_in)
    assert np.abs(scaled).max() <= 2 + 1e-5
    if scaled.size >= 512:
        assert np.var(scaled) == pytest.approx(rm.trunc_normal_variance(), rel=0.15)


def test_trunc_normal_variance():
    assert rm.trunc_normal_variance() == pytest.approx(0.7737413, abs=1e-6)
    assert rm.trunc_normal_variance(-50, 50) == pytest.approx(1.0)


def test_init_linear_weight_on_library_shaped_models(transformer):
    new = rm.init_linear_weight(transformer, rm.trunc_init, key(27))
    _assert_trunc(new.blocks[0].linear1.weight, 16)
    _assert_trunc(new.blocks[1].linear2.weight, 32)
    _assert_trunc(new.blocks[1].attn.query_proj.weight, 16)
    assert not np.array_equal(new.blocks[0].linear1.weight, new.blocks[1].linear1.weight)
    assert np.array_equal(new.blocks[0].linear1.bias, transformer.blocks[0].linear1.bias)

    # Only `eqx.nn.Linear` is a Linear to the Tricks page's code: the
    # third-party `Linear` and a raw array head are left alone.
    mixed = rm.MixedLinears(key=key(28))
    new = rm.init_linear_weight(mixed, rm.trunc_init, key(29))
    assert np.array_equal(new.mid.weight, mixed.mid.weight)
    assert not np.array_equal(new.inp.weight, mixed.inp.weight)
    head = rm.RawHead(key=key(30))
    assert np.array_equal(rm.init_linear_weight(head, rm.trunc_init, key(31)).w, head.w)


def test_init_on_prestacked_weights_uses_one_layers_fan_in():
    # The arrays of the model need not exist to be replaced: its skeleton will do.
    trunk = eqx.filter_eval_shape(rm.PreStackedTransformer, key=key(32))
    with pytest.raises(ValueError):  # the Tricks page's trunc_init: `out, in_ = shape`
        rm.init_linear_weight(trunk, rm.trunc_init, key(33))
    new = rm.init_linear_weight(trunk, rm.trunc_init_stacked, key(33))
    w = new.layers.linear1.weight
    assert w.shape == (12, 256, 64)
    fan_in, _ = rm.fans(trunk)["layers.linear1.weight"]
    assert fan_in == 64
    for i in range(12):
        _assert_trunc(w[i], fan_in)
    assert not np.array_equal(w[0], w[1])
    _assert_trunc(new.layers.linear2.weight[3], 256)
    # With the fan of all the layers, or of out * in, it would be 16 times smaller.
    assert np.std(np.asarray(w)) > 4 / np.sqrt(256 * 64)


def test_fans_are_one_layers_in_their_own_layout():
    k = key(34)
    models = [
        eqx.filter_eval_shape(lambda: rm.PreStacked(size=3, width=5, depth=2, key=k)),
        eqx.filter_eval_shape(lambda: rm.PreStackedTransformer(key=k)),
        eqx.filter_eval_shape(lambda: rm.RawHead(key=k)),
        eqx.filter_eval_shape(lambda: rm.MixedLinears(key=k)),
    ]
    for model in models:
        table = rm.fans(model)
        assert table
        for path, (fan_in, fan_out) in table.items():
            leaf = resolve(model, path)
            owner = resolve(model, path.rsplit(".", 1)[0]) if "." in path else model
            if isinstance(owner, eqx.nn.Linear):
                # One layer's sizes, whatever leading axes the arrays carry.
                assert (fan_in, fan_out) == (owner.in_features, owner.out_features), path
                if path.endswith("weight"):
                    assert leaf.shape[-2:] == (fan_out, fan_in), path
            elif path.endswith("bias"):
                assert leaf.shape == (fan_out,), path
            else:  # stored `(in, out)`
                assert leaf.shape == (fan_in, fan_out), path
    prestacked, trunk, head, mixed = (rm.fans(m) for m in models)
    assert prestacked["mlps.layers[2].weight"] == (5, 3)
    assert trunk["layers.linear1.weight"] == (64, 256)
    assert trunk["layers.attn.query_proj.bias"] == (64, 64)
    assert head["w"] == (16, 3)
    assert mixed["mid.weight"] == (16, 32)
    with pytest.raises(TypeError):
        rm.fans(eqx.filter_eval_shape(rm.TinyViT, key=k))
