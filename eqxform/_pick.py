"""One member of an ensemble as a plain model (`eqxform pick`).

The member gets a recipe of its own, so that its file loads, plans and
trains as any plain model does: the ensemble's recipe, with the spec that
made the ensemble written again without its `ensemble` line (each name the
line varied becomes a `let` of the member's value, so the rest of the spec
reads as it did for that member). The recipe's `picked` record says where
the member came from: the file, its index, the member count, and what
training recorded of it (its hyper-parameters and losses).

The rewritten recipe is held to the member before anything is written: the
plain model it builds must have exactly the member's tensors (names, shapes,
dtypes), else the member cannot be picked (E486) and nothing is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp

from . import _ast as A
from ._compile import compile_collect
from ._errors import ModelFileError, UsageError
from ._expr import render
from ._files import SliceReader, adapter_record, read_header
from ._modules import Ensemble, join_state, split_state
from ._program import Recipe, RecipeStep, check_model, recipe_of, remember
from ._recipes import _skeleton_of, named_arrays, refilled, skeleton
from ._select import is_array
from ._values import allowed, is_number


def _members_recorded(recipe: Recipe | None) -> list | None:
    """`recipe.train["members"]` (what `eqxform train` recorded of each
    member of an ensemble), or None."""
    train = None if recipe is None else recipe.train
    members = None if not isinstance(train, Mapping) else train.get("members")
    return members if isinstance(members, list) else None


# What the messages call an ensemble given in Python (a file is named by its path).
_GIVEN = "the ensemble given"


def _named(origin: str) -> dict[str, str | None]:
    """A message's file (none for an ensemble given in Python) and its words
    for the ensemble (`named_origin`)."""
    given = origin == _GIVEN
    return {"file": None if given else origin, "named_origin": origin if given else f"`{origin}`"}


def _check_members(members: list, count: int, origin: str) -> None:
    """The recorded members are one entry per member, in order."""
    problem = None
    if len(members) != count:
        problem = f"records {len(members)} members for an ensemble of {count}"
    else:
        for i, entry in enumerate(members):
            if not isinstance(entry, Mapping) or entry.get("member", i) != i:
                problem = f"records member {i} as {str(entry)[:60]}"
                break
    if problem is not None:
        raise ModelFileError.of("E485", **_named(origin), problem=problem)


def one_way(member: int | None, best: bool) -> None:
    """`--member K` or `--best`: one of them."""
    if (member is None) == (not best):
        raise UsageError.of("E482", variant="both" if best else None)


def choose(
    member: int | None, best: bool, count: int, recipe: Recipe | None, origin: str
) -> tuple[int, str]:
    """The member to pick, and how it was chosen (for the command's report)."""
    one_way(member, best)
    members = _members_recorded(recipe)
    if members is not None:
        _check_members(members, count, origin)
    if not best:
        if isinstance(member, bool) or not isinstance(member, int):
            raise UsageError.of("E481", member=member, value=count - 1)
        if not 0 <= member < count:
            raise UsageError.of(
                "E481",
                variant="has_members",
                count=count,
                value=count - 1,
                member=member,
                **_named(origin),
            )
        return member, f"member {member} of {count}"
    losses = [
        (float(e["eval_loss"]), i)
        for i, e in enumerate(members or [])
        # A member that diverged in training is never the best.
        if is_number(e.get("eval_loss"))
        and math.isfinite(e["eval_loss"])
        and e.get("diverged_at") is None
    ]
    if not losses:
        raise UsageError.of("E483", **_named(origin))
    value, k = min(losses)
    how = f"member {k} of {count}, the lowest held-out loss ({value:.4g})"
    if len(losses) < count:
        how += f" of the {len(losses)} members with one recorded"
    return k, how


def _ensemble_step(recipe: Recipe) -> tuple[int, A.EnsembleStmt] | None:
    """The step of `recipe` whose spec has the `ensemble` line, and the line."""
    for i, step in enumerate(recipe.steps):
        for stmt in step.program.spec.statements:
            if isinstance(stmt, A.EnsembleStmt):
                return i, stmt
    return None


def _rewritten(text: str, stmt: A.EnsembleStmt, k: int, count: int, values: dict) -> str:
    """The spec `text` without its `ensemble` line: the line kept as a
    comment, and each name it bound for member `k` a `let` of its value.
    The `let`s come first: the line binds its names for the whole spec, so
    a line above it may read them."""
    lines = text.splitlines(keepends=True)
    start, end = stmt.span.line - 1, stmt.span.end_line
    original = " ".join(line.strip() for line in lines[start:end])
    comment = [f"# `eqxform pick`: member {k} of {count}, of `{original}`\n"]
    lets = [f"let {name} = {render(value)}\n" for name, value in values.items()]
    return "".join(lets + lines[:start] + comment + lines[end:])


def _cannot(origin: str, why: str, notes: Iterable[str] = ()) -> ModelFileError:
    return ModelFileError.of("E486", notes=tuple(notes), why=why, **_named(origin))


def plain_recipe(recipe: Recipe, k: int, count: int, origin: str, picked: dict) -> Recipe:
    """The recipe of member `k` of the ensemble `recipe` describes: the
    spec with the `ensemble` line written without it, and `picked`."""
    found = _ensemble_step(recipe)
    if found is None:
        raise _cannot(origin, "its recipe has no `ensemble` line to take out")
    i, stmt = found
    step = recipe.steps[i]
    sweep = step.program.sweep
    # The names a sweep's line binds for member `k` (never `seed`: the member's
    # recipe seed is its own with `vary seed`, else the spec's).
    values = {} if sweep is None else {name: sweep.members[k][name] for name in sweep.bound}
    seed = step.seed if sweep is None or step.seed is None else sweep.seed(step.seed, k)
    text = _rewritten(step.program.text, stmt, k, count, values)
    name = step.to_dict()["name"]
    program, diagnostics = compile_collect(
        text, name, dict(step.program.params), recipe.allow, mesh=step.program.mesh_given
    )
    if program is None:
        raise _cannot(
            origin,
            f"its spec {i + 1} (`{name}`) does not compile without its `ensemble` line",
            [d.message for d in diagnostics[:3]],
        )
    steps = list(recipe.steps)
    steps[i] = RecipeStep(program, seed, name)
    train = None
    if recipe.train is not None:
        # How the member was trained (steps, data, loss); the ensemble's
        # record of every member stays with the ensemble.
        train = {k_: v for k_, v in recipe.train.items() if not isinstance(v, (list, dict))}
    record = dict(picked)
    if sweep is not None and "values" not in record:
        # Not trained: the values the line gives the member.
        record["values"] = sweep.values(k, step.program.seed if step.seed is None else step.seed)
    return replace(recipe, steps=tuple(steps), train=train, picked=record)


def _picked_record(origin: str, k: int, count: int, recipe: Recipe | None) -> dict:
    record: dict[str, Any] = {"file": os.path.basename(origin), "member": k, "members": count}
    members = _members_recorded(recipe)
    if members is not None:
        entry = members[k]
        values = entry.get("values")
        if isinstance(values, Mapping):
            record["values"] = dict(values)
        for key in ("loss", "eval_loss"):
            if key in entry:
                record[key] = entry[key]
    return record


def _member_struct(ensemble: Ensemble, state: Any) -> Any:
    """One member's structure: every array without its member axis."""

    def one(x):
        return jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype) if is_array(x) else x

    return join_state(*jax.tree_util.tree_map(one, (ensemble.model, state)))


def _shapes(subject: Any) -> dict[str, tuple]:
    return {n: (tuple(x.shape), jnp.dtype(x.dtype).name) for n, x in named_arrays(subject)}


def _plain(
    ensemble: Ensemble, state: Any, recipe: Recipe, k: int, origin: str, picked: dict
) -> tuple[Any, Recipe, dict[str, str]]:
    """(the plain skeleton of member `k`, its recipe, member tensor name ->
    the ensemble's tensor name), checked against each other."""
    count = ensemble.count
    whole = join_state(ensemble, state)
    for name, (shape, _) in _shapes(whole).items():
        if not shape or shape[0] != count:
            raise _cannot(origin, f"its tensor `{name}` has no member axis of {count}")
    member = _member_struct(ensemble, state)
    names = {m: w for (m, _), (w, _) in zip(named_arrays(member), named_arrays(whole))}
    new = plain_recipe(recipe, k, count, origin, picked)
    try:
        skel = _skeleton_of(new, origin)
    except ModelFileError as e:
        raise _cannot(
            origin,
            "its recipe does not build without the `ensemble` line",
            [d.message for d in e.diagnostics[:3]],
        ) from None
    want, have = _shapes(member), _shapes(skel)
    if want != have:
        differ = sorted(set(want) ^ set(have)) or sorted(n for n in want if want[n] != have[n])
        raise _cannot(
            origin,
            "without the `ensemble` line its recipe builds other tensors than the member's",
            [
                f"tensor `{n}`: the member has {want.get(n)}, the recipe {have.get(n)}"
                for n in differ
            ][:5],
        )
    return skel, new, names


def pick_file(
    path: str | os.PathLike,
    member: int | None = None,
    *,
    best: bool = False,
    allow: Iterable[str] = (),
) -> tuple[Any, Recipe, str]:
    """(member `member` of the ensemble in the model file `path`, as a plain
    model; its recipe; how it was chosen). Only the member's slice of each
    tensor is read."""
    allow = allowed(allow)
    one_way(member, best)
    origin = str(path)
    header = read_header(path)
    if adapter_record(header) is not None:
        raise ModelFileError.of("E484", file=origin, origin=origin)
    header, recipe, skel = skeleton(path, allow)
    ensemble, state = split_state(skel)
    if not isinstance(ensemble, Ensemble):
        raise ModelFileError.of("E480", file=origin, origin=origin, kind=type(ensemble).__name__)
    assert recipe is not None  # `skeleton` refuses a file without one
    k, how = choose(member, best, ensemble.count, recipe, origin)
    plain, new, names = _plain(
        ensemble, state, recipe, k, origin, _picked_record(origin, k, ensemble.count, recipe)
    )
    reader = SliceReader(header.path)
    try:
        model = refilled(
            plain, lambda n, _: jnp.asarray(reader.read(names[n], (slice(k, k + 1),))[0])
        )
    finally:
        reader.close()
    remember(model, new)
    return model, new, how


def pick(
    model: Any,
    member: int | None = None,
    *,
    best: bool = False,
    allow: Iterable[str] = (),
) -> Any:
    """One member of an ensemble, as a plain model.

    **Arguments:**

    - `model`: an ensemble (`eqxform.Ensemble`, or a stateful ensemble's
      `(ensemble, state)`), or the path of its model file.
    - `member`: the member's index, 0-based.
    - `best`: instead of `member`, the member with the lowest held-out loss
      that `eqxform train --eval-data` recorded in the recipe.
    - `allow`: packages whose constructors the file's recipe may import.

    **Returns:** the member (with its state, for a stateful ensemble), whose
    recipe is the ensemble's without the `ensemble` line (a varied name is a
    `let` of the member's value) and says where it came from
    (`recipe_of(m)["picked"]`). `eqxform.save` writes it as a plain model
    file, which loads and trains on its own.

    **Example:**

    ```python
    one = eqxform.pick("sweep.eqx", best=True)
    eqxform.save("one.eqx", one)
    ```
    """
    if isinstance(model, (str, os.PathLike)):
        return pick_file(model, member, best=best, allow=allow)[0]
    allowed(allow)
    ensemble, state = split_state(check_model(model))
    if not isinstance(ensemble, Ensemble):
        raise UsageError.of("E480", variant="given", name=type(ensemble).__name__)
    recipe = recipe_of(model) or recipe_of(ensemble)
    origin = _GIVEN
    k, _ = choose(member, best, ensemble.count, recipe, origin)
    taken = join_state(ensemble.member(k), jax.tree_util.tree_map(lambda x: x[k], state))
    if recipe is None or _ensemble_step(recipe) is None:
        # No recipe describes it (an ensemble of a Python constructor):
        # the member as it is.
        return taken
    record = _picked_record(origin, k, ensemble.count, recipe)
    del record["file"]
    plain, new, _ = _plain(ensemble, state, recipe, k, origin, record)
    arrays = dict(named_arrays(taken))
    result = refilled(plain, lambda n, _: jnp.asarray(arrays[n]))
    remember(result, new)
    return result
