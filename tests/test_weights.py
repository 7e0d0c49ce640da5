"""Checkpoints in another library's names: `weights`, `map`, `skip`, `keep`
(docs/weights.md). Loaded by rules and compared with PyTorch's outputs (the
fixtures of tests/fixtures/weights/, made by its make_fixtures.py), checked
from the header alone, written back bit-exact, LoRA in PEFT's layout."""

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy as stn
from click.testing import CliRunner
from weightmodels import make_resnet18, resnet18_logits

import eqxform
from eqxform._cli import main
from eqxform._weights import Checkpoint

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "weights"
SPECS = ROOT / "specs" / "weights"


def _codes(error) -> list[str]:
    return [d.code for d in error.value.diagnostics]


@pytest.fixture
def reads(monkeypatch):
    """Every tensor read from a checkpoint, by name."""
    seen: list[str] = []
    original = Checkpoint.read

    def read(self, name, index=None):
        seen.append(name)
        return original(self, name, index)

    monkeypatch.setattr(Checkpoint, "read", read)
    return seen


# ---- a small torch-named checkpoint and an Equinox model for it -------------


class Net(eqx.Module):
    """`blocks: list[Block]`, each with a fused-nothing attention and an MLP."""

    embed: eqx.nn.Conv2d
    blocks: list
    head: eqx.nn.Linear

    def __init__(self, depth=3, width=8, *, key):
        k = jax.random.split(key, 2 + depth)
        self.embed = eqx.nn.Conv2d(3, width, 2, stride=2, key=k[0])
        self.blocks = [
            eqx.nn.Sequential(
                [
                    eqx.nn.Linear(width, 3 * width, key=k[2 + i]),
                    eqx.nn.Linear(width, width, key=k[1]),
                ]
            )
            for i in range(depth)
        ]
        self.head = eqx.nn.Linear(width, 4, key=k[1])


def _torch_names(depth=3, width=8, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    ck = {"patch.weight": f(width, 3, 2, 2), "patch.bias": f(width)}
    for i in range(depth):
        ck[f"h.{i}.qkv.weight"] = f(3 * width, width)
        ck[f"h.{i}.qkv.bias"] = f(3 * width)
        ck[f"h.{i}.proj.weight"] = f(width, width)
        ck[f"h.{i}.proj.bias"] = f(width)
    ck["fc.weight"] = f(4, width)
    ck["fc.bias"] = f(4)
    ck["fc.num_calls"] = np.array(3, np.int64)
    return ck


NET_SPEC = """\
map "patch.weight" -> "embed.weight"
map "patch.bias" -> "embed.bias" with reshape
map "h.{i}.qkv.**" -> "blocks[{i}][0].**"
map "h.{i}.proj.**" -> "blocks[{i}][1].**"
map "fc.weight" -> "head.weight"
map "fc.bias" -> "head.bias"
skip "**.num_calls"
"""


@pytest.fixture
def net_ckpt(tmp_path):
    ck = _torch_names()
    path = tmp_path / "net.safetensors"
    stn.save_file(ck, path)
    return path, ck


def test_load_by_rules_equals_hand_written_tree_at(net_ckpt, reads):
    path, ck = net_ckpt
    model = Net(key=jax.random.key(0))
    loaded = eqxform.compile(NET_SPEC).load_weights(model, path)
    # The same by hand, as a user writes it with `eqx.tree_at`.
    by_hand = eqx.tree_at(
        lambda m: (m.embed.weight, m.embed.bias, m.head.weight, m.head.bias),
        model,
        tuple(
            jnp.asarray(ck[n]).reshape(s)
            for n, s in [
                ("patch.weight", (8, 3, 2, 2)),
                ("patch.bias", (8, 1, 1)),
                ("fc.weight", (4, 8)),
                ("fc.bias", (4,)),
            ]
        ),
    )
    for i in range(3):
        by_hand = eqx.tree_at(
            lambda m: (
                m.blocks[i][0].weight,
                m.blocks[i][0].bias,
                m.blocks[i][1].weight,
                m.blocks[i][1].bias,
            ),
            by_hand,
            tuple(
                jnp.asarray(ck[f"h.{i}.{n}"])
                for n in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias")
            ),
        )
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(by_hand)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # Each tensor read once; the skipped one never.
    assert sorted(reads) == sorted(n for n in ck if n != "fc.num_calls")


def test_export_is_the_checkpoint_again_bit_exact(net_ckpt, tmp_path):
    path, ck = net_ckpt
    program = eqxform.compile(NET_SPEC)
    loaded = program.load_weights(Net(key=jax.random.key(0)), path)
    written = program.export_weights(loaded, tmp_path / "back.safetensors", weights=path)
    back = stn.load_file(tmp_path / "back.safetensors")
    assert sorted(written) == sorted(back) == sorted(ck)
    for name, value in ck.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name


def test_export_of_a_reshape_needs_the_original(tmp_path, net_ckpt):
    path, _ = net_ckpt
    program = eqxform.compile(NET_SPEC)
    loaded = program.load_weights(Net(key=jax.random.key(0)), path)
    with pytest.raises(eqxform.SpecError) as e:
        program.export_weights(loaded, tmp_path / "back.safetensors")
    assert _codes(e) == ["E249"] and e.value.diagnostics[0].span.line == 2
    assert not (tmp_path / "back.safetensors").exists()


def test_the_spec_is_the_weights_line_and_apply_runs_the_rules_after(net_ckpt):
    path, ck = net_ckpt
    spec = f'weights "{path}"\n' + NET_SPEC + "where head -> freeze\n"
    model = eqxform.compile(spec).apply(Net(key=jax.random.key(0)))
    assert np.array_equal(np.asarray(eqxform.resolve(model).head.weight), ck["fc.weight"])
    assert type(model.head.weight).__name__ == "Frozen"


# ---- strict accounting, from the header alone ------------------------------------


def _problems(spec: str, path, model=None):
    model = Net(key=jax.random.key(0)) if model is None else model
    return eqxform.compile(spec).check(model, weights=path)


def test_a_typo_in_a_name_is_reported_at_its_line_with_the_nearest(net_ckpt, reads):
    path, _ = net_ckpt
    found = _problems(NET_SPEC.replace('"fc.weight" ->', '"fc.weigth" ->'), path)
    by_code = {d.code: d for d in found}
    assert set(by_code) == {"E241", "E245"}
    assert by_code["E241"].span.line == 5 and by_code["E241"].span.column == 5
    assert "`fc.weigth`" in by_code["E241"].message
    assert "did you mean `fc.weight`" in by_code["E241"].help
    # The unused tensor is listed, with the name that was meant.
    assert "`fc.weight`" in by_code["E245"].message and "fc.weigth" in by_code["E245"].help
    assert reads == []  # nothing but the header


def test_a_transposed_shape_gives_both_shapes_and_the_fix(tmp_path, reads):
    ck = _torch_names()
    ck["fc.weight"] = ck["fc.weight"].T.copy()  # (8, 4): a Flax kernel
    stn.save_file(ck, tmp_path / "t.safetensors")
    [d] = _problems(NET_SPEC, tmp_path / "t.safetensors")
    assert d.code == "E243" and d.span.line == 5
    assert "[8, 4]" in d.message and "[4, 8]" in d.message
    assert "transpose" in d.help
    fixed = NET_SPEC.replace('"head.weight"', '"head.weight" with transpose')
    assert _problems(fixed, tmp_path / "t.safetensors") == []
    assert reads == []


def test_missing_and_unused_tensors_list_both_sides(tmp_path, reads):
    ck = _torch_names()
    del ck["h.2.proj.weight"]
    ck["h.0.extra"] = np.zeros(3, np.float32)
    stn.save_file(ck, tmp_path / "m.safetensors")
    found = {d.code: d for d in _problems(NET_SPEC, tmp_path / "m.safetensors")}
    # One diagnostic per mistake: the array the missing tensor would fill is
    # named by E241, not reported again as unfilled.
    assert set(found) == {"E241", "E245"}
    assert "`h.2.proj.weight`" in found["E241"].message and found["E241"].span.line == 4
    assert "`blocks[2][1].weight`" in found["E241"].message
    assert "`h.0.extra`" in found["E245"].message
    # An array no line names at all is E246.
    found = {
        d.code: d
        for d in _problems(
            NET_SPEC.replace('map "fc.bias" -> "head.bias"\n', ""), tmp_path / "m.safetensors"
        )
    }
    assert "`head.bias`" in found["E246"].message and "keep" in found["E246"].help
    assert reads == []


def test_a_model_path_typo_an_array_filled_twice_and_a_dead_skip(net_ckpt):
    path, _ = net_ckpt
    spec = NET_SPEC.replace('"head.bias"', '"haed.bias"') + 'skip "**.nothing"\n'
    spec = spec.replace('map "fc.weight" -> "head.weight"', 'map "fc.weight" -> "embed.weight"')
    found = {d.code: d for d in _problems(spec, path)}
    assert {"E242", "E247", "E248"} <= set(found)
    assert "did you mean one of `head.bias`" in found["E242"].help
    assert found["E247"].span.line == 5 and "line 1" in found["E247"].help
    assert found["E248"].span.line == 8


def test_a_dtype_needs_cast(tmp_path):
    ck = _torch_names()
    ck["fc.weight"] = ck["fc.weight"].astype(np.float16)
    stn.save_file(ck, tmp_path / "h.safetensors")
    [d] = _problems(NET_SPEC, tmp_path / "h.safetensors")
    assert d.code == "E244" and "float16" in d.message
    spec = NET_SPEC.replace('"head.weight"', '"head.weight" with cast')
    program = eqxform.compile(spec)
    model = program.load_weights(Net(key=jax.random.key(0)), tmp_path / "h.safetensors")
    assert model.head.weight.dtype == jnp.float32
    assert np.array_equal(np.asarray(model.head.weight), ck["fc.weight"].astype(np.float32))
    program.export_weights(model, tmp_path / "b.safetensors", weights=tmp_path / "h.safetensors")
    assert stn.load_file(tmp_path / "b.safetensors")["fc.weight"].dtype == np.float16


@pytest.mark.parametrize(
    "line, code",
    [
        ('map "a.{i.w" -> "a[{i}].w"', "E160"),
        ('map "a.w" -> "a w"', "E160"),
        ('map "a.w", "b.w" -> "a.w", "b.w"', "E161"),
        ('map "a.{i}.w" -> "a.w"', "E162"),
        ('map "a.w" -> "a.w" with transpose [1, 1]', "E163"),
        ('map "a.w" -> "a.w" with trnaspose', "E163"),
        ('map "a.w" -> "a.w" with axis 1', "E163"),
        ('skip "a{"', "E160"),
    ],
)
def test_malformed_lines_are_caught_without_a_model(line, code):
    with pytest.raises(eqxform.SpecError) as e:
        eqxform.compile(line)
    assert _codes(e) == [code]
    assert e.value.diagnostics[0].span.line == 1


def test_check_on_the_command_line_reads_only_the_header(tmp_path, reads):
    model_file = tmp_path / "model.eqx"
    model = eqxform.compile("model MLP(in_size=4, out_size=2, width_size=4, depth=1)").apply()
    eqxform.save(model_file, model)
    rng = np.random.default_rng(0)
    shapes = {"l0.weight": (4, 4), "l0.bias": (4,), "l1.weight": (2, 4), "l1.bias": (2,)}
    stn.save_file(
        {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()},
        tmp_path / "ck.safetensors",
    )
    spec = tmp_path / "s.eqx"
    spec.write_text(
        'map "l{i}.weigth" -> "layers[{i}].weight"\nmap "l{i}.bias" -> "layers[{i}].bias"\n'
    )
    args = ["check", str(spec), str(model_file), "--weights", str(tmp_path / "ck.safetensors")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "error[E241]: the checkpoint has no `l0.weigth`, `l1.weigth`" in result.output
    assert "s.eqx:1:5" in result.output and "did you mean one of `l0.weight`" in result.output
    assert "E245" in result.output
    assert reads == []
    # A spec error found without a model is reported at once, before any file is read.
    spec.write_text('map "fc.weigth" -> "layers[{i}].weight"\n')
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "s.eqx:1:" in result.output and "E162" in result.output


def test_pickles_are_refused_with_the_conversion(tmp_path):
    pt = tmp_path / "resnet18.pth"
    pt.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.compile(NET_SPEC).load_weights(Net(key=jax.random.key(0)), pt)
    [d] = e.value.diagnostics
    assert d.code == "E340"
    assert "safetensors.torch.save_file(torch.load(" in d.help and "resnet18.safetensors" in d.help
    # A pickle under another name is refused by its first byte.
    (tmp_path / "x.safetensors").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.compile(NET_SPEC).load_weights(
            Net(key=jax.random.key(0)), tmp_path / "x.safetensors"
        )
    assert _codes(e) == ["E340"]


def test_a_safetensors_file_whose_header_length_starts_like_a_pickle_loads(tmp_path):
    # A safetensors file starts with its header's length, little-endian: where
    # that length is 128, 384, ... its first byte is 0x80, as a pickle's is.
    import safetensors.numpy

    ck = _torch_names()
    for pad in range(256):
        path = tmp_path / "net.safetensors"
        safetensors.numpy.save_file(ck, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    loaded = eqxform.compile(NET_SPEC).load_weights(Net(key=jax.random.key(0)), path)
    np.testing.assert_array_equal(np.asarray(loaded.head.weight), ck["fc.weight"])


def test_npz_checkpoints_load(tmp_path):
    ck = _torch_names()
    np.savez(tmp_path / "net.npz", **ck)
    model = eqxform.compile(NET_SPEC).load_weights(Net(key=jax.random.key(0)), tmp_path / "net.npz")
    assert np.array_equal(np.asarray(model.blocks[1][0].weight), ck["h.1.qkv.weight"])


def test_a_damaged_header_is_a_diagnostic_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(eqxform.EqxformError) as e:
        eqxform.compile(NET_SPEC).check(Net(key=jax.random.key(0)), weights=bad)
    assert _codes(e) == ["E303"]


def test_weights_without_map_lines_and_map_lines_without_weights(net_ckpt):
    path, _ = net_ckpt
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.compile("where head -> freeze").apply(Net(key=jax.random.key(0)), weights=path)
    assert _codes(e) == ["E450"]
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.compile(NET_SPEC).apply(Net(key=jax.random.key(0)))
    assert _codes(e) == ["E450"]


# ---- fuse, split, transpose, stacks -------------------------------------------


def test_split_a_fused_projection_and_fuse_it_back(tmp_path):
    mha = eqx.nn.MultiheadAttention(2, 8, key=jax.random.key(0))
    rng = np.random.default_rng(3)
    ck = {
        "attn.in_proj_weight": rng.normal(size=(24, 8)).astype(np.float32),
        "attn.out_proj.weight": rng.normal(size=(8, 8)).astype(np.float32),
    }
    stn.save_file(ck, tmp_path / "mha.safetensors")
    spec = (
        'map "attn.in_proj_weight" -> "query_proj.weight", "key_proj.weight", '
        '"value_proj.weight"\n'
        'map "attn.out_proj.weight" -> "output_proj.weight"\n'
    )
    program = eqxform.compile(spec)
    loaded = program.load_weights(mha, tmp_path / "mha.safetensors")
    q, k, v = np.split(ck["attn.in_proj_weight"], 3)
    assert np.array_equal(np.asarray(loaded.query_proj.weight), q)
    assert np.array_equal(np.asarray(loaded.key_proj.weight), k)
    assert np.array_equal(np.asarray(loaded.value_proj.weight), v)
    program.export_weights(loaded, tmp_path / "back.safetensors")
    back = stn.load_file(tmp_path / "back.safetensors")
    assert np.array_equal(back["attn.in_proj_weight"], ck["attn.in_proj_weight"])

    # The reverse: three Flax kernels `(in, out)` fused into one `(3 out, in)` array.
    fused = eqx.nn.Linear(8, 24, use_bias=False, key=jax.random.key(1))
    flax = {n: rng.normal(size=(8, 8)).astype(np.float32) for n in ("q", "k", "v")}
    stn.save_file(flax, tmp_path / "flax.safetensors")
    spec = 'map "q", "k", "v" -> "weight" with transpose, axis 0\n'
    program = eqxform.compile(spec)
    loaded = program.load_weights(fused, tmp_path / "flax.safetensors")
    want = np.concatenate([flax["q"].T, flax["k"].T, flax["v"].T])
    assert np.array_equal(np.asarray(loaded.weight), want)
    program.export_weights(loaded, tmp_path / "flax_back.safetensors")
    back = stn.load_file(tmp_path / "flax_back.safetensors")
    assert all(np.array_equal(back[n], flax[n]) for n in flax)


def test_per_layer_tensors_fill_a_pre_stacked_array(tmp_path, reads):
    make = lambda k: eqx.nn.Linear(4, 4, key=k)  # noqa: E731
    stacked = eqx.filter_vmap(make)(jax.random.split(jax.random.key(0), 5))
    rng = np.random.default_rng(0)
    ck = {
        f"layer.{i}.dense.{p}": rng.normal(size=s).astype(np.float32)
        for i in range(5)
        for p, s in (("weight", (4, 4)), ("bias", (4,)))
    }
    stn.save_file(ck, tmp_path / "s.safetensors")
    program = eqxform.compile('map "layer.{i}.dense.**" -> "[{i}].**"')
    loaded = program.load_weights(stacked, tmp_path / "s.safetensors")
    assert np.array_equal(
        np.asarray(loaded.weight), np.stack([ck[f"layer.{i}.dense.weight"] for i in range(5)])
    )
    assert len(reads) == 10
    # A checkpoint with fewer layers than the model: the missing ones are named.
    del ck["layer.4.dense.weight"], ck["layer.4.dense.bias"]
    stn.save_file(ck, tmp_path / "short.safetensors")
    found = {d.code: d for d in program.check(stacked, weights=tmp_path / "short.safetensors")}
    assert set(found) == {"E241"} and "`layer.4.dense.weight`" in found["E241"].message
    assert "`bias[4] (stack slice)`" in found["E241"].message


def test_plan_shows_the_mapping_table(net_ckpt, tmp_path):
    path, _ = net_ckpt
    plan = eqxform.compile(NET_SPEC).plan(Net(key=jax.random.key(0)), weights=path)
    rows = {r["model"]: r for r in plan.weights}
    assert rows["embed.bias"] == {
        "model": "embed.bias",
        "checkpoint": "patch.bias",
        "transform": "reshape",
        "shape": [8, 1, 1],
        "line": 2,
    }
    assert rows["blocks[2][0].weight"]["checkpoint"] == "h.2.qkv.weight"
    text = str(plan)
    assert "embed.bias" in text and "<- patch.bias" in text and "(reshape)" in text


# ---- the shipped conversions, against PyTorch's outputs -----------------------


def _io(name):
    data = np.load(FIXTURES / f"{name}_io.npz")
    return data["x"], data["y"]


def test_torchvision_resnet18_into_a_resnet_with_batchnorm_state(tmp_path):
    x, y = _io("resnet18")
    pair = make_resnet18(num_classes=10, width=6, key=jax.random.key(0))
    program = eqxform.compile(SPECS / "resnet18_torchvision.eqx")
    assert len(program.weights.maps) + len(program.weights.skips) <= 15
    model, state = program.load_weights(pair, FIXTURES / "resnet18.safetensors")
    logits = resnet18_logits(model, state, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(logits), y, atol=1e-4)
    # Back into torchvision's names, bit-exact, `num_batches_tracked` included.
    program.export_weights(
        (model, state), tmp_path / "back.safetensors", weights=FIXTURES / "resnet18.safetensors"
    )
    original = stn.load_file(FIXTURES / "resnet18.safetensors")
    back = stn.load_file(tmp_path / "back.safetensors")
    assert sorted(back) == sorted(original)
    assert all(np.array_equal(back[n], original[n]) for n in original)


def _equimo_vit():
    from equimo.models import VisionTransformer

    return VisionTransformer(
        img_size=32,
        in_channels=3,
        dim=32,
        patch_size=8,
        num_heads=4,
        depths=[2],
        num_classes=10,
        reg_tokens=0,
        class_token=True,
        global_pool="token",
        eps=1e-6,
        act_layer="exactgelu",
        key=jax.random.key(0),
    )


def test_timm_vit_into_equimo_vit():
    x, y = _io("vit")
    program = eqxform.compile(SPECS / "vit_timm_equimo.eqx")
    assert len(program.weights.maps) <= 15
    model = program.load_weights(_equimo_vit(), FIXTURES / "vit.safetensors")
    model = eqx.nn.inference_mode(model)
    logits = jax.vmap(lambda im: model(im, key=jax.random.key(0), inference=True))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(logits), y, atol=1e-4)


def test_hf_esm2_into_esm2quinox_stack_axis():
    import esm2quinox

    tokens, y = _io("esm2")
    program = eqxform.compile(SPECS / "esm2_hf.eqx")
    assert len(program.weights.maps) + len(program.weights.skips) <= 15
    model = esm2quinox.ESM2(
        num_layers=2, embed_size=32, num_heads=4, token_dropout=True, key=jax.random.key(0)
    )
    model = program.load_weights(model, FIXTURES / "esm2.safetensors")
    out = model(jnp.asarray(tokens))
    keep = tokens != 1  # padding positions differ by design
    np.testing.assert_allclose(np.asarray(out.logits)[keep], y[keep], atol=1e-4)


def test_lora_on_the_converted_vit_exports_to_peft_and_back(tmp_path):
    spec = (SPECS / "vit_timm_equimo.eqx").read_text() + (
        "where **.attn.qkv -> lora(rank=4, alpha=8)\n"
    )
    program = eqxform.compile(spec)
    tuned = program.apply(_equimo_vit(), weights=FIXTURES / "vit.safetensors")
    qkv = tuned.blocks[0].blocks[1].attn.qkv
    tuned = eqx.tree_at(
        lambda m: m.blocks[0].blocks[1].attn.qkv.lora_b, tuned, jnp.full_like(qkv.lora_b, 0.5)
    )
    names = program.export_peft(tuned, tmp_path / "adapter")
    assert names == [
        f"base_model.model.blocks.{i}.attn.qkv.lora_{ab}.weight" for i in (0, 1) for ab in "AB"
    ]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    assert config["target_modules"] == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    tensors = stn.load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert tensors["base_model.model.blocks.1.attn.qkv.lora_A.weight"].shape == (4, 32)
    assert tensors["base_model.model.blocks.1.attn.qkv.lora_B.weight"].shape == (96, 4)
    # Imported back onto the base: the same adapters.
    fresh = program.apply(_equimo_vit(), weights=FIXTURES / "vit.safetensors")
    back = program.load_peft(fresh, tmp_path / "adapter")
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tuned)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_apply_and_export_on_the_command_line(tmp_path):
    runner = CliRunner()
    spec = tmp_path / "r.eqx"
    spec.write_text(
        "model MLP(in_size=4, out_size=2, width_size=4, depth=1)\n"
        'map "l{i}.weight" -> "layers[{i}].weight" with transpose\n'
        'map "l{i}.bias" -> "layers[{i}].bias"\n'
    )
    rng = np.random.default_rng(0)
    ck = {
        "l0.weight": rng.normal(size=(4, 4)).astype(np.float32),
        "l0.bias": rng.normal(size=4).astype(np.float32),
        "l1.weight": rng.normal(size=(4, 2)).astype(np.float32),
        "l1.bias": rng.normal(size=2).astype(np.float32),
    }
    stn.save_file(ck, tmp_path / "ck.safetensors")
    out = tmp_path / "out.eqx"
    result = runner.invoke(
        main, ["apply", str(spec), "--weights", str(tmp_path / "ck.safetensors"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    model = eqxform.load(out)
    assert np.array_equal(np.asarray(model.layers[1].weight), ck["l1.weight"].T)
    result = runner.invoke(main, ["plan", str(spec), "--weights", str(tmp_path / "ck.safetensors")])
    assert (
        result.exit_code == 0
        and "layers[1].weight" in result.output
        and "<- l1.weight" in result.output
    )
    back = tmp_path / "back.safetensors"
    result = runner.invoke(main, ["export", str(spec), str(out), "-o", str(back)])
    assert result.exit_code == 0, result.output
    got = stn.load_file(back)
    assert sorted(got) == sorted(ck) and all(np.array_equal(got[n], ck[n]) for n in ck)


_SHARDED = r"""
import json, sys
import equinox as eqx, jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import eqxform
from eqxform._weights import Checkpoint

reads = []
original = Checkpoint.read
def read(self, name, index=None):
    reads.append([name, None if index is None else str(index)])
    return original(self, name, index)
Checkpoint.read = read

mesh = Mesh(np.array(jax.devices()).reshape(8), ("model",))
model = eqx.nn.Linear(16, 64, key=jax.random.key(0))
model = eqx.tree_at(
    lambda m: m.weight, model, jax.device_put(model.weight, NamedSharding(mesh, P("model", None)))
)
program = eqxform.compile('map "fc.weight" -> "weight"\nmap "fc.bias" -> "bias"')
loaded = program.load_weights(model, sys.argv[1])
weight = loaded.weight
print(json.dumps({
    "reads": reads,
    "spec": list(weight.sharding.spec),
    "shard_rows": [s.data.shape[0] for s in weight.addressable_shards],
    "equal": bool(np.array_equal(np.asarray(weight), np.load(sys.argv[2]))),
}))
"""


def test_a_sharded_array_is_read_slice_by_slice(tmp_path):
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    ck = {
        "fc.weight": rng.normal(size=(64, 16)).astype(np.float32),
        "fc.bias": np.zeros(64, np.float32),
    }
    stn.save_file(ck, tmp_path / "fc.safetensors")
    np.save(tmp_path / "w.npy", ck["fc.weight"])
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED, str(tmp_path / "fc.safetensors"), str(tmp_path / "w.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["equal"] and result["spec"] == ["model", None]
    assert result["shard_rows"] == [8] * 8
    weight_reads = [index for name, index in result["reads"] if name == "fc.weight"]
    # Eight reads of eight rows each, never the whole tensor.
    assert len(weight_reads) == 8 and None not in weight_reads
    assert ["fc.bias", None] in result["reads"]


def test_peft_export_on_the_command_line(tmp_path):
    runner = CliRunner()
    spec = tmp_path / "r.eqx"
    spec.write_text(
        "model MLP(in_size=4, out_size=2, width_size=4, depth=1)\n"
        'map "l{i}.**" -> "layers[{i}].**"\n'
        "where layers[0] -> lora(rank=2, alpha=4)\n"
    )
    rng = np.random.default_rng(0)
    ck = {
        "l0.weight": rng.normal(size=(4, 4)).astype(np.float32),
        "l0.bias": rng.normal(size=4).astype(np.float32),
        "l1.weight": rng.normal(size=(2, 4)).astype(np.float32),
        "l1.bias": rng.normal(size=2).astype(np.float32),
    }
    stn.save_file(ck, tmp_path / "ck.safetensors")
    out = tmp_path / "out.eqx"
    args = ["apply", str(spec), "--weights", str(tmp_path / "ck.safetensors"), "-o", str(out)]
    assert runner.invoke(main, args).exit_code == 0
    result = runner.invoke(
        main, ["export", str(spec), str(out), "--peft", "-o", str(tmp_path / "ad")]
    )
    assert result.exit_code == 0, result.output
    tensors = stn.load_file(tmp_path / "ad" / "adapter_model.safetensors")
    assert sorted(tensors) == [
        "base_model.model.l0.lora_A.weight",
        "base_model.model.l0.lora_B.weight",
    ]
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (2, 4, ["l0"])
    # A pickle on the command line: refused, a usage error (exit 2), no traceback.
    (tmp_path / "m.pth").write_bytes(b"\x80\x02}q\x00.")
    result = runner.invoke(main, ["check", str(spec), "--weights", str(tmp_path / "m.pth")])
    assert result.exit_code == 2 and "E340" in result.output and "Traceback" not in result.output


def test_keep_leaves_an_array_its_own_values(net_ckpt):
    path, ck = net_ckpt
    spec = NET_SPEC.replace('map "fc.weight" -> "head.weight"\nmap "fc.bias" -> "head.bias"\n', "")
    spec += 'skip "fc.*"\n'
    model = Net(key=jax.random.key(0))
    found = {d.code: d for d in eqxform.compile(spec).check(model, weights=path)}
    assert set(found) == {"E246"} and "`head.weight`, `head.bias`" in found["E246"].message
    kept = eqxform.compile(spec + 'keep "head.*"\n').load_weights(model, path)
    assert kept.head.weight is model.head.weight
    assert np.array_equal(np.asarray(kept.embed.weight), ck["patch.weight"])


def test_a_torch_zip_checkpoint_is_refused_as_a_pickle(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "model.safetensors", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.compile(NET_SPEC).check(
            Net(key=jax.random.key(0)), weights=tmp_path / "model.safetensors"
        )
    assert _codes(e) == ["E340"]


def test_batchnorm_statistics_into_a_model_that_holds_its_initial_state():
    # Built without `make_with_state`: the statistics go into the model's
    # `StateIndex`es, and `eqx.nn.State(model)` holds them.
    from weightmodels import ResNet18

    model = ResNet18(num_classes=10, width=6, key=jax.random.key(0))
    program = eqxform.compile(SPECS / "resnet18_torchvision.eqx")
    loaded = program.load_weights(model, FIXTURES / "resnet18.safetensors")
    state = eqx.nn.State(loaded)
    original = stn.load_file(FIXTURES / "resnet18.safetensors")
    bn = loaded.layers[2][0].downsample[1]
    mean, var = state.get(bn.ema_state_index)
    assert np.array_equal(np.asarray(mean), original["layer3.0.downsample.1.running_mean"])
    assert np.array_equal(np.asarray(var), original["layer3.0.downsample.1.running_var"])
    # Loaded statistics are used from the first training step, as PyTorch's are.
    assert not bool(state.get(bn.ema_first_time_index))
    x, y = _io("resnet18")
    logits = resnet18_logits(loaded, state, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(logits), y, atol=1e-4)
