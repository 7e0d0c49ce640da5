"""Sweeps: `ensemble N vary ...` and `ensemble grid ...`, an ensemble whose
members differ in hyper-parameters, built and trained as one program."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import eqxform
from eqxform._cli import main
from eqxform._codes import CODES
from eqxform._errors import SpecError
from eqxform._program import recipe_of
from eqxform._runtime._train import make_loss, member_losses

ROOT = Path(__file__).parent.parent
MLP = "model MLP(in_size=4, out_size=3, width_size=16, depth=2)\nseed 0\n"


def _arrays(model):
    return jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))


def _same(a, b, **tol):
    xs, ys = _arrays(a), _arrays(b)
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.shape == y.shape
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def _single(values: dict, body: str) -> eqxform.Program:
    """The spec of one member: its values as `let`s, no `ensemble` line."""
    lets = "".join(f"let {k} = {v!r}\n" for k, v in values.items())
    return eqxform.compile(MLP + lets + body)


# ---- the language ---------------------------------------------------------------


def test_the_members_values_follow_the_ensemble_line():
    spec = MLP + (
        "optimizer adamw(learning_rate=lr, weight_decay=wd)\n"
        "ensemble 4 vary lr=logspace(1e-4, 1e-1), wd=1e-4 * member, seed\n"
    )
    sweep = eqxform.compile(spec).sweep
    assert sweep.count == 4 and sweep.names == ("lr", "wd", "seed")
    np.testing.assert_allclose([m["lr"] for m in sweep.members], [1e-4, 1e-3, 1e-2, 1e-1])
    assert sweep.members[0]["lr"] == 1e-4 and sweep.members[3]["lr"] == 1e-1  # ends exact
    np.testing.assert_allclose([m["wd"] for m in sweep.members], [0, 1e-4, 2e-4, 3e-4])
    # `vary seed`: the spec's seed plus the member's index (and `--seed` moves it).
    assert [sweep.seed(0, k) for k in range(4)] == [0, 1, 2, 3]
    assert [sweep.values(k, 10)["seed"] for k in range(4)] == [10, 11, 12, 13]

    grid = eqxform.compile(
        MLP + "optimizer adamw(learning_rate=lr, weight_decay=weight_decay)\n"
        "ensemble grid lr=[1e-3, 3e-3, 1e-2] weight_decay=[0, 1e-4]\n"
    ).sweep
    # The product, the first name varying slowest.
    assert [(m["lr"], m["weight_decay"]) for m in grid.members] == [
        (1e-3, 0),
        (1e-3, 1e-4),
        (3e-3, 0),
        (3e-3, 1e-4),
        (1e-2, 0),
        (1e-2, 1e-4),
    ]
    powers = eqxform.compile(
        MLP + "optimizer sgd(learning_rate=lr)\nensemble 4 vary lr=1e-3 * 2 ** member, "
        "seed=[7, 0, 42, 3]\n"
    ).sweep
    assert [m["lr"] for m in powers.members] == [1e-3, 2e-3, 4e-3, 8e-3]
    assert [powers.seed(0, k) for k in range(4)] == [7, 0, 42, 3]
    spread = eqxform.compile(
        MLP + "optimizer sgd(learning_rate=lr)\nensemble 3 vary lr=linspace(0.1, 0.3)\n"
    ).sweep
    np.testing.assert_allclose([m["lr"] for m in spread.members], [0.1, 0.2, 0.3])


BAD = [
    # (ensemble line and more, code, line, column of the span)
    (
        "optimizer adamw(learning_rate=1e-3)\nensemble 4 vary lr=logspace(1e-4, 1e-2)\n",
        "E170",
        4,
        17,
    ),
    ('optimizer adamw(learning_rate=lr)\nensemble 2 vary lr="fast"\n', "E171", 4, 20),
    ("optimizer adamw(learning_rate=lr)\nensemble 2 vary lr=[[1e-3], [1e-2]]\n", "E171", 4, 20),
    ("optimizer adamw(learning_rate=lr)\nensemble grid lr=1e-3\n", "E171", 4, 18),
    ("optimizer adamw(learning_rate=lr)\nensemble 2 vary lr=logspace(0, 1)\n", "E171", 4, 20),
    ("optimizer adamw(learning_rate=lr)\nensemble 2 vary lr=1e-3, seed=[0, -1]\n", "E171", 4, 31),
    # A seed beyond 2**64 - 1 is refused at its span, as `seed` itself is.
    (
        "optimizer adamw(learning_rate=lr)\nensemble 2 vary lr=1e-3, seed=[2 ** 64, 2]\n",
        "E171",
        4,
        31,
    ),
    (
        "optimizer adamw(learning_rate=lr)\nensemble grid lr=[1e-3] seed=[0, 2 ** 70]\n",
        "E171",
        4,
        30,
    ),
    ("optimizer adamw(learning_rate=lr)\nensemble 4 vary lr=[1e-3, 1e-2]\n", "E172", 4, 20),
    ("optimizer adamw(learning_rate=lr)\nensemble grid lr=[]\n", "E172", 4, 18),
    ("optimizer adamw(learning_rate=lr)\nensemble 3 vary lr=[1e-3, -1e-2, 1e-2]\n", "E173", 4, 20),
    (
        "optimizer adamw(learning_rate=1e-3)\nensemble 2 vary s=[0.1, -1]\n"
        "where Linear.weight -> init normal(stddev=s)\n",
        "E173",
        4,
        19,
    ),
    (
        "optimizer adamw(learning_rate=lr)\nensemble 2 vary lr=[1e-3, 1e-2], w=[8, 16]\n"
        "where Linear if w > 8 -> freeze\n",
        "E174",
        5,
        17,
    ),
    (
        "optimizer adamw(learning_rate=lr)\nensemble 2 vary lr=[1e-3, 1e-2], r=[2, 4]\n"
        "where layers[0] -> lora(rank=r)\n",
        "E174",
        5,
        30,
    ),
    (
        "optimizer adamw(learning_rate=lr)\nensemble 2 vary lr=[1e-3, 1e-2], lr=[1, 2]\n",
        "E175",
        4,
        34,
    ),
    (
        "let lr = 1e-3\noptimizer adamw(learning_rate=lr)\nensemble 2 vary lr=[1e-3, 1e-2]\n",
        "E175",
        5,
        17,
    ),
    ("optimizer adamw(learning_rate=lr)\nensemble 2 vary lr\n", "E176", 4, 17),
    # Too many members: refused before any member's values or program is made.
    ("optimizer sgd(learning_rate=lr)\nensemble 5000 vary lr=1e-3 * member\n", "E155", 4, 1),
    (
        "optimizer sgd(learning_rate=a * b)\nensemble grid a=[{0}] b=[{0}]\n".format(
            ", ".join(["1"] * 100)
        ),
        "E155",
        4,
        1,
    ),
]


@pytest.mark.parametrize("text, code, line, column", BAD)
def test_check_reports_a_bad_sweep_at_its_span(text, code, line, column):
    with pytest.raises(SpecError) as info:
        eqxform.compile(MLP + text)
    found = [(d.code, d.span.line, d.span.column) for d in info.value.diagnostics]
    assert (code, line, column) in found, found
    assert CODES[code].explanation


def test_a_varied_name_in_the_model_is_refused_with_its_own_code(tmp_path):
    spec = tmp_path / "s.eqx"
    spec.write_text(
        "model MLP(in_size=4, out_size=3, width_size=w, depth=2)\n"
        "optimizer adamw(learning_rate=1e-3)\nensemble 2 vary w=[8, 16]\n"
    )
    result = CliRunner().invoke(main, ["check", str(spec)])
    assert result.exit_code == 1
    assert "error[E174]: `w` varies per member and cannot go in a constructor argument" in (
        result.output
    )
    assert "s.eqx:1:45" in result.output


# ---- building the members --------------------------------------------------------

INIT = (
    "optimizer adamw(learning_rate=1e-3)\n"
    "where Linear.weight -> init normal(stddev=s)\n"
    "where layers[-1].weight -> scale k\n"
)


def test_each_member_starts_as_the_single_model_with_its_values():
    program = eqxform.compile(MLP + "ensemble 3 vary s=[0.01, 0.1, 1.0], k=[1, 2, 3]\n" + INIT)
    ensemble = program.apply()
    assert isinstance(ensemble, eqxform.Ensemble) and ensemble.count == 3
    for k, (s, f) in enumerate([(0.01, 1), (0.1, 2), (1.0, 3)]):
        _same(ensemble.member(k), _single({"s": s, "k": f}, INIT).apply(), rtol=0, atol=0)
    # Without `vary seed` the members draw the same numbers: only the values differ.
    w = ensemble.layers[0].weight
    np.testing.assert_allclose(w[1] / 0.1, w[0] / 0.01, rtol=1e-5)


def test_vary_seed_builds_each_member_from_its_own_seed():
    body = "optimizer adamw(learning_rate=1e-3)\nwhere Linear.weight -> init normal(stddev=0.1)\n"
    ensemble = eqxform.compile(MLP + "ensemble 3 vary seed\n" + body).apply(seed=5)
    for k in range(3):
        _same(ensemble.member(k), eqxform.compile(MLP + body).apply(seed=5 + k), rtol=0, atol=0)
    assert not np.allclose(ensemble.layers[0].weight[0], ensemble.layers[0].weight[1])


# ---- training: one compiled program, each member its own run ----------------------

TRAIN = (
    "optimizer adamw(learning_rate=lr, weight_decay=wd, b1=b1)\n"
    "where layers[0] -> freeze\n"
    "where layers[1] -> lora(rank=2, alpha=4)\n"
    "where layers[2].weight -> lr head\n"
)
VALUES = [
    {"lr": 1e-3, "wd": 0.0, "b1": 0.9, "head": 1.0},
    {"lr": 1e-2, "wd": 1e-4, "b1": 0.8, "head": 0.5},
    {"lr": 3e-2, "wd": 1e-3, "b1": 0.95, "head": 2.0},
]


def _batches(count: int = 20):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(count, 8, 4)).astype(np.float32)
    return x, np.tanh(x[..., :3] * 2).astype(np.float32)


def test_a_sweep_compiles_once_and_each_member_follows_its_own_single_run():
    line = "ensemble 3 vary " + ", ".join(
        f"{name}={[v[name] for v in VALUES]}" for name in VALUES[0]
    )
    program = eqxform.compile(MLP + line + "\n" + TRAIN)
    ensemble = program.apply()
    step = eqxform.make_step(
        make_loss("mse", members=3), eqxform.optimizer(program, ensemble), ensemble
    )
    xs, ys = _batches()
    for x, y in zip(xs, ys):
        step(x, y)
    # One trace (one compilation) of the training step for the whole sweep.
    assert step.traces == 1
    trained = step.model
    for k, values in enumerate(VALUES):
        single = _single(values, TRAIN)
        model = single.apply()
        _same(model, ensemble.member(k), rtol=0, atol=0)
        one = eqx.filter(model, eqx.is_inexact_array)
        assert jax.tree_util.tree_structure(one) == jax.tree_util.tree_structure(
            eqx.filter(ensemble.member(k), eqx.is_inexact_array)
        )
        alone = eqxform.make_step(make_loss("mse"), eqxform.optimizer(single, model), model)
        for x, y in zip(xs, ys):
            alone(x, y)
        _same(alone.model, trained.member(k), rtol=1e-5, atol=1e-6)
        # The frozen layer did not move; the LoRA adapter did.
        np.testing.assert_array_equal(
            trained.member(k).layers[0].weight, ensemble.member(k).layers[0].weight
        )
    lora_b = [leaf for leaf in _arrays(trained.member(2).layers[1]) if leaf.shape == (16, 2)]
    assert lora_b and float(jnp.abs(lora_b[0]).max()) > 0


def test_the_sweeps_values_are_data_of_the_compiled_step():
    """Another sweep of the same shape runs in the first one's compiled step:
    its values are the optimiser state's arrays, not constants of the program."""
    spec = MLP + "optimizer adamw(learning_rate=lr)\nensemble 2 vary lr={}\n"
    a = eqxform.compile(spec.format([1e-3, 1e-2]))
    b = eqxform.compile(spec.format([3e-2, 1e-1]))
    model = a.apply()
    state_a = eqxform.optimizer(a, model).init(eqx.filter(model, eqx.is_inexact_array))
    state_b = eqxform.optimizer(b, model).init(eqx.filter(model, eqx.is_inexact_array))
    assert jax.tree_util.tree_structure(state_a) == jax.tree_util.tree_structure(state_b)
    np.testing.assert_allclose(state_b.hyperparams["kwargs"]["learning_rate"], [3e-2, 1e-1])
    optimizer = eqxform.optimizer(a, model)
    params = eqx.filter(model, eqx.is_inexact_array)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    update = jax.jit(optimizer.update)
    _, _ = update(grads, state_a, params)
    updates_b, _ = update(grads, state_b, params)
    assert update._cache_size() == 1
    # Adam's first update is -lr * sign(g): member k's learning rate.
    first = updates_b.layers[0].bias
    np.testing.assert_allclose(first[:, 0], [-3e-2, -1e-1], rtol=1e-4)


# ---- the command line: train, plan ----------------------------------------------------


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return str(path)


def test_train_shows_and_records_every_members_losses(tmp_path):
    spec = tmp_path / "sweep.eqx"
    spec.write_text(
        MLP + "optimizer adamw(learning_rate=lr)\nensemble 3 vary lr=logspace(1e-3, 1e-1)\n"
    )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = np.tanh(x[:, :3]).astype(np.float32)
    data = _npz(tmp_path / "train.npz", x, y)
    held = _npz(tmp_path / "eval.npz", x[:16] * 2, y[:16])
    out = tmp_path / "out.eqx"
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(spec),
            "--data",
            data,
            "--eval-data",
            held,
            "--steps",
            "20",
            "--batch-size",
            "16",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(
        "step 20/20: loss" in ln and "best" in ln and "median" in ln and "worst" in ln
        for ln in lines
    )
    # Each progress line's loss and its members' are one measurement (the
    # model before that step's update, on its batch): three members' mean is
    # their best, median and worst over three.
    progress = [ln for ln in lines if ln.startswith("step ")]
    assert progress[0].startswith("step 1/20: initial loss ")
    for ln in progress:
        numbers = re.findall(r"(?:loss|best|median|worst) (\S+?)[;,]? ", ln + " ")
        mean, best, median, worst = (float(n) for n in numbers)
        assert mean == pytest.approx((best + median + worst) / 3, rel=2e-3), ln
    head = next(
        i for i, ln in enumerate(lines) if ln.split() == ["member", "lr", "loss", "eval", "loss"]
    )
    rows = [ln.split() for ln in lines[head + 1 : head + 4]]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert [float(r[1]) for r in rows] == pytest.approx([1e-3, 1e-2, 1e-1], rel=1e-3)

    model = eqxform.load(out)
    members = recipe_of(model).train["members"]
    assert [m["member"] for m in members] == [0, 1, 2]
    assert [m["values"]["lr"] for m in members] == pytest.approx([1e-3, 1e-2, 1e-1])
    losses = member_losses(model, x, y)
    held_losses = member_losses(model, x[:16] * 2, y[:16])
    assert [m["loss"] for m in members] == pytest.approx(list(losses), rel=1e-5)
    assert [m["eval_loss"] for m in members] == pytest.approx(list(held_losses), rel=1e-5)
    for k, m in enumerate(members):
        assert f"{m['loss']:.4g}" == rows[k][2]


def test_plan_shows_the_member_table_and_the_memory(tmp_path):
    spec = tmp_path / "grid.eqx"
    spec.write_text(
        MLP + "optimizer adamw(learning_rate=lr, weight_decay=wd)\n"
        "ensemble grid lr=[1e-3, 1e-2] wd=[0, 1e-4] seed=[1, 2]\n"
    )
    result = CliRunner().invoke(main, ["plan", str(spec)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("members: 8")
    assert lines[start + 1].split() == ["member", "lr", "wd", "seed"]
    assert lines[start + 2].split() == ["0", "0.001", "0", "1"]
    assert lines[start + 9].split() == ["7", "0.01", "0.0001", "2"]
    params = (16 * 4 + 16 + 16 * 16 + 16 + 3 * 16 + 3) * 4
    data = json.loads(CliRunner().invoke(main, ["plan", str(spec), "--format", "json"]).output)
    members = data["members"]
    assert members["count"] == 8 and members["bytes_per_member"] == params
    assert members["bytes"] == 8 * params
    assert members["rows"][5] == {"member": 5, "values": {"lr": 0.01, "wd": 0, "seed": 2}}
    per = (params + data["opt_state_bytes"] // 8) / 1024
    assert f"{per:.1f} KiB per member" in result.output


def test_a_sweep_beyond_the_memory_budget_is_refused_before_it_is_built(tmp_path, monkeypatch):
    monkeypatch.setenv("EQXFORM_MAX_BYTES", "1M")
    text = (
        "model MLP(in_size=4, out_size=3, width_size=256, depth=2)\n"
        "optimizer adamw(learning_rate=lr)\nensemble 8 vary lr=logspace(1e-4, 1e-1)\n"
    )
    plan = eqxform.compile(text).plan()
    assert [(d.code, d.span.line) for d in plan.errors] == [("E158", 3)]
    with pytest.raises(SpecError) as info:
        eqxform.compile(text).apply()
    assert info.value.diagnostics[0].code == "E158"


# ---- on a mesh --------------------------------------------------------------------------

MESH_SCRIPT = """
import json, sys
import jax, numpy as np
import eqxform
from eqxform._runtime._train import make_loss
spec = sys.argv[1]
program = eqxform.compile(spec)
model = program.apply()
w = model.layers[1].weight
shards = {s.device.id: list(s.data.shape) for s in w.addressable_shards}
step = eqxform.make_step(make_loss("mse", members=8), eqxform.optimizer(program, model), model)
x = np.random.default_rng(0).normal(size=(16, 4)).astype("f4")
for _ in range(3):
    step(x, x[:, :3])
after = {s.device.id: list(s.data.shape) for s in step.model.layers[1].weight.addressable_shards}
plan = program.plan().to_dict()["placement"]
print(json.dumps({"shards": shards, "after": after, "traces": step.traces, "plan": plan}))
"""


def test_a_sweep_over_data_puts_one_member_on_each_of_8_devices():
    spec = MLP + (
        "mesh data=8\noptimizer adamw(learning_rate=lr)\n"
        "ensemble 8 vary lr=logspace(1e-4, 1e-1), seed over data\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT, spec],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["shards"] == {str(d): [1, 16, 16] for d in range(8)}
    assert data["after"] == data["shards"]
    assert data["traces"] == 1
    placement = data["plan"]
    member_bytes = (16 * 4 + 16 + 16 * 16 + 16 + 3 * 16 + 3) * 4
    assert placement["bytes_per_device"] == member_bytes
    assert placement["bytes"] == 8 * member_bytes


def test_a_sweep_on_a_model_that_is_an_ensemble_already_is_refused():
    program = eqxform.compile(
        MLP + "optimizer sgd(learning_rate=lr)\nensemble 2 vary lr=[0.1, 0.2]\n"
    )
    with pytest.raises(SpecError) as info:
        program.apply(program.apply())
    assert [(d.code, d.span.line) for d in info.value.diagnostics] == [("E141", 4)]


def test_members_losses_compile_once_however_often_train_reports_them():
    # `train` reads every member's loss at each reported step and at the end:
    # one compilation for all of them, not one per report.
    traces = []

    def mse(pred, y):
        traces.append(pred.shape)
        return jnp.mean((pred - y) ** 2)

    program = eqxform.compile(
        MLP + "optimizer sgd(learning_rate=lr)\nensemble 3 vary lr=[1e-3, 1e-2, 1e-1]\n"
    )
    ensemble = program.apply()
    x, y = _batches(2)
    first = member_losses(ensemble, x[0], y[0], mse)
    assert len(traces) == 1
    for _ in range(3):
        np.testing.assert_array_equal(member_losses(ensemble, x[0], y[0], mse), first)
    assert len(traces) == 1
    # The values are each member's own loss.
    for k in range(3):
        pred = jax.vmap(ensemble.member(k))(jnp.asarray(x[0]))
        np.testing.assert_allclose(first[k], mse(pred, jnp.asarray(y[0])), rtol=1e-6)


def test_a_bad_grid_value_is_named_by_its_place_in_its_list_not_as_a_member():
    # Value 1 of the `lr` list goes to members 1 and 3 of the grid, not to "member 1".
    with pytest.raises(SpecError) as info:
        eqxform.compile(
            MLP + "optimizer adamw(learning_rate=lr, weight_decay=wd)\n"
            'ensemble grid wd=[0, 1e-4] lr=[1e-3, "x"] seed=[0, 2 ** 64]\n'
        )
    messages = [d.message for d in info.value.diagnostics]
    assert 'value 1 of `lr=[...]` must be a number, not `"x"` (a string)' in messages
    assert "value 1 of `seed=[...]` must be at most 2**64 - 1, not `18446744073709551616`" in (
        messages
    )


def test_a_member_that_diverges_leaves_a_file_that_loads_with_its_losses_unrecorded(tmp_path):
    # The top of a learning-rate sweep diverges: that member stops (its
    # arrays kept as they were before), the others train on, and the file
    # written loads (JSON holds no `Infinity`): that member's losses are
    # recorded as null, with the step it diverged at.
    spec = tmp_path / "sweep.eqx"
    spec.write_text(
        MLP + "optimizer sgd(learning_rate=lr)\nensemble 3 vary lr=[1e-2, 1e-1, 1e12]\n"
    )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = np.tanh(x[:, :3]).astype(np.float32)
    data, held = _npz(tmp_path / "t.npz", x, y), _npz(tmp_path / "e.npz", x[:16], y[:16])
    out = tmp_path / "out.eqx"
    result = CliRunner().invoke(
        main,
        ["train", str(spec), "--data", data, "--eval-data", held, "--steps", "3"]
        + ["--batch-size", "16", "-o", str(out)],
    )
    assert result.exit_code == 0 and "error[E530]" not in result.output, result.output
    assert "member 2 diverged at step 2" in result.output  # the progress and the end say so
    table = [ln.split() for ln in result.output.splitlines() if ln.lstrip().startswith("2 ")]
    assert table == [["2", "1e+12", "diverged", "at", "step", "2", "-"]]
    ensemble = eqxform.load(out)
    members = recipe_of(ensemble)["train"]["members"]
    assert [m["values"]["lr"] for m in members] == [1e-2, 1e-1, 1e12]
    assert members[2]["loss"] is None and members[2]["eval_loss"] is None
    assert members[2]["diverged_at"] == 2
    assert all(np.isfinite(m["loss"]) and np.isfinite(m["eval_loss"]) for m in members[:2])
    assert all("diverged_at" not in m for m in members[:2])
    # `pick --best` passes over the member without a held-out loss.
    best = int(np.argmin([m["eval_loss"] for m in members[:2]]))
    assert eqxform.pick(str(out), best=True).layers[0].weight.shape == (16, 4)
    _same(eqxform.pick(str(out), best=True), ensemble.member(best), rtol=0, atol=0)


def _lr_sweep_task():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(96, 4)).astype(np.float32)
    return x, np.tanh(x[:, :3] * 2).astype(np.float32)


def test_a_diverging_member_stops_alone_and_the_others_follow_their_separate_runs(tmp_path):
    from eqxform._runtime import _train

    lrs = [1e-3, 1e-2, 1e13, 3e-2]
    body = "optimizer adam(learning_rate=lr)\n"
    program = eqxform.compile(MLP + body + f"ensemble 4 vary lr={lrs}\n")
    x, y = _lr_sweep_task()
    reported = []
    result = _train.train(
        program,
        program.apply(),
        x,
        y,
        steps=20,
        batch_size=16,
        on_step=lambda done, loss: None,
        on_members=lambda done, losses, diverged: reported.append((done, losses, diverged)),
    )
    # Adam's first step moves each weight by the learning rate: member 2's
    # second loss is infinite.
    assert result.diverged == {2: 2} and result.nonfinite is None and result.steps == 20
    start = program.apply()
    for k, lr in enumerate(lrs):
        single = _single({"lr": lr}, body)
        alone = _train.train(single, single.apply(), x, y, steps=20, batch_size=16)
        if k == 2:
            # Stopped at the step it diverged: kept as one step of its own run left it.
            assert alone.nonfinite == 2 and alone.steps == 1
            assert all(np.isfinite(a).all() for a in _arrays(result.model.member(k)))
        else:
            assert alone.nonfinite is None
            assert not np.allclose(
                result.model.member(k).layers[0].weight, start.member(k).layers[0].weight
            )
        _same(alone.model, result.model.member(k), rtol=1e-4, atol=1e-6)
    # The reports name the diverged member from its step on, with no loss.
    for done, losses, diverged in reported:
        assert diverged == ({} if done < 2 else {2: 2})
        assert np.isnan(losses[2]) == (done >= 2)
        assert np.isfinite(np.delete(losses, 2)).all()

    # The command line: reported, recorded, and never picked as the best.
    spec = tmp_path / "sweep.eqx"
    spec.write_text(MLP + body + f"ensemble 4 vary lr={lrs}\n")
    data, held = _npz(tmp_path / "t.npz", x, y), _npz(tmp_path / "e.npz", x[:32], y[:32])
    out = tmp_path / "out.eqx"
    run = CliRunner().invoke(
        main,
        ["train", str(spec), "--data", data, "--eval-data", held, "--steps", "20"]
        + ["--batch-size", "16", "-o", str(out)],
    )
    assert run.exit_code == 0, run.output
    progress = [ln for ln in run.output.splitlines() if ln.startswith("step 20/20")]
    assert progress and progress[0].endswith("; member 2 diverged at step 2")
    assert "worst" in progress[0] and "(member 2)" not in progress[0]
    members = recipe_of(eqxform.load(out))["train"]["members"]
    assert [m.get("diverged_at") for m in members] == [None, None, 2, None]
    # Its kept arrays are finite and its held-out loss may be low: it is
    # still never the best.
    picked = CliRunner().invoke(main, ["pick", str(out), "--best", "-o", str(tmp_path / "b.eqx")])
    assert picked.exit_code == 0, picked.output
    assert "member 2 " not in picked.output
    eval_losses = [m["eval_loss"] for m in members]
    best = min((v, k) for k, v in enumerate(eval_losses) if v is not None)[1]
    assert f"member {best} of 4" in picked.output


def test_a_recorded_member_that_diverged_is_skipped_by_pick_best_whatever_its_loss():
    from types import SimpleNamespace

    from eqxform._pick import choose

    members = [
        {"member": 0, "values": {}, "loss": 0.5, "eval_loss": 0.5},
        {"member": 1, "values": {}, "loss": 0.1, "eval_loss": 0.1, "diverged_at": 7},
    ]
    # What `pick --best` reads of a file: the recipe's `train.members`.
    recipe = SimpleNamespace(train={"members": members})
    assert choose(None, True, 2, recipe, "f.eqx")[0] == 0


def test_when_every_member_diverges_training_stops_with_e530(tmp_path):
    spec = tmp_path / "sweep.eqx"
    spec.write_text(MLP + "optimizer sgd(learning_rate=lr)\nensemble 2 vary lr=[1e12, 1e13]\n")
    x, y = _lr_sweep_task()
    out = tmp_path / "out.eqx"
    result = CliRunner().invoke(
        main,
        ["train", str(spec), "--data", _npz(tmp_path / "t.npz", x, y), "--steps", "20"]
        + ["--batch-size", "16", "-o", str(out)],
    )
    assert result.exit_code == 1, result.output
    assert "error[E530]: training stopped at step 2: every member diverged" in result.output
    # The progress says so, with no best or worst among none.
    assert "step 2/20: loss nan; member 0 diverged at step 2; member 1 diverged at step 2\n" in (
        result.output
    )
    members = recipe_of(eqxform.load(out))["train"]["members"]
    assert [m["diverged_at"] for m in members] == [2, 2]


def test_vary_seed_past_the_largest_seed_is_refused_naming_the_members_seed():
    from eqxform._errors import UsageError

    program = eqxform.compile(MLP + "optimizer adamw(learning_rate=1e-3)\nensemble 3 vary seed\n")
    assert program.apply(seed=2**64 - 3).count == 3  # the last member's seed is 2**64 - 1
    with pytest.raises(UsageError) as info:
        program.apply(seed=2**64 - 2)
    d = info.value.diagnostics[0]
    assert d.code == "E430"
    assert "member 2's seed" in d.message and "`vary seed`" in d.message
    assert "at most 18446744073709551613" in d.help


# ---- known bugs: a grid's bare `seed`, the plan of a stacked sweep, a stateful sweep ----


def test_a_grid_with_a_bare_seed_gives_each_member_its_own_seed():
    body = "optimizer adam(learning_rate=lr)\nwhere Linear.weight -> init normal(stddev=0.1)\n"
    program = eqxform.compile(MLP + "ensemble grid lr=[1e-3, 1e-2, 1e-1] seed\n" + body)
    sweep = program.sweep
    # `seed` alone among a grid's axes adds no points: member k takes the
    # spec's seed plus k, as `vary seed` does.
    assert sweep.count == 3 and sweep.names == ("lr", "seed")
    assert [sweep.values(k, 5) for k in range(3)] == [
        {"lr": 1e-3, "seed": 5},
        {"lr": 1e-2, "seed": 6},
        {"lr": 1e-1, "seed": 7},
    ]
    ensemble = program.apply(seed=5)
    for k, lr in enumerate([1e-3, 1e-2, 1e-1]):
        _same(ensemble.member(k), _single({"lr": lr}, body).apply(seed=5 + k), rtol=0, atol=0)
    # A grid of explicit seeds is an axis of the product, as before.
    assert (
        eqxform.compile(MLP + "ensemble grid lr=[1e-3, 1e-2] seed=[0, 9]\n" + body).sweep.count == 4
    )


def test_a_grid_axis_without_values_is_one_diagnostic_at_its_span():
    with pytest.raises(SpecError) as info:
        eqxform.compile(
            MLP + "optimizer adamw(learning_rate=lr, weight_decay=wd)\n"
            "ensemble grid lr=[1e-3, 1e-2] wd\n"
        )
    found = [(d.code, d.span.line, d.span.column, d.message) for d in info.value.diagnostics]
    assert found == [("E176", 4, 31, "the grid axis `wd` gives no values")]
    assert "`wd=[" in info.value.diagnostics[0].help


def test_plan_names_a_stacked_arrays_layer_axis_after_the_member_axis(tmp_path):
    spec = tmp_path / "s.eqx"
    spec.write_text(
        "model MLP(in_size=4, out_size=1, width_size=8, depth=4)\n"
        "stack layers[1:4] scan\n"
        "ensemble 2 vary lr=[1e-3, 1e-2]\n"
        "optimizer adam(learning_rate=lr)\n"
    )
    text = CliRunner().invoke(main, ["plan", str(spec)])
    assert text.exit_code == 0, text.output
    assert "f32[layer:3, 8,8] -> f32[member:2, layer:3, 8,8]" in text.output
    assert "f32[8,4] -> f32[member:2, 8,4]" in text.output
    yaml_out = CliRunner().invoke(main, ["plan", str(spec), "--format", "yaml"])
    assert yaml_out.exit_code == 0, yaml_out.output
    import yaml

    steps = yaml.safe_load(yaml_out.output)["steps"]
    rows = {m["path"]: m for m in steps[1]["matches"]}
    assert rows["layers[1].weight"]["before"] == "f32[layer:3, 8,8]"
    assert rows["layers[1].weight"]["after"].startswith("f32[member:2, layer:3, 8,8] ")
    assert rows["layers[1].bias"]["after"].startswith("f32[member:2, layer:3, 8] ")
    assert rows["layers[0].weight"]["after"].startswith("f32[member:2, 8,4] ")


def test_a_sweep_of_a_model_with_batchnorm_state_trains_each_member_as_its_own_run():
    import realmodels as R

    from eqxform._runtime import _train

    eqxform.register_constructor("TinyResNet", R.make_tiny_resnet)
    head = "model TinyResNet(width=4, depth=2, num_classes=3)\nseed 0\n"
    body = "optimizer adam(learning_rate=lr)\n"
    program = eqxform.compile(head + "ensemble 2 vary lr=[1e-3, 3e-2]\n" + body)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, size=(32,)).astype(np.int32)
    ensemble, state = program.apply()
    result = _train.train(
        program, (ensemble, state), x, y, steps=6, batch_size=8, loss="cross_entropy"
    )
    assert result.nonfinite is None and not result.diverged
    trained, trained_state = result.model
    for k, lr in enumerate([1e-3, 3e-2]):
        single = eqxform.compile(head + f"let lr = {lr!r}\n" + body)
        alone = _train.train(
            single, single.apply(), x, y, steps=6, batch_size=8, loss="cross_entropy"
        )
        model, model_state = alone.model
        _same(model, trained.member(k), rtol=1e-4, atol=1e-6)
        # The BatchNorm statistics moved, and each member's are its own run's.
        mine = jax.tree_util.tree_map(lambda a: a[k], trained_state)
        _same(model_state, mine, rtol=1e-4, atol=1e-6)
        assert not all(
            np.array_equal(a, b)
            for a, b in zip(
                _arrays(model_state), _arrays(jax.tree_util.tree_map(lambda a: a[k], state))
            )
        )


def test_members_that_differ_only_in_the_optimiser_are_built_once():
    calls = []

    def constructor(key):
        calls.append(key)
        return eqx.nn.MLP(4, 3, 16, 2, key=key)

    lr_only = eqxform.compile("optimizer adam(learning_rate=lr)\nensemble 4 vary lr=[1, 2, 3, 4]\n")
    assert lr_only.sweep.model_names == ()
    ensemble = lr_only.apply(constructor)
    once = len(calls)
    # The members are equal, each the single model.
    for k in range(4):
        _same(ensemble.member(k), ensemble.member(0), rtol=0, atol=0)
    calls.clear()
    body = "optimizer adam(learning_rate=lr)\nwhere Linear.weight -> init normal(stddev=s)\n"
    varied = eqxform.compile(body + "ensemble 4 vary lr=[1, 2, 3, 4], s=[0.1, 0.1, 0.2, 0.2]\n")
    assert varied.sweep.model_names == ("s",)
    ensemble = varied.apply(constructor)
    # Two models (one per `s`): one build more than the lr-only sweep's one
    # (`once` counts it with the calls every `apply` of a constructor makes).
    assert len(calls) == once + 1
    w = ensemble.layers[0].weight
    np.testing.assert_array_equal(w[0], w[1])
    np.testing.assert_allclose(w[2], 2 * w[0], rtol=1e-6)
    for k, (lr, s) in enumerate([(1, 0.1), (2, 0.1), (3, 0.2), (4, 0.2)]):
        single = eqxform.compile(f"let lr = {lr}\nlet s = {s}\n" + body)
        _same(ensemble.member(k), single.apply(constructor), rtol=0, atol=0)
    # With `vary seed`, each member is drawn from its own seed.
    calls.clear()
    eqxform.compile(body + "ensemble 3 vary lr=[1, 2, 3], s=[0.1, 0.1, 0.1], seed\n").apply(
        constructor
    )
    assert len(calls) == once + 2
