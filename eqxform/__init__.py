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
    name: module
    for module, names in (
        ("._compile", ("compile",)),
        ("._program", ("Program", "Recipe", "recipe_of")),
        ("._passes", ("Pass", "Context")),
        ("._plan", ("Plan", "Planner", "count_params")),
        ("._recipes", ("load", "save", "new")),
        ("._pick", ("pick", "pick_file")),
        ("._files", ("check_output",)),
        ("._modules", ("resolve", "bake", "merge", "Stacked", "Ensemble")),
        ("._modules", ("evaluate_ensemble", "evaluate_per_member")),
        # The types the actions put in the model (`Frozen`, `LoRA`, ...).
        ("._modules", _names.ACTION_TYPES),
        ("._runtime._optim", ("optimizer",)),
        ("._runtime._step", ("make_step", "Step", "RetraceError")),
        ("._mesh", ("MeshSpec",)),
        ("._runtime._distributed", ("initialize_distributed",)),
    )
    for name in names
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'eqxform' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
