import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import eqxform
from eqxform._cli import main

SPECS = Path(__file__).parent.parent / "specs"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_trains_out_of_the_box_and_keeps_frozen_weights(here):
    code, out = run("train", SPECS / "freeze_backbone.eqx", "-o", "ft.eqx", "--steps", "60")
    assert code == 0, out
    assert "trained 60 steps" in out
    trained = eqxform.load("ft.eqx")
    start = eqxform.compile(SPECS / "freeze_backbone.eqx").apply()
    for a, b in zip(trained.layers[:-1], start.layers[:-1]):
        assert np.array_equal(a.weight.value, b.weight.value)
    assert not np.array_equal(trained.layers[-1].weight, start.layers[-1].weight)
    code, out = run("show", "ft.eqx", "--format", "json")
    assert json.loads(out)["recipe"]["train"]["steps"] == 60


def test_trains_on_an_npz_and_learns(here):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 2)).astype(np.float32)
    y = np.stack([x[:, 0] * 2, x[:, 1] - x[:, 0]], axis=1).astype(np.float32)
    np.savez("data.npz", x=x, y=y)
    Path("s.eqx").write_text(
        "model MLP(in_size=2, out_size=2, width_size=32, depth=2)\noptimizer adam(learning_rate=1e-2)\n"
    )
    code, out = run(
        "train",
        "s.eqx",
        "--data",
        "data.npz",
        "--steps",
        "300",
        "--batch-size",
        "64",
        "-o",
        "m.eqx",
    )
    assert code == 0, out
    model = eqxform.load("m.eqx")
    import jax

    pred = np.asarray(jax.vmap(model)(x))
    assert np.mean((pred - y) ** 2) < 0.05


def test_cross_entropy_on_the_built_in_data(here):
    Path("s.eqx").write_text(
        "model MLP(in_size=4, out_size=3, width_size=16, depth=2)\noptimizer adam(learning_rate=1e-2)\n"
    )
    code, out = run("train", "s.eqx", "--loss", "cross_entropy", "--steps", "30", "-o", "m.eqx")
    assert code == 0, out


@pytest.mark.parametrize(
    "arrays,words",
    [
        ({"a": np.zeros(3)}, "must hold arrays named `x` and `y`"),
        (
            {"x": np.zeros((4, 2), np.float32), "y": np.zeros((3, 2), np.float32)},
            "one row per example",
        ),
        (
            {"x": np.zeros((8, 3), np.float32), "y": np.zeros((8, 2), np.float32)},
            "does not accept rows",
        ),
        (
            {"x": np.zeros((8, 2), np.float32), "y": np.zeros((8, 5), np.float32)},
            "outputs of shape [2]",
        ),
    ],
)
def test_bad_data(here, arrays, words):
    np.savez("d.npz", **arrays)
    code, out = run("train", SPECS / "freeze_backbone.eqx", "--data", "d.npz", "-o", "m.eqx")
    assert code == 2 and words in out and "Traceback" not in out
    assert not Path("m.eqx").exists()


def test_missing_data_and_optimizer(here):
    code, out = run("train", SPECS / "freeze_backbone.eqx", "--data", "nope.npz", "-o", "m.eqx")
    assert code == 2 and "does not exist" in out
    code, out = run("train", SPECS / "custom_init.eqx", "-o", "m.eqx")
    assert code == 2 and "no `optimizer` directive" in out
    code, out = run("train", SPECS / "freeze_backbone.eqx", "-o", "m.eqx", "--batch-size", "9999")
    assert code == 2 and "larger than the data set" in out


def test_ctrl_c_keeps_the_last_good_model(here):
    Path("s.eqx").write_text(
        "model MLP(in_size=2, out_size=2, width_size=8, depth=1)\noptimizer adam(learning_rate=1e-3)\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eqxform",
            "train",
            "s.eqx",
            "--steps",
            "100000000",
            "--batch-size",
            "8",
            "--checkpoint-every",
            "50",
            "-o",
            "m.eqx",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600  # a hang bound: the first checkpoint takes some seconds
    while not Path("m.eqx").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert Path("m.eqx").exists(), (
        proc.stderr.read() if proc.poll() is not None else "no checkpoint"
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted after" in err
    model = eqxform.load("m.eqx")
    recipe = eqxform.recipe_of(model)
    assert recipe["train"]["steps"] > 0
    assert not [p for p in os.listdir(".") if p.endswith(".tmp")]
