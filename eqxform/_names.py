"""The names a spec may use, as static tables.

`eqxform check` is a linter: it must answer without importing JAX. So every
name it checks (constructors and their arguments, initialisers, `jax.nn`
functions, dtypes) is listed here, and `tests/test_names.py` holds each table to
the installed libraries, so that the two cannot drift apart.

A parameter is written `name`, `name?` (has a default) or `name!` (keyword-only);
`*name` and `**name` take anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.strip("?!*") for p in self.params)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(
            p.strip("!") for p in self.params if not p.endswith(("?", "?!")) and "*" not in p
        )

    @property
    def positional(self) -> tuple[str, ...]:
        return tuple(p.strip("?") for p in self.params if "!" not in p and "*" not in p)

    @property
    def varargs(self) -> bool:
        return any(p.startswith("*") and not p.startswith("**") for p in self.params)

    @property
    def varkw(self) -> bool:
        return any(p.startswith("**") for p in self.params)


def _sig(*params: str) -> Signature:
    """A signature from its parameters, separated by spaces: `_sig("size depth? key!")`."""
    return Signature(tuple(word for p in params for word in p.split()))


# The classes of 1, 2 and 3 spatial dimensions (`Conv2d`, `MaxPool1d`) share
# one signature each: `Conv`'s, less `num_spatial_dims`, for the convolutions.
_SPATIAL = (1, 2, 3)
_CONV = (
    "in_channels out_channels kernel_size stride? padding? dilation? groups? use_bias? "
    "padding_mode? dtype? key!"
)
_CONV_TRANSPOSE = (
    "in_channels out_channels kernel_size stride? output_padding? padding? dilation? groups? "
    "use_bias? padding_mode? dtype? key!"
)

# Every `equinox.nn` class a spec may construct, with its `__init__` signature
# (less `self`). The interpreter supplies `key`.
EQUINOX_NN = {
    **{f"AdaptiveAvgPool{n}d": _sig("target_shape") for n in _SPATIAL},
    **{f"AdaptiveMaxPool{n}d": _sig("target_shape") for n in _SPATIAL},
    **{f"AvgPool{n}d": _sig("kernel_size stride? padding? use_ceil?") for n in _SPATIAL},
    "BatchNorm": _sig(
        "input_size axis_name eps? channelwise_affine? momentum? inference? dtype? mode?"
    ),
    "Conv": _sig("num_spatial_dims", _CONV),
    **{f"Conv{n}d": _sig(_CONV) for n in _SPATIAL},
    "ConvTranspose": _sig(
        "num_spatial_dims in_channels out_channels kernel_size stride? padding? output_padding? "
        "dilation? groups? use_bias? padding_mode? dtype? key!"
    ),
    **{f"ConvTranspose{n}d": _sig(_CONV_TRANSPOSE) for n in _SPATIAL},
    "Dropout": _sig("p? inference? deterministic?!"),
    "Embedding": _sig("num_embeddings? embedding_size? weight? dtype? key?!"),
    "GRUCell": _sig("input_size hidden_size use_bias? dtype? key!"),
    "GroupNorm": _sig("groups channels? eps? channelwise_affine? dtype?"),
    "Identity": _sig("*args **kwargs"),
    "LSTMCell": _sig("input_size hidden_size use_bias? dtype? key!"),
    "Lambda": _sig("fn"),
    "LayerNorm": _sig("shape eps? use_weight? use_bias? dtype? elementwise_affine?!"),
    "Linear": _sig("in_features out_features use_bias? dtype? key!"),
    "MLP": _sig(
        "in_size out_size width_size depth activation? final_activation? use_bias? "
        "use_final_bias? dtype? scan?! key!"
    ),
    **{f"MaxPool{n}d": _sig("kernel_size stride? padding? use_ceil?") for n in _SPATIAL},
    "MultiheadAttention": _sig(
        "num_heads query_size key_size? value_size? output_size? qk_size? vo_size? "
        "use_query_bias? use_key_bias? use_value_bias? use_output_bias? dropout_p? inference? "
        "dtype? key!"
    ),
    "PReLU": _sig("init_alpha?"),
    "RMSNorm": _sig("shape eps? use_weight? use_bias? dtype?"),
    "RotaryPositionalEmbedding": _sig("embedding_size theta? dtype?"),
    "Sequential": _sig("layers"),
    "SpectralNorm": _sig("layer weight_name num_power_iterations? eps? inference? key!"),
    "WeightNorm": _sig("layer weight_name? axis?"),
}

# The example models of `eqxform.models`.
EXAMPLE_MODELS = {
    "MLPChain": _sig("size count width_size? depth? activation? key!"),
    "Tower": _sig("size width_size? depth? activation? key!"),
    "SmallCNN": _sig("in_channels? num_classes? width? key!"),
}

# Initialisers by name, with the arguments a spec may pass. `dtype` and the
# fan axes come from the matched array and Equinox's layouts, never the user.
INITIALIZERS = {
    "zeros": _sig(),
    "ones": _sig(),
    "constant": _sig("value"),
    "normal": _sig("stddev?"),
    "truncated_normal": _sig("stddev? lower? upper?"),
    "trunc_normal": _sig("stddev? lower? upper?"),
    "uniform": _sig("scale?"),
    "orthogonal": _sig("scale? column_axis?"),
    "delta_orthogonal": _sig("scale? column_axis?"),
    "variance_scaling": _sig("scale mode distribution"),
    "glorot_normal": _sig(),
    "glorot_uniform": _sig(),
    "xavier_normal": _sig(),
    "xavier_uniform": _sig(),
    "he_normal": _sig(),
    "he_uniform": _sig(),
    "kaiming_normal": _sig(),
    "kaiming_uniform": _sig(),
    "lecun_normal": _sig(),
    "lecun_uniform": _sig(),
}

# Initialisers that need fans, and so a weight of two or more dimensions.
FAN_INITIALIZERS = frozenset(
    "variance_scaling glorot_normal glorot_uniform xavier_normal xavier_uniform he_normal "
    "he_uniform kaiming_normal kaiming_uniform lecun_normal lecun_uniform orthogonal "
    "delta_orthogonal".split()
)

# `jax.nn` functions a spec may name as a value (`activation=gelu`).
FUNCTIONS = tuple(
    "celu elu gelu glu hard_sigmoid hard_silu hard_swish hard_tanh identity leaky_relu "
    "log_sigmoid log_softmax mish relu relu6 selu sigmoid silu soft_sign softmax softplus "
    "sparse_plus sparse_sigmoid squareplus swish tanh".split()
)

# Functions an expression may call.
EXPR_FUNCTIONS = {
    "sqrt": 1,
    "log": 1,
    "exp": 1,
    "abs": 1,
    "min": None,
    "max": None,
}

DTYPES = tuple("float16 bfloat16 float32 float64 int8 int16 int32 int64 uint8 uint32 bool".split())

# The dtypes an `input` line may name, short (in the order of `DTYPES`) and long.
INPUT_DTYPES = {
    **dict(zip("f16 bf16 f32 f64 i8 i16 i32 i64 u8 u32 bool".split(), DTYPES, strict=True)),
    **{d: d for d in DTYPES},
}

CONSTANTS = {"true": True, "false": False, "none": None}

# What a matched array or module tells an `if` filter or an `init` argument.
CONTEXT_NAMES = ("shape", "ndim", "size", "dtype", "fan_in", "fan_out", "path", "index")


# ---- the words of the language: one record each ----------------------------------
#
# Everything eqxform knows of a directive or an action is its record: the
# parser's keywords, the checker's argument checks, the plan's classification,
# the pass table, the docs tables, the editors' completion, hover and TextMate
# grammar are all derived from these. Adding an action is its record here, its
# pass (a class registered with `_passes._base.action_pass`) and, if it puts a
# new type in the model, that type in `_modules`.


@dataclass(frozen=True)
class Directive:
    """A statement's first word (`model`, `where`, `stack`, ...)."""

    name: str
    form: str  # how it is written, `model CTOR(ARGS)`
    doc: str  # what it does, in one line
    once: bool = False  # given at most once in a spec (E109)


DIRECTIVES = {
    d.name: d
    for d in (
        Directive(
            "model",
            "model CTOR(ARGS)",
            "the base model, built when no model file is given",
            once=True,
        ),
        Directive("seed", "seed N", "the seed every rule's random key is derived from", once=True),
        Directive("let", "let NAME = EXPR", "a named value (override with `--set NAME=VALUE`)"),
        Directive("where", "where SELECTOR [if EXPR] [expect N] -> ACTION, ...", "a rule"),
        Directive(
            "optimizer", "optimizer NAME(ARGS)", "the base optax optimiser for training", once=True
        ),
        Directive(
            "ensemble",
            "ensemble N [vary NAME=EXPR, ...] [over AXIS]",
            "N members with a leading member axis; `vary` (or `ensemble grid NAME=[...] ...`) "
            "gives each member its own hyper-parameters, trained as one program",
            once=True,
        ),
        Directive(
            "stack",
            "stack PATH scan|vmap [N] [remat] [unroll K] [layerwise] [over AXIS]",
            "identical layers as one stacked module; a module built pre-stacked (a leading "
            "layer axis) is taken as it is",
        ),
        Directive("unstack", "unstack PATH", "a stacked module back into its layers"),
        Directive("input", "input DTYPE[SHAPE]", "the model's input, to check the forward pass"),
        Directive(
            "mesh",
            "mesh AXIS=N ...",
            "the device mesh for `shard` rules (`-1`: the devices left over)",
            once=True,
        ),
        Directive(
            "weights",
            'weights "PATH"',
            "a checkpoint in another library's names, read by the `map` lines",
            once=True,
        ),
        Directive(
            "map",
            'map "NAME", ... -> "PATH", ... [with ACTION, ...]',
            "checkpoint tensors into model arrays (docs/weights.md)",
        ),
        Directive("skip", 'skip "PATTERN", ...', "checkpoint tensors left unread on purpose"),
        Directive(
            "keep",
            'keep "PATTERN", ...',
            "model arrays that keep their values (no tensor fills them)",
        ),
    )
}


@dataclass(frozen=True)
class Action:
    """An action of a rule (`where SELECTOR -> NAME ARG`)."""

    name: str
    # What follows the name: "none", "initializer", "constructor", "dtype",
    # "expr", "wrapper", "spec" (a partition spec), or "keywords" (keyword
    # arguments in parentheses, each with a default: `lora(rank=8)`).
    arg: str
    doc: str  # what it does, in one line
    example: str  # how it is written
    value: str | None = None  # the kind an "expr" argument must be (`INITIALIZER_ARGS`' kinds)
    keywords: Signature | None = None  # the keyword arguments of a "keywords" action
    defaults: tuple[tuple[str, Any], ...] = ()  # ... and their defaults
    kinds: tuple[tuple[str, Any], ...] = ()  # ... and their kinds, where checked before a match
    changes: str = "model"  # or "optimiser" (an optax group, no pass), "placement" (`shard`)
    nodes: bool = False  # acts on the matched nodes as they are, not the arrays under them
    per_layer: bool = False  # can act on some layers of a stack
    # Changes neither the model's structure nor what later selectors see: a
    # rule of these alone can be left out without changing later matches.
    transparent: bool = False
    floats: bool = False  # acts on floating-point arrays only (the plan counts those skipped)
    writes_values: bool = False  # writes array values (that a later `init` overwrites)
    overwrites: bool = False  # writes values without reading them (undoes earlier writes)
    types: tuple[str, ...] = ()  # the module types it puts in the model (selectors name them)


def _action(name: str, arg: str, doc: str, example: str, flags: str = "", **more: Any):
    """`name` and its record; `flags` names the record's flags that are true."""
    return name, Action(name, arg, doc, example, **more, **dict.fromkeys(flags.split(), True))


# The policies of `remat(policy=...)`: the names in `jax.checkpoint_policies`
# that are policies themselves (not functions that make one); none saves only
# the module's inputs, as `jax.checkpoint` does by default.
REMAT_POLICIES = tuple(
    "nothing_saveable everything_saveable dots_saveable dots_with_no_batch_dims_saveable "
    "checkpoint_dots checkpoint_dots_with_no_batch_dims".split()
)

# The adapters' defaults are PEFT's (`LoraConfig`: r=8, lora_alpha=8).
ACTIONS = dict(
    (
        _action(
            "init",
            "initializer",
            "re-draw arrays from an initialiser, with fans in Equinox's layouts",
            "init zeros",
            flags="per_layer transparent floats writes_values overwrites",
        ),
        _action(
            "replace",
            "constructor",
            "swap the matched module for a new one (or a function for another)",
            "replace Linear(in_features=8, out_features=2)",
            flags="nodes",
        ),
        _action(
            "cast",
            "dtype",
            "change the dtype of the matched floating-point arrays",
            "cast bfloat16",
            flags="transparent floats",
        ),
        _action(
            "scale",
            "expr",
            "multiply arrays by a number",
            "scale 0.5",
            value="real",
            flags="per_layer transparent floats writes_values",
        ),
        _action(
            "wrap",
            "wrapper",
            "give arrays a per-parameter behaviour, resolved at the jit/grad boundary",
            "wrap symmetric",
            types=("Wrapper", "Symmetric", "Positive", "WeightNormed"),
            flags="nodes",
        ),
        _action(
            "freeze",
            "none",
            "no gradient, and the optimiser leaves them alone (weight decay included)",
            "freeze",
            types=("Frozen",),
            flags="per_layer transparent floats",
        ),
        _action("unwrap", "none", "bake wrappers into plain arrays", "unwrap", nodes=True),
        _action(
            "lr",
            "expr",
            "scale the base learning rate for these parameters",
            "lr 0.5",
            value="nonneg",
            changes="optimiser",
            flags="transparent",
        ),
        _action(
            "weight_decay",
            "expr",
            "set the weight decay for these parameters",
            "weight_decay 0.5",
            value="nonneg",
            changes="optimiser",
            flags="transparent",
        ),
        _action(
            "lora",
            "keywords",
            "low-rank adapters on a `Linear` or a 2-D weight, the base frozen",
            "lora(rank=8, alpha=16)",
            keywords=_sig("rank? alpha?"),
            defaults=(("rank", 8), ("alpha", 8)),
            types=("LoRA", "LoRAWeight"),
            flags="nodes per_layer",
        ),
        _action(
            "ia3",
            "keywords",
            "(IA)^3: a learned scaling vector on a `Linear`'s output (or "
            "input, `feedforward=true`)",
            "ia3(feedforward=true)",
            keywords=_sig("feedforward?"),
            defaults=(("feedforward", False),),
            types=("IA3", "IA3Weight"),
            flags="nodes per_layer",
        ),
        _action(
            "merge",
            "none",
            "bake adapters (`lora`, `ia3`) into their base weights",
            "merge",
            flags="nodes",
        ),
        _action(
            "shard",
            "spec",
            "the partition spec of one layer's arrays on the spec's `mesh`; the rest are "
            "replicated",
            "shard (none, model)",
            changes="placement",
        ),
        _action(
            "remat",
            "keywords",
            "recompute the matched modules' activations on the backward pass (gradient "
            "checkpointing), keeping what `policy` saves",
            "remat(policy=dots_saveable)",
            keywords=_sig("policy?"),
            defaults=(("policy", None),),
            kinds=(("policy", REMAT_POLICIES),),
            types=("Remat",),
            flags="nodes",
        ),
    )
)

# The model types the actions put in the model, which selectors may name.
ACTION_TYPES = tuple(t for a in ACTIONS.values() for t in a.types)


@dataclass(frozen=True)
class MapAction:
    """What may follow `with` on a `map` line (docs/weights.md). `transpose` and
    `reshape` change each checkpoint tensor's layout, in the order written;
    `axis` is where several tensors fuse or one splits, in the model's layout."""

    arg: str  # "none", "axes?" (a permutation or none), "shape?", "axis"
    doc: str
    example: str


MAP_ACTIONS = {
    "transpose": MapAction(
        "axes?",
        "reverse (or, with a list, permute) each tensor's axes on load; undone on export",
        "e.g. `transpose` (reverse the axes) or `transpose [2, 3, 1, 0]`",
    ),
    "reshape": MapAction(
        "shape?",
        "each tensor into the array's shape (or the one given); undone on export",
        "e.g. `reshape` (to the array's shape) or `reshape [-1, 1, 1]`",
    ),
    "cast": MapAction(
        "none",
        "into the array's dtype on load, back into the checkpoint's on export",
        'e.g. `map "fc.weight" -> "fc.weight" with cast`',
    ),
    "axis": MapAction(
        "axis",
        "where several tensors fuse into one array, or one splits into several",
        "e.g. `axis 0`: fuse or split along the first axis",
    ),
}

# The words a `stack` line takes after its mode (besides a count and `over AXIS`),
# and those of them that take a number.
STACK_OPTIONS = ("remat", "unroll", "layerwise", "copies")
STACK_NUMBERED = ("unroll",)

# A `scan` stack of at most this many layers runs unrolled (`unroll` its count)
# unless its line says `unroll K`. A rolled loop costs XLA a fixed amount to
# compile (the stores and loads of what the backward pass keeps, per layer
# array) that a few unrolled copies of one layer do not: measured on the CPU
# (`benchmarks/libraries.py`), a rolled scan of 2 or 3 blocks compiled its
# forward and gradient 1.15x-1.5x slower than the blocks unstacked, unrolled
# ones as fast; from 4 blocks the loop pays for itself. The model (stacked arrays,
# selectors, `unstack`) and its numbers are the same either way.
UNROLLED_UP_TO = 3

# The losses `eqxform train` knows by name (`--loss`); `_runtime._train` holds
# their functions.
LOSSES = ("mse", "cross_entropy")

# Built-in wrappers (`wrap NAME(ARGS)`); users add theirs with
# `eqxform.register_wrapper`.
WRAPPERS = {
    "symmetric": _sig(),
    "positive": _sig("minimum?"),
    "weight_norm": _sig(),
}

# optax optimisers by name, with their signatures.
OPTIMIZERS = {
    "adam": _sig("learning_rate b1? b2? eps? eps_root? mu_dtype? nesterov?!"),
    "adamw": _sig("learning_rate b1? b2? eps? eps_root? mu_dtype? weight_decay? mask? nesterov?!"),
    "sgd": _sig("learning_rate momentum? nesterov? accumulator_dtype?"),
    "lion": _sig("learning_rate b1? b2? mu_dtype? weight_decay? mask?"),
    "rmsprop": _sig(
        "learning_rate decay? eps? initial_scale? eps_in_sqrt? centered? momentum? nesterov? "
        "bias_correction?"
    ),
    "adagrad": _sig("learning_rate initial_accumulator_value? eps?"),
    "adabelief": _sig("learning_rate b1? b2? eps? eps_root? nesterov?!"),
    "adamax": _sig("learning_rate b1? b2? eps?"),
    "adamaxw": _sig("learning_rate b1? b2? eps? weight_decay? mask?"),
    "nadam": _sig("learning_rate b1? b2? eps? eps_root? mu_dtype? nesterov?!"),
    "nadamw": _sig("learning_rate b1? b2? eps? eps_root? mu_dtype? weight_decay? mask? nesterov?!"),
    "radam": _sig("learning_rate b1? b2? eps? eps_root? threshold? nesterov?!"),
    "lamb": _sig("learning_rate b1? b2? eps? eps_root? weight_decay? mask?"),
    "yogi": _sig("learning_rate b1? b2? eps?"),
    "novograd": _sig("learning_rate b1? b2? eps? eps_root? weight_decay?"),
}


# What each argument of an initialiser, a wrapper, an optimiser and an action
# must be, so that a wrong type is a diagnostic before JAX sees it. Kinds:
# "real" (a number), "nonneg" (a number >= 0), "int", "bool", "dtype", or a
# tuple of the strings allowed; a trailing "?" also allows `none`. Arguments
# not listed (a user's initialiser, optax's `mask`) are passed as written.
INITIALIZER_ARGS = {
    "constant": {"value": "real"},
    "normal": {"stddev": "nonneg"},
    "truncated_normal": {"stddev": "nonneg", "lower": "real", "upper": "real"},
    "trunc_normal": {"stddev": "nonneg", "lower": "real", "upper": "real"},
    "uniform": {"scale": "real"},
    "orthogonal": {"scale": "real", "column_axis": "int"},
    "delta_orthogonal": {"scale": "real", "column_axis": "int"},
    "variance_scaling": {
        "scale": "nonneg",
        "mode": ("fan_in", "fan_out", "fan_avg", "fan_geo_avg"),
        "distribution": ("truncated_normal", "normal", "uniform"),
    },
}

WRAPPER_ARGS = {"positive": {"minimum": "real"}}

_OPTIMIZER_ARG_KINDS = {
    "learning_rate": "nonneg",
    # A moment's decay rate: 1 or more never forgets (adam's bias correction
    # divides by 1 - b1**t), below 0 flips the sign of the history.
    "b1": "fraction",
    "b2": "fraction",
    "eps": "nonneg",
    "eps_root": "nonneg",
    "weight_decay": "nonneg",
    "decay": "real",
    "initial_scale": "real",
    "initial_accumulator_value": "real",
    "momentum": "fraction?",
    "threshold": "real",
    "nesterov": "bool",
    "centered": "bool",
    "eps_in_sqrt": "bool",
    "bias_correction": "bool",
    "mu_dtype": "dtype?",
    "accumulator_dtype": "dtype?",
}
OPTIMIZER_ARGS = {
    name: {p: _OPTIMIZER_ARG_KINDS[p] for p in sig.names if p in _OPTIMIZER_ARG_KINDS}
    for name, sig in OPTIMIZERS.items()
}


# Integer arguments of the built-in constructors that drive a Python loop when
# the model is built (and so when its skeleton is traced).
LOOP_ARGS = {
    "MLP": ("depth",),
    "MLPChain": ("count", "depth"),
    "Tower": ("depth",),
}
