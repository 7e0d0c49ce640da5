"""Write the generated parts of the documentation from eqxform's own tables.

Run `python docs/generate.py` after changing a table (a directive or an action
record in `eqxform/_names.py`, a code in `eqxform/_codes.py`, a command-line
option); `python docs/generate.py --check` exits 1 when a page is out of date,
and `tests/test_docs.py` runs that check, so the reference cannot drift from
the code. The keyword lists of the editors' TextMate grammar (`grammar/` and
its copy under `editors/`) are written from the same tables.

A page's generated parts sit between `<!-- generated: NAME -->` and
`<!-- end generated -->`; the text around them is written by hand.
`docs/diagnostics.md` is generated whole (`eqxform explain --all --format
markdown`).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S
)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: tuple[str, ...], rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_escape(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(out)


def directives() -> list[str]:
    """Every directive word of the grammar (`model`, `seed`, ..., `where`), in
    the grammar's order."""
    grammar = (ROOT / "grammar" / "eqxform.lark").read_text()
    return re.findall(r'^(?:\w+_stmt|rule):\s*"(\w+)"', grammar, re.M)


def _signature(name, sig) -> str:
    from eqxform import _docs as D

    return D.signature(name, sig.params) if sig is not None and sig.params else name


# ---- the language reference -------------------------------------------------------


def gen_directives() -> str:
    from eqxform import _names as N

    rows = [(f"`{d.name}`", f"`{d.form}`", d.doc) for d in N.DIRECTIVES.values()]
    return _table(("directive", "form", "what it does"), rows)


_ACTION_FORMS = {
    "initializer": "NAME | NAME(ARGS)",
    "constructor": "CTOR(ARGS) | FUNCTION",
    "dtype": "DTYPE",
    "expr": "EXPR",
    "wrapper": "NAME | NAME(ARGS)",
    "spec": "(AXIS | none, ...)",
    "none": "",
}


def gen_actions() -> str:
    from eqxform import _docs as D
    from eqxform import _names as N

    rows = []
    for a in N.ACTIONS.values():
        if a.arg == "keywords":
            form = f"{a.name} | {D.signature(a.name, a.keywords.params)}"
        else:
            form = f"{a.name} {_ACTION_FORMS[a.arg]}".strip()
        rows.append((f"`{a.name}`", f"`{form}`", a.changes, a.doc, f"`{a.example}`"))
    return _table(("action", "form", "changes", "what it does", "example"), rows)


def gen_remat_policies() -> str:
    from eqxform import _names as N

    return "Policies (`remat(policy=NAME)`): " + ", ".join(f"`{p}`" for p in N.REMAT_POLICIES) + "."


def gen_map_actions() -> str:
    from eqxform import _names as N

    forms = {"none": "", "axes?": " [AXES]", "shape?": " [SHAPE]", "axis": " N"}
    rows = []
    for name, info in N.MAP_ACTIONS.items():
        rows.append((f"`{name}{forms[info.arg]}`", info.doc, info.example))
    return _table(("action", "what it does", "example"), rows)


def gen_weight_codes() -> str:
    from eqxform._codes import CODES

    codes = [c for c in CODES.values() if "E240" <= c.code <= "E250" or c.code in ("E340", "E450")]
    return _table(("code", "problem"), [(f"`{c.code}`", c.title) for c in codes])


def gen_selectors() -> str:
    from eqxform import _docs as D

    return _table(("selector", "matches"), [(f"`{k}`", v) for k, v in D.SELECTOR_FORMS.items()])


def gen_context() -> str:
    from eqxform import _docs as D
    from eqxform import _names as N

    return _table(("name", "value"), [(f"`{n}`", D.CONTEXT.get(n, "")) for n in N.CONTEXT_NAMES])


def gen_functions() -> str:
    from eqxform import _docs as D
    from eqxform import _names as N

    rows = []
    for name, arity in N.EXPR_FUNCTIONS.items():
        rows.append((f"`{name}`", "1" if arity == 1 else "any", D.EXPR_FUNCTIONS.get(name, "")))
    return _table(("function", "arguments", "value"), rows)


def gen_initializers() -> str:
    from eqxform import _docs as D
    from eqxform import _names as N

    rows = []
    for name, sig in N.INITIALIZERS.items():
        fans = "yes" if name in N.FAN_INITIALIZERS else ""
        rows.append((f"`{_signature(name, sig)}`", fans, D.INITIALIZERS.get(name, "")))
    return _table(("initialiser", "needs fans", "draws"), rows)


def gen_wrappers() -> str:
    from eqxform import _docs as D
    from eqxform import _names as N

    rows = [(f"`{_signature(n, s)}`", D.WRAPPERS.get(n, "")) for n, s in N.WRAPPERS.items()]
    return _table(("wrapper", "what it does"), rows)


def gen_optimizers() -> str:
    from eqxform import _docs as D
    from eqxform import _names as N

    rows = [(f"`{_signature(n, s)}`", D.OPTIMIZERS.get(n, "")) for n, s in N.OPTIMIZERS.items()]
    return _table(("optimizer", "optax's"), rows)


def gen_values() -> str:
    from eqxform import _names as N

    return "\n".join(
        [
            "Functions (`activation=gelu`, `replace gelu`): "
            + ", ".join(f"`{f}`" for f in N.FUNCTIONS)
            + ".",
            "",
            "Dtypes (`cast`): " + ", ".join(f"`{d}`" for d in N.DTYPES) + ".",
            "",
            "Input dtypes (`input f32[3,224,224]`): "
            + ", ".join(f"`{d}`" for d in N.INPUT_DTYPES)
            + ".",
            "",
            "Constants: " + ", ".join(f"`{c}`" for c in N.CONSTANTS) + ".",
        ]
    )


def gen_stack_options() -> str:
    from eqxform import _docs as D
    from eqxform import _names as N

    words = ("scan", "vmap", *N.STACK_OPTIONS)
    return _table(("word", "meaning"), [(f"`{w}`", D.KEYWORDS[w]) for w in words])


def gen_types() -> str:
    from eqxform import _names as N

    rows = [(f"`{_signature(n, s)}`", "`equinox.nn`") for n, s in N.EQUINOX_NN.items()]
    rows += [(f"`{_signature(n, s)}`", "`eqxform.models`") for n, s in N.EXAMPLE_MODELS.items()]
    return _table(("constructor", "from"), rows)


# ---- the command line and the Python API ----------------------------------------------


def gen_commands() -> str:
    import click

    from eqxform._cli import main

    out = []
    # Each command's context under the group's, as on the command line (the
    # group's settings, `-h` among them, reach the commands).
    parent = click.Context(
        main, info_name="eqxform", terminal_width=88, max_content_width=88, **main.context_settings
    )
    for name, command in main.commands.items():
        ctx = click.Context(command, info_name=name, parent=parent)
        out += [f"### `eqxform {name}`", "", "```text", command.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(out).rstrip()


def gen_api() -> str:
    import inspect

    import eqxform

    rows = []
    for name in sorted(n for n in dir(eqxform) if not n.startswith("_")):
        obj = getattr(eqxform, name)
        if inspect.ismodule(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        summary = doc.split("\n\n", 1)[0].replace("\n", " ")
        kind = "class" if inspect.isclass(obj) else "function"
        rows.append((f"`eqxform.{name}`", kind, summary))
    return _table(("name", "kind", "what it is"), rows)


def _first_sentence(text: str) -> str:
    """Up to the first `. ` outside backticks."""
    inside = False
    for i, c in enumerate(text):
        inside ^= c == "`"
        if c == "." and not inside and text[i + 1 : i + 2] in ("", " "):
            return text[: i + 1]
    return text


def gen_limits() -> str:
    """Every constant of `eqxform/_limits.py`: its name, its value, and the
    first sentence of the comment above it (why it has that value)."""
    import ast

    from eqxform import _limits as L

    path = Path(L.__file__)
    lines = path.read_text().splitlines()
    rows, first = [], ""
    for node in ast.parse(path.read_text()).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        comment, k = [], node.lineno - 2
        while k >= 0 and lines[k].startswith("#") and not lines[k].startswith("# ----"):
            comment.insert(0, lines[k].lstrip("# ").rstrip())
            k -= 1
        if comment:  # else the constant shares the comment of the one above
            first = _first_sentence(" ".join(comment))
        value = getattr(L, name)
        shown = f"{value:,}" if isinstance(value, int) else repr(value)
        rows.append((f"`{name}`", shown, first))
    return _table(("constant", "value", "what it bounds"), rows)


GENERATORS = {
    "directives": gen_directives,
    "actions": gen_actions,
    "remat-policies": gen_remat_policies,
    "map-actions": gen_map_actions,
    "weight-codes": gen_weight_codes,
    "selectors": gen_selectors,
    "context": gen_context,
    "functions": gen_functions,
    "initializers": gen_initializers,
    "wrappers": gen_wrappers,
    "optimizers": gen_optimizers,
    "values": gen_values,
    "stack-options": gen_stack_options,
    "types": gen_types,
    "commands": gen_commands,
    "api": gen_api,
    "limits": gen_limits,
}


# ---- the editors' TextMate grammar ----------------------------------------------------

# The grammar and the copy the VS Code extension ships.
TEXTMATE = (
    ROOT / "grammar" / "eqxform.tmLanguage.json",
    ROOT / "editors" / "vscode" / "syntaxes" / "eqxform.tmLanguage.json",
)

# A keyword list of the grammar: a group of words alone, `(a|b)` or `(?:a|b)`.
_WORD_GROUP = re.compile(r"\((\?:)?[A-Za-z_0-9|]+\)")


def _keyword_lists() -> dict[str, tuple[str, ...]]:
    """The words of each scope of the TextMate grammar whose words are the
    language's: a scope -> its words, from eqxform's tables."""
    from eqxform import _names as N

    return {
        "keyword.control.directive.eqxform": tuple(N.DIRECTIVES),
        "support.function.optimizer.eqxform": tuple(N.OPTIMIZERS),
        "support.function.initializer.eqxform": tuple(N.INITIALIZERS),
        "support.function.wrapper.eqxform": tuple(N.WRAPPERS),
        "keyword.other.action.eqxform": tuple(N.ACTIONS),
        "keyword.other.eqxform": ("scan", "vmap", *N.STACK_OPTIONS, "over", "any", "with")
        + ("vary", "grid"),
        "constant.language.eqxform": tuple(N.CONSTANTS),
        "support.function.builtin.eqxform": tuple(N.EXPR_FUNCTIONS),
        "variable.language.eqxform": N.CONTEXT_NAMES,
        "support.function.activation.eqxform": N.FUNCTIONS,
        "support.type.dtype.eqxform": N.DTYPES,
    }


def textmate() -> str:
    """The TextMate grammar with its keyword lists written from the tables.

    A pattern's list is the last group of words in its regular expression;
    its scope is the pattern's `name`, or that of its last capture. Words are
    listed longest first, so that no word stops the match of a longer one."""
    grammar = json.loads(TEXTMATE[0].read_text())
    lists = _keyword_lists()
    todo: list = [grammar]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        todo.extend(node.values())
        captures = node.get("captures", {})
        scope = captures[max(captures, key=int)]["name"] if captures else node.get("name")
        if "match" not in node or scope not in lists:
            continue
        groups = list(_WORD_GROUP.finditer(node["match"]))
        last = groups[-1]
        words = "|".join(sorted(lists[scope], key=lambda w: (-len(w), w)))
        group = f"({last.group(1) or ''}{words})"
        node["match"] = node["match"][: last.start()] + group + node["match"][last.end() :]
    return json.dumps(grammar, indent=2) + "\n"


def render(text: str) -> str:
    """`text` with each generated block written anew."""

    def fill(m: re.Match) -> str:
        name = m.group("name")
        if name not in GENERATORS:
            raise KeyError(f"no generator for the block `{name}`")
        return m.group(1) + GENERATORS[name]() + "\n" + m.group(4)

    return BLOCK.sub(fill, text)


def pages() -> dict[Path, str]:
    """Every generated page: path -> the text it should have."""
    from eqxform._codes import markdown

    out = {DOCS / "diagnostics.md": markdown()}
    grammar = textmate()
    out.update({path: grammar for path in TEXTMATE})
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text()
        if BLOCK.search(text):
            out[path] = render(text)
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, text in pages().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not check:
                path.write_text(text)
    for path in stale:
        print(("out of date: " if check else "wrote ") + str(path.relative_to(ROOT)))
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
