"""Stacks and ensembles: modules whose arrays carry a leading axis.

`Stacked` holds N layers of one structure as a single module with a leading
layer axis and runs them with `lax.scan` (one after another) or `vmap` (side
by side): the scan-over-layers trick, which compiles one layer, not N.
`Ensemble` holds N members with a leading member axis: the ensembling trick.
Selectors see through both: `blocks[2:5].weight` names those layers' slices.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._wrappers import resolve


def _take(tree: Any, index) -> Any:
    return jax.tree_util.tree_map(lambda x: x[index] if eqx.is_array(x) else x, tree)


class Stacked(eqx.Module):
    """N layers of one structure, stacked. Call it like the layers in a row.

    **Attributes:** `layers` (one module whose arrays have a leading axis of
    length `count`), `mode` (`"scan"`: each layer's output feeds the next;
    `"vmap"`: every layer sees the same input, outputs stacked), `remat`
    (checkpoint each layer), `unroll` (passed to `lax.scan`), `kind` (what
    `unstack` gives back: `list`, `tuple`, `sequential`, `module` or `slice`).
    """

    layers: Any
    count: int = eqx.field(static=True)
    mode: str = eqx.field(static=True, default="scan")
    remat: bool = eqx.field(static=True, default=False)
    unroll: int = eqx.field(static=True, default=1)
    kind: str = eqx.field(static=True, default="list")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            count = len(range(*index.indices(self.count)))
            return Stacked(
                _take(self.layers, index), count, self.mode, self.remat, self.unroll, self.kind
            )
        return _take(self.layers, index)

    def __iter__(self):
        # For callers that loop over their layers; calling the stack scans.
        return (self[i] for i in range(self.count))

    def __call__(self, x, *, key=None):
        dynamic, static = eqx.partition(self.layers, eqx.is_array)

        def apply(d, h):
            return eqx.combine(d, static)(h)

        if self.remat:
            apply = eqx.filter_checkpoint(apply)
        if self.mode == "vmap":
            return jax.vmap(apply, in_axes=(0, None))(dynamic, x)

        def body(h, d):
            return apply(d, h), None

        out, _ = jax.lax.scan(body, x, dynamic, unroll=self.unroll)
        return out


class Ensemble(eqx.Module):
    """N members of one model, each array with a leading member axis.

    `ensemble(x)` evaluates every member on the same `x` (shape `(N, ...)` out);
    `ensemble.per_member(xs)` gives member i the input `xs[i]`;
    `ensemble.member(i)` is member i as a plain model. Wrappers are resolved.
    """

    model: Any
    count: int = eqx.field(static=True)

    def __call__(self, x):
        return evaluate_ensemble(self, x)

    def per_member(self, xs):
        return evaluate_per_member(self, xs)

    def member(self, i: int) -> Any:
        if not -self.count <= i < self.count:
            raise IndexError(f"the ensemble has {self.count} members, not {i}")
        return _take(self.model, i)


def evaluate_ensemble(ensemble: Ensemble, x):
    """Every member of `ensemble` on the same input: `(N, ...)` out."""
    dynamic, static = eqx.partition(ensemble.model, eqx.is_array)
    return jax.vmap(lambda d: resolve(eqx.combine(d, static))(x))(dynamic)


def evaluate_per_member(ensemble: Ensemble, xs):
    """Member i on `xs[i]`; `xs` has a leading axis of length N."""
    if jnp.shape(xs)[:1] != (ensemble.count,):
        raise ValueError(
            f"per-member data needs a leading axis of {ensemble.count}, got shape {jnp.shape(xs)}"
        )
    dynamic, static = eqx.partition(ensemble.model, eqx.is_array)
    return jax.vmap(lambda d, x: resolve(eqx.combine(d, static))(x))(dynamic, xs)


def batched(obj: Any) -> bool:
    """Is `obj` a stack or an ensemble, whose arrays carry a leading axis?"""
    # A type test, not `isinstance`: Modules are ABCs, whose instance checks
    # cost more than the rest of a selection on models of many leaves.
    return type(obj) in _BATCHED


_BATCHED = frozenset({Stacked, Ensemble})
