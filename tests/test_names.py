"""The static tables that `check` uses without JAX agree with the libraries."""

import inspect

import equinox as eqx
import jax

from eqxform import _names as N
from eqxform import models
from eqxform._registry import _signature_of


def test_equinox_constructor_signatures():
    for name, signature in N.EQUINOX_NN.items():
        live = _signature_of(getattr(eqx.nn, name).__init__)
        assert live.params[1:] == signature.params, name


def test_example_model_signatures():
    for name, signature in N.EXAMPLE_MODELS.items():
        assert _signature_of(getattr(models, name).__init__).params[1:] == signature.params


def test_initialiser_arguments_exist():
    inits = jax.nn.initializers
    for name, signature in N.INITIALIZERS.items():
        if name == "trunc_normal":
            continue
        factory = getattr(inits, name)
        if name in ("zeros", "ones"):
            continue
        params = inspect.signature(factory).parameters
        for p in signature.names:
            assert p in params, (name, p)


def test_functions_and_dtypes_exist():
    import jax.numpy as jnp

    for name in N.FUNCTIONS:
        assert name == "identity" or callable(getattr(jax.nn, name)), name
    for name in N.DTYPES:
        jnp.dtype(name)


def test_remat_policies_are_jaxs():
    # Every name in `jax.checkpoint_policies` that is a policy itself (called
    # with a primitive), not a function that makes one.
    policies = jax.checkpoint_policies
    live = {
        name
        for name in dir(policies)
        if not name.startswith("_")
        and next(iter(inspect.signature(getattr(policies, name)).parameters)) in ("prim", "_")
    }
    assert set(N.REMAT_POLICIES) == live


def test_losses_are_the_trainers():
    from eqxform._runtime import _train

    assert tuple(_train._PER_BATCH) == N.LOSSES


# ---- the records of the directives and actions, and what is derived from them ----------


def test_directives_are_the_grammars():
    import re
    from pathlib import Path

    from eqxform import _parse

    grammar = (Path(__file__).parent.parent / "grammar" / "eqxform.lark").read_text()
    words = re.findall(r'^(?:\w+_stmt|rule):\s*"(\w+)"', grammar, re.M)
    assert sorted(words) == sorted(N.DIRECTIVES)
    assert _parse.DIRECTIVES == tuple(N.DIRECTIVES)


def test_each_action_that_changes_the_model_has_its_pass():
    from eqxform._passes import PASSES, RulePass

    changes_model = {name for name, a in N.ACTIONS.items() if a.changes == "model"}
    assert set(PASSES) == changes_model
    assert all(issubclass(cls, RulePass) for cls in PASSES.values())


def test_each_record_is_complete():
    kinds = {"none", "initializer", "constructor", "dtype", "expr", "wrapper", "spec", "keywords"}
    for name, a in N.ACTIONS.items():
        assert a.name == name and a.arg in kinds and a.doc and "\n" not in a.doc, name
        assert a.example.split("(")[0].split()[0] == name, name
        assert a.changes in ("model", "optimiser", "placement"), name
        assert (a.value is not None) == (a.arg == "expr"), name
        assert (a.keywords is not None) == (a.arg == "keywords"), name
        if a.keywords is not None:
            assert {k for k, _ in a.defaults} == set(a.keywords.names), name
            assert {k for k, _ in a.kinds} <= set(a.keywords.names), name
    for name, d in N.DIRECTIVES.items():
        assert d.name == name and d.form.split()[0] == name and d.doc, name


def test_the_types_actions_put_in_the_model_are_exported_and_selectable():
    import eqxform
    from eqxform import _modules
    from eqxform import _registry as R

    for name in N.ACTION_TYPES:
        cls = getattr(_modules, name)
        assert getattr(eqxform, name) is cls and R.resolve_type(name) is cls
        assert name in R.type_names() and issubclass(cls, eqx.Module)
