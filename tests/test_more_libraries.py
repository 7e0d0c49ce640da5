"""The jobs of a researcher on more published Equinox libraries than those of
`test_libraries.py`, each against the hand-written Equinox code it replaces,
at small configs; a library that is not installed is skipped.

- transformer-flows (`TransformerFlow`): blocks built pre-stacked with
  `eqx.filter_vmap`, each holding attention blocks pre-stacked again; its own
  `Linear` and `MultiheadAttention`, named like Equinox's; an integer array
  per block; a KV cache in an `eqx.nn.StateIndex` of a model built without
  `make_with_state`; no `__call__` (its entry point is `forward`, which
  returns a tuple).
- gatv2-eqx (`GATv2`): PyTorch-style capitalised field names (`W_src`,
  `W_tgt`), beartype on every call. Not in the `test` extra: it requires
  `jax[cuda12]`.

The patterns they showed are tested without the libraries too (first).
"""

import functools
import os
import subprocess
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
import realmodels as R
from test_libraries import hand_lora, same, with_random_b

import eqxform
from eqxform._runtime import _train


def quietly_import(name):
    """The library, imported past the warnings it gives on import (deprecated
    Equinox fields, beartype's notes on its own annotations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip(name)


# ---- the patterns, without the libraries ----------------------------------------


class GraphLayer(eqx.Module):
    """Named as PyTorch ports name their weights: capitalised fields."""

    W_src: eqx.nn.Linear
    W_tgt: eqx.nn.Linear
    Wq: jax.Array

    def __init__(self, key):
        k1, k2, k3 = jr.split(key, 3)
        self.W_src = eqx.nn.Linear(4, 4, key=k1)
        self.W_tgt = eqx.nn.Linear(4, 4, key=k2)
        self.Wq = jr.normal(k3, (4, 4))

    def __call__(self, x):
        return self.Wq @ (self.W_src(x) + self.W_tgt(x))


def test_a_capitalised_field_is_a_field_where_no_class_has_its_name():
    layer = GraphLayer(jr.key(0))
    x = jnp.arange(4.0)
    adapted = eqxform.compile("where GraphLayer.W_src -> lora(rank=2, alpha=2)").apply(
        layer, key=jr.key(1)
    )
    assert isinstance(adapted.W_src, eqxform.LoRA)
    assert isinstance(adapted.W_tgt, eqx.nn.Linear)
    adapted = with_random_b(adapted, jr.key(2))
    hand = hand_lora(layer, adapted, lambda m: [m.W_src])
    assert np.allclose(eqxform.resolve(adapted)(x), hand(x), atol=1e-5)
    zeroed = eqxform.compile("where W_tgt.weight -> init zeros\nwhere Wq -> scale 2").apply(
        layer, key=jr.key(1)
    )
    by_hand = eqx.tree_at(
        lambda m: (m.W_tgt.weight, m.Wq), layer, (jnp.zeros((4, 4)), 2 * layer.Wq)
    )
    assert same(zeroed, by_hand)
    # A capitalised name that is neither a class nor a field stays unknown.
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where W_sr.weight -> init zeros").apply(layer, key=jr.key(1))
    assert info.value.diagnostics[0].code == "E104"
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where Qqqqqq.weight -> init zeros").apply(layer, key=jr.key(1))
    [d] = info.value.diagnostics
    assert d.code == "E104" and d.help.startswith("a type is a class of the model's tree")


class Gate(eqx.Module):
    weight: jax.Array

    def __call__(self, x):
        return self.weight * x


def test_lora_on_a_module_without_a_matrix_calls_it_a_module():
    # A module is callable, but the message names it as the module it is.
    model = [Gate(jnp.ones(4)), eqx.nn.Linear(4, 4, key=jr.key(0))]
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where Gate -> lora(rank=2)").apply(model, key=jr.key(1))
    [d] = info.value.diagnostics
    assert d.code == "E220"
    assert "`[0]` is a `Gate` without a 2-D `weight`" in d.message


class Cached(eqx.Module):
    """A layer with a cache in a `StateIndex`, built without
    `make_with_state` (as KV caches are), and an offset of its own
    distribution (uniform on [10, 11]) that no default initialisation draws."""

    proj: eqx.nn.Linear
    offset: jax.Array
    cache: eqx.nn.StateIndex

    def __init__(self, key):
        k1, k2 = jr.split(key)
        self.proj = eqx.nn.Linear(4, 4, key=k1)
        self.offset = 10 + jr.uniform(k2, (4,))
        self.cache = eqx.nn.StateIndex(jnp.zeros(4))

    def __call__(self, x):
        return self.proj(x) + self.offset


def test_ensemble_of_a_model_with_a_state_index_draws_with_its_constructor():
    # Each `StateIndex` has a marker of its own construction: the members the
    # constructor builds are the model's structure all the same.
    x = jnp.arange(4.0)
    program = eqxform.compile("ensemble 3")
    model = Cached(jr.key(0))
    for subject in (Cached, eqxform.new(Cached)):
        members = program.apply(subject, key=jr.key(1))
        assert isinstance(members, eqxform.Ensemble)
        offsets = np.asarray(members.model.offset)
        # Drawn by the constructor: new values of its distribution, not
        # the model's own values picked again, and a different draw each.
        assert offsets.shape == (3, 4) and np.all((offsets >= 10) & (offsets <= 11))
        assert not np.isin(offsets, np.asarray(model.offset)).all()
        assert len({tuple(o) for o in offsets}) == 3
        out = members(x)
        for i in range(3):
            assert np.allclose(out[i], members.member(i)(x), atol=1e-6)
    plan = program.plan(Cached)
    assert "drawn per member by the model's constructor" in str(plan)


def test_a_state_index_the_call_does_not_read_is_no_missing_state():
    # A KV cache is state for sampling; `__call__` runs without it. An input
    # that does not fit is then said as such, not as a missing state (E238).
    model = Cached(jr.key(0))
    assert not eqxform.compile("input f32[4]\nwhere proj -> freeze").plan(model).diagnostics
    [d] = eqxform.compile("input f32[5]\nwhere proj -> freeze").plan(model).diagnostics
    assert d.code == "E212" and "does not accept its declared input" in d.message


def is_state_index(x):
    return isinstance(x, eqx.nn.StateIndex)


def on_parameters(model, f):
    """By hand: `f` on every floating-point array of `model` but the initial
    values its `StateIndex`es hold (running statistics, caches)."""
    return jax.tree_util.tree_map(
        lambda x: x if is_state_index(x) else f(x) if eqx.is_inexact_array(x) else x,
        model,
        is_leaf=is_state_index,
    )


def same_dtypes(a, b):
    arrays = lambda t: [x for x in jax.tree_util.tree_leaves(t) if eqx.is_array(x)]  # noqa: E731
    return [x.dtype for x in arrays(a)] == [x.dtype for x in arrays(b)]


def run_batch(model, state, x):
    """A BatchNorm model on a batch (training mode): outputs and new state."""
    return jax.vmap(lambda xi: model(xi, state), axis_name="batch", out_axes=(0, None))(x)


@pytest.mark.parametrize(
    "action, f",
    [
        ("scale 2", lambda x: 2 * x),
        ("init zeros", jnp.zeros_like),
        ("cast bfloat16", lambda x: x.astype(jnp.bfloat16)),
        ("freeze", lambda x: x),
    ],
)
def test_star_actions_leave_the_running_statistics_of_batchnorm(action, f):
    # A ResNet built as a plain module (its state made later by
    # `eqx.nn.State(model)`): every BatchNorm holds its running mean and
    # variance's initial values (zeros, ones) in a `StateIndex`.
    model = R.TinyResNet(depth=2, key=jr.key(5))
    program = eqxform.compile(f"where ** -> {action}")
    out = program.apply(model)
    hand = on_parameters(model, f)
    assert same(eqxform.resolve(out), hand) and same_dtypes(eqxform.resolve(out), hand)
    # The state made from it is the model's own: mean 0, variance 1, float32.
    state = eqx.nn.State(eqxform.resolve(out))
    assert same(state, eqx.nn.State(model)) and same_dtypes(state, eqx.nn.State(model))
    x = jr.normal(jr.key(6), (4, 3, 8, 8))
    if action.startswith("cast"):
        x = x.astype(jnp.bfloat16)
    got, got_state = run_batch(eqxform.resolve(out), state, x)
    want, want_state = run_batch(hand, eqx.nn.State(hand), x)
    assert np.allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=1e-5)
    assert same(got_state, want_state, atol=1e-5) and same_dtypes(got_state, want_state)
    # 5 BatchNorms: 5 integer counters and 10 arrays of running statistics left.
    [step] = program.plan(model).steps
    assert step.skipped == 5 and step.state_skipped == 10
    plan = program.plan(model)
    assert "5 non-floating arrays skipped, 10 arrays of model state skipped" in str(plan)
    # Running statistics are state, neither trainable nor frozen (5 x 2 x 8 values).
    assert plan.state == 80 and "model state: 80" in str(plan)
    assert (
        plan.trainable + plan.frozen
        == sum(x.size for x in jax.tree_util.tree_leaves(hand) if eqx.is_inexact_array(x)) - 80
    )


def test_a_rule_that_names_the_state_acts_on_its_initial_values():
    # Named by its field (or its type), a `StateIndex` is what the rule is
    # about: its initial values change, and the state made from them.
    model = R.TinyResNet(depth=2, key=jr.key(5))
    for rule in ("where bn.batch_state_index -> scale 2", "where StateIndex -> scale 2"):
        out = eqxform.compile(rule).apply(model)
        mean, var = out.bn.batch_state_index.init
        assert np.all(np.asarray(var) == 2) and np.all(np.asarray(mean) == 0)
        assert np.array_equal(out.bn.weight, model.bn.weight)
        [step] = eqxform.compile(rule).plan(model).steps
        assert step.state_skipped == 0
    # A module that holds one acts on its parameters only.
    out = eqxform.compile("where bn -> scale 2").apply(model)
    assert np.all(np.asarray(out.bn.batch_state_index.init[1]) == 1)
    assert np.allclose(out.bn.weight, 2 * model.bn.weight)


def test_star_actions_leave_the_cache_of_a_model_built_without_make_with_state():
    model = Cached(jr.key(0))
    out = eqxform.compile("where ** -> cast bfloat16").apply(model)
    assert out.cache.init.dtype == jnp.float32 and out.proj.weight.dtype == jnp.bfloat16
    assert same(out, on_parameters(model, lambda x: x.astype(jnp.bfloat16)))


# ---- transformer-flows: TransformerFlow ------------------------------------------

FLOW = dict(
    n_channels=1,
    img_size=8,
    patch_size=4,
    channels=16,
    n_blocks=2,
    layers_per_block=2,
    head_dim=8,
    expansion=2,
)
IMAGE = jr.normal(jr.key(7), (1, 8, 8))


@pytest.fixture(scope="module")
def flows():
    return quietly_import("transformer_flows")


@pytest.fixture(scope="module")
def flow(flows):
    return eqxform.new(flows.TransformerFlow, **FLOW)


@pytest.fixture(scope="module")
def live(flow):
    """The flow with `proj_out` drawn: the library starts it at zero (an
    identity flow), where nothing inside the blocks reaches the output."""
    program = eqxform.compile("where blocks.proj_out.weight -> init normal(stddev=0.1)")
    return program.apply(flow, key=jr.key(9))


@eqx.filter_jit
def run_flow(model, x=IMAGE):
    """The flow's latent and log-determinant (its `forward`; it has no `__call__`)."""
    z, _, logdet = eqxform.resolve(model).forward(x, None)
    return z, logdet


def flow_loss(model, x):
    z, logdet = jax.vmap(lambda xi: run_flow(model, xi))(x)
    return jnp.mean(0.5 * jnp.mean(z**2, axis=(1, 2)) - logdet)


def test_transformer_flow_lora_on_its_nested_stacks_matches_hand_written(live):
    flow = live
    program = eqxform.compile("where MultiheadAttention.query_proj -> lora(rank=2, alpha=2)")
    adapted = program.apply(flow, key=jr.key(1))
    where = lambda m: [m.blocks.attn_blocks.attention.attention.query_proj]  # noqa: E731
    [lora] = where(adapted)
    assert lora.lora_a.shape == (2, 2, 2, 16)  # both of the library's layer axes, carried
    assert np.allclose(run_flow(adapted)[0], run_flow(flow)[0], atol=1e-5)  # B = 0 at first
    adapted = with_random_b(adapted, jr.key(2))
    hand = hand_lora(flow, adapted, where)
    assert np.allclose(run_flow(adapted)[0], run_flow(hand)[0], atol=1e-4)
    assert not np.allclose(run_flow(adapted)[0], run_flow(flow)[0], atol=1e-4)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: flow_loss(m, IMAGE[None])))(adapted)
    assert np.abs(np.asarray(where(grads)[0].lora_b)).max() > 0


def test_transformer_flow_star_actions_skip_its_integer_arrays(flow):
    scaled = eqxform.compile("where ** -> scale 2").apply(flow, key=jr.key(1))
    hand = jax.tree_util.tree_map(lambda x: 2 * x if eqx.is_inexact_array(x) else x, flow)
    assert same(scaled, hand)
    assert scaled.blocks.permutation.permute.dtype == jnp.int32
    assert np.array_equal(scaled.blocks.permutation.permute, flow.blocks.permutation.permute)
    zeroed = eqxform.compile("where ** -> init zeros").apply(flow, key=jr.key(1))
    assert np.array_equal(zeroed.blocks.permutation.permute, [0, 1])
    plan = str(eqxform.compile("where ** -> cast bfloat16").plan(flow))
    assert "3 non-floating arrays skipped" in plan


def test_transformer_flow_replace_inside_its_nested_stacks_draws_per_layer(live):
    # `net[0]` of the attention blocks carries both layer axes (2 blocks of 2
    # layers): the replacement gets them too, each layer its own draw, as a
    # hand-written `eqx.filter_vmap` of the constructor builds it.
    program = eqxform.compile(
        "where blocks.attn_blocks.mlp.net[0] -> replace Linear(in_features=16, out_features=32)"
    )
    out = program.apply(live, key=jr.key(1))
    new = out.blocks.attn_blocks.mlp.net.layers[0]
    assert isinstance(new, eqx.nn.Linear) and new.weight.shape == (2, 2, 32, 16)
    w = np.asarray(new.weight).reshape(4, -1)
    assert len({tuple(row) for row in w}) == 4
    assert np.abs(w).max() <= 1 / np.sqrt(16)  # Equinox's own init of a `Linear(16, 32)`
    # By hand: the same module put in with `tree_at`; the rest of the model as it was.
    hand = eqx.tree_at(lambda m: m.blocks.attn_blocks.mlp.net.layers[0], live, new)
    assert same(
        eqx.tree_at(lambda m: m.blocks.attn_blocks.mlp.net.layers[0], out, None),
        eqx.tree_at(lambda m: m.blocks.attn_blocks.mlp.net.layers[0], live, None),
    )
    assert np.allclose(run_flow(out)[0], run_flow(hand)[0], atol=1e-6)
    assert not np.allclose(run_flow(out)[0], run_flow(live)[0], atol=1e-3)


def test_esm2_replace_inside_its_pre_stacked_layers_draws_per_layer():
    esm2quinox = pytest.importorskip("esm2quinox")
    esm = eqxform.new(
        esm2quinox.ESM2, num_layers=2, embed_size=32, num_heads=2, token_dropout=False
    )
    program = eqxform.compile(
        "where layers.linear1 -> replace Linear(in_features=32, out_features=128)"
    )
    [step] = program.plan(esm).steps
    assert step.params_before == step.params_after  # no layer lost
    out = program.apply(esm, key=jr.key(1))
    w = np.asarray(out.layers.linear1.weight)
    assert w.shape == (2, 128, 32) and not np.allclose(w[0], w[1])
    tokens = jnp.array([0, 5, 6, 7, 8, 9, 10, 2])
    logits = out(tokens).logits
    assert logits.shape == (8, 33) and not np.allclose(logits, esm(tokens).logits, atol=1e-4)


def test_transformer_flow_casts_leave_its_kv_cache_so_sampling_runs(flow):
    # Its attention keeps a KV cache in a `StateIndex`; sampling (`reverse`)
    # writes the keys and values its layers compute into it. Cast with the
    # parameters, the cache no longer takes what float32 layers write.
    z = jr.normal(jr.key(4), (4, 16))

    @eqx.filter_jit
    def sample(model, z=z):
        model = eqxform.resolve(model)
        return model.reverse(z, None, eqx.nn.State(model))[0]

    to_bf16 = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
    for rule, where in [
        ("where ** -> cast bfloat16", lambda m: m),
        ("where blocks.attn_blocks -> cast bfloat16", lambda m: m.blocks.attn_blocks),
    ]:
        program = eqxform.compile(rule)
        out = program.apply(flow)
        hand = eqx.tree_at(where, flow, on_parameters(where(flow), to_bf16))
        assert same(out, hand) and same_dtypes(out, hand)
        cache = out.blocks.attn_blocks.attention.attention.autoregressive_index.init
        assert cache["conditional"][0].dtype == jnp.float32
        assert np.allclose(sample(out), sample(hand), atol=1e-5)
        assert "4 arrays of model state skipped" in str(program.plan(flow))
    # A model run wholly in bfloat16, its cache too, says so with a rule that
    # names the state; the latent is then bfloat16 as well.
    whole = eqxform.compile("where ** -> cast bfloat16\nwhere StateIndex -> cast bfloat16")
    out = whole.apply(flow)
    hand = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.bfloat16) if eqx.is_inexact_array(x) else x, flow
    )
    assert same(out, hand) and same_dtypes(out, hand)
    z16 = z.astype(jnp.bfloat16)
    assert sample(out, z16).dtype == jnp.bfloat16
    assert np.allclose(
        np.asarray(sample(out, z16), np.float32),
        np.asarray(sample(hand, z16), np.float32),
        atol=1e-2,
    )


def test_transformer_flow_input_line_says_the_model_has_no_call(flow):
    # Its entry point is `forward`, and it holds a KV cache: neither is the
    # matter of E238 (a missing state).
    [d] = eqxform.compile("input f32[1,8,8]\nwhere ** -> scale 2").plan(flow).diagnostics
    assert d.code == "E212" and d.span.line == 1
    assert d.message == (
        "the model `TransformerFlow` has no `__call__`, so its forward pass on the declared "
        "input cannot run"
    )


def test_transformer_flow_freeze_and_train_matches_hand_written(live):
    flow = live
    program = eqxform.compile(
        "optimizer sgd(learning_rate=1e-2)\nwhere blocks.attn_blocks -> freeze\n"
    )
    model = program.apply(flow, key=jr.key(1))
    x = jr.normal(jr.key(3), (4, 1, 8, 8))
    step = eqxform.make_step(flow_loss, eqxform.optimizer(program, model), model)
    for _ in range(2):
        step(x)
    # By hand: two SGD steps on everything but the attention blocks.
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, flow)
    spec = eqx.tree_at(
        lambda m: m.blocks.attn_blocks,
        spec,
        replace=jax.tree_util.tree_map(lambda _: False, flow.blocks.attn_blocks),
    )
    params, static = eqx.partition(flow, spec)
    grad = jax.jit(jax.grad(lambda p: flow_loss(eqx.combine(p, static), x)))
    for _ in range(2):
        params = jax.tree_util.tree_map(lambda p, g: p - 1e-2 * g, params, grad(params))
    hand = eqx.combine(params, static)
    trained = eqxform.resolve(step.model)
    assert same(trained, hand, atol=1e-5)
    assert same(trained.blocks.attn_blocks, flow.blocks.attn_blocks)
    assert not same(trained.blocks.proj_in, flow.blocks.proj_in)
    # The blocks do reach the output: frozen, not merely without a gradient.
    changed = eqx.tree_at(
        lambda m: m.blocks.attn_blocks.mlp.net.layers[0].weight, flow, replace_fn=lambda w: 2 * w
    )
    assert not np.allclose(run_flow(changed)[0], run_flow(flow)[0], atol=1e-3)


# Half a minute on two cores (the library's constructor compiled under `vmap`);
# `test_ensemble_of_a_model_with_a_state_index_...` tests the same path quickly.
@pytest.mark.slow
def test_transformer_flow_ensemble_keeps_the_library_initialisation(flows, flow):
    constructor = lambda key: flows.TransformerFlow(**FLOW, key=key)  # noqa: E731
    program = eqxform.compile("ensemble 2")
    # (A model made by `eqxform.new` takes the same path: its recipe's
    # constructor; `test_ensemble_of_a_model_with_a_state_index_...` tests both.)
    for subject in (constructor,):
        members = program.apply(subject, key=jr.key(1))
        # `proj_out` starts at zero in the library (an identity flow): so in every member.
        assert not np.any(np.asarray(members.model.blocks.proj_out.weight))
        q = np.asarray(members.model.blocks.attn_blocks.attention.attention.query_proj.weight)
        assert q.shape == (2, 2, 2, 16, 16) and not np.allclose(q[0], q[1])
        # Evaluated as the Tricks page evaluates an ensemble, member by member.
        z = eqx.filter_vmap(lambda m: run_flow(m)[0])(members.model)
        for i in range(2):
            assert np.allclose(z[i], run_flow(eqxform.pick(members, i))[0], atol=1e-5)
    notes = str(program.plan(constructor))
    assert "drawn per member by the model's constructor" in notes


def test_transformer_flow_blocks_are_adopted_as_a_stack(flow):
    # Blocks built by `filter_vmap` inside `filter_vmap`: the outer axis is the
    # layer axis; each block keeps its attention blocks' own axis.
    stacked = eqxform.compile("stack blocks scan").apply(flow, key=jr.key(1))
    assert isinstance(stacked.blocks, eqxform.Stacked) and stacked.blocks.count == 2
    assert np.allclose(run_flow(stacked)[0], run_flow(flow)[0], atol=1e-5)
    zeroed = eqxform.compile("stack blocks scan\nwhere blocks[0].proj_in.weight -> init zeros")
    out = zeroed.apply(flow, key=jr.key(1))
    assert not np.any(np.asarray(out.blocks.layers.proj_in.weight[0]))


def test_transformer_flow_adopted_blocks_match_the_library_and_hand_written_code(live):
    flow = live
    program = eqxform.compile("stack blocks scan")
    stacked = program.apply(flow, key=jr.key(1))
    # No copies: the library's own arrays, its two axes on the attention blocks.
    assert all(a is b for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(flow)))
    q = stacked.blocks.layers.attn_blocks.attention.attention.query_proj.weight
    assert q.shape == (2, 2, 16, 16) and stacked.blocks.inner == 1
    plan = str(program.plan(flow))
    assert "2 layers adopted as built from the outer of 2 layer axes, no copies" in plan
    # The library's forward, its own `lax.scan` over the stack, gives the
    # numbers and gradients of the model before; a block sliced from the
    # library's arrays by hand runs as each layer of the stack.
    z, logdet = run_flow(stacked)
    want_z, want_logdet = run_flow(flow)
    assert np.allclose(z, want_z, atol=1e-6) and np.allclose(logdet, want_logdet, atol=1e-6)
    grad = eqx.filter_jit(eqx.filter_grad(lambda m: flow_loss(m, IMAGE[None])))
    want, got = grad(flow), grad(stacked)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        if eqx.is_inexact_array(a):
            assert np.allclose(a, b, atol=1e-5)
    h = flow.patchify(IMAGE)
    for i in range(2):
        block = jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, flow.blocks)
        assert np.allclose(
            stacked.blocks[i].forward(h, None)[0], block.forward(h, None)[0], atol=1e-6
        )
        h = block.forward(h, None)[0]
    assert np.allclose(h, flow.forward(IMAGE, None)[0], atol=1e-5)
    # Slices of its layers: a freeze of one block, written by hand as a zero
    # gradient on that block's slice of every array.
    frozen = eqxform.compile("stack blocks scan\nwhere blocks[1] -> freeze").apply(flow)
    grads = grad(frozen)
    w = grads.blocks.layers.attn_blocks.mlp.net.layers[0].weight.value
    assert w.shape == (2, 2, 32, 16)
    assert not np.any(np.asarray(w[1])) and np.any(np.asarray(w[0]))
    assert np.allclose(w[0], want.blocks.attn_blocks.mlp.net.layers[0].weight[0], atol=1e-5)
    # `unstack` gives the library's module back.
    back = eqxform.compile("stack blocks scan\nunstack blocks").apply(flow)
    assert type(back.blocks) is type(flow.blocks) and same(back, flow)


def test_transformer_flow_ensemble_method_runs_per_member(flow):
    members = eqxform.compile("ensemble 2").apply(flow, key=jr.key(1))
    z = members.forward(IMAGE, None)[0]
    hand = eqx.filter_vmap(lambda m: m.forward(IMAGE, None)[0])(members.model)
    assert np.allclose(z, hand, atol=1e-5)


def test_transformer_flow_train_says_the_model_is_not_callable(flow):
    x = np.zeros((4, 1, 8, 8), np.float32)
    y = np.zeros((4, 4, 16), np.float32)
    with pytest.raises(eqxform.UsageError) as info:
        _train.check_fits(flow, x, y, "mse", "d.npz")
    [d] = info.value.diagnostics
    assert "__call__" in d.message and "one such input per row" not in (d.help or "")


def _flow_cli(folder, *args):
    """`python -m eqxform ARGS --allow transformer_flows` in `folder`; its output."""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(eqxform.__file__))}
    env["PYTHONWARNINGS"] = "ignore"
    done = subprocess.run(
        [sys.executable, "-m", "eqxform", *args, "--allow", "transformer_flows"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_transformer_flow_file_from_the_shell(flow, tmp_path):
    cli = functools.partial(_flow_cli, tmp_path)
    (tmp_path / "spec.eqx").write_text(
        "where ** -> scale 2\n"
        "where blocks.attn_blocks -> freeze\n"
        "where MultiheadAttention.query_proj -> lora(rank=2)\n"
    )
    eqxform.save(tmp_path / "flow.eqx", flow)
    shown = cli("show", "flow.eqx")
    assert "blocks.permutation.permute  int32[2]" in shown and "11,450 parameters" in shown
    planned = cli("plan", "spec.eqx", "flow.eqx")
    assert "2 non-floating arrays skipped" in planned and "trainable: 2,016" in planned
    cli("apply", "spec.eqx", "flow.eqx", "-o", "out.eqx")
    back = eqxform.load(tmp_path / "out.eqx", allow=["transformer_flows"])
    ours = eqxform.compile(tmp_path / "spec.eqx").apply(flow)
    assert same(eqxform.resolve(back), eqxform.resolve(ours))
    assert np.array_equal(back.blocks.permutation.permute, [0, 1])


@pytest.mark.slow  # CI time: the behaviours it combines have fast tests of their own
def test_transformer_flow_adopted_stack_from_the_shell(flow, tmp_path):
    # `plan` and `apply` of a spec that adopts the blocks and acts on one of
    # them, from the shell; the file loads back to the model the API makes.
    cli = functools.partial(_flow_cli, tmp_path)
    (tmp_path / "spec.eqx").write_text(
        "stack blocks scan\n"
        "where blocks[0] -> freeze\n"
        "where blocks[1].attn_blocks.attention.attention.query_proj -> lora(rank=2)\n"
        "where ** -> cast bfloat16\n"
    )
    eqxform.save(tmp_path / "flow.eqx", flow)
    planned = " ".join(cli("plan", "spec.eqx", "flow.eqx").split())
    assert "2 layers adopted as built from the outer of 2 layer axes, no copies" in planned
    assert "4 arrays of model state skipped" in planned
    cli("apply", "spec.eqx", "flow.eqx", "-o", "out.eqx")
    back = eqxform.load(tmp_path / "out.eqx", allow=["transformer_flows"])
    ours = eqxform.compile(tmp_path / "spec.eqx").apply(flow)
    assert isinstance(back.blocks, eqxform.Stacked) and back.blocks.kind == "adopted"
    assert same(eqxform.resolve(back), eqxform.resolve(ours)) and same_dtypes(back, ours)
    image = IMAGE.astype(jnp.bfloat16)
    z = eqxform.resolve(back).forward(image, None)[0]
    assert z.dtype == jnp.bfloat16
    assert np.array_equal(z, eqxform.resolve(ours).forward(image, None)[0])


# ---- gatv2-eqx: GATv2 --------------------------------------------------------------


@pytest.fixture(scope="module")
def gat():
    gatv2 = quietly_import("gatv2_eqx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return eqxform.new(gatv2.GATv2, 8)


NODES = jr.normal(jr.key(5), (5, 8))
ADJ = (jr.uniform(jr.key(6), (5, 5)) > 0.4).astype(jnp.float32) + jnp.eye(5)


def run_gat(model):
    return eqxform.resolve(model)(NODES, ADJ, 2, key=jr.key(0))


def test_gatv2_lora_on_its_capitalised_fields_matches_hand_written(gat):
    program = eqxform.compile("where GATv2Layer.W_src | GATv2Layer.W_tgt -> lora(rank=2)")
    adapted = with_random_b(program.apply(gat, key=jr.key(1)), jr.key(2))
    where = lambda m: [m.send_recieve.W_src, m.send_recieve.W_tgt]  # noqa: E731
    hand = hand_lora(gat, adapted, where)
    assert np.allclose(run_gat(adapted), run_gat(hand), atol=1e-5)
    assert isinstance(adapted.send_recieve.to_score, eqx.nn.Linear)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(run_gat(m) ** 2)))(adapted)
    assert all(np.abs(np.asarray(g.lora_b)).max() > 0 for g in where(grads))


def test_gatv2_freeze_and_train_matches_hand_written(gat):
    program = eqxform.compile("optimizer adam(learning_rate=1e-2)\nwhere **.W_src -> freeze\n")
    model = program.apply(gat, key=jr.key(1))
    target = jnp.ones((5, 8))

    def loss(m, y):
        return jnp.mean((run_gat(m) - y) ** 2)

    step = eqxform.make_step(loss, eqxform.optimizer(program, model), model)
    for _ in range(3):
        step(target)
    params, static = eqx.partition(gat, jax.tree_util.tree_map(eqx.is_inexact_array, gat))
    labels = jax.tree_util.tree_map(lambda _: "train", params)
    labels = eqx.tree_at(
        lambda m: (m.send_recieve.W_src.weight, m.send_recieve.W_src.bias),
        labels,
        ("frozen", "frozen"),
    )
    opt = optax.multi_transform(
        {"train": optax.adam(1e-2), "frozen": optax.set_to_zero()},
        lambda _: labels,  # (the model itself is callable: optax would call it)
    )
    state = opt.init(params)
    grad = jax.jit(jax.grad(lambda p: loss(eqx.combine(p, static), target)))
    for _ in range(3):
        updates, state = opt.update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
    assert same(eqxform.resolve(step.model), eqx.combine(params, static), atol=1e-5)
    assert same(eqxform.resolve(step.model).send_recieve.W_src, gat.send_recieve.W_src)


def test_gatv2_stack_of_copies_matches_a_hand_written_loop(gat):
    # `stack send_recieve scan 3`: three independently drawn message-passing
    # layers in one scan, where the model calls the one it had.
    stacked = eqxform.compile("stack send_recieve scan 3").apply(gat, key=jr.key(1))
    layers = stacked.send_recieve.layers
    assert layers.W_src.weight.shape == (3, 8, 8)
    one = lambda i: jax.tree_util.tree_map(lambda x: x[i] if eqx.is_array(x) else x, layers)  # noqa: E731
    nodes = NODES
    for _ in range(2):  # the model's own iterations
        for i in range(3):
            nodes = one(i)(nodes, ADJ)
    assert np.allclose(run_gat(stacked), nodes, atol=1e-5)
    jaxpr = str(eqx.filter_make_jaxpr(run_gat)(stacked)[0])
    assert "scan[" in jaxpr


def test_gatv2_ensemble_matches_hand_written_vmap(gat):
    members = eqxform.compile("ensemble 3").apply(gat, key=jr.key(1))
    ours = members(NODES, ADJ, 2, key=jr.key(0))
    hand = eqx.filter_vmap(lambda m: m(NODES, ADJ, 2, key=jr.key(0)), in_axes=eqx.if_array(0))(
        members.model
    )
    assert ours.shape == (3, 5, 8) and np.allclose(ours, hand, atol=1e-5)
    w = np.asarray(members.model.send_recieve.W_src.weight)
    assert not np.allclose(w[0], w[1])
