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
    return Signature(tuple(params))


# Every `equinox.nn` class a spec may construct, with its `__init__` signature
# (less `self`). The interpreter supplies `key`.
EQUINOX_NN = {
    "AdaptiveAvgPool1d": _sig("target_shape"),
    "AdaptiveAvgPool2d": _sig("target_shape"),
    "AdaptiveAvgPool3d": _sig("target_shape"),
    "AdaptiveMaxPool1d": _sig("target_shape"),
    "AdaptiveMaxPool2d": _sig("target_shape"),
    "AdaptiveMaxPool3d": _sig("target_shape"),
    "AvgPool1d": _sig("kernel_size", "stride?", "padding?", "use_ceil?"),
    "AvgPool2d": _sig("kernel_size", "stride?", "padding?", "use_ceil?"),
    "AvgPool3d": _sig("kernel_size", "stride?", "padding?", "use_ceil?"),
    "BatchNorm": _sig(
        "input_size",
        "axis_name",
        "eps?",
        "channelwise_affine?",
        "momentum?",
        "inference?",
        "dtype?",
        "mode?",
    ),
    "Conv": _sig(
        "num_spatial_dims",
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride?",
        "padding?",
        "dilation?",
        "groups?",
        "use_bias?",
        "padding_mode?",
        "dtype?",
        "key!",
    ),
    "Conv1d": _sig(
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride?",
        "padding?",
        "dilation?",
        "groups?",
        "use_bias?",
        "padding_mode?",
        "dtype?",
        "key!",
    ),
    "Conv2d": _sig(
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride?",
        "padding?",
        "dilation?",
        "groups?",
        "use_bias?",
        "padding_mode?",
        "dtype?",
        "key!",
    ),
    "Conv3d": _sig(
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride?",
        "padding?",
        "dilation?",
        "groups?",
        "use_bias?",
        "padding_mode?",
        "dtype?",
        "key!",
    ),
    "ConvTranspose": _sig(
        "num_spatial_dims",
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride?",
        "padding?",
        "output_padding?",
        "dilation?",
        "groups?",
        "use_bias?",
        "padding_mode?",
        "dtype?",
        "key!",
    ),
    "ConvTranspose1d": _sig(
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride?",
        "output_padding?",
        "padding?",
        "dilation?",
        "groups?",
        "use_bias?",
        "padding_mode?",
        "dtype?",
        "key!",
    ),
    "ConvTranspose2d": _sig(
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride?",
        "output_padding?",
        "padding?",
        "dilation?",
        "groups?",
        "use_bias?",
        "padding_mode?",
        "dtype?",
        "key!",
    ),
    "ConvTranspose3d": _sig(
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride?",
        "output_padding?",
        "padding?",
        "dilation?",
        "groups?",
        "use_bias?",
        "padding_mode?",
        "dtype?",
        "key!",
    ),
    "Dropout": _sig("p?", "inference?", "deterministic?!"),
    "Embedding": _sig("num_embeddings?", "embedding_size?", "weight?", "dtype?", "key?!"),
    "GRUCell": _sig("input_size", "hidden_size", "use_bias?", "dtype?", "key!"),
    "GroupNorm": _sig("groups", "channels?", "eps?", "channelwise_affine?", "dtype?"),
    "Identity": _sig("*args", "**kwargs"),
    "LSTMCell": _sig("input_size", "hidden_size", "use_bias?", "dtype?", "key!"),
    "Lambda": _sig("fn"),
    "LayerNorm": _sig(
        "shape", "eps?", "use_weight?", "use_bias?", "dtype?", "elementwise_affine?!"
    ),
    "Linear": _sig("in_features", "out_features", "use_bias?", "dtype?", "key!"),
    "MLP": _sig(
        "in_size",
        "out_size",
        "width_size",
        "depth",
        "activation?",
        "final_activation?",
        "use_bias?",
        "use_final_bias?",
        "dtype?",
        "scan?!",
        "key!",
    ),
    "MaxPool1d": _sig("kernel_size", "stride?", "padding?", "use_ceil?"),
    "MaxPool2d": _sig("kernel_size", "stride?", "padding?", "use_ceil?"),
    "MaxPool3d": _sig("kernel_size", "stride?", "padding?", "use_ceil?"),
    "MultiheadAttention": _sig(
        "num_heads",
        "query_size",
        "key_size?",
        "value_size?",
        "output_size?",
        "qk_size?",
        "vo_size?",
        "use_query_bias?",
        "use_key_bias?",
        "use_value_bias?",
        "use_output_bias?",
        "dropout_p?",
        "inference?",
        "dtype?",
        "key!",
    ),
    "PReLU": _sig("init_alpha?"),
    "RMSNorm": _sig("shape", "eps?", "use_weight?", "use_bias?", "dtype?"),
    "RotaryPositionalEmbedding": _sig("embedding_size", "theta?", "dtype?"),
    "Sequential": _sig("layers"),
    "SpectralNorm": _sig(
        "layer", "weight_name", "num_power_iterations?", "eps?", "inference?", "key!"
    ),
    "WeightNorm": _sig("layer", "weight_name?", "axis?"),
}

# The example models of `eqxform.models`.
EXAMPLE_MODELS = {
    "MLPChain": _sig("size", "count", "width_size?", "depth?", "activation?", "key!"),
    "Tower": _sig("size", "width_size?", "depth?", "activation?", "key!"),
    "SmallCNN": _sig("in_channels?", "num_classes?", "width?", "key!"),
}

# Initialisers by name, with the arguments a spec may pass. `dtype` and the
# fan axes come from the matched array and Equinox's layouts, never the user.
INITIALIZERS = {
    "zeros": _sig(),
    "ones": _sig(),
    "constant": _sig("value"),
    "normal": _sig("stddev?"),
    "truncated_normal": _sig("stddev?", "lower?", "upper?"),
    "trunc_normal": _sig("stddev?", "lower?", "upper?"),
    "uniform": _sig("scale?"),
    "orthogonal": _sig("scale?", "column_axis?"),
    "delta_orthogonal": _sig("scale?", "column_axis?"),
    "variance_scaling": _sig("scale", "mode", "distribution"),
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
    {
        "variance_scaling",
        "glorot_normal",
        "glorot_uniform",
        "xavier_normal",
        "xavier_uniform",
        "he_normal",
        "he_uniform",
        "kaiming_normal",
        "kaiming_uniform",
        "lecun_normal",
        "lecun_uniform",
        "orthogonal",
        "delta_orthogonal",
    }
)

# `jax.nn` functions a spec may name as a value (`activation=gelu`).
FUNCTIONS = (
    "celu",
    "elu",
    "gelu",
    "glu",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "identity",
    "leaky_relu",
    "log_sigmoid",
    "log_softmax",
    "mish",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "soft_sign",
    "softmax",
    "softplus",
    "sparse_plus",
    "sparse_sigmoid",
    "squareplus",
    "swish",
    "tanh",
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

DTYPES = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint32",
    "bool",
)

# The dtypes an `input` line may name, short and long.
INPUT_DTYPES = {
    "f16": "float16",
    "bf16": "bfloat16",
    "f32": "float32",
    "f64": "float64",
    "i8": "int8",
    "i16": "int16",
    "i32": "int32",
    "i64": "int64",
    "u8": "uint8",
    "u32": "uint32",
    "bool": "bool",
    **{d: d for d in DTYPES},
}

CONSTANTS = {"true": True, "false": False, "none": None}

# What a matched array or module tells an `if` filter or an `init` argument.
CONTEXT_NAMES = ("shape", "ndim", "size", "dtype", "fan_in", "fan_out", "path", "index")


@dataclass(frozen=True)
class ActionInfo:
    arg: str  # "none", "initializer", "constructor", "dtype", "expr", "wrapper", "adapter", "spec"


ACTIONS = {
    "init": ActionInfo("initializer"),
    "replace": ActionInfo("constructor"),
    "cast": ActionInfo("dtype"),
    "scale": ActionInfo("expr"),
    "wrap": ActionInfo("wrapper"),
    "freeze": ActionInfo("none"),
    "unwrap": ActionInfo("none"),
    "lr": ActionInfo("expr"),
    "weight_decay": ActionInfo("expr"),
    "lora": ActionInfo("adapter"),
    "ia3": ActionInfo("adapter"),
    "merge": ActionInfo("none"),
    "shard": ActionInfo("spec"),
}


@dataclass(frozen=True)
class MapActionInfo:
    arg: str  # "none", "axes?" (a permutation or none), "shape?", "axis"
    example: str


# What may follow `with` on a `map` line (docs/weights.md). `transpose` and
# `reshape` change each checkpoint tensor's layout, in the order written;
# `axis` is where several tensors fuse or one splits, in the model's layout.
MAP_ACTIONS = {
    "transpose": MapActionInfo(
        "axes?", "e.g. `transpose` (reverse the axes) or `transpose [2, 3, 1, 0]`"
    ),
    "reshape": MapActionInfo(
        "shape?", "e.g. `reshape` (to the array's shape) or `reshape [-1, 1, 1]`"
    ),
    "cast": MapActionInfo("none", 'e.g. `map "fc.weight" -> "fc.weight" with cast`'),
    "axis": MapActionInfo("axis", "e.g. `axis 0`: fuse or split along the first axis"),
}

# Adapters (`lora(rank=8, alpha=16)`, `ia3`), with their keyword arguments.
# `rank` and `alpha` default as in PEFT's `LoraConfig` (r=8, lora_alpha=8).
ADAPTERS = {
    "lora": _sig("rank?", "alpha?"),
    "ia3": _sig("feedforward?"),
}
ADAPTER_DEFAULTS = {
    "lora": {"rank": 8, "alpha": 8},
    "ia3": {"feedforward": False},
}

# Actions that only shape the optimiser, not the model.
OPTIMIZER_ACTIONS = ("lr", "weight_decay")

# Actions that place arrays on the device mesh, not change them.
PLACEMENT_ACTIONS = ("shard",)

# Built-in wrappers (`wrap NAME(ARGS)`); users add theirs with
# `eqxform.register_wrapper`.
WRAPPERS = {
    "symmetric": _sig(),
    "positive": _sig("minimum?"),
    "weight_norm": _sig(),
}

# optax optimisers by name, with their signatures.
OPTIMIZERS = {
    "adam": _sig("learning_rate", "b1?", "b2?", "eps?", "eps_root?", "mu_dtype?", "nesterov?!"),
    "adamw": _sig(
        "learning_rate",
        "b1?",
        "b2?",
        "eps?",
        "eps_root?",
        "mu_dtype?",
        "weight_decay?",
        "mask?",
        "nesterov?!",
    ),
    "sgd": _sig("learning_rate", "momentum?", "nesterov?", "accumulator_dtype?"),
    "lion": _sig("learning_rate", "b1?", "b2?", "mu_dtype?", "weight_decay?", "mask?"),
    "rmsprop": _sig(
        "learning_rate",
        "decay?",
        "eps?",
        "initial_scale?",
        "eps_in_sqrt?",
        "centered?",
        "momentum?",
        "nesterov?",
        "bias_correction?",
    ),
    "adagrad": _sig("learning_rate", "initial_accumulator_value?", "eps?"),
    "adabelief": _sig("learning_rate", "b1?", "b2?", "eps?", "eps_root?", "nesterov?!"),
    "adamax": _sig("learning_rate", "b1?", "b2?", "eps?"),
    "adamaxw": _sig("learning_rate", "b1?", "b2?", "eps?", "weight_decay?", "mask?"),
    "nadam": _sig("learning_rate", "b1?", "b2?", "eps?", "eps_root?", "mu_dtype?", "nesterov?!"),
    "nadamw": _sig(
        "learning_rate",
        "b1?",
        "b2?",
        "eps?",
        "eps_root?",
        "mu_dtype?",
        "weight_decay?",
        "mask?",
        "nesterov?!",
    ),
    "radam": _sig("learning_rate", "b1?", "b2?", "eps?", "eps_root?", "threshold?", "nesterov?!"),
    "lamb": _sig("learning_rate", "b1?", "b2?", "eps?", "eps_root?", "weight_decay?", "mask?"),
    "yogi": _sig("learning_rate", "b1?", "b2?", "eps?"),
    "novograd": _sig("learning_rate", "b1?", "b2?", "eps?", "eps_root?", "weight_decay?"),
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
    "b1": "real",
    "b2": "real",
    "eps": "nonneg",
    "eps_root": "nonneg",
    "weight_decay": "nonneg",
    "decay": "real",
    "initial_scale": "real",
    "initial_accumulator_value": "real",
    "momentum": "real?",
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

ACTION_ARGS = {"scale": "real", "lr": "nonneg", "weight_decay": "nonneg"}

# Integer arguments of the built-in constructors that drive a Python loop when
# the model is built (and so when its skeleton is traced).
LOOP_ARGS = {
    "MLP": ("depth",),
    "MLPChain": ("count", "depth"),
    "Tower": ("depth",),
}
