"""The jobs of a researcher on a third round of published Equinox libraries,
shaped unlike those of `test_libraries.py` and `test_more_libraries.py`, at
small configs, each against the hand-written Equinox code it replaces; a
library that is not installed is skipped.

- e1jax 0.3 (`E1`, a protein language model): five positional inputs (int
  and bool arrays), a tuple output `(logits, embeddings)`, beartype on every
  class, and layers that differ in a static field (every third layer's
  attention is global: another `rope_theta` and `layer_type`), looped over
  in Python.
- rnn-jax 0.0.2 (`rnn_jax.ssm`: `DeepStateSpaceModelEncoder` of
  `LinearRecurrentUnit` layers): complex64 parameters, NumPy arrays as
  leaves, a parallel `associative_scan` inside each layer, a constructor
  that takes built modules and calls NumPy on its draws (so it cannot run on
  traced keys), and a parent that walks two lists with `zip(self.layers,
  self.mixers)`.

Neither is in the `test` extra: both declare `torch` as a dependency (e1jax
for its weight conversion, rnn-jax for its data sets), though their models
import none; `pip install --no-deps e1jax rnn-jax` (plus beartype, einops,
loguru, which the extra's libraries bring) runs these tests. rnn-jax's
`cells` and `layers` need Python 3.12 (`type X = ...` statements), so only
its `ssm` models are tested.

The patterns they showed are tested without the libraries too (first).
"""

import os
import subprocess
import sys
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from test_libraries import hand_lora, same, with_random_b

import eqxform


def quietly_import(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip(name)


# ---- the patterns, without the libraries ----------------------------------------


class Recurrent(eqx.Module):
    """An LRU-shaped layer: complex input and output matrices, a real skip
    matrix, and decay rates kept as a NumPy array (`np.log` of a draw)."""

    W_in: jax.Array
    W_out: jax.Array
    W_skip: jax.Array
    nu_log: np.ndarray

    def __init__(self, key):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.W_in = jr.normal(k1, (4, 4), jnp.complex64) / 2
        self.W_out = jr.normal(k2, (4, 4), jnp.complex64) / 2
        self.W_skip = jr.normal(k3, (4, 4)) / 2
        self.nu_log = np.log(-0.5 * np.log(jr.uniform(k4, (4,))))

    def __call__(self, xs):
        decay = jnp.exp(-jnp.exp(self.nu_log))

        def step(h, x):
            h = decay * h + self.W_in @ x
            return h, (self.W_out @ h).real + self.W_skip @ x

        return jax.lax.scan(step, jnp.zeros(4, jnp.complex64), xs)[1]


XS = jr.normal(jr.key(5), (6, 4))


def test_star_cast_skips_complex_arrays_and_plan_counts_them():
    layer = Recurrent(jr.key(0))
    program = eqxform.compile("where ** -> cast bfloat16")
    out = program.apply(layer, key=jr.key(1))
    # By hand: the real arrays cast, the complex ones as they were (a cast
    # to bfloat16 would keep only their real part).
    assert out.W_in.dtype == jnp.complex64 and np.array_equal(out.W_in, layer.W_in)
    assert out.W_out.dtype == jnp.complex64
    assert out.W_skip.dtype == jnp.bfloat16 and out.nu_log.dtype == jnp.bfloat16
    [step] = program.plan(layer).steps
    assert step.skipped == 2
    assert "2 arrays, 2 non-floating arrays skipped" in str(program.plan(layer))
    # `cast` of the module: the same.
    assert eqxform.compile("where Recurrent -> cast float16").apply(layer).W_in.dtype == (
        jnp.complex64
    )
    # To a complex dtype nothing is lost: no array is skipped.
    # (`init`, `scale` and `freeze` act on complex arrays: they are parameters.)
    scaled = eqxform.compile("where ** -> scale 2").apply(layer)
    hand = jax.tree_util.tree_map(lambda x: 2 * x, layer)
    assert same(scaled, hand)
    zeroed = eqxform.compile("where ** -> init zeros").apply(layer, key=jr.key(1))
    assert zeroed.W_in.dtype == jnp.complex64 and not np.any(np.asarray(zeroed.W_in))


def test_cast_of_a_named_complex_array_is_refused_at_its_line():
    layer = Recurrent(jr.key(0))
    program = eqxform.compile("where W_skip -> scale 2\nwhere **.W_in -> cast float32")
    with pytest.raises(eqxform.SpecError) as info:
        program.apply(layer, key=jr.key(1))
    [d] = info.value.diagnostics
    assert d.code == "E380" and d.span.line == 2
    assert d.message == "`cast float32` would drop the imaginary part of `W_in` (complex64)"
    assert d.help.startswith("leave the complex array out of the selector")
    [d] = program.plan(layer).diagnostics
    assert d.code == "E380" and d.span.line == 2


def test_lora_on_a_complex_weight_is_refused_at_plan_time():
    layer = Recurrent(jr.key(0))
    program = eqxform.compile("where **.W_in -> lora(rank=2)")
    [d] = program.plan(layer).diagnostics
    assert d.code == "E381" and d.message == "`lora` draws real factors, but `W_in` is `complex64`"
    with pytest.raises(eqxform.SpecError) as info:
        program.apply(layer, key=jr.key(1))
    assert info.value.diagnostics[0].code == "E381"
    # The real matrix beside it adapts, and computes as a hand-written W + BA.
    adapted = eqxform.compile("where **.W_skip -> lora(rank=2)").apply(layer, key=jr.key(1))
    assert np.allclose(eqxform.resolve(adapted)(XS), layer(XS), atol=1e-6)


def test_a_constructor_that_cannot_be_traced_is_said_so():
    program = eqxform.compile("ensemble 2")
    for run in (
        lambda: program.apply(Recurrent, key=jr.key(1)),
        lambda: program.plan(Recurrent),
        lambda: eqxform.compile("where ** -> scale 2").apply(Recurrent, key=jr.key(1)),
    ):
        with pytest.raises(eqxform.UsageError) as info:
            run()
        [d] = info.value.diagnostics
        assert d.code == "E382"
        assert d.message.startswith("the constructor `Recurrent` cannot run on traced keys: ")
        assert "pass the model it builds instead" in d.help
    # The model itself: its raw arrays are no layer type's, so the members
    # share them, and are told so (W201).
    with pytest.warns(eqxform.EqxformWarning, match="W201.*share 4 arrays"):
        members = program.apply(Recurrent(jr.key(0)), key=jr.key(1))
    out = members(XS)
    hand = eqx.filter_vmap(lambda m: m(XS))(members.model)
    assert out.shape == (2, 6, 4) and np.allclose(out, hand, atol=1e-6)


class Zipped(eqx.Module):
    """A parent that walks its layers and its mixers together, as rnn-jax's
    `DeepStateSpaceModelEncoder` does."""

    layers: list
    mixers: list

    def __init__(self, key):
        ks = jr.split(key, 6)
        self.layers = [eqx.nn.Linear(4, 4, key=k) for k in ks[:3]]
        self.mixers = [eqx.nn.Linear(4, 4, key=k) for k in ks[3:]]

    def __call__(self, x):
        for layer, mixer in zip(self.layers, self.mixers):
            x = jnp.tanh(mixer(layer(x)))
        return x


def test_a_stack_the_parent_zips_with_another_list_is_refused_by_apply_with_input():
    # With `input` lines, `apply` runs both models and sees the outputs differ.
    model = Zipped(jr.key(0))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("input f32[4]\nstack layers scan").apply(model, key=jr.key(1))
    [d] = info.value.diagnostics
    assert d.code == "E144" and d.span.line == 2 and "zips with another list" in d.help
    layerwise = eqxform.compile("input f32[4]\nstack layers scan layerwise").apply(model)
    x = jnp.arange(4.0)
    assert np.allclose(layerwise(x), model(x), atol=1e-6)


def test_a_stack_the_parent_zips_with_another_list_is_refused_by_plan():
    # With `input` lines, `plan` (and `check`, and `apply` before it allocates)
    # traces the forward pass before and after the stack, computing nothing:
    # once stacked, the loop reaches only the first mixer, and the arrays of
    # the others are read no more.
    model = Zipped(jr.key(0))
    [d] = eqxform.compile("input f32[4]\nstack layers scan").plan(model).diagnostics
    assert d.code == "E144" and d.span.line == 2 and "zips with another list" in d.help
    assert d.message == (
        "once `layers` is stacked, the forward pass no longer reads 4 arrays it read before "
        "(`mixers[1].weight`, `mixers[1].bias`, `mixers[2].weight`, ...)"
    )
    [d] = eqxform.check("input f32[4]\nstack layers[0:2] scan", model).diagnostics
    assert d.code == "E144" and d.span.line == 2
    assert "reads 2 arrays it read before (`mixers[2].weight`, `mixers[2].bias`)" in d.message
    # Layer by layer the loop is the model's own; without `input` lines there
    # is no forward pass to trace.
    assert not eqxform.compile("input f32[4]\nstack layers scan layerwise").plan(model).diagnostics
    assert not eqxform.compile("stack layers scan").plan(model).diagnostics


def test_unstack_of_a_stacked_slice_names_the_stack_where_it_is():
    # A stack of some of a list's elements is one element of that list: after
    # `stack layers[0:2]` it is `layers[0]`, and `unstack layers[0]` gives the
    # model back; `unstack layers[0:2]` names the stack and the third layer,
    # and the error says where the stack is.
    model = Zipped(jr.key(0))
    out = eqxform.compile("stack layers[0:2] scan layerwise\nunstack layers[0]").apply(model)
    assert same(out, model)
    with pytest.raises(eqxform.EqxformError) as info:
        eqxform.compile("stack layers[0:2] scan layerwise\nunstack layers[0:2]").apply(model)
    [d] = info.value.diagnostics
    assert d.code == "E203" and d.span.line == 2 and "`unstack layers[0]`" in d.help


class Chain(eqx.Module):
    layers: list

    def __init__(self, key):
        self.layers = [eqx.nn.Linear(4, 4, key=k) for k in jr.split(key, 3)]

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def test_an_index_into_a_list_a_stack_made_shorter_is_said():
    # After `stack layers[0:2]` the list is `[stack, layers[2]]`, and a later
    # index names the list as it is (as `model.layers[1]` does in Python): that
    # is no longer the model's layer of that number, and W211 says which it is.
    model = Chain(jr.key(0))
    program = eqxform.compile("stack layers[0:2] scan\nwhere layers[1].weight -> init zeros")
    [d] = program.plan(model).diagnostics
    assert d.code == "W211" and d.span.line == 2
    assert "`layers[1]` is the model's `layers[2]`" in d.message
    with pytest.warns(UserWarning, match="W211"):
        out = program.apply(model, key=jr.key(1))
    assert not np.any(np.asarray(out.layers[1].weight))
    assert np.array_equal(out.layers[0].layers.weight[1], model.layers[1].weight)
    # A single index names the whole stack, which the warning says too.
    [d] = (
        eqxform.compile("stack layers[0:2] scan\nwhere layers[0] -> freeze").plan(model).diagnostics
    )
    assert "the stack of the model's `layers[0:2]`" in d.message
    # Through the stack (`layers[0][1]`), over the whole list, or before the
    # `stack` line, an index means what it says: no warning.
    for spec in [
        "stack layers[0:2] scan\nwhere layers[0][1].weight -> init zeros",
        "stack layers[0:2] scan\nwhere layers[*].weight -> init zeros",
        "where layers[1].weight -> init zeros\nstack layers[0:2] scan",
        "stack layers[1:3] scan\nwhere layers[0].weight -> init zeros",
    ]:
        assert eqxform.compile(spec).plan(model).diagnostics == (), spec
    out = eqxform.compile("stack layers[0:2] scan\nwhere layers[0][1].weight -> init zeros").apply(
        model, key=jr.key(1)
    )
    stacked = out.layers[0].layers.weight
    assert not np.any(np.asarray(stacked[1])) and np.array_equal(stacked[0], model.layers[0].weight)
    assert np.array_equal(out.layers[1].weight, model.layers[2].weight)


# ---- e1jax: E1 ---------------------------------------------------------------------

E1_CONFIG = dict(dim=32, num_heads=2, ff_dim=64, num_layers=3)
TOKENS = jnp.array([1, 8, 9, 10, 11, 12, 2, 0])
E1_ARGS = (TOKENS, jnp.arange(8), jnp.arange(8), jnp.zeros(8, jnp.int32), TOKENS != 0)
E1_INPUTS = "input i32[8]\ninput i32[8]\ninput i32[8]\ninput i32[8]\ninput bool[8]\n"


@pytest.fixture(scope="module")
def e1():
    e1jax = quietly_import("e1jax")
    return eqxform.new(e1jax.E1, **E1_CONFIG)


def run_e1(model):
    return eqxform.resolve(model)(*E1_ARGS)


def test_e1_lora_on_its_attention_matches_hand_written(e1):
    program = eqxform.compile(
        "where MultiHeadAttention.to_q | MultiHeadAttention.to_v -> lora(rank=2)"
    )
    adapted = program.apply(e1, key=jr.key(1))
    assert np.allclose(run_e1(adapted)[0], e1(*E1_ARGS)[0], atol=1e-6)  # B = 0 at first
    adapted = with_random_b(adapted, jr.key(2))

    def where(m):
        return [b.attention.to_q for b in m.layers] + [b.attention.to_v for b in m.layers]

    hand = hand_lora(e1, adapted, where)
    logits, emb = run_e1(adapted)
    assert np.allclose(logits, hand(*E1_ARGS)[0], atol=1e-5)
    assert np.allclose(emb, hand(*E1_ARGS)[1], atol=1e-5)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(run_e1(m)[0] ** 2)))(adapted)
    assert all(np.abs(np.asarray(g.lora_b)).max() > 0 for g in where(grads))


def test_e1_layers_of_another_attention_do_not_stack_and_a_slice_does(e1):
    [d] = eqxform.compile(E1_INPUTS + "stack layers scan").plan(e1).diagnostics
    assert d.code == "E133" and d.span.line == 6 and "rope_theta" in d.message
    stacked = eqxform.compile("stack layers[0:2] scan").apply(e1, key=jr.key(1))
    assert isinstance(stacked.layers[0], eqxform.Stacked) and len(stacked.layers) == 2
    for ours, theirs in zip(run_e1(stacked), e1(*E1_ARGS)):
        assert np.allclose(ours, theirs, atol=1e-5)
    back = eqxform.compile("stack layers[0:2] scan\nunstack layers[0]").apply(e1)
    assert same(back, e1)
    plan = str(eqxform.compile(E1_INPUTS + "stack layers[0:2] scan").plan(e1))
    assert "output: f32[8,34], f32[8,32]" in plan


def test_e1_freeze_and_train_matches_hand_written(e1):
    program = eqxform.compile("optimizer sgd(learning_rate=1e-1)\nwhere layers -> freeze\n")
    model = program.apply(e1, key=jr.key(1))
    target = jr.normal(jr.key(3), (8, 34))

    def loss(m, y):
        return jnp.mean((eqxform.resolve(m)(*E1_ARGS)[0] - y) ** 2)

    step = eqxform.make_step(loss, eqxform.optimizer(program, model), model)
    for _ in range(2):
        step(target)
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, e1)
    spec = eqx.tree_at(lambda m: m.layers, spec, [False] * len(e1.layers))
    params, static = eqx.partition(e1, spec)
    grad = jax.jit(jax.grad(lambda p: loss(eqx.combine(p, static), target)))
    for _ in range(2):
        params = jax.tree_util.tree_map(lambda p, g: p - 1e-1 * g, params, grad(params))
    trained = eqxform.resolve(step.model)
    assert same(trained, eqx.combine(params, static), atol=1e-5)
    assert same(trained.layers, e1.layers) and not same(trained.mlm_head, e1.mlm_head)


# The library's constructor compiled under `vmap`: a quarter of a minute on two cores.
@pytest.mark.slow
def test_e1_ensemble_of_its_constructor_matches_hand_written_vmap(e1):
    e1jax = quietly_import("e1jax")
    members = eqxform.compile("ensemble 2").apply(
        lambda key: e1jax.E1(**E1_CONFIG, key=key), key=jr.key(1)
    )
    q = np.asarray(members.model.layers[0].attention.to_q.weight)
    assert q.shape == (2, 32, 32) and not np.allclose(q[0], q[1])
    logits, emb = members(*E1_ARGS)
    hand = eqx.filter_vmap(lambda m: m(*E1_ARGS))(members.model)
    assert logits.shape == (2, 8, 34) and np.allclose(logits, hand[0], atol=1e-5)
    assert np.allclose(emb, hand[1], atol=1e-5)


# Two runs of the command line (each imports JAX and the library and compiles the
# model): half a minute on two cores; run with EQXFORM_SLOW=1.
@pytest.mark.slow
def test_e1_file_from_the_shell(e1, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(eqxform.__file__))}
    env["PYTHONWARNINGS"] = "ignore"

    def cli(*args, code=0):
        done = subprocess.run(
            [sys.executable, "-m", "eqxform", *args, "--allow", "e1jax"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == code, done.stderr
        return done.stdout + done.stderr

    (tmp_path / "spec.eqx").write_text(
        E1_INPUTS + "where ** -> cast bfloat16\nwhere MultiHeadAttention.to_q -> lora(rank=2)\n"
        "stack layers[0:2] scan\n"
    )
    eqxform.save(tmp_path / "e1.eqx", e1)
    applied = cli("apply", "spec.eqx", "e1.eqx", "-o", "out.eqx")
    assert "error" not in applied and "Traceback" not in applied
    back = eqxform.load(tmp_path / "out.eqx", allow=["e1jax"])
    ours = eqxform.compile(tmp_path / "spec.eqx").apply(e1)
    assert same(eqxform.resolve(back), eqxform.resolve(ours))
    for a, b in zip(run_e1(back), run_e1(ours)):
        assert a.dtype == jnp.bfloat16 and np.array_equal(np.asarray(a), np.asarray(b))
    (tmp_path / "all.eqx").write_text(E1_INPUTS + "where ** -> scale 2\nstack layers scan\n")
    said = cli("plan", "all.eqx", "e1.eqx", code=1)
    assert "error[E133]" in said and "all.eqx:7:7" in said and "Traceback" not in said


# The Hugging Face names of E1's checkpoint, as the library's own converter
# (`e1jax._model.build_conversion_map`) maps them.
E1_MAP = """
map "model.embed_tokens.weight" -> "token_embed.weight"
map "model.embed_seq_id.weight" -> "sequence_embed.weight"
map "model.norm.weight" -> "norm.weight"
map "mlm_head.0.**" -> "mlm_head.linear_in.**"
map "mlm_head.2.**" -> "mlm_head.norm.**"
map "mlm_head.3.**" -> "mlm_head.linear_out.**"
map "model.layers.{k}.norm_attn_norm.input_layernorm.weight" -> "layers[{k}].attention.norm.weight"
map "model.layers.{k}.norm_attn_norm.self_attn.q_proj.weight" -> "layers[{k}].attention.to_q.weight"
map "model.layers.{k}.norm_attn_norm.self_attn.k_proj.weight" -> "layers[{k}].attention.to_k.weight"
map "model.layers.{k}.norm_attn_norm.self_attn.v_proj.weight" -> "layers[{k}].attention.to_v.weight"
map "model.layers.{k}.norm_attn_norm.self_attn.o_proj.weight" -> "layers[{k}].attention.to_out.weight"
map "model.layers.{k}.norm_attn_norm.post_attention_layernorm.weight" -> "layers[{k}].ff.norm.weight"
map "model.layers.{k}.ffn.mlp.w1.weight" -> "layers[{k}].ff.linear_a.weight"
map "model.layers.{k}.ffn.mlp.w3.weight" -> "layers[{k}].ff.linear_b.weight"
map "model.layers.{k}.ffn.mlp.w2.weight" -> "layers[{k}].ff.linear_out.weight"
"""


class _Tensor:
    """What the library's converter reads of a torch tensor (`.float()`)."""

    def __init__(self, array):
        self.array = array

    def float(self):
        return self.array


def test_e1_checkpoint_loads_as_its_converter_does_and_writes_back_whole(e1, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    e1_model = pytest.importorskip("e1jax._model")
    conversion = e1_model.build_conversion_map(E1_CONFIG["num_layers"])
    names = {
        ".".join(str(k).strip(".") for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(e1)[0]
    }
    rng = np.random.default_rng(0)
    hf = {conversion[n]: rng.normal(size=names[n].shape).astype(np.float32) for n in conversion}
    checkpoint = tmp_path / "e1_hf.safetensors"
    safetensors_numpy.save_file(hf, checkpoint)
    hand = e1_model.update_eqx_with_state_dict(
        e1, {n: _Tensor(a) for n, a in hf.items()}, conversion
    )
    program = eqxform.compile(E1_MAP)
    ours = program.apply(e1, weights=checkpoint)
    assert same(ours, hand)
    for spec in ("", "stack layers[0:2] scan\n", "stack layers[0:2] scan\nwhere ** -> scale 2\n"):
        program = eqxform.compile(E1_MAP + spec)
        model = program.apply(e1, weights=checkpoint)
        written = program.export_weights(model, tmp_path / "back.safetensors")
        back = safetensors_numpy.load_file(tmp_path / "back.safetensors")
        # Every tensor written back, the stacked layers' too, each its own values.
        assert sorted(written) == sorted(back) == sorted(hf)
        factor = 2 if "scale" in spec else 1
        assert all(np.allclose(back[n], factor * hf[n], rtol=1e-6) for n in hf)
    members = eqxform.compile(E1_MAP + "ensemble 2").apply(e1, weights=checkpoint, key=jr.key(1))
    with pytest.raises(eqxform.UsageError) as info:
        program.export_weights(members, tmp_path / "none.safetensors")
    assert info.value.diagnostics[0].code == "E383"
    assert not (tmp_path / "none.safetensors").exists()


# ---- rnn-jax: DeepStateSpaceModelEncoder of LinearRecurrentUnit layers -------------


@pytest.fixture(scope="module")
def ssm():
    return quietly_import("rnn_jax.ssm")


def build_encoder(ssm, key):
    ks = jr.split(key, 5)
    return ssm.DeepStateSpaceModelEncoder(
        4,
        [ssm.LinearRecurrentUnit(8, 8, key=ks[0]), ssm.LinearRecurrentUnit(8, 8, key=ks[1])],
        [ssm.GLUMixer(8, 8, key=ks[2]), ssm.GLUMixer(8, 8, key=ks[3])],
        out_dim=3,
        key=ks[4],
    )


SEQ = jr.normal(jr.key(5), (10, 4))


@pytest.fixture(scope="module")
def encoder(ssm):
    return build_encoder(ssm, jr.key(0))


def test_lru_star_cast_keeps_its_complex_weights(encoder):
    program = eqxform.compile("where ** -> cast bfloat16")
    out = program.apply(encoder, key=jr.key(1))
    assert out.layers[0].W_in.dtype == jnp.complex64
    assert np.array_equal(out.layers[1].W_out, encoder.layers[1].W_out)
    assert out.layers[0].W_skip.dtype == jnp.bfloat16
    assert out.mixers[0].gate_projection.weight.dtype == jnp.bfloat16
    assert "4 non-floating arrays skipped" in str(program.plan(encoder))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where LinearRecurrentUnit.W_out -> cast float32").apply(encoder)
    assert info.value.diagnostics[0].code == "E380"
    [d] = eqxform.compile("where **.W_in -> lora(rank=2)").plan(encoder).diagnostics
    assert d.code == "E381" and "`layers[0].W_in` is `complex64`" in d.message


def test_lru_lora_on_its_mixers_matches_hand_written(encoder):
    program = eqxform.compile("where GLUMixer.main_projection -> lora(rank=2)")
    adapted = with_random_b(program.apply(encoder, key=jr.key(1)), jr.key(2))
    where = lambda m: [x.main_projection for x in m.mixers]  # noqa: E731
    hand = hand_lora(encoder, adapted, where)
    assert np.allclose(eqxform.resolve(adapted)(SEQ), hand(SEQ), atol=1e-5)
    assert not np.allclose(eqxform.resolve(adapted)(SEQ), encoder(SEQ), atol=1e-4)


def test_lru_trains_its_complex_weights_as_hand_written(encoder):
    program = eqxform.compile("optimizer sgd(learning_rate=1e-1)\nwhere mixers -> freeze\n")
    model = program.apply(encoder, key=jr.key(1))
    target = jnp.ones((10, 3))

    def loss(m, y):
        return jnp.mean((eqxform.resolve(m)(SEQ) - y) ** 2)

    step = eqxform.make_step(loss, eqxform.optimizer(program, model), model)
    for _ in range(2):
        step(target)
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, encoder)
    spec = eqx.tree_at(
        lambda m: m.mixers, spec, jax.tree_util.tree_map(lambda _: False, encoder.mixers)
    )
    params, static = eqx.partition(encoder, spec)
    grad = jax.jit(jax.grad(lambda p: loss(eqx.combine(p, static), target)))
    for _ in range(2):
        params = jax.tree_util.tree_map(lambda p, g: p - 1e-1 * g, params, grad(params))
    trained = eqxform.resolve(step.model)
    assert same(trained, eqx.combine(params, static), atol=1e-5)
    assert trained.layers[0].W_in.dtype == jnp.complex64
    assert not np.allclose(trained.layers[0].W_in, encoder.layers[0].W_in)
    assert same(trained.mixers, encoder.mixers)


def test_lru_constructor_is_said_untraceable_and_its_model_ensembles(ssm, encoder):
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.compile("ensemble 2").apply(lambda key: build_encoder(ssm, key), key=jr.key(1))
    assert info.value.diagnostics[0].code == "E382"
    # Without it, the `Linear`s of the mixers are drawn per member; the LRU's
    # raw arrays are shared, and said to be (W201).
    with pytest.warns(eqxform.EqxformWarning, match="W201.*`layers\\[0\\].nu_log`"):
        members = eqxform.compile("ensemble 2").apply(encoder, key=jr.key(1))
    w = np.asarray(members.model.mixers[0].gate_projection.weight)
    assert not np.allclose(w[0], w[1])
    w_in = np.asarray(members.model.layers[0].W_in)
    assert np.array_equal(w_in[0], w_in[1])
    hand = eqx.filter_vmap(lambda m: m(SEQ))(members.model)
    assert np.allclose(members(SEQ), hand, atol=1e-5)


def test_lru_layerwise_stack_matches_the_model(encoder):
    stacked = eqxform.compile("stack layers scan layerwise").apply(encoder, key=jr.key(1))
    assert stacked.layers.layers.W_in.shape == (2, 8, 8)
    assert np.allclose(eqxform.resolve(stacked)(SEQ), encoder(SEQ), atol=1e-5)


def test_lru_stack_under_zip_is_refused_with_input_lines(encoder):
    # The encoder walks `zip(self.layers, self.mixers)`: one scan would run
    # both layers, then the first mixer only.
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("input f32[10,4]\nstack layers scan").apply(encoder, key=jr.key(1))
    assert info.value.diagnostics[0].code == "E144"


def test_lru_model_file_is_refused_with_its_complex_leaf(encoder, tmp_path):
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.save(tmp_path / "lru.eqx", encoder)
    [d] = info.value.diagnostics
    assert d.code == "E447" and "complex64" in d.message
    assert d.help == "keep its real and imaginary parts as two real arrays of the model"
    assert not (tmp_path / "lru.eqx").exists()


# ---- nequip-eqx: Nequip (an E(3)-equivariant interatomic potential) ---------------
# Its own `Linear` (a `weights` matrix of layout (in, out)) beside e3nn-jax's
# `Linear` (weights in a dict keyed by irreps paths, static `FunctionalLinear`
# objects); a `jraph.GraphsTuple` input; forces from `eqx.filter_grad` inside
# `__call__`; Python floats as fields. Not in the `test` extra: it requires
# `jax[cuda12]` (and e3nn-jax, jraph).

NEQUIP = dict(n_species=2, lmax=1, hidden_size=4, n_layers=2, radial_mlp_size=8)


@pytest.fixture(scope="module")
def nequip():
    # Importing the library sets JAX's matmul precision for the whole process:
    # put it back for the tests after these.
    precision = jax.config.jax_default_matmul_precision
    quietly_import("nequip_eqx")
    model = quietly_import("nequip_eqx.model")
    yield model, eqxform.new(model.Nequip, radial_mlp_layers=1, **NEQUIP)
    jax.config.update("jax_default_matmul_precision", precision)


def molecule():
    jraph = pytest.importorskip("jraph")
    return jraph.GraphsTuple(
        nodes={"positions": jr.normal(jr.key(1), (4, 3)), "species": jnp.array([0, 1, 0, 1])},
        edges=None,
        senders=jnp.array([0, 1, 2, 3, 0, 2]),
        receivers=jnp.array([1, 0, 3, 2, 2, 0]),
        n_node=jnp.array([4]),
        n_edge=jnp.array([6]),
        globals=None,
    )


def test_nequip_lora_on_its_own_linear_matches_hand_written(nequip):
    _, model = nequip
    graph = molecule()
    [d] = eqxform.compile("where Linear.weights -> lora(rank=1)").plan(model).diagnostics
    assert d.code == "E206" and "`nequip_eqx:Linear`" in d.message
    program = eqxform.compile("where nequip_eqx:Linear.weights -> lora(rank=1)")
    adapted = program.apply(model, key=jr.key(1))
    where = lambda m: [lin.weights for c in m.layers for lin in c.radial_mlp.layers]  # noqa: E731
    keys = jr.split(jr.key(2), len(where(adapted)))
    adapted = eqx.tree_at(
        lambda m: [w.lora_b for w in where(m)],
        adapted,
        [0.1 * jr.normal(k, w.lora_b.shape) for k, w in zip(keys, where(adapted))],
    )
    # By hand: each (in, out) matrix W + scale * B A, the factors taken from ours.
    hand = eqx.tree_at(
        where,
        model,
        [
            w + lo.scale.value * (lo.lora_b @ lo.lora_a)
            for w, lo in zip(where(model), where(adapted))
        ],
    )
    run = eqx.filter_jit(lambda m: eqxform.resolve(m)(graph))
    energy, forces = run(adapted)
    hand_energy, hand_forces = run(hand)
    assert np.allclose(energy, hand_energy, atol=1e-5)
    assert np.allclose(forces, hand_forces, atol=1e-5)
    assert not np.allclose(energy, run(model)[0], atol=1e-4)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(run(m)[0] ** 2)))(adapted)
    assert all(np.abs(np.asarray(w.lora_b)).max() > 0 for w in where(grads))


def test_nequip_constructor_with_a_positional_key_is_said_so(nequip):
    module, _ = nequip
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.new(module.Nequip, jr.key(0), **NEQUIP)
    [d] = info.value.diagnostics
    assert d.code == "E451" and "a random key" in d.message


# e3nn's constructor traced under `vmap`: a quarter of a minute on two cores.
@pytest.mark.slow
def test_nequip_ensemble_of_its_constructor(nequip):
    module, _ = nequip
    graph = molecule()

    def constructor(key):
        return module.Nequip(key, radial_mlp_layers=1, **NEQUIP)

    members = eqxform.compile("ensemble 2").apply(constructor, key=jr.key(1))
    energy = members(graph)[0]
    hand = eqx.filter_vmap(lambda m: m(graph)[0])(members.model)
    assert np.allclose(energy, hand, atol=1e-5)
    # Each member is its own draw of the constructor.
    drawn = [x for x in jax.tree_util.tree_leaves(members.model) if eqx.is_inexact_array(x)]
    assert any(x[0].size > 1 and not np.allclose(x[0], x[1]) for x in drawn)
