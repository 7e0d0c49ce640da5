"""The language server, driven over stdio by pygls's client as an editor would
drive it, and its model-aware half (`Analyzer`) held to `Program.plan`."""

import asyncio
import re
import time
from pathlib import Path

import pytest
from _lsp_client import Session, run
from lsprotocol import types as T

import eqxform
from eqxform import _docs as D
from eqxform import _names as N
from eqxform._format import format_spec
from eqxform._lsp import Analyzer, _Stale

ROOT = Path(__file__).parent.parent
SPECS = sorted((ROOT / "specs").glob("*.eqx"))
FREEZE = (ROOT / "specs" / "freeze_backbone.eqx").read_text()

MODEL = "model MLP(in_size=2, out_size=2, width_size=8, depth=2)\n"


def _codes(diagnostics) -> list[str]:
    return [d.code for d in diagnostics]


def _position(text: str, needle: str, offset: int = 0) -> tuple[int, int]:
    """The 0-based line and character of `needle` (plus `offset`) in `text`."""
    for number, line in enumerate(text.split("\n")):
        if needle in line:
            return number, line.index(needle) + offset
    raise AssertionError(f"{needle!r} not in the text")


# ---- over stdio ---------------------------------------------------------------


def test_initialize_advertises_every_feature():
    async def go():
        async with Session() as s:
            caps = s.capabilities
            assert caps.hover_provider
            assert caps.definition_provider
            assert caps.document_formatting_provider
            assert "." in caps.completion_provider.trigger_characters
            assert caps.text_document_sync.change == T.TextDocumentSyncKind.Incremental
            return s.client._server

    server = run(go())
    assert server.returncode == 0  # shutdown, then exit: a clean stop


def test_model_free_diagnostics_on_open_and_change():
    text = 'let a = "\U0001f60b" + b\nwhere x -> init trunc_normall\nwhere y init zeros\n'

    async def go():
        async with Session() as s:
            uri = s.open(text)
            found = await s.diagnostics(uri, timeout=30)
            by_code = {d.code: d for d in found}
            assert set(by_code) == {"E105", "E102", "E003"}
            # Ranges are in UTF-16 units: the emoji before `b` counts twice.
            unknown = by_code["E105"].range
            assert (unknown.start.line, unknown.start.character) == (0, 15)
            assert (unknown.end.line, unknown.end.character) == (0, 16)
            assert "help:" in by_code["E105"].message
            assert by_code["E003"].range.start.line == 2

            s.edit(uri, 2, 7, 7, "-> ")  # fix the arrow
            found = await s.diagnostics(uri, timeout=30)
            assert sorted(_codes(found)) == ["E102", "E105"]
            initialiser = next(d for d in found if d.code == "E102")
            assert initialiser.range.start == T.Position(1, 16)
            assert "trunc_normal" in initialiser.message

            s.change(uri, "let b = 1\nlet a = b\nwhere x -> init normal(stddev=a)\n")
            assert await s.diagnostics(uri, timeout=30) == []

    run(go())


def test_model_aware_diagnostics_follow_the_plan():
    text = MODEL + "where layers[0].weight -> init zeros\nwhere layerz.weight -> init zeros\n"
    expected = eqxform.compile(text).plan().diagnostics
    assert expected  # the misspelt selector is only found on the model

    async def go():
        async with Session() as s:
            uri = s.open(text)
            # First the model-free ones (none), then the plan's.
            assert await s.diagnostics(uri, timeout=30) == []
            found = await s.settled(uri)
            assert _codes(found) == [d.code for d in expected]
            for got, want in zip(found, expected):
                assert got.range.start == T.Position(want.span.line - 1, want.span.column - 1)
                assert got.message.startswith(want.message)

            # Hover on the selector says why it has no matches.
            hover = await s.hover(uri, 2, 8)
            assert expected[0].message in hover.contents.value

            # An edit that fixes the selector clears them, for that version.
            version = s.edit(uri, 2, 6, 12, "layers[1]")
            assert await s.settled(uri, version) == []
            # A rule added above: the plan of the lines below is redone.
            version = s.edit(uri, 2, 0, 0, "where nothing -> freeze\n")
            found = await s.settled(uri, version)
            assert [(d.code, d.range.start.line) for d in found] == [("E201", 2)]

    run(go())


def test_hover_shows_what_a_selector_matches():
    plan = eqxform.compile(FREEZE).plan()

    async def go():
        async with Session() as s:
            uri = s.open(FREEZE)
            await s.diagnostics(uri, timeout=30)
            line, character = _position(FREEZE, "layers[-1].weight", 3)
            deadline = time.monotonic() + 120
            while True:
                hover = await s.hover(uri, line, character)
                if "match" in hover.contents.value or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            value = hover.contents.value
            step = next(s for s in plan.steps if s.line == line + 1)
            assert f"**{step.action}**: {len(step.matches)} match" in value
            for m in step.matches:
                assert f"`{m.path}`" in value and f"`{m.before}`" in value
            assert hover.range.start == T.Position(line, FREEZE.split("\n")[line].index("layers"))

            # `**.bias` matches every bias: four of them.
            line, character = _position(FREEZE, "**.bias", 1)
            value = (await s.hover(uri, line, character)).contents.value
            assert "4 matches" in value and "`layers[0].bias`" in value

    run(go())


def test_hover_documents_each_kind_of_word():
    cases = {
        ("optimizer adamw", 2): D.DIRECTIVES["optimizer"],
        ("adamw(", 1): "adamw(learning_rate, b1=…",
        ("-> replace", 4): D.ACTIONS["replace"],
        ("trunc_normal", 2): "trunc_normal(stddev=…, lower=…, upper=…)",
        ("sqrt(", 1): D.EXPR_FUNCTIONS["sqrt"],
        ("fan_in", 1): D.CONTEXT["fan_in"],
        ("out_features=classes", 14): "let classes = 2",
        ("Linear(in", 1): "Linear(in_features, out_features",
        ("expect 1", 1): D.KEYWORDS["expect"],
        ("lr 0.1", 0): D.ACTIONS["lr"],
    }

    async def go():
        async with Session() as s:
            uri = s.open(FREEZE)
            await s.diagnostics(uri, timeout=30)
            for (needle, offset), expected in cases.items():
                hover = await s.hover(uri, *_position(FREEZE, needle, offset))
                assert hover is not None, needle
                assert expected in hover.contents.value, (needle, hover.contents.value)
            # Nothing to say about a number.
            assert await s.hover(uri, *_position(FREEZE, "0.1", 1)) is None

    run(go())


def _labels(items) -> set[str]:
    return {i.label for i in items}


def test_completion_in_each_place():
    text = (
        MODEL
        + "let width = 4\n"
        + "optimizer \n"  # 2
        + "where layers[0]. -> init \n"  # 3
        + "where  -> wrap \n"  # 4
        + "where x -> freeze, \n"  # 5
        + "where x -> init normal(\n"  # 6
        + "where x -> scale \n"  # 7
        + "\n"  # 8
        + "where x -> replace Linear(in_features=width, \n"  # 9
        + "where x -> lora(rank=2, \n"  # 10
    )

    async def go():
        async with Session() as s:
            uri = s.open(text)
            # The text has errors (it is being typed), so there is no plan; the
            # model's skeleton is built from its `model` line for completion.
            await s.diagnostics(uri, timeout=30)
            deadline = time.monotonic() + 120
            while "weight" not in _labels(await s.complete(uri, 3, len("where layers[0]."))):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            lines = text.split("\n")

            async def at(line, character=None):
                character = len(lines[line]) if character is None else character
                return _labels(await s.complete(uri, line, character))

            assert {"model", "where", "let", "stack"} <= await at(8)
            assert set(N.OPTIMIZERS) == await at(2)
            assert {"weight", "bias", "Linear"} <= await at(3, len("where layers[0]."))
            assert "layers" not in await at(3, len("where layers[0]."))
            assert set(N.INITIALIZERS) <= await at(3)
            assert {"layers", "Linear", "MLP", "**"} <= await at(4, len("where "))
            assert {"symmetric", "positive", "weight_norm"} == await at(4)
            assert set(N.ACTIONS) == await at(5)
            assert {"stddev=", "width", "fan_in", "sqrt"} <= await at(6)
            assert {"width", "fan_in", "shape"} <= await at(7)
            after_comma = await at(9)
            assert "out_features=" in after_comma and "in_features=" not in after_comma
            assert "key=" not in after_comma
            assert "alpha=" in await at(10) and "rank=" not in await at(10)
            # Inside a comment, nothing.
            assert await at(0, 0) >= {"model"}  # (line start: the directives)

    run(go())


def test_completion_without_a_model_offers_the_known_types():
    async def go():
        async with Session() as s:
            uri = s.open("where \nmodel \n")
            await s.diagnostics(uri, timeout=30)
            labels = _labels(await s.complete(uri, 0, 6))
            assert {"Linear", "Conv2d", "MLP", "**"} <= labels
            assert {"MLP", "Linear", "Tower"} <= _labels(await s.complete(uri, 1, 6))

    run(go())


def test_definition_of_a_let_name():
    async def go():
        async with Session() as s:
            uri = s.open(FREEZE)
            await s.diagnostics(uri, timeout=30)
            use = _position(FREEZE, "out_features=classes", 15)
            found = await s.definition(uri, *use)
            location = found[0] if isinstance(found, list) else found
            line, character = _position(FREEZE, "let classes", 4)
            assert location.uri == uri
            assert location.range == T.Range(
                T.Position(line, character), T.Position(line, character + len("classes"))
            )
            # An initialiser is no `let`.
            assert await s.definition(uri, *_position(FREEZE, "trunc_normal", 1)) is None

    run(go())


def test_formatting():
    text = "where Linear.weight->init zeros\nwhere **.bias -> freeze   # biases\n"

    async def go():
        async with Session() as s:
            uri = s.open(text)
            await s.diagnostics(uri, timeout=30)
            edits = await s.format(uri)
            assert len(edits) == 1 and edits[0].new_text == format_spec(text)
            assert edits[0].range.start == T.Position(0, 0)
            assert edits[0].range.end == T.Position(2, 0)

            s.change(uri, format_spec(text))
            await s.diagnostics(uri, timeout=30)
            assert list(await s.format(uri)) == []

            s.change(uri, "where x init zeros\n")
            await s.diagnostics(uri, timeout=30)
            assert not await s.format(uri)  # broken text is not formatted

    run(go())


def test_typing_stays_responsive_while_the_model_is_planned():
    """Model-free diagnostics and hovers answer while a long plan runs. Each answer is held to the
    plan's own duration, not to a number of seconds: a server that waited for
    the plan would answer in about that time, one that does not in a small
    part of it, however busy the machine."""
    rules = "".join(f"where layers[{i}].weight -> init normal(stddev=0.1)\n" for i in range(60))
    text = "model MLP(in_size=4, out_size=4, width_size=4, depth=80)\n" + rules

    async def go():
        async with Session() as s:
            uri = s.open(text)
            start = time.perf_counter()
            await s.settled(uri, timeout=300)
            whole = time.perf_counter() - start
            latencies = []
            for i in range(8):
                start = time.perf_counter()
                # Indenting rule i replans every line from it down.
                version = s.edit(uri, 1 + i, 0, 0, " ")
                await s.diagnostics(uri, version, timeout=60)
                latencies.append(time.perf_counter() - start)
                await asyncio.sleep(whole / 50)
            start = time.perf_counter()
            await s.hover(uri, 0, 2)
            latencies.append(time.perf_counter() - start)
            assert max(latencies) < whole / 2, (latencies, whole)
            # The last version is planned (its second publication); its
            # diagnostics are the plan's: none.
            assert await s.settled(uri, version, timeout=300) == []
            published = [p.version for p in s.published[uri]]
            assert set(range(1, version + 1)) <= set(published)

    run(go(), timeout=600)


def _ends(session) -> float:
    """Say `shutdown` and `exit` to the server; seconds until its process ended."""

    async def go():
        start = time.perf_counter()
        await asyncio.wait_for(session.client.shutdown_async(None), timeout=120)
        session.client.exit(None)
        await asyncio.wait_for(session.client._server.wait(), timeout=600)
        return time.perf_counter() - start

    return go()


def test_exit_does_not_wait_for_a_long_plan():
    """`exit` while a plan runs ends the process in a small part of the time
    the plan takes (measured on the same text, in the same server), and the
    plan is never published."""
    rules = "".join(f"where layers[{i}].weight -> init zeros\n" for i in range(25))
    text = "model MLP(in_size=4, out_size=4, width_size=4, depth=400)\n" + rules
    first = text.split("\n")[1]

    async def go():
        session = Session()
        async with session as s:
            uri = s.open(text)
            await s.settled(uri, timeout=300)
            # An edit of the first rule replans every line: how long that takes.
            start = time.perf_counter()
            version = s.edit(uri, 1, 0, len(first), first.replace("zeros", "ones"))
            await s.settled(uri, version, timeout=300)
            replan = time.perf_counter() - start
            # The same again, and `exit` while it runs.
            version = s.edit(uri, 1, 0, len(first), first)
            await s.diagnostics(uri, version, timeout=60)
            await asyncio.sleep(replan / 10)
            assert [p.version for p in s.published[uri]].count(version) == 1, "planned already"
            seconds = await _ends(s)
            # The plan of the last version never came.
            assert [p.version for p in s.published[uri]].count(version) == 1
        return seconds, replan, session.client._server.returncode

    seconds, replan, returncode = run(go(), timeout=900)
    assert returncode == 0  # `shutdown` came first
    assert seconds < replan / 2, (seconds, replan)


def _rules(lines: int) -> str:
    """A spec of `lines` lines shaped like a long real one: a model and rules
    of every kind on its layers, no diagnostics."""
    forms = [
        "where layers[{i}].weight -> init normal(stddev=s)",
        "where layers[{i}].bias -> init zeros",
        "where layers[{i}].weight if ndim == 2 -> scale 0.5",
        "where layers[{i}] -> init trunc_normal(stddev=1 / sqrt(fan_in), lower=-2, upper=2)",
    ]
    head = ["model MLP(in_size=8, out_size=8, width_size=8, depth=500)", "seed 0", "let s = 0.5"]
    body = [forms[i % len(forms)].format(i=i % 500) for i in range(lines - len(head))]
    return "\n".join(head + body) + "\n"


def test_a_burst_of_edits_is_checked_once_in_its_last_version():
    """300 edits sent together to a 2,000-line spec, then a hover: the text is
    checked in its last version (not once per edit), and the hover answers
    from that version."""
    text = _rules(2000).replace("model MLP", "# model MLP", 1)  # no plan: the check alone
    line = 1003  # `where layers[0].weight -> init normal(stddev=s)`
    before = text.split("\n")[line]
    cut = before.index("normal(")
    names = ["zeros", "ones", "normal", "uniform", "he_normal", "glorot_uniform"]

    async def go():
        async with Session() as s:
            uri = s.open(text)
            assert await s.diagnostics(uri, timeout=120) == []
            end = len(before)
            for i in range(300):
                # Retype the initialiser, in turn a known one and a misspelt one.
                name = names[i % len(names)] + ("" if i % 2 else "z")
                new = before[:cut] + name
                version = s.edit(uri, line, cut, end, name)
                end = len(new)
            assert version == 301 and name == "glorot_uniform"
            hover = await s.hover(uri, line, cut + 2)
            assert "glorot_uniform(" in hover.contents.value  # the last text's word
            found = await s.diagnostics(uri, version, timeout=120)
            assert found == []  # `glorot_uniform` is known: no E102 of an older version
            checked = sorted({p.version for p in s.published[uri]} - {1})
            assert checked[-1] == version
            # Not one check per edit: a handful at most (the edits may reach
            # the server in a few pieces), all but the last ones unpublished.
            assert len(checked) <= 10, checked

    run(go(), timeout=600)


def test_exit_while_a_long_spec_is_checked():
    """`exit` while a 100,000-line spec is parsed and checked ends the process
    (and frees its memory) long before the check would end: the check's
    length is measured on 2,000 of its lines, in the same server."""
    long = _rules(100_000)
    short = _rules(2000)

    async def go():
        session = Session()
        async with session as s:
            start = time.perf_counter()
            small = s.open(short, "short.eqx")
            await s.diagnostics(small, timeout=300)
            per_2000 = time.perf_counter() - start  # 1/50 of the long check, or more
            uri = s.open(long, "long.eqx")
            await asyncio.sleep(per_2000)
            seconds = await _ends(s)
            # The long text was never checked to the end.
            assert uri not in s.published
        return seconds, per_2000, session.client._server.returncode

    seconds, per_2000, returncode = run(go(), timeout=900)
    assert returncode == 0
    assert seconds < 10 * per_2000, (seconds, per_2000)  # the check: 50 times that


def test_a_request_with_a_negative_position_gets_an_error_response():
    from pygls.exceptions import JsonRpcException

    async def go():
        async with Session() as s:
            uri = s.open(FREEZE)
            await s.diagnostics(uri, timeout=60)
            for position, field in [
                ({"line": -1, "character": 0}, "Position.line"),
                ({"line": 0, "character": -3}, "Position.character"),
            ]:
                params = {"textDocument": {"uri": uri}, "position": position}
                with pytest.raises(JsonRpcException) as info:
                    await s.request("textDocument/hover", params)
                assert info.value.code == -32602
                assert field in info.value.message and "E604" in info.value.message
            # A completion too; and the server goes on answering.
            params = {"textDocument": {"uri": uri}, "position": {"line": 2, "character": -1}}
            with pytest.raises(JsonRpcException) as info:
                await s.request("textDocument/completion", params)
            assert info.value.code == -32602
            assert (await s.hover(uri, *_position(FREEZE, "adamw(", 1))) is not None
            stderr = await s.said("error[E604]", times=3)
            assert "Traceback" not in stderr

    run(go())


def _length(value: bytes):
    return lambda data: re.sub(rb"Content-Length: \d+", b"Content-Length: " + value, data, count=1)


@pytest.mark.parametrize(
    "mangle, said",
    [
        (_length(b"abc"), "`Content-Length: abc` is not a number of bytes"),
        (_length(b"-5"), "`Content-Length: -5` is not a number of bytes"),
        (_length(b"100000"), "`Content-Length: 100000` was longer than its body"),
        (lambda data: b"some noise\r\n" + data, "skipped 12 bytes that were no message"),
    ],
    ids=["abc", "negative", "longer", "noise"],
)
def test_a_badly_framed_message_costs_only_itself(mangle, said):
    """The server reads on after a framing mistake: the badly framed request
    is answered (its JSON is whole), the requests after it too, and stderr
    says what was wrong."""
    line, character = _position(FREEZE, "model MLP", 2)
    params = {"textDocument": {"uri": None}, "position": {"line": line, "character": character}}

    async def go():
        async with Session() as s:
            uri = params["textDocument"]["uri"] = s.open(FREEZE)
            await s.diagnostics(uri, timeout=60)
            hover = await s.request("textDocument/hover", params, mangle)
            assert hover.contents.value == D.DIRECTIVES["model"]
            for _ in range(3):
                hover = await s.hover(uri, *_position(FREEZE, "-> replace", 4))
                assert hover.contents.value == f"`replace`: {D.ACTIONS['replace']}"
            stderr = await s.said(said)
            assert "error[E603]: " in stderr and "Traceback" not in stderr

    run(go())


def test_a_body_that_is_not_json_gets_a_parse_error():
    async def go():
        async with Session() as s:
            uri = s.open(FREEZE)
            await s.diagnostics(uri, timeout=60)
            s.write(b"Content-Length: 9\r\n\r\n{not json")
            # The server answers it (-32700, to no id) and reads on.
            hover = await s.hover(uri, *_position(FREEZE, "-> replace", 4))
            assert hover.contents.value == f"`replace`: {D.ACTIONS['replace']}"
            await s.said("error[E603]: a message is not JSON")

    run(go())


# ---- the model-aware half, in process -----------------------------------------


def _same_diagnostics(got, want):
    assert [(d.code, d.message, d.span) for d in got] == [(d.code, d.message, d.span) for d in want]


def _model_aware(program, plan):
    """The plan's diagnostics but the checker's warnings, which the server
    publishes with its model-free half."""
    return [d for d in plan.diagnostics if d not in program.warnings]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_analysis_equals_the_plan(path):
    text = path.read_text()
    program = eqxform.compile(text)
    plan = program.plan()
    view = Analyzer().analyse("file:///spec.eqx", text, "spec.eqx")
    _same_diagnostics(view.diagnostics, _model_aware(program, plan))
    steps = [step for line in sorted(view.steps) for step in view.steps[line]]
    assert steps == list(plan.steps)


def test_analysis_of_errors_equals_the_plan():
    text = (
        MODEL
        + "where layerz.weight -> init zeros\n"
        + "stack layers scan\n"
        + "where Conv2d.weight -> freeze\n"
        + "where layers[0].weight expect 3 -> init zeros\n"
    )
    plan = eqxform.compile(text).plan()
    assert len(plan.diagnostics) >= 3
    view = Analyzer().analyse("file:///spec.eqx", text, "spec.eqx")
    _same_diagnostics(view.diagnostics, plan.diagnostics)


# Rules whose work is undone, across lines: the accounting runs on the whole plan.
ACCOUNTING = (
    MODEL
    + "optimizer adam(learning_rate=1e-3)\n"
    + "let unused = 3\n"
    + "where Linear.weight -> init normal(stddev=0.1)\n"
    + "where Linear.bias -> scale 2\n"
    + "where layers[-1] -> replace Linear(in_features=8, out_features=2)\n"
    + "where Linear.bias -> init zeros\n"
    + "where layers[0] -> freeze\n"
    + "where layers[0].weight -> lr 0.1\n"
)


def test_analysis_of_the_accounting_equals_the_plan():
    program = eqxform.compile(ACCOUNTING)
    plan = program.plan()
    assert [(d.code, d.span.line) for d in plan.warnings] == [
        ("W205", 3),
        ("W203", 4),
        ("W202", 5),
        ("W204", 9),
    ]
    view = Analyzer().analyse("file:///spec.eqx", ACCOUNTING, "spec.eqx")
    _same_diagnostics(view.diagnostics, _model_aware(program, plan))


def test_warnings_are_published_as_warnings():
    async def go():
        async with Session() as s:
            uri = s.open(ACCOUNTING)
            # The model-free one at once, then those of the plan.
            found = await s.diagnostics(uri, timeout=30)
            assert [(d.code, d.range.start.line) for d in found] == [("W205", 2)]
            found = await s.settled(uri)
            assert [(d.code, d.range.start.line) for d in found] == [
                ("W205", 2),
                ("W203", 3),
                ("W202", 4),
                ("W204", 8),
            ]
            assert {d.severity for d in found} == {T.DiagnosticSeverity.Warning}
            w203 = next(d for d in found if d.code == "W203")
            assert "line 6" in w203.message and "help: move the `replace`" in w203.message
            # Moving the `replace` to the top clears what it caused.
            lines = ACCOUNTING.split("\n")
            fixed = "\n".join([lines[0], lines[5]] + lines[1:5] + lines[6:])
            version = s.change(uri, fixed)
            found = await s.settled(uri, version)
            assert [d.code for d in found] == ["W205", "W202", "W204"]

    run(go())


def test_analysis_reuses_the_lines_above_an_edit():
    analyzer = Analyzer()
    rules = [f"where layers[{i}].weight -> init zeros\n" for i in range(3)]
    first = analyzer.analyse("u", MODEL + "".join(rules), "u")
    edited = rules[:2] + ["where layers[2].bias -> init zeros\n"]
    second = analyzer.analyse("u", MODEL + "".join(edited), "u")
    assert second.skeleton is first.skeleton  # one model line, one skeleton
    assert second.chunks[:2] == first.chunks[:2]
    assert all(a is b for a, b in zip(second.chunks[:2], first.chunks[:2]))
    assert second.chunks[2] is not first.chunks[2]
    # The server's planner is `Program.plan`'s: it planned the edited line alone.
    assert analyzer._planners["u"].replanned == 1
    # An edit of the first rule replans all three.
    third = analyzer.analyse(
        "u", MODEL + "where layers[0].bias -> freeze\n" + "".join(rules[1:]), "u"
    )
    assert not any(a is b for a, b in zip(third.chunks, second.chunks))
    assert analyzer._planners["u"].replanned == 3


def test_stale_analysis_stops():
    analyzer = Analyzer()
    with pytest.raises(_Stale):
        analyzer.analyse("u", MODEL + "where layers[0].weight -> init zeros\n", "u", lambda: False)


def test_model_that_cannot_be_built_is_reported_where_it_is():
    analyzer = Analyzer()
    bad = "model MLP(in_size=2, out_size=2, width_size=8, depth=-1)\n"
    first = analyzer.analyse("u", bad + "where ** -> freeze\n", "u")
    assert [d.code for d in first.diagnostics] == ["E205"]
    assert first.diagnostics[0].span.line == 1
    moved = analyzer.analyse("u", "seed 1\n" + bad + "where ** -> freeze\n", "u")
    assert [d.span.line for d in moved.diagnostics] == [2]


def test_every_name_has_a_doc():
    assert set(N.ACTIONS) | {"lora", "merge", "shard"} == set(D.ACTIONS)
    assert set(N.INITIALIZERS) == set(D.INITIALIZERS)
    assert set(N.WRAPPERS) == set(D.WRAPPERS)
    assert set(N.OPTIMIZERS) == set(D.OPTIMIZERS)
    assert set(N.FUNCTIONS) <= set(D.FUNCTIONS)
    assert set(N.EXPR_FUNCTIONS) == set(D.EXPR_FUNCTIONS)
    assert set(N.CONTEXT_NAMES) == set(D.CONTEXT)
    assert set(N.CONSTANTS) <= set(D.KEYWORDS)
    for table in (D.DIRECTIVES, D.ACTIONS, D.INITIALIZERS, D.WRAPPERS, D.OPTIMIZERS, D.KEYWORDS):
        for name, line in table.items():
            assert line and "\n" not in line, name


def test_hover_on_the_weight_lines():
    text = (
        'weights "ckpt.safetensors"\n'
        'map "fc.weight" -> "layers[0].weight" with transpose, cast\n'
        'skip "**.num_batches_tracked"\n'
    )

    async def go():
        async with Session() as s:
            uri = s.open(text)
            await s.diagnostics(uri, timeout=30)
            cases = {
                ("weights", 1): D.DIRECTIVES["weights"],
                ("map", 1): D.DIRECTIVES["map"],
                ("skip", 1): D.DIRECTIVES["skip"],
                ("with", 1): D.KEYWORDS["with"],
                ("transpose", 1): D.MAP_ACTIONS["transpose"],
                (", cast", 3): D.MAP_ACTIONS["cast"],
            }
            for (needle, offset), expected in cases.items():
                hover = await s.hover(uri, *_position(text, needle, offset))
                assert hover is not None, needle
                assert expected in hover.contents.value, (needle, hover.contents.value)

    run(go())


def test_every_directive_and_action_is_offered_and_has_hover_text():
    from eqxform._lsp import _Doc, _token_at, _word_doc, make_server
    from eqxform._parse import parse_collect

    lines = [f"{d} " for d in N.DIRECTIVES] + [f"where x -> {a}" for a in N.ACTIONS] + [""]
    text = "\n".join(lines)
    doc = _Doc("u", 1, text, parse_collect(text, "u")[0], [])
    server = make_server()
    # At the start of a line: every directive, `mesh` and `input` included.
    assert {c.label for c in server.complete(doc, len(lines), 0)} == set(N.DIRECTIVES)
    for number, word in enumerate(N.DIRECTIVES, start=1):
        hover = _word_doc(doc, _token_at(lines[number - 1], number, 1))
        assert (
            hover
            == D.DIRECTIVES[word]
            == f"`{N.DIRECTIVES[word].form}`: " + (N.DIRECTIVES[word].doc)
        )
    # After the arrow: every action, `remat` included.
    first = len(N.DIRECTIVES) + 1
    arrow = len("where x -> ")
    assert {c.label for c in server.complete(doc, first, arrow)} == set(N.ACTIONS)
    for number, name in enumerate(N.ACTIONS, start=first):
        hover = _word_doc(doc, _token_at(lines[number - 1], number, arrow + 1))
        assert hover == f"`{name}`: {N.ACTIONS[name].doc}", name
    # A keyword action offers its arguments: `remat(` offers `policy=`.
    remat = "where x -> remat("
    doc = _Doc("v", 1, remat, parse_collect(remat, "v")[0], [])
    assert "policy=" in {c.label for c in server.complete(doc, 1, len(remat))}
