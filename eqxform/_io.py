"""Model files: safetensors, with the recipe that rebuilds the structure.

Tensors are named by leaf path (`layers.0.weight`). `__metadata__["eqxform"]`
holds the recipe: the base constructor call, each spec applied (text, seed,
`--set` values) and the library versions. Loading builds the skeleton with
`filter_eval_shape` from the recipe, so no user code and no pickle is needed,
and checks every name, shape and dtype before filling the leaves.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._diagnostics import Diagnostic
from ._errors import ModelFileError, SpecError, UsageError

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


# ---- recipes of models in memory ---------------------------------------------

_RECIPES: dict[int, tuple[weakref.ref, dict]] = {}


def remember(model: Any, recipe: dict | None) -> None:
    """Note how `model` was made, so that `save` can write its recipe."""
    if recipe is None:
        return
    key = id(model)
    try:
        ref = weakref.ref(model, lambda _, key=key: _RECIPES.pop(key, None))
    except TypeError:  # an object that takes no weak reference keeps no recipe
        return
    _RECIPES[key] = (ref, recipe)


def recipe_of(model: Any) -> dict | None:
    """The recipe of a model that eqxform built, loaded or transformed, else None."""
    entry = _RECIPES.get(id(model))
    if entry is None or entry[0]() is not model:
        return None
    return entry[1]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("eqxform", "equinox", "jax"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


# ---- names of leaves -----------------------------------------------------------


def leaf_name(keypath) -> str:
    import jax

    parts = []
    for k in keypath:
        if isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return ".".join(parts)


def named_arrays(model: Any) -> list[tuple[str, Any]]:
    import jax

    from ._select import is_array

    leaves = jax.tree_util.tree_flatten_with_path(model)[0]
    return [(leaf_name(path), leaf) for path, leaf in leaves if is_array(leaf)]


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
        text = self.metadata.get("eqxform")
        if text is None:
            return None
        try:
            recipe = json.loads(text)
        except json.JSONDecodeError:
            raise _corrupt(self.path, "its recipe is not valid JSON") from None
        if not isinstance(recipe, dict):
            raise _corrupt(self.path, "its recipe is not a JSON object")
        if "base" not in recipe:
            return None  # written by `save` for a model eqxform did not build
        if not isinstance(recipe["base"], dict):
            raise _corrupt(self.path, "its recipe has no `base` constructor")
        return recipe


def _corrupt(path: str, why: str, code: str = "E302") -> ModelFileError:
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
                raise _corrupt(path, f"it is {size} bytes long, too short for a header")
            length = int.from_bytes(head, "little")
            if length > MAX_HEADER or length > size - 8:
                raise _corrupt(
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
        raise _corrupt(path, "its header is not JSON (is this a spec or another file?)") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _corrupt(path, "its `__metadata__` is not a map of strings")
    data_size = size - 8 - length
    tensors = {}
    for name, info in header.items():
        try:
            dtype, itemsize = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"tensor `{name}` has a malformed entry") from None
        if any(d < 0 for d in shape) or not 0 <= start <= end <= data_size:
            raise _corrupt(
                path, f"tensor `{name}` lies outside the file (is the file truncated?)", "E303"
            )
        if (end - start) != math.prod(shape) * itemsize:
            raise _corrupt(path, f"tensor `{name}` has {end - start} bytes for shape {list(shape)}")
        tensors[name] = TensorInfo(name, dtype, shape, start, end)
    return Header(path, tensors, metadata)


# ---- skeletons -----------------------------------------------------------------


def eval_shape(fn, *args):
    """`fn(*args)` with arrays (and `ShapeDtypeStruct`s) abstract: no allocation."""
    import equinox as eqx
    import jax

    from ._select import is_array

    dynamic, static = eqx.partition(args, is_array)
    out_static = []

    def run(dynamic):
        out = fn(*eqx.combine(dynamic, static))
        out_dynamic, out_rest = eqx.partition(out, eqx.is_array)
        out_static.append(out_rest)
        return out_dynamic

    out_dynamic = jax.eval_shape(run, dynamic)
    return eqx.combine(out_dynamic, out_static[0])


def recipe_builder(recipe: dict, allow=(), origin: str = "<recipe>"):
    """A function `key -> model` that rebuilds what a recipe describes: its
    base constructor called with `key`, then each of its specs."""
    import jax

    from . import _ast as A
    from ._build import MODEL_TAG, build
    from ._check import Checker
    from ._compile import compile_collect
    from ._parse import parse_expr

    base = recipe["base"]
    text = base.get("constructor")
    source = A.Source(f"{origin} (recipe)", str(text))
    try:
        call = parse_expr(str(text), source.name)
    except SpecError as e:
        raise ModelFileError(e.diagnostics) from None
    if not isinstance(call, A.Call):
        raise _corrupt(origin, "its recipe's base is not a constructor call")
    checker = Checker(A.Spec(source, ()))
    checker.constructor_call(call, set())
    if checker.diagnostics:
        raise ModelFileError(checker.diagnostics)
    programs = []
    for i, entry in enumerate(recipe.get("specs", [])):
        program, diagnostics = compile_collect(
            str(entry.get("text", "")),
            f"{origin} (recipe spec {i + 1}: {entry.get('name', '?')})",
            entry.get("params") or {},
            allow,
        )
        if diagnostics:
            raise ModelFileError(diagnostics)
        programs.append(program)

    def make(key):
        model = build(call, {}, jax.random.fold_in(key, MODEL_TAG), source, allow)
        for program in programs:
            for p in program.passes:
                model = p(model, key)
        return model

    return make


def build_from_recipe(recipe: dict, allow=(), origin: str = "<recipe>"):
    """Rebuild the structure a recipe describes, as `ShapeDtypeStruct` leaves."""
    import jax

    make = recipe_builder(recipe, allow, origin)
    try:
        return eval_shape(lambda: make(jax.random.key(0)))
    except SpecError as e:
        codes = {d.code for d in e.diagnostics}
        if "E117" in codes:
            d = e.diagnostics[0]
            raise ModelFileError(
                Diagnostic(
                    "E306",
                    f"`{origin}` names the module `{d.message.split('`')[1]}`; it was not imported",
                    file=origin,
                    help=d.help,
                )
            ) from None
        raise ModelFileError(e.diagnostics) from None


def skeleton(path: str | os.PathLike, allow=(), like=None):
    """(header, skeleton) of a model file, without reading its tensors."""
    header = read_header(path)
    if like is not None:
        return header, eval_shape(lambda m: m, like)
    recipe = header.recipe
    if recipe is None:
        raise ModelFileError(
            Diagnostic(
                "E304",
                f"`{path}` has no eqxform recipe, so its structure is unknown",
                file=str(path),
                help="load it into a model of the same structure: `eqxform.load(path, like=model)`",
            )
        )
    return header, build_from_recipe(recipe, allow, str(path))


def _check_against(header: Header, skeleton_arrays: list[tuple[str, Any]]) -> None:
    import numpy as np

    problems = []
    names = set()
    for name, leaf in skeleton_arrays:
        names.add(name)
        info = header.tensors.get(name)
        if info is None:
            problems.append(f"tensor `{name}` is missing")
            continue
        want = (tuple(leaf.shape), np.dtype(leaf.dtype).name)
        have = (info.shape, info.dtype)
        if want != have:
            problems.append(
                f"tensor `{name}` is {have[1]}{list(have[0])}, the recipe makes "
                f"{want[1]}{list(want[0])}"
            )
    extra = sorted(set(header.tensors) - names)
    if extra:
        problems.append(
            "tensors the recipe does not make: " + ", ".join(f"`{e}`" for e in extra[:5])
        )
    if problems:
        raise ModelFileError(
            Diagnostic(
                "E305",
                f"`{header.path}` does not match its recipe: {problems[0]}",
                file=header.path,
                notes=tuple(problems[1:6]),
                help="the file was changed after it was written, or written by another "
                "version; rebuild it with `eqxform apply`",
            )
        )


def load(path: str | os.PathLike, *, allow=(), like=None):
    """Load a model file.

    **Arguments:**

    - `path`: a model file written by `eqxform.save` or `eqxform apply`.
    - `allow`: top-level packages whose constructors the recipe may import
      (`package.module:function`); nothing else is ever imported.
    - `like`: a model of the same structure, for files without a recipe.

    **Returns:** the model, its structure rebuilt from the recipe and every
    tensor checked against it (names, shapes, dtypes).
    """
    import jax
    import jax.numpy as jnp
    from safetensors import safe_open

    header, skel = skeleton(path, allow, like)
    arrays = named_arrays(skel)
    _check_against(header, arrays)
    values = {}
    with safe_open(str(path), framework="numpy") as f:
        for name, _ in arrays:
            values[name] = jnp.asarray(f.get_tensor(name))
    from ._select import is_array

    leaves, treedef = jax.tree_util.tree_flatten_with_path(skel)
    filled = [values[leaf_name(p)] if is_array(x) else x for p, x in leaves]
    model = jax.tree_util.tree_unflatten(treedef, filled)
    if like is None:
        remember(model, header.recipe)
    return model


# ---- writing -------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder."""
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
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def to_bytes(model: Any, recipe: dict | None = None) -> bytes:
    import numpy as np
    from safetensors.numpy import save as st_save

    recipe = recipe if recipe is not None else recipe_of(model)
    tensors = {}
    for name, leaf in named_arrays(model):
        if name in tensors:
            raise UsageError(f"two leaves of the model are both named `{name}`")
        tensors[name] = np.ascontiguousarray(np.asarray(leaf))
    # One metadata entry: safetensors writes a map's entries in no fixed order,
    # and the same model and seed must give the same bytes.
    content = {"format": FORMAT}
    if recipe is not None:
        content.update(recipe, versions=versions())
    metadata = {"eqxform": json.dumps(content, sort_keys=True)}
    return st_save(tensors, metadata=metadata)


def save(path: str | os.PathLike, model: Any, *, recipe: dict | None = None) -> None:
    """Write `model` to `path` (safetensors), atomically.

    The recipe (how the model was built) is written when eqxform knows it: for
    models from `eqxform.new`, `eqxform.load`, a spec's `model` directive, and
    `Program.apply` of those. Without one, load the file with `like=`.
    """
    atomic_write(path, to_bytes(model, recipe))


def new(constructor: str, *, seed: int = 0, allow=()):
    """Build a model from a constructor call such as `"MLP(in_size=2, ...)"`."""
    import jax

    from . import _ast as A
    from ._build import MODEL_TAG, build, render_call
    from ._check import Checker
    from ._parse import parse_expr

    source = A.Source("<constructor>", constructor)
    call = parse_expr(constructor, source.name)
    if not isinstance(call, A.Call):
        raise UsageError(
            Diagnostic(
                "E405",
                f"`{constructor}` is not a constructor call",
                help='write it as a call, e.g. "MLP(in_size=2, out_size=2, width_size=8, depth=2)"',
            )
        )
    checker = Checker(A.Spec(source, ()))
    checker.constructor_call(call, set())
    if checker.diagnostics:
        raise SpecError(checker.diagnostics)
    key = jax.random.fold_in(jax.random.key(seed), MODEL_TAG)
    model = build(call, {}, key, source, allow)
    remember(model, {"base": {"constructor": render_call(call, {}), "seed": seed}, "specs": []})
    return model
