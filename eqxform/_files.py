"""Model files on disk: the safetensors header, the tensors, atomic writes.

This layer knows bytes, names and JSON, nothing of specs or the compiler: a
model file is a safetensors file whose `__metadata__["eqxform"]` holds a JSON
object (the recipe, written and read by `_recipes`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._diagnostics import Diagnostic
from ._errors import ModelFileError, UsageError

FORMAT = "eqxform/1"
MAX_HEADER = 64 * 1024 * 1024

_DTYPES = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}


# ---- header ------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy name
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def recipe(self) -> dict | None:
        """The recipe as the file stores it (a JSON object), or None."""
        text = self.metadata.get("eqxform")
        if text is None:
            return None
        try:
            recipe = json.loads(text)
        except json.JSONDecodeError:
            raise corrupt(self.path, "its recipe is not valid JSON") from None
        if not isinstance(recipe, dict):
            raise corrupt(self.path, "its recipe is not a JSON object")
        if "base" not in recipe:
            return None  # written by `save` for a model eqxform did not build
        if not isinstance(recipe["base"], dict):
            raise corrupt(self.path, "its recipe has no `base` constructor")
        return recipe


def corrupt(path: str, why: str, code: str = "E302") -> ModelFileError:
    return ModelFileError(
        Diagnostic(
            code,
            f"`{path}` is not a valid model file: {why}",
            file=path,
            help="was it written by `eqxform` (or another safetensors writer) and copied whole?",
        )
    )


def read_header(path: str | os.PathLike) -> Header:
    """Read and check the header of a model file, allocating nothing for tensors."""
    path = str(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise corrupt(path, f"it is {size} bytes long, too short for a header")
            length = int.from_bytes(head, "little")
            if length > MAX_HEADER or length > size - 8:
                raise corrupt(
                    path,
                    f"its header claims {length} bytes, but the file has {size - 8} after "
                    "the length"
                    + (
                        f" and headers are capped at {MAX_HEADER} bytes"
                        if length > MAX_HEADER
                        else ""
                    ),
                    "E303",
                )
            raw = f.read(length)
    except FileNotFoundError:
        raise UsageError(
            Diagnostic("E301", f"model file `{path}` does not exist", file=path)
        ) from None
    except IsADirectoryError:
        raise UsageError(
            Diagnostic("E301", f"`{path}` is a directory, not a model file", file=path)
        ) from None
    except PermissionError:
        raise UsageError(
            Diagnostic("E301", f"cannot read `{path}`: permission denied", file=path)
        ) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt(path, "its header is not JSON (is this a spec or another file?)") from None
    if not isinstance(header, dict):
        raise corrupt(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise corrupt(path, "its `__metadata__` is not a map of strings")
    data_size = size - 8 - length
    tensors = {}
    for name, info in header.items():
        try:
            dtype, itemsize = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise corrupt(path, f"tensor `{name}` has a malformed entry") from None
        if any(d < 0 for d in shape) or not 0 <= start <= end <= data_size:
            raise corrupt(
                path, f"tensor `{name}` lies outside the file (is the file truncated?)", "E303"
            )
        if (end - start) != math.prod(shape) * itemsize:
            raise corrupt(path, f"tensor `{name}` has {end - start} bytes for shape {list(shape)}")
        tensors[name] = TensorInfo(name, dtype, shape, start, end)
    return Header(path, tensors, metadata)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """Call `write(file)` on a temporary file in the folder of `path`, then
    rename it into place: `path` is replaced whole or not at all."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(
            Diagnostic(
                "E404", f"cannot write `{path}`: folder `{folder}` does not exist", file=str(path)
            )
        )
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private; give it the mode a plain `open` would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def encode(tensors: dict[str, Any], content: dict) -> bytes:
    """The bytes of a model file: `tensors` (name -> numpy array) and the
    JSON object `content` as its one metadata entry."""
    from safetensors.numpy import save as st_save

    # One metadata entry: safetensors writes a map's entries in no fixed order,
    # and the same model and seed must give the same bytes.
    metadata = {"eqxform": json.dumps({"format": FORMAT, **content}, sort_keys=True)}
    return st_save(tensors, metadata=metadata)


# The order in which safetensors lays out tensors: by dtype (this order), then
# by name. `write_stream` follows it, so that a file written tensor by tensor
# is byte for byte the file `encode` makes.
_LAYOUT = (
    "U64",
    "I64",
    "F64",
    "F32",
    "U32",
    "I32",
    "BF16",
    "F16",
    "U16",
    "I16",
    "I8",
    "U8",
    "BOOL",
)
_CODES = {numpy: code for code, (numpy, _) in _DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, numpy dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def layout(tensors: Iterable[TensorSpec]) -> list[TensorSpec]:
    """The tensors in the order a model file holds them."""
    return sorted(tensors, key=lambda t: (_LAYOUT.index(_CODES[t.dtype]), t.name))


def write_stream(
    f,
    tensors: Iterable[TensorSpec],
    fetch: Callable[[str], Any],
    content: dict,
) -> None:
    """Write a model file to the open file `f`, one tensor at a time:
    `fetch(name)` gives each tensor's values (a numpy array) when its turn
    comes, so that no more than one tensor is ever held on the host. The
    bytes equal `encode` of the same tensors and content."""
    specs = layout(tensors)
    header: dict[str, Any] = {
        "__metadata__": {"eqxform": json.dumps({"format": FORMAT, **content}, sort_keys=True)}
    }
    offset = 0
    for t in specs:
        size = math.prod(t.shape) * _DTYPES[_CODES[t.dtype]][1]
        header[t.name] = {
            "dtype": _CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for t in specs:
        value = np.ascontiguousarray(np.asarray(fetch(t.name)).reshape(t.shape))
        if value.dtype.name != t.dtype:
            raise ValueError(f"tensor `{t.name}` came as {value.dtype.name}, not {t.dtype}")
        f.write(value.tobytes())


class SliceReader:
    """Reads slices of the tensors of a model file (safetensors' `get_slice`),
    each distinct slice once: what one device of a mesh needs, never more."""

    def __init__(self, path: str | os.PathLike):
        from safetensors import safe_open

        self._context = safe_open(str(path), framework="numpy")
        self._file = self._context.__enter__()
        self._cache: dict[tuple, Any] = {}

    def read(self, name: str, index: tuple) -> Any:
        """`tensor[index]` for a tuple of slices (a device's shard)."""
        key = (name,) + tuple((s.start, s.stop, s.step) for s in index)
        cached = self._cache.get(key)
        if cached is None:
            piece = self._file.get_slice(name)
            cached = piece[index] if index and piece.get_shape() else self._file.get_tensor(name)
            self._cache[key] = cached
        return cached

    def forget(self) -> None:
        """Drop the slices read so far (after a tensor is placed)."""
        self._cache.clear()

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def read_tensors(path: str | os.PathLike, names: list[str]) -> dict[str, Any]:
    """The named tensors of a model file, as numpy arrays."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {name: f.get_tensor(name) for name in names}
