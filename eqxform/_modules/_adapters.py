"""Adapters: small trainable parts added to a frozen base (LoRA, (IA)^3).

`LoRA` stands where a `Linear` was and computes `W x + b + s * B (A x)`: the
product `B A` is never formed, so a training step costs two thin matmuls more
than the base, whatever the size of `W`. `IA3` scales a `Linear`'s output (or
its input) by a learned vector. The base module's weight and bias are held in
`Frozen`, so no gradient reaches them and the optimiser eqxform builds keeps no
state for them. For a 2-D weight that no `Linear` owns (a raw parameter a
model multiplies itself), `LoRAWeight` and `IA3Weight` are wrappers: their
value is the adapted matrix, formed at resolve.

Every array may carry leading stack or member axes (the adapter of a stacked
`Linear` is itself stacked: `A` is `(layers, r, in)`). `scale` carries those
axes too: a stack whose rule picked some of its layers holds `0` at the others,
so that one scan runs every layer with one structure while the layers outside
the slice compute exactly their base (their factors stay zero and frozen).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._wrappers import Frozen, Wrapper, _value, resolve


def _expand(scale: jax.Array, trailing: int) -> jax.Array:
    """`scale` (leading axes only) with `trailing` axes of length 1 after."""
    return jnp.reshape(scale, jnp.shape(scale) + (1,) * trailing)


def _of_base(name: str) -> property:
    """An adapter's attribute that is its base module's."""
    return property(lambda self: getattr(self.base, name), doc=f"The base module's `{name}`.")


# A LoRA adapter's rank: the rows of `A`.
_rank = property(lambda self: int(self.lora_a.shape[-2]), doc="The adapter's rank.")


def _scaled(w: jax.Array, vector: jax.Array, feedforward: bool) -> jax.Array:
    """`w`'s rows (with `feedforward`, its columns) scaled by `vector`: (IA)^3's weight."""
    return (w * (vector[..., None, :] if feedforward else vector[..., :, None])).astype(w.dtype)


class LoRA(eqx.Module):
    """A `Linear` (or any module computing `W x + b` with an `(out, in)`
    weight) with a low-rank adapter: `base(x) + scale * (x A^T) B^T`.

    **Attributes:** `base` (the adapted module, its `weight` and `bias` frozen),
    `lora_a` (`(r, in)`, drawn as PEFT draws it), `lora_b` (`(out, r)`, zeros,
    so that the adapted module starts equal to its base), `scale`
    (`alpha / rank`; a stacked adapter holds one per layer, 0 at layers without
    an adapter).
    """

    base: Any
    lora_a: Any
    lora_b: Any
    scale: Any

    def __call__(self, x, *args, **kwargs):
        a, b, s = _value(self.lora_a), _value(self.lora_b), _value(self.scale)
        y = resolve(self.base)(x, *args, **kwargs)
        delta = (x @ a.T) @ b.T
        return y + (s * delta).astype(y.dtype)

    # A parent that reads the weight itself (`x @ linear.weight.T + linear.bias`,
    # as code ported from PyTorch often does: CLIP's attention `out_proj`,
    # Megalodon's `linear_3d`) rather than calling the module gets the adapted
    # matrix `W + scale * B A`, formed at each read: an `(out, in)` matrix per
    # call, the cost `plan` states (I221) when it sees such a read.

    @property
    def weight(self) -> Any:
        """The adapted weight `W + scale * B A` (formed; the frozen base's
        weight gets no gradient, the factors do)."""
        w = _value(resolve(self.base).weight)
        a, b, s = _value(self.lora_a), _value(self.lora_b), _value(self.scale)
        return w + (_expand(s, 2) * (b @ a)).astype(w.dtype)

    @property
    def bias(self) -> Any:
        """The base's bias (frozen), or None."""
        return _value(resolve(self.base).bias) if hasattr(self.base, "bias") else None

    # Read through to the base, for a parent that reads them itself.
    in_features = _of_base("in_features")
    out_features = _of_base("out_features")
    use_bias = _of_base("use_bias")
    rank = _rank

    def merged(self) -> Any:
        """The base module with `W + scale * B A` as its weight (stack and
        member axes kept); its weight and bias train again."""
        a, b, s = _value(self.lora_a), _value(self.lora_b), _value(self.scale)
        w = _unfrozen(self.base.weight)
        delta = _expand(s, 2) * (b @ a)
        new = eqx.tree_at(lambda m: m.weight, self.base, (w + delta).astype(w.dtype))
        return _thaw_bias(new)


class IA3(eqx.Module):
    """(IA)^3: a `Linear` whose output (or, with `feedforward`, whose input) is
    scaled by a learned vector, initialised to ones.

    **Attributes:** `base` (the module, weight and bias frozen), `ia3` (`(out,)`,
    or `(in,)` for `feedforward`), `feedforward` (scale the input, as PEFT does
    for feed-forward layers, rather than the output).
    """

    base: Any
    ia3: Any
    feedforward: bool = eqx.field(static=True, default=False)

    def __call__(self, x, *args, **kwargs):
        vector = _value(self.ia3)
        base = resolve(self.base)
        if self.feedforward:
            return base((x * vector).astype(x.dtype), *args, **kwargs)
        y = base(x, *args, **kwargs)
        return (y * vector).astype(y.dtype)

    @property
    def weight(self) -> Any:
        """The scaled weight (rows, or columns for `feedforward`), formed: for
        a parent that reads the weight itself rather than calling the module."""
        return _scaled(_value(resolve(self.base).weight), _value(self.ia3), self.feedforward)

    @property
    def bias(self) -> Any:
        """The base's bias, scaled with the output (unless `feedforward`), or None."""
        bias = _value(resolve(self.base).bias) if hasattr(self.base, "bias") else None
        if bias is None or self.feedforward:
            return bias
        return (bias * _value(self.ia3)).astype(bias.dtype)

    # Read through to the base, for a parent that reads them itself.
    in_features = _of_base("in_features")
    out_features = _of_base("out_features")
    use_bias = _of_base("use_bias")

    def merged(self) -> Any:
        vector = _value(self.ia3)
        w = _scaled(_unfrozen(self.base.weight), vector, self.feedforward)
        new = eqx.tree_at(lambda m: m.weight, self.base, w)
        if self.feedforward:
            return _thaw_bias(new)
        bias = getattr(new, "bias", None)
        if bias is not None:
            b = _unfrozen(bias)
            new = eqx.tree_at(lambda m: m.bias, new, (b * vector).astype(b.dtype))
        return new


class LoRAWeight(Wrapper):
    """A 2-D weight with a low-rank adapter: `W + scale * B A`, formed at
    resolve (the owner multiplies the matrix itself, so it must exist)."""

    weight: Any
    lora_a: Any
    lora_b: Any
    scale: Any

    def get(self):
        w = _value(self.weight)
        a, b, s = _value(self.lora_a), _value(self.lora_b), _value(self.scale)
        return w + (_expand(s, 2) * (b @ a)).astype(w.dtype)

    rank = _rank

    def merged(self) -> Any:
        return self.get()


class IA3Weight(Wrapper):
    """A 2-D `(out, in)` weight whose rows (or, with `feedforward`, columns)
    are scaled by a learned vector."""

    weight: Any
    ia3: Any
    feedforward: bool = eqx.field(static=True, default=False)

    def get(self):
        return _scaled(_value(self.weight), _value(self.ia3), self.feedforward)

    def merged(self) -> Any:
        return self.get()


ADAPTERS = (LoRA, IA3, LoRAWeight, IA3Weight)


def is_adapter(x: Any) -> bool:
    return isinstance(x, ADAPTERS)


def unfrozen(x: Any) -> Any:
    """`x` out of every `Frozen` around it."""
    while isinstance(x, Frozen):
        x = x.value
    return x


def _unfrozen(x: Any) -> Any:
    """The value inside the `Frozen` that an adapter put around its base."""
    return _value(unfrozen(x))


def _thaw_bias(module: Any) -> Any:
    bias = getattr(module, "bias", None)
    if isinstance(bias, Frozen):
        return eqx.tree_at(lambda m: m.bias, module, _unfrozen(bias))
    return module


def merge(model: Any) -> Any:
    """`model` with every adapter baked into its base weight: a `LoRA` or `IA3`
    becomes its base module (weight `W + scale * B A`, or scaled rows), a
    `LoRAWeight`/`IA3Weight` its matrix; and every `Frozen` mark lifted (its
    value kept), so that the result is a model to call. The outputs do not
    change."""
    merged = jax.tree_util.tree_map(
        lambda x: x.merged() if is_adapter(x) else x, model, is_leaf=is_adapter
    )
    return thaw(merged)


def thaw(tree: Any) -> Any:
    """`tree` with every `Frozen` replaced by the value it holds."""
    is_frozen = lambda x: isinstance(x, Frozen)  # noqa: E731
    return jax.tree_util.tree_map(
        lambda x: unfrozen(x) if is_frozen(x) else x, tree, is_leaf=is_frozen
    )
