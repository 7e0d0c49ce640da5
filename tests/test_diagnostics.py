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
