"""The optimiser label of each parameter, as the tests read it: which group of
`eqxform.optimizer`'s partition a tensor falls in."""

from eqxform._runtime._optim import frozen_paths, groups
from eqxform._select import tensor_name


def labels(program, model) -> dict[str, str]:
    """Per tensor name, its optimiser label (`frozen`, `lr*0.5`, `layers`,
    ...); the parameters not listed get the base optimiser."""
    out = {}
    for path, setting in groups(program, model).items():
        out[tensor_name(path)] = "layers" if setting.axis is not None else setting.label
    for path, frozen in frozen_paths(model).items():
        out[tensor_name(path)] = "frozen" if frozen.layers is None else "layers"
    return out
