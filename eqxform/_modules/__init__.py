"""The model types a spec produces: wrappers (per-parameter behaviour), `Remat`
(gradient checkpointing), adapters (LoRA, (IA)^3), `Stacked` (scan-over-layers)
and `Ensemble`.

This package sits at the bottom of eqxform: it imports JAX and Equinox and
nothing else of eqxform, so that selection, passes, files and training can all
build on it.
"""

from ._adapters import IA3 as IA3
from ._adapters import IA3Weight as IA3Weight
from ._adapters import LoRA as LoRA
from ._adapters import LoRAWeight as LoRAWeight
from ._adapters import is_adapter as is_adapter
from ._adapters import merge as merge
from ._adapters import thaw as thaw
from ._adapters import unfrozen as unfrozen
from ._stacks import Ensemble as Ensemble
from ._stacks import Stacked as Stacked
from ._stacks import StackedMarker as StackedMarker
from ._stacks import batched as batched
from ._stacks import evaluate_ensemble as evaluate_ensemble
from ._stacks import evaluate_per_member as evaluate_per_member
from ._stacks import first_layout_weight as first_layout_weight
from ._stacks import is_state_index as is_state_index
from ._stacks import join_state as join_state
from ._stacks import make_ensemble as make_ensemble
from ._stacks import make_state as make_state
from ._stacks import marked as marked
from ._stacks import restate as restate
from ._stacks import split_state as split_state
from ._stacks import state_indices as state_indices
from ._stacks import state_values as state_values
from ._wrappers import AROUND as AROUND
from ._wrappers import BUILTIN as BUILTIN
from ._wrappers import Frozen as Frozen
from ._wrappers import Positive as Positive
from ._wrappers import Remat as Remat
from ._wrappers import Symmetric as Symmetric
from ._wrappers import WeightNormed as WeightNormed
from ._wrappers import Wrapper as Wrapper
from ._wrappers import bake as bake
from ._wrappers import is_wrapper as is_wrapper
from ._wrappers import resolve as resolve
from ._wrappers import wrapped_field as wrapped_field
