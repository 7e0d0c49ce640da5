"""Diagnostics: what went wrong, where, and how to fix it.

A diagnostic is plain data (a code, a message, a span, a help line). It renders
in three ways: the long form with the source line and a caret under the span,
a one-line form for CI and editors, and a dict for `--json`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

from ._ast import Source, Span
from ._codes import CODES, SEVERITY, fields

# What must not reach a terminal as it is: the C0 and C1 control characters
# (ESC starts escape sequences that recolour, move the cursor or set the
# window title; `\r` rewrites the line), DEL, and the Unicode format
# characters that reorder or hide text (bidirectional overrides and isolates,
# zero-width characters, line and paragraph separators, the byte order mark).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep: str = "") -> str:
    """`text` with every control character written as its escape (`\\x1b`,
    `\\u202e`): text from a file or a spec printed as what it is, never as
    instructions to the terminal. `keep` names characters left as they are
    (a tab in a source line)."""
    if keep:
        return _UNPRINTABLE.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)
    return _UNPRINTABLE.sub(_escape, text)


@dataclass(frozen=True)
class Diagnostic:
    """One problem: a stable `code`, a `message`, where (`span` in `source`, or
    a `file`), a `help` line, and a `severity` (`error`, `warning`, or `note`:
    what a check without the model leaves to the model)."""

    code: str
    message: str
    span: Span | None = None
    help: str | None = None
    source: Source | None = None
    file: str | None = None  # for diagnostics about a file that is no spec
    notes: tuple[str, ...] = field(default=())
    severity: str = "error"

    @property
    def location(self) -> str:
        name = self.source.name if self.source is not None else self.file
        if name is None:
            return ""
        if self.span is None:
            return name
        return f"{name}:{self.span.line}:{self.span.column}"

    def with_source(self, source: Source) -> Diagnostic:
        return replace(self, source=source)

    def render(self) -> str:
        """The long form. Everything that comes from a spec or a file (names
        in the message, the source line) is printed with its control
        characters escaped (`printable`)."""
        head = f"{self.severity}[{self.code}]: {printable(self.message)}"
        lines = [head]
        if self.location:
            lines.append(f" --> {printable(self.location)}")
        if self.span is not None and self.source is not None:
            text = self.source.line(self.span.line)
            number = str(self.span.line)
            pad = " " * len(number)
            start = max(self.span.column, 1)
            if self.span.end_line == self.span.line:
                end = max(self.span.end_column, start + 1)
            else:
                end = max(len(text) + 1, start + 1)
            # The caret goes under the escaped text, so the escapes are measured.
            before = printable(text[: start - 1], keep="\t")
            marked = text[start - 1 : end - 1]
            width = len(printable(marked, keep="\t")) + (end - start) - len(marked)
            lines.append(f"{pad} |")
            lines.append(f"{number} | " + printable(text, keep="\t"))
            lines.append(
                f"{pad} | " + "".join("\t" if c == "\t" else " " for c in before) + "^" * width
            )
        for note in self.notes:
            lines.append(f"  = note: {printable(note)}")
        if self.help:
            lines.append(f"  = help: {printable(self.help)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out: dict = {"code": self.code, "severity": self.severity, "message": self.message}
        name = self.source.name if self.source is not None else self.file
        if name is not None:
            out["file"] = name
        if self.span is not None:
            out.update(asdict(self.span))  # line, column, end_line, end_column
        if self.help:
            out["help"] = self.help
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def report(
    code: str,
    *,
    variant: str | None = None,
    span: Span | None = None,
    source: Source | None = None,
    file: str | None = None,
    notes: tuple[str, ...] = (),
    severity: str | None = None,
    help: str | None = None,
    **values,
) -> Diagnostic:
    """The diagnostic `code` says (its record in `_codes`, or the record's
    `variant`), its templates filled with the named `values`. A value missing
    or misnamed is a `TypeError`, so a typo fails where it is first run.
    `help` replaces the record's help line where it is computed (a
    suggestion); `severity` defaults to the code's (`E`, `W`, `I`)."""
    message, help_template = CODES[code].says(variant)
    needed = fields(message) | (set() if help else fields(help_template))
    known = fields(message) | fields(help_template)
    if not needed <= values.keys() <= known:
        missing, unknown = needed - values.keys(), values.keys() - known
        raise TypeError(f"{code}: missing fields {sorted(missing)}, unknown {sorted(unknown)}")
    if not help:
        # A template may open with an optional part (`{value} a type is ...`).
        help = help_template.format(**values).strip() if help_template else None
    return Diagnostic(
        code,
        message.format(**values),
        span,
        help,
        source,
        file,
        tuple(notes),
        severity or SEVERITY[code[0]],
    )


def denied(diagnostics: Iterable[Diagnostic], deny: Iterable[str]) -> list[Diagnostic]:
    """`diagnostics`, with the warnings that `deny` names made errors: all of
    them for `warnings`, else those of the codes listed (`--deny W202`)."""
    deny = {d.upper() for d in deny}
    out = []
    for d in diagnostics:
        if d.severity == "warning" and ("WARNINGS" in deny or d.code in deny):
            word = "warnings" if "WARNINGS" in deny else d.code
            d = replace(
                d, severity="error", notes=d.notes + (f"`--deny {word}` makes this an error",)
            )
        out.append(d)
    return out


def position(d: Diagnostic) -> tuple[int, int]:
    """Where `d` starts, (line, column), to sort by; one of no place sorts first."""
    return (d.span.line, d.span.column) if d.span is not None else (0, 0)


def plural(n: int, word: str) -> str:
    """`1 rule`, `2 rules`, `3 matches`."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}{'es' if word.endswith(('ch', 's')) else 's'}"


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    diagnostics = list(diagnostics)
    blocks = [d.render() for d in diagnostics]
    errors = sum(d.severity == "error" for d in diagnostics)
    if errors:
        blocks.append(f"{plural(errors, 'error')} found")
    return "\n\n".join(blocks)


def suggest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to `word`, best first (case-insensitive)."""
    candidates = sorted(set(candidates))
    lowered = {c.lower(): c for c in candidates}
    exact = lowered.get(word.lower())
    if exact is not None and exact != word:
        return [exact]
    found = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[f] for f in found]


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    found = suggest(word, candidates)
    if not found:
        return None
    if len(found) == 1:
        return f"did you mean `{found[0]}`?"
    return "did you mean one of " + ", ".join(f"`{f}`" for f in found) + "?"


# What the command line (and any tool that prints beside the diagnostics)
# uses to write text as the diagnostics do: `Diagnostic.render_all(ds)`,
# `Diagnostic.printable(text)`, `Diagnostic.plural(2, "rule")`.
Diagnostic.render_all = staticmethod(render_all)  # type: ignore[attr-defined]
Diagnostic.printable = staticmethod(printable)  # type: ignore[attr-defined]
Diagnostic.plural = staticmethod(plural)  # type: ignore[attr-defined]
