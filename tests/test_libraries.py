"""The jobs of a researcher on published Equinox libraries (the `test` extra:
equimo, esm2quinox, megalodon-jax, pdequinox), at small configs, each against
the hand-written Equinox code it replaces. A library that is not installed is
skipped. The library-shaped models of `realmodels.py` are tested beside these
(`test_real.py`): they pin the patterns; these pin the libraries themselves.

Stateful training is covered by the library-shaped `TinyResNet`
(`test_real.py`): none of these libraries' models holds BatchNorm state.
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

import eqxform
from eqxform._runtime import _train


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]


def same(a, b, atol=0.0):
    la, lb = leaves(a), leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and np.allclose(x, y, atol=atol, rtol=0) for x, y in zip(la, lb)
    )


def with_random_b(model, key):
    """Every LoRA's B drawn at random (B = 0 would make every comparison pass)."""
    is_lora = lambda x: isinstance(x, eqxform.LoRA)  # noqa: E731
    loras = [x for x in jax.tree_util.tree_leaves(model, is_leaf=is_lora) if is_lora(x)]
    keys = jr.split(key, len(loras))
    return eqx.tree_at(
        lambda m: [x.lora_b for x in jax.tree_util.tree_leaves(m, is_leaf=is_lora) if is_lora(x)],
        model,
        [0.1 * jr.normal(k, x.lora_b.shape, x.lora_b.dtype) for k, x in zip(keys, loras)],
    )


def hand_lora(model, adapted, where):
    """Hand-written LoRA by weights: each adapted `Linear` of `model` at
    `where(m)` gets `W + scale * B A` (the factors taken from `adapted`)."""
    bases, loras = where(model), where(adapted)
    new = [
        eqx.tree_at(
            lambda lin: lin.weight,
            base,
            base.weight
            + jax.lax.stop_gradient(lora.scale.value)[..., None, None]
            * (lora.lora_b @ lora.lora_a),
        )
        for base, lora in zip(bases, loras)
    ]
    return eqx.tree_at(where, model, new)


# ---- equimo: a ViT ----------------------------------------------------------------


@pytest.fixture(scope="module")
def vit():
    em = pytest.importorskip("equimo.models")
    return eqxform.new(
        em.VisionTransformer,
        img_size=16,
        in_channels=3,
        dim=32,
        patch_size=8,
        num_heads=2,
        depths=[2],
        num_classes=4,
    )


IMAGE = jr.normal(jr.key(7), (3, 16, 16))


def run_vit(model):
    return eqxform.resolve(model)(IMAGE, key=jr.key(0), inference=True)


def test_equimo_init_and_surgery(vit):
    program = eqxform.compile(
        "where Linear.bias -> init zeros\n"
        "where head -> replace Linear(in_features=32, out_features=10)\n"
    )
    ours = program.apply(vit, key=jr.key(1))
    assert run_vit(ours).shape == (10,)
    biases = [b for b in jax.tree_util.tree_leaves(ours.blocks) if eqx.is_array(b)]
    hand = eqx.tree_at(
        lambda m: (
            [blk.attn.qkv.bias for blk in m.blocks[0].blocks]
            + [blk.attn.proj.bias for blk in m.blocks[0].blocks]
            + [blk.mlp.fc1.bias for blk in m.blocks[0].blocks]
            + [blk.mlp.fc2.bias for blk in m.blocks[0].blocks]
        ),
        vit,
        replace_fn=jnp.zeros_like,
    )
    assert same(ours.blocks, hand.blocks) and len(biases) == len(leaves(vit.blocks))
    assert same(ours.patch_embed, vit.patch_embed)
    assert ours.head.weight.shape == (10, 32)


def test_equimo_freeze_and_train_matches_hand_written(vit):
    program = eqxform.compile("optimizer adam(learning_rate=1e-2)\nwhere blocks -> freeze\n")
    model = program.apply(vit, key=jr.key(1))
    y = jnp.arange(4.0)

    def loss(m, x, y):
        return jnp.mean((m(x, key=jr.key(0), inference=True) - y) ** 2)

    step = eqxform.make_step(loss, eqxform.optimizer(program, model), model)
    for _ in range(2):
        step(IMAGE, y)
    trained = step.model
    # By hand: gradients stopped at the blocks, Adam on everything else.
    params, static = eqx.partition(vit, eqx.is_inexact_array)
    opt = optax.adam(1e-2)
    state = opt.init(params)

    def hand_loss(p):
        m = eqx.combine(p, static)
        m = eqx.tree_at(lambda m: m.blocks, m, jax.lax.stop_gradient(m.blocks))
        return loss(m, IMAGE, y)

    grad = jax.jit(jax.grad(hand_loss))
    for _ in range(2):
        grads = grad(params)
        updates, state = opt.update(grads, state, params)
        updates = eqx.tree_at(
            lambda u: u.blocks, updates, jax.tree_util.tree_map(jnp.zeros_like, updates.blocks)
        )
        params = optax.apply_updates(params, updates)
    hand = eqx.combine(params, static)
    assert same(eqxform.resolve(trained.blocks), vit.blocks)
    assert same(eqxform.resolve(trained), hand, atol=1e-5)
    assert not same(trained.head, vit.head)


def test_equimo_lora_matches_hand_written(vit):
    program = eqxform.compile("where **.attn.qkv -> lora(rank=2, alpha=4)")
    adapted = program.apply(vit, key=jr.key(2))
    assert np.allclose(run_vit(adapted), run_vit(vit), atol=1e-5)  # B = 0 at first
    adapted = with_random_b(adapted, jr.key(3))
    where = lambda m: [blk.attn.qkv for blk in m.blocks[0].blocks]  # noqa: E731
    hand = hand_lora(vit, adapted, where)
    assert np.allclose(run_vit(adapted), run_vit(hand), atol=1e-5)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(run_vit(m) ** 2)))(adapted)
    assert all(np.abs(np.asarray(g.lora_b)).max() > 0 for g in where(grads))


def test_equimo_stack_matches_the_unstacked_model(vit):
    model = eqxform.compile("stack blocks[0].blocks scan").apply(vit, key=jr.key(1))
    assert isinstance(model.blocks[0].blocks, eqxform.Stacked)
    assert np.allclose(run_vit(model), run_vit(vit), atol=1e-5)
    jaxpr = str(eqx.filter_make_jaxpr(run_vit)(model)[0])
    assert "scan[" in jaxpr


def test_equimo_file_loads_and_runs_in_a_fresh_process(vit, tmp_path):
    # Loading imports the allowed package before the skeleton is traced, and
    # `train` runs on the file (issue 16, item 7).
    eqxform.save(tmp_path / "vit.eqx", vit)
    np.save(tmp_path / "expected.npy", np.asarray(run_vit(vit)))
    (tmp_path / "spec.eqx").write_text(
        "optimizer adam(learning_rate=1e-3)\ninput f32[3,16,16]\nwhere blocks -> freeze\n"
    )
    code = (
        "import eqxform, jax.numpy as jnp, jax.random as jr, numpy as np\n"
        "m = eqxform.load('vit.eqx', allow=['equimo'])\n"
        "x = jr.normal(jr.key(7), (3, 16, 16))\n"
        "out = m(x, key=jr.key(0), inference=True)\n"
        "print(float(np.abs(np.asarray(out) - np.load('expected.npy')).max()))\n"
        "from eqxform._cli import main\n"
        "main(['train', 'spec.eqx', 'vit.eqx', '--allow', 'equimo', '--steps', '2',\n"
        "      '--batch-size', '4', '-o', 'trained.eqx'])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(eqxform.__file__))}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.splitlines()[0]) == 0.0
    assert "trained 2 steps" in done.stdout
    assert "Tracer" not in done.stderr


# ---- esm2quinox: ESM2 (layers pre-stacked with filter_vmap, a result object) ---------


@pytest.fixture(scope="module")
def esm():
    esm2quinox = pytest.importorskip("esm2quinox")
    return eqxform.new(
        esm2quinox.ESM2, num_layers=2, embed_size=32, num_heads=2, token_dropout=False
    )


TOKENS = jnp.array([0, 5, 6, 7, 8, 9, 10, 2])


def test_esm2_lora_on_its_stacked_layers_matches_hand_written(esm):
    program = eqxform.compile("where layers.attn.query_proj -> lora(rank=2, alpha=2)")
    adapted = with_random_b(program.apply(esm, key=jr.key(1)), jr.key(2))
    lora = adapted.layers.attn.query_proj
    assert lora.lora_a.shape == (2, 2, 32)  # the library's layer axis, carried
    hand = hand_lora(esm, adapted, lambda m: [m.layers.attn.query_proj])
    ours = eqxform.resolve(adapted)(TOKENS).logits
    assert np.allclose(ours, hand(TOKENS).logits, atol=1e-4)
    assert not np.allclose(ours, esm(TOKENS).logits, atol=1e-4)


def test_esm2_trains_on_its_logits(esm):
    # ESM2 returns an `ESM2Result`: `train` names the array to compare.
    program = eqxform.compile(
        "optimizer adam(learning_rate=1e-2)\nwhere layers -> freeze\nwhere layer_norm -> freeze\n"
    )
    model = program.apply(esm, key=jr.key(1))
    rng = np.random.default_rng(0)
    x = rng.integers(4, 24, (8, 8)).astype(np.int32)
    y = x.copy()  # a label per token
    with pytest.raises(eqxform.UsageError) as info:
        _train.check_fits(model, x, y, "cross_entropy", "d.npz")
    [d] = info.value.diagnostics
    assert d.code == "E423" and "`ESM2Result` (hidden: f32[8,32], logits: f32[8,33])" in d.message
    _train.check_fits(model, x, y, "cross_entropy", "d.npz", "logits")
    result = _train.train(
        program, model, x, y, steps=3, batch_size=8, loss="cross_entropy", output="logits"
    )
    # By hand: the same three full-batch Adam steps on the head.
    params, static = eqx.partition(esm.logit_head, eqx.is_inexact_array)
    opt = optax.adam(1e-2)
    state = opt.init(params)

    def loss(p):
        m = eqx.tree_at(lambda m: m.logit_head, esm, eqx.combine(p, static))
        logits = jax.vmap(lambda t: m(t).logits)(jnp.asarray(x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()

    grad = jax.jit(jax.grad(loss))
    for _ in range(3):
        grads = grad(params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert same(result.model.logit_head, eqx.combine(params, static), atol=1e-5)
    assert same(eqxform.resolve(result.model.layers), esm.layers)


# ---- megalodon-jax: a config dataclass, parents that read `.weight` ---------------------


@pytest.fixture(scope="module")
def megalodon():
    pytest.importorskip("megalodon_jax")
    from megalodon_jax.config import MegalodonConfig
    from megalodon_jax.model import MegalodonForCausalLM

    config = MegalodonConfig(
        vocab_size=64,
        model_dim=32,
        num_layers=1,
        num_heads=1,
        z_dim=16,
        value_dim=32,
        ffn_hidden_dim=48,
        cema_ndim=4,
        chunk_size=16,
        norm_num_groups=4,
    )
    return eqxform.new(MegalodonForCausalLM, config), config


IDS = (jnp.arange(8)[None] * 7) % 64


def test_megalodon_lora_by_a_type_of_the_library_matches_hand_written(megalodon):
    model, _ = megalodon
    # `MegalodonAttention` is known only to the model: compile, then apply.
    program = eqxform.compile("input i32[1,8]\nwhere MegalodonAttention.wz -> lora(rank=2)")
    adapted = with_random_b(program.apply(model, key=jr.key(1)), jr.key(2))
    where = lambda m: [layer.attn.wz for layer in m.model.layers]  # noqa: E731
    hand = hand_lora(model, adapted, where)
    ours = eqxform.resolve(adapted)(IDS)[0]
    assert np.allclose(ours, hand(IDS)[0], atol=1e-4)

    def loss(m):
        return jnp.sum(eqxform.resolve(m)(IDS)[0] ** 2)

    g_ours = eqx.filter_jit(eqx.filter_grad(loss))(adapted)
    g_hand = eqx.filter_jit(
        jax.grad(
            lambda bs: jnp.sum(
                hand_lora(
                    model, eqx.tree_at(lambda m: [x.lora_b for x in where(m)], adapted, bs), where
                )(IDS)[0]
                ** 2
            )
        )
    )([x.lora_b for x in where(adapted)])
    for g, h in zip(where(g_ours), g_hand):
        assert np.allclose(g.lora_b, h, atol=1e-4) and np.abs(np.asarray(h)).max() > 0
    # `linear_3d` reads the weight: the plan states what that costs.
    notes = [d for d in program.plan(model).diagnostics if d.code == "I221"]
    assert (
        len(notes) == 1
        and "1 adapted module itself (`model.layers[0].attn.wz`)" in notes[0].message
    )


def test_megalodon_file_records_its_config(megalodon, tmp_path):
    model, config = megalodon
    constructor = eqxform.recipe_of(model).constructor
    assert constructor.startswith(
        "megalodon_jax.model:MegalodonForCausalLM(megalodon_jax.config:MegalodonConfig("
        "vocab_size=64, model_dim=32, num_layers=1,"
    )
    eqxform.save(tmp_path / "m.eqx", model)
    back = eqxform.load(tmp_path / "m.eqx", allow=["megalodon_jax"])
    assert back.config == config
    assert np.array_equal(back(IDS)[0], model(IDS)[0])


def test_megalodon_trains_on_the_first_of_its_outputs(megalodon):
    model, _ = megalodon
    program = eqxform.compile("optimizer sgd(learning_rate=1e-2)\nwhere model -> freeze\n")
    start = program.apply(model, key=jr.key(1))
    x = np.asarray(IDS)[None].repeat(4, axis=0)  # rows of `[1, 8]` token ids
    y = np.asarray(jr.normal(jr.key(2), (4, 1, 8, 64)))
    with pytest.raises(eqxform.UsageError) as info:
        _train.check_fits(start, x, y, "mse", "d.npz")
    assert "a tuple of 2 (f32[1,8,64], None)" in info.value.diagnostics[0].message
    _train.check_fits(start, x, y, "mse", "d.npz", "0")
    trained = _train.train(program, start, x, y, steps=1, batch_size=4, output="0").model
    head = model.lm_head

    def loss(w):
        m = eqx.tree_at(lambda m: m.lm_head.weight, model, w)
        return jnp.mean((jax.vmap(lambda t: m(t)[0])(jnp.asarray(x)) - y) ** 2)

    hand = head.weight - 1e-2 * jax.jit(jax.grad(loss))(head.weight)
    assert np.allclose(trained.lm_head.weight, hand, atol=1e-5)


# ---- pdequinox: a U-Net of the library's own conv type --------------------------------


@pytest.fixture(scope="module")
def unet():
    pdequinox = pytest.importorskip("pdequinox")
    return eqxform.new(pdequinox.arch.ClassicUNet, 1, 1, 1, hidden_channels=4, num_levels=1)


def test_pdequinox_init_freeze_and_surgery(unet):
    program = eqxform.compile(
        "where PhysicsConv.weight -> init he_normal\n"
        "where PhysicsConv.bias -> init zeros\n"
        "where GroupNorm -> freeze\n"
    )
    ours = program.apply(unet, key=jr.key(1))
    is_conv = lambda x: type(x).__name__ == "PhysicsConv"  # noqa: E731
    convs = [c for c in jax.tree_util.tree_leaves(ours, is_leaf=is_conv) if is_conv(c)]
    before = [c for c in jax.tree_util.tree_leaves(unet, is_leaf=is_conv) if is_conv(c)]
    assert len(convs) == len(before) >= 4
    for c, b in zip(convs, before):
        fan_in = int(np.prod(b.weight.shape[1:]))
        # He normal, drawn per conv of the library's own type: variance 2 / fan_in.
        assert not np.array_equal(c.weight, b.weight) and c.weight.shape == b.weight.shape
        if c.bias is not None:
            assert not np.any(np.asarray(c.bias))
        assert abs(float(np.std(c.weight)) * np.sqrt(fan_in / 2) - 1) < 0.6
    x = jr.normal(jr.key(2), (1, 32))
    assert eqxform.resolve(ours)(x).shape == (1, 32)
    # The group norms are frozen: no gradient reaches them.
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(eqxform.resolve(m)(x) ** 2)))(ours)
    is_norm = lambda x: isinstance(x, eqx.nn.GroupNorm)  # noqa: E731
    norms = [n for n in jax.tree_util.tree_leaves(grads, is_leaf=is_norm) if is_norm(n)]
    assert norms and all(not np.any(np.asarray(leaf)) for n in norms for leaf in leaves(n))
