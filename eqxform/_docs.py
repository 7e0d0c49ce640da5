"""One line of documentation for every word of the language, for the editors.

The language server shows these on hover and beside completions. The names are
those of `_names` (held to the libraries by `tests/test_names.py`); directives
and actions carry their line in their records there. `tests/test_lsp.py` holds
these tables to the names, so that no name goes undocumented.
"""

from __future__ import annotations

from . import _names as N

# The directives, actions and `map` actions are documented in their records.
DIRECTIVES = {d.name: f"`{d.form}`: {d.doc}" for d in N.DIRECTIVES.values()}
ACTIONS = {a.name: a.doc for a in N.ACTIONS.values()}
MAP_ACTIONS = {name: a.doc for name, a in N.MAP_ACTIONS.items()}

INITIALIZERS = {
    "zeros": "all zeros",
    "ones": "all ones",
    "constant": "every element `value`",
    "normal": "normal, mean 0 and standard deviation `stddev` (default 0.01)",
    "truncated_normal": "normal cut at two standard deviations, scaled by `stddev`",
    "trunc_normal": "normal cut at `lower` and `upper`, scaled by `stddev` (Equinox's tricks page)",
    "uniform": "uniform on [0, `scale`)",
    "orthogonal": "a (scaled) orthogonal matrix",
    "delta_orthogonal": "orthogonal at the kernel's centre, zero elsewhere (convolutions)",
    "variance_scaling": "`scale / fan` variance, `mode` fan_in|fan_out|fan_avg, a `distribution`",
    "glorot_normal": "normal with variance 2 / (fan_in + fan_out)",
    "glorot_uniform": "uniform with variance 2 / (fan_in + fan_out)",
    "xavier_normal": "the same as `glorot_normal`",
    "xavier_uniform": "the same as `glorot_uniform`",
    "he_normal": "normal with variance 2 / fan_in",
    "he_uniform": "uniform with variance 2 / fan_in",
    "kaiming_normal": "the same as `he_normal`",
    "kaiming_uniform": "the same as `he_uniform`",
    "lecun_normal": "normal with variance 1 / fan_in",
    "lecun_uniform": "uniform with variance 1 / fan_in",
}

WRAPPERS = {
    "symmetric": "the weight as 0.5 * (W + W^T), resolved at the jit/grad boundary",
    "positive": "softplus of a free parameter, plus `minimum`: always positive",
    "weight_norm": "the weight as a direction times a learned norm",
}

OPTIMIZERS = {
    "adam": "Adam",
    "adamw": "Adam with decoupled weight decay",
    "sgd": "stochastic gradient descent, with optional momentum",
    "lion": "Lion (sign of an interpolated momentum)",
    "rmsprop": "RMSProp",
    "adagrad": "Adagrad",
    "adabelief": "AdaBelief",
    "adamax": "Adamax (Adam with the infinity norm)",
    "adamaxw": "Adamax with decoupled weight decay",
    "nadam": "Adam with Nesterov momentum",
    "nadamw": "NAdam with decoupled weight decay",
    "radam": "rectified Adam",
    "lamb": "LAMB (layer-wise adaptive large batch)",
    "yogi": "Yogi",
    "novograd": "NovoGrad",
}

FUNCTIONS = {
    **{name: f"the `jax.nn.{name}` function, as a value" for name in N.FUNCTIONS},
    "identity": "the identity function, as a value",
}

EXPR_FUNCTIONS = {
    "sqrt": "`sqrt(x)`: the square root",
    "log": "`log(x)`: the natural logarithm",
    "exp": "`exp(x)`: e to the power x",
    "abs": "`abs(x)`: the absolute value",
    "min": "`min(a, b, ...)`: the smallest",
    "max": "`max(a, b, ...)`: the largest",
}

CONTEXT = {
    "shape": "the matched array's shape (one layer's, without stack or member axes)",
    "ndim": "the matched array's number of dimensions",
    "size": "the matched array's number of elements",
    "dtype": "the matched array's dtype, as a name (`float32`)",
    "fan_in": "the matched weight's fan-in, in Equinox's (out, in, *kernel) layout",
    "fan_out": "the matched weight's fan-out, in Equinox's (out, in, *kernel) layout",
    "path": "the matched node's path, as text (`layers[0].weight`)",
    "index": "the last list index on the matched node's path",
}

KEYWORDS = {
    "if": "`SELECTOR if EXPR`: keep the matches for which EXPR holds",
    "else": "`A if C else B`: A when C holds, else B (`rank=16 if fan_in >= 1024 else 8`)",
    "expect": "`SELECTOR expect N`: an error unless exactly N nodes match",
    "vary": "`ensemble N vary NAME=EXPR, ..., seed`: each member's own value of NAME (a list, "
    "`logspace(FIRST, LAST)`, `linspace(FIRST, LAST)`, or an expression of `member`)",
    "grid": "`ensemble grid NAME=[...] NAME=[...]`: one member per point of the product",
    "member": "in a `vary` value: the member's index, from 0 (`lr=1e-3 * 2 ** member`)",
    "and": "logical and",
    "or": "logical or",
    "not": "logical not",
    "true": "the boolean true",
    "false": "the boolean false",
    "none": "no value (Python's `None`)",
    "scan": "`stack ... scan`: the layers run one after another, with `lax.scan`",
    "vmap": "`stack ... vmap`: the layers run side by side, with `vmap`",
    "remat": "`stack ... remat`: each layer is checkpointed (recomputed on the backward pass)",
    "unroll": "`stack ... unroll K`: K layers per step of the scan (a scan of "
    f"{N.UNROLLED_UP_TO} layers or fewer runs unrolled unless its line says `unroll K`)",
    "layerwise": "`stack ... layerwise`: iterating the stack gives each layer (for a parent "
    "that loops over it in Python)",
    "copies": "`stack PATH scan N copies`: N copies of a module that carries a layer axis "
    "already (without `copies`, `stack` takes its layers as they are)",
    "except": "`SELECTOR except SELECTOR`: what the first matches and the second does not",
    "over": "`stack ... over AXIS`, `ensemble N over AXIS`: the leading axis split over a "
    "mesh axis",
    "with": '`map "NAME" -> "PATH" with ACTION, ...`: how a tensor changes on its way',
}

DTYPE = "a dtype: `cast {name}` stores the matched arrays as {name}"

SELECTOR_SYMBOLS = {
    "*": "`*`: any one step of a path",
    "**": "`**`: any number of steps, none included",
    "|": "`A | B`: what either selector matches",
}


# Every form a selector step can take, for the language reference.
SELECTOR_FORMS = {
    "weight": "a field (of a module, or a key of a dict)",
    "Linear": "a node of that type; a selector that starts with a type matches it anywhere "
    "in the tree, so `Linear.weight` is the `weight` of every `Linear`",
    "mypkg.Block": "a type by its qualified name, when two classes share a short name",
    "[3]": "an element of a list, tuple or `Sequential` (of a stack: that layer)",
    "[-1]": "counting from the end",
    "[1:-1]": "a slice (`[::2]`, `[2:]`, ...)",
    "[*]": "every element",
    "*": "any one step",
    "**": "any number of steps, none included (`**.bias`)",
    "A | B": "what either matches",
    "A except B": "what `A` matches and `B` does not",
    "SEL if EXPR": "the matches for which `EXPR` holds (see the match properties)",
    "SEL expect N": "an error unless exactly N nodes match (`expect >= N`, `expect <= N`)",
    "SEL expect any": "the rule may match nothing (an optional rule)",
}


def signature(name: str, params: tuple[str, ...]) -> str:
    """`normal(stddev=…)`: a name and its parameters as a spec writes them.

    **Arguments:**

    - `name`: the callable's name.
    - `params`: its parameters, in `_names.Signature` notation (`name?` has a
      default, `name!` is keyword-only); `key` is left out, as eqxform gives it.

    **Returns:** the call, with `=…` after each parameter that has a default.
    """
    parts = []
    for p in params:
        bare = p.strip("?!")
        if bare == "key":
            continue
        parts.append(bare + ("=…" if "?" in p else ""))
    return f"{name}({', '.join(parts)})"
