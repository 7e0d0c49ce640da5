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


# ---- labels, progress off a terminal, non-finite training ---------------------------------


def test_cross_entropy_labels_say_what_is_wrong_and_how_to_fix_it(here):
    Path("s.eqx").write_text(
        "model MLP(in_size=4, out_size=3, width_size=8, depth=1)\noptimizer adam(learning_rate=1e-2)\n"
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    np.savez("onehot.npz", x=x, y=np.eye(3, dtype=np.float32)[rng.integers(0, 3, 16)])
    code, out = run(
        "train", "s.eqx", "--data", "onehot.npz", "--loss", "cross_entropy", "-o", "m.eqx"
    )
    assert code == 2 and "E420" in out and "Traceback" not in out
    assert "labels that are integers of shape [N], got f32[16,3]" in out
    assert "y.argmax(axis=1).astype(numpy.int32)" in out
    assert "numpy.savez(path, x=inputs" not in out  # the generic help is not what is wrong here
    np.savez("classes.npz", x=x, y=np.arange(16, dtype=np.int32) % 5)
    code, out = run(
        "train", "s.eqx", "--data", "classes.npz", "--loss", "cross_entropy", "-o", "m.eqx"
    )
    assert code == 2 and "labels must lie in [0, 3); they run from 0 to 4" in out
    assert "give labels from 0 to 2" in out
    assert not Path("m.eqx").exists()


def test_train_off_a_terminal_prints_the_initial_loss_and_bounded_progress(here):
    # CliRunner's output is no terminal, as a pipe or a log file is not.
    code, out = run("train", SPECS / "freeze_backbone.eqx", "-o", "m.eqx", "--steps", "200")
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0].startswith("step 1/200: initial loss ")
    float(lines[0].rsplit(" ", 1)[1])
    progress = [line for line in lines if line.startswith("step ")]
    # The first step, one line per tenth of the run, nothing more.
    assert [int(line.split()[1].split("/")[0]) for line in progress] == [1] + list(
        range(20, 201, 20)
    )
    assert lines[-1].startswith("trained 200 steps (loss ") and "wrote m.eqx" in lines[-1]
    # A short run: every step is its own tenth.
    code, out = run("train", SPECS / "freeze_backbone.eqx", "-o", "m.eqx", "--steps", "3")
    assert [line.split(":")[0] for line in out.splitlines()[:3]] == [
        "step 1/3",
        "step 2/3",
        "step 3/3",
    ]


def test_a_diverging_run_stops_at_the_first_nonfinite_step_and_keeps_the_last_finite_model(here):
    Path("s.eqx").write_text(
        "model MLP(in_size=2, out_size=2, width_size=8, depth=2)\noptimizer sgd(learning_rate=1e10)\n"
    )
    code, out = run("train", "s.eqx", "-o", "m.eqx", "--steps", "50")
    assert code == 1 and "Traceback" not in out
    assert "error[E530]: training stopped at step 2: its loss is inf" in out
    assert "wrote the model of step 1, the last finite one, to `m.eqx`" in out
    assert "trained 50 steps" not in out
    model = eqxform.load("m.eqx")
    import equinox as eqx
    import jax

    arrays = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    assert arrays and all(np.isfinite(np.asarray(a)).all() for a in arrays)
    recipe = eqxform.recipe_of(model)
    assert recipe["train"]["steps"] == 1
    assert recipe["train"]["stopped"] == "step 2 was not finite"


def test_a_model_whose_first_loss_is_not_finite_writes_nothing(here):
    # `scale` by 1e30 in both layers: the outputs overflow, and the first loss is NaN.
    Path("s.eqx").write_text(
        "model MLP(in_size=2, out_size=2, width_size=8, depth=1)\n"
        "optimizer adam(learning_rate=1e-3)\n"
        "where Linear.weight -> scale 1e30\n"
    )
    code, out = run("train", "s.eqx", "-o", "m.eqx", "--steps", "20")
    assert code == 1 and "training stopped at step 1: its loss is nan" in out
    assert "nothing was written to `m.eqx`" in out
    assert not Path("m.eqx").exists()


def test_the_step_keeps_the_model_before_the_first_nonfinite_step(getkey):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    model = eqx.nn.Linear(2, 1, key=getkey())

    def loss_fn(m, x, y):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    step = eqxform.make_step(loss_fn, optax.sgd(0.1), model, stop_if_nonfinite=True)
    x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    step(x, y)
    good = np.array(step.model.weight)  # a copy: the step donates its buffers
    assert step.nonfinite_step is None
    step(x.at[0, 0].set(jnp.nan), y)  # step 2: NaN loss
    step(x, y)  # later finite steps change nothing
    assert step.nonfinite_step == 2
    assert np.array_equal(step.model.weight, good)
    # Without the option the step is what it was: the NaN goes into the model.
    plain = eqxform.make_step(loss_fn, optax.sgd(0.1), model)
    plain(x.at[0, 0].set(jnp.nan), y)
    assert plain.nonfinite_step is None and np.isnan(plain.model.weight).all()


@pytest.mark.parametrize(
    "bad,words",
    [
        ("x", "`x` of `d.npz` holds nan at index [3, 1] (2 elements not finite)"),
        ("y", "`y` of `d.npz` holds inf at index [7, 0] (1 element not finite)"),
    ],
)
def test_nonfinite_training_data_is_refused_before_any_step(here, bad, words):
    x = np.zeros((16, 2), np.float32)
    y = np.zeros((16, 2), np.float32)
    if bad == "x":
        x[3, 1] = x[9, 0] = np.nan
    else:
        y[7, 0] = np.inf
    np.savez("d.npz", x=x, y=y)
    code, out = run("train", SPECS / "freeze_backbone.eqx", "--data", "d.npz", "-o", "m.eqx")
    assert code == 2 and "E529" in out and words in out and "Traceback" not in out
    assert "step 1/" not in out  # refused before training
    assert not Path("m.eqx").exists()


# ---- whole numbers on the command line; joining a run of several processes ---------------


@pytest.mark.parametrize(
    "option,value",
    [
        ("--steps", "１"),  # a fullwidth digit: Python's int() takes it
        ("--steps", "1_0"),  # so does an underscore
        ("--batch-size", "٣"),  # an Arabic-Indic digit
        ("--checkpoint-every", "²"),
        ("--num-processes", "２"),
        ("--timeout", "1e3"),
    ],
)
def test_counts_on_the_command_line_are_ascii_digits(here, option, value):
    code, out = run("train", SPECS / "freeze_backbone.eqx", "-o", "m.eqx", option, value)
    assert code == 2 and "Traceback" not in out
    assert (
        f"Invalid value for '{option}': `{value}` is not a whole number written in the digits 0-9"
        in out
    )


@pytest.mark.parametrize("size", ["１", "²", "1_0", "٣"])
def test_a_mesh_size_in_other_digits_is_refused(here, size):
    code, out = run("train", SPECS / "freeze_backbone.eqx", "-o", "m.eqx", "--mesh", f"data={size}")
    assert code == 2 and "E465" in out and "Traceback" not in out
    assert (
        f"the size of `data` must be a whole number in the digits 0-9, or -1, not `{size}`" in out
    )
    with pytest.raises(eqxform.UsageError):
        eqxform.compile("seed 0", mesh=f"data={size}")


def test_a_port_in_other_digits_is_refused():
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.initialize_distributed("127.0.0.1:１２３４", 2, 1)
    assert [d.code for d in e.value.diagnostics] == ["E466"]
    assert "is not `HOST:PORT`" in e.value.diagnostics[0].message
    code, out = run("train", SPECS / "freeze_backbone.eqx", "-o", "m.eqx", "--timeout", "5")
    assert code == 2 and "E466" in out and "`--timeout` is how long a run of several" in out


def _train_joining(tmp_path, process_id: int, port: int) -> subprocess.CompletedProcess:
    """`eqxform train` as one process of a run of two that never forms, with
    a timeout of 3 s; the test itself is bounded (a hang is a failure)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "eqxform", "train", str(SPECS / "freeze_backbone.eqx")]
        + ["-o", str(tmp_path / "m.eqx"), "--coordinator", f"127.0.0.1:{port}"]
        + ["--num-processes", "2", "--process-id", str(process_id), "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
        cwd=tmp_path,
    )


def test_a_coordinator_that_never_answers_is_a_diagnostic_not_an_abort(tmp_path):
    # Port 1: nothing listens. JAX alone waits 5 minutes, then aborts (SIGABRT).
    done = _train_joining(tmp_path, 1, 1)
    assert done.returncode == 2, done.stderr
    assert "error[E467]: process 1 of 2 could not join the run at `127.0.0.1:1`" in done.stderr
    assert "nothing listens there" in done.stderr and "after 3 s" in done.stderr
    assert "Check failure" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m.eqx").exists()


def test_a_coordinator_whose_run_never_forms_is_a_diagnostic_not_an_abort(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = _train_joining(tmp_path, 0, port)  # process 0 serves; process 1 never comes
    assert done.returncode == 2, done.stderr
    assert "error[E467]: process 0 of 2" in done.stderr
    assert "the 2 processes did not all join within 3 s" in done.stderr
    assert "start the other 1 process(es)" in done.stderr
    assert "Check failure" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m.eqx").exists()


def test_a_slow_run_off_a_terminal_prints_a_line_at_least_every_interval(here, monkeypatch):
    from eqxform import _cli

    # Every step "takes" longer than the interval: each gets its line.
    monkeypatch.setattr(_cli, "_LINE_EVERY_S", 0.0)
    code, out = run("train", SPECS / "freeze_backbone.eqx", "-o", "m.eqx", "--steps", "25")
    assert code == 0, out
    steps = [
        int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("step ")
    ]
    assert steps == list(range(1, 26))


class _TwoInputs:
    """A model called with two arguments per example (tokens and a mask), as
    language models are; built by `make`, registered for the command line."""

    @staticmethod
    def make(key):
        import equinox as eqx
        import jax

        class TwoInputs(eqx.Module):
            emb: eqx.nn.Embedding
            head: eqx.nn.Linear

            def __init__(self, key):
                k1, k2 = jax.random.split(key)
                self.emb = eqx.nn.Embedding(10, 4, key=k1)
                self.head = eqx.nn.Linear(4, 3, key=k2)

            def __call__(self, tokens, mask):
                return self.head((jax.vmap(self.emb)(tokens) * mask[:, None]).sum(0))

        return TwoInputs(key)


def test_a_model_of_several_inputs_trains_on_x0_x1_as_a_hand_written_loop_does(here):
    # `x0`, `x1`, ... in the data file are the model's arguments in order; the
    # result equals the hand-written optax loop over the same batches.
    import equinox as eqx
    import jax
    import optax

    rng = np.random.default_rng(0)
    x0 = rng.integers(0, 10, (40, 5)).astype(np.int32)
    x1 = (rng.random((40, 5)) > 0.3).astype(np.float32)
    y = rng.integers(0, 3, (40,)).astype(np.int32)
    np.savez("d.npz", x0=x0, x1=x1, y=y)
    model = _TwoInputs.make(jax.random.key(0))
    spec = "optimizer sgd(learning_rate=0.1)"
    result = eqxform.train(
        spec, model, data="d.npz", loss="cross_entropy", steps=12, batch_size=8, seed=3
    )

    def loss(m, a, b, t):
        logits = jax.vmap(m)(a, b)
        return optax.softmax_cross_entropy_with_integer_labels(logits, t).mean()

    opt = optax.sgd(0.1)
    hand, state = model, opt.init(eqx.filter(model, eqx.is_inexact_array))
    order_rng = np.random.default_rng(3)
    order, cursor = order_rng.permutation(40), 0
    for _ in range(12):
        if cursor + 8 > 40:
            order, cursor = order_rng.permutation(40), 0
        idx = order[cursor : cursor + 8]
        cursor += 8
        grads = eqx.filter_grad(loss)(hand, x0[idx], x1[idx], y[idx])
        updates, state = opt.update(grads, state, eqx.filter(hand, eqx.is_inexact_array))
        hand = eqx.apply_updates(hand, updates)
    for got, want in zip(jax.tree_util.tree_leaves(result.model), jax.tree_util.tree_leaves(hand)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    # Rows that do not line up, and a gap in the numbering, are said.
    np.savez("bad.npz", x0=x0, x1=x1[:30], y=y)
    with pytest.raises(eqxform.UsageError, match="`x1` and `y` must have one row per example"):
        eqxform.train(spec, model, data="bad.npz", loss="cross_entropy", steps=1, batch_size=8)
    np.savez("gap.npz", x0=x0, x2=x1, y=y)
    with pytest.raises(eqxform.UsageError, match="x1=..."):
        eqxform.train(spec, model, data="gap.npz", loss="cross_entropy", steps=1, batch_size=8)
    np.savez("one.npz", x=x0, y=y)
    with pytest.raises(eqxform.UsageError, match="does not accept rows of `x` of shape"):
        eqxform.train(spec, model, data="one.npz", loss="cross_entropy", steps=1, batch_size=8)


def test_a_model_cast_to_bfloat16_trains_on_float32_rows_as_a_hand_written_loop_does(here):
    # An `.npz` holds float32 rows; a model whose arrays are all bfloat16 gets
    # them in bfloat16, as a hand-written loop casts its batches.
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 1, 5)).astype(np.float32)
    y = rng.normal(size=(16, 2, 3)).astype(np.float32)
    np.savez("d.npz", x=x, y=y)
    # A convolution refuses inputs of another dtype than its weights.
    model = eqx.nn.Conv1d(1, 2, 3, key=jax.random.key(0))
    spec = "where ** -> cast bfloat16\noptimizer sgd(learning_rate=0.05)"
    result = eqxform.train(spec, model, data="d.npz", steps=4, batch_size=16)
    arrays = [a for a in jax.tree_util.tree_leaves(result.model) if eqx.is_array(a)]
    assert all(a.dtype == jnp.bfloat16 for a in arrays)

    def loss(m, a, t):
        return jnp.mean((jax.vmap(m)(a) - t) ** 2)

    hand = eqxform.compile("where ** -> cast bfloat16").apply(model)
    opt = optax.sgd(0.05)
    state = opt.init(eqx.filter(hand, eqx.is_inexact_array))
    for _ in range(4):  # one batch of all 16 rows: the order does not matter
        grads = eqx.filter_grad(loss)(hand, jnp.asarray(x, jnp.bfloat16), y)
        updates, state = opt.update(grads, state, eqx.filter(hand, eqx.is_inexact_array))
        hand = eqx.apply_updates(hand, updates)
    for got, want in zip(arrays, [a for a in jax.tree_util.tree_leaves(hand) if eqx.is_array(a)]):
        np.testing.assert_allclose(
            np.asarray(got, np.float32), np.asarray(want, np.float32), atol=1e-2
        )


def _state_inits(model) -> list:
    """The floating-point initial values in `model`'s `eqx.nn.StateIndex`es."""
    import equinox as eqx
    import jax

    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731
    indices = [i for i in jax.tree_util.tree_leaves(model, is_leaf=is_index) if is_index(i)]
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(indices) if eqx.is_inexact_array(a)]


def test_weight_decay_leaves_model_state_as_a_hand_written_masked_adamw_does(here):
    # The running statistics' initial values (in an `eqx.nn.StateIndex`) get no
    # gradient; adamw's decay leaves them too, so the trained model rebuilds its
    # state (`eqx.nn.State(model)`) from the statistics it started with. Every
    # other array equals a hand-written loop whose adamw masks the decay there.
    import equinox as eqx
    import jax
    import optax
    import realmodels as R

    model = R.MixedNorms(width=4, key=jax.random.key(0))  # eqx's BatchNorm and a library's
    state = eqx.nn.State(model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 3, 6, 6)).astype(np.float32)
    y = rng.integers(0, 10, (24,)).astype(np.int32)
    np.savez("d.npz", x=x, y=y)
    spec = "optimizer adamw(learning_rate=0.01, weight_decay=0.5)"
    result = eqxform.train(
        spec, (model, state), data="d.npz", loss="cross_entropy", steps=6, batch_size=8, seed=3
    )
    trained, trained_state = result.model
    inits = _state_inits(model)
    assert len(inits) == 4 and any((a == 1).all() for a in inits)  # running variances: ones
    for got, want in zip(_state_inits(trained), inits, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(
        jax.tree_util.tree_leaves(eqx.nn.State(trained)),
        jax.tree_util.tree_leaves(state),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731

    def decays(params):
        return jax.tree_util.tree_map(
            lambda x: jax.tree_util.tree_map(lambda _: False, x) if is_index(x) else True,
            params,
            is_leaf=is_index,
        )

    def loss(m, s, a, t):
        logits, s = R.call_with_state(m, a, s)
        return optax.softmax_cross_entropy_with_integer_labels(logits, t).mean(), s

    params = lambda m: eqx.filter(m, eqx.is_inexact_array)  # noqa: E731
    opt = optax.adamw(0.01, weight_decay=0.5, mask=decays)
    hand, hand_state, opt_state = model, state, opt.init(params(model))
    order_rng = np.random.default_rng(3)
    order, cursor = order_rng.permutation(24), 0
    for _ in range(6):
        if cursor + 8 > 24:
            order, cursor = order_rng.permutation(24), 0
        idx = order[cursor : cursor + 8]
        cursor += 8
        (_, hand_state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(
            hand, hand_state, x[idx], y[idx]
        )
        updates, opt_state = opt.update(grads, opt_state, params(hand))
        hand = eqx.apply_updates(hand, updates)
    arrays = lambda t: [a for a in jax.tree_util.tree_leaves(t) if eqx.is_array(a)]  # noqa: E731
    for got, want in zip(arrays((trained, trained_state)), arrays((hand, hand_state)), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    # The optimiser's state keeps its layout: the arrays plain adamw keeps.
    ours = eqxform.optimizer(eqxform.compile(spec), model).init(params(model))
    plain = optax.adamw(0.01, weight_decay=0.5).init(params(model))
    assert [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(ours)] == [
        (a.shape, a.dtype) for a in jax.tree_util.tree_leaves(plain)
    ]
