"""Passes: pure `(model, key, context) -> model` functions, one per action of
a rule (`_tree`, `_adapters`) or structural directive (`_struct`), and the
placement on a device mesh (`_shard`); `_init` holds the initialisers that
`init` draws from."""

from ._adapters import PASSES as _ADAPTER_PASSES
from ._base import Context as Context
from ._base import Pass as Pass
from ._shard import PlacePass as PlacePass
from ._shard import ShardRule as ShardRule
from ._struct import EnsemblePass as EnsemblePass
from ._struct import StackPass as StackPass
from ._struct import UnstackPass as UnstackPass
from ._tree import PASSES as _TREE_PASSES
from ._tree import RulePass as RulePass

PASSES = {**_TREE_PASSES, **_ADAPTER_PASSES}
