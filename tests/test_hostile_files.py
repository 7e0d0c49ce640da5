"""Hostile and damaged model files: each is refused with its own diagnostic,
by `eqxform.load` and by every command that reads a model file, never with a
traceback, a hang or an allocation of what the file claims.

The files are crafted byte by byte (`craft`): the length, then the header
exactly as written here (never through a JSON writer, so it can be anything),
then the data.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eqxform
from eqxform import _limits
from eqxform import _recipes as R
from eqxform._cli import main

BASE = "MLP(2, 2, 4, 1)"


def craft(path: Path, header: str | bytes, data: bytes = b"", length: int | None = None) -> Path:
    """A model file, byte by byte: 8 bytes of little-endian header length
    (`length`, or the header's true length), the header, the data."""
    raw = header.encode("utf-8") if isinstance(header, str) else header
    n = len(raw) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + raw + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> str:
    """One tensor's header entry, written as text so that any value fits."""
    return f'{{"dtype":{_lit(dtype)},"shape":{_lit(shape)},"data_offsets":{_lit(offsets)}}}'


def _lit(value) -> str:
    if isinstance(value, str) and value.startswith("@"):
        return value[1:]  # raw text, as it stands in the header
    if isinstance(value, tuple):
        return "[" + ",".join(_lit(v) for v in value) + "]"
    return json.dumps(value)


def tensors_of(path: Path) -> tuple[str, bytes]:
    """(the tensor entries as JSON text, the data bytes) of a real model file,
    so that a crafted recipe can sit beside tensors that match it."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    return json.dumps(header)[1:-1], raw[8 + n :]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "good.eqx"
    eqxform.save(path, eqxform.new(BASE, seed=0))
    return path


def with_recipe(path: Path, good: Path, recipe: str | dict) -> Path:
    """A file with `good`'s tensors and the given recipe (text as it stands)."""
    text = recipe if isinstance(recipe, str) else json.dumps(recipe)
    entries, data = tensors_of(good)
    meta = json.dumps({"eqxform": text})
    return craft(path, "{" + f'"__metadata__":{meta},' + entries + "}", data)


def refused(path: Path, code: str, words: str) -> None:
    """`load` raises a ModelFileError with `code`; `show` exits 1 with it and
    no traceback."""
    with pytest.raises(eqxform.ModelFileError) as info:
        eqxform.load(path)
    d = info.value.diagnostics[0]
    assert d.code == code, info.value
    assert words in d.message, d.message
    assert d.help
    result = CliRunner().invoke(main, ["show", str(path)])
    assert result.exit_code == 1, result.output
    assert f"error[{code}]" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


DEEP = "[" * 100_000 + "]" * 100_000

HEADERS = [
    # (id, header text, data, code, words)
    ("overlap", '{"a":' + entry() + ',"b":' + entry() + "}", 8, "E313", "overlap"),
    (
        "overlap-inside",
        '{"a":' + entry(shape=(4,), offsets=(0, 16)) + ',"b":' + entry(offsets=(4, 12)) + "}",
        16,
        "E313",
        "overlap",
    ),
    ("gap", '{"a":' + entry(shape=(1,), offsets=(4, 8)) + "}", 8, "E313", "belong to no tensor"),
    ("tail", '{"a":' + entry() + "}", 12, "E313", "last 4 bytes"),
    ("one offset", '{"a":' + entry(offsets=(0,)) + "}", 8, "E313", "data offsets"),
    ("reversed offsets", '{"a":' + entry(offsets=(8, 0)) + "}", 8, "E313", "start <= end"),
    ("float offsets", '{"a":' + entry(offsets=(0.0, 8)) + "}", 8, "E313", "data offsets"),
    ("negative offsets", '{"a":' + entry(offsets=(-8, 0)) + "}", 8, "E313", "data offsets"),
    ("outside", '{"a":' + entry(shape=(200,), offsets=(0, 800)) + "}", 8, "E303", "outside"),
    ("fractional shape", '{"a":' + entry(shape=(1.5,)) + "}", 8, "E311", "no integer"),
    ("boolean shape", '{"a":' + entry(shape=(True, 2)) + "}", 8, "E311", "no integer"),
    ("negative shape", '{"a":' + entry(shape=(-2,)) + "}", 8, "E311", "negative"),
    ("string shape", '{"a":' + entry(shape="2") + "}", 8, "E311", "no list"),
    ("infinite shape", '{"a":' + entry(shape=("@1e999",)) + "}", 8, "E314", "1e999"),
    ("nan shape", '{"a":' + entry(shape=("@NaN",)) + "}", 8, "E314", "NaN"),
    ("5000-digit shape", '{"a":' + entry(shape=("@" + "9" * 5000,)) + "}", 8, "E314", "5,000"),
    ("huge dimension", '{"a":' + entry(shape=(2**50,)) + "}", 8, "E311", "exceeds"),
    (
        "too many dimensions",
        '{"a":' + entry(shape=(1,) * 65 + (2,), offsets=(0, 8)) + "}",
        8,
        "E311",
        "66 dimensions",
    ),
    ("unknown dtype", '{"a":' + entry(dtype="F8_E4M3", offsets=(0, 2)) + "}", 2, "E312", "F8"),
    ("numeric dtype", '{"a":' + entry(dtype=4) + "}", 8, "E312", "dtype"),
    ("size mismatch", '{"a":' + entry(shape=(3,)) + "}", 8, "E302", "8 bytes for shape [3]"),
    ("entry no object", '{"a":[1,2,3]}', 0, "E302", "malformed entry"),
    ("entry missing keys", '{"a":{"dtype":"F32"}}', 0, "E302", "malformed entry"),
    ("deep header", '{"a":' + DEEP + "}", 0, "E310", "nests deeper"),
    (
        "just too deep",
        '{"a":' + "[" * _limits.MAX_JSON_DEPTH + "]" * _limits.MAX_JSON_DEPTH + "}",
        0,
        "E310",
        "nests deeper",
    ),
    (
        "millions of values",
        '{"a":[' + "[]," * (_limits.MAX_JSON_ITEMS // 2) + "[]]}",
        0,
        "E321",
        "values",
    ),
    ("duplicate key", '{"a":' + entry() + ',"a":' + entry() + "}", 8, "E318", "twice"),
    ("header a list", "[1, 2]", 0, "E302", "not a JSON object"),
    ("header not utf-8", b'{"\xff\xfe":1}', 0, "E302", "not JSON"),
    ("brackets in strings", '{"[[[[":' + entry() + "}", 8, None, None),
    ("metadata numbers", '{"__metadata__":{"a":1}}', 0, "E302", "map of strings"),
]


@pytest.mark.parametrize(
    "header,size,code,words", [h[1:] for h in HEADERS], ids=[h[0] for h in HEADERS]
)
def test_hostile_headers(tmp_path, header, size, code, words):
    path = craft(tmp_path / "bad.eqx", header, b"\0" * size)
    if code is None:
        # Brackets inside strings do not count as nesting: a valid header.
        assert set(eqxform._files.read_header(path).tensors) == {"[[[["}
        return
    refused(path, code, words)


def test_header_length_beyond_the_file_and_the_cap(tmp_path):
    path = craft(tmp_path / "bad.eqx", "{}", length=10**12)
    refused(path, "E303", "header claims")
    path = craft(tmp_path / "bad.eqx", "{}", b" " * 16, length=_limits.MAX_HEADER_BYTES + 1)
    refused(path, "E303", "header claims")


RECIPES = [
    ("specs a number", {"base": {"constructor": BASE, "seed": 0}, "specs": 3}, "E315", "`specs`"),
    ("specs a string", {"base": {"constructor": BASE, "seed": 0}, "specs": "x"}, "E315", "`specs`"),
    (
        "spec entry a string",
        {"base": {"constructor": BASE, "seed": 0}, "specs": ["where x -> freeze"]},
        "E315",
        "`specs[0]`",
    ),
    (
        "params a list",
        {
            "base": {"constructor": BASE, "seed": 0},
            "specs": [{"name": "s", "text": "let w = 1\n", "seed": 0, "params": [1]}],
        },
        "E315",
        "`specs[0].params` is a list",
    ),
    (
        "params value a map",
        {
            "base": {"constructor": BASE, "seed": 0},
            "specs": [{"name": "s", "text": "let w = 1\n", "seed": 0, "params": {"w": {"a": 1}}}],
        },
        "E315",
        "`specs[0].params.w`",
    ),
    (
        "spec text a number",
        {"base": {"constructor": BASE, "seed": 0}, "specs": [{"text": 5}]},
        "E315",
        "`specs[0].text`",
    ),
    (
        "unknown let",
        {
            "base": {"constructor": BASE, "seed": 0},
            "specs": [{"name": "s", "text": "let w = 1\n", "seed": 0, "params": {"zz": 1}}],
        },
        "E319",
        "`zz`",
    ),
    ("seed a string", {"base": {"constructor": BASE, "seed": "0"}}, "E315", "`base.seed`"),
    ("seed a fraction", {"base": {"constructor": BASE, "seed": 1.5}}, "E315", "`base.seed`"),
    ("seed negative", {"base": {"constructor": BASE, "seed": -1}}, "E315", "`base.seed`"),
    ("seed 2**64", {"base": {"constructor": BASE, "seed": 2**64}}, "E315", "`base.seed`"),
    (
        "spec seed a boolean",
        {"base": {"constructor": BASE, "seed": 0}, "specs": [{"text": "", "seed": True}]},
        "E315",
        "`specs[0].seed`",
    ),
    ("constructor a number", {"base": {"constructor": 5, "seed": 0}}, "E315", "constructor"),
    ("base a list", {"base": [BASE]}, "E315", "`base`"),
    ("train a list", {"base": {"constructor": BASE, "seed": 0}, "train": [1]}, "E315", "`train`"),
    (
        "versions numbers",
        {"base": {"constructor": BASE, "seed": 0}, "versions": {"jax": 4}},
        "E315",
        "`versions.jax`",
    ),
    ("newer format", {"format": "eqxform/2", "base": {"constructor": BASE}}, "E316", "eqxform/2"),
    ("recipe a list", [1, 2], "E315", "not a JSON object"),
    ("recipe not JSON", "{base", "E302", "not JSON"),
    (
        "deep recipe",
        '{"base": {"constructor": "' + BASE + '", "seed": 0}, "x": ' + DEEP + "}",
        "E310",
        "nests deeper",
    ),
    (
        "5000-digit seed",
        '{"base": {"constructor": "' + BASE + '", "seed": ' + "9" * 5000 + "}}",
        "E314",
        "5,000 digits",
    ),
    (
        "duplicate key",
        '{"base": {"constructor": "' + BASE + '", "seed": 0}, "specs": [], "specs": 3}',
        "E318",
        "`specs`",
    ),
    (
        "huge string",
        {"base": {"constructor": BASE + " " * (_limits.MAX_RECIPE_STRING + 1), "seed": 0}},
        "E317",
        "characters long",
    ),
    ("base no call", {"base": {"constructor": "3", "seed": 0}}, "E315", "not a constructor call"),
    (
        "picked member a string",
        {"base": {"constructor": BASE, "seed": 0}, "picked": {"member": "x", "members": 2}},
        "E315",
        "`picked.member` is",
    ),
    (
        "picked value a string",
        {
            "base": {"constructor": BASE, "seed": 0},
            "picked": {"member": 0, "members": 2, "values": {"lr": "s"}},
        },
        "E315",
        "`picked.values.lr`",
    ),
    (
        "member value a string",
        {
            "base": {"constructor": BASE, "seed": 0},
            "train": {"members": [{"member": 0, "values": {"a": "s"}, "loss": 1.0}]},
        },
        "E315",
        "`train.members[0].values.a`",
    ),
    (
        "member loss missing",
        {"base": {"constructor": BASE, "seed": 0}, "train": {"members": [{"member": 0}]}},
        "E315",
        "`train.members[0].loss` is missing",
    ),
    (
        "member loss a string",
        {
            "base": {"constructor": BASE, "seed": 0},
            "train": {"members": [{"member": 0, "loss": "low"}]},
        },
        "E315",
        "`train.members[0].loss`",
    ),
    (
        "tensors do not match",
        {"base": {"constructor": "MLP(2, 2, 8, 1)", "seed": 0}},
        "E305",
        "does not match its recipe",
    ),
]


@pytest.mark.parametrize("recipe,code,words", [r[1:] for r in RECIPES], ids=[r[0] for r in RECIPES])
def test_hostile_recipes(tmp_path, good, recipe, code, words):
    refused(with_recipe(tmp_path / "bad.eqx", good, recipe), code, words)


def test_too_many_specs(tmp_path, good, monkeypatch):
    monkeypatch.setattr(_limits, "MAX_RECIPE_SPECS", 3)
    recipe = {"base": {"constructor": BASE, "seed": 0}, "specs": [{"text": ""}] * 4}
    refused(with_recipe(tmp_path / "bad.eqx", good, recipe), "E317", "4 specs")


def test_a_recipe_with_every_field_loads(tmp_path, good):
    """The schema takes everything eqxform writes."""
    program = eqxform.compile(
        'model MLP(2, 2, 4, 1)\nlet w = [1, 2]\nlet s = "x"\n'
        "where Linear.weight -> init normal(stddev=0.5)\n",
        params={"w": [3, 4.5], "s": "y"},
    )
    model = program.apply(seed=5)
    eqxform.save(tmp_path / "m.eqx", model)
    recipe = eqxform._files.read_header(tmp_path / "m.eqx").recipe
    assert recipe["specs"][0]["params"] == {"w": [3, 4.5], "s": "y"}
    back = eqxform.load(tmp_path / "m.eqx")
    for name, array in R.named_arrays(model):
        assert np.array_equal(np.asarray(array), np.asarray(dict(R.named_arrays(back))[name]))


@pytest.mark.parametrize("command", ["check", "plan", "show"])
def test_check_plan_and_show_compare_tensors_with_the_recipe(tmp_path, good, command):
    """A file whose tensors are not what its recipe builds is an error for
    every command that reads it, not only for `load`."""
    bad = with_recipe(tmp_path / "bad.eqx", good, {"base": {"constructor": "MLP(2, 2, 8, 1)"}})
    spec = tmp_path / "s.eqx"
    spec.write_text("where Linear.bias -> init zeros\n")
    args = [command, str(bad)] if command == "show" else [command, str(spec), str(bad)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "error[E305]" in result.output and "no problems found" not in result.output


def test_show_says_when_it_could_not_check(tmp_path, good):
    """A recipe built by a constructor of the user's own package is not
    imported by `show`: it says the tensors were not checked, and how."""
    bad = with_recipe(tmp_path / "m.eqx", good, {"base": {"constructor": "mypkg.m:make()"}})
    result = CliRunner().invoke(main, ["show", str(bad)])
    assert result.exit_code == 0, result.output
    assert "not checked against the recipe" in result.output and "--allow mypkg" in result.output
    result = CliRunner().invoke(main, ["show", str(bad), "--format", "json"])
    assert json.loads(result.stdout)["checked"] is False


def test_file_changed_after_its_header_was_read(tmp_path, good):
    path = tmp_path / "m.eqx"
    path.write_bytes(good.read_bytes())
    header, _, skel = R.skeleton(path)
    os.truncate(path, path.stat().st_size - 8)
    with pytest.raises(eqxform.ModelFileError) as info:
        R.fill(header, skel)
    assert info.value.diagnostics[0].code == "E320"


def test_a_model_file_as_fifo_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "m.eqx"
    os.mkfifo(fifo)
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.load(fifo)
    assert info.value.diagnostics[0].code == "E301"
    assert "not a regular file" in info.value.diagnostics[0].message


@settings(
    max_examples=int(os.environ.get("EQXFORM_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_headers_give_diagnostics(tmp_path, good, data):
    """Bytes of a real header replaced, inserted or cut: the file loads, or
    is refused with a diagnostic; nothing else."""
    raw = bytearray(good.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, 8 + n - 1))
        kind = data.draw(st.sampled_from(["replace", "insert", "cut"]))
        byte = data.draw(st.sampled_from(b'{}[]",:0123456789.-eE \\\x00\xff'))
        if kind == "replace":
            raw[at] = byte
        elif kind == "insert":
            raw.insert(at, byte)
        else:
            del raw[at]
    path = tmp_path / "fuzz.eqx"
    path.write_bytes(bytes(raw))
    try:
        eqxform.load(path)
    except eqxform.EqxformError as e:
        assert e.diagnostics and all(d.code[0] == "E" and d.help for d in e.diagnostics[:1])
