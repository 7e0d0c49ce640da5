"""Model files on disk: the safetensors header, the tensors, atomic writes.

This layer knows bytes, names and JSON, nothing of specs or the compiler: a
model file is a safetensors file whose `__metadata__["eqxform"]` holds a JSON
object (the recipe, written and read by `_recipes`).

Everything a file says is checked here, completely, before anything else sees
it: the header against the safetensors layout (tensors of known dtypes, shapes
of bounded non-negative integers, byte ranges that tile the data exactly), the
recipe against its schema, and the JSON of both for size, nesting and number
range, so that no part of a hostile file reaches the JSON reader's recursion,
Python's integer conversion or the safetensors library unchecked.

Writes go through a temporary file in the target's folder, renamed into place;
the target is checked before any work (`check_output`), and a SIGINT or SIGTERM
during the write leaves the old file or the whole new one, never a temporary.
A writer killed outright (SIGKILL) cannot clean up: the next write to the same
file removes the temporaries of its naming that no live writer holds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _limits
from ._errors import ModelFileError, UsageError, first_line

try:
    import fcntl
except ImportError:  # no `flock` here: stale temporaries are left alone
    fcntl = None

FORMAT = "eqxform/1"

# safetensors dtype -> (numpy name, bytes per element, place in the layout:
# safetensors lays tensors out by dtype in this order, then by name, and
# `write_stream` follows it, so that a file written tensor by tensor is byte
# for byte the file `encode` makes).
_DTYPES = {
    "F64": ("float64", 8, 2),
    "F32": ("float32", 4, 3),
    "F16": ("float16", 2, 7),
    "BF16": ("bfloat16", 2, 6),
    "I64": ("int64", 8, 1),
    "I32": ("int32", 4, 5),
    "I16": ("int16", 2, 9),
    "I8": ("int8", 1, 10),
    "U64": ("uint64", 8, 0),
    "U32": ("uint32", 4, 4),
    "U16": ("uint16", 2, 8),
    "U8": ("uint8", 1, 11),
    "BOOL": ("bool", 1, 12),
}
# numpy dtype name -> safetensors dtype, for what `save` can store.
STORABLE = {name: code for code, (name, _, _) in _DTYPES.items()}


# ---- paths given by the user ---------------------------------------------------


def as_path(path: Any, what: str) -> str:
    """`path` as a `str`, or a usage error saying why it is no path."""
    if isinstance(path, (os.PathLike, bytes)):
        try:
            path = os.fsdecode(path)
        except (TypeError, ValueError, UnicodeDecodeError):
            pass
    if not isinstance(path, str):
        raise UsageError.of("E445", what=what, name=type(path).__name__)
    if not path or "\0" in path:
        raise UsageError.of(
            "E445",
            variant="path",
            what=what,
            value="is empty" if not path else "contains a NUL character",
        )
    return path


# ---- JSON, bounded ------------------------------------------------------------


class _Refused(Exception):
    """A value of a file's JSON refused while it is parsed."""

    def __init__(self, code: str, variant: str | None = None, **fields):
        self.code, self.variant, self.fields = code, variant, fields


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > _limits.MAX_JSON_INT_DIGITS:
        raise _Refused("E314", digits=digits, most=_limits.MAX_JSON_INT_DIGITS)
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("E314", variant="float", number=text[:24])
    return value


def _constant(name: str) -> Any:
    raise _Refused("E314", variant="constant", name=name)


def _object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _Refused("E318", key=key)
        out[key] = value
    return out


# Strings (escapes included) are removed before the nesting is measured.
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _depth(text: str) -> int:
    """The deepest bracket nesting of `text`, counted in C (numpy), never by
    recursion: +1 at each `[` or `{`, -1 at each `]` or `}`."""
    brackets = text.encode("utf-8", "surrogatepass").translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps, dtype=np.int32).max())


def _nests_deeper_than(text: str, limit: int) -> bool:
    """Does the JSON `text` nest deeper than `limit`? A text with no more
    opening brackets than `limit` cannot; otherwise the strings (whose
    brackets do not nest) are removed and the rest measured. (In a prefix the
    JSON reader accepts, the running count is the reader's depth, so text
    whose brackets do not pair up cannot hide a deep nest either.)"""
    if text.count("[") + text.count("{") <= limit:
        return False
    return _depth(_STRINGS.sub("", text)) > limit


def _load_json(text: str, path: str, what: str) -> Any:
    """The JSON `text` (a file's header or recipe), its nesting, its integers
    and its keys bounded before and while it is read."""
    # Parsing costs time and memory per value: the values are bounded first,
    # from above, by the separators and brackets (those inside strings count too).
    items = text.count(",") + text.count("[") + text.count("{")
    if items > _limits.MAX_JSON_ITEMS:
        raise corrupt("E321", path, what=what, items=items, max_json_items=_limits.MAX_JSON_ITEMS)
    if _nests_deeper_than(text, _limits.MAX_JSON_DEPTH):
        raise corrupt("E310", path, what=what, max_json_depth=_limits.MAX_JSON_DEPTH)
    try:
        return json.loads(
            text,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
            object_pairs_hook=_object,
        )
    except _Refused as e:
        raise corrupt(e.code, path, variant=e.variant, what=what, **e.fields) from None
    except (ValueError, RecursionError):
        # RecursionError cannot come after the nesting check; kept so that no
        # file can ever make it escape.
        raise corrupt("E302", path, variant="not_json", what=what) from None


# ---- header ------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A tensor: its name, numpy dtype name and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TensorInfo(TensorSpec):
    """A tensor of a file, and its bytes in the file's data."""

    start: int
    end: int


@dataclass(frozen=True)
class Header:
    """A model file's header, checked: `tensors` by name, `metadata` (a map of
    strings), `recipe` (the recipe as the file stores it, checked against its
    schema; None for a file without one)."""

    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    recipe: dict | None = None


def corrupt(code: str, path: str, /, **fields) -> ModelFileError:
    """The error of the file at `path`, which its message names."""
    return ModelFileError.of(code, file=path, path=path, **fields)


def _refuse(code: str, file: str, /, **fields) -> UsageError:
    return UsageError.of(code, file=file, **fields)


def read_header(path: str | os.PathLike) -> Header:
    """Read and check the header of a model file, allocating nothing for tensors."""
    path = as_path(path, "model file")
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise _refuse("E301", path, path=path, variant="directory_model")
        if not stat.S_ISREG(info.st_mode):
            # Opening a FIFO would wait for a writer; a device is no model file.
            raise _refuse("E301", path, path=path, variant="regular_file")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise corrupt("E302", path, variant="too_short", size=size)
            length = int.from_bytes(head, "little")
            if length > _limits.MAX_HEADER_BYTES or length > size - 8:
                raise corrupt(
                    "E303",
                    path,
                    length=length,
                    value=size - 8,
                    value2=f" and headers are capped at {_limits.MAX_HEADER_BYTES} bytes"
                    if length > _limits.MAX_HEADER_BYTES
                    else "",
                )
            raw = f.read(length)
    except FileNotFoundError:
        raise _refuse("E301", path, path=path, variant="model_file") from None
    except IsADirectoryError:
        raise _refuse("E301", path, path=path, variant="directory_model") from None
    except PermissionError:
        raise _refuse("E301", path, path=path, variant="cannot_read") from None
    except OSError as e:
        raise _refuse("E301", path, path=path, variant="os_error", error=e.strerror or e) from None
    if len(raw) < length:
        raise corrupt("E303", path, variant="cut_short")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise corrupt("E302", path, variant="header_not_json") from None
    header = _load_json(text, path, "header")
    if not isinstance(header, dict):
        raise corrupt("E302", path, variant="header_not_object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise corrupt("E302", path, variant="metadata")
    tensors = _tensors(path, header, size - 8 - length)
    return Header(path, tensors, metadata, _recipe(path, metadata))


def _tensors(path: str, header: dict, data_size: int) -> dict[str, TensorInfo]:
    """The header's tensor entries, each checked, and their byte ranges
    checked to tile the data exactly as safetensors lays them out."""
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise corrupt("E302", path, variant="tensor_has", name=name)
        code = info["dtype"]
        if not isinstance(code, str) or code not in _DTYPES:
            raise corrupt(
                "E312", path, name=name, code_=code, listing=", ".join(f"`{c}`" for c in _DTYPES)
            )
        dtype, itemsize, _ = _DTYPES[code]
        shape = _shape(path, name, info["shape"])
        start, end = _offsets(path, name, info["data_offsets"])
        if end > data_size:
            raise corrupt("E303", path, variant="tensor_lies", name=name)
        if (end - start) != math.prod(shape) * itemsize:
            raise corrupt(
                "E302",
                path,
                variant="tensor_has_bytes",
                name=name,
                value=end - start,
                list_shape=list(shape),
            )
        tensors[name] = TensorInfo(name, dtype, shape, start, end)
    # safetensors stores the tensors back to back, in the order of their
    # offsets, and nothing else: an overlap would let one tensor's bytes be
    # read as another's, a gap or a tail would hide data.
    at, previous = 0, None
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.start < at:
            raise corrupt("E313", path, previous=previous, name=t.name, start=t.start, at=at)
        if t.start > at:
            raise corrupt("E313", path, variant="data_belong", at=at, start=t.start)
        at, previous = t.end, t.name
    if at != data_size:
        raise corrupt("E313", path, variant="its_last", value=data_size - at)
    return tensors


def _shape(path: str, name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list):
        raise corrupt("E311", path, name=name)
    if len(shape) > _limits.MAX_TENSOR_NDIM:
        raise corrupt(
            "E311",
            path,
            variant="dimensions_at",
            name=name,
            len_shape=len(shape),
            max_tensor_ndim=_limits.MAX_TENSOR_NDIM,
        )
    for d in shape:
        if type(d) is not int or not 0 <= d <= _limits.MAX_TENSOR_DIM:
            what = (
                "is no integer"
                if type(d) is not int
                else "is negative"
                if d < 0
                else f"exceeds {_limits.MAX_TENSOR_DIM}"
            )
            raise corrupt(
                "E311",
                path,
                variant="dimension_which",
                name=name,
                dumps=json.dumps(d)[:24],
                what=what,
            )
    return tuple(shape)


def _offsets(path: str, name: str, offsets: Any) -> tuple[int, int]:
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise corrupt("E313", path, variant="tensor_has", name=name, dumps=json.dumps(offsets)[:60])
    return offsets[0], offsets[1]


# ---- the recipe's schema --------------------------------------------------------


class _Schema:
    """Checks of a recipe's fields, each named by its place (`specs[2].params`)."""

    def __init__(self, path: str, what: str = "recipe"):
        self.path = path
        self.what = what

    def fail(self, code: str, /, variant: str, **fields) -> ModelFileError:
        """The field `where` is wrong in the way `variant` of `code` says."""
        return corrupt(code, self.path, variant=variant, what=self.what, **fields)

    def string(self, value: Any, where: str, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail("E315", variant="string", where=where, kind=_kind(value))
        if len(value) > _limits.MAX_RECIPE_STRING:
            raise self.fail(
                "E317",
                variant="long",
                where=where,
                length=len(value),
                most=_limits.MAX_RECIPE_STRING,
            )
        return value

    def seed(self, value: Any, where: str) -> None:
        if value is None:
            return
        if type(value) is not int or not 0 <= value <= _limits.MAX_SEED:
            raise self.fail("E315", variant="seed", where=where, kind=_kind(value))

    def mapping(self, value: Any, where: str, optional: bool = True) -> dict:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise self.fail("E315", variant="map", where=where, kind=_kind(value))
        return value

    def numbers(self, value: Any, where: str) -> None:
        """A map of names to numbers (a member's values)."""
        for name, number in self.mapping(value, where).items():
            if not _number(number):
                raise self.fail(
                    "E315", variant="a_number", where=f"{where}.{name}", kind=_kind(number)
                )

    def value(self, value: Any, where: str) -> None:
        """A `let` value: what `--set` and `--params` give (a constant or a list)."""
        if value is None or isinstance(value, (bool, int, float)):
            return
        if isinstance(value, str):
            self.string(value, where)
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                self.value(item, f"{where}[{i}]")
            return
        raise self.fail("E315", variant="value", where=where, kind=_kind(value))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean `{json.dumps(value)}`"
    if isinstance(value, (int, float)):
        return f"the number `{json.dumps(value)[:24]}`"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a map"


def _recipe(path: str, metadata: dict[str, str]) -> dict | None:
    """The file's recipe, checked against its schema; None for a file without
    one (`save` of a model eqxform did not build writes only a note)."""
    text = metadata.get("eqxform")
    if text is None:
        return None
    data = _load_json(text, path, "recipe")
    schema = _Schema(path)
    if not isinstance(data, dict):
        raise corrupt("E315", path)
    written = data.get("format", FORMAT)
    if written != FORMAT:
        raise corrupt("E316", path, str_written=str(written)[:40], format=FORMAT)
    if "base" not in data:
        schema.string(data.get("load"), "load", optional=True)
        return None
    base = schema.mapping(data["base"], "base", optional=False)
    schema.string(base.get("constructor"), "base.constructor")
    schema.seed(base.get("seed"), "base.seed")
    _check_specs(schema, data.get("specs", []), "specs")
    _check_train(schema, data.get("train"), "train")
    _check_picked(schema, data.get("picked"), "picked")
    for key, value in schema.mapping(data.get("versions"), "versions").items():
        schema.string(value, f"versions.{key}")
    return data


def _check_specs(schema: _Schema, specs: Any, where: str) -> None:
    """A list of applied specs (text, name, seed, params), as recipes and
    adapter records hold them."""
    if not isinstance(specs, list):
        raise schema.fail("E315", variant="specs", where=where, kind=_kind(specs))
    if len(specs) > _limits.MAX_RECIPE_SPECS:
        raise schema.fail(
            "E317", variant="specs", where=where, count=len(specs), most=_limits.MAX_RECIPE_SPECS
        )
    for i, entry in enumerate(specs):
        at = f"{where}[{i}]"
        entry = schema.mapping(entry, at, optional=False)
        schema.string(entry.get("text"), f"{at}.text")
        schema.string(entry.get("name"), f"{at}.name", optional=True)
        schema.seed(entry.get("seed"), f"{at}.seed")
        for key, value in schema.mapping(entry.get("params"), f"{at}.params").items():
            schema.value(value, f"{at}.params.{key}")
        schema.string(entry.get("mesh"), f"{at}.mesh", optional=True)


def _check_train(schema: _Schema, train: Any, where: str) -> None:
    for key, value in schema.mapping(train, where).items():
        if key == "members":
            _check_members(schema, value, f"{where}.members")
            continue
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise schema.fail("E315", variant="number", where=f"{where}.{key}", kind=_kind(value))
        if isinstance(value, str):
            schema.string(value, f"{where}.{key}")


def _check_picked(schema: _Schema, picked: Any, where: str) -> None:
    """Where a member taken out of an ensemble came from (`eqxform pick`): the
    file, the member's index and the member count, its values and losses."""
    if picked is None:
        return
    picked = schema.mapping(picked, where, optional=False)
    for key in ("member", "members"):
        value = picked.get(key)
        if type(value) is not int or value < 0:
            raise schema.fail("E315", variant="whole", where=f"{where}.{key}", kind=_kind(value))
    for key, value in picked.items():
        if key == "values":
            schema.numbers(value, f"{where}.values")
        elif isinstance(value, str):
            schema.string(value, f"{where}.{key}")
        elif not (value is None or _number(value)):
            raise schema.fail("E315", variant="number", where=f"{where}.{key}", kind=_kind(value))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_members(schema: _Schema, members: Any, where: str) -> None:
    """`train.members` of an ensemble's recipe: per member `{"member": k,
    "values": {name: number}, "loss": number or null, "eval_loss": number or null}`."""
    if not isinstance(members, list):
        raise schema.fail("E315", variant="members", where=where, kind=_kind(members))
    if len(members) > _limits.MAX_COUNT:
        raise schema.fail("E317", variant="members", where=where, count=len(members))
    for i, entry in enumerate(members):
        at = f"{where}[{i}]"
        entry = schema.mapping(entry, at, optional=False)
        if entry.get("member") != i:
            raise schema.fail("E315", variant="member", where=f"{at}.member", index=i)
        schema.numbers(entry.get("values"), f"{at}.values")
        if "loss" not in entry:
            raise schema.fail("E315", variant="number_or_null", where=f"{at}.loss", kind="missing")
        # null: the member's loss was not finite (it diverged).
        for key in ("loss", "eval_loss"):
            value = entry.get(key)
            if value is not None and not _number(value):
                raise schema.fail(
                    "E315", variant="number_or_null", where=f"{at}.{key}", kind=_kind(value)
                )


def adapter_record(header: Header) -> dict | None:
    """The `adapters` record of an adapter file (the specs to replay, the
    digests of the base tensors it relies on, the names of the other trained
    tensors it carries, the digest over all of it), checked against its
    schema; None for a model file."""
    text = header.metadata.get("eqxform")
    if text is None:
        return None
    data = _load_json(text, header.path, "metadata")
    if not isinstance(data, dict) or data.get("adapters") is None:
        return None
    schema = _Schema(header.path, "adapter record")
    info = schema.mapping(data["adapters"], "adapters", optional=False)
    _check_specs(schema, info.get("specs"), "adapters.specs")
    schema.string(info.get("fingerprint"), "adapters.fingerprint")
    for key in ("digest", "structure"):
        schema.string(info.get(key), f"adapters.{key}", optional=True)
    for name, digest in schema.mapping(info.get("base"), "adapters.base").items():
        schema.string(digest, f"adapters.base.{name}")
    trained = info.get("trained", [])
    if not isinstance(trained, list):
        raise schema.fail("E315", variant="names", where="adapters.trained", kind=_kind(trained))
    for i, name in enumerate(trained):
        schema.string(name, f"adapters.trained[{i}]")
    _check_train(schema, info.get("train"), "adapters.train")
    return info


# ---- tensors ------------------------------------------------------------------


def layout(tensors: Iterable[TensorSpec]) -> list[TensorSpec]:
    """The tensors in the order a model file holds them."""
    return sorted(tensors, key=lambda t: (_DTYPES[STORABLE[t.dtype]][2], t.name))


def write_stream(
    f,
    tensors: Iterable[TensorSpec],
    fetch: Callable[[str], Any],
    content: dict | None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a model file to the open file `f`, one tensor at a time:
    `fetch(name)` gives each tensor's values (a numpy array) when its turn
    comes, so that no more than one tensor is ever held on the host. The
    bytes equal `encode` of the same tensors and content. A checkpoint in
    another library's names has no `content`, and `metadata` of its own."""
    specs = layout(tensors)
    if content is not None:
        metadata = {"eqxform": json.dumps({"format": FORMAT, **content}, sort_keys=True)}
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for t in specs:
        size = math.prod(t.shape) * _DTYPES[STORABLE[t.dtype]][1]
        header[t.name] = {
            "dtype": STORABLE[t.dtype],
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


def read_tensors(header: Header, names: list[str]) -> dict[str, Any]:
    """The named tensors of a model file (its header checked), as numpy arrays."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(header.path, framework="numpy") as f:
            return {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        # The header was checked to the same rules safetensors holds it to, so
        # this is a file that changed since, or a disk that failed.
        raise corrupt(
            "E320",
            header.path,
            variant="tensors",
            error=first_line(e),
        ) from None


# ---- writing ------------------------------------------------------------------


def check_output(
    path: str | os.PathLike,
    inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
) -> Path:
    """Check, before any work, that `path` can be written as a whole new file
    and that writing it replaces none of `inputs` ((what, path) pairs: the
    spec, the data, ...). Returns the file that will be written: `path`, or
    the file a symbolic link at `path` points to (the link is kept).

    Refused: a directory, anything but a regular file (a FIFO or a device,
    which a rename would replace by a regular file), a missing or unwritable
    folder, a name too long for the folder, and a path that is (by resolved
    path or by identity: symbolic and hard links) one of the inputs.
    """
    name = as_path(path, "output file")
    target = Path(os.path.realpath(name)) if os.path.islink(name) else Path(name)
    fix = "write elsewhere with `-o`"
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as e:
        info = None
        if e.errno == errno.ENAMETOOLONG:
            raise _too_long(name) from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise _refuse("E441", name, name=name, listing=os.path.join(name, "model.eqx"))
    if info is not None and not stat.S_ISREG(info.st_mode):
        kind = (
            "a named pipe (FIFO)"
            if stat.S_ISFIFO(info.st_mode)
            else "a device"
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "no regular file"
        )
        raise _refuse("E442", name, help=fix, name=name, kind=kind)
    for what, other in inputs:
        if other is None or info is None:
            continue
        try:
            same = os.path.samefile(other, target)
        except (OSError, ValueError):
            same = False
        if same:
            raise _refuse("E440", name, help=fix, name=name, what=what)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise _refuse("E404", name, name=name, folder=folder, fix=fix)
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = _limits.DEFAULT_NAME_MAX
    if len(os.fsencode(target.name)) > limit:
        raise _too_long(name, limit)
    # Writability is asked of the folder itself, the way the write will use
    # it (a temporary file), which also covers read-only file systems and
    # access control lists that permission bits do not show.
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(target))
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise _too_long(name) from None
        raise _refuse(
            "E443", name, name=name, folder=folder, error=e.strerror or e, fix=fix
        ) from None
    os.close(fd)
    os.unlink(probe)
    return target


def _too_long(name: str, limit: int | None = None) -> UsageError:
    return _refuse(
        "E444",
        name,
        name=name[:60],
        value="..." if len(name) > 60 else "",
        value2=f" (this folder takes names of at most {limit} bytes)" if limit else "",
    )


def _temp_prefix(target: Path) -> str:
    # Short enough that a name the folder takes also gives a temporary it takes.
    return f".{target.name[:32]}."


# A temporary of a write to `target` is `.{name}.XXXXXXXX.tmp` (`tempfile`'s
# eight letters), locked (`flock`) by its writer until it is renamed or removed.
_TEMP_LETTERS = r"[a-z0-9_]{8}"

# A temporary younger than this is never removed as stale: its writer may be
# between creating and locking it.
STALE_TEMP_AGE_S = 60.0


def _lock(fd: int) -> None:
    """Mark a temporary as in use for as long as `fd` is open: the lock goes
    with the process, so a killed writer's temporary is found unlocked."""
    if fcntl is None:
        return
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_stale_temporaries(target: Path) -> list[str]:
    """Remove the temporaries that earlier writes to `target` left behind
    (a process killed with SIGKILL, or a machine that stopped, cannot remove
    its own): files of exactly this target's temporary naming, older than
    `STALE_TEMP_AGE_S`, that no process holds locked. A live writer's
    temporary is locked, and stays; no other file is touched. Returns the
    names removed."""
    if fcntl is None:
        return []
    folder = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(re.escape(_temp_prefix(target)) + _TEMP_LETTERS + r"\.tmp")
    removed = []
    try:
        names = [n for n in os.listdir(folder) if pattern.fullmatch(n)]
    except OSError:
        return []
    for name in names:
        path = folder / name
        try:
            # Not through a link, and only a regular file.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or time.time() - info.st_mtime < STALE_TEMP_AGE_S:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            # Still the file that was checked (not replaced since it was opened).
            with contextlib.suppress(OSError):
                if os.path.samestat(os.lstat(path), info):
                    os.unlink(path)
                    removed.append(name)
        finally:
            os.close(fd)
    return removed


class _Interrupted(BaseException):
    """A SIGINT or SIGTERM that stopped a write."""

    def __init__(self, signum: int):
        self.signum = signum


_WRITE_SIGNALS = ("SIGINT", "SIGTERM")


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for a few lines whose effect and bookkeeping
    must not be separated (a temporary file made and its name kept; the
    rename done and the write disarmed); they are handled right after."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not (
        threading.main_thread()
    ):
        yield
        return
    held = {getattr(signal, n) for n in _WRITE_SIGNALS if hasattr(signal, n)}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def _signals_during_write() -> Iterator[dict]:
    """SIGINT and SIGTERM while a file is written.

    Where nothing handles them but the defaults (Ctrl-C's `KeyboardInterrupt`,
    `kill`'s termination), a signal stops the write: the temporary file is
    removed, the old file stays, and the signal is delivered again once the
    default is back, so the process ends as it would have. Where the program
    handles them itself (`train` stops after the step in flight), the write
    finishes first and the handler runs after. Either way the file is the old
    one or the whole new one, and no temporary is left.

    The body sets `state["armed"] = False` once the file is in place.
    """
    state: dict = {"armed": True, "pending": []}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous: dict[int, Any] = {}

    def handler(signum, frame):
        if state["armed"] and previous[signum] in (signal.default_int_handler, signal.SIG_DFL):
            state["armed"] = False
            raise _Interrupted(signum)
        state["pending"].append(signum)

    for name in _WRITE_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        before = signal.getsignal(signum)
        if before in (signal.SIG_IGN, None):
            continue
        previous[signum] = before
        signal.signal(signum, handler)
    stopped = None
    try:
        yield state
    except _Interrupted as e:
        stopped = e.signum
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)
        for signum in [stopped] if stopped is not None else state["pending"]:
            signal.raise_signal(signum)
    if stopped is not None:
        # The default handler ran (the process would have ended on SIGTERM);
        # should it not have raised, the write still did not happen.
        raise KeyboardInterrupt


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder,
    renamed into place: `path` holds its old content or all of `data`.
    `path` is checked first (`check_output`); a symbolic link is kept and the
    file it points to written; an existing file keeps its permissions."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """`atomic_write`, the content written by `write(file)` (a model written
    tensor by tensor): `path` holds its old content or all that was written."""
    target = check_output(path)
    name = str(path)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        # A new file gets the mode a plain `open` would give it (mkstemp makes
        # it private).
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    folder = target.parent if str(target.parent) else Path(".")
    remove_stale_temporaries(target)
    with _signals_during_write() as state:
        tmp = None
        try:
            with _held():
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(target), suffix=".tmp")
                _lock(fd)
            with os.fdopen(fd, "wb") as f:
                os.chmod(tmp, mode)
                write(f)
                f.flush()
                os.fsync(f.fileno())
            with _held():
                os.replace(tmp, target)
                state["armed"] = False
        except BaseException as e:
            state["armed"] = False
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if isinstance(e, OSError):
                code = "E443" if isinstance(e, PermissionError) else "E448"
                raise _refuse(
                    code, name, variant="write", name=name, error=e.strerror or e
                ) from None
            raise
    # The rename is durable once the folder is synced (not every file
    # system can sync a folder).
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def encode(tensors: dict[str, Any], content: dict) -> bytes:
    """The bytes of a model file: `tensors` (name -> numpy array) and the
    JSON object `content` as its one metadata entry."""
    from safetensors.numpy import save as st_save

    # One metadata entry: safetensors writes a map's entries in no fixed order,
    # and the same model and seed must give the same bytes.
    metadata = {"eqxform": json.dumps({"format": FORMAT, **content}, sort_keys=True)}
    return st_save(tensors, metadata=metadata)
