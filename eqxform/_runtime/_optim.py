"""The optimiser a spec describes: its `optimizer` directive, `lr` and
`weight_decay` groups, and `freeze`.

Every parameter is named by its JAX key path, the same path selection gives
and model files write, so labels, masks and parameters cannot mismatch. Labels
come from a function of the parameters themselves (`optax.partition` calls it
on the tree it is given); frozen parameters go through
`optax.selective_transform`, which gives them no optimiser state at all.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import optax

from .. import _names as N
from .._build import to_python
from .._diagnostics import Diagnostic
from .._errors import UsageError
from .._modules import Frozen
from .._select import array_leaves, evaluate_at, matched_arrays, select_rule, tensor_name, walk

DEFAULT = "default"


def base_optimizer(program) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of the spec's `optimizer` directive."""
    if program.optimizer is None:
        raise UsageError(
            Diagnostic(
                "E410",
                "the spec has no `optimizer` directive",
                file=program.name,
                help="add one, e.g. `optimizer adamw(learning_rate=1e-3)`",
            )
        )
    name, kwargs = program.optimizer
    return name, {k: to_python(v) for k, v in kwargs.items()}


def _make(name: str, kwargs: dict[str, Any], lr_scale: float, decay: float | None):
    kwargs = dict(kwargs)
    kwargs["learning_rate"] = kwargs["learning_rate"] * lr_scale
    takes_decay = "weight_decay" in N.OPTIMIZERS[name].names
    if decay is not None and takes_decay:
        kwargs["weight_decay"] = decay
    opt = getattr(optax, name)(**kwargs)
    if decay is not None and not takes_decay and decay != 0:
        # An optimiser without decoupled decay gets an L2 term on the gradient.
        opt = optax.chain(optax.add_decayed_weights(decay), opt)
    return opt


def groups(program, model) -> dict[tuple, tuple[float, float | None]]:
    """Per array path, its (learning-rate scale, weight decay); later rules win.

    `lr` and `weight_decay` rules select on `model` as it is given (the model
    after every rule of the spec).
    """
    out: dict[tuple, tuple[float, float | None]] = {}
    for group in program.groups:
        rule, action = group.rule, group.action
        nodes = select_rule(rule, model, program.env, program.source)
        for leaf in matched_arrays(nodes, action.name, rule.selector, program.source):
            value = evaluate_at(action.arg, leaf, program.env, program.source)
            scale, decay = out.get(leaf.path, (1.0, None))
            if action.name == "lr":
                scale = float(value)
            else:
                decay = float(value)
            out[leaf.path] = (scale, decay)
    return out


def frozen_paths(model: Any) -> set[tuple]:
    """Key paths of the arrays inside a `Frozen`, wherever it sits (inside
    another wrapper included)."""
    out = set()
    for node in walk(model):
        if isinstance(node.obj, Frozen):
            out.update(leaf.path for leaf in array_leaves(node, False))
    return out


def _label(scale: float, decay: float | None) -> str:
    return f"lr*{scale:g}" + ("" if decay is None else f",wd={decay:g}")


def labels(program, model) -> dict[str, str]:
    """Per tensor name, its optimiser label (`frozen`, `lr*0.5`, ...); the
    parameters not listed get the base optimiser."""
    out = {tensor_name(p): _label(*v) for p, v in groups(program, model).items()}
    out.update({tensor_name(p): "frozen" for p in frozen_paths(model)})
    return out


def optimizer(program, model) -> optax.GradientTransformation:
    """The `optax` optimiser the spec describes, for `model`.

    **Arguments:**

    - `program`: a compiled spec with an `optimizer` directive.
    - `model`: the model it will train (after `program.apply`).

    **Returns:** an `optax.GradientTransformation`: the base optimiser per
    `lr`/`weight_decay` group (`optax.partition`), inside
    `optax.selective_transform`, which holds frozen parameters still (no
    gradient, no weight decay) and keeps no state for them. Initialise it with
    `eqx.filter(model, eqx.is_inexact_array)`.
    """
    name, kwargs = base_optimizer(program)
    settings = groups(program, model)
    by_path = {p: _label(*v) for p, v in settings.items()}
    transforms = {DEFAULT: _make(name, kwargs, 1.0, None)}
    for scale, decay in set(settings.values()):
        transforms[_label(scale, decay)] = _make(name, kwargs, scale, decay)

    def label_tree(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: by_path.get(tuple(path), DEFAULT), params
        )

    frozen = frozen_paths(model)
    mask = jax.tree_util.tree_map_with_path(
        lambda path, _: tuple(path) in frozen, eqx.filter(model, eqx.is_inexact_array)
    )
    return optax.selective_transform(optax.partition(transforms, label_tree), freeze_mask=mask)
