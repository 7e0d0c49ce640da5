"""`eqxform pick` and `eqxform.pick`: one member of an ensemble as a plain
model, whose file loads, plans and trains on its own and says where it came
from; and the ensemble's constructor from the command line (a model file's
recipe, or the spec's `model` line), on a published library model."""

import json
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import realmodels as R
from click.testing import CliRunner

import eqxform
from eqxform._cli import main

ENSEMBLE = """model MLP(in_size=3, out_size=2, width_size=16, depth=2)
seed 4
where Linear.bias -> init zeros
ensemble 4
where Linear.weight -> init he_normal
optimizer adam(learning_rate=1e-2)
"""


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def arrays(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree) if eqx.is_array(x)]


def same(a, b) -> bool:
    la, lb = arrays(a), arrays(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def code_of(info) -> str:
    return info.value.diagnostics[0].code


def show(path, *extra):
    code, out = run("show", path, "--format", "json", *extra)
    assert code == 0, out
    return json.loads(out)


@pytest.fixture
def ensemble_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("ens.eqx").write_text(ENSEMBLE)
    code, out = run("apply", "ens.eqx", "-o", "e4.eqx")
    assert code == 0, out
    return tmp_path / "e4.eqx"


def test_pick_writes_a_member_as_a_plain_model_that_loads_and_says_where_it_came_from(
    ensemble_file,
):
    code, out = run("pick", "e4.eqx", "--member", "2", "-o", "one.eqx")
    assert code == 0, out
    assert "wrote one.eqx (member 2 of 4 of e4.eqx" in out
    ensemble = eqxform.load("e4.eqx")
    one = eqxform.load("one.eqx")
    assert isinstance(one, eqx.nn.MLP)  # a plain model, no member axis
    assert same(one, ensemble.member(2))
    x = jr.normal(jr.key(0), (3,))
    np.testing.assert_array_equal(one(x), ensemble(x)[2])
    data = show("one.eqx")
    assert data["checked"] is True
    assert [t["path"] for t in data["tensors"]][0] == "layers.0.bias"  # no `model.` prefix
    assert data["recipe"]["picked"] == {"file": "e4.eqx", "member": 2, "members": 4}
    spec = data["recipe"]["specs"][0]
    assert spec["name"] == "ens.eqx"
    assert "\nensemble" not in spec["text"]
    assert "# `eqxform pick`: member 2 of 4, of `ensemble 4`" in spec["text"]
    assert "where Linear.weight -> init he_normal" in spec["text"]  # the rest as it was
    code, out = run("show", "one.eqx")
    assert code == 0 and "picked: member 2 of 4 of e4.eqx" in out
    # The recipe is the same in Python.
    assert eqxform.recipe_of(one)["picked"]["member"] == 2


def test_a_picked_member_trains_on_its_own_and_keeps_its_origin(ensemble_file):
    assert run("pick", "e4.eqx", "--member", "1", "-o", "one.eqx")[0] == 0
    Path("plain.eqx").write_text("optimizer sgd(learning_rate=0.05)\n")
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(64, 3)).astype(np.float32)
    ys = rng.normal(size=(64, 2)).astype(np.float32)
    np.savez("data.npz", x=xs, y=ys)
    code, out = run(
        "train", "plain.eqx", "one.eqx", "--data", "data.npz", "--steps", "3",
        "--batch-size", "64", "-o", "t.eqx",
    )  # fmt: skip
    assert code == 0, out
    trained = eqxform.load("t.eqx")
    assert isinstance(trained, eqx.nn.MLP)
    # Three full-batch SGD steps, written by hand from the member.
    model = eqxform.load("e4.eqx").member(1)

    def loss(m):
        return jnp.mean((jax.vmap(m)(xs) - ys) ** 2)

    for _ in range(3):
        grads = eqx.filter_grad(loss)(model)
        model = eqx.apply_updates(model, jax.tree_util.tree_map(lambda g: -0.05 * g, grads))
    for a, b in zip(arrays(trained), arrays(model)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    recipe = show("t.eqx")["recipe"]
    assert recipe["picked"]["member"] == 1 and recipe["train"]["steps"] == 3
    assert [s["name"] for s in recipe["specs"]] == ["ens.eqx", "plain.eqx"]


def test_pick_after_more_specs_on_the_ensemble_replays_them_on_the_member(ensemble_file):
    # Specs applied to the ensemble after it was made (a frozen layer, LoRA
    # adapters) are replayed on the plain member.
    Path("adapt.eqx").write_text("where layers[0] -> freeze\nwhere layers[1] -> lora(rank=2)\n")
    assert run("apply", "adapt.eqx", "e4.eqx", "-o", "adapted.eqx")[0] == 0
    code, out = run("pick", "adapted.eqx", "--member", "3", "-o", "one.eqx")
    assert code == 0, out
    ensemble = eqxform.load("adapted.eqx")
    one = eqxform.load("one.eqx")
    assert isinstance(one.layers[0].weight, eqxform.Frozen)
    assert isinstance(one.layers[1], eqxform.LoRA)
    assert same(one, ensemble.member(3))
    x = jr.normal(jr.key(2), (3,))
    np.testing.assert_allclose(eqxform.resolve(one)(x), ensemble(x)[3], atol=1e-6)
    assert [s["name"] for s in show("one.eqx")["recipe"]["specs"]] == ["ens.eqx", "adapt.eqx"]


def _trained_ensemble(path, members):
    """An ensemble file whose recipe records each member as `eqxform train
    --eval-data` does (`recipe.train["members"]`)."""
    program = eqxform.compile(ENSEMBLE)
    ensemble = program.apply()
    recipe = eqxform.recipe_of(ensemble).with_training(
        {"steps": 10, "data": "d.npz", "loss": "mse", "batch_size": 8, "members": members}
    )
    eqxform.save(path, ensemble, recipe=recipe)
    return ensemble


def _members(eval_losses):
    return [
        {"member": i, "values": {"lr": 1e-3 * 2**i}, "loss": 0.5 + i, "eval_loss": e}
        for i, e in enumerate(eval_losses)
    ]


def test_pick_best_takes_the_lowest_recorded_held_out_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ensemble = _trained_ensemble("sweep.eqx", _members([0.9, 0.4, 0.2, 0.7]))
    code, out = run("pick", "sweep.eqx", "--best", "-o", "best.eqx")
    assert code == 0, out
    assert "member 2 of 4, the lowest held-out loss (0.2)" in out
    assert "lr=0.004; loss 2.5, held-out loss 0.2" in out
    best = eqxform.load("best.eqx")
    assert same(best, ensemble.member(2))
    recipe = show("best.eqx")["recipe"]
    assert recipe["picked"] == {
        "file": "sweep.eqx",
        "member": 2,
        "members": 4,
        "values": {"lr": 0.004},
        "loss": 2.5,
        "eval_loss": 0.2,
    }
    # How the member was trained stays; the record of every member does not.
    assert recipe["train"] == {"steps": 10, "data": "d.npz", "loss": "mse", "batch_size": 8}
    code, out = run("show", "best.eqx")
    assert "picked: member 2 of 4 of sweep.eqx (lr=0.004; loss 2.5, held-out loss 0.2)" in out
    # The Python API picks the same member, from the file or the loaded model.
    assert same(eqxform.pick("sweep.eqx", best=True), best)
    assert same(eqxform.pick(eqxform.load("sweep.eqx"), best=True), best)
    # A member without a recorded held-out loss is not the best; ties go to the first.
    _trained_ensemble("partial.eqx", _members([None, 0.3, 0.3, None]))
    code, out = run("pick", "partial.eqx", "--best", "-o", "p.eqx")
    assert code == 0 and "member 1 of 4" in out and "of the 2 members with one recorded" in out


@pytest.mark.parametrize(
    "args, code, exit_code",
    [
        (["e4.eqx"], "E482", 2),
        (["e4.eqx", "--member", "1", "--best"], "E482", 2),
        (["e4.eqx", "--member", "4"], "E481", 2),
        (["e4.eqx", "--best"], "E483", 2),
        (["plain.eqx", "--member", "0"], "E480", 1),
        (["adapters.eqx", "--member", "0"], "E484", 1),
        (["edited.eqx", "--member", "0"], "E485", 1),
    ],
)
def test_pick_refuses_with_a_code_and_writes_nothing(ensemble_file, args, code, exit_code):
    if args[0] == "plain.eqx":
        assert (
            run("new", "MLP(in_size=2, out_size=2, width_size=4, depth=1)", "-o", "plain.eqx")[0]
            == 0
        )
    if args[0] == "adapters.eqx":
        Path("lora.eqx").write_text("where ** -> freeze\nwhere layers[0] -> lora(rank=2)\n")
        assert run("apply", "lora.eqx", "e4.eqx", "-o", "adapters.eqx", "--adapters-only")[0] == 0
    if args[0] == "edited.eqx":
        _trained_ensemble("edited.eqx", _members([0.1, 0.2, 0.3]))  # 3 records, 4 members
    status, out = run("pick", *args, "-o", "out.eqx")
    assert status == exit_code, out
    assert f"error[{code}]" in out
    assert not Path("out.eqx").exists()
    # Every code explains itself.
    assert run("explain", code)[0] == 0


def test_pick_never_writes_over_its_input(ensemble_file):
    before = Path("e4.eqx").read_bytes()
    code, out = run("pick", "e4.eqx", "--member", "0", "-o", "e4.eqx")
    assert code == 2 and "error[E440]" in out
    assert Path("e4.eqx").read_bytes() == before
    Path("link.eqx").symlink_to("e4.eqx")
    code, out = run("pick", "e4.eqx", "--member", "0", "-o", "link.eqx")
    assert code == 2 and "error[E440]" in out
    assert Path("e4.eqx").read_bytes() == before


def test_pick_in_python_takes_a_member_with_its_recipe(tmp_path):
    ensemble = eqxform.compile(ENSEMBLE).apply()
    one = eqxform.pick(ensemble, 3)
    assert isinstance(one, eqx.nn.MLP) and same(one, ensemble.member(3))
    assert eqxform.recipe_of(one)["picked"] == {"member": 3, "members": 4}
    eqxform.save(tmp_path / "one.eqx", one)
    assert same(eqxform.load(tmp_path / "one.eqx"), one)
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.pick(ensemble.member(0), 0)
    assert code_of(info) == "E480"
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.pick(ensemble, -1)
    assert code_of(info) == "E481"
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.pick(ensemble)
    assert code_of(info) == "E482"
    # An ensemble of a Python constructor has no recipe: the member as it is.
    made = eqxform.compile("ensemble 2").apply(lambda key: eqx.nn.MLP(2, 2, 4, 1, key=key))
    assert same(eqxform.pick(made, 1), made.member(1))


def test_pick_of_a_stateful_ensemble_takes_the_members_state(tmp_path):
    eqxform.register_constructor("TinyResNet", R.make_tiny_resnet)
    ensemble, state = eqxform.compile("model TinyResNet(width=4, depth=2)\nensemble 3").apply()
    eqxform.save(tmp_path / "res.eqx", (ensemble, state))
    model, member_state = eqxform.pick(str(tmp_path / "res.eqx"), 1)
    assert isinstance(model, R.TinyResNet)
    x = jr.normal(jr.key(9), (4, 3, 8, 8))
    want, want_state = R.call_with_state(
        ensemble.member(1), x, jax.tree_util.tree_map(lambda a: a[1], state)
    )
    got, got_state = R.call_with_state(model, x, member_state)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert same(got_state, want_state)
    eqxform.save(tmp_path / "one.eqx", (model, member_state))
    loaded, loaded_state = eqxform.load(tmp_path / "one.eqx")
    assert same(loaded, model) and same(loaded_state, member_state)


def test_a_spec_name_survives_loading_and_saving_again(ensemble_file):
    ensemble = eqxform.load("e4.eqx")
    eqxform.save("again.eqx", ensemble)
    assert [s["name"] for s in show("again.eqx")["recipe"]["specs"]] == ["ens.eqx"]


# ---- the ensemble's constructor from the command line (issue 16) ---------------------

VIT = (
    "equimo.models.vit:VisionTransformer(img_size=16, in_channels=3, dim=32, patch_size=8, "
    "num_heads=2, depths=[1], num_classes=5)"
)


@pytest.fixture
def vit_file(tmp_path, monkeypatch):
    em = pytest.importorskip("equimo.models")
    monkeypatch.chdir(tmp_path)
    model = eqxform.new(
        em.VisionTransformer,
        img_size=16,
        in_channels=3,
        dim=32,
        patch_size=8,
        num_heads=2,
        depths=[1],
        num_classes=5,
    )
    eqxform.save("vit.eqx", model)
    Path("ens.eqx").write_text("ensemble 3\n")
    return model


def test_the_cli_draws_an_ensemble_of_a_library_file_with_its_recipes_constructor(vit_file):
    # `plan` and `check` of the file say what `apply` does: every array drawn
    # by the library's constructor, none left a copy (no W201).
    code, text = run("plan", "ens.eqx", "vit.eqx", "--allow", "equimo")
    assert code == 0 and "W201" not in text
    assert "drawn per member by the model's constructor" in text
    assert "from its own values" not in text and "copied" not in text
    code, text = run("check", "ens.eqx", "vit.eqx", "--allow", "equimo")
    assert code == 0 and "W201" not in text
    code, text = run("apply", "ens.eqx", "vit.eqx", "--allow", "equimo", "-o", "e3.eqx")
    assert code == 0 and "W201" not in text, text
    ens = eqxform.load("e3.eqx", allow=["equimo"])
    # The same members as the Python API's ensemble of the loaded model.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = eqxform.compile(Path("ens.eqx")).apply(eqxform.load("vit.eqx", allow=["equimo"]))
    assert same(ens, want)
    # The library's own draws: its class and register tokens differ per member
    # (a redraw without the constructor keeps them copies), its distribution kept.
    em = pytest.importorskip("equimo.models")
    cls = np.asarray(ens.model.cls_token)
    assert not np.array_equal(cls[0], cls[1]) and not np.array_equal(cls[1], cls[2])
    hand = eqx.filter_vmap(
        lambda k: em.VisionTransformer(
            img_size=16, in_channels=3, dim=32, patch_size=8, num_heads=2, depths=[1],
            num_classes=5, key=k,
        )
    )(jr.split(jr.key(5), 3))  # fmt: skip
    for a, b in zip(arrays(ens.model), arrays(hand)):
        assert a.shape == b.shape
        if a[0].size >= 1024:  # enough numbers for their spread to say something
            assert np.std(a) == pytest.approx(float(np.std(b)), rel=0.2)


def test_the_cli_draws_an_ensemble_with_the_model_lines_library_constructor(tmp_path, monkeypatch):
    pytest.importorskip("equimo.models")
    monkeypatch.chdir(tmp_path)
    Path("ens.eqx").write_text(f"model {VIT}\nensemble 3\n")
    code, text = run("plan", "ens.eqx", "--allow", "equimo")
    assert code == 0 and "W201" not in text
    assert "drawn per member by the model's constructor" in text
    code, text = run("apply", "ens.eqx", "--allow", "equimo", "-o", "e3.eqx")
    assert code == 0 and "W201" not in text, text
    ens = eqxform.load("e3.eqx", allow=["equimo"])
    cls = np.asarray(ens.model.cls_token)
    assert not np.array_equal(cls[0], cls[1])
    # And a member of it, picked, is the library's model on its own.
    code, out = run("pick", "e3.eqx", "--member", "1", "--allow", "equimo", "-o", "one.eqx")
    assert code == 0, out
    one = eqxform.load("one.eqx", allow=["equimo"])
    assert type(one).__name__ == "VisionTransformer" and same(one, ens.member(1))
    x = jr.normal(jr.key(1), (3, 16, 16))
    np.testing.assert_allclose(
        one(x, key=jr.key(0), inference=True),
        ens(x, key=jr.key(0), inference=True)[1],
        atol=1e-5,
    )


# ---- sweeps: the member's hyper-parameters become its spec's `let`s ----------------

SWEEP = """model MLP(in_size=3, out_size=2, width_size=16, depth=2)
seed 3
ensemble 4 vary lr=logspace(1e-4, 1e-2), s=0.5 * (member + 1), seed
where Linear.weight -> init normal(stddev=s)
optimizer adam(learning_rate=lr)
"""


def _task(path, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = np.stack([2 * x[:, 0], x[:, 1] - x[:, 2]], 1).astype(np.float32)
    np.savez(path, x=x, y=y)


def test_pick_best_of_a_trained_sweep_writes_that_member_with_its_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("sweep.eqx").write_text(SWEEP)
    _task("train.npz", 64, 0)
    _task("held.npz", 32, 1)
    code, out = run(
        "train", "sweep.eqx", "--data", "train.npz", "--eval-data", "held.npz",
        "--steps", "5", "-o", "swept.eqx",
    )  # fmt: skip
    assert code == 0, out
    members = show("swept.eqx")["recipe"]["train"]["members"]
    best = int(np.argmin([m["eval_loss"] for m in members]))
    code, out = run("pick", "swept.eqx", "--best", "-o", "best.eqx")
    assert code == 0, out
    assert f"member {best} of 4, the lowest held-out loss" in out
    ensemble = eqxform.load("swept.eqx")
    one = eqxform.load("best.eqx")
    assert isinstance(one, eqx.nn.MLP) and same(one, ensemble.member(best))
    recipe = show("best.eqx")["recipe"]
    assert recipe["picked"] == {
        "file": "swept.eqx",
        "member": best,
        "members": 4,
        "values": members[best]["values"],
        "loss": members[best]["loss"],
        "eval_loss": members[best]["eval_loss"],
    }
    assert members[best]["values"]["seed"] == 3 + best  # `vary seed`: the spec's seed + k
    # The spec reads as it did for that member: its varied names are `let`s of
    # its values (exactly), the seed its own, the line kept as a comment.
    spec = recipe["specs"][0]
    assert spec["seed"] == 3 + best
    assert "\nensemble" not in spec["text"]
    assert "# `eqxform pick`: member" in spec["text"] and "vary lr=logspace" in spec["text"]
    program = eqxform.compile(spec["text"])
    assert program.env["lr"] == members[best]["values"]["lr"]
    assert program.env["s"] == members[best]["values"]["s"] == 0.5 * (best + 1)
    assert program.optimizer[1]["learning_rate"] == members[best]["values"]["lr"]
    # It trains on its own with a spec without `ensemble`.
    Path("plain.eqx").write_text("optimizer adam(learning_rate=1e-3)\n")
    code, out = run(
        "train", "plain.eqx", "best.eqx", "--data", "train.npz", "--steps", "2", "-o", "t.eqx"
    )
    assert code == 0, out
    assert show("t.eqx")["recipe"]["picked"]["member"] == best


def test_pick_of_an_applied_sweep_records_the_values_its_line_gives(tmp_path):
    ensemble = eqxform.compile(SWEEP).apply()
    one = eqxform.pick(ensemble, 1)
    picked = eqxform.recipe_of(one)["picked"]
    assert picked["values"] == {"lr": pytest.approx(1e-4 * 10 ** (2 / 3)), "s": 1.0, "seed": 4}
    assert "loss" not in picked  # not trained: no losses to record
    # Its recipe's spec, applied with its recipe seed, builds the member again.
    step = eqxform.recipe_of(one)["specs"][0]
    rebuilt = eqxform.compile(step["text"]).apply(seed=step["seed"])
    assert same(rebuilt, ensemble.member(1))
    assert same(one, ensemble.member(1))
    eqxform.save(tmp_path / "one.eqx", one)
    assert same(eqxform.load(tmp_path / "one.eqx"), one)


def test_pick_of_a_sweep_whose_varied_names_are_read_before_its_ensemble_line(tmp_path):
    # A varied name is bound for the whole spec, so a line above `ensemble`
    # may read it; the member's spec binds it before that line too.
    spec = (
        "model MLP(in_size=3, out_size=2, width_size=16, depth=2)\nseed 3\n"
        "optimizer adam(learning_rate=lr)\n"
        "where Linear.weight -> init normal(stddev=s)\n"
        "ensemble 3 vary lr=logspace(1e-3, 1e-1), s=[0.1, 0.2, 0.3]\n"
    )
    ensemble = eqxform.compile(spec).apply()
    one = eqxform.pick(ensemble, 2)
    assert same(one, ensemble.member(2))
    step = eqxform.recipe_of(one)["specs"][0]
    program = eqxform.compile(step["text"])
    assert program.optimizer[1]["learning_rate"] == 1e-1
    assert same(program.apply(seed=step["seed"]), ensemble.member(2))
    eqxform.save(tmp_path / "one.eqx", one)
    assert same(eqxform.load(tmp_path / "one.eqx"), ensemble.member(2))


def test_a_pairs_recipe_is_told_from_others_of_its_structure_by_its_arrays(tmp_path):
    # `(model, state)` pairs take no weak reference; with other recipes filed
    # under the same structure (other seeds and rules, earlier in the process),
    # the pair's own is still found by the arrays it shares, and saving it
    # needs no `recipe=` (it was E590 where other tests had run before).
    eqxform.register_constructor("TinyResNet", R.make_tiny_resnet)
    others = [
        eqxform.compile(f"seed {s}\nmodel TinyResNet(width=4, depth=2)\n{line}").apply()
        for s in range(2)
        for line in ("where Conv2d.weight -> scale 3", "ensemble 3")
    ]
    ensemble, state = eqxform.compile("model TinyResNet(width=4, depth=2)\nensemble 3").apply()
    eqxform.save(tmp_path / "res.eqx", (ensemble, state))
    back, back_state = eqxform.load(tmp_path / "res.eqx")
    assert same(back, ensemble) and same(back_state, state)
    model, member_state = eqxform.pick(str(tmp_path / "res.eqx"), 1)
    eqxform.save(tmp_path / "one.eqx", (model, member_state))
    loaded, loaded_state = eqxform.load(tmp_path / "one.eqx")
    assert same(loaded, model) and same(loaded_state, member_state)
    assert len(others) == 4  # alive while the pair is saved
