"""Model files as models: recipes written and replayed; `load`, `save`, `new`.

This layer sits above the compiler: replaying a recipe compiles the specs it
lists. Loading builds the skeleton with `eqx.filter_eval_shape` from the
recipe, checks every tensor's name, shape and dtype against it, then fills the
leaves, so a file written by eqxform loads with no code from its user.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace as dc_replace
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _ast as A
from ._build import MODEL_TAG, build, render_call
from ._check import Checker, check_seed
from ._compile import compile_collect
from ._diagnostics import Diagnostic
from ._errors import ModelFileError, SpecError, UsageError
from ._files import STORABLE, Header, check_output, corrupt, encode, read_header, read_tensors
from ._files import atomic_write as atomic_write
from ._hashing import seed_key
from ._modules import split_state, state_values
from ._parse import parse_expr
from ._program import Recipe, RecipeStep, recipe_of, remember
from ._select import is_array, tensor_name


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
        raise corrupt(origin, "its recipe's base is not a constructor call", help=_EDITED)
    checker = Checker(A.Spec(source, ()))
    checker.constructor_call(call, set())
    if checker.diagnostics:
        raise _recipe_error(checker.diagnostics)
    return call, source


def allowed(allow: Any) -> tuple[str, ...]:
    """`allow` (package names) as a tuple, or a usage error: a single string
    would otherwise be read as its letters."""
    ok = not isinstance(allow, (str, bytes))
    if ok:
        try:
            allow = tuple(allow)
        except TypeError:
            ok = False
    if not ok or not all(isinstance(a, str) for a in allow):
        raise UsageError(
            Diagnostic(
                "E449",
                f"`allow` must be a list of package names, not {allow!r:.60}",
                help='e.g. `allow=["mypkg"]`',
            )
        )
    return allow


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
            program, diagnostics = compile_collect(
                str(entry.get("text", "")),
                f"{origin} (recipe spec {i + 1}: {name})",
                params,
                allow,
            )
        except UsageError as e:
            # The only usage error of a compile without `--input`: a value
            # for a `let` the spec does not have. From a file, that is the
            # file's fault, not the command line's.
            unknown = [d for d in e.diagnostics if d.code == "E116"]
            if not unknown:
                raise _recipe_error(e.diagnostics) from None
            names = [k for k in params if any(f"`--set {k}`" in d.message for d in unknown)]
            raise ModelFileError(
                Diagnostic(
                    "E319",
                    f"`{origin}`'s recipe sets "
                    + ", ".join(f"`{k}`" for k in names or params)
                    + f" for its spec {i + 1} (`{name}`), which has no such `let`",
                    file=origin,
                    help="the recipe was edited or written by another program; rebuild the "
                    "file with `eqxform apply`",
                )
            ) from None
        if diagnostics:
            raise _recipe_error(diagnostics)
        steps.append(RecipeStep(program, entry.get("seed")))
    return Recipe(
        call=call,
        env={},
        constructor=str(constructor),
        seed=base.get("seed"),
        source=source,
        allow=allow,
        steps=tuple(steps),
        train=data.get("train"),
    )


def _skeleton_of(recipe: Recipe, origin: str) -> Any:
    """The structure a recipe builds, as `ShapeDtypeStruct` leaves."""
    try:
        return eqx.filter_eval_shape(recipe.build, jax.random.key(0))
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
        raise ModelFileError(
            Diagnostic(
                "E304",
                f"`{path}` has no eqxform recipe, so its structure is unknown",
                file=str(path),
                help="load it into a model of the same structure: `eqxform.load(path, like=model)`",
            )
        )
    try:
        recipe = recipe_from_dict(data, allow, header.path)
    except SpecError as e:
        raise ModelFileError(e.diagnostics) from None
    skel = _skeleton_of(recipe, header.path)
    # The tensors are checked against the structure here, where every command
    # that reads a model file passes (`check`, `plan`, `show`, `apply`), not
    # only when they are loaded.
    check_tensors(header, skel)
    return header, recipe, skel


def check_tensors(header: Header, skel: Any) -> None:
    """Every tensor of the file is the one the skeleton wants, and no more."""
    problems = []
    names = set()
    for name, leaf in named_arrays(skel):
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


def fill(header: Header, skel: Any) -> Any:
    """The skeleton (from `skeleton`, so checked against the file) with its
    leaves read from the file."""
    leaves, treedef = jax.tree_util.tree_flatten(skel)
    names = leaf_names(skel)
    values = read_tensors(header, [n for n in names if n is not None])
    filled = [x if n is None else jnp.asarray(values[n]) for n, x in zip(names, leaves)]
    return jax.tree_util.tree_unflatten(treedef, filled)


def load(path: str | os.PathLike, *, allow: Iterable[str] = (), like: Any = None):
    """Load a model file.

    **Arguments:**

    - `path`: a model file written by `eqxform.save` or `eqxform apply`.
    - `allow`: top-level packages whose constructors the recipe may import
      (`package.module:function`); nothing else is ever imported.
    - `like`: a model of the same structure, for files without a recipe.

    **Returns:** the model, its structure rebuilt from the recipe and every
    tensor checked against it (names, shapes, dtypes).
    """
    header, recipe, skel = skeleton(path, allowed(allow), like)
    model = fill(header, skel)
    remember(model, recipe)
    return model


# ---- writing -------------------------------------------------------------------


def to_bytes(model: Any, recipe: Recipe | None = None) -> bytes:
    """The model file of `model`: its arrays and its recipe (given, or the one
    eqxform knows for it)."""
    if recipe is not None and not isinstance(recipe, Recipe):
        raise UsageError(
            Diagnostic(
                "E446",
                f"`recipe` must be an `eqxform.Recipe`, not a `{type(recipe).__name__}`",
                help="pass `eqxform.recipe_of(model)`, or leave `recipe` out",
            )
        )
    recipe = recipe if recipe is not None else recipe_of(model)
    arrays = named_arrays(model)
    if not arrays:
        raise UsageError(
            Diagnostic(
                "E446",
                f"there is nothing to save: the `{type(model).__name__}` given holds no arrays",
                help="pass a model (an `equinox.Module` or a pytree of arrays)",
            )
        )
    tensors = {}
    for name, leaf in arrays:
        _storable(name, leaf)
        if name in tensors:
            raise UsageError(
                Diagnostic(
                    "E414",
                    f"two leaves of the model are both named `{name}`",
                    help="tensor names are the leaves' paths; a dict key that contains a `.` "
                    "can collide with a path: rename it",
                )
            )
        # Not `np.ascontiguousarray`: it turns a scalar into a vector.
        try:
            tensors[name] = np.array(leaf, order="C")
        except jax.errors.JAXTypeError:
            raise UsageError(
                Diagnostic(
                    "E446",
                    f"leaf `{name}` is a traced value; a model is saved outside `jax.jit`",
                    help="save the model the jitted function returns",
                )
            ) from None
    if recipe is None:
        content = {"load": NO_RECIPE}
    else:
        content = {**recipe.to_dict(), "versions": versions()}
    return encode(tensors, content)


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
    raise UsageError(
        Diagnostic("E447", f"leaf `{name}` is {why}, which a model file cannot store", help=fix)
    )


def save(path: str | os.PathLike, model: Any, *, recipe: Recipe | None = None) -> None:
    """Write `model` to `path` (safetensors), atomically.

    **Arguments:**

    - `path`: the file to write; it is replaced whole or not at all.
    - `model`: the model.
    - `recipe`: how it was made (`eqxform.recipe_of(model)`); by default the
      recipe eqxform knows for this model: models from `eqxform.new`,
      `eqxform.load`, a spec's `model` directive, `Program.apply` of those,
      and anything of the same structure (after `eqx.tree_at`, a training
      step, `Step.model`).

    Without a recipe the file loads only with `eqxform.load(path, like=model)`;
    the file says so (`eqxform show` prints it, and `load` without `like=`
    answers with that fix).
    """
    check_output(path)  # before the work of encoding
    atomic_write(path, to_bytes(model, recipe))


def new(constructor: str, *, seed: int = 0, allow: Iterable[str] = ()):
    """Build a model from a constructor call such as `"MLP(in_size=2, ...)"`."""
    if not isinstance(constructor, str):
        raise UsageError(
            Diagnostic(
                "E405",
                f"the constructor must be a call written as a string, not a "
                f"`{type(constructor).__name__}`",
                help='e.g. "MLP(in_size=2, out_size=2, width_size=8, depth=2)"',
            )
        )
    allow = allowed(allow)
    seed = check_seed(seed)
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
    allow = tuple(allow)
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
