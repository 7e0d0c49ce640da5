"""Every resource limit eqxform enforces on its input, in one place.

A spec, a `--set` value or a model file is input from someone else: it must
not be able to hang eqxform, exhaust its memory or crash the interpreter. This
is a flat list of named constants, each with why it has the value it has. The
modules that read input check against these before they allocate or recurse,
and each limit that is hit is a diagnostic with its own code. The bounds are
far above what any real spec or model needs. Nothing here imports eqxform (or
anything else): every layer may read it.
"""

# ---- spec text (the parser) -------------------------------------------------

# Digits of a number literal. 2**64 has 20 digits, the largest float 309; CPython
# refuses to convert integers of more than 4,300 digits at all.
MAX_LITERAL_DIGITS = 400

# Nesting of a statement's syntax tree (brackets, unary operators, a chain of
# binary operators: `1 + 1 + ... + 1` nests one level per `+`). The parser's
# tree walk, the evaluator and the AST's own equality recurse once per level,
# and Python stops at 1,000 frames: 200 levels leave room for the caller's own.
MAX_NESTING = 200

# ---- expressions (the evaluator) ---------------------------------------------

# Bits of an integer an expression may compute: 2**256 and beyond is no size, no
# count and no seed (those stop at 2**64), and `9**9**9` would take hours.
MAX_INT_BITS = 256

# Elements of a string or a list an expression may build (`"a" * 10**10` would
# allocate 10 GB). Constructor arguments and shapes are far shorter.
MAX_SEQUENCE_LENGTH = 10_000

# ---- directives and arguments (the checker) -------------------------------------

# Members of an `ensemble`, layers of a `stack`: a count this large is a typo
# whatever the model (the memory budget below catches the smaller absurd ones).
MAX_COUNT = 1_000_000

# Members of a sweep (`ensemble N vary ...`, `ensemble grid ...`): each member's
# values are evaluated and its program compiled one by one, so a count this
# large is refused before any of that work starts.
MAX_SWEEP = 4_096

# Integer arguments of the constructors whose Python loops they drive (`depth`
# of an `MLP`, `count` of an `MLPChain`): building the skeleton runs that loop
# even under `eval_shape`, one traced layer at a time, so `depth=1000000` would
# hang before any size could be checked. No real network has more layers.
MAX_LAYERS = 1_000

# Any dimension of an array a spec declares or a constructor argument names
# (`width_size`, `in_features`, an `input` shape): XLA indexes with 32 bits.
MAX_DIMENSION = 2**31 - 1

# ---- memory -----------------------------------------------------------------------

# The bytes of arrays one model may hold. Checked on shapes alone (from the
# plan, and from `eqx.filter_eval_shape` of a constructor) before anything is
# allocated, so that a spec asking for a terabyte gets a diagnostic instead of
# an abort from XLA. By default half the machine's physical memory (`apply`
# holds the model it was given and the one it makes); set the environment
# variable to a number of bytes (suffixes K, M, G, T allowed) to change it,
# e.g. for an accelerator with more memory than the host, or `none` to turn the
# check off.
MAX_BYTES_ENV = "EQXFORM_MAX_BYTES"
# When the machine's memory cannot be read.
DEFAULT_MAX_BYTES = 16 * 2**30

# ---- models ---------------------------------------------------------------------

# Levels of a model's tree (modules, lists, tuples and dicts inside each other)
# from the root down to its deepest array. eqxform walks a model with a stack
# of its own, but JAX flattens a pytree recursively, each level counted against
# Python's recursion limit of 1,000 frames: `jax.tree_util.tree_flatten` fails
# at about 990 levels less the frames of its caller (and may leave the
# interpreter unable to continue), and `apply` calls it from inside traces some
# 200 frames deep. So every model given to eqxform and every constructor's
# result is measured first, and a deeper one refused; the rules' wrappers and
# stacks add a few levels below the bound. A real network nests a few dozen.
MAX_MODEL_DEPTH = 600

# ---- model files (safetensors header and recipe) ------------------------------

# The JSON header of a model file. A real header is about 100 bytes per tensor
# plus the recipe, so 16 MiB holds over a hundred thousand tensors (a large
# language model has about a thousand); the bound also caps the time a hostile
# header can cost the JSON reader at a few seconds. (safetensors itself stops
# at 100 MB.)
MAX_HEADER_BYTES = 16 * 1024 * 1024

# Values in the header's or the recipe's JSON, counted from above by their
# separators and brackets: a tensor takes about six, so a header within the
# size bound above holds far fewer; the bound keeps a hostile header (millions
# of empty lists) from costing more than about a second to parse.
MAX_JSON_ITEMS = 2_000_000

# Nesting of the header's and the recipe's JSON. A valid header nests 3 deep
# (tensors -> entry -> shape); a recipe 5 (specs -> entry -> params -> list);
# deeper is hostile and would make the JSON reader recurse.
MAX_JSON_DEPTH = 16

# Digits of an integer in a model file's JSON. 2**64 has 20 digits; Python
# refuses to convert more than 4,300 and the refusal is no diagnostic.
MAX_JSON_INT_DIGITS = 24

# Dimensions of one tensor, and the largest single dimension. XLA supports
# far fewer than 64 dimensions; no file of real data has a dimension of 2**48
# elements (256 TiB of bytes).
MAX_TENSOR_NDIM = 64
MAX_TENSOR_DIM = 2**48

# A string of a recipe (a spec's text, its constructor, a name). The spec texts
# of a recipe are what `apply` was given; 4 MiB is far beyond a hand-written spec.
MAX_RECIPE_STRING = 4 * 1024 * 1024

# The specs a recipe lists (each `apply` of a model adds one).
MAX_RECIPE_SPECS = 10_000

# Seeds (a recipe's among them): any unsigned 64-bit integer.
MAX_SEED = 2**64 - 1

# ---- output files -------------------------------------------------------------

# The longest file name most file systems take (NAME_MAX), used where the
# folder cannot be asked (`os.pathconf`).
DEFAULT_NAME_MAX = 255

# ---- training data (`eqxform train --data`) ------------------------------------

# The bytes one array of a data set may take once loaded. A header that claims
# more is refused before anything is read; the data must also fit the memory
# of the machine (checked separately, where it can be asked).
MAX_DATA_BYTES = 256 * 1024**3

# The bytes of one `.npy` header inside an `.npz` (numpy writes 64-byte
# multiples, at most a few KiB for any real dtype).
MAX_NPY_HEADER_BYTES = 64 * 1024
