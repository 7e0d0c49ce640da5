"""A compiled spec (`Program`) and how a model was made (`Recipe`).

A `Program` is plain data: the tuple of passes and everything else the spec
set (seed, `let` values, the `model` directive, the optimiser and its groups).
`apply` is a fold over the passes, like `optax.chain`: each pass is a pure
function of the model, a key and an explicit `Context`.

A `Recipe` says how a model was made: a constructor call, then the programs
applied to it. It is written into model files as JSON, and it holds the
compiled programs themselves, so that rebuilding a model (for the members of
an ensemble, or the skeleton of a file) compiles nothing again.

Recipes travel with models by structure: `remember(model, recipe)` files the
recipe under the model's tree structure (treedef, shapes, dtypes), so that
whatever keeps the structure keeps the recipe: `eqx.tree_at` on values, a
training step, `Step.model`, a copy. Surgery by hand that changes the
structure drops it, rightly, as the recipe no longer describes the model. Of
several recipes filed under one structure, the one filed for this very object
wins, then the one filed for the model that shares the most arrays with it
(`eqx.tree_at` keeps the arrays it does not replace); if neither decides and
the recipes disagree, none is returned rather than a guess, and writing such
a model to a file is an error (E590) that asks for `recipe=`.

Why a table, and not the recipe inside the values users hold: the model a
user holds is their own `equinox.Module` (an `MLP`, a library's `ViT`), and
eqxform must hand back exactly that type, with no field or wrapper of its
own, or the user's code and the libraries' own functions stop working on it.
The models users then derive from it (`eqx.tree_at`, `Step.model`, the
result of `jax.jit`) are new objects that eqxform never sees. So a value
cannot carry the recipe; what survives all of those is the structure and
the arrays, and those are what the table is keyed by. Where a recipe can be
passed, it is: `eqxform.save(..., recipe=)`, the `Step` (which takes its
model's recipe when it is made and files it for every model it returns),
and the model file itself (`load` files the recipe it reads). The table is
bounded (`_MAX_STRUCTURES` structures, `_MAX_PER_STRUCTURE` recipes each)
and holds its models by weak reference, so it keeps nothing alive.
"""

from __future__ import annotations

import collections
import functools
import os
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh

from . import _ast as A
from ._build import (
    MODEL_TAG,
    budget_diagnostic,
    build,
    from_constructor,
    is_constructor,
    nbytes,
    render_call,
)
from ._diagnostics import Diagnostic, plural, report
from ._errors import EqxformWarning, SpecError, UsageError
from ._hashing import seed_key
from ._limits import MAX_SEED
from ._mesh import MeshSpec, as_mesh_spec
from ._modules import Ensemble, Stacked, join_state, make_ensemble, split_state
from ._passes import Context, Pass, PlacePass, ShardRule
from ._passes._forward import input_structs
from ._passes._shard import check_axes, sharding_tree
from ._passes._struct import EnsemblePass, UnstackPass, stack_arrays
from ._plan import Planner
from ._select import is_array, too_deep, walk
from ._sweep import Sweep
from ._values import check_seed
from ._weights import (
    Checkpoint,
    WeightPlan,
    export_peft,
    export_weights,
    load_peft,
    load_weights,
    open_checkpoint,
    plan_weights,
)
from ._wnames import WeightRules


@dataclass(frozen=True)
class Group:
    """An `lr` or `weight_decay` action: it shapes the optimiser, not the
    model, and selects on the model after every rule."""

    rule: A.Rule
    action: A.Action

    @property
    def line(self) -> int:
        return self.rule.span.line


@dataclass(frozen=True)
class Program:
    """A compiled spec: its passes and what they need. Apply it to models.

    **Attributes:**

    - `passes`: the tuple of passes, in the order the rules are written.
    - `env`: the `let` values, overrides applied; `params`: the overrides.
    - `seed`: the spec's `seed` (0 when it has none).
    - `model_call`: the `model` directive's constructor call, if any.
    - `optimizer`: `(name, arguments)` of the `optimizer` directive, if any.
    - `groups`: the `lr` and `weight_decay` actions, in order.
    - `allow`: packages whose constructors may be imported.
    - `inputs`: the model's inputs (`input` lines), one per positional argument.
    - `warnings`: what the checker warned of (`W205`, a `let` never used); the
      plan reports them with its own.
    - `mesh`: the device mesh (`MeshSpec`: the `mesh` directive, or the one
      given to `compile`), or None; `shards`: the `shard` rules;
      `mesh_axes`: every mesh axis the spec names, with where;
      `mesh_given`: the mesh given to `compile`, if any (recipes keep it).
    - `weights`: the `weights`, `map`, `skip` and `keep` lines (a checkpoint in
      another library's names, read onto the model before the first pass), or
      None.
    - `sweep`: for `ensemble ... vary` or `ensemble grid`, the members' values
      (`Sweep`), else None; `members`: then one program per member (the spec
      without its `ensemble` line, with that member's values), which builds
      and trains that member as a single model.
    """

    spec: A.Spec
    passes: tuple[Pass, ...]
    env: Mapping[str, Any]
    params: Mapping[str, Any]
    seed: int
    model_call: A.Call | None
    optimizer: tuple[str, Mapping[str, Any]] | None = None
    groups: tuple[Group, ...] = ()
    allow: tuple[str, ...] = field(default=())
    inputs: tuple[A.InputStmt, ...] = ()
    mesh: MeshSpec | None = None
    shards: tuple[ShardRule, ...] = ()
    mesh_axes: tuple[tuple[str, A.Span], ...] = ()
    mesh_given: MeshSpec | None = None
    warnings: tuple[Diagnostic, ...] = ()
    weights: WeightRules | None = None
    sweep: Sweep | None = None
    members: tuple[Program, ...] = ()
    # `apply`'s last plan, under the structure it was made for (see `_checked`).
    _last_plan: list = field(default_factory=list, init=False, repr=False, compare=False)
    # The shapes of the constructor `apply` was given last, with it (an ensemble's).
    _last_shapes: list = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def source(self) -> A.Source:
        return self.spec.source

    @property
    def text(self) -> str:
        return self.spec.source.text

    @property
    def name(self) -> str:
        return self.spec.source.name

    def applies(self) -> str:
        """`2 rules and 1 `stack` line`: what the spec applies, its structural
        lines (which change a model as much as a rule does) counted beside
        its rules."""
        words = {A.StackStmt: "stack", A.UnstackStmt: "unstack", A.EnsembleStmt: "ensemble"}
        lines = collections.Counter(
            words[type(s)] for s in self.spec.statements if type(s) in words
        )
        parts = [plural(n, f"`{word}` line") for word, n in lines.items()]
        if self.spec.rules or not parts:
            parts.insert(0, plural(len(self.spec.rules), "rule"))
        return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]

    def input_structs(self) -> tuple[jax.ShapeDtypeStruct, ...] | None:
        """The declared inputs as `jax.ShapeDtypeStruct`s, or None."""
        return input_structs(self.inputs) if self.inputs else None

    # ---- running -----------------------------------------------------------

    def run(self, model: Any, key: Any, ctx: Context | None = None) -> Any:
        """The fold: every pass in turn, each given the same key and context."""
        ctx = Context(allow=self.allow) if ctx is None else ctx
        return functools.reduce(lambda m, p: p(m, key, ctx), self.passes, model)

    # ---- the device mesh ---------------------------------------------------

    def placer(self, mesh: Any = None) -> PlacePass | None:
        """The pass that places the arrays: the program's own (its `mesh`), or
        for a mesh given here (anything `compile`'s `mesh=` takes) one with the
        program's `shard` rules on that mesh, after checking that the mesh has
        every axis the spec names. None without any mesh."""
        own = self.passes[-1] if self.passes and isinstance(self.passes[-1], PlacePass) else None
        if mesh is None:
            return own
        spec = as_mesh_spec(mesh)
        problems = check_axes(list(self.mesh_axes), spec, self.source)
        if problems:
            raise SpecError(problems)
        anchor = own.stmt if own is not None else A.MeshStmt(A.Span(1, 1, 1, 1), ())
        overs = own.overs if own is not None else ()
        return PlacePass(anchor, self.env, self.source, 0, self.shards, spec, overs)

    def device_mesh(self, mesh: Any = None) -> Mesh | None:
        """The `jax.sharding.Mesh` the program places arrays on: `mesh` (a
        `jax.sharding.Mesh`, `"data=2,model=4"`, a mapping), else the spec's
        `mesh`; None when there is neither. Raises `SpecError` (E196) when it
        needs more devices than there are."""
        placer = self.placer(mesh)
        if placer is None:
            return None
        return mesh if isinstance(mesh, Mesh) else placer.mesh.make()

    def base_constructor(self) -> str | None:
        return None if self.model_call is None else render_call(self.model_call, self.env)

    def construct(self, key: Any) -> Any:
        """The `model` directive's model, built from `key` (no recipe filed)."""
        if self.model_call is None:
            raise UsageError(report("E403", file=self.name))
        return build(
            self.model_call, self.env, jax.random.fold_in(key, MODEL_TAG), self.source, self.allow
        )

    def base_recipe(self, seed: int | None) -> Recipe:
        """The recipe of the `model` directive's model."""
        assert self.model_call is not None
        return Recipe(
            call=self.model_call,
            env=self.env,
            constructor=self.base_constructor(),
            seed=seed,
            source=self.source,
            allow=self.allow,
        )

    def build_model(self, key=None, *, seed: int | None = None):
        """The `model` directive's model, built from `key` (default: the seed)."""
        seed = self.seed if seed is None else check_seed(seed)
        model = self.construct(seed_key(seed) if key is None else check_key(key))
        if self.model_call is not None:
            remember(model, self.base_recipe(seed if key is None else None))
        return model

    def apply(
        self,
        model=None,
        key=None,
        *,
        seed: int | None = None,
        mesh: Any = None,
        weights: str | os.PathLike | None = None,
        plan: Any = None,
    ):
        """Run every pass on `model` and return the new model.

        **Arguments:**

        - `model`: an Equinox model (or a stateful model's `(model, state)`);
          or its constructor, a function of a key (`lambda key: Model(...,
          key=key)`), so that an `ensemble` draws its members with it as the
          library does; `None` builds the spec's `model` directive.
        - `key`: a `jax.random.key`; by default one is made from `seed`, or the
          spec's own `seed`.
        - `mesh`: the device mesh (a `jax.sharding.Mesh`, `"data=2,model=4"`,
          or a mapping), in place of the spec's `mesh`. With a mesh, the
          model is built and transformed under `jax.jit` with every array's
          sharding as its output sharding: arrays are created in place, and
          no device holds the whole of a sharded one.
        - `weights`: a checkpoint (safetensors or `.npz`) in the place of the
          spec's `weights` line, read onto the model by its `map` lines before
          the first rule (see `load_weights`).
        - `plan`: this program's `Plan` on this model (or on its skeleton),
          when it is computed already (`program.plan(model)`, `eqxform.plan`):
          it is not planned again.

        **Returns:** the transformed model. The program is planned first, on
        the model's skeleton (`eqx.filter_eval_shape`, allocating nothing), as
        `eqxform.check` and `program.plan` plan it: a spec that does not fit
        the model (a selector that matches nothing, a model over the memory
        budget) raises `SpecError` with the plan's errors before any array is
        made. The result keeps the recipe of `model`, extended by this spec.
        """
        seed = self.seed if seed is None else check_seed(seed)
        recorded_seed = seed if key is None else None
        key = seed_key(seed) if key is None else check_key(key)
        if plan is None:
            plan = self._checked(model, mesh, weights)
        if plan.errors:
            raise SpecError(plan.errors)
        base = None
        given = model
        if model is None:
            model = self.construct(key)
            recipe = None if self.model_call is None else self.base_recipe(recorded_seed)
        elif is_constructor(model):
            # The library's own constructor: an ensemble's members are its draws.
            constructor = model
            base, recipe = functools.partial(from_constructor, constructor), None
            if self.passes and isinstance(self.passes[0], EnsemblePass):
                # The ensemble draws every member with the constructor: the
                # model itself is needed for its shapes only, which are kept
                # with the constructor (a second apply traces it once, not twice).
                kind = (key.shape, key.dtype)
                memo = self._last_shapes
                if not (memo and memo[0][0] is constructor and memo[0][1] == kind):
                    memo[:] = [(constructor, kind, eqx.filter_eval_shape(base, key))]
                model = memo[0][2]
            else:
                model = base(key)
        else:
            recipe = recipe_of(check_model(model))
        model = self.load_weights(model, weights)
        if recipe is not None:
            base = recipe.build
        ctx = Context(
            allow=self.allow,
            base=base,
            inputs=self.input_structs(),
            verify=True,
            report=lambda d: warnings.warn(EqxformWarning(d), stacklevel=4),
        )
        placer = self.placer(mesh)
        if self.sweep is not None:
            result = self._apply_sweep(given, key, seed, recorded_seed is not None, weights, plan)
            if placer is not None:
                result = placer.place(result, self.device_mesh(mesh))
        elif placer is None:
            result = self.run(model, key, ctx)
        else:
            run, args, static = self._sharded_build(model, key, ctx, placer, self.device_mesh(mesh))
            result = eqx.combine(run(*args), static)
        if recipe is not None:
            remember(result, recipe.then(self, recorded_seed))
        return result

    def _checked(self, model, mesh, weights):
        """`apply`'s plan (its errors only). A plan depends on the model's
        structure, not on its values: the last one is kept with the structure
        (and recipe, mesh) it was made for, so that applying the program again
        to a model of that structure (a loop that re-initialises a model, a
        benchmark) plans nothing again. A checkpoint read by `map` lines is
        read afresh each time."""
        if weights is not None or self.weights is not None:
            return self.plan(model, mesh=mesh, weights=weights, detail=False)
        if model is None or is_constructor(model):
            held, key = model, ("given", id(model))
        else:
            held = recipe_of(split_state(check_model(model))[0])
            key = ("structure", structure_key(model), id(held))
        key = (key, mesh if isinstance(mesh, (str, type(None))) else id(mesh))
        if self._last_plan and self._last_plan[0][0] == key:
            return self._last_plan[0][2]
        plan = self.plan(model, mesh=mesh, weights=weights, detail=False)
        # What the key's ids name is held with it, so that no id is reused.
        self._last_plan[:] = [(key, (held, mesh), plan)]
        return plan

    def _apply_sweep(self, model, key, seed: int, from_seed: bool, weights, plan) -> Any:
        """A sweep's ensemble: member k is the single model its own program
        (`members[k]`) builds from `model` (None: the `model` directive) with
        its seed (the spec's, or with `vary seed` its own; from an explicit
        `key`, `fold_in(key, k)` when the seed varies), stacked along a
        leading member axis. So each member equals the model a spec without
        the `ensemble` line makes with that member's values. The sweep's
        `plan` stands for its members' (they are not planned one by one)."""
        sweep = self.sweep
        assert sweep is not None
        if model is not None and not is_constructor(model):
            # A model that is an ensemble already is refused as `ensemble N` refuses it.
            for p in self.passes:
                if isinstance(p, EnsemblePass):
                    p.select(split_state(model)[0], None)
        last = sweep.count - 1
        if from_seed and sweep.seed(seed, last) > MAX_SEED:
            raise UsageError(
                report("E430", variant="vary_seed", seed=seed, last=last, largest=MAX_SEED - last)
            )
        built = []
        for k, member in enumerate(self.members):
            # Members whose models are alike (they differ only in what the
            # optimiser reads) are built once; an explicit key with `vary
            # seed` gives each its own draw.
            same = sweep.alike(k, seed) if from_seed or not sweep.varies_seed else k
            if same < k:
                built.append(built[same])
                continue
            if from_seed:
                one = member.apply(model, seed=sweep.seed(seed, k), weights=weights, plan=plan)
            else:
                k_key = jax.random.fold_in(key, k) if sweep.varies_seed else key
                one = member.apply(model, k_key, weights=weights, plan=plan)
            built.append(one)
            if k == 0:
                # The whole sweep is measured on its first member, before the
                # others are built.
                bad = budget_diagnostic(
                    sweep.count * nbytes(one),
                    "the model after this line",
                    sweep.stmt.span,
                    self.source,
                )
                if bad is not None:
                    raise SpecError(bad)
        structures = {jax.tree_util.tree_structure(m) for m in built}
        assert len(structures) == 1, "a varied value changed the model's structure"
        model_only, state = split_state(stack_arrays(built))
        over = None if sweep.stmt.over is None else sweep.stmt.over.axis
        ensemble = make_ensemble(model_only, sweep.count, over)
        return ensemble if state is None else (ensemble, state)

    def _sharded_build(self, model, key, ctx: Context, placer: PlacePass, mesh: Mesh):
        """The fold under `jax.jit`, every array's sharding its output sharding.

        The shapes come first (`eqx.filter_eval_shape`, where every error of
        the spec surfaces before anything is allocated), then the placement
        of each array, then one compiled run that builds the model (when none
        is given) and transforms it. The key enters as data, so that every
        process of a multi-process run feeds the same replicated input.
        Stacks are not run on random inputs here (that needs the values).
        Returns the jitted function, its arguments and the model's static part.
        """
        on_mesh = replace(
            self, passes=tuple(p for p in self.passes if not isinstance(p, PlacePass)) + (placer,)
        )

        def fold(subject, k, c):
            return on_mesh.run(self.construct(k) if subject is None else subject, k, c)

        shaped = replace(ctx, verify=False, mesh=None, shapes_only=True)
        shapes = eqx.filter_eval_shape(lambda m, k: fold(m, k, shaped), model, key)
        placed = placer.placements(shapes, dict(mesh.shape))
        shardings = sharding_tree(shapes, placed, mesh)
        is_struct = lambda x: isinstance(x, jax.ShapeDtypeStruct)  # noqa: E731
        static = eqx.partition(shapes, is_struct)[1]
        traced = replace(ctx, verify=False, report=None, mesh=mesh)
        given, given_static = eqx.partition(model, eqx.is_array)
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        impl = jax.random.key_impl(key) if typed else None
        key_data = np.asarray(jax.random.key_data(key) if typed else key)

        def build(arrays, data):
            k = jax.random.wrap_key_data(data, impl=impl) if typed else data
            subject = None if model is None else eqx.combine(arrays, given_static)
            return eqx.partition(fold(subject, k, traced), eqx.is_array)[0]

        return jax.jit(build, out_shardings=shardings), (given, key_data), static

    def lower(self, model=None, key=None, *, seed: int | None = None, mesh: Any = None):
        """The compiled run of `apply` on a mesh, lowered and not run: a
        `jax.stages.Lowered`, whose `.compile().memory_analysis()` says how
        many bytes each device needs to build the model. For measuring."""
        seed = self.seed if seed is None else check_seed(seed)
        key = seed_key(seed) if key is None else check_key(key)
        if model is not None:
            check_model(model)
        placer = self.placer(mesh) or self.placer({"data": 1})
        device_mesh = mesh if isinstance(mesh, Mesh) else placer.mesh.make()
        recipe = self.base_recipe(None) if model is None and self.model_call else recipe_of(model)
        ctx = Context(allow=self.allow, base=None if recipe is None else recipe.build)
        run, args, _ = self._sharded_build(model, key, ctx, placer, device_mesh)
        return run.lower(*args)

    # ---- checkpoints in another library's names -----------------------------

    def checkpoint(self, weights: str | os.PathLike | None = None) -> Checkpoint | None:
        """The header of the checkpoint the `map` lines read (`weights`, else
        the spec's `weights` line); None when the spec has no `map` lines.
        Raises `UsageError` (E450) when weights are given to a spec without
        `map` lines, or a spec with them has none to read."""
        rules = self.weights
        if rules is None or not rules.maps:
            if weights is not None:
                raise UsageError(report("E450", file=self.name))
            return None
        path = weights if weights is not None else rules.path
        if path is None:
            raise UsageError(report("E450", variant="checkpoint_none", file=self.name))
        return open_checkpoint(path)

    def plan_weights(self, model, weights: str | os.PathLike | None = None) -> WeightPlan | None:
        """The `map` lines held to the checkpoint's header and the model's
        shapes, reading no tensor: the mapping table (`.table()`) and every
        diagnostic (`.diagnostics`). None when the spec has no `map` lines."""
        checkpoint = self.checkpoint(weights)
        if checkpoint is None:
            return None
        assert self.weights is not None
        inner, state = split_state(model)
        return plan_weights(self.weights, inner, checkpoint, state)

    def load_weights(self, model, weights: str | os.PathLike | None = None):
        """`model` with its arrays read from a checkpoint in another library's
        names, by the spec's `map` lines (docs/weights.md); the model as it is
        when the spec has none. Every array is filled exactly once and every
        tensor read or skipped, checked from the header before any tensor is
        read (else `SpecError`, every diagnostic at its line); tensors are
        then read one at a time. For a `(model, state)` pair (as
        `eqx.nn.make_with_state` makes it), the `BatchNorm` statistics go into
        the state, and the pair is returned; for a model whose `StateIndex`es
        hold their initial values, into those (`eqx.nn.State(model)` then
        holds them)."""
        plan = self.plan_weights(model, weights)
        if plan is None:
            return model
        inner, state = split_state(model)
        loaded, state = load_weights(inner, plan, state)
        return join_state(loaded, state)

    def export_weights(
        self,
        model,
        path: str | os.PathLike,
        *,
        weights: str | os.PathLike | None = None,
        state: Any = None,
    ) -> list[str]:
        """Write `model`'s arrays in the checkpoint's names: the `map` lines
        run in reverse, into the safetensors file `path` (written whole or
        not at all). The original checkpoint (`weights`, else the spec's
        `weights` line, when the file exists) gives back each tensor's shape
        and dtype and the tensors the spec skips, so that the file loads where
        the original did; `state` (or a `(model, state)` pair) supplies
        `BatchNorm` statistics updated by training. Returns the names written.
        """
        rules = self.weights
        if rules is None or not rules.maps:
            raise UsageError(report("E450", variant="write_back", file=self.name))
        inner, pair_state = split_state(model)
        inner = _one_model(inner)
        reference = None
        if weights is not None or (rules.path is not None and os.path.exists(rules.path)):
            reference = self.checkpoint(weights)
        return export_weights(
            inner,
            rules,
            path,
            reference=reference,
            state=state if state is not None else pair_state,
        )

    def export_peft(self, model, folder: str | os.PathLike) -> list[str]:
        """Write `model`'s LoRA adapters in PEFT's layout into `folder`:
        `adapter_model.safetensors` (PEFT's names, from the checkpoint names
        the `map` lines give the adapted weights) and `adapter_config.json`
        (`r`, `lora_alpha`, `target_modules`). Returns the tensor names."""
        return export_peft(_one_model(split_state(model)[0]), self._rules("write adapters"), folder)

    def load_peft(self, model, folder: str | os.PathLike):
        """`model`, its spec's `lora` rules applied, with the LoRA factors of
        the PEFT adapter in `folder` (PEFT's names, through the `map` lines)."""
        inner, state = split_state(model)
        return join_state(load_peft(inner, self._rules("read adapters"), folder), state)

    def _rules(self, what: str) -> WeightRules:
        if self.weights is None or not self.weights.maps:
            raise UsageError(report("E450", variant="spec_has", file=self.name, what=what))
        return self.weights

    def check(self, model=None, *, weights: str | os.PathLike | None = None) -> list[Diagnostic]:
        """Every diagnostic of running this program on `model` (with the `map`
        lines, against the checkpoint's header), allocating no arrays."""
        return list(self.plan(model, weights=weights).diagnostics)

    def plan(
        self,
        model=None,
        *,
        mesh: Any = None,
        weights: str | os.PathLike | None = None,
        planner: Planner | None = None,
        detail: bool = True,
    ):
        """What each rule will change, computed with `eqx.filter_eval_shape`.

        **Arguments:** `model` (a model, its constructor, or None: the spec's
        `model` directive), `mesh`, `weights` as for `apply`; `planner`, a
        `Planner` that planned an earlier version of this spec on the same
        model: only the lines from the first changed one down are planned
        again (what an editor does on each edit); `detail=False`: the errors
        only (`apply`'s check), no step listing what a rule acts on.

        **Returns:** a `Plan`: per rule, the matched paths with their shape and
        dtype before and after, and the change in parameter count; with a
        mesh (the spec's, or `mesh`), each array's partition spec and bytes
        per device.
        """
        if model is None:
            base = None if self.model_call is None else self.base_recipe(None).build
        elif is_constructor(model):
            base = functools.partial(from_constructor, model)
        else:
            recipe = recipe_of(split_state(check_model(model))[0])
            base = None if recipe is None else recipe.build
        planner = Planner() if planner is None else planner
        return planner.plan(self, model, mesh, weights, base, detail=detail)


def check_key(key: Any) -> Any:
    """A key given to the API: a `jax.random.key` (or a legacy `PRNGKey`)."""
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    try:
        typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        typed = False
    legacy = dtype is not None and str(dtype) == "uint32" and tuple(shape) == (2,)
    if (typed and shape == ()) or legacy:
        return key
    what = f"a `{type(key).__name__}`"
    if shape is not None:
        what = f"an array of shape {tuple(shape)} and dtype {getattr(key, 'dtype', '?')}"
    raise UsageError(report("E433", what_key=what))


def check_model(model: Any) -> Any:
    """A model given to the API: no deeper than JAX can flatten (E159)."""
    bad = too_deep(model, f"the `{type(model).__name__}` given as the model")
    if bad is not None:
        raise UsageError(bad)
    return model


# ---- recipes -------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeStep:
    program: Program
    seed: int | None
    # The name a model file recorded for the spec (a step read from a file is
    # compiled under a longer name that says where it came from).
    name: str | None = None

    def to_dict(self) -> dict:
        out = {
            "name": self.name if self.name is not None else os.path.basename(self.program.name),
            "text": self.program.text,
            "seed": self.seed,
            "params": dict(self.program.params),
        }
        if self.program.mesh_given is not None:
            # A mesh given from outside (`--mesh`): the spec's axes need it.
            out["mesh"] = self.program.mesh_given.text()
        return out


@dataclass(frozen=True)
class Recipe(Mapping):
    """How a model was made: a constructor call, then programs.

    **Attributes:** `constructor` (the call as text, arguments evaluated),
    `seed` (of the constructor's key; `None` when a key was given), `steps`
    (the programs applied, each with its seed), `train` (what `eqxform train`
    did, if anything), `picked` (for a member taken out of an ensemble by
    `eqxform pick`: the file, the member and what was recorded of it).
    `to_dict()` is what a model file stores, and a recipe reads as that
    mapping too (`recipe["base"]["constructor"]`).
    """

    call: A.Call
    env: Mapping[str, Any]
    constructor: str
    seed: int | None
    source: A.Source
    allow: tuple[str, ...] = ()
    steps: tuple[RecipeStep, ...] = ()
    train: Mapping[str, Any] | None = None
    picked: Mapping[str, Any] | None = None

    def build(self, key: Any) -> Any:
        """The model this recipe describes, drawn from `key`."""
        model = build(
            self.call, self.env, jax.random.fold_in(key, MODEL_TAG), self.source, self.allow
        )
        for i, step in enumerate(self.steps):
            before = replace(self, steps=self.steps[:i])
            model = step.program.run(model, key, Context(allow=self.allow, base=before.build))
        return model

    def then(self, program: Program, seed: int | None) -> Recipe:
        return replace(self, steps=self.steps + (RecipeStep(program, seed),), train=None)

    def with_training(self, info: Mapping[str, Any]) -> Recipe:
        return replace(self, train=dict(info))

    def to_dict(self) -> dict:
        out: dict = {
            "base": {"constructor": self.constructor, "seed": self.seed},
            "specs": [s.to_dict() for s in self.steps],
        }
        if self.train is not None:
            out["train"] = dict(self.train)
        if self.picked is not None:
            out["picked"] = dict(self.picked)
        return out

    def __getitem__(self, name: str) -> Any:
        return self.to_dict()[name]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def structure_key(model: Any) -> Any:
    """What a model's recipe is filed under: its tree structure, the shape
    and dtype of each array, and its other leaves (functions, numbers)."""
    leaves, treedef = jax.tree_util.tree_flatten(model)
    parts = []
    for x in leaves:
        if is_array(x):
            parts.append((tuple(x.shape), str(x.dtype)))
        else:
            try:
                hash(x)
                parts.append(x)
            except TypeError:
                parts.append(type(x))
    try:
        hash(treedef)
        return treedef, tuple(parts)
    except TypeError:  # a static field that cannot be hashed
        return str(treedef), tuple(parts)


def _array_ids(model: Any) -> frozenset[int]:
    return frozenset(id(x) for x in jax.tree_util.tree_leaves(model) if is_array(x))


@dataclass(frozen=True, eq=False)
class _Filed:
    ref: Any  # a weak reference to the model, or None
    arrays: frozenset[int]  # ids of its arrays, meaningful while it lives
    recipe: Recipe

    def alive(self) -> Any:
        return None if self.ref is None else self.ref()


# structure -> filed recipes, newest last; and id of a filed live model -> its entry.
_RECIPES: collections.OrderedDict[Any, list[_Filed]] = collections.OrderedDict()
_BY_ID: dict[int, _Filed] = {}
_MAX_STRUCTURES = 256
_MAX_PER_STRUCTURE = 32


def remember(model: Any, recipe: Recipe | None) -> None:
    """File `recipe` as the recipe of `model` (and of the models derived from
    it that keep its structure)."""
    if recipe is None:
        return
    try:
        key = structure_key(model)
    except Exception:  # a model JAX cannot flatten carries no recipe
        return
    try:
        ref = weakref.ref(model)
    except TypeError:  # a tuple or a list takes no weak reference
        ref = _weak_parts(model)
    filed = _Filed(ref, _array_ids(model) if ref is not None else frozenset(), recipe)
    entries = _RECIPES.setdefault(key, [])
    entries.append(filed)
    if isinstance(ref, weakref.ref):
        _BY_ID[id(model)] = filed
        weakref.finalize(model, _BY_ID.pop, id(model), None)
    del entries[:-_MAX_PER_STRUCTURE]
    _RECIPES.move_to_end(key)
    while len(_RECIPES) > _MAX_STRUCTURES:
        _RECIPES.popitem(last=False)


def _weak_parts(pair: Any) -> Callable[[], Any] | None:
    """For a `(model, state)` pair (a tuple takes no weak reference): a
    callable that gives its parts while they all live, else None; so that a
    pair is told from another of its structure by the arrays it shares, as a
    model is. None where a part takes no weak reference either."""
    if not isinstance(pair, (tuple, list)) or not pair:
        return None
    try:
        refs = [weakref.ref(part) for part in pair]
    except TypeError:
        return None

    def parts() -> Any:
        alive = [r() for r in refs]
        return None if any(p is None for p in alive) else tuple(alive)

    return parts


def recipe_of(model: Any) -> Recipe | None:
    """The recipe of a model that eqxform built, loaded or transformed, or of
    one derived from such a model without changing its structure; else None."""
    return _lookup(model)[0]


def recipe_to_write(model: Any) -> Recipe | None:
    """The recipe to write into `model`'s file: `recipe_of(model)`, and a
    usage error (E590) where recipes of its structure disagree and none is
    its own, rather than a file without one."""
    recipe, ambiguous = _lookup(model)
    if ambiguous:
        raise UsageError(report("E590", name=type(model).__name__, ambiguous=ambiguous))
    return recipe


def _lookup(model: Any) -> tuple[Recipe | None, int]:
    """(the recipe of `model` or None, and where none is returned because
    several disagree, how many)."""
    filed = _BY_ID.get(id(model))
    if filed is not None and filed.alive() is model:
        return filed.recipe, 0
    if not _RECIPES:
        return None, 0
    try:
        key = structure_key(model)
    except Exception:
        return None, 0
    entries = _RECIPES.get(key)
    if not entries:
        return None, 0
    for entry in reversed(entries):
        if entry.alive() is model:
            return entry.recipe, 0
    arrays = _array_ids(model)
    best, shared = None, 0
    for entry in reversed(entries):
        # Ids mean something only while the model they were taken from lives.
        if entry.alive() is not None and len(arrays & entry.arrays) > shared:
            best, shared = entry.recipe, len(arrays & entry.arrays)
    if best is not None:
        return best, 0
    identities = {_identity(e.recipe) for e in entries}
    if len(identities) == 1:
        return entries[-1].recipe, 0
    return None, len(identities)


def _identity(recipe: Recipe) -> tuple:
    return (
        recipe.constructor,
        recipe.seed,
        tuple(
            (s.program.text, s.seed, repr(sorted(s.program.params.items()))) for s in recipe.steps
        ),
    )


def _one_model(model: Any) -> Any:
    """`model` as a checkpoint holds it: every stack eqxform made given back as
    the layers it stacked (what `unstack` does at it), so that each layer's
    arrays go under their own names; an ensemble (N models) is refused."""
    if isinstance(model, Ensemble):
        raise UsageError(report("E383", count=model.count))
    while stacks := [n for n in walk(model) if isinstance(n.obj, Stacked)]:
        # The outermost first: a stack inside a stacked layer comes out with it.
        model = UnstackPass.restructure(None, model, None, None, stacks[:1])
    return model
