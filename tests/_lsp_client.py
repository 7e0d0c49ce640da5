"""A language client for the tests: pygls's own, driving `python -m eqxform._lsp`
in a subprocess over stdio, as an editor would."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from lsprotocol import types as T
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).parent.parent


class Session:
    """One server process and the client talking to it.

    ```python
    async with Session() as s:
        uri = s.open("seed 1\\n")
        diagnostics = await s.diagnostics(uri)
    ```
    """

    def __init__(self, env: dict[str, str] | None = None):
        self.client = LanguageClient("eqxform-tests", "0")
        self.published: dict[str, list[T.PublishDiagnosticsParams]] = {}
        self.stderr = bytearray()
        self._changed = asyncio.Event()
        self._versions: dict[str, int] = {}
        self._env = env or {}
        self._raw = 0

        @self.client.feature(T.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def published(params: T.PublishDiagnosticsParams):
            self.published.setdefault(params.uri, []).append(params)
            self._changed.set()

        @self.client.feature(T.WINDOW_LOG_MESSAGE)
        def logged(params):
            self.stderr.extend(params.message.encode() + b"\n")

        @self.client.feature(T.WINDOW_SHOW_MESSAGE)
        def shown(params):
            self.stderr.extend(params.message.encode() + b"\n")

    async def __aenter__(self) -> Session:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self._env}
        await self.client.start_io(sys.executable, "-m", "eqxform._lsp", env=env, cwd=str(ROOT))
        # The server's stderr must be read, or a chatty server would block on it.
        self._drain = asyncio.ensure_future(self._read_stderr())
        result = await asyncio.wait_for(
            self.client.initialize_async(
                T.InitializeParams(capabilities=T.ClientCapabilities(), process_id=os.getpid())
            ),
            timeout=60,
        )
        self.capabilities = result.capabilities
        self.client.initialized(T.InitializedParams())
        return self

    async def _read_stderr(self):
        stream = self.client._server.stderr
        while chunk := await stream.read(4096):
            self.stderr.extend(chunk)

    async def __aexit__(self, *exc):
        try:
            if self.client._server.returncode is None:  # (a test may have ended it)
                await asyncio.wait_for(self.client.shutdown_async(None), timeout=60)
                self.client.exit(None)
            await asyncio.wait_for(self.client.stop(), timeout=60)
        finally:
            server = self.client._server
            if server is not None and server.returncode is None:
                server.kill()
                await server.wait()
            await asyncio.wait_for(self._drain, timeout=10)
        return False

    # ---- documents

    def open(self, text: str, name: str = "spec.eqx") -> str:
        uri = (ROOT / "tests" / name).as_uri()
        self._versions[uri] = 1
        self.client.text_document_did_open(
            T.DidOpenTextDocumentParams(
                T.TextDocumentItem(uri=uri, language_id="eqxform", version=1, text=text)
            )
        )
        return uri

    def change(self, uri: str, text: str) -> int:
        """Replace the whole text (a full change); returns the new version."""
        self._versions[uri] += 1
        version = self._versions[uri]
        self.client.text_document_did_change(
            T.DidChangeTextDocumentParams(
                T.VersionedTextDocumentIdentifier(version=version, uri=uri),
                [T.TextDocumentContentChangeWholeDocument(text)],
            )
        )
        return version

    def edit(self, uri: str, line: int, start: int, end: int, text: str) -> int:
        """Replace characters `[start, end)` of a 0-based line (an incremental change)."""
        self._versions[uri] += 1
        version = self._versions[uri]
        where = T.Range(T.Position(line, start), T.Position(line, end))
        self.client.text_document_did_change(
            T.DidChangeTextDocumentParams(
                T.VersionedTextDocumentIdentifier(version=version, uri=uri),
                [T.TextDocumentContentChangePartial(range=where, text=text)],
            )
        )
        return version

    async def diagnostics(
        self, uri: str, version: int | None = None, until=None, timeout: float = 60
    ) -> list[T.Diagnostic]:
        """The diagnostics of the first publication for `version` (the latest
        if not given) for which `until(diagnostics)` holds."""
        version = self._versions[uri] if version is None else version

        async def wait():
            seen = 0
            while True:
                found = self.published.get(uri, [])
                for params in found[seen:]:
                    if params.version == version and (
                        until is None or until(list(params.diagnostics))
                    ):
                        return list(params.diagnostics)
                seen = len(found)
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout=timeout)
        except TimeoutError:
            raise AssertionError(
                f"no diagnostics for version {version} of {uri} in {timeout}s; "
                f"published: {self.published.get(uri)}; server stderr: {self.stderr.decode()[-3000:]}"
            ) from None

    async def settled(self, uri: str, version: int | None = None, timeout: float = 120):
        """The diagnostics once the model-aware ones are in: for a text with no
        model-free errors the server publishes twice per version, at once and
        after the plan."""
        version = self._versions[uri] if version is None else version
        count = 0

        def second(diagnostics):
            nonlocal count
            count += 1
            return count == 2

        return await self.diagnostics(uri, version, until=second, timeout=timeout)

    # ---- the stream itself

    def write(self, data: bytes) -> None:
        """Bytes to the server's input, as they are."""
        self.client._server.stdin.write(data)

    def request(self, method: str, params, mangle: Callable[[bytes], bytes] | None = None):
        """Send a request as plain data (so that it can break the protocol's
        types), its framed bytes passed through `mangle`; the answer,
        awaitable (a `JsonRpcException` for an error response)."""
        protocol = self.client.protocol
        self._raw += 1
        ident = f"raw-{self._raw}"
        future: concurrent.futures.Future = concurrent.futures.Future()
        protocol._request_futures[ident] = future
        protocol._result_types[ident] = protocol.get_result_type(method)
        body = json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        data = b"Content-Length: %d\r\n\r\n" % len(body.encode()) + body.encode()
        self.write(mangle(data) if mangle is not None else data)
        return asyncio.wait_for(asyncio.wrap_future(future), 60)

    async def said(self, text: str, times: int = 1, timeout: float = 60) -> str:
        """The server's stderr, once it holds `text` (`times` times); it is
        read as it comes."""

        async def wait():
            while self.stderr.decode(errors="replace").count(text) < times:
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"{text!r} not on the server's stderr: {self.stderr.decode()}"
            ) from None
        return self.stderr.decode(errors="replace")

    # ---- requests

    async def hover(self, uri: str, line: int, character: int) -> T.Hover | None:
        params = T.HoverParams(T.TextDocumentIdentifier(uri), T.Position(line, character))
        return await asyncio.wait_for(self.client.text_document_hover_async(params), timeout=30)

    async def complete(self, uri: str, line: int, character: int) -> list[T.CompletionItem]:
        params = T.CompletionParams(T.TextDocumentIdentifier(uri), T.Position(line, character))
        result = await asyncio.wait_for(
            self.client.text_document_completion_async(params), timeout=30
        )
        if result is None:
            return []
        return result.items if isinstance(result, T.CompletionList) else list(result)

    async def definition(self, uri: str, line: int, character: int):
        params = T.DefinitionParams(T.TextDocumentIdentifier(uri), T.Position(line, character))
        return await asyncio.wait_for(
            self.client.text_document_definition_async(params), timeout=30
        )

    async def format(self, uri: str) -> list[T.TextEdit] | None:
        params = T.DocumentFormattingParams(
            T.TextDocumentIdentifier(uri), T.FormattingOptions(tab_size=4, insert_spaces=True)
        )
        return await asyncio.wait_for(
            self.client.text_document_formatting_async(params), timeout=30
        )


def run(coroutine, timeout: float = 240):
    """Run a test's coroutine, bounded in time."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout=timeout))
