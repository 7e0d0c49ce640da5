"""Models of unusual size: nested hundreds of levels deep, or thousands of
layers wide. Deep ones work up to `_limits.MAX_MODEL_DEPTH` and beyond it are
a diagnostic (E159), never a `RecursionError`; the work on wide ones grows in
proportion to their layers, asserted by counting calls, never by timing."""

from __future__ import annotations

import cProfile
import pstats
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import eqxform
from eqxform import _limits as L
from eqxform._cli import main

# ---- deep models ---------------------------------------------------------------


class Wrap(eqx.Module):
    inner: eqx.Module

    def __call__(self, x):
        return self.inner(x)


def chain(depth: int, key) -> eqx.Module:
    """A `Linear` inside `depth` wrappers, each inside the last."""
    model = eqx.nn.Linear(3, 3, key=key)
    for _ in range(depth):
        model = Wrap(model)
    return model


def nested(depth: int, key):
    """A `Linear` inside `depth` lists and tuples, alternately."""
    model = eqx.nn.Linear(3, 3, key=key)
    for i in range(depth):
        model = [model] if i % 2 else (model,)
    return model


def innermost(model):
    while not isinstance(model, eqx.nn.Linear):
        model = model[0] if isinstance(model, (list, tuple)) else model.inner
    return model


SPEC = """\
where Linear.weight -> init normal(stddev=0.5)
where Linear.bias -> init zeros
where Linear.weight -> freeze
"""


@pytest.mark.parametrize("build", [chain, nested])
def test_a_model_500_levels_deep_is_checked_planned_and_applied(build, getkey):
    model = build(500, getkey())
    program = eqxform.compile(SPEC)
    assert program.check(model) == []
    plan = program.plan(model)
    assert [s.count for s in plan.steps] == [1, 1, 1]
    assert plan.trainable == 3 and plan.frozen == 9
    out = program.apply(model, key=jax.random.key(0))
    linear = innermost(out)
    assert isinstance(linear.weight, eqxform.Frozen)
    assert np.all(np.asarray(linear.bias) == 0)
    weight = np.asarray(linear.weight.value)
    assert weight.shape == (3, 3) and not np.allclose(weight, np.asarray(innermost(model).weight))
    # The same tree around it, level for level.
    assert jax.tree_util.tree_structure(eqxform.resolve(out)) == jax.tree_util.tree_structure(model)


def test_a_model_nested_beyond_the_limit_is_refused_before_jax_sees_it(getkey, tmp_path):
    deep = nested(L.MAX_MODEL_DEPTH + 5, getkey())
    program = eqxform.compile(SPEC)
    for call in (
        lambda: program.check(deep),
        lambda: program.plan(deep),
        lambda: program.apply(deep, key=jax.random.key(0)),
        lambda: eqxform.save(tmp_path / "deep.eqx", deep),
    ):
        with pytest.raises(eqxform.UsageError) as info:
            call()
        (d,) = info.value.diagnostics
        assert d.code == "E159"
        assert f"more than {L.MAX_MODEL_DEPTH} levels deep" in d.message
        assert "list" in d.help
    assert not (tmp_path / "deep.eqx").exists()
    # One level short of the limit still works.
    assert program.check(nested(L.MAX_MODEL_DEPTH - 2, getkey())) == []


@pytest.fixture
def deeppkg(tmp_path, monkeypatch):
    """A package of constructors that nest a `Linear` `depth` levels deep."""
    pkg = tmp_path / "deeppkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """\
            import equinox as eqx

            class Wrap(eqx.Module):
                inner: eqx.Module

                def __call__(self, x):
                    return self.inner(x)

            def chain(depth, *, key):
                model = eqx.nn.Linear(3, 3, key=key)
                for _ in range(depth):
                    model = Wrap(model)
                return model

            def nested(depth, *, key):
                model = eqx.nn.Linear(3, 3, key=key)
                for i in range(depth):
                    model = [model] if i % 2 else (model,)
                return model
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("ctor", ["chain", "nested"])
def test_the_command_line_takes_a_model_500_levels_deep(deeppkg, ctor):
    (deeppkg / "spec.eqx").write_text(f"model deeppkg:{ctor}(depth=500)\n" + SPEC)
    runner = CliRunner()
    for command in (["check"], ["plan"], ["apply", "-o", "out.eqx"]):
        result = runner.invoke(main, [command[0], "spec.eqx", "--allow", "deeppkg", *command[1:]])
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
    assert "wrote out.eqx (12 parameters, 3 rules applied)" in result.output
    back = eqxform.load(deeppkg / "out.eqx", allow=["deeppkg"])
    linear = innermost(back)
    assert isinstance(linear.weight, eqxform.Frozen) and np.all(np.asarray(linear.bias) == 0)


def test_the_command_line_refuses_a_constructor_nesting_too_deep(deeppkg):
    depth = L.MAX_MODEL_DEPTH + 5
    (deeppkg / "spec.eqx").write_text(f"model deeppkg:nested(depth={depth})\n" + SPEC)
    runner = CliRunner()
    for command in (["check"], ["plan"], ["apply", "-o", "out.eqx"]):
        result = runner.invoke(main, [command[0], "spec.eqx", "--allow", "deeppkg", *command[1:]])
        assert result.exit_code == 1, result.output
        assert "error[E159]" in result.output and "spec.eqx:1:7" in result.output
        assert "Traceback" not in result.output and "RecursionError" not in result.output
    assert not (deeppkg / "out.eqx").exists()


def test_a_replace_that_nests_too_deep_is_refused_at_its_constructor(deeppkg, getkey):
    program = eqxform.compile(
        f"where [1] -> replace deeppkg:nested(depth={L.MAX_MODEL_DEPTH - 1})", allow=["deeppkg"]
    )
    model = [eqx.nn.Linear(3, 3, key=getkey()), eqx.nn.Linear(3, 3, key=getkey())]
    with pytest.raises(eqxform.SpecError) as info:
        program.apply(model, key=jax.random.key(0))
    (d,) = info.value.diagnostics
    assert d.code == "E159" and "at `[1]`" in d.message and d.span.column == 22


def test_the_depth_limit_leaves_room_below_python_s_recursion_limit():
    # JAX flattens recursively, a level a frame; the bound leaves the callers'
    # frames (a command, a trace under `eval_shape`) and a rule's wrappers room.
    assert L.MAX_MODEL_DEPTH + 300 <= sys.getrecursionlimit()


# ---- wide models: work in proportion to the layers ----------------------------------

WIDE_SPEC = """\
where Linear.weight -> init trunc_normal(stddev=1/sqrt(fan_in), lower=-2, upper=2)
where Linear.bias -> init zeros
where [*] except [0] -> freeze
where Linear.weight -> scale 0.5
"""


def _layers(count: int):
    keys = jax.random.split(jax.random.key(0), count)
    return [eqx.nn.Linear(4, 4, key=k) for k in keys]


def _calls(run) -> int:
    """The Python function calls `run()` makes (cProfile's count: a number of
    steps, the same on a fast or a loaded machine)."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        run()
    finally:
        profile.disable()
    return pstats.Stats(profile).total_calls


def _compilations(run) -> int:
    """How many XLA compilations `run()` causes."""
    seen = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        run()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return len(seen)


@pytest.mark.parametrize("what", ["check", "plan", "apply"])
def test_the_work_per_layer_does_not_grow_with_the_model(what):
    program = eqxform.compile(WIDE_SPEC)

    def run(model):
        if what == "check":
            assert program.check(model) == []
        elif what == "plan":
            assert str(program.plan(model))
        else:
            jax.block_until_ready(program.apply(model, key=jax.random.key(1)))

    small, large = _layers(150), _layers(600)
    run(_layers(10))  # compile the draws, import what is imported on first use
    per_layer = [_calls(lambda m=m: run(m)) / len(m) for m in (small, large)]
    # Linear work: the same calls per layer (a fixed part spread over more
    # layers makes the large model's a little cheaper). Comparing every pair of
    # paths, as before, made it 4 times dearer here.
    assert per_layer[1] <= 1.05 * per_layer[0], per_layer
    # No compiled function per layer: as many compilations for either size.
    assert _compilations(lambda: run(_layers(150))) == _compilations(lambda: run(_layers(600)))


def test_a_wide_model_is_transformed_as_by_hand():
    model = _layers(300)
    out = eqxform.compile(WIDE_SPEC).apply(model, key=jax.random.key(1))
    assert not isinstance(out[0].weight, eqxform.Frozen)
    assert all(isinstance(layer.weight, eqxform.Frozen) for layer in out[1:])
    assert all(isinstance(layer.bias, eqxform.Frozen) for layer in out[1:])
    resolved = eqxform.resolve(out)
    for layer in resolved:
        assert np.all(np.asarray(layer.bias) == 0)
        # trunc_normal(stddev=1/2) cut at 2 standard deviations, then halved.
        assert float(jnp.max(jnp.abs(layer.weight))) <= 0.5 * 0.5 * 2 + 1e-6
    weights = np.stack([np.asarray(layer.weight) for layer in resolved])
    assert len({w.tobytes() for w in weights}) == 300  # each layer draws its own


def test_paths_above_and_below_are_found_as_by_comparing_every_pair():
    from eqxform._select import PathSet, outermost

    key = jax.tree_util
    a, b = key.GetAttrKey("a"), key.GetAttrKey("b")
    paths = [(a, key.SequenceKey(0)), (a,), (b,), (a,), (b, a), (), (b, b, a)]
    for held in ([], paths[:1], paths[1:3], paths[4:], paths):
        found = PathSet(held)
        for p in paths + [(a, key.SequenceKey(1)), (b, b)]:
            assert found.covers(p) == any(p[: len(q)] == q for q in held)
            assert found.covers(p, strict=True) == any(
                p[: len(q)] == q and len(q) < len(p) for q in held
            )
            assert found.reaches(p) == any(q[: len(p)] == p for q in held)
    assert outermost(paths[:5]) == [(a,), (b,)]
    assert outermost(paths) == [()]
