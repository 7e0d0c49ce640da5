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
