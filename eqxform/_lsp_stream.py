"""The language server's input: JSON-RPC messages framed by headers, read so
that one badly framed message never costs the ones after it.

The Language Server Protocol frames each message with headers and a blank
line, `Content-Length: N\\r\\n\\r\\n`, then N bytes of JSON. Read naively, a
length that is no number (`abc`, `-5`) makes the reader skip the message and
then read every later one from the middle of another; a length longer than
the body makes it wait for bytes that never come, or swallow the next
messages into this one. Either way the server stays alive and answers nothing.

`Framer` reads the bytes as they come and gives back each message's body, and
for each framing mistake a sentence that says what was wrong. It relies on
one fact of the protocol: a body is exactly one JSON value. So a body whose
length cannot be trusted ends where its JSON value ends, if what follows is
blank or the next message's headers; bytes that are no message are skipped
up to the next `Content-Length` header.

It knows nothing of JSON-RPC or of the server: `_lsp` feeds it and handles
what it finds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# A header line's start, and the one header the framing needs. Header names
# are case-insensitive, as in HTTP, whose header format the protocol borrows.
_HEADER_LINE = re.compile(rb"[A-Za-z][A-Za-z0-9-]*[ \t]*:")
_CONTENT_LENGTH = re.compile(rb"content-length[ \t]*:", re.IGNORECASE)
_BLANK = b" \t\r\n"
# Headers longer than this, with no blank line after them, are no headers.
MAX_HEADERS = 64 * 1024
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Frame:
    """What the stream held next: a message's `body` (its JSON, unparsed), or
    `None` where bytes were skipped; and `problem`, what was wrong with its
    framing (`None` when nothing was)."""

    body: bytes | None
    problem: str | None = None


class Framer:
    """Cuts a byte stream into messages.

    ```python
    framer = Framer()
    for frame in framer.feed(data):  # any piece of the stream
        ...
    frames = framer.close()  # at the end of the stream
    ```
    """

    def __init__(self):
        self._buffer = bytearray()
        self._in_body = False
        # The body's length by its header; `None` when the header gave none.
        self._length: int | None = None
        self._header_problem: str | None = None
        # How far the buffer has been searched for the next message's headers.
        self._searched = 0
        # Bytes a body's header promised beyond its JSON value, which only
        # blanks may fill; and that header's length, to say what was wrong.
        self._owed = 0
        self._owed_length = 0
        self._skipped = 0

    def feed(self, data: bytes) -> list[Frame]:
        """The messages completed by `data`, the next bytes of the stream."""
        self._buffer += data
        frames: list[Frame] = []
        # Each state takes what the buffer holds of the next message, and
        # returns `False` when it must wait for more bytes.
        while (self._body if self._in_body else self._headers)(frames):
            pass
        return frames

    def close(self) -> list[Frame]:
        """What the end of the stream leaves: a message cut short, or bytes
        that were no message."""
        frames: list[Frame] = []
        rest = bytes(self._buffer).strip(_BLANK)
        if self._in_body:
            declared = (
                f"its header promised {self._length} bytes"
                if self._length is not None
                else (self._header_problem or "")
            )
            frames.append(
                Frame(None, f"the input ended inside a message ({len(rest)} bytes; {declared})")
            )
        elif rest or self._skipped:
            frames.append(Frame(None, self._skip_problem(self._skipped + len(rest), at_end=True)))
        self._buffer.clear()
        self._in_body = False
        self._skipped = 0
        return frames

    # ---- the two states: reading headers, reading a body

    def _headers(self, frames: list[Frame]) -> bool:
        buffer = self._buffer
        if self._owed:
            blanks = _count_blank(buffer, self._owed)
            del buffer[:blanks]
            self._owed -= blanks
            if not buffer:
                return False
            if self._owed:
                # The header promised more bytes than the body had: the next
                # message began where the promised ones should have been.
                frames.append(
                    Frame(
                        None,
                        f"a message's `Content-Length: {self._owed_length}` was longer than "
                        f"its body, by {self._owed} bytes; the next message was read from "
                        "its own header",
                    )
                )
                self._owed = 0
        # Line breaks between messages are harmless; anything else that is no
        # header is skipped, up to the next `Content-Length`.
        blanks = _count_blank(buffer, len(buffer))
        del buffer[:blanks]
        if not buffer:
            return False
        if not _HEADER_LINE.match(buffer) and not (
            len(buffer) < 32 and _could_start_header(buffer)
        ):
            return self._resync()
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEADERS + 4)
        if end < 0:
            if len(buffer) > MAX_HEADERS:
                return self._resync(start=1)
            return False
        block = bytes(buffer[:end])
        length, problem, bad = _parse_headers(block)
        if bad:
            return self._resync(start=1)
        if self._skipped:
            frames.append(Frame(None, self._skip_problem(self._skipped)))
            self._skipped = 0
        del buffer[: end + 4]
        self._in_body = True
        self._length = length
        self._header_problem = problem
        self._searched = 0
        return True

    def _body(self, frames: list[Frame]) -> bool:
        buffer = self._buffer
        length = self._length
        if length is not None and len(buffer) >= length:
            body = bytes(buffer[:length])
            end = _json_end(body)
            if end is not None and end < length and body[end:].strip(_BLANK):
                rest = body[end:].lstrip(_BLANK)
                if _CONTENT_LENGTH.match(rest):
                    # The next message's headers inside this one's promised
                    # length: the length was wrong, the body ends with its value.
                    self._finish(frames, end, self._longer(length, end))
                    return True
            self._finish(frames, length, self._header_problem)
            return True
        # Incomplete by its header, or of no known length: complete all the
        # same if it holds one whole JSON value followed by blanks or by the
        # next message's headers. Looked for only where a value can end (a
        # `}` last) or the next message may begin, so that a long body
        # arriving in pieces is not parsed again and again.
        found = _CONTENT_LENGTH.search(buffer, max(self._searched - 20, 0))
        self._searched = len(buffer)
        if found is None and _last_nonblank(buffer) != ord("}"):
            return False
        end = _json_end(buffer)
        if end is None:
            return False
        rest = bytes(buffer[end:]).lstrip(_BLANK)
        if rest and not _CONTENT_LENGTH.match(rest):
            return False
        if length is None:
            self._finish(frames, end, self._header_problem)
        elif rest:
            self._finish(frames, end, self._longer(length, end))
        else:
            # Blanks may still fill the promised length: owed, not yet wrong
            # (`_headers`, next, takes them).
            self._finish(frames, end, None)
            self._owed, self._owed_length = length - end, length
        return True

    # ---- helpers

    def _finish(self, frames: list[Frame], end: int, problem: str | None) -> None:
        frames.append(Frame(bytes(self._buffer[:end]), problem))
        del self._buffer[:end]
        self._in_body = False
        self._length = None
        self._header_problem = None

    @staticmethod
    def _longer(length: int, end: int) -> str:
        return (
            f"a message's `Content-Length: {length}` is longer than its body ({end} bytes); "
            "the message was read to the end of its JSON, and the next one from its own header"
        )

    def _resync(self, start: int = 0) -> bool:
        """Skip to the next `Content-Length` header (after `start`)."""
        buffer = self._buffer
        found = _CONTENT_LENGTH.search(buffer, start)
        if found is None:
            # Keep a tail that may be the start of a header cut in two.
            keep = min(len(buffer), len(b"Content-Length:") - 1)
            self._skipped += len(buffer) - keep
            del buffer[: len(buffer) - keep]
            return False
        self._skipped += found.start()
        del buffer[: found.start()]
        return True

    @staticmethod
    def _skip_problem(count: int, at_end: bool = False) -> str:
        where = "at the end of the input" if at_end else "before the next message's header"
        return f"skipped {count} bytes that were no message ({where})"


def _parse_headers(block: bytes) -> tuple[int | None, str | None, bool]:
    """A message's headers: the body's length (or `None`), what is wrong with
    them, and whether they are no headers at all."""
    length = None
    problem = None
    seen = False
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_LINE.match(line):
            return None, None, True
        if name.strip().lower() != b"content-length":
            continue  # Content-Type, or a header of the future: not needed
        seen = True
        text = value.strip()
        shown = text.decode("utf-8", "backslashreplace")
        if not text.isdigit() or not text.isascii():
            problem = (
                f"a message's header `Content-Length: {shown}` is not a number of bytes "
                "(a whole number, 0 or more, in ASCII digits); the message was read to the end "
                "of its JSON"
            )
        else:
            length = int(text)
    if not seen:
        problem = "a message has no `Content-Length` header; it was read to the end of its JSON"
    return length, problem, False


def _json_end(data: bytes | bytearray) -> int | None:
    """The byte offset where the JSON value at the start of `data` ends, or
    `None` if `data` does not start with a whole one."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        text = bytes(data[: e.start]).decode("utf-8")
    stripped = text.lstrip()
    try:
        _, end = _DECODER.raw_decode(stripped)
    except ValueError:
        return None
    return len(text[: len(text) - len(stripped) + end].encode("utf-8"))


def _count_blank(buffer: bytearray, limit: int) -> int:
    n = 0
    while n < limit and n < len(buffer) and buffer[n] in _BLANK:
        n += 1
    return n


def _last_nonblank(buffer: bytearray) -> int | None:
    i = len(buffer) - 1
    while i >= 0 and buffer[i] in _BLANK:
        i -= 1
    return buffer[i] if i >= 0 else None


def _could_start_header(buffer: bytearray) -> bool:
    """Whether `buffer` may be the first bytes of a header line still arriving."""
    return re.fullmatch(rb"[A-Za-z][A-Za-z0-9-]*[ \t]*", bytes(buffer)) is not None
