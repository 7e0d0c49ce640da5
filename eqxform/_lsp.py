"""The language server: what an editor shows while a spec is being written.

It speaks the Language Server Protocol over stdio (`eqxform lsp`, or
`python -m eqxform._lsp`), on pygls, and offers:

- diagnostics as the text changes: at once those that need no model (parse
  and check); then, when the spec has a `model` and no such errors, those of
  its plan on that model (`Program.plan`), computed in the background;
- hover: on a selector, what it matches in the spec's model (paths, shapes,
  dtypes, from the plan of that line); on any other word, one line of
  documentation (`_docs`);
- completion of directives, actions, initialisers, wrappers, optimisers,
  dtypes, constructor arguments, `let` names, and selector steps (the model's
  field and type names);
- go to the definition of a `let` name;
- formatting, with `_format.format_spec`.

Everything is computed by eqxform's own modules; this one only translates
between them and the protocol.

The model-aware half is the slow one: a plan runs every pass under
`eval_shape`, which for a model of a thousand leaves is tens of milliseconds a
rule. So it runs on a worker thread, once the text is checked, and never twice
for the same thing: the model's skeleton is built once per `model` line, and
the plan is `Program.plan`'s own planner (`Planner`), which keeps each line's
plan under a key of everything above it, so that an edit replans only the
lines from the edit down. Work for a version of the text that has since
changed stops at the next line.

The model-free half is checked off the event loop too, on its own worker, and
only in the text's latest version: a burst of edits (a paste, a macro, an
editor catching up) is checked once, after it, and a request (hover,
completion) starts the check of the latest text at once and answers from it.
A check that an edit overtakes stops after its parse (whose lines the next
check reuses), and its result is dropped. So requests
and `exit` are answered while a long text is parsed, and the process ends on
`exit` without waiting for its workers: nothing they compute is wanted then.

The messages are read by `_lsp_stream.Framer`, so that a badly framed one
costs only itself; a request whose parameters do not fit the protocol (a
negative position) gets an error response (-32602).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import _ast as A
from . import _docs as D
from . import _names as N
from . import _registry as R
from ._check import Checker
from ._diagnostics import Diagnostic, plural, position, report
from ._errors import EqxformError, SpecError, UsageError

try:
    from lsprotocol import types as T
    from pygls.lsp.server import LanguageServer
except ImportError as e:
    raise UsageError(report("E602")) from e

from ._format import format_spec
from ._parse import SpecToken, parse, parse_collect, tokens

logger = logging.getLogger(__name__)

# How long the text must stay unchanged, once checked, before the model-aware
# diagnostics are computed: none, as the check already waits for the edits to
# pause (`CHECK_DEBOUNCE_S`), and the plan of an edit is that of the lines
# from the edit down, stopped at the next line when the text changes again.
DEBOUNCE_S = 0.0
# How long it must stay unchanged before it is parsed and checked (the
# model-free diagnostics): long enough that a burst of edits sent together is
# checked once, short enough not to be seen. A request skips the wait.
CHECK_DEBOUNCE_S = 0.05

# Hover shows at most this many matches per action.
MAX_HOVER_MATCHES = 20

# Lark names a keyword's token by the keyword (`"model"`: `MODEL`).
_DIRECTIVE_TOKENS = {d.upper(): d for d in N.DIRECTIVES}
_KEYWORD_TOKENS = {
    k.upper(): k
    for k in ("if", "else", "expect", "and", "or", "not", "over", "with", "vary", "grid")
}
_WORDS = {"NAME", *_DIRECTIVE_TOKENS, *_KEYWORD_TOKENS}
_SEVERITY = {
    "error": T.DiagnosticSeverity.Error,
    "warning": T.DiagnosticSeverity.Warning,
    "note": T.DiagnosticSeverity.Information,
}


# ---- the model-aware half ---------------------------------------------------


class _Stale(Exception):
    """The text changed while it was being analysed; the result is not wanted."""


@dataclass(frozen=True)
class ModelView:
    """What the model-aware analysis of one version of a spec found.

    **Attributes:**

    - `diagnostics`: those of compiling the spec and planning it on its model.
    - `steps`: the plan's steps (`PlanStep`) by line.
    - `skeleton`: the model's structure before any rule, when it could be built.
    - `chunks`: the plan line by line (`PlannedRule`), with the structure
      after each line.
    - `model_line`: the line of the `model` directive.
    """

    diagnostics: tuple[Diagnostic, ...] = ()
    steps: dict[int, list] = field(default_factory=dict)
    skeleton: Any = None
    chunks: tuple = ()
    model_line: int | None = None

    def struct_before(self, line: int, valid_below: float = math.inf) -> Any:
        """The model's structure as the rule on `line` sees it, if still known
        for a text that agrees with this view's above `valid_below`."""
        if self.model_line is None or self.model_line >= valid_below:
            return None
        struct = self.skeleton
        for chunk in self.chunks:
            if chunk.line >= line or chunk.line >= valid_below:
                break
            struct = chunk.struct
        return struct


class Analyzer:
    """Compiles a spec and plans it on its model, reusing all it can.

    The skeleton of a model (its structure, no arrays) is cached by the
    `model` call as evaluated, and each document's plan by line, so that an
    edit recomputes only what it can have changed.
    """

    MAX_SKELETONS = 8

    def __init__(self):
        self._skeletons: dict[tuple, tuple[Any, int]] = {}
        self._planners: dict[str, Any] = {}  # each document's `Planner`
        self._lock = threading.Lock()

    def forget(self, uri: str) -> None:
        self._planners.pop(uri, None)

    def analyse(
        self,
        uri: str,
        text: str,
        name: str,
        is_current: Callable[[], bool] = lambda: True,
        checked: tuple | None = None,
    ) -> ModelView:
        """The model-aware diagnostics and plan of `text`, which should have no
        model-free errors (else the view holds `compile`'s diagnostics alone).

        **Arguments:**

        - `uri`: the document, whose earlier plans are reused.
        - `text`: the spec.
        - `name`: the name diagnostics are reported under.
        - `is_current`: asked between lines; when it returns `False` the work
          stops with `_Stale`.
        - `checked`: `(spec, checker, diagnostics)` of `text`, when it has been
          parsed and checked already (else it is, here).

        **Returns:** a `ModelView`.
        """
        from ._plan import Planner

        def between() -> None:
            if not is_current():
                raise _Stale

        with self._lock:
            try:
                program = _compile(text, name, checked)
            except SpecError as e:
                return ModelView(tuple(e.diagnostics))
            if program.model_call is None:
                return ModelView()
            line = program.model_call.span.line
            skeleton, errors = self._skeleton(program)
            if skeleton is None:
                return ModelView(tuple(errors), model_line=line)
            # The model is the `model` line's: an ensemble's members are drawn
            # by its constructor, as `eqxform plan` draws them. The checker's
            # warnings are the model-free half's.
            planner = self._planners.setdefault(uri, Planner())
            plan = planner.plan(
                dataclasses.replace(program, warnings=()),
                skeleton,
                base=program.base_recipe(None).build,
                between=between,
            )
        steps: dict[int, list] = {}
        for step in plan.steps:
            steps.setdefault(step.line, []).append(step)
        return ModelView(plan.diagnostics, steps, skeleton, plan.rules, line)

    def skeleton_of(self, spec: A.Spec) -> ModelView:
        """The skeleton of a spec's model, from its `model` and `let` lines alone:
        what completion needs while the rest of the text has errors."""
        kept = [s for s in spec.statements if isinstance(s, (A.ModelStmt, A.LetStmt))]
        models = [s for s in kept if isinstance(s, A.ModelStmt)]
        if len(models) != 1:
            return ModelView()
        source = spec.source
        text = "".join(source.line(s.span.line) + "\n" for s in kept)
        with self._lock:
            try:
                program = _compile(text, source.name)
                skeleton = self._skeleton(program)[0]
            except SpecError:
                return ModelView()
        return ModelView(skeleton=skeleton, model_line=models[0].span.line)

    def _skeleton(self, program) -> tuple[Any, list[Diagnostic]]:
        """The model's structure, built once per `model` call (as evaluated), or
        why it cannot be built."""
        import equinox as eqx

        from ._hashing import seed_key

        line = program.model_call.span.line
        try:
            constructor = program.base_constructor()
        except Exception:  # an argument that does not evaluate: `build_model` says why
            constructor = program.source.line(line)
        key = (constructor, program.allow)
        cached = self._skeletons.get(key)
        if cached is None:
            try:
                value: Any = eqx.filter_eval_shape(program.construct, seed_key(program.seed))
            except SpecError as e:
                value = e
            while len(self._skeletons) >= self.MAX_SKELETONS:
                self._skeletons.pop(next(iter(self._skeletons)))
            cached = self._skeletons[key] = (value, line)
        value, built_at = cached
        if isinstance(value, SpecError):
            # The same call may sit on another line than when it was built.
            moved = [_moved(d, line - built_at, program.source) for d in value.diagnostics]
            return None, moved
        return value, []


def _compile(text: str, name: str, checked: tuple | None = None):
    """`compile` of a text (never read as a file name), or of its parse and
    check, `checked` (as the server has them)."""
    from ._compile import compile_checked, compile_collect

    if checked is not None:
        program, diagnostics = compile_checked(*checked)
    else:
        program, diagnostics = compile_collect(text, name)
    if diagnostics:
        raise SpecError(diagnostics)
    return program


def _moved(d: Diagnostic, lines: int, source: A.Source) -> Diagnostic:
    span = d.span
    if span is not None and lines:
        span = A.Span(span.line + lines, span.column, span.end_line + lines, span.end_column)
    return dataclasses.replace(d, span=span, source=source)


# ---- documents ----------------------------------------------------------------


@dataclass
class _Doc:
    uri: str
    version: int
    text: str
    spec: A.Spec
    local: list[Diagnostic]  # parse and check: no model needed
    # The last plan of the document, and the model's skeleton.
    view: ModelView = field(default_factory=ModelView)
    skeleton: ModelView = field(default_factory=ModelView)
    # Each was computed for a text that agrees with this one on every line
    # above these (1-based).
    valid_below: float = math.inf
    skeleton_valid_below: float = math.inf
    pending: asyncio.Task | None = None
    checker: Any = None  # the `Checker` that ran on `spec`, when there is one

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    @property
    def has_model(self) -> bool:
        return any(isinstance(s, A.ModelStmt) for s in self.spec.statements)

    def lets(self, before: int | None = None) -> dict[str, A.LetStmt]:
        return {
            s.name: s
            for s in self.spec.statements
            if isinstance(s, A.LetStmt) and (before is None or s.span.line < before)
        }

    def steps(self, line: int) -> list | None:
        return self.view.steps.get(line) if line < self.valid_below else None

    @functools.cached_property
    def index(self) -> dict:
        """What each name of the parsed text is, by its start: `(role, name,
        detail)`, and the spans of its selectors."""
        return _index(self.spec)


@dataclass(eq=False)
class _Latest:
    """A document's latest text, which its `_Doc` may not have caught up with."""

    version: int
    text: str
    changed: float  # when (the event loop's clock)
    task: asyncio.Task | None = None  # the check that catches up
    urgent: asyncio.Event = field(default_factory=asyncio.Event)  # a request waits


def _first_difference(old: list[str], new: list[str]) -> int:
    """The 1-based number of the first line that differs."""
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            return i + 1
    return min(len(old), len(new)) + (0 if len(old) == len(new) else 1)


def _index(spec: A.Spec) -> dict:
    names: dict[tuple[int, int], tuple[str, str, Any]] = {}
    selectors: list[tuple[A.Span, int]] = []

    def at(span: A.Span, role: str, name: str, detail: Any = None):
        names[(span.line, span.column)] = (role, name, detail)

    def named(arg: A.Expr | None, role: str):
        if isinstance(arg, A.Name):
            at(arg.span, role, arg.id)
        elif isinstance(arg, A.Call):
            at(arg.callee_span, role, arg.callee)

    for stmt in spec.statements:
        if isinstance(stmt, A.Rule):
            selectors.append((stmt.selector.span, stmt.span.line))
            for action in stmt.actions:
                at(action.name_span, "action", action.name)
                record = N.ACTIONS.get(action.name)
                if record is not None and record.arg in _SIGNED:
                    named(action.arg, record.arg)  # `init normal`: an initialiser
        elif isinstance(stmt, A.MapStmt):
            for action in stmt.actions:
                at(action.name_span, "map_action", action.name)
        elif isinstance(stmt, (A.StackStmt, A.UnstackStmt)):
            selectors.append((stmt.selector.span, stmt.span.line))
            if isinstance(stmt, A.StackStmt):
                at(stmt.mode_span, "keyword", stmt.mode)
                for option in stmt.options:
                    if option.name != "count":
                        at(option.span, "keyword", option.name)
        elif isinstance(stmt, A.LetStmt):
            at(stmt.name_span, "let", stmt.name, stmt)
        elif isinstance(stmt, A.OptimizerStmt):
            named(stmt.value, "optimizer")
        for node in A.nodes(stmt):
            if isinstance(node, A.Call):
                key = (node.callee_span.line, node.callee_span.column)
                role = "function" if node.callee in N.EXPR_FUNCTIONS else "constructor"
                names.setdefault(key, (role, node.callee, None))
                for arg in node.args:
                    if arg.name_span is not None:
                        at(arg.name_span, "argument", arg.name, names[key])
            elif isinstance(node, A.Name):
                names.setdefault((node.span.line, node.span.column), ("name", node.id, None))
    return {"names": names, "selectors": selectors}


# ---- the server -------------------------------------------------------------


class EqxformServer(LanguageServer):
    """The eqxform language server; `main()` runs it over stdio."""

    def __init__(self):
        from importlib.metadata import PackageNotFoundError, version

        try:
            own = version("eqxform")
        except PackageNotFoundError:  # run from a checkout that is not installed
            own = "unknown"
        super().__init__("eqxform", own, text_document_sync_kind=T.TextDocumentSyncKind.Incremental)
        # Each document as last checked, and its latest text (which may be newer).
        self.docs: dict[str, _Doc] = {}
        self.latest: dict[str, _Latest] = {}
        self.parses: dict[str, dict] = {}  # each document's parsed lines
        self.analyzer = Analyzer()
        # One worker: JAX work for a document waits for the work before it,
        # which stops early once it is stale.
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eqxform-plan")
        # And one for parsing and checking: never behind a plan.
        self.checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eqxform-check")
        self._walks: dict[int, tuple[Any, list]] = {}
        self.stopping = False
        self.shut_down = False

    # ---- the stream

    def serve(self, stdin, stdout) -> int:
        """Serve the protocol over byte streams (`stdin` buffered, with
        `read1`) until `exit` or the end of the input; the exit status (0
        after `shutdown`, else 1).

        The input is read on a thread of its own and cut into messages by
        `Framer`, which recovers from bad framing; each mistake is reported on
        stderr (E603) and costs only its own message.
        """
        from pygls.io_ import StdoutWriter

        self.protocol.set_writer(StdoutWriter(stdout))
        try:
            asyncio.run(self._serve(stdin))
        except SystemExit as e:  # how pygls ends on `exit`
            return e.code if isinstance(e.code, int) else 1
        except BrokenPipeError:
            logger.error("the editor closed the server's output; the server stops")
            return 1
        return 0 if self.shut_down else 1

    async def _serve(self, stdin) -> None:
        from ._lsp_stream import Framer

        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes] = asyncio.Queue()

        def pump() -> None:
            # Blocking reads, each handing whatever arrived to the event loop.
            while True:
                try:
                    data = stdin.read1(1 << 16)
                except (OSError, ValueError):
                    data = b""
                try:
                    loop.call_soon_threadsafe(chunks.put_nowait, data)
                except RuntimeError:  # the loop has closed: the server is ending
                    return
                if not data:
                    return

        threading.Thread(target=pump, name="eqxform-stdin", daemon=True).start()
        framer = Framer()
        while True:
            data = await chunks.get()
            for frame in framer.feed(data) if data else framer.close():
                if frame.problem is not None:
                    _report(report("E603", problem=frame.problem))
                if frame.body is not None:
                    self.receive(frame.body)
            if not data:
                return

    def receive(self, body: bytes) -> None:
        """Handle one message's body: a JSON-RPC message, or an error response
        that says why it is none (the JSON-RPC codes: -32700 for text that is
        not JSON, -32600 for JSON that is no message, -32602 for parameters
        that do not fit the method)."""
        from pygls.exceptions import JsonRpcException

        try:
            data = json.loads(body)
        except ValueError as e:
            self.refuse(None, -32700, report("E603", variant="not_json", error=e))
            return
        if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
            ident = data.get("id") if isinstance(data, dict) else None
            ident = ident if isinstance(ident, (int, str)) else None
            self.refuse(ident, -32600, report("E603", variant="not_rpc"))
            return
        try:
            message = self.protocol.structure_message(data)
        except JsonRpcException as e:
            method = data.get("method")
            where = f" of `{method}`" if isinstance(method, str) else ""
            problem = report("E604", where=where, why=_invalid(e))
            ident = data.get("id")
            if isinstance(method, str) and isinstance(ident, (int, str)):
                self.refuse(ident, e.code, problem)  # a request: it is answered
            else:
                _report(problem)
            return
        try:
            self.protocol.handle_message(message)
        except BrokenPipeError:
            raise  # no editor to answer: `serve` stops
        except Exception:  # a bug in a handler must not stop the server
            logger.exception("the message could not be handled")

    def refuse(self, ident: int | str | None, code: int, problem: Diagnostic) -> None:
        """Answer a message with an error response, and say why on stderr."""
        _report(problem)
        message = f"{problem.message} ({problem.code})"
        self.protocol._send_response(ident, error=T.ResponseError(code=code, message=message))

    # ---- positions

    def to_client(self, lines: list[str], line: int, column: int) -> T.Position:
        """A 1-based line and column (in characters) as an LSP position."""
        line = min(max(line, 1), len(lines))
        column = min(max(column, 1), len(lines[line - 1]) + 1)
        codec = self.workspace.position_codec
        return codec.position_to_client_units(lines, T.Position(line - 1, column - 1))

    def span_range(self, lines: list[str], span: A.Span | SpecToken | None) -> T.Range:
        if span is None:
            return T.Range(self.to_client(lines, 1, 1), self.to_client(lines, 1, 1))
        return T.Range(
            self.to_client(lines, span.line, span.column),
            self.to_client(lines, span.end_line, span.end_column),
        )

    def from_client(self, doc: _Doc, position: T.Position) -> tuple[int, int]:
        """An LSP position as a 1-based line and 0-based column in characters."""
        lines = doc.lines
        if position.line >= len(lines):
            return len(lines), len(lines[-1])
        server = self.workspace.position_codec.position_from_client_units(lines, position)
        return server.line + 1, server.character

    # ---- diagnostics

    def update(self, uri: str, version: int, text: str) -> None:
        """Note a document's new text: it is checked once the edits pause (at
        once if a request needs it), in whatever version is the latest then."""
        loop = asyncio.get_running_loop()
        latest = self.latest.get(uri)
        if latest is None:
            latest = self.latest[uri] = _Latest(version, text, loop.time())
        latest.version, latest.text, latest.changed = version, text, loop.time()
        doc = self.docs.get(uri)
        if doc is not None and doc.pending is not None:
            doc.pending.cancel()  # its plan stops at its next line
        if latest.task is None or latest.task.done():
            latest.task = asyncio.ensure_future(self._check_latest(uri, latest))

    async def current(self, uri: str) -> _Doc | None:
        """The document checked in its latest text: what a request answers
        from. The check starts at once (no pause for more edits)."""
        latest = self.latest.get(uri)
        doc = self.docs.get(uri)
        if latest is None or self.stopping or (doc is not None and doc.version == latest.version):
            return doc
        latest.urgent.set()
        if latest.task is None or latest.task.done():
            latest.task = asyncio.ensure_future(self._check_latest(uri, latest))
        # Shielded: a request that is cancelled does not cancel the check.
        await asyncio.shield(latest.task)
        return self.docs.get(uri)

    def _failed(self, what: str, error: Exception) -> None:
        """A bug in eqxform's own work must not take the editor down: it is
        logged, and shown in the editor's log."""
        logger.exception("%s failed", what)
        self.window_log_message(
            T.LogMessageParams(T.MessageType.Error, f"eqxform: {what} failed: {error!r}")
        )

    async def _check_latest(self, uri: str, latest: _Latest) -> None:
        """Check the document's latest text, after the edits pause; a text
        overtaken by an edit while it is checked is dropped, and the newer
        one checked instead."""
        loop = asyncio.get_running_loop()
        while not self.stopping and self.latest.get(uri) is latest:
            doc = self.docs.get(uri)
            if doc is not None and doc.version == latest.version:
                return
            wait = latest.changed + CHECK_DEBOUNCE_S - loop.time()
            if wait > 0 and not latest.urgent.is_set():
                with contextlib.suppress(TimeoutError):  # the pause, unless a request comes
                    await asyncio.wait_for(latest.urgent.wait(), wait)
                continue
            version, text = latest.version, latest.text
            try:
                spec, local, checker = await loop.run_in_executor(
                    self.checker, self._check_text, uri, text, lambda: latest.version == version
                )
            except _Stale:
                continue
            except Exception as e:  # a bug in the checker must not take the editor down
                self._failed("the check", e)
                return
            if latest.version != version or self.latest.get(uri) is not latest:
                continue
            latest.urgent.clear()
            self._install(uri, version, text, spec, local, checker)
            return

    def _check_text(self, uri: str, text: str, is_current: Callable[[], bool]):
        """Parse and check `text` (on the checker's thread). As `eqxform check`
        does, the lines that parse are checked even when others do not; the
        text is parsed line by line through the document's cache, so an edited
        line costs the parse of that line."""
        spec, local = parse_collect(text, _name(uri), self.parses.setdefault(uri, {}))
        if not is_current():
            raise _Stale  # the parse is kept (in the cache); the check is not wanted
        checker = Checker(spec)
        return spec, local + checker.run(), checker

    def _install(
        self, uri: str, version: int, text: str, spec: A.Spec, local: list, checker: Any = None
    ) -> _Doc:
        """Make a checked text the document's, publish its diagnostics, and
        plan it on its model (which compiles it with the same `checker`)."""
        old = self.docs.get(uri)
        doc = _Doc(uri, version, text, spec, list(local), checker=checker)
        if old is not None:
            doc.view, doc.skeleton = old.view, old.skeleton
            first = _first_difference(old.lines, doc.lines)
            doc.valid_below = min(old.valid_below, first)
            doc.skeleton_valid_below = min(old.skeleton_valid_below, first)
            if old.pending is not None:
                old.pending.cancel()
        self.docs[uri] = doc
        self.publish(doc)
        doc.pending = asyncio.ensure_future(self._analyse_later(uri, version))
        return doc

    def close(self, uri: str) -> None:
        latest = self.latest.pop(uri, None)
        if latest is not None and latest.task is not None:
            latest.task.cancel()
        doc = self.docs.pop(uri, None)
        self.parses.pop(uri, None)
        if doc is not None and doc.pending is not None:
            doc.pending.cancel()
        self.analyzer.forget(uri)

    def publish(self, doc: _Doc) -> None:
        local = doc.local
        if doc.has_model:
            # Checked against the spec's model: a type name it has is no news,
            # one it lacks is its E104.
            local = [d for d in local if d.code != "I104"]
        # The plan's diagnostics, of the lines above the first that changed since.
        planned = [
            d for d in doc.view.diagnostics if d.span is None or d.span.line < doc.valid_below
        ]
        found = sorted(local + planned, key=position)
        lines = doc.lines
        diagnostics = [self.lsp_diagnostic(d, lines) for d in found]
        self.text_document_publish_diagnostics(
            T.PublishDiagnosticsParams(doc.uri, diagnostics, version=doc.version)
        )

    def lsp_diagnostic(self, d: Diagnostic, lines: list[str]) -> T.Diagnostic:
        message = d.message
        for note in d.notes:
            message += f"\nnote: {note}"
        if d.help:
            message += f"\nhelp: {d.help}"
        return T.Diagnostic(
            range=self.span_range(lines, d.span),
            message=message,
            severity=_SEVERITY.get(d.severity, T.DiagnosticSeverity.Error),
            code=d.code,
            source="eqxform",
        )

    def stop_work(self) -> None:
        """Start no more work, and let the plan in flight stop at its next line.
        (On `exit` the process does not wait for its workers: `serve`.)"""
        self.stopping = True
        for doc in self.docs.values():
            if doc.pending is not None:
                doc.pending.cancel()
        for latest in self.latest.values():
            if latest.task is not None:
                latest.task.cancel()
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.checker.shutdown(wait=False, cancel_futures=True)

    def is_current(self, uri: str, version: int) -> bool:
        latest = self.latest.get(uri)
        return not self.stopping and latest is not None and latest.version == version

    async def _analyse_later(self, uri: str, version: int) -> None:
        await asyncio.sleep(DEBOUNCE_S)
        doc = self.docs.get(uri)
        if doc is None or not self.is_current(uri, version):
            return
        loop = asyncio.get_running_loop()
        errors = any(d.severity == "error" for d in doc.local)
        try:
            if errors:
                # No plan for a text with errors; the plan above them is kept,
                # and the model's skeleton is built for completion.
                if doc.skeleton.struct_before(1, doc.skeleton_valid_below) is None:
                    skeleton = await loop.run_in_executor(
                        self.worker, self.analyzer.skeleton_of, doc.spec
                    )
                    if self.is_current(uri, version):
                        doc.skeleton, doc.skeleton_valid_below = skeleton, math.inf
                return
            view = await loop.run_in_executor(
                self.worker,
                self.analyzer.analyse,
                uri,
                doc.text,
                _name(uri),
                lambda: self.is_current(uri, version),
                None if doc.checker is None else (doc.spec, doc.checker, list(doc.local)),
            )
        except _Stale:
            return
        except Exception as e:  # a bug in a pass must not take the editor down
            self._failed("the plan", e)
            return
        doc = self.docs.get(uri)
        if doc is None or doc.version != version:
            return
        doc.view, doc.valid_below = view, math.inf
        if view.skeleton is not None or not doc.has_model:
            doc.skeleton, doc.skeleton_valid_below = view, math.inf
        self.publish(doc)

    # ---- hover

    def hover(self, doc: _Doc, line: int, column: int) -> T.Hover | None:
        token = _token_at(doc.lines[line - 1], line, column)
        if token is None:
            return None
        for span, stmt_line in doc.index["selectors"]:
            if span.line == line and span.column <= token.column < span.end_column:
                text = self.selector_hover(doc, stmt_line, span)
                return _markdown(text, self.span_range(doc.lines, span))
        text = _word_doc(doc, token)
        # A token is placed as a span is (its line is the hover's).
        return None if text is None else _markdown(text, self.span_range(doc.lines, token))

    def selector_hover(self, doc: _Doc, line: int, span: A.Span) -> str:
        selector = doc.lines[line - 1][span.column - 1 : span.end_column - 1]
        if not doc.has_model:
            return (
                f"`{selector}`\n\nThe spec names no `model`: add one (`model MLP(...)`) "
                "to see what this selector matches."
            )
        steps = doc.steps(line)
        if steps is None:
            if any(d.severity == "error" for d in doc.local):
                return f"`{selector}`\n\nFix the errors to see what this selector matches."
            view = doc.view
            if view.model_line is not None and line < doc.valid_below:
                # The plan of this text is in, and has no step for this line.
                if view.skeleton is None:
                    return f"`{selector}`\n\nThe model (line {view.model_line}) cannot be built."
                problems = [d.message for d in view.diagnostics if d.span and d.span.line == line]
                if problems:
                    return f"`{selector}`\n\n" + "\n\n".join(problems)
            return f"`{selector}`\n\nMatching against the model…"
        parts = [f"`{selector}`"]
        for step in steps:
            count = len(step.matches)
            parts.append(f"**{step.action}**: {plural(count, 'match')}")
            if step.matches:
                rows = ["| path | before | after |", "|---|---|---|"]
                for m in step.matches[:MAX_HOVER_MATCHES]:
                    after = "" if m.after == m.before else m.after
                    rows.append(f"| `{m.path}` | `{m.before}` | {f'`{after}`' if after else ''} |")
                if count > MAX_HOVER_MATCHES:
                    rows.append(f"| … and {count - MAX_HOVER_MATCHES} more | | |")
                parts.append("\n".join(rows))
        return "\n\n".join(parts)

    # ---- definition

    def definition(self, doc: _Doc, line: int, column: int) -> T.Location | None:
        token = _token_at(doc.lines[line - 1], line, column)
        if token is None or token.type != "NAME":
            return None
        role = doc.index["names"].get((line, token.column))
        if role is None or role[0] not in ("name", "let"):
            return None
        let = doc.lets().get(token.text)
        return (
            None if let is None else T.Location(doc.uri, self.span_range(doc.lines, let.name_span))
        )

    # ---- completion

    def complete(self, doc: _Doc, line: int, column: int) -> list[T.CompletionItem]:
        before = doc.lines[line - 1][:column]
        found = [t for t in tokens(before) if t.type != "NEWLINE"]
        if found and found[-1].type in ("COMMENT", "ERROR", "STRING"):
            return []
        if found and found[-1].type in _WORDS and found[-1].end_column == column + 1:
            found.pop()  # the word being typed: the editor filters by it
        return _Completer(self, doc, line).items(found)

    def model_nodes(self, struct: Any) -> list:
        """Every node of a model's structure (cached: a walk is linear in leaves)."""
        from ._select import walk

        cached = self._walks.get(id(struct))
        if cached is None or cached[0] is not struct:
            if len(self._walks) > 16:
                self._walks.clear()
            cached = self._walks[id(struct)] = (struct, walk(struct))
        return cached[1]


def _report(problem: Diagnostic) -> None:
    """A diagnostic about the protocol, on stderr (where editors log it)."""
    print(problem.render(), file=sys.stderr, flush=True)


def _invalid(error: Exception) -> str:
    """What a structuring error found wrong: the innermost messages."""
    found: list[str] = []

    def leaves(e: BaseException) -> None:
        inner = getattr(e, "exceptions", None)
        if inner:
            for x in inner:
                leaves(x)
        elif e.__cause__ is not None:
            leaves(e.__cause__)
        else:
            found.append(str(e) or type(e).__name__)

    leaves(error.__cause__ if error.__cause__ is not None else error)
    return "; ".join(dict.fromkeys(found)) or str(error)


def _name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1] if "/" in uri else uri


def _markdown(text: str, where: T.Range) -> T.Hover:
    return T.Hover(T.MarkupContent(T.MarkupKind.Markdown, text), where)


def _token_at(line_text: str, line: int, column: int) -> SpecToken | None:
    """The token of `line_text` under (or just before) the 0-based `column`."""
    best = None
    for token in tokens(line_text):
        if token.type in ("NEWLINE", "COMMENT", "ERROR"):
            continue
        if token.column - 1 <= column < token.end_column - 1:
            best = token
            break
        if token.end_column - 1 == column:
            best = token  # the cursor just after a word still names it
    if best is None:
        return None
    return dataclasses.replace(best, line=line, end_line=line)


def _signature_doc(name: str, signature, summary: str | None, kind: str) -> str:
    head = _call_detail(name, signature)
    return f"```eqxform\n{head}\n```\n{kind}" + (f": {summary}" if summary else "")


# The kinds of word (an action's argument, or the optimiser) that name one of a
# registry's callables: its names, a name's signature, a name's line, and what
# such a word is; for completion, hover and argument names alike.
_SIGNED = {
    "initializer": (R.initializer_names, R.initializer_signature, D.INITIALIZERS, "initialiser"),
    "wrapper": (R.wrapper_names, R.wrapper_signature, D.WRAPPERS, "wrapper"),
    "optimizer": (lambda: N.OPTIMIZERS, N.OPTIMIZERS.get, D.OPTIMIZERS, "optax optimiser"),
}


def _word_doc(doc: _Doc, token: SpecToken) -> str | None:
    """One line on the word `token`, from its role in the parsed spec (or, on
    a line that does not parse, from the word alone)."""
    if token.type in _DIRECTIVE_TOKENS:
        text = doc.lines[token.line - 1]
        if token.column == len(text) - len(text.lstrip()) + 1:  # a directive starts its line
            return D.DIRECTIVES[_DIRECTIVE_TOKENS[token.type]]
    if token.type in _KEYWORD_TOKENS:
        return D.KEYWORDS[_KEYWORD_TOKENS[token.type]]
    if token.type != "NAME":
        return None
    word = token.text
    role, name, detail = doc.index["names"].get((token.line, token.column), ("", word, None))
    if role == "action":
        summary = D.ACTIONS.get(name)
        return f"`{name}`: {summary}" if summary else None
    if role == "map_action":
        summary = D.MAP_ACTIONS.get(name)
        return f"`{name}` (on a `map` line): {summary}" if summary else None
    if role in _SIGNED:
        _, signature_of, docs, kind = _SIGNED[role]
        signature = signature_of(name)
        if signature is not None:
            return _signature_doc(name, signature, docs.get(name), kind)
    if role == "function":
        return D.EXPR_FUNCTIONS.get(name)
    if role == "constructor":
        signature = R.constructor_signature(name)
        return _signature_doc(name, signature, None, "constructor") if signature else None
    if role == "argument":
        callee = detail[1] if detail else ""
        return f"argument `{name}` of `{callee}`"
    if role == "keyword":
        return D.KEYWORDS.get(name)
    if role == "let":
        return _let_doc(doc, detail)
    let = doc.lets().get(word)
    if let is not None and role == "name":
        return _let_doc(doc, let)
    for table in (D.CONTEXT, D.FUNCTIONS, D.KEYWORDS, D.EXPR_FUNCTIONS):
        if word in table:
            return table[word]
    if word in N.DTYPES:
        return D.DTYPE.format(name=word)
    if role == "":
        # A line that does not parse: go by the word.
        for table in (D.ACTIONS, D.INITIALIZERS, D.WRAPPERS, D.OPTIMIZERS):
            if word in table:
                return f"`{word}`: {table[word]}"
    return None


def _let_doc(doc: _Doc, let: A.LetStmt) -> str:
    text = doc.lines[let.span.line - 1][let.span.column - 1 : let.span.end_column - 1]
    return f"```eqxform\n{text}\n```\ndefined on line {let.span.line}"


# ---- completion -------------------------------------------------------------

_K = T.CompletionItemKind


def _item(
    label: str, kind: T.CompletionItemKind, detail: str | None = None, **kw
) -> T.CompletionItem:
    return T.CompletionItem(label=label, kind=kind, detail=detail, **kw)


@dataclass
class _Completer:
    """What may come next, from the tokens before the cursor on its line."""

    server: EqxformServer
    doc: _Doc
    line: int

    def items(self, found: list[SpecToken]) -> list[T.CompletionItem]:
        if not found:
            return self.directives()
        head, rest = found[0].type, found[1:]
        if head == "WHERE":
            arrow = next((i for i, t in enumerate(rest) if t.type == "ARROW"), None)
            if arrow is not None:
                return self.actions_part(rest[arrow + 1 :])
            if any(t.type == "IF" for t in rest):
                return [] if rest[-1].type == "EXPECT" else self.expression(in_rule=True)
            if rest and rest[-1].type == "EXPECT":
                return []
            return self.selector(rest, after=["if", "expect", "->"])
        if head in ("STACK", "UNSTACK"):
            if not rest or rest[-1].type in ("DOT", "VBAR"):
                return self.selector(rest, after=[])
            if head == "UNSTACK":
                return []
            if not any(t.text in ("scan", "vmap") for t in rest):
                return self.selector(rest, after=["scan", "vmap"])
            return [_item(w, _K.Keyword, D.KEYWORDS[w]) for w in N.STACK_OPTIONS]
        if head == "MODEL":
            return self.call_or(rest, self.constructors, "constructor")
        if head == "OPTIMIZER":
            return self.call_or(rest, self.optimizers, "optimizer")
        if head == "LET":
            return self.expression() if any(t.type == "EQUAL" for t in rest) else []
        if head in ("SEED", "ENSEMBLE"):
            return self.expression()
        return []

    # -- the parts of a line

    def directives(self) -> list[T.CompletionItem]:
        return [_item(d, _K.Keyword, D.DIRECTIVES[d], insert_text=d + " ") for d in N.DIRECTIVES]

    def actions_part(self, rest: list[SpecToken]) -> list[T.CompletionItem]:
        opened, current = _brackets(rest)
        if opened:
            return self.in_brackets(rest, opened[-1], in_rule=True)
        if not current:
            return self.actions()
        if len(current) == 1:
            action = current[0].text
            kind = N.ACTIONS[action].arg if action in N.ACTIONS else None
            if kind in _SIGNED:
                return self.named(kind)
            if kind == "dtype":
                return [_item(d, _K.TypeParameter, D.DTYPE.format(name=d)) for d in N.DTYPES]
            if kind == "constructor":
                functions = [_item(f, _K.Function, D.FUNCTIONS.get(f)) for f in N.FUNCTIONS]
                return self.constructors() + functions
            if kind == "none":
                return []
        return self.expression(in_rule=True)

    def call_or(self, rest, first: Callable[[], list], role: str) -> list[T.CompletionItem]:
        if not rest:
            return first()
        opened, _ = _brackets(rest)
        if opened:
            return self.in_brackets(rest, opened[-1], in_rule=False, role=role)
        return []

    def in_brackets(self, rest, opened: int, in_rule: bool, role: str | None = None):
        """Inside `(...)` or `[...]`: argument names right after `(` or `,` of a
        call, else what an expression may name."""
        bracket = rest[opened]
        last = rest[-1]
        if bracket.type == "LPAR" and opened > 0 and rest[opened - 1].type == "NAME":
            callee = rest[opened - 1].text
            before = rest[opened - 2].text if opened > 1 else None
            if last.type in ("LPAR", "COMMA"):
                given = {
                    rest[i].text
                    for i in range(opened + 1, len(rest) - 1)
                    if rest[i].type == "NAME" and rest[i + 1].type == "EQUAL"
                }
                arguments = self.arguments(callee, before, role, given)
                return arguments + self.expression(in_rule=in_rule)
        return self.expression(in_rule=in_rule)

    def arguments(self, callee, before, role, given) -> list[T.CompletionItem]:
        action = N.ACTIONS.get(before)
        kind = role if role == "optimizer" else action.arg if action else None
        if kind in _SIGNED:
            signature = _SIGNED[kind][1](callee)  # `init normal(`, `wrap positive(`
        elif callee in N.ACTIONS and before in (None, "->", ","):
            signature = N.ACTIONS[callee].keywords  # `lora(rank=...)` right after the arrow
        elif callee in N.EXPR_FUNCTIONS:
            signature = None
        else:
            signature = R.constructor_signature(callee)
        if signature is None:
            return []
        return [
            _item(
                name + "=",
                _K.Property,
                f"argument of {callee}" + ("" if "?" in p else " (required)"),
                insert_text=name + "=",
                sort_text="0" + name,
            )
            for p, name in zip(signature.params, signature.names)
            if name != "key" and not p.startswith("*") and name not in given
        ]

    def expression(self, in_rule: bool = False) -> list[T.CompletionItem]:
        out = [
            _item(name, _K.Variable, _let_doc(self.doc, let), sort_text="0" + name)
            for name, let in self.doc.lets(before=self.line).items()
        ]
        if in_rule:
            out += [_item(c, _K.Variable, D.CONTEXT[c], sort_text="1" + c) for c in N.CONTEXT_NAMES]
        out += [
            _item(f, _K.Function, D.EXPR_FUNCTIONS[f], insert_text=f + "(", sort_text="2" + f)
            for f in N.EXPR_FUNCTIONS
        ]
        out += [_item(c, _K.Constant, D.KEYWORDS[c], sort_text="3" + c) for c in N.CONSTANTS]
        return out

    def actions(self) -> list[T.CompletionItem]:
        return [_item(a, _K.Function, D.ACTIONS[a]) for a in N.ACTIONS]

    def constructors(self) -> list[T.CompletionItem]:
        return [
            _item(c, _K.Class, _call_detail(c, R.constructor_signature(c)))
            for c in sorted(R.constructor_names())
        ]

    def optimizers(self) -> list[T.CompletionItem]:
        return [_item(o, _K.Function, _call_detail(o, N.OPTIMIZERS[o])) for o in N.OPTIMIZERS]

    def named(self, kind: str) -> list[T.CompletionItem]:
        names, signature_of, docs, what = _SIGNED[kind]
        return [
            _item(n, _K.Function, _call_detail(n, signature_of(n)), documentation=docs.get(n, what))
            for n in sorted(names())
        ]

    def selector(self, rest: list[SpecToken], after: list[str]) -> list[T.CompletionItem]:
        """Selector steps: the fields and types of the model the rule sees."""
        segment = rest
        for i, token in enumerate(rest):
            if token.type == "VBAR":
                segment = rest[i + 1 :]
        if segment and segment[-1].type in ("LSQB", "COLON", "MINUS"):
            return []  # an index is being written
        if segment and segment[-1].type != "DOT":
            # A whole selector is written: what may follow it.
            return [_item(w, _K.Keyword, D.KEYWORDS.get(w)) for w in after]
        wildcards = [
            _item(w, _K.Operator, D.SELECTOR_SYMBOLS[w], sort_text="9" + w) for w in ("**", "*")
        ]
        struct = self.struct()
        if struct is None:
            return [_item(t, _K.Class, "type") for t in sorted(R.type_names())] + wildcards
        nodes = self.server.model_nodes(struct)
        # A first step: the root's fields, and every type in the model.
        matched = _matched(segment[:-1], nodes) if segment else nodes
        fields = _fields(matched if segment else nodes[:1])
        types = sorted({type(n.obj).__name__ for n in matched} & R.type_names())
        return (
            [_item(f, _K.Field, "field", sort_text="0" + f) for f in fields]
            + [_item(t, _K.Class, "type in the model", sort_text="1" + t) for t in types]
            + wildcards
        )

    def struct(self) -> Any:
        doc = self.doc
        if not doc.has_model:
            return None
        struct = doc.view.struct_before(self.line, doc.valid_below)
        if struct is None:
            struct = doc.skeleton.struct_before(self.line, doc.skeleton_valid_below)
        return struct


def _call_detail(name: str, signature) -> str:
    return D.signature(name, signature.params) if signature is not None else name


def _brackets(rest: list[SpecToken]) -> tuple[list[int], list[SpecToken]]:
    """The indices of the brackets still open, and the tokens after the last
    top-level comma (the action or argument being written)."""
    opened: list[int] = []
    start = 0
    for i, token in enumerate(rest):
        if token.type in ("LPAR", "LSQB"):
            opened.append(i)
        elif token.type in ("RPAR", "RSQB"):
            if opened:
                opened.pop()
        elif token.type == "COMMA" and not opened:
            start = i + 1
    return opened, rest[start:]


def _matched(prefix: list[SpecToken], nodes: list) -> list:
    """The nodes a selector prefix (`layers[0]`) names, or none if it does not parse."""
    from ._select import select

    text = "".join(t.text for t in prefix)
    try:
        selector = parse(f"where {text} -> freeze").rules[0].selector
    except EqxformError:
        return []
    return select(selector, nodes)


def _fields(nodes: list) -> list[str]:
    from ._select import children, is_index, step_name

    names: dict[str, None] = {}
    for node in nodes[:256]:
        for key, _ in children(node.obj):
            value = step_name(key)
            if not is_index(key) and isinstance(value, str):
                names[value] = None
    return list(names)


# ---- wiring -----------------------------------------------------------------


def make_server() -> EqxformServer:
    """The language server with its features registered; `server.serve(stdin,
    stdout)` runs it over byte streams (`main()` over stdio)."""
    server = EqxformServer()

    @server.feature(T.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: EqxformServer, params: T.DidOpenTextDocumentParams):
        document = params.text_document
        ls.update(document.uri, document.version, document.text)

    @server.feature(T.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: EqxformServer, params: T.DidChangeTextDocumentParams):
        document = ls.workspace.get_text_document(params.text_document.uri)
        ls.update(document.uri, params.text_document.version, document.source)

    @server.feature(T.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: EqxformServer, params: T.DidCloseTextDocumentParams):
        uri = params.text_document.uri
        ls.close(uri)
        ls.text_document_publish_diagnostics(T.PublishDiagnosticsParams(uri=uri, diagnostics=[]))

    # Requests answer from the document checked in its latest text.

    def at_cursor(answer: Callable):
        """The handler of a request about a position: `answer(ls, doc, line, column)`."""

        async def handle(ls: EqxformServer, params):
            doc = await ls.current(params.text_document.uri)
            return None if doc is None else answer(ls, doc, *ls.from_client(doc, params.position))

        return handle

    def completion(ls: EqxformServer, doc: _Doc, line: int, column: int) -> T.CompletionList:
        return T.CompletionList(is_incomplete=False, items=ls.complete(doc, line, column))

    triggers = T.CompletionOptions(trigger_characters=[" ", ".", "(", ",", "|", "["])
    server.feature(T.TEXT_DOCUMENT_HOVER)(at_cursor(EqxformServer.hover))
    server.feature(T.TEXT_DOCUMENT_COMPLETION, triggers)(at_cursor(completion))
    server.feature(T.TEXT_DOCUMENT_DEFINITION)(at_cursor(EqxformServer.definition))

    @server.feature(T.TEXT_DOCUMENT_FORMATTING)
    async def formatting(ls: EqxformServer, params: T.DocumentFormattingParams):
        doc = await ls.current(params.text_document.uri)
        if doc is None:
            return None
        try:
            formatted = format_spec(doc.text, _name(doc.uri))
        except EqxformError:
            return None  # broken text is never formatted; its diagnostics say why
        if formatted == doc.text:
            return []
        lines = doc.lines
        end = ls.to_client(lines, len(lines), len(lines[-1]) + 1)
        return [T.TextEdit(T.Range(T.Position(0, 0), end), formatted)]

    @server.feature(T.SHUTDOWN)
    def shutdown(ls: EqxformServer, *args):
        ls.shut_down = True
        ls.stop_work()

    @server.feature(T.EXIT)
    def on_exit(ls: EqxformServer, *args):
        ls.stop_work()  # an editor may say `exit` without `shutdown`

    return server


class _ReportedByUs(logging.Filter):
    """pygls logs a traceback for a message it cannot structure; the server
    reports those itself, as a diagnostic (E604) and an error response."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unable to deserialize message")


def main() -> None:
    """Run the language server over stdio until the editor says `exit` (or
    closes its input); the process's exit status is 0 after `shutdown`, else 1."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    logging.getLogger("pygls.protocol.json_rpc").addFilter(_ReportedByUs())
    # The protocol owns stdout: anything else printed (by a library, say) goes
    # to stderr instead of corrupting it.
    protocol = sys.stdout.buffer
    sys.stdout = sys.stderr
    status = make_server().serve(sys.stdin.buffer, protocol)
    sys.stderr.flush()
    # Not `sys.exit`: it would wait for the worker threads to finish what they
    # are doing (the parse of a long text, a plan), whose results nobody wants now.
    os._exit(status)


if __name__ == "__main__":
    main()
