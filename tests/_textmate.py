"""A small TextMate tokenizer, enough to run `grammar/eqxform.tmLanguage.json`.

It supports the subset that grammar uses: `match` with `name` and `captures`;
`begin`/`end` with `name`, `contentName`, `beginCaptures`, `endCaptures` and
`patterns`; `include` of `#name` (the repository) and `$self`. As in an editor,
each line is matched on its own and the open regions carry over to the next;
at each point the pattern that matches earliest wins, the first one listed on a
tie, and the end of the open region before any of them.

The grammar's regular expressions are Oniguruma's; those it uses mean the same
in Python's `re`, which a test checks by compiling each one here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

Scopes = tuple[str, ...]


@dataclass
class _Frame:
    rule: dict
    end: re.Pattern | None
    outer: Scopes  # the scopes around the region, its own name included
    inner: Scopes  # the scopes of its content


class Grammar:
    def __init__(self, data: dict):
        self.data = data
        self.repository = data.get("repository", {})
        self.scope = data["scopeName"]
        self._regex: dict[str, re.Pattern] = {}

    @classmethod
    def load(cls, path: Path) -> Grammar:
        return cls(json.loads(path.read_text()))

    def regex(self, source: str) -> re.Pattern:
        if source not in self._regex:
            self._regex[source] = re.compile(source)
        return self._regex[source]

    def rules(self, container: dict) -> list[dict]:
        """The match and begin/end rules of `container`'s patterns, includes expanded."""
        out: list[dict] = []
        for pattern in container.get("patterns", []):
            if "include" in pattern:
                target = pattern["include"]
                if target == "$self":
                    out.extend(self.rules(self.data))
                    continue
                assert target.startswith("#"), target
                included = self.repository[target[1:]]
                if "match" in included or "begin" in included:
                    out.append(included)
                else:
                    out.extend(self.rules(included))
            else:
                out.append(pattern)
        return out

    def tokenize(self, text: str) -> list[list[Scopes]]:
        """The scopes of every character of `text`, line by line."""
        stack = [_Frame(self.data, None, (self.scope,), (self.scope,))]
        lines = []
        for line in text.split("\n"):
            line = line.rstrip("\r")
            scopes: list[Scopes | None] = [None] * len(line)
            pos = 0
            while True:
                frame = stack[-1]
                best = None  # (start, order, rule or None for the end, match)
                if frame.end is not None:
                    m = frame.end.search(line, pos)
                    if m:
                        best = (m.start(), -1, None, m)
                for order, rule in enumerate(self.rules(frame.rule)):
                    m = self.regex(rule.get("match") or rule["begin"]).search(line, pos)
                    if m and (best is None or m.start() < best[0]):
                        best = (m.start(), order, rule, m)
                if best is None:
                    self._fill(scopes, pos, len(line), frame.inner)
                    break
                start, _, rule, m = best
                self._fill(scopes, pos, start, frame.inner)
                if rule is None:
                    stack.pop()
                    self._paint(scopes, m, frame.outer, frame.rule.get("endCaptures"))
                elif "match" in rule:
                    if m.end() == m.start():
                        raise ValueError(f"empty match of {rule['match']!r}")
                    base = frame.inner + ((rule["name"],) if "name" in rule else ())
                    self._paint(scopes, m, base, rule.get("captures"))
                else:
                    if m.end() == m.start():
                        raise ValueError(f"empty begin of {rule['begin']!r}")
                    outer = frame.inner + ((rule["name"],) if "name" in rule else ())
                    inner = outer + ((rule["contentName"],) if "contentName" in rule else ())
                    self._paint(scopes, m, outer, rule.get("beginCaptures"))
                    stack.append(_Frame(rule, self.regex(rule["end"]), outer, inner))
                pos = m.end()
                if pos >= len(line) and stack[-1].end is None:
                    break
                if pos > len(line):
                    break
            lines.append([s if s is not None else (self.scope,) for s in scopes])
        return lines

    @staticmethod
    def _fill(scopes, start, end, value):
        for i in range(start, end):
            scopes[i] = value

    @staticmethod
    def _paint(scopes, m: re.Match, base: Scopes, captures: dict | None):
        for i in range(m.start(), m.end()):
            scopes[i] = base
        for group, capture in sorted((captures or {}).items(), key=lambda kv: int(kv[0])):
            index = int(group)
            if m.start(index) < 0 or "name" not in capture:
                continue
            for i in range(m.start(index), m.end(index)):
                scopes[i] = base + (capture["name"],)


def leaf(scopes: Scopes) -> str | None:
    """The innermost scope that names a token (not a region)."""
    for scope in reversed(scopes):
        if not scope.startswith(("meta.", "source.")):
            return scope
    return None
