"""The command line: a thin shell over the Python API.

Each command parses its options, calls the public function that does its work
(`eqxform.check`, `eqxform.plan`, `eqxform.apply`, `eqxform.train`, ...), and
prints; it imports nothing of eqxform but its public names. Exit codes: 0
success, 1 a spec or model error, 2 a usage error. Every error is a rendered
diagnostic, never a traceback. `check` without a model imports no JAX: the
API loads what needs JAX when it is first used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

import click

import eqxform

from . import LOSSES, Diagnostic, EqxformError, EqxformWarning, UsageError

plural, printable, render_all = Diagnostic.plural, Diagnostic.printable, Diagnostic.render_all


def _console():
    # rich is imported only by the commands that draw tables, keeping `check` quick.
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _text(value: Any, style: str = ""):
    """A table cell or tree label of text from a file or a spec: never read as
    rich markup (`[bold]` stays `[bold]`), control characters escaped."""
    from rich.text import Text

    return Text(printable(str(value)), style=style)


def _echo(text: str, err: bool = False) -> None:
    """A line of human output; whatever came from a file or a spec in it is
    printed as text, its control characters escaped."""
    click.echo(printable(text), err=err)


def _fail(diagnostics, as_json: bool, code: int) -> None:
    if as_json:
        click.echo(
            json.dumps({"ok": False, "diagnostics": [d.to_dict() for d in diagnostics]}, indent=2)
        )
    else:
        click.echo(render_all(diagnostics), err=True)
    sys.exit(code)


def _report(diagnostics, as_json: bool = False) -> None:
    """Fail on errors (exit 1); print warnings and go on."""
    diagnostics = list(diagnostics)
    if any(d.severity == "error" for d in diagnostics):
        _fail(diagnostics, as_json, 1)
    if diagnostics and not as_json:
        click.echo(render_all(diagnostics), err=True)


@contextlib.contextmanager
def _warnings_shown():
    """The API's warnings (`EqxformWarning`: the plan's, before the work) are
    printed as the diagnostics they are, each as it comes."""

    def show(message, category, *args, **kwargs):
        if isinstance(message, EqxformWarning):
            click.echo(render_all([message.diagnostic]) + "\n", err=True)
        else:
            shown(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        shown = warnings.showwarning
        warnings.simplefilter("always", EqxformWarning)
        warnings.showwarning = show
        yield


class _Command(click.Command):
    """A command whose every error is printed as the diagnostic it is (as
    JSON when the command prints JSON: `--json`, `--format json`), never as
    a traceback; Ctrl-C is said in words."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EqxformError as e:
            as_json = ctx.params.get("as_json") or ctx.params.get("fmt") == "json"
            _fail(e.diagnostics, as_json, e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The spec and model arguments, and the options that say how to read and
    run the spec (`--set`, `--params`, `--allow`, `--input`, `--mesh`)."""

    spec: str
    model: str | None
    sets: tuple[str, ...] = ()
    params_file: str | None = None
    allow: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    mesh: str | None = None

    def options(self) -> dict[str, Any]:
        """The options as `eqxform.compile` and `eqxform.check` take them
        (`--mesh data=2,model=4` as a `MeshSpec`: no JAX)."""
        return {
            "params": eqxform.load_params(self.sets, self.params_file),
            "allow": self.allow,
            "inputs": list(self.inputs) or None,
            "mesh": None if self.mesh is None else eqxform.MeshSpec.parse(self.mesh),
        }

    def not_swapped(self, command: str) -> None:
        """A model file given as the spec, and a spec as the model, is said as such (E402)."""
        spec, model = self.spec, self.model
        if model is not None and eqxform.is_model_file(spec) and not eqxform.is_model_file(model):
            raise UsageError.of(
                "E402", variant="arguments_are", spec=spec, model=model, command=command
            )

    def compile(self, command: str):
        self.not_swapped(command)
        # The argument is a file's path, whatever its name: never spec text.
        return eqxform.compile(Path(self.spec), **self.options())


class _Whole(click.ParamType):
    """A whole number on the command line, written in the digits 0-9: Python's
    `int` (click's `INT`) would also take `１`, `٣` and `1_000`."""

    name = "integer"

    def __init__(self, minimum: int):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            if not re.fullmatch(r"[0-9]{1,18}", text):
                self.fail(f"`{value}` is not a whole number written in the digits 0-9", param, ctx)
            number = int(text)
        if number < self.minimum:
            self.fail(f"{number} is less than {self.minimum}", param, ctx)
        return number


_spec_arg = click.argument("spec", type=click.Path(dir_okay=False))
_model_arg = click.argument("model", required=False, type=click.Path())


class _AllowedHere:
    """Finds the allowed modules (and only those) in the current directory,
    as `python -m` would find them: a user's factory module (`factory.py`,
    or a package folder) next to the model file loads from the shell without
    `PYTHONPATH`. It comes last on `sys.meta_path`, so an installed package
    of the same name wins, and nothing else in the folder becomes importable.
    """

    def __init__(self, names: set[str], folder: str):
        self.names, self.folder = names, folder

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or fullname not in self.names:
            return None
        from importlib.machinery import PathFinder

        return PathFinder.find_spec(fullname, [self.folder])


def _allow_here(ctx, param, value: tuple[str, ...]) -> tuple[str, ...]:
    names = {v.split(".", 1)[0] for v in value if v.split(".", 1)[0].isidentifier()}
    # One finder, for this command's names and folder.
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AllowedHere)]
    if names:
        sys.meta_path.append(_AllowedHere(names, os.getcwd()))
    return value


_allow = click.option(
    "--allow",
    multiple=True,
    metavar="PACKAGE",
    callback=_allow_here,
    help="Allow constructors from this package (repeatable); an allowed module in the "
    "current directory is found too.",
)
_set = click.option(
    "--set", "sets", multiple=True, metavar="NAME=VALUE", help="Override a `let` (repeatable)."
)
_params_opt = click.option(
    "--params", "params_file", type=click.Path(dir_okay=False), help="YAML file of `let` values."
)
_input = click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="TYPE[SHAPE]",
    help="The model's input, e.g. f32[3,224,224]; repeat per positional argument "
    "(replaces the spec's `input` lines).",
)
_deny = click.option(
    "--deny",
    multiple=True,
    metavar="warnings|CODE",
    help="Treat warnings (all, or of one code such as W202) as errors: exit 1 (for CI).",
)
_mesh_opt = click.option(
    "--mesh",
    metavar="AXIS=N,...",
    help="The device mesh, e.g. data=2,model=4 (-1: the devices left over); replaces the "
    "spec's `mesh`.",
)
_weights = click.option(
    "--weights",
    metavar="CHECKPOINT",
    type=click.Path(dir_okay=False),
    help="A checkpoint in another library's names (safetensors or .npz), read by the spec's "
    "`map` lines; replaces the spec's `weights` line.",
)


def _spec_options(command):
    """The spec and model arguments, and the options that say how to read and
    run the spec, that `check`, `plan`, `apply` and `train` share: the
    command is called with them as one `_Spec`."""

    @functools.wraps(command)
    def run(spec, model, sets, params_file, allow, inputs, mesh, **rest):
        return command(_Spec(spec, model, sets, params_file, allow, inputs, mesh), **rest)

    for decorate in (_mesh_opt, _input, _allow, _params_opt, _set, _model_arg, _spec_arg):
        run = decorate(run)
    return run


_format = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eqxform")
def main():
    """eqxform: transform Equinox models with declarative specs."""


main.command_class = _Command  # every command below


@main.command()
@click.argument("constructor")
@click.option("-o", "--output", required=True, type=click.Path(), help="Model file to write.")
@click.option("--seed", default="0", show_default=True, help="0 to 2**64 - 1.")
@_allow
def new(constructor, output, seed, allow):
    """Build a model from a constructor call and write it.

    Example: eqxform new "MLP(in_size=2, out_size=2, width_size=8, depth=2)" -o model.eqx
    """
    eqxform.check_output(output)
    model = eqxform.new(constructor, seed=eqxform.parse_seed(seed), allow=allow)
    eqxform.save(output, model)
    click.echo(f"wrote {output} ({eqxform.count_params(model):,} parameters)")


@main.command()
@_spec_options
@_weights
@click.option("--json", "as_json", is_flag=True, help="Print diagnostics and match counts as JSON.")
@_deny
def check(s: _Spec, weights, as_json, deny):
    """Report every problem of a spec (and, given a model, of applying it).

    With a model (a model file, or the spec's `model` directive) every rule
    is checked against the model's skeleton under `eqx.filter_eval_shape`, as
    `apply` checks it, allocating nothing: selectors, fans, stacks, the
    forward pass on the `input` lines; each rule's match count is reported.
    Without one this is a linter: it imports no JAX and answers at once.
    """
    s.not_swapped("check")
    report = eqxform.check(Path(s.spec), s.model, **s.options(), weights=weights, deny=deny)
    diagnostics, against, steps = report.diagnostics, report.model, report.steps
    if as_json:
        data: dict[str, Any] = {
            "ok": report.ok,
            "model": against,
            "diagnostics": [d.to_dict() for d in diagnostics],
        }
        if steps is not None:
            keys = ("line", "rule", "action", "count", "unit")
            data["rules"] = [{k: getattr(step, k) for k in keys} for step in steps]
        click.echo(json.dumps(data, indent=2))
        sys.exit(0 if report.ok else 1)
    if diagnostics:
        click.echo(render_all(diagnostics), err=True)
    if not report.ok:
        sys.exit(1)
    warned = sum(d.severity == "warning" for d in diagnostics)
    head = "no problems found" if not warned else plural(warned, "warning")
    noted = sum(d.severity == "note" for d in diagnostics)
    if noted:
        head += f", {plural(noted, 'note')}"
    where = f"; checked against {against}" if against is not None else ""
    _echo(f"{report.name}: {head} ({plural(report.statements, 'statement')}{where})")
    if steps:
        width = max(len(step.action) for step in steps)
        for step in steps:
            _echo(f"  line {step.line:<4} {step.action.ljust(width)}  {step.counted}")


@main.command()
@_spec_options
@_format
@click.option("--untouched", is_flag=True, help="Also list the arrays that no rule touched.")
@_weights
@_deny
def plan(s: _Spec, fmt, untouched, weights, deny):
    """Show what each rule will change, before applying anything; with a mesh,
    each array's partition spec and bytes per device."""
    result = eqxform.plan(s.compile("plan"), s.model, weights=weights, deny=deny)
    _report(result.diagnostics, fmt == "json")
    _print_plan(result, fmt, untouched)


def _dumped(data: dict, fmt: str) -> bool:
    """Print `data` as JSON or YAML when `--format` asks for one; False for a table."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
    elif fmt == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False))
    return fmt in ("json", "yaml")


def _print_plan(result, fmt: str, untouched: bool = False) -> None:
    data = result.to_dict()
    if not untouched:
        del data["untouched"]
    if _dumped(data, fmt):
        return
    console = _console()
    table = _plan_table(result)
    # The table's natural width: what it takes with no cell wrapped or cut.
    natural = console.measure(table, options=console.options.update(max_width=1 << 20))
    if natural.maximum <= console.width:
        _console().print(table)
        lines = result.totals(console.width)
    else:
        # Too narrow for the table at its natural width: rich would cut the
        # paths (`blocks[0].att…`) and wrap the actions; the text layout
        # keeps every path whole.
        lines = result.lines(console.width)
    if result.weights is not None:
        _echo("\n".join(result.weight_lines()))
    for line in lines:
        click.echo(line)
    if untouched:
        click.echo(f"untouched: {plural(len(result.untouched), 'array')}")
        for path in result.untouched:
            _echo(f"  {path}")


def _plan_table(result):
    """The plan's steps as a rich table: a row per array or module acted on."""
    from rich.table import Table

    table = Table(show_lines=False, header_style="bold")
    for column in ("line", "action", "acts on", "path", "before", "after"):
        table.add_column(column)
    for step in result.steps:
        delta = f" ({step.params_delta:+,} params)" if step.params_delta else ""
        rows = [(m.path, m.before, m.after) for m in step.matches] or [("(nothing)", "", "")]
        for i, (path, before, after) in enumerate(rows):
            table.add_row(
                _text(step.line if i == 0 else ""),
                _text(step.action + delta if i == 0 else ""),
                _text(step.counted if i == 0 else ""),
                _text(path),
                _text(before),
                _text("=" if after == before else after),
                end_section=i == len(rows) - 1,
            )
    return table


@main.command()
@_spec_options
@click.option("-o", "--output", required=True, type=click.Path(), help="Model file to write.")
@click.option("--seed", help="Override the spec's `seed` (0 to 2**64 - 1).")
@click.option("--device", help="XLA platform to run on (cpu, gpu, ...).")
@click.option("--force", is_flag=True, help="Allow the output to replace the input model file.")
@click.option(
    "--adapters-only",
    is_flag=True,
    help="Write only the adapters (`lora`, `ia3`), the spec and a fingerprint of the base.",
)
@_weights
@_deny
def apply(s: _Spec, output, seed, device, force, adapters_only, weights, deny):
    """Apply a spec to a model (or to the spec's `model`) and write the result;
    with `map` lines, the model's arrays are first read from a checkpoint in
    another library's names (`weights` line, or `--weights`)."""
    seed_value = eqxform.parse_seed(seed)
    program = _prepare("apply", s, output, force)
    with _warnings_shown():
        result = eqxform.apply(
            program, s.model, seed=seed_value, weights=weights, device=device, deny=deny
        )
    if adapters_only:
        # This spec's adapters, whatever the base's recipe holds.
        step = dataclasses.replace(program, seed=program.seed if seed_value is None else seed_value)
        eqxform.save(output, result, adapters_only=True, spec=step)
    else:
        eqxform.save(output, result)
    what = "adapters of " if adapters_only else ""
    click.echo(
        f"wrote {output} ({what}{eqxform.count_params(result):,} parameters, "
        f"{program.applies()} applied)"
    )


@main.command()
@_spec_options
@click.option(
    "--data",
    type=click.Path(),
    help="An .npz with arrays `x` and `y` (or `x0`, `x1`, ... for a model of several "
    "arguments; default: a built-in toy task).",
)
@click.option("--steps", type=_Whole(1), default=200, show_default=True, help="At least 1.")
@click.option("--batch-size", type=_Whole(1), default=32, show_default=True, help="At least 1.")
@click.option(
    "--eval-data",
    type=click.Path(),
    help="An .npz with held-out `x` and `y`: after training, the loss on it (per member of an "
    "ensemble) is shown and recorded in the model file's recipe.",
)
@click.option(
    "--loss",
    default="mse",
    show_default=True,
    metavar="|".join(LOSSES) + "|PKG.MOD:FN",
    help="The loss: "
    + ", ".join(f"`{n}`" for n in LOSSES)
    + ", or a function `(pred, y) -> scalar` of your own from an allowed package (`--allow PKG`).",
)
@click.option(
    "--model-output",
    metavar="PATH",
    help="The part of what the model returns that the loss compares with `y`: an attribute "
    "or index, e.g. `logits` (a result object) or `0` (a tuple).",
)
@click.option("-o", "--output", required=True, type=click.Path(), help="Model file to write.")
@click.option(
    "--checkpoint-every",
    type=_Whole(1),
    metavar="K",
    help="Also write the model every K steps (K at least 1).",
)
@click.option("--seed", help="Override the spec's `seed` (0 to 2**64 - 1).")
@click.option(
    "--batch-axis",
    metavar="AXIS",
    help="The mesh axis the batch is split over (default: `data`, when the mesh has it).",
)
@click.option(
    "--coordinator",
    metavar="HOST:PORT",
    help="Join a run of several processes: process 0's address (every process gives the same).",
)
@click.option(
    "--num-processes", type=_Whole(1), help="How many processes the run has (at least 1)."
)
@click.option("--process-id", type=_Whole(0), help="This process's place, 0..N-1.")
@click.option(
    "--timeout",
    type=_Whole(1),
    metavar="SECONDS",
    help="How long to wait for the coordinator and the other processes, then fail with "
    "E467 (exit 2); default 60.",
)
@click.option("--device", help="XLA platform to run on (cpu, gpu, ...).")
@click.option("--force", is_flag=True, help="Allow the output to replace the input model file.")
@click.option(
    "--adapters-only",
    is_flag=True,
    help="Write only the adapters and the arrays trained beside them (an adapter file for "
    "`eqxform merge` or `eqxform.load(path, base=...)`).",
)
@_weights
@_deny
def train(
    s: _Spec, output, seed, coordinator, num_processes, process_id, timeout, force, **options
):
    """Train with the spec's optimiser, rules and freezing; write the model.

    Ctrl-C stops after the step in flight and writes the model trained so far.
    On a mesh (the spec's `mesh`, or `--mesh`) the step runs data- and
    model-parallel. For several processes, start the same command in each with
    `--coordinator HOST:PORT --num-processes N --process-id I`; process 0
    writes the model.

    An ensemble (a sweep: `ensemble 8 vary lr=...`) trains as one program;
    the progress shows the best, median and worst member's loss, and the end
    a table of every member with its hyper-parameters, its loss on the
    training data and (with `--eval-data`) on the held-out data, which the
    model file's recipe records (`train.members`).
    """
    seed_value = eqxform.parse_seed(seed)
    _join(coordinator, num_processes, process_id, timeout)
    program = _prepare("train", s, output, force, data=options["data"])
    this_spec = dataclasses.replace(
        program, seed=program.seed if seed_value is None else seed_value
    )

    def write(m, done=None):
        # The model's recipe says what training did (`eqxform.train` files it).
        if options["adapters_only"]:
            # This spec's adapters (and what trains beside them), whatever
            # the base's recipe holds.
            recipe = eqxform.recipe_of(m)
            eqxform.save(output, m, adapters_only=True, spec=this_spec, recipe=recipe)
        else:
            eqxform.save(output, m)

    run = functools.partial(
        eqxform.train, program, s.model, seed=seed_value, on_checkpoint=write, **options
    )
    with _warnings_shown():
        if not _writer():
            result = run()
        elif _console().is_terminal:
            result = _train_with_bar(run, options["steps"])
        else:
            result = _train_with_lines(run, options["steps"])
    if result.nonfinite is not None and result.steps == 0:
        raise _diverged(result, output, wrote=False)
    if result.members is not None and _writer():
        _echo_members(result.members, result.ensemble)
    write(result.model)
    if result.nonfinite is not None:
        raise _diverged(result, output, wrote=True)
    final = "-" if result.loss is None else f"{result.loss:.4g}"
    if result.interrupted:
        click.echo(
            f"interrupted after {result.steps} steps; wrote {output} (loss {final})", err=True
        )
        sys.exit(130)
    wrote = f"wrote {output}" if _writer() else f"process 0 wrote {output}"
    diverged = "".join(
        f"; member {k} diverged at step {at} (kept as it was before that step)"
        for k, at in sorted(result.diverged.items())
    )
    click.echo(f"trained {result.steps} steps (loss {final}){diverged}; {wrote}")


def _loss(value: float, losses, diverged) -> str:
    """The loss as the progress shows it; an ensemble's (`losses`, each
    member's, else None) then its best, median and worst member of those
    that train, and those that diverged."""
    import numpy as np

    if losses is None:
        return f"{value:.4g}"
    live = [k for k in range(len(losses)) if k not in diverged]
    out = [f"{value:.4g}"]
    if live:
        order = sorted(live, key=lambda k: losses[k])
        best, worst = order[0], order[-1]
        median = float(np.median([losses[k] for k in live]))
        out.append(
            f"members best {losses[best]:.4g} (member {best}), median {median:.4g}, "
            f"worst {losses[worst]:.4g} (member {worst})"
        )
    out += [f"member {k} diverged at step {at}" for k, at in sorted(diverged.items())]
    return "; ".join(out)


def _echo_members(rows: list[dict], ensemble: bool) -> None:
    """The final table: a row per member, its hyper-parameters and losses."""
    names = list(rows[0]["values"])
    held = any(r["eval_loss"] is not None for r in rows)
    head = (["member"] if ensemble else []) + names + ["loss"] + (["eval loss"] if held else [])

    def losses(r):
        if "diverged_at" in r:
            return [f"diverged at step {r['diverged_at']}"] + (["-"] if held else [])
        return [f"{r['loss']:.4g}"] + ([f"{r['eval_loss']:.4g}"] if held else [])

    table = [
        ([str(r["member"])] if ensemble else [])
        + [f"{r['values'][n]:.4g}" for n in names]
        + losses(r)
        for r in rows
    ]
    widths = [max(len(c) for c in column) for column in zip(head, *table)]
    for line in [head, *table]:
        _echo("  ".join(c.rjust(w) for c, w in zip(line, widths)).rstrip())


def _train_with_bar(run, steps: int):
    """Training on a terminal: a progress bar with the loss (an ensemble's:
    best, median and worst member)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("training"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=_console(),
        transient=False,
    ) as progress:
        task = progress.add_task("train", total=steps, loss="-")

        def step(done, value, members, diverged):
            progress.update(task, completed=done, loss=_loss(value, members, diverged))

        return run(on_step=step)


# Off a terminal (a log, a pipe), `train` prints a line for the initial loss,
# one per tenth of the steps, and one at least this often on a slow run.
_LINE_EVERY_S = 60.0


def _train_with_lines(run, steps: int):
    """Training with its output going to a file or a pipe: plain lines at a
    bounded rate (at most 10 milestones, plus one per minute), each flushed;
    an ensemble's show its best, median and worst member's loss."""
    import time

    last = {"tenth": 0, "at": time.monotonic()}

    def report(done: int, total: int) -> bool:
        tenth = done * 10 // total
        due = (
            done in (1, total)
            or tenth > last["tenth"]
            or time.monotonic() - last["at"] >= _LINE_EVERY_S
        )
        if due:
            last["tenth"], last["at"] = tenth, time.monotonic()
        return due

    def line(done: int, value: float, members, diverged) -> None:
        what = "initial loss" if done == 1 else "loss"
        click.echo(f"step {done}/{steps}: {what} {_loss(value, members, diverged)}")
        sys.stdout.flush()

    return run(on_step=line, report=report)


def _diverged(result, output: str, wrote: bool) -> EqxformError:
    """Training stopped at a step whose loss or update was not finite."""
    kept = (
        f"wrote the model of step {result.steps}, the last finite one, to `{output}`"
        if wrote
        else f"nothing was written to `{output}`"
    )
    return EqxformError.of(
        "E530", nonfinite=result.nonfinite, nonfinite_what=result.nonfinite_what, kept=kept
    )


def _writer() -> bool:
    """Is this the process that writes files (process 0, or the only one)?"""
    import jax

    return jax.process_index() == 0


def _join(coordinator, num_processes, process_id, timeout=None) -> None:
    """`--coordinator`, `--num-processes`, `--process-id`: all or none
    (`--timeout` only with them)."""
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if not any(given):
        if timeout is not None:
            raise UsageError.of("E466")
        return
    if not all(given):
        raise UsageError.of("E466", variant="needs_coordinator")
    # Without `--timeout`, the API's own default.
    timeout_s = {} if timeout is None else {"timeout_s": timeout}
    eqxform.initialize_distributed(coordinator, num_processes, process_id, **timeout_s)


def _prepare(command: str, s: _Spec, output, force, data=None):
    """The checks `apply` and `train` share before any JAX work: the output
    first (it may replace no input, and must be writable), then the spec."""
    _refuse_overwrite(s.model, output, force)
    eqxform.check_output(
        output,
        [
            ("spec", s.spec),  # on the command line, always a path
            ("`--data` file", data),
            ("`--params` file", s.params_file),
        ],
    )
    return s.compile(command)


def _refuse_overwrite(model, output, force) -> None:
    if model is not None and not force and os.path.exists(output) and os.path.exists(model):
        # Same file by identity: the path itself, a symbolic or a hard link.
        if os.path.samefile(model, output):
            raise UsageError.of("E409", output=output)


@main.command("export")
@_spec_arg
@click.argument("model", type=click.Path())
@click.option(
    "-o", "--output", required=True, type=click.Path(), help="Checkpoint (or PEFT folder) to write."
)
@_weights
@click.option(
    "--peft",
    is_flag=True,
    help="Write the model's LoRA adapters in PEFT's layout: a folder of "
    "adapter_model.safetensors and adapter_config.json.",
)
@_set
@_params_opt
@_allow
def export(spec, model, output, weights, peft, sets, params_file, allow):
    """Write a model's weights in another library's names: the spec's `map`
    lines run in reverse (the original checkpoint, from `--weights` or the
    spec's `weights` line, gives back its shapes, dtypes and skipped tensors).
    With --peft, the LoRA adapters only, as PEFT writes them."""

    program = _Spec(spec, model, sets, params_file, allow).compile("export")
    names = eqxform.export(program, model, output, weights=weights, peft=peft)
    if peft:
        click.echo(f"wrote {output}/ ({plural(len(names), 'adapter tensor')}, PEFT layout)")
        return
    click.echo(f"wrote {output} ({plural(len(names), 'tensor')})")


@main.command()
@click.argument("adapters", type=click.Path())
@click.argument("base", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Model file to write.")
@_allow
@click.option("--force", is_flag=True, help="Allow the output to replace the base model file.")
def merge(adapters, base, output, allow, force):
    """Load an adapter file onto its base model, bake the adapters into the
    base weights, and write the merged model."""
    _refuse_overwrite(base, output, force)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EqxformWarning)
        model = eqxform.load(base, allow=allow)
        adapted = eqxform.load(adapters, base=model, allow=allow)
        merged = eqxform.compile("where ** -> merge\n", name="merge").apply(adapted)
    eqxform.save(output, merged)
    _echo(f"wrote {output} ({eqxform.count_params(merged):,} parameters, adapters merged)")


@main.command()
@click.argument("model", type=click.Path())
@click.option("--member", type=_Whole(0), metavar="K", help="The member to write, 0-based.")
@click.option(
    "--best",
    is_flag=True,
    help="The member with the lowest held-out loss (recorded by `train --eval-data`).",
)
@click.option("-o", "--output", required=True, type=click.Path(), help="Model file to write.")
@_allow
def pick(model, member, best, output, allow):
    """Write one member of an ensemble as a plain model file.

    MODEL is an ensemble's model file (`ensemble N`, or a sweep's `ensemble
    ... vary`). The member's recipe is the ensemble's without the `ensemble`
    line (a varied name becomes a `let` of the member's value), and records
    where it came from: the file, the member, its hyper-parameters and
    losses. It loads, plans and trains as a plain model. Only the member's
    slice of each tensor is read.

    Example: eqxform pick sweep.eqx --best -o one.eqx
    """
    if (member is None) == (not best):
        # `--member K` or `--best`, one of them: said before the output is looked at.
        eqxform.pick_file(model, member, best=best)
    eqxform.check_output(output, [("ensemble's model file", model)])
    one, recipe, how = eqxform.pick_file(model, member, best=best, allow=allow)
    eqxform.save(output, one, recipe=recipe)
    _echo(f"wrote {output} ({how} of {model}; {eqxform.count_params(one):,} parameters)")
    detail = _picked_detail(recipe.picked or {})
    if detail:
        _echo(f"  {detail}")


@main.command()
@click.argument("model", type=click.Path())
@_format
@_allow
def show(model, fmt, allow):
    """Show a model file: its tensors and its recipe.

    The file is checked whole first: its header, its recipe, and its tensors
    against the structure the recipe builds (a recipe whose constructor comes
    from your own package is built only with `--allow`).
    """
    info = eqxform.inspect(model, allow=allow)
    recipe, adapters, tensors = info.recipe, info.adapters, info.tensors
    if _dumped(info.to_dict(), fmt):
        return
    from rich.text import Text
    from rich.tree import Tree

    label = _text(model, "bold")
    label.append(f"  {info.parameters:,} parameters")
    tree = Tree(label)
    for t in tensors:
        line = _text(t["path"])
        line.append_text(Text("  ").append_text(_text(f"{t['dtype']}{t['shape']}", "dim")))
        tree.add(line)
    _console().print(tree)
    if info.unchecked is not None:
        _echo(f"note: {info.unchecked}", err=True)
    if adapters is not None:
        _show_adapters(model, adapters, len(tensors))
        return
    if recipe is None:
        click.echo("recipe: none (load with `eqxform.load(path, like=model)`)")
        return
    base = recipe["base"]
    _echo(f"base: {base.get('constructor')}  (seed {base.get('seed')})")
    _echo_specs(recipe.get("specs", []))
    picked = recipe.get("picked")
    if picked:
        _echo(f"picked: {_picked_text(picked)}")
    trained = recipe.get("train")
    if trained:
        _echo(
            f"trained: {trained.get('steps')} steps on {trained.get('data')} "
            f"({trained.get('loss')}, batch size {trained.get('batch_size')})"
        )
    versions = recipe.get("versions") or {}
    if versions:
        _echo("written by " + ", ".join(f"{k} {v}" for k, v in versions.items()))


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _picked_detail(picked: dict) -> str:
    """`lr=0.001; loss 0.12, held-out loss 0.15`: what training recorded of a
    member picked out of an ensemble."""
    parts = [", ".join(f"{k}={_number(v)}" for k, v in (picked.get("values") or {}).items())]
    parts.append(
        ", ".join(
            f"{what} {_number(picked[key])}"
            for key, what in (("loss", "loss"), ("eval_loss", "held-out loss"))
            if picked.get(key) is not None
        )
    )
    return "; ".join(p for p in parts if p)


def _picked_text(picked: dict) -> str:
    """`member 3 of 8 of sweep.eqx (lr=0.001; ...)`: where a member picked
    out of an ensemble came from."""
    detail = _picked_detail(picked)
    text = f"member {picked.get('member')} of {picked.get('members')} of {picked.get('file')}"
    return text + (f" ({detail})" if detail else "")


def _echo_specs(specs: list) -> None:
    """The specs a model file's recipe (or an adapter file) records, a line each."""
    for i, entry in enumerate(specs, 1):
        entry = entry if isinstance(entry, dict) else {}
        params = ", ".join(f"{k}={v}" for k, v in (entry.get("params") or {}).items())
        params = f"; {params}" if params else ""
        _echo(f"spec {i}: {entry.get('name')}  (seed {entry.get('seed')}{params})")


def _show_adapters(path: str, info: dict, tensors: int) -> None:
    """What `show` says of an adapter file: whose adapters, from which specs,
    and how to use them (they are no model on their own)."""
    fingerprint = str(info.get("fingerprint"))
    _echo(
        f"adapters: {plural(tensors, 'tensor')} for the base model of fingerprint "
        f"{fingerprint[:12]}"
    )
    _echo_specs(info.get("specs", []))
    _echo(
        f"load onto the base model in Python with `eqxform.load({json.dumps(path)}, "
        f"base=model)`, or bake them into it: `eqxform merge {shlex.quote(path)} BASE.eqx "
        "-o merged.eqx`"
    )


@main.command()
@click.argument("paths", metavar="SPECS...", nargs=-1, required=True, type=click.Path())
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if a file would change.")
def fmt(paths, check):
    """Write specs in the canonical layout (in place), comments kept.

    SPECS are spec files, or folders: every `*.eqx` file under a folder.
    Spacing, aligned arrows, one blank line at most; the meaning and the
    numbers a spec draws stay the same. With --check, list the files that are
    not formatted and exit 1 (for CI).
    """
    specs, changed = eqxform.format_files(paths, check=check)
    if check:
        for path in changed:
            _echo(f"would reformat {path}", err=True)
        if changed:
            sys.exit(1)
        click.echo(f"{plural(len(specs), 'spec')} already formatted")
    else:
        click.echo(f"reformatted {len(changed)} of {plural(len(specs), 'spec')}")


@main.command()
def lsp():
    """Run the language server over stdio (for editors: VS Code, Neovim, Helix)."""
    eqxform.language_server()


@main.command()
@click.argument("code", required=False)
@click.option("--all", "every", is_flag=True, help="Every code, one after another.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown"]),
    default="text",
    show_default=True,
    help="markdown: the diagnostics index of the documentation (with --all).",
)
def explain(code, every, fmt):
    """Explain a diagnostic code: what it means, an example, the fix.

    Example: eqxform explain E201. `eqxform explain --all --format markdown`
    writes the diagnostics index (docs/diagnostics.md).
    """
    click.echo(eqxform.explain(code, all=every, format=fmt), nl=not every)


if __name__ == "__main__":
    main()
