import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import numpy as np
import pytest
from safetensors.numpy import save as st_save

import eqxform
from eqxform import _recipes as _io


def leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model) if eqx.is_array(x)]


def same(a, b) -> bool:
    la, lb = leaves(a), leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb)
    )


def test_round_trip(tmp_path):
    model = eqxform.new(
        "MLP(in_size=3, out_size=2, width_size=8, depth=2, activation=gelu)", seed=1
    )
    eqxform.save(tmp_path / "m.eqx", model)
    back = eqxform.load(tmp_path / "m.eqx")
    assert same(model, back)
    assert back.activation is jax.nn.gelu
    x = np.ones(3, np.float32)
    assert np.array_equal(model(x), back(x))


def test_transformed_file_rebuilds_from_its_recipe_alone(tmp_path):
    spec = tmp_path / "s.eqx"
    spec.write_text(
        "let width = 8\nwhere layers[-1] -> replace Linear(in_features=width, out_features=5)\n"
        "where layers[0] -> cast bfloat16\nwhere activation -> replace tanh\n"
    )
    base = eqxform.new("MLP(in_size=3, out_size=2, width_size=8, depth=2)")
    out = eqxform.compile(spec).apply(base, seed=2)
    eqxform.save(tmp_path / "out.eqx", out)
    # A fresh interpreter with no user code at all.
    code = textwrap.dedent(
        f"""
        import numpy as np, jax, eqxform
        m = eqxform.load({str(tmp_path / "out.eqx")!r})
        print(m.layers[-1].weight.shape, m.layers[0].weight.dtype, m.activation is jax.nn.tanh)
        print(float(np.asarray(m(np.ones(3, np.float32))).sum()))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "(5, 8) bfloat16 True"
    assert float(lines[1]) == pytest.approx(
        float(np.asarray(out(np.ones(3, np.float32))).sum()), rel=1e-5
    )


def test_same_seed_gives_byte_identical_files(tmp_path):
    program = eqxform.compile("model MLP(2, 2, 8, 2)\nwhere Linear.weight -> init he_normal")
    eqxform.save(tmp_path / "a.eqx", program.apply(seed=3))
    eqxform.save(tmp_path / "b.eqx", program.apply(seed=3))
    eqxform.save(tmp_path / "c.eqx", program.apply(seed=4))
    a, b, c = ((tmp_path / f"{n}.eqx").read_bytes() for n in "abc")
    assert a == b and a != c


def test_recipe_is_in_the_metadata(tmp_path):
    program = eqxform.compile(
        "model MLP(2, 2, 8, 2)\nlet w = 1\nwhere Linear.weight -> scale w", params={"w": 2}
    )
    eqxform.save(tmp_path / "m.eqx", program.apply(seed=9))
    recipe = _io.read_header(tmp_path / "m.eqx").recipe
    assert recipe["base"] == {"constructor": "MLP(2, 2, 8, 2)", "seed": 9}
    assert recipe["specs"][0]["params"] == {"w": 2} and recipe["specs"][0]["seed"] == 9
    assert set(recipe["versions"]) == {"eqxform", "equinox", "jax"}


@pytest.mark.parametrize(
    "mangle,code,words",
    [
        (lambda b: b[:5], "E302", "too short"),
        (lambda b: b[:-7], "E303", "truncated"),
        (lambda b: (10**12).to_bytes(8, "little") + b[8:], "E303", "header claims"),
        (lambda b: b[:8] + b"[" + b[9:], "E302", "not JSON"),
        (lambda b: b"where x -> init zeros\n", "E303", "header claims"),
    ],
)
def test_damaged_files_give_clear_errors(tmp_path, mangle, code, words):
    model = eqxform.new("MLP(2, 2, 8, 2)")
    eqxform.save(tmp_path / "m.eqx", model)
    bad = tmp_path / "bad.eqx"
    bad.write_bytes(mangle((tmp_path / "m.eqx").read_bytes()))
    with pytest.raises(eqxform.ModelFileError) as info:
        eqxform.load(bad)
    d = info.value.diagnostics[0]
    assert d.code == code and words in d.message and d.file == str(bad)


def test_tensor_that_does_not_match_the_recipe(tmp_path):
    model = eqxform.new("MLP(2, 2, 8, 2)")
    path = tmp_path / "m.eqx"
    eqxform.save(path, model)
    meta = _io.read_header(path).metadata
    tensors = {n: np.asarray(x) for n, x in _io.named_arrays(model)}
    tensors["layers.0.weight"] = np.zeros((8, 3), np.float32)
    path.write_bytes(st_save(tensors, metadata=meta))
    with pytest.raises(eqxform.ModelFileError) as info:
        eqxform.load(path)
    assert info.value.diagnostics[0].code == "E305"
    assert "float32[8, 3]" in info.value.diagnostics[0].message


def _write_with_base(path, constructor):
    model = eqxform.new("MLP(2, 2, 8, 2)")
    tensors = {n: np.asarray(x) for n, x in _io.named_arrays(model)}
    recipe = {"base": {"constructor": constructor, "seed": 0}, "specs": []}
    path.write_bytes(st_save(tensors, metadata={"eqxform": json.dumps(recipe)}))


def test_unknown_module_is_refused_without_import(tmp_path, monkeypatch):
    pkg = tmp_path / "evilpkg"
    pkg.mkdir()
    marker = tmp_path / "imported"
    (pkg / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\ndef make(**kw): pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_with_base(tmp_path / "m.eqx", "evilpkg:make()")
    with pytest.raises(eqxform.ModelFileError) as info:
        eqxform.load(tmp_path / "m.eqx")
    d = info.value.diagnostics[0]
    assert d.code == "E306" and "evilpkg" in d.message and "--allow evilpkg" in d.help
    assert not marker.exists() and "evilpkg" not in sys.modules


def test_allowed_user_constructor(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        "import equinox as eqx\n"
        "def make(width, *, key):\n"
        "    return eqx.nn.MLP(2, 2, width, 1, key=key)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    program = eqxform.compile("model userpkg.models:make(width=5)", allow=["userpkg"])
    model = program.apply()
    eqxform.save(tmp_path / "m.eqx", model)
    with pytest.raises(eqxform.ModelFileError):
        eqxform.load(tmp_path / "m.eqx")
    back = eqxform.load(tmp_path / "m.eqx", allow=["userpkg"])
    assert same(model, back)


def test_file_without_recipe_loads_with_like(tmp_path, getkey):
    class Custom(eqx.Module):
        w: jax.Array

    model = Custom(jax.random.normal(getkey(), (3,)))
    eqxform.save(tmp_path / "m.eqx", model)
    with pytest.raises(eqxform.ModelFileError) as info:
        eqxform.load(tmp_path / "m.eqx")
    assert info.value.diagnostics[0].code == "E304"
    assert same(eqxform.load(tmp_path / "m.eqx", like=model), model)


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    model = eqxform.new("MLP(2, 2, 8, 2)")
    target = tmp_path / "m.eqx"
    target.write_bytes(b"previous contents")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.save(target, model)
    assert info.value.diagnostics[0].code == "E448" and "disk full" in str(info.value)
    assert target.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.eqx"]


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.load(tmp_path / "nope.eqx")
    assert "does not exist" in info.value.diagnostics[0].message


# ---- library and user models as self-contained files (issue 16) -------------------------

TABLENET = """
import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp

# A module-level array, as libraries keep tables of constants: created when
# the module is imported, so it must be imported outside any trace.
TABLE = jnp.arange(4.0)


class Act(NamedTuple):
    name: str
    slope: float


@dataclasses.dataclass(frozen=True)
class Config:
    width: int
    widths: tuple = (3, 5)
    act: Act = Act("leaky", 0.1)
    dtype: object = jnp.float32


class TableNet(eqx.Module):
    config: Config = eqx.field(static=True)
    linear: eqx.nn.Linear

    def __init__(self, config, *, key):
        self.config = config
        self.linear = eqx.nn.Linear(4, config.width, dtype=config.dtype, key=key)

    def __call__(self, x):
        return self.linear(x * TABLE)


def make(config, *, key):
    return TableNet(config, key=key)
"""


def _python(cwd, code: str, *args: str):
    """Python in a fresh process, in `cwd`, with only eqxform on the path: `-P`
    keeps the current directory off `sys.path`, as for the `eqxform` command."""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(eqxform.__file__))}
    return subprocess.run(
        [sys.executable, "-P", *(["-c", code] if code else []), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_config_object_is_recorded_as_a_call_and_the_file_needs_no_user_code(tmp_path):
    (tmp_path / "tablenet.py").write_text(TABLENET)
    made = _python(
        tmp_path,
        "import sys; sys.path.insert(0, '.')\n"
        "import eqxform, tablenet\n"
        "config = tablenet.Config(width=3, widths=(2, 7))\n"
        "model = eqxform.new(tablenet.TableNet, config, seed=4)\n"
        "print(eqxform.recipe_of(model).constructor)\n"
        "eqxform.save('t.eqx', model)\n"
        "import jax.numpy as jnp, numpy as np\n"
        "np.save('out.npy', np.asarray(model(jnp.linspace(-1, 1, 4))))\n",
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == (
        "tablenet:TableNet(tablenet:Config(width=3, widths=[2, 7], "
        'act=tablenet:Act(name="leaky", slope=0.1), dtype=float32))'
    )
    # A fresh process: loading imports the allowed module before the skeleton
    # is traced, so its module-level array is concrete and the model runs.
    loaded = _python(
        tmp_path,
        "import sys; sys.path.insert(0, '.')\n"
        "import eqxform, jax.numpy as jnp, numpy as np\n"
        "model = eqxform.load('t.eqx', allow=['tablenet'])\n"
        "print(model.config)\n"
        "print(np.abs(np.asarray(model(jnp.linspace(-1, 1, 4))) - np.load('out.npy')).max())\n",
    )
    assert loaded.returncode == 0, loaded.stderr
    config, diff = loaded.stdout.strip().splitlines()
    assert config.startswith("Config(width=3, widths=[2, 7], act=Act(name='leaky', slope=0.1)")
    assert float(diff) == 0.0


def test_the_command_line_finds_an_allowed_module_in_the_current_directory(tmp_path):
    (tmp_path / "factory.py").write_text(TABLENET)
    made = _python(
        tmp_path,
        "import sys; sys.path.insert(0, '.')\n"
        "import eqxform, factory\n"
        "eqxform.save('t.eqx', eqxform.new(factory.make, factory.Config(width=3)))\n",
    )
    assert made.returncode == 0, made.stderr
    (tmp_path / "spec.eqx").write_text(
        "optimizer adam(learning_rate=1e-2)\ninput f32[4]\nwhere Linear.bias -> freeze\n"
    )
    show = _python(tmp_path, "", "-m", "eqxform", "show", "t.eqx", "--allow", "factory")
    assert show.returncode == 0, show.stderr
    assert "linear.weight  float32[3, 4]" in show.stdout
    assert "base: factory:make(factory:Config(width=3, widths=[3, 5]" in show.stdout
    plan = _python(tmp_path, "", "-m", "eqxform", "plan", "spec.eqx", "t.eqx", "--allow", "factory")
    assert plan.returncode == 0, plan.stderr
    assert "freeze" in plan.stdout
    train = _python(
        tmp_path,
        "",
        "-m",
        "eqxform",
        "train",
        "spec.eqx",
        "t.eqx",
        "--allow",
        "factory",
        "--steps",
        "5",
        "-o",
        "trained.eqx",
    )
    assert train.returncode == 0, train.stderr
    assert "trained 5 steps" in train.stdout
    check = _python(
        tmp_path,
        "import sys; sys.path.insert(0, '.')\n"
        "import eqxform, jax.numpy as jnp\n"
        "m = eqxform.load('trained.eqx', allow=['factory'])\n"
        "print(eqxform.resolve(m)(jnp.ones(4)).shape)\n",
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "(3,)"
    # Not allowed, the module is not imported, and the message says how.
    refused = _python(tmp_path, "", "-m", "eqxform", "plan", "spec.eqx", "t.eqx")
    assert refused.returncode == 1
    assert "--allow factory" in refused.stderr
    # Allowed but elsewhere: the help says where a module is looked for.
    os.mkdir(tmp_path / "elsewhere")
    lost = _python(
        tmp_path / "elsewhere", "", "-m", "eqxform", "show", "../t.eqx", "--allow", "factory"
    )
    assert "cannot import constructor `factory:make`" in lost.stdout + lost.stderr
    assert "PYTHONPATH=FOLDER" in lost.stdout + lost.stderr
    assert "finds an allowed package in the current directory" in lost.stdout + lost.stderr


def test_a_python_call_a_recipe_cannot_write_is_refused(getkey):
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.new(eqx.nn.MLP, 2, 2, 8, 2, activation=lambda x: x)
    [d] = info.value.diagnostics
    assert d.code == "E451" and "a recipe cannot record" in d.message
    assert "factory function" in d.help
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.new("MLP(2, 2, 8, 2)", 3)
    assert info.value.diagnostics[0].code == "E405"
    # A registered constructor is recorded by its name.
    model = eqxform.new(eqx.nn.MLP, 2, 2, 8, 2, activation=jax.nn.gelu, seed=1)
    assert eqxform.recipe_of(model).constructor == "MLP(2, 2, 8, 2, activation=gelu)"
    assert same(model, eqxform.new("MLP(2, 2, 8, 2, activation=gelu)", seed=1))
