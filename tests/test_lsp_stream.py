"""The language server's framing of messages (`Framer`), byte by byte: good
streams give their messages whole, however they are cut, and a framing
mistake costs only its own message, with a sentence that says what it was.
(tests/test_lsp.py drives the same through the real server over stdio.)"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eqxform._lsp_stream import Frame, Framer


def _message(n: int, text: str = "") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": n, "method": "m", "params": {"t": text}}).encode()


def _framed(body: bytes, length: bytes | None = None, content_type: bool = False) -> bytes:
    header = b"Content-Length: " + (str(len(body)).encode() if length is None else length)
    if content_type:
        header += b"\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8"
    return header + b"\r\n\r\n" + body


def _feed(data: bytes, piece: int | None = None, close: bool = True) -> list[Frame]:
    framer = Framer()
    frames: list[Frame] = []
    step = piece or len(data) or 1
    for i in range(0, len(data), step):
        frames += framer.feed(data[i : i + step])
    if close:
        frames += framer.close()
    return frames


def _bodies(frames: list[Frame]) -> list[int]:
    return [json.loads(f.body)["id"] for f in frames if f.body is not None]


def _problems(frames: list[Frame]) -> list[str]:
    return [f.problem for f in frames if f.problem is not None]


@pytest.mark.parametrize("piece", [None, 1, 7, 64])
def test_good_messages_come_whole_however_the_stream_is_cut(piece):
    # One body holds text that looks like framing: it is only text.
    tricky = "Content-Length: 12\r\n\r\n{}} é \U0001f60b"
    stream = (
        _framed(_message(1))
        + _framed(_message(2, tricky), content_type=True)
        + _framed(_message(3, "x" * 5000))
    )
    frames = _feed(stream, piece)
    assert _bodies(frames) == [1, 2, 3]
    assert json.loads(frames[1].body)["params"]["t"] == tricky
    assert _problems(frames) == []


@pytest.mark.parametrize("length", [b"abc", b"-5", b"\xef\xbc\x95", b""])
@pytest.mark.parametrize("piece", [None, 3])
def test_a_length_that_is_no_number_costs_nothing_but_a_message(length, piece):
    stream = _framed(_message(1)) + _framed(_message(2), length) + _framed(_message(3))
    frames = _feed(stream, piece)
    # The message is read to the end of its JSON, and the next one is whole.
    assert _bodies(frames) == [1, 2, 3]
    (problem,) = _problems(frames)
    shown = length.decode()
    assert f"`Content-Length: {shown}` is not a number of bytes" in problem


def test_a_length_longer_than_the_body_before_the_next_message():
    stream = _framed(_message(1), b"500") + _framed(_message(2))
    frames = _feed(stream)
    assert _bodies(frames) == [1, 2]
    (problem,) = _problems(frames)
    assert "`Content-Length: 500` is longer than its body" in problem


def test_a_length_longer_than_the_last_body_does_not_wait_for_more():
    # Nothing follows: the message is given at once, not after bytes that never come.
    framer = Framer()
    frames = framer.feed(_framed(_message(1), b"500"))
    assert _bodies(frames) == [1] and _problems(frames) == []
    # Blanks may fill the promised length; the next message is what says it was wrong.
    frames = framer.feed(b"\r\n" + _framed(_message(2)))
    assert _bodies(frames) == [2]
    (problem,) = _problems(frames)
    assert "`Content-Length: 500` was longer than its body" in problem


def test_a_body_padded_with_blanks_to_its_length_is_fine():
    body = _message(1) + b"  \r\n"
    frames = _feed(_framed(body) + _framed(_message(2)), piece=5)
    assert _bodies(frames) == [1, 2] and _problems(frames) == []


def test_a_length_shorter_than_the_body_and_bytes_between_messages():
    body = _message(1)
    stream = _framed(body, str(len(body) - 10).encode()) + _framed(_message(2))
    frames = _feed(stream)
    # The cut body is handed on (the server answers it with -32700); the rest
    # of it is skipped to the next header, and said so.
    assert frames[0].body == body[:-10]
    assert _bodies(frames[1:]) == [2]
    assert _problems(frames) == [
        "skipped 10 bytes that were no message (before the next message's header)"
    ]

    frames = _feed(b"hello\r\nnot: a header at all\x00\r\n\r\n" + _framed(_message(3)))
    assert _bodies(frames) == [3]
    assert len(_problems(frames)) == 1 and "skipped" in _problems(frames)[0]


def test_the_end_of_the_input_inside_a_message_is_said():
    frames = _feed(_framed(_message(1)) + _framed(_message(2))[:-5])
    assert _bodies(frames) == [1]
    (problem,) = _problems(frames)
    assert problem.startswith("the input ended inside a message")


@pytest.mark.parametrize("piece", [None, 1000])
def test_a_header_block_without_its_blank_line_is_not_waited_for_forever(piece):
    stream = b"Content-Length: 10\r\n" + b"X-Filler: y\r\n" * 6000 + _framed(_message(1))
    frames = _feed(stream, piece)
    assert _bodies(frames) == [1]
    assert any("skipped" in p for p in _problems(frames))


_JUNK = st.lists(
    st.sampled_from(
        [
            b"Content-Length: ",
            b"Content-Length: 7",
            b"abc",
            b"-5",
            b"\r\n",
            b"\r\n\r\n",
            b"{",
            b"}",
            b'"',
            b"x: y\r\n",
            b"\xff",
            b" ",
            b"0",
            b"99999",
        ]
    ),
    max_size=6,
).map(b"".join)


@settings(max_examples=300, deadline=None, database=None)
@given(
    junk=st.lists(st.tuples(st.integers(0, 5), _JUNK), max_size=3),
    pieces=st.lists(st.integers(1, 300), min_size=1, max_size=20),
)
def test_junk_anywhere_never_stops_the_framer(junk, pieces):
    """Junk between messages, the stream cut anywhere: the framer never
    fails, gives only messages that were sent, and every message before the
    first junk whole and in order."""
    parts = [_framed(_message(n)) for n in range(6)]
    for at, noise in sorted(junk, reverse=True):
        parts.insert(at, noise)
    stream = b"".join(parts)
    framer = Framer()
    frames: list[Frame] = []
    start = 0
    for size in pieces * (len(stream) // max(sum(pieces), 1) + 1):
        if start >= len(stream):
            break
        frames += framer.feed(stream[start : start + size])
        start += size
    frames += framer.close()
    ids = []
    for f in frames:
        if f.body is not None:
            try:
                data = json.loads(f.body)
            except ValueError:
                continue  # a body cut short by junk: the server answers it with -32700
            if isinstance(data, dict):  # else junk that is JSON: answered with -32600
                ids.append(data["id"])
    assert set(ids) <= set(range(6))
    clean = min([at for at, noise in junk if noise] or [6])
    assert ids[:clean] == list(range(clean))
