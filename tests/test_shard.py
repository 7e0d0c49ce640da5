"""Sharding on a device mesh: the `mesh` directive, `shard` rules, `over`,
placement at `apply` and `load`, training data- and model-parallel, and runs
of several processes. The tests run on the 8 simulated CPU devices that
conftest.py asks XLA for."""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import realmodels as R
from click.testing import CliRunner
from jax.sharding import NamedSharding, PartitionSpec

import eqxform
from eqxform._cli import main
from eqxform._files import SliceReader, TensorSpec, encode, read_header, write_stream

HERE = Path(__file__).parent

MLP_SPEC = """model MLP(in_size=16, out_size=8, width_size=64, depth=2)
optimizer adam(learning_rate=1e-2)
mesh data=2 model=4
where Linear.weight if shape[0] == 64 -> shard (model, none)
where layers[-1].weight -> shard (none, model)
"""

VIT = """model TinyViT(dim=16, depth=4, num_heads=2)
stack blocks scan over data
where Linear.weight -> init normal(stddev=0.02)
"""
VIT_RULES = """mesh data=2 model=4
where **.fc1.weight | **.qkv.weight -> shard (model, none)
where **.fc2.weight | **.proj.weight -> shard (none, model)
where head.weight -> shard (none, model)
"""


@pytest.fixture(scope="module", autouse=True)
def constructors():
    eqxform.register_constructor("TinyViT", R.TinyViT)
    eqxform.register_constructor("LoopingTransformer", R.LoopingTransformer)


def arrays(tree):
    return [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]


def spec_of(x) -> PartitionSpec:
    assert isinstance(x.sharding, NamedSharding), x.sharding
    return x.sharding.spec


def codes(excinfo) -> list[str]:
    return [d.code for d in excinfo.value.diagnostics]


def test_the_simulated_devices_are_there():
    assert jax.device_count() == 8


# ---- the language ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, code, line, column, help_part",
    [
        ("mesh data=2 model=4\nwhere x -> shard (none, modle)\n", "E190", 2, 25, "`model`"),
        ("mesh data=2 model=4\nstack x scan over modl\n", "E190", 2, 19, "`model`"),
        ("mesh data=2 model=4\nensemble 4 over dta\n", "E190", 2, 17, "`data`"),
        ("where x -> shard (none, model)\n", "E191", 1, 25, "mesh data=2"),
        ("mesh data=0\n", "E192", 1, 6, "-1"),
        ("mesh a=-1 b=-1\n", "E192", 1, 11, "sizes"),
        ("mesh a=2 a=4\n", "E193", 1, 10, "own name"),
        ("mesh a=2\nwhere x -> shard (none, 3)\n", "E194", 2, 25, "mesh axis"),
        ("mesh a=2\nwhere x -> shard\n", "E194", 2, 12, "shard (none, model)"),
        ("let y = (1, 2)\n", "E194", 1, 9, "list"),
        ("mesh a=2 b=2\nwhere x -> shard (a, (a, b))\n", "E232", 2, 23, "once"),
    ],
)
def test_spec_errors_have_a_code_and_a_span(text, code, line, column, help_part):
    with pytest.raises(eqxform.SpecError) as e:
        eqxform.compile(text)
    d = next(d for d in e.value.diagnostics if d.code == code)
    assert (d.span.line, d.span.column) == (line, column)
    assert help_part in d.help


def test_a_mesh_given_from_outside_replaces_the_spec_s(tmp_path):
    text = "mesh data=8\nwhere layers[0].weight -> shard (none, model)\n"
    with pytest.raises(eqxform.SpecError):
        eqxform.compile(text)
    program = eqxform.compile(text, mesh="data=2,model=4")
    assert program.mesh.axes == (("data", 2), ("model", 4))
    # A model made with it keeps the mesh in its recipe, so its file loads.
    made = eqxform.compile(
        "model MLP(in_size=4, out_size=2, width_size=4, depth=1)\n" + text, mesh="data=2,model=4"
    ).apply()
    assert eqxform.recipe_of(made)["specs"][0]["mesh"] == "data=2 model=4"
    eqxform.save(tmp_path / "m.eqx", made)
    back = eqxform.load(tmp_path / "m.eqx", mesh="data=2,model=4")
    assert spec_of(back.layers[0].weight) == PartitionSpec(None, "model")
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.compile(text, mesh="data=2,model")
    assert codes(e) == ["E465"]


def test_a_mesh_that_needs_more_devices_than_there_are():
    program = eqxform.compile(
        "model MLP(in_size=2, out_size=2, width_size=8, depth=1)\nmesh data=4 model=4\n"
    )
    with pytest.raises(eqxform.SpecError) as e:
        program.apply()
    (d,) = e.value.diagnostics
    assert d.code == "E196" and d.span.line == 2 and "there are 8" in d.message
    assert [d.code for d in program.plan().diagnostics] == ["E196"]
    # `-1` takes what is left; a mesh of fewer devices takes the first ones.
    sizes = eqxform.compile("mesh data=-1 model=2\n").mesh.sizes()
    assert sizes == {"data": 4, "model": 2}
    mesh = eqxform.compile("mesh model=2\n").device_mesh()
    assert mesh.devices.shape == (2,) and list(mesh.devices) == jax.devices()[:2]


def test_rank_and_divisibility_are_checked_with_spans_before_anything_runs():
    base = "model MLP(in_size=6, out_size=2, width_size=8, depth=1)\nmesh data=2 model=4\n"
    program = eqxform.compile(base + "where Linear.weight -> shard (model)\n")
    with pytest.raises(eqxform.SpecError) as e:
        program.apply()
    d = e.value.diagnostics[0]
    assert d.code == "E230" and d.span.line == 3 and "has 2 in one layer" in d.message
    program = eqxform.compile(base + "where layers[0].weight -> shard (none, model)\n")
    (d,) = program.plan().diagnostics
    assert d.code == "E231" and d.span.line == 3 and "size 6" in d.message
    # The leading axis of a stack on a mesh axis is checked too.
    program = eqxform.compile(
        "model LoopingTransformer(depth=3)\nmesh data=2 model=4\nstack blocks scan over data\n"
    )
    (d,) = program.plan().diagnostics
    assert d.code == "E231" and "leading stack or member axis" in d.message
    assert (d.span.line, d.span.column) == (3, 24)  # at the stack's `over data`


def test_the_formatter_keeps_the_new_lines():
    from eqxform._format import format_spec

    text = "mesh  data=2   model=4\nstack blocks scan  over model\nensemble 8 over   data\n"
    text += "where Linear.weight ->  shard ( none ,(data,model) )\n"
    formatted = format_spec(text)
    assert eqxform.compile(formatted).mesh.axes == (("data", 2), ("model", 4))
    assert format_spec(formatted) == formatted
    assert "shard (none, (data, model))" in formatted


# ---- apply -----------------------------------------------------------------------------


def test_apply_creates_every_array_in_its_sharding_with_the_same_values():
    program = eqxform.compile(MLP_SPEC)
    model = program.apply()
    plain = eqxform.compile(MLP_SPEC.split("mesh")[0]).apply()
    assert [spec_of(layer.weight) for layer in model.layers] == [
        PartitionSpec("model", None),
        PartitionSpec("model", None),
        PartitionSpec(None, "model"),
    ]
    assert all(spec_of(layer.bias) == PartitionSpec() for layer in model.layers)
    for a, b in zip(arrays(model), arrays(plain)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Each device holds its shard, never the whole array.
    weight = model.layers[1].weight
    assert {s.data.shape for s in weight.addressable_shards} == {(16, 64)}
    assert len(weight.addressable_shards) == 8
    x = jr.normal(jr.key(1), (16,))
    np.testing.assert_allclose(model(x), plain(x), atol=1e-6)


def test_plan_shows_specs_and_bytes_per_device():
    plan = eqxform.compile(MLP_SPEC).plan()
    placement = plan.placement
    rows = {a.path: a for a in placement.arrays}
    assert rows["layers[1].weight"].spec == "(model, none)"
    assert rows["layers[1].weight"].bytes_per_device == 64 * 64 * 4 // 4
    assert rows["layers[1].bias"].spec == "replicated"
    assert rows["layers[1].bias"].bytes_per_device == 64 * 4
    assert rows["layers[2].weight"].line == 5
    assert placement.bytes_per_device == sum(a.bytes_per_device for a in placement.arrays)
    text = str(plan)
    assert "mesh data=2 model=4 (8 devices)" in text and "per device:" in text
    assert "replicated" in text
    assert plan.to_dict()["placement"]["bytes_per_device"] == placement.bytes_per_device


CHAIN = """model MLPChain(size=16, count=8, depth=1)
stack mlps scan over data
where mlps.layers[0].weight -> init normal(stddev=0.1)
"""
CHAIN_RULES = """mesh data=2 model=4
where mlps.layers[0].weight -> shard (model, none)
where mlps.layers[1].weight -> shard (none, model)
"""


def _identities(program) -> list[int]:
    return [p.identity for p in program.passes if type(p).__name__ != "PlacePass"]


def test_placement_changes_no_draw():
    # `over` and `shard` are left out of a statement's identity, so the
    # numbers drawn are those of the spec without them.
    placed = eqxform.compile(
        CHAIN.replace("init normal(stddev=0.1)", "shard (model, none), init normal(stddev=0.1)")
        + CHAIN_RULES
    )
    plain = eqxform.compile(CHAIN.replace(" over data", ""))
    assert _identities(placed) == _identities(plain)
    ensemble = "model MLP(in_size=4, out_size=2, width_size=8, depth=1)\nensemble 8"
    assert _identities(eqxform.compile(ensemble + " over data\nmesh data=8\n")) == _identities(
        eqxform.compile(ensemble + "\n")
    )


def test_a_stack_with_its_layer_axis_over_a_mesh_axis():
    model = eqxform.compile(CHAIN + CHAIN_RULES).apply()
    layers = model.mlps.layers.layers
    assert spec_of(layers[0].weight) == PartitionSpec("data", "model", None)
    assert spec_of(layers[1].weight) == PartitionSpec("data", None, "model")
    assert spec_of(layers[0].bias) == PartitionSpec("data")  # the stack's axis alone
    assert {s.data.shape for s in layers[0].weight.addressable_shards} == {(4, 4, 16)}
    # Each layer drew its own weights, as `init` does without a mesh.
    weight = np.asarray(layers[0].weight)
    assert len({w.tobytes() for w in weight}) == 8
    np.testing.assert_allclose(weight.std(), 0.1, rtol=0.2)
    # The same rules written before the `stack` line place the same.
    rows = {a.path: a.spec for a in eqxform.compile(CHAIN_RULES + CHAIN).plan().placement.arrays}
    assert rows["mlps.layers[1].weight"] == "(data, none, model)"


@pytest.mark.slow
def test_a_stacked_vit_with_the_layer_axis_over_a_mesh_axis():
    model = eqxform.compile(VIT + VIT_RULES).apply()
    plain = eqxform.compile(VIT.replace(" over data", "")).apply()
    layers = model.blocks.layers
    assert spec_of(layers.fc1.weight) == PartitionSpec("data", "model", None)
    assert spec_of(layers.attn.proj.weight) == PartitionSpec("data", None, "model")
    assert spec_of(layers.norm1.weight) == PartitionSpec("data")
    assert spec_of(model.head.weight) == PartitionSpec(None, "model")
    assert spec_of(model.cls_token) == PartitionSpec()
    x = jr.normal(jr.key(1), (3, 8, 8))
    np.testing.assert_allclose(model(x, inference=True), plain(x, inference=True), atol=1e-5)


def test_a_vit_plan_places_its_stack_over_a_mesh_axis():
    plan = eqxform.compile(VIT + VIT_RULES).plan()
    rows = {a.path: a for a in plan.placement.arrays}
    assert rows["blocks.fc1.weight"].spec == "(data, model, none)"
    assert rows["blocks.attn.proj.weight"].spec == "(data, none, model)"
    assert rows["blocks.norm1.weight"].spec == "(data)"
    assert rows["cls_token"].spec == "replicated"
    assert rows["blocks.fc1.weight"].bytes_per_device == 4 * 32 * 16 * 4 // 8


def test_an_ensemble_over_a_mesh_axis():
    program = eqxform.compile(
        "model MLP(in_size=4, out_size=2, width_size=8, depth=1)\n"
        "mesh data=4 model=2\nensemble 8 over data\n"
        "where Linear.weight if shape[0] == 8 -> shard (model, none)\n"
    )
    ensemble = program.apply()
    weight = ensemble.model.layers[0].weight
    assert spec_of(weight) == PartitionSpec("data", "model", None)
    assert spec_of(ensemble.model.layers[1].weight) == PartitionSpec("data")
    assert {s.data.shape for s in weight.addressable_shards} == {(2, 4, 4)}
    # The members differ (each built from its own key), wherever they live.
    assert len({w.tobytes() for w in np.asarray(weight)}) == 8


def test_apply_with_a_mesh_of_the_api_and_a_given_model():
    program = eqxform.compile("where layers[0].weight -> init zeros\n")
    model = eqx.nn.MLP(4, 2, 8, 1, key=jr.key(0))
    mesh = jax.make_mesh((8,), ("data",))
    out = program.apply(model, mesh=mesh)
    assert spec_of(out.layers[0].weight) == PartitionSpec()
    assert out.layers[0].weight.sharding.mesh == mesh
    np.testing.assert_array_equal(out.layers[1].weight, model.layers[1].weight)
    assert not np.asarray(out.layers[0].weight).any()
    with pytest.raises(eqxform.SpecError) as e:
        eqxform.compile("mesh model=8\nwhere layers[0].weight -> shard (model, none)\n").apply(
            model, mesh={"data": 8}
        )
    assert codes(e) == ["E190"]


# ---- training --------------------------------------------------------------------------


def _mse(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def _data(rows=32):
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(rows, 16)).astype(np.float32),
        rng.normal(size=(rows, 8)).astype(np.float32),
    )


def test_make_step_is_data_and_model_parallel_and_equals_one_device():
    x, y = _data()
    program = eqxform.compile(MLP_SPEC)
    model = program.apply()
    step = eqxform.make_step(_mse, eqxform.optimizer(program, model), model)
    losses = [float(step(x, y)) for _ in range(4)]
    single = eqxform.compile(MLP_SPEC.split("mesh")[0])
    plain = single.apply()
    ref = eqxform.make_step(_mse, eqxform.optimizer(single, plain), plain)
    ref_losses = [float(ref(x, y)) for _ in range(4)]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(arrays(step.model), arrays(ref.model)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert step.traces == 1 and step.mesh is not None
    # Parameters keep their shardings; Adam's moments follow them.
    assert spec_of(step.model.layers[0].weight) == PartitionSpec("model", None)
    moments = [
        leaf
        for leaf in jax.tree_util.tree_leaves(step.opt_state)
        if getattr(leaf, "shape", None) == (64, 16)
    ]
    assert len(moments) == 2 and all(spec_of(m) == PartitionSpec("model", None) for m in moments)


def test_the_batch_is_split_over_the_batch_axis():
    x, y = _data()
    program = eqxform.compile(MLP_SPEC)
    model = program.apply()
    step = eqxform.make_step(_mse, eqxform.optimizer(program, model), model)
    assert step._place(x).sharding.spec == PartitionSpec("data")
    with pytest.raises(eqxform.UsageError) as e:
        step(x[:7], y[:7])
    assert codes(e) == ["E510"]
    on_model = eqxform.make_step(_mse, eqxform.optimizer(program, model), model, batch_axis="model")
    assert on_model._place(x).sharding.spec == PartitionSpec("model")
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.make_step(_mse, eqxform.optimizer(program, model), model, batch_axis="dat")
    assert codes(e) == ["E468"] and "`data`" in e.value.diagnostics[0].help


# ---- model files -------------------------------------------------------------------------


def test_written_tensor_by_tensor_the_bytes_equal_safetensors():
    import ml_dtypes

    tensors = {
        "b.w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a": np.array(3, np.int64),
        "bf": np.ones(3, ml_dtypes.bfloat16),
        "mask": np.zeros(4, bool),
        "h": np.ones(2, np.float16),
        "u": np.arange(3, dtype=np.uint8),
    }
    content = {"note": "ünïcode"}
    out = io.BytesIO()
    specs = [TensorSpec(k, v.dtype.name, v.shape) for k, v in tensors.items()]
    write_stream(out, specs, lambda name: tensors[name], content)
    assert out.getvalue() == encode(tensors, content)


def test_save_a_sharded_model_and_load_it_onto_a_mesh_by_slices(tmp_path, monkeypatch):
    program = eqxform.compile(MLP_SPEC)
    model = program.apply()
    eqxform.save(tmp_path / "sharded.eqx", model)
    plain = eqxform.compile(MLP_SPEC.split("mesh")[0] + MLP_SPEC[MLP_SPEC.index("mesh") :])
    # The same values unsharded write the same bytes.
    unsharded = jax.tree_util.tree_map(
        lambda x: jnp.asarray(np.asarray(x)) if eqx.is_array(x) else x, model
    )
    eqxform.save(tmp_path / "plain.eqx", unsharded, recipe=eqxform.recipe_of(model))
    assert (tmp_path / "sharded.eqx").read_bytes() == (tmp_path / "plain.eqx").read_bytes()
    assert plain.mesh is not None

    reads = []
    original = SliceReader.read

    def spy(self, name, index):
        value = original(self, name, index)
        reads.append((name, value.shape))
        return value

    monkeypatch.setattr(SliceReader, "read", spy)
    loaded = eqxform.load(tmp_path / "sharded.eqx", mesh="data=2,model=4")
    assert [spec_of(layer.weight) for layer in loaded.layers] == [
        spec_of(layer.weight) for layer in model.layers
    ]
    for a, b in zip(arrays(loaded), arrays(model)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Only shards were read from the file for the split tensors.
    shapes = {shape for name, shape in reads if name == "layers.1.weight"}
    assert shapes == {(16, 64)}
    header = read_header(tmp_path / "sharded.eqx")
    assert header.tensors["layers.1.weight"].shape == (64, 64)


def test_load_with_a_program_s_rules_and_without_a_recipe(tmp_path):
    model = eqx.nn.MLP(4, 2, 8, 1, key=jr.key(0))
    eqxform.save(tmp_path / "m.eqx", model)
    rules = eqxform.compile("mesh model=8\nwhere layers[0].weight -> shard (model, none)\n")
    loaded = eqxform.load(tmp_path / "m.eqx", like=model, mesh="model=8", program=rules)
    assert spec_of(loaded.layers[0].weight) == PartitionSpec("model", None)
    assert spec_of(loaded.layers[1].weight) == PartitionSpec()
    np.testing.assert_array_equal(loaded.layers[0].weight, model.layers[0].weight)


# ---- the command line -----------------------------------------------------------------------


def test_cli_plan_apply_and_train_on_a_mesh(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("spec.eqx").write_text(MLP_SPEC.replace("mesh data=2 model=4\n", ""))
    runner = CliRunner()
    result = runner.invoke(main, ["plan", "spec.eqx"])
    assert result.exit_code == 1 and "E191" in result.output  # `model`, but no mesh
    result = runner.invoke(main, ["plan", "spec.eqx", "--mesh", "data=2,model=4"])
    assert result.exit_code == 0, result.output
    assert "(model, none)" in result.output and "per device" in result.output
    result = runner.invoke(main, ["check", "spec.eqx", "--mesh", "data=8"])
    assert result.exit_code == 1 and "E190" in result.output
    Path("spec.eqx").write_text(MLP_SPEC)
    result = runner.invoke(main, ["apply", "spec.eqx", "-o", "a.eqx"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        main,
        ["train", "spec.eqx", "a.eqx", "--steps", "3", "--batch-size", "8", "-o", "t.eqx"]
        + ["--mesh", "data=4,model=2", "--batch-axis", "data"],
    )
    assert result.exit_code == 0, result.output
    trained = eqxform.load("t.eqx")
    assert eqxform.recipe_of(trained)["train"]["steps"] == 3
    result = runner.invoke(
        main, ["train", "spec.eqx", "--steps", "1", "-o", "u.eqx", "--mesh", "data=2,,x"]
    )
    assert result.exit_code == 2 and "E465" in result.output


def test_cli_multi_process_options_are_checked():
    runner = CliRunner()
    result = runner.invoke(
        main, ["train", "x.eqx", "-o", "o.eqx", "--coordinator", "127.0.0.1:1234"]
    )
    assert result.exit_code == 2 and "E466" in result.output
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.initialize_distributed("localhost", 2, 0)
    assert codes(e) == ["E466"]
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.initialize_distributed("localhost:1234", 2, 2)
    assert codes(e) == ["E466"]


# ---- several processes --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(configs: list[dict], devices: int, timeout: float) -> list[dict]:
    """Start one worker per config (each with `devices` CPU devices), wait for
    all with a hard timeout, and kill every one of them whatever happens."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    procs = []
    try:
        for config in configs:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(HERE / "_shard_worker.py"), json.dumps(config)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                    start_new_session=True,
                )
            )
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _multi_process_run(tmp_path, spec: str, mesh: str, processes: int, per_process: int):
    config = {
        "spec": spec,
        "mesh": mesh,
        "steps": 3,
        "batch": 8,
        "in_size": 16,
        "out_size": 8,
        "num_processes": processes,
        "coordinator": f"127.0.0.1:{_free_port()}",
    }
    runs = _run_workers(
        [
            {**config, "process_id": i, "output": str(tmp_path / f"multi{i}.eqx")}
            for i in range(processes)
        ],
        per_process,
        timeout=240,
    )
    # The single process with as many devices: this one (a mesh of its first
    # devices), running the same worker code.
    sys.path.insert(0, str(HERE))
    try:
        import _shard_worker
    finally:
        sys.path.remove(str(HERE))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        _shard_worker.main(
            {**config, "num_processes": 1, "process_id": 0, "output": str(tmp_path / "single.eqx")}
        )
    single = json.loads(buffer.getvalue().strip().splitlines()[-1])
    return runs, single


def _check_agreement(tmp_path, runs, single, processes, per_process):
    assert all(r["processes"] == processes for r in runs)
    assert all(r["devices"] == processes * per_process for r in runs)
    # The processes agree exactly: the same losses and the same model.
    assert all(r["losses"] == runs[0]["losses"] for r in runs)
    assert len({r["digest"] for r in runs}) == 1
    assert all(r["traces"] == 1 for r in runs + [single])
    # Only process 0 wrote; its file is the single process's, up to the order
    # in which the all-reduce over processes adds the gradients.
    assert (tmp_path / "multi0.eqx").exists()
    assert not any((tmp_path / f"multi{i}.eqx").exists() for i in range(1, processes))
    np.testing.assert_allclose(runs[0]["losses"], single["losses"], rtol=1e-5)
    multi, one = read_header(tmp_path / "multi0.eqx"), read_header(tmp_path / "single.eqx")
    assert multi.recipe == one.recipe and multi.tensors.keys() == one.tensors.keys()
    a = eqxform.load(tmp_path / "multi0.eqx")
    b = eqxform.load(tmp_path / "single.eqx")
    for x, y in zip(arrays(a), arrays(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


SMALL = """model MLP(in_size=16, out_size=8, width_size=32, depth=1)
optimizer adam(learning_rate=1e-2)
"""


def test_two_processes_of_one_device_train_together(tmp_path):
    runs, single = _multi_process_run(tmp_path, SMALL, "data=2", processes=2, per_process=1)
    _check_agreement(tmp_path, runs, single, 2, 1)


@pytest.mark.slow
def test_two_processes_of_four_devices_train_data_and_model_parallel(tmp_path):
    spec = MLP_SPEC.replace("mesh data=2 model=4\n", "")
    runs, single = _multi_process_run(tmp_path, spec, "data=2,model=4", 2, 4)
    _check_agreement(tmp_path, runs, single, 2, 4)


@pytest.mark.slow
def test_the_training_command_across_two_processes(tmp_path):
    Path(tmp_path / "spec.eqx").write_text(MLP_SPEC)
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    command = [sys.executable, "-m", "eqxform", "train", "spec.eqx", "--steps", "4"]
    command += ["--batch-size", "16", "--num-processes", "2"]
    command += ["--coordinator", f"127.0.0.1:{port}"]
    procs = []
    try:
        for i in range(2):
            procs.append(
                subprocess.Popen(
                    command + ["--process-id", str(i), "-o", f"p{i}.eqx"],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        outs = [p.communicate(timeout=240) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    subprocess.run(
        [sys.executable, "-m", "eqxform", "train", "spec.eqx", "--steps", "4"]
        + ["--batch-size", "16", "-o", "one.eqx"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=240,
        capture_output=True,
    )
    assert not (tmp_path / "p1.eqx").exists()
    assert "process 0 wrote" in outs[1][0]
    a, b = eqxform.load(tmp_path / "p0.eqx"), eqxform.load(tmp_path / "one.eqx")
    for x, y in zip(arrays(a), arrays(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
