import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from eqxform._cli import main

SPEC = """let width = 16
where Linear.weight -> init trunc_normal(stddev=1/sqrt(fan_in), lower=-2, upper=2)
where layers[-1] -> replace Linear(in_features=width, out_features=10)
"""


def run(*args, cwd=None):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _ = run("new", "MLP(in_size=4, out_size=3, width_size=16, depth=2)", "-o", "model.eqx")
    assert code == 0
    Path("spec.eqx").write_text(SPEC)
    return tmp_path


def test_new_show_check_plan_apply(workdir):
    code, out = run("show", "model.eqx")
    assert code == 0 and "layers.0.weight" in out and "MLP(in_size=4" in out
    code, out = run("check", "spec.eqx")
    assert code == 0 and "no problems found (3 statements)" in out
    code, out = run("check", "spec.eqx", "model.eqx")
    assert code == 0
    code, out = run("plan", "spec.eqx", "model.eqx", "--format", "json")
    assert code == 0
    plan = json.loads(out)
    assert plan["params_after"] - plan["params_before"] == (16 * 10 + 10) - (16 * 3 + 3)
    code, out = run(
        "apply", "spec.eqx", "model.eqx", "-o", "out.eqx", "--seed", "1", "--set", "width=16"
    )
    assert code == 0 and "wrote out.eqx" in out
    code, out = run("show", "out.eqx", "--format", "json")
    data = json.loads(out)
    assert {"path": "layers.2.weight", "dtype": "float32", "shape": [10, 16]} in data["tensors"]
    assert data["recipe"]["specs"][0]["params"] == {"width": 16}


def test_apply_with_model_directive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).parent.parent
    code, out = run("apply", root / "specs" / "surgery.eqx", "-o", "out.eqx")
    assert code == 0
    code, out = run("show", "out.eqx", "--format", "json")
    assert json.loads(out)["recipe"]["base"]["constructor"].startswith("MLP(")


def test_spec_error_exits_1_and_writes_nothing(workdir):
    Path("bad.eqx").write_text(
        "where layrs[-1] -> init zeros\nwhere Linear.weight expect 9 -> init zeros\n"
    )
    code, out = run("apply", "bad.eqx", "model.eqx", "-o", "out.eqx")
    assert code == 1
    assert "error[E201]" in out and "error[E202]" in out and "did you mean `layers[-1]`?" in out
    assert not Path("out.eqx").exists()


def test_check_reports_json(workdir):
    Path("bad.eqx").write_text("where Linear.weight -> init trunc_normall\n")
    code, out = run("check", "bad.eqx", "--json")
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False
    assert data["diagnostics"][0]["code"] == "E102"
    assert (
        data["diagnostics"][0]["help"]
        == "did you mean one of `trunc_normal`, `truncated_normal`, `lecun_normal`?"
    )


def test_swapped_arguments(workdir):
    code, out = run("apply", "model.eqx", "spec.eqx", "-o", "out.eqx")
    assert code == 2 and "arguments are swapped" in out
    assert "eqxform apply spec.eqx model.eqx" in out


def test_refuses_to_overwrite_input(workdir):
    before = Path("model.eqx").read_bytes()
    code, out = run("apply", "spec.eqx", "model.eqx", "-o", "model.eqx")
    assert code == 2 and "will not overwrite its input" in out
    assert Path("model.eqx").read_bytes() == before
    code, _ = run("apply", "spec.eqx", "model.eqx", "-o", "model.eqx", "--force")
    assert code == 0 and Path("model.eqx").read_bytes() != before


@pytest.mark.parametrize(
    "args,code,words",
    [
        (("apply", "nope.eqx", "model.eqx", "-o", "o.eqx"), 2, "does not exist"),
        (("apply", "spec.eqx", "nope.eqx", "-o", "o.eqx"), 2, "does not exist"),
        (
            ("apply", "spec.eqx", "model.eqx", "-o", "o.eqx", "--set", "widht=3"),
            2,
            "did you mean `width`?",
        ),
        (("apply", "spec.eqx", "model.eqx", "-o", "o.eqx", "--set", "width"), 2, "NAME=VALUE"),
        (("apply", "spec.eqx", "model.eqx", "-o", "missing/o.eqx"), 2, "does not exist"),
        (("apply", "spec.eqx", "model.eqx"), 2, "Missing option"),
        (("show", "spec.eqx"), 1, "not a valid model file"),
        (("new", "MPL(2, 2, 8, 2)", "-o", "m2.eqx"), 1, "did you mean `MLP`?"),
        (("new", "3 + 4", "-o", "m2.eqx"), 2, "not a constructor call"),
        (
            ("apply", "spec.eqx", "model.eqx", "-o", "o.eqx", "--device", "tpu"),
            2,
            "no `tpu` device",
        ),
    ],
)
def test_usage_errors(workdir, args, code, words):
    got, out = run(*args)
    assert got == code, out
    assert words in out
    assert "Traceback" not in out


def test_params_file(workdir):
    Path("sweep.yaml").write_text("width: 16\n")
    code, _ = run("apply", "spec.eqx", "model.eqx", "-o", "o.eqx", "--params", "sweep.yaml")
    assert code == 0
    Path("bad.yaml").write_text("- 1\n- 2\n")
    code, out = run("apply", "spec.eqx", "model.eqx", "-o", "o.eqx", "--params", "bad.yaml")
    assert code == 2 and "must map `let` names" in out


def test_check_imports_no_jax(tmp_path):
    spec = tmp_path / "s.eqx"
    spec.write_text(SPEC)
    code = (
        "import sys\nfrom eqxform._cli import main\n"
        f"try:\n    main(['check', {str(spec)!r}])\nexcept SystemExit as e:\n    status = e.code\n"
        "print(status, 'jax' in sys.modules, 'equinox' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "0 False False", result.stderr


def test_console_script_exit_codes(tmp_path):
    spec = tmp_path / "s.eqx"
    spec.write_text("where Linear.weight -> init zeross\n")
    result = subprocess.run(
        [sys.executable, "-m", "eqxform", "check", str(spec)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "error[E102]: unknown initialiser `zeross`" in result.stderr
    assert "  = help: did you mean" in result.stderr
    assert "Traceback" not in result.stderr
