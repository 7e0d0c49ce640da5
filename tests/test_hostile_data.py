"""`eqxform train --data`: hostile and careless data files are diagnostics,
found from the headers before anything is loaded (nothing unpickled, nothing
allocated that a header claims), never tracebacks."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from eqxform import UsageError, _api, _limits
from eqxform._cli import main
from eqxform._runtime._train import load_data


def npy(header: dict, body: bytes = b"", version=(1, 0)) -> bytes:
    """An `.npy` member: a header as given (any shape it claims), then `body`."""
    f = io.BytesIO()
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(f, header)
    else:
        np.lib.format.write_array_header_2_0(f, header)
    return f.getvalue() + body


def npz(path: Path, members: dict[str, bytes], compress=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compress) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def real(array) -> bytes:
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


X = np.zeros((4, 2), np.float32)
Y = np.zeros((4, 2), np.float32)
F4 = {"descr": "<f4", "fortran_order": False}


def cases(tmp: Path):
    yield "complex x", lambda p: np.savez(p, x=X.astype(np.complex64), y=Y), "E526", "complex"
    yield "object x", lambda p: np.savez(p, x=np.array([{}, 1], object), y=Y[:2]), "E526", "objects"
    yield "string y", lambda p: np.savez(p, x=X, y=np.array(["a"] * 4)), "E526", "strings"
    yield (
        "record x",
        lambda p: np.savez(p, x=np.zeros(4, [("a", "f4"), ("b", "i4")]), y=Y),
        "E526",
        "records",
    )
    yield (
        "member not npy",
        lambda p: npz(p, {"x.npy": real(X), "y.npy": real(Y), "notes.txt": b"hello"}),
        "E525",
        "`notes.txt`",
    )
    yield "x not npy", lambda p: npz(p, {"x": b"raw", "y.npy": real(Y)}), "E525", "`x`"
    yield "single npy", lambda p: np.save(p, X), "E525", "single `.npy`"
    yield "text", lambda p: Path(p).write_text("x,y\n1,2\n"), "E525", "not an `.npz`"
    yield (
        "7 TiB claimed",
        lambda p: npz(p, {"x.npy": npy({**F4, "shape": (7 * 2**40 // 4,)}), "y.npy": real(Y)}),
        "E527",
        "7.0 TiB",
    )
    yield (
        "fewer bytes claimed",
        lambda p: npz(p, {"x.npy": npy({**F4, "shape": (1,)}, b"\0" * 64), "y.npy": real(Y)}),
        "E527",
        "claims",
    )
    yield (
        "negative shape",
        lambda p: npz(p, {"x.npy": npy({**F4, "shape": (-4,)}), "y.npy": real(Y)}),
        "E525",
        "no shape",
    )
    yield (
        "broken header",
        lambda p: npz(
            p, {"x.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n", "y.npy": real(Y)}
        ),
        "E525",
        "not a readable",
    )
    yield (
        "version 3",
        lambda p: npz(p, {"x.npy": b"\x93NUMPY\x03\x00" + real(X)[8:], "y.npy": real(Y)}),
        "E525",
        "version 3.0",
    )
    yield "missing y", lambda p: np.savez(p, x=X), "E420", "`x` and `y`"
    yield "lengths differ", lambda p: np.savez(p, x=X, y=Y[:3]), "E420", "one row per example"
    yield "scalar x", lambda p: np.savez(p, x=np.float32(1), y=Y), "E420", "one row per example"
    yield "no rows", lambda p: np.savez(p, x=X[:0], y=Y[:0]), "E420", "no examples"


CASES = list(cases(Path()))


@pytest.mark.parametrize("write,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_data(tmp_path, write, code, words):
    path = tmp_path / "data.npz"
    write(str(path))
    if not path.exists():  # numpy named it itself (`np.save` adds `.npy`)
        path = next(tmp_path.iterdir())
    with pytest.raises(UsageError) as info:
        load_data(str(path))
    d = info.value.diagnostics[0]
    assert d.code == code, info.value
    assert words in d.message, d.message
    assert d.help


def test_a_damaged_member_is_found_when_read(tmp_path):
    path = npz(tmp_path / "data.npz", {"x.npy": real(X + 1234.5), "y.npy": real(Y)})
    raw = bytearray(path.read_bytes())
    at = raw.index(np.float32(1234.5).tobytes())  # the first value of `x`, past its header
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(UsageError) as info:
        load_data(str(path))
    assert info.value.diagnostics[0].code == "E528"


def test_data_beyond_the_memory_limit(tmp_path, monkeypatch):
    path = tmp_path / "data.npz"
    np.savez(path, x=X, y=Y)
    monkeypatch.setattr(_limits, "MAX_DATA_BYTES", X.nbytes)
    with pytest.raises(UsageError) as info:
        load_data(str(path))
    assert info.value.diagnostics[0].code == "E527"
    assert "more than the 32 bytes" in info.value.diagnostics[0].message


def test_good_data_loads_compressed_or_not(tmp_path):
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / "data.npz"
        save(path, x=X + 1, y=np.arange(4))
        x, y = load_data(str(path))
        assert np.array_equal(x, X + 1) and np.array_equal(y, np.arange(4))


def test_train_reports_bad_data_before_building_the_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("spec.eqx").write_text(
        "model MLP(in_size=2, out_size=2, width_size=4, depth=1)\noptimizer adam(learning_rate=0.1)\n"
    )
    np.savez("data.npz", x=X.astype(np.complex64), y=Y)

    def build(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(_api, "_checked_base", build)
    result = CliRunner().invoke(main, ["train", "spec.eqx", "--data", "data.npz", "-o", "o.eqx"])
    assert result.exit_code == 2, result.output
    assert "error[E526]" in result.output and "help:" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not Path("o.eqx").exists()
