"""Model files as models: recipes written and replayed; `load`, `save`, `new`.

This layer sits above the compiler: replaying a recipe compiles the specs it
lists. Loading builds the skeleton with `eqx.filter_eval_shape` from the
recipe, checks every tensor's name, shape and dtype against it, then fills the
leaves, so a file written by eqxform loads with no code from its user.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import importlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from . import _ast as A
from . import _registry as R
from ._build import MODEL_TAG, build, import_allowed, render_call
from ._check import Checker
from ._compile import compile_collect
from ._errors import ModelFileError, SpecError, UsageError
from ._expr import render
from ._files import (
    STORABLE,
    Header,
    SliceReader,
    TensorSpec,
    adapter_record,
    atomic_write_with,
    check_output,
    corrupt,
    encode,
    layout,
    read_header,
    read_tensors,
    write_stream,
)
from ._files import atomic_write as atomic_write
from ._hashing import seed_key
from ._mesh import as_mesh
from ._modules import IA3, Frozen, IA3Weight, LoRA, LoRAWeight, split_state, state_values
from ._names import DTYPES
from ._parse import parse_expr
from ._passes import Context
from ._passes._shard import placements
from ._program import (
    Program,
    Recipe,
    RecipeStep,
    check_model,
    recipe_of,
    recipe_to_write,
    remember,
)
from ._select import is_array, tensor_name, walk
from ._values import allowed, check_seed


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("eqxform", "equinox", "jax"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unknown"
    return out


# What a file without a recipe says about itself.
NO_RECIPE = (
    "no recipe: eqxform did not build this model, or its structure changed after; "
    "load it with `eqxform.load(path, like=model)` given a model of the same structure"
)


def leaf_names(subject: Any) -> list[str | None]:
    """The tensor name of each leaf of `subject` (None for leaves that are no
    arrays), in `jax.tree_util.tree_leaves` order.

    A model's arrays are named by their key paths (`layers.0.weight`). A
    stateful model's `(model, state)` names its state by where it is used:
    the value of the `StateIndex` at `blocks.0.bn.state_index` is
    `state.blocks.0.bn.state_index` (its parts `.0`, `.1`, ...).
    """
    model, state = split_state(subject)
    names = [
        tensor_name(p) if is_array(x) else None
        for p, x in jax.tree_util.tree_flatten_with_path(model)[0]
    ]
    if state is None:
        return names
    where = {}
    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)  # noqa: E731
    for path, leaf in jax.tree_util.tree_flatten_with_path(model, is_leaf=is_index)[0]:
        if is_index(leaf):
            where.setdefault(leaf.marker, tensor_name(path))
    for i, (marker, value) in enumerate(state_values(state).items()):
        base = "state." + where.get(marker, f"#{i}")
        for p, x in jax.tree_util.tree_flatten_with_path(value)[0]:
            names.append(base + ("." + tensor_name(p) if p else "") if is_array(x) else None)
    return names


def named_arrays(subject: Any) -> list[tuple[str, Any]]:
    """(tensor name, array) of every array leaf, in tree order."""
    leaves = jax.tree_util.tree_leaves(subject)
    return [(n, x) for n, x in zip(leaf_names(subject), leaves) if n is not None]


# ---- recipes from files ----------------------------------------------------------


_EDITED = (
    "this is the file's recipe, not your spec: it was edited or damaged; rebuild the file "
    "with `eqxform new` or `eqxform apply`"
)


def _recipe_error(diagnostics) -> ModelFileError:
    """A spec error in a file's recipe (its constructor, a spec it lists):
    the file's error, with a help line where the diagnostic has none."""
    return ModelFileError([d if d.help else dc_replace(d, help=_EDITED) for d in diagnostics])


def _constructor_call(text: str, origin: str, allow) -> tuple[A.Call, A.Source]:
    source = A.Source(f"{origin} (recipe)", str(text))
    try:
        call = parse_expr(str(text), source.name)
    except SpecError as e:
        raise _recipe_error(e.diagnostics) from None
    if not isinstance(call, A.Call):
        raise corrupt("E315", origin, variant="call", what="recipe", text=str(text)[:80])
    checker = Checker(A.Spec(source, ()))
    checker.constructor_call(call, set())
    if checker.diagnostics:
        raise _recipe_error(checker.diagnostics)
    # The skeleton is built under `filter_eval_shape`: the allowed modules
    # are imported before, so that arrays they create on import are concrete.
    import_allowed([call], allow)
    return call, source


def recipe_from_dict(data: dict, allow: Iterable[str] = (), origin: str = "<recipe>") -> Recipe:
    """A recipe as a file stores it (checked against its schema by
    `_files.read_header`) -> a `Recipe` whose specs are compiled."""
    allow = tuple(allow)
    base = data["base"]
    constructor = base.get("constructor")
    call, source = _constructor_call(constructor, origin, allow)
    steps = []
    for i, entry in enumerate(data.get("specs", [])):
        name = entry.get("name") or "?"
        params = entry.get("params") or {}
        try:
            program, diagnostics = _compile(entry, f"{origin} (recipe spec {i + 1}: {name})", allow)
        except UsageError as e:
            # The only usage error of a compile without `--input`: a value
            # for a `let` the spec does not have. From a file, that is the
            # file's fault, not the command line's.
            unknown = [d for d in e.diagnostics if d.code == "E116"]
            if not unknown:
                raise _recipe_error(e.diagnostics) from None
            names = [k for k in params if any(f"`--set {k}`" in d.message for d in unknown)]
            raise ModelFileError.of(
                "E319",
                file=origin,
                origin=origin,
                listing=", ".join(f"`{k}`" for k in names or params),
                value=i + 1,
                name=name,
            ) from None
        if diagnostics:
            raise _recipe_error(diagnostics)
        steps.append(RecipeStep(program, entry.get("seed"), entry.get("name")))
    return Recipe(
        call=call,
        env={},
        constructor=str(constructor),
        seed=base.get("seed"),
        source=source,
        allow=allow,
        steps=tuple(steps),
        train=data.get("train"),
        picked=data.get("picked"),
    )


def _compile(entry: dict, name: str, allow: tuple[str, ...]) -> tuple[Program | None, list]:
    """A spec as a recipe or an adapter record lists it (`text`, `params`,
    `mesh`), compiled with its diagnostics."""
    params = entry.get("params") or {}
    return compile_collect(str(entry.get("text", "")), name, params, allow, mesh=entry.get("mesh"))


def _skeleton_of(recipe: Recipe, origin: str) -> Any:
    """The structure a recipe builds, as `ShapeDtypeStruct` leaves."""
    try:
        return eqx.filter_eval_shape(recipe.build, jax.random.key(0))
    except SpecError as e:
        codes = {d.code for d in e.diagnostics}
        if "E117" in codes:
            d = e.diagnostics[0]
            raise ModelFileError.of(
                "E306", file=origin, help=d.help, origin=origin, split=d.message.split("`")[1]
            ) from None
        raise _recipe_error(e.diagnostics) from None


def skeleton(
    path: str | os.PathLike, allow: Iterable[str] = (), like: Any = None
) -> tuple[Header, Recipe | None, Any]:
    """(header, recipe, skeleton) of a model file, without reading its tensors;
    the header's tensors are checked against the skeleton (names, shapes,
    dtypes)."""
    header = read_header(path)
    if like is not None:
        skel = eqx.filter_eval_shape(lambda m: m, like)
        check_tensors(header, skel)
        return header, None, skel
    data = header.recipe
    if data is None:
        raise ModelFileError.of("E304", file=str(path), path=path)
    try:
        recipe = recipe_from_dict(data, allow, header.path)
    except SpecError as e:
        raise ModelFileError(e.diagnostics) from None
    skel = _skeleton_of(recipe, header.path)
    # The tensors are checked against the structure here, where every command
    # that reads a model file passes (`check`, `plan`, `show`, `apply`), not
    # only when they are loaded.
    check_tensors(header, skel)
    # The skeleton carries the file's recipe, so that a plan of it (`eqxform
    # plan SPEC FILE`) draws an ensemble's members with the recipe's
    # constructor, as `apply` and `train` of the loaded model do.
    remember(skel, recipe)
    remember(split_state(skel)[0], recipe)
    return header, recipe, skel


def check_tensors(header: Header, skel: Any) -> None:
    """Every tensor of the file is the one the skeleton wants, and no more."""
    problems = _mismatches(header, named_arrays(skel), "the recipe makes", "the recipe does")
    if problems:
        raise ModelFileError.of(
            "E305",
            file=header.path,
            notes=tuple(problems[1:6]),
            path=header.path,
            problems=problems[0],
        )


def _mismatches(
    header: Header, arrays: Iterable[tuple[str, Any]], makes: str, does: str
) -> list[str]:
    """How the file's tensors differ from `arrays` (name, array), which the
    recipe or the specs make: a line per problem."""
    problems, names = [], set()
    for name, leaf in arrays:
        names.add(name)
        info = header.tensors.get(name)
        want = (tuple(leaf.shape), np.dtype(leaf.dtype).name)
        if info is None:
            problems.append(f"tensor `{name}` is missing")
        elif (info.shape, info.dtype) != want:
            problems.append(
                f"tensor `{name}` is {info.dtype}{list(info.shape)}, {makes} {want[1]}{list(want[0])}"
            )
    extra = sorted(set(header.tensors) - names)
    if extra:
        problems.append(f"tensors {does} not make: " + ", ".join(f"`{e}`" for e in extra[:5]))
    return problems


def refilled(subject: Any, value_of: Callable[[str, Any], Any]) -> Any:
    """`subject` with each array leaf replaced by `value_of(its tensor name,
    the leaf)`, or kept where that is None."""
    leaves, treedef = jax.tree_util.tree_flatten(subject)
    out = []
    for name, leaf in zip(leaf_names(subject), leaves):
        value = None if name is None else value_of(name, leaf)
        out.append(leaf if value is None else value)
    return jax.tree_util.tree_unflatten(treedef, out)


def fill(header: Header, skel: Any, shardings: dict[str, Any] | None = None) -> Any:
    """The skeleton (from `skeleton`, so checked against the file) with its
    leaves read from the file. With `shardings` (tensor name ->
    `jax.sharding.Sharding`, every tensor), each tensor is placed in its
    sharding as it is read, each device's shard read alone from the file
    (safetensors slices): no device ever holds more of a sharded tensor than
    its shard."""
    if shardings is None:
        values = read_tensors(header, [n for n in leaf_names(skel) if n is not None])
        return refilled(skel, lambda name, _: jnp.asarray(values[name]))
    reader = SliceReader(header.path)

    def placed(name: str, leaf: Any) -> Any:
        read = lambda index: reader.read(name, index)  # noqa: E731
        array = jax.make_array_from_callback(tuple(leaf.shape), shardings[name], read)
        reader.forget()
        return array

    try:
        return refilled(skel, placed)
    finally:
        reader.close()


def file_shardings(skel: Any, recipe: Recipe | None, mesh: Any, program: Any = None) -> dict:
    """tensor name -> `NamedSharding` of every tensor of a file whose
    structure is `skel`: the `shard` rules of the specs in its recipe, then
    those of `program`, on `mesh`; the rest replicated."""
    device_mesh = as_mesh(mesh)
    programs = [] if recipe is None else [step.program for step in recipe.steps]
    programs += [] if program is None else [program]
    rules = tuple(rule for p in programs for rule in p.shards)
    placed = placements(skel, rules, dict(device_mesh.shape))
    replicated = NamedSharding(device_mesh, PartitionSpec())
    by_name = {p.node.name: NamedSharding(device_mesh, p.spec) for p in placed}
    return {n: by_name.get(n, replicated) for n in leaf_names(skel) if n is not None}


def load(
    path: str | os.PathLike,
    *,
    allow: Iterable[str] = (),
    like: Any = None,
    mesh: Any = None,
    program: Any = None,
    base: Any = None,
):
    """Load a model file.

    **Arguments:**

    - `path`: a model file written by `eqxform.save` or `eqxform apply`.
    - `allow`: top-level packages whose constructors the recipe may import
      (`package.module:function`); nothing else is ever imported.
    - `like`: a model of the same structure, for files without a recipe.
    - `base`: for an adapter file (`save(..., adapters_only=True)`), the model
      the adapters were trained on; the result is that model with them.
    - `mesh`: a device mesh (`jax.sharding.Mesh`, `"data=2,model=4"`, or a
      mapping of axis sizes): each tensor is placed as the `shard` rules of
      the file's recipe say (then those of `program`, a compiled spec),
      reading from the file only the slices each device holds.

    **Returns:** the model, its structure rebuilt from the recipe and every
    tensor checked against it (names, shapes, dtypes).
    """
    allow = allowed(allow)  # a usage error before the file is touched
    if base is not None:
        return load_adapters(path, base, allow=allow)
    if adapter_record(read_header(path)) is not None:
        raise ModelFileError.of("E332", file=str(path), path=path)
    header, recipe, skel = skeleton(path, allow, like)
    shardings = None if mesh is None else file_shardings(skel, recipe, mesh, program)
    model = fill(header, skel, shardings)
    remember(model, recipe)
    return model


# ---- writing -------------------------------------------------------------------


def _checked_arrays(model: Any, recipe: Recipe | None) -> tuple[dict[str, Any], dict]:
    """The arrays of `model` by tensor name, each checked storable, and the
    file's content (the recipe given, or the one eqxform knows for it)."""
    if recipe is not None and not isinstance(recipe, Recipe):
        raise UsageError.of("E446", name=type(recipe).__name__)
    check_model(model)
    recipe = recipe if recipe is not None else recipe_to_write(model)
    arrays = named_arrays(model)
    if not arrays:
        raise UsageError.of("E446", variant="nothing", name=type(model).__name__)
    tensors: dict[str, Any] = {}
    for name, leaf in arrays:
        _storable(name, leaf)
        if name in tensors:
            raise UsageError.of("E414", name=name)
        if isinstance(leaf, jax.core.Tracer):
            raise UsageError.of("E446", variant="traced", name=name)
        tensors[name] = leaf
    content = (
        {"load": NO_RECIPE} if recipe is None else {**recipe.to_dict(), "versions": versions()}
    )
    return tensors, content


def _host(leaf: Any) -> np.ndarray:
    """One array's values on this host. An array spread over the devices of
    several processes is gathered (every process must take part)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    # Not `np.ascontiguousarray`: it turns a scalar into a vector.
    return np.array(leaf, order="C")


def _storable(name: str, leaf: Any) -> None:
    """A model file stores the dtypes safetensors and eqxform's reader share."""
    dtype = leaf.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        why, fix = (
            "a PRNG key array",
            "store its bits instead (`jax.random.key_data`), and rebuild the key with "
            "`jax.random.wrap_key_data` after loading",
        )
    else:
        try:
            name_of = np.dtype(dtype).name
        except TypeError:
            name_of = str(dtype)
        if name_of in STORABLE:
            return
        why, fix = (
            f"of dtype `{name_of}`",
            "cast it to one of " + ", ".join(f"`{d}`" for d in STORABLE) + " before saving",
        )
        if jax.dtypes.issubdtype(dtype, np.complexfloating):  # a cast would lose its imaginary part
            fix = "keep its real and imaginary parts as two real arrays of the model"
    raise UsageError.of("E447", help=fix, name=name, why=why)


def save(
    path: str | os.PathLike,
    model: Any,
    *,
    recipe: Recipe | None = None,
    adapters_only: bool = False,
    spec: Any = None,
) -> None:
    """Write `model` to `path` (safetensors), atomically.

    **Arguments:**

    - `path`: the file to write; it is replaced whole or not at all.
    - `model`: the model.
    - `recipe`: how it was made (`eqxform.recipe_of(model)`); by default the
      recipe eqxform knows for this model: models from `eqxform.new`,
      `eqxform.load`, a spec's `model` directive, `Program.apply` of those,
      and anything of the same structure (after `eqx.tree_at`, a training
      step, `Step.model`).

    - `adapters_only`: write only the adapters (`lora`, `ia3`) and what was
      trained beside them: the adapter tensors, every other array that is not
      frozen (a new head, layers left trainable, the state), the specs that
      added the adapters (from the model's recipe, or `spec`: the `Program`s),
      a digest of each frozen base tensor, and a digest over the whole file.
      Load it onto its base with `eqxform.load(path, base=model)`, which
      replays the specs, refuses another base (E330) and an edited file (E333),
      and takes the carried arrays from the file (so it does not matter which
      `key` the specs were first applied with).

    Without a recipe the file loads only with `eqxform.load(path, like=model)`;
    the file says so (`eqxform show` prints it, and `load` without `like=`
    answers with that fix).

    The file is written tensor by tensor: one tensor at a time is brought to
    the host (gathered from its shards, for a sharded model), so saving never
    needs the whole model in one place. In a run of several processes every
    process calls `save` (the gathers are collective) and process 0 writes.
    """
    writer = jax.process_count() == 1 or jax.process_index() == 0
    if adapters_only:
        if writer:
            check_output(path)  # before the work of encoding
        # Every process takes part (the gathers of sharded arrays are collective).
        data = adapters_to_bytes(model, spec, None if recipe is None else recipe.train)
        if writer:
            atomic_write(path, data)
        return
    tensors, content = _checked_arrays(model, recipe)
    specs = [
        TensorSpec(name, np.dtype(leaf.dtype).name, tuple(leaf.shape))
        for name, leaf in tensors.items()
    ]
    fetch = lambda name: _host(tensors[name])  # noqa: E731
    if not writer:
        for tensor in layout(specs):  # the same gathers, in the same order
            fetch(tensor.name)
        return
    check_output(path)  # before the work of writing
    atomic_write_with(path, lambda f: write_stream(f, specs, fetch, content))


class _Unwritable(Exception):
    def __init__(self, what: str):
        self.what = what


def _importable_name(obj: Any) -> str:
    """`package.module:Name` of a class or function that a recipe can name:
    importable by that name, so that loading finds the same object."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "." in qualname:
        raise _Unwritable(f"`{getattr(obj, '__name__', obj)!s:.60}` (defined in `{module}`)")
    try:
        found = getattr(importlib.import_module(module), qualname)
    except Exception:
        found = None
    if found is not obj:
        raise _Unwritable(f"`{qualname}` (not importable as `{module}:{qualname}`)")
    return f"{module}:{qualname}"


def _constructor_name(fn: Any) -> str:
    """The name a recipe calls `fn` by: its registered short name (`MLP`),
    else `package.module:Name`."""
    name = getattr(fn, "__name__", None)
    if isinstance(name, str):
        try:
            if R.resolve_constructor(name) is fn:
                return name
        except Exception:
            pass
    return _importable_name(fn)


def _spec_value(value: Any) -> str:
    """A Python constructor argument as spec text that evaluates back to it:
    literals, lists (a tuple is written as a list), dtypes, `jax.nn`
    functions, and config objects (dataclasses, named tuples) as calls of
    their class with every field."""
    if value is None or isinstance(value, (bool, int, str)):
        return render(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Unwritable(f"`{value}`")
        return render(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f for f in dataclasses.fields(value) if f.init]
        parts = [f"{f.name}={_spec_value(getattr(value, f.name))}" for f in fields]
        return f"{_importable_name(type(value))}({', '.join(parts)})"
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        parts = [f"{k}={_spec_value(v)}" for k, v in zip(type(value)._fields, value)]
        return f"{_importable_name(type(value))}({', '.join(parts)})"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_spec_value(v) for v in value) + "]"
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        raise _Unwritable("a random key (`eqxform.new` passes `key=` itself: leave it out)")
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError):  # a key array has no NumPy dtype
        dtype = None
    if dtype is not None and not isinstance(value, str) and dtype.name in DTYPES:
        return dtype.name
    name = getattr(value, "__name__", None)
    if callable(value) and isinstance(name, str) and getattr(jax.nn, name, None) is value:
        return name
    raise _Unwritable(f"a `{type(value).__name__}` (`{value!r:.60}`)")


def python_call(fn: Any, args: tuple, kwargs: dict) -> str:
    """`fn(*args, **kwargs)` as the constructor call a recipe records."""
    try:
        parts = [_spec_value(a) for a in args]
        parts += [f"{k}={_spec_value(v)}" for k, v in kwargs.items()]
        return f"{_constructor_name(fn)}({', '.join(parts)})"
    except _Unwritable as e:
        raise UsageError.of("E451", what=e.what) from None


def _package(call_text: str) -> list[str]:
    """The top-level packages of the `package.module:Name` calls in a call."""
    return sorted(
        {m.split(".", 1)[0] for m in re.findall(r"([A-Za-z_][\w.]*):[A-Za-z_]", call_text)}
    )


def new(constructor: Any, *args: Any, seed: int = 0, allow: Iterable[str] = (), **kwargs: Any):
    """Build a model from a constructor call, and remember its recipe.

    **Arguments:**

    - `constructor`: a call written as text (`"MLP(in_size=2, ...)"`), or a
      class or function, called with `*args` and `**kwargs` (a library's
      `MegalodonForCausalLM` and its config object). A Python call is recorded
      as text: a config object (a dataclass or named tuple of literals)
      becomes a call of its class (`megalodon_jax.config:MegalodonConfig(...)`)
      and a class or function its `package.module:Name`; the model is built
      from that text, as loading the file will build it.
    - `seed`: the key of the constructor (`key=` is supplied).
    - `allow`: packages whose constructors a text call may import; a Python
      call allows the packages of the objects it was given.

    **Returns:** the model; `eqxform.save` writes it with its recipe, so the
    file loads with `eqxform.load(path, allow=[...])` and no other code.

    **Example:**

    ```python
    config = MegalodonConfig(vocab_size=64, model_dim=32, num_layers=2)
    model = eqxform.new(MegalodonForCausalLM, config)
    eqxform.save("megalodon.eqx", model)  # `eqxform show megalodon.eqx --allow megalodon_jax`
    ```
    """
    if not isinstance(constructor, str) and callable(constructor):
        text = python_call(constructor, args, kwargs)
        return new(text, seed=seed, allow=allowed(allow) + tuple(_package(text)))
    if args or kwargs:
        raise UsageError.of("E405")
    if not isinstance(constructor, str):
        raise UsageError.of("E405", variant="call_string", name=type(constructor).__name__)
    allow = allowed(allow)
    seed = check_seed(seed)
    source = A.Source("<constructor>", constructor)
    call = parse_expr(constructor, source.name)
    if not isinstance(call, A.Call):
        raise UsageError.of("E405", variant="call", constructor=constructor)
    checker = Checker(A.Spec(source, ()))
    checker.constructor_call(call, set())
    if checker.diagnostics:
        raise SpecError(checker.diagnostics)
    key = jax.random.fold_in(seed_key(seed), MODEL_TAG)
    model = build(call, {}, key, source, allow)
    recipe = Recipe(
        call=call,
        env={},
        constructor=render_call(call, {}),
        seed=seed,
        source=source,
        allow=allow,
    )
    remember(model, recipe)
    return model


# ---- adapter files -----------------------------------------------------------------
#
# An adapter file holds the adapters' tensors (LoRA's factors and scales,
# (IA)^3's vectors), every other array that training changes (what is not
# frozen: a new head trained beside the adapters, layers left trainable, the
# model's state), the specs that put the adapters in, and a digest of each
# frozen base tensor the adapters rely on. Loading one onto a base replays
# those specs on it, checks that the frozen tensors are the ones the file
# wants, and fills in the rest from the file. So whatever key the specs were
# first applied with, what they drew at random and then trained comes from
# the file; and a base whose frozen tensors differ is refused.
#
# A digest over the whole record (the specs' text, seeds and values, the base
# digests, the names and bytes of the tensors) and a description of the
# adapted model's structure (module types, functions, static fields) are
# checked too: a file whose recorded spec was edited, or that replays into
# another model here, is refused instead of computing something else.

# The fields of the adapter modules that hold trainable adapter tensors.
_ADAPTER_FIELDS = {
    LoRA: ("lora_a", "lora_b", "scale"),
    LoRAWeight: ("lora_a", "lora_b", "scale"),
    IA3: ("ia3",),
    IA3Weight: ("ia3",),
}
# The fields through which an adapter or a `Frozen` holds the base's own value:
# the base's tensor names leave them out, so that a base and its adapted model
# name the same tensor alike (`layers.0.weight`, not `layers.0.base.weight.value`).
_THROUGH = {LoRA: "base", IA3: "base", LoRAWeight: "weight", IA3Weight: "weight", Frozen: "value"}


@dataclass(frozen=True)
class _Parts:
    """The arrays of an adapted model, by what an adapter file does with them."""

    adapters: list[tuple[str, Any]]  # carried: the adapters' own tensors
    trained: list[tuple[str, Any]]  # carried: other arrays training changes
    base: list[tuple[str, Any]]  # relied on: frozen, by their name in the base


def _parts(subject: Any) -> _Parts:
    """Split the arrays of `subject` (a model, or `(model, state)`): adapter
    tensors; arrays that are trained beside them (floating-point, not inside
    a `Frozen` that freezes all its layers; the state); and the frozen base
    arrays (also the integer ones, which no optimiser changes)."""
    model, state = split_state(subject)
    adapters, trained, base = [], [], []
    for node in walk(model):
        if not is_array(node.obj):
            continue
        inside, frozen, canonical = False, False, []
        for parent, key in zip(node.parents, node.path):
            name = getattr(key, "name", None)
            if name in _ADAPTER_FIELDS.get(type(parent), ()):
                inside = True
                break
            frozen = frozen or (isinstance(parent, Frozen) and parent.layers is None)
            if name is None or name != _THROUGH.get(type(parent)):
                canonical.append(key)
        if inside:
            adapters.append((tensor_name(node.path), node.obj))
        elif frozen or not jnp.issubdtype(node.obj.dtype, jnp.inexact):
            base.append((tensor_name(tuple(canonical)), tensor_name(node.path), node.obj))
        else:
            trained.append((tensor_name(node.path), node.obj))
    # Two arrays that would share a name in the base keep their full names.
    counts = collections.Counter(name for name, _, _ in base)
    base = [(name if counts[name] == 1 else full, x) for name, full, x in base]
    if state is not None:
        own = {n for n, _ in named_arrays(model)}
        trained += [(n, x) for n, x in named_arrays(subject) if n not in own]
    return _Parts(adapters, trained, base)


def require_adapters(model: Any) -> _Parts:
    """The parts of `model`, which must hold adapters for an adapter file."""
    parts = _parts(model)
    if not parts.adapters:
        raise UsageError.of("E460")
    return parts


def _tensor_digest(name: str, value: Any) -> str:
    """A hash of one tensor: its name, shape, dtype and bytes."""
    value = np.asarray(value)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{name}|{value.shape}|{value.dtype.name}|".encode())
    digest.update(memoryview(np.ascontiguousarray(value)).cast("B"))
    return digest.hexdigest()


def _base_digests(parts: _Parts) -> dict[str, str]:
    """Each frozen base tensor's digest, by its name in the base; read one
    tensor at a time."""
    return {
        name: _tensor_digest(name, _host(x)) for name, x in sorted(parts.base, key=lambda i: i[0])
    }


def _fingerprint_of(digests: dict[str, str]) -> str:
    return hashlib.blake2b(json.dumps(digests, sort_keys=True).encode(), digest_size=16).hexdigest()


def fingerprint(model: Any) -> str:
    """A hash of the frozen base tensors of `model` (adapters and the arrays
    trained beside them left out): their names, shapes, dtypes and bytes."""
    return _fingerprint_of(_base_digests(_parts(model)))


def _describe(x: Any) -> str:
    """A stable description of what is no array (a function, a number, a
    static field), the same in every process: functions by their qualified
    name, never by `repr` (which holds an address)."""
    if isinstance(x, functools.partial):
        args = ", ".join(_describe(a) for a in x.args)
        kwargs = ", ".join(f"{k}={_describe(v)}" for k, v in sorted(x.keywords.items()))
        return f"partial({_describe(x.func)}; {args}; {kwargs})"
    if x is None or isinstance(x, (bool, int, float, str)):
        return repr(x)
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(_describe(i) for i in x) + ")"
    if isinstance(x, (np.dtype, type)):
        return f"{getattr(x, '__module__', '')}.{getattr(x, '__qualname__', str(x))}"
    if callable(x):
        name = getattr(x, "__qualname__", None) or getattr(x, "__name__", None)
        if name is not None:
            return f"{getattr(x, '__module__', '')}.{name}"
    return f"<{type(x).__module__}.{type(x).__qualname__}>"


def structure(subject: Any) -> str:
    """A digest of what an adapted model is besides its array values: every
    node's path and type, its static fields, the functions it holds, and the
    shape and dtype of each array."""
    digest = hashlib.blake2b(digest_size=16)
    for node in walk(subject):
        obj = node.obj
        if is_array(obj):
            line = f"{node.text}|{np.dtype(obj.dtype).name}{tuple(obj.shape)}"
        else:
            line = f"{node.text}|{_describe(type(obj))}"
            if isinstance(obj, eqx.Module):
                for f in dataclasses.fields(obj):
                    if f.metadata.get("static", False):
                        line += f"|{f.name}={_describe(getattr(obj, f.name, None))}"
            elif callable(obj) or not (
                isinstance(obj, (tuple, list, dict)) or hasattr(obj, "__dict__")
            ):
                line += f"|{_describe(obj)}"
        digest.update(line.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def _record_digest(record: dict, tensors: dict[str, Any]) -> str:
    """The digest an adapter file carries over its record (all but the
    digest itself) and its tensors (names, shapes, dtypes, bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    body = {k: v for k, v in record.items() if k != "digest"}
    digest.update(json.dumps(body, sort_keys=True, ensure_ascii=True).encode())
    for name in sorted(tensors):
        digest.update(_tensor_digest(name, tensors[name]).encode())
    return digest.hexdigest()


def _adapter_steps(recipe: Recipe | None) -> list:
    """The steps of `recipe` from the first that adds adapters: what an
    adapter file replays on its base."""
    if recipe is None:
        return []
    for i, step in enumerate(recipe.steps):
        if any(
            action.name in ("lora", "ia3")
            for rule in step.program.spec.rules
            for action in rule.actions
        ):
            return list(recipe.steps[i:])
    return []


def adapters_to_bytes(model: Any, spec: Any = None, train: dict | None = None) -> bytes:
    """The adapter file of `model`: its adapter tensors and the arrays trained
    beside them, the specs that added the adapters (`spec`, a `Program` or a
    list of them, or the model's recipe), the digests of its frozen base
    tensors, and a digest over all of it. `train` is what `eqxform train`
    did, if it wrote the file."""
    parts = require_adapters(model)
    if spec is not None:
        programs = [spec] if isinstance(spec, Program) else list(spec)
        steps = [RecipeStep(p, p.seed) for p in programs]
    else:
        steps = _adapter_steps(recipe_of(model))
    if not steps:
        raise UsageError.of("E461")
    carried = parts.adapters + parts.trained
    for name, leaf in carried:
        _storable(name, leaf)
    tensors = {name: _host(x) for name, x in carried}
    digests = _base_digests(parts)
    record: dict[str, Any] = {
        "specs": [s.to_dict() for s in steps],
        "fingerprint": _fingerprint_of(digests),
        "base": digests,
        "trained": sorted(n for n, _ in parts.trained),
        "structure": structure(model),
    }
    if train:
        record["train"] = dict(train)
    record["digest"] = _record_digest(record, tensors)
    return encode(tensors, {"adapters": record, "versions": versions()})


def _edited(path: str, why: str) -> ModelFileError:
    return ModelFileError.of("E333", file=str(path), path=path, why=why)


def load_adapters(path: str | os.PathLike, base: Any, *, allow: Iterable[str] = ()) -> Any:
    """The adapters of the file at `path` on `base`: the file's digest
    checked, its specs replayed on `base` (with their seeds), the frozen
    tensors checked against the file's digests, the adapter tensors and the
    arrays trained beside them filled in from the file."""
    header = read_header(path)
    info = adapter_record(header)
    if info is None:
        raise ModelFileError.of("E331", file=str(path), path=path)
    allow = allowed(allow)
    values = read_tensors(header, list(header.tensors))
    if "digest" not in info:
        raise _edited(
            str(path), "it carries no digest (an earlier eqxform wrote it, or it was removed)"
        )
    if _record_digest(info, values) != info["digest"]:
        raise _edited(
            str(path),
            "its record (the specs, the base's digests) or its tensors "
            "do not match the digest it carries",
        )
    model, recipe = _replay(str(path), info, base, allow)
    parts = _parts(model)
    carried = {n: x for n, x in parts.adapters + parts.trained}
    problems = _mismatches(header, carried.items(), "the specs make", "the specs do")
    if problems:
        raise ModelFileError.of(
            "E330", file=str(path), notes=tuple(problems[1:6]), path=path, problems=problems[0]
        )
    _check_base(
        str(path),
        info,
        _base_digests(parts),
        lambda: _base_digests(_parts(_replay(str(path), info, base, allow, redraw=True)[0])),
    )
    if info.get("structure") is not None and structure(model) != info["structure"]:
        raise ModelFileError.of("E334", file=str(path), path=path)
    model = refilled(model, lambda n, _: jnp.asarray(values[n]) if n in carried else None)
    if recipe is not None:
        remember(model, recipe)
    return model


def _replay(path: str, info: dict, base: Any, allow, redraw: bool = False) -> tuple[Any, Any]:
    """(the model, its recipe) of an adapter file's specs replayed on
    `base`, each with its recorded seed (with `redraw`, with other keys: to
    find what the specs draw at random)."""
    model = base
    recipe = recipe_of(base)
    for i, entry in enumerate(info["specs"]):
        name = f"{path} (adapter spec {i + 1}: {entry.get('name', '?')})"
        program, diagnostics = _compile(entry, name, allow)
        if diagnostics:
            raise ModelFileError(diagnostics)
        seed = entry.get("seed")
        key = seed_key(program.seed if seed is None else seed)
        if redraw:
            key = jax.random.fold_in(key, 1)
        try:
            model = program.run(
                model, key, Context(allow=allow, base=None if recipe is None else recipe.build)
            )
        except SpecError as e:
            raise ModelFileError.of(
                "E330",
                variant="no_fit",
                file=path,
                notes=tuple(d.message for d in e.diagnostics[:3]),
                path=path,
            ) from None
        if recipe is not None:
            recipe = recipe.then(program, seed)
    return model, recipe


def _check_base(
    path: str, info: dict, have: dict[str, str], redrawn: Callable[[], dict[str, str]]
) -> None:
    """The frozen tensors of the base, after the replay, are the ones the
    adapters were trained on: by name, shape, dtype and bytes. When they are
    not, `redrawn()` (the digests of a replay with other keys) tells the
    tensors that the specs draw at random from those of another base."""
    want = info.get("base") or {}
    if _fingerprint_of(have) == info["fingerprint"] and have == want:
        return
    differ = sorted(n for n in set(have) & set(want) if have[n] != want[n])
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    again = redrawn() if differ else {}
    drawn = [n for n in differ if again.get(n) != have[n]]
    if drawn:
        raise ModelFileError.of(
            "E330",
            variant="not_replayable",
            file=path,
            path=path,
            listing=", ".join(f"`{n}`" for n in drawn[:5]),
        )
    kinds = (
        ("that differ", differ),
        ("this base lacks", missing),
        ("the file does not know", extra),
    )
    notes = [f"tensors {k}: " + ", ".join(f"`{n}`" for n in ns[:5]) for k, ns in kinds if ns]
    raise ModelFileError.of(
        "E330",
        variant="fingerprint_file",
        file=path,
        notes=tuple(notes),
        path=path,
        value=f"{len(differ)} of its {len(want)} frozen tensors differ"
        if differ and not missing and not extra
        else "the base's frozen tensors differ",
        fingerprint_of_have=_fingerprint_of(have)[:12],
        str_info=str(info["fingerprint"])[:12],
    )
