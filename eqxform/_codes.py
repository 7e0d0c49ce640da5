"""Every diagnostic code: what it says, what it means, an example, and the fix.

One record a code, and everything else is derived from it: a diagnostic is
built from its code and named fields (`report("E134", span=..., value=...)`
in `_diagnostics`); `eqxform explain CODE` prints the record, and so does the
diagnostics index of the documentation. A record's `message` and `help` are
templates whose `{fields}` a report fills, and its fix is its help line unless
it says more than that; where one code says its problem in more than one way,
each way is a named variant (`variant="at_most"`). Text that several records
share (a damaged file's prefix, a help) is a constant here. The codes are
stable: a code names one problem, and a new problem gets a new code. The
hundreds say where a problem is found:

- E0xx: the spec's syntax (the parser)
- E1xx: the spec alone, without a model (the checker; `eqxform check`)
- E2xx: the spec against a model (selection and the passes; `plan`, `apply`)
- E3xx: model files
- E4xx: the command line and the Python API's arguments
- E5xx: running (training)
- E6xx: the formatter and the language server
- W2xx: warnings (the work is done, but may not be what was meant)
- I1xx: notes (nothing is wrong: what `eqxform check` without a model leaves to the model)
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

SEVERITY = {"E": "error", "W": "warning", "I": "note"}


def fields(template: str | None) -> set[str]:
    """The names of a template's fields (`{value:,}` -> `value`)."""
    if not template:
        return set()
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@dataclass(frozen=True)
class Code:
    """A code's record: its `title`, the `explanation`, an `example` spec, the
    general `fix`, and what a diagnostic of it says: the `message` and `help`
    templates, and further named `variants` of that pair."""

    code: str
    title: str
    explanation: str
    example: str
    fix: str
    message: str = ""
    help: str | None = None
    variants: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def says(self, variant: str | None = None) -> tuple[str, str | None]:
        """The (message, help) templates of `variant` (None: the first)."""
        if variant is None:
            return self.message, self.help
        return self.variants[variant]

    def render(self) -> str:
        lines = [f"{self.code}: {self.title}", ""]
        severity = SEVERITY[self.code[0]]
        ways = [(None, self.message, self.help)] if self.message else []
        ways += [(name, m, h) for name, (m, h) in self.variants.items()]
        for name, message, help in ways:
            lines.append(f"{severity}[{self.code}]: {message}" + (f"  ({name})" if name else ""))
            if help:
                lines.append(f"  = help: {help}")
        if ways:
            lines.append("")
        lines.append(self.explanation)
        if self.example:
            lines += ["", "Example:", ""]
            lines += ["    " + line for line in self.example.splitlines()]
        lines += ["", "Fix: " + self.fix]
        return "\n".join(lines)


def _c(
    code: str,
    title: str,
    explanation: str,
    example: str,
    fix: str = "",
    message: str = "",
    help: str | None = None,
    **variants: tuple[str, str | None],
) -> Code:
    """A record; its fix is its help line unless it says more than that."""
    return Code(code, title, explanation, example, fix or help or "", message, help, variants)


# What every diagnostic of a damaged model file starts with, and its usual help.
_INVALID = "`{path}` is not a valid model file: "
_COPIED = "was it written by `eqxform` (or another safetensors writer) and copied whole?"
# The help of a recipe or an adapter record whose fields are wrong.
_REWRITE = (
    "the {what} was edited or written by another program; write the file again (a model with "
    "`eqxform apply` or `eqxform new`, adapters with `eqxform.save(..., adapters_only=True)` "
    "or `--adapters-only`)"
)
# What E213 says in each of its ways: the function that failed, where, and why.
_REJECTS = "after this rule `{op}`{where} does not accept {dtype}: {error}"
# The help of a message the language server cannot read.
_FRAMING = (
    "each message is `Content-Length: N` (N bytes of UTF-8, in ASCII digits), a blank line, "
    "then exactly N bytes of JSON-RPC; the server read on from the next message's header"
)
# The help of each way a run of several processes is started wrongly.
_JOIN = (
    "start every process with the same `--coordinator HOST:PORT` (process 0's address) and "
    "`--num-processes N`, and its own `--process-id` from 0 to N-1"
)

CODES: dict[str, Code] = {
    c.code: c
    for c in [
        _c(
            "E000",
            "an error without a code",
            "An `EqxformError` raised with a plain message, by code outside eqxform "
            "that subclasses its errors.",
            "",
            "read the message; eqxform's own errors always carry a code.",
        ),
        # ---- syntax
        _c(
            "E001",
            "unexpected token",
            "The parser met a word or symbol where the grammar allows none of that kind.",
            "where Linear.weight -> init normal(stddev=)",
            "compare the line with the language reference; the help line lists what may come here.",
            message="unexpected `{token}`",
            expected=("unexpected `{token}`", "expected {expected} here"),
        ),
        _c(
            "E002",
            "unexpected character",
            "A character that is no part of the language: `{`, `;`, `!`, `&`, ...",
            "where layers{0} -> freeze",
            message="unexpected byte-order mark (U+FEFF)",
            help="a byte-order mark may only begin the text; remove this one",
            character=("unexpected character `{char}`", None),
        ),
        _c(
            "E003",
            "missing `->`",
            "A `where` rule separates its selector from its actions with `->`.",
            "where Linear.weight init zeros",
            message="expected `->` between the selector and its actions",
            help="write `where SELECTOR -> ACTION`, e.g. `where Linear.weight -> init zeros`",
        ),
        _c(
            "E004",
            "unclosed bracket",
            "A `(` or `[` is not closed before the end of the line; a statement is one line.",
            "model MLP(in_size=2, out_size=2",
            message="unclosed `{bracket}`",
            help="add the closing `{closing}`",
        ),
        _c(
            "E005",
            "stray comma",
            "A comma with nothing on one side of it, or separating selectors.",
            "where x -> init zeros,",
            message="stray comma",
            help="remove this `,`: actions, arguments and selectors are separated by single commas, and a selector list uses `|`",
        ),
        _c(
            "E006",
            "unknown directive",
            "A line starts with a word that is no directive.",
            "wher Linear.weight -> init zeros",
            message="unknown directive `{word}`",
            help="{hint}a line starts with one of {directives}",
        ),
        _c(
            "E007",
            "unexpected end of line",
            "The line ends where the grammar needs more.",
            "where Linear.weight ->",
            "complete the statement; the help line says what is missing.",
            message="unexpected end of line",
            expected=("unexpected end of line", "expected {expected}"),
        ),
        _c(
            "E008",
            "missing comma",
            "Two arguments or two actions follow each other without a comma.",
            "where x -> freeze lr 0.1",
            message="expected `,` before `{token}`",
            help="separate {things} with `,`",
        ),
        _c(
            "E009",
            "`where` without a selector",
            "A rule must say what it acts on.",
            "where -> freeze",
            message="`where` needs a selector before `->`",
            help="e.g. `where Linear.weight -> init zeros`",
        ),
        _c(
            "E010",
            "a line break other than `\\n`",
            "eqxform ends a line only at `\\n` (a `\\r` just before it belongs to the break). "
            "A `\\r` alone, a vertical tab, NEL (U+0085), the Unicode line and paragraph "
            "separators (U+2028, U+2029) and the information separators are line breaks to some "
            "editors and to Python's `str.splitlines`, but not to eqxform: in a comment they would "
            "hide what an editor shows as the next line (or the reverse). They are refused "
            "wherever they are; the first is shown, with the count of the others. A form feed "
            "is whitespace, as in Python.",
            "# a comment (then U+2028) where Linear.weight -> freeze",
            message="{break_names} in the text",
            help="eqxform ends a line only at `\\n` (or `\\r\\n`), and editors disagree about this character: remove it, or save the file with Unix line endings",
        ),
        _c(
            "E011",
            "number literal out of range",
            "A number with more than 400 digits, or a decimal number beyond the largest float "
            "(about `1.8e308`). No size, count or seed needs one (`_limits.MAX_LITERAL_DIGITS`).",
            "let big = 1e400",
            message="a number of {digits:,} digits is out of range",
            help="numbers in a spec have at most {max_literal_digits} digits; write a large one as a power, e.g. `2**64`",
            out_range=(
                "`{clip_text}` is out of range",
                "the largest number a spec can hold is about `1.8e308`",
            ),
        ),
        _c(
            "E012",
            "expression nested too deeply",
            "A statement nested more than 200 levels deep: brackets in brackets, a chain of "
            "`-` or `not`, or a sum of hundreds of terms (each `+` nests one level). The "
            "limit (`_limits.MAX_NESTING`) keeps the parser and the evaluator within Python's "
            "recursion limit.",
            "let x = 1 + 1 + 1 + ... (500 terms)",
            message="this expression is nested more than {max_nesting} levels deep",
            help="split it with `let` names, e.g. `let a = ...` then `let b = a + ...`",
        ),
        _c(
            "E013",
            "index or slice bound that is not a whole number",
            "A selector's index and its slice's start, stop and step are whole numbers; `1.5` "
            "is refused rather than read as `1`.",
            "where layers[::0.5] -> freeze",
            message="{what} must be a whole number, not `{clip_text}`",
            help="write it without a point or an exponent, e.g. `layers[1]` or `layers[::2]`",
        ),
        # ---- the spec alone
        _c(
            "E101",
            "unknown action",
            "The word after `->` (or after a comma) is no action.",
            "where Linear.weight -> initialise zeros",
            "use one of `init`, `replace`, `cast`, `scale`, `wrap`, `freeze`, `unwrap`, `lr`, "
            "`weight_decay`.",
            message="unknown action `{name}`",
        ),
        _c(
            "E102",
            "unknown initialiser",
            "`init` names a distribution that is neither in `jax.nn.initializers`, nor "
            "`trunc_normal`, nor registered.",
            "where Linear.weight -> init trunc_normall",
            "check the spelling, or register yours with `eqxform.register_initializer`.",
            message="unknown initialiser `{name}`",
        ),
        _c(
            "E103",
            "unknown constructor",
            "A `model`, `replace` or `eqxform new` call names a constructor that is no "
            "`equinox.nn` class, example model or registered constructor.",
            "model MPL(in_size=2, out_size=2, width_size=8, depth=2)",
            "check the spelling, or register it with `eqxform.register_constructor`.",
            message="unknown constructor `{callee}`",
        ),
        _c(
            "E104",
            "unknown type in a selector",
            "A capitalised selector step is a type, and no type of that name is known: no "
            "class of the model's tree, `equinox.nn` class, example model or registered "
            "type has it. This is decided against a model (`check` with a model, `plan`, "
            "`apply`), whose classes the help suggests; without one a name is only noted "
            "(I104), since any class of the model's tree is a type name. A capitalised name "
            "that no class has but a field of the model has (`W_src`) names that field.",
            "where Linaer.weight -> init zeros",
            message="unknown type `{name}`",
            help="{value} a type is a class of the model's tree, an `equinox.nn` class or a registered type; `eqxform show MODEL` lists the model's paths",
        ),
        _c(
            "E105",
            "unknown name",
            "An expression uses a name that is no `let` name, match property or constant here.",
            "where Linear.weight -> scale widht",
            "define it with `let` above the line, or fix the spelling.",
            message="unknown name `{id}`",
        ),
        _c(
            "E106",
            "unknown argument",
            "A call passes an argument its callee does not take.",
            "model MLP(in_size=2, out_size=2, width=8, depth=2)",
            "use one of the arguments the help line lists.",
            message="{kind} `{name}` has no argument `{name2}`",
        ),
        _c(
            "E107",
            "missing argument",
            "A call leaves out an argument its callee needs.",
            "model MLP(in_size=2, out_size=2)",
            message="{kind} `{name}` is missing {missing}",
            help="add {additions}",
        ),
        _c(
            "E109",
            "given twice",
            "A directive that is given once per spec (`model`, `seed`, `optimizer`, "
            "`ensemble`), or a `let` name, appears twice.",
            "seed 0\nseed 1",
            message="`{word}` is given twice",
            help="the first is on line {line}; keep one",
            defined=(
                "`{name}` is defined twice",
                "a `let` name is set once; override it from outside with `--set NAME=VALUE`",
            ),
        ),
        _c(
            "E110",
            "unknown function",
            "An expression calls a function that is not one of `sqrt log exp abs min max`.",
            "where Linear.weight -> scale sqrtt(2)",
            "use one of the expression functions.",
            message="unknown function `{callee}`",
        ),
        _c(
            "E111",
            "unknown dtype",
            "`cast` names no dtype eqxform knows.",
            "where ** -> cast bf16",
            "write the full name, e.g. `bfloat16`.",
            message="unknown dtype `{word}`",
        ),
        _c(
            "E112",
            "malformed action argument",
            "The action takes no argument but has one, needs one but has none, or has one "
            "of the wrong form (a number where a name is needed, say).",
            "where x -> freeze 1",
            message="`{name}` takes no argument",
            help="write `-> {name}` alone; separate further actions with `,`",
            needs=("`{name}` needs an argument", "e.g. `{example}`"),
            replace_needs=(
                "`replace` needs a constructor call or a `jax.nn` function",
                "e.g. `replace Linear(in_features=8, out_features=2)` or `replace gelu`",
            ),
            expected_name=("expected a {kind} name", None),
            init_needs=(
                "`init` needs an initialiser name",
                "e.g. `init he_normal` or `init normal(stddev=0.02)`",
            ),
        ),
        _c(
            "E113",
            "bad seed",
            "A `seed` is a whole number from 0 to 2**64 - 1.",
            "seed -1",
            "give a whole number in range.",
            message="`seed` must be a whole number >= 0, not `{value}`",
            at_most=(
                "`seed` must be at most 2**64 - 1, not `{value}`",
                "seeds run from 0 to 18446744073709551615",
            ),
        ),
        _c(
            "E114",
            "argument or option given twice",
            "A call names one argument twice, or a `stack` line one option twice.",
            "model MLP(in_size=2, in_size=3, out_size=2, width_size=8, depth=2)",
            "keep one.",
            message="`{name}` is given twice",
            argument=("argument `{name}` is given twice", None),
        ),
        _c(
            "E115",
            "too many positional arguments",
            "A call passes more positional arguments than its callee takes.",
            "where x -> init normal(0.1, 0.2)",
            message="`{name}` takes {len_params} positional argument{s}, not {len_positional}",
            help="name the arguments: {names}",
        ),
        _c(
            "E116",
            "`--set` names no `let`",
            "A `--set NAME=VALUE` (or a `--params` entry) overrides a name the spec does not "
            "define with `let`.",
            "eqxform apply spec.eqx --set widht=64 -o out.eqx",
            "use one of the spec's `let` names.",
            message="`--set {key}`: the spec has no `let {key}`",
        ),
        _c(
            "E117",
            "constructor module not allowed",
            "A `package.module:function` constructor is imported only from packages the user "
            "allows, so that a spec never runs code of its own choosing.",
            "model mypkg.models:make(width=3)",
            message="constructor module `{module}` is not allowed",
            help='eqxform imports no module named in a spec or model file unless you allow it: pass `--allow {top}` (Python: `allow=["{top}"]`) if you trust it',
        ),
        _c(
            "E118",
            "reserved name",
            "A `let` name is a match property, constant, function, dtype or `jax.nn` function.",
            "let shape = 3",
            message="`{name}` is a reserved name",
            help="choose another name for this `let`",
        ),
        _c(
            "E119",
            "`key` given",
            "eqxform supplies every constructor's `key`, derived from the seed.",
            "where layers[-1] -> replace Linear(8, 2, key=0)",
            message="`key` is supplied by eqxform",
            help="remove it: each rule draws from a key derived from the seed",
        ),
        _c(
            "E121",
            "bad `expect` count",
            "`expect` takes a whole number of matches: `expect N` (exactly), `expect >= N`, "
            "`expect <= N`, or `expect any` (the rule may match nothing).",
            "where Linear expect 2.5 -> freeze",
            "give a whole number, with `>=` or `<=` for a range.",
            message="`expect` needs a whole number of matches, not `{text}`",
            count=(
                "`expect {op} {text}` is no count",
                "write `expect N`, `expect >= N`, `expect <= N`, or `expect any`",
            ),
        ),
        _c(
            "E122",
            "zero slice step",
            "A slice in a selector steps by zero.",
            "where layers[::0] -> freeze",
            "use a step that is not zero.",
            message="a slice step cannot be zero",
        ),
        _c(
            "E123",
            "optimiser group without an optimiser",
            "`lr` and `weight_decay` shape the spec's optimiser, and the spec has none.",
            "where **.bias -> lr 0.1",
            message="`{name}` needs an `optimizer` directive",
            help="add the base optimiser, e.g. `optimizer adamw(learning_rate=1e-3)`",
        ),
        _c(
            "E124",
            "unknown optimiser",
            "`optimizer` names no optax optimiser eqxform knows.",
            "optimizer adamm(learning_rate=1e-3)",
            message="unknown optimiser `{name}`",
            help="optimisers are {names}",
        ),
        _c(
            "E125",
            "unknown wrapper",
            "`wrap` names no built-in or registered wrapper.",
            "where Linear.weight -> wrap symetric",
            message="unknown wrapper `{name}`",
            help="wrappers are {names}; add your own with `eqxform.register_wrapper`",
        ),
        _c(
            "E126",
            "constructor cannot be imported",
            "An allowed `package.module:function` constructor names a module that Python "
            "cannot import (not installed, not on the module path, misspelt, or failing while "
            "it is imported) or a function the module does not have. eqxform imports the "
            "module as `import package.module` would in the Python that runs it; the `eqxform` "
            "command also finds an allowed module or package in the current directory (and "
            "nothing else there), so a factory module beside the model file needs no "
            "`PYTHONPATH`.",
            "model mypkg.modls:make()",
            message="module `{module}` has no `{attr}`",
            help="{hint}check the function's name in `{module}`",
            no_module=(
                "cannot import constructor `{name}`: no module named `{missing}`",
                "the module must be importable by the Python that runs eqxform: install its "
                "package in this environment (`pip install PACKAGE`, or `pip install -e FOLDER` "
                "for your own source), or put the folder that holds `{top}/` on the module path: "
                "`PYTHONPATH=FOLDER eqxform ...` (the `eqxform` command finds an allowed package "
                "in the current directory itself; in Python, `sys.path.insert(0, FOLDER)`)",
            ),
            no_submodule=(
                "cannot import constructor `{name}`: no module named `{missing}`",
                "`{parent}` was found, but it has no module `{leaf}`: check the module path",
            ),
            needs=(
                "cannot import constructor `{name}`: importing `{module}` needs `{missing}`, "
                "which is not installed",
                "install `{package}` in the environment that runs eqxform",
            ),
            raised=(
                "cannot import constructor `{name}`: importing `{module}` raised {error}",
                'fix the module: `python -c "import {module}"` shows the whole error',
            ),
        ),
        _c(
            "E127",
            "bad `input` line",
            "An `input` line declares one positional argument of the model: a dtype (`f32`, "
            "`bf16`, `i32`, `bool`, ... or a full name) and a shape of whole numbers.",
            "input float[3, 224, 224]",
            "write e.g. `input f32[3,224,224]`; give one line per positional argument.",
            message="unknown input dtype `{dtype}`",
            dimension=(
                "an input's dimensions are whole numbers, not `{d}`",
                "e.g. `input f32[3,224,224]`",
            ),
        ),
        _c(
            "E130",
            "stack of one module without a count",
            "`stack` on a single module makes copies of it, and needs to know how many. (A "
            "module built pre-stacked, whose arrays carry a leading layer axis of the layer "
            "types Equinox knows, is taken as it is, with no count.)",
            "stack mlps scan",
            message="`{text}` is a single `{name}`: say how many copies",
            help="e.g. `stack {text2} {mode} 10` makes 10 independently initialised copies",
        ),
        _c(
            "E131",
            "nothing to stack",
            "`stack` takes a list, tuple or `Sequential` of modules, a consecutive slice of "
            "one, or a single module with a count.",
            "stack layers[0].weight scan",
            "select the sequence of layers itself, e.g. `stack blocks scan` or "
            "`stack blocks[2:6] scan`.",
            message="`stack` needs a list, tuple or `Sequential` of modules, or one module with a count; `{text}` is a `{name}`",
            nodes=(
                "`{text}` matches {len_nodes} nodes that are not a run of one list: {listing}",
                "stack a whole list, tuple or `Sequential`, or a slice of one, e.g. `blocks[2:6]`",
            ),
        ),
        _c(
            "E132",
            "stack count differs",
            "The count on a `stack` line differs from the number of layers it found (for a "
            "module built pre-stacked: the length of its layer axis).",
            "stack blocks scan 7",
            message="`{text}` already holds {layers} layers (its arrays carry a leading layer axis of {layers}), but the spec says {count}",
            help="write `stack {text2} {mode}` to take its {layers} layers as they are; `stack {text2} {mode} {count} copies` makes {count} copies of the whole {layers}-layer stack",
            stack_found=(
                "`stack` found {len_items} members at `{text}`, but the spec says {count}",
                "write `stack {text} {mode} {len_items}`, or leave the count out",
            ),
        ),
        _c(
            "E133",
            "layers differ",
            "Only layers of one structure, shapes and dtypes stack into one array each.",
            "stack blocks scan  # where blocks[0] is Linear(3, 3) and blocks[1] Linear(3, 4)",
            message="the members of `{text}` differ: {problem}",
            help="only modules of the same structure and shapes stack; stack a slice of the identical ones, e.g. `blocks[1:-1]`",
        ),
        _c(
            "E134",
            "bad ensemble count",
            "`ensemble N` takes a whole number of members of at least 1.",
            "ensemble 0",
            message="`ensemble` needs a whole number of members >= 1, not `{value}`",
            help="e.g. `ensemble 8`",
        ),
        _c(
            "E135",
            "unknown stack mode",
            "A `stack` line says how to call the layers: `scan` (one after another) or `vmap` "
            "(side by side).",
            "stack blocks sacn",
            message="unknown stack mode `{mode}`",
            help="{hint} `scan` runs the layers one after another, `vmap` side by side",
        ),
        _c(
            "E136",
            "bad stack option",
            "A `stack` line takes a count, `remat`, `unroll K`, `layerwise`, `copies` and "
            "`over AXIS`.",
            "stack blocks scan unrol 2",
            message="`{name}` takes no number",
            help="write `{name}` alone",
            unroll_needs=("`unroll` needs a whole number >= 1", "e.g. `unroll 2`"),
            unknown_stack=(
                "unknown stack option `{name}`",
                "{hint} options are a count, {options} and `over AXIS`",
            ),
        ),
        _c(
            "E137",
            "action on some layers of a stack",
            "A selector picks some layers of a stacked array, and the action can only act on "
            "whole arrays (only `init` and `scale` act per layer).",
            "stack blocks scan\nwhere blocks[1:3] -> cast bfloat16",
            message="`{name}` cannot act on some layers of a stack: `{text}` picks layers {listing} of `{text2}`",
            help="select the whole stack, or `unstack` it first",
        ),
        _c(
            "E138",
            "`replace` inside a stack or an ensemble",
            "A stacked or ensembled module holds every layer's arrays in one; one layer "
            "cannot be swapped for another module.",
            "stack blocks scan\nwhere blocks[2] -> replace Linear(8, 8)",
            message="`replace` cannot act inside a stack or an ensemble (`{text}`)",
            help="replace before the `stack`/`ensemble` line, or `unstack` first",
        ),
        _c(
            "E139",
            "`weight_norm` on stacked weights",
            "`weight_norm` takes its norm over one layer's axes and cannot tell a layer axis "
            "from them.",
            "stack blocks scan\nwhere Linear.weight -> wrap weight_norm",
            message="`weight_norm` takes its norm over one layer's axes and cannot wrap the stacked `{text}`",
            help="wrap before the `stack`/`ensemble` line",
        ),
        _c(
            "E140",
            "stack inside a stack or an ensemble",
            "What `stack` selects is already inside a stack or an ensemble.",
            "ensemble 4\nstack layers scan",
            message="`{text}` is inside a stack or an ensemble already",
            help="stack the layers before making the ensemble, or `unstack` first",
        ),
        _c(
            "E141",
            "ensemble of an ensemble",
            "A spec makes one ensemble; the model already is one.",
            "ensemble 4  # applied to an ensemble",
            message="the model is an ensemble already",
            help="a spec makes one ensemble; take a member with `Ensemble.member(i)` first",
        ),
        _c(
            "E142",
            "bad stack count",
            "The count on a `stack` line is a whole number of layers of at least 1.",
            "stack mlps scan 0",
            "give a whole number >= 1.",
            message="a stack needs a whole number of layers >= 1, not `{value}`",
        ),
        _c(
            "E143",
            "empty stack",
            "The list, tuple or `Sequential` that `stack` selects holds no layers.",
            "stack blocks scan  # where blocks is []",
            "stack a sequence that has layers.",
            message="`{text}` is empty: nothing to stack",
        ),
        # ---- the spec against a model
        _c(
            "E180",
            "adapter arguments are keyword arguments",
            "`lora` and `ia3` take their arguments by name, in parentheses right after the "
            "action (`lora(rank=8, alpha=16)`); each may be an expression of the match. "
            "Without parentheses they take their defaults (`lora`: rank 8, alpha 8, as PEFT).",
            "where Linear -> lora 8",
            message="`{name}` takes keyword arguments in parentheses",
            help="write `{example}`",
        ),
        _c(
            "E144",
            "a stack changes the model's outputs",
            "With the model's inputs declared, `apply` runs the model before and after each "
            "`stack` on random inputs. A stack runs its layers as one scan, "
            "`h = layer(h, ...)` for each, also when the parent loops over them; a loop that "
            "does more (collects the layers' outputs, uses a layer's index, zips the layers "
            "with another list) computes something else once stacked. `plan` and `check`, "
            "which compute nothing, trace the forward pass before and after the stack: one "
            "that no longer reads an array it read (the other list's elements after its first) "
            "is refused too.",
            "stack blocks scan  # where the parent returns every block's output",
            "add `layerwise` to the `stack` line (iterating then gives each layer), or stack "
            "what the parent calls as one.",
            message="the model fails once `{text}` is stacked: {message}",
            stacking_copies=(
                "stacking copies of `{text}` changes the shapes of the model's outputs: {value} before, {value2} after",
                "copies are chained, each output feeding the next layer: the module must map its input to an output of the same shape",
            ),
            stacking_changes=(
                "stacking `{text}` changes the model's outputs on random inputs (largest difference {gap:.3g})",
                None,
            ),
            stacking_unread=(
                "once `{text}` is stacked, the forward pass no longer reads {count_arrays} it read before ({paths})",
                None,
            ),
        ),
        _c(
            "E150",
            "number too large",
            "An expression computes an integer of more than 256 bits (`_limits.MAX_INT_BITS`), "
            "or a number that is not finite (`exp(1000)`, `1e308 * 10`). The power is refused "
            "before it is computed: `9**9**9` would run for hours.",
            "let x = 9 ** 9 ** 9",
            message="this number is too large (more than {max_int_bits} bits)",
            help="no size, count or seed needs it; check the exponent",
            gives_finite=(
                "this gives `{value}`, not a finite number",
                "a spec's numbers stay below about `1.8e308`",
            ),
        ),
        _c(
            "E151",
            "string or list too long",
            "An expression would build a string or a list of more than 10,000 elements "
            "(`_limits.MAX_SEQUENCE_LENGTH`); it is refused before it is built.",
            'let x = "a" * 10 ** 10',
            message="this string or list would have more than {max_sequence_length:,} elements",
            help="a spec's strings and lists are short: constructor arguments, shapes",
        ),
        _c(
            "E152",
            "argument of the wrong type",
            "An argument of an initialiser, a wrapper, an optimiser, or of `scale`, `lr` or "
            "`weight_decay` is not of the type it takes (a number, a number >= 0, `true`/`false`, "
            "one of a few strings). `check` reports the arguments it can evaluate without a "
            "model; one that reads the match (`1/sqrt(fan_in)`) is checked per match by `plan` "
            "and `apply`, at the argument's span, naming the match.",
            'where Linear.weight -> init normal(stddev=[1, 2])\noptimizer adam(learning_rate="x")',
            message="{what} must be {expected}, not {describe_value_value}{at}",
            help="e.g. {example}",
            choice=(
                "`{name}` of `{name2}` must be one of {listing}, not `{id}`",
                "e.g. `{example}`",
            ),
        ),
        _c(
            "E153",
            "number beyond the range of the array's dtype",
            "A `scale` factor or a numeric argument of an initialiser or a wrapper is larger "
            "than the matched array's dtype can hold (`scale 1e300` on a float32 weight); JAX "
            "would silently make it infinite.",
            "where Linear.weight -> scale 1e300",
            message="{what} is `{value:g}`, beyond the range of {name} (`{limit:g}`) at `{text}`",
            help="use a smaller number, or `cast float64` first",
        ),
        _c(
            "E155",
            "count beyond the limit",
            "An `ensemble` with more than 1,000,000 members, or a `stack` count or `unroll` "
            "beyond 1,000,000 (`_limits.MAX_COUNT`); a sweep (`ensemble N vary ...`, "
            "`ensemble grid ...`) of more than 4,096 members (`_limits.MAX_SWEEP`). Smaller counts that do not fit in memory "
            "are caught by the memory budget (E158).",
            "ensemble 1000000000",
            message="`ensemble {value:,}` is beyond the limit of {max_count:,} members",
            help="an ensemble's members are held in memory side by side; e.g. `ensemble 8`",
            stack_layers=(
                "a stack of {value:,} layers is beyond the limit of {max_count:,}",
                "e.g. `stack blocks scan 12`",
            ),
            unroll=(
                "`unroll {value:,}` is beyond the limit of {max_count:,}",
                "unroll a few layers, e.g. `unroll 2`",
            ),
            sweep=(
                "a sweep of {count:,} members is beyond the limit of {max_sweep:,}",
                "each member's values and program are made one by one; sweep fewer values",
            ),
        ),
        _c(
            "E156",
            "constructor argument beyond its limit",
            "An integer argument of a built-in constructor is beyond its bound: an argument "
            "that builds one layer per step (`depth` of `MLP` or `Tower`, `count` and `depth` "
            "of `MLPChain`) beyond 1,000 (`_limits.MAX_LAYERS`), any other beyond 2**31 - 1 "
            "(`_limits.MAX_DIMENSION`). Building even the skeleton of such a model (to plan "
            "it) runs the constructor's loop, so it is refused before it is called.",
            "model MLP(in_size=2, out_size=2, width_size=8, depth=1000000)",
            "use a realistic number of layers.",
            message="{label} is {value:,}, beyond the limit of {bound:,}",
        ),
        _c(
            "E157",
            "input too large",
            "An `input` line (or `--input`) declares an array with a dimension beyond "
            "2**31 - 1, or larger than the memory budget: eqxform draws random inputs of that "
            "shape to check a `stack`.",
            "input f32[99999999999]",
            message="the input `{describe}` is too large",
            help="an array's dimensions stop at {max_dimension:,}",
            budget=(
                "the input `{describe}` is too large",
                "eqxform draws the input to check the model ({format_bytes_value} at most), beyond the memory budget of {format_bytes_budget} (`{max_bytes_env}`)",
            ),
        ),
        _c(
            "E158",
            "model larger than the memory budget",
            "A model would hold more bytes of arrays than the memory budget allows: the "
            "`model` directive's, a `replace` constructor's or `eqxform new`'s (measured with "
            "`eqx.filter_eval_shape` before it is built), or the model after an `ensemble` or "
            "a `stack` (measured on shapes by `plan`, and by `apply` before the pass "
            "allocates). The budget is half the machine's memory by default; the environment "
            "variable `EQXFORM_MAX_BYTES` sets it (`64G`, `512M`, or `none` for no check).",
            'eqxform new "MLP(in_size=2, out_size=2, width_size=100000, depth=2)" -o m.eqx',
            message="{what} would hold {format_bytes_size} of arrays, more than the memory budget of {format_bytes_budget}",
            help="make it smaller; if the machine has the memory, raise the budget with `{max_bytes_env}` (e.g. `{max_bytes_env}=256G`, or `none`)",
        ),
        _c(
            "E159",
            "model nested too deep",
            "A model (given to `check`, `plan`, `apply` or `save`, built by a constructor, or "
            "made by a `replace`) nests modules, lists, tuples and dicts more than 600 levels "
            "deep (`_limits.MAX_MODEL_DEPTH`). eqxform walks any depth, but JAX flattens a "
            "model recursively, each level counted against Python's recursion limit, and "
            "fails at about a thousand levels less the frames of the code that calls it. The "
            "model is measured when it enters, before JAX sees it.",
            "model mypkg.models:chain(depth=1000)  # each block inside the last",
            message="{what} nests more than {limit} levels deep (modules, lists, tuples and dicts inside each other)",
            help="JAX flattens a model recursively and stops at Python's recursion limit: keep repeated layers side by side in one list (or stack them) rather than each inside the last",
        ),
        _c(
            "E160",
            "a weight pattern that does not parse",
            "A `weights`, `map`, `skip` or `keep` line holds a tensor name, a model path or a "
            "pattern that cannot be read: a `{` that opens no capture, a path with a space, an "
            "index that is not a number or a capture.",
            'map "blocks.{i.attn.qkv.weight" -> "blocks[{i}].attn.qkv.weight"',
            message="`weights` names no file",
            help='e.g. `weights "resnet18.safetensors"`',
            checkpoint_tensor=(
                "`{value}` is no checkpoint tensor name: {error}",
                'a tensor name as the checkpoint spells it, with captures such as `{{i}}`: `"blocks.{{i}}.attn.qkv.weight"`',
            ),
            model_path=(
                "`{value}` is no model path: {error}",
                'a path as `eqxform show` prints it: `"blocks[{{i}}].attn.qkv.weight"`',
            ),
            pattern=(
                "`{value}` is no pattern: {error}",
                '`*` matches within one dotted part, `**` anything: `"**.num_batches_tracked"`',
            ),
        ),
        _c(
            "E161",
            "a `map` of several tensors onto several arrays",
            "A `map` line either fuses several checkpoint tensors into one array or splits one "
            "tensor into several arrays; several on both sides has no one meaning.",
            'map "q.weight", "k.weight" -> "a.weight", "b.weight"',
            message="{len_sources} tensors map onto {len_targets} arrays",
            help="a `map` fuses several tensors into one array, or splits one tensor into several; write one line per pair otherwise",
        ),
        _c(
            "E162",
            "the two sides of a `map` capture different names",
            "Each tensor a `map` reads names one model array and back, so every pattern of the "
            "line has the same captures.",
            'map "layer{a}.{b}.conv1.weight" -> "layers[{a-1}].conv1.weight"',
            message="`{value}` lacks the capture{value2}{listing}",
            help="every name and path of a `map` has the same captures, so that each tensor names one array and each array one tensor; {listing2}",
        ),
        _c(
            "E163",
            "an unknown or malformed `map` action",
            "After `with`, a `map` takes `transpose [AXES]`, `reshape [SHAPE]`, `cast` and "
            "`axis N` (where several tensors fuse or one splits), each once.",
            'map "head.weight" -> "head.weight" with transpose [1, 1]',
            message="unknown `map` action `{name}`",
            help="{value}a `map` takes {listing}",
            given_twice=("`{name}` is given twice", "keep one"),
            takes_argument=("`{name}` takes no argument", None),
            takes_list=("`{name}` takes a list of axes", None),
            takes_shape=("`{name}` takes a shape, a list of whole numbers", None),
            takes_one=("`{name}` takes one whole number", None),
            transpose_permutation=("`transpose {list_value}` is no permutation of the axes", None),
            reshape_shape=("`reshape {list_value}` is no shape (at most one `-1`)", None),
            axis_says=(
                "`axis` says where tensors fuse or split, and this `map` does neither",
                "leave `axis` out, or name several tensors or arrays",
            ),
        ),
        # ---- sweeps (`ensemble ... vary`, `ensemble grid`)
        _c(
            "E170",
            "a varied name the spec never uses",
            "An `ensemble ... vary` or `ensemble grid` line names a hyper-parameter that no "
            "expression of the spec reads, so every member would be the same in it. A varied "
            "name is read like a `let` name: in the optimiser's arguments, an `lr`, "
            "`weight_decay` or `scale` action, or a numeric argument of `init`.",
            "optimizer adamw(learning_rate=1e-3)\nensemble 4 vary lr=logspace(1e-4, 1e-2)",
            "read the name where it belongs (`optimizer adamw(learning_rate=lr)`), or remove it.",
            message="`{name}` varies, but the spec never uses it",
            help="read `{name}` in an argument of the optimiser, an `init` or a `scale`, `lr` or `weight_decay` action (e.g. `optimizer adamw(learning_rate={name})`), or remove it",
        ),
        _c(
            "E171",
            "a varied value of the wrong type",
            "Each member's value of a varied name is one number (its seed: a whole number >= 0). "
            "A `vary` value is an expression of `member` (the member's index from 0), a list of "
            "one number per member, or `logspace(FIRST, LAST)` / `linspace(FIRST, LAST)` "
            "(both ends included; `logspace` needs both > 0); a `grid` axis is a list.",
            'ensemble 4 vary lr="fast"\nensemble grid lr=1e-3',
            "give numbers: `vary lr=1e-3 * 2 ** member`, `vary lr=[1e-3, 3e-3, 1e-2, 3e-2]`, "
            "`grid lr=[1e-3, 1e-2]`.",
            message="`{callee}` takes the first and the last value, as `{callee}(1e-4, 1e-2)`",
            help="the {count} members' values run from the first to the last, both included",
            needs_numbers=(
                "`{callee}` needs numbers, not {describe_v}",
                "e.g. `{name}={callee}(1e-4, 1e-2)`",
            ),
            logspace_needs=(
                "`logspace` needs two numbers > 0, not `{lo}` and `{hi}`",
                "spread over a log scale from a positive first to a positive last value, or use `linspace`",
            ),
            grid_axis=(
                "a `grid` axis needs a list of values, `{name}=[...]`",
                "e.g. `ensemble grid {name}=[1e-3, 3e-3, 1e-2]`; `ensemble N vary NAME=EXPR` computes a value per member",
            ),
            seed_member=(
                "the seed of member {k} must be a whole number >= 0, not {describe_value}",
                "e.g. `vary seed` (the spec's seed plus the member's index) or `vary seed=[0, 7, 42, 99]`",
            ),
            member_number=(
                "`{name}` of member {k} must be a number, not {describe_value}",
                "a varied value is one number per member; a list gives the members' values in order (`vary lr=[1e-3, 1e-2]`), `logspace(a, b)` spreads them",
            ),
            grid_number=(
                "value {k} of `{name}=[...]` must be a number, not {describe_value}",
                "a varied value is one number per member; a list gives the members' values in order (`vary lr=[1e-3, 1e-2]`), `logspace(a, b)` spreads them",
            ),
            seed_value=(
                "value {k} of `seed=[...]` must be a whole number >= 0, not {describe_value}",
                "e.g. `vary seed` (the spec's seed plus the member's index) or `vary seed=[0, 7, 42, 99]`",
            ),
            seed_member_max=(
                "the seed of member {k} must be at most 2**64 - 1, not `{value}`",
                "seeds run from 0 to 18446744073709551615, e.g. `vary seed=[0, 7, 42, 99]`",
            ),
            seed_value_max=(
                "value {k} of `seed=[...]` must be at most 2**64 - 1, not `{value}`",
                "seeds run from 0 to 18446744073709551615, e.g. `vary seed=[0, 7, 42, 99]`",
            ),
        ),
        _c(
            "E172",
            "a list of varied values of the wrong length",
            "A `vary` list gives one value per member, in order, so its length is the member "
            "count; a `grid` list needs at least one value (the members are the product of the "
            "lists' lengths).",
            "ensemble 4 vary lr=[1e-3, 1e-2]",
            "give one value per member, or compute them: `vary lr=logspace(1e-3, 1e-2)`.",
            message="the list of `{name}` is empty",
            help="give at least one value",
            gives_values=(
                "`{name}` gives {len_items} values for the {count} members",
                "give one value per member ({count}), or compute them from `member`, e.g. `{name}=1e-3 * 2 ** member`",
            ),
        ),
        _c(
            "E173",
            "a member's value does not fit where it goes",
            "Evaluated for one member, an argument that reads a varied name is out of its "
            "range (a negative learning rate or weight decay, a negative `stddev`). It is "
            "reported at the varied value, naming the member and the line that reads it.",
            "optimizer adamw(learning_rate=lr)\nensemble 3 vary lr=[1e-3, -1e-2, 1e-2]",
            "give every member a value the argument takes.",
            message="member {k}'s `{name}={render_members}` does not fit where it goes: {message}",
            help="{value}the spec reads `{name}` on line {line}",
        ),
        _c(
            "E174",
            "a varied name where a value cannot vary",
            "The members of a sweep are one program with a leading member axis: they can differ "
            "in numbers, never in structure. A varied name may go in the optimiser's arguments, "
            "`lr`, `weight_decay`, `scale` and the numeric arguments of `init`; not in the "
            "model's constructor (a width), a `let`, an `if` filter, `replace`, `lora` (a rank), "
            "`cast`, `shard`, the seed or the member count.",
            "model MLP(in_size=2, out_size=2, width_size=w, depth=2)\nensemble 2 vary w=[32, 64]",
            "sweep structural choices as separate runs; vary only numbers that change no shape.",
            message="`{id}` varies per member and cannot go in {where}",
            help="a varied value may go in the optimiser's arguments, `lr`, `weight_decay`, `scale` and the numeric arguments of `init`: places where a number changes no shape, count or type",
        ),
        _c(
            "E175",
            "a varied name given twice, or also a `let` or reserved",
            "A varied name is bound per member by the `ensemble` line, once; a `let` of the "
            "same name, a second entry of it, or a reserved word (`member`, a function or a "
            "context name) would make its value ambiguous.",
            "let lr = 1e-3\nensemble 4 vary lr=logspace(1e-4, 1e-2)",
            "keep one definition: remove the `let` (or the second entry), or rename.",
            message="`{name}` is both a `let` and a varied name",
            help="remove `let {name}`: the `ensemble` line binds `{name}` per member",
            reserved=(
                "`{name}` is a reserved name",
                "choose another name for this hyper-parameter",
            ),
            varies_twice=("`{name}` varies twice", "give `{name}` once on the `ensemble` line"),
        ),
        _c(
            "E176",
            "a varied name without values",
            "`vary NAME` (or a grid axis `NAME`) alone gives no values; only `seed` may stand "
            "alone (`vary seed`, or `seed` among a grid's axes: member k is built with the "
            "spec's seed plus k).",
            "ensemble 4 vary lr",
            "give the values: `vary lr=logspace(1e-4, 1e-2)`.",
            message="`vary {name}` gives no values",
            help="give one per member, e.g. `{name}=logspace(1e-4, 1e-2)` or `{name}=[...]`; only `seed` stands alone",
            grid=(
                "the grid axis `{name}` gives no values",
                "give the axis its values, e.g. `{name}=[1e-3, 1e-2]`; only `seed` stands alone (each member its own seed)",
            ),
        ),
        _c(
            "E190",
            "no such mesh axis",
            "A `shard` spec, a `stack ... over AXIS` or an `ensemble N over AXIS` names a mesh "
            "axis that the mesh (the spec's `mesh`, or `--mesh`) does not have.",
            "mesh data=2 model=4\nwhere Linear.weight -> shard (none, modle)",
            "name one of the mesh's axes (the help line lists them), or add the axis to the mesh.",
            message="`{name}` is no axis of {where}",
            split_over=(
                "`{text}` is split over `{a}`, which is no axis of the mesh ({listing})",
                "place it on a mesh that has the axis `{a}`",
            ),
            mesh=(
                "`{name}` is no axis of the mesh (`{origin} {text}`)",
                "the mesh's axes are {listing}",
            ),
        ),
        _c(
            "E191",
            "mesh axis named without a mesh",
            "The spec places arrays on mesh axes (`shard`, `over`), but neither the spec (`mesh`) "
            "nor the command line (`--mesh`) gives a device mesh.",
            "where Linear.weight -> shard (none, model)",
            message="mesh axis `{name}` is named, but the spec has no `mesh`",
            help="add the device mesh, e.g. `mesh data=2 model=4`, or give one with `--mesh`",
        ),
        _c(
            "E192",
            "bad mesh axis size",
            "A mesh axis's size is a whole number of devices, at least 1, or `-1` for the "
            "devices left over by the other axes (at most one axis may say `-1`).",
            "mesh data=0 model=4",
            message="mesh axis `{name}` needs a size of at least 1 (or -1), not {size}",
            help="e.g. `mesh data=2 model=4`; `-1` takes the devices left over",
            only_one=(
                "only one mesh axis may be -1 (the devices left over)",
                "give the other axes their sizes",
            ),
        ),
        _c(
            "E193",
            "mesh axis given twice",
            "Each axis of a mesh has its own name; a name given twice leaves it unclear which "
            "size it has.",
            "mesh data=2 data=4",
            message="mesh axis `{name}` is given twice",
            help="give each axis of the mesh its own name",
        ),
        _c(
            "E194",
            "not a partition spec",
            "`shard` takes a partition spec: one entry per dimension of one layer's array, each a "
            "mesh axis, `none` (not split), or a tuple of mesh axes (split over their product). "
            "A tuple `(a, b)` is nothing else in a spec.",
            "where Linear.weight -> shard (none, 2)",
            "write e.g. `shard (none, model)` or `shard ((data, model), none)`; for a value, "
            "write a list `[a, b]`.",
            message="`shard` needs a partition spec",
            dimension=(
                "`{text}` is no dimension of a partition spec",
                "each dimension is a mesh axis, `none`, or a tuple of mesh axes; {example}",
            ),
            tuple=(
                "a tuple `(a, b)` is only a `shard` spec",
                "write a list `[a, b]` for a value",
            ),
        ),
        _c(
            "E196",
            "mesh larger than the devices",
            "The mesh needs more devices than JAX sees (across every process of the run), or "
            "`-1` cannot divide the devices evenly.",
            "mesh data=4 model=4  # on 8 devices",
            message="{where} needs {fixed}{value} devices, and there are {count}",
            help="use a mesh of at most {count} devices{value2}",
        ),
        _c(
            "E201",
            "rule matches nothing",
            "A selector matches no node of the model (or none passes the rule's `if` filter). "
            "By default that is an error, so that a misspelt selector never passes silently.",
            "where layrs[-1] -> init zeros",
            message="`{text}` matches nothing in the model",
            help="{value}(`eqxform show MODEL` lists every path)",
            filtered=(
                "`{text}` matches {len_candidates} node{s}, but none passes the `if` filter",
                "e.g. {listing}",
            ),
            pre_stacked=(
                "`{text}` matches nothing in the model: `{text2}` is one `{name}` whose "
                "arrays carry a leading layer axis of {count}, not a list of layers",
                "write `stack {text2} scan` above this rule: it adopts the {count} layers the "
                "module holds (no copies), and `{text}` then names them",
            ),
        ),
        _c(
            "E202",
            "wrong number of matches",
            "A rule's `expect N` says how many nodes it must match, and it matches another number.",
            "where Linear.weight expect 3 -> init zeros  # the model has 4",
            message="`{text}` matches {len_found} node{s}, not {describe}",
            help="matched: {listing}{value2}",
        ),
        _c(
            "E203",
            "the action cannot take what the rule matched",
            "The matched node is of a kind the action does not act on: a function where "
            "arrays are needed, a vector where an initialiser with fans needs a weight of two "
            "or more dimensions, or a module that is no stack for `unstack`.",
            "where activation -> init zeros",
            message="`{action}` needs arrays, but `{text}` is {describe_kind_obj}",
            help="select arrays (e.g. `Linear.weight`) or the modules that hold them",
            weight=(
                "`{name}` needs a weight of 2 or more dimensions, but `{text}` has shape {tuple_shape}",
                "select weights only (e.g. `Linear.weight`), or use an initialiser without fans such as `zeros` or `normal(stddev=0.01)`",
            ),
            wrap=(
                "`wrap` needs arrays, but `{text}` is {describe_kind_obj}",
                "select the arrays themselves, e.g. `Linear.weight`",
            ),
            unstack_stack=(
                "`unstack` needs a stack, but `{text}` is a `{name}`",
                "name the stack where it is now: a stack of some of a list's elements is one "
                "element of that list (`plan` of the `stack` line says where: `stacked into "
                "layers[0]`), so after `stack layers[0:2] scan` write `unstack layers[0]`",
            ),
            remat_checkpoints=(
                "`remat` checkpoints a module's call, but `{text}` is {describe_kind_obj}",
                "select the modules the model calls, e.g. `where blocks[*] -> remat`",
            ),
            remat_cannot=(
                "`remat` cannot act inside a stack or an ensemble (`{text}`)",
                "checkpoint a stack's layers with `stack PATH scan remat`, or `remat` before the `stack`/`ensemble` line",
            ),
        ),
        _c(
            "E204",
            "expression cannot be evaluated",
            "An expression fails when evaluated: a division by zero, an index out of range, "
            "an operation on values of the wrong kinds.",
            "where Linear.bias if shape[1] == 2 -> init zeros",
            "guard it, e.g. `if ndim == 2 and shape[1] == 2`.",
            message="cannot apply `%` to a string",
            tuple_only=("a tuple is only a `shard` spec", "write a list `[a, b]` for a value"),
            needs_number=("`{op}` needs a number, not {kind_value}", None),
            division_by_zero=("division by zero", None),
            cannot_apply=("cannot apply `{op}` to {kind_left} and {kind_right}", None),
            gives_complex=("`{op}` gives a complex number here", "the base must not be negative"),
            not_indexable=("cannot index {kind_value}", None),
            index_integer=("an index must be an integer, not {kind_index}", None),
            out_of_range=(
                "index {index} is out of range for {kind_value} of length {len_value}",
                "check `ndim` first, e.g. `if ndim == 2 and shape[0] == shape[1]`",
            ),
            takes_keyword=("`{callee}` takes no keyword arguments", None),
            takes_argument=("`{callee}` takes {arity} argument, not {len_args}", None),
            unknown_function=("unknown function `{callee}`", None),
            unevaluable=("cannot evaluate this expression", None),
            unknown_name=("unknown name `{id}`", None),
            failed=("{error}", None),
        ),
        _c(
            "E205",
            "building failed",
            "A constructor or wrapper refused the arguments it was given; its own message follows.",
            'where layers[-1] -> replace Linear(in_features=8, out_features="x")',
            message="`{callee}(...)` failed: {message}",
            help="check the arguments against the constructor's documentation",
            wrap_at=("`wrap {name}` failed at `{text}`: {splitlines}", None),
        ),
        _c(
            "E206",
            "ambiguous type name",
            "Two classes of the model share the short name a selector uses (a library's "
            "`BatchNorm` beside `equinox.nn.BatchNorm`, say).",
            "where BatchNorm -> freeze",
            message="`{name}` names {len_found} classes of the model: {listing}",
            help="write the one you mean with its module, e.g. `{names}`",
        ),
        _c(
            "E207",
            "a rule breaks the forward pass",
            "With the model's inputs declared, `check`, `plan` and `apply` run the forward "
            "pass under `eval_shape` after the rules; it fails after this rule (the first "
            "after which it does).",
            "input f32[4]\nwhere layers[-1] -> replace Linear(5, 2)  # the layer before gives 8",
            message="after this rule the model fails on its declared input: {message}",
            help="fix the rule so that the model still takes its input (a new head's "
            "`in_features`, say)",
            cast=(
                "after this rule the model fails on its declared input: {message}",
                "the rule casts the model's arrays to `{dtype}` while the `input` line "
                "declares `{declared}`: declare the input in the new dtype (`input {suggested}`) "
                "and call the model with such arrays",
            ),
        ),
        _c(
            "E208",
            "`init` on integer arrays",
            "Initialisers draw floating-point numbers.",
            "where ** -> init normal  # the model holds an int32 counter",
            message="`init` draws floating-point numbers, but `{text}` is {name}",
            help='narrow the selector, e.g. with `if dtype == "float32"`',
        ),
        _c(
            "E209",
            "initialiser cannot draw this shape",
            "The initialiser refused the shape of a matched array (e.g. `orthogonal` with "
            "`column_axis` out of range).",
            "where Linear.weight -> init orthogonal(column_axis=5)",
            "use arguments that fit the array, or another initialiser.",
            message="`{name}` cannot draw an array of shape {shape}: {splitlines}",
        ),
        _c(
            "E212",
            "the model does not take its declared input",
            "The forward pass fails on the `input` lines before any rule runs.",
            "input f32[3]  # for an MLP(in_size=4, ...)",
            message="the model does not accept its declared input: {message}",
            help="check the `input` lines: one per positional argument, in order, with the "
            "model's shapes and dtypes",
            not_callable=(
                "the model `{name}` has no `__call__`, so its forward pass on the declared input "
                "cannot run",
                "`input` lines check a model that is called as `model(x)`; for a model whose "
                "entry point is a method (`{name}.forward`, say), leave them out",
            ),
        ),
        _c(
            "E210",
            "value of the wrong type",
            "An argument evaluates to a value of a type the action does not take.",
            'where Linear.weight -> scale "two"',
            "give a value of the type the message names.",
            message="`scale` needs a number, but this gives `{factor}` at `{text}`",
        ),
        # ---- warnings: the work is done, but may not be what you meant
        _c(
            "W201",
            "copies share arrays",
            "`ensemble N` without a known constructor, and `stack PATH N` of one module, draw "
            "the arrays of the layer types Equinox knows anew for each copy (its default "
            "initialisation) and copy the rest: raw arrays of the model's own classes (a "
            "class token, a positional embedding) are the same in every copy.",
            "ensemble 4  # of a model with a raw `cls_token` array",
            message="{what} share {len_copied} array{s} that no default initialisation draws: {listing}{value2}",
            help="draw them per copy with a rule below this line, e.g. `where {first} -> init normal(stddev=0.02)`",
        ),
        _c(
            "W202",
            "a rule's every match is overwritten by a later rule",
            "Every array (or module) this action changed is later overwritten without being "
            "read, so the action has no effect on the model: a later `init` draws the values "
            "anew (after an `init` or a `scale`), or a later `replace` discards the module "
            "(after any action). An action that reads what came before does not overwrite "
            "it: `init` followed by `scale` scales what `init` drew, and `init` keeps the "
            "dtype a `cast` gave and the wrappers of `wrap` and `freeze`. Across a `stack`, "
            "`unstack` or `ensemble` line nothing is reported. An `lr` or `weight_decay` is "
            "overwritten by a later one of the same kind that sets all its arrays (later "
            "rules win).",
            "where Linear.bias -> scale 2\nwhere Linear.bias -> init zeros  # the scale is lost",
            "remove the overwritten action, or move it below the rule that overwrites it.",
            message="every match of this rule's `{action}` is overwritten by {lines_by} ({count_len_writes})",
        ),
        _c(
            "W203",
            "`init` on arrays that a later `replace` discards",
            "An `init` drew arrays of a module that a `replace` below it swaps for a new one. "
            "The new module keeps its constructor's own initialisation, not this rule's: "
            "usually the rules are in the wrong order.",
            "where Linear.weight -> init he_normal\n"
            "where layers[-1]    -> replace Linear(in_features=64, out_features=10)",
            message="`init` draws {count_n} that the `replace` on {lines_lines} then discards",
            help="move the `replace` above this rule, so that the new module is drawn by this `init` too, or narrow the selector",
        ),
        _c(
            "W204",
            "`lr` or `weight_decay` on frozen parameters",
            "Every array this `lr` or `weight_decay` rule matches is frozen (`freeze`), and the "
            "optimiser eqxform builds never updates a frozen array, so the rule changes "
            "nothing.",
            "where layers[0]        -> freeze\nwhere layers[0].weight -> lr 0.1",
            message="`{name}` on frozen parameters: every array this rule matches ({count_len_leaves}) is frozen, so the optimiser never updates it",
            help="remove the `{name}`, or narrow the `freeze` rule above to leave these parameters trainable",
        ),
        _c(
            "W205",
            "a `let` never used",
            "No expression of the spec reads this `let` name: the line is dead, or a rule "
            "meant to use it under another name. The check needs no model.",
            "let width = 64\nwhere layers[-1] -> replace Linear(in_features=64, out_features=2)",
            message="`let {name}` is never used",
            help="remove it, or use `{name}` in a rule{outside}",
        ),
        _c(
            "W210",
            "copies of a stack",
            "`stack PATH scan N copies` makes N copies of a module whose arrays already carry "
            "a layer axis (built with `eqx.filter_vmap`, as esm2quinox's layers are): the "
            "model gets N times that many layers and parameters.",
            "stack layers scan 4 copies  # where layers holds 4 layers already",
            message="`{text}` already holds {layers} layers; {count} copies of it hold {value} ({params:,} -> {value2:,} parameters)",
            help="to take its {layers} layers as they are, write `stack {text2} {mode}` without `copies`",
        ),
        _c(
            "W211",
            "an index into a list that holds a stack",
            "`stack layers[a:b] scan` puts one stack in the list where its layers were, so "
            "the list is shorter after it and the positions after the stack move down: in "
            "a later rule, `layers[i]` names the list as it is then, as `model.layers[i]` "
            "does in Python, and `plan` shows where each layer went (`stacked into "
            "layers[a]`). The warning says which of the model's layers the index names now.",
            "stack layers[0:2] scan\nwhere layers[1] -> freeze  # the model's layers[2]",
            message="`{text}` indexes `{text2}` as the `stack` left it: {listing}",
            help="a stacked layer is named through its stack (`{text2}[{index}][{value}]`); "
            "to name the model's own layers by their first positions, write this rule above "
            "the `stack` line",
        ),
        _c(
            "E213",
            "a function in the model rejects the dtype a `cast` gave",
            "With the model's inputs declared, the forward pass runs after the rules. This "
            "model runs with its arrays and inputs in its own floating dtype, but after this "
            "`cast` a JAX function it calls rejects the narrower dtype (`jnp.fft.rfftn` takes "
            "float32 or float64, not bfloat16), on inputs of either dtype. The diagnostic names "
            "the function, the module that calls it and where that module is, and gives a fix "
            "that it tried and found to run: the module kept in the model's dtype by a rule "
            "below the cast, or the input declared in that dtype. Where neither runs (the "
            "function gets an array computed by the layers before it, as a Fourier layer's "
            "transform of its input does), the arrays that reach the function must stay in "
            "the model's dtype.",
            "input f32[2, 16]\nwhere ** -> cast bfloat16  # a module calls jnp.fft.rfft on a weight",
            "keep the module that calls the function in the model's dtype (`where NAME -> cast "
            "float32` below the cast), declare the input in that dtype, or cast fewer arrays.",
            message=_REJECTS,
            help="keep `{name}` in {own}: below this rule, add `where {name} -> cast {own}` "
            "(the model then runs)",
            last=(
                _REJECTS,
                "keep `{name}` in {own}: add `where {name} -> cast {own}` as the spec's last "
                "rule (the model then runs; directly below this rule, a later rule undoes it)",
            ),
            input=(
                _REJECTS,
                "declare the input in {own} ({inputs}; the model then runs)",
            ),
            keep_input=(
                _REJECTS,
                "keep `{name}` in {own} (below this rule, `where {name} -> cast {own}`) and "
                "declare the input in {own} ({inputs}; the model then runs)",
            ),
            module=(
                _REJECTS,
                "`where {name} -> cast {own}` below this rule is not enough (the model still "
                "fails): keep the layers that feed `{name}` in {own} too (a narrower selector "
                "than this rule's), or do not cast the model",
            ),
            general=(
                _REJECTS,
                "keep the arrays that reach `{op}` in {own}: cast fewer arrays (a narrower "
                "selector than this rule's), or do not cast the model",
            ),
        ),
        _c(
            "E220",
            "adapter on something that is no `Linear` or 2-D weight",
            "`lora` and `ia3` adapt a `Linear` (any module whose `weight` is `(out, in)` and "
            "that computes `W x + b`), a `Linear`'s weight (which adapts the module), or a "
            "2-D weight array (whose value then becomes `W + scale * B A` at resolve). A "
            "selector matched something else: a bias, a convolution, a container.",
            "where layers[0] -> lora(rank=4)  # layers[0] is a Conv2d",
            message="`{name}` adapts a `Linear` or a 2-D weight, but `{text}` {why}",
            help="select `Linear` modules or their weights, e.g. `where Linear -> {name}` or `where **.qkv.weight -> {name}`",
        ),
        _c(
            "E221",
            "bad LoRA rank",
            "`rank` gives the inner size of the factors, a whole number of at least 1. It may "
            "depend on the match (`rank=16 if fan_in >= 1024 else 8`); it gave something else "
            "at the module named.",
            "where Linear -> lora(rank=fan_in / 64)",
            message="`lora` needs a whole rank of at least 1, but `rank` is `{rank}` at `{text}`",
            help="e.g. `lora(rank=8, alpha=16)`",
        ),
        _c(
            "E222",
            "bad LoRA alpha",
            "`alpha` sets the scale `alpha / rank` of the adapter's output; it must be a number.",
            'where Linear -> lora(rank=8, alpha="16")',
            message="`lora` needs a number for `alpha`, but it is `{alpha}` at `{text}`",
            help="e.g. `lora(rank=8, alpha=16)`",
        ),
        _c(
            "E223",
            "module adapted twice",
            "The matched module (or weight) carries an adapter already; one adapter per "
            "module keeps the base, the factors and `merge` unambiguous.",
            "where Linear -> lora(rank=8)\nwhere Linear -> lora(rank=4)",
            message="`{text}` has an adapter already",
            help="one adapter per module: `merge` the first one before adding another",
        ),
        _c(
            "E224",
            "nothing to merge",
            "`merge` bakes the adapters at or under the matched nodes into their base "
            "weights; it found none there.",
            "where layers[-1] -> merge  # no adapter in the last layer",
            message="`merge`: `{text}` holds no adapter",
            help="merge where a `lora` or `ia3` rule put adapters, e.g. `where LoRA -> merge`",
        ),
        _c(
            "E225",
            "bad `feedforward` for ia3",
            "`ia3(feedforward=true)` scales a `Linear`'s input (PEFT's feed-forward layers), "
            "`false` its output; it must be a boolean.",
            "where Linear -> ia3(feedforward=1)",
            message="`ia3` needs `true` or `false` for `feedforward`, not `{feedforward}`",
            help="`ia3(feedforward=true)` scales the input, as for feed-forward layers",
        ),
        # ---- model files
        _c(
            "E230",
            "partition spec of the wrong length",
            "A `shard` spec gives one entry per dimension of one layer's array; this array has "
            "another number of dimensions. The leading axes of stacks and ensembles are added "
            "for you (unsplit, or on their `over` axis).",
            "where Linear -> shard (model, none)  # the bias has one dimension",
            message="`shard {text}` gives {len_dims} dimension{s}, but `{text2}` has {layer_rank} in one layer (shape {list_shape})",
            help="write one entry per dimension of one layer, `none` for those not split{value2}, or narrow the selector (e.g. `if ndim == 2`)",
        ),
        _c(
            "E231",
            "dimension not divisible by its mesh axes",
            "An array's dimension is split over mesh axes whose sizes (multiplied) do not "
            "divide it, so the shards would differ in size.",
            "mesh model=4\nwhere layers[0].weight -> shard (none, model)  # in_features=6",
            message="dimension {axis} of `{text}`{kind} has size {size}, which {named} does not divide",
            help="split a dimension whose size the mesh axes divide, change the mesh, or leave it `none`",
        ),
        _c(
            "E232",
            "mesh axis used twice in one array",
            "A mesh axis splits at most one dimension of an array; the spec (with the `over` axis "
            "of a stack or ensemble around the array) uses one twice.",
            "mesh model=4\nstack blocks scan over model\nwhere **.weight -> shard (model, none)",
            message="mesh axis `{id}` splits two dimensions",
            help="use each mesh axis once per array",
            mesh_axis=(
                "mesh axis `{a}` splits two dimensions of `{text}` ({show_spec_dims})",
                None,
            ),
        ),
        _c(
            "E235",
            "stacked layers change what they pass on",
            "A `scan` stack feeds each layer's output to the next layer as its input, so "
            "each layer must return a value of the structure, shapes and dtypes it takes. "
            "Layers that return more (a cache beside the hidden state, as Megalodon's do) or "
            "something else cannot be scanned. With `input` lines, `check`, `plan` and "
            "`apply` report it at the `stack` line; without them, the stacked model's first "
            "call raises it.",
            "stack model.layers scan  # where each layer returns (x, cache)",
            message="the stacked layers change what they pass on: a layer takes {takes} and "
            "returns {returns}",
            help="a `scan` stack feeds each layer's output to the next, so a layer must return "
            "what it takes; add `layerwise` to the `stack` line (the parent's loop then calls "
            "each layer in turn), or `unstack` it",
        ),
        _c(
            "E238",
            "stateful model given without its state",
            "The model holds state (`eqx.nn.State`: BatchNorm's running statistics, say) and "
            "was given alone, so the forward pass on the `input` lines (which `plan` and "
            "`apply` run to check the rules, and `apply` to check a `stack`) cannot run. "
            "Without `input` lines a spec applies to the model alone, and a stacked model "
            "still takes the state made for the model before it.",
            "input f32[3, 224, 224]\nstack layer1 scan  # applied to `model`, not `(model, state)`",
            message="the model holds state (an `eqx.nn.State`, as its BatchNorm layers keep) but "
            "was given without it, so its forward pass on the declared input cannot run",
            help="apply the spec to the model and its state together, as "
            "`eqx.nn.make_with_state` returns them: `model, state = program.apply((model, state))`",
        ),
        _c(
            "E240",
            "a `map` that matches nothing",
            "No checkpoint tensor matches the `map` line's names, and no model array its paths.",
            'map "blocks.{i}.mlp.fc3.weight" -> "blocks[{i}].mlp.fc3.weight"',
            "compare the names with `eqxform show CHECKPOINT` and the paths with `eqxform show "
            "MODEL`; the help line names the nearest of each.",
            message="this `map` matches no checkpoint tensor and no model array",
        ),
        _c(
            "E241",
            "a checkpoint tensor a `map` needs is missing",
            "The `map` line names, for a model array it matches, a tensor the checkpoint does not "
            "hold (a typo in the name, a layer the checkpoint lacks).",
            'map "layer{a}.{b}.conv1.weigth" -> "layers[{a-1}][{b}].conv1.weight"',
            message="the checkpoint has no {listing_missing} ({len_missing} tensor{s} this `map` needs{value2}",
            help="{value3}fix the name, or `keep` the model arrays they would fill",
        ),
        _c(
            "E242",
            "a model array a `map` names is missing",
            "A checkpoint tensor matches the `map` line, but the model has no array at the path "
            "it names (a typo in the path, a layer the model lacks).",
            'map "blocks.{i}.norm1.weight" -> "blocks[{i}].norm.weight"',
            message="the model has no {listing_missing} (named by this `map` for tensors the checkpoint holds)",
            help="{value}fix the path (see `eqxform show` of the model), or `skip` the tensors",
        ),
        _c(
            "E243",
            "a checkpoint tensor's shape does not fit the model array",
            "After the line's layout changes (`transpose`, `reshape`, fuse or split), a tensor's "
            "shape differs from the model array's (or the slice of it a capture names).",
            'map "head.weight" -> "head.weight"  # (1000, 768) into (768, 1000)',
            "add `with transpose` or `with reshape`, or map the tensor onto the right array.",
            message="{len_bad_shapes} shape{s} do not fit: {bad_shapes}",
            model_adapter=(
                "`{name}` is {list_shape}, the model's adapter {list_shape2}",
                "apply `lora(rank={r}, alpha={number_alpha})` as the adapter was trained",
            ),
        ),
        _c(
            "E244",
            "a checkpoint tensor's dtype differs from the model array's",
            "A tensor stored as one dtype would fill an array of another; eqxform converts only "
            "when asked, so that no precision is lost unseen.",
            'map "**" ... # float16 tensors into a float32 model',
            message="dtypes differ: {bad_dtype}{value}",
            help="add `with cast` to convert to the model's dtype",
        ),
        _c(
            "E245",
            "checkpoint tensors that no line reads",
            "Every tensor of the checkpoint is read by a `map` or left out by a `skip`, so that "
            "a tensor forgotten by mistake is never silently dropped.",
            "map ...   # the checkpoint also holds `fc.weight`",
            message="{len_unused} checkpoint tensor{value} read by no `map`: {listing_unused}",
            help='{value2}`map` them, or `skip "{unused}"`',
            peft_adapter=(
                "the PEFT adapter `{folder}` does not fit the model's adapters: {value}{value2}{value3}",
                "apply the spec's `lora` rules to the modules PEFT adapted ({listing_sorted_value})",
            ),
        ),
        _c(
            "E246",
            "model arrays that no line fills",
            "Every array of the model is filled by a `map` or kept by a `keep`, so that an array "
            "left at its random initial value is never mistaken for a loaded one.",
            "map ...   # nothing fills `head.weight`",
            message="{len_unfilled} model array{value} filled by no `map`: {listing_unfilled}",
            help='{value2}map a tensor onto them, or `keep "{unfilled}"`',
        ),
        _c(
            "E247",
            "a model array filled twice",
            "Two `map` lines (or one, through overlapping captures) fill the same array or the "
            "same slice of a stacked array.",
            'map "a.weight" -> "fc.weight"\nmap "b.weight" -> "fc.weight"',
            message="{listing_value} {value} filled twice",
            help="line {first} fills {value2} already; fill each array once{value3}",
        ),
        _c(
            "E248",
            "a `skip` or `keep` pattern that matches nothing",
            "A pattern of a `skip` line matches no checkpoint tensor, or one of a `keep` line no "
            "model array: a typo, or a line left over from another checkpoint.",
            'skip "**.num_batches_trackd"',
            "fix the pattern, or remove it.",
            message='`skip "{text}"` matches no checkpoint tensor',
            keep_model=('`keep "{text}"` matches no model array', None),
        ),
        _c(
            "E249",
            "an export that needs the original checkpoint",
            "Writing weights back runs each `map` in reverse; a `reshape` without the original "
            "shapes cannot be undone, nor can a `cast` know the dtype to return to.",
            "eqxform export spec.eqx model.eqx -o out.safetensors   # the spec has `reshape`",
            message="`{value}` cannot be undone without the original checkpoint's header",
            help="give the original checkpoint (`weights` in the spec, `--weights PATH`, `reference=` in Python)",
        ),
        _c(
            "E250",
            "an adapter that PEFT's layout cannot name",
            "PEFT names a LoRA adapter after its base module in the original checkpoint "
            "(`base_model.model.blocks.0.attn.qkv.lora_A.weight`): the spec's `map` lines must "
            "map the base weight as it is (no `transpose`, `reshape`, fuse or split), to a name "
            "ending in `.weight`; or the model has no adapters at all.",
            "eqxform export spec.eqx tuned.eqx -o adapter --peft   # no `map` names the weight",
            message="no `map` line names the base weight of the adapter at `{path}`",
            help="PEFT names an adapter by its base module's name in the checkpoint: map `{path}` to it",
            unnamed=(
                "the adapter at `{path}` has a base (`{name}`) that PEFT cannot name: {value}",
                "put adapters on modules whose weight maps as it is",
            ),
            model_has=(
                "the model has no LoRA adapters to write in PEFT's layout",
                "add them with a rule such as `where **.qkv -> lora(rank=8, alpha=16)`",
            ),
        ),
        _c(
            "E260",
            "a sweep's optimiser that differs in more than numbers",
            "A sweep's members share one optimiser program: only numbers may differ per member "
            "(the optimiser's numeric arguments, whole arrays' `lr` and `weight_decay` values). "
            "An `lr` or `weight_decay` rule on some layers of a stack (`where blocks[0:2] -> lr "
            "x`) whose value varies per member, or an optimiser argument that is not a number "
            "and differs between members, cannot be carried as an array with the member axis.",
            "ensemble 2 vary x=[0.1, 1]\nstack blocks scan\nwhere blocks[0:2] -> lr x",
            "vary the group's value on whole arrays, or the optimiser's own arguments.",
            message="the members' optimisers differ in more than numbers",
            help="vary only the optimiser's numeric arguments",
            layers=(
                "the `lr` or `weight_decay` rule on some layers of `{name}` varies per member",
                "vary a group's value on whole arrays, or the optimiser's own arguments",
            ),
        ),
        _c(
            "E301",
            "model file cannot be read",
            "The model file does not exist, is a directory, or cannot be opened.",
            "eqxform show missing.eqx",
            message="checkpoint `{path}` does not exist",
            help="check the path (a relative one is taken from the working directory)",
            directory_model=(
                "`{path}` is a directory, not a model file",
                "check the path and its permissions",
            ),
            regular_file=(
                "`{path}` is not a regular file (a pipe or a device?)",
                "check the path and its permissions",
            ),
            model_file=("model file `{path}` does not exist", "check the path and its permissions"),
            cannot_read=(
                "cannot read `{path}`: permission denied",
                "check the path and its permissions",
            ),
            os_error=("cannot read `{path}`: {error}", "check the path and its permissions"),
        ),
        _c(
            "E302",
            "not a valid model file",
            "The file is not a safetensors file, or its header, metadata or recipe is malformed.",
            "eqxform show spec.eqx",
            message="`{path}` is not a readable `.npz` checkpoint: {str_e}",
            help="write it with `numpy.savez(path, **state_dict)`",
            not_json=(
                _INVALID + "its {what} is not JSON (is this a spec or another file?)",
                _COPIED,
            ),
            too_short=(
                _INVALID + "it is {size} bytes long, too short for a header",
                _COPIED,
            ),
            header_not_json=(
                _INVALID + "its header is not JSON (is this a spec or another file?)",
                _COPIED,
            ),
            header_not_object=(
                _INVALID + "its header is not a JSON object",
                _COPIED,
            ),
            metadata=(
                _INVALID + "its `__metadata__` is not a map of strings",
                _COPIED,
            ),
            tensor_has=(
                _INVALID
                + "tensor `{name}` has a malformed entry (it needs `dtype`, `shape` and `data_offsets`)",
                _COPIED,
            ),
            tensor_has_bytes=(
                _INVALID + "tensor `{name}` has {value} bytes for shape {list_shape}",
                _COPIED,
            ),
        ),
        _c(
            "E303",
            "model file truncated",
            "The header claims more bytes than the file holds, or a tensor lies outside it.",
            "",
            message=_INVALID
            + "its header claims {length} bytes, but the file has {value} after the length{value2}",
            help=_COPIED,
            cut_short=(
                _INVALID + "it was cut short while it was read",
                _COPIED,
            ),
            tensor_lies=(
                _INVALID + "tensor `{name}` lies outside the file (is the file truncated?)",
                _COPIED,
            ),
        ),
        _c(
            "E304",
            "model file without a recipe",
            "A file saved from a model eqxform did not build carries no recipe, so its "
            "structure is unknown.",
            "eqxform.load('plain.eqx')",
            message="`{path}` has no eqxform recipe, so its structure is unknown",
            help="load it into a model of the same structure: `eqxform.load(path, like=model)`",
        ),
        _c(
            "E305",
            "tensors differ from the recipe",
            "A tensor of the file is missing, extra, or of another shape or dtype than the "
            "recipe builds.",
            "",
            message="`{path}` does not match its recipe: {problems}",
            help="the file was changed after it was written, or written by another version; rebuild it with `eqxform apply`",
        ),
        _c(
            "E306",
            "recipe needs a module that was not allowed",
            "The file's recipe builds its model with a `package.module:function` constructor.",
            "eqxform show model.eqx",
            "pass `--allow package` if you trust it.",
            message="`{origin}` names the module `{split}`; it was not imported",
        ),
        _c(
            "E310",
            "model file JSON nested too deeply",
            "The JSON of a model file's header or recipe nests deeper than eqxform reads "
            "(a valid header nests 3 levels, a recipe 5); deeper nesting is refused before "
            "it is parsed.",
            '{"a": [[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]}',
            message=_INVALID + "its {what} nests deeper than {max_json_depth} levels",
            help=_COPIED,
        ),
        _c(
            "E311",
            "tensor shape invalid",
            "A tensor's shape in the header is not a list of non-negative integers within "
            "bounds (a fraction, a boolean, a negative number, too many dimensions or a "
            "dimension too large).",
            '{"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}',
            message=_INVALID + "tensor `{name}` has a shape that is no list",
            help=_COPIED,
            dimensions_at=(
                _INVALID
                + "tensor `{name}` has {len_shape} dimensions (at most {max_tensor_ndim} are read)",
                _COPIED,
            ),
            dimension_which=(
                _INVALID + "tensor `{name}` has the dimension `{dumps}`, which {what}",
                _COPIED,
            ),
        ),
        _c(
            "E312",
            "tensor dtype unsupported",
            "A tensor's dtype is not one eqxform reads (F64, F32, F16, BF16, I8 to I64, "
            "U8 to U64, BOOL).",
            '{"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}',
            message=_INVALID
            + "tensor `{name}` has the dtype `{code_}`, which eqxform does not read",
            help="eqxform reads {listing}",
        ),
        _c(
            "E313",
            "tensor byte ranges overlap or leave gaps",
            "safetensors stores tensors back to back: their data offsets must be pairs "
            "`[start, end]` that tile the data exactly. Offsets that overlap would read one "
            "tensor's bytes as another's; gaps and trailing bytes hide data.",
            '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
            '"b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
            message=_INVALID + "tensors `{previous}` and `{name}` overlap (bytes {start} to {at})",
            help=_COPIED,
            data_belong=(
                _INVALID + "bytes {at} to {start} of the data belong to no tensor",
                _COPIED,
            ),
            its_last=(
                _INVALID + "its last {value} bytes belong to no tensor",
                _COPIED,
            ),
            tensor_has=(
                _INVALID
                + "tensor `{name}` has the data offsets `{dumps}`; two non-negative integers `[start, end]` with start <= end are expected",
                _COPIED,
            ),
        ),
        _c(
            "E314",
            "number out of range in a model file",
            "The header or recipe holds an integer of more digits than eqxform reads, a "
            "float beyond the range of a double (`1e999`), or `NaN`/`Infinity`.",
            '{"w": {"dtype": "F32", "shape": [99999999999999999999999999], ...}}',
            message=_INVALID + "its {what} is refused: it holds an integer of {digits:,} digits "
            "(at most {most} are read)",
            help=_COPIED,
            float=(
                _INVALID + "its {what} is refused: it holds the number `{number}`, beyond the "
                "range of a float",
                _COPIED,
            ),
            constant=(
                _INVALID + "its {what} is refused: it holds `{name}`, which is no JSON number",
                _COPIED,
            ),
        ),
        _c(
            "E315",
            "recipe does not fit its schema",
            "A field of the file's recipe has the wrong type: `specs` must be a list of "
            "records (`text`, `name`, `seed`, `params`), `params` a map of `let` names to "
            "numbers, strings, booleans or lists, seeds integers from 0 to 2**64 - 1 or null, "
            "`base.constructor` a string.",
            '{"base": {"constructor": "MLP(2, 2, 8, 2)", "seed": 0}, "specs": 3}',
            message=_INVALID + "its recipe is not a JSON object",
            help=_COPIED,
            string=(_INVALID + "its {what}'s `{where}` is {kind}; a string is expected", _REWRITE),
            seed=(
                _INVALID
                + "its {what}'s `{where}` is {kind}; a seed is an integer from 0 to 2**64 - 1, or null",
                _REWRITE,
            ),
            map=(_INVALID + "its {what}'s `{where}` is {kind}; a map is expected", _REWRITE),
            value=(
                _INVALID
                + "its {what}'s `{where}` is {kind}; a number, a string, a boolean or a list",
                _REWRITE,
            ),
            specs=(
                _INVALID
                + "its {what}'s `{where}` is {kind}; a list of the specs applied is expected",
                _REWRITE,
            ),
            number=(_INVALID + "its {what}'s `{where}` is {kind}; a number or a string", _REWRITE),
            names=(
                _INVALID + "its {what}'s `{where}` is {kind}; a list of names is expected",
                _REWRITE,
            ),
            members=(_INVALID + "its {what}'s `{where}` is {kind}; a list of members", _REWRITE),
            whole=(
                _INVALID + "its {what}'s `{where}` is {kind}; a whole number is expected",
                _REWRITE,
            ),
            a_number=(
                _INVALID + "its {what}'s `{where}` is {kind}; a number is expected",
                _REWRITE,
            ),
            number_or_null=(
                _INVALID + "its {what}'s `{where}` is {kind}; a number or null",
                _REWRITE,
            ),
            call=(_INVALID + "its {what}'s base `{text}` is not a constructor call", _REWRITE),
            member=(
                _INVALID + "its {what}'s `{where}` is not {index}, the member's place in the list",
                _REWRITE,
            ),
        ),
        _c(
            "E316",
            "recipe of an unknown format",
            "The recipe says it is of a format this eqxform does not read (written by a newer "
            "version).",
            '{"format": "eqxform/2", ...}',
            message=_INVALID
            + "its recipe is of the format `{str_written}`; this eqxform reads `{format}`",
            help="load it with the eqxform version that wrote it (`eqxform show` names it), or upgrade eqxform",
        ),
        _c(
            "E317",
            "recipe too large",
            "A string of the recipe (a spec's text, the constructor) or its list of specs is "
            "longer than eqxform reads from a file.",
            "",
            "rebuild the file; no recipe written by eqxform comes near the limits.",
            long=(
                _INVALID + "its {what}'s `{where}` is {length:,} characters long; recipes hold "
                "strings of at most {most:,}",
                _REWRITE,
            ),
            specs=(
                _INVALID + "its {what}'s `{where}` lists {count:,} specs; recipes list at most "
                "{most:,}",
                _REWRITE,
            ),
            members=(_INVALID + "its {what}'s `{where}` lists {count:,} members", _REWRITE),
        ),
        _c(
            "E318",
            "key repeated in a model file's JSON",
            "An object of the header or the recipe names the same key twice; a JSON reader "
            "would silently keep one of them.",
            '{"w": {...}, "w": {...}}',
            message=_INVALID + "its {what} is refused: the key `{key}` appears twice in one object",
            help=_COPIED,
        ),
        _c(
            "E319",
            "recipe sets a `let` its spec lacks",
            "A spec in the file's recipe is listed with a value for a `let` name that the "
            "spec does not define.",
            '"specs": [{"text": "let w = 1\\n...", "params": {"zz": 1}, ...}]',
            message="`{origin}`'s recipe sets {listing} for its spec {value} (`{name}`), which has no such `let`",
            help="the recipe was edited or written by another program; rebuild the file with `eqxform apply`",
        ),
        _c(
            "E320",
            "tensors cannot be read",
            "The header was valid, but reading the tensors failed: the file changed while it "
            "was read, or the disk failed.",
            "",
            message="tensor `{name}` of `{path}` could not be read: {error}",
            help="was the file changed while it was read? read it again",
            tensors=(
                _INVALID + "its tensors could not be read ({error})",
                "was the file changed while it was read? read it again, or copy it again",
            ),
        ),
        _c(
            "E321",
            "model file JSON holds too many values",
            "The header or the recipe holds more values (counted by their separators and "
            "brackets) than any real model file; parsing them would cost seconds and "
            "gigabytes.",
            '{"a": [[], [], [], ... millions more]}',
            message=_INVALID
            + "its {what} holds about {items:,} values; eqxform reads at most {max_json_items:,}",
            help=_COPIED,
        ),
        # ---- command line and API arguments
        _c(
            "E330",
            "adapters of another base",
            "An adapter file carries a digest of each frozen base tensor its adapters were "
            "trained on (of its name, shape, dtype and bytes, after the file's specs are "
            "replayed), and the arrays trained beside the adapters. The model given as the "
            "base has other frozen tensors (the message names them), or the specs do not fit "
            "it, so the adapters would compute something they were never trained for. Arrays "
            "the file carries (a new head, layers left trainable) may differ: they come from "
            "the file.",
            "eqxform merge adapters.eqx other_base.eqx -o merged.eqx",
            message="`{path}` was trained on another base: on this model its specs make other tensors ({problems})",
            help="load it onto the model the adapters were trained on",
            no_fit=(
                "`{path}` was trained on another base: its specs do not fit this model",
                "load it onto the model the adapters were trained on",
            ),
            not_replayable=(
                "`{path}` cannot be replayed: its specs draw frozen tensors at random ({listing}), and they were drawn from another key than the spec's seed when the adapters were trained",
                "save the whole model instead, or apply the spec with `seed=` (not `key=`) before training and save the adapters again",
            ),
            fingerprint_file=(
                "`{path}` was trained on another base: {value} (fingerprint {fingerprint_of_have}, the file wants {str_info})",
                "load it onto the model the adapters were trained on (the same frozen tensors: names, shapes, dtypes and values)",
            ),
        ),
        _c(
            "E331",
            "a model file where an adapter file was expected",
            "`eqxform.load(path, base=model)` and `eqxform merge` read adapter files "
            "(written with `adapters_only=True` or `apply --adapters-only`); this file holds "
            "a whole model.",
            "eqxform merge model.eqx base.eqx -o merged.eqx",
            message="`{path}` is a model file, not an adapter file",
            help="load it with `eqxform.load(path)`; adapter files are written by `eqxform.save(path, model, adapters_only=True)` or `apply --adapters-only`",
        ),
        _c(
            "E332",
            "an adapter file loaded without its base",
            "An adapter file holds only the adapters, not the base they adapt, so it cannot "
            "be loaded on its own.",
            "eqxform.load('adapters.eqx')",
            message="`{path}` holds only adapters; they load onto their base model",
            help="`eqxform.load(path, base=model)`, or `eqxform merge ADAPTERS BASE -o OUT`",
        ),
        _c(
            "E333",
            "adapter file changed after it was written",
            "An adapter file carries a digest over its record (the specs it replays, with "
            "their seeds and values, the digests of the base tensors it relies on) and over "
            "its tensors. They do not match: the file was edited (a rule added to its spec, "
            "say) or damaged, or written by an eqxform without the digest. Replaying an edited "
            "spec would compute something the adapters were never trained for, so the file is "
            "refused.",
            "eqxform merge edited.eqx base.eqx -o merged.eqx",
            message="`{path}` was changed after it was written: {why}",
            help="an adapter file is replayed on its base, so an edited spec would compute something the adapters were never trained for; write the file again from the trained model (`eqxform.save(..., adapters_only=True)`, `--adapters-only`)",
        ),
        _c(
            "E334",
            "an adapter file's specs build another model",
            "Replayed on the base, the file's specs give a model whose structure (module "
            "types, functions such as activations, static fields) is not the one the adapters "
            "were saved from, although the tensors match: another version of eqxform or "
            "Equinox builds it differently, or the record was rewritten with a digest to match.",
            "eqxform merge adapters.eqx base.eqx -o merged.eqx",
            message="`{path}`'s specs build another model on this base than the one its adapters were saved from (the same tensors, but other module types, functions or static fields)",
            help="load it with the versions of eqxform and Equinox that wrote it, or write the adapter file again from the trained model",
        ),
        _c(
            "E340",
            "a pickled checkpoint refused",
            "A `.pt`, `.pth`, `.bin` or `.ckpt` file from `torch.save` is a pickle: loading it "
            "can run any code the file holds, so eqxform never reads one.",
            'weights "resnet18.pth"',
            "convert it once, where you trust the file: `import torch, safetensors.torch` then "
            '`safetensors.torch.save_file(torch.load("resnet18.pth"), "resnet18.safetensors")`.',
            message="`{path}` is a pickle (PyTorch's `torch.save`), which eqxform never reads: loading one can run any code it holds",
        ),
        _c(
            "E341",
            "a checkpoint of a kind eqxform does not read",
            "Checkpoints are read from safetensors files and from `.npz` archives of `.npy` "
            "arrays; anything else is refused.",
            'weights "model.h5"',
            message="`{path}` is no safetensors or `.npz` file",
            help="save it with `safetensors.numpy.save_file` or `numpy.savez`",
            unreadable=(
                "`{folder}` holds no readable `{peft_config}`: {error}",
                "a PEFT adapter folder holds adapter_model.safetensors and adapter_config.json",
            ),
        ),
        _c(
            "E380",
            "`cast` of a complex array to a real dtype",
            "A `cast` to a real dtype (`float32`, `bfloat16`, ...) would keep only the real "
            "part of a complex array (the complex weights of a state-space layer such as an "
            "LRU): the model would compute something else, silently. A broad selector (`**`, "
            "a module, a type) casts the real floating-point arrays and leaves complex ones "
            "as they are (`plan` counts them among the skipped arrays); a selector that names "
            "a complex array itself is refused.",
            "where **.W_in -> cast bfloat16  # W_in is complex64",
            message="`cast {name}` would drop the imaginary part of `{text}` ({dtype})",
            help="leave the complex array out of the selector, or cast its module "
            "(`where {owner} -> cast {name}`), which skips its complex arrays",
        ),
        _c(
            "E381",
            "`lora` on a complex weight",
            "`lora` draws real low-rank factors `A` and `B`; a complex weight (a state-space "
            "layer's input or output matrix) has no real low-rank update of its kind.",
            "where **.W_in -> lora(rank=4)  # W_in is complex64",
            message="`lora` draws real factors, but `{text}` is {dtype}",
            help="adapt its real weights (e.g. `where Linear -> lora(rank=4)`), or train the "
            "complex weight with `ia3` or in full",
        ),
        _c(
            "E382",
            "constructor that cannot run on traced keys",
            "A constructor given in place of a model (`program.apply(lambda key: Model(..., "
            "key=key))`) is run on abstract keys: under `eqx.filter_eval_shape` to plan, and "
            "under `eqx.filter_vmap` to draw an ensemble's members, as the Equinox Tricks "
            "page's `make_ensemble` does. A constructor that turns a JAX array into a NumPy "
            "one (`np.log(jax.random.uniform(key, ...))`, as rnn-jax's LRU does) or branches "
            "on an array's value cannot run so.",
            "program.apply(lambda key: DeepStateSpaceModelEncoder(..., key=key))",
            message="the constructor `{name}` cannot run on traced keys: {error}",
            help="pass the model it builds instead (an `ensemble` then draws each member's "
            "arrays from the model's own values), or use `jax.numpy` in place of `numpy` "
            "in the constructor",
        ),
        _c(
            "E383",
            "ensemble written as one checkpoint",
            "`export` (`Program.export_weights`, `Program.export_peft`) writes one model's "
            "arrays under the checkpoint's names; an ensemble holds N models, each array with "
            "a member axis, which no name of the checkpoint takes. (A stack is written layer "
            "by layer, as `unstack` gives it back.)",
            'program.export_weights(ensemble, "back.safetensors")',
            message="an ensemble of {count} members is no one model to write in the checkpoint's names",
            help="write one member: `program.export_weights(eqxform.pick(ensemble, 0), ...)` "
            "(from the shell, `eqxform pick FILE --member 0 -o one.eqx` first)",
        ),
        _c(
            "E401",
            "spec file cannot be read",
            "The spec file does not exist or cannot be opened.",
            "eqxform check nope.eqx",
            message="spec file `{path}` does not exist",
            help="this argument is read as the path of a spec file",
            folder=("`{path}` is a folder, not a spec file", None),
            cannot_read=("cannot read `{path}`: {strerror}", None),
            folder_holds=(
                "the folder `{path}` holds no spec (no `*.eqx` file, subfolders included)",
                "pass spec files, or a folder with `.eqx` files in it",
            ),
        ),
        _c(
            "E402",
            "not a spec",
            "The file given as a spec is a model file (the arguments may be swapped), is not "
            "UTF-8 text, or is text of another kind: its first line that is neither blank nor "
            "a comment does not start with a directive or a misspelling of one (`/etc/passwd`, "
            "a YAML or Markdown file). Its contents are not shown, as they may not be meant "
            "for a terminal or a log.",
            "eqxform apply model.eqx spec.eqx -o out.eqx",
            message="`{path}` is a model file, not a spec",
            help="the spec comes first: `eqxform apply SPEC MODEL -o OUT`",
            text=(
                "`{path}` is not a text file",
                "a spec is UTF-8 text; its contents are not shown",
            ),
            spec=(
                "`{path}` is not a spec",
                "line {line}, the first that is not blank or a comment, does not start with a directive ({listing}, ...); its contents are not shown",
            ),
            arguments_are=(
                "`{spec}` is a model file and `{model}` a spec: the arguments are swapped",
                "the spec comes first: `eqxform {command} {model} {spec} ...`",
            ),
        ),
        _c(
            "E403",
            "no model",
            "No model file is given and the spec has no `model` directive.",
            "eqxform apply spec.eqx -o out.eqx",
            message="no model given, and the spec has no `model` directive",
            help="pass a model file, or add e.g. `model MLP(in_size=2, out_size=2, width_size=64, depth=2)` to the spec",
        ),
        _c(
            "E404",
            "output folder missing",
            "The folder of the output file does not exist.",
            "eqxform apply spec.eqx -o missing/out.eqx",
            message="cannot write `{name}`: folder `{folder}` does not exist",
            help="create it first (`mkdir -p {folder}`), or {fix}",
        ),
        _c(
            "E405",
            "not a constructor call",
            "`eqxform new` takes a constructor call; `eqxform.new` takes one written as text, "
            "or a class or function with its arguments (`eqxform.new(MLP, in_size=2, ...)`), "
            "not text and arguments both.",
            'eqxform new "3 + 4" -o m.eqx',
            message="a constructor written as text takes its arguments in the text",
            help='e.g. eqxform.new("MLP(in_size=2, out_size=2, width_size=8, depth=2)"), or pass the class: eqxform.new(MLP, in_size=2, ...)',
            call_string=(
                "the constructor must be a call written as a string, not a `{name}`",
                'e.g. "MLP(in_size=2, out_size=2, width_size=8, depth=2)"',
            ),
            call=(
                "`{constructor}` is not a constructor call",
                'write it as a call, e.g. "MLP(in_size=2, out_size=2, width_size=8, depth=2)"',
            ),
        ),
        _c(
            "E451",
            "a constructor argument a recipe cannot record",
            "`eqxform.new(cls, *args, **kwargs)` records the call in the model's recipe as "
            "text, so that the file loads with no code from its user. Numbers, strings, "
            "booleans, `None`, lists (a tuple is written as a list), dtypes, `jax.nn` "
            "functions, and config objects (dataclasses and named tuples) of those can be "
            "written; a config object becomes a call of its class with every field. Classes "
            "and functions are named `package.module:Name`, so they must be importable by "
            "that name (not defined in `__main__` or inside a function). Anything else (an "
            "array, a dict, a lambda) cannot.",
            "eqxform.new(MyNet, table=jnp.ones(3))",
            message="a recipe cannot record {what}",
            help="a recipe records numbers, strings, booleans, `none`, lists, dtypes, `jax.nn` functions and config objects (dataclasses, named tuples) of those, naming classes and functions by an importable `package.module:Name`; pass such values, or write a factory function in a module and pass that",
        ),
        _c(
            "E406",
            "bad `--params` file",
            "A `--params` file is YAML mapping `let` names to numbers, strings or booleans.",
            "- 1\n- 2",
            "write e.g. `width: 128`.",
            message="`{params_file}` is not valid YAML: {splitlines}",
            map_let=("`{params_file}` must map `let` names to values", "e.g. `width: 128`"),
            number_string=(
                "`{k}` in `{params_file}` must be a number, a string or a boolean",
                None,
            ),
        ),
        _c(
            "E407",
            "bad `--set`",
            "`--set` takes `NAME=VALUE`.",
            "eqxform apply spec.eqx --set width -o out.eqx",
            message="`--set {item}` is not NAME=VALUE",
            help="e.g. `--set width=128`",
        ),
        _c(
            "E408",
            "no such device",
            "`--device` names a platform that JAX does not have here.",
            "eqxform apply spec.eqx --device tpu -o out.eqx",
            message="no `{name}` device is available",
            help="devices here: {listing}",
        ),
        _c(
            "E409",
            "output is the input",
            "The output file is the input model; eqxform does not overwrite its input.",
            "eqxform apply spec.eqx model.eqx -o model.eqx",
            message="`{output}` is the input model; eqxform will not overwrite its input",
            help="write elsewhere with `-o`, or pass `--force` to replace it",
        ),
        _c(
            "E410",
            "no optimiser",
            "Training needs the spec's `optimizer` directive.",
            "eqxform train spec.eqx -o out.eqx   # the spec has no `optimizer`",
            message="the spec has no `optimizer` directive",
            help="add one, e.g. `optimizer adamw(learning_rate=1e-3)`",
        ),
        _c(
            "E411",
            "params file cannot be read",
            "The `--params` file does not exist.",
            "eqxform apply spec.eqx --params nope.yaml -o out.eqx",
            "check the path.",
            message="params file `{params_file}` does not exist",
        ),
        _c(
            "E412",
            "`--set` value is not a constant",
            "A `--set` value is a constant expression: a number, a string, a boolean, a list.",
            "eqxform apply spec.eqx --set width=2*w -o out.eqx",
            message="`--set {name}={text}` is not a constant",
            help="give a number, a string, `true`/`false` or a list, e.g. `--set width=128`",
        ),
        _c(
            "E413",
            "type name not capitalised",
            "Selectors read capitalised names as types and lowercase ones as fields.",
            'eqxform.register_type(Block, name="block")',
            message="type name `{name}` must start with a capital letter: selectors read lowercase names as fields",
            help="register it as `{value}`",
        ),
        _c(
            "E414",
            "two leaves share a tensor name",
            "A model file names each tensor by its path; two paths of the model give the "
            "same name (a dict key containing `.`, say).",
            "",
            message="two leaves of the model are both named `{name}`",
            help="tensor names are the leaves' paths; a dict key that contains a `.` can collide with a path: rename it",
        ),
        _c(
            "E415",
            "unknown diagnostic code",
            "`eqxform explain` takes a code that eqxform's messages show.",
            "eqxform explain E999",
            message="give a code or `--all`, not both",
            help="`eqxform explain E201`, or `eqxform explain --all`",
            given=(
                "no code given",
                "e.g. `eqxform explain E201`, or `eqxform explain --all`; there are {len_codes} codes",
            ),
            diagnostic_has=("no diagnostic has the code `{code_}`", None),
        ),
        _c(
            "E420",
            "bad training data",
            "The `--data` file is missing, not an `.npz`, lacks `x` or `y`, or does not fit "
            "the model: rows of `x` the model does not take, targets of another shape than "
            "its output (`--loss mse`), labels that are not integers of shape [N] or lie "
            "outside the model's classes (`--loss cross_entropy`). The message says which, "
            "with the shapes and dtypes found.",
            "eqxform train spec.eqx --data d.npz --loss cross_entropy -o out.eqx   # y is f32[N,3]",
            message="`{path}` must hold arrays named `x` and `y`; it holds {value}",
            help="write it with `numpy.savez(path, x=inputs, y=targets)` (for a model called "
            "with several inputs: `x0=..., x1=...`, one per argument, in order)",
            rows=(
                "`{name}` and `y` must have one row per example: `{name}` is {list_shape}, `y` is {list_shape2}",
                "write it with `numpy.savez(path, x=inputs, y=targets)`",
            ),
            empty=(
                "`{path}` holds no examples",
                "write it with `numpy.savez(path, x=inputs, y=targets)`",
            ),
            real_numbers=(
                "`x` and `y` must be real numbers, not complex",
                "write it with `numpy.savez(path, x=inputs, y=targets)`",
            ),
            not_callable=(
                "the model `{name}` has no `__call__`, and `train` calls the model on each row of `x`",
                "train a model whose entry point is a method (`{name}.forward`, say) from Python: "
                "`eqxform.make_step` with a loss that calls that method",
            ),
            model_does=(
                "the model does not accept rows of {text} of shape {list_shape}: {error}",
                "each row of `x` is one input of the model (the spec's `input` line, or the `in_size` of an `MLP`): save `x` with one such input per row; "
                "a model called with several arguments takes them as `x0`, `x1`, ... (one array each, in order)",
            ),
            model_gives=(
                "the model gives outputs of shape {list_shape}{value}, but rows of `y` have shape {list_shape2}",
                "`--loss mse` compares each output with its row of `y`: give `y` the shape {list_value} (or change the model's output){value2}",
            ),
            loss_cross=(
                "`--loss cross_entropy` needs labels that are integers of shape {want}, got {typed_y}",
                None,
            ),
            labels_lie=("labels must lie in [0, {value}){found}", None),
            no_file=(
                "data file `{path}` does not exist",
                "write it with `numpy.savez(path, x=inputs, y=targets)`",
            ),
            not_a_file=(
                "data file `{path}` is not a regular file",
                "write it with `numpy.savez(path, x=inputs, y=targets)`",
            ),
        ),
        _c(
            "E421",
            "no built-in data for this model",
            "Without `--data`, `train` makes a toy task sized from the model's `in_size` and "
            "`out_size`.",
            "eqxform train cnn.eqx -o out.eqx",
            message="the built-in data set feeds one input, and the spec declares {len_inputs}",
            help="pass your data with `--data data.npz` (arrays `x` and `y`)",
            needs_model=(
                "the built-in data set needs a model with integer `in_size` and `out_size` (an `MLP`) or an `input` line; this model is a `{name}`",
                "pass your data with `--data data.npz` (arrays `x` and `y`), or declare the model's input, e.g. `input f32[3,32,32]`",
            ),
        ),
        _c(
            "E422",
            "batch larger than the data",
            "`--batch-size` is larger than the number of examples.",
            "eqxform train spec.eqx --batch-size 9999 -o out.eqx",
            message="`--batch-size {batch_size}` is larger than the data set ({len_x} examples)",
            help="use at most {len_x}",
        ),
        _c(
            "E423",
            "the model's output is not one array",
            "`train`'s losses (`mse`, `cross_entropy`) compare one output array with `y`; "
            "this model returns something else: a tuple (`(logits, cache)`), a result object "
            "(ESM2's `ESM2Result` with `hidden` and `logits`), a dict. The message shows what "
            "it returned.",
            "eqxform train spec.eqx esm2.eqx --data d.npz --loss cross_entropy -o out.eqx",
            message="the model returns {describe_output_out}; `eqxform train`'s `{loss}` compares one array with `y`",
            help="name the array to train with `--model-output {example}`{value}, or give a loss of your own: `--loss package.module:function --allow package`",
        ),
        _c(
            "E424",
            "`--model-output` names no part of the model's output",
            "`eqxform train --model-output PATH` picks the array the loss compares with `y` from "
            "what the model returns: attribute names, mapping keys and indices, joined by `.` "
            "or written `[i]`. The path does not fit what the model returned (shown).",
            "eqxform train spec.eqx esm2.eqx --model-output logit -o out.eqx",
            message="`--model-output {path}`: {why}",
            help="name an attribute or an index of what the model returns, e.g. `--model-output logits` or `--model-output 0`",
        ),
        _c(
            "E425",
            "bad `--loss`",
            "`--loss` is `mse`, `cross_entropy`, or `package.module:function`: a function of "
            "the batch's outputs and targets, `(pred, y) -> scalar`, from a package given with "
            "`--allow` (an allowed module in the current directory is found). It cannot be "
            "imported, is not allowed, is no function, or fails on the model's output shapes "
            "or gives no single number.",
            "eqxform train spec.eqx m.eqx --loss mylosses:masked_ce -o out.eqx",
            message="unknown loss `{name}`",
            help="the losses are {losses}, or a function of your own as `package.module:function` with `--allow package`",
            comes_from=(
                "the loss `{name}` comes from `{module}`, which is not allowed",
                "eqxform imports no module unless you allow it: add `--allow {top}` if you trust it",
            ),
            cannot_import=(
                "cannot import the loss `{name}`: {error}",
                "write it as `package.module:function`, importable from the current directory or an installed package",
            ),
            function=(
                "the loss `{name}` is a `{name2}`, not a function",
                "a loss is a function `(pred, y) -> scalar` of a batch",
            ),
            fails_on=(
                "the loss `{name}` fails on the model's output ({describe_output_out}) and rows of `y` ({describe_output_target}): {error}",
                "a loss is a function `(pred, y) -> scalar` of a batch's outputs and targets",
            ),
            gives_one=(
                "the loss `{name}` gives {describe_output_value}, not one floating-point number",
                "return the batch's loss as a scalar, e.g. with `jnp.mean`",
            ),
        ),
        _c(
            "E430",
            "seed out of range",
            "A seed given on the command line (`--seed`) or to the Python API (`seed=`) is not "
            "a whole number from 0 to 2**64 - 1. Every seed in that range gives its own key: "
            "seeds below 2**32 draw as `jax.random.key(seed)`, larger ones put their high 32 "
            "bits in the key's high word.",
            "eqxform apply spec.eqx -o out.eqx --seed 2**63",
            message="{what} must be a whole number from 0 to 2**64 - 1, not {describe_value_seed}",
            help="e.g. `--seed 0` (Python: `seed=0`)",
            whole_number=(
                "`{option} {text}` is not a whole number from 0 to 2**64 - 1",
                "write it in decimal digits, e.g. `{option} 0`",
            ),
            vary_seed=(
                "`vary seed` gives member k the seed plus k: with seed {seed}, member {last}'s seed is beyond 2**64 - 1",
                "use a seed at most {largest} (e.g. `--seed 0`)",
            ),
        ),
        _c(
            "E431",
            "`let` value from outside that is not a constant",
            "A value given for a `let` through `params=` (or a sweep file) is not a number, a "
            "string, `true`/`false`/`none` or a list of those, or is beyond the limits of a "
            "spec's own values (an integer of more than 256 bits, a float that is not finite, "
            "a string or list of more than 10,000 elements).",
            'eqxform.compile("let w = 1", params={"w": object()})',
            message="the value of `{key}` {problem}",
            help='give a number, a string, `true`/`false`/`none` or a list of those, e.g. `--set width=128` or `params={{"width": 128}}`',
        ),
        _c(
            "E432",
            "bad memory budget",
            "The environment variable `EQXFORM_MAX_BYTES` is not a positive number of bytes "
            "(written in the digits 0-9, a whole number or a decimal with a unit K, M, G or "
            'T) nor `none`. `0` and negative numbers are refused rather than read as "no '
            'limit": the word `none` is the one way to turn the check off.',
            "EQXFORM_MAX_BYTES=0 eqxform apply spec.eqx -o out.eqx",
            message="`{max_bytes_env}={text}` {why}",
            help="give a positive number of bytes in digits 0-9, with an optional unit K, M, G or T (e.g. `{max_bytes_env}=64G`), or `{budget_off}` to turn the memory check off",
        ),
        _c(
            "E433",
            "`key` that is not a JAX key",
            "`Program.apply` and `Program.build_model` take one `jax.random.key` (or a legacy "
            "`jax.random.PRNGKey`) as `key=`.",
            'program.apply(model, key="0")',
            message="`key` must be one `jax.random.key`, not {what_key}",
            help="e.g. `key=jax.random.key(0)`, or pass `seed=0` instead",
        ),
        _c(
            "E434",
            "Python API argument of the wrong type",
            "An argument of `eqxform.compile` is not of the type it takes: `spec` the text of "
            "a spec (a `str`) or a file (a `pathlib.Path`), `params` a mapping of `let` names "
            "to values, `inputs` a list of strings, `name` a string.",
            'eqxform.compile(Path("spec.eqx"), params=[("width", 8)])',
            message="`{argument}` must be {expected}, not a `{name}`",
            help="see `help(eqxform.compile)`",
        ),
        _c(
            "E435",
            "spec text that looks like a path",
            "`eqxform.compile` reads a `str` as the text of a spec and a path object "
            "(`pathlib.Path`) as a file. A `str` of one line that looks like a path (it ends "
            "in `.eqx`, names a file, or has a `/` and no spaces) and does not parse as a "
            "statement was meant as a file; it is refused, and never read.",
            'eqxform.compile("specs/lora.eqx")',
            message="the spec text `{shown}` looks like the path of a file",
            help="a `str` is the text of a spec; pass a file as a path object: `eqxform.compile(pathlib.Path({shown!r}))`",
        ),
        _c(
            "E436",
            "state made for another model",
            "A stacked model was called with an `eqx.nn.State` that holds no value for the "
            "stack's layers, in neither the stack's form nor the per-layer form of the model "
            "before `stack` (which a stack reads and writes back): it belongs to another "
            "model.",
            "model, state = eqx.nn.make_with_state(Other)(key=key)\nstacked(x, state)",
            message="the `eqx.nn.State` passed to a stack holds no value for its layers: it was "
            "made for another model",
            help="call the model with the state of the model the spec was applied to (its "
            "per-layer values are read and written back), or apply the spec to the model and "
            "its state together: `model, state = program.apply((model, state))`",
        ),
        _c(
            "E437",
            "model called with unresolved wrappers",
            "`freeze`, `wrap` and the weight-level adapters put a wrapper where an array was; "
            "`eqxform.resolve(model)` turns each back into its array (a frozen one under "
            "`stop_gradient`) and belongs where the model is called, inside `jit`/`grad`. A "
            "model called without it hands a wrapper to JAX.",
            "model = program.apply(model)   # with `where ** -> freeze`\nmodel(x)",
            "call `eqxform.resolve(model)(x)` inside your jit/grad, or make a plain model with "
            "`where ** -> unwrap` or `eqxform.bake(model)`.",
        ),
        _c(
            "E465",
            "bad mesh",
            "`--mesh` (or `mesh=` of the Python API) is a list of `AXIS=SIZE`, separated by "
            "commas or spaces, each size a whole number >= 1 (in the digits 0-9) or -1, each "
            "name once.",
            "eqxform train spec.eqx --mesh data=2,model -o out.eqx",
            message="`{origin} {text}`: {problem}",
            help="write it as `{origin} data=2,model=4` (`-1`: the devices left over)",
            mesh_takes=(
                "`mesh=` takes a `jax.sharding.Mesh`, a mapping of axis sizes or the text `data=2,model=4`, not {name}",
                None,
            ),
        ),
        _c(
            "E466",
            "bad multi-process options",
            "A run of several processes needs `--coordinator HOST:PORT` (process 0's address), "
            "`--num-processes N` and `--process-id I` (0 <= I < N), all three.",
            "eqxform train spec.eqx --coordinator 10.0.0.1:1234 -o out.eqx",
            message="`--timeout` is how long a run of several processes waits to start; this run has one process",
            help="leave `--timeout` out, or join a run with `--coordinator`, `--num-processes` and `--process-id`",
            needs_coordinator=(
                "a run of several processes needs `--coordinator`, `--num-processes` and `--process-id` together",
                "e.g. `--coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0` on the first host, `--process-id 1` on the second",
            ),
            coordinator=("`--coordinator {coordinator}` is not `HOST:PORT`", _JOIN),
            num_processes=("`--num-processes {num_processes}` must be at least 1", _JOIN),
            process_id=(
                "`--process-id {process_id}` must lie in 0..{last} for {num_processes} processes",
                _JOIN,
            ),
            timeout=(
                "the timeout must be a whole number of seconds, at least 1, not {timeout_s!s}",
                _JOIN,
            ),
        ),
        _c(
            "E467",
            "could not join the run",
            "`jax.distributed.initialize` failed: the coordinator did not answer within the "
            "timeout, or JAX had already started in this process.",
            "eqxform train spec.eqx --coordinator 10.0.0.9:1234 --num-processes 2 "
            "--process-id 1 -o out.eqx",
            "start process 0 first, check that every host reaches its address and port, and "
            "start the others within the timeout.",
            message="process {process_id} of {num_processes} could not join the run at `{coordinator}`: {what}",
        ),
        _c(
            "E468",
            "batch axis not in the mesh",
            "The batch is split over `--batch-axis` (`batch_axis=`), which must be an axis of "
            "the mesh.",
            "eqxform train spec.eqx --mesh data=8 --batch-axis batch -o out.eqx",
            message="the batch axis `{batch_axis}` is no axis of the mesh ({listing})",
            help="{value} name a mesh axis, or leave it out to split over `data` when the mesh has it (else the batch is replicated)",
        ),
        _c(
            "E438",
            "constructor that takes no key",
            "`Program.apply` and `Program.plan` take a model, or in its place the model's "
            "constructor: a function called with one key, `constructor(key)`, whose draws an "
            "`ensemble` then uses for its members, as the Equinox Tricks page's "
            "`make_ensemble` does.",
            "program.apply(eqx.nn.MLP)",
            message="a constructor given in place of a model is called with one key, `constructor(key)`, but `{name}` does not take one",
            help="pass a function of a key, e.g. `program.apply(lambda key: Model(..., key=key))`, or pass the model itself",
        ),
        _c(
            "E440",
            "output is an input of the command",
            "`-o` names the spec, the `--data` file or the `--params` file of the command (by "
            "path, or through a symbolic or hard link); writing the model there would destroy "
            "that input. `--force` does not change this.",
            "eqxform apply spec.eqx model.eqx -o spec.eqx",
            "write the model elsewhere with `-o`.",
            message="`{name}` is the {what}; eqxform will not write over an input of the command",
        ),
        _c(
            "E441",
            "output is a directory",
            "`-o` (or `eqxform.save`'s path) names a directory.",
            "eqxform apply spec.eqx -o models/",
            message="cannot write `{name}`: it is a directory",
            help="name a file, e.g. `-o {listing}`",
        ),
        _c(
            "E442",
            "output is a special file",
            "The output is a named pipe (FIFO), a device or a socket. eqxform writes a whole "
            "file and renames it into place, which would replace the special file by a "
            "regular one.",
            "eqxform apply spec.eqx -o /dev/null",
            "write a regular file; pipe the file afterwards if you need to.",
            message="cannot write `{name}`: it is {kind}; eqxform writes whole files and would replace it with one",
        ),
        _c(
            "E443",
            "output folder not writable",
            "The folder of the output cannot be written (permissions, a read-only file system); "
            "found before any work.",
            "eqxform apply spec.eqx -o /read-only/out.eqx",
            message="cannot write `{name}`: folder `{folder}` is not writable ({error})",
            help="check the folder's permissions, or {fix}",
            write=(
                "cannot write `{name}`: {error}",
                "the old file, if any, is unchanged; free space or write elsewhere",
            ),
        ),
        _c(
            "E444",
            "output name too long",
            "The output's file name is longer than its folder's file system takes.",
            "eqxform apply spec.eqx -o aaaa...(300 characters).eqx",
            message="cannot write `{name}{value}`: the name is too long{value2}",
            help="use a shorter file name",
        ),
        _c(
            "E445",
            "not a path",
            "A path argument of the Python API is not a `str` or `os.PathLike`, is empty, or "
            "contains a NUL character.",
            "eqxform.load(None)",
            message="the {what} must be a path (a `str` or `os.PathLike`), not a `{name}`",
            help='pass the file\'s name, e.g. `"model.eqx"` or `pathlib.Path(...)`',
            path=("the {what} path {value}", 'pass the file\'s name, e.g. `"model.eqx"`'),
        ),
        _c(
            "E446",
            "not a model",
            "`eqxform.save` was given something that holds no arrays (or a traced value "
            "inside `jax.jit`), or a `recipe` that is no `eqxform.Recipe`.",
            'eqxform.save("m.eqx", "hello")',
            message="`recipe` must be an `eqxform.Recipe`, not a `{name}`",
            help="pass `eqxform.recipe_of(model)`, or leave `recipe` out",
            nothing=(
                "there is nothing to save: the `{name}` given holds no arrays",
                "pass a model (an `equinox.Module` or a pytree of arrays)",
            ),
            traced=(
                "leaf `{name}` is a traced value; a model is saved outside `jax.jit`",
                "save the model the jitted function returns",
            ),
        ),
        _c(
            "E447",
            "array cannot be stored",
            "A leaf of the model has a dtype that a model file cannot store (complex numbers, "
            "PRNG key arrays, 8-bit floats, objects).",
            'eqxform.save("m.eqx", {"key": jax.random.key(0)})',
            "cast the leaf to a stored dtype, or store a key's bits (`jax.random.key_data`).",
            message="leaf `{name}` is {why}, which a model file cannot store",
        ),
        _c(
            "E448",
            "output could not be written",
            "Writing the output failed part way (the disk is full, the file system failed). "
            "The old file, if there was one, is unchanged, and no temporary file is left.",
            "",
            "free space, or write elsewhere.",
            message="cannot make the folder `{folder}`: {error}",
            write=(
                "cannot write `{name}`: {error}",
                "the old file, if any, is unchanged; free space or write elsewhere",
            ),
        ),
        _c(
            "E449",
            "`allow` is not a list of package names",
            "`eqxform.load` and `eqxform.new` take `allow` as a list of top-level package "
            "names; a single string would be read letter by letter.",
            'eqxform.load("m.eqx", allow="mypkg")',
            message="`allow` must be a list of package names, not {allow!r:.60}",
            help='e.g. `allow=["mypkg"]`',
        ),
        _c(
            "E450",
            "no checkpoint to map",
            "The spec's `map` lines read a checkpoint, but neither a `weights` line nor "
            "`--weights PATH` (`weights=` in Python) names one; or weights were given to a spec "
            "without `map` lines.",
            "eqxform apply resnet.eqx -o out.eqx   # the spec has `map` lines, no `weights`",
            message="weights were given, but the spec has no `map` lines to read them by",
            help='add `map "CHECKPOINT NAME" -> "MODEL PATH"` lines (docs/weights.md); a model file of eqxform\'s own loads with `eqxform.load`',
            checkpoint_none=(
                "the spec's `map` lines read a checkpoint, but none is named",
                'add `weights "PATH"` to the spec, or pass `--weights PATH` (`weights=` in Python)',
            ),
            write_back=(
                "the spec has no `map` lines to write the weights back by",
                "docs/weights.md shows how a spec maps a checkpoint's names",
            ),
            spec_has=(
                "the spec has no `map` lines to {what} by",
                "docs/weights.md shows how a spec maps a checkpoint's names",
            ),
        ),
        _c(
            "E525",
            "training data is not an `.npz` of arrays",
            "`--data` takes an `.npz` (a zip of `.npy` arrays, as `numpy.savez` writes): not "
            "a single `.npy`, not a zip with other members, not a member whose `.npy` header "
            "cannot be read.",
            "eqxform train spec.eqx --data x.npy -o out.eqx",
            message="`{path}` is {value}",
            help="write it with `numpy.savez(path, x=inputs, y=targets)`",
            holds_which=(
                "`{path}` holds `{name}`, which is no `.npy` array",
                "an `.npz` holds `.npy` arrays only: write it with `numpy.savez(path, x=inputs, y=targets)`",
            ),
            readable_npy=(
                "`{name}` in `{path}` is not a readable `.npy` array: {error}",
                "write it with `numpy.savez(path, x=inputs, y=targets)`",
            ),
            has_shape=(
                "`{key}` of `{path}` has the shape {shape}, which is no shape",
                "write it with `numpy.savez(path, x=inputs, y=targets)`",
            ),
        ),
        _c(
            "E526",
            "training data of the wrong kind",
            "`x` or `y` holds complex numbers, Python objects, strings, dates or records; "
            "training data are booleans, integers or floats.",
            "numpy.savez('d.npz', x=x.astype(complex), y=y)",
            message="`{key}` of `{path}` holds {kind} ({dtype}); training data are real numbers (booleans, integers or floats)",
            help="convert it before saving, e.g. `x.real.astype(numpy.float32)` or `numpy.asarray(y, numpy.int32)`",
        ),
        _c(
            "E527",
            "training data too large, or its size misstated",
            "An array's `.npy` header claims more (or fewer) bytes than the file holds, or "
            "the arrays would not fit in memory; found from the headers, before anything is "
            "loaded.",
            "an .npz whose header claims an array of 7 TiB",
            message="`x` and `y` of `{path}` take {size_total} in memory, more than the {size_limit} eqxform loads",
            help="train on a smaller data set, or from Python with `eqxform.make_step` and batches you load yourself",
            claims=(
                "`{key}` of `{path}` claims {list_shape} of {dtype} ({size_claimed}), but the file holds {size_max_held} of it",
                "the file is damaged or was not written by numpy; write it again",
            ),
        ),
        _c(
            "E528",
            "training data damaged",
            "Reading `x` or `y` failed after their headers were checked: a checksum or a "
            "length in the zip does not match.",
            "",
            message="`{path}` could not be read: {error}",
            help="the file is damaged (a checksum or a length does not match); write it again",
            changed_while=(
                "`{key}` of `{path}` changed while it was read",
                "write it with `numpy.savez(path, x=inputs, y=targets)`",
            ),
        ),
        _c(
            "E529",
            "training data not finite",
            "`x` or `y` holds NaN or an infinity. One such value makes the loss of every "
            "batch that holds it NaN, and the training after it worthless, so the data is "
            "refused before any step; the message names the array and the index of the "
            "first bad element.",
            "numpy.savez('d.npz', x=x, y=numpy.where(mask, numpy.nan, y))",
            message="`{key}` of `{path}` holds {array} at index {list_where} ({count:,} element{s} not finite); training data must be finite numbers",
            help="clean the data before saving, e.g. drop those rows (`keep = numpy.isfinite({key}).all(axis=tuple(range(1, {key}.ndim)))`) or replace the values (`numpy.nan_to_num`)",
        ),
        # ---- running
        _c(
            "E530",
            "training stopped: a loss or an update was not finite",
            "`eqxform train` checks every step (inside the compiled step, without waiting "
            "for the device): at the first step whose loss, or whose updated parameters, are "
            "NaN or infinite, it stops. It writes the model as it was before that step (the "
            "last finite one) to the output and exits with status 1; when the very first "
            "step fails it writes nothing. The recipe's `train` entry says where it stopped. "
            "In an ensemble (a sweep) a member that diverges stops alone, kept as it was "
            "before that step, and the others train on: training stops only when every "
            "member has diverged.",
            "optimizer sgd(learning_rate=1e10)",
            message="training stopped at step {nonfinite}: {nonfinite_what}; {kept}",
            help="lower the learning rate in the spec's `optimizer` (or clip gradients), check the data's scale, or start from a model whose outputs are finite",
        ),
        _c(
            "E460",
            "no adapters to save",
            "`save(..., adapters_only=True)` (`apply --adapters-only`) writes a model's "
            "adapters; the model has none.",
            "eqxform apply init.eqx -o out.eqx --adapters-only   # no lora rule",
            message="the model has no adapters to save",
            help="apply a spec with a `lora` or `ia3` rule first, or save the whole model (without `adapters_only`)",
        ),
        _c(
            "E461",
            "the adapters' spec is unknown",
            "An adapter file records the spec that added its adapters, to replay it on the "
            "base. eqxform knows it for models it built (`eqxform.new`, `load`, a spec's "
            "`model` directive, and `Program.apply` of those); this model came from "
            "elsewhere.",
            "eqxform.save('a.eqx', program.apply(my_model), adapters_only=True)",
            message="the specs that added the adapters are unknown",
            help="pass them: `eqxform.save(path, model, adapters_only=True, spec=program)`; eqxform knows them only for models it built (`eqxform.new`, `load`, a spec's `model` directive)",
        ),
        # ---- `eqxform pick`: a member of an ensemble as a plain model
        _c(
            "E480",
            "no ensemble to pick from",
            "`eqxform pick` (`eqxform.pick`) takes one member out of an ensemble: a model "
            "file, or a model, that a spec's `ensemble N` made. This one has no member axis.",
            "eqxform pick model.eqx --member 0 -o one.eqx   # model.eqx is one MLP",
            "pick from the ensemble's file (what `eqxform apply` or `eqxform train` of a spec "
            "with an `ensemble` line wrote).",
            message="`{origin}` is no ensemble (its model is a `{kind}`); there is no member to pick",
            help="pick from a file that `ensemble N` made (`eqxform apply` or `eqxform train` of a spec with an `ensemble` line)",
            given=(
                "the `{name}` given is no ensemble; there is no member to pick",
                "pass an `eqxform.Ensemble` (what a spec's `ensemble N` makes), or the path of its model file",
            ),
        ),
        _c(
            "E481",
            "no such member",
            "Members are numbered from 0; an ensemble of N has the members 0 to N - 1.",
            "eqxform pick sweep.eqx --member 8 -o one.eqx   # `ensemble 8`: members 0 to 7",
            "pick one of 0 to N - 1 (`eqxform show` lists the tensors, whose first axis is N).",
            message="the member must be a whole number, not {member!r:.40}",
            help="0 to {value}",
            has_members=(
                "{named_origin} has {count} members (0 to {value}); there is no member {member}",
                "pick one of 0 to {value}",
            ),
        ),
        _c(
            "E482",
            "pick by `--member` or by `--best`",
            "`eqxform pick` writes one member: the one named by `--member K`, or with `--best` "
            "the one with the lowest held-out loss that training recorded. It needs exactly "
            "one of the two.",
            "eqxform pick sweep.eqx -o one.eqx",
            "add `--member K` (0-based) or `--best`, not both.",
            message="no member given: pass `--member K` (0-based) or `--best`",
            help="`--member K` picks member K (0-based); `--best` the one with the lowest held-out loss that `eqxform train --eval-data` recorded",
            both=(
                "give the member to pick by `--member K` or by `--best`, not both",
                "`--member K` picks member K (0-based); `--best` the one with the lowest held-out loss that `eqxform train --eval-data` recorded",
            ),
        ),
        _c(
            "E483",
            "no held-out loss recorded",
            "`--best` picks by the held-out loss that `eqxform train --eval-data` records for "
            "every member (`recipe.train.members[k].eval_loss`). The file records none: it was "
            "trained without `--eval-data`, or only applied. `--best` never falls back to "
            "another measure (the training loss favours the member that overfits).",
            "eqxform pick sweep.eqx --best -o one.eqx   # trained without --eval-data",
            "train the ensemble with `--eval-data HELD_OUT.npz`, or pick by index with "
            "`--member K`.",
            message="{named_origin} records no held-out loss of its members, so `--best` has nothing to compare",
            help="train the ensemble with `eqxform train ... --eval-data HELD_OUT.npz` (it records each member's held-out loss), or pick by index with `--member K`",
        ),
        _c(
            "E484",
            "an adapter file has no members to pick",
            "An adapter file holds adapters for a base model, not a whole ensemble.",
            "eqxform pick adapters.eqx --member 0 -o one.eqx",
            "bake the adapters into their base first (`eqxform merge ADAPTERS BASE -o "
            "merged.eqx`), then pick from the merged file.",
            message="`{origin}` holds only adapters; a member is picked from a whole ensemble",
            help="bake the adapters into their base first: `eqxform merge {origin} BASE.eqx -o merged.eqx`, then `eqxform pick merged.eqx ...`",
        ),
        _c(
            "E485",
            "the recorded members do not match the ensemble",
            "A trained ensemble's recipe records one entry per member "
            "(`recipe.train.members`, in order). This file records another number of "
            "members than its ensemble has, or out of order: it was edited, or written by "
            "another program.",
            "",
            "pick by index with `--member K`, or train the ensemble again.",
            message="{named_origin}'s recipe {problem}",
            help="the recipe was edited or written by another program; pick by index with `--member K`, or train the ensemble again",
        ),
        _c(
            "E486",
            "the member cannot be written as a plain model",
            "A picked member's recipe is the ensemble's, with the spec that made the ensemble "
            "written without its `ensemble` line. For this file that does not work: its "
            "recipe has no `ensemble` line, the spec does not compile without it, or the "
            "plain model it builds has other tensors than the member. Nothing is written.",
            "",
            "take the member in Python (`eqxform.load(path).member(k)`) and save it, or load "
            "the ensemble and apply the spec without its `ensemble` line to a member.",
            message="a member of {named_origin} cannot be written as a plain model: {why}",
            help="load the ensemble in Python and take the member with `Ensemble.member(k)`; save it with `eqxform.save(path, member, recipe=...)` or load it with `like=`",
        ),
        _c(
            "E501",
            "batch would recompile the step",
            "A training step is compiled for one batch shape and dtype; a batch of another "
            "would compile it again, silently costing seconds per step.",
            "step(x[:5], y[:5])   # after step(x, y) with 16 rows",
            message="the batch changed shape or dtype, which would compile the step again: {show__signature} before, {show_signature} now",
            help="give every batch the same shape (drop or pad the last one), or pass `allow_retrace=True` to `make_step`",
        ),
        _c(
            "E502",
            "the training step fails on a batch",
            "The first call of a training step traces the loss on the batch; the loss or the "
            "model refused it (a batch of the wrong shape, a loss that returns no scalar).",
            "step(x[:, :3], y)   # the model takes 4 features",
            message="the training step fails on a batch of {show_signature}: {error}",
            help="the loss is `loss_fn(model, *batch) -> scalar`, or for a stateful model `loss_fn(model, state, *batch) -> (scalar, state)` with `make_step(..., state=state)`; check the batch's shapes against the model",
        ),
        _c(
            "E510",
            "batch not divisible over the mesh",
            "On a mesh, each batch is split over the batch axis; its number of rows must be a "
            "multiple of that axis's size.",
            "eqxform train spec.eqx --mesh data=8 --batch-size 12 -o out.eqx",
            message="a batch of {value} rows cannot be split evenly over the mesh's batch axis `{spec}` ({parts} devices)",
            help="make the batch size a multiple of {parts}",
        ),
        _c(
            "E590",
            "which recipe is ambiguous",
            "A model computed from an eqxform model by hand (`jax.tree_util.tree_map`, "
            "arithmetic on its arrays) shares none of its arrays, so eqxform finds its recipe "
            "only by its structure; when models of that structure with different recipes are "
            "alive (two seeds, two specs), saving it would have to guess which one it came "
            "from.",
            "a, b = program.apply(seed=1), program.apply(seed=2)\n"
            'eqxform.save("m.eqx", jax.tree_util.tree_map(lambda x: x * 2, a))',
            "pass the recipe of the model it came from: "
            "`eqxform.save(path, model, recipe=eqxform.recipe_of(a))`.",
            message="models of this `{name}`'s structure were made by {ambiguous} different recipes, and it shares no arrays with any of them: which one made it is ambiguous",
            help="pass the recipe of the model it was computed from: `eqxform.save(path, model, recipe=eqxform.recipe_of(source))`",
        ),
        _c(
            "E601",
            "the formatter would change the spec's meaning",
            "`eqxform fmt` parses its own output and compares it with the spec; they "
            "differ, so it left the text as it was. This is a bug in eqxform, never in the "
            "spec.",
            "",
            "report it with the spec; the spec itself is fine as it is.",
            message="the formatter would change what this spec means; the text was left as it "
            "is. This is a bug in eqxform: please report it with the spec",
        ),
        _c(
            "E602",
            "the language server's library is missing",
            "`eqxform lsp` runs on `pygls` 2, which eqxform installs; it was removed or an "
            "older version shadows it.",
            "eqxform lsp",
            message="the language server needs `pygls` 2 (and `lsprotocol`)",
            help="install them: `pip install 'pygls>=2'`",
        ),
        _c(
            "E603",
            "a message from the editor that the language server cannot read",
            "The Language Server Protocol frames each message as `Content-Length: N`, a blank "
            "line, then N bytes of JSON-RPC. A length that is no number of bytes (`abc`, `-5`), "
            "one longer or shorter than the body, bytes between messages, or a body that is not "
            "JSON-RPC break that framing. `eqxform lsp` says so on stderr and reads on: a body "
            "of a wrong length ends where its JSON does, bytes that are no message are skipped "
            "to the next `Content-Length` header, and a request it cannot read is answered with "
            "a JSON-RPC error (-32700 or -32600). The mistake is the editor's or its plugin's.",
            'Content-Length: abc\n\n{"jsonrpc": "2.0", "id": 1, "method": "shutdown"}',
            message="{problem}",
            help=_FRAMING,
            not_json=("a message is not JSON: {error}", _FRAMING),
            not_rpc=(
                'a message is not a JSON-RPC 2.0 message (an object with `"jsonrpc": "2.0"`)',
                _FRAMING,
            ),
        ),
        _c(
            "E604",
            "a request's parameters do not fit the Language Server Protocol",
            "The server checks each message's parameters against the protocol's types before "
            "acting on it. A request that does not fit (a position with a negative line or "
            "character, a missing field) is answered with a JSON-RPC error, -32602 (invalid "
            "params), that names the field; a notification that does not fit is ignored, and "
            "said so on stderr.",
            '{"jsonrpc": "2.0", "id": 2, "method": "textDocument/hover", "params": '
            '{"textDocument": {"uri": "file:///spec.eqx"}, "position": {"line": -1, '
            '"character": 0}}}',
            message="the parameters{where} do not fit the protocol: {why}",
            help="lines and characters are zero-based and never negative; see the method's "
            "parameters in the Language Server Protocol specification",
        ),
        # ---- notes
        _c(
            "I104",
            "type name resolved against the model",
            "A capitalised selector step names no `equinox.nn` class, example model or "
            "registered type. Any class of the model's tree is a type name too "
            "(`MegalodonAttention`, a library's block), and only the model knows those, so "
            "a check without a model notes the name and goes on: it is no error and no "
            "warning, and `--deny warnings` passes it. Against a model, a name no class has "
            "is E104, unless the model has a field of that name and no class does: then it "
            "names that field (PyTorch-style weights such as `W_src` or `Wq`).",
            "where MegalodonAttention.wz -> lora(rank=8)",
            message="`{name}` is no `equinox.nn` class or registered type: it is resolved against the model's classes (or, where none has that name, its fields)",
            help="{meant}`eqxform check SPEC MODEL` checks it against a model",
        ),
        _c(
            "I221",
            "an adapter whose matrix the forward pass forms",
            "`lora` puts a `LoRA` module where a `Linear` was; called, it adds "
            "`scale * B (A x)` without forming `B A`. A parent that reads the module's "
            "`weight` itself (`x @ linear.weight.T + linear.bias`, as code ported from "
            "PyTorch does: CLIP's attention `out_proj`, Megalodon's `linear_3d`) gets the "
            "adapted matrix `W + scale * B A`, formed at each read. `plan` (with `input` "
            "lines) notes the rules whose adapters are read so, and the numbers formed per "
            "call. The outputs and gradients are those of LoRA; only the cost differs.",
            "input i32[1, 8]\nwhere MegalodonAttention.wz -> lora(rank=8)",
            message="the model reads the `weight` of {count_len_found} itself ({paths}) rather than calling {value}, so each call forms the adapted matrix `W + scale * B A` ({total:,} numbers in all)",
            help="that is the cost of an adapter where the parent multiplies the weight itself; `merge` after training removes it",
        ),
    ]
}


_GROUPS = (
    ("E0", "Syntax (the parser)"),
    ("E1", "The spec alone (the checker, `eqxform check` without a model)"),
    (
        "E2",
        "The spec against a model (selection and the passes: `check` with a model, `plan`, `apply`)",
    ),
    ("E3", "Model files"),
    ("E4", "The command line and the Python API's arguments"),
    ("E5", "Running (training)"),
    ("E6", "The formatter and the language server"),
    (
        "W",
        "Warnings (the work is done, but may not be what was meant; `--deny warnings` makes them errors)",
    ),
    ("I", "Notes (nothing is wrong; what a check without the model leaves to the model)"),
)


def _group(code: str) -> str:
    return next(title for prefix, title in _GROUPS if code.startswith(prefix))


def markdown() -> str:
    """The diagnostics index as Markdown: a table of every code, then each
    code's entry as `eqxform explain CODE` prints it
    (`eqxform explain --all --format markdown`)."""
    out = [
        "# Diagnostics",
        "",
        "Every diagnostic eqxform gives has a stable code. `eqxform explain CODE` prints an",
        "entry below; this page is generated from the same table",
        "(`eqxform explain --all --format markdown`).",
    ]
    codes = sorted(CODES.values(), key=lambda c: ("EWI".index(c.code[0]), c.code))
    group = None
    for c in codes:
        if _group(c.code) != group:
            group = _group(c.code)
            out += ["", f"## {group}", "", "| code | problem |", "|---|---|"]
        title = c.title.replace("|", "\\|")
        out.append(f"| [{c.code}](#{c.code.lower()}) | {title} |")
    out += ["", "## Entries"]
    for c in codes:
        out += ["", f"### {c.code}", "", f"**{c.title}**", ""]
        says = c.render().split("\n\n", 2)[1] if c.message or c.variants else ""
        if says:
            out += ["```text", says, "```", ""]
        out.append(c.explanation)
        if c.example:
            # Marked for the test that runs the documentation's blocks: an
            # example is a fragment, its model and command line in the text.
            skip = f"<!-- docs-test: skip (an example of {c.code}, a fragment) -->"
            out += ["", "Example:", "", skip, "```", c.example, "```"]
        out += ["", "Fix: " + c.fix]
    return "\n".join(out) + "\n"


def text() -> str:
    """Every entry as `eqxform explain CODE` prints it, one after another."""
    codes = sorted(CODES.values(), key=lambda c: ("EWI".index(c.code[0]), c.code))
    return "\n\n".join(c.render() for c in codes) + "\n"


def explain(code: str) -> Code | None:
    return CODES.get(code.upper())


def near(code: str) -> list[str]:
    """Codes the user may have meant: letters read as digits (`E2O1`), then
    the codes one digit away."""
    typed = code.upper().translate(str.maketrans("OIL", "011"))
    if typed in CODES:
        return [typed]
    return [c for c in CODES if len(c) == len(typed) and sum(a != b for a, b in zip(c, typed)) == 1]
