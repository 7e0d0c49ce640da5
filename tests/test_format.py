import ast
import dataclasses
import re
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

import eqxform
from eqxform import _ast as A
from eqxform._cli import main
from eqxform._format import format_spec
from eqxform._parse import _parser, parse, parse_collect, tokens

ROOT = Path(__file__).parent.parent
SPECS = sorted((ROOT / "specs").glob("*.eqx"))
FIXTURES = sorted((ROOT / "tests" / "fixtures").rglob("*.eqx"))
GOLDEN = sorted((ROOT / "tests" / "fixtures" / "format").glob("*.eqx"))


def _plain(node):
    """`node` with what may change under formatting blanked out: the source text
    rules and selectors keep, and the span a stack keeps of its mode."""
    if isinstance(node, tuple):
        return tuple(_plain(n) for n in node)
    if not dataclasses.is_dataclass(node) or isinstance(node, A.Span):
        return node
    changes = {f.name: _plain(getattr(node, f.name)) for f in dataclasses.fields(node)}
    if isinstance(node, (A.Rule, A.Selector)):
        changes["text"] = ""
    if isinstance(node, A.StackStmt):
        changes["mode_span"] = None
    return dataclasses.replace(node, **changes)


def assert_same_meaning(before: str, after: str):
    a, b = parse(before), parse(after)
    assert _plain(a.statements) == _plain(b.statements)


def _parses(path: Path) -> bool:
    return not parse_collect(path.read_text())[1]


def test_every_spec_is_formatted_idempotently_and_keeps_its_meaning():
    assert SPECS
    for path in SPECS:
        text = path.read_text()
        out = format_spec(text)
        assert format_spec(out) == out, path
        assert_same_meaning(text, out)
        assert out.endswith("\n") and not out.endswith("\n\n")


def test_every_fixture_that_parses_is_formatted():
    parsing = [p for p in FIXTURES if _parses(p)]
    assert len(parsing) > 10
    for path in parsing:
        text = path.read_text()
        out = format_spec(text)
        assert format_spec(out) == out, path
        assert_same_meaning(text, out)


def test_text_that_does_not_parse_is_refused_with_its_diagnostics():
    broken = [p for p in FIXTURES if not _parses(p)]
    assert broken
    for path in broken:
        text = path.read_text()
        with pytest.raises(eqxform.SpecError) as info:
            format_spec(text)
        assert info.value.diagnostics == tuple(parse_collect(text)[1])


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden(path):
    expected = path.with_suffix(".expected").read_text()
    out = format_spec(path.read_text())
    assert out == expected
    assert format_spec(expected) == expected


def test_arrows_align_within_a_run_only():
    text = "where a -> freeze\nwhere bbbb.c -> freeze\n\nwhere d -> freeze\n"
    assert format_spec(text) == (
        "where a      -> freeze\nwhere bbbb.c -> freeze\n\nwhere d -> freeze\n"
    )
    # A comment line, or any other statement, ends the run too.
    text = "where a -> freeze\n# note\nwhere bbbb.c -> freeze\nseed 1\nwhere dd -> freeze\n"
    assert format_spec(text) == text


def test_trailing_comments_align_within_a_run():
    text = "seed 1 # one\nlet long_name = 2 # two\n\nlet x = 3   # three\n"
    assert format_spec(text) == (
        "seed 1             # one\nlet long_name = 2  # two\n\nlet x = 3  # three\n"
    )


def test_blank_lines_and_line_ends():
    assert format_spec("\n\n\nseed 1\n\n\n\nseed 2   \n\n") == "seed 1\n\nseed 2\n"
    assert format_spec("seed 1") == "seed 1\n"
    assert format_spec("seed 1\r\nseed 2\r\n") == "seed 1\nseed 2\n"
    assert format_spec("") == ""
    assert format_spec("\n \n# only a comment   ") == "# only a comment\n"


def test_signs_and_operators():
    cases = {
        "let a = 1+2": "let a = 1 + 2\n",
        "let a = 1 + -2": "let a = 1 + -2\n",
        "let a = - 2": "let a = -2\n",
        "let a = 2**-1": "let a = 2 ** -1\n",
        "let a = 2*3//4%5": "let a = 2 * 3 // 4 % 5\n",
        "let a = not(1<2)": "let a = not (1 < 2)\n",
        "where x -> lr - 1": "where x -> lr -1\n",
        "where x -> scale(2)": "where x -> scale (2)\n",
        "where x -> scale [1][0]": "where x -> scale [1][0]\n",
        "where x if shape [0] ==1 -> freeze": "where x if shape[0] == 1 -> freeze\n",
        "where ** -> freeze": "where ** -> freeze\n",
        "where a|b . c -> freeze": "where a | b.c -> freeze\n",
        "where a [ - 1 ] -> freeze": "where a[-1] -> freeze\n",
        "seed - 1": "seed -1\n",
    }
    for text, expected in cases.items():
        assert format_spec(text) == expected, text
        assert_same_meaning(text, expected)


def test_keyword_arguments_are_tight_and_let_is_spaced():
    assert format_spec("let w=1\nmodel MLP(in_size = w, out_size =2, width_size= 3, depth=1)") == (
        "let w = 1\nmodel MLP(in_size=w, out_size=2, width_size=3, depth=1)\n"
    )


def test_mesh_axes_are_tight_like_keyword_arguments():
    # `data=2` is a name and its size, as in `--mesh data=2,model=4`; the
    # size's `-` is a sign, which no expression node marks.
    cases = {
        "mesh data = 2  model=4": "mesh data=2 model=4\n",
        "mesh data =2 model= - 1   # the rest": "mesh data=2 model=-1  # the rest\n",
    }
    for text, expected in cases.items():
        assert format_spec(text) == expected, text
        assert_same_meaning(text, expected)


def _spec_blocks(text: str) -> list[tuple[int, str]]:
    """(line, body) of every fenced block of a Markdown page that is a spec:
    untagged or tagged `eqx`, and parsing to at least one statement (a shell
    session, a diagnostic or a table does not parse)."""
    out = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        lang, body = m.groups()
        if lang in ("", "eqx"):
            spec, errors = parse_collect(body)
            if not errors and spec.statements:
                out.append((text.count("\n", 0, m.start()) + 1, body))
    return out


def test_every_spec_shown_in_the_docs_is_in_the_formatters_layout():
    # The pages show specs exactly as `eqxform fmt` writes them, so that a
    # spec copied from them stays as it is under `fmt --check`. Every page,
    # the generated ones included (their examples come from `_codes.py`).
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    blocks = [(page, line, body) for page in pages for line, body in _spec_blocks(page.read_text())]
    assert len(blocks) > 50
    stray = [
        f"{page.relative_to(ROOT)}:{line}"
        for page, line, body in blocks
        if format_spec(body) != body
    ]
    assert not stray, f"not in `eqxform fmt`'s layout: {stray}"


def test_the_projects_specs_pass_fmt_check():
    # `eqxform fmt --check specs/`, as CI runs it: whatever specs there are.
    result = CliRunner().invoke(main, ["fmt", "--check", str(ROOT / "specs")])
    assert result.exit_code == 0, result.output
    every = list((ROOT / "specs").rglob("*.eqx"))  # subfolders too (specs/weights/)
    assert result.output == f"{len(every)} specs already formatted\n"


def test_fmt_takes_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    tidy = tmp_path / "a.eqx"
    tidy.write_text("seed 1\n")
    messy = tmp_path / "sub" / "b.eqx"
    messy.write_text("where a->freeze\n")
    (tmp_path / "notes.txt").write_text("where a->freeze\n")  # not a spec: left alone

    result = CliRunner().invoke(main, ["fmt", "--check", str(tmp_path)])
    assert result.exit_code == 1
    assert f"would reformat {messy}" in result.output
    assert str(tidy) not in result.output
    assert messy.read_text() == "where a->freeze\n"

    result = CliRunner().invoke(main, ["fmt", str(tmp_path), str(tidy)])
    assert result.exit_code == 0, result.output
    assert result.output == "reformatted 1 of 3 specs\n"
    assert messy.read_text() == "where a -> freeze\n"
    assert (tmp_path / "notes.txt").read_text() == "where a->freeze\n"


def test_fmt_refuses_a_folder_without_specs(tmp_path):
    (tmp_path / "notes.txt").write_text("seed 1\n")
    result = CliRunner().invoke(main, ["fmt", str(tmp_path)])
    assert result.exit_code == 2
    assert "error[E401]" in result.output
    assert f"the folder `{tmp_path}` holds no spec" in result.output
    assert "help: pass spec files, or a folder with `.eqx` files in it" in result.output
    assert "Traceback" not in result.output


def test_keywords_as_field_names_stay_names():
    # `model` after a `.` is a field; the lexer reads it in its context.
    text = "where layers.model -> freeze  # model\n"
    assert format_spec(text) == text
    types = [t.type for t in tokens(text)]
    assert types[:4] == ["WHERE", "NAME", "DOT", "NAME"]


def test_a_line_that_does_not_parse_keeps_its_comment_token():
    # Lexed on its own, without the parser: the comment is still a token.
    found = [(t.type, t.text) for t in tokens("else  # a comment\nseed 1\n")]
    assert found[:3] == [("ELSE", "else"), ("COMMENT", "# a comment"), ("NEWLINE", "\n")]
    assert ("SEED", "seed") in found


def test_tokens_cover_the_text():

    # Between the tokens there is only space: nothing is lost.
    for path in SPECS + FIXTURES:
        text = path.read_text()
        lines = text.split("\n")
        found = tokens(text)
        for token in found:
            assert token.type != "ERROR" or not _parses(path)
            if token.type == "NEWLINE":
                continue
            assert lines[token.line - 1][token.column - 1 : token.end_column - 1] == token.text
        rebuilt = {
            (t.line, c) for t in found if t.type != "NEWLINE" for c in range(t.column, t.end_column)
        }
        for number, line in enumerate(lines, start=1):
            for column, char in enumerate(line, start=1):
                if (number, column) not in rebuilt:
                    assert char in " \t\r\f", (path, number, column)


def test_formatter_does_not_import_lark():
    source = (ROOT / "eqxform" / "_format.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported and not any(name.split(".")[0] == "lark" for name in imported)


def test_formatting_keeps_the_random_draws():
    # A rule's random key comes from its text without any whitespace, so the
    # spaces the formatter adds or removes change nothing it draws.
    for path in sorted((ROOT / "specs").glob("*.eqx")):
        text = path.read_text()
        squeezed = text.replace(" -> ", "->").replace(", ", ",")
        before = eqxform.compile(squeezed, name=path.name)
        after = eqxform.compile(format_spec(text), name=path.name)
        assert [p.identity for p in before.passes] == [p.identity for p in after.passes]
        if before.passes and before.model_call is not None:
            a, b = before.apply(), after.apply()
            assert all(
                np.array_equal(x, y)
                for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
                if eqx.is_array(x)
            )


# ---- generated specs -------------------------------------------------------


def _generated_specs():
    """Specs drawn from the grammar itself. Words get a space on either side (the
    generator would otherwise glue `where` to the name after it), and names are
    drawn from a few that are no keywords."""
    grammar = _parser()
    explicit = {}
    for terminal in grammar.terminals:
        value = getattr(terminal.pattern, "value", "")
        if terminal.pattern.type == "str" and value.isalpha():
            explicit[terminal.name] = st.just(f" {value} ")
    names = ["x", "weight", "Linear", "layers", "init", "normal", "fan_in", "MLP", "lr", "scan"]
    explicit.update(
        NAME=st.sampled_from(names).map(lambda n: f" {n} "),
        NUMBER=st.sampled_from(["0", "1", "2.5", "1e-3", "10", ".5"]),
        STRING=st.sampled_from(['"a"', "'b # c'"]),
        _NL=st.sampled_from(["\n", "\n\n", "\n\n\n", "\n  ", "\r\n"]),
        WS=st.sampled_from([" ", "  ", "\t"]),
        COMMENT=st.sampled_from(["# c", "#x  "]),
    )
    return from_lark(grammar, start="start", explicit=explicit)


def test_generated_specs_format_idempotently_and_keep_their_meaning():
    parsed = []

    @settings(
        max_examples=200,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(_generated_specs())
    def check(text):
        if parse_collect(text)[1]:
            return  # the generator knows the grammar, not the lexer's context
        parsed.append(text)
        out = format_spec(text)
        assert format_spec(out) == out
        assert_same_meaning(text, out)

    check()
    # Most of what the grammar generates parses; the test is not vacuous.
    assert len(parsed) >= 50
