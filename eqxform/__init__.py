"""eqxform: a declarative language for transforming Equinox models.

Every name here is a re-export; the code lives in the private modules.
"""

from ._compile import Pass as Pass, Program as Program, compile as compile
from ._diagnostics import Diagnostic as Diagnostic
from ._errors import (
    EqxformError as EqxformError,
    ModelFileError as ModelFileError,
    SpecError as SpecError,
    UsageError as UsageError,
)
from ._io import load as load, new as new, recipe_of as recipe_of, save as save
from ._plan import Plan as Plan
from ._registry import (
    register_constructor as register_constructor,
    register_initializer as register_initializer,
    register_type as register_type,
)

__version__ = "0.1.0"
