"""`eqxform train`: a spec's optimiser and rules, a data set, a loop.

The loop uses `make_step`. Ctrl-C stops it between two steps (the step in
flight finishes), and the last good model is written before exit; with
`--checkpoint-every K` it is also on disk every K steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import stat
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _limits
from .. import _names as N
from .. import _registry as R
from .._errors import UsageError, first_line
from .._modules import Ensemble, split_state
from .._passes._forward import output_shape
from .._values import format_bytes, half_of_memory
from ._optim import optimizer as build_optimizer
from ._step import make_step


def _mse(pred, y):
    return jnp.mean((pred - y) ** 2)


def _cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# The functions of the losses named in `_names.LOSSES` (`tests/test_names.py`
# holds the two to each other).
_PER_BATCH = {"mse": _mse, "cross_entropy": _cross_entropy}


def make_loss(
    kind: str | Callable,
    *,
    stateful: bool = False,
    members: int | None = None,
    output: str | None = None,
    per_member: bool = False,
) -> Callable:
    """The training loss of a model on a batch `(x, y)`.

    The model is called per example under `jax.vmap(..., axis_name="batch")`
    (so that BatchNorm finds its axis), a stateful one as `model(x, state)`
    with the state shared by the batch. `output` names the part of what the
    model returns that the loss compares with `y` (`logits`, `0`; see
    `pick`). `kind` is a built-in loss (`mse`, `cross_entropy`) or a function
    `(pred, y) -> scalar` of the batch's outputs and targets. For an ensemble,
    whose outputs carry a member axis, the loss is the sum of the members'
    losses: each member's gradient is that of its own loss, and the members
    train independently; with `per_member`, the vector of the members' losses
    (for `make_step(..., members=N)`).
    """
    per_batch = _PER_BATCH[kind] if isinstance(kind, str) else kind

    def total(pred, y):
        if members is None:
            return per_batch(pred, y)
        # pred: (batch, members, ...); y: (batch, ...) for every member.
        each = jax.vmap(per_batch, in_axes=(1, None))(pred, y)
        return each if per_member else jnp.sum(each)

    if stateful:

        def loss(model, state, x, y):
            def one(x, state):
                out, state = call(model, x, state)
                return pick(out, output), state

            pred, state = jax.vmap(one, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
                x, state
            )
            return total(pred, y), state

        return loss

    def loss(model, x, y):
        return total(jax.vmap(lambda x: pick(call(model, x), output), axis_name="batch")(x), y)

    return loss


def output_steps(path: str | None) -> list[str | int]:
    """`--model-output logits`, `0`, `[0]`, `out.logits`, `[1].hidden` as steps:
    attribute (or mapping key) names and sequence indices; None for none."""
    if path is None:
        return []
    steps: list[str | int] = []
    for part in path.replace("[", ".").replace("]", "").split("."):
        if not part:
            continue
        if part.lstrip("-").isdigit():
            steps.append(int(part))
        elif part.isidentifier():
            steps.append(part)
        else:
            raise _output_error(path, f"`{part}` is neither a name nor an index")
    if not steps:
        raise _output_error(path, "it names nothing")
    return steps


def pick(out: Any, path: str | None) -> Any:
    """The part of a model's output that `path` names (all of it for None)."""
    for step in output_steps(path):
        if isinstance(step, int):
            out = out[step]
        elif isinstance(out, dict):
            out = out[step]
        else:
            out = getattr(out, step)
    return out


def _output_error(path: str, why: str, help: str | None = None) -> UsageError:
    return UsageError.of("E424", help=help, path=path, why=why)


def describe_output(out: Any, depth: int = 0) -> str:
    """What a model returned, in a line: `f32[5,33]`, `a tuple of 2
    (f32[1,8,64], None)`, `an ESM2Result (hidden: f32[5,32], logits: f32[5,33])`."""
    if hasattr(out, "shape") and hasattr(out, "dtype"):
        short = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
        name = np.dtype(out.dtype).name
        return f"{short.get(name, name)}[{','.join(str(d) for d in out.shape)}]"
    if out is None:
        return "None"
    if depth > 1:
        return type(out).__name__
    parts, kind = _parts(out), type(out).__name__
    if parts is None:
        return f"a `{kind}`"
    if isinstance(out, (tuple, list)) and not hasattr(type(out), "_fields"):
        items = ", ".join(describe_output(v, depth + 1) for _, v in parts[:4])
        return f"a {kind} of {len(out)} ({items}{', ...' if len(out) > 4 else ''})"
    shown = parts[:4] if isinstance(out, dict) else parts[:6]
    items = ", ".join(f"{k}: {describe_output(v, depth + 1)}" for k, v in shown)
    if isinstance(out, dict):
        return f"a dict ({items})"
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} `{kind}` ({items})"


def _parts(out: Any) -> list[tuple[str, Any]] | None:
    """The parts of `out` that `--model-output` can name (name, value), or None."""
    if isinstance(out, (tuple, list)) and not hasattr(type(out), "_fields"):
        return [(str(i), v) for i, v in enumerate(out)]
    if isinstance(out, dict):
        return [(str(k), v) for k, v in out.items()]
    if dataclasses.is_dataclass(out):
        return [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    if hasattr(type(out), "_fields"):
        return list(zip(type(out)._fields, out))
    return None


def _output_names(out: Any) -> list[str]:
    return [name for name, _ in _parts(out) or []]


def picked_output(out: Any, path: str | None) -> Any:
    """`pick` on a model's output (shapes), or a diagnostic that shows what
    the model returned."""
    try:
        return pick(out, path)
    except (AttributeError, IndexError, KeyError, TypeError):
        names = _output_names(out)
        raise _output_error(
            path,
            f"the model returns {describe_output(out)}, which has no such part",
            "name one of " + ", ".join(f"`{n}`" for n in names) if names else None,
        ) from None


def resolve_loss(name: str, allow: tuple[str, ...] = ()) -> str | Callable:
    """`--loss`: a built-in loss, or `package.module:function` of an allowed
    package (a function `(pred, y) -> scalar` of a batch)."""
    if name in _PER_BATCH:
        return name
    if ":" not in name:
        raise UsageError.of("E425", name=name, losses=", ".join(f"`{n}`" for n in N.LOSSES))
    try:
        fn = R.resolve_constructor(name, allow)
    except R.NotAllowed as e:
        top = e.module.split(".", 1)[0]
        raise UsageError.of(
            "E425", variant="comes_from", name=name, module=e.module, top=top
        ) from None
    except Exception as e:
        raise UsageError.of(
            "E425", variant="cannot_import", name=name, error=first_line(e)
        ) from None
    if not callable(fn):
        raise UsageError.of("E425", variant="function", name=name, name2=type(fn).__name__)
    return fn


def _data_error(code: str, file: str, /, **fields) -> UsageError:
    return UsageError.of(code, file=file, **fields)


def _bad_data(code: str, path: str, /, **fields) -> UsageError:
    """The error of the data file at `path`, which its message names."""
    return _data_error(code, path, path=path, **fields)


def load_data(path: str) -> tuple[Any, np.ndarray]:
    """Arrays `x` and `y` of an `.npz` file; for a model called with several
    inputs, `x0`, `x1`, ... in place of `x` (given back as a tuple, in order).

    The file is checked before any array is read: it is a zip of `.npy`
    members only; the headers of `x` and `y` (read with numpy's header reader,
    nothing unpickled) give real numbers of a shape whose bytes the member
    holds and that fit in memory. Only then are the two arrays loaded."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        raise _bad_data("E420", path, variant="no_file" if info is None else "not_a_file")
    try:
        headers = _npz_headers(path)
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        # A zip (that was checked first) whose directory, lengths or checksums
        # are wrong.
        raise _bad_data("E528", path, error=e) from None
    names = sorted(headers)
    inputs = input_names(names)
    if not inputs or "y" not in names:
        raise _bad_data("E420", path, value=", ".join(f"`{n}`" for n in names) or "none")
    keys = (*inputs, "y")
    total = sum(headers[k][2] for k in keys)
    # The limit, and half the machine's memory (the arrays are copied once
    # more onto the device).
    limit = min(_limits.MAX_DATA_BYTES, half_of_memory(_limits.MAX_DATA_BYTES))
    if total > limit:
        raise _bad_data(
            "E527", path, size_total=format_bytes(total), size_limit=format_bytes(limit)
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in keys}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise _bad_data("E528", path, error=first_line(e)) from None
    for key, array in arrays.items():
        if array.shape != headers[key][0] or array.dtype != headers[key][1]:
            raise _bad_data("E528", path, variant="changed_while", key=key)
    y = arrays["y"]
    for key in inputs:
        x = arrays[key]
        if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
            raise _data_error(
                "E420",
                path,
                variant="rows",
                name=key,
                list_shape=list(x.shape),
                list_shape2=list(y.shape),
            )
    if len(y) == 0:
        raise _bad_data("E420", path, variant="empty")
    for key, array in arrays.items():
        check_finite(array, key, path)
    x = arrays["x"] if inputs == ("x",) else tuple(arrays[k] for k in inputs)
    return x, y


def in_model_dtype(subject: Any, x: Any) -> Any:
    """The floating rows of `x` in the model's floating dtype, where all its
    floating arrays have one and it is not theirs (a model cast to bfloat16
    trains on the float32 rows an `.npz` holds, as a hand-written loop casts
    its batches); else `x` as it is."""
    dtypes = {
        a.dtype
        for a in jax.tree_util.tree_leaves(split_state(subject)[0])
        if eqx.is_inexact_array(a)
    }
    if len(dtypes) != 1:
        return x
    (dtype,) = dtypes
    if not jnp.issubdtype(dtype, jnp.floating):
        return x

    def cast(a):
        return a.astype(dtype) if np.issubdtype(a.dtype, np.floating) and a.dtype != dtype else a

    return jax.tree_util.tree_map(cast, x)


def input_names(names) -> tuple[str, ...]:
    """The arrays of a data file that are the model's inputs: `x`, or `x0`,
    `x1`, ... (numbered from 0 with none missing); () where neither is."""
    if "x" in names:
        return ("x",)
    numbered = [n for n in names if n[:1] == "x" and n[1:].isdigit() and n[1:].isascii()]
    inputs = tuple(f"x{k}" for k in range(len(numbered)))
    return inputs if sorted(inputs) == sorted(numbered) else ()


def examples(x: Any) -> int:
    """The number of examples (rows) of a model's inputs: an array, or a
    tuple of arrays with one row per example each."""
    return len(x[0] if isinstance(x, tuple) else x)


def call(model: Any, x: Any, *rest: Any) -> Any:
    """The model on one example's inputs (a tuple: its arguments in order)."""
    return model(*x, *rest) if isinstance(x, tuple) else model(x, *rest)


def check_finite(array: np.ndarray, key: str, path: str) -> None:
    """Training data holds no NaN and no infinity: one would make every loss
    after it NaN. The first bad element is named by its index."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    where = tuple(int(i) for i in np.argwhere(~finite)[0])
    count = int(finite.size - np.count_nonzero(finite))
    raise _bad_data(
        "E529",
        path,
        key=key,
        array=array[where],
        list_where=list(where),
        count=count,
        s="s" if count != 1 else "",
    )


def _npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """(shape, dtype, bytes) of every array of an `.npz`, from the headers
    alone; every member must be an `.npy` array of real numbers whose bytes
    the member holds."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if not zipfile.is_zipfile(path):
        single = magic == b"\x93NUMPY"
        raise _bad_data(
            "E525",
            path,
            value="a single `.npy` array"
            if single
            else "not an `.npz` file (a zip of `.npy` arrays)",
        )
    out = {}
    with zipfile.ZipFile(path) as z:
        for member in z.infolist():
            name = member.filename
            if not name.endswith(".npy"):
                raise _bad_data("E525", path, variant="holds_which", name=name)
            key = name[: -len(".npy")]
            with z.open(member) as f:
                try:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        read = np.lib.format.read_array_header_1_0
                    elif version == (2, 0):
                        read = np.lib.format.read_array_header_2_0
                    else:
                        raise ValueError(f"`.npy` version {version[0]}.{version[1]} is not read")
                    shape, _, dtype = read(f, max_header_size=_limits.MAX_NPY_HEADER_BYTES)
                except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as e:
                    raise _bad_data(
                        "E525",
                        path,
                        variant="readable_npy",
                        name=name,
                        error=first_line(e)[:200],
                    ) from None
                offset = f.tell()
            if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
                kind = {
                    "c": "complex numbers",
                    "O": "Python objects",
                    "U": "strings",
                    "S": "bytes",
                    "M": "dates",
                    "m": "time deltas",
                }.get(dtype.kind, "records" if dtype.fields is not None else f"`{dtype}`")
                raise _bad_data("E526", path, key=key, kind=kind, dtype=dtype)
            if any(type(d) is not int or d < 0 for d in shape):
                raise _bad_data("E525", path, variant="has_shape", key=key, shape=shape)
            claimed = math.prod(shape) * dtype.itemsize
            held = member.file_size - offset
            if claimed != held:
                raise _bad_data(
                    "E527",
                    path,
                    variant="claims",
                    key=key,
                    list_shape=list(shape),
                    dtype=dtype,
                    size_claimed=format_bytes(claimed),
                    size_max_held=format_bytes(max(held, 0)),
                )
            out[key] = (tuple(shape), dtype, claimed)
    return out


def toy_data(
    subject: Any,
    loss: Any,
    inputs=None,
    count: int = 512,
    seed: int = 0,
    output: str | None = None,
):
    """A built-in task: `y = sin(x A) B` (or its argmax, for `cross_entropy`),
    with `x` of the model's declared input (`input` lines) or, for models with
    `in_size` and `out_size` such as `MLP`, of `in_size` features; `y` of the
    model's output shape."""
    model, _ = split_state(subject)
    core = model.model if isinstance(model, Ensemble) else model
    rng = np.random.default_rng(seed)
    if inputs:
        if len(inputs) != 1:
            raise UsageError.of("E421", len_inputs=len(inputs))
        shape, dtype = tuple(inputs[0].shape), np.dtype(inputs[0].dtype)
        out = picked_output(output_shape(subject, inputs), output)
        if not hasattr(out, "shape"):
            raise _tuple_output("built-in data", out, loss)
        out_shape = tuple(out.shape)[1 if isinstance(model, Ensemble) else 0 :]
    else:
        in_size, out_size = getattr(core, "in_size", None), getattr(core, "out_size", None)
        if not isinstance(in_size, int) or not isinstance(out_size, int):
            raise UsageError.of("E421", variant="needs_model", name=type(core).__name__)
        shape, dtype, out_shape = (in_size,), np.dtype(np.float32), (out_size,)
    if np.issubdtype(dtype, np.floating):
        x = rng.uniform(-1, 1, (count, *shape)).astype(dtype)
    else:
        x = rng.integers(0, 2, (count, *shape)).astype(dtype)
    features = int(np.prod(shape))
    a = rng.normal(size=(features, 16)).astype(np.float32) / np.sqrt(features)
    outputs = int(np.prod(out_shape)) if out_shape else 1
    b = rng.normal(size=(16, outputs)).astype(np.float32) / 4
    y = np.sin(x.reshape(count, -1).astype(np.float32) @ a * 3) @ b
    if loss == "cross_entropy":
        return x, np.argmax(y, axis=1).astype(np.int32)
    return x, y.reshape(count, *out_shape).astype(np.float32)


def _tuple_output(where: str, out: Any, loss: Any = "mse") -> UsageError:
    names = _output_names(out)
    example = "logits" if "logits" in names or not names else names[0]
    return UsageError.of(
        "E423",
        file=where,
        describe_output_out=describe_output(out),
        loss=loss,
        example=example,
        value=" (one of " + ", ".join(f"`{n}`" for n in names) + ")" if len(names) > 1 else "",
    )


def check_fits(
    subject: Any,
    x: np.ndarray,
    y: np.ndarray,
    loss: Any,
    where: str,
    output: str | None = None,
) -> None:
    """The model takes rows of `x` and gives outputs that `y` can be compared
    with: checked on shapes alone, before any step is compiled. A loss of the
    user's own is checked on shapes too: it must give one number."""
    inputs = x if isinstance(x, tuple) else (x,)
    if any(np.iscomplexobj(a) for a in inputs) or np.iscomplexobj(y):
        raise _data_error("E420", where, variant="real_numbers")
    model, _ = split_state(subject)
    one = model.model if isinstance(model, Ensemble) else model
    if not callable(one):
        raise _data_error("E420", where, variant="not_callable", name=type(one).__name__)
    try:
        whole = output_shape(
            subject, tuple(jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in inputs)
        )
    except Exception as e:  # the model's own complaint about the input
        raise _data_error(
            "E420",
            where,
            variant="model_does",
            text="`x`" if len(inputs) == 1 else ", ".join(f"`x{k}`" for k in range(len(inputs))),
            list_shape=", ".join(str(list(a.shape[1:])) for a in inputs),
            error=first_line(e),
        ) from None
    out = picked_output(whole, output)
    if callable(loss):
        _check_own_loss(loss, out, y, isinstance(model, Ensemble), where)
        return
    if not hasattr(out, "shape"):
        raise _tuple_output(where, out, loss)
    shape = tuple(out.shape)[1 if isinstance(model, Ensemble) else 0 :]  # one member's output
    if loss == "mse" and shape != tuple(y.shape[1:]):
        raise _data_error(
            "E420",
            where,
            variant="model_gives",
            list_shape=list(shape),
            value=" per member" if isinstance(model, Ensemble) else "",
            list_shape2=list(y.shape[1:]),
            list_value=list((len(y), *shape)),
            value2="; for class labels use `--loss cross_entropy`"
            if y.ndim == 1 and np.issubdtype(y.dtype, np.integer)
            else "",
        )
    if loss == "cross_entropy":
        # One label per row of logits: `[N]` for `[classes]` outputs, `[N, L]`
        # for `[L, classes]` (a label per token).
        if not np.issubdtype(y.dtype, np.integer) or tuple(y.shape[1:]) != shape[:-1]:
            want = "[" + ", ".join(["N", *map(str, shape[:-1])]) + "]"
            raise _data_error(
                "E420",
                where,
                variant="loss_cross",
                help=_labels_help(y),
                want=want,
                typed_y=_typed(y),
            )
        if not shape or (y.size and (y.min() < 0 or y.max() >= shape[-1])):
            classes = shape[-1] if shape else None
            found = f"; they run from {y.min()} to {y.max()}" if y.size else ""
            raise _data_error(
                "E420",
                where,
                variant="labels_lie",
                help=f"the model has {classes} outputs, one per class: give labels from 0 to "
                f"{classes - 1}"
                if classes is not None
                else "`cross_entropy` needs a model whose output is one vector of class scores",
                value=classes if classes is not None else "?",
                found=found,
            )


def _check_own_loss(loss: Callable, out: Any, y: np.ndarray, ensemble: bool, where: str) -> None:
    """A loss of the user's own, tried on shapes: `loss(pred, y)` of a batch
    gives one number."""
    name = f"{getattr(loss, '__module__', '?')}:{getattr(loss, '__qualname__', loss)}"
    batch = 2

    def batched(s):  # a batch of one model's outputs (an ensemble's: of one member's)
        if not hasattr(s, "shape"):
            return s
        return jax.ShapeDtypeStruct((batch, *s.shape[1 if ensemble else 0 :]), s.dtype)

    pred = jax.tree_util.tree_map(batched, out)
    target = jax.ShapeDtypeStruct((batch, *y.shape[1:]), y.dtype)
    try:
        value = jax.eval_shape(loss, pred, target)
    except Exception as e:
        raise _data_error(
            "E425",
            where,
            variant="fails_on",
            name=name,
            describe_output_out=describe_output(out),
            describe_output_target=describe_output(target),
            error=first_line(e),
        ) from None
    if not (
        hasattr(value, "shape") and value.shape == () and jnp.issubdtype(value.dtype, jnp.floating)
    ):
        raise _data_error(
            "E425",
            where,
            variant="gives_one",
            name=name,
            describe_output_value=describe_output(value),
        )


def _typed(a: np.ndarray) -> str:
    """`f32[256,3]`: an array's dtype and shape as `input` lines write them."""
    short = {long: s for s, long in reversed(list(N.INPUT_DTYPES.items()))}
    name = np.dtype(a.dtype).name
    return f"{short.get(name, name)}[{','.join(map(str, a.shape))}]"


def _labels_help(y: np.ndarray) -> str:
    if y.ndim == 2 and np.issubdtype(y.dtype, np.number):
        return (
            "one row of scores or a one-hot row per example is not a label: save "
            "`y=y.argmax(axis=1).astype(numpy.int32)`, or train on these rows with `--loss mse`"
        )
    if y.ndim == 1:
        return (
            "save the class indices as integers: `y=y.astype(numpy.int32)`, or train on real "
            "targets with `--loss mse`"
        )
    return "save one integer class index per example: `numpy.savez(path, x=x, y=labels)`"


def _host(value: Any) -> np.ndarray:
    """A replicated loss (one number, or one per member) on the host, also
    when it spans several processes."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        value = value.addressable_data(0)
    return np.asarray(value, np.float64)


def _scalar(value: Any) -> float:
    return float(_host(value))


def _live_mean(losses: np.ndarray, diverged: Mapping[int, int]) -> float:
    """The mean loss of the members that have not diverged (of all, when
    every one has)."""
    live = [k for k in range(len(losses)) if k not in diverged]
    return float(np.mean(losses[live or list(range(len(losses)))]))


@dataclass
class Result:
    """What `train` did: the fields of `eqxform.TrainResult` that the loop
    knows (not `ensemble` and `members`), which that class describes."""

    model: Any
    steps: int
    loss: float | None
    interrupted: bool
    nonfinite: int | None = None
    nonfinite_what: str = ""
    diverged: dict[int, int] = dataclasses.field(default_factory=dict)


# `member_losses` evaluates at most this many examples at once.
EVAL_CHUNK = 1024


@functools.lru_cache(maxsize=16)
def _member_loss_fn(loss: str | Callable, stateful: bool, output: str | None, ensemble: bool):
    """The compiled loss of each member (of a plain model: its one loss), made
    once per loss, so that `train`'s reports and final losses compile once."""
    one = make_loss(loss, stateful=stateful, output=output)

    def per_member(m, s, xb, yb):
        return one(m, s, xb, yb)[0] if s is not None else one(m, xb, yb)

    if ensemble:
        # Over the member axis, each member is a plain model (`Ensemble` acts
        # as one member on one member's arrays); a state carries it too.
        fn = eqx.filter_vmap(per_member, in_axes=(eqx.if_array(0), eqx.if_array(0), None, None))
    else:

        def fn(m, s, xb, yb):
            return jnp.reshape(per_member(m, s, xb, yb), (1,))

    return eqx.filter_jit(fn)


def member_losses(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    loss: str | Callable = "mse",
    *,
    output: str | None = None,
    chunk: int = EVAL_CHUNK,
) -> np.ndarray:
    """The loss of each member of an ensemble on `(x, y)` (a plain model: one
    value), averaged over chunks of at most `chunk` examples weighted by their
    size (the mean loss itself for `mse` and `cross_entropy`). A model with an
    `eqx.nn.State` is evaluated with it as it is (inference)."""
    model_only, state = split_state(model)
    key = (loss, state is not None, output, isinstance(model_only, Ensemble))
    try:
        fn = _member_loss_fn(*key)
    except TypeError:  # a loss function that cannot be a cache key
        fn = _member_loss_fn.__wrapped__(*key)
    total = 0.0
    for start in range(0, examples(x), chunk):
        xb = jax.tree_util.tree_map(lambda a: jnp.asarray(a[start : start + chunk]), x)
        yb = jnp.asarray(y[start : start + chunk])
        total = total + np.asarray(fn(model_only, state, xb, yb), np.float64) * len(yb)
    return total / examples(x)


@jax.jit
def _rows(xs: Any, ys: jax.Array, idx) -> tuple[Any, jax.Array]:
    """A batch: the rows `idx` of `xs` (an array or a tuple of them) and
    `ys`, in one dispatch (indexing each on its own runs several small
    programs per step)."""
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), (xs, ys))


def _rows_on_host(xs: Any, ys: np.ndarray, idx) -> tuple[Any, np.ndarray]:
    return jax.tree_util.tree_map(lambda a: a[idx], (xs, ys))


def every_tenth(done: int, steps: int) -> bool:
    """`train`'s default reporting: step 1, every 10th step, the last."""
    return done == 1 or done % 10 == 0 or done == steps


def train(
    program,
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    loss: str | Callable = "mse",
    seed: int = 0,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[Any, int], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    report: Callable[[int, int], bool] = every_tenth,
    mesh: Any = None,
    batch_axis: str | None = None,
    output: str | None = None,
    on_members: Callable[[int, np.ndarray, dict[int, int]], None] | None = None,
) -> Result:
    """Train `model` for `steps` steps on batches of `(x, y)`.

    `on_step(done, loss)` is called after the steps `report(done, steps)`
    picks (step 1's loss is the initial model's, on the first batch). The
    loop stops at the first step whose loss or updated parameters are not
    finite: the model returned is the one before that step, and `nonfinite`
    names the step. The check runs inside the compiled step; the loop reads
    its result every 10 steps, at checkpoints and at the end (the same steps
    in every process), so it waits for the device there, not at each step.

    An ensemble (a sweep) trains on when some of its members diverge: a
    member whose loss or update is not finite stops at that step (its arrays
    kept as they were before it, inside the compiled step) and is named in
    `Result.diverged`; only when every member has diverged does the loop stop
    as a single model's does. `on_members(done, losses, diverged)` is called
    at the reported steps with each member's loss on that step's batch (the
    step's own: the model before its update; NaN for a diverged member) and
    the members diverged so far; `on_step` gets the mean of the others.
    """
    if batch_size > examples(x):
        raise UsageError.of("E422", batch_size=batch_size, len_x=examples(x))
    model_only, state = split_state(model)
    members = model_only.count if isinstance(model_only, Ensemble) else None
    step = make_step(
        make_loss(
            loss,
            stateful=state is not None,
            members=members,
            output=output,
            per_member=members is not None,
        ),
        build_optimizer(program, model_only),
        model_only,
        state=state,
        mesh=mesh,
        batch_axis=batch_axis,
        stop_if_nonfinite=True,
        members=members,
    )
    # On a mesh the batches stay on the host: the step splits each over the
    # devices (of every process) itself. Else the data sits on the device and
    # each batch is taken there, by one compiled gather.
    on_mesh = step.mesh is not None
    xs, ys = (x, y) if on_mesh else jax.tree_util.tree_map(jnp.asarray, (x, y))
    rows = _rows_on_host if on_mesh else _rows
    rng = np.random.default_rng(seed)
    order = rng.permutation(examples(x))
    cursor = 0
    stop = {"now": False}

    def on_sigint(signum, frame):
        if stop["now"]:
            raise KeyboardInterrupt
        stop["now"] = True

    # The losses of the last steps, on the device: read only to say which
    # value a failing step had.
    recent: dict[int, Any] = {}
    previous = signal.signal(signal.SIGINT, on_sigint)
    done, last, bad = 0, None, None
    try:
        for i in range(steps):
            if stop["now"]:
                break
            if cursor + batch_size > len(order):
                order, cursor = rng.permutation(examples(x)), 0
            idx = order[cursor : cursor + batch_size]
            cursor += batch_size
            due = on_step is not None and report(i + 1, steps)
            value = step(*rows(xs, ys, idx))
            done = i + 1
            recent[done] = value
            recent.pop(done - 10, None)
            checkpoint = bool(checkpoint_every and on_checkpoint and done % checkpoint_every == 0)
            # At the same steps in every process of a run (not at the steps
            # this process reports): they stop together.
            if checkpoint or done % 10 == 0 or done == steps:
                bad = step.nonfinite_step
                if bad is not None:
                    break
            if due and members is None:
                last = _scalar(value)
                on_step(done, last)
            elif due:
                # The step's own losses, one per member: the model before
                # this step's update, on this step's batch.
                losses, diverged = _host(value), step.diverged
                losses[list(diverged)] = np.nan
                last = _live_mean(losses, diverged)
                on_step(done, last)
                if on_members is not None:
                    on_members(done, losses, diverged)
            if checkpoint:
                on_checkpoint(step.result, done)
    finally:
        signal.signal(signal.SIGINT, previous)
    if bad is None and done:
        bad = step.nonfinite_step
    diverged = step.diverged if done else {}
    if bad is not None:
        # For an ensemble: what the last member to diverge did.
        last_member = max(diverged, key=diverged.get) if diverged else None
        what = _what_failed(recent.get(bad), last_member)
        if last_member is not None:
            what = f"every member diverged; the last, member {last_member}: {what}"
        return Result(step.result, bad - 1, last, stop["now"], bad, what, diverged)
    if done and last is None:
        last = _scalar(value) if members is None else _live_mean(_host(value), diverged)
    return Result(step.result, done, last, stop["now"], diverged=diverged)


def _what_failed(loss: Any, member: int | None = None) -> str:
    """What was not finite at a failing step: its loss, or (its loss finite)
    the parameters its update made; of `member`, for an ensemble's."""
    if loss is None:
        return "its loss or its update was not finite"
    value = float(_host(loss)[member]) if member is not None else _scalar(loss)
    if not math.isfinite(value):
        return f"its loss is {value}"
    return f"its update made parameters non-finite (its loss was {value:.4g})"
