"""Passes: pure `(model, key) -> model` functions, one per action of a rule.

`_tree` holds the `eqx.tree_at` passes (init, replace, cast, scale); `_init`
the initialisers they draw from. `PASSES` is imported lazily, as it needs JAX.
"""


def __getattr__(name):
    if name == "PASSES":
        from ._tree import PASSES

        return PASSES
    raise AttributeError(name)
