"""What a `map` line's layout change says when a tensor does not fit (E243's
reason, from the checkpoint's header alone), and how a model's output is
described in the training diagnostics: the texts users read, held as they are."""

import collections
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy as stn

import eqxform
from eqxform._runtime._train import describe_output


@pytest.fixture
def fc(tmp_path):
    """A torch-named `Linear(8, 4)` checkpoint: `fc.weight` is `[4, 8]`."""
    path = tmp_path / "fc.safetensors"
    rng = np.random.default_rng(0)
    ck = {"fc.weight": rng.normal(size=(4, 8)), "fc.bias": rng.normal(size=4)}
    stn.save_file({n: v.astype(np.float32) for n, v in ck.items()}, path, {"format": "pt"})
    return path


def _reasons(layout: str, path) -> list[str]:
    spec = f'map "fc.weight" -> "weight" with {layout}\nmap "fc.bias" -> "bias"\n'
    model = eqx.nn.Linear(8, 4, key=jax.random.key(0))
    found = eqxform.compile(spec).check(model, weights=path)
    assert {d.code for d in found} <= {"E243"}
    return [d.message.split(": ", 2)[-1] for d in found]


@pytest.mark.parametrize(
    "layout, reason",
    [
        ("reshape [-1, 8]", None),
        ("transpose [0, 1]", None),
        ("reshape [3, 3]", "[4, 8] cannot be reshaped into [3, 3]"),
        ("reshape [-1, 3]", "[4, 8] cannot be reshaped into [-1, 3]"),
        ("reshape [0, -1]", "[4, 8] cannot be reshaped into [0, -1]"),
        ("transpose [1, 0, 2]", "`transpose [1, 0, 2]` does not fit a tensor of shape [4, 8]"),
        # After a first change, the reason still names the tensor's own shape.
        ("transpose, reshape [5, 5]", "[4, 8] cannot be reshaped into [5, 5]"),
        (
            "reshape [2, -1, 4]",
            "the checkpoint's [4, 8] (reshape [2, -1, 4] makes it [2, 4, 4]) "
            "does not fit the model's [4, 8]",
        ),
        (
            "transpose",
            "the checkpoint's [4, 8] (transpose makes it [8, 4]) does not fit the model's [4, 8]",
        ),
    ],
)
def test_a_layout_that_does_not_fit_says_why(fc, layout, reason):
    assert _reasons(layout, fc) == ([] if reason is None else [reason])


Pair = collections.namedtuple("Pair", "logits hidden")


@dataclasses.dataclass
class Result:
    hidden: object
    logits: object


def test_a_model_output_is_described_in_one_line():
    a, b = jnp.zeros((5, 33)), jnp.zeros((2,), jnp.int32)
    assert describe_output(a) == "f32[5,33]"
    assert describe_output((a, None)) == "a tuple of 2 (f32[5,33], None)"
    assert describe_output([a, b, a, a, a]) == (
        "a list of 5 (f32[5,33], int32[2], f32[5,33], f32[5,33], ...)"
    )
    assert describe_output({"x": a, "y": (a, b)}) == (
        "a dict (x: f32[5,33], y: a tuple of 2 (f32[5,33], int32[2]))"
    )
    assert describe_output(Pair(a, b)) == "a `Pair` (logits: f32[5,33], hidden: int32[2])"
    assert describe_output(Result(a, {"z": a})) == (
        "a `Result` (hidden: f32[5,33], logits: a dict (z: f32[5,33]))"
    )
    assert describe_output(3) == "a `int`"
    assert describe_output({"a": [{"b": a}]}) == "a dict (a: a list of 1 (dict))"
