"""Every fenced code block of README.md and docs/**/*.md runs, as a reader would run it.

A page's blocks run in order, in a temporary folder holding a copy of
`specs/`, and its Python blocks share one namespace (a page may build on its
earlier blocks). By the block's label:

- `python`: executed.
- `eqx`: a spec, compiled and checked (against its `model`, when it has one);
  no errors. One whose first line is `# specs/NAME.eqx` says the same as that
  file (its statements, comments and spacing aside).
- `sh`: each `eqxform ...` command (`&&` chains and `\\` continuations
  included) runs through the command line and exits 0.
- `console`: a transcript: each `$ eqxform ...` line runs, and prints exactly
  the lines below it.
- `text`: output or a layout, shown and not run.

An unlabelled block is an error. A comment on the line before a block changes
what is done with it:

- `<!-- docs-test: skip (REASON) -->`: not run (it needs a mesh of hosts, it
  installs packages, it is a fragment of a larger example); the reason is
  required and shows in the test's report.
- `<!-- docs-test: file NAME -->`: the block is also written to NAME in the
  page's folder, for later blocks to read.
"""

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from eqxform import _registry as registry
from eqxform._cli import main
from eqxform._compile import compile_collect

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
KINDS = ("python", "eqx", "sh", "console", "text")

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
MARK = re.compile(r"<!--\s*docs-test:\s*(\w+)\s*(.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    kind: str  # the fence's label ("" when there is none)
    text: str
    mark: str | None = None  # "skip" or "file"
    arg: str = ""  # the skip's reason, the file's name

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    name = str(page.relative_to(ROOT))
    out = []
    for m in FENCE.finditer(text):
        before = [line for line in text[: m.start()].splitlines() if line.strip()]
        mark = MARK.fullmatch(before[-1].strip()) if before else None
        out.append(
            Block(
                name,
                text.count("\n", 0, m.start()) + 1,
                m.group(1).strip().split(" ")[0],
                m.group(2),
                mark.group(1) if mark else None,
                mark.group(2) if mark else "",
            )
        )
    return out


ALL = [b for page in PAGES for b in blocks(page)]


def test_the_pages_have_blocks_and_each_is_labelled_or_marked():
    assert len(ALL) > 150 and {b.page for b in ALL} >= {"README.md", "docs/python.md"}
    problems = []
    for b in ALL:
        if b.mark not in (None, "skip", "file"):
            problems.append(f"{b.where}: unknown mark `docs-test: {b.mark}`")
        elif b.mark == "skip" and not re.fullmatch(r"\(.+\)", b.arg):
            problems.append(f"{b.where}: a skip needs its reason: `skip (needs 8 devices)`")
        elif b.mark == "file" and not b.arg:
            problems.append(f"{b.where}: `docs-test: file NAME` names no file")
        elif b.mark != "skip" and b.kind not in KINDS:
            problems.append(f"{b.where}: label the block ({', '.join(KINDS)}) or mark it")
    assert problems == []


def test_skipped_blocks_are_few_outside_the_generated_examples():
    # The diagnostics page shows each code's example, a fragment whose context
    # is in its text; elsewhere a skip is the exception.
    skipped = [b for b in ALL if b.mark == "skip" and b.page != "docs/diagnostics.md"]
    assert len(skipped) <= 8, [f"{b.where} {b.arg}" for b in skipped]


def cli(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False, env={"COLUMNS": "100"})


def statements(text: str) -> list[str]:
    """A spec's statements, comments and spacing left out."""
    lines = (" ".join(line.split("#", 1)[0].split()) for line in text.splitlines())
    return [line for line in lines if line]


def run_spec(b: Block) -> None:
    program, diagnostics = compile_collect(b.text, b.where)
    errors = [d.render() for d in diagnostics if d.severity == "error"]
    assert errors == [], b.where
    if program is not None and program.model_call is not None:
        errors = [d.render() for d in program.check() if d.severity == "error"]
        assert errors == [], b.where
    first = b.text.splitlines()[0]
    named = re.fullmatch(r"# (specs/\w+\.eqx)", first.strip())
    if named:
        assert statements((ROOT / named.group(1)).read_text()) == statements(b.text), b.where


def commands(text: str) -> list[list[str]]:
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words:
                out.append(words)
    return out


def run_sh(b: Block) -> None:
    for words in commands(b.text):
        assert words[0] == "eqxform", f"{b.where}: `{' '.join(words)}` is not an eqxform command"
        result = cli(words[1:])
        assert result.exit_code == 0, f"{b.where}: {' '.join(words)}\n{result.output}"


def run_console(b: Block) -> None:
    lines = b.text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("$ ")]
    assert starts and starts[0] == 0, f"{b.where}: a transcript starts with `$ eqxform ...`"
    for i, start in enumerate(starts):
        words = shlex.split(lines[start][2:])
        assert words[0] == "eqxform", b.where
        want = lines[start + 1 : starts[i + 1] if i + 1 < len(starts) else len(lines)]
        result = cli(words[1:])
        got = [line.rstrip() for line in result.output.splitlines()]
        assert got == [line.rstrip() for line in want], f"{b.where}: {lines[start]}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_of_the_page_runs(page, tmp_path, monkeypatch):
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    # What a page registers (`eqxform.register_type(MyBlock)`) is gone after it.
    for table in ("_TYPES", "_CONSTRUCTORS", "_INITIALIZERS", "_WRAPPERS"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    scope: dict = {"__name__": "__docs__"}
    for b in blocks(page):
        if b.mark == "skip":
            continue
        if b.mark == "file":
            Path(b.arg).write_text(b.text)
        if b.kind == "python":
            exec(compile(b.text, b.where, "exec"), scope)
        elif b.kind == "eqx":
            run_spec(b)
        elif b.kind == "sh":
            run_sh(b)
        elif b.kind == "console":
            run_console(b)
