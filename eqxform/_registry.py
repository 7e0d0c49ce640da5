"""What a spec can name: types, constructors, initialisers.

The built-in names are the static tables of `_names`; users add their own with
the `register_*` functions. Nothing here imports JAX until a name is resolved to
the object it stands for.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from . import _names as N
from ._diagnostics import Diagnostic, did_you_mean, report
from ._errors import UsageError

_TYPES: dict[str, type] = {}
_CONSTRUCTORS: dict[str, Callable] = {}
_INITIALIZERS: dict[str, tuple[Callable, N.Signature]] = {}
_WRAPPERS: dict[str, tuple[type, N.Signature]] = {}

# Abstract types a selector may name besides the constructible ones.
_ABSTRACT_TYPES = ("Module", "Pool", "AdaptivePool", "StatefulLayer", "Shared")
# eqxform's own types, which selectors may name too: those the actions put in
# the model (`Frozen`, `where LoRA -> merge`), and the stacks.
_OWN_TYPES = (*N.ACTION_TYPES, "Stacked", "Ensemble")


def _signature_of(fn: Callable) -> N.Signature:
    params = []
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return N.Signature(("*args", "**kwargs"))
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            params.append("*" + p.name)
        elif p.kind is p.VAR_KEYWORD:
            params.append("**" + p.name)
        else:
            mark = "?" if p.default is not p.empty else ""
            mark += "!" if p.kind is p.KEYWORD_ONLY else ""
            params.append(p.name + mark)
    return N.Signature(tuple(params))


def register_type(cls: type, name: str | None = None) -> type:
    """Let selectors name `cls` (as `name`, by default its class name).

    **Arguments:**

    - `cls`: an `equinox.Module` subclass.
    - `name`: the name specs use; capitalised, as selectors tell types from
      fields by the capital letter.

    **Returns:** `cls`, so that this works as a class decorator.
    """
    name = name or cls.__name__
    if not name[:1].isupper():
        raise UsageError(report("E413", name=name, value=name[:1].upper() + name[1:]))
    _TYPES[name] = cls
    return cls


def register_constructor(name: str, fn: Callable | None = None):
    """Let `model`, `replace` and `eqxform new` call `fn` as `name(...)`.

    `fn` is called with the spec's arguments, plus `key=` when it takes one. A
    class is registered as a selector type too. Usable as a decorator:
    `@eqxform.register_constructor("Block")`.
    """

    def add(fn: Callable) -> Callable:
        _CONSTRUCTORS[name] = fn
        if isinstance(fn, type) and name[:1].isupper():
            _TYPES.setdefault(name, fn)
        return fn

    return add if fn is None else add(fn)


def register_initializer(name: str, fn: Callable, params: Iterable[str] | None = None) -> Callable:
    """Let `init NAME(ARGS)` draw with `fn(key, shape, dtype, **args)`.

    `params` lists the argument names (with `?` for those with a default); by
    default they are read from `fn`'s signature after `key, shape, dtype`.
    """
    if params is None:
        params = _signature_of(fn).params[3:]
    _INITIALIZERS[name] = (fn, N.Signature(tuple(params)))
    return fn


def register_wrapper(name: str, cls: type, params: Iterable[str] | None = None) -> type:
    """Let `wrap NAME(ARGS)` wrap arrays in `cls`.

    `cls` is an `eqxform.Wrapper` subclass built as `cls(array, **args)`; its
    `get()` returns the array a model sees after `eqxform.resolve`. Registering a
    class also makes it a selector type (by its class name).

    ```python
    class Scaled(eqxform.Wrapper):
        value: jax.Array
        factor: float = eqx.field(static=True)

        def __init__(self, value, factor=1.0):
            self.value, self.factor = value, factor

        def get(self):
            return self.factor * eqxform.resolve(self.value)

    eqxform.register_wrapper("scaled", Scaled)
    ```
    """
    if params is None:
        params = _signature_of(cls.__init__).params[2:]
    _WRAPPERS[name] = (cls, N.Signature(tuple(params)))
    if cls.__name__[:1].isupper():
        _TYPES.setdefault(cls.__name__, cls)
    return cls


def wrapper_names() -> set[str]:
    return set(N.WRAPPERS) | set(_WRAPPERS)


def wrapper_signature(name: str) -> N.Signature | None:
    return _WRAPPERS[name][1] if name in _WRAPPERS else N.WRAPPERS.get(name)


def resolve_wrapper(name: str) -> type:
    if name in _WRAPPERS:
        return _WRAPPERS[name][0]
    # Imported here, not above, to keep JAX out of `eqxform check`.
    from ._modules import BUILTIN

    return BUILTIN[name]


# ---- lookups (JAX-free) ----------------------------------------------------


def type_names() -> set[str]:
    return {*N.EQUINOX_NN, *N.EXAMPLE_MODELS, *_ABSTRACT_TYPES, *_OWN_TYPES, *_TYPES}


def registered_type(name: str) -> type | None:
    """The type registered under `name` with `register_type`, if any."""
    return _TYPES.get(name)


def constructor_names() -> set[str]:
    return set(N.EQUINOX_NN) | set(N.EXAMPLE_MODELS) | set(_CONSTRUCTORS)


def constructor_signature(name: str) -> N.Signature | None:
    if name in _CONSTRUCTORS:
        return _signature_of(_CONSTRUCTORS[name])
    if name in N.EXAMPLE_MODELS:
        return N.EXAMPLE_MODELS[name]
    return N.EQUINOX_NN.get(name)


def initializer_names() -> set[str]:
    return set(N.INITIALIZERS) | set(_INITIALIZERS)


def initializer_signature(name: str) -> N.Signature | None:
    return _INITIALIZERS[name][1] if name in _INITIALIZERS else N.INITIALIZERS.get(name)


def user_initializer(name: str) -> Callable | None:
    return _INITIALIZERS[name][0] if name in _INITIALIZERS else None


# ---- resolution (imports what it resolves) ---------------------------------


def resolve_type(name: str) -> type:
    if name in _TYPES:
        return _TYPES[name]
    # Imported here, not above, to keep JAX out of `eqxform check`.
    if name in N.EXAMPLE_MODELS:
        from . import models

        return getattr(models, name)
    if name in _OWN_TYPES:
        from . import _modules

        return getattr(_modules, name)
    import equinox as eqx

    if name == "Module":
        return eqx.Module
    return getattr(eqx.nn, name)


class NotAllowed(Exception):
    def __init__(self, module: str):
        self.module = module


class ImportFailed(Exception):
    """An allowed `package.module:function` could not be imported: the module
    is not found, fails while it is imported, or has no such function."""

    def __init__(self, module: str, attr: str, error: BaseException, found: Any = None):
        super().__init__(str(error))
        self.module, self.attr, self.error, self.found = module, attr, error, found


def resolve_constructor(name: str, allow: Iterable[str] = ()) -> Callable:
    """The callable behind a constructor name, or `package.module:function`.

    A module path is imported only when its top-level package is in `allow`;
    otherwise `NotAllowed` is raised and nothing is imported. An allowed module
    that cannot be imported, or lacks the function, raises `ImportFailed`.
    """
    if ":" in name:
        module, _, attr = name.partition(":")
        top = module.split(".", 1)[0]
        allowed = {a.split(".", 1)[0] for a in allow}
        if top not in allowed:
            raise NotAllowed(module)
        try:
            imported = importlib.import_module(module)
        except Exception as e:  # the user's module, whatever it raises while imported
            raise ImportFailed(module, attr, e) from None
        try:
            return getattr(imported, attr)
        except AttributeError as e:
            raise ImportFailed(module, attr, e, imported) from None
    if name in _CONSTRUCTORS:
        return _CONSTRUCTORS[name]
    return resolve_type(name)


def function(name: str) -> Callable:
    """The `jax.nn` function a spec names (`gelu`)."""
    import jax

    return getattr(jax.nn, name)


def import_failed_diagnostic(failed: ImportFailed, name: str, span=None, source=None):
    """E126 for a constructor `name` (`package.module:function`) whose module
    cannot be imported or has no such function, with how to fix each case."""
    module, attr, error = failed.module, failed.attr, failed.error
    top = module.split(".", 1)[0]
    at = dict(span=span, source=source)
    if isinstance(error, AttributeError):
        public = [n for n in dir(failed.found) if not n.startswith("_")]
        hint = did_you_mean(attr, public)
        return report("E126", **at, module=module, attr=attr, hint=hint + " " if hint else "")
    if isinstance(error, ModuleNotFoundError) and error.name is not None:
        missing = error.name
        if missing == top:
            return report("E126", variant="no_module", **at, name=name, missing=missing, top=top)
        if missing == module or module.startswith(missing + "."):
            parent, _, leaf = missing.rpartition(".")
            return report(
                "E126",
                variant="no_submodule",
                **at,
                name=name,
                missing=missing,
                parent=parent,
                leaf=leaf,
            )
        return report(
            "E126",
            variant="needs",
            **at,
            module=module,
            name=name,
            missing=missing,
            package=missing.split(".")[0],
        )
    first = str(error).splitlines()[0] if str(error) else ""
    return report(
        "E126",
        variant="raised",
        **at,
        module=module,
        name=name,
        error=type(error).__name__ + (f": {first}" if first else ""),
    )


def not_allowed_diagnostic(module: str, span=None, source=None) -> Diagnostic:
    top = module.split(".", 1)[0]
    return report("E117", span=span, source=source, module=module, top=top)
