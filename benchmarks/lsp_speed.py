"""How fast the language server answers, on a 200-rule spec over a model of
1,002 leaves (`MLP(..., depth=500)`), driven over stdio as an editor drives it.

Run: `python benchmarks/lsp_speed.py` (`--burst` for the burst alone, `--smoke`
for the smallest size: that it runs). Every latency is measured at the client,
from sending a message to receiving its answer; the table gives the median of
the requests after the first (the first of each kind is shown on its own).

- model-free diagnostics: an edit -> the diagnostics of parse and check,
  published once the edits pause (`CHECK_DEBOUNCE_S` of it is waiting);
- model-aware diagnostics: an edit -> the plan's diagnostics, published once
  the text is checked (after the pause for more edits, `CHECK_DEBOUNCE_S`, and
  `DEBOUNCE_S` more) and the lines from the edit down are planned;
- hover and completion, with the plan settled, and while a whole plan runs;
- a burst: 300 edits to a 2,000-line spec sent together (a paste, a macro, an
  editor catching up), then a hover, against one edit then a hover: the
  server checks the last version only, so the burst costs about one check.
  The ratio column is the burst's time over the single edit's.

The targets (issue 18): model-aware diagnostics after an edit of the last rule
within 100 ms (median), hover and completion within 50 ms; the first table
gives each row's target where it has one.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _lsp_client import Session  # noqa: E402

from eqxform._lsp import CHECK_DEBOUNCE_S, DEBOUNCE_S  # noqa: E402

RULES = 200
MODEL = "model MLP(in_size=8, out_size=8, width_size=8, depth=500)"
REPEATS = 25

# The targets, in seconds, by row.
TARGETS = {
    "model-aware diagnostics (edit of the last rule)": 0.100,
    "hover on a selector (its matches)": 0.050,
    "hover on an action": 0.050,
    "completion of selector steps (model fields)": 0.050,
    "completion of actions": 0.050,
    "hover on an action, during a whole plan": 0.050,
    "completion of actions, during a whole plan": 0.050,
}


def make_spec(rules: int = RULES) -> str:
    lines = [MODEL, "seed 0", "let s = 0.5", ""]
    forms = [
        "where layers[{i}].weight -> init normal(stddev=s)",
        "where layers[{i}].bias -> init zeros",
        "where layers[{i}].weight if ndim == 2 -> scale 0.5",
        "where layers[{i}] -> init trunc_normal(stddev=1 / sqrt(fan_in), lower=-2, upper=2)",
    ]
    for i in range(rules):
        lines.append(forms[i % len(forms)].format(i=i))
    return "\n".join(lines) + "\n"


async def timed(coroutine) -> tuple[float, object]:
    start = time.perf_counter()
    result = await coroutine
    return time.perf_counter() - start, result


async def measure() -> list[tuple[str, float | None, float, str]]:
    text = make_spec(RULES)
    lines = text.split("\n")
    last = len(lines) - 2  # 0-based: the last rule
    rows: list[tuple[str, float | None, float, str]] = []

    async with Session() as s:
        start = time.perf_counter()
        uri = s.open(text)
        await s.diagnostics(uri, timeout=60)
        first_free = time.perf_counter() - start
        await s.settled(uri, timeout=900)
        first_aware = time.perf_counter() - start

        # Model-free diagnostics: indent the last rule, and take the indent back.
        middle = 4 + RULES // 2
        times = []
        for i in range(2 * (REPEATS // 2)):  # an even number: the text ends as it began
            version = s.edit(uri, last, 0, 0, " ") if i % 2 == 0 else s.edit(uri, last, 0, 1, "")
            seconds, _ = await timed(s.diagnostics(uri, version, timeout=60))
            times.append(seconds)
        rows.append(
            (
                "model-free diagnostics (edit)",
                first_free,
                statistics.median(times),
                f"of which {CHECK_DEBOUNCE_S * 1e3:.0f} ms is the pause for more edits",
            )
        )
        await s.settled(uri, timeout=900)

        # Model-aware diagnostics after an edit of the last rule: only it is replanned.
        times = []
        original = lines[last]
        for i in range(6):
            line = original.replace("upper=2", "upper=3") if i % 2 == 0 else original
            version = s.edit(uri, last, 0, len(lines[last]), line)
            lines[last] = line
            seconds, _ = await timed(s.settled(uri, version, timeout=300))
            times.append(seconds)
        aware = statistics.median(times)
        rows.append(
            (
                "model-aware diagnostics (edit of the last rule)",
                first_aware,
                aware,
                f"of which {(CHECK_DEBOUNCE_S + DEBOUNCE_S) * 1e3:.0f} ms is the pause for "
                "more edits",
            )
        )

        # Hover on a selector (the plan's matches) and on a word; completion.
        selector = (middle, lines[middle].index("layers") + 2)
        word = (middle, lines[middle].index("-> ") + 4)

        async def repeat(make):
            first, _ = await timed(make())
            times = [(await timed(make()))[0] for _ in range(REPEATS)]
            return first, statistics.median(times)

        first, median = await repeat(lambda: s.hover(uri, *selector))
        hover = await s.hover(uri, *selector)
        assert "match" in hover.contents.value, hover.contents.value
        rows.append(("hover on a selector (its matches)", first, median, ""))
        first, median = await repeat(lambda: s.hover(uri, *word))
        rows.append(("hover on an action", first, median, ""))

        # Completion of selector steps: type `where layers[7].` on a new line.
        s.edit(uri, last + 1, 0, 0, "where layers[7].\n")
        await s.diagnostics(uri, timeout=60)
        first, median = await repeat(lambda: s.complete(uri, last + 1, len("where layers[7].")))
        items = await s.complete(uri, last + 1, len("where layers[7]."))
        assert {"weight", "bias"} <= {i.label for i in items}, [i.label for i in items]
        rows.append(("completion of selector steps (model fields)", first, median, ""))
        first, median = await repeat(
            lambda: s.complete(uri, middle, lines[middle].index("-> ") + 3)
        )
        rows.append(("completion of actions", first, median, ""))
        s.edit(uri, last + 1, 0, len("where layers[7]."), "")
        await s.settled(uri, timeout=900)

        first, median = await repeat(lambda: s.format(uri))
        rows.append(("formatting", first, median, ""))

        # While a whole plan runs (an edit of the first rule replans every line):
        # hover and completion still answer.
        first_rule = 4
        line = lines[first_rule]
        start = time.perf_counter()
        version = s.edit(uri, first_rule, 0, len(line), line.replace("stddev=s", "stddev=s / 2"))
        await asyncio.sleep(DEBOUNCE_S + 0.5)
        busy_hover = [(await timed(s.hover(uri, *word)))[0] for _ in range(REPEATS)]
        busy_complete = [
            (await timed(s.complete(uri, middle, lines[middle].index("-> ") + 3)))[0]
            for _ in range(REPEATS)
        ]
        await s.settled(uri, version, timeout=900)
        whole = time.perf_counter() - start
        rows.append(
            ("hover on an action, during a whole plan", None, statistics.median(busy_hover), "")
        )
        rows.append(
            (
                "completion of actions, during a whole plan",
                None,
                statistics.median(busy_complete),
                "",
            )
        )
        rows.append(
            (
                "model-aware diagnostics (edit of the first rule)",
                None,
                whole,
                "every rule replanned",
            )
        )
    return rows


BURST = 300
BURST_LINES = 2000


async def measure_burst(repeats: int = 5) -> list[tuple[str, float | None, float, str]]:
    """A burst of `BURST` edits to one line of a `BURST_LINES`-line spec, then a
    hover on that line, against one edit then a hover."""
    text = make_spec(BURST_LINES - 4)
    lines = text.split("\n")
    line = BURST_LINES // 2
    original = lines[line]
    cut = original.index("-> ") + 3
    rows: list[tuple[str, float | None, float, str]] = []
    async with Session() as s:
        uri = s.open(text)
        await s.diagnostics(uri, timeout=300)

        async def burst(edits: int) -> tuple[float, float, int]:
            """Seconds to the hover's answer and to the last version's
            diagnostics, and how many versions were checked (published)."""
            start = time.perf_counter()
            first = s._versions[uri] + 1
            end = len(original)
            for i in range(edits):
                action = "freeze" if (edits - i) % 2 else "init zeros"  # the last: `freeze`
                version = s.edit(uri, line, cut, end, action)
                end = cut + len(action)
            hover = await s.hover(uri, line, cut + 1)
            answered = time.perf_counter() - start
            assert "freeze" in hover.contents.value, hover.contents.value
            await s.diagnostics(uri, version, timeout=300)
            published = time.perf_counter() - start
            checked = {p.version for p in s.published[uri]} & set(range(first, version + 1))
            # Back to the original line, checked, before the next round.
            version = s.edit(uri, line, cut, end, original[cut:])
            await s.diagnostics(uri, version, timeout=300)
            return answered, published, len(checked)

        results = {n: [await burst(n) for _ in range(repeats)] for n in (1, BURST)}
    one = statistics.median(r[0] for r in results[1])
    one_published = statistics.median(r[1] for r in results[1])
    for n in (1, BURST):
        answered = statistics.median(r[0] for r in results[n])
        published = statistics.median(r[1] for r in results[n])
        checked = max(r[2] for r in results[n])
        what = "1 edit" if n == 1 else f"{n} edits sent together"
        rows.append(
            (
                f"{what}, then a hover: the hover's answer",
                None,
                answered,
                f"{answered / one:.2f}x one edit",
            )
        )
        rows.append(
            (
                f"{what}: the last version's diagnostics",
                None,
                published,
                f"{published / one_published:.2f}x one edit; "
                f"{checked} of {n} version{'s' if n > 1 else ''} checked",
            )
        )
    return rows


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    burst_only = "--burst" in sys.argv[1:]
    if "--smoke" in sys.argv[1:]:
        global RULES, MODEL, REPEATS, BURST, BURST_LINES
        RULES, REPEATS, BURST, BURST_LINES = 8, 2, 4, 40
        MODEL = "model MLP(in_size=8, out_size=8, width_size=8, depth=8)"
    rows = [] if burst_only else asyncio.run(measure())
    burst = asyncio.run(measure_burst())
    leaves = 2 * (int(MODEL.rsplit("depth=", 1)[1].rstrip(")")) + 1)  # an MLP's weights and biases
    table = Table(
        title=f"eqxform lsp: {RULES} rules, {MODEL.removeprefix('model ')} ({leaves:,} leaves)"
    )
    table.add_column("request")
    table.add_column("first", justify="right")
    table.add_column("median after the first", justify="right")
    table.add_column("target", justify="right")
    table.add_column("")
    for name, first, median, note in rows:
        target = TARGETS.get(name)
        table.add_row(
            name,
            "" if first is None else f"{first * 1e3:,.0f} ms",
            f"{median * 1e3:,.1f} ms",
            ""
            if target is None
            else f"<= {target * 1e3:.0f} ms ({'met' if median <= target else 'missed'})",
            note,
        )
    if rows:
        Console(width=120).print(table)

    table = Table(
        title=f"eqxform lsp: a burst of {BURST} edits to a {BURST_LINES:,}-line spec "
        f"(median of 5 rounds)"
    )
    table.add_column("request")
    table.add_column("median", justify="right")
    table.add_column("")
    for name, _, median, note in burst:
        table.add_row(name, f"{median * 1e3:,.0f} ms", note)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
