"""Passes: pure `(model, key, context) -> model` functions, one per action of
a rule (`_tree`, `_adapters`) or structural directive (`_struct`), and the
placement on a device mesh (`_shard`); `_init` holds the initialisers that
`init` draws from."""

from . import _adapters, _tree  # noqa: F401 (their passes register themselves)
from ._base import PASSES as PASSES
from ._base import Context as Context
from ._base import Pass as Pass
from ._shard import PlacePass as PlacePass
from ._shard import ShardRule as ShardRule
from ._struct import EnsemblePass as EnsemblePass
from ._struct import StackPass as StackPass
from ._struct import UnstackPass as UnstackPass
from ._tree import RulePass as RulePass
