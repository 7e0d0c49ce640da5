"""eqxform: a declarative language for transforming Equinox models.

Every name here is a re-export; the code lives in the private modules.
"""

from ._compile import Pass as Pass
from ._compile import Program as Program
from ._compile import compile as compile
from ._diagnostics import Diagnostic as Diagnostic
from ._errors import (
    EqxformError as EqxformError,
)
from ._errors import (
    ModelFileError as ModelFileError,
)
from ._errors import (
    SpecError as SpecError,
)
from ._errors import (
    UsageError as UsageError,
)
from ._io import load as load
from ._io import new as new
from ._io import recipe_of as recipe_of
from ._io import save as save
from ._plan import Plan as Plan
from ._registry import (
    register_constructor as register_constructor,
)
from ._registry import (
    register_initializer as register_initializer,
)
from ._registry import (
    register_type as register_type,
)

__version__ = "0.1.0"
