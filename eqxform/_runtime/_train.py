"""`eqxform train`: a spec's optimiser and rules, a data set, a loop.

The loop uses `make_step`. Ctrl-C stops it between two steps (the step in
flight finishes), and the last good model is written before exit; with
`--checkpoint-every K` it is also on disk every K steps.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._diagnostics import Diagnostic
from .._errors import UsageError
from .._modules import resolve
from ._optim import optimizer as build_optimizer
from ._step import make_step


def mse(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def cross_entropy(model, x, y):
    logits = jax.vmap(model)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


LOSSES: dict[str, Callable] = {"mse": mse, "cross_entropy": cross_entropy}


def _data_error(path: str, message: str, help: str | None = None) -> UsageError:
    return UsageError(Diagnostic("E420", message, file=path, help=help))


def load_data(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `x` and `y` of an `.npz` file, checked for presence and length."""
    if not Path(path).is_file():
        raise _data_error(path, f"data file `{path}` does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            if "x" not in names or "y" not in names:
                raise _data_error(
                    path,
                    f"`{path}` must hold arrays named `x` and `y`; it holds "
                    + (", ".join(f"`{n}`" for n in names) or "none"),
                    "write it with `numpy.savez(path, x=inputs, y=targets)`",
                )
            x, y = data["x"], data["y"]
    except UsageError:
        raise
    except (ValueError, OSError) as e:
        raise _data_error(path, f"`{path}` is not a readable .npz file: {e}") from None
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
        raise _data_error(
            path,
            f"`x` and `y` must have one row per example: `x` is {list(x.shape)}, "
            f"`y` is {list(y.shape)}",
        )
    if len(x) == 0:
        raise _data_error(path, f"`{path}` holds no examples")
    return x, y


def toy_data(model: Any, loss: str, count: int = 512, seed: int = 0):
    """A built-in regression (or classification) task for models with
    `in_size` and `out_size`, such as `MLP`: y = sin(x A) B."""
    in_size = getattr(model, "in_size", None)
    out_size = getattr(model, "out_size", None)
    if not isinstance(in_size, int) or not isinstance(out_size, int):
        raise UsageError(
            Diagnostic(
                "E421",
                f"the built-in data set needs a model with integer `in_size` and `out_size` "
                f"(an `MLP`); this model is a `{type(model).__name__}`",
                help="pass your data with `--data data.npz` (arrays `x` and `y`)",
            )
        )
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (count, in_size)).astype(np.float32)
    a = rng.normal(size=(in_size, 16)).astype(np.float32)
    b = rng.normal(size=(16, out_size)).astype(np.float32) / 4
    y = np.sin(x @ a) @ b
    if loss == "cross_entropy":
        y = np.argmax(y, axis=1).astype(np.int32)
    return x, y.astype(np.float32) if loss == "mse" else y


def check_fits(model: Any, x: np.ndarray, y: np.ndarray, loss: str, where: str) -> None:
    try:
        out = eqx.filter_eval_shape(lambda m, a: resolve(m)(a), model, x[0])
    except Exception as e:  # the model's own complaint about the input
        raise _data_error(
            where,
            f"the model does not accept rows of `x` of shape {list(x.shape[1:])}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
        ) from None
    if loss == "mse" and tuple(out.shape) != tuple(y.shape[1:]):
        raise _data_error(
            where,
            f"the model gives outputs of shape {list(out.shape)}, but rows of `y` have shape "
            f"{list(y.shape[1:])}",
        )
    if loss == "cross_entropy":
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise _data_error(
                where,
                f"`cross_entropy` needs integer class labels of shape [N], not "
                f"{y.dtype}{list(y.shape)}",
            )
        if out.ndim != 1 or (len(y) and (y.min() < 0 or y.max() >= out.shape[0])):
            raise _data_error(
                where, f"labels must lie in [0, {out.shape[0] if out.ndim == 1 else '?'})"
            )


@dataclass
class Result:
    model: Any
    steps: int
    loss: float | None
    interrupted: bool


def train(
    program,
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    loss: str = "mse",
    seed: int = 0,
    checkpoint_every: int | None = None,
    on_checkpoint: Callable[[Any, int], None] | None = None,
    on_step: Callable[[int, float | None], None] | None = None,
) -> Result:
    if batch_size > len(x):
        raise UsageError(
            Diagnostic(
                "E422",
                f"`--batch-size {batch_size}` is larger than the data set ({len(x)} examples)",
                help=f"use at most {len(x)}",
            )
        )
    step = make_step(LOSSES[loss], build_optimizer(program, model), model)
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    cursor = 0
    stop = {"now": False}

    def on_sigint(signum, frame):
        if stop["now"]:
            raise KeyboardInterrupt
        stop["now"] = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    done, last = 0, None
    try:
        for i in range(steps):
            if stop["now"]:
                break
            if cursor + batch_size > len(order):
                order, cursor = rng.permutation(len(x)), 0
            idx = order[cursor : cursor + batch_size]
            cursor += batch_size
            value = step(xs[idx], ys[idx])
            done = i + 1
            if on_step is not None and (done % 10 == 0 or done == steps):
                last = float(value)
                on_step(done, last)
            if checkpoint_every and on_checkpoint and done % checkpoint_every == 0:
                on_checkpoint(step.model, done)
    finally:
        signal.signal(signal.SIGINT, previous)
    if done and last is None:
        last = float(value)
    return Result(step.model, done, last, stop["now"])
