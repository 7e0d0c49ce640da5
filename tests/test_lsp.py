"""The language server, driven over stdio by pygls's client as an editor would
drive it, and its model-aware half (`Analyzer`) held to `Program.plan`."""

import asyncio
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

            s.change(uri, "let b = 1\nlet a = b\nwhere x -> init trunc_normal\n")
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
    """Model-free diagnostics and hovers answer at once while a long plan runs,
    and only the last version's plan is published."""
    rules = "".join(f"where layers[{i}].weight -> init normal(stddev=0.1)\n" for i in range(60))
    text = "model MLP(in_size=4, out_size=4, width_size=4, depth=80)\n" + rules

    async def go():
        async with Session() as s:
            uri = s.open(text)
            await s.diagnostics(uri, timeout=30)
            latencies = []
            for i in range(8):
                start = time.perf_counter()
                version = s.edit(uri, 1 + i, 0, 0, " ")
                await s.diagnostics(uri, version, timeout=30)
                latencies.append(time.perf_counter() - start)
                await asyncio.sleep(0.05)
            assert max(latencies) < 2.0, latencies
            start = time.perf_counter()
            await s.hover(uri, 0, 2)
            assert time.perf_counter() - start < 2.0
            # The last version is planned (its second publication); its
            # diagnostics are the plan's: none.
            assert await s.settled(uri, version, timeout=180) == []
            published = [p.version for p in s.published[uri]]
            assert set(range(1, version + 1)) <= set(published)

    run(go(), timeout=300)


def test_exit_does_not_wait_for_a_long_plan():
    rules = "".join(f"where layers[{i}].weight -> init zeros\n" for i in range(150))
    text = "model MLP(in_size=4, out_size=4, width_size=4, depth=400)\n" + rules

    async def go():
        session = Session()
        async with session as s:
            uri = s.open(text)
            await s.diagnostics(uri, timeout=30)
            await asyncio.sleep(4)  # the plan (some ten seconds) is under way
            assert len(s.published[uri]) == 1
            start = time.perf_counter()
        return time.perf_counter() - start, session.client._server.returncode

    seconds, returncode = run(go())
    assert returncode == 0
    assert seconds < 3.0


# ---- the model-aware half, in process -----------------------------------------


def _same_diagnostics(got, want):
    assert [(d.code, d.message, d.span) for d in got] == [(d.code, d.message, d.span) for d in want]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_analysis_equals_the_plan(path):
    text = path.read_text()
    plan = eqxform.compile(text).plan()
    view = Analyzer().analyse("file:///spec.eqx", text, "spec.eqx")
    _same_diagnostics(view.diagnostics, plan.diagnostics)
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
    # An edit of the first rule replans all three.
    third = analyzer.analyse(
        "u", MODEL + "where layers[0].bias -> freeze\n" + "".join(rules[1:]), "u"
    )
    assert not any(a is b for a, b in zip(third.chunks, second.chunks))


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
