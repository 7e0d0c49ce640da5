"""The optimiser a spec describes: its `optimizer` directive, `lr` and
`weight_decay` groups, and `freeze`.

Labels come from a function of the parameters themselves (`optax.partition`
calls it on the tree it is given), so labels and parameters cannot mismatch.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from .. import _ast as A
from .. import _names as N
from .._build import to_python
from .._diagnostics import Diagnostic
from .._errors import UsageError
from .._expr import evaluate
from .._io import leaf_name
from .._select import context
from ._wrappers import frozen_paths

FROZEN = "frozen"
DEFAULT = "default"


def _call_parts(expr: A.Expr, env) -> tuple[str, dict[str, Any]]:
    if isinstance(expr, A.Name):
        return expr.id, {}
    assert isinstance(expr, A.Call)
    positional = N.OPTIMIZERS[expr.callee].positional
    kwargs = {}
    for i, a in enumerate(expr.args):
        kwargs[a.name or positional[i]] = to_python(evaluate(a.value, env))
    return expr.callee, kwargs


def base_optimizer(program) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of the spec's `optimizer` directive."""
    stmt = next((s for s in program.spec.statements if isinstance(s, A.OptimizerStmt)), None)
    if stmt is None:
        raise UsageError(
            Diagnostic(
                "E410",
                "the spec has no `optimizer` directive",
                file=program.name,
                help="add one, e.g. `optimizer adamw(learning_rate=1e-3)`",
            )
        )
    return _call_parts(stmt.value, program.env)


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


def groups(program, model) -> dict[str, tuple[float, float | None]]:
    """Per array name, its (learning-rate scale, weight decay); later rules win.

    `lr` and `weight_decay` rules select on `model` as it is given (the model
    after every rule of the spec).
    """
    out: dict[str, tuple[float, float | None]] = {}
    for p in program.passes:
        if p.action is None or p.action.name not in N.OPTIMIZER_ACTIONS:
            continue
        impl = p.impl
        for leaf in impl.arrays(impl.select(model)):
            value = impl.eval(p.action.arg, leaf, context(leaf))
            name = ".".join(str(v) for _, v in leaf.path)
            scale, decay = out.get(name, (1.0, None))
            if p.action.name == "lr":
                scale = float(value)
            else:
                decay = float(value)
            out[name] = (scale, decay)
    return out


def labels(program, model) -> dict[str, str]:
    """Per array name, its optimiser label."""
    frozen = set(frozen_paths(model))
    out = {}
    for name, (scale, decay) in groups(program, model).items():
        out[name] = f"lr*{scale:g}" + ("" if decay is None else f",wd={decay:g}")
    for name in frozen:
        out[name] = FROZEN
    return out


def optimizer(program, model) -> optax.GradientTransformation:
    """The `optax` optimiser the spec describes, for `model`.

    **Arguments:**

    - `program`: a compiled spec with an `optimizer` directive.
    - `model`: the model it will train (after `program.apply`).

    **Returns:** an `optax.GradientTransformation` built with `optax.partition`:
    the base optimiser per `lr`/`weight_decay` group, and `optax.set_to_zero()`
    for frozen parameters, so that neither gradient nor weight decay moves them.
    Initialise it with `eqx.filter(model, eqx.is_inexact_array)`.
    """
    name, kwargs = base_optimizer(program)
    by_name = labels(program, model)
    transforms: dict[str, optax.GradientTransformation] = {
        DEFAULT: _make(name, kwargs, 1.0, None),
        FROZEN: optax.set_to_zero(),
    }
    for scale, decay in set(groups(program, model).values()):
        label = f"lr*{scale:g}" + ("" if decay is None else f",wd={decay:g}")
        transforms[label] = _make(name, kwargs, scale, decay)

    def label_tree(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: by_name.get(leaf_name(path), DEFAULT), params
        )

    return optax.partition(transforms, label_tree)
