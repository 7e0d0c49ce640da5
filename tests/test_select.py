import equinox as eqx
import jax
import pytest

import eqxform
from eqxform import _registry
from eqxform._parse import parse
from eqxform._select import context, select, walk


def paths(selector: str, model) -> list[str]:
    rule = parse(f"where {selector} -> init zeros").rules[0]
    return [n.text for n in select(rule.selector, walk(model))]


def test_fields_and_indices(mlp):
    assert paths("layers[0].weight", mlp) == ["layers[0].weight"]
    assert paths("layers[-1]", mlp) == ["layers[3]"]
    assert paths("layers[1:3].bias", mlp) == ["layers[1].bias", "layers[2].bias"]
    assert paths("layers[:-1]", mlp) == ["layers[0]", "layers[1]", "layers[2]"]
    assert paths("layers[::2].weight", mlp) == ["layers[0].weight", "layers[2].weight"]
    assert paths("layers[*].weight", mlp) == [f"layers[{i}].weight" for i in range(4)]


def test_wildcards(mlp):
    assert paths("layers.*.bias", mlp) == [f"layers[{i}].bias" for i in range(4)]
    assert paths("**.bias", mlp) == [f"layers[{i}].bias" for i in range(4)]
    assert paths("**", mlp)[0] == "<root>"


def test_types_match_anywhere(mlp):
    assert paths("Linear.weight", mlp) == [f"layers[{i}].weight" for i in range(4)]
    assert paths("MLP.layers[0]", mlp) == ["layers[0]"]
    assert paths("Linear", mlp) == [f"layers[{i}]" for i in range(4)]


def test_alternatives(mlp):
    assert paths("layers[0].weight | layers[-1].bias", mlp) == [
        "layers[0].weight",
        "layers[3].bias",
    ]


def test_sequential_indexing(getkey):
    seq = eqx.nn.Sequential(
        [
            eqx.nn.Linear(2, 3, key=getkey()),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(3, 1, key=getkey()),
        ]
    )
    assert paths("[-1].weight", seq) == ["layers[2].weight"]
    assert paths("Linear.bias", seq) == ["layers[0].bias", "layers[2].bias"]


def test_filters_see_match_properties(mlp):
    spec = """
where Linear.weight if shape[0] == shape[1] -> scale 0
"""
    out = eqxform.compile(spec).apply(mlp, key=jax.random.key(0))
    for i, layer in enumerate(out.layers):
        square = layer.weight.shape[0] == layer.weight.shape[1]
        assert bool((layer.weight == 0).all()) == square, i


def test_context_properties(mlp):
    node = [n for n in walk(mlp) if n.text == "layers[2].bias"][0]
    ctx = context(node)
    assert ctx["shape"] == (8,) and ctx["ndim"] == 1 and ctx["size"] == 8
    assert ctx["dtype"] == "float32" and ctx["index"] == 2 and ctx["path"] == "layers[2].bias"
    assert (ctx["fan_in"], ctx["fan_out"]) == (8, 8)  # the fans of its layer's weight
    weight = [n for n in walk(mlp) if n.text == "layers[0].weight"][0]
    assert (context(weight)["fan_in"], context(weight)["fan_out"]) == (2, 8)


def test_index_and_path_filters(mlp):
    out = eqxform.compile(
        'where Linear.bias if index >= 2 and path != "layers[3].bias" -> init ones'
    ).apply(mlp, key=jax.random.key(0))
    assert [bool((layer.bias == 1).all()) for layer in out.layers] == [False, False, True, False]


def test_no_match_names_nearest_paths(mlp):
    program = eqxform.compile("where layrs[-1].weight -> init zeros")
    with pytest.raises(eqxform.SpecError) as info:
        program.apply(mlp, key=jax.random.key(0))
    (d,) = info.value.diagnostics
    assert d.code == "E201"
    assert "`layrs[-1].weight` matches nothing" in d.message
    assert "layers[" in d.help
    assert d.span.line == 1 and d.span.column == 7


def test_filter_that_excludes_everything(mlp):
    program = eqxform.compile("where Linear.weight if ndim == 3 -> init zeros")
    with pytest.raises(eqxform.SpecError, match="none passes the `if` filter"):
        program.apply(mlp, key=jax.random.key(0))


def test_expect(mlp):
    eqxform.compile("where Linear.weight expect 4 -> init zeros").apply(mlp, key=jax.random.key(0))
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where Linear.weight expect 3 -> init zeros").apply(
            mlp, key=jax.random.key(0)
        )
    assert info.value.diagnostics[0].code == "E202"
    assert "matches 4 nodes, not the 3 expected" in info.value.diagnostics[0].message


def test_filter_error_is_a_diagnostic(mlp):
    with pytest.raises(eqxform.SpecError) as info:
        eqxform.compile("where Linear.bias if shape[1] == 2 -> init zeros").apply(
            mlp, key=jax.random.key(0)
        )
    d = info.value.diagnostics[0]
    assert d.code == "E204" and "out of range" in d.message and "layers[0].bias" in d.message


def test_registered_type(getkey):
    class Block(eqx.Module):
        proj: eqx.nn.Linear

        def __init__(self, key):
            self.proj = eqx.nn.Linear(3, 3, key=key)

    eqxform.register_type(Block)
    try:
        model = [Block(getkey()), eqx.nn.Linear(3, 3, key=getkey())]
        assert paths("Block.proj.weight", model) == ["[0].proj.weight"]
        with pytest.raises(eqxform.UsageError):
            eqxform.register_type(Block, name="block")
    finally:
        # The registry is the process's: a later test's did-you-mean must not see `Block`.
        _registry._TYPES.pop("Block", None)
