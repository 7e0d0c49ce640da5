"""Hostile and careless specs, command lines and API calls: each gets a
diagnostic with its code and span, quickly, and nothing else (no traceback, no
hang, no allocation of what the input asks for)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import eqxform
from eqxform import _limits as L
from eqxform._cli import main
from eqxform._compile import compile_collect
from eqxform._hashing import seed_key

MLP_CALL = "MLP(in_size=2, out_size=2, width_size=8, depth=2)"


def diagnostics(text: str):
    program, found = compile_collect(text, "spec.eqx")
    assert program is None, "compiled without errors"
    return found


def codes(text: str) -> list[str]:
    return [d.code for d in diagnostics(text)]


def error_codes(call) -> list[str]:
    with pytest.raises(eqxform.EqxformError) as info:
        call()
    return [d.code for d in info.value.diagnostics]


# ---- the parser ----------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, code",
    [
        ("-" * 3000 + "1", "E012"),
        ("not " * 3000 + "true", "E012"),
        ("[" * 3000 + "]" * 3000, "E012"),
        (" + ".join(["1"] * 500), "E012"),
        ("1" * 5000, "E011"),
        ("1e400", "E011"),
    ],
    ids=["minus", "not", "brackets", "sum", "digits", "float"],
)
def test_deep_or_huge_expressions_are_diagnostics_not_recursion_errors(expr, code):
    found = diagnostics(f"seed 1\nlet x = {expr}\nlet y = 2\n")
    assert [(d.code, d.span.line) for d in found] == [(code, 2)]


def test_nesting_below_the_limit_evaluates():
    depth = L.MAX_NESTING - 20
    program = eqxform.compile(
        f"let a = {'-' * depth}1\nlet b = {' + '.join(['1'] * depth)}\n"
        f"let c = {'(' * 3000}2{')' * 3000}\n"  # parentheses add no level
    )
    assert program.env == {"a": 1, "b": depth, "c": 2}


@pytest.mark.parametrize(
    "selector, code",
    [
        ("layers[1.5]", "E013"),
        ("layers[::0.5]", "E013"),
        ("layers[1e0]", "E013"),
        ("layers[::0]", "E122"),
    ],
)
def test_indices_are_whole_numbers(selector, code):
    found = diagnostics(f"where {selector} -> freeze")
    assert [d.code for d in found] == [code]
    assert "zero" not in found[0].message or code == "E122"


def test_digits_of_other_scripts_are_no_numbers():
    (d,) = diagnostics("seed \u0663\n")
    assert d.code == "E002" and (d.span.line, d.span.column) == (1, 6)
    assert "0 to 9" in d.help


# ---- the evaluator ---------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, code",
    [
        ("9**9**9", "E150"),
        ("2**2**2**2**2", "E150"),
        ("(-3)**100000", "E150"),
        ("exp(1000)", "E150"),
        ("1e308 * 10", "E150"),
        ('"a" * 10**10', "E151"),
        ("[0] * 10**9", "E151"),
        ('"ab" * 6000', "E151"),
    ],
)
def test_evaluation_is_bounded_before_it_runs(expr, code):
    (d,) = diagnostics(f"let x = {expr}\n")
    assert d.code == code and d.span.line == 1 and d.span.column == 9


def test_printf_formatting_is_refused():
    (d,) = diagnostics('let x = "%.999999999f" % 1\n')
    assert d.code == "E204" and "string" in d.message


def test_values_at_the_limits_still_work():
    program = eqxform.compile(f'let a = 2**255\nlet b = "ab" * 5000\nlet c = {"9" * 400}\n')
    assert program.env["a"] == 2**255 and len(program.env["b"]) == 10_000


# ---- argument types, before JAX ---------------------------------------------------


@pytest.mark.parametrize(
    "text, bad",
    [
        ("where Linear.weight -> init normal(stddev=[1, 2])", "[1, 2]"),
        ('optimizer adam(learning_rate="x")', '"x"'),
        ("optimizer sgd(learning_rate=0.1, nesterov=1)", "1)"),
        ('where Linear.weight -> init constant(value="x")', '"x"'),
        ('where Linear.weight -> init variance_scaling(1, "fan", "normal")', '"fan"'),
        ('where Linear.weight -> wrap positive(minimum="x")', '"x"'),
        ("where Linear.weight -> scale [2]", "[2]"),
        ("optimizer adam(learning_rate=1e-3)\nwhere Linear.bias -> lr -1", "-1"),
    ],
)
def test_check_finds_wrong_types_without_a_model(tmp_path, text, bad):
    path = tmp_path / "spec.eqx"
    path.write_text(text + "\n")
    result = CliRunner().invoke(main, ["check", str(path), "--json"])
    assert result.exit_code == 1, result.output
    found = json.loads(result.output)["diagnostics"]
    last = text.splitlines()[-1]
    assert [(d["code"], d["line"], d["column"]) for d in found] == [
        ("E152", text.count("\n") + 1, last.rindex(bad) + 1)
    ]


def test_an_argument_known_per_match_is_checked_by_plan_at_its_span(mlp):
    program = eqxform.compile("where Linear.weight -> init normal(stddev=shape)")
    (d,) = program.plan(mlp).diagnostics
    assert d.code == "E152" and (d.span.line, d.span.column) == (1, 43)
    assert "at `layers[0].weight`" in d.message
    assert error_codes(lambda: program.apply(mlp)) == ["E152"]
    groups = eqxform.compile("optimizer adam(learning_rate=1e-3)\nwhere Linear.weight -> lr path")
    (d,) = groups.plan(mlp).diagnostics
    assert d.code == "E152" and d.span.line == 2


def test_large_numbers_reach_jax_as_floats(mlp):
    w = mlp.layers[0].weight
    out = eqxform.compile("where layers[0].weight -> scale 3000000000").apply(mlp)
    np.testing.assert_array_equal(out.layers[0].weight, w * jnp.float32(3e9))
    out = eqxform.compile(
        "where layers[0].weight -> init trunc_normal(lower=-2**63, upper=2)"
    ).apply(mlp)
    assert bool(jnp.all(jnp.isfinite(out.layers[0].weight))) and out.layers[0].weight.max() <= 2
    out = eqxform.compile("where layers[0].weight -> wrap positive(minimum=10**12)").apply(mlp)
    assert bool(jnp.all(eqxform.resolve(out).layers[0].weight >= 1e12))


def test_a_number_beyond_the_dtype_is_refused(mlp):
    program = eqxform.compile("where layers[0].weight -> scale 1e300")
    (d,) = program.plan(mlp).diagnostics
    assert d.code == "E153" and "float32" in d.message


# ---- sizes --------------------------------------------------------------------------


def test_counts_and_loop_arguments_are_bounded_without_a_model():
    assert codes("ensemble 1000000000") == ["E155"]
    assert codes("stack layers scan 1000000000") == ["E155"]
    assert codes(f"model {MLP_CALL[:-9]}depth=1000000)") == ["E156"]
    assert codes("input f32[99999999999]") == ["E157"]


def test_a_loop_argument_from_a_let_is_refused_before_building(monkeypatch):
    program = eqxform.compile(f"let d = 10**6\nmodel {MLP_CALL[:-9]}depth=d)")
    assert error_codes(program.plan) == ["E156"]
    assert error_codes(program.apply) == ["E156"]


def test_a_recipe_with_an_absurd_depth_is_refused_before_building():
    from eqxform._recipes import recipe_from_dict

    recipe = {"base": {"constructor": f"{MLP_CALL[:-9]}depth=1000000)", "seed": 0}, "specs": []}
    with pytest.raises(eqxform.ModelFileError) as info:
        recipe_from_dict(recipe, origin="model.eqx")
    assert [d.code for d in info.value.diagnostics] == ["E156"]


def test_models_over_the_budget_are_refused_before_allocating(monkeypatch, mlp):
    monkeypatch.setenv(L.MAX_BYTES_ENV, "1M")
    big = "MLP(in_size=2, out_size=2, width_size=100000, depth=2)"  # 37 GB
    assert error_codes(lambda: eqxform.new(big)) == ["E158"]
    program = eqxform.compile(f"model {big}")
    (d,) = program.plan().diagnostics
    assert d.code == "E158" and d.span.line == 1 and "37.3 GiB" in d.message
    assert error_codes(program.apply) == ["E158"]
    replace = eqxform.compile(
        "where layers[0] -> replace Linear(in_features=2, out_features=10**6)"
    )
    assert error_codes(lambda: replace.apply(mlp)) == ["E158"]
    ensemble = eqxform.compile("ensemble 100000")  # 100,000 copies of 124 parameters
    (d,) = ensemble.plan(mlp).diagnostics
    assert d.code == "E158"
    assert error_codes(lambda: ensemble.apply(mlp)) == ["E158"]
    monkeypatch.setenv(L.MAX_BYTES_ENV, "none")
    assert ensemble.plan(mlp).diagnostics == ()
    monkeypatch.setenv(L.MAX_BYTES_ENV, "lots")
    assert error_codes(lambda: eqxform.new(big)) == ["E432"]


# ---- line breaks ----------------------------------------------------------------------

BODY = "seed 1\nwhere Linear.weight -> init nrmal\n"


@pytest.mark.parametrize("char", ["\r", "\x0b", "\x1c", "\x85", "\u2028", "\u2029"])
def test_odd_line_breaks_are_refused_and_lines_stay_right(char):
    found = diagnostics(f"# one{char}two\n{BODY}")
    assert [(d.code, d.span.line, d.span.column) for d in found] == [
        ("E010", 1, 6),
        ("E102", 3, 29),
    ]
    assert found[1].render().splitlines()[3] == "3 | where Linear.weight -> init nrmal"


def test_form_feeds_and_crlf_are_whitespace_and_draw_the_same(mlp):
    plain = "# init\nwhere Linear.weight -> init normal(stddev=0.5)\nseed 3\n"
    expected = eqxform.compile(plain).apply(mlp)
    for text in (plain.replace("\n", "\r\n"), plain.replace("# init", "# \x0c init\x0c")):
        program = eqxform.compile(text)
        assert [s.line for s in program.plan(mlp).steps] == [2]
        out = program.apply(mlp)
        for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_array_equal(a, b)
    found = diagnostics("# \x0c\r\nwhere x -> init nrmal\r\n")
    assert [(d.code, d.span.line) for d in found] == [("E102", 2)]


# ---- seeds ------------------------------------------------------------------------------


def test_every_64_bit_seed_has_its_own_key_and_small_seeds_keep_theirs():
    for seed in (0, 1, 12345, 2**32 - 1):
        np.testing.assert_array_equal(
            jax.random.key_data(seed_key(seed)), jax.random.key_data(jax.random.key(seed))
        )
    datas = {
        tuple(np.asarray(jax.random.key_data(seed_key(s))))
        for s in (0, 2**32, 1, 2**32 + 1, 2**63, 2**64 - 1)
    }
    assert len(datas) == 6


def test_seeds_beyond_32_bits_draw_differently(mlp):
    program = eqxform.compile("where layers[0].weight -> init normal")
    low = program.apply(mlp, seed=0).layers[0].weight
    high = program.apply(mlp, seed=2**32).layers[0].weight
    top = program.apply(mlp, seed=2**64 - 1).layers[0].weight
    assert not np.array_equal(low, high) and not np.array_equal(high, top)
    spec = eqxform.compile("seed 18446744073709551615\nwhere layers[0].weight -> init normal")
    np.testing.assert_array_equal(spec.apply(mlp).layers[0].weight, top)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "1", True])
def test_bad_seeds_are_usage_errors(mlp, seed):
    program = eqxform.compile("where layers[0].weight -> init normal")
    with pytest.raises(eqxform.UsageError) as info:
        program.apply(mlp, seed=seed)
    assert info.value.diagnostics[0].code == "E430"
    assert error_codes(lambda: eqxform.new(MLP_CALL, seed=seed)) == ["E430"]


# ---- the command line ----------------------------------------------------------------------


def test_command_line_seeds_and_sets(tmp_path):
    spec = tmp_path / "spec.txt"  # no `.eqx`: still a file
    spec.write_text(f"model {MLP_CALL}\nlet width = 8\nwhere Linear.bias -> init zeros\n")
    runner = CliRunner()
    out = str(tmp_path / "out.eqx")
    for seed in ("2**63", "-1", "abc", "18446744073709551616", "\u0663"):
        result = runner.invoke(main, ["apply", str(spec), "-o", out, "--seed", seed])
        assert result.exit_code == 2 and "E430" in result.output, (seed, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)
    result = runner.invoke(main, ["apply", str(spec), "-o", out, "--set", "width=(("])
    assert result.exit_code == 2 and "E004" in result.output
    result = runner.invoke(main, ["apply", str(spec), "-o", out, "--set", "width=9**9**9"])
    assert result.exit_code == 2 and "E150" in result.output
    result = runner.invoke(main, ["new", MLP_CALL, "-o", out, "--seed", "4294967296"])
    assert result.exit_code == 0, result.output
    high = eqxform.load(out)
    runner.invoke(main, ["new", MLP_CALL, "-o", out, "--seed", "0"])
    low = eqxform.load(out)
    assert not np.array_equal(high.layers[0].weight, low.layers[0].weight)


def test_a_spec_argument_is_always_a_path(tmp_path):
    spec = tmp_path / "rules.txt"
    spec.write_text("where Linear.weight -> init nrmal\n")
    runner = CliRunner()
    result = runner.invoke(main, ["check", str(spec)])
    assert result.exit_code == 1 and "E102" in result.output and "rules.txt:1:29" in result.output
    result = runner.invoke(main, ["check", "seed 1"])
    assert result.exit_code == 2 and "E401" in result.output and "path" in result.output
    # The API reads a path object as a file, and never a `str`: a string that
    # looks like a path is refused (it was read as a file before E435).
    assert error_codes(lambda: eqxform.compile(tmp_path / "missing.txt")) == ["E401"]
    assert error_codes(lambda: eqxform.compile(spec)) == ["E102"]
    assert error_codes(lambda: eqxform.compile(str(tmp_path / "missing.txt"))) == ["E435"]
    assert error_codes(lambda: eqxform.compile(str(spec))) == ["E435"]


@pytest.mark.parametrize(
    "text",
    [
        "seed 1  # copied from base.eqx",
        "where ** -> freeze",
        "seed 1",
        "let where_from = 'specs/lora.eqx'",
        "# notes.eqx",
        "",
    ],
)
def test_a_str_is_spec_text_even_when_it_mentions_a_file(text):
    program = eqxform.compile(text)
    assert program.spec.source.name == "<spec>"


@pytest.mark.parametrize(
    "text",
    ["specs/lora.eqx", "lora.eqx", "  lora.eqx\n", "/etc/passwd", "C:\\specs\\a.eqx", "x.yaml"],
)
def test_a_str_that_looks_like_a_path_points_to_pathlib(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lora.eqx").write_text("seed 1\n")  # exists, and is still not read
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.compile(text)
    d = info.value.diagnostics[0]
    assert d.code == "E435" and text.strip() in d.message
    assert f"eqxform.compile(pathlib.Path({text.strip()!r}))" in d.help
    # The CLI's spec argument is a path whatever it looks like.
    assert run("check", "lora.eqx")[0] == 0


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


SECRET = "hunter2-do-not-print"


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("passwd", f"root:x:0:0:{SECRET}:/root:/bin/bash\ndaemon:x:1:1::/:\n", "is not a spec"),
        ("config.yaml", f"# settings\n\ntoken: {SECRET}\nwidth: 8\n", "is not a spec"),
        ("notes.md", f"# Title\n\n{SECRET} and more\nwhere x -> freeze\n", "is not a spec"),
        ("data.json", f'{{"key": "{SECRET}"}}\n', "is not a spec"),
        ("blob.bin", SECRET.encode() + b"\x00\x01\x02", "is not a text file"),
        ("latin1.eqx", ("seed 1 # caf\xe9 " + SECRET).encode("latin-1"), "is not a text file"),
    ],
)
def test_a_file_that_is_not_a_spec_is_refused_without_quoting_it(tmp_path, name, data, message):
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.compile(path)
    d = info.value.diagnostics[0]
    assert d.code == "E402" and message in d.message
    assert SECRET not in str(info.value) and SECRET not in json.dumps(d.to_dict())
    code, out = run("check", path)
    assert code == 2 and "E402" in out and SECRET not in out
    if message == "is not a spec":
        line = 1 if name in ("passwd", "data.json") else 3
        assert f"line {line}," in d.help


def test_a_broken_spec_is_still_quoted(tmp_path):
    # A spec with mistakes (a misspelt directive on line 1) is a spec: its
    # diagnostics show the lines, as always.
    path = tmp_path / "typo.eqx"
    path.write_text("# a spec\nsede 1\nwhere Linear.weight -> init nrmal\n")
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile(path)
    codes = [d.code for d in info.value.diagnostics]
    assert codes == ["E006", "E102"]
    assert "sede 1" in info.value.diagnostics[0].render()


# ---- the Python API raises only EqxformError ---------------------------------------------------


@pytest.mark.parametrize(
    "call, code",
    [
        (lambda m: eqxform.compile(123), "E434"),
        (lambda m: eqxform.compile("seed 1", params=5), "E434"),
        (lambda m: eqxform.compile("let w = 1", params={"w": object()}), "E431"),
        (lambda m: eqxform.compile("let w = 1", params={"w": float("inf")}), "E431"),
        (lambda m: eqxform.compile("let w = 1", params={"w": 10**100}), "E431"),
        (lambda m: eqxform.compile("seed 1", allow="pkg"), "E449"),
        (lambda m: eqxform.compile("seed 1", inputs=[3]), "E434"),
        (lambda m: eqxform.compile("seed 1", inputs=["f32[3.5]"]), "E127"),
        (lambda m: eqxform.compile("seed 1", inputs=["f32[99999999999]"]), "E157"),
        (lambda m: eqxform.compile(b"seed 1"), "E434"),
        (
            lambda m: eqxform.compile("where layers[0].weight -> init normal").apply(m, key="0"),
            "E433",
        ),
        (
            lambda m: eqxform.compile("where layers[0].weight -> init normal").apply(
                m, key=jnp.zeros(3)
            ),
            "E433",
        ),
        (lambda m: eqxform.compile("seed 1").apply(m, seed=-5), "E430"),
        (lambda m: eqxform.compile("seed 1").build_model(seed=2**70), "E430"),
        (lambda m: eqxform.compile("where Linear.weight -> init zeros").apply(42), "E201"),
        (lambda m: eqxform.new(42), "E405"),
        (lambda m: eqxform.new("MLP("), "E004"),
        (lambda m: eqxform.new("MLP(in_size=2)"), "E107"),
        (lambda m: eqxform.new(MLP_CALL, allow="x"), "E449"),
        (lambda m: eqxform.new(f"{MLP_CALL[:-9]}depth=10**7)"), "E156"),
        (lambda m: eqxform.new("MLP(in_size=2, out_size=2, width_size=-1, depth=2)"), "E205"),
        (lambda m: eqxform.new("MLP(in_size=2, out_size=2, width_size=2**40, depth=2)"), "E156"),
    ],
)
def test_the_api_raises_only_eqxform_errors(mlp, call, code):
    with pytest.raises(eqxform.EqxformError) as info:
        call(mlp)
    assert info.value.diagnostics[0].code == code


def test_an_ensemble_of_layers_without_inputs_draws_as_equinox(mlp):
    # Found by the fuzz test: a fan of zero divided by zero.
    spec = "model MLP(in_size=0, out_size=2, width_size=0, depth=2)\nensemble 2\n"
    assert eqxform.compile(spec).plan().errors == ()
    # A fan of zero leaves `he_normal` nothing to scale by: a diagnostic.
    program = eqxform.compile(spec + "where Linear.weight -> init he_normal")
    assert [d.code for d in program.plan().errors] == ["E209"]
    out = eqxform.compile("ensemble 2").apply(eqx.nn.Linear(0, 3, key=jax.random.key(0)))
    bias = out.member(0).bias
    assert bias.shape == (3,) and bool(jnp.all(jnp.abs(bias) <= 1))


def test_plan_reports_what_does_not_fit_instead_of_raising():
    plan = eqxform.compile("where Linear.weight -> freeze").plan("not a model")
    assert [d.code for d in plan.errors] == ["E201"]


def test_the_limits_are_named_constants_in_one_module():
    # The policy is a flat list of named constants that imports nothing.
    text = Path(L.__file__).read_text()
    assert re.findall(r"^(?:from|import) .*$", text, re.M) == []
    assert L.MAX_SEED == 2**64 - 1 and L.MAX_NESTING < sys.getrecursionlimit() // 4


@pytest.mark.parametrize(
    "value,why",
    [
        ("0", "would allow no array at all"),
        ("0K", "would allow no array at all"),
        ("-1", "is negative"),
        ("-64G", "is negative"),
        ("1.5", "is not a whole number of bytes"),
        ("0.0001", "is not a whole number of bytes"),
        ("1_000_000", "is not a number of bytes"),
        ("１G", "is not a number of bytes"),  # a fullwidth digit
        ("1e9", "is not a number of bytes"),
        ("off", "is not a number of bytes"),  # `none` is the one word for no limit
        ("inf", "is not a number of bytes"),
    ],
)
def test_a_memory_budget_that_is_no_positive_number_is_refused(monkeypatch, value, why):
    monkeypatch.setenv(L.MAX_BYTES_ENV, value)
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.new("MLP(in_size=2, out_size=2, width_size=4, depth=1)")
    (d,) = info.value.diagnostics
    assert d.code == "E432" and d.message == f"`{L.MAX_BYTES_ENV}={value}` {why}"
    assert "`none` to turn the memory check off" in d.help


@pytest.mark.parametrize(
    "value,budget",
    [("100", 100), ("64G", 64 * 2**30), ("1.5K", 1536), ("2t", 2 * 2**40), (" 8M ", 8 * 2**20)],
)
def test_a_memory_budget_in_bytes_or_units(monkeypatch, value, budget):
    from eqxform._values import byte_budget

    monkeypatch.setenv(L.MAX_BYTES_ENV, value)
    assert byte_budget() == budget
    monkeypatch.setenv(L.MAX_BYTES_ENV, "NONE")
    assert byte_budget() is None
