"""The public functions behind the commands: each gives what its command
gives, `apply` plans first (the same diagnostics as `check` and `plan`,
before anything is allocated), and a plan already made is not made again."""

import json
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
from click.testing import CliRunner
from realmodels import TinyViT

import eqxform
from eqxform._cli import main
from eqxform._passes._tree import InitPass
from eqxform._plan import Planner

MLP = "MLP(in_size=2, out_size=2, width_size=8, depth=2)"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture
def drawn(monkeypatch):
    """The `init` passes run for real (not on shapes, as a plan runs them)."""
    calls = []
    original = InitPass.run

    def run(self, model, key, ctx, nodes):
        if not ctx.shapes_only:
            calls.append(self.line)
        return original(self, model, key, ctx, nodes)

    monkeypatch.setattr(InitPass, "run", run)
    return calls


# Line 1 fits the ViT; lines 2 and 4 do not (no `Conv3d`; `head` has no `bias2`).
BROKEN = """where Linear.weight -> init he_normal
where Conv3d.weight -> init zeros
where blocks[*].norm1 -> freeze
where head.bias2 -> init zeros
"""


def _errors(diagnostics):
    return [(d.code, d.span.line) for d in diagnostics if d.severity == "error"]


def test_apply_refuses_with_the_diagnostics_of_check_and_plan_before_drawing(drawn):
    vit = TinyViT(depth=4, key=jax.random.key(0))
    checked = _errors(eqxform.check(BROKEN, vit).diagnostics)
    program = eqxform.compile(BROKEN)
    planned = _errors(program.plan(vit).diagnostics)
    with pytest.raises(eqxform.SpecError) as e:
        program.apply(vit)
    applied = _errors(e.value.diagnostics)
    assert checked == planned == applied == [("E201", 2), ("E201", 4)]
    with pytest.raises(eqxform.SpecError) as e:
        eqxform.apply(BROKEN, vit)
    assert _errors(e.value.diagnostics) == checked
    # Line 1 was planned (abstractly), never drawn: the refusal came first.
    assert drawn == []
    fixed = BROKEN.replace("Conv3d", "Conv2d").replace("bias2", "bias")
    eqxform.compile(fixed).apply(vit)
    assert drawn == [1, 2, 4]


def test_a_model_over_the_memory_budget_is_refused_by_apply_as_by_check(monkeypatch):
    monkeypatch.setenv("EQXFORM_MAX_BYTES", "1M")
    spec = "model MLP(in_size=512, out_size=512, width_size=512, depth=3)\nseed 1\n"
    checked = _errors(eqxform.check(spec).diagnostics)
    assert [code for code, _ in checked] == ["E158"]
    with pytest.raises(eqxform.SpecError) as e:
        eqxform.compile(spec).apply()
    assert _errors(e.value.diagnostics) == checked


@pytest.fixture
def plans(monkeypatch):
    """How many times a program is planned."""
    count = [0]
    original = Planner.plan

    def counted(self, *args, **kwargs):
        count[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Planner, "plan", counted)
    return count


def test_a_plan_given_is_not_made_again(tmp_path, monkeypatch, plans):
    monkeypatch.chdir(tmp_path)
    eqxform.save("m.eqx", eqxform.new(MLP))
    spec = "where Linear.weight -> init he_normal\n"
    plan = eqxform.plan(spec, "m.eqx")
    assert plans[0] == 1
    model = eqxform.apply(spec, "m.eqx", plan=plan, seed=3)
    assert plans[0] == 1
    again = eqxform.apply(spec, "m.eqx", seed=3)  # planned here
    assert plans[0] == 2
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(again)))
    # The command line plans once, then applies.
    Path("spec.eqx").write_text(spec)
    assert run("apply", "spec.eqx", "m.eqx", "-o", "out.eqx")[0] == 0
    assert plans[0] == 3


def test_apply_of_a_model_file_is_the_command_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    eqxform.save("m.eqx", eqxform.new(MLP))
    Path("spec.eqx").write_text(
        "where Linear.weight -> init he_normal\nwhere layers[0] -> freeze\n"
    )
    assert run("apply", "spec.eqx", "m.eqx", "-o", "cli.eqx", "--seed", "4")[0] == 0
    eqxform.save("api.eqx", eqxform.apply(Path("spec.eqx"), "m.eqx", seed=4))
    cli, api = eqxform.load("cli.eqx"), eqxform.load("api.eqx")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(cli), jax.tree.leaves(api)))
    assert eqxform.inspect("cli.eqx").recipe == eqxform.inspect("api.eqx").recipe


def test_train_returns_the_model_with_the_recipe_the_command_line_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = Path(__file__).parent.parent / "specs" / "freeze_backbone.eqx"
    code, out = run("train", spec, "-o", "cli.eqx", "--steps", "6", "--batch-size", "8")
    assert code == 0, out
    seen = []
    result = eqxform.train(
        spec, steps=6, batch_size=8, on_step=lambda done, loss, members, diverged: seen.append(done)
    )
    assert isinstance(result, eqxform.TrainResult) and result.steps == 6
    assert seen == [1, 6] and result.members is None and not result.ensemble
    recipe = eqxform.recipe_of(result.model)
    assert recipe["train"] == {"steps": 6, "data": "built-in", "loss": "mse", "batch_size": 8}
    eqxform.save("api.eqx", result.model)  # no recipe passed: the model carries it
    assert eqxform.inspect("api.eqx").recipe == eqxform.inspect("cli.eqx").recipe
    cli, api = eqxform.load("cli.eqx"), eqxform.load("api.eqx")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(cli), jax.tree.leaves(api)))


def test_train_of_a_sweep_reports_each_members_losses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = (
        f"model {MLP}\noptimizer adam(learning_rate=lr)\nensemble 3 vary lr=logspace(1e-3, 1e-1)\n"
    )
    seen = []
    result = eqxform.train(
        spec, steps=3, batch_size=4, on_step=lambda d, loss, m, diverged: seen.append((d, loss, m))
    )
    assert result.ensemble and [r["member"] for r in result.members] == [0, 1, 2]
    assert [r["values"]["lr"] for r in result.members] == pytest.approx([1e-3, 1e-2, 1e-1])
    # Each report carries the members' losses; the line's loss is their mean.
    for _, loss, members in seen:
        assert members.shape == (3,) and loss == pytest.approx(float(np.mean(members)), rel=1e-5)
    assert eqxform.recipe_of(result.model)["train"]["members"] == list(result.members)


def test_show_explain_and_fmt_print_what_the_functions_return(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    eqxform.save("m.eqx", eqxform.new(MLP))
    code, out = run("show", "m.eqx", "--format", "json")
    assert code == 0 and json.loads(out) == eqxform.inspect("m.eqx").to_dict()
    code, out = run("explain", "E201")
    assert code == 0 and out == eqxform.explain("E201") + "\n"
    with pytest.raises(eqxform.UsageError) as e:
        eqxform.explain("E2O1")
    assert e.value.diagnostics[0].code == "E415" and "`E201`" in e.value.diagnostics[0].help
    Path("specs").mkdir()
    a, b = Path("specs/a.eqx"), Path("specs/b.eqx")
    a.write_text("where  Linear.bias->init zeros\n")
    b.write_text(eqxform.format_spec("where Linear.bias -> init zeros\n"))
    assert eqxform.format_files(["specs"], check=True) == ([str(a), str(b)], [str(a)])
    assert a.read_text() == "where  Linear.bias->init zeros\n"  # `check`: untouched
    assert eqxform.format_files([a]) == ([str(a)], [str(a)])
    assert a.read_text() == b.read_text()


def test_usage_errors_of_the_command_line_are_written_by_code():
    e = eqxform.UsageError.of("E409", output="m.eqx")
    assert e.diagnostics[0].code == "E409" and "m.eqx" in e.diagnostics[0].message
    assert e.render() == str(e) and e.exit_code == 2
    with pytest.raises(TypeError):
        eqxform.UsageError.of("E409", outptu="m.eqx")


def test_apply_again_on_a_model_of_the_same_structure_plans_nothing_again(plans):
    program = eqxform.compile("where Linear.weight -> init he_normal\n")
    one, two = (eqx.nn.MLP(2, 2, 8, 2, key=jax.random.key(k)) for k in (0, 1))
    a = program.apply(one, key=jax.random.key(0))
    b = program.apply(two, key=jax.random.key(0))
    assert plans[0] == 1
    # The same draws whichever plan was kept: only the structure is planned.
    assert all(np.array_equal(x.weight, y.weight) for x, y in zip(a.layers, b.layers))
    assert not np.array_equal(a.layers[0].bias, b.layers[0].bias)  # the values are each model's
    wider = eqx.nn.MLP(2, 2, 16, 2, key=jax.random.key(2))
    program.apply(wider)
    assert plans[0] == 2
    with pytest.raises(eqxform.SpecError):  # another structure, planned and refused
        program.apply(eqx.nn.Conv2d(3, 4, 3, key=jax.random.key(0)))
    assert plans[0] == 3


def test_apply_again_with_the_same_constructor_traces_it_once_as_a_hand_written_vmap_does():
    # An ensemble drawn by a constructor needs the constructor's shapes; they
    # are kept with it, so a second apply costs what `eqx.filter_vmap` of the
    # constructor costs: one trace of it.
    calls = []

    def constructor(key):
        calls.append(key)
        return eqx.nn.MLP(4, 2, 8, 2, key=key)

    program = eqxform.compile("ensemble 3")
    first = program.apply(constructor, key=jax.random.key(0))
    before = len(calls)
    again = program.apply(constructor, key=jax.random.key(1))
    assert len(calls) - before == 1
    for got in (first, again):
        assert got.model.layers[0].weight.shape == (3, 8, 4)
    assert not np.allclose(first.model.layers[0].weight, again.model.layers[0].weight)
    # Another constructor of other shapes is not given the kept ones.
    other = program.apply(lambda k: eqx.nn.MLP(5, 2, 8, 2, key=k), key=jax.random.key(1))
    assert other.model.layers[0].weight.shape == (3, 8, 5)
