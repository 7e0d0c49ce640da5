"""Fuzzing: hostile and careless specs get an `EqxformError`, never anything
else, and never hang.

Specs come from two sources: the grammar itself (`hypothesis.extra.lark`), and
mutations of the example specs of `specs/` (extreme numbers, deep nesting,
odd line breaks, wrong types, lines cut, doubled and swapped). Each goes
through `compile`, `plan` and `apply` on a small MLP (and, when it has a
`model` directive, `plan` and `apply` of its own model) in a worker process
(tests/_fuzz_worker.py) under a time limit; a spec that outlives it is a hang,
and the worker is replaced.

By default the two sources draw about 200 specs together, in well under a
minute; `EQXFORM_FUZZ_EXAMPLES=N` draws N. `EQXFORM_FUZZ_REPORT=path` writes
the counts (examples, compiled, errors by code, other exceptions, hangs) as
JSON, `EQXFORM_FUZZ_LOG=path` appends each bad example to a JSON-lines file as
it is found, and `EQXFORM_FUZZ_OWN=1` also builds and transforms each spec's
own `model` for real (slower: it compiles the draws of every model shape).
"""

from __future__ import annotations

import collections
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

from eqxform._parse import _parser

ROOT = Path(__file__).parent.parent
EXAMPLES = int(os.environ.get("EQXFORM_FUZZ_EXAMPLES", "200"))
# A hang is a spec still running after a minute: every example that does
# finish takes well under a second once the worker has compiled its draws (the
# first examples of a worker compile for a few seconds, more on a busy machine).
TIMEOUT = float(os.environ.get("EQXFORM_FUZZ_TIMEOUT", "60"))
RETRY_TIMEOUT = 5 * TIMEOUT
# The worker's budget for one model's arrays: small, so that a spec that
# would allocate gigabytes meets the limit rather than the machine's memory.
WORKER_BYTES = str(64 << 20)
# Its address space: JAX reserves much more than it uses, so this is generous;
# it only stops a runaway allocation from taking the machine down.
WORKER_ADDRESS_SPACE = str(24 << 30)


class Worker:
    """A worker process that runs specs, replaced when one hangs."""

    def __init__(self, cache: Path):
        self.process = None
        self.cache = cache  # this session's own (compiled code is loaded from it)

    def start(self):
        env = dict(
            os.environ,
            EQXFORM_MAX_BYTES=WORKER_BYTES,
            EQXFORM_FUZZ_ADDRESS_SPACE=WORKER_ADDRESS_SPACE,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="",
            # A worker that replaces a hung one reuses the others' compiled draws.
            JAX_COMPILATION_CACHE_DIR=str(self.cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(Path(__file__).parent / "_fuzz_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            text=True,
        )
        ready = self._read(120)
        assert ready == {"ready": True}, "the fuzz worker did not start"

    def _read(self, timeout: float):
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        return json.loads(line) if line else {"outcome": "died"}

    def stop(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process.stdin.close()
            self.process.stdout.close()
            self.process = None

    def _run(self, text: str, timeout: float) -> dict:
        if self.process is None:
            self.start()
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"text": text}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.stop()
            return {"outcome": "died"}
        answer = self._read(timeout)
        if answer is None or answer.get("outcome") == "died":
            self.stop()  # a hang (or a crash): the next spec gets a fresh worker
            return {"outcome": "hang" if answer is None else "died"}
        return answer

    def run(self, text: str) -> dict:
        """How `text` ends; a hang only when it also outlives a second, longer
        limit in a fresh worker. (A busy machine can make the first compile of
        a model's draws take longer than the limit; a real hang stays one.)"""
        answer = self._run(text, TIMEOUT)
        if answer["outcome"] == "hang":
            answer = self._run(text, RETRY_TIMEOUT)
            if answer["outcome"] != "hang":
                answer["slow"] = True
        return answer


class Tally:
    """Counts of how the examples ended, and the first bad ones."""

    def __init__(self):
        self.examples = 0
        self.compiled = 0
        self.ok = 0
        self.codes = collections.Counter()
        self.other = collections.Counter()
        self.hangs = 0
        self.slow = 0
        self.died = 0
        self.bad: list[tuple[str, dict]] = []

    def add(self, text: str, answer: dict) -> None:
        self.examples += 1
        log = os.environ.get("EQXFORM_FUZZ_LOG")
        if log and self.examples % 100 == 0:
            with open(log, "a") as f:
                f.write(json.dumps({"progress": self.to_dict()}) + "\n")
        outcome = answer["outcome"]
        if answer.get("stage") not in (None, "compile"):
            self.compiled += 1
        if answer.get("slow"):
            self.slow += 1
        if outcome == "ok":
            self.ok += 1
        elif outcome == "eqxform":
            self.codes[answer["code"]] += 1
        else:
            if outcome == "hang":
                self.hangs += 1
            elif outcome == "died":
                self.died += 1
            else:
                self.other[f"{answer['stage']}: {answer['code']}"] += 1
            if len(self.bad) < 20:
                self.bad.append((text, answer))
            log = os.environ.get("EQXFORM_FUZZ_LOG")
            if log:
                with open(log, "a") as f:
                    f.write(json.dumps({"text": text, **answer}) + "\n")

    def to_dict(self) -> dict:
        return {
            "examples": self.examples,
            "compiled": self.compiled,
            "ran_to_the_end": self.ok,
            "eqxform_errors": sum(self.codes.values()),
            "eqxform_errors_by_code": dict(sorted(self.codes.items())),
            "other_exceptions": dict(self.other),
            "hangs": self.hangs,
            "slow_but_finished_on_retry": self.slow,
            "worker_deaths": self.died,
        }

    def assert_clean(self) -> None:
        if os.environ.get("EQXFORM_FUZZ_REPORT"):
            path = Path(os.environ["EQXFORM_FUZZ_REPORT"])
            data = self.to_dict()
            if path.exists():  # the two sources add up into one report
                old = json.loads(path.read_text())
                data = _merge(old, data)
            path.write_text(json.dumps(data, indent=2) + "\n")
        shown = "\n\n".join(
            f"{_short(text)}\n-> {answer.get('stage')}: {answer.get('outcome')} "
            f"{answer.get('code', '')}\n{answer.get('error', '')}"
            for text, answer in self.bad[:5]
        )
        assert not self.bad, f"{len(self.bad)} bad examples, e.g.:\n\n{shown}"


def _short(text: str) -> str:
    return repr(text) if len(text) < 400 else repr(text[:200]) + " ... " + repr(text[-200:])


def _merge(a: dict, b: dict) -> dict:
    out = {}
    for key, value in a.items():
        if isinstance(value, dict):
            merged = collections.Counter(value)
            merged.update(b.get(key, {}))
            out[key] = dict(sorted(merged.items()))
        else:
            out[key] = value + b.get(key, 0)
    return out


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("jax-cache"))
    yield w
    w.stop()


# ---- the grammar ------------------------------------------------------------

_NAMES = [
    "x", "width", "weight", "bias", "layers", "Linear", "MLP", "Conv2d", "init", "replace",
    "wrap", "freeze", "cast", "scale", "lr", "weight_decay", "unwrap", "normal", "trunc_normal",
    "he_normal", "zeros", "constant", "orthogonal", "stddev", "lower", "upper", "value",
    "symmetric", "positive", "minimum", "weight_norm", "fan_in", "fan_out", "shape", "ndim",
    "size", "path", "index", "dtype", "adam", "sgd", "learning_rate", "scan", "vmap", "remat",
    "unroll", "f32", "bfloat16", "in_features", "out_features", "in_size", "out_size",
    "width_size", "depth", "gelu", "sqrt", "min", "max", "true", "none", "mlps", "count",
]  # fmt: skip
_NUMBERS = [
    "0", "1", "2", "3", "8", "0.5", "1e-3", ".5", "10", "100000", "1e300", "1e309",
    "4294967296", "18446744073709551615", "18446744073709551616", "99999999999999999999",
    "9" * 400, "1" * 5000, "1000000000",
]  # fmt: skip
_BREAKS = ["\n", "\n\n", "\n  ", "\r\n", "\r", "\x0c\n", "\x0b", "\x85", "\u2028", "\u2029"]


def _grammar_specs():
    """Specs drawn from the grammar. Words get a space on either side (the
    generator would otherwise glue `where` to the name after it); names and
    numbers come from lists that reach the interesting places (real field and
    action names, numbers at every limit)."""
    grammar = _parser()
    explicit = {}
    for terminal in grammar.terminals:
        value = getattr(terminal.pattern, "value", "")
        if terminal.pattern.type == "str" and value.isalpha():
            explicit[terminal.name] = st.just(f" {value} ")
    explicit.update(
        NAME=st.sampled_from(_NAMES).map(lambda n: f" {n} "),
        NUMBER=st.sampled_from(_NUMBERS) | st.integers(0, 2**70).map(str),
        STRING=st.sampled_from(['"a"', "'b # c'", '"x"', '"' + "a" * 300 + '"', '""']),
        _NL=st.sampled_from(_BREAKS[:4]),
        WS=st.sampled_from([" ", "  ", "\t", "\x0c"]),
        COMMENT=st.sampled_from(["# c", "#x  ", "# a\x0bb", "# a\x85b", "# a\u2028b", "#\x0c"]),
    )
    return from_lark(grammar, start="start", explicit=explicit)


# ---- mutations of the example specs -----------------------------------------

_SPECS = [p.read_text() for p in sorted((ROOT / "specs").glob("*.eqx"))]

_FRAGMENTS = [
    "9**9**9", "2**63", "-2**63", "10**10", '"a" * 10**10', "[0] * 10**9", "1e309",
    "-" * 3000 + "1", "not " * 3000 + "1", "[" * 3000 + "]" * 3000, "(" * 3000 + "1" + ")" * 3000,
    " + ".join(["1"] * 500), "1" * 5000, "\u0663", "\u0661\u0662", "1.5", "0.5", "[1, 2]", '"x"',
    "none", "true", "fan_in", "shape", "path", "4294967296", "18446744073709551616",
    "\x0c", "\x0b", "\x85", "\u2028", "\u2029", "\r", "\r\n", "#", "\t", "->", ",", "|",
    "[::0.5]", "[1.5]", "[::0]", "(", ")", "[", "]", "**", "*", "=", "stddev=[1, 2]",
]  # fmt: skip

_LINES = [
    "ensemble 1000000000", "ensemble 4", "stack layers scan 1000000000", "stack layers vmap 3",
    "stack layers scan", "unstack layers", "let x = 9**9**9", 'let x = "a" * 10**10',
    "let x = " + " + ".join(["1"] * 500), "seed 99999999999999999999", "seed 4294967296",
    "seed \u0663", "seed -1", "seed 1.5", "where Linear.weight -> scale 3000000000",
    "where Linear.weight -> init trunc_normal(lower=-2**63)",
    "where Linear.weight -> wrap positive(minimum=10**12)",
    "where Linear.weight -> init normal(stddev=[1, 2])",
    "where Linear.weight -> init normal(stddev=1/sqrt(fan_in))",
    "where Linear.weight -> init constant(value=\"x\")",
    "where Linear.weight -> init orthogonal(scale=shape)",
    'optimizer adam(learning_rate="x")', "optimizer adam(learning_rate=1e-3)",
    "optimizer sgd(learning_rate=[1])", "where layers[1.5] -> freeze",
    "where layers[::0.5] -> freeze", "where layers[99999999999999999999] -> freeze",
    "where ** -> freeze", "where ** -> unwrap", "where Linear -> cast bfloat16",
    "model MLP(in_size=2, out_size=2, width_size=100000, depth=2)",
    "model MLP(in_size=2, out_size=2, width_size=2, depth=1000000)",
    "model MLP(in_size=2, out_size=2, width_size=8, depth=2)",
    "model Linear(in_features=10**6, out_features=10**6)",
    "where layers[0] -> replace Linear(in_features=2, out_features=10**6)",
    "where layers[0] -> replace Linear(in_features=2, out_features=8)",
    "where Linear.weight -> lr 0.1", "where Linear.bias -> weight_decay 0",
    "input f32[2]", "input f32[99999999999]", "where Linear.weight -> wrap symmetric",
]  # fmt: skip


@st.composite
def _mutated_specs(draw):
    text = draw(st.sampled_from(_SPECS))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "line", "duplicate", "swap", "number"]))
        lines = text.split("\n")
        if kind == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(_FRAGMENTS)) + text[at:]
        elif kind == "delete":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        elif kind == "line":
            at = draw(st.integers(0, len(lines)))
            lines.insert(at, draw(st.sampled_from(_LINES)))
            text = draw(st.sampled_from(_BREAKS[:5])).join(lines)
        elif kind == "duplicate":
            at = draw(st.integers(0, len(lines) - 1))
            lines.insert(at, lines[at])
            text = "\n".join(lines)
        elif kind == "swap":
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        else:
            import re

            numbers = list(re.finditer(r"\d+(\.\d+)?", text))
            if numbers:
                m = draw(st.sampled_from(numbers))
                text = text[: m.start()] + draw(st.sampled_from(_NUMBERS)) + text[m.end() :]
    return text


def _fuzz(worker, strategy, examples: int) -> None:
    tally = Tally()
    started = time.perf_counter()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def check(text):
        tally.add(text, worker.run(text))

    check()
    print(f"\nfuzz: {json.dumps(tally.to_dict())} in {time.perf_counter() - started:.1f} s")
    tally.assert_clean()
    assert tally.examples >= examples // 2  # not vacuous: hypothesis drew them


def test_specs_from_the_grammar(worker):
    _fuzz(worker, _grammar_specs(), EXAMPLES // 2)


def test_mutated_example_specs(worker):
    _fuzz(worker, _mutated_specs(), EXAMPLES - EXAMPLES // 2)
