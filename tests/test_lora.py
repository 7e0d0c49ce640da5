"""Adapters: `lora`, `ia3` and `merge`; adapter files; training an adapted model.

Compared with hand-written LoRA in plain Equinox where one exists."""

import math
import os

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import realmodels as RM
from click.testing import CliRunner

import eqxform
from eqxform import _modules as M
from eqxform import models
from eqxform._cli import main
from eqxform._errors import ModelFileError, SpecError
from eqxform._format import format_spec
from eqxform._runtime._optim import state_bytes


def codes(excinfo) -> set[str]:
    return {d.code for d in excinfo.value.diagnostics}


def with_b(model, key, where=lambda x: isinstance(x, M.LoRA)):
    """`model` with every LoRA's B drawn at random (B = 0 makes any
    comparison of adapted and merged outputs trivial)."""

    def fill(x):
        if not where(x):
            return x
        b = x.lora_b
        value = b.value if isinstance(b, M.Frozen) else b
        new = 0.1 * jax.random.normal(key, value.shape, value.dtype)
        if isinstance(b, M.Frozen):  # layers outside a slice keep zeros
            new = jnp.where(b.mask(value.shape), 0.0, new)
            return eqx.tree_at(lambda m: m.lora_b.value, x, new)
        return eqx.tree_at(lambda m: m.lora_b, x, new)

    return jax.tree_util.tree_map(fill, model, is_leaf=where)


def mlp_spec(body: str) -> str:
    return "model MLP(in_size=24, out_size=40, width_size=32, depth=2)\n" + body


# ---- the adapted model --------------------------------------------------------


def test_at_init_the_adapted_model_equals_the_base(getkey):
    base = eqx.nn.MLP(24, 40, 32, 2, key=getkey())
    adapted = eqxform.compile("where Linear -> lora(rank=4, alpha=16)").apply(base, key=getkey())
    x = jax.random.normal(getkey(), (5, 24))
    assert np.array_equal(jax.vmap(base)(x), jax.vmap(eqxform.resolve(adapted))(x))
    first = adapted.layers[0]
    assert isinstance(first, M.LoRA) and isinstance(first.base.weight, M.Frozen)
    assert first.lora_a.shape == (4, 24) and first.lora_b.shape == (32, 4)
    assert not np.any(first.lora_b)
    # PEFT's kaiming_uniform(a=sqrt(5)): uniform in +-1/sqrt(in).
    bound = 1 / math.sqrt(24)
    assert np.abs(first.lora_a).max() <= bound and np.abs(first.lora_a).max() > 0.8 * bound
    assert float(first.scale.value) == 16 / 4
    # Each layer draws its own A.
    assert not np.allclose(adapted.layers[1].lora_a[:, :24], first.lora_a)


def test_gradients_reach_only_the_factors_and_the_product_is_never_formed(getkey):
    base = eqx.nn.MLP(24, 40, 32, 2, key=getkey())
    adapted = eqxform.compile("where Linear -> lora(rank=4, alpha=8)").apply(base, key=getkey())
    adapted = with_b(adapted, getkey())
    x = jax.random.normal(getkey(), (5, 24))

    def loss(model, x):
        return jnp.sum(jax.vmap(eqxform.resolve(model))(x) ** 2)

    grads = eqx.filter_grad(loss)(adapted, x)
    for layer in grads.layers:
        assert np.any(layer.lora_a) and np.any(layer.lora_b)
        assert not np.any(layer.base.weight.value) and not np.any(layer.base.bias.value)
        assert not np.any(layer.scale.value)
    # The training step's jaxpr computes no (out, in) array: no product `B A`,
    # no sum `W + B A` (the frozen weights' zero gradients are broadcasts).
    params, static = eqx.partition(adapted, eqx.is_array)
    grad = eqx.filter_grad(loss)
    jaxpr = jax.make_jaxpr(lambda p, x: grad(eqx.combine(p, static), x))(params, x)
    weight_shapes = {(32, 24), (32, 32), (40, 32)}

    def produced(jaxpr):
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                yield eqn.primitive.name, tuple(getattr(v.aval, "shape", ()))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from produced(sub)

    made = [
        (name, shape)
        for name, shape in produced(jaxpr.jaxpr)
        if shape in weight_shapes and name not in ("stop_gradient", "broadcast_in_dim")
    ]
    assert made == [], made
    # The same check catches a materialised `W + B A`: a wrapped matrix forms it.
    raw = eqxform.compile("where layers[0].weight -> wrap symmetric").apply(
        eqx.nn.MLP(24, 40, 24, 1, key=getkey()), key=getkey()
    )
    params, static = eqx.partition(raw, eqx.is_array)
    jaxpr = jax.make_jaxpr(lambda p, x: grad(eqx.combine(p, static), x))(params, x)
    assert any(shape == (24, 24) and name == "add" for name, shape in produced(jaxpr.jaxpr))


def test_merged_equals_adapted_and_is_a_plain_linear(getkey):
    base = eqx.nn.MLP(24, 40, 32, 2, key=getkey())
    adapted = eqxform.compile("where Linear -> lora(rank=4, alpha=8)").apply(base, key=getkey())
    adapted = with_b(adapted, getkey())
    merged = eqxform.compile("where ** -> merge").apply(adapted, key=getkey())
    assert all(type(layer) is eqx.nn.Linear for layer in merged.layers)
    assert all(M.is_wrapper(layer.weight) is False for layer in merged.layers)
    x = jax.random.normal(getkey(), (5, 24))
    got, want = jax.vmap(merged)(x), jax.vmap(eqxform.resolve(adapted))(x)
    assert np.allclose(got, want, atol=1e-5) and not np.allclose(want, jax.vmap(base)(x))


def test_plan_counts_the_freezes_a_merge_removes(getkey):
    # A merged model is a model to call: `merge` also removes the user's own
    # `freeze` marks at or under its match (those inside an adapter go with
    # it). `plan` says how many, and says nothing of it where there are none.
    spec = (
        "where ** -> freeze\n"
        "where Attention.qkv -> lora(rank=2)\n"
        "where blocks[0] -> merge\n"
        "where ** -> merge"
    )
    model = RM.TinyViT(depth=3, key=getkey())
    program = eqxform.compile(spec)
    plan = program.plan(model)
    frozen = plan.steps[0].count  # every floating array: 8 outside the blocks, 12 per block
    assert frozen == 8 + 3 * 12
    # Line 3: block 0's arrays but its `qkv`'s two (inside the adapter);
    # line 4: the rest, but the two of each other block's `qkv`.
    assert [s.freezes_removed for s in plan.steps] == [0, 0, 12 - 2, frozen - 12 - 2 * 2]
    text = str(plan).splitlines()
    assert "  merge: 1 module, 10 freezes removed, -129 params" in text
    assert "  merge: 120 nodes, 28 freezes removed, -258 params" in text
    assert [s["freezes_removed"] for s in plan.to_dict()["steps"]] == [0, 0, 10, 28]
    merged = program.apply(model, key=getkey())
    assert not any(
        isinstance(x, M.Frozen)
        for x in jax.tree_util.tree_leaves(merged, is_leaf=lambda x: isinstance(x, M.Frozen))
    )
    # No freeze under the match: the step's line is as it was.
    plain = eqxform.compile("where Linear -> lora(rank=2)\nwhere ** -> merge").plan(
        eqx.nn.MLP(4, 2, 8, 1, key=getkey())
    )
    assert "freeze" not in str(plain) and plain.steps[1].freezes_removed == 0


def test_rank_and_alpha_are_expressions_of_the_match(getkey):
    base = eqx.nn.MLP(24, 40, 64, 2, key=getkey())
    spec = "where Linear -> lora(rank=16 if fan_in >= 64 else 4, alpha=2 * fan_out)"
    adapted = eqxform.compile(spec).apply(base, key=getkey())
    assert [layer.rank for layer in adapted.layers] == [4, 16, 16]
    assert [float(layer.scale.value) for layer in adapted.layers] == [128 / 4, 128 / 16, 80 / 16]


def test_a_linear_weight_adapts_its_module_and_a_raw_matrix_is_wrapped(getkey):
    model = RM.RawHead(key=getkey())
    adapted = eqxform.compile("where w -> lora(rank=2)\nwhere layers[0].weight -> lora").apply(
        model, key=getkey()
    )
    assert isinstance(adapted.w, M.LoRAWeight)
    assert isinstance(adapted.layers[0], M.LoRA) and adapted.layers[0].rank == 8
    adapted = with_b(adapted, getkey(), lambda x: isinstance(x, (M.LoRA, M.LoRAWeight)))
    x = jax.random.normal(getkey(), (4,))
    merged = eqxform.compile("where ** -> merge").apply(adapted, key=getkey())
    assert np.allclose(merged(x), eqxform.resolve(adapted)(x), atol=1e-5)


def test_errors_of_adapter_rules(getkey):
    base = eqx.nn.MLP(24, 40, 32, 2, key=getkey())
    with pytest.raises(SpecError) as e:
        eqxform.compile("where Linear -> lora 8")
    assert codes(e) == {"E180"}
    with pytest.raises(SpecError) as e:
        eqxform.compile("where Linear -> lora(rank=8, alhpa=16)")
    assert codes(e) == {"E106"}
    cases = {
        "where layers[0].bias -> lora": "E220",
        "where Linear -> lora(rank=0)": "E221",
        "where Linear -> lora(rank=fan_in / 64)": "E221",
        'where Linear -> lora(alpha="16")': "E222",
        "where Linear -> lora\nwhere layers[0] -> lora(rank=2)": "E223",
        "where layers[0] -> merge": "E224",
        "where Linear -> ia3(feedforward=1)": "E225",
    }
    for spec, code in cases.items():
        with pytest.raises(SpecError) as e:
            eqxform.compile(spec).apply(base, key=getkey())
        assert codes(e) == {code}, spec


def test_the_formatter_keeps_adapter_calls_and_conditionals():
    text = "where Linear->lora( rank = 16 if fan_in>=1024 else 8 ,alpha=16 ),ia3\n"
    assert format_spec(text) == (
        "where Linear -> lora(rank=16 if fan_in >= 1024 else 8, alpha=16), ia3\n"
    )
    program = eqxform.compile("let r = 4 if 2 > 1 else 8\nwhere Linear -> lora(rank=r)")
    assert program.env["r"] == 4


# ---- stacks and ensembles -------------------------------------------------------


def _slice_of_a_stack(model, spec, get_lora, x, y, forward, getkey):
    """A `lora` rule on layers 0 and 1 of a 4-layer stack: the other layers
    have a zero scale, zero factors that never train, and compute their base."""
    adapted = eqxform.compile(spec).apply(model, key=getkey())
    lora = get_lora(adapted)
    assert isinstance(lora, M.LoRA)
    assert lora.lora_a.value.shape[:2] == (4, 2) and lora.lora_a.layers == (2, 3)
    assert np.array_equal(lora.scale.value, [2.0, 2.0, 0.0, 0.0])
    assert not np.any(lora.lora_a.value[2:]) and np.any(lora.lora_a.value[:2])
    assert np.allclose(forward(adapted, x), forward(model, x), atol=1e-5)

    # Training moves the factors of layers 0 and 1 only.
    def loss(m, x, y):
        return jnp.mean((jax.vmap(lambda xi: forward(m, xi))(x) - y) ** 2)

    program = eqxform.compile(spec + "\noptimizer adam(learning_rate=1e-2)")
    step = eqxform.make_step(loss, eqxform.optimizer(program, adapted), adapted)
    first = step(x[None], y[None])
    last = step(x[None], y[None])
    assert last < first
    trained = get_lora(step.model)
    assert np.any(trained.lora_b.value[:2]) and not np.any(trained.lora_b.value[2:])
    assert not np.any(trained.lora_a.value[2:])
    assert np.array_equal(trained.base.weight.value, lora.base.weight.value)
    # Merged: layers 2 and 3 keep their weights bit for bit.
    merged = eqxform.compile("where ** -> merge").apply(step.model, key=getkey())
    w = get_lora(merged, merged=True).weight
    assert np.array_equal(w[2:], lora.base.weight.value[2:])
    assert not np.allclose(w[:2], lora.base.weight.value[:2])
    assert np.allclose(forward(merged, x), forward(step.model, x), atol=1e-5)


def test_a_slice_of_a_stack_gets_adapters_and_the_other_layers_none(getkey):
    model = models.MLPChain(size=6, count=4, width_size=8, key=getkey())
    spec = "stack mlps scan\nwhere mlps[0:2].layers[0] -> lora(rank=2, alpha=4)"
    x, y = jax.random.normal(getkey(), (6,)), jax.random.normal(getkey(), (6,))

    def get_lora(m, merged=False):
        return m.mlps.layers.layers[0]

    forward = eqx.filter_jit(lambda m, x: eqxform.resolve(m)(x))
    _slice_of_a_stack(model, spec, get_lora, x, y, forward, getkey)


@pytest.mark.slow
def test_a_slice_of_a_looping_transformers_stack(getkey):
    model = RM.LoopingTransformer(depth=4, key=getkey())
    spec = "stack blocks scan\nwhere blocks[0:2].linear1 -> lora(rank=2, alpha=4)"
    x, y = jax.random.normal(getkey(), (6, 5)), jax.random.normal(getkey(), (6, 7))

    def get_lora(m, merged=False):
        return m.blocks.layers.linear1

    forward = eqx.filter_jit(lambda m, x: eqxform.resolve(m)(x, inference=True))
    _slice_of_a_stack(model, spec, get_lora, x, y, forward, getkey)


def test_ensemble_members_draw_their_own_adapters():
    program = eqxform.compile(
        mlp_spec("ensemble 3\nwhere Linear -> lora(rank=16 if fan_in >= 32 else 2)")
    )
    ensemble = program.apply()
    lora = [x for x in jax.tree_util.tree_leaves(ensemble, is_leaf=M.is_adapter) if M.is_adapter(x)]
    assert [x.lora_a.shape for x in lora] == [(3, 2, 24), (3, 16, 32), (3, 16, 32)]
    a = lora[0].lora_a
    assert not np.allclose(a[0], a[1])
    x = jax.random.normal(jax.random.key(0), (24,))
    out = M.evaluate_ensemble(eqxform.resolve(ensemble), x)
    base = eqxform.compile(mlp_spec("ensemble 3")).apply()
    assert np.allclose(out, M.evaluate_ensemble(eqxform.resolve(base), x), atol=1e-6)


# ---- library-shaped models against hand-written LoRA ---------------------------------


class HandLoRA(eqx.Module):
    """LoRA written by hand in plain Equinox, as a user would."""

    linear: eqx.nn.Linear
    a: jax.Array
    b: jax.Array
    scale: float = eqx.field(static=True)

    def __call__(self, x, *, key=None):
        w = jax.lax.stop_gradient(self.linear.weight)
        bias = jax.lax.stop_gradient(self.linear.bias)
        return w @ x + bias + self.scale * (self.b @ (self.a @ x))


def test_tinyvit_qkv_matches_hand_written_lora(getkey):
    model = RM.TinyViT(depth=1, key=getkey())
    adapted = eqxform.compile("where **.attn.qkv -> lora(rank=4, alpha=8)").apply(
        model, key=getkey()
    )
    adapted = with_b(adapted, getkey())
    hand = model
    for i, block in enumerate(adapted.blocks):
        lora = block.attn.qkv
        new = HandLoRA(model.blocks[i].attn.qkv, lora.lora_a, lora.lora_b, 2.0)
        hand = eqx.tree_at(lambda m, i=i: m.blocks[i].attn.qkv, hand, new)
    x = jax.random.normal(getkey(), (3, 8, 8))

    def ours(m):
        return jnp.sum(eqxform.resolve(m)(x, inference=True) ** 2)

    def theirs(m):
        return jnp.sum(m(x, inference=True) ** 2)

    v_ours, g_ours = eqx.filter_jit(eqx.filter_value_and_grad(ours))(adapted)
    v_theirs, g_theirs = eqx.filter_jit(eqx.filter_value_and_grad(theirs))(hand)
    assert np.allclose(v_ours, v_theirs, rtol=1e-5)
    for i in range(len(model.blocks)):
        a, h = g_ours.blocks[i].attn.qkv, g_theirs.blocks[i].attn.qkv
        assert np.allclose(a.lora_a, h.a, atol=1e-5) and np.allclose(a.lora_b, h.b, atol=1e-5)
        # The rest of the model trains as it did: the other Linears' gradients agree.
        assert np.allclose(g_ours.blocks[i].fc1.weight, g_theirs.blocks[i].fc1.weight, atol=1e-5)


class ReadsWeight(eqx.Module):
    """CLIP's attention pattern: `q_proj` is called, `out_proj`'s weight and bias
    are read by the parent (`x @ W.T + b`), as code ported from PyTorch does."""

    q_proj: eqx.nn.Linear
    out_proj: eqx.nn.Linear

    def __init__(self, dim, *, key):
        k1, k2 = jax.random.split(key)
        self.q_proj = eqx.nn.Linear(dim, dim, key=k1)
        self.out_proj = eqx.nn.Linear(dim, dim, key=k2)

    def __call__(self, x):
        h = jax.nn.gelu(jax.vmap(self.q_proj)(x))
        return h @ self.out_proj.weight.T + self.out_proj.bias


class HandWeightLoRA(eqx.Module):
    """Hand-written LoRA for a parent that reads `.weight`: the adapted matrix."""

    linear: eqx.nn.Linear
    a: jax.Array
    b: jax.Array
    scale: float = eqx.field(static=True)

    @property
    def weight(self):
        w = jax.lax.stop_gradient(self.linear.weight)
        return w + self.scale * (self.b @ self.a)

    @property
    def bias(self):
        return jax.lax.stop_gradient(self.linear.bias)


def test_lora_where_the_parent_reads_the_weight_matches_hand_written_lora(getkey):
    model = ReadsWeight(8, key=getkey())
    program = eqxform.compile("input f32[5,8]\nwhere Linear -> lora(rank=2, alpha=4)")
    adapted = with_b(program.apply(model, key=getkey()), getkey())
    hand = eqx.tree_at(
        lambda m: m.out_proj,
        model,
        HandWeightLoRA(model.out_proj, adapted.out_proj.lora_a, adapted.out_proj.lora_b, 2.0),
    )
    hand = eqx.tree_at(
        lambda m: m.q_proj,
        hand,
        HandLoRA(model.q_proj, adapted.q_proj.lora_a, adapted.q_proj.lora_b, 2.0),
    )
    x = jax.random.normal(getkey(), (5, 8))

    def ours(m):
        return jnp.sum(eqxform.resolve(m)(x) ** 2)

    def theirs(m):
        return jnp.sum(m(x) ** 2)

    v_ours, g_ours = eqx.filter_value_and_grad(ours)(adapted)
    v_theirs, g_theirs = eqx.filter_value_and_grad(theirs)(hand)
    assert np.allclose(v_ours, v_theirs, rtol=1e-5)
    for name in ("q_proj", "out_proj"):
        a, h = getattr(g_ours, name), getattr(g_theirs, name)
        assert np.allclose(a.lora_a, h.a, atol=1e-5) and np.allclose(a.lora_b, h.b, atol=1e-5)
        assert np.abs(np.asarray(a.lora_b)).max() > 0
        # No gradient reaches the frozen base.
        assert not np.any(np.asarray(eqxform.resolve(a.base).weight))
    # Merged, it is the same function of a plain model.
    merged = eqxform.merge(adapted)
    assert isinstance(merged.out_proj, eqx.nn.Linear)
    assert np.allclose(eqxform.resolve(merged)(x), eqxform.resolve(adapted)(x), atol=1e-5)
    # The plan notes the cost where the matrix is formed (out_proj), not where
    # the module is called (q_proj).
    [note] = [d for d in program.plan(model).diagnostics if d.code == "I221"]
    assert note.severity == "note" and (note.span.line, note.span.column) == (2, 17)
    assert "`out_proj`" in note.message and "`q_proj`" not in note.message
    assert "(64 numbers in all)" in note.message
    # The attributes a parent may read of a `Linear`.
    lora = adapted.out_proj
    assert (lora.in_features, lora.out_features, lora.use_bias) == (8, 8, True)


def test_ia3_where_the_parent_reads_the_weight(getkey):
    model = ReadsWeight(8, key=getkey())
    adapted = eqxform.compile("where out_proj -> ia3").apply(model, key=getkey())
    vector = jax.random.uniform(getkey(), (8,), minval=0.5, maxval=1.5)
    adapted = eqx.tree_at(lambda m: m.out_proj.ia3, adapted, vector)
    x = jax.random.normal(getkey(), (5, 8))
    expected = model(x) * vector  # (W x + b) scaled per output
    assert np.allclose(eqxform.resolve(adapted)(x), expected, atol=1e-5)
    assert np.allclose(eqxform.merge(adapted)(x), expected, atol=1e-5)


# ---- optimiser --------------------------------------------------------------------


def test_the_optimizer_keeps_state_for_the_adapters_only(getkey):
    text = mlp_spec(
        "optimizer adam(learning_rate=1e-3)\nwhere ** -> freeze\nwhere Linear -> lora(rank=4)"
    )
    program = eqxform.compile(text)
    adapted = program.apply()
    state = eqxform.optimizer(program, adapted).init(eqx.filter(adapted, eqx.is_inexact_array))
    arrays = [x for x in jax.tree_util.tree_leaves(state) if eqx.is_array(x)]
    floats = sum(x.size * x.dtype.itemsize for x in arrays if x.dtype == jnp.float32)
    adapter_params = sum(4 * (i + o) for i, o in ((24, 32), (32, 32), (32, 40)))
    assert floats == 2 * 4 * adapter_params  # adam's two moments, nothing for the base
    assert state_bytes(program, adapted) == sum(x.size * x.dtype.itemsize for x in arrays)
    plan = program.plan()
    assert plan.trainable == adapter_params
    assert plan.frozen == eqxform.compile(mlp_spec("")).plan().params_after + 3


# ---- (IA)^3 -------------------------------------------------------------------------


def test_ia3_starts_at_the_base_trains_a_vector_and_merges(getkey):
    base = eqx.nn.MLP(24, 40, 32, 2, key=getkey())
    spec = "where layers[0] | layers[2] -> ia3\nwhere layers[1] -> ia3(feedforward=true)"
    adapted = eqxform.compile(spec).apply(base, key=getkey())
    assert adapted.layers[0].ia3.shape == (32,) and adapted.layers[1].ia3.shape == (32,)
    x = jax.random.normal(getkey(), (5, 24))
    assert np.array_equal(jax.vmap(base)(x), jax.vmap(eqxform.resolve(adapted))(x))
    for i in range(3):
        v = adapted.layers[i].ia3
        adapted = eqx.tree_at(
            lambda m, i=i: m.layers[i].ia3, adapted, v + 0.3 * jnp.arange(v.size) / v.size
        )
    merged = eqxform.compile("where ** -> merge").apply(adapted, key=getkey())
    want = jax.vmap(eqxform.resolve(adapted))(x)
    assert np.allclose(jax.vmap(merged)(x), want, atol=1e-5)
    assert not np.allclose(want, jax.vmap(base)(x))


# ---- adapter files ------------------------------------------------------------------------


def test_adapter_files_round_trip_and_refuse_another_base(tmp_path, getkey):
    base = eqxform.new("MLP(in_size=24, out_size=40, width_size=32, depth=2)", seed=0)
    program = eqxform.compile("where Linear -> lora(rank=4, alpha=8)")
    applied = program.apply(base)
    # Trained adapters (B != 0), as a training step would give them back (the
    # model shares its other arrays with `applied`, whose recipe it keeps).
    adapted = eqx.tree_at(lambda m: m.layers[1].lora_b, applied, jnp.ones((32, 4)))
    path = tmp_path / "adapters.eqx"
    eqxform.save(path, adapted, adapters_only=True)
    full = tmp_path / "full.eqx"
    eqxform.save(full, adapted)
    assert path.stat().st_size < full.stat().st_size / 3
    loaded = eqxform.load(path, base=base)
    x = jax.random.normal(getkey(), (24,))
    assert np.array_equal(eqxform.resolve(loaded)(x), eqxform.resolve(adapted)(x))
    other = eqxform.new("MLP(in_size=24, out_size=40, width_size=32, depth=2)", seed=1)
    with pytest.raises(ModelFileError) as e:
        eqxform.load(path, base=other)
    assert codes(e) == {"E330"} and "another base" in str(e.value)
    with pytest.raises(ModelFileError) as e:
        eqxform.load(path)
    assert codes(e) == {"E332"}
    with pytest.raises(ModelFileError) as e:
        eqxform.load(full, base=base)
    assert codes(e) == {"E331"}
    # A model eqxform did not build: the spec is given.
    plain = eqx.nn.MLP(24, 40, 32, 2, key=getkey())
    adapted = with_b(program.apply(plain, key=getkey()), getkey())
    eqxform.save(path, adapted, adapters_only=True, spec=program)
    loaded = eqxform.load(path, base=plain)
    assert np.array_equal(eqxform.resolve(loaded)(x), eqxform.resolve(adapted)(x))


def test_cli_adapters_only_then_merge(tmp_path):
    spec = tmp_path / "lora.eqx"
    spec.write_text(
        mlp_spec("optimizer adam(learning_rate=1e-3)\nwhere Linear -> lora(rank=4, alpha=8)\n")
    )
    runner = CliRunner()
    result = runner.invoke(main, ["plan", str(spec)])
    assert result.exit_code == 0, result.output
    assert "trainable: " in result.output and "optimizer state: " in result.output
    base, adapters, merged = (str(tmp_path / n) for n in ("base.eqx", "ad.eqx", "merged.eqx"))
    args = ["new", "MLP(in_size=24, out_size=40, width_size=32, depth=2)", "-o", base]
    assert runner.invoke(main, args).exit_code == 0
    result = runner.invoke(main, ["apply", str(spec), base, "-o", adapters, "--adapters-only"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["merge", adapters, base, "-o", merged])
    assert result.exit_code == 0, result.output
    model = eqxform.load(merged)
    assert type(model.layers[0]) is eqx.nn.Linear
    # B is zero in a fresh adapter: the merged model is the base.
    x = jnp.ones(24)
    assert np.allclose(model(x), eqxform.load(base)(x))
    # `train` trains the adapters of an adapted model, and the base stays.
    trained = str(tmp_path / "trained.eqx")
    args = ["train", str(spec), base, "-o", trained, "--steps", "3", "--batch-size", "4"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    model = eqxform.load(trained)
    assert np.any(model.layers[0].lora_b)
    assert np.array_equal(model.layers[0].base.weight.value, eqxform.load(base).layers[0].weight)
    other = str(tmp_path / "other.eqx")
    args = ["new", "MLP(in_size=24, out_size=40, width_size=32, depth=2)", "-o", other]
    assert runner.invoke(main, args + ["--seed", "3"]).exit_code == 0
    result = runner.invoke(main, ["merge", adapters, other, "-o", merged, "--force"])
    assert result.exit_code == 1 and "E330" in result.output


# ---- adapter files: keys, heads trained beside, training, edits ---------------------------


def _rewrite_record(path, change):
    """The adapter file at `path` with its record changed by `change(record)`
    (the tensors and everything else kept), as an editor would leave it."""
    import json

    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata())
    content = json.loads(metadata["eqxform"])
    change(content["adapters"])
    metadata["eqxform"] = json.dumps(content, sort_keys=True)
    save_file(tensors, str(path), metadata=metadata)


HEAD_SPEC = (
    "where layers[:-1] -> lora(rank=4, alpha=8)\n"
    "where layers[-1] -> replace Linear(in_features=32, out_features=10)\n"
)


def test_an_adapter_file_of_a_program_applied_with_a_key_loads_on_its_base(tmp_path, getkey):
    base = eqxform.new("MLP(in_size=24, out_size=40, width_size=32, depth=2)", seed=0)
    program = eqxform.compile(HEAD_SPEC)
    # The key draws the adapters' A and the new head: neither can be replayed
    # from the spec's seed, so the file carries both.
    adapted = program.apply(base, key=jax.random.key(7))
    trained = with_b(adapted, getkey())
    trained = eqx.tree_at(lambda m: m.layers[-1].weight, trained, trained.layers[-1].weight + 1)
    path = tmp_path / "adapters.eqx"
    eqxform.save(path, trained, adapters_only=True, spec=program)
    loaded = eqxform.load(path, base=base)
    x = jax.random.normal(getkey(), (24,))
    assert np.array_equal(eqxform.resolve(loaded)(x), eqxform.resolve(trained)(x))
    assert np.array_equal(loaded.layers[-1].weight, trained.layers[-1].weight)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        names = set(f.keys())
    # The adapters and the head; never the frozen base weights.
    assert {"layers.2.weight", "layers.2.bias", "layers.0.lora_a", "layers.1.lora_b"} <= names
    assert not any(n.endswith("base.weight.value") for n in names)
    # The same file refuses another base, naming the frozen tensors that differ.
    other = eqxform.new("MLP(in_size=24, out_size=40, width_size=32, depth=2)", seed=1)
    with pytest.raises(ModelFileError) as e:
        eqxform.load(path, base=other)
    assert codes(e) == {"E330"}
    d = e.value.diagnostics[0]
    assert "4 of its 4 frozen tensors differ" in d.message
    assert "`layers.0.bias`, `layers.0.weight`, `layers.1.bias`, `layers.1.weight`" in d.notes[0]
    # A base that differs only where the file carries its own arrays (the old
    # head, replaced) is the right base.
    new_head = eqx.tree_at(lambda m: m.layers[-1].weight, base, base.layers[-1].weight * 3)
    reloaded = eqxform.load(path, base=new_head)
    assert np.array_equal(eqxform.resolve(reloaded)(x), eqxform.resolve(trained)(x))


def test_trained_layers_beside_the_adapters_are_saved_with_them(tmp_path, getkey):
    # Only the first layer is adapted; the others stay trainable and train.
    base = eqx.nn.MLP(24, 40, 32, 2, key=getkey())
    program = eqxform.compile(
        "optimizer adam(learning_rate=1e-2)\nwhere layers[0] -> lora(rank=4, alpha=8)"
    )
    adapted = program.apply(base, key=getkey())
    opt = eqxform.optimizer(program, adapted)
    step = eqxform.make_step(lambda m, x, y: jnp.mean((jax.vmap(m)(x) - y) ** 2), opt, adapted)
    x, y = jax.random.normal(getkey(), (16, 24)), jax.random.normal(getkey(), (16, 40))
    for _ in range(3):
        step(x, y)
    trained = step.model
    assert not np.array_equal(trained.layers[1].weight, base.layers[1].weight)
    path = tmp_path / "adapters.eqx"
    eqxform.save(path, trained, adapters_only=True, spec=program)
    loaded = eqxform.load(path, base=base)
    assert np.array_equal(
        jax.vmap(eqxform.resolve(loaded))(x), jax.vmap(eqxform.resolve(trained))(x)
    )
    merged = eqxform.compile("where ** -> merge").apply(loaded)
    assert np.allclose(jax.vmap(merged)(x), jax.vmap(eqxform.resolve(trained))(x), atol=1e-5)


def test_cli_train_writes_an_adapter_file_that_merges_onto_its_base(tmp_path):
    spec = tmp_path / "lora.eqx"
    spec.write_text(
        mlp_spec(
            "optimizer adam(learning_rate=1e-2)\nwhere layers[:-1] -> lora(rank=4, alpha=8)\n"
            "where layers[-1] -> replace Linear(in_features=32, out_features=40)\n"
        )
    )
    runner = CliRunner()
    base, adapters, full, merged = (
        str(tmp_path / n) for n in ("base.eqx", "ad.eqx", "full.eqx", "merged.eqx")
    )
    args = ["new", "MLP(in_size=24, out_size=40, width_size=32, depth=2)", "-o", base]
    assert runner.invoke(main, args).exit_code == 0
    common = ["train", str(spec), base, "--steps", "5", "--batch-size", "8", "--seed", "3"]
    result = runner.invoke(main, common + ["-o", adapters, "--adapters-only"])
    assert result.exit_code == 0, result.output
    assert "trained 5 steps" in result.output
    result = runner.invoke(main, common + ["-o", full])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["merge", adapters, base, "-o", merged])
    assert result.exit_code == 0, result.output
    # The merged adapter file computes what the whole trained model computes.
    x = jax.random.normal(jax.random.key(0), (8, 24))
    want = jax.vmap(eqxform.resolve(eqxform.load(full)))(x)
    assert np.allclose(jax.vmap(eqxform.load(merged))(x), want, atol=1e-5)
    assert os.path.getsize(adapters) < os.path.getsize(full)
    other = str(tmp_path / "other.eqx")
    args = ["new", "MLP(in_size=24, out_size=40, width_size=32, depth=2)", "-o", other]
    assert runner.invoke(main, args + ["--seed", "5"]).exit_code == 0
    result = runner.invoke(main, ["merge", adapters, other, "-o", merged, "--force"])
    assert result.exit_code == 1 and "E330" in result.output
    # A spec without adapters: refused before any training.
    plain = tmp_path / "plain.eqx"
    plain.write_text(mlp_spec("optimizer adam(learning_rate=1e-2)\n"))
    result = runner.invoke(
        main, ["train", str(plain), "-o", str(tmp_path / "p.eqx"), "--adapters-only"]
    )
    assert result.exit_code == 2 and "E460" in result.output and "step 1/" not in result.output
    assert not (tmp_path / "p.eqx").exists()


def _adapter_file(tmp_path, getkey):
    base = eqxform.new("MLP(in_size=24, out_size=40, width_size=32, depth=2)", seed=0)
    program = eqxform.compile("where Linear -> lora(rank=4, alpha=8)")
    adapted = with_b(program.apply(base), getkey())
    path = tmp_path / "adapters.eqx"
    eqxform.save(path, adapted, adapters_only=True, spec=program)
    return base, path


def test_an_adapter_file_whose_spec_was_edited_is_refused(tmp_path, getkey):
    base, path = _adapter_file(tmp_path, getkey)
    assert eqxform.load(path, base=base) is not None

    def swap_activation(record):
        record["specs"][0]["text"] += "\nwhere activation -> replace gelu\n"

    _rewrite_record(path, swap_activation)
    with pytest.raises(ModelFileError) as e:
        eqxform.load(path, base=base)
    assert codes(e) == {"E333"} and "was changed after it was written" in str(e.value)
    base_file, merged = str(tmp_path / "base.eqx"), str(tmp_path / "merged.eqx")
    eqxform.save(base_file, base)
    result = CliRunner().invoke(main, ["merge", str(path), base_file, "-o", merged])
    assert result.exit_code == 1 and "E333" in result.output and "Traceback" not in result.output
    assert not os.path.exists(merged)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["specs"][0].update(seed=r["specs"][0]["seed"] + 1),
        lambda r: r["specs"][0]["params"].update(rank=2),
        lambda r: r.update(fingerprint="0" * 32),
        lambda r: r["base"].pop(sorted(r["base"])[0]),
        lambda r: r.pop("digest"),
    ],
)
def test_any_edit_of_an_adapter_record_is_refused(tmp_path, getkey, change):
    base, path = _adapter_file(tmp_path, getkey)
    _rewrite_record(path, change)
    with pytest.raises(ModelFileError) as e:
        eqxform.load(path, base=base)
    assert codes(e) == {"E333"}


def test_a_spec_that_replays_into_another_model_is_refused_even_with_its_digest_redone(
    tmp_path, getkey
):
    from eqxform._recipes import _record_digest

    base, path = _adapter_file(tmp_path, getkey)
    from safetensors.numpy import load_file

    tensors = load_file(str(path))

    def forge(record):
        record["specs"][0]["text"] += "\nwhere activation -> replace gelu\n"
        record["digest"] = _record_digest(record, tensors)

    _rewrite_record(path, forge)
    with pytest.raises(ModelFileError) as e:
        eqxform.load(path, base=base)
    assert codes(e) == {"E334"} and "other module types, functions" in str(e.value)


def test_an_adapter_file_loads_in_another_process(tmp_path, getkey):
    import subprocess
    import sys
    from pathlib import Path

    base, path = _adapter_file(tmp_path, getkey)
    base_file, merged = tmp_path / "base.eqx", tmp_path / "merged.eqx"
    eqxform.save(base_file, base)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, "-m", "eqxform", "merge", str(path), str(base_file), "-o", str(merged)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    x = jnp.ones(24)
    adapted = eqxform.load(path, base=base)
    assert np.allclose(eqxform.load(merged)(x), eqxform.resolve(adapted)(x), atol=1e-5)


def test_the_state_trained_beside_the_adapters_of_a_stateful_model_is_saved(tmp_path, getkey):
    from eqxform._runtime._train import make_loss

    model, state = RM.make_tiny_resnet(3, 8, 2, 4, key=getkey())
    program = eqxform.compile(
        "optimizer adam(learning_rate=1e-2)\nwhere ** -> freeze\nwhere fc -> lora(rank=2, alpha=4)"
    )
    adapted, adapted_state = program.apply((model, state), key=getkey())
    step = eqxform.make_step(
        make_loss("mse", stateful=True),
        eqxform.optimizer(program, adapted),
        adapted,
        state=adapted_state,
    )
    x, y = jax.random.normal(getkey(), (8, 3, 8, 8)), jax.random.normal(getkey(), (8, 4))
    for _ in range(3):
        step(x, y)
    trained = step.result
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(trained[1]), jax.tree_util.tree_leaves(state))
    ]
    assert any(changed)  # the running statistics moved
    path = tmp_path / "adapters.eqx"
    eqxform.save(path, trained, adapters_only=True, spec=program)
    loaded_model, loaded_state = eqxform.load(path, base=(model, state))
    for a, b in zip(jax.tree_util.tree_leaves(loaded_state), jax.tree_util.tree_leaves(trained[1])):
        assert np.array_equal(a, b)
    run = lambda m, s: jax.vmap(  # noqa: E731
        lambda xi: eqxform.resolve(m)(xi, s)[0], axis_name="batch"
    )(x)
    assert np.array_equal(run(loaded_model, loaded_state), run(*trained))


def test_frozen_tensors_a_spec_draws_with_a_key_are_named_as_what_cannot_be_replayed(
    tmp_path, getkey
):
    base = eqxform.new("MLP(in_size=24, out_size=40, width_size=32, depth=2)", seed=0)
    program = eqxform.compile(
        "where layers[0].weight -> init normal(stddev=0.1)\n"
        "where layers[0] -> freeze\n"
        "where layers[1:] -> lora(rank=4, alpha=8)\n"
    )
    path = tmp_path / "adapters.eqx"
    # Applied from the spec's seed, the replay draws the same frozen weight.
    eqxform.save(path, with_b(program.apply(base), getkey()), adapters_only=True, spec=program)
    assert eqxform.load(path, base=base) is not None
    # Applied with a key of its own, it cannot: refused, naming the tensor.
    adapted = with_b(program.apply(base, key=jax.random.key(9)), getkey())
    eqxform.save(path, adapted, adapters_only=True, spec=program)
    with pytest.raises(ModelFileError) as e:
        eqxform.load(path, base=base)
    (d,) = e.value.diagnostics
    assert (
        d.code == "E330"
        and "its specs draw frozen tensors at random (`layers.0.weight`)" in d.message
    )
    assert "`seed=` (not `key=`)" in d.help


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda r: r.update(base=[1, 2]), "`adapters.base` is a list; a map is expected"),
        (lambda r: r.update(trained="all"), "`adapters.trained` is a string"),
        (lambda r: r.pop("fingerprint"), "`adapters.fingerprint` is null; a string"),
        (lambda r: r["specs"][0].update(text=7), "`adapters.specs[0].text` is the number `7`"),
    ],
)
def test_a_malformed_adapter_record_is_a_located_diagnostic(tmp_path, getkey, change, words):
    base, path = _adapter_file(tmp_path, getkey)
    _rewrite_record(path, change)
    with pytest.raises(ModelFileError) as e:
        eqxform.load(path, base=base)
    (d,) = e.value.diagnostics
    assert d.code == "E315" and words in d.message and "adapter record" in d.message
