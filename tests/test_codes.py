"""Each diagnostic is written once, in its code's record: call sites give a
code and named fields, and `explain` prints what the diagnostic says."""

import ast
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from eqxform._cli import main
from eqxform._codes import CODES, fields
from eqxform._diagnostics import report

PACKAGE = Path(__file__).parent.parent / "eqxform"
CODE = re.compile(r"^[EWI]\d{3}$")
# What a call site may pass beside the fields of the templates.
NOT_FIELDS = {"span", "source", "file", "notes", "severity", "help", "variant"}
# The functions that build a diagnostic from a code and fields (`report` and
# the helpers that pass their fields on to it).
BUILDERS = {
    "report",
    "diagnostic",
    "self.error",
    "self.warn",
    "self.note",
    "error",
    "bad",
    "EvalError",
}


def _ways():
    for entry in CODES.values():
        if entry.message:
            yield entry.code, None
        for name in entry.variants:
            yield entry.code, name


@pytest.mark.parametrize("code,variant", list(_ways()))
def test_every_template_renders_with_its_declared_fields(code, variant):
    message, help = CODES[code].says(variant)
    values = {name: 1234 for name in fields(message) | fields(help)}
    d = report(code, variant=variant, **values)
    assert d.code == code and d.message and "{" not in message.replace("{{", "").format(**values)
    assert d.severity == {"E": "error", "W": "warning", "I": "note"}[code[0]]
    assert (d.help is not None) == (help is not None)
    # `explain` shows the same words, with the field names where values go.
    assert message in CODES[code].render()
    if help:
        assert help in CODES[code].render()


def test_a_missing_or_misspelt_field_fails():
    assert report("E134", value=0).message == (
        "`ensemble` needs a whole number of members >= 1, not `0`"
    )
    with pytest.raises(TypeError, match="missing fields \\['value'\\]"):
        report("E134")
    with pytest.raises(TypeError, match="unknown \\['valeu'\\]"):
        report("E134", value=0, valeu=0)
    with pytest.raises(KeyError):
        report("E134", variant="no_such_way", value=0)


def test_explain_prints_what_the_diagnostic_says():
    result = CliRunner().invoke(main, ["explain", "E134"])
    assert result.exit_code == 0
    said = report("E134", value="{value}")
    assert f"error[E134]: {said.message}" in result.output
    assert f"  = help: {said.help}" in result.output
    assert "Fix: " in result.output


def _calls():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_codes.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield path.relative_to(PACKAGE.parent), node


def _is_text(node) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_text(node.left) or _is_text(node.right)
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _literal_code(node, first_only: bool = True) -> str | None:
    """The code a call names: its first argument (`report("E134", ...)`) or,
    unless `first_only`, any argument or its `code=`."""
    candidates = node.args[:1] if first_only else [*node.args, *(k.value for k in node.keywords)]
    for arg in candidates:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and CODE.match(arg.value):
            return arg.value
    return None


def test_no_call_site_writes_a_message():
    """A diagnostic's words are in its record: no `Diagnostic(...)` with a
    message written out, and no call that gives a code and then text."""
    found = []
    for path, node in _calls():
        callee = ast.unparse(node.func)
        given = [*node.args, *(k.value for k in node.keywords if k.arg in ("message", "help"))]
        given = [g for g in given if not (isinstance(g, ast.Constant) and CODE.match(str(g.value)))]
        # `named_call`'s text is an example, the value of E112's help field.
        coded = _literal_code(node, False) and callee not in (
            "report",
            "diagnostic",
            "self.named_call",
        )
        if callee == "Diagnostic" or coded:
            if callee == "Diagnostic":
                given = list(node.args[1:2]) + [
                    k.value for k in node.keywords if k.arg in ("message", "help")
                ]
            if any(_is_text(g) for g in given):
                found.append(f"{path}:{node.lineno}: {callee}")
        if callee in BUILDERS:
            for k in node.keywords:
                if k.arg == "help" and _is_text(k.value):
                    found.append(f"{path}:{node.lineno}: help written at the call")
    assert found == []


def test_call_sites_give_the_fields_of_their_templates():
    """Each call that builds a diagnostic from a literal code names a variant
    its record has and exactly the fields of its templates."""
    checked = 0
    for path, node in _calls():
        code = _literal_code(node)
        if code is None or ast.unparse(node.func) not in BUILDERS:
            continue
        if any(k.arg is None for k in node.keywords):  # `**fields` passed on
            continue
        kw = {k.arg: k.value for k in node.keywords}
        variant = kw.get("variant")
        if variant is not None and not isinstance(variant, ast.Constant):
            continue  # chosen as it runs: each is checked where it is run
        name = variant.value if variant is not None else None
        where = f"{path}:{node.lineno}"
        assert name is None or name in CODES[code].variants, f"{where}: no variant {name}"
        message, help = CODES[code].says(name)
        assert message, f"{where}: {code} has no message"
        given = set(kw) - NOT_FIELDS
        needed = fields(message) | (set() if "help" in kw else fields(help))
        assert needed <= given <= fields(message) | fields(help), (where, given, needed)
        checked += 1
    assert checked > 100
