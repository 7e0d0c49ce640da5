"""The public functions behind the command line's commands.

Each command of `eqxform` (the command line) is option parsing, a call of one
function here (or of another public name), and printing: `check`, `plan`,
`apply`, `train`, `export`, `explain`, `format_files`, `inspect`,
`language_server`. A Python user calls the same functions and gets the same
checks, diagnostics and models (with their recipes).

Whether a check is the linter (parse and check the text, no JAX) or the
model-aware check (the plan's checks on the model's skeleton, allocating
nothing) is decided in `check`, once, by what is given: a model, or a spec
with a `model` directive, makes it model-aware. The module imports no JAX:
what needs it loads when it runs.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import _ast as A
from ._check import USAGE_CODES, Checker
from ._diagnostics import Diagnostic, denied, position
from ._errors import EqxformWarning, ModelFileError, SpecError, UsageError
from ._mesh import as_mesh_spec
from ._parse import parse_collect
from ._source import read_spec


@dataclass(frozen=True)
class CheckReport:
    """What `eqxform.check` found.

    **Attributes:**

    - `name`: the spec's name (its file, or `<spec>` for text).
    - `diagnostics`: every problem, in the order of the text.
    - `statements`: how many statements the spec has.
    - `model`: what it was checked against (the model file, or the `model`
      directive's call); None for the linter, and for a spec with errors of
      its own (whose other rules are checked against the model all the same).
    - `steps`: the plan's steps (`PlanStep`: each rule's action and match
      count), when the check was model-aware and the spec compiled.
    """

    name: str
    diagnostics: tuple[Diagnostic, ...]
    statements: int
    model: str | None = None
    steps: tuple | None = None

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)


def check(
    spec: str | os.PathLike,
    model: Any = None,
    *,
    params: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
    inputs: Iterable[str] | None = None,
    mesh: Any = None,
    weights: str | os.PathLike | None = None,
    deny: Iterable[str] = (),
) -> CheckReport:
    """Every problem of a spec and, when there is a model, of applying it.

    **Arguments:**

    - `spec`: the spec's text (a `str`) or a spec file (a path object), as
      `eqxform.compile` takes it.
    - `model`: a model file (a `str` or path object), or a model; None: the
      spec's `model` directive, if it has one.
    - `params`, `allow`, `inputs`, `mesh`: as `eqxform.compile` takes them;
      `weights`: as `Program.plan` takes it.
    - `deny`: warnings to make errors: `"warnings"` (all of them) or codes
      (`"W202"`), as `--deny` does for CI.

    **Returns:** a `CheckReport`. With a model (given, or the spec's `model`
    directive) every rule is checked against the model's skeleton under
    `eqx.filter_eval_shape`, as `apply` checks it, allocating nothing; a spec
    with errors of its own still has its other rules checked against the
    model. Without one it is the linter: no JAX is imported. Raises
    `UsageError` for a problem of the arguments (`params` naming no `let`,
    say).

    ```python
    report = eqxform.check(pathlib.Path("specs/lora.eqx"))
    assert report.ok, report.diagnostics
    ```
    """
    text, name = read_spec(spec)
    params = dict(params or {})
    mesh = as_mesh_spec(mesh)
    parsed, diagnostics = parse_collect(text, name)
    statements = len(parsed.statements)
    if model is None and not any(isinstance(s, A.ModelStmt) for s in parsed.statements):
        # The linter: parse and check, no JAX.
        diagnostics = sorted(diagnostics + Checker(parsed, params, mesh).run(), key=position)
        usage = [d for d in diagnostics if d.code in USAGE_CODES]
        if usage:
            raise UsageError(usage)
        return CheckReport(name, tuple(denied(diagnostics, deny)), statements)
    # Model-aware: the plan's checks, on the model's skeleton.
    from ._compile import compile_collect, compile_without_broken_rules

    allow = tuple(allow)
    given = list(inputs) if inputs is not None else None
    program, diagnostics = compile_collect(text, name, params, allow, given, mesh)
    if program is not None:
        struct, against = _skeleton(model, allow)
        plan = program.plan(struct, weights=weights)
        if against is None:
            against = f"`{program.base_constructor()}`"
        found = tuple(denied(plan.diagnostics, deny))
        return CheckReport(name, found, statements, against, plan.steps)
    # All at once: the rules without model-free errors are still checked
    # against the model (their errors only: what the others would have done
    # is unknown).
    rest = compile_without_broken_rules(text, name, diagnostics, params, allow, given)
    if rest is not None:
        more = rest.plan(_skeleton(model, allow)[0]).errors
        diagnostics = sorted(diagnostics + list(more), key=position)
    return CheckReport(name, tuple(denied(diagnostics, deny)), statements)


def _skeleton(model: Any, allow: tuple[str, ...]) -> tuple[Any, str | None]:
    """The model to plan on (a model file's skeleton, read from its header),
    and what to call it."""
    if isinstance(model, (str, os.PathLike)):
        from ._recipes import skeleton

        return skeleton(model, allow)[2], str(model)
    if model is None:
        return None, None
    return model, f"a `{type(model).__name__}`"


def _program(spec: Any, params, allow, inputs, mesh):
    """`spec` compiled (a `Program` as it is: it was compiled with its own
    `params`, `allow`, `inputs` and `mesh`)."""
    from ._compile import compile as compile_spec
    from ._program import Program

    if isinstance(spec, Program):
        return spec
    given = list(inputs) if inputs is not None else None
    return compile_spec(spec, params, allow=allow, inputs=given, mesh=mesh)


def plan(
    spec: Any,
    model: Any = None,
    *,
    params: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
    inputs: Iterable[str] | None = None,
    mesh: Any = None,
    weights: str | os.PathLike | None = None,
    deny: Iterable[str] = (),
):
    """What each rule of a spec will change on a model, allocating nothing.

    **Arguments:**

    - `spec`: the spec's text (a `str`), a spec file (a path object), or a
      compiled `Program`.
    - `model`: a model file (a `str` or path object: its skeleton is read
      from its header, no tensor is read), a model, or None: the spec's
      `model` directive.
    - `params`, `allow`, `inputs`, `mesh`: as `eqxform.compile` takes them
      (a `Program` has its own); `weights`: as `Program.plan` takes it.
    - `deny`: warnings to make errors, as for `check`.

    **Returns:** the `Plan` (`Program.plan`'s), with the bytes of the spec's
    optimiser state (`opt_state_bytes`) when it has an `optimizer` and the
    plan no error. A spec that does not compile raises `SpecError`; what does
    not fit the model is in `plan.diagnostics` (`plan.errors`).

    ```python
    plan = eqxform.plan(pathlib.Path("specs/lora.eqx"), "model.eqx")
    print(plan)
    ```
    """
    program = _program(spec, params, allow, inputs, mesh)
    result = program.plan(_skeleton(model, program.allow)[0], weights=weights)
    if program.optimizer is not None and not result.errors and result.result is not None:
        from ._modules import split_state
        from ._runtime._optim import state_bytes

        model_only = split_state(result.result)[0]
        result = replace(result, opt_state_bytes=state_bytes(program, model_only))
    return replace(result, diagnostics=tuple(denied(result.diagnostics, deny)))


def _device(name: str | None):
    """Work on the first device of the XLA platform `name` (cpu, gpu, ...)."""
    if name is None:
        return contextlib.nullcontext()
    import jax

    try:
        devices = jax.devices(name)
    except RuntimeError:
        raise UsageError.of(
            "E408", name=name, listing=", ".join(sorted({d.platform for d in jax.devices()}))
        ) from None
    return jax.default_device(devices[0])


def _checked_base(program, model: Any, deny: Iterable[str], weights, planned=None):
    """(the model to apply `program` to, its plan). The whole spec is planned
    first against the model's structure (a model file's from its header, no
    tensor read): an error raises `SpecError` with every diagnostic, before
    anything is allocated or loaded; the warnings are issued
    (`EqxformWarning`). A model file is then filled from its tensors, each
    straight into its shards on a mesh."""
    if isinstance(model, (str, os.PathLike)):
        from ._recipes import skeleton

        header, recipe, struct = skeleton(model, program.allow)
    else:
        struct = model
    if planned is None:
        planned = program.plan(struct, weights=weights)
    found = denied(planned.diagnostics, deny)
    if any(d.severity == "error" for d in found):
        raise SpecError(found)
    for d in found:
        warnings.warn(EqxformWarning(d), stacklevel=4)
    if not isinstance(model, (str, os.PathLike)):
        return model, planned
    from ._program import remember
    from ._recipes import file_shardings, fill

    shardings = None
    device_mesh = program.device_mesh()
    if device_mesh is not None:
        # Each tensor straight into its shards: as the file's own `shard`
        # rules and the spec's say (those that fit the file's structure).
        try:
            shardings = file_shardings(struct, recipe, device_mesh, program)
        except SpecError:
            shardings = file_shardings(struct, recipe, device_mesh)
    loaded = fill(header, struct, shardings)
    remember(loaded, recipe)
    return loaded, planned


def apply(
    spec: Any,
    model: Any = None,
    *,
    key: Any = None,
    seed: int | None = None,
    params: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
    inputs: Iterable[str] | None = None,
    mesh: Any = None,
    weights: str | os.PathLike | None = None,
    device: str | None = None,
    deny: Iterable[str] = (),
    plan: Any = None,
):
    """Apply a spec to a model or a model file: what `eqxform apply` does
    before it writes the result.

    **Arguments:**

    - `spec`: the spec's text (a `str`), a spec file (a path object), or a
      compiled `Program`.
    - `model`: a model file (a `str` or path object), a model (or its
      constructor, a function of a key), or None: the spec's `model`.
    - `key`, `seed`, `weights`: as `Program.apply` takes them.
    - `params`, `allow`, `inputs`, `mesh`: as `eqxform.compile` takes them
      (a `Program` has its own).
    - `device`: the XLA platform to work on (`"cpu"`, `"gpu"`), else JAX's
      default device.
    - `deny`: warnings to make errors, as for `check`.
    - `plan`: the spec's `Plan` on this model, when it is computed already
      (`eqxform.plan`): it is not planned again.

    **Returns:** the new model, with its recipe (`eqxform.save` writes it).
    The spec is planned first on the model's skeleton: an error raises
    `SpecError` with every diagnostic (warnings too) before any array is made
    or any tensor read; the plan's warnings are issued as `EqxformWarning`s.
    A model file is read tensor by tensor, on a mesh each into its shards.

    ```python
    model = eqxform.apply(pathlib.Path("specs/finetune.eqx"), "model.eqx", seed=1)
    eqxform.save("out.eqx", model)
    ```
    """
    program = _program(spec, params, allow, inputs, mesh)
    with _device(device):
        base, planned = _checked_base(program, model, deny, weights, plan)
        # The plan has given the warnings already: the run need not repeat them.
        with warnings.catch_warnings(action="ignore", category=EqxformWarning):
            return program.apply(base, key, seed=seed, weights=weights, plan=planned)


@dataclass(frozen=True)
class TrainResult:
    """What `eqxform.train` did.

    **Attributes:**

    - `model`: the trained model (the last one whose loss and parameters were
      finite), with its recipe: the spec, and what training did (`train`).
    - `steps`: the steps taken; `loss`: the last loss reported (None when no
      step was taken).
    - `interrupted`: Ctrl-C stopped it (after the step in flight).
    - `nonfinite`: the first step whose loss or update was not finite (and
      `nonfinite_what`, which; for an ensemble, once every member diverged),
      else None.
    - `ensemble`: the model is an ensemble (a sweep: `ensemble 8 vary ...`);
      `diverged`: each member that diverged, with its step (it is kept as it
      was before that step; the others trained on).
    - `members`: for an ensemble, or with `eval_data`, each member's record
      as the recipe keeps it: `{"member": k, "values": {name: value}, "loss":
      float, "eval_loss": float or None}` (a plain model is member 0); else
      None.
    """

    model: Any
    steps: int
    loss: float | None
    interrupted: bool
    nonfinite: int | None = None
    nonfinite_what: str = ""
    ensemble: bool = False
    members: tuple[dict, ...] | None = None
    diverged: dict[int, int] = field(default_factory=dict)


def train(
    spec: Any,
    model: Any = None,
    *,
    data: str | os.PathLike | None = None,
    eval_data: str | os.PathLike | None = None,
    steps: int = 200,
    batch_size: int = 32,
    loss: str = "mse",
    model_output: str | None = None,
    seed: int | None = None,
    params: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
    inputs: Iterable[str] | None = None,
    mesh: Any = None,
    weights: str | os.PathLike | None = None,
    batch_axis: str | None = None,
    device: str | None = None,
    deny: Iterable[str] = (),
    adapters_only: bool = False,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[Any, int], None] | None = None,
    on_step: Callable[[int, float, Any, dict], None] | None = None,
    report: Callable[[int, int], bool] | None = None,
) -> TrainResult:
    """Train a model with a spec's optimiser, rules and freezing: what `eqxform
    train` does before it writes the model.

    **Arguments:**

    - `spec`, `model`, `seed`, `params`, `allow`, `inputs`, `mesh`, `weights`,
      `device`, `deny`: as for `eqxform.apply`, which builds the model trained.
    - `data`: an `.npz` file with arrays `x` and `y` (None: a built-in toy
      task fitted to the model; for a model called with several arguments,
      `x0`, `x1`, ... in their order in place of `x`); `eval_data`: one with held-out `x` and `y`,
      whose loss per member is measured after training.
    - `steps`, `batch_size`: the steps, and the examples in each.
    - `loss`: `"mse"`, `"cross_entropy"` (`eqxform.LOSSES`), or
      `"PKG.MOD:FN"`, a function `(pred, y) -> scalar` of an allowed package.
    - `model_output`: the part of what the model returns that the loss
      compares with `y` (`"logits"`, `"0"`).
    - `batch_axis`: the mesh axis the batch is split over.
    - `adapters_only`: the model will be written as an adapter file: one with
      no adapters is refused before training (E460).
    - `checkpoint_every`, `on_checkpoint`: `on_checkpoint(model, steps)` every
      `checkpoint_every` steps, the model with its recipe.
    - `on_step`: `on_step(steps, loss, member_losses, diverged)` at the steps
      `report(steps, total)` picks (default: step 1, every tenth, the last);
      for an ensemble `member_losses` is each member's loss (an array; NaN for
      a member that diverged) and `diverged` maps each member that diverged to
      its step (`loss` is the mean of the others); for a plain model, None and
      `{}`.

    **Returns:** a `TrainResult`, whose `model` carries its recipe with what
    training did (`eqxform.recipe_of(model)["train"]`), as `eqxform train`
    writes it. Bad data, a loss that does not fit the model's output, a
    missing `optimizer` raise before the model is built; a spec that does not
    fit the model raises `SpecError` before anything is allocated.

    ```python
    result = eqxform.train(pathlib.Path("specs/freeze_backbone.eqx"), steps=50)
    eqxform.save("trained.eqx", result.model)
    ```
    """
    from ._modules import Ensemble, split_state
    from ._program import recipe_of, remember
    from ._recipes import require_adapters
    from ._runtime import _train
    from ._runtime._optim import base_optimizer
    from ._values import check_seed

    program = _program(spec, params, allow, inputs, mesh)
    seed_used = program.seed if seed is None else check_seed(seed)
    with _device(device):
        base_optimizer(program)  # a missing `optimizer` fails before any work
        loss_fn = _train.resolve_loss(loss, program.allow)
        _train.output_steps(model_output)  # a malformed output path fails before any work
        if data is not None:
            # The data set is read (and its headers checked) before the model is built.
            x, y = _train.load_data(os.fspath(data))
        held_out = None if eval_data is None else _train.load_data(os.fspath(eval_data))
        start = apply(program, model, seed=seed, weights=weights, deny=deny)
        recipe = recipe_of(start)
        if data is None:
            x, y = _train.toy_data(
                start, loss_fn, program.input_structs(), seed=seed_used, output=model_output
            )
        where = "built-in data" if data is None else os.fspath(data)
        x = _train.in_model_dtype(start, x)
        _train.check_fits(start, x, y, loss_fn, where, model_output)
        if held_out is not None:
            held_out = (_train.in_model_dtype(start, held_out[0]), held_out[1])
            _train.check_fits(start, *held_out, loss_fn, os.fspath(eval_data), model_output)
        ensemble = isinstance(split_state(start)[0], Ensemble)
        trained: dict[str, Any] = {
            "steps": 0,
            "data": "built-in" if data is None else os.fspath(data),
            "loss": loss,
            "batch_size": batch_size,
        }
        if model_output is not None:
            trained["output"] = model_output
        if eval_data is not None:
            trained["eval_data"] = os.fspath(eval_data)
        if adapters_only:
            # Refused before training when the model would have none.
            require_adapters(start)

        def stamped(m, done: int, result=None):
            info = {**trained, "steps": done}
            if result is not None and result.nonfinite is not None:
                info["stopped"] = f"step {result.nonfinite} was not finite"
            if recipe is not None:
                remember(m, recipe.with_training(info))
            return m

        hooks: dict[str, Any] = {}
        if on_step is not None and ensemble:
            mean: dict[int, float] = {}
            hooks["on_step"] = mean.__setitem__
            hooks["on_members"] = lambda done, losses, diverged: on_step(
                done, mean.pop(done), losses, diverged
            )
        elif on_step is not None:
            hooks["on_step"] = lambda done, value: on_step(done, value, None, {})
        result = _train.train(
            program,
            start,
            x,
            y,
            steps=steps,
            batch_size=batch_size,
            loss=loss_fn,
            seed=seed_used,
            checkpoint_every=checkpoint_every,
            report=report or _train.every_tenth,
            on_checkpoint=None
            if on_checkpoint is None
            else lambda m, done: on_checkpoint(stamped(m, done), done),
            mesh=program.device_mesh(),
            batch_axis=batch_axis,
            output=model_output,
            **hooks,
        )
        done = TrainResult(**vars(result), ensemble=ensemble)
        if result.nonfinite is not None and result.steps == 0:
            return done  # nothing trained: no model to record
        members = None
        if ensemble or held_out is not None:
            members = _member_rows(
                program, seed_used, result, (x, y), held_out, loss_fn, model_output
            )
            # A diverged member's loss is not finite: JSON holds no `inf` or
            # `nan`, so the recipe records null.
            finite = lambda v: v if v is not None and math.isfinite(v) else None  # noqa: E731
            kept = [{**r, **{k: finite(r[k]) for k in ("loss", "eval_loss")}} for r in members]
            if ensemble:
                trained["members"] = kept
            else:
                trained["eval_loss"] = kept[0]["eval_loss"]
        stamped(result.model, result.steps, result)
    return replace(done, members=None if members is None else tuple(members))


def _member_rows(program, seed: int, result, data, held_out, loss_fn, output) -> list[dict]:
    """The recipe's record of each member: `{"member": k, "values": {name:
    number}, "loss": float, "eval_loss": float or None}`, its losses on the
    training data and on the held-out data (None without it); a member that
    diverged has no losses (None) and `"diverged_at": step`."""
    from ._runtime import _train

    model = result.model
    trained = _train.member_losses(model, *data, loss_fn, output=output)
    held = (
        None if held_out is None else _train.member_losses(model, *held_out, loss_fn, output=output)
    )
    sweep = program.sweep
    rows = []
    for k in range(len(trained)):
        row = {
            "member": k,
            "values": {} if sweep is None else sweep.values(k, seed),
            "loss": float(trained[k]),
            "eval_loss": None if held is None else float(held[k]),
        }
        if k in result.diverged:
            row.update(loss=None, eval_loss=None, diverged_at=result.diverged[k])
        rows.append(row)
    return rows


def export(
    spec: Any,
    model: Any,
    output: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    peft: bool = False,
    params: Mapping[str, Any] | None = None,
    allow: Iterable[str] = (),
) -> list[str]:
    """Write a model's weights in another library's names: the spec's `map`
    lines run in reverse (`Program.export_weights`), or with `peft` its LoRA
    adapters in PEFT's layout, a folder (`Program.export_peft`).

    **Arguments:** `spec` (text, a spec file or a `Program`), `model` (a model
    file or a model), `output` (the checkpoint or folder to write),
    `weights` (the original checkpoint, which gives back shapes, dtypes and
    skipped tensors), `params`, `allow`.

    **Returns:** the names of the tensors written.
    """
    program = _program(spec, params, allow, None, None)
    if isinstance(model, (str, os.PathLike)):
        from ._recipes import load

        model = load(model, allow=program.allow)
    if peft:
        return program.export_peft(model, output)
    return program.export_weights(model, output, weights=weights)


def explain(code: str | None = None, *, all: bool = False, format: str = "text") -> str:
    """What a diagnostic code means, an example, and the fix: the text
    `eqxform explain CODE` prints, which is the text the diagnostic shows.

    **Arguments:** `code` (`"E201"`), or `all=True`: every code, one after
    another; `format`: `"text"`, or `"markdown"` (with `all`: the
    diagnostics index of the documentation, docs/diagnostics.md).

    **Returns:** the text. An unknown code raises `UsageError` (E415) with the
    codes it may have meant, as does giving both a code and `all`, or neither.

    ```python
    print(eqxform.explain("E201"))
    ```
    """
    from . import _codes

    if all:
        if code is not None:
            raise UsageError.of("E415")
        return _codes.markdown() if format == "markdown" else _codes.text()
    if code is None:
        raise UsageError.of("E415", variant="given", len_codes=len(_codes.CODES))
    entry = _codes.explain(code)
    if entry is None:
        close = _codes.near(code)
        raise UsageError.of(
            "E415",
            variant="diagnostic_has",
            help="did you mean " + " or ".join(f"`{c}`" for c in close[:4]) + "?"
            if close
            else "codes look like `E201`; every error message shows its code",
            code_=code,
        )
    if format != "markdown":
        return entry.render()
    out = f"### {entry.code}\n\n**{entry.title}**\n\n{entry.explanation}"
    if entry.example:
        out += f"\n\nExample:\n\n```\n{entry.example}\n```"
    return out + f"\n\nFix: {entry.fix}"


def _spec_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The spec files that `paths` name: a file as it is, a folder as every
    `*.eqx` file under it (sorted, subfolders included); a folder with none
    is a `UsageError` (E401)."""
    out: list[str] = []
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = sorted(str(p) for p in Path(path).rglob("*.eqx") if p.is_file())
        if not found:
            raise UsageError.of("E401", variant="folder_holds", file=path, path=path)
        out.extend(found)
    return out


def format_files(
    paths: Iterable[str | os.PathLike], *, check: bool = False
) -> tuple[list[str], list[str]]:
    """Write spec files in the canonical layout, in place, comments kept
    (`eqxform.format_spec` of each).

    **Arguments:** `paths`, spec files or folders (every `*.eqx` file under
    one); `check`: change nothing.

    **Returns:** (the spec files, those that changed; with `check`: that
    would change).
    Every file is checked writable before the first is rewritten, and each is
    written whole or not at all.
    """
    from ._files import atomic_write, check_output
    from ._format import format_spec

    specs = _spec_files(paths)
    if not check:
        # Every spec is written in place: each must be a regular file in a
        # writable folder, known before the first is rewritten.
        for path in specs:
            check_output(path)
    changed = []
    for path in specs:
        text, name = read_spec(Path(path))
        formatted = format_spec(text, name)
        if formatted != text:
            changed.append(path)
            if not check:
                atomic_write(path, formatted.encode("utf-8"))
    return specs, changed


@dataclass(frozen=True)
class ModelFileInfo:
    """What `eqxform.inspect` read of a model file.

    **Attributes:** `file`; `parameters` (the count of every tensor's
    numbers); `tensors` (`{"path", "dtype", "shape"}` each, in the file's
    order); `recipe` (the recipe as the file holds it, a dict, or None);
    `adapters` (an adapter file's record: its base's fingerprint and its
    specs, else None); `unchecked` (why the tensors could not be checked
    against the recipe, else None). `to_dict()` is what `eqxform show
    --format json` prints.
    """

    file: str
    parameters: int
    tensors: tuple[dict, ...]
    recipe: dict | None
    adapters: dict | None = None
    unchecked: str | None = None

    def to_dict(self) -> dict:
        data = {
            "file": self.file,
            "parameters": self.parameters,
            "tensors": [dict(t) for t in self.tensors],
            "recipe": self.recipe,
            "checked": self.unchecked is None,
        }
        if self.adapters is not None:
            data["adapters"] = self.adapters
        return data


def inspect(path: str | os.PathLike, *, allow: Iterable[str] = ()) -> ModelFileInfo:
    """A model file's tensors and recipe, read from its header (no tensor is
    read), after checking it whole: its header, its recipe, and its tensors
    against the structure the recipe builds (a recipe whose constructor comes
    from your own package is built only when `allow` names it).

    **Returns:** a `ModelFileInfo`. A malformed file raises `ModelFileError`.
    """
    from ._files import adapter_record, read_header

    header = read_header(path)
    adapters = adapter_record(header)
    # Why the tensors could not be checked against the structure the recipe
    # builds (a mismatch is an error); None when they were, or for a file
    # without a recipe (nothing to check against).
    unchecked = None
    if header.recipe is not None:
        from ._recipes import skeleton

        try:
            skeleton(path, allow)
        except ModelFileError as e:
            d = e.diagnostics[0]
            if d.code != "E306":
                raise
            unchecked = f"the tensors were not checked against the recipe: {d.message}; {d.help}"
    tensors = tuple(
        {"path": t.name, "dtype": t.dtype, "shape": list(t.shape)}
        for t in sorted(header.tensors.values(), key=lambda t: t.start)
    )
    return ModelFileInfo(
        os.fspath(path),
        sum(math.prod(t["shape"]) for t in tensors),
        tensors,
        header.recipe,
        adapters,
        unchecked,
    )


def language_server() -> None:
    """Run the language server over stdio (what `eqxform lsp` runs, for
    editors: VS Code, Neovim, Helix); returns when the editor closes it."""
    from ._lsp import main

    main()
