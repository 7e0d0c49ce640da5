"""eqxform's resource policy: every bound on what its input may ask for.

A spec, a `--set` value or a model file is input from someone else: it must
not be able to hang eqxform, exhaust its memory or crash the interpreter. Each
bound is a named constant here, and each is enforced where the input enters,
with its own diagnostic (a code, a span, a `help:` line). The bounds are far
above what any real spec or model needs; reaching one means a mistake or an
attack. This module imports nothing of eqxform.
"""

from __future__ import annotations

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

# Seeds: any unsigned 64-bit integer; each gives its own key.
MAX_SEED = 2**64 - 1

# Members of an `ensemble`, layers of a `stack`: a count this large is a typo
# whatever the model (the memory budget below catches the smaller absurd ones).
MAX_COUNT = 1_000_000

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
