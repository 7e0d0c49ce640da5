"""The model-aware `check`, match accounting and its warnings: what `apply`
would report, reported before it runs, and the rules that do nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
import realmodels as rm
from click.testing import CliRunner

import eqxform
from eqxform._cli import main

MODEL = "model MLP(in_size=2, out_size=2, width_size=8, depth=2)\n"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def codes(diagnostics) -> list[tuple[str, int]]:
    return [(d.code, d.span.line) for d in diagnostics]


def warnings_of(text: str, model=None) -> list[tuple[str, int]]:
    plan = eqxform.compile(text).plan(model)
    assert plan.errors == ()
    return codes(plan.warnings)


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- check with a model ------------------------------------------------------------


def test_check_with_a_model_directive_reports_what_apply_reports(cwd):
    # The new user's spec: it passed `check` and failed `apply`.
    Path("spec.eqx").write_text(
        MODEL
        + "where Linear.wieght -> init zeros\n"
        + "where layers[5] -> freeze\n"
        + "where layers[0].weight -> init ones\n"
    )
    code, checked = run("check", "spec.eqx")
    assert code == 1
    assert "error[E201]: `Linear.wieght` matches nothing" in checked
    assert "did you mean `Linear.weight`?" in checked
    assert "error[E201]: `layers[5]` matches nothing" in checked
    assert "2 errors found" in checked
    code, applied = run("apply", "spec.eqx", "-o", "out.eqx")
    assert code == 1 and not Path("out.eqx").exists()
    # One set of diagnostics: `check` says exactly what `apply` says.
    assert checked == applied


def test_check_reports_model_free_and_model_errors_at_once(cwd):
    Path("spec.eqx").write_text(
        MODEL
        + "where Linear.weight -> init trunc_normall\n"
        + "where Linear.wieght -> init zeros\n"
        + "where layers[5] -> freeze\n"
    )
    code, out = run("check", "spec.eqx", "--json")
    assert code == 1
    found = [(d["code"], d["line"]) for d in json.loads(out)["diagnostics"]]
    assert found == [("E102", 2), ("E201", 3), ("E201", 4)]
    # A broken `replace` could change what every later rule matches: then
    # only the model-free errors are certain.
    Path("spec.eqx").write_text(
        MODEL
        + "where layers[-1] -> replace Linaer(in_features=8, out_features=3)\n"
        + "where layers[5] -> freeze\n"
    )
    code, out = run("check", "spec.eqx", "--json")
    assert [d["code"] for d in json.loads(out)["diagnostics"]] == ["E103"]


def test_check_with_a_model_reports_match_counts(cwd):
    Path("spec.eqx").write_text(
        MODEL + "where Linear.weight -> init zeros\nwhere layers[-1] -> cast bfloat16\n"
    )
    code, out = run("check", "spec.eqx")
    assert code == 0
    assert "spec.eqx: no problems found (3 statements; checked against `MLP(" in out
    # Each rule's count says what it counts: the arrays its action acts on
    # (a `cast` of a module casts its weight and its bias).
    assert "  line 2    init zeros     3 arrays\n" in out
    assert "  line 3    cast bfloat16  2 arrays\n" in out
    code, out = run("check", "spec.eqx", "--json")
    data = json.loads(out)
    assert data["ok"] is True and data["diagnostics"] == []
    assert data["model"].startswith("`MLP(in_size=2")
    assert [(r["line"], r["action"], r["count"]) for r in data["rules"]] == [
        (2, "init zeros", 3),
        (3, "cast bfloat16", 2),
    ]
    assert [r["unit"] for r in data["rules"]] == ["array", "array"]


def test_check_with_a_model_file_and_json_errors(cwd):
    assert run("new", "MLP(in_size=4, out_size=3, width_size=16, depth=2)", "-o", "m.eqx")[0] == 0
    Path("spec.eqx").write_text(
        "where Linear.bias -> init zeros\nwhere layerz -> freeze\nwhere layers[-1] -> freeze\n"
    )
    code, out = run("check", "spec.eqx", "m.eqx", "--json")
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False and data["model"] == "m.eqx"
    assert [(d["code"], d["line"]) for d in data["diagnostics"]] == [("E201", 2)]
    # The rules that did match still report their counts.
    assert [(r["line"], r["count"]) for r in data["rules"]] == [(1, 3), (3, 2)]


def test_check_runs_the_forward_pass_of_the_input_lines(cwd):
    Path("spec.eqx").write_text(
        MODEL + "input f32[2]\nwhere layers[-1] -> replace Linear(in_features=3, out_features=2)\n"
    )
    code, out = run("check", "spec.eqx")
    assert code == 1
    assert "error[E207]: after this rule the model fails on its declared input" in out
    assert "spec.eqx:3:1" in out


def test_check_on_a_stack_checks_its_structure(cwd):
    Path("spec.eqx").write_text(
        "model MLPChain(size=4, count=6, depth=1)\n"
        "stack mlps scan\n"
        "where mlps[2:4].layers[0].weight -> init zeros\n"
        "where mlps[1].layers[0] -> replace Linear(in_features=4, out_features=4)\n"
    )
    code, out = run("check", "spec.eqx")
    assert code == 1
    assert "error[E137]: `replace` cannot act on some layers of a stack" in out
    assert "spec.eqx:4:7" in out


def test_check_without_a_model_stays_a_jax_free_linter(tmp_path):
    spec = tmp_path / "spec.eqx"
    spec.write_text("let unused = 1\nwhere Linear.wieght -> init zeros\n")
    script = (
        "import sys\n"
        "from eqxform._cli import main\n"
        "try:\n"
        f"    main(['check', {str(spec)!r}])\n"
        "except SystemExit as e:\n"
        "    status = e.code\n"
        "print(status, 'jax' in sys.modules, 'equinox' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    # No model: the misspelt field cannot be known, the unused `let` can.
    assert result.stdout.split()[-3:] == ["0", "False", "False"]
    assert "warning[W205]: `let unused` is never used" in result.stderr
    assert "1 warning (2 statements)" in result.stdout


# ---- warnings and --deny ----------------------------------------------------------------

ACCOUNTING = (
    MODEL
    + "optimizer adam(learning_rate=1e-3)\n"
    + "where Linear.weight -> init normal(stddev=0.1)\n"
    + "where layers[-1] -> replace Linear(in_features=8, out_features=2)\n"
)


def test_warnings_pass_and_deny_warnings_fails(cwd):
    Path("spec.eqx").write_text(ACCOUNTING)
    for command in (["check"], ["plan"], ["apply", "-o", "out.eqx"]):
        code, out = run(*command, "spec.eqx")
        assert code == 0, command
        assert "warning[W203]" in out
        code, out = run(*command, "spec.eqx", "--deny", "warnings")
        assert code == 1, command
        assert "error[W203]" in out and "`--deny warnings` makes this an error" in out
    code, _ = run("check", "spec.eqx", "--deny", "W202")  # another code: still a warning
    assert code == 0
    code, _ = run("check", "spec.eqx", "--deny", "W203")
    assert code == 1


def test_the_linter_denies_warnings_too(cwd):
    Path("spec.eqx").write_text("let width = 3\nwhere layers[0] -> freeze\n")
    assert run("check", "spec.eqx")[0] == 0
    code, out = run("check", "spec.eqx", "--deny", "warnings", "--json")
    assert code == 1
    assert [d["code"] for d in json.loads(out)["diagnostics"]] == ["W205"]


def test_overwritten_means_written_again_without_being_read():
    base = MODEL + "optimizer adam(learning_rate=1e-3)\n"
    # A later `init` of the same arrays overwrites an `init` or a `scale`...
    assert warnings_of(
        base + "where Linear.bias -> init ones\nwhere Linear.bias -> init zeros\n"
    ) == [("W202", 3)]
    assert warnings_of(
        base + "where Linear.bias -> scale 2\nwhere Linear.bias -> init zeros\n"
    ) == [("W202", 3)]
    # ... but not a `scale` after it, which reads what `init` drew.
    assert (
        warnings_of(base + "where Linear.bias -> init ones\nwhere Linear.bias -> scale 2\n") == []
    )
    # `init` keeps the dtype of a `cast` and draws inside `wrap` and `freeze`.
    for first in ("cast bfloat16", "freeze"):
        text = base + f"where layers[0].weight -> {first}\nwhere layers[0].weight -> init zeros\n"
        assert warnings_of(text) == [], first
    # Only when every match is overwritten: a narrower later rule is no overwrite.
    assert (
        warnings_of(base + "where Linear.bias -> init ones\nwhere layers[0].bias -> init zeros\n")
        == []
    )
    # A `replace` overwrites whatever was done below the module, a `replace` included.
    text = (
        base
        + "where layers[0] -> freeze\nwhere layers[0] -> replace Linear(in_features=2, out_features=8)\n"
    )
    assert warnings_of(text) == [("W202", 3)]
    text = base + "where activation -> replace gelu\nwhere activation -> replace relu\n"
    assert warnings_of(text) == [("W202", 3)]


def test_init_discarded_by_a_replace_is_its_own_warning():
    plan = eqxform.compile(ACCOUNTING).plan()
    (w,) = plan.warnings
    assert w.code == "W203" and w.severity == "warning"
    assert w.message == "`init` draws 1 array that the `replace` on line 4 then discards"
    assert "move the `replace` above this rule" in w.help
    assert (w.span.line, w.span.column) == (3, 24)  # the action
    # In the other order the new layer is drawn too: nothing to say.
    lines = ACCOUNTING.splitlines(keepends=True)
    assert warnings_of("".join(lines[:2] + [lines[3], lines[2]])) == []


def test_a_later_lr_overwrites_an_earlier_one():
    base = MODEL + "optimizer adamw(learning_rate=1e-3)\n"
    text = base + "where layers[0].weight -> lr 0.5\nwhere Linear.weight -> lr 0.1\n"
    assert warnings_of(text) == [("W202", 3)]
    # Another kind, or a part of the arrays, is no overwrite.
    text = base + "where layers[0].weight -> lr 0.5\nwhere Linear.weight -> weight_decay 0\n"
    assert warnings_of(text) == []
    text = base + "where layers[0] -> lr 0.5\nwhere Linear.weight -> lr 0.1\n"
    assert warnings_of(text) == []


def test_lr_and_weight_decay_on_frozen_parameters():
    base = MODEL + "optimizer adamw(learning_rate=1e-3)\nwhere layers[0] -> freeze\n"
    assert warnings_of(base + "where layers[0].weight -> lr 0.1\n") == [("W204", 4)]
    assert warnings_of(base + "where layers[0] -> weight_decay 0\n") == [("W204", 4)]
    # Some of its arrays train: the rule does something.
    assert warnings_of(base + "where **.bias -> lr 0.1\n") == []


def test_accounting_on_stacked_layers():
    stacked = "model MLPChain(size=4, count=6, depth=1)\nstack mlps scan\n"
    # Layers 0 and 1 drawn, then every layer: overwritten.
    text = "where mlps[0:2].layers[0].weight -> init zeros\nwhere Linear.weight -> init ones\n"
    assert warnings_of(stacked + text) == [("W202", 3)]
    # Every layer, then two of them: the first still sets layers 2 to 5.
    text = "where Linear.weight -> init zeros\nwhere mlps[0:2].layers[0].weight -> init ones\n"
    assert warnings_of(stacked + text) == []
    text = "where mlps[0:2] -> init zeros\nwhere mlps[1:4] -> init ones\n"
    assert warnings_of(stacked + text) == []  # layer 0 keeps the first draw
    text = "where mlps[1:3] -> init zeros\nwhere mlps[0:4] -> init ones\n"
    assert warnings_of(stacked + text) == [("W202", 3)]


def test_a_module_cast_to_bfloat16_is_still_floating_point():
    # `init` and `scale` of a module act on its floating-point arrays, bfloat16 ones too.
    text = MODEL + "where layers[0] -> cast bfloat16\nwhere layers[0] -> scale 2\n"
    plan = eqxform.compile(text).plan()
    assert plan.steps[1].count == 2 and len(plan.steps[1].writes) == 2
    assert [m.after for m in plan.steps[1].matches] == ["bf16[8,2]", "bf16[8]"]
    before = eqxform.compile(MODEL).apply()
    after = eqxform.compile(text).apply()
    np.testing.assert_allclose(
        np.asarray(after.layers[0].weight, np.float32),
        2 * np.asarray(before.layers[0].weight.astype(jax.numpy.bfloat16), np.float32),
    )


def test_nothing_is_reported_across_a_stack_line():
    text = (
        "model MLPChain(size=4, count=3, depth=1)\n"
        "where Linear.weight -> init zeros\n"
        "stack mlps scan\n"
        "where Linear.weight -> init ones\n"
    )
    assert warnings_of(text) == []


def test_accounting_on_a_library_model_with_state():
    model, state = rm.make_tiny_resnet(key=jax.random.key(0))
    text = "where Conv2d.weight -> init he_normal\nwhere Conv2d.weight -> init lecun_normal\n"
    plan = eqxform.compile(text).plan((model, state))
    assert codes(plan.warnings) == [("W202", 1)]
    assert plan.steps[0].count == plan.steps[1].count > 0


def test_check_of_a_library_model_finds_its_misspelt_fields():
    model = rm.LoopingTransformer(depth=2, key=jax.random.key(0))
    text = "where blocks[*].linear1.weight -> init zeros\nwhere blocks[*].lineer2 -> freeze\n"
    diagnostics = eqxform.compile(text).check(model)
    assert codes(diagnostics) == [("E201", 2)]
    assert "linear2" in diagnostics[0].help


# ---- plan: counts and untouched arrays --------------------------------------------------


def test_plan_reports_counts_and_untouched_arrays(cwd):
    Path("spec.eqx").write_text(
        MODEL + "where layers[0] -> freeze\nwhere layers[1].weight -> init zeros\n"
        "where layers[5] expect any -> freeze\n"
    )
    code, out = run("plan", "spec.eqx", "--untouched")
    assert code == 0
    assert "untouched: 3 arrays" in out
    for path in ("layers[1].bias", "layers[2].weight", "layers[2].bias"):
        assert f"  {path}\n" in out
    assert "layers[0].weight\n" not in out.split("untouched:")[1]
    assert "(nothing)" in out  # the optional rule that matched nothing has a row
    code, out = run("plan", "spec.eqx", "--format", "json", "--untouched")
    data = json.loads(out)
    assert [(s["line"], s["count"]) for s in data["steps"]] == [(2, 2), (3, 1), (4, 0)]
    assert data["untouched"] == ["layers[1].bias", "layers[2].weight", "layers[2].bias"]
    code, out = run("plan", "spec.eqx", "--format", "yaml")
    assert "count: 2" in out and "untouched" not in out


def test_untouched_sees_through_stacks_and_wrappers():
    text = (
        "model MLPChain(size=4, count=3, depth=1)\n"
        "where mlps[0].layers[0].weight -> wrap symmetric\n"
        "stack mlps[1:3] scan\n"
    )
    plan = eqxform.compile(text).plan()
    assert plan.untouched == (
        "mlps.layers[0].layers[0].bias",
        "mlps.layers[0].layers[1].weight",
        "mlps.layers[0].layers[1].bias",
    )
    model = eqxform.compile(text).apply()
    # What `plan` says is untouched is, bit for bit.
    original = eqxform.compile("model MLPChain(size=4, count=3, depth=1)\n").apply()
    np.testing.assert_array_equal(
        model.mlps.layers[0].layers[1].weight, original.mlps.layers[0].layers[1].weight
    )
    assert isinstance(model.mlps.layers[0].layers[0].weight, eqx.Module)


# ---- E126: an allowed module that cannot be imported --------------------------------

ROOT = Path(__file__).parent.parent


def _package(folder: Path) -> None:
    pkg = folder / "upkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        "import equinox as eqx\n"
        "def make(width, *, key):\n"
        "    return eqx.nn.MLP(2, 2, width, 1, key=key)\n"
    )
    (pkg / "needs.py").write_text("import upkg_missing_dependency\n")
    (pkg / "broken.py").write_text("def make(:\n")


@pytest.mark.parametrize(
    "callee,message,help",
    [
        ("nopkg.models:make", "no module named `nopkg`", "PYTHONPATH=FOLDER"),
        ("upkg.modls:make", "no module named `upkg.modls`", "`upkg` was found, but it has no"),
        ("upkg.models:mke", "module `upkg.models` has no `mke`", "did you mean `make`?"),
        ("upkg.needs:make", "needs `upkg_missing_dependency`", "install `upkg_missing_depen"),
        ("upkg.broken:make", "raised SyntaxError", 'python -c "import upkg.broken"'),
    ],
)
def test_an_allowed_module_that_cannot_be_imported_says_how_to_fix_it(
    tmp_path, monkeypatch, callee, message, help
):
    _package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    top = callee.split(".")[0]
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile(f"model {callee}(width=3)", allow=[top]).apply()
    d = info.value.diagnostics[0]
    assert d.code == "E126" and message in d.message, d.message
    assert d.help is not None and help in d.help, d.help
    assert (d.span.line, d.span.column) == (1, 7)  # the callee, not the whole line


def test_the_help_of_e126_is_what_makes_the_module_importable(tmp_path):
    """`eqxform` (the installed command) finds an allowed package in the
    current directory (issue 16); from another folder, the help's
    `PYTHONPATH=FOLDER` does. `python -P` runs the CLI the same way (no current
    directory on the path)."""
    _package(tmp_path)
    (tmp_path / "spec.eqx").write_text("model upkg.models:make(width=3)\n")
    (tmp_path / "sub").mkdir()

    def run_with(path, cwd, spec):
        env = {**os.environ, "PYTHONPATH": path}
        command = [sys.executable, "-P", "-m", "eqxform", "check", spec, "--allow", "upkg"]
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)

    here = run_with(str(ROOT), tmp_path, "spec.eqx")
    assert here.returncode == 0, here.stderr
    refused = run_with(str(ROOT), tmp_path / "sub", "../spec.eqx")
    assert refused.returncode == 1, refused.stderr
    assert "error[E126]" in refused.stderr and "PYTHONPATH=FOLDER" in refused.stderr
    assert "Traceback" not in refused.stderr
    accepted = run_with(f"{ROOT}{os.pathsep}..", tmp_path / "sub", "../spec.eqx")
    assert accepted.returncode == 0, accepted.stderr


# ---- type names of the model alone (issue 16) --------------------------------------------


def test_a_type_name_of_the_model_alone_compiles_and_resolves_when_applied():
    # `ViTBlock` is no `equinox.nn` class and no registered type: only the
    # model knows it, so compiling is no error and applying resolves it.
    program = eqxform.compile("where ViTBlock.fc1 -> freeze")
    model = rm.TinyViT(depth=2, key=jax.random.key(0))
    frozen = program.apply(model, key=jax.random.key(1))
    for block in frozen.blocks:
        assert isinstance(block.fc1.weight, eqxform.Frozen)
        assert not isinstance(block.fc2.weight, eqxform.Frozen)
    assert program.plan(model).steps[0].count == 4  # the weight and bias of each `fc1`
    # Misspelt, it is an error against the model, with the model's classes
    # suggested.
    with pytest.raises(eqxform.SpecError) as e:
        eqxform.compile("where ViTBlok.fc1 -> freeze").apply(model)
    [d] = e.value.diagnostics
    assert d.code == "E104" and d.message == "unknown type `ViTBlok`"
    assert d.help.startswith("did you mean `ViTBlock`?")
    assert (d.span.line, d.span.column) == (1, 7)


def test_the_linter_notes_a_type_name_it_leaves_to_the_model(cwd):
    Path("spec.eqx").write_text("where MegalodonAttention.wz -> lora(rank=8)\n")
    code, out = run("check", "spec.eqx", "--deny", "warnings")
    assert code == 0
    assert "note[I104]: `MegalodonAttention` is no `equinox.nn` class or registered type" in out
    assert "did you mean `MultiheadAttention`?" in out
    assert "spec.eqx: no problems found, 1 note (1 statement)" in out
    code, out = run("check", "spec.eqx", "--json")
    assert code == 0
    [d] = json.loads(out)["diagnostics"]
    assert (d["code"], d["severity"], d["line"], d["column"]) == ("I104", "note", 1, 7)
    # Against a model that lacks the class, it is an error at the same place.
    Path("spec.eqx").write_text(MODEL + "where MegalodonAttention.wz -> lora(rank=8)\n")
    code, out = run("check", "spec.eqx")
    assert code == 1
    assert "error[E104]: unknown type `MegalodonAttention`" in out
    assert "spec.eqx:2:7" in out
    assert "note[I104]" not in out


# ---- eqxform.check: the linter or the model-aware check, decided by the API --------


def test_the_api_check_is_the_linter_without_a_model_and_imports_no_jax():
    code = (
        "import sys, eqxform\n"
        "r = eqxform.check('where Linear.bias -> init zeros\\nwhere Linear.weight -> init zerz\\n')\n"
        "print([(d.code, d.span.line) for d in r.diagnostics], r.model, r.steps, r.statements)\n"
        "print('jax' in sys.modules)\n"
    )
    root = Path(__file__).parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    ).stdout.split("\n")
    assert out[:2] == ["[('E102', 2)] None None 2", "False"]


def test_the_api_check_is_model_aware_with_a_model_line_or_a_model(getkey):
    text = (
        "model MLP(in_size=2, out_size=2, width_size=4, depth=1)\n"
        "where Linear.bias -> init zeros\n"
        "where layers[5] -> init zeros\n"
    )
    report = eqxform.check(text)
    assert not report.ok and report.statements == 3
    assert report.model == "`MLP(in_size=2, out_size=2, width_size=4, depth=1)`"
    assert [(d.code, d.span.line) for d in report.diagnostics] == [("E201", 3)]
    assert [(s.line, s.count, s.unit) for s in report.steps] == [(2, 2, "array")]
    # The same as the plan's diagnostics.
    assert report.diagnostics == eqxform.compile(text).plan().diagnostics
    # A model given in place of the `model` line: its own shapes.
    model = eqx.nn.MLP(2, 2, 4, 5, key=getkey())
    report = eqxform.check(text, model)
    assert report.ok and report.model == "a `MLP`"
    assert [(s.line, s.count) for s in report.steps] == [(2, 6), (3, 2)]


@pytest.mark.parametrize(
    "args, name",
    [("b1=-0.1", "b1"), ("b1=1", "b1"), ("b2=1.5", "b2"), ("b1=0.9, b2=2", "b2")],
)
def test_a_moment_rate_outside_zero_to_one_is_refused_at_its_span(args, name):
    text = f"optimizer adam(learning_rate=1e-3, {args})\n"
    found = eqxform.check(text).diagnostics
    assert [(d.code, d.span.line) for d in found] == [("E152", 1)]
    (d,) = found
    assert f"`{name}` of `adam` must be a number from 0 up to (not including) 1" in d.message
    # The span is the value, as for every argument of the wrong kind.
    value = args.split(f"{name}=")[1].split(",")[0]
    assert text[d.span.column - 1 :].startswith(value + ")")
    assert d.help == "e.g. `0.9`"


def test_moment_rates_from_zero_up_to_one_check_clean_and_a_sweep_member_is_named():
    assert eqxform.check("optimizer adam(learning_rate=1e-3, b1=0, b2=0.999)\n").diagnostics == ()
    found = eqxform.check(
        "optimizer adam(learning_rate=1e-3, b1=b)\nensemble 2 vary b=[0.9, -1]\n"
    ).diagnostics
    assert [(d.code, d.span.line) for d in found] == [("E173", 2)]
    assert "member 1's `b=-1`" in found[0].message
