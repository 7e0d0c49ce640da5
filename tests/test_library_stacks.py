"""Stacks, ensembles and `merge` on the published Equinox libraries (each test
skips when its library is not installed) and on the library-shaped models of
tests/realmodels.py, against the hand-written Equinox code: pre-stacked
layers adopted as they are, layers that change the carry, stacks with
BatchNorm state, ensembles drawn as the library draws, and models called
without `eqxform.resolve`."""

import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import realmodels as R

import eqxform


def arrays(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]


def count_params(tree) -> int:
    return sum(x.size for x in arrays(tree))


def code_of(info) -> str:
    return info.value.diagnostics[0].code


# ---- pre-stacked layers (esm2quinox, the Tricks page's TenMLPs) -------------------


@pytest.fixture(scope="module")
def esm2():
    esm2quinox = pytest.importorskip("esm2quinox")
    model = esm2quinox.ESM2(
        num_layers=4, embed_size=32, num_heads=2, token_dropout=False, key=jr.key(0)
    )
    return model, jnp.array([0, 5, 6, 7, 8, 9, 2, 1])


def test_esm2_layers_are_adopted_as_a_stack_without_copies(esm2):
    model, tokens = esm2
    stacked = eqxform.compile("stack layers scan").apply(model)
    assert isinstance(stacked.layers, eqxform.Stacked) and stacked.layers.count == 4
    assert count_params(stacked) == count_params(model)
    # The library's own scan over its layers gives the same logits and gradients.
    assert np.array_equal(stacked(tokens).logits, model(tokens).logits)

    def loss(m):
        return jnp.sum(eqxform.resolve(m)(tokens).logits ** 2)

    want, got = eqx.filter_grad(loss)(model), eqx.filter_grad(loss)(stacked)
    for a, b in zip(arrays(want.layers), arrays(got.layers.layers)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Its layers are selectable, and `unstack` gives the library's module back.
    plan = eqxform.compile("stack layers scan\nwhere layers[0:2] -> freeze").plan(model)
    assert "layers.linear1.weight (layers 0,1)" in str(plan)
    back = eqxform.compile("stack layers scan\nunstack layers").apply(model)
    assert type(back.layers) is type(model.layers)
    assert all(np.array_equal(a, b) for a, b in zip(arrays(back), arrays(model)))


def test_esm2_freeze_and_lora_on_slices_of_its_layers(esm2):
    model, tokens = esm2
    spec = (
        "stack layers scan\nwhere layers[0:2] -> freeze\nwhere layers[2:].linear1 -> lora(rank=2)"
    )
    adapted = eqxform.compile(spec).apply(model)
    # B starts at zero: the adapted model computes what the model does.
    np.testing.assert_allclose(
        eqxform.resolve(adapted)(tokens).logits, model(tokens).logits, atol=1e-5
    )
    grads = eqx.filter_grad(lambda m: jnp.sum(eqxform.resolve(m)(tokens).logits ** 2))(adapted)
    linear2 = np.asarray(grads.layers.layers.linear2.weight.value)
    assert np.all(linear2[:2] == 0) and np.any(linear2[2:] != 0)  # layers 0, 1 frozen
    plan = eqxform.compile(spec).plan(model)
    assert "layers.linear1 (layers 2,3)" in str(plan)


def test_esm2_copies_of_its_stack_need_the_word_and_warn(esm2):
    model, _ = esm2
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("stack layers scan 3").apply(model)
    d = info.value.diagnostics[0]
    assert d.code == "E132" and "already holds 4 layers" in d.message
    assert "`stack layers scan 3 copies`" in d.help and "`stack layers scan`" in d.help
    with pytest.warns(eqxform.EqxformWarning) as caught:
        copies = eqxform.compile("stack layers scan 2 copies").apply(model)
    (warning,) = [w.message.diagnostic for w in caught]
    assert warning.code == "W210" and "8" in warning.message
    assert count_params(copies.layers) == 2 * count_params(model.layers)


def test_esm2_layers_indexed_without_a_stack_line_are_told_to_adopt_them(esm2):
    model, tokens = esm2
    for rule in ("where layers[0] -> freeze", "where layers[1:3].linear1 -> lora(rank=2)"):
        with pytest.raises(eqxform.SpecError) as info:
            eqxform.compile(rule).apply(model)
        [d] = info.value.diagnostics
        assert d.code == "E201" and d.span.line == 1
        assert "`layers` is one `TransformerLayer`" in d.message
        assert "leading layer axis of 4" in d.message
        assert d.help.startswith("write `stack layers scan` above this rule")
        # What the help says works, and does what the rule asked.
        fixed = eqxform.compile("stack layers scan\n" + rule).apply(model)
        np.testing.assert_allclose(
            eqxform.resolve(fixed)(tokens).logits, model(tokens).logits, atol=1e-5
        )
    # The path it names is the module's own, wherever it sits.
    (d,) = eqxform.compile("input i32[8]\nwhere ESM2.layers[0] -> freeze").check(model)
    assert d.code == "E201" and "write `stack layers scan`" in d.help


def test_a_lookalike_pre_stacked_module_indexed_without_a_stack_line():
    model = R.PreStackedTransformer(embed_size=16, num_layers=3, num_heads=2, key=jr.key(3))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where layers[*].linear2.weight -> init zeros").apply(model)
    [d] = info.value.diagnostics
    assert "`layers` is one `StackedLayer`" in d.message and "axis of 3" in d.message
    nested = NestedFlow(key=jr.key(20))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where blocks[0].couplings -> freeze").apply(nested)
    [d] = info.value.diagnostics
    assert "`blocks` is one `FlowBlock`" in d.message and "axis of 3" in d.message
    assert "`stack blocks scan`" in d.help
    # A path that is no module with a layer axis keeps the nearest paths.
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where head[0] -> freeze").apply(model)
    [d] = info.value.diagnostics
    assert "layer axis" not in d.message and "did you mean" in d.help


def test_ten_mlps_of_the_tricks_page_are_adopted():
    model = R.PreStacked(size=8, count=5, key=jr.key(1))
    stacked = eqxform.compile("stack mlps scan").apply(model)
    assert stacked.mlps.count == 5 and count_params(stacked) == count_params(model)
    x = jr.normal(jr.key(2), (8,))
    np.testing.assert_allclose(stacked(x), R.prestacked_loop(model, x), atol=1e-6)
    # Called as a stack itself, it runs the same five layers.
    np.testing.assert_allclose(stacked.mlps(x), model(x), atol=1e-6)


def test_an_esm2_shaped_trunk_adopted_with_a_keyword_argument():
    model = R.PreStackedTransformer(embed_size=16, num_layers=3, num_heads=2, key=jr.key(3))
    stacked = eqxform.compile("input f32[6,16]\nstack layers scan").apply(model)
    x = jr.normal(jr.key(4), (6, 16))
    pad = jnp.array([False] * 4 + [True] * 2)
    np.testing.assert_allclose(stacked(x, pad), model(x, pad), atol=1e-6)


# ---- blocks pre-stacked twice (transformer-flows' shape) ---------------------------


class Coupling(eqx.Module):
    """One inner layer: an `eqx.nn.Linear` and a raw-array gain."""

    linear: eqx.nn.Linear
    gain: jax.Array

    def __init__(self, size: int, key):
        k1, k2 = jr.split(key)
        self.linear = eqx.nn.Linear(size, size, key=k1)
        self.gain = 0.5 + jr.uniform(k2, (size,))

    def __call__(self, x):
        return x + self.gain * jnp.tanh(self.linear(x))


def _own_scan(stack, x):
    """A library's scan over its pre-stacked layers: partition, `lax.scan`, combine."""
    dynamic, static = eqx.partition(stack, eqx.is_array)
    return jax.lax.scan(lambda h, d: (eqx.combine(d, static)(h), None), x, dynamic)[0]


class FlowBlock(eqx.Module):
    """A block with a raw-array projection of its own and `couplings`, ONE
    `Coupling` built by `filter_vmap` over `depth` keys, run by its own scan."""

    proj: jax.Array
    couplings: Coupling

    def __init__(self, size: int, depth: int, key):
        k1, k2 = jr.split(key)
        self.proj = jr.normal(k1, (size, size)) / np.sqrt(size)
        self.couplings = eqx.filter_vmap(lambda k: Coupling(size, k))(jr.split(k2, depth))

    def __call__(self, x):
        return _own_scan(self.couplings, self.proj @ x)


class NestedFlow(eqx.Module):
    """transformer-flows' shape: `blocks` is ONE `FlowBlock` built by
    `filter_vmap` over `count` keys, so each coupling's arrays carry two
    leading axes `(count, depth, ...)`; run by the model's own scan."""

    blocks: FlowBlock

    def __init__(self, size: int = 8, count: int = 3, depth: int = 2, *, key):
        self.blocks = eqx.filter_vmap(lambda k: FlowBlock(size, depth, k))(jr.split(key, count))

    def __call__(self, x):
        return _own_scan(self.blocks, x)


def nested_flow_by_hand(model: NestedFlow, x):
    """`NestedFlow.__call__` written out over the library's stacked arrays."""
    b = model.blocks
    for i in range(b.proj.shape[0]):
        x = b.proj[i] @ x
        c = b.couplings
        for j in range(c.gain.shape[1]):
            w, bias = c.linear.weight[i, j], c.linear.bias[i, j]
            x = x + c.gain[i, j] * jnp.tanh(w @ x + bias)
    return x


def test_blocks_pre_stacked_twice_are_adopted_along_the_outer_axis():
    model = NestedFlow(key=jr.key(20))
    x = jr.normal(jr.key(21), (8,))
    assert model.blocks.couplings.linear.weight.shape == (3, 2, 8, 8)
    program = eqxform.compile("input f32[8]\nstack blocks scan")
    stacked = program.apply(model)
    assert isinstance(stacked.blocks, eqxform.Stacked) and stacked.blocks.count == 3
    assert count_params(stacked) == count_params(model)
    plan = str(program.plan(model))
    assert "3 layers adopted as built from the outer of 2 layer axes, no copies" in plan
    # The model's own scan slices the stack into one block at a time; the
    # stack called on its own runs the three; both as written by hand.
    want = nested_flow_by_hand(model, x)
    np.testing.assert_allclose(model(x), want, atol=1e-5)
    np.testing.assert_allclose(stacked(x), want, atol=1e-5)
    np.testing.assert_allclose(stacked.blocks(x), want, atol=1e-5)
    np.testing.assert_allclose(stacked.blocks[1](x), model.blocks.__class__.__call__(
        jax.tree.map(lambda a: a[1] if eqx.is_array(a) else a, model.blocks), x
    ), atol=1e-6)  # fmt: skip

    def loss(m):
        return jnp.sum(eqxform.resolve(m)(x) ** 2)

    grads = eqx.filter_grad(loss)(model)
    for a, b in zip(arrays(grads), arrays(eqx.filter_grad(loss)(stacked))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # A layer of the stack is the outer block: its inner axis comes with it.
    spec = "stack blocks scan\nwhere blocks[1].couplings.gain -> scale 2\nwhere blocks[2] -> freeze"
    out = eqxform.compile(spec).apply(model)
    gain = np.asarray(model.blocks.couplings.gain)
    hand = eqx.tree_at(
        lambda m: m.blocks.couplings.gain, model, gain * np.array([1, 2, 1])[:, None, None]
    )
    np.testing.assert_allclose(eqxform.resolve(out)(x), nested_flow_by_hand(hand, x), atol=1e-5)
    frozen = eqx.filter_grad(loss)(out).blocks.layers
    w = np.asarray(frozen.couplings.linear.weight.value)
    assert w.shape == (3, 2, 8, 8) and not np.any(w[2]) and np.all(np.any(w[:2] != 0, axis=(2, 3)))
    back = eqxform.compile("stack blocks scan\nunstack blocks").apply(model)
    assert type(back.blocks) is FlowBlock
    assert all(np.array_equal(a, b) for a, b in zip(arrays(back), arrays(model)))
    # Copies of it need the word, as of a stack of one axis.
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("stack blocks scan 2").apply(model)
    assert code_of(info) == "E132" and "already holds 3 layers" in info.value.diagnostics[0].message


class OneBlock(eqx.Module):
    block: FlowBlock


def test_a_block_holding_a_pre_stacked_part_is_no_stack_of_its_own():
    # One `FlowBlock`: its couplings carry a layer axis, its projection none.
    model = OneBlock(FlowBlock(8, 3, jr.key(22)))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("stack block scan").apply(model)
    assert code_of(info) == "E130"
    inner = eqxform.compile("stack block.couplings scan").apply(model)
    assert inner.block.couplings.count == 3 and inner.block.couplings.inner == 0
    x = jr.normal(jr.key(23), (8,))
    np.testing.assert_allclose(inner.block(x), model.block(x), atol=1e-6)


# ---- layers that change the carry (megalodon-jax) ---------------------------------


@pytest.fixture(scope="module")
def megalodon():
    mj = pytest.importorskip("megalodon_jax")
    from megalodon_jax.model import MegalodonForCausalLM

    config = mj.MegalodonConfig(
        vocab_size=64,
        model_dim=32,
        num_layers=2,
        num_heads=1,
        z_dim=16,
        value_dim=32,
        ffn_hidden_dim=48,
        cema_ndim=4,
        chunk_size=16,
        norm_num_groups=4,
    )
    return MegalodonForCausalLM(config, key=jr.key(0)), jnp.arange(8)[None] % 64


def test_megalodon_scan_stack_without_input_fails_at_the_first_call_with_a_code(megalodon):
    model, ids = megalodon
    stacked = eqxform.compile("stack model.layers scan").apply(model)
    with pytest.raises(eqxform.EqxformError) as info:
        stacked(ids)
    d = info.value.diagnostics[0]
    assert d.code == "E235" and "f32[1,8,32]" in d.message and "(f32[1,8,32], None)" in d.message
    assert "`layerwise`" in d.help


def test_megalodon_scan_stack_with_input_is_caught_at_the_stack_line(megalodon):
    model, ids = megalodon
    program = eqxform.compile("input i32[1,8]\nstack model.layers scan")
    (d,) = program.check(model)
    assert d.code == "E235" and d.span.line == 2 and "`layerwise`" in d.help
    with pytest.raises(eqxform.SpecError) as info:
        program.apply(model)
    assert code_of(info) == "E235" and info.value.diagnostics[0].span.line == 2
    # What the help suggests works, and computes what the model does.
    layerwise = eqxform.compile("input i32[1,8]\nstack model.layers scan layerwise").apply(model)
    np.testing.assert_allclose(layerwise(ids)[0], model(ids)[0], atol=1e-5)


def test_megalodon_cast_of_everything_keeps_its_cached_forward(megalodon):
    # Megalodon's cache is an argument of its call, not model state: `**`
    # reaches only its parameters, as a hand-written cast of them does, and
    # the cached forward (keys, values, running norms) still runs.
    model, ids = megalodon
    program = eqxform.compile("where ** -> cast bfloat16")
    out = program.apply(model)
    hand = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.bfloat16) if eqx.is_inexact_array(x) else x, model
    )
    assert all(
        a.dtype == b.dtype and np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(hand))
        if eqx.is_array(a)
    )
    logits, cache = out(ids, return_cache=True)
    want, want_cache = hand(ids, return_cache=True)
    np.testing.assert_allclose(np.asarray(logits, np.float32), np.asarray(want, np.float32))
    assert [x.dtype for x in jax.tree_util.tree_leaves(cache)] == [
        x.dtype for x in jax.tree_util.tree_leaves(want_cache)
    ]
    assert program.plan(model).steps[0].state_skipped == 0


# ---- stacks with BatchNorm state -------------------------------------------------


def _run(model, state, x):
    clone = jax.tree_util.tree_unflatten(*reversed(jax.tree_util.tree_flatten(state)))
    return jax.vmap(lambda xi: model(xi, clone), axis_name="batch", out_axes=(0, None))(x)


@pytest.mark.parametrize("sequential", [False, True])
def test_a_stack_applied_to_a_stateful_model_alone_takes_its_old_state(sequential):
    model, state = R.make_tiny_resnet(depth=2, key=jr.key(5), sequential=sequential)
    x = jr.normal(jr.key(6), (4, 3, 8, 8))
    want, want_state = _run(model, state, x)
    stacked = eqxform.compile("stack blocks scan").apply(model)  # the model, not its state
    got, got_state = _run(stacked, state, x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The state comes back in the form it was given, with the same values.
    for a, b in zip(arrays(got_state), arrays(want_state)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # A state that holds the stem's values but none of the blocks' (another
    # model's) is refused with a code, not a KeyError.
    values = eqxform._modules.state_values(state)
    other = eqxform._modules.make_state(
        {k: v for k, v in values.items() if not str(k).startswith("TinyResNet.blocks")}
    )
    assert len(arrays(other)) < len(arrays(state))
    with pytest.raises(eqxform.EqxformError) as info:
        _run(stacked, other, x)
    assert code_of(info) == "E436" and "program.apply((model, state))" in (
        info.value.diagnostics[0].help
    )


def test_a_stateful_model_without_its_state_and_an_input_line_is_told_to_pass_it():
    model, state = R.make_tiny_resnet(depth=2, key=jr.key(8))
    program = eqxform.compile("input f32[3,8,8]\nstack blocks scan")
    with pytest.raises(eqxform.SpecError) as info:
        program.apply(model)
    d = info.value.diagnostics[0]
    # `apply` plans first: its diagnostic is `check`'s, at the `input` line
    # whose forward pass needs the state (it was the `stack` line's, line 2).
    assert d.code == "E238" and d.span.line == 1 and "program.apply((model, state))" in d.help
    (checked,) = program.check(model)
    assert checked == d
    new, new_state = program.apply((model, state))
    x = jr.normal(jr.key(9), (4, 3, 8, 8))
    np.testing.assert_allclose(_run(new, new_state, x)[0], _run(model, state, x)[0], atol=1e-5)


# ---- ensembles drawn as the library draws ---------------------------------------


def _equimo_vit(key, depth=2):
    em = pytest.importorskip("equimo.models")
    return em.VisionTransformer(
        img_size=16,
        in_channels=3,
        dim=32,
        patch_size=8,
        num_heads=2,
        depths=[depth],
        num_classes=5,
        key=key,
    )


def test_an_ensemble_of_a_constructor_draws_its_members_with_it():
    pytest.importorskip("equimo")
    program = eqxform.compile("ensemble 3")
    ens = program.apply(_equimo_vit)
    hand = eqx.filter_vmap(_equimo_vit)(jr.split(jr.key(10), 3))
    ours = arrays(ens.model)
    theirs = arrays(hand)
    assert [a.shape for a in ours] == [b.shape for b in theirs]
    for a, b in zip(ours, theirs):
        assert np.std(a) == pytest.approx(float(np.std(b)), rel=0.25, abs=1e-6)
        if np.std(b[0]) > 0 and not np.array_equal(b[0], b[1]):
            assert not np.array_equal(a[0], a[1])  # members differ where the library's do
    plan = str(program.plan(_equimo_vit))
    assert "drawn per member by the model's constructor" in plan
    with pytest.raises(eqxform.UsageError) as info:
        program.apply(eqx.nn.MLP)
    assert code_of(info) == "E438"


def test_an_ensemble_without_constructor_keeps_each_arrays_distribution():
    # A library that re-initialises its layers (kaiming normal weights, zero
    # biases), as jaxonmodels and CLIP do, not as Equinox's default would.
    keys = jr.split(jr.key(11), 3)
    layers = []
    for k in keys:
        linear = eqx.nn.Linear(256, 128, key=k)
        weight = jr.normal(k, (128, 256)) * np.sqrt(2 / 256)
        layers.append(eqx.tree_at(lambda m: (m.weight, m.bias), linear, (weight, jnp.zeros(128))))
    model = eqx.nn.Sequential(layers[:1] + [eqx.nn.Lambda(jax.nn.relu)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays a copy: no W201
        ens = eqxform.compile("ensemble 4").apply(model)
    w, b = np.asarray(ens.model.layers[0].weight), np.asarray(ens.model.layers[0].bias)
    assert np.all(b == 0)  # zeros stay zeros
    for i in range(4):
        assert np.std(w[i]) == pytest.approx(np.sqrt(2 / 256), rel=0.05)
        assert not np.array_equal(w[i], model.layers[0].weight)
    assert not np.array_equal(w[0], w[1])
    plan = str(eqxform.compile("ensemble 4").plan(model))
    assert "layers[0].weight" in plan and "drawn per member from its own values" in plan


def test_an_ensemble_of_a_pdequinox_unet_redraws_its_own_conv_types():
    pdeqx = pytest.importorskip("pdequinox")
    model = pdeqx.arch.ClassicUNet(1, 1, 2, hidden_channels=4, num_levels=1, key=jr.key(12))
    ens = eqxform.compile("ensemble 2").apply(model)
    weights = [
        (n, a)
        for n, a in zip(
            [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(ens.model)],
            jax.tree_util.tree_leaves(ens.model),
        )
        if eqx.is_array(a) and n.endswith(".weight")
    ]
    convs = [a for n, a in weights if "norm" not in n]
    norms = [a for n, a in weights if "norm" in n]
    assert len(convs) == 9 and all(not np.array_equal(a[0], a[1]) for a in convs)
    assert norms and all(np.all(a == 1) for a in norms)  # ones by design stay ones
    x = jr.normal(jr.key(13), (1, 16))
    assert ens(x).shape == (2, 2, 16)


# ---- merge and models called without resolve -------------------------------------


def test_an_unresolved_model_says_to_resolve_and_a_merged_one_runs():
    pytest.importorskip("equimo")
    model = _equimo_vit(jr.key(14))
    x = jr.normal(jr.key(15), (3, 16, 16))
    adapted = eqxform.compile("where ** -> freeze\nwhere **.qkv -> lora(rank=2)").apply(model)
    with pytest.raises(ValueError, match=r"E437.*eqxform\.resolve"):
        adapted(x, key=jr.key(0), inference=True)
    want = eqxform.resolve(adapted)(x, key=jr.key(0), inference=True)
    for merged in (
        eqxform.merge(adapted),
        eqxform.compile("where ** -> merge").apply(adapted),
    ):
        frozen = [
            w
            for w in jax.tree_util.tree_leaves(merged, is_leaf=eqxform._modules.is_wrapper)
            if eqxform._modules.is_wrapper(w)
        ]
        assert frozen == []
        np.testing.assert_allclose(merged(x, key=jr.key(0), inference=True), want, atol=1e-5)


def test_a_frozen_linear_called_directly_says_to_resolve():
    model = eqxform.compile("where ** -> freeze").apply(eqx.nn.MLP(2, 2, 4, 1, key=jr.key(16)))
    with pytest.raises(ValueError, match="eqxform.resolve"):
        model(jnp.ones(2))
    assert eqxform.resolve(model)(jnp.ones(2)).shape == (2,)


def test_the_readme_example_resolves_where_the_model_is_called():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    first = readme.split("```python", 1)[1].split("```", 1)[0]
    assert "eqxform.resolve(" in first
