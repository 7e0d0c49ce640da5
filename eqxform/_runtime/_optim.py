"""The optimiser a spec describes: its `optimizer` directive, `lr` and
`weight_decay` groups, and `freeze`.

Every parameter is named by its JAX key path, the same path selection gives
and model files write, so labels, masks and parameters cannot mismatch. Labels
come from a function of the parameters themselves (`optax.partition` calls it
on the tree it is given); frozen parameters go through
`optax.selective_transform`, which gives them no optimiser state at all.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _names as N
from .._build import nbytes, to_python
from .._errors import UsageError
from .._modules import Ensemble, Frozen
from .._plan import group_value
from .._select import (
    array_leaves,
    in_state,
    inexact,
    is_array,
    matched_arrays,
    select_rule,
    stack_axis,
    tensor_name,
    walk,
)
from .._values import is_number

DEFAULT = "default"


def base_optimizer(program) -> tuple[str, dict[str, Any]]:
    """(name, arguments) of the spec's `optimizer` directive."""
    if program.optimizer is None:
        raise UsageError.of("E410", file=program.name)
    name, kwargs = program.optimizer
    return name, {k: to_python(v) for k, v in kwargs.items()}


def _make(name: str, kwargs: dict[str, Any], lr_scale: float, decay: float | None, mask=None):
    """The base optimiser with a group's learning-rate scale and decay;
    `mask` (params -> bools), where given, says which arrays it decays."""
    kwargs = dict(kwargs)
    kwargs["learning_rate"] = kwargs["learning_rate"] * lr_scale
    takes_decay = "weight_decay" in N.OPTIMIZERS[name].names
    if decay is not None and takes_decay:
        kwargs["weight_decay"] = decay
    if mask is not None and "mask" in N.OPTIMIZERS[name].names:
        kwargs.setdefault("mask", mask)  # a `mask=` of the spec's own wins
    opt = getattr(optax, name)(**kwargs)
    if decay is not None and not takes_decay and (not is_number(decay) or decay != 0):
        # An optimiser without decoupled decay gets an L2 term on the gradient.
        opt = optax.chain(optax.add_decayed_weights(decay, mask), opt)
    return opt


@dataclass
class Setting:
    """What the spec says of one array: its learning-rate scale and weight
    decay (None: the optimiser's own), each one number or, when rules act on
    some layers of a stack, one per layer along `axis`."""

    scale: Any = 1.0
    decay: Any = None
    axis: int | None = None

    @property
    def label(self) -> str:
        return f"lr*{self.scale:g}" + ("" if self.decay is None else f",wd={self.decay:g}")


def groups(program, model) -> dict[tuple, Setting]:
    """Per array path, what the `lr` and `weight_decay` rules say; later
    rules win. They select on `model` as it is given (the model after every
    rule of the spec); on some layers of a stack they set those layers only."""
    out: dict[tuple, Setting] = {}
    for group in program.groups:
        rule, action = group.rule, group.action
        nodes = select_rule(rule, model, program.env, program.source)
        for leaf in matched_arrays(nodes, action.name, rule.selector, program.source):
            value = group_value(program, action, leaf)
            setting = out.get(leaf.path, Setting())
            field = "scale" if action.name == "lr" else "decay"
            if leaf.layers is None and setting.axis is None:
                setattr(setting, field, value)
            else:
                if setting.axis is None:  # one number per layer from now on
                    # From the end, as `Frozen.axis`: the same in a sweep's member view.
                    axis = stack_axis(leaf) - leaf.obj.ndim
                    count = leaf.obj.shape[axis]
                    decay = None if setting.decay is None else np.full(count, setting.decay, float)
                    setting = Setting(np.full(count, setting.scale, float), decay, axis)
                if getattr(setting, field) is None:
                    setting.decay = np.full(leaf.obj.shape[setting.axis], np.nan)
                layers = slice(None) if leaf.layers is None else sorted(leaf.layers)
                getattr(setting, field)[layers] = value
            out[leaf.path] = setting
    return out


def frozen_paths(model: Any) -> dict[tuple, Frozen]:
    """Key paths of the arrays inside a `Frozen` (wherever it sits, inside
    another wrapper included), each with its `Frozen`."""
    out = {}
    for node in walk(model):
        if isinstance(node.obj, Frozen):
            out.update({leaf.path: node.obj for leaf in array_leaves(node, False)})
    return out


def state_paths(model: Any) -> set[tuple]:
    """Key paths of the floating-point initial values of model state (held in
    an `eqx.nn.StateIndex`: running statistics, caches). No gradient reaches
    them, and the optimiser's own weight decay leaves them: else a model
    rebuilt from them (`eqx.nn.State(model)`) would start from shrunk ones."""
    return {
        n.path for n in walk(model) if is_array(n.obj) and inexact(n.obj) and in_state(n.parents)
    }


def _decayed(still: set[tuple]):
    """The decay mask (`params -> bools`, as optax's `mask=` takes it) that
    is False at the paths `still`."""
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: tuple(path) not in still, params
    )


def _along(vector, axis: int, ndim: int) -> jax.Array:
    shape = [1] * ndim
    shape[axis] = len(vector)
    return jnp.asarray(vector, jnp.float32).reshape(shape)


def _layered(
    name: str, kwargs: dict, setting: Setting, frozen: Frozen | None, count, axis, state=False
):
    """The optimiser of one stacked array whose layers differ: the base
    optimiser, then per layer the learning-rate scale, the weight decay (as
    the base optimiser applies it: decoupled, or added to the gradient; for
    model state, `state`, only where a rule sets it) and the freezing."""
    scale = np.ones(count) * setting.scale if setting.axis is None else setting.scale
    takes_decay = "weight_decay" in N.OPTIMIZERS[name].names
    own = 0.0
    if takes_decay and not state:
        default = inspect.signature(getattr(optax, name)).parameters["weight_decay"].default
        own = kwargs.get("weight_decay", default)
    decay = setting.decay
    if not is_number(own):
        # A sweep's weight decay: a traced number per member.
        decay = np.full(count, np.nan) if decay is None else np.broadcast_to(decay, (count,))
        decay = jnp.where(jnp.isnan(jnp.asarray(decay, jnp.float32)), own, decay)
    elif decay is None:
        decay = np.full(count, own, float)
    elif np.ndim(decay) == 0:
        decay = np.full(count, decay, float)
    else:
        decay = np.where(np.isnan(decay), own, decay)
    keep = np.ones(count)
    if frozen is not None:
        keep[list(frozen.layers)] = 0.0
    lr = kwargs["learning_rate"]
    kw = dict(kwargs)
    each = optax.stateless_with_tree_map  # `u -> f(u, p)` on each update
    parts = []
    if takes_decay:
        kw["weight_decay"] = 0.0
    else:
        parts.append(each(lambda u, p: u + _along(decay, axis, u.ndim) * p))
    parts.append(getattr(optax, name)(**kw))
    parts.append(each(lambda u, p: u * _along(scale, axis, u.ndim)))
    if takes_decay:
        parts.append(each(lambda u, p: u - lr * _along(scale * decay, axis, u.ndim) * p))
    parts.append(each(lambda u, p: u * _along(keep, axis, u.ndim)))
    return optax.chain(*parts)


def optimizer(program, model) -> optax.GradientTransformation:
    """The `optax` optimiser the spec describes, for `model`.

    **Arguments:**

    - `program`: a compiled spec with an `optimizer` directive.
    - `model`: the model it will train (after `program.apply`).

    **Returns:** an `optax.GradientTransformation`: the base optimiser per
    `lr`/`weight_decay` group (`optax.partition`), inside
    `optax.selective_transform`, which holds frozen parameters still (no
    gradient, no weight decay) and keeps no state for them. A stacked array
    whose layers the rules treat differently gets its own optimiser that
    scales, decays and freezes per layer. Initialise it with
    `eqx.filter(model, eqx.is_inexact_array)`.
    """
    if getattr(program, "sweep", None) is not None and isinstance(model, Ensemble):
        return sweep_optimizer(program, model)
    name, kwargs = base_optimizer(program)
    settings = groups(program, model)
    # A per-layer setting (`axis` set) gets its own label in `_assemble`.
    labels = {path: s.label for path, s in settings.items() if s.axis is None}
    return _assemble(name, kwargs, settings, labels, model)


def _assemble(name: str, kwargs: dict, settings: dict, labels: dict, model):
    """The optimiser of `optimizer`, from the base optimiser's arguments and
    each array's `Setting` (its group by `labels`); the numbers may be traced
    (a sweep builds it per member inside `vmap`)."""
    frozen = frozen_paths(model)
    # Model state the optimiser would decay by itself (no rule sets its decay).
    still = {p for p in state_paths(model) if settings.get(p, Setting()).decay is None}
    mask = None
    if still:
        mask = _decayed(still)
        if "weight_decay" in N.OPTIMIZERS[name].names and "mask" not in N.OPTIMIZERS[name].names:
            # Its decay acts inside its moments, where optax takes no mask:
            # the state is a group of its own, without decay.
            settings, labels = dict(settings), dict(labels)
            for path in still:
                setting = settings.get(path, Setting())
                if setting.axis is None:
                    settings[path] = Setting(setting.scale, 0.0)
                    labels[path] = f"{labels.get(path, DEFAULT)}|state"
    transforms = {DEFAULT: _make(name, kwargs, 1.0, None, mask)}
    by_path = {}
    for path, setting in settings.items():
        if setting.axis is None and (path not in frozen or frozen[path].layers is None):
            by_path[path] = labels[path]
            transforms.setdefault(
                labels[path], _make(name, kwargs, setting.scale, setting.decay, mask)
            )
    leaves = {p: x for p, x in jax.tree_util.tree_flatten_with_path(model)[0]}
    for path in set(settings) | set(frozen):
        setting = settings.get(path, Setting())
        part = frozen.get(path)
        if setting.axis is None and (part is None or part.layers is None):
            continue
        axis = setting.axis if setting.axis is not None else part.axis
        label = f"layers@{tensor_name(path)}"
        by_path[path] = label
        transforms[label] = _layered(
            name, kwargs, setting, part, leaves[path].shape[axis], axis, path in still
        )

    def label_tree(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: by_path.get(tuple(path), DEFAULT), params
        )

    mask = jax.tree_util.tree_map_with_path(
        lambda path, _: tuple(path) in frozen and frozen[tuple(path)].layers is None,
        eqx.filter(model, eqx.is_inexact_array),
    )
    return optax.selective_transform(optax.partition(transforms, label_tree), freeze_mask=mask)


class SweepState(NamedTuple):
    """The state of a sweep's optimiser: the members' hyper-parameters (each
    an array with the member axis, as `optax.inject_hyperparams` keeps them)
    and the members' own optimiser states."""

    hyperparams: Any
    inner: Any


def sweep_optimizer(program, model: Ensemble) -> optax.GradientTransformation:
    """The optimiser of a sweep: member k's is the one its own program gives
    a single model, and the members' numbers (learning rate, weight decay,
    betas, the `lr` and `weight_decay` groups' values) are arrays with the
    member axis, carried in the state: `init` and `update` run the members'
    optimisers under `jax.vmap`, so a training step compiles once for the
    whole sweep, whatever the values."""
    per = []
    for member in program.members:
        name, kwargs = base_optimizer(member)
        per.append((name, kwargs, groups(member, model)))
    name = per[0][0]
    numeric = sorted(k for k, v in per[0][1].items() if is_number(v))
    static = {k: v for k, v in per[0][1].items() if k not in numeric}
    for _, kwargs, _ in per[1:]:
        if {k: v for k, v in kwargs.items() if k not in numeric} != static:
            raise UsageError.of("E260")
    hyper: dict[str, Any] = {
        "kwargs": {k: jnp.asarray([p[1][k] for p in per], jnp.float32) for k in numeric},
        "groups": {},
    }
    paths = per[0][2]
    labels: dict[tuple, str] = {}
    layered: dict[tuple, Setting] = {}
    for path, setting in paths.items():
        column = [p[2][path] for p in per]
        if setting.axis is not None:
            if any(
                not np.array_equal(c.scale, setting.scale)
                or (c.decay is None) != (setting.decay is None)
                or (
                    c.decay is not None
                    and not np.array_equal(c.decay, setting.decay, equal_nan=True)
                )
                for c in column
            ):
                raise UsageError.of("E260", variant="layers", name=tensor_name(path))
            layered[path] = setting
            continue
        label = "|".join(c.label for c in column)
        labels[path] = label
        group = {"scale": jnp.asarray([c.scale for c in column], jnp.float32)}
        if setting.decay is not None:
            group["decay"] = jnp.asarray([c.decay for c in column], jnp.float32)
        hyper["groups"].setdefault(label, group)

    def build(h):
        kwargs = {**static, **h["kwargs"]}
        settings = dict(layered)
        for path, label in labels.items():
            g = h["groups"][label]
            settings[path] = Setting(g["scale"], g.get("decay"))
        return _assemble(name, kwargs, settings, labels, model)

    def init(params):
        inner = jax.vmap(lambda p, h: build(h).init(p))(params, hyper)
        return SweepState(hyper, inner)

    def update(updates, state, params=None):
        def one(u, s, p, h):
            return build(h).update(u, s, p)

        updates, inner = jax.vmap(one)(updates, state.inner, params, state.hyperparams)
        return updates, SweepState(state.hyperparams, inner)

    return optax.GradientTransformation(init, update)


def state_bytes(program, model) -> int:
    """The bytes of the optimiser state `optimizer(program, model)` keeps for
    `model` (arrays or their `ShapeDtypeStruct`s), allocating nothing."""

    def init(m):
        return optimizer(program, m).init(eqx.filter(m, eqx.is_inexact_array))

    return nbytes(eqx.filter_eval_shape(init, model))
