"""Issue 16's jobs in combination on the published libraries (the `test` extra),
as a researcher chains them: init by rule, stack, freeze of a slice, `lora` on
the stacked blocks, training, a file loaded in a fresh process; an ensemble of
the library's constructor frozen, cast and trained, then picked; `unstack` and
`merge` after `lora`; `input` lines that find a broken rule at its line. Each
result is compared with the hand-written Equinox code it replaces. Small
configs; a library that is not installed is skipped.
"""

import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
import realmodels as R

import eqxform
from eqxform._runtime import _train

ROOT = os.path.dirname(os.path.dirname(eqxform.__file__))


def arrays(tree):
    return [np.asarray(x, np.float32) for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]


def same(a, b, atol=0.0):
    la, lb = arrays(a), arrays(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and np.allclose(x, y, atol=atol, rtol=0) for x, y in zip(la, lb)
    )


def is_lora(x):
    return isinstance(x, eqxform.LoRA)


def unwrap(x):
    return x.value if isinstance(x, eqxform.Frozen) else x


def with_random_b(model, key):
    """Every LoRA's B drawn at random (B = 0 would make every comparison pass)."""
    loras = [x for x in jax.tree_util.tree_leaves(model, is_leaf=is_lora) if is_lora(x)]
    keys = jr.split(key, len(loras))
    where = lambda m: [  # noqa: E731
        x.lora_b for x in jax.tree_util.tree_leaves(m, is_leaf=is_lora) if is_lora(x)
    ]
    return eqx.tree_at(
        where,
        model,
        [
            type(x.lora_b)(0.1 * jr.normal(k, unwrap(x.lora_b).shape), *_rest(x.lora_b))
            if isinstance(x.lora_b, eqxform.Frozen)
            else 0.1 * jr.normal(k, x.lora_b.shape, x.lora_b.dtype)
            for k, x in zip(keys, loras)
        ],
    )


def _rest(frozen):
    return (frozen.layers, frozen.axis)


def shell(*args, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-m", "eqxform", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


# ---- equimo: a ViT of 4 blocks ---------------------------------------------------------

IMAGE = jr.normal(jr.key(7), (3, 16, 16))
VIT = dict(img_size=16, in_channels=3, dim=32, patch_size=8, num_heads=2, num_classes=4)


@pytest.fixture(scope="module")
def em():
    return pytest.importorskip("equimo.models")


@pytest.fixture(scope="module")
def vit(em):
    return eqxform.new(em.VisionTransformer, depths=[4], **VIT)


def run_vit(model, x=IMAGE):
    return eqxform.resolve(model)(x, key=jr.key(0), inference=True)


COMBO = (
    "optimizer adam(learning_rate=1e-2)\n"
    "input f32[3,16,16]\n"
    "where Linear.bias -> init zeros\n"
    "stack blocks[0].blocks scan\n"
    "where blocks[0].blocks[0:2] -> freeze\n"
    "where blocks[0].blocks.attn.qkv -> lora(rank=2, alpha=4)\n"
)


class HandLoRA(eqx.Module):
    """A hand-written LoRA: `W x + b + s B A x`."""

    weight: jax.Array
    bias: jax.Array
    a: jax.Array
    b: jax.Array
    scale: float

    def __call__(self, x, *, key=None):
        return self.weight @ x + self.bias + self.scale * (self.b @ (self.a @ x))


@pytest.mark.slow  # CI time: the behaviours it combines have fast tests of their own
def test_equimo_init_stack_freeze_of_a_slice_and_lora_train_as_hand_written(vit):
    program = eqxform.compile(COMBO)
    summary = program.plan(vit)
    assert (summary.params_before, summary.params_after) == (57_508, 58_536)
    # Layers 0 and 1 frozen (their adapters, added after, train), the base of
    # every qkv frozen, the four scales: 2 * 12,704 + 2 * 3,168 + 4.
    assert summary.trainable == 58_536 - 31_748
    model = program.apply(vit, key=jr.key(1))
    stack = model.blocks[0].blocks
    assert isinstance(stack, eqxform.Stacked)
    y = jnp.arange(4.0)

    def loss(m, x, y):
        return jnp.mean((m(x, key=jr.key(0), inference=True) - y) ** 2)

    step = eqxform.make_step(loss, eqxform.optimizer(program, model), model)
    ours = [float(step(IMAGE, y)) for _ in range(3)]

    # By hand: zero biases, a LoRA per block (A as drawn, B = 0), Adam on
    # everything but blocks 0 and 1 and the qkv bases.
    lora = stack.layers.attn.qkv
    a = unwrap(lora.lora_a)
    assert not np.any(np.asarray(unwrap(lora.lora_b)))
    hand = eqx.tree_at(
        lambda m: [lin.bias for lin in _linears(m)],
        vit,
        replace_fn=jnp.zeros_like,
    )
    hand = eqx.tree_at(
        lambda m: [blk.attn.qkv for blk in m.blocks[0].blocks],
        hand,
        [
            HandLoRA(blk.attn.qkv.weight, blk.attn.qkv.bias, a[i], jnp.zeros((96, 2)), 2.0)
            for i, blk in enumerate(hand.blocks[0].blocks)
        ],
    )
    params, static = eqx.partition(hand, eqx.is_inexact_array)
    frozen = jax.tree_util.tree_map(lambda _: False, params)
    frozen = eqx.tree_at(
        lambda p: [p.blocks[0].blocks[0], p.blocks[0].blocks[1]],
        frozen,
        replace_fn=lambda t: jax.tree_util.tree_map(lambda _: True, t),
    )
    # The adapters came after the `freeze` line: theirs train in every layer.
    frozen = eqx.tree_at(
        lambda p: [x for blk in p.blocks[0].blocks for x in (blk.attn.qkv.a, blk.attn.qkv.b)],
        frozen,
        replace_fn=lambda _: False,
    )
    frozen = eqx.tree_at(
        lambda p: [
            x for blk in p.blocks[0].blocks[2:] for x in (blk.attn.qkv.weight, blk.attn.qkv.bias)
        ],
        frozen,
        replace_fn=lambda _: True,
    )
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def hand_step(params, state):
        value, grads = jax.value_and_grad(lambda p: loss(eqx.combine(p, static), IMAGE, y))(params)
        grads = jax.tree_util.tree_map(lambda g, f: jnp.zeros_like(g) if f else g, grads, frozen)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    theirs = []
    for _ in range(3):
        params, state, value = hand_step(params, state)
        theirs.append(float(value))
    hand = eqx.combine(params, static)
    assert np.allclose(ours, theirs, rtol=1e-5) and ours[-1] < ours[0]
    trained = step.model.blocks[0].blocks.layers.attn.qkv
    for i, blk in enumerate(hand.blocks[0].blocks):
        assert np.allclose(unwrap(trained.lora_b)[i], blk.attn.qkv.b, atol=1e-5)
        assert np.allclose(unwrap(trained.base.weight)[i], blk.attn.qkv.weight)
    assert np.allclose(run_vit(step.model), hand(IMAGE, key=jr.key(0), inference=True), atol=1e-5)


def _linears(m):
    is_linear = lambda x: isinstance(x, eqx.nn.Linear)  # noqa: E731
    return [x for x in jax.tree_util.tree_leaves(m, is_leaf=is_linear) if is_linear(x)]


@pytest.mark.slow
def test_equimo_combination_file_loads_in_a_fresh_process_and_plans_from_the_shell(vit, tmp_path):
    model = eqxform.compile(COMBO).apply(vit, key=jr.key(1))
    model = with_random_b(model, jr.key(2))
    eqxform.save(tmp_path / "tuned.eqx", model)
    np.save(tmp_path / "expected.npy", np.asarray(run_vit(model)))
    code = (
        "import eqxform, jax.random as jr, numpy as np\n"
        "m = eqxform.load('tuned.eqx', allow=['equimo'])\n"
        "x = jr.normal(jr.key(7), (3, 16, 16))\n"
        "out = eqxform.resolve(m)(x, key=jr.key(0), inference=True)\n"
        "print(type(m.blocks[0].blocks).__name__)\n"
        "print(float(np.abs(np.asarray(out) - np.load('expected.npy')).max()))\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Stacked", "0.0"]
    # The loaded file's plan: freezing the other two layers leaves their
    # adapters trainable only in layers 0 and 1 (the freeze came before them).
    (tmp_path / "more.eqx").write_text(
        "input f32[3,16,16]\nwhere blocks[0].blocks[2:4] -> freeze\n"
    )
    done = shell("plan", "more.eqx", "tuned.eqx", "--allow", "equimo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "blocks[0].blocks.attn.qkv.lora_b (layers 2,3)" in done.stdout
    # One scale per layer: its shape is the layer axis alone.
    assert "Frozen(f32[layer:4])" in done.stdout and "layer:4, ]" not in done.stdout
    assert "trainable: 7,204 (frozen: 51,332)" in done.stdout
    assert "output: f32[4]" in done.stdout


@pytest.mark.slow  # CI time: the behaviours it combines have fast tests of their own
def test_equimo_ensemble_of_its_constructor_frozen_cast_and_trained_as_a_hand_written_vmap(
    em,
):
    def make(key):
        return em.VisionTransformer(depths=[2], key=key, **VIT)

    program = eqxform.compile(
        "optimizer sgd(learning_rate=1e-1)\n"
        "input bf16[3,16,16]\n"
        "ensemble 3\n"
        "where blocks -> freeze\n"
        "where ** -> cast bfloat16\n"
    )
    ensemble = program.apply(make, key=jr.key(1))
    x = IMAGE.astype(jnp.bfloat16)
    y = jnp.arange(4.0)
    members = [eqxform.resolve(ensemble.member(i)) for i in range(3)]
    assert {x.dtype for m in members for x in jax.tree_util.tree_leaves(m) if eqx.is_array(x)} == {
        jnp.dtype(jnp.bfloat16)
    }
    # Members are the library's own draws, each its own.
    assert not np.allclose(arrays(members[0].head)[0], arrays(members[1].head)[0])

    def loss(m, x, y):
        out = m(x, key=jr.key(0), inference=True).astype(jnp.float32)
        return jnp.sum(jnp.mean((out - y) ** 2, axis=-1))

    step = eqxform.make_step(loss, eqxform.optimizer(program, ensemble), ensemble)
    ours = [float(step(x, y)) for _ in range(3)]
    # By hand: the members' arrays stacked, a vmapped gradient, SGD in bfloat16.
    static = eqx.partition(members[0], eqx.is_inexact_array)[1]
    params = jax.tree_util.tree_map(
        lambda *a: jnp.stack(a), *[eqx.filter(m, eqx.is_inexact_array) for m in members]
    )

    def member_loss(p):
        m = eqx.combine(p, static)
        m = eqx.tree_at(lambda m: m.blocks, m, jax.lax.stop_gradient(m.blocks))
        return jnp.mean((m(x, key=jr.key(0), inference=True).astype(jnp.float32) - y) ** 2)

    @jax.jit
    def hand_step(params):
        values, grads = jax.vmap(jax.value_and_grad(member_loss))(params)
        new = jax.tree_util.tree_map(lambda p, g: p - jnp.asarray(0.1, p.dtype) * g, params, grads)
        return new, values.sum()

    theirs = []
    for _ in range(3):
        params, value = hand_step(params)
        theirs.append(float(value))
    assert ours == theirs and ours[-1] < ours[0]
    for i in range(3):
        picked = eqxform.resolve(step.model.member(i))
        assert same(picked, jax.tree_util.tree_map(lambda a: a[i], params))
        assert same(picked.blocks, members[i].blocks)  # frozen


@pytest.mark.slow
def test_equimo_ensemble_from_the_shell_trains_and_picks_a_member(tmp_path):
    pytest.importorskip("equimo")
    (tmp_path / "ens.eqx").write_text(
        "model equimo.models.vit:VisionTransformer(img_size=16, in_channels=3, dim=32, "
        "patch_size=8, num_heads=2, depths=[2], num_classes=4)\n"
        "input bf16[3,16,16]\nensemble 3\nwhere blocks -> freeze\nwhere ** -> cast bfloat16\n"
    )
    (tmp_path / "opt.eqx").write_text("optimizer sgd(learning_rate=1e-1)\ninput bf16[3,16,16]\n")
    done = shell("apply", "ens.eqx", "-o", "e.eqx", "--allow", "equimo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = shell(
        "train", "opt.eqx", "e.eqx", "--steps", "2", "--batch-size", "4", "-o", "t.eqx",
        "--allow", "equimo", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "trained 2 steps" in done.stdout
    done = shell("pick", "t.eqx", "--member", "1", "-o", "one.eqx", "--allow", "equimo",
                 cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    trained = eqxform.load(tmp_path / "t.eqx", allow=["equimo"])
    one = eqxform.load(tmp_path / "one.eqx", allow=["equimo"])
    assert same(eqxform.resolve(one), eqxform.resolve(trained.member(1)))
    assert type(one).__name__ == "VisionTransformer"
    x = IMAGE.astype(jnp.bfloat16)
    assert np.array_equal(
        eqxform.resolve(one)(x, key=jr.key(0), inference=True),
        eqxform.resolve(trained)(x, key=jr.key(0), inference=True)[1],
    )


def test_equimo_cast_under_an_f32_input_line_says_to_declare_the_new_dtype(em):
    def make(key):
        return em.VisionTransformer(depths=[2], key=key, **VIT)

    program = eqxform.compile(
        "input f32[3,16,16]\nensemble 3\nwhere blocks -> freeze\nwhere ** -> cast bfloat16\n"
    )
    with pytest.raises(eqxform.SpecError) as info:
        program.apply(make, key=jr.key(1))
    [d] = info.value.diagnostics
    assert d.code == "E207" and d.span.line == 4
    assert "declare the input in the new dtype (`input bf16[3,16,16]`)" in d.help
    assert "declares `f32[3,16,16]`" in d.help


def test_train_feeds_float_rows_to_a_model_cast_to_bfloat16_in_its_dtype(vit):
    model = eqxform.compile("where ** -> cast bfloat16").apply(vit)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 16, 16)).astype(np.float32)
    y = rng.normal(size=(4, 4)).astype(np.float32)
    # An `.npz` holds float32 rows; they take the model's dtype, as a
    # hand-written loop casts its batches.
    rows = _train.in_model_dtype(model, x)
    assert rows.dtype == jnp.bfloat16 and np.array_equal(rows, x.astype(jnp.bfloat16))
    _train.check_fits(model, rows, y, "mse", "d.npz")
    assert _train.in_model_dtype(vit, x) is x  # a float32 model: the rows as they are


def test_equimo_unstack_after_stack_after_lora_and_merge_keep_the_adapters(vit):
    adapted = eqxform.compile(
        "where **.attn.qkv -> lora(rank=2, alpha=4)\nstack blocks[0].blocks scan\n"
    ).apply(vit, key=jr.key(1))
    adapted = with_random_b(adapted, jr.key(3))
    expected = run_vit(adapted)
    assert not np.allclose(expected, run_vit(vit), atol=1e-4)
    back = eqxform.compile("unstack blocks[0].blocks").apply(adapted)
    assert isinstance(back.blocks[0].blocks, tuple)
    assert all(is_lora(blk.attn.qkv) for blk in back.blocks[0].blocks)
    assert np.allclose(run_vit(back), expected, atol=1e-5)
    # By hand: W + s B A in each block, from the adapters unstacked.
    hand = eqx.tree_at(
        lambda m: [blk.attn.qkv.weight for blk in m.blocks[0].blocks],
        vit,
        [
            blk.attn.qkv.base.weight.value
            + blk.attn.qkv.scale.value * (blk.attn.qkv.lora_b @ blk.attn.qkv.lora_a)
            for blk in back.blocks[0].blocks
        ],
    )
    assert np.allclose(run_vit(hand), expected, atol=1e-5)
    for merged in (eqxform.merge(adapted), eqxform.compile("where ** -> merge").apply(back)):
        out = merged(IMAGE, key=jr.key(0), inference=True)  # callable without resolve
        assert np.allclose(out, expected, atol=1e-5)


# ---- esm2quinox: layers pre-stacked by the library -------------------------------------

TOKENS = jnp.array([0, 5, 6, 7, 8, 9, 10, 2])
ESM = dict(num_layers=3, embed_size=32, num_heads=2, token_dropout=False)


@pytest.fixture(scope="module")
def esm():
    esm2quinox = pytest.importorskip("esm2quinox")
    return eqxform.new(esm2quinox.ESM2, **ESM)


@pytest.mark.slow  # CI time: the behaviours it combines have fast tests of their own
def test_esm2_init_adopted_stack_freeze_and_lora_of_slices_unstack_and_merge(esm):
    program = eqxform.compile(
        "input i32[8]\n"
        "where Linear.weight -> init he_normal\n"
        "stack layers scan\n"
        "where layers[0:2] -> freeze\n"
        "where layers[1:].attn.query_proj -> lora(rank=2, alpha=4)\n"
    )
    summary = program.plan(esm)
    assert summary.params_before == 40_385 and summary.params_after == 40_772
    adapted = with_random_b(program.apply(esm, key=jr.key(1)), jr.key(2))
    lora = adapted.layers.layers.attn.query_proj
    assert lora.lora_a.layers == (0,)  # layer 0 has no adapter to train
    run = lambda m: eqxform.resolve(m)(TOKENS).logits  # noqa: E731
    ours = run(adapted)
    # By hand: the re-drawn weights with W + s B A added in layers 1 and 2 only.
    base = eqx.tree_at(
        lambda m: m.layers.attn.query_proj.weight,
        eqxform.merge(eqxform.compile("unstack layers").apply(adapted)),
        unwrap(lora.base.weight),
    )
    delta = unwrap(lora.scale)[:, None, None] * (unwrap(lora.lora_b) @ unwrap(lora.lora_a))
    delta = delta.at[0].set(0.0)
    hand = eqx.tree_at(
        lambda m: m.layers.attn.query_proj.weight, base, unwrap(lora.base.weight) + delta
    )
    assert np.allclose(ours, hand(TOKENS).logits, atol=1e-4)
    assert not np.allclose(ours, base(TOKENS).logits, atol=1e-4)
    assert not same(unwrap(lora.base.weight), esm.layers.attn.query_proj.weight)  # re-drawn
    # Gradients: none in layer 0's adapter, none in the frozen layers.
    grads = eqx.filter_grad(lambda m: jnp.sum(run(m) ** 2))(adapted)
    g = grads.layers.layers
    assert not np.any(np.asarray(unwrap(g.attn.query_proj.lora_b)[0]))
    assert np.all(np.abs(np.asarray(unwrap(g.attn.query_proj.lora_b)[1:])).max((1, 2)) > 0)
    assert not np.any(np.asarray(unwrap(g.linear1.weight)[:2]))
    assert np.abs(np.asarray(unwrap(g.linear1.weight)[2])).max() > 0
    # `unstack` gives back the library's own pre-stacked layers, adapters kept.
    back = eqxform.compile("unstack layers").apply(adapted)
    assert type(back.layers).__name__ == "TransformerLayer" and is_lora(back.layers.attn.query_proj)
    assert np.array_equal(run(back), ours)
    merged = eqxform.compile("where ** -> merge").apply(adapted)
    assert np.allclose(merged(TOKENS).logits, ours, atol=1e-4)


def test_esm2_input_line_finds_a_broken_head_on_a_skeleton(esm):
    esm2quinox = pytest.importorskip("esm2quinox")
    # A skeleton holds no array: the plan allocates nothing.
    skeleton = eqx.filter_eval_shape(lambda: esm2quinox.ESM2(key=jr.key(0), **ESM))
    program = eqxform.compile(
        "input i32[8]\n"
        "stack layers scan\n"
        "where layers[0] -> freeze\n"
        "where logit_head.linear2 -> replace Linear(in_features=33, out_features=33)\n"
    )
    [d] = program.plan(skeleton).diagnostics
    assert d.code == "E207" and d.span.line == 4


# ---- megalodon-jax: layers that change the carry ---------------------------------------

IDS = (jnp.arange(8)[None] * 7) % 64


@pytest.fixture(scope="module")
def megalodon():
    pytest.importorskip("megalodon_jax")
    return R.small_megalodon(3)


@pytest.mark.slow
def test_megalodon_layerwise_stack_freeze_of_a_slice_and_lora_as_hand_written(megalodon):
    program = eqxform.compile(
        "input i32[1,8]\n"
        "stack model.layers scan layerwise\n"
        "where model.layers[0:2] -> freeze\n"
        "where model.layers.attn.wz -> lora(rank=2)\n"
    )
    summary = program.plan(megalodon)
    assert [d.code for d in summary.diagnostics] == ["I221"]  # the parent reads `.weight`
    adapted = with_random_b(program.apply(megalodon, key=jr.key(1)), jr.key(2))
    assert isinstance(adapted.model.layers, eqxform.Stacked)
    ours = eqxform.resolve(adapted)(IDS)[0]
    lora = adapted.model.layers.layers.attn.wz
    hand = eqx.tree_at(
        lambda m: [layer.attn.wz.weight for layer in m.model.layers],
        megalodon,
        [
            layer.attn.wz.weight
            + unwrap(lora.scale)[i] * (unwrap(lora.lora_b)[i] @ unwrap(lora.lora_a)[i])
            for i, layer in enumerate(megalodon.model.layers)
        ],
    )
    assert np.allclose(ours, hand(IDS)[0], atol=1e-4)
    assert not np.allclose(ours, megalodon(IDS)[0], atol=1e-4)
    back = eqxform.compile("unstack model.layers").apply(adapted)
    assert np.allclose(eqxform.resolve(back)(IDS)[0], ours, atol=1e-6)
    assert np.allclose(eqxform.merge(adapted)(IDS)[0], ours, atol=1e-5)


def test_megalodon_scan_stack_is_refused_at_its_line_from_the_shell(megalodon, tmp_path):
    eqxform.save(tmp_path / "m.eqx", megalodon)
    (tmp_path / "s.eqx").write_text(
        "input i32[1,8]\nstack model.layers scan\nwhere model.layers[0] -> freeze\n"
    )
    done = shell("check", "s.eqx", "m.eqx", "--allow", "megalodon_jax", cwd=tmp_path)
    assert done.returncode == 1
    assert "s.eqx:2:1" in done.stderr
    assert "layerwise" in done.stderr and "Traceback" not in done.stderr


# ---- pdequinox: its conv-based architectures -------------------------------------------

FIELD = jr.normal(jr.key(2), (1, 32))


@pytest.fixture(scope="module")
def pdeq():
    return pytest.importorskip("pdequinox")


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("ClassicResNet", dict(hidden_channels=4, num_blocks=3)),
        pytest.param(
            "DilatedResNet",
            dict(hidden_channels=4, num_blocks=3, dilation_rates=(1, 2, 1)),
            marks=pytest.mark.slow,
        ),
        pytest.param("ModernResNet", dict(hidden_channels=4, num_blocks=3), marks=pytest.mark.slow),
        ("ClassicFNO", dict(hidden_channels=4, num_modes=4, num_blocks=3)),
    ],
)
def test_pdequinox_stack_of_its_blocks_then_init_and_freeze_as_hand_written(pdeq, name, kwargs):
    model = eqxform.new(getattr(pdeq.arch, name), 1, 1, 1, **kwargs)
    program = eqxform.compile(
        "input f32[1,32]\n"
        "stack blocks scan\n"
        "where blocks[1:] -> freeze\n"
        "where projection.** -> init zeros\n"
    )
    ours = program.apply(model, key=jr.key(1))
    assert isinstance(ours.blocks, eqxform.Stacked)
    hand = eqx.tree_at(lambda m: m.projection, model, replace_fn=_zeros)
    assert np.allclose(eqxform.resolve(ours)(FIELD), hand(FIELD), atol=1e-5)
    assert not np.any(np.asarray(eqxform.resolve(ours)(FIELD)))  # a zero projection
    # Gradients reach block 0 only, as `stop_gradient` on blocks 1 and 2 gives.
    model_b = eqx.tree_at(lambda m: m.projection, ours, replace_fn=_ones)
    grads = eqx.filter_grad(lambda m: jnp.sum(eqxform.resolve(m)(FIELD) ** 2))(model_b)
    per_layer = [np.abs(np.asarray(unwrap(g))).reshape(3, -1).max(1) for g in _stack_leaves(grads)]
    assert all(not p[1:].any() for p in per_layer)
    assert any(p[0] > 0 for p in per_layer)


def _zeros(tree):
    return jax.tree_util.tree_map(
        lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a, tree
    )


def _ones(tree):
    return jax.tree_util.tree_map(
        lambda a: jnp.full_like(a, 0.1) if eqx.is_inexact_array(a) else a, tree
    )


def _stack_leaves(grads):
    is_frozen = lambda x: isinstance(x, eqxform.Frozen)  # noqa: E731
    return [
        x
        for x in jax.tree_util.tree_leaves(grads.blocks, is_leaf=is_frozen)
        if is_frozen(x) or eqx.is_array(x)
    ]


def test_pdequinox_unet_cast_of_everything_with_its_own_init_and_freeze(pdeq):
    model = eqxform.new(pdeq.arch.ClassicUNet, 1, 1, 1, hidden_channels=4, num_levels=1)
    program = eqxform.compile(
        "input bf16[1,32]\n"
        "where PhysicsConv.bias -> init zeros\n"
        "where GroupNorm -> freeze\n"
        "where ** -> cast bfloat16\n"
    )
    ours = program.apply(model, key=jr.key(1))
    # `PhysicsConv` names the class and its subclasses (the down-sampling block).
    is_conv = lambda x: isinstance(x, pdeq.conv.PhysicsConv)  # noqa: E731
    hand = eqx.tree_at(
        lambda m: [
            c.bias
            for c in jax.tree_util.tree_leaves(m, is_leaf=is_conv)
            if is_conv(c) and c.bias is not None
        ],
        model,
        replace_fn=jnp.zeros_like,
    )
    hand = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a, hand
    )
    x = FIELD.astype(jnp.bfloat16)
    out = eqxform.resolve(ours)(x)
    assert out.dtype == jnp.bfloat16 and np.array_equal(out, hand(x))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile(
            "input f32[1,32]\nwhere GroupNorm -> freeze\nwhere ** -> cast bfloat16\n"
        ).apply(model)
    [d] = info.value.diagnostics
    assert d.code == "E207" and d.span.line == 3 and "`input bf16[1,32]`" in d.help


@pytest.mark.slow
def test_equimo_stack_then_ensemble_under_an_input_line_builds_each_member_stacked(vit):
    # The stack above the `ensemble` line runs again in each member, under
    # `filter_vmap`: it was refused there (E144, a traced array run on random
    # inputs) although `plan` passed.
    program = eqxform.compile("input f32[3,16,16]\nstack blocks[0].blocks scan\nensemble 2\n")
    assert not program.plan(vit).diagnostics
    ensemble = program.apply(vit, key=jr.key(1))
    out = run_vit(ensemble)
    assert out.shape == (2, 4) and not np.allclose(out[0], out[1])
    for i in range(2):
        member = ensemble.member(i)
        stack = member.blocks[0].blocks
        assert isinstance(stack, eqxform.Stacked)
        # By hand: the member's layers sliced out of the stack, in a loop.
        layers = [
            jax.tree_util.tree_map(lambda a, j=j: a[j] if eqx.is_array(a) else a, stack.layers)
            for j in range(4)
        ]
        template = eqx.tree_at(lambda m: m.blocks[0].blocks, member, tuple(vit.blocks[0].blocks))
        hand = eqx.tree_at(lambda m: m.blocks[0].blocks, template, tuple(layers))
        assert np.allclose(run_vit(hand), out[i], atol=1e-5)


@pytest.mark.slow
def test_esm2_combination_from_the_shell_trains_its_adapters_then_unstacks_and_merges(
    esm, tmp_path
):
    eqxform.save(tmp_path / "esm.eqx", esm)
    (tmp_path / "tune.eqx").write_text(
        "optimizer adam(learning_rate=1e-2)\ninput i32[8]\n"
        "where Linear.weight -> init he_normal\nstack layers scan\n"
        "where layers[0:2] -> freeze\nwhere layers[1:].attn.query_proj -> lora(rank=2, alpha=4)\n"
    )
    (tmp_path / "opt.eqx").write_text("optimizer adam(learning_rate=1e-2)\n")
    (tmp_path / "bake.eqx").write_text("input i32[8]\nunstack layers\nwhere ** -> merge\n")
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 24, (8, 8)).astype(np.int32)
    np.savez(tmp_path / "tokens.npz", x=tokens, y=tokens)
    allow = ("--allow", "esm2quinox")
    for args in [
        ("apply", "tune.eqx", "esm.eqx", "-o", "a.eqx"),
        ("train", "opt.eqx", "a.eqx", "--data", "tokens.npz", "--steps", "2", "--batch-size",
         "4", "--loss", "cross_entropy", "--model-output", "logits", "-o", "t.eqx"),
        ("apply", "bake.eqx", "t.eqx", "-o", "m.eqx"),
    ]:  # fmt: skip
        done = shell(*args, *allow, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    start, trained, merged = (
        eqxform.load(tmp_path / f"{n}.eqx", allow=["esm2quinox"]) for n in ("a", "t", "m")
    )
    lora, before = trained.layers.layers.attn.query_proj, start.layers.layers.attn.query_proj
    # Layer 0 has no adapter to train; layers 1 and 2 trained theirs.
    b = np.asarray(unwrap(lora.lora_b))
    assert not b[0].any() and np.abs(b[1:]).max((1, 2)).min() > 0
    assert same(unwrap(lora.base.weight), unwrap(before.base.weight))
    assert np.array_equal(unwrap(trained.layers.layers.linear1.weight)[:2],
                          unwrap(start.layers.layers.linear1.weight)[:2])  # fmt: skip
    # The merged file is the library's own layout, callable without resolve.
    assert type(merged.layers).__name__ == "TransformerLayer"
    ours = eqxform.resolve(trained)(TOKENS).logits
    assert np.allclose(merged(TOKENS).logits, ours, atol=1e-4)
    assert not np.allclose(eqxform.resolve(start)(TOKENS).logits, ours, atol=1e-3)
