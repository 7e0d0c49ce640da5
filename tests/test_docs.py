"""The documentation is held to the code: the generated pages are up to date
(every directive, action and code listed), the README stays short and links
to them, and each page of the tricks runs: its hand-written Equinox code and
its spec give the same model."""

import difflib
import importlib.util
import math
import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqxform
from eqxform import _docs as D
from eqxform import _names as N
from eqxform._codes import CODES

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def test_generated_pages_are_up_to_date():
    stale, diff = [], []
    for path, text in GEN.pages().items():
        old = path.read_text() if path.exists() else ""
        if old != text:
            stale.append(str(path.relative_to(ROOT)))
            diff += list(difflib.unified_diff(old.splitlines(), text.splitlines(), lineterm=""))
    assert stale == [], (
        "run `python docs/generate.py` to write: " + ", ".join(stale) + "\n" + "\n".join(diff[:30])
    )


def test_every_directive_action_and_code_is_in_the_reference():
    language = (DOCS / "language.md").read_text()
    directives = GEN.directives()
    assert {"model", "seed", "let", "where", "stack", "ensemble", "input"} <= set(directives)
    for word in directives:
        assert word in D.DIRECTIVES, f"`{word}` has no entry in `_docs.DIRECTIVES`"
        assert f"| `{word}` |" in language
    for action in N.ACTIONS:
        assert action in D.ACTIONS, f"`{action}` has no entry in `_docs.ACTIONS`"
        assert f"| `{action}` |" in language
    for name in list(N.INITIALIZERS) + list(N.EXPR_FUNCTIONS) + list(N.CONTEXT_NAMES):
        assert re.search(rf"\| `{name}[`(]", language), name
    for form in D.SELECTOR_FORMS:
        assert f"| `{form.replace('|', chr(92) + '|')}` |" in language
    diagnostics = (DOCS / "diagnostics.md").read_text()
    for code in CODES:
        assert f"### {code}\n" in diagnostics
        assert f"[{code}](#{code.lower()})" in diagnostics


def test_cli_reference_lists_every_command_and_option():
    from eqxform._cli import main

    cli = (DOCS / "cli.md").read_text()
    for name, command in main.commands.items():
        assert f"### `eqxform {name}`" in cli
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--"):
                    assert opt in cli, (name, opt)


def test_a_block_without_a_generator_is_an_error():
    with pytest.raises(KeyError, match="no generator"):
        GEN.render("<!-- generated: nonsense -->\n<!-- end generated -->\n")


def test_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    words = len(re.findall(r"\S+", readme))
    assert words <= 1300, f"README has {words} words; move detail into docs/"
    for page in ["language.md", "cli.md", "python.md", "diagnostics.md", "tricks/"]:
        assert f"docs/{page}" in readme, page
    # The two set-up commands, exactly.
    assert (
        "python3 -m venv .venv && . .venv/bin/activate && pip install . && "
        "eqxform apply specs/custom_init.eqx -o model.eqx && eqxform show model.eqx"
    ) in readme
    assert (
        'python3 -m venv .venv && . .venv/bin/activate && pip install ".[test]" && pytest -q'
        in (readme)
    )
    index = (DOCS / "README.md").read_text()
    for page in sorted(DOCS.rglob("*.md")):
        if page.name != "README.md":
            assert str(page.relative_to(DOCS)) in index, page


def test_readme_layout_names_real_paths():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1]
    block = layout.split("```", 2)[1].split("\n", 1)[1]  # after the fence's label
    for line in block.splitlines():
        path = line.split()[0] if line.strip() and not line.startswith(" ") else None
        if path:
            assert (ROOT / path).exists(), path


# ---- the tricks, page by page -----------------------------------------------------------

TRICKS = sorted((DOCS / "tricks").glob("*.md"))


def _blocks(page: Path) -> tuple[str, str]:
    """The page's hand-written Python and its spec."""
    text = page.read_text()
    # The first Python block is the hand-written code; later ones use eqxform.
    python = re.findall(r"```python\n(.*?)```", text, re.S)
    specs = re.findall(r"```eqx\n(.*?)```", text, re.S)
    assert len(python) >= 1 and len(specs) == 1, page.name
    assert "eqxform" not in python[0], page.name
    return python[0], specs[0]


def _run(page: str) -> tuple[dict, str]:
    python, spec = _blocks(DOCS / "tricks" / page)
    scope: dict = {}
    exec(compile(python, page, "exec"), scope)
    return scope, spec


def test_every_trick_has_a_page():
    assert [p.stem for p in TRICKS] == [
        "ensembling",
        "initialisation",
        "per_parameter",
        "scan_over_layers",
        "surgery",
        "training_loops",
    ]
    # The Tricks page, where the checkout has the shared notes beside it.
    tricks = ROOT.parent / "shared" / "equinox-tricks.md"
    if tricks.exists():
        assert len(re.findall(r"^## ", tricks.read_text(), re.M)) == len(TRICKS)


def _arrays(tree):
    return [x for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]


def test_surgery_page():
    scope, spec = _run("surgery.md")
    got = eqxform.compile(spec).apply(scope["mlp"], key=jax.random.key(0))
    want = scope["new_mlp"]
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    assert [x.shape for x in _arrays(got)] == [x.shape for x in _arrays(want)]
    for a, b in zip(_arrays(got.layers[:-1]), _arrays(scope["mlp"].layers[:-1])):
        assert a is b or np.array_equal(a, b)
    assert got.layers[-1].weight.shape == (10, 64)


def test_initialisation_page():
    scope, spec = _run("initialisation.md")
    model, want = scope["model"], scope["new_model"]
    got = eqxform.compile(spec).apply(model, key=jax.random.key(1))
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for g, w, m in zip(got.layers, want.layers, model.layers):
        assert np.array_equal(g.bias, m.bias) and np.array_equal(w.bias, m.bias)
        assert g.weight.shape == w.weight.shape
        bound = 2 / math.sqrt(g.weight.shape[1])
        assert np.abs(np.asarray(g.weight)).max() <= bound + 1e-6
        assert not np.array_equal(g.weight, m.weight)
    big_got, big_want = np.asarray(got.layers[1].weight), np.asarray(want.layers[1].weight)
    assert big_got.std() == pytest.approx(big_want.std(), rel=0.1)


def test_per_parameter_page():
    scope, spec = _run("per_parameter.md")
    got = eqxform.compile(spec).apply(scope["model"], key=jax.random.key(0))
    resolved, want = eqxform.resolve(got), scope["resolve_symmetric"](scope["symmetric_model"])
    for a, b in zip(_arrays(resolved), _arrays(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for layer in resolved.layers:
        np.testing.assert_allclose(layer.weight, layer.weight.T)

    @eqx.filter_grad
    def loss_fn(model, x, y):
        pred_y = jax.vmap(eqxform.resolve(model))(x)
        return jnp.sum((y - pred_y) ** 2)

    grads = loss_fn(got, scope["x"], scope["y"])
    mine, theirs = _arrays(grads), _arrays(scope["grads"])
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ensembling_page():
    scope, spec = _run("ensembling.md")
    ensemble = eqxform.compile(spec).apply()
    assert isinstance(ensemble, eqxform.Ensemble)
    assert [x.shape for x in _arrays(ensemble)] == [x.shape for x in _arrays(scope["mlp_ensemble"])]
    first = _arrays(ensemble)[0]
    assert not np.allclose(first[0], first[1])  # the members differ
    x, xs = scope["x"], scope["xs"]
    np.testing.assert_allclose(scope["evaluate_ensemble"](ensemble, x), ensemble(x), rtol=1e-6)
    np.testing.assert_allclose(
        scope["evaluate_per_ensemble"](ensemble, xs), ensemble.per_member(xs), rtol=1e-6
    )
    assert ensemble(x).shape == scope["same"].shape == (8, 2)


def test_training_loops_page():
    scope, spec = _run("training_loops.md")
    model = eqx.nn.MLP(2, 2, 16, 2, key=jax.random.key(0))  # the page's model, untrained
    program = eqxform.compile(spec)
    step = eqxform.make_step(scope["loss_fn"], eqxform.optimizer(program, model), model)
    losses = [float(step(scope["x"], scope["y"])) for _ in range(5)]
    np.testing.assert_allclose(losses, scope["losses"], rtol=1e-5)
    for a, b in zip(_arrays(step.model), _arrays(scope["model"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scan_over_layers_page():
    scope, spec = _run("scan_over_layers.md")
    got = eqxform.compile(spec).apply()
    assert isinstance(got.mlps, eqxform.Stacked)
    hand = scope["model"]
    mine = _arrays(got.mlps)
    assert [x.shape for x in mine] == [x.shape for x in _arrays(hand.mlps)]
    # The hand-written model, given the stacked arrays, computes the same.
    dynamic, static = eqx.partition(hand.mlps, eqx.is_array)
    stacked = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(dynamic), mine)
    transplanted = eqx.tree_at(lambda m: m.mlps, hand, eqx.combine(stacked, static))
    x = scope["x"]
    np.testing.assert_allclose(transplanted(x), got(x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(mine[0][0], mine[0][1])  # each layer drawn anew
