"""Every diagnostic code: what it means, an example, and the fix.

One table, printed by `eqxform explain CODE` and by the diagnostics index of
the documentation. The codes are stable: a code names one problem, and a new
problem gets a new code. The hundreds say where a problem is found:

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

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    code: str
    title: str
    explanation: str
    example: str
    fix: str

    def render(self) -> str:
        lines = [f"{self.code}: {self.title}", "", self.explanation]
        if self.example:
            lines += ["", "Example:", ""]
            lines += ["    " + line for line in self.example.splitlines()]
        lines += ["", "Fix: " + self.fix]
        return "\n".join(lines)


def _c(code: str, title: str, explanation: str, example: str, fix: str) -> Code:
    return Code(code, title, explanation, example, fix)


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
        ),
        _c(
            "E002",
            "unexpected character",
            "A character that is no part of the language: `{`, `;`, `!`, `&`, ...",
            "where layers{0} -> freeze",
            "selectors use `[...]`, calls `(...)`; write `not`, `and`, `or`; one statement a line.",
        ),
        _c(
            "E003",
            "missing `->`",
            "A `where` rule separates its selector from its actions with `->`.",
            "where Linear.weight init zeros",
            "write `where SELECTOR -> ACTION`.",
        ),
        _c(
            "E004",
            "unclosed bracket",
            "A `(` or `[` is not closed before the end of the line; a statement is one line.",
            "model MLP(in_size=2, out_size=2",
            "add the closing bracket on the same line.",
        ),
        _c(
            "E005",
            "stray comma",
            "A comma with nothing on one side of it, or separating selectors.",
            "where x -> init zeros,",
            "remove it; separate alternative selectors with `|`.",
        ),
        _c(
            "E006",
            "unknown directive",
            "A line starts with a word that is no directive.",
            "wher Linear.weight -> init zeros",
            "start the line with `model`, `seed`, `let`, `where`, `optimizer`, `ensemble`, "
            "`stack` or `unstack`.",
        ),
        _c(
            "E007",
            "unexpected end of line",
            "The line ends where the grammar needs more.",
            "where Linear.weight ->",
            "complete the statement; the help line says what is missing.",
        ),
        _c(
            "E008",
            "missing comma",
            "Two arguments or two actions follow each other without a comma.",
            "where x -> freeze lr 0.1",
            "separate them with `,`.",
        ),
        _c(
            "E009",
            "`where` without a selector",
            "A rule must say what it acts on.",
            "where -> freeze",
            "add a selector, e.g. `where Linear.weight -> freeze`.",
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
            "remove the character, or save the file with Unix (`\\n`) or Windows (`\\r\\n`) "
            "line endings.",
        ),
        _c(
            "E011",
            "number literal out of range",
            "A number with more than 400 digits, or a decimal number beyond the largest float "
            "(about `1.8e308`). No size, count or seed needs one (`_limits.MAX_LITERAL_DIGITS`).",
            "let big = 1e400",
            "write a smaller number; a large whole number can be written as a power, `2**64`.",
        ),
        _c(
            "E012",
            "expression nested too deeply",
            "A statement nested more than 200 levels deep: brackets in brackets, a chain of "
            "`-` or `not`, or a sum of hundreds of terms (each `+` nests one level). The "
            "limit (`_limits.MAX_NESTING`) keeps the parser and the evaluator within Python's "
            "recursion limit.",
            "let x = 1 + 1 + 1 + ... (500 terms)",
            "split the expression with `let` names.",
        ),
        _c(
            "E013",
            "index or slice bound that is not a whole number",
            "A selector's index and its slice's start, stop and step are whole numbers; `1.5` "
            "is refused rather than read as `1`.",
            "where layers[::0.5] -> freeze",
            "write a whole number, e.g. `layers[1]` or `layers[::2]`.",
        ),
        # ---- the spec alone
        _c(
            "E101",
            "unknown action",
            "The word after `->` (or after a comma) is no action.",
            "where Linear.weight -> initialise zeros",
            "use one of `init`, `replace`, `cast`, `scale`, `wrap`, `freeze`, `unwrap`, `lr`, "
            "`weight_decay`.",
        ),
        _c(
            "E102",
            "unknown initialiser",
            "`init` names a distribution that is neither in `jax.nn.initializers`, nor "
            "`trunc_normal`, nor registered.",
            "where Linear.weight -> init trunc_normall",
            "check the spelling, or register yours with `eqxform.register_initializer`.",
        ),
        _c(
            "E103",
            "unknown constructor",
            "A `model`, `replace` or `eqxform new` call names a constructor that is no "
            "`equinox.nn` class, example model or registered constructor.",
            "model MPL(in_size=2, out_size=2, width_size=8, depth=2)",
            "check the spelling, or register it with `eqxform.register_constructor`.",
        ),
        _c(
            "E104",
            "unknown type in a selector",
            "A capitalised selector step is a type, and no type of that name is known: no "
            "class of the model's tree, `equinox.nn` class, example model or registered "
            "type has it. This is decided against a model (`check` with a model, `plan`, "
            "`apply`), whose classes the help suggests; without one a name is only noted "
            "(I104), since any class of the model's tree is a type name.",
            "where Linaer.weight -> init zeros",
            "check the spelling; qualify a class by its module if needed (`mylib.layers:Block`).",
        ),
        _c(
            "E105",
            "unknown name",
            "An expression uses a name that is no `let` name, match property or constant here.",
            "where Linear.weight -> scale widht",
            "define it with `let` above the line, or fix the spelling.",
        ),
        _c(
            "E106",
            "unknown argument",
            "A call passes an argument its callee does not take.",
            "model MLP(in_size=2, out_size=2, width=8, depth=2)",
            "use one of the arguments the help line lists.",
        ),
        _c(
            "E107",
            "missing argument",
            "A call leaves out an argument its callee needs.",
            "model MLP(in_size=2, out_size=2)",
            "add the arguments the message names.",
        ),
        _c(
            "E109",
            "given twice",
            "A directive that is given once per spec (`model`, `seed`, `optimizer`, "
            "`ensemble`), or a `let` name, appears twice.",
            "seed 0\nseed 1",
            "keep one; override a `let` from outside with `--set NAME=VALUE`.",
        ),
        _c(
            "E110",
            "unknown function",
            "An expression calls a function that is not one of `sqrt log exp abs min max`.",
            "where Linear.weight -> scale sqrtt(2)",
            "use one of the expression functions.",
        ),
        _c(
            "E111",
            "unknown dtype",
            "`cast` names no dtype eqxform knows.",
            "where ** -> cast bf16",
            "write the full name, e.g. `bfloat16`.",
        ),
        _c(
            "E112",
            "malformed action argument",
            "The action takes no argument but has one, needs one but has none, or has one "
            "of the wrong form (a number where a name is needed, say).",
            "where x -> freeze 1",
            "write the action as its example in the help line shows.",
        ),
        _c(
            "E113",
            "bad seed",
            "A `seed` is a whole number from 0 to 2**64 - 1.",
            "seed -1",
            "give a whole number in range.",
        ),
        _c(
            "E114",
            "argument or option given twice",
            "A call names one argument twice, or a `stack` line one option twice.",
            "model MLP(in_size=2, in_size=3, out_size=2, width_size=8, depth=2)",
            "keep one.",
        ),
        _c(
            "E115",
            "too many positional arguments",
            "A call passes more positional arguments than its callee takes.",
            "where x -> init normal(0.1, 0.2)",
            "name the arguments.",
        ),
        _c(
            "E116",
            "`--set` names no `let`",
            "A `--set NAME=VALUE` (or a `--params` entry) overrides a name the spec does not "
            "define with `let`.",
            "eqxform apply spec.eqx --set widht=64 -o out.eqx",
            "use one of the spec's `let` names.",
        ),
        _c(
            "E117",
            "constructor module not allowed",
            "A `package.module:function` constructor is imported only from packages the user "
            "allows, so that a spec never runs code of its own choosing.",
            "model mypkg.models:make(width=3)",
            "pass `--allow mypkg` (Python: `allow=['mypkg']`) if you trust the package.",
        ),
        _c(
            "E118",
            "reserved name",
            "A `let` name is a match property, constant, function, dtype or `jax.nn` function.",
            "let shape = 3",
            "choose another name.",
        ),
        _c(
            "E119",
            "`key` given",
            "eqxform supplies every constructor's `key`, derived from the seed.",
            "where layers[-1] -> replace Linear(8, 2, key=0)",
            "remove `key=`.",
        ),
        _c(
            "E120",
            "not supported yet",
            "The word is reserved for a feature this version of eqxform does not have. "
            "(`shard` was, until sharding on a device mesh arrived.)",
            "",
            "remove the line, or use a version that supports it.",
        ),
        _c(
            "E121",
            "bad `expect` count",
            "`expect` takes a whole number of matches: `expect N` (exactly), `expect >= N`, "
            "`expect <= N`, or `expect any` (the rule may match nothing).",
            "where Linear expect 2.5 -> freeze",
            "give a whole number, with `>=` or `<=` for a range.",
        ),
        _c(
            "E122",
            "zero slice step",
            "A slice in a selector steps by zero.",
            "where layers[::0] -> freeze",
            "use a step that is not zero.",
        ),
        _c(
            "E123",
            "optimiser group without an optimiser",
            "`lr` and `weight_decay` shape the spec's optimiser, and the spec has none.",
            "where **.bias -> lr 0.1",
            "add e.g. `optimizer adamw(learning_rate=1e-3)`.",
        ),
        _c(
            "E124",
            "unknown optimiser",
            "`optimizer` names no optax optimiser eqxform knows.",
            "optimizer adamm(learning_rate=1e-3)",
            "use one of the optimisers the help line lists.",
        ),
        _c(
            "E125",
            "unknown wrapper",
            "`wrap` names no built-in or registered wrapper.",
            "where Linear.weight -> wrap symetric",
            "check the spelling, or register yours with `eqxform.register_wrapper`.",
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
            "make the module importable: install its package in the environment "
            "(`pip install -e FOLDER` for your own source), or put the folder that holds the "
            "package on the path (`PYTHONPATH=FOLDER eqxform ...`, or run `eqxform` in that "
            "folder; `sys.path.insert(0, FOLDER)` in Python); check the module path and the "
            "function's name.",
        ),
        _c(
            "E127",
            "bad `input` line",
            "An `input` line declares one positional argument of the model: a dtype (`f32`, "
            "`bf16`, `i32`, `bool`, ... or a full name) and a shape of whole numbers.",
            "input float[3, 224, 224]",
            "write e.g. `input f32[3,224,224]`; give one line per positional argument.",
        ),
        _c(
            "E130",
            "stack of one module without a count",
            "`stack` on a single module makes copies of it, and needs to know how many. (A "
            "module built pre-stacked, whose arrays carry a leading layer axis of the layer "
            "types Equinox knows, is taken as it is, with no count.)",
            "stack mlps scan",
            "write the count: `stack mlps scan 10`.",
        ),
        _c(
            "E131",
            "nothing to stack",
            "`stack` takes a list, tuple or `Sequential` of modules, a consecutive slice of "
            "one, or a single module with a count.",
            "stack layers[0].weight scan",
            "select the sequence of layers itself, e.g. `stack blocks scan` or "
            "`stack blocks[2:6] scan`.",
        ),
        _c(
            "E132",
            "stack count differs",
            "The count on a `stack` line differs from the number of layers it found (for a "
            "module built pre-stacked: the length of its layer axis).",
            "stack blocks scan 7",
            "write the number found, or leave the count out.",
        ),
        _c(
            "E133",
            "layers differ",
            "Only layers of one structure, shapes and dtypes stack into one array each.",
            "stack blocks scan  # where blocks[0] is Linear(3, 3) and blocks[1] Linear(3, 4)",
            "stack a slice of the identical layers, e.g. `stack blocks[1:] scan`.",
        ),
        _c(
            "E134",
            "bad ensemble count",
            "`ensemble N` takes a whole number of members of at least 1.",
            "ensemble 0",
            "give a whole number >= 1.",
        ),
        _c(
            "E135",
            "unknown stack mode",
            "A `stack` line says how to call the layers: `scan` (one after another) or `vmap` "
            "(side by side).",
            "stack blocks sacn",
            "write `scan` or `vmap`.",
        ),
        _c(
            "E136",
            "bad stack option",
            "A `stack` line takes a count, `remat`, `unroll K`, `layerwise`, `copies` and "
            "`over AXIS`.",
            "stack blocks scan unrol 2",
            "use the options as written in the help line.",
        ),
        _c(
            "E137",
            "action on some layers of a stack",
            "A selector picks some layers of a stacked array, and the action can only act on "
            "whole arrays (only `init` and `scale` act per layer).",
            "stack blocks scan\nwhere blocks[1:3] -> cast bfloat16",
            "select the whole stack, or `unstack` it first.",
        ),
        _c(
            "E138",
            "`replace` inside a stack or an ensemble",
            "A stacked or ensembled module holds every layer's arrays in one; one layer "
            "cannot be swapped for another module.",
            "stack blocks scan\nwhere blocks[2] -> replace Linear(8, 8)",
            "replace before the `stack`/`ensemble` line, or `unstack` first.",
        ),
        _c(
            "E139",
            "`weight_norm` on stacked weights",
            "`weight_norm` takes its norm over one layer's axes and cannot tell a layer axis "
            "from them.",
            "stack blocks scan\nwhere Linear.weight -> wrap weight_norm",
            "wrap before the `stack`/`ensemble` line.",
        ),
        _c(
            "E140",
            "stack inside a stack or an ensemble",
            "What `stack` selects is already inside a stack or an ensemble.",
            "ensemble 4\nstack layers scan",
            "stack before the `ensemble` line, or `unstack` first.",
        ),
        _c(
            "E141",
            "ensemble of an ensemble",
            "A spec makes one ensemble; the model already is one.",
            "ensemble 4  # applied to an ensemble",
            "take a member first (`Ensemble.member(i)`), or ensemble once.",
        ),
        _c(
            "E142",
            "bad stack count",
            "The count on a `stack` line is a whole number of layers of at least 1.",
            "stack mlps scan 0",
            "give a whole number >= 1.",
        ),
        _c(
            "E143",
            "empty stack",
            "The list, tuple or `Sequential` that `stack` selects holds no layers.",
            "stack blocks scan  # where blocks is []",
            "stack a sequence that has layers.",
        ),
        # ---- the spec against a model
        _c(
            "E180",
            "adapter arguments are keyword arguments",
            "`lora` and `ia3` take their arguments by name, in parentheses right after the "
            "action (`lora(rank=8, alpha=16)`); each may be an expression of the match. "
            "Without parentheses they take their defaults (`lora`: rank 8, alpha 8, as PEFT).",
            "where Linear -> lora 8",
            "write `lora(rank=8, alpha=16)` or `ia3(feedforward=true)`.",
        ),
        _c(
            "E144",
            "a stack changes the model's outputs",
            "With the model's inputs declared, `apply` runs the model before and after each "
            "`stack` on random inputs. A stack runs its layers as one scan, "
            "`h = layer(h, ...)` for each, also when the parent loops over them; a loop that "
            "does more (collects the layers' outputs, uses a layer's index, zips the layers "
            "with another list) computes something else once stacked.",
            "stack blocks scan  # where the parent returns every block's output",
            "add `layerwise` to the `stack` line (iterating then gives each layer), or stack "
            "what the parent calls as one.",
        ),
        _c(
            "E150",
            "number too large",
            "An expression computes an integer of more than 256 bits (`_limits.MAX_INT_BITS`), "
            "or a number that is not finite (`exp(1000)`, `1e308 * 10`). The power is refused "
            "before it is computed: `9**9**9` would run for hours.",
            "let x = 9 ** 9 ** 9",
            "check the expression; no size, count or seed needs such a number.",
        ),
        _c(
            "E151",
            "string or list too long",
            "An expression would build a string or a list of more than 10,000 elements "
            "(`_limits.MAX_SEQUENCE_LENGTH`); it is refused before it is built.",
            'let x = "a" * 10 ** 10',
            "a spec's strings and lists are short; check the repetition count.",
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
            "give the argument a value of the type the help line names.",
        ),
        _c(
            "E153",
            "number beyond the range of the array's dtype",
            "A `scale` factor or a numeric argument of an initialiser or a wrapper is larger "
            "than the matched array's dtype can hold (`scale 1e300` on a float32 weight); JAX "
            "would silently make it infinite.",
            "where Linear.weight -> scale 1e300",
            "use a smaller number, or `cast` the array to a wider dtype first.",
        ),
        _c(
            "E155",
            "count beyond the limit",
            "An `ensemble` with more than 1,000,000 members, or a `stack` count or `unroll` "
            "beyond 1,000,000 (`_limits.MAX_COUNT`); a sweep (`ensemble N vary ...`, "
            "`ensemble grid ...`) of more than 4,096 members (`_limits.MAX_SWEEP`). Smaller counts that do not fit in memory "
            "are caught by the memory budget (E158).",
            "ensemble 1000000000",
            "use a realistic count, e.g. `ensemble 8`.",
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
        ),
        _c(
            "E157",
            "input too large",
            "An `input` line (or `--input`) declares an array with a dimension beyond "
            "2**31 - 1, or larger than the memory budget: eqxform draws random inputs of that "
            "shape to check a `stack`.",
            "input f32[99999999999]",
            "declare the model's real input shape.",
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
            "make the model smaller, or raise the budget with `EQXFORM_MAX_BYTES` if the "
            "machine has the memory.",
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
            "keep repeated layers side by side in one list (or `stack` them) rather than each "
            "inside the last.",
        ),
        _c(
            "E160",
            "a weight pattern that does not parse",
            "A `weights`, `map`, `skip` or `keep` line holds a tensor name, a model path or a "
            "pattern that cannot be read: a `{` that opens no capture, a path with a space, an "
            "index that is not a number or a capture.",
            'map "blocks.{i.attn.qkv.weight" -> "blocks[{i}].attn.qkv.weight"',
            "write captures as `{name}` (`{name-1}`, `{name+1}` to shift them), model paths as "
            "`eqxform show` prints them (`blocks[{i}].attn.qkv.weight`).",
        ),
        _c(
            "E161",
            "a `map` of several tensors onto several arrays",
            "A `map` line either fuses several checkpoint tensors into one array or splits one "
            "tensor into several arrays; several on both sides has no one meaning.",
            'map "q.weight", "k.weight" -> "a.weight", "b.weight"',
            "write one `map` per pair.",
        ),
        _c(
            "E162",
            "the two sides of a `map` capture different names",
            "Each tensor a `map` reads names one model array and back, so every pattern of the "
            "line has the same captures.",
            'map "layer{a}.{b}.conv1.weight" -> "layers[{a-1}].conv1.weight"',
            "use every capture on both sides: `layers[{a-1}][{b}].conv1.weight`.",
        ),
        _c(
            "E163",
            "an unknown or malformed `map` action",
            "After `with`, a `map` takes `transpose [AXES]`, `reshape [SHAPE]`, `cast` and "
            "`axis N` (where several tensors fuse or one splits), each once.",
            'map "head.weight" -> "head.weight" with transpose [1, 1]',
            "see docs/weights.md for each action and its argument.",
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
        ),
        _c(
            "E172",
            "a list of varied values of the wrong length",
            "A `vary` list gives one value per member, in order, so its length is the member "
            "count; a `grid` list needs at least one value (the members are the product of the "
            "lists' lengths).",
            "ensemble 4 vary lr=[1e-3, 1e-2]",
            "give one value per member, or compute them: `vary lr=logspace(1e-3, 1e-2)`.",
        ),
        _c(
            "E173",
            "a member's value does not fit where it goes",
            "Evaluated for one member, an argument that reads a varied name is out of its "
            "range (a negative learning rate or weight decay, a negative `stddev`). It is "
            "reported at the varied value, naming the member and the line that reads it.",
            "optimizer adamw(learning_rate=lr)\nensemble 3 vary lr=[1e-3, -1e-2, 1e-2]",
            "give every member a value the argument takes.",
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
        ),
        _c(
            "E175",
            "a varied name given twice, or also a `let` or reserved",
            "A varied name is bound per member by the `ensemble` line, once; a `let` of the "
            "same name, a second entry of it, or a reserved word (`member`, a function or a "
            "context name) would make its value ambiguous.",
            "let lr = 1e-3\nensemble 4 vary lr=logspace(1e-4, 1e-2)",
            "keep one definition: remove the `let` (or the second entry), or rename.",
        ),
        _c(
            "E176",
            "a varied name without values",
            "`vary NAME` alone gives no values; only `seed` may stand alone (`vary seed`: member "
            "k is built with the spec's seed plus k).",
            "ensemble 4 vary lr",
            "give the values: `vary lr=logspace(1e-4, 1e-2)`.",
        ),
        _c(
            "E190",
            "no such mesh axis",
            "A `shard` spec, a `stack ... over AXIS` or an `ensemble N over AXIS` names a mesh "
            "axis that the mesh (the spec's `mesh`, or `--mesh`) does not have.",
            "mesh data=2 model=4\nwhere Linear.weight -> shard (none, modle)",
            "name one of the mesh's axes (the help line lists them), or add the axis to the mesh.",
        ),
        _c(
            "E191",
            "mesh axis named without a mesh",
            "The spec places arrays on mesh axes (`shard`, `over`), but neither the spec (`mesh`) "
            "nor the command line (`--mesh`) gives a device mesh.",
            "where Linear.weight -> shard (none, model)",
            "add `mesh data=2 model=4` (your axes and sizes), or pass `--mesh data=2,model=4`.",
        ),
        _c(
            "E192",
            "bad mesh axis size",
            "A mesh axis's size is a whole number of devices, at least 1, or `-1` for the "
            "devices left over by the other axes (at most one axis may say `-1`).",
            "mesh data=0 model=4",
            "give every axis a size >= 1, and `-1` to one axis at most.",
        ),
        _c(
            "E193",
            "mesh axis given twice",
            "Each axis of a mesh has its own name; a name given twice leaves it unclear which "
            "size it has.",
            "mesh data=2 data=4",
            "rename or remove one of them.",
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
        ),
        _c(
            "E196",
            "mesh larger than the devices",
            "The mesh needs more devices than JAX sees (across every process of the run), or "
            "`-1` cannot divide the devices evenly.",
            "mesh data=4 model=4  # on 8 devices",
            "use a smaller mesh; on the CPU, simulate devices with "
            "`XLA_FLAGS=--xla_force_host_platform_device_count=N` (set before JAX starts).",
        ),
        _c(
            "E201",
            "rule matches nothing",
            "A selector matches no node of the model (or none passes the rule's `if` filter). "
            "By default that is an error, so that a misspelt selector never passes silently.",
            "where layrs[-1] -> init zeros",
            "use the path the help line suggests; `eqxform show MODEL` lists every path.",
        ),
        _c(
            "E202",
            "wrong number of matches",
            "A rule's `expect N` says how many nodes it must match, and it matches another number.",
            "where Linear.weight expect 3 -> init zeros  # the model has 4",
            "fix the selector or the count; the help line lists what matched.",
        ),
        _c(
            "E203",
            "the action cannot take what the rule matched",
            "The matched node is of a kind the action does not act on: a function where "
            "arrays are needed, a vector where an initialiser with fans needs a weight of two "
            "or more dimensions, or a module that is no stack for `unstack`.",
            "where activation -> init zeros",
            "narrow the selector to the arrays or modules the action is for (e.g. "
            "`Linear.weight`).",
        ),
        _c(
            "E204",
            "expression cannot be evaluated",
            "An expression fails when evaluated: a division by zero, an index out of range, "
            "an operation on values of the wrong kinds.",
            "where Linear.bias if shape[1] == 2 -> init zeros",
            "guard it, e.g. `if ndim == 2 and shape[1] == 2`.",
        ),
        _c(
            "E205",
            "building failed",
            "A constructor or wrapper refused the arguments it was given; its own message follows.",
            'where layers[-1] -> replace Linear(in_features=8, out_features="x")',
            "pass the arguments the constructor or wrapper expects.",
        ),
        _c(
            "E206",
            "ambiguous type name",
            "Two classes of the model share the short name a selector uses (a library's "
            "`BatchNorm` beside `equinox.nn.BatchNorm`, say).",
            "where BatchNorm -> freeze",
            "qualify the name with its package or module: `where equinox:BatchNorm -> freeze`.",
        ),
        _c(
            "E207",
            "a rule breaks the forward pass",
            "With the model's inputs declared, `check`, `plan` and `apply` run the forward "
            "pass under `eval_shape` after the rules; it fails after this rule (the first "
            "after which it does).",
            "input f32[4]\nwhere layers[-1] -> replace Linear(5, 2)  # the layer before gives 8",
            "make the rule keep the shapes the model needs (a new head's `in_features`, say).",
        ),
        _c(
            "E208",
            "`init` on integer arrays",
            "Initialisers draw floating-point numbers.",
            "where ** -> init normal  # the model holds an int32 counter",
            'narrow the selector, e.g. `if dtype == "float32"`.',
        ),
        _c(
            "E209",
            "initialiser cannot draw this shape",
            "The initialiser refused the shape of a matched array (e.g. `orthogonal` with "
            "`column_axis` out of range).",
            "where Linear.weight -> init orthogonal(column_axis=5)",
            "use arguments that fit the array, or another initialiser.",
        ),
        _c(
            "E212",
            "the model does not take its declared input",
            "The forward pass fails on the `input` lines before any rule runs.",
            "input f32[3]  # for an MLP(in_size=4, ...)",
            "declare one `input` line per positional argument, with the shapes and dtypes "
            "the model takes (a stateful model gets its state after them).",
        ),
        _c(
            "E210",
            "value of the wrong type",
            "An argument evaluates to a value of a type the action does not take.",
            'where Linear.weight -> scale "two"',
            "give a value of the type the message names.",
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
            "draw them per copy with an `init` rule below the line, e.g. "
            "`where cls_token -> init normal(stddev=0.02)`.",
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
        ),
        _c(
            "W203",
            "`init` on arrays that a later `replace` discards",
            "An `init` drew arrays of a module that a `replace` below it swaps for a new one. "
            "The new module keeps its constructor's own initialisation, not this rule's: "
            "usually the rules are in the wrong order.",
            "where Linear.weight -> init he_normal\n"
            "where layers[-1]    -> replace Linear(in_features=64, out_features=10)",
            "put the `replace` above the `init`, so that the new module is drawn too; or "
            "narrow the `init`'s selector to the modules that stay.",
        ),
        _c(
            "W204",
            "`lr` or `weight_decay` on frozen parameters",
            "Every array this `lr` or `weight_decay` rule matches is frozen (`freeze`), and the "
            "optimiser eqxform builds never updates a frozen array, so the rule changes "
            "nothing.",
            "where layers[0]        -> freeze\nwhere layers[0].weight -> lr 0.1",
            "remove the rule, or narrow the `freeze` so that these parameters train.",
        ),
        _c(
            "W205",
            "a `let` never used",
            "No expression of the spec reads this `let` name: the line is dead, or a rule "
            "meant to use it under another name. The check needs no model.",
            "let width = 64\nwhere layers[-1] -> replace Linear(in_features=64, out_features=2)",
            "use the name (`in_features=width`), or remove the `let`.",
        ),
        _c(
            "W210",
            "copies of a stack",
            "`stack PATH scan N copies` makes N copies of a module whose arrays already carry "
            "a layer axis (built with `eqx.filter_vmap`, as esm2quinox's layers are): the "
            "model gets N times that many layers and parameters.",
            "stack layers scan 4 copies  # where layers holds 4 layers already",
            "leave out the count and `copies` to take the module's own layers as a stack: "
            "`stack layers scan`.",
        ),
        _c(
            "E220",
            "adapter on something that is no `Linear` or 2-D weight",
            "`lora` and `ia3` adapt a `Linear` (any module whose `weight` is `(out, in)` and "
            "that computes `W x + b`), a `Linear`'s weight (which adapts the module), or a "
            "2-D weight array (whose value then becomes `W + scale * B A` at resolve). A "
            "selector matched something else: a bias, a convolution, a container.",
            "where layers[0] -> lora(rank=4)  # layers[0] is a Conv2d",
            "select the `Linear` modules or their weights, e.g. `where Linear -> lora(rank=8)`.",
        ),
        _c(
            "E221",
            "bad LoRA rank",
            "`rank` gives the inner size of the factors, a whole number of at least 1. It may "
            "depend on the match (`rank=16 if fan_in >= 1024 else 8`); it gave something else "
            "at the module named.",
            "where Linear -> lora(rank=fan_in / 64)",
            "give a whole number, e.g. `rank=max(1, fan_in // 64)`.",
        ),
        _c(
            "E222",
            "bad LoRA alpha",
            "`alpha` sets the scale `alpha / rank` of the adapter's output; it must be a number.",
            'where Linear -> lora(rank=8, alpha="16")',
            "give a number, e.g. `alpha=16`.",
        ),
        _c(
            "E223",
            "module adapted twice",
            "The matched module (or weight) carries an adapter already; one adapter per "
            "module keeps the base, the factors and `merge` unambiguous.",
            "where Linear -> lora(rank=8)\nwhere Linear -> lora(rank=4)",
            "select each module once, or `merge` the first adapter before adding another.",
        ),
        _c(
            "E224",
            "nothing to merge",
            "`merge` bakes the adapters at or under the matched nodes into their base "
            "weights; it found none there.",
            "where layers[-1] -> merge  # no adapter in the last layer",
            "select where a `lora` or `ia3` rule put adapters, e.g. `where LoRA -> merge` or "
            "`where ** -> merge`.",
        ),
        _c(
            "E225",
            "bad `feedforward` for ia3",
            "`ia3(feedforward=true)` scales a `Linear`'s input (PEFT's feed-forward layers), "
            "`false` its output; it must be a boolean.",
            "where Linear -> ia3(feedforward=1)",
            "write `true` or `false`.",
        ),
        # ---- model files
        _c(
            "E230",
            "partition spec of the wrong length",
            "A `shard` spec gives one entry per dimension of one layer's array; this array has "
            "another number of dimensions. The leading axes of stacks and ensembles are added "
            "for you (unsplit, or on their `over` axis).",
            "where Linear -> shard (model, none)  # the bias has one dimension",
            "write one entry per dimension, or narrow the selector (`Linear.weight`, "
            "`if ndim == 2`).",
        ),
        _c(
            "E231",
            "dimension not divisible by its mesh axes",
            "An array's dimension is split over mesh axes whose sizes (multiplied) do not "
            "divide it, so the shards would differ in size.",
            "mesh model=4\nwhere layers[0].weight -> shard (none, model)  # in_features=6",
            "split a dimension the mesh axes divide, change the mesh, or leave it `none`.",
        ),
        _c(
            "E232",
            "mesh axis used twice in one array",
            "A mesh axis splits at most one dimension of an array; the spec (with the `over` axis "
            "of a stack or ensemble around the array) uses one twice.",
            "mesh model=4\nstack blocks scan over model\nwhere **.weight -> shard (model, none)",
            "use each mesh axis once per array.",
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
            "add `layerwise` to the `stack` line (the parent's own loop then calls each "
            "layer in turn), or leave the layers unstacked.",
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
            "apply the spec to the pair that `eqx.nn.make_with_state` returns: "
            "`model, state = program.apply((model, state))`.",
        ),
        _c(
            "E240",
            "a `map` that matches nothing",
            "No checkpoint tensor matches the `map` line's names, and no model array its paths.",
            'map "blocks.{i}.mlp.fc3.weight" -> "blocks[{i}].mlp.fc3.weight"',
            "compare the names with `eqxform show CHECKPOINT` and the paths with `eqxform show "
            "MODEL`; the help line names the nearest of each.",
        ),
        _c(
            "E241",
            "a checkpoint tensor a `map` needs is missing",
            "The `map` line names, for a model array it matches, a tensor the checkpoint does not "
            "hold (a typo in the name, a layer the checkpoint lacks).",
            'map "layer{a}.{b}.conv1.weigth" -> "layers[{a-1}][{b}].conv1.weight"',
            "fix the name (the help line shows the nearest the checkpoint holds), or `keep` the "
            "array's own values.",
        ),
        _c(
            "E242",
            "a model array a `map` names is missing",
            "A checkpoint tensor matches the `map` line, but the model has no array at the path "
            "it names (a typo in the path, a layer the model lacks).",
            'map "blocks.{i}.norm1.weight" -> "blocks[{i}].norm.weight"',
            "fix the path (the help line shows the nearest the model has), or `skip` the tensor.",
        ),
        _c(
            "E243",
            "a checkpoint tensor's shape does not fit the model array",
            "After the line's layout changes (`transpose`, `reshape`, fuse or split), a tensor's "
            "shape differs from the model array's (or the slice of it a capture names).",
            'map "head.weight" -> "head.weight"  # (1000, 768) into (768, 1000)',
            "add `with transpose` or `with reshape`, or map the tensor onto the right array.",
        ),
        _c(
            "E244",
            "a checkpoint tensor's dtype differs from the model array's",
            "A tensor stored as one dtype would fill an array of another; eqxform converts only "
            "when asked, so that no precision is lost unseen.",
            'map "**" ... # float16 tensors into a float32 model',
            "add `with cast`, or cast the model to the checkpoint's dtype first.",
        ),
        _c(
            "E245",
            "checkpoint tensors that no line reads",
            "Every tensor of the checkpoint is read by a `map` or left out by a `skip`, so that "
            "a tensor forgotten by mistake is never silently dropped.",
            "map ...   # the checkpoint also holds `fc.weight`",
            'map the tensors, or `skip` them (`skip "fc.*"`).',
        ),
        _c(
            "E246",
            "model arrays that no line fills",
            "Every array of the model is filled by a `map` or kept by a `keep`, so that an array "
            "left at its random initial value is never mistaken for a loaded one.",
            "map ...   # nothing fills `head.weight`",
            'map a tensor onto it, or `keep` it (`keep "head.*"`).',
        ),
        _c(
            "E247",
            "a model array filled twice",
            "Two `map` lines (or one, through overlapping captures) fill the same array or the "
            "same slice of a stacked array.",
            'map "a.weight" -> "fc.weight"\nmap "b.weight" -> "fc.weight"',
            "fill each array once; `skip` the tensor that should not be read.",
        ),
        _c(
            "E248",
            "a `skip` or `keep` pattern that matches nothing",
            "A pattern of a `skip` line matches no checkpoint tensor, or one of a `keep` line no "
            "model array: a typo, or a line left over from another checkpoint.",
            'skip "**.num_batches_trackd"',
            "fix the pattern, or remove it.",
        ),
        _c(
            "E249",
            "an export that needs the original checkpoint",
            "Writing weights back runs each `map` in reverse; a `reshape` without the original "
            "shapes cannot be undone, nor can a `cast` know the dtype to return to.",
            "eqxform export spec.eqx model.eqx -o out.safetensors   # the spec has `reshape`",
            "give the original checkpoint (`weights` in the spec, or `--weights PATH`): its header "
            "alone supplies the shapes and dtypes.",
        ),
        _c(
            "E250",
            "an adapter that PEFT's layout cannot name",
            "PEFT names a LoRA adapter after its base module in the original checkpoint "
            "(`base_model.model.blocks.0.attn.qkv.lora_A.weight`): the spec's `map` lines must "
            "map the base weight as it is (no `transpose`, `reshape`, fuse or split), to a name "
            "ending in `.weight`; or the model has no adapters at all.",
            "eqxform export spec.eqx tuned.eqx -o adapter --peft   # no `map` names the weight",
            "map the adapted modules' weights, or put the adapters on modules that map as they are.",
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
        ),
        _c(
            "E301",
            "model file cannot be read",
            "The model file does not exist, is a directory, or cannot be opened.",
            "eqxform show missing.eqx",
            "check the path and its permissions.",
        ),
        _c(
            "E302",
            "not a valid model file",
            "The file is not a safetensors file, or its header, metadata or recipe is malformed.",
            "eqxform show spec.eqx",
            "pass a file written by eqxform (or another safetensors writer), copied whole.",
        ),
        _c(
            "E303",
            "model file truncated",
            "The header claims more bytes than the file holds, or a tensor lies outside it.",
            "",
            "copy the file again, whole.",
        ),
        _c(
            "E304",
            "model file without a recipe",
            "A file saved from a model eqxform did not build carries no recipe, so its "
            "structure is unknown.",
            "eqxform.load('plain.eqx')",
            "load it into a model of the same structure: `eqxform.load(path, like=model)`.",
        ),
        _c(
            "E305",
            "tensors differ from the recipe",
            "A tensor of the file is missing, extra, or of another shape or dtype than the "
            "recipe builds.",
            "",
            "rebuild the file with `eqxform apply`; it was changed after it was written.",
        ),
        _c(
            "E306",
            "recipe needs a module that was not allowed",
            "The file's recipe builds its model with a `package.module:function` constructor.",
            "eqxform show model.eqx",
            "pass `--allow package` if you trust it.",
        ),
        _c(
            "E310",
            "model file JSON nested too deeply",
            "The JSON of a model file's header or recipe nests deeper than eqxform reads "
            "(a valid header nests 3 levels, a recipe 5); deeper nesting is refused before "
            "it is parsed.",
            '{"a": [[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]}',
            "rebuild the file with `eqxform new` or `eqxform apply`.",
        ),
        _c(
            "E311",
            "tensor shape invalid",
            "A tensor's shape in the header is not a list of non-negative integers within "
            "bounds (a fraction, a boolean, a negative number, too many dimensions or a "
            "dimension too large).",
            '{"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}',
            "rebuild the file; a writer that produced it is broken.",
        ),
        _c(
            "E312",
            "tensor dtype unsupported",
            "A tensor's dtype is not one eqxform reads (F64, F32, F16, BF16, I8 to I64, "
            "U8 to U64, BOOL).",
            '{"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}',
            "cast the tensor to a supported dtype before saving.",
        ),
        _c(
            "E313",
            "tensor byte ranges overlap or leave gaps",
            "safetensors stores tensors back to back: their data offsets must be pairs "
            "`[start, end]` that tile the data exactly. Offsets that overlap would read one "
            "tensor's bytes as another's; gaps and trailing bytes hide data.",
            '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
            '"b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
            "rebuild the file; it was edited or written by a broken writer.",
        ),
        _c(
            "E314",
            "number out of range in a model file",
            "The header or recipe holds an integer of more digits than eqxform reads, a "
            "float beyond the range of a double (`1e999`), or `NaN`/`Infinity`.",
            '{"w": {"dtype": "F32", "shape": [99999999999999999999999999], ...}}',
            "rebuild the file.",
        ),
        _c(
            "E315",
            "recipe does not fit its schema",
            "A field of the file's recipe has the wrong type: `specs` must be a list of "
            "records (`text`, `name`, `seed`, `params`), `params` a map of `let` names to "
            "numbers, strings, booleans or lists, seeds integers from 0 to 2**64 - 1 or null, "
            "`base.constructor` a string.",
            '{"base": {"constructor": "MLP(2, 2, 8, 2)", "seed": 0}, "specs": 3}',
            "rebuild the file with `eqxform apply`; the recipe was edited by hand or "
            "written by another program.",
        ),
        _c(
            "E316",
            "recipe of an unknown format",
            "The recipe says it is of a format this eqxform does not read (written by a newer "
            "version).",
            '{"format": "eqxform/2", ...}',
            "upgrade eqxform, or load the file with the version that wrote it.",
        ),
        _c(
            "E317",
            "recipe too large",
            "A string of the recipe (a spec's text, the constructor) or its list of specs is "
            "longer than eqxform reads from a file.",
            "",
            "rebuild the file; no recipe written by eqxform comes near the limits.",
        ),
        _c(
            "E318",
            "key repeated in a model file's JSON",
            "An object of the header or the recipe names the same key twice; a JSON reader "
            "would silently keep one of them.",
            '{"w": {...}, "w": {...}}',
            "rebuild the file.",
        ),
        _c(
            "E319",
            "recipe sets a `let` its spec lacks",
            "A spec in the file's recipe is listed with a value for a `let` name that the "
            "spec does not define.",
            '"specs": [{"text": "let w = 1\\n...", "params": {"zz": 1}, ...}]',
            "rebuild the file with `eqxform apply`; the recipe was edited.",
        ),
        _c(
            "E320",
            "tensors cannot be read",
            "The header was valid, but reading the tensors failed: the file changed while it "
            "was read, or the disk failed.",
            "",
            "read the file again; if it persists, copy it again.",
        ),
        _c(
            "E321",
            "model file JSON holds too many values",
            "The header or the recipe holds more values (counted by their separators and "
            "brackets) than any real model file; parsing them would cost seconds and "
            "gigabytes.",
            '{"a": [[], [], [], ... millions more]}',
            "rebuild the file; eqxform never writes one like it.",
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
            "load the adapters onto the model they were trained on (the file written by "
            "`eqxform new`/`apply` before training, or `eqxform.load(path, base=model)` with "
            "that model).",
        ),
        _c(
            "E331",
            "a model file where an adapter file was expected",
            "`eqxform.load(path, base=model)` and `eqxform merge` read adapter files "
            "(written with `adapters_only=True` or `apply --adapters-only`); this file holds "
            "a whole model.",
            "eqxform merge model.eqx base.eqx -o merged.eqx",
            "load a whole model file with `eqxform.load(path)`; pass the adapter file first "
            "to `merge`.",
        ),
        _c(
            "E332",
            "an adapter file loaded without its base",
            "An adapter file holds only the adapters, not the base they adapt, so it cannot "
            "be loaded on its own.",
            "eqxform.load('adapters.eqx')",
            "give the base: `eqxform.load(path, base=model)`, or "
            "`eqxform merge adapters.eqx base.eqx -o merged.eqx`.",
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
            "write the adapter file again from the trained model "
            "(`eqxform.save(path, model, adapters_only=True)`, `apply`/`train --adapters-only`).",
        ),
        _c(
            "E334",
            "an adapter file's specs build another model",
            "Replayed on the base, the file's specs give a model whose structure (module "
            "types, functions such as activations, static fields) is not the one the adapters "
            "were saved from, although the tensors match: another version of eqxform or "
            "Equinox builds it differently, or the record was rewritten with a digest to match.",
            "eqxform merge adapters.eqx base.eqx -o merged.eqx",
            "load it with the versions that wrote it, or write the adapter file again from the "
            "trained model.",
        ),
        _c(
            "E340",
            "a pickled checkpoint refused",
            "A `.pt`, `.pth`, `.bin` or `.ckpt` file from `torch.save` is a pickle: loading it "
            "can run any code the file holds, so eqxform never reads one.",
            'weights "resnet18.pth"',
            "convert it once, where you trust the file: `import torch, safetensors.torch` then "
            '`safetensors.torch.save_file(torch.load("resnet18.pth"), "resnet18.safetensors")`.',
        ),
        _c(
            "E341",
            "a checkpoint of a kind eqxform does not read",
            "Checkpoints are read from safetensors files and from `.npz` archives of `.npy` "
            "arrays; anything else is refused.",
            'weights "model.h5"',
            "save the checkpoint as safetensors (`safetensors.numpy.save_file`) or `.npz`.",
        ),
        _c(
            "E401",
            "spec file cannot be read",
            "The spec file does not exist or cannot be opened.",
            "eqxform check nope.eqx",
            "check the path.",
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
            "the spec comes first: `eqxform apply SPEC MODEL -o OUT`; check that the path "
            "names the spec you meant.",
        ),
        _c(
            "E403",
            "no model",
            "No model file is given and the spec has no `model` directive.",
            "eqxform apply spec.eqx -o out.eqx",
            "pass a model file, or add a `model` directive.",
        ),
        _c(
            "E404",
            "output folder missing",
            "The folder of the output file does not exist.",
            "eqxform apply spec.eqx -o missing/out.eqx",
            "create the folder, or write elsewhere.",
        ),
        _c(
            "E405",
            "not a constructor call",
            "`eqxform new` takes a constructor call; `eqxform.new` takes one written as text, "
            "or a class or function with its arguments (`eqxform.new(MLP, in_size=2, ...)`), "
            "not text and arguments both.",
            'eqxform new "3 + 4" -o m.eqx',
            'write a call, e.g. "MLP(in_size=2, out_size=2, width_size=8, depth=2)".',
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
            "pass values the recipe can write, or put the construction in a function of a "
            "module (`factory.py`) and pass that function: `eqxform.new(factory.make, width=3)`.",
        ),
        _c(
            "E406",
            "bad `--params` file",
            "A `--params` file is YAML mapping `let` names to numbers, strings or booleans.",
            "- 1\n- 2",
            "write e.g. `width: 128`.",
        ),
        _c(
            "E407",
            "bad `--set`",
            "`--set` takes `NAME=VALUE`.",
            "eqxform apply spec.eqx --set width -o out.eqx",
            "write e.g. `--set width=128`.",
        ),
        _c(
            "E408",
            "no such device",
            "`--device` names a platform that JAX does not have here.",
            "eqxform apply spec.eqx --device tpu -o out.eqx",
            "use one of the platforms the help line lists.",
        ),
        _c(
            "E409",
            "output is the input",
            "The output file is the input model; eqxform does not overwrite its input.",
            "eqxform apply spec.eqx model.eqx -o model.eqx",
            "write elsewhere, or pass `--force`.",
        ),
        _c(
            "E410",
            "no optimiser",
            "Training needs the spec's `optimizer` directive.",
            "eqxform train spec.eqx -o out.eqx   # the spec has no `optimizer`",
            "add e.g. `optimizer adamw(learning_rate=1e-3)`.",
        ),
        _c(
            "E411",
            "params file cannot be read",
            "The `--params` file does not exist.",
            "eqxform apply spec.eqx --params nope.yaml -o out.eqx",
            "check the path.",
        ),
        _c(
            "E412",
            "`--set` value is not a constant",
            "A `--set` value is a constant expression: a number, a string, a boolean, a list.",
            "eqxform apply spec.eqx --set width=2*w -o out.eqx",
            "give the value itself.",
        ),
        _c(
            "E413",
            "type name not capitalised",
            "Selectors read capitalised names as types and lowercase ones as fields.",
            'eqxform.register_type(Block, name="block")',
            "register the type under a capitalised name.",
        ),
        _c(
            "E414",
            "two leaves share a tensor name",
            "A model file names each tensor by its path; two paths of the model give the "
            "same name (a dict key containing `.`, say).",
            "",
            "rename the key.",
        ),
        _c(
            "E415",
            "unknown diagnostic code",
            "`eqxform explain` takes a code that eqxform's messages show.",
            "eqxform explain E999",
            "copy the code from the message, e.g. `E201`.",
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
            "write it with `numpy.savez(path, x=inputs, y=targets)`, one row per example; "
            "for `cross_entropy`, `y` holds one integer class per example "
            "(`y.argmax(axis=1).astype(numpy.int32)` of one-hot rows).",
        ),
        _c(
            "E421",
            "no built-in data for this model",
            "Without `--data`, `train` makes a toy task sized from the model's `in_size` and "
            "`out_size`.",
            "eqxform train cnn.eqx -o out.eqx",
            "pass `--data data.npz`.",
        ),
        _c(
            "E422",
            "batch larger than the data",
            "`--batch-size` is larger than the number of examples.",
            "eqxform train spec.eqx --batch-size 9999 -o out.eqx",
            "use a smaller batch.",
        ),
        _c(
            "E423",
            "the model's output is not one array",
            "`train`'s losses (`mse`, `cross_entropy`) compare one output array with `y`; "
            "this model returns something else: a tuple (`(logits, cache)`), a result object "
            "(ESM2's `ESM2Result` with `hidden` and `logits`), a dict. The message shows what "
            "it returned.",
            "eqxform train spec.eqx esm2.eqx --data d.npz --loss cross_entropy -o out.eqx",
            "name the array with `--model-output logits` (an attribute, a key or an index: `0`, "
            "`[0].logits`), or give a loss of your own, `--loss package.module:function "
            "--allow package`, a function `(pred, y) -> scalar` of the batch's outputs.",
        ),
        _c(
            "E424",
            "`--model-output` names no part of the model's output",
            "`eqxform train --model-output PATH` picks the array the loss compares with `y` from "
            "what the model returns: attribute names, mapping keys and indices, joined by `.` "
            "or written `[i]`. The path does not fit what the model returned (shown).",
            "eqxform train spec.eqx esm2.eqx --model-output logit -o out.eqx",
            "name one of the parts the message lists, e.g. `--model-output logits` or `--model-output 0`.",
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
            "add `--allow mylosses`; make it return the batch's loss as a scalar "
            "(`jnp.mean(...)`).",
        ),
        _c(
            "E430",
            "seed out of range",
            "A seed given on the command line (`--seed`) or to the Python API (`seed=`) is not "
            "a whole number from 0 to 2**64 - 1. Every seed in that range gives its own key: "
            "seeds below 2**32 draw as `jax.random.key(seed)`, larger ones put their high 32 "
            "bits in the key's high word.",
            "eqxform apply spec.eqx -o out.eqx --seed 2**63",
            "write the seed in decimal digits, e.g. `--seed 9223372036854775808`.",
        ),
        _c(
            "E431",
            "`let` value from outside that is not a constant",
            "A value given for a `let` through `params=` (or a sweep file) is not a number, a "
            "string, `true`/`false`/`none` or a list of those, or is beyond the limits of a "
            "spec's own values (an integer of more than 256 bits, a float that is not finite, "
            "a string or list of more than 10,000 elements).",
            'eqxform.compile("let w = 1", params={"w": object()})',
            'pass a constant, e.g. `params={"w": 128}`.',
        ),
        _c(
            "E432",
            "bad memory budget",
            "The environment variable `EQXFORM_MAX_BYTES` is not a positive number of bytes "
            "(written in the digits 0-9, a whole number or a decimal with a unit K, M, G or "
            'T) nor `none`. `0` and negative numbers are refused rather than read as "no '
            'limit": the word `none` is the one way to turn the check off.',
            "EQXFORM_MAX_BYTES=0 eqxform apply spec.eqx -o out.eqx",
            "set it to e.g. `64G` or `1.5T`, or `none` to turn the memory check off.",
        ),
        _c(
            "E433",
            "`key` that is not a JAX key",
            "`Program.apply` and `Program.build_model` take one `jax.random.key` (or a legacy "
            "`jax.random.PRNGKey`) as `key=`.",
            'program.apply(model, key="0")',
            "pass `key=jax.random.key(0)`, or `seed=0`.",
        ),
        _c(
            "E434",
            "Python API argument of the wrong type",
            "An argument of `eqxform.compile` is not of the type it takes: `spec` the text of "
            "a spec (a `str`) or a file (a `pathlib.Path`), `params` a mapping of `let` names "
            "to values, `inputs` a list of strings, `name` a string.",
            'eqxform.compile(Path("spec.eqx"), params=[("width", 8)])',
            'pass the documented type, e.g. `params={"width": 8}`.',
        ),
        _c(
            "E435",
            "spec text that looks like a path",
            "`eqxform.compile` reads a `str` as the text of a spec and a path object "
            "(`pathlib.Path`) as a file. A `str` of one line that looks like a path (it ends "
            "in `.eqx`, names a file, or has a `/` and no spaces) and does not parse as a "
            "statement was meant as a file; it is refused, and never read.",
            'eqxform.compile("specs/lora.eqx")',
            'pass a path object: `eqxform.compile(pathlib.Path("specs/lora.eqx"))`.',
        ),
        _c(
            "E436",
            "state made for another model",
            "A stacked model was called with an `eqx.nn.State` that holds no value for the "
            "stack's layers, in neither the stack's form nor the per-layer form of the model "
            "before `stack` (which a stack reads and writes back): it belongs to another "
            "model.",
            "model, state = eqx.nn.make_with_state(Other)(key=key)\nstacked(x, state)",
            "call the model with the state of the model the spec was applied to, or apply the "
            "spec to the model and its state together: "
            "`model, state = program.apply((model, state))`.",
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
            "write e.g. `--mesh data=2,model=4`.",
        ),
        _c(
            "E466",
            "bad multi-process options",
            "A run of several processes needs `--coordinator HOST:PORT` (process 0's address), "
            "`--num-processes N` and `--process-id I` (0 <= I < N), all three.",
            "eqxform train spec.eqx --coordinator 10.0.0.1:1234 -o out.eqx",
            "give all three, the same coordinator and count to every process.",
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
        ),
        _c(
            "E468",
            "batch axis not in the mesh",
            "The batch is split over `--batch-axis` (`batch_axis=`), which must be an axis of "
            "the mesh.",
            "eqxform train spec.eqx --mesh data=8 --batch-axis batch -o out.eqx",
            "name a mesh axis, or leave it out: the batch then goes over `data` when the mesh "
            "has it, and is replicated otherwise.",
        ),
        _c(
            "E438",
            "constructor that takes no key",
            "`Program.apply` and `Program.plan` take a model, or in its place the model's "
            "constructor: a function called with one key, `constructor(key)`, whose draws an "
            "`ensemble` then uses for its members, as the Equinox Tricks page's "
            "`make_ensemble` does.",
            "program.apply(eqx.nn.MLP)",
            "pass a function of a key, e.g. "
            "`program.apply(lambda key: eqx.nn.MLP(2, 2, 8, 2, key=key))`.",
        ),
        _c(
            "E440",
            "output is an input of the command",
            "`-o` names the spec, the `--data` file or the `--params` file of the command (by "
            "path, or through a symbolic or hard link); writing the model there would destroy "
            "that input. `--force` does not change this.",
            "eqxform apply spec.eqx model.eqx -o spec.eqx",
            "write the model elsewhere with `-o`.",
        ),
        _c(
            "E441",
            "output is a directory",
            "`-o` (or `eqxform.save`'s path) names a directory.",
            "eqxform apply spec.eqx -o models/",
            "name a file inside it, e.g. `-o models/model.eqx`.",
        ),
        _c(
            "E442",
            "output is a special file",
            "The output is a named pipe (FIFO), a device or a socket. eqxform writes a whole "
            "file and renames it into place, which would replace the special file by a "
            "regular one.",
            "eqxform apply spec.eqx -o /dev/null",
            "write a regular file; pipe the file afterwards if you need to.",
        ),
        _c(
            "E443",
            "output folder not writable",
            "The folder of the output cannot be written (permissions, a read-only file system); "
            "found before any work.",
            "eqxform apply spec.eqx -o /read-only/out.eqx",
            "write elsewhere, or fix the folder's permissions.",
        ),
        _c(
            "E444",
            "output name too long",
            "The output's file name is longer than its folder's file system takes.",
            "eqxform apply spec.eqx -o aaaa...(300 characters).eqx",
            "use a shorter name.",
        ),
        _c(
            "E445",
            "not a path",
            "A path argument of the Python API is not a `str` or `os.PathLike`, is empty, or "
            "contains a NUL character.",
            "eqxform.load(None)",
            "pass the file's name.",
        ),
        _c(
            "E446",
            "not a model",
            "`eqxform.save` was given something that holds no arrays (or a traced value "
            "inside `jax.jit`), or a `recipe` that is no `eqxform.Recipe`.",
            'eqxform.save("m.eqx", "hello")',
            "pass the model (an `equinox.Module` or a pytree of arrays).",
        ),
        _c(
            "E447",
            "array cannot be stored",
            "A leaf of the model has a dtype that a model file cannot store (complex numbers, "
            "PRNG key arrays, 8-bit floats, objects).",
            'eqxform.save("m.eqx", {"key": jax.random.key(0)})',
            "cast the leaf to a stored dtype, or store a key's bits (`jax.random.key_data`).",
        ),
        _c(
            "E448",
            "output could not be written",
            "Writing the output failed part way (the disk is full, the file system failed). "
            "The old file, if there was one, is unchanged, and no temporary file is left.",
            "",
            "free space, or write elsewhere.",
        ),
        _c(
            "E449",
            "`allow` is not a list of package names",
            "`eqxform.load` and `eqxform.new` take `allow` as a list of top-level package "
            "names; a single string would be read letter by letter.",
            'eqxform.load("m.eqx", allow="mypkg")',
            'pass a list: `allow=["mypkg"]`.',
        ),
        _c(
            "E450",
            "no checkpoint to map",
            "The spec's `map` lines read a checkpoint, but neither a `weights` line nor "
            "`--weights PATH` (`weights=` in Python) names one; or weights were given to a spec "
            "without `map` lines.",
            "eqxform apply resnet.eqx -o out.eqx   # the spec has `map` lines, no `weights`",
            'add `weights "PATH"` to the spec, or pass `--weights PATH`.',
        ),
        _c(
            "E525",
            "training data is not an `.npz` of arrays",
            "`--data` takes an `.npz` (a zip of `.npy` arrays, as `numpy.savez` writes): not "
            "a single `.npy`, not a zip with other members, not a member whose `.npy` header "
            "cannot be read.",
            "eqxform train spec.eqx --data x.npy -o out.eqx",
            "write it with `numpy.savez(path, x=inputs, y=targets)`.",
        ),
        _c(
            "E526",
            "training data of the wrong kind",
            "`x` or `y` holds complex numbers, Python objects, strings, dates or records; "
            "training data are booleans, integers or floats.",
            "numpy.savez('d.npz', x=x.astype(complex), y=y)",
            "convert it before saving, e.g. `x.real.astype(numpy.float32)`.",
        ),
        _c(
            "E527",
            "training data too large, or its size misstated",
            "An array's `.npy` header claims more (or fewer) bytes than the file holds, or "
            "the arrays would not fit in memory; found from the headers, before anything is "
            "loaded.",
            "an .npz whose header claims an array of 7 TiB",
            "write the file again with numpy; train on less data, or from Python with "
            "batches you load yourself.",
        ),
        _c(
            "E528",
            "training data damaged",
            "Reading `x` or `y` failed after their headers were checked: a checksum or a "
            "length in the zip does not match.",
            "",
            "write the file again.",
        ),
        _c(
            "E529",
            "training data not finite",
            "`x` or `y` holds NaN or an infinity. One such value makes the loss of every "
            "batch that holds it NaN, and the training after it worthless, so the data is "
            "refused before any step; the message names the array and the index of the "
            "first bad element.",
            "numpy.savez('d.npz', x=x, y=numpy.where(mask, numpy.nan, y))",
            "drop the rows that hold them, or replace the values (`numpy.nan_to_num`), then "
            "save the file again.",
        ),
        # ---- running
        _c(
            "E530",
            "training stopped: a loss or an update was not finite",
            "`eqxform train` checks every step (inside the compiled step, without waiting "
            "for the device): at the first step whose loss, or whose updated parameters, are "
            "NaN or infinite, it stops. It writes the model as it was before that step (the "
            "last finite one) to the output and exits with status 1; when the very first "
            "step fails it writes nothing. The recipe's `train` entry says where it stopped.",
            "optimizer sgd(learning_rate=1e10)",
            "lower the learning rate (or clip the gradients), check the scale of the data, "
            "and check that the model's outputs are finite at the start.",
        ),
        _c(
            "E460",
            "no adapters to save",
            "`save(..., adapters_only=True)` (`apply --adapters-only`) writes a model's "
            "adapters; the model has none.",
            "eqxform apply init.eqx -o out.eqx --adapters-only   # no lora rule",
            "add a `lora` or `ia3` rule to the spec, or save the whole model.",
        ),
        _c(
            "E461",
            "the adapters' spec is unknown",
            "An adapter file records the spec that added its adapters, to replay it on the "
            "base. eqxform knows it for models it built (`eqxform.new`, `load`, a spec's "
            "`model` directive, and `Program.apply` of those); this model came from "
            "elsewhere.",
            "eqxform.save('a.eqx', program.apply(my_model), adapters_only=True)",
            "pass the program: `eqxform.save(path, model, adapters_only=True, spec=program)`.",
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
        ),
        _c(
            "E481",
            "no such member",
            "Members are numbered from 0; an ensemble of N has the members 0 to N - 1.",
            "eqxform pick sweep.eqx --member 8 -o one.eqx   # `ensemble 8`: members 0 to 7",
            "pick one of 0 to N - 1 (`eqxform show` lists the tensors, whose first axis is N).",
        ),
        _c(
            "E482",
            "pick by `--member` or by `--best`",
            "`eqxform pick` writes one member: the one named by `--member K`, or with `--best` "
            "the one with the lowest held-out loss that training recorded. It needs exactly "
            "one of the two.",
            "eqxform pick sweep.eqx -o one.eqx",
            "add `--member K` (0-based) or `--best`, not both.",
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
        ),
        _c(
            "E484",
            "an adapter file has no members to pick",
            "An adapter file holds adapters for a base model, not a whole ensemble.",
            "eqxform pick adapters.eqx --member 0 -o one.eqx",
            "bake the adapters into their base first (`eqxform merge ADAPTERS BASE -o "
            "merged.eqx`), then pick from the merged file.",
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
        ),
        _c(
            "E501",
            "batch would recompile the step",
            "A training step is compiled for one batch shape and dtype; a batch of another "
            "would compile it again, silently costing seconds per step.",
            "step(x[:5], y[:5])   # after step(x, y) with 16 rows",
            "give every batch the same shape, or pass `allow_retrace=True` to `make_step`.",
        ),
        _c(
            "E502",
            "the training step fails on a batch",
            "The first call of a training step traces the loss on the batch; the loss or the "
            "model refused it (a batch of the wrong shape, a loss that returns no scalar).",
            "step(x[:, :3], y)   # the model takes 4 features",
            "give batches the model takes; the loss is `loss_fn(model, *batch) -> scalar`, or "
            "for a stateful model `loss_fn(model, state, *batch) -> (scalar, state)` with "
            "`make_step(..., state=state)`.",
        ),
        _c(
            "E510",
            "batch not divisible over the mesh",
            "On a mesh, each batch is split over the batch axis; its number of rows must be a "
            "multiple of that axis's size.",
            "eqxform train spec.eqx --mesh data=8 --batch-size 12 -o out.eqx",
            "make the batch size a multiple of the batch axis's size.",
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
        ),
        _c(
            "E601",
            "the formatter would change the spec's meaning",
            "`eqxform fmt` parses its own output and compares it with the spec; they "
            "differ, so it left the text as it was. This is a bug in eqxform, never in the "
            "spec.",
            "",
            "report it with the spec; the spec itself is fine as it is.",
        ),
        _c(
            "E602",
            "the language server's library is missing",
            "`eqxform lsp` runs on `pygls` 2, which eqxform installs; it was removed or an "
            "older version shadows it.",
            "eqxform lsp",
            "install it: `pip install 'pygls>=2'`.",
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
            "report it to the editor's plugin; send the body's length in bytes (UTF-8), in ASCII "
            "digits, and exactly that many bytes.",
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
            "send positions as zero-based lines and characters, 0 or more; the error's message "
            "names the field that is wrong.",
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
            "is E104.",
            "where MegalodonAttention.wz -> lora(rank=8)",
            "nothing, if the model has that class; check it against the model with "
            "`eqxform check SPEC MODEL` (or a `model` line in the spec).",
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
            "nothing, if the cost is acceptable (an `(out, in)` matrix per call, like the base "
            "weight); `merge` the adapters after training, or adapt modules the model calls.",
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
        out += ["", f"### {c.code}", "", f"**{c.title}**", "", c.explanation]
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
