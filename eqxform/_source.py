"""Where a spec and its values come from: a spec file or text, `--set`
values and `--params` YAML files. No JAX, no compiler."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from . import _ast as A
from ._diagnostics import did_you_mean, report
from ._errors import SpecError, UsageError
from ._expr import EvalError, evaluate
from ._parse import DIRECTIVES, parse_collect, parse_expr, without_bom


def _looks_like_path(text: str) -> bool:
    """One line that reads as a file's path: it ends in `.eqx`, names a file
    that exists, or has no spaces and a `/`, a `\\` or a file extension."""
    text = text.strip()
    if not text or "\n" in text or text.startswith("#"):
        return False
    if text.endswith(".eqx"):
        return True
    if not any(c.isspace() for c in text) and (
        "/" in text or "\\" in text or re.search(r"\.[A-Za-z][A-Za-z0-9]{0,5}$", text)
    ):
        return True
    try:
        return os.path.isfile(text)  # a look at the name; the file is never opened
    except (OSError, ValueError):  # a name the system cannot take
        return False


def _path_given_as_text(text: str) -> UsageError | None:
    """The error for spec text that is a path by mistake: one line that looks
    like a path and does not parse as a statement (`"specs/lora.eqx"`, but not
    `"seed 1  # as in base.eqx"`). Such text is never read as a file."""
    if not _looks_like_path(text) or not parse_collect(text)[1]:
        return None
    shown = text.strip()
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return UsageError(report("E435", shown=shown))


def looks_like_model_file(data: bytes) -> bool:
    """Do these first bytes start a safetensors file (a length, then `{`)?"""
    if len(data) < 9:
        return False
    size = int.from_bytes(data[:8], "little")
    return 0 < size < (1 << 40) and data[8:9] == b"{"


def read_spec(spec: str | os.PathLike, name: str | None = None) -> tuple[str, str]:
    """(text, name) of a spec: a `str` is its text, a path object (any
    `os.PathLike`) a file to read. Text that looks like a path is refused
    (E435), and so is a file that is not a spec (E402), without its contents."""
    if not isinstance(spec, os.PathLike):
        refused = _path_given_as_text(spec)
        if refused is not None:
            raise refused
        return spec, name or "<spec>"
    path = Path(spec)
    refuse = partial(UsageError.of, file=str(path), path=path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise refuse("E401") from None
    except IsADirectoryError:
        raise refuse("E401", variant="folder") from None
    except OSError as e:
        raise refuse("E401", variant="cannot_read", strerror=e.strerror) from None
    if looks_like_model_file(data[:9]):
        raise refuse("E402")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise refuse("E402", variant="text")
    line = _not_a_statement(text)
    if line is not None:
        listing = ", ".join(f"`{d}`" for d in DIRECTIVES[:4])
        raise refuse("E402", variant="spec", line=line, listing=listing)
    return text, name or str(path)


def _not_a_statement(text: str) -> int | None:
    """The number of the first line of `text` that is neither blank nor a
    comment, when it does not start as a statement can (with a directive, or a
    misspelling of one): such text is not a spec (`/etc/passwd`, a YAML or
    Markdown file), and its lines are not quoted back in diagnostics."""
    for number, line in enumerate(without_bom(text).split("\n"), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word = re.match(r"[A-Za-z_][A-Za-z_0-9]*(?![A-Za-z_0-9.:])", line)
        if word is not None and (
            word.group() in DIRECTIVES or did_you_mean(word.group(), DIRECTIVES) is not None
        ):
            return None
        return number
    return None


def is_model_file(path: str) -> bool:
    try:
        # Only a regular file is opened: opening a FIFO would wait for a writer.
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            return looks_like_model_file(f.read(9))
    except (OSError, ValueError):
        return False


def parse_value(text: str, name: str) -> Any:
    """A `--set NAME=VALUE` value: a constant expression (`32`, `1e-3`, `"relu"`)."""
    try:
        expr = parse_expr(text, f"--set {name}")
    except SpecError as e:
        raise UsageError(e.diagnostics) from None
    try:
        return evaluate(expr, {})
    except EvalError as e:
        d = e.diagnostic
        if d.code != "E204":  # a limit: `--set x=9**9**9`
            raise UsageError(
                replace(d, message=f"`--set {name}`: {d.message}", span=None)
            ) from None
        # A bare word is a string (`--set act=gelu` means the function `gelu`
        # through the evaluator; anything else stays text).
        if isinstance(expr, A.Name):
            return expr.id
        raise UsageError(report("E412", name=name, text=text)) from None


def load_params(sets: tuple[str, ...] = (), params_file: str | None = None) -> dict[str, Any]:
    """`let` overrides from a YAML file (the form sweep tools write), then from
    `--set NAME=VALUE` items, which win."""
    values: dict[str, Any] = {}
    if params_file:
        import yaml

        refuse = partial(UsageError.of, file=params_file, params_file=params_file)
        try:
            loaded = yaml.safe_load(Path(params_file).read_text())
        except FileNotFoundError:
            raise refuse("E411") from None
        except yaml.YAMLError as e:
            raise refuse("E406", splitlines=str(e).splitlines()[0]) from None
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
            raise refuse("E406", variant="map_let")
        for k, v in loaded.items():
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise refuse("E406", variant="number_string", k=k)
        values.update(loaded)
    for item in sets:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(report("E407", item=item))
        values[name.strip()] = parse_value(text.strip(), name.strip())
    return values
