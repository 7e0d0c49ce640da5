"""Checkpoints in another library's names: read onto a model by a spec's
`map` lines, and written back by the same lines run in reverse.

Three steps, each its own function:

- `open_checkpoint` reads a checkpoint's header only (safetensors, through the
  checked reader of `_files.py`; `.npz`, through the `.npy` headers), and
  refuses pickles;
- `plan_weights` holds the rules, the header and the model's shapes to each
  other, reading no tensor: every model array is filled exactly once, every
  tensor is read or skipped, every shape fits, else diagnostics at the rule's
  line;
- `load_weights` runs a plan, one tensor at a time, and `export_weights` runs
  the rules backwards into a new safetensors file.

A model's arrays are named by their paths as `eqxform` prints them
(`layers[0][1].conv1.weight`); a `Sequential` is indexed directly
(`blocks[3]`), and a `BatchNorm`'s state is named as PyTorch names it
(`bn1.running_mean`, `bn1.running_var`, and `bn1.num_batches_tracked` in
`mode="batch"`): these live in the model's `StateIndex`es, so that
`eqx.nn.State(model)` holds them after a load. An index past a model's tree
(`layers[{i}].attn.weight` where `layers` is one module whose arrays carry a
leading layer axis, as `eqx.filter_vmap` builds them) names a slice of that
axis.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _ast as A
from . import _limits
from ._diagnostics import Diagnostic, did_you_mean, position, report, suggest
from ._errors import ModelFileError, SpecError, UsageError
from ._files import TensorSpec, as_path, atomic_write_with, read_header, write_stream
from ._modules import LoRA, is_state_index
from ._modules._wrappers import _value as plain
from ._select import is_array
from ._wnames import (
    Capture,
    Field,
    Index,
    MapRule,
    PathPattern,
    RestStep,
    Step,
    WeightRules,
    show_steps,
)

# ---- the checkpoint ------------------------------------------------------------

_PICKLES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")

CONVERT_HELP = (
    "convert it once, where you trust the file: `import torch, safetensors.torch`, then "
    '`safetensors.torch.save_file(torch.load("{path}", map_location="cpu"), "{stem}.safetensors")`'
)


@dataclass(eq=False)  # compared and hashed by identity, as a file handle is
class Checkpoint:
    """A checkpoint's header (`tensors`), and its tensors one at a time."""

    path: str
    kind: str
    tensors: dict[str, TensorSpec]
    offsets: dict[str, int]  # name -> byte offset of the data (safetensors)

    def read(self, name: str, index: tuple | None = None) -> np.ndarray:
        """The tensor `name` (or `tensor[index]`), read from the file alone."""
        t = self.tensors[name]
        dtype = jnp.dtype(t.dtype)
        try:
            if self.kind == "npz":
                with np.load(self.path, allow_pickle=False) as z:
                    value = z[name]
                return value if index is None else np.array(value[index])
            count = math.prod(t.shape)
            if index is not None and count:
                view = np.memmap(
                    self.path, dtype=dtype, mode="r", offset=self.offsets[name], shape=t.shape
                )
                return np.array(view[index])
            with open(self.path, "rb") as f:
                f.seek(self.offsets[name])
                value = np.fromfile(f, dtype=dtype, count=count)
            if value.size != count:
                raise ValueError("the file is shorter than its header says")
            return value.reshape(t.shape)
        except (OSError, ValueError) as e:
            raise ModelFileError.of(
                "E320", file=self.path, name=name, path=self.path, error=e
            ) from None


def _refuse_pickle(path: str) -> UsageError:
    stem = os.path.splitext(os.path.basename(path))[0]
    return UsageError.of(
        "E340", file=path, help=CONVERT_HELP.format(path=path, stem=stem), path=path
    )


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The header of a safetensors file or an `.npz` archive; nothing else is
    read, and a pickle is refused."""
    path = as_path(path, "checkpoint")
    if not os.path.exists(path):
        raise UsageError.of("E301", file=path, path=path)
    lower = path.lower()
    if lower.endswith(_PICKLES):
        raise _refuse_pickle(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        head = b""  # `read_header` says what is wrong with the path
    pickled = head[:1] == b"\x80" and head[8:9] != b"{"
    if pickled or (zipfile.is_zipfile(path) and not _is_npz(path)):
        # Protocol 2+ pickles start with 0x80, where a safetensors file starts
        # with its header's length (whose low byte may be 0x80 too, but then
        # its ninth byte opens the JSON header); `torch.save` writes a zip of
        # a `data.pkl` (an `.npz` is a zip of `.npy` arrays only).
        raise _refuse_pickle(path)
    if head[:2] == b"PK" and head[8:9] != b"{":
        return _open_npz(path)
    if lower.endswith((".h5", ".hdf5", ".msgpack", ".onnx", ".gguf", ".npy")):
        raise UsageError.of("E341", file=path, path=path)
    header = read_header(path)
    with open(path, "rb") as f:
        start = 8 + int.from_bytes(f.read(8), "little")
    offsets = {n: start + t.start for n, t in header.tensors.items()}
    return Checkpoint(path, "safetensors", header.tensors, offsets)


def _is_npz(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return all(m.filename.endswith(".npy") for m in z.infolist())
    except (zipfile.BadZipFile, OSError):
        return False


def _open_npz(path: str) -> Checkpoint:
    tensors = {}
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.infolist():
                name = member.filename[: -len(".npy")]
                with z.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f, max_header_size=_limits.MAX_NPY_HEADER_BYTES)
                if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
                    raise ValueError(f"`{name}` holds `{dtype}`, not numbers")
                tensors[name] = TensorSpec(name, dtype.name, tuple(int(d) for d in shape))
    except (ValueError, SyntaxError, TypeError, OSError, zipfile.BadZipFile) as e:
        raise ModelFileError.of("E302", file=path, path=path, str_e=str(e)[:200]) from None
    return Checkpoint(path, "npz", tensors, {})


# ---- the model -----------------------------------------------------------------

# A `BatchNorm`'s state, by PyTorch's names: (field of the `StateIndex`, index
# into its value, or None for the whole value).
_BATCHNORM = {
    ("ema_state_index", 0): "running_mean",
    ("ema_state_index", 1): "running_var",
    ("batch_state_index", 0): "running_mean",
    ("batch_state_index", 1): "running_var",
    ("batch_counter", None): "num_batches_tracked",
}


@dataclass(frozen=True)
class Leaf:
    """A model array: a unique `index` (its place among the model's flattened
    leaves, or past them for an array held in an `eqx.nn.State`), its path,
    shape and dtype. `state`: the `StateIndex` that holds it and where in its
    value; `in_state`: the array lives in the `State` of a `(model, state)`
    pair, not in the model. `derived`: an array the load sets itself (a
    `BatchNorm`'s first-time flag, under the module at `owner`), never a rule."""

    index: int
    steps: tuple[Step, ...]
    shape: tuple[int, ...]
    dtype: Any
    state: tuple[Any, tuple] | None = None
    in_state: bool = False
    derived: bool = False
    owner: tuple[Step, ...] = ()

    @property
    def path(self) -> str:
        return show_steps(self.steps)


def _logical(model: Any, keypath: tuple) -> tuple[list[Step], Any, bool, tuple]:
    """The path of the array at `keypath` as a spec names it: a `Sequential`
    indexed directly, a `BatchNorm`'s state by PyTorch's names. Returns the
    steps, the (StateIndex, index into its value) that holds it or None,
    whether the load derives it, and the path of its owner."""
    steps: list[Step] = []
    node = model
    state = None
    for k, key in enumerate(keypath):
        if isinstance(node, eqx.nn.BatchNorm) and isinstance(key, jax.tree_util.GetAttrKey):
            # `bn.ema_state_index.init[0]` -> `bn.running_mean`.
            rest = keypath[k + 1 :]
            sub = getattr(rest[1], "idx", None) if len(rest) > 1 else None
            alias = _BATCHNORM.get((key.name, sub))
            if alias is not None:
                steps.append(Field(alias))
                return steps, (getattr(node, key.name), () if sub is None else (sub,)), False, ()
            if key.name == "ema_first_time_index":
                owner = tuple(steps)
                steps.append(Field(key.name))
                return steps, (getattr(node, key.name), ()), True, owner
        if isinstance(key, jax.tree_util.GetAttrKey):
            if not (isinstance(node, eqx.nn.Sequential) and key.name == "layers"):
                steps.append(Field(key.name))
            child = getattr(node, key.name, None)
            if is_state_index(child):
                rest = tuple(getattr(r, "idx", None) for r in keypath[k + 2 :])
                state = (child, rest)
        elif isinstance(key, jax.tree_util.SequenceKey):
            child = node[key.idx] if isinstance(node, (list, tuple)) else None
            steps.append(Index(key.idx))
        elif isinstance(key, jax.tree_util.DictKey):
            child = node.get(key.key) if isinstance(node, dict) else None
            steps.append(Field(str(key.key)))
        else:  # a custom pytree node: its flattened index
            child = None
            steps.append(Index(getattr(key, "key", 0)))
        node = child
    return steps, state, False, ()


def model_leaves(model: Any, state: Any = None) -> list[Leaf]:
    """Every array of `model` with its path; with `state` (the `State` of a
    `(model, state)` pair, whose model holds no initial state), the arrays of
    each `StateIndex` too, read from `state`."""
    flat = jax.tree_util.tree_flatten_with_path(model)[0]
    out = []
    for i, (keypath, leaf) in enumerate(flat):
        if is_array(leaf):
            steps, where, derived, owner = _logical(model, keypath)
            shape, dtype = tuple(leaf.shape), jnp.dtype(leaf.dtype)
            out.append(Leaf(i, tuple(steps), shape, dtype, where, False, derived, owner))
    if state is None:
        return out
    index = len(flat)
    init = jax.tree_util.GetAttrKey("init")
    for keypath, node in jax.tree_util.tree_flatten_with_path(model, is_leaf=is_state_index)[0]:
        if not is_state_index(node):
            continue
        for inner, leaf in jax.tree_util.tree_flatten_with_path(state.get(node))[0]:
            steps, _, derived, owner = _logical(model, keypath + (init,) + inner)
            rest = tuple(getattr(r, "idx", None) for r in inner)
            shape, dtype = tuple(leaf.shape), jnp.dtype(leaf.dtype)
            out.append(Leaf(index, tuple(steps), shape, dtype, (node, rest), True, derived, owner))
            index += 1
    return out


def _match_path(pattern: PathPattern, leaf: Leaf) -> tuple[dict, list] | None:
    """Bindings and stack-axis indices when `pattern` names `leaf` (or slices
    of it): an index of the pattern that meets a field or the end of the
    leaf's path indexes the array's leading axes, in order."""
    bindings: dict[str, int] = {}
    axes: list[int | Capture] = []
    j = 0
    steps = leaf.steps
    for step in pattern.steps:
        here = steps[j] if j < len(steps) else None
        if isinstance(step, RestStep):
            if here is None:
                return None
            rest = ".".join(str(s.name if isinstance(s, Field) else s.value) for s in steps[j:])
            bindings["**"] = rest  # type: ignore[assignment]
            j = len(steps)
        elif isinstance(step, Field):
            if not isinstance(here, Field) or here.name != step.name:
                return None
            j += 1
        elif isinstance(here, Index):
            if isinstance(step.value, Capture):
                if not step.value.bind(str(here.value), bindings):
                    return None
            elif step.value != here.value:
                return None
            j += 1
        else:
            axes.append(step.value)
    if j != len(steps) or len(axes) > len(leaf.shape):
        return None
    return bindings, axes


def _slots(pattern: PathPattern, leaf: Leaf) -> Iterable[tuple[dict, tuple[int, ...]]]:
    """Every (bindings, leading index) by which `pattern` names `leaf`."""
    matched = _match_path(pattern, leaf)
    if matched is None:
        return
    bindings, axes = matched
    partial = [(bindings, ())]
    for k, ax in enumerate(axes):
        grown = []
        for b, at in partial:
            if isinstance(ax, int):
                if ax < leaf.shape[k]:
                    grown.append((b, at + (ax,)))
                continue
            for i in range(leaf.shape[k]):
                b2 = dict(b)
                if ax.bind(str(i + ax.offset), b2):
                    grown.append((b2, at + (i,)))
        partial = grown
    yield from partial


# ---- the plan -------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    leaf: Leaf
    at: tuple[int, ...]  # leading indices into a stacked array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.leaf.shape[len(self.at) :]

    @property
    def path(self) -> str:
        return (
            self.leaf.path
            + "".join(f"[{i}]" for i in self.at)
            + (" (stack slice)" if self.at else "")
        )


@dataclass(frozen=True)
class Entry:
    """One tensor (or a fused group) into one array (or split parts)."""

    rule: MapRule
    names: tuple[str, ...]
    slots: tuple[Slot, ...]


@dataclass
class WeightPlan:
    """What `load_weights` will do, checked: `entries` in rule order, the
    tensors `skipped`, the arrays `kept`, and the `diagnostics`."""

    checkpoint: Checkpoint
    leaves: list[Leaf]
    entries: list[Entry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """The mapping, one row per model array (or stack slice): model path,
        checkpoint name(s), transform, shape (the plan's mapping table)."""
        return [
            {
                "model": s.path.replace(" (stack slice)", ""),
                "checkpoint": ", ".join(e.names),
                "transform": _describe(e.rule, len(e.names), len(e.slots)),
                "shape": list(s.shape),
                "line": e.rule.line,
            }
            for e in self.entries
            for s in e.slots
        ]


def _describe(rule: MapRule, n: int, m: int) -> str:
    parts = [op if arg is None else f"{op} {list(arg)}" for op, arg in rule.ops]
    if rule.cast:
        parts.append("cast")
    if n > 1:
        parts.append(f"fuse {n} (axis {rule.axis})")
    if m > 1:
        parts.append(f"split {m} (axis {rule.axis})")
    return ", ".join(parts) or "-"


def _key(bindings: dict[str, int]) -> tuple:
    return tuple(sorted(bindings.items()))


def _by_target(rule: MapRule, leaves: list[Leaf]) -> list[dict[tuple, Slot]]:
    """Per model pattern of `rule`, the slot each binding of its captures names."""
    return [
        {_key(b): Slot(leaf, at) for leaf in leaves for b, at in _slots(t, leaf)}
        for t in rule.targets
    ]


def _hint(name: str, names: Iterable[str]) -> str:
    """`did you mean ...?` and a space, or nothing: a message's optional part."""
    hint = did_you_mean(name, names)
    return hint + " " if hint else ""


def _listing(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(f"`{i}`" for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _forward_shapes(rule: MapRule, shapes: list[tuple], slots: list[tuple]) -> str | None:
    """Why the checkpoint shapes do not become the slots' shapes through the
    rule's layout changes, fuse and split; None when they do."""
    axis = rule.axis
    whole = list(slots[0])
    if len(slots) > 1:
        if any(len(s) != len(whole) for s in slots) or not 0 <= axis < len(whole):
            return f"the arrays {[list(s) for s in slots]} cannot be split along axis {axis}"
        whole[axis] = sum(s[axis] for s in slots)
    piece = list(whole)
    if len(shapes) > 1:
        if not 0 <= axis < len(whole) or whole[axis] % len(shapes):
            return f"{list(whole)} cannot take {len(shapes)} tensors along axis {axis}"
        piece[axis] = whole[axis] // len(shapes)
    try:
        done = [_layouts(rule, shape, piece)[-1] for shape in shapes]
    except ValueError as e:
        return str(e)
    if len(done) > 1:
        first = done[0]
        if any(
            len(d) != len(first)
            or any(a != b for i, (a, b) in enumerate(zip(d, first)) if i != axis)
            for d in done
        ) or not 0 <= axis < len(first):
            return f"the tensors {[list(d) for d in done]} cannot be fused along axis {axis}"
        fused = list(first)
        fused[axis] = sum(d[axis] for d in done)
    else:
        fused = done[0]
    if fused == whole:
        return None
    shown = " and ".join(str(list(s)) for s in shapes)
    through = "" if not rule.ops else f" ({_describe(rule, 1, 1)} makes it {fused})"
    return f"the checkpoint's {shown}{through} does not fit the model's {list(whole)}"


def _layouts(rule: MapRule, shape: tuple, piece: list[int] | None = None) -> list[list[int]]:
    """A tensor's shape before each layout change of `rule`, and after the
    last. A `reshape` without a shape goes to `piece` (the model's part),
    or, where that is unknown (writing back), leaves the shape; a change
    that does not fit raises `ValueError`, which names the tensor's `shape`."""
    out = [list(shape)]
    for op, arg in rule.ops:
        current = out[-1]
        if op == "transpose":
            perm = list(range(len(current)))[::-1] if arg is None else list(arg)
            if len(perm) != len(current):
                raise ValueError(f"`transpose {perm}` does not fit a tensor of shape {list(shape)}")
            out.append([current[p] for p in perm])
            continue
        target = piece if arg is None else list(arg)
        if target is None:
            out.append(current)
            continue
        size, rest = math.prod(current), math.prod(d for d in target if d != -1)
        if -1 in target:
            if not rest or size % rest:
                raise ValueError(f"{list(shape)} cannot be reshaped into {target}")
            target = [size // rest if d == -1 else d for d in target]
        if math.prod(target) != size:
            raise ValueError(f"{list(shape)} cannot be reshaped into {target}")
        out.append(list(target))
    return out


def plan_weights(
    rules: WeightRules, model: Any, checkpoint: Checkpoint, state: Any = None
) -> WeightPlan:
    """Hold the rules, the checkpoint's header and the model's shapes (and
    `state`'s, for a `(model, state)` pair) to each other; no tensor is read."""
    leaves = model_leaves(model, state)
    plan = WeightPlan(checkpoint, leaves)
    source = rules.source
    names = list(checkpoint.tensors)

    def error(code: str, span: A.Span, **fields):
        plan.diagnostics.append(report(code, span=span, source=source, **fields))

    filled: dict[int, dict[tuple, int]] = {}
    prefixes: dict[int, set[tuple]] = {}
    used: set[str] = set()
    missing_names: list[str] = []
    live = [leaf for leaf in leaves if not leaf.derived]
    paths = [leaf.path for leaf in live]

    def globbed(lines: tuple, candidates: list[str], **variant) -> set[str]:
        """The names or paths that `skip` or `keep` lines name (E248 for a
        pattern that names none)."""
        hit: set[str] = set()
        for rule in lines:
            for g, string in rule.globs:
                hits = {c for c in candidates if g.match(c)}
                if not hits:
                    help = did_you_mean(g.text, candidates)
                    error("E248", string.span, **variant, help=help, text=g.text)
                hit |= hits
        return hit

    # A `skip` wins over a `map` whose pattern also covers the tensor
    # (`bn1.**` and `**.num_batches_tracked`): a skipped tensor is never read.
    skipped = globbed(rules.skips, names)
    for rule in rules.maps:
        by_target = _by_target(rule, live)
        by_source = [
            {_key(b): n for n in names if n not in skipped and (b := s.match(n)) is not None}
            for s in rule.sources
        ]
        keys = sorted(set().union(*by_target, *by_source))
        if not keys:
            probe = rule.sources[0].format({c.name: 0 for c in rule.sources[0].captures})
            near = {
                "checkpoint": suggest(probe, names),
                "model": suggest(rule.targets[0].text.replace("{", "").replace("}", ""), paths),
            }
            found = [f"the {k} has {_listing(v, 3)}" for k, v in near.items() if v]
            error("E240", rule.stmt.span, help="; ".join(found) or None)
            continue
        lacking: dict[int, list[str]] = {}
        lacking_for: dict[int, str | None] = {}
        absent: dict[int, list[str]] = {}
        bad_shapes: list[str] = []
        bad_dtype: list[str] = []
        doubled: list[tuple[Slot, int]] = []
        for key in keys:
            b = dict(key)
            got = [d.get(key) for d in by_source]
            slots = [d.get(key) for d in by_target]
            # One diagnostic per mistake: an array whose tensor is missing is
            # not also reported unfilled, nor a tensor whose array is missing
            # unread.
            used.update(n for n in got if n is not None)
            if None in got:
                for k, (s, n) in enumerate(zip(rule.sources, got)):
                    if n is None:
                        lacking.setdefault(k, []).append(s.format(b))
                        lacking_for.setdefault(k, next((sl.path for sl in slots if sl), None))
                for sl in slots:
                    if sl is not None:
                        filled.setdefault(sl.leaf.index, {}).setdefault(sl.at, rule.line)
                continue
            if None in slots:
                for k, (t, sl) in enumerate(zip(rule.targets, slots)):
                    if sl is None:
                        absent.setdefault(k, []).append(_format_path(t, b))
                continue
            tensors = [checkpoint.tensors[n] for n in got]
            why = _forward_shapes(rule, [t.shape for t in tensors], [s.shape for s in slots])
            if why is not None:
                # Still counted as filled: the line means to fill it, and one
                # diagnostic is enough.
                bad_shapes.append(f"`{got[0]}` into `{slots[0].path}`: {why}")
            wrong = not rule.cast and any(
                jnp.dtype(t.dtype) != s.leaf.dtype for t in tensors for s in slots
            )
            if wrong:
                bad_dtype.append(
                    f"`{got[0]}` is {tensors[0].dtype}, `{slots[0].path}` "
                    f"{slots[0].leaf.dtype.name}"
                )
            for s in slots:
                seen = filled.setdefault(s.leaf.index, {})
                pre = prefixes.setdefault(s.leaf.index, set())
                lines = [
                    seen[p] for p in (s.at, *(s.at[:i] for i in range(len(s.at)))) if p in seen
                ]
                if lines or s.at in pre:
                    doubled.append((s, lines[0] if lines else rule.line))
                    continue
                seen[s.at] = rule.line
                pre.update(s.at[:i] for i in range(len(s.at)))
            if why is None and not wrong:
                plan.entries.append(Entry(rule, tuple(got), tuple(slots)))  # type: ignore[arg-type]
        if doubled:
            first = doubled[0][1]
            error(
                "E247",
                rule.stmt.span,
                listing_value=_listing([s.path for s, _ in doubled]),
                value="is" if len(doubled) == 1 else "are",
                first=first,
                value2="it" if len(doubled) == 1 else "them",
                value3="" if first != rule.line else " (two bindings of this line name it)",
            )
        for k, missing in lacking.items():
            missing_names += missing
            error(
                "E241",
                rule.stmt.sources[k].span,
                listing_missing=_listing(missing),
                len_missing=len(missing),
                s="s" if len(missing) > 1 else "",
                value2=f", the first for `{lacking_for[k]}`)" if lacking_for.get(k) else ")",
                value3=_hint(missing[0], [n for n in names if n not in used]),
            )
        for k, missing in absent.items():
            error(
                "E242",
                rule.stmt.targets[k].span,
                listing_missing=_listing(missing),
                value=_hint(missing[0], paths),
            )
        if bad_shapes:
            hint = "add `with transpose`" if "transpose" not in str(rule.ops) else None
            error(
                "E243",
                rule.stmt.span,
                help=hint
                if hint and _transposed_fits(bad_shapes[0])
                else "change the layout with `transpose` or `reshape`, or map onto the right array",
                len_bad_shapes=len(bad_shapes),
                s="s" if len(bad_shapes) > 1 else "",
                bad_shapes=bad_shapes[0],
            )
        if bad_dtype:
            error(
                "E244",
                rule.stmt.span,
                bad_dtype=bad_dtype[0],
                value=f" (and {len(bad_dtype) - 1} more)" if len(bad_dtype) > 1 else "",
            )
    kept = globbed(rules.keeps, paths, variant="keep_model")
    plan.skipped = sorted(skipped - used)
    plan.kept = [leaf.path for leaf in leaves if leaf.path in kept]
    anchor = rules.anchor.span
    unused = [n for n in names if n not in used and n not in skipped]
    if unused:
        error(
            "E245",
            anchor,
            len_unused=len(unused),
            value="s are" if len(unused) > 1 else " is",
            listing_unused=_listing(unused),
            value2=_hint(unused[0], missing_names),
            unused=unused[0],
        )
    unfilled = []
    for leaf in live:
        if leaf.path in kept:
            continue
        seen = filled.get(leaf.index, {})
        covered = sum(math.prod(leaf.shape[len(at) :]) for at in seen)
        if not seen or covered != math.prod(leaf.shape):
            unfilled.append(
                leaf.path + ("" if not seen else f" ({len(seen)} slices of {leaf.shape[0]})")
            )
    if unfilled:
        error(
            "E246",
            anchor,
            len_unfilled=len(unfilled),
            value="s are" if len(unfilled) > 1 else " is",
            listing_unfilled=_listing(unfilled),
            value2=_hint(unfilled[0], unused),
            unfilled=unfilled[0],
        )
    plan.diagnostics.sort(key=position)
    return plan


def _transposed_fits(message: str) -> bool:
    found = re.findall(r"\[([0-9, ]*)\]", message)
    if len(found) < 2:
        return False
    return found[0].split(", ")[::-1] == found[-1].split(", ")


def _format_path(pattern: PathPattern, bindings: dict) -> str:
    steps: list[Step] = []
    for s in pattern.steps:
        if isinstance(s, RestStep):
            steps += [Index(int(p)) if p.isdigit() else Field(p) for p in bindings["**"].split(".")]
        elif isinstance(s, Index) and isinstance(s.value, Capture):
            steps.append(Index(int(s.value.show(bindings))))
        else:
            steps.append(s)
    return show_steps(steps)


# ---- loading ------------------------------------------------------------------


def _forward(rule: MapRule, arrays: list[np.ndarray], slots: list[Slot]) -> list[np.ndarray]:
    """The checkpoint tensors, in the model's layout, one per slot."""
    whole = list(slots[0].shape)
    if len(slots) > 1:
        whole[rule.axis] = sum(s.shape[rule.axis] for s in slots)
    piece = list(whole)
    if len(arrays) > 1:
        piece[rule.axis] = whole[rule.axis] // len(arrays)
    done = []
    for a in arrays:
        for op, arg in rule.ops:
            if op == "transpose":
                a = np.transpose(a, arg)
            else:
                a = a.reshape(piece if arg is None else arg)
        done.append(a)
    value = done[0] if len(done) == 1 else np.concatenate(done, axis=rule.axis)
    if len(slots) == 1:
        return [value]
    cuts = np.cumsum([s.shape[rule.axis] for s in slots])[:-1]
    return np.split(value, cuts, axis=rule.axis)


def load_weights(model: Any, plan: WeightPlan, state: Any = None) -> tuple[Any, Any]:
    """Run a checked plan: each tensor read once, in rule order; a stacked
    array is assembled on the host one slice at a time and placed when whole,
    so the host holds at most one array and one tensor beyond the model.
    Returns the model and its `state` (None when none was given)."""
    if any(d.severity == "error" for d in plan.diagnostics):
        raise SpecError(plan.diagnostics)
    flat, treedef = jax.tree_util.tree_flatten(model)
    new = list(flat)
    stated: dict[int, Any] = {}  # id(StateIndex) -> [index, {rest: value}]
    pending = collections.Counter(s.leaf.index for e in plan.entries for s in e.slots if s.at)
    buffers: dict[int, np.ndarray] = {}
    loaded_stats: set[tuple] = set()

    def put(leaf: Leaf, value: np.ndarray) -> None:
        if leaf.in_state:
            index, rest = leaf.state  # type: ignore[misc]
            stated.setdefault(id(index), [index, {}])[1][rest] = jax.device_put(value)
        else:
            # `device_put`, not `jnp.asarray`: the latter stages an op per new shape.
            old = flat[leaf.index]
            new[leaf.index] = jax.device_put(
                value, old.sharding if isinstance(old, jax.Array) else None
            )

    for e in plan.entries:
        [slot] = e.slots if len(e.slots) == 1 else [None]
        whole = slot is not None and not (slot.at or slot.leaf.in_state or e.rule.ops)
        sharding = getattr(flat[slot.leaf.index], "sharding", None) if whole else None
        if len(e.names) == 1 and sharding is not None and not sharding.is_fully_replicated:
            # A sharded array: each device reads only its slice of the tensor.
            name, leaf = e.names[0], slot.leaf
            new[leaf.index] = jax.make_array_from_callback(
                leaf.shape,
                sharding,
                lambda index, name=name, leaf=leaf: plan.checkpoint.read(name, index).astype(
                    leaf.dtype
                ),
            )
            continue
        arrays = [plan.checkpoint.read(n) for n in e.names]
        values = _forward(e.rule, arrays, list(e.slots))
        del arrays
        for s, value in zip(e.slots, values):
            leaf = s.leaf
            if value.dtype != leaf.dtype:
                value = value.astype(leaf.dtype)
            if leaf.steps and leaf.steps[-1] == Field("running_mean"):
                loaded_stats.add(leaf.steps[:-1])
            if not s.at:
                put(leaf, value)
                continue
            buf = buffers.get(leaf.index)
            if buf is None:
                buf = buffers[leaf.index] = np.empty(leaf.shape, leaf.dtype)
            buf[s.at] = value
            pending[leaf.index] -= 1
            if not pending[leaf.index]:
                put(leaf, buffers.pop(leaf.index))
        del values
    for leaf in plan.leaves:
        # A `BatchNorm` (mode "ema") whose statistics were loaded uses them
        # from its first step, as PyTorch's does.
        if leaf.derived and leaf.owner in loaded_stats:
            put(leaf, np.zeros(leaf.shape, leaf.dtype))
    model = jax.tree_util.tree_unflatten(treedef, new)
    if state is not None:
        # `State.set` retires the state it is called on: work on a copy, so
        # that the caller's state stays usable.
        leaves, tdef = jax.tree_util.tree_flatten(state)
        state = jax.tree_util.tree_unflatten(tdef, leaves)
        for index, parts in stated.values():
            merged = jax.tree_util.tree_map_with_path(
                lambda kp, v, parts=parts: parts.get(tuple(getattr(r, "idx", None) for r in kp), v),
                state.get(index),
            )
            state = state.set(index, merged)
    return model, state


# ---- writing back --------------------------------------------------------------


def _value(leaf: Leaf, flat: list, state: Any) -> np.ndarray:
    if leaf.in_state or (state is not None and leaf.state is not None):
        index, rest = leaf.state
        value = state.get(index)
        for r in rest:
            value = value[r]
        return np.asarray(value)
    return np.asarray(flat[leaf.index])


def _init_deleted(model: Any) -> bool:
    """Whether `model`'s `StateIndex`es hold no initial values (a model from
    `eqx.nn.make_with_state`: its state is all in its `State`)."""
    for node in jax.tree_util.tree_leaves(model, is_leaf=is_state_index):
        if is_state_index(node):
            return not any(is_array(x) for x in jax.tree_util.tree_leaves(node.init))
    return False


def export_weights(
    model: Any,
    rules: WeightRules,
    path: str | os.PathLike,
    *,
    reference: Checkpoint | None = None,
    state: Any = None,
) -> list[str]:
    """Write `model`'s arrays under the checkpoint's names (the `map` lines in
    reverse) to the safetensors file `path`; with the original checkpoint
    (`reference`), its shapes and dtypes are restored and its skipped
    tensors copied, so that the file loads where the original did. `state`
    (an `eqx.nn.State`) supplies the `BatchNorm` statistics after training.
    Returns the names written."""
    leaves = model_leaves(model, state if _init_deleted(model) else None)
    flat = jax.tree_util.tree_leaves(model)
    source = rules.source
    problems: list[Diagnostic] = []
    plan: dict[str, tuple] = {}  # name -> (dtype, shape, producer)
    for rule in rules.maps:
        reshapes = [arg for op, arg in rule.ops if op == "reshape"]
        if reference is None and (reshapes or rule.cast):
            needs = "reshape" if None in reshapes or not rule.cast else "cast"
            problems.append(report("E249", span=rule.stmt.span, source=source, value=needs))
            continue
        by_target = _by_target(rule, leaves)
        keys = sorted(set(by_target[0]).intersection(*by_target[1:]))
        for key in keys:
            b = dict(key)
            slots = [d[key] for d in by_target]
            names = [s.format(b) for s in rule.sources]
            if reference is not None and any(n not in reference.tensors for n in names):
                continue  # the original has no such tensor: nor will the copy
            refs = None if reference is None else [reference.tensors[n] for n in names]
            shapes = None if refs is None else [t.shape for t in refs]
            for k, n in enumerate(names):
                dtype = refs[k].dtype if refs else slots[0].leaf.dtype.name
                plan[n] = (dtype, shapes[k] if shapes else None, (rule, tuple(slots), k, shapes))
    if problems:
        raise SpecError(problems)
    if reference is not None:
        for g in [g for r in rules.skips for g, _ in r.globs]:
            for n, t in reference.tensors.items():
                if g.match(n) and n not in plan:
                    plan[n] = (t.dtype, t.shape, None)
    # Shapes not known from a reference come from running the rule backwards.
    cache: dict[tuple, list[np.ndarray]] = {}

    def produce(name: str) -> np.ndarray:
        dtype, _, producer = plan[name]
        if producer is None:
            assert reference is not None
            return reference.read(name)
        rule, slots, k, shapes = producer
        key = (id(rule), slots)
        if key not in cache:
            cache.clear()  # one group at a time on the host
            cache[key] = _backward(
                rule, [_value(s.leaf, flat, state)[s.at] for s in slots], shapes, len(rule.sources)
            )
        return cache[key][k].astype(jnp.dtype(dtype))

    specs = []
    for n, (dtype, shape, producer) in plan.items():
        if shape is None:
            shape = produce(n).shape
        specs.append(TensorSpec(n, jnp.dtype(dtype).name, tuple(shape)))
    atomic_write_with(path, lambda f: write_stream(f, specs, produce, None, {"format": "pt"}))
    return sorted(plan)


def _backward(
    rule: MapRule, values: list[np.ndarray], shapes: list[tuple] | None, n: int
) -> list[np.ndarray]:
    """The model's slots back in the checkpoint's layout, one per tensor."""
    whole = values[0] if len(values) == 1 else np.concatenate(values, axis=rule.axis)
    if n > 1:
        if shapes is not None:
            # The pieces' sizes along the axis: the tensors' shapes through the layout changes.
            sizes = [_layouts(rule, s)[-1][rule.axis] for s in shapes]
            pieces = np.split(whole, np.cumsum(sizes)[:-1], axis=rule.axis)
        else:
            pieces = np.split(whole, n, axis=rule.axis)
    else:
        pieces = [whole]
    out = []
    for k, a in enumerate(pieces):
        # Undo the layout changes, last first; a reshape returns to the shape
        # the tensor had before it (known from the reference).
        inputs = _layouts(rule, shapes[k]) if shapes is not None else None
        for i in reversed(range(len(rule.ops))):
            op, arg = rule.ops[i]
            if op == "transpose":
                perm = list(range(a.ndim))[::-1] if arg is None else list(arg)
                a = np.transpose(a, np.argsort(perm))
            else:
                assert inputs is not None
                a = a.reshape(inputs[i])
        out.append(np.ascontiguousarray(a))
    return out


# ---- LoRA adapters in PEFT's layout ----------------------------------------------

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Adapter:
    """A `LoRA` of the model with the checkpoint's name of its base module
    (`blocks.0.attn.qkv`), per layer of a stack (`at`)."""

    node: Any
    module: str
    at: tuple[int, ...]


def _adapters(model: Any, rules: WeightRules) -> list[Adapter]:
    """Each `LoRA` (each layer of a stacked one) with the name its base
    weight has in the checkpoint, by the `map` lines (else `SpecError`)."""
    found, problems = [], []
    is_lora = lambda x: isinstance(x, LoRA)  # noqa: E731
    for keypath, node in jax.tree_util.tree_flatten_with_path(model, is_leaf=is_lora)[0]:
        if not is_lora(node):
            continue
        steps, *_ = _logical(model, keypath)
        lead = tuple(node.lora_a.shape[:-2])
        out_features, in_features = node.lora_b.shape[-2], node.lora_a.shape[-1]
        weight = Leaf(
            -1, tuple(steps) + (Field("weight"),), lead + (out_features, in_features), None
        )
        named = [
            (rule, rule.sources[0].format(b), at)
            for rule in rules.maps
            if len(rule.sources) == len(rule.targets) == 1
            for b, at in _slots(rule.targets[0], weight)
        ]
        if not named:
            problems.append(
                report("E250", span=rules.anchor.span, source=rules.source, path=weight.path)
            )
            continue
        for rule, name, at in named:
            if rule.ops or not name.endswith(".weight"):
                problems.append(
                    report(
                        "E250",
                        variant="unnamed",
                        span=rule.stmt.span,
                        source=rules.source,
                        path=weight.path,
                        name=name,
                        value="its `map` changes the layout"
                        if rule.ops
                        else "the tensor's name does not end in `.weight`",
                    )
                )
                continue
            found.append(Adapter(node, name[: -len(".weight")], at))
    if problems:
        raise SpecError(problems)
    return found


def export_peft(model: Any, rules: WeightRules, folder: str | os.PathLike) -> list[str]:
    """Write `model`'s LoRA adapters as PEFT does: `folder/adapter_model.safetensors`
    (`base_model.model.NAME.lora_A.weight`, `lora_B.weight`) and
    `folder/adapter_config.json` (`r`, `lora_alpha`, `target_modules`)."""
    adapters = _adapters(model, rules)
    if not adapters:
        raise UsageError.of("E250", variant="model_has", file=str(folder))
    tensors: dict[str, np.ndarray] = {}
    ranks, alphas = {}, {}
    for a in adapters:
        lora_a = np.asarray(plain(a.node.lora_a))[a.at]
        lora_b = np.asarray(plain(a.node.lora_b))[a.at]
        scale = np.asarray(plain(a.node.scale))
        scale = float(scale[a.at] if scale.ndim else scale)
        prefix = f"base_model.model.{a.module}"
        tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(lora_a)
        tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(lora_b)
        ranks[a.module] = int(lora_a.shape[0])
        alphas[a.module] = scale * lora_a.shape[0]
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": r,
        "lora_alpha": _number(alpha),
        "target_modules": sorted(ranks),
        "rank_pattern": {m: k for m, k in ranks.items() if k != r},
        "alpha_pattern": {m: _number(k) for m, k in alphas.items() if k != alpha},
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    folder = as_path(folder, "PEFT folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UsageError.of("E448", file=folder, folder=folder, error=e.strerror or e) from None
    specs = [TensorSpec(n, v.dtype.name, v.shape) for n, v in tensors.items()]
    atomic_write_with(
        os.path.join(folder, PEFT_WEIGHTS),
        lambda f: write_stream(f, specs, tensors.__getitem__, None, {"format": "pt"}),
    )
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write_with(os.path.join(folder, PEFT_CONFIG), lambda f: f.write(text.encode()))
    return sorted(tensors)


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def load_peft(model: Any, rules: WeightRules, folder: str | os.PathLike) -> Any:
    """`model` (its spec's `lora` rules applied, at the ranks the adapter was
    trained with) with its LoRA factors read from a PEFT adapter folder;
    every adapter filled and every PEFT tensor used, else diagnostics."""
    folder = as_path(folder, "PEFT folder")
    checkpoint = open_checkpoint(os.path.join(folder, PEFT_WEIGHTS))
    try:
        with open(os.path.join(folder, PEFT_CONFIG), encoding="utf-8") as f:
            config = json.load(f)
        alpha, r = float(config["lora_alpha"]), int(config["r"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError.of(
            "E341",
            variant="unreadable",
            file=folder,
            folder=folder,
            peft_config=PEFT_CONFIG,
            error=e,
        ) from None
    adapters = _adapters(model, rules)
    wanted = {
        f"base_model.model.{a.module}.{part}.weight": (a, part.lower())
        for a in adapters
        for part in ("lora_A", "lora_B")
    }
    missing = [n for n in wanted if n not in checkpoint.tensors]
    unused = [n for n in checkpoint.tensors if n not in wanted]
    if missing or unused:
        raise ModelFileError.of(
            "E245",
            variant="peft_adapter",
            file=folder,
            folder=folder,
            value=f"it lacks {_listing(missing, 3)}" if missing else "",
            value2="; " if missing and unused else "",
            value3=f"it also holds {_listing(unused, 3)}" if unused else "",
            listing_sorted_value=_listing(sorted(config.get("target_modules") or []), 4),
        )
    values: dict[int, dict[str, np.ndarray]] = {}
    for name, (a, field_name) in wanted.items():
        store = values.setdefault(id(a.node), {"node": a.node})
        if field_name not in store:
            store[field_name] = np.array(plain(getattr(a.node, field_name)))
        tensor = checkpoint.read(name)
        target = store[field_name][a.at] if a.at else store[field_name]
        if tensor.shape != target.shape:
            raise ModelFileError.of(
                "E243",
                variant="model_adapter",
                file=folder,
                name=name,
                list_shape=list(tensor.shape),
                list_shape2=list(target.shape),
                r=r,
                number_alpha=_number(alpha),
            )
        if a.at:
            store[field_name][a.at] = tensor
        else:
            store[field_name] = tensor.astype(target.dtype)
    nodes = [v["node"] for v in values.values()]
    is_node = lambda x: any(x is n for n in nodes)  # noqa: E731

    def fill(node):
        if not is_node(node):
            return node
        v, scale = values[id(node)], plain(node.scale)
        scale = jnp.full(jnp.shape(scale), alpha / r, jnp.result_type(scale))
        new = (jnp.asarray(v["lora_a"]), jnp.asarray(v["lora_b"]), scale)
        return eqx.tree_at(lambda m: (m.lora_a, m.lora_b, m.scale), node, new)

    return jax.tree_util.tree_map(fill, model, is_leaf=is_node)
