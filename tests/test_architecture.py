"""The shape of the code: layers that import only downwards, no cycles, one
path representation, one table of diagnostic codes."""

import ast
import functools
import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
from click.testing import CliRunner

import eqxform
from eqxform._cli import main
from eqxform._codes import CODES
from eqxform._recipes import named_arrays
from eqxform._select import tensor_name, walk

PACKAGE = Path(__file__).parent.parent / "eqxform"

# Each module's layer: a module imports only modules of lower layers. The
# numbers follow the pipeline text -> AST -> check -> compile -> passes -> run,
# with the model types at the bottom and the front ends at the top.
LAYERS = {
    "eqxform._ast": 0,
    "eqxform._hashing": 0,
    "eqxform._names": 0,
    "eqxform._modules._wrappers": 0,
    "eqxform._modules._stacks": 1,
    "eqxform._modules._adapters": 1,
    "eqxform._modules": 2,
    "eqxform.models": 0,
    "eqxform._diagnostics": 1,
    "eqxform._codes": 0,
    "eqxform._limits": 0,
    "eqxform._errors": 2,
    "eqxform._parse": 3,
    "eqxform._expr": 3,
    "eqxform._files": 3,
    "eqxform._mesh": 3,
    "eqxform._wnames": 3,
    "eqxform._weights": 7,
    "eqxform._registry": 3,
    "eqxform._values": 4,
    "eqxform._source": 4,
    "eqxform._sweep": 4,
    "eqxform._check": 5,
    "eqxform._select": 5,
    "eqxform._build": 6,
    "eqxform._passes._init": 7,
    "eqxform._passes._base": 7,
    "eqxform._passes._forward": 7,
    "eqxform._passes._tree": 8,
    "eqxform._passes._struct": 8,
    "eqxform._passes._shard": 8,
    "eqxform._passes._adapters": 9,
    "eqxform._passes": 10,
    "eqxform._plan": 11,
    "eqxform._program": 12,
    "eqxform._compile": 13,
    "eqxform._recipes": 14,
    "eqxform._pick": 15,
    "eqxform._runtime._optim": 15,
    "eqxform._runtime._step": 15,
    "eqxform._runtime._distributed": 15,
    "eqxform._runtime._train": 16,
    "eqxform._runtime": 17,
    # The public functions behind the commands: above the runtime and the
    # language server, whose work they call.
    "eqxform._api": 18,
    "eqxform._docs": 1,
    "eqxform._format": 4,
    # The command line is a shell over the public API (`eqxform`).
    "eqxform._cli": 21,
    "eqxform._lsp_stream": 0,
    "eqxform._lsp": 17,
    "eqxform.__main__": 22,
    "eqxform": 20,
}

# Modules that may import eqxform modules inside functions, and why: to keep
# JAX out of `eqxform check` (which loads only the text layers).
LAZY_IMPORTERS = {"eqxform", "eqxform._api", "eqxform._cli", "eqxform._lsp", "eqxform._registry"}


def _modules():
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path):
    """(target, is_function_level) for each import of an eqxform module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    function_level = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                function_level.add(id(inner))
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import _ast` imports `eqxform._ast`; `from ._x import y`
            # imports `eqxform._x` (or its submodule `y`).
            targets = [module + "." + a.name for a in node.names]
            if node.module is not None:
                targets.append(module)
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for target in targets:
            if target.startswith("eqxform"):
                yield target, id(node) in function_level


@functools.cache
def _graph():
    modules = _modules()
    edges = {}
    for name, path in modules.items():
        found = set()
        for target, lazy in _imports(name, path):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                found.add((target, lazy))
        edges[name] = found
    return edges


def test_every_module_has_a_layer():
    assert set(_modules()) == set(LAYERS)


def test_imports_go_only_downwards():
    wrong = []
    for name, targets in _graph().items():
        for target, _ in targets:
            if LAYERS[target] >= LAYERS[name]:
                wrong.append(f"{name} ({LAYERS[name]}) imports {target} ({LAYERS[target]})")
    assert wrong == []


def test_import_graph_is_acyclic():
    graph = {n: {t for t, _ in ts} for n, ts in _graph().items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle.extend(stack + [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    assert not any(visit(n, []) for n in graph if state.get(n) is None), cycle


def test_function_level_imports_only_where_they_keep_jax_out_of_check():
    lazy = {n for n, ts in _graph().items() if any(is_lazy for _, is_lazy in ts)}
    assert lazy <= LAZY_IMPORTERS


def test_model_types_import_nothing_else_of_eqxform():
    for name, targets in _graph().items():
        if name.startswith("eqxform._modules"):
            assert all(t.startswith("eqxform._modules") for t, _ in targets), name


def test_passes_do_not_import_the_checker():
    """A pass runs on the model; the checker reads the spec. What both need
    (argument kinds, the memory budget, byte sizes) sits below both."""
    passes = [n for n in _graph() if n.startswith("eqxform._passes")]
    assert len(passes) > 5
    for name in passes:
        targets = {t for t, _ in _graph()[name]}
        assert "eqxform._check" not in targets, name
    # Nor through a module between them: nothing a pass imports imports the checker.
    below = set().union(*({t for t, _ in _graph()[n]} for n in passes)) - set(passes)
    assert [n for n in below if "eqxform._check" in {t for t, _ in _graph()[n]}] == []


def test_the_command_line_imports_only_the_public_api():
    """`_cli.py` is a shell over what a Python user can call: each of its
    imports of eqxform is `import eqxform` or `from . import NAME` of a public
    name (one `eqxform.__init__` exports), at whatever level it is written."""
    public = set(dir(eqxform)) - {n for n in dir(eqxform) if n.startswith("_")}
    tree = ast.parse((PACKAGE / "_cli.py").read_text())
    wrong, seen = [], 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or "eqxform" in (node.module or "")):
            names = [a.name for a in node.names]
            if node.module not in (None, "eqxform") or node.level > 1:
                wrong.append(f"line {node.lineno}: from {'.' * node.level}{node.module} import")
            wrong += [f"line {node.lineno}: {n} is not public" for n in names if n not in public]
            seen += 1
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("eqxform") and a.name != "eqxform":
                    wrong.append(f"line {node.lineno}: import {a.name}")
                seen += a.name == "eqxform"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            # `eqxform._recipes` reached through the package is a private import too.
            if node.value.id == "eqxform" and node.attr.startswith("_"):
                wrong.append(f"line {node.lineno}: eqxform.{node.attr}")
    assert seen and wrong == []


def test_the_file_layer_knows_nothing_of_the_compiler():
    targets = {t for t, _ in _graph()["eqxform._files"]}
    assert targets <= {"eqxform._diagnostics", "eqxform._errors", "eqxform._limits"}


# ---- one path representation -------------------------------------------------


class Holder(eqx.Module):
    table: dict
    pair: tuple
    seq: eqx.nn.Sequential


def test_selection_paths_are_jax_key_paths(getkey):
    holder = Holder(
        {"b": eqx.nn.Linear(2, 2, key=getkey()), "a": jnp.ones(3)},
        (jnp.zeros(2), eqx.nn.LayerNorm(4)),
        eqx.nn.Sequential([eqx.nn.Linear(2, 3, key=getkey()), eqx.nn.Lambda(jax.nn.relu)]),
    )
    models = [
        holder,
        eqxform.compile("model MLPChain(size=3, count=4)\nstack mlps scan").apply(),
        eqxform.compile(
            "model MLP(4, 4, 8, 2)\nwhere layers[1].weight if true -> wrap symmetric\n"
            "where layers[1] -> freeze\nensemble 3"
        ).apply(),
    ]
    for model in models:
        ours = [n.path for n in walk(model) if eqx.is_array(n.obj)]
        theirs = [p for p, x in jax.tree_util.tree_flatten_with_path(model)[0] if eqx.is_array(x)]
        assert ours == theirs
        assert [tensor_name(p) for p in ours] == [n for n, _ in named_arrays(model)]


# ---- diagnostic codes ----------------------------------------------------------


def test_every_code_raised_has_an_explanation_and_every_explanation_a_use():
    used = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name != "_codes.py":
            used |= set(re.findall(r'"([EWI]\d{3})"', path.read_text()))
    assert used - set(CODES) == set(), "codes without an explanation"
    assert set(CODES) - used == set(), "explanations of codes never raised"
    for entry in CODES.values():
        assert entry.title and entry.explanation and entry.fix


def test_explain_prints_the_table_entry():
    result = CliRunner().invoke(main, ["explain", "e201"])
    assert result.exit_code == 0
    assert result.output.startswith("E201: rule matches nothing")
    assert "Fix: " in result.output
    result = CliRunner().invoke(main, ["explain", "E2O1"])
    assert result.exit_code == 2
    assert "`E201`" in result.output
