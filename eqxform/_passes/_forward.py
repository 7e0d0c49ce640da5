"""Running a model on its declared inputs: the forward pass that `plan`
checks under `eval_shape` and that `apply` runs to verify a `stack`.

A model is called with one argument per `input` line, then its state when it
is a stateful `(model, state)` pair (`model(*inputs, state)`, as Equinox's
stateful layers are called), `inference=True` where its `__call__` takes it
and a `key=` only where it requires one. Wrappers are resolved first, as at a training step. The call is made on
a batch of two examples under `jax.vmap(..., axis_name="batch")`, as a
training loop makes it, so that layers that reduce over the batch
(`eqx.nn.BatchNorm`) find their axis; the state is shared by the batch.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from .. import _ast as A
from .. import _names as N
from .._modules import Ensemble, Frozen, LoRA, resolve, split_state, state_indices, unfrozen
from .._select import get, is_array, walk


def input_structs(inputs: tuple[A.InputStmt, ...]) -> tuple[jax.ShapeDtypeStruct, ...]:
    return tuple(
        jax.ShapeDtypeStruct(tuple(int(d) for d in i.shape), jnp.dtype(N.INPUT_DTYPES[i.dtype]))
        for i in inputs
    )


def random_inputs(structs, key) -> tuple[jax.Array, ...]:
    """A batch of inputs of the declared shapes and dtypes: normal floats,
    small integers (valid token ids and class labels), random booleans."""
    out = []
    for i, s in enumerate(batched(structs)):
        k = jax.random.fold_in(key, i)
        if jnp.issubdtype(s.dtype, jnp.floating):
            out.append(jax.random.normal(k, s.shape, s.dtype))
        elif s.dtype == jnp.bool_:
            out.append(jax.random.bernoulli(k, 0.5, s.shape))
        else:
            out.append(jax.random.randint(k, s.shape, 0, 2).astype(s.dtype))
    return tuple(out)


def _extra(model: Any) -> dict:
    """Keyword arguments that make the call deterministic: `inference=True`
    where `__call__` takes it, and a `key` where it requires one; an
    ensemble passes them to its members, whose `__call__` says."""
    member = model.model if isinstance(model, Ensemble) else model
    try:
        params = inspect.signature(type(member).__call__).parameters
    except (TypeError, ValueError):
        return {}
    extra: dict = {}
    if "inference" in params:
        extra["inference"] = True
    key = params.get("key")
    if key is not None and key.default is inspect.Parameter.empty:
        extra["key"] = jax.random.key(0)
    return extra


BATCH = 2


def batched(structs) -> tuple[jax.ShapeDtypeStruct, ...]:
    return tuple(jax.ShapeDtypeStruct((BATCH, *s.shape), s.dtype) for s in structs)


def call(subject: Any, xs: tuple) -> Any:
    """`model(*x)` for each example `x` of the batch `xs`, or
    `model(*x, state)` for a `(model, state)` pair (returning `(y, state)`).
    The model runs in inference mode (`eqx.nn.inference_mode`: no dropout),
    so that two models that should agree give the same numbers."""
    model, state = split_state(subject)
    model = resolve(eqx.nn.inference_mode(model))
    extra = _extra(model)
    if state is None:
        return jax.vmap(lambda *x: model(*x, **extra), axis_name="batch")(*xs)
    return jax.vmap(lambda *x: model(*x, state, **extra), axis_name="batch", out_axes=(0, None))(
        *xs
    )


def output_shape(subject: Any, structs) -> Any:
    """The output of the forward pass on one example (`ShapeDtypeStruct`s);
    raises what the model raises on these inputs."""
    out = eqx.filter_eval_shape(call, subject, batched(structs))
    if split_state(subject)[1] is not None and isinstance(out, tuple):
        out = out[0]
    return jax.tree_util.tree_map(
        lambda x: (
            jax.ShapeDtypeStruct(x.shape[1:], x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x
        ),
        out,
    )


def outputs(subject: Any, xs: tuple) -> list[np.ndarray]:
    """The arrays the model gives on the batch `xs` (a stateful model's output
    only)."""
    out = eqx.filter_jit(call)(subject, xs)
    if split_state(subject)[1] is not None and isinstance(out, tuple):
        out = out[0]
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(out) if eqx.is_array(x)]


def read_arrays(subject: Any, structs, then: Any = None) -> tuple[list, set[int]]:
    """The array leaves of `subject` (arrays or their `ShapeDtypeStruct`s,
    with their key paths), and which of them the forward pass on `structs`
    reads: those some output depends on, in the jaxpr of the pass (traced,
    nothing computed). With `then`, the pass runs on `then(subject)`, traced
    with it, so what it reads is still named by `subject`'s leaves. An
    equation counts whole: every input of one whose output is needed is
    read (a scan that ignores an input still reads it)."""
    params, static = eqx.partition(subject, is_array)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)

    def forward(arrays, xs):
        model = eqx.combine(jax.tree_util.tree_unflatten(treedef, arrays), static)
        return call(model if then is None else then(model), xs)

    jaxpr = jax.make_jaxpr(forward)([x for _, x in leaves], batched(structs)).jaxpr
    live = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in live for v in eqn.outvars):
            live.update(v for v in eqn.invars if not isinstance(v, Literal))
    return leaves, {i for i, v in enumerate(jaxpr.invars[: len(leaves)]) if v in live}


def missing_state(subject: Any) -> bool:
    """Is `subject` a stateful model (it holds `eqx.nn.StateIndex`es, as
    `eqx.nn.BatchNorm` does) given without its state?"""
    model, state = split_state(subject)
    return state is None and bool(state_indices(model))


def _dot_shapes(jaxpr: Any, out: set) -> None:
    """The (lhs, rhs, result) shapes of every `dot_general` in `jaxpr` and the
    jaxprs inside it (scan bodies, jitted calls, branches)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (tuple(v.aval.shape) for v in eqn.invars[:2])
            out.add((lhs[-2:], rhs[-2:], tuple(eqn.outvars[0].aval.shape)[-2:]))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _dot_shapes(inner, out)


def formed_adapters(subject: Any, structs) -> list[tuple[str, tuple[int, int]]]:
    """The `LoRA` modules whose adapted matrix `W + scale * B A` the forward
    pass forms, because the model reads their `weight` rather than calling
    them: (path, (out, in)) for each.

    Found in the jaxpr of the pass on the skeleton: each adapter is given a
    rank of its own for this trace (the rank is only a shape, and no array is
    made), so a product of an `(out, r)` and an `(r, in)` matrix into an
    `(out, in)` one names its adapter exactly, inside scans and vmaps too."""
    model, state = split_state(subject)
    paths, widened, wanted = [], [], {}
    for node in walk(model):
        if not isinstance(node.obj, LoRA):
            continue
        lora = node.obj
        a_in, b_in = unfrozen(lora.lora_a), unfrozen(lora.lora_b)
        rank = 100_003 + len(paths)  # no dimension of a real model
        new_a = jax.ShapeDtypeStruct(tuple(a_in.shape)[:-2] + (rank, a_in.shape[-1]), a_in.dtype)
        new_b = jax.ShapeDtypeStruct(tuple(b_in.shape)[:-1] + (rank,), b_in.dtype)
        lora = eqx.tree_at(
            lambda m: (
                m.lora_a.value if isinstance(m.lora_a, Frozen) else m.lora_a,
                m.lora_b.value if isinstance(m.lora_b, Frozen) else m.lora_b,
            ),
            lora,
            (new_a, new_b),
        )
        out_f, in_f = int(b_in.shape[-2]), int(a_in.shape[-1])
        wanted[((out_f, rank), (rank, in_f), (out_f, in_f))] = (node.text, (out_f, in_f))
        paths.append(node.path)
        widened.append(lora)
    if not paths:
        return []
    model = eqx.tree_at(lambda m: [get(m, p) for p in paths], model, widened)
    probe = model if state is None else (model, state)
    jaxpr = eqx.filter_make_jaxpr(call)(probe, batched(structs))[0]
    found: set = set()
    _dot_shapes(jaxpr.jaxpr, found)
    return [wanted[k] for k in wanted if k in found]


def retyped(tree: Any, dtype: Any, within: type | None = None) -> Any:
    """`tree` (a skeleton, or input structs) with its real floating-point
    arrays in `dtype`; only those inside modules of the class `within` when it
    is given. What a `cast` to `dtype` of those modules gives the forward pass."""

    def cast(x):
        if isinstance(x, jax.ShapeDtypeStruct) and jnp.issubdtype(x.dtype, jnp.floating):
            return jax.ShapeDtypeStruct(x.shape, dtype)
        return x

    if within is None:
        return jax.tree_util.tree_map(cast, tree)
    inside = lambda x: isinstance(x, within)  # noqa: E731
    return jax.tree_util.tree_map(
        lambda x: jax.tree_util.tree_map(cast, x) if inside(x) else x, tree, is_leaf=inside
    )


def _is_jax(frame) -> bool:
    module = frame.f_globals.get("__name__", "")
    return module.split(".")[0] in ("jax", "jaxlib")


def _public_name(frame) -> str:
    """The public name of the JAX function running in `frame`
    (`jax._src.numpy.fft.rfftn` is `jnp.fft.rfftn`): its private module
    without `_src`, or the first package above it that exports the same
    function; its bare name when none does."""
    name = frame.f_code.co_name
    parts = frame.f_globals.get("__name__", "").replace("._src", "").split(".")
    while parts:
        found = getattr(sys.modules.get(".".join(parts)), name, None)
        if found is not None and getattr(inspect.unwrap(found), "__code__", None) is frame.f_code:
            public = ".".join(parts)
            if public == "jax.numpy" or public.startswith("jax.numpy."):
                public = "jnp" + public[len("jax.numpy") :]
            return f"{public}.{name}"
        parts.pop()
    return name


def failing_call(error: BaseException) -> tuple[str, Any, str | None]:
    """Where in the model's forward pass `error` was raised, from its
    traceback: the function that raised it (the JAX function the model's code
    called, by its public name, `jnp.fft.rfftn`; else the model's own
    function), the innermost module whose code made the call (None when no
    module's did), and that module's path in the model (None where it cannot
    be told, as inside a `lax.scan` over stacked layers)."""
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    # The last step from the model's code into JAX is the call that failed.
    boundary = len(frames) - 1
    for k in range(len(frames) - 1, 0, -1):
        if _is_jax(frames[k]) and not _is_jax(frames[k - 1]):
            boundary = k
            break
    op = frames[boundary] if frames else None
    if op is None:
        return type(error).__name__, None, None
    name = _public_name(op) if _is_jax(op) else op.f_code.co_qualname
    modules = [
        m for f in frames[: boundary + 1] if isinstance(m := f.f_locals.get("self"), eqx.Module)
    ]
    if not modules:
        return name, None, None
    owner, root = modules[-1], modules[0]
    path = next((n.text for n in walk(root) if n.obj is owner and n.path), None)
    return name, owner, path
