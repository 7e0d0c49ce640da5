"""eqxform on models shaped like library models (tests/realmodels.py): each
feature against the hand-written Equinox code it replaces."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
import realmodels as R

import eqxform
from eqxform._runtime._train import make_loss


def arrays(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]


def close(a, b, atol=1e-5):
    la, lb = arrays(a), arrays(b)
    return len(la) == len(lb) and all(np.allclose(x, y, atol=atol) for x, y in zip(la, lb))


@pytest.fixture(scope="module", autouse=True)
def constructors():
    eqxform.register_constructor("TinyResNet", R.make_tiny_resnet)
    eqxform.register_constructor("LoopingTransformer", R.LoopingTransformer)
    eqxform.register_constructor("TinyViT", R.TinyViT)
    eqxform.register_constructor("TupleOut", R.TupleOut)


# ---- scan-over-layers under a parent that loops ------------------------------------


def test_a_looping_parent_gets_one_scan_with_its_arguments():
    model = R.LoopingTransformer(depth=4, key=jr.key(0))
    stacked = eqxform.compile("stack blocks scan").apply(model, key=jr.key(1))
    assert isinstance(stacked.blocks, eqxform.Stacked) and stacked.blocks.count == 4
    x = jr.normal(jr.key(2), (6, 5))
    mask = jnp.array([True] * 5 + [False])
    # The parent's loop runs once, over the stack: one scan, not four blocks.
    jaxpr = str(eqx.filter_make_jaxpr(lambda m, x: m(x, mask=mask, inference=True))(stacked, x)[0])
    assert jaxpr.count("scan[") == 1
    ours = stacked(x, mask=mask, inference=True)
    assert np.allclose(ours, model(x, mask=mask, inference=True), atol=1e-5)
    assert np.allclose(
        ours, R.looping_transformer_scanned(model, x, mask=mask, inference=True), atol=1e-5
    )

    def loss(m):
        return jnp.sum(m(x, mask=mask, inference=True) ** 2)

    g_ours = eqx.filter_grad(loss)(stacked)
    g_ref = eqx.filter_grad(loss)(model)
    for i in range(4):
        assert close(g_ours.blocks[i], g_ref.blocks[i], atol=1e-4)


def test_a_stack_passes_extra_arguments_and_a_key_per_layer():
    model = R.LoopingTransformer(depth=3, dropout=0.5, key=jr.key(0))
    stacked = eqxform.compile("stack blocks scan").apply(model, key=jr.key(1))
    x = jr.normal(jr.key(2), (6, 16))
    pos = R.sinusoidal_positions(6, 16)
    key = jr.key(3)
    # Dropout is on: each layer must get its own key, as the hand-written scan gives.
    ours = stacked.blocks(x, pos, mask=None, key=key, inference=False)
    ref = R.scan_blocks(model.blocks, x, pos, mask=None, key=key, inference=False)
    assert np.allclose(ours, ref, atol=1e-5)
    same_key = R.scan_blocks(model.blocks, x, pos, key=None, inference=True)
    assert not np.allclose(ours, same_key, atol=1e-3)


def test_a_vit_stack_is_verified_on_its_input():
    program = eqxform.compile(
        "model TinyViT(depth=3)\ninput f32[3,8,8]\nstack blocks scan\nwhere head -> init zeros"
    )
    assert program.plan().output == "f32[10]"
    vit = program.apply()
    base = program.build_model()
    x = jr.normal(jr.key(4), (3, 8, 8))
    assert np.allclose(
        vit(x, inference=True),
        eqx.tree_at(lambda m: m.head, base, vit.head)(x, inference=True),
        atol=1e-5,
    )
    assert np.allclose(
        vit(x, inference=True),
        R.tiny_vit_scanned(eqx.tree_at(lambda m: m.head, base, vit.head), x, inference=True),
        atol=1e-5,
    )


class Collecting(eqx.Module):
    """A parent whose loop does more than `x = block(x)`: it sums every
    block's output."""

    blocks: list

    def __init__(self, key):
        self.blocks = [eqx.nn.Linear(4, 4, key=k) for k in jr.split(key, 3)]

    def __call__(self, x):
        out = 0.0
        for blk in self.blocks:
            x = blk(x)
            out = out + x
        return out


def test_a_stack_that_changes_outputs_is_refused():
    eqxform.register_constructor("Collecting", Collecting)
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("model Collecting()\ninput f32[4]\nstack blocks scan").apply()
    d = info.value.diagnostics[0]
    assert d.code == "E144" and "changes the model's outputs" in d.message
    assert "layerwise" in d.help
    # Iterating layer by layer keeps the loop's meaning.
    model = eqxform.compile("model Collecting()\ninput f32[4]\nstack blocks scan layerwise").apply()
    base = eqxform.compile("model Collecting()").apply()
    x = jnp.ones(4)
    assert np.allclose(model(x), base(x), atol=1e-6)


@pytest.mark.parametrize("sequential", [False, True])
def test_stateful_blocks_stack_with_their_state(sequential):
    program = eqxform.compile(
        f"model TinyResNet(width=4, depth=4, sequential={'true' if sequential else 'false'})\n"
        "input f32[3,8,8]\nstack blocks scan"
    )
    model, state = program.apply()
    ref_model, ref_state = program.build_model()
    x = jr.normal(jr.key(5), (6, 3, 8, 8))
    out, new_state = R.call_with_state(model, x, state)
    want, want_state = jax.vmap(
        R.tiny_resnet_scanned, axis_name="batch", in_axes=(None, 0, None), out_axes=(0, None)
    )(ref_model, x, ref_state)
    assert np.allclose(out, want, atol=1e-5)
    # The running statistics of each block went where they belong.
    blocks = ref_model.blocks.layers if sequential else ref_model.blocks
    for i, block in enumerate(blocks):
        for index, stacked_index in zip(
            R.state_indices(block), R.state_indices(model.blocks.layers)
        ):
            theirs = want_state.get(index)
            ours = jax.tree_util.tree_map(lambda a: a[i], new_state.get(stacked_index))
            assert close(ours, theirs)


def test_a_stage_of_stateful_blocks_after_a_downsampling_block(tmp_path):
    program = eqxform.compile(
        "model TinyResNet(width=4, depth=4, downsample=true)\ninput f32[3,8,8]\n"
        "stack blocks[1:] scan"
    )
    model, state = program.apply()
    assert isinstance(model.blocks[1], eqxform.Stacked) and model.blocks[1].count == 3
    ref_model, ref_state = program.build_model()
    x = jr.normal(jr.key(6), (4, 3, 8, 8))
    assert np.allclose(
        R.call_with_state(model, x, state)[0],
        R.call_with_state(ref_model, x, ref_state)[0],
        atol=1e-5,
    )
    # The pair is one model file: arrays, state and recipe; it loads with no code of ours
    # but the registered constructor.
    eqxform.save(tmp_path / "r.eqx", (model, state))
    back_model, back_state = eqxform.load(tmp_path / "r.eqx")
    assert close((back_model, back_state), (model, state), atol=0)
    unstacked = eqxform.compile("unstack blocks[1]").apply((model, state))
    assert close(unstacked[0], ref_model, atol=0)
    assert np.allclose(
        R.call_with_state(*unstacked[:1], x, unstacked[1])[0],
        R.call_with_state(ref_model, x, ref_state)[0],
        atol=1e-5,
    )


# ---- initialisation through leading axes -----------------------------------------


def test_fans_of_layers_built_by_filter_vmap():
    model = R.PreStackedTransformer(key=jr.key(0))
    spec = "where Linear.weight -> init normal(stddev=1/sqrt(fan_in))"
    out = eqxform.compile(spec).apply(model, key=jr.key(1))
    w = np.asarray(out.layers.linear1.weight)
    assert w.shape == (12, 256, 64)
    truth = R.fans(model)["layers.linear1.weight"][0]
    assert truth == 64
    for i in range(12):
        assert np.std(w[i]) == pytest.approx(1 / np.sqrt(truth), rel=0.05)
    assert not np.array_equal(w[0], w[1])  # one draw per layer
    plan = eqxform.compile(spec).plan(model)
    assert "f32[layer:12, 256,64]" in str(plan)


def test_the_tricks_page_ten_mlps_reinitialise_like_by_hand():
    model = R.PreStacked(size=64, count=10, key=jr.key(0))
    ours = eqxform.compile(
        "where Linear.weight -> init trunc_normal(stddev=1/sqrt(fan_in), lower=-2, upper=2)"
    ).apply(model, key=jr.key(1))
    theirs = R.init_linear_weight(model, R.trunc_init_stacked, jr.key(2))
    variance = R.trunc_normal_variance()
    for a, b in zip(ours.mlps.layers, theirs.mlps.layers):
        assert a.weight.shape == b.weight.shape == (10, 64, 64)
        for i in range(10):
            assert np.var(a.weight[i]) == pytest.approx(variance / 64, rel=0.1)
            assert np.var(a.weight[i]) == pytest.approx(float(np.var(b.weight[i])), rel=0.15)
    x = jr.normal(jr.key(3), (64,))
    assert ours(x).shape == R.prestacked_loop(ours, x).shape
    assert np.allclose(ours(x), R.prestacked_loop(ours, x), atol=1e-5)


# ---- ensembles -------------------------------------------------------------------


def test_an_ensemble_of_a_python_model_draws_its_members_and_reports_copies():
    model = R.RawHead(key=jr.key(0))
    with pytest.warns(eqxform.EqxformWarning) as caught:
        ens = eqxform.compile("ensemble 4").apply(model, key=jr.key(1))
    (warning,) = [w.message for w in caught]
    assert warning.diagnostic.code == "W201" and "`w`" in warning.diagnostic.message
    assert "where w -> init" in warning.diagnostic.help
    w = np.asarray(ens.layers[0].weight)  # reads through to the member-axis model
    assert w.shape[0] == 4 and not np.array_equal(w[0], w[1])
    assert np.array_equal(ens.w[0], ens.w[1])  # the raw array stays a copy
    # A rule below the line draws it per member: no warning then.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drawn = eqxform.compile("ensemble 4\nwhere w -> init normal(stddev=0.1)").apply(
            model, key=jr.key(1)
        )
    assert not np.array_equal(drawn.w[0], drawn.w[1])
    # The plan says so too, without running anything.
    plan = eqxform.compile("ensemble 4").plan(model)
    assert [d.code for d in plan.warnings] == ["W201"]


def test_an_ensemble_works_with_the_tricks_page_evaluation():
    program = eqxform.compile(
        "model LoopingTransformer(depth=2)\nensemble 3\nwhere Linear.bias -> init normal(stddev=0.1)"
    )
    ens = program.apply()
    x = jr.normal(jr.key(7), (6, 5))
    ours = ens(x, inference=True)
    assert ours.shape == (3, 6, 7)
    theirs = R.evaluate_ensemble(ens, x, inference=True)  # filter_vmap(in_axes=(if_array(0), None))
    assert np.allclose(ours, theirs, atol=1e-5)
    for i in range(3):
        assert np.allclose(ours[i], ens.member(i)(x, inference=True), atol=1e-5)
    # A key is split per member: with dropout on, members get different masks.
    drop = ens(x, key=jr.key(8))
    assert drop.shape == (3, 6, 7)


def test_a_stateful_ensemble_threads_each_members_state():
    program = eqxform.compile("model TinyResNet(width=4, depth=2)\nensemble 3")
    ens, state = program.apply()
    x = jr.normal(jr.key(9), (4, 3, 8, 8))
    out, new_state = R.call_with_state(ens, x, state)
    assert out.shape == (4, 3, 10)
    for i in range(3):
        member_state = jax.tree_util.tree_map(lambda a: a[i], state)
        want, want_state = R.call_with_state(ens.member(i), x, member_state)
        assert np.allclose(out[:, i], want, atol=1e-5)
        assert close(jax.tree_util.tree_map(lambda a: a[i], new_state), want_state)
    assert not np.allclose(out[:, 0], out[:, 1])


# ---- selectors on any model --------------------------------------------------------


def test_classes_of_the_model_are_types_without_registration():
    model = R.LoopingTransformer(depth=2, key=jr.key(0))
    out = eqxform.compile("where Block.linear1.weight -> init zeros").apply(model, key=jr.key(1))
    assert all(not bool(b.linear1.weight.any()) for b in out.blocks)


def test_a_short_name_of_two_classes_is_ambiguous():
    model, state = R.make_mixed_norms(key=jr.key(0))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where BatchNorm -> freeze").apply((model, state), key=jr.key(1))
    d = info.value.diagnostics[0]
    assert d.code == "E206"
    assert "`equinox:BatchNorm`" in d.message and "`realmodels:BatchNorm`" in d.message
    ours, _ = eqxform.compile("where realmodels:BatchNorm -> freeze").apply(
        (model, state), key=jr.key(1)
    )
    theirs, _ = eqxform.compile("where equinox:BatchNorm.weight -> init zeros").apply(
        (model, state), key=jr.key(1)
    )
    frozen = [
        n
        for n in jax.tree_util.tree_leaves(ours, is_leaf=lambda x: isinstance(x, eqxform.Frozen))
        if isinstance(n, eqxform.Frozen)
    ]
    assert frozen and all(f.value.ndim == 1 for f in frozen)
    assert isinstance(ours, R.MixedNorms)
    linears = R.MixedLinears(key=jr.key(2))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where Linear.weight -> init zeros").apply(linears, key=jr.key(3))
    assert info.value.diagnostics[0].code == "E206"


def test_register_type_takes_effect_whenever_it_is_called():
    class Late(eqx.Module):
        w: jax.Array

    model = [Late(jnp.ones(2)), eqx.nn.Linear(2, 2, key=jr.key(0))]
    eqxform.compile("where Late.w -> init zeros").apply(model, key=jr.key(1))
    eqxform.register_type(Late, name="Tardy")
    out = eqxform.compile("where Tardy.w -> init zeros").apply(model, key=jr.key(1))
    assert not bool(out[0].w.any())


def test_a_suggestion_is_never_the_users_own_text():
    model, state = R.make_mixed_norms(key=jr.key(0))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where equinox:BatchNorm.wieght -> freeze").apply(
            (model, state), key=jr.key(1)
        )
    d = info.value.diagnostics[0]
    assert d.code == "E201"
    assert "`equinox:BatchNorm.wieght`" not in (d.help or "")


def test_except_and_optional_rules_let_one_spec_serve_several_models():
    spec = "where ** except head -> freeze\nwhere cls_token expect any -> init zeros"
    vit = eqxform.compile(spec).apply(R.TinyViT(key=jr.key(0)), key=jr.key(1))
    assert isinstance(vit.blocks[0].attn.qkv.weight, eqxform.Frozen)
    assert isinstance(vit.cls_token, eqxform.Frozen)
    assert not isinstance(vit.head.weight, eqxform.Frozen)
    looping = eqxform.compile(spec).apply(R.LoopingTransformer(key=jr.key(0)), key=jr.key(1))
    assert not isinstance(looping.head.weight, eqxform.Frozen)
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where cls_token -> init zeros").apply(R.RawHead(key=jr.key(0)))
    assert info.value.diagnostics[0].code == "E201"


# ---- training ----------------------------------------------------------------------


def test_make_step_carries_state_like_a_hand_written_step():
    model, state = R.make_tiny_resnet(width=4, depth=2, key=jr.key(0))
    x = jr.normal(jr.key(1), (8, 3, 8, 8))
    y = jr.randint(jr.key(2), (8,), 0, 10)
    opt = optax.adam(1e-2)

    def loss_fn(model, state, x, y):
        logits, state = R.call_with_state(model, x, state)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    @eqx.filter_jit
    def by_hand(model, state, opt_state, x, y):
        (loss, state), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, state, x, y)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state, opt_state, loss

    step = eqxform.make_step(loss_fn, opt, model, state=state)
    ref, ref_state, opt_state = model, state, opt.init(eqx.filter(model, eqx.is_inexact_array))
    for _ in range(3):
        loss = step(x, y)
        ref, ref_state, opt_state, ref_loss = by_hand(ref, ref_state, opt_state, x, y)
    assert np.allclose(loss, ref_loss, rtol=1e-5)
    assert close(step.model, ref, atol=1e-5)
    assert close(step.state, ref_state, atol=1e-5)


def test_a_slice_of_a_stack_freezes_while_the_rest_trains():
    program = eqxform.compile(
        "model LoopingTransformer(depth=4, dropout=0.0)\n"
        "optimizer adamw(learning_rate=1e-2, weight_decay=0.5)\n"
        "stack blocks scan\n"
        "where blocks[0:2] -> freeze\n"
        "where blocks[3] -> lr 0"
    )
    model = program.apply()
    x = jr.normal(jr.key(1), (8, 6, 5))
    y = jr.normal(jr.key(2), (8, 6, 7))
    step = eqxform.make_step(
        lambda m, x, y: jnp.mean((jax.vmap(m)(x) - y) ** 2),
        eqxform.optimizer(program, model),
        model,
    )
    for _ in range(3):
        step(x, y)
    before = eqxform.bake(model).blocks.layers.linear1.weight
    after = eqxform.bake(step.model).blocks.layers.linear1.weight
    assert [bool(np.array_equal(before[i], after[i])) for i in range(4)] == [
        True,
        True,
        False,
        True,
    ]
    g = eqx.filter_grad(lambda m: jnp.sum(eqxform.resolve(m)(x[0]) ** 2))(model)
    grads = g.blocks.layers.linear1.weight.value
    assert not grads[0].any() and not grads[1].any() and grads[2].any()


def test_ensemble_members_train_independently():
    program = eqxform.compile(
        "model MLP(in_size=2, out_size=2, width_size=8, depth=1)\noptimizer adam(learning_rate=1e-2)\nensemble 2"
    )
    ens = program.apply()
    x = jr.normal(jr.key(1), (16, 2))
    y = jr.normal(jr.key(2), (16, 2))
    step = eqxform.make_step(make_loss("mse", members=2), eqxform.optimizer(program, ens), ens)
    alone = eqxform.make_step(make_loss("mse"), optax.adam(1e-2), ens.member(1))
    for _ in range(5):
        step(x, y)
        alone(x, y)
    assert close(step.model.member(1), alone.model, atol=1e-6)


def test_the_training_command_on_stacks_and_state(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from eqxform._cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rn.eqx").write_text(
        "model TinyResNet(width=4, depth=3)\ninput f32[3,8,8]\n"
        "optimizer adam(learning_rate=1e-2)\nstack blocks scan\nwhere blocks[0] -> freeze\n"
    )
    result = CliRunner().invoke(
        main, ["train", "rn.eqx", "-o", "r.eqx", "--steps", "10", "--batch-size", "8"]
    )
    assert result.exit_code == 0, result.output
    model, state = eqxform.load("r.eqx")
    assert isinstance(model.blocks, eqxform.Stacked)
    assert eqxform.recipe_of((model, state))["train"]["steps"] == 10
    (tmp_path / "t.eqx").write_text(
        "model TupleOut()\noptimizer adam(learning_rate=1e-2)\ninput f32[4]\n"
    )
    result = CliRunner().invoke(main, ["train", "t.eqx", "-o", "t2.eqx", "--steps", "5"])
    assert result.exit_code == 2 and "E423" in result.output and "Traceback" not in result.output


class Result(eqx.Module):
    """A result object, as ESM2 returns (`hidden`, `logits`)."""

    hidden: jax.Array
    logits: jax.Array


class ResultOut(eqx.Module):
    body: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, *, key):
        k1, k2 = jr.split(key)
        self.body = eqx.nn.Linear(4, 8, key=k1)
        self.head = eqx.nn.Linear(8, 3, key=k2)

    def __call__(self, x):
        h = jnp.tanh(self.body(x))
        return Result(h, self.head(h))


def _hand_trained(model, x, y, steps, pred):
    """Full-batch Adam written by hand: the reference for `train`."""
    opt = optax.adam(1e-2)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        def loss(p):
            out = jax.vmap(eqx.combine(p, static))(x)
            return jnp.mean((pred(out) - y) ** 2)

        grads = jax.grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return eqx.combine(params, static)


def test_train_names_the_output_of_a_tuple_or_a_result_object(tmp_path, monkeypatch):
    from eqxform._errors import UsageError
    from eqxform._runtime import _train

    x = np.asarray(jr.normal(jr.key(1), (16, 4)))
    y = np.asarray(jr.normal(jr.key(2), (16, 3)))
    program = eqxform.compile("optimizer adam(learning_rate=1e-2)")
    # A tuple `(logits, aux)`: `--model-output 0`.
    model = R.TupleOut(key=jr.key(0))
    _train.check_fits(model, x, y, "mse", "d.npz", "0")
    ours = _train.train(program, model, x, y, steps=5, batch_size=16, output="0").model
    theirs = _hand_trained(model, x, y, 5, lambda out: out[0])
    assert close(ours, theirs, atol=1e-5)
    # A result object: `--model-output logits`.
    model = ResultOut(key=jr.key(0))
    with pytest.raises(UsageError) as info:
        _train.check_fits(model, x, y, "mse", "d.npz")
    [d] = info.value.diagnostics
    assert d.code == "E423"
    assert d.message.startswith("the model returns a `Result` (hidden: f32[8], logits: f32[3]); ")
    assert "`--model-output logits` (one of `hidden`, `logits`)" in d.help
    with pytest.raises(UsageError) as info:
        _train.check_fits(model, x, y, "mse", "d.npz", "logit")
    assert info.value.diagnostics[0].code == "E424"
    assert "name one of `hidden`, `logits`" in info.value.diagnostics[0].help
    ours = _train.train(program, model, x, y, steps=5, batch_size=16, output="logits").model
    theirs = _hand_trained(model, x, y, 5, lambda out: out.logits)
    assert close(ours, theirs, atol=1e-5)
    # A loss of the user's own, from an allowed module.
    (tmp_path / "mylosses.py").write_text(
        "import jax.numpy as jnp\n"
        "def on_logits(pred, y):\n"
        "    return jnp.mean((pred.logits - y) ** 2)\n"
        "def per_row(pred, y):\n"
        "    return jnp.mean((pred.logits - y) ** 2, axis=1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError) as info:
        _train.resolve_loss("mylosses:on_logits")
    assert info.value.diagnostics[0].code == "E425"
    assert "--allow mylosses" in info.value.diagnostics[0].help
    loss = _train.resolve_loss("mylosses:on_logits", ("mylosses",))
    _train.check_fits(model, x, y, loss, "d.npz")
    ours = _train.train(program, model, x, y, steps=5, batch_size=16, loss=loss).model
    assert close(ours, theirs, atol=1e-5)
    with pytest.raises(UsageError) as info:
        _train.check_fits(model, x, y, _train.resolve_loss("mylosses:per_row", ("mylosses",)), "d")
    assert info.value.diagnostics[0].code == "E425"
    assert "gives f32[2], not one floating-point number" in info.value.diagnostics[0].message


# ---- the model's input -------------------------------------------------------------


def test_a_rule_that_breaks_the_forward_pass_is_found():
    program = eqxform.compile(
        "model LoopingTransformer(depth=2)\ninput f32[6,5]\n"
        "where Linear.bias -> init zeros\n"
        "where head -> replace Linear(in_features=8, out_features=7)\n"
        "where blocks[0].linear2 -> init zeros"
    )
    # Line 3's `init` of `head.bias` is discarded by line 4: a warning (W203).
    assert [w.code for w in program.plan().warnings] == ["W203"]
    (d,) = [d for d in program.check() if d.severity == "error"]
    assert d.code == "E207" and d.span.line == 4
    wrong = eqxform.compile("model LoopingTransformer(depth=2)\ninput f32[6,4]")
    (d,) = wrong.check()
    assert d.code == "E212" and d.span.line == 2


def test_recipes_of_stateful_constructors_survive(tmp_path):
    program = eqxform.compile("model TinyResNet(width=4, depth=2)\nwhere fc -> init zeros")
    pair = program.apply(seed=4)
    eqxform.save(tmp_path / "m.eqx", pair)
    model, state = eqxform.load(tmp_path / "m.eqx")
    assert eqxform.recipe_of((model, state))["base"]["seed"] == 4
    names = [
        n for n in eqxform._files.read_header(tmp_path / "m.eqx").tensors if n.startswith("state.")
    ]
    assert "state.bn.batch_state_index.0" in names


def test_copies_of_one_module_are_checked_for_shapes_not_values():
    # `stack mlps scan 6` of one MLP makes six new layers: the model is meant to
    # compute something else, so the forward check holds the shapes only.
    spec = "model Tower(size=3, width_size=3, depth=1)\nstack mlps scan 6\ninput f32[3]\n"
    model = eqxform.compile(spec).apply()
    assert len(model.mlps) == 6
    assert model(jnp.ones(3)).shape == (3,)
