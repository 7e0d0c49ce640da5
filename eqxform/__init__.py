"""eqxform: a declarative language for transforming Equinox models.

Every name here is a re-export; the code lives in the private modules.
"""

from . import _names
from ._api import CheckReport as CheckReport
from ._api import ModelFileInfo as ModelFileInfo
from ._api import TrainResult as TrainResult
from ._api import apply as apply
from ._api import check as check
from ._api import explain as explain
from ._api import export as export
from ._api import format_files as format_files
from ._api import inspect as inspect
from ._api import language_server as language_server
from ._api import plan as plan
from ._api import train as train
from ._diagnostics import Diagnostic as Diagnostic
from ._errors import EqxformError as EqxformError
from ._errors import EqxformWarning as EqxformWarning
from ._errors import ModelFileError as ModelFileError
from ._errors import SpecError as SpecError
from ._errors import UsageError as UsageError
from ._format import format_spec as format_spec
from ._names import LOSSES as LOSSES
from ._registry import register_constructor as register_constructor
from ._registry import register_initializer as register_initializer
from ._registry import register_type as register_type
from ._registry import register_wrapper as register_wrapper
from ._source import is_model_file as is_model_file
from ._source import load_params as load_params
from ._values import parse_seed as parse_seed

__version__ = "0.1.0"

# Everything below needs JAX, so it loads on first use: `eqxform check`
# without a model stays a linter that imports no JAX.
_LAZY = {
    "compile": "._compile",
    "Program": "._program",
    "Recipe": "._program",
    "recipe_of": "._program",
    "Pass": "._passes",
    "Context": "._passes",
    "Plan": "._plan",
    "Planner": "._plan",
    "load": "._recipes",
    "save": "._recipes",
    "new": "._recipes",
    "pick": "._pick",
    "pick_file": "._pick",
    "count_params": "._plan",
    "check_output": "._files",
    "resolve": "._modules",
    "bake": "._modules",
    # The types the actions put in the model (`Frozen`, `LoRA`, ...).
    **dict.fromkeys(_names.ACTION_TYPES, "._modules"),
    "merge": "._modules",
    "Stacked": "._modules",
    "Ensemble": "._modules",
    "evaluate_ensemble": "._modules",
    "evaluate_per_member": "._modules",
    "optimizer": "._runtime._optim",
    "make_step": "._runtime._step",
    "Step": "._runtime._step",
    "RetraceError": "._runtime._step",
    "MeshSpec": "._mesh",
    "initialize_distributed": "._runtime._distributed",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'eqxform' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
