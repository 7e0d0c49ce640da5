"""Golden diagnostics: each malformed spec under fixtures/diagnostics/ renders
exactly as its `.expected` file says.

Set EQXFORM_UPDATE_GOLDEN=1 to rewrite the expected files after a deliberate
change, then read the diff.
"""

import json
import os
from pathlib import Path

import pytest

from eqxform._compile import compile_collect
from eqxform._diagnostics import render_all

FIXTURES = Path(__file__).parent / "fixtures" / "diagnostics"
CASES = sorted(FIXTURES.glob("*.eqx"))


def render(path: Path) -> str:
    program, diagnostics = compile_collect(path.read_text(), path.name)
    assert program is None, f"{path.name} compiled without errors"
    return render_all(diagnostics) + "\n"


def test_there_are_enough_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_golden(path):
    got = render(path)
    expected = path.with_suffix(".expected")
    if os.environ.get("EQXFORM_UPDATE_GOLDEN"):
        expected.write_text(got)
    assert got == expected.read_text()


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_every_diagnostic_has_code_place_and_caret(path):
    _, diagnostics = compile_collect(path.read_text(), path.name)
    for d in diagnostics:
        assert d.code.startswith("E") and len(d.code) == 4
        assert d.span is not None and d.span.line >= 1
        text = d.render()
        assert f"--> {path.name}:{d.span.line}:{d.span.column}" in text
        assert "^" in text
        data = d.to_dict()
        assert json.loads(json.dumps(data))["code"] == d.code


def test_all_errors_of_a_file_at_once():
    path = FIXTURES / "35_many_errors.eqx"
    _, diagnostics = compile_collect(path.read_text(), path.name)
    assert [(d.span.line, d.code) for d in diagnostics] == [
        (1, "E106"),
        (2, "E101"),
        (3, "E102"),
        (4, "E004"),
    ]


# ---- a leading byte-order mark -----------------------------------------------

BOM = "\ufeff"


def test_a_leading_byte_order_mark_is_accepted_and_spans_stay_right():
    import eqxform

    for text in [
        "let a = b\nseed 1\n",  # the error on line 1, right after the mark
        "seed 1\nwhere Linear.weight -> init trunc_normall\n",
        "where Linear.weight -> init trunc_normall",
    ]:
        plain = compile_collect(text, "spec.eqx")[1]
        marked = compile_collect(BOM + text, "spec.eqx")[1]
        assert plain and [d.span for d in marked] == [d.span for d in plain]
        assert render_all(marked) == render_all(plain)  # the source line shows no mark
    first = compile_collect(BOM + "let a = b\n", "spec.eqx")[1][0]
    assert (first.code, first.span.line, first.span.column) == ("E105", 1, 9)
    program = eqxform.compile(BOM + "seed 3\nwhere Linear.weight -> init zeros\n")
    assert program.seed == 3 and not program.spec.source.text.startswith(BOM)


def test_a_byte_order_mark_elsewhere_is_named():
    _, diagnostics = compile_collect("seed 1\nseed 2" + BOM + "\n", "spec.eqx")
    d = diagnostics[0]
    assert (d.code, d.span.line, d.span.column) == ("E002", 2, 7)
    assert "byte-order mark (U+FEFF)" in d.message and "remove" in d.help


def test_cli_reads_a_file_with_a_byte_order_mark(tmp_path):
    from click.testing import CliRunner

    from eqxform._cli import main

    good = tmp_path / "good.eqx"
    good.write_bytes(b"\xef\xbb\xbfseed 1\nwhere Linear.weight -> init zeros\n")
    bad = tmp_path / "bad.eqx"
    bad.write_bytes(b"\xef\xbb\xbflet a = b\n")
    runner = CliRunner()
    result = runner.invoke(main, ["check", str(good)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["check", str(bad)])
    assert result.exit_code == 1
    assert "error[E105]" in result.output and "bad.eqx:1:9\n" in result.output
    assert "1 | let a = b\n" in result.output
    assert BOM not in result.output
    # `fmt` keeps the mark (the editor that wrote it expects it) and is idempotent.
    messy = tmp_path / "messy.eqx"
    messy.write_bytes(b"\xef\xbb\xbfseed  1\n")
    assert runner.invoke(main, ["fmt", str(messy)]).exit_code == 0
    assert messy.read_bytes() == b"\xef\xbb\xbfseed 1\n"
    assert runner.invoke(main, ["fmt", "--check", str(messy)]).exit_code == 0
