"""Text from a model file or a spec reaches the terminal as text: never read as
rich markup, its control characters escaped; JSON and YAML stay exact."""

import json

import jax.numpy as jnp
import yaml
from click.testing import CliRunner

import eqxform
from eqxform._ast import Source, Span
from eqxform._cli import main
from eqxform._diagnostics import Diagnostic, printable

ESC = "\x1b"
NAMES = ["a[/dim]", "[bold]x", f"{ESC}[31mred{ESC}[0m", "b\rc", "rtl\u202eevil", "bell\x07"]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def clean(text: str) -> bool:
    """No character a terminal would act on (newlines and tabs aside)."""
    return printable(text, keep="\n\t") == text


def test_printable_escapes_control_characters_only():
    assert printable("layers.0.weight [bold] ünïcode 中") == "layers.0.weight [bold] ünïcode 中"
    assert printable(f"{ESC}[2J\r\x00\x7f\x9b") == "\\x1b[2J\\x0d\\x00\\x7f\\x9b"
    assert printable("a\u202eb\u2028c\ufeff") == "a\\u202eb\\u2028c\\ufeff"
    assert printable("a\tb\nc", keep="\t") == "a\tb\\x0ac"


def test_show_prints_tensor_names_as_text(tmp_path):
    path = tmp_path / "m.eqx"
    eqxform.save(path, {name: jnp.ones(i + 1) for i, name in enumerate(NAMES)})
    code, out = run("show", path)
    assert code == 0, out
    assert clean(out)
    for shown in ["a[/dim]", "[bold]x", "\\x1b[31mred\\x1b[0m", "b\\x0dc", "rtl\\u202eevil"]:
        assert shown in out
    # Data formats keep the names exact (and escaped by their own rules).
    code, out = run("show", path, "--format", "json")
    assert code == 0 and clean(out)
    assert sorted(t["path"] for t in json.loads(out)["tensors"]) == sorted(NAMES)
    code, out = run("show", path, "--format", "yaml")
    assert code == 0 and clean(out)
    assert sorted(t["path"] for t in yaml.safe_load(out)["tensors"]) == sorted(NAMES)


def test_show_prints_recipe_strings_as_text(tmp_path):
    spec = tmp_path / f"{ESC}]0;owned{ESC}\\[bold].eqx"
    spec.write_text('model MLP(2, 2, 4, 1)\nlet tag = "x"\nwhere Linear.bias -> init zeros\n')
    model = eqxform.compile(spec, params={"tag": f"{ESC}[2J[red]"}).apply()
    eqxform.save(tmp_path / "m.eqx", model)
    code, out = run("show", tmp_path / "m.eqx")
    assert code == 0, out
    assert clean(out)
    assert "spec 1: \\x1b]0;owned\\x1b\\[bold].eqx" in out
    assert "tag=\\x1b[2J[red]" in out
    code, out = run("show", tmp_path / "m.eqx", "--format", "json")
    assert json.loads(out)["recipe"]["specs"][0]["params"] == {"tag": f"{ESC}[2J[red]"}


def test_plan_prints_spec_text_as_text(tmp_path):
    spec = tmp_path / "s.eqx"
    spec.write_text(
        "model MLP(2, 2, 4, 1)\nlet bold = 1\nwhere Linear.bias -> init constant(value=[bold][0])\n"
    )
    code, out = run("plan", spec)
    assert code == 0, out
    assert "init constant(value=[bold][0])" in out


def test_diagnostics_escape_the_source_line_and_keep_the_caret_under_the_span(tmp_path):
    spec = tmp_path / "s.eqx"
    spec.write_text(f'where Linear.weight if path != "{ESC}[2J" -> init zeross\n')
    code, out = run("check", spec)
    assert code == 1 and clean(out), out
    lines = out.splitlines()
    source = next(i for i, line in enumerate(lines) if line.startswith("1 | "))
    assert '"\\x1b[2J"' in lines[source]
    caret = lines[source + 1]
    start = caret.index("^")
    assert lines[source][start:].startswith("zeross")
    assert caret[start:] == "^" * len("zeross")
    code, out = run("check", spec, "--json")
    assert code == 1 and clean(out)
    assert json.loads(out)["diagnostics"][0]["code"] == "E102"


def test_rendered_diagnostics_escape_messages_notes_and_help():
    source = Source(f"spec{ESC}.eqx", f"a{ESC}\tb\x08")
    d = Diagnostic(
        "E000",
        f"name `{ESC}[31m`",
        Span(1, 3, 1, 4),
        help=f"do \r{ESC}",
        source=source,
        notes=(f"x{ESC}",),
    )
    text = d.render()
    assert clean(text)
    assert "name `\\x1b[31m`" in text and "--> spec\\x1b.eqx:1:3" in text
    assert "1 | a\\x1b\tb\\x08" in text
    # The caret sits under the tab (column 3), past the four characters of `\x1b`.
    lines = text.splitlines()
    assert lines[lines.index("1 | a\\x1b\tb\\x08") + 1] == "  | " + " " * 5 + "^"
    assert "= note: x\\x1b" in text and "= help: do \\x0d\\x1b" in text
