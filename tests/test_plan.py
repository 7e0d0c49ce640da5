"""What `plan` and the commands around it tell a user: the trainable count of
every floating dtype, what each step counts, the layout at any terminal
width, the per-device section on a mesh, and what `show` and `apply` say."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import realmodels as R
from click.testing import CliRunner

import eqxform
from eqxform._cli import _print_plan, main

ROOT = Path(__file__).parent.parent


def run(*args, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)
    return result.exit_code, result.output


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- 7: trainable and frozen counts, whatever the floating dtype ---------------------


def test_mixed_precision_spec_counts_its_bfloat16_weights_as_trainable():
    plan = eqxform.compile(ROOT / "specs" / "mixed_precision.eqx").plan()
    assert (plan.params_after, plan.trainable, plan.frozen) == (51_720, 51_720, 0)


def updated_by_the_optimizer(program, model) -> int:
    """How many parameters one step of the spec's optimiser changes, with a
    gradient of ones everywhere: what training really updates."""
    params = eqx.filter(model, eqx.is_inexact_array)
    opt = eqxform.optimizer(program, model)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    return sum(
        int(np.count_nonzero(np.asarray(u, np.float32))) for u in jax.tree_util.tree_leaves(updates)
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_trainable_counts_every_floating_dtype_and_frozen_stays_right(dtype):
    text = (
        "model MLP(in_size=8, out_size=4, width_size=16, depth=2)\n"
        "optimizer sgd(learning_rate=1.0)\n"
        f"where layers[1] | layers[2] -> cast {dtype}\n"
        "where layers[0] | layers[2].bias -> freeze\n"
    )
    program = eqxform.compile(text)
    plan = program.plan()
    sizes = {"layers[0]": 8 * 16 + 16, "layers[1]": 16 * 16 + 16, "layers[2]": 16 * 4 + 4}
    frozen = sizes["layers[0]"] + 4
    assert plan.frozen == frozen
    assert plan.trainable == sum(sizes.values()) - frozen
    assert plan.trainable + plan.frozen == plan.params_after
    # The count is what training updates, and those are the cast arrays too.
    model = program.apply()
    assert model.layers[1].weight.dtype == jnp.dtype(dtype)
    assert updated_by_the_optimizer(program, model) == plan.trainable


def test_a_scale_beyond_bfloat16s_range_is_refused_as_for_float32():
    # bfloat16 is floating too: `scale 1e300` would make its arrays infinite.
    text = (
        "model MLP(in_size=2, out_size=2, width_size=8, depth=1)\n"
        "where layers[0] -> cast bfloat16, scale 1e300\n"
    )
    (d,) = eqxform.compile(text).check()
    assert d.code == "E153" and "bfloat16" in d.message and d.span.line == 2


# ---- 10: a step counts what its action acts on ------------------------------------------

MLP = "model MLP(in_size=2, out_size=2, width_size=8, depth=2)\n"
ARRAYS = [f"layers[{i}].{f}" for i in range(3) for f in ("weight", "bias")]


def test_freeze_everything_counts_the_arrays_not_the_root_tuples_or_functions(cwd):
    plan = eqxform.compile(MLP + "where ** -> freeze\n").plan()
    (step,) = plan.steps
    assert (step.count, step.unit, step.counted) == (6, "array", "6 arrays")
    assert [m.path for m in step.matches] == ARRAYS
    assert step.matches[0].after == "Frozen(f32[8,2])"
    Path("spec.eqx").write_text(MLP + "where ** -> freeze\n")
    code, out = run("check", "spec.eqx")
    assert code == 0 and "  line 2    freeze  6 arrays\n" in out
    code, out = run("plan", "spec.eqx", env={"COLUMNS": "200"})
    assert code == 0 and "6 arrays" in out
    for word in ("<root>", "tuple", "relu", "<lambda>", "activation"):
        assert word not in out
    data = json.loads(run("plan", "spec.eqx", "--format", "json")[1])
    assert (data["steps"][0]["count"], data["steps"][0]["unit"]) == (6, "array")


def test_each_action_counts_its_own_kind_of_target():
    text = (
        MLP
        + "where layers[0] -> scale 2\n"  # the module's two arrays
        + "where activation -> replace gelu\n"  # one function
        + "where layers[1] -> lora(rank=2)\n"  # one module gets an adapter
        + "where layers[2] -> replace Linear(in_features=8, out_features=3)\n"
    )
    counted = [(s.action, s.counted) for s in eqxform.compile(text).plan().steps]
    assert counted == [
        ("scale 2", "2 arrays"),
        ("replace gelu", "1 function"),
        ("lora(rank=2)", "1 module"),
        ("replace Linear(in_features=8, out_features=3)", "1 module"),
    ]


# ---- 9: the layout at any width -----------------------------------------------------------

VIT_SPEC = (
    "where **.weight if ndim == 2 -> init trunc_normal(stddev=1/sqrt(fan_in), lower=-2, upper=2)\n"
    "where blocks[*].attn.qkv | blocks[*].attn.proj -> lora(rank=2)\n"
    "where blocks[*].fc1 -> cast bfloat16\n"
)


@pytest.fixture(scope="module")
def vit_plan():
    model = R.TinyViT(dim=16, depth=2, num_heads=2, key=jax.random.key(0))
    plan = eqxform.compile(VIT_SPEC).plan(model)
    assert plan.errors == ()
    return plan


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_plan_never_cuts_a_path_and_fits_the_width(vit_plan, width, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    _print_plan(vit_plan, "table")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    assert "…" not in out
    paths = [m.path for s in vit_plan.steps for m in s.matches]
    assert "blocks[1].attn.proj.weight" in paths and "blocks[0].attn.qkv" in paths
    for path in paths:
        # Whole, as a word of its own line (a table cell or a line of the text).
        assert re.search(rf"(^|[\s│]){re.escape(path)}($|[\s│])", out, re.M), path
    # An action's text is whole on one line, or on two at the narrowest.
    for step in vit_plan.steps:
        words = [" ".join(line.strip(" │").split()) for line in lines]
        one = any(step.action in w for w in words)
        two = any(step.action in f"{a} {b}" for a, b in zip(words, words[1:]))
        assert one or (width <= 60 and two), (width, step.action)
    if width >= 200:
        assert lines[0].startswith("┏")  # wide enough: the table
    else:
        assert "  lora(rank=2): 4 modules, +" in out  # too narrow: the text layout


def test_the_text_layout_is_str_of_the_plan(vit_plan):
    # Without a width, `Plan.lines` is `str(plan)`: one line per path, aligned.
    assert str(vit_plan) == "\n".join(vit_plan.lines())
    assert "    blocks[0].fc1.weight  f32[32,16] -> bf16[32,16]" in str(vit_plan)


# ---- 8: the per-device section on a mesh of 8 simulated devices -----------------------


def test_per_device_section_prints_real_lines_on_eight_devices(tmp_path):
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        PYTHONPATH=str(ROOT),
        COLUMNS="60",
    )
    code = (
        "import sys, jax\n"
        "assert len(jax.devices()) == 8\n"
        "from eqxform._cli import main\n"
        "main(sys.argv[1:])\n"
    )
    outputs = {}
    for width in ("60", "200"):
        env["COLUMNS"] = width
        done = subprocess.run(
            [sys.executable, "-c", code, "plan", str(ROOT / "specs" / "shard_mlp.eqx")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        outputs[width] = done.stdout
    for width, out in outputs.items():
        assert "\\x0a" not in out and "\\n" not in out
        lines = out.splitlines()
        assert "mesh data=2 model=4 (8 devices):" in lines
        assert any(line.startswith("  per device: ") for line in lines)
        assert all(len(line) <= int(width) for line in lines), width
        for i in range(3):
            assert f"    layers[{i}].weight" in out
    wide = outputs["200"].splitlines()
    row = next(line for line in wide if line.startswith("    layers[1].weight"))
    assert row.split()[1:4] == ["f32[256,256]", "(model,", "none)"]
    assert row.endswith("64.0 KiB/device  line 5")
    narrow = outputs["60"].splitlines()
    at = narrow.index("    layers[1].weight")
    assert narrow[at + 1].split() == "f32[256,256] (model, none) 64.0 KiB/device line 5".split()


# ---- 10: `show` of an adapter file, and what `apply` says it applied ------------------


def test_show_of_an_adapter_file_says_how_to_load_it(cwd):
    code, out = run("apply", ROOT / "specs" / "lora.eqx", "--adapters-only", "-o", "adapters.eqx")
    assert code == 0, out
    code, out = run("show", "adapters.eqx")
    assert code == 0, out
    assert "like=" not in out
    assert 'eqxform.load("adapters.eqx", base=model)' in out
    assert "eqxform merge adapters.eqx BASE.eqx -o merged.eqx" in out
    assert "adapters: 12 tensors for the base model of fingerprint " in out
    assert "spec 1: lora.eqx  (seed 0)" in out
    data = json.loads(run("show", "adapters.eqx", "--format", "json")[1])
    assert data["adapters"]["specs"][0]["name"] == "lora.eqx"
    # What it says works: the adapters load onto their base, and merge.
    base = eqxform.compile(ROOT / "specs" / "lora.eqx").build_model()
    adapted = eqxform.load("adapters.eqx", base=base)
    eqxform.save("base.eqx", base)
    code, out = run("merge", "adapters.eqx", "base.eqx", "-o", "merged.eqx")
    assert code == 0, out
    merged = eqxform.load("merged.eqx")
    x = jnp.linspace(-1, 1, 16)
    np.testing.assert_allclose(merged(x), eqxform.resolve(adapted)(x), atol=1e-5)


@pytest.mark.parametrize(
    "text, applied",
    [
        ("model MLPChain(size=4, count=3)\nstack mlps scan\n", "1 `stack` line applied"),
        (
            "model MLP(in_size=2, out_size=2, width_size=8, depth=1)\n"
            "where Linear.bias -> init zeros\nensemble 2\n",
            "1 rule and 1 `ensemble` line applied",
        ),
        ("model MLP(in_size=2, out_size=2, width_size=8, depth=1)\nseed 3\n", "0 rules applied"),
    ],
)
def test_apply_counts_its_structural_lines_beside_its_rules(cwd, text, applied):
    Path("spec.eqx").write_text(text)
    code, out = run("apply", "spec.eqx", "-o", "out.eqx")
    assert code == 0, out
    assert f", {applied})" in out


def test_plan_of_a_frozen_model_agrees_with_trainable_leaves():
    # `trainable + frozen` is every floating-point parameter, stacked too.
    text = "model MLPChain(size=4, count=3)\nstack mlps scan\nwhere mlps[0:2] -> freeze\n"
    plan = eqxform.compile(text).plan()
    per_layer = plan.params_after // 3
    assert (plan.frozen, plan.trainable) == (2 * per_layer, per_layer)


# ---- the incremental planner ---------------------------------------------------

PLANNED_MODEL = "model MLP(in_size=4, out_size=4, width_size=8, depth=7)\nlet s = 0.5\n"


def _planned_rules(edit: int | None = None, stddev: str = "s") -> str:
    rules = [f"where layers[{i}].weight -> init normal(stddev={stddev})" for i in range(8)]
    if edit is not None:
        rules[edit] = f"where layers[{edit}].bias -> init zeros"
    return PLANNED_MODEL + "\n".join(rules) + "\n"


@pytest.mark.parametrize("k", [0, 3, 7])
def test_an_edit_of_rule_k_replans_rule_k_and_the_rules_below_only(k):
    planner = eqxform.Planner()
    first = eqxform.compile(_planned_rules()).plan(planner=planner)
    assert planner.replanned == 8 and len(first.steps) == 8
    again = eqxform.compile(_planned_rules()).plan(planner=planner)
    assert planner.replanned == 0
    assert again.steps == first.steps and again.diagnostics == first.diagnostics
    edited = eqxform.compile(_planned_rules(edit=k))
    plan = edited.plan(planner=planner)
    assert planner.replanned == 8 - k
    # What is reused is what a plan from scratch computes.
    fresh = edited.plan()
    assert plan.steps == fresh.steps and plan.diagnostics == fresh.diagnostics
    assert plan.steps[k].matches[0].path == f"layers[{k}].bias"
    assert [s.line for s in plan.steps] == list(range(3, 11))


def test_the_planner_replans_everything_when_what_is_above_the_rules_changes(getkey):
    planner = eqxform.Planner()
    eqxform.compile(_planned_rules()).plan(planner=planner)
    # A `let` the rules read.
    eqxform.compile(_planned_rules().replace("let s = 0.5", "let s = 0.25")).plan(planner=planner)
    assert planner.replanned == 8
    # A model given in place of the `model` line, then another model object.
    program = eqxform.compile(_planned_rules())
    model = eqx.nn.MLP(4, 4, 8, 7, key=getkey())
    program.plan(model, planner=planner)
    assert planner.replanned == 8
    program.plan(model, planner=planner)
    assert planner.replanned == 0
    program.plan(eqx.nn.MLP(4, 4, 8, 7, key=getkey()), planner=planner)
    assert planner.replanned == 8
    # An error in rule k is the plan's from scratch, and is kept with its line.
    broken = eqxform.compile(_planned_rules().replace("layers[5].weight", "layers[9].weight"))
    plan = broken.plan(model, planner=planner)
    assert [(d.code, d.span.line) for d in plan.errors] == [("E201", 8)]
    assert planner.replanned == 8
    again = broken.plan(model, planner=planner)
    assert planner.replanned == 0 and again.diagnostics == plan.diagnostics


def test_a_stack_of_list_items_shows_the_later_items_stacked_into_the_first():
    # layers[2] and layers[3] go into the stack at layers[1]; the last layer
    # (another shape) now stands at layers[2], which must not be shown as what
    # became of the old layers[2].
    model = eqx.nn.MLP(8, 3, 8, depth=4, key=jax.random.key(0))
    (step,) = eqxform.compile("stack layers[1:4] scan").plan(model).steps
    rows = [(m.path, m.before, m.after) for m in step.matches]
    assert rows == [
        # Three layers: a scan that short runs unrolled, and the plan says so.
        ("layers[1]", "Linear (72 params)", "Stacked (216 params, scan unrolled)"),
        ("layers[2]", "Linear (72 params)", "(stacked into layers[1])"),
        ("layers[3]", "Linear (72 params)", "(stacked into layers[1])"),
    ]
