"""Where a spec and its values come from: a spec file or text, `--set`
values and `--params` YAML files. No JAX, no compiler."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from . import _ast as A
from . import _limits as L
from ._diagnostics import Diagnostic
from ._errors import SpecError, UsageError
from ._expr import EvalError, evaluate
from ._parse import parse_expr


def is_spec_path(spec: Any) -> bool:
    """Is `spec` a path (rather than the text of a spec)?

    A path object is; so is a string of one line that names a file, ends in
    `.eqx`, or looks like a path (no spaces, a `/` or `\\`, or a file
    extension). A statement always has a space after its first word, so no
    spec text looks like that; and a path that does not exist is reported as
    a missing file, not parsed as a spec.
    """
    if isinstance(spec, os.PathLike):
        return True
    if not isinstance(spec, str) or "\n" in spec or not spec.strip():
        return False
    if spec.endswith(".eqx") or _looks_like_path(spec):
        return True
    try:
        return os.path.isfile(spec)
    except (OSError, ValueError):  # a name the system cannot take
        return False


def _looks_like_path(text: str) -> bool:
    if any(c.isspace() for c in text) or text.startswith("#"):
        return False
    return (
        "/" in text or "\\" in text or re.search(r"\.[A-Za-z][A-Za-z0-9]{0,5}$", text) is not None
    )


def parse_seed(text: str | None, option: str = "--seed") -> int | None:
    """A `--seed` value: a whole number from 0 to 2**64 - 1, in decimal digits."""
    if text is None:
        return None
    digits = text.strip()
    if re.fullmatch(r"[0-9]{1,20}", digits) and int(digits) <= L.MAX_SEED:
        return int(digits)
    raise UsageError(
        Diagnostic(
            "E430",
            f"`{option} {text}` is not a whole number from 0 to 2**64 - 1",
            help=f"write it in decimal digits, e.g. `{option} 0`",
        )
    )


def looks_like_model_file(data: bytes) -> bool:
    """Do these first bytes start a safetensors file (a length, then `{`)?"""
    if len(data) < 9:
        return False
    size = int.from_bytes(data[:8], "little")
    return 0 < size < (1 << 40) and data[8:9] == b"{"


def read_spec(spec: str | os.PathLike, name: str | None = None) -> tuple[str, str]:
    """(text, name) of a spec given as a path or as text."""
    if not is_spec_path(spec):
        return str(spec), name or "<spec>"
    path = Path(spec)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            Diagnostic(
                "E401",
                f"spec file `{path}` does not exist",
                file=str(path),
                help="this argument is read as the path of a spec file"
                + ("" if isinstance(spec, os.PathLike) else "; spec text has a line break"),
            )
        ) from None
    except IsADirectoryError:
        raise UsageError(
            Diagnostic("E401", f"`{path}` is a folder, not a spec file", file=str(path))
        ) from None
    except OSError as e:
        raise UsageError(
            Diagnostic("E401", f"cannot read `{path}`: {e.strerror}", file=str(path))
        ) from None
    if looks_like_model_file(data[:9]):
        raise UsageError(
            Diagnostic(
                "E402",
                f"`{path}` is a model file, not a spec",
                file=str(path),
                help="the spec comes first: `eqxform apply SPEC MODEL -o OUT`",
            )
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(
            Diagnostic("E402", f"`{path}` is not a text file", file=str(path))
        ) from None
    return text, name or str(path)


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
        if e.code is not None:  # a limit: `--set x=9**9**9`
            raise UsageError(
                Diagnostic(e.code, f"`--set {name}`: {e.message}", help=e.help)
            ) from None
        # A bare word is a string (`--set act=gelu` means the function `gelu`
        # through the evaluator; anything else stays text).
        if isinstance(expr, A.Name):
            return expr.id
        raise UsageError(
            Diagnostic(
                "E412",
                f"`--set {name}={text}` is not a constant",
                help="give a number, a string, `true`/`false` or a list, e.g. `--set width=128`",
            )
        ) from None


def load_params(sets: tuple[str, ...] = (), params_file: str | None = None) -> dict[str, Any]:
    """`let` overrides from a YAML file (the form sweep tools write), then from
    `--set NAME=VALUE` items, which win."""
    values: dict[str, Any] = {}
    if params_file:
        import yaml

        try:
            loaded = yaml.safe_load(Path(params_file).read_text())
        except FileNotFoundError:
            raise UsageError(
                Diagnostic("E411", f"params file `{params_file}` does not exist", file=params_file)
            ) from None
        except yaml.YAMLError as e:
            raise UsageError(
                Diagnostic(
                    "E406",
                    f"`{params_file}` is not valid YAML: {str(e).splitlines()[0]}",
                    file=params_file,
                )
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
            raise UsageError(
                Diagnostic(
                    "E406",
                    f"`{params_file}` must map `let` names to values",
                    file=params_file,
                    help="e.g. `width: 128`",
                )
            )
        for k, v in loaded.items():
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise UsageError(
                    Diagnostic(
                        "E406",
                        f"`{k}` in `{params_file}` must be a number, a string or a boolean",
                        file=params_file,
                    )
                )
            values[k] = v
    for item in sets:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(
                Diagnostic(
                    "E407", f"`--set {item}` is not NAME=VALUE", help="e.g. `--set width=128`"
                )
            )
        values[name.strip()] = parse_value(text.strip(), name.strip())
    return values
