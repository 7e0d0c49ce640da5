"""eqxform: a declarative language for transforming Equinox models.

Every name here is a re-export; the code lives in the private modules.
"""

from ._compile import Pass as Pass
from ._compile import Program as Program
from ._compile import compile as compile
from ._diagnostics import Diagnostic as Diagnostic
from ._errors import EqxformError as EqxformError
from ._errors import ModelFileError as ModelFileError
from ._errors import SpecError as SpecError
from ._errors import UsageError as UsageError
from ._io import load as load
from ._io import new as new
from ._io import recipe_of as recipe_of
from ._io import save as save
from ._plan import Plan as Plan
from ._registry import register_constructor as register_constructor
from ._registry import register_initializer as register_initializer
from ._registry import register_type as register_type
from ._registry import register_wrapper as register_wrapper

__version__ = "0.1.0"

# The runtime needs JAX, so it loads on first use: `eqxform check` stays a
# linter that imports no JAX.
_RUNTIME = {
    "resolve": "._runtime._wrappers",
    "bake": "._runtime._wrappers",
    "Wrapper": "._runtime._wrappers",
    "Symmetric": "._runtime._wrappers",
    "Positive": "._runtime._wrappers",
    "WeightNormed": "._runtime._wrappers",
    "Frozen": "._runtime._wrappers",
    "optimizer": "._runtime._optim",
    "make_step": "._runtime._step",
    "Step": "._runtime._step",
    "RetraceError": "._runtime._step",
    "Stacked": "._runtime._stack",
    "Ensemble": "._runtime._stack",
    "evaluate_ensemble": "._runtime._stack",
    "evaluate_per_member": "._runtime._stack",
}


def __getattr__(name):
    if name in _RUNTIME:
        import importlib

        return getattr(importlib.import_module(_RUNTIME[name], __name__), name)
    raise AttributeError(f"module 'eqxform' has no attribute {name!r}")
