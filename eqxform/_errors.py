"""The exceptions eqxform raises. Every one carries its diagnostics."""

from __future__ import annotations

from collections.abc import Sequence

from ._diagnostics import Diagnostic, render_all, report


class EqxformError(Exception):
    """Base class of every error eqxform raises on bad input.

    **Attributes:**

    - `diagnostics`: the diagnostics, all of them, each with a code, a place and
      (where one helps) a `help:` line.
    """

    exit_code = 1

    def __init__(self, diagnostics: Sequence[Diagnostic] | Diagnostic | str):
        if isinstance(diagnostics, str):
            diagnostics = [Diagnostic("E000", diagnostics)]
        elif isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = tuple(diagnostics)
        super().__init__(render_all(self.diagnostics))

    @classmethod
    def of(cls, code: str, /, **fields):
        """The error of diagnostic `code`, its message and help filled with
        `fields` (`UsageError.of("E409", output="model.eqx")`): how a tool
        built on eqxform (its command line is one) reports a problem in
        eqxform's words. `variant=`, `help=`, `notes=` as the code's record
        allows; a field missing or misnamed is a `TypeError`."""
        return cls(report(code, **fields))

    def render(self) -> str:
        """Every diagnostic in its long form, then how many errors there
        are: what the command line prints for this error."""
        return render_all(self.diagnostics)


class SpecError(EqxformError):
    """A spec is malformed, or does not fit the model it is applied to."""


class ModelFileError(EqxformError):
    """A model file cannot be read, or does not match its recipe."""


class UsageError(EqxformError):
    """An argument of a call or of the command line is wrong (exit code 2)."""

    exit_code = 2


class EqxformWarning(UserWarning):
    """A warning eqxform gives while it applies a spec (its diagnostic's
    severity is `warning`): the work is done, but may not be what you meant."""

    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic
        super().__init__(diagnostic.render())


def first_line(error: BaseException) -> str:
    """The first line of what `error` says (its type's name when it says
    nothing): how a library's or a user's own exception is quoted in a
    diagnostic."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
