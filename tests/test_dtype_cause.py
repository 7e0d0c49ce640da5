"""E213: a forward pass that fails because a `cast` gave a dtype that a function
inside the model rejects (`jnp.fft.rfftn` takes float32 or float64, not
bfloat16). The diagnostic stands at the cast, names the function and the
module that called it, notes an `input` line that declares the narrow dtype,
and its help is a fix that was tried; on pdequinox's `ClassicFNO` and on a
library-free model whose filter calls `jnp.fft.rfft` on its own weight.
"""

import os
import subprocess
import sys
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqxform

ROOT = os.path.dirname(os.path.dirname(eqxform.__file__))

# A model as a user module, so that the shell can load it from a file too: a
# long convolution computed in Fourier space from a kernel the model holds.
FFTNET = """
import equinox as eqx
import jax
import jax.numpy as jnp


class SpectralFilter(eqx.Module):
    kernel: jax.Array

    def __init__(self, size, *, key):
        self.kernel = jax.random.normal(key, (size,)) / size

    def __call__(self, x):
        n = x.shape[-1]
        return jnp.fft.irfft(jnp.fft.rfft(x) * jnp.fft.rfft(self.kernel), n=n)


class FFTNet(eqx.Module):
    inp: eqx.nn.Linear
    filt: SpectralFilter
    out: eqx.nn.Linear

    def __init__(self, size, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.inp = eqx.nn.Linear(size, size, key=k1)
        self.filt = SpectralFilter(size, key=k2)
        self.out = eqx.nn.Linear(size, 2, key=k3)

    def __call__(self, x):
        return self.out(self.filt(jax.nn.gelu(self.inp(x))))


class Spectrum(eqx.Module):
    # No arrays: the magnitudes of its input's Fourier transform.

    def __call__(self, x):
        return jnp.abs(jnp.fft.rfft(x))


class SpectrumNet(eqx.Module):
    inp: eqx.nn.Linear
    spectrum: Spectrum
    out: eqx.nn.Linear

    def __init__(self, size, *, key):
        k1, k2 = jax.random.split(key)
        self.inp = eqx.nn.Linear(size, size, key=k1)
        self.spectrum = Spectrum()
        self.out = eqx.nn.Linear(size // 2 + 1, 2, key=k2)

    def __call__(self, x):
        return self.out(self.spectrum(self.inp(x)))
"""

fftnet = types.ModuleType("fftnet")
exec(FFTNET, fftnet.__dict__)

FIELD = jr.normal(jr.key(2), (2, 16))


@pytest.fixture(scope="module")
def fno():
    arch = pytest.importorskip("pdequinox.arch")
    return arch.ClassicFNO(1, 2, 2, hidden_channels=4, num_modes=3, num_blocks=2, key=jr.key(0))


def refused(spec, model):
    """The one error of `spec` on `model`, the same from `plan` and `apply`."""
    program = eqxform.compile(spec)
    [d] = [d for d in program.plan(model).diagnostics if d.severity == "error"]
    with pytest.raises(eqxform.SpecError) as info:
        program.apply(model, key=jr.key(1))
    assert [e.render() for e in info.value.diagnostics] == [d.render()]
    return d


def bf16_except(model, kind=None):
    """The hand-written cast: every floating array in bfloat16, but those of
    the `kind` modules, which stay in float32."""
    to_bf16 = lambda t: jax.tree_util.tree_map(  # noqa: E731
        lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a, t
    )
    model = to_bf16(model)
    if kind is None:
        return model
    is_kind = lambda x: isinstance(x, kind)  # noqa: E731
    return jax.tree_util.tree_map(
        lambda x: jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), x) if is_kind(x) else x,
        model,
        is_leaf=is_kind,
    )


# ---- pdequinox's ClassicFNO: its Fourier layers transform their input ---------------


def test_fno_bf16_input_and_cast_is_refused_at_the_cast_naming_rfftn(fno):
    d = refused("input bf16[2,16]\nwhere ** -> cast bfloat16\n", fno)
    assert d.code == "E213" and d.span.line == 2
    assert d.message == (
        "after this rule `jnp.fft.rfftn` in `SpectralConv` (`blocks[0].spectral_conv`) does not "
        "accept bfloat16: RFFT input must be float32 or float64, got bfloat16"
    )
    assert d.notes == ("line 1, `input bf16[2,16]`, gives the model bfloat16 arrays too",)
    # The Fourier layer gets its input from the bfloat16 layers before it, so
    # keeping it in float32 is not enough, and the help says so.
    assert d.help.startswith("`where SpectralConv -> cast float32` below this rule is not enough")
    assert "keep the layers that feed `SpectralConv` in float32 too" in d.help
    kept = "input bf16[2,16]\nwhere ** -> cast bfloat16\nwhere SpectralConv -> cast float32\n"
    assert refused(kept, fno).code == "E213"
    # Before this diagnostic, it was E212 at the `input` line, about a convolution.
    assert "E212" not in d.render() and "conv_general_dilated" not in d.render()


def test_fno_f32_input_and_cast_names_rfftn_and_notes_what_fails_first(fno):
    d = refused("input f32[2,16]\nwhere ** -> cast bfloat16\n", fno)
    assert d.code == "E213" and d.span.line == 2
    assert "`jnp.fft.rfftn` in `SpectralConv`" in d.message
    # E207's help (declare the input in bfloat16) would lead to the error above.
    assert "input bf16" not in d.help
    [note] = d.notes
    assert note.startswith("with the input as declared, the model fails before that, at ")
    assert "(`lifting`)" in note and "got float32, bfloat16" in note
    # The model runs in float32, as the help's last resort says.
    assert eqxform.compile("input f32[2,16]\n").apply(fno)(FIELD).shape == (2, 16)


def test_fno_stacked_blocks_name_the_module_without_a_path(fno):
    d = refused("input bf16[2,16]\nstack blocks scan\nwhere ** -> cast bfloat16\n", fno)
    assert d.code == "E213" and d.span.line == 3
    # Inside the scan, the layer is no object of the model's tree.
    assert "after this rule `jnp.fft.rfftn` in `SpectralConv` does not accept bfloat16" in (
        d.message
    )


def test_fno_from_the_shell_exit_1_and_no_output_file(fno, tmp_path):
    eqxform.save(
        tmp_path / "fno.eqx",
        eqxform.new(type(fno), 1, 2, 2, hidden_channels=4, num_modes=3, num_blocks=2),
    )
    (tmp_path / "s.eqx").write_text("input bf16[2,16]\nwhere ** -> cast bfloat16\n")
    for args in (["plan", "s.eqx", "fno.eqx"], ["apply", "s.eqx", "fno.eqx", "-o", "out.eqx"]):
        done = shell(*args, "--allow", "pdequinox", cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert "error[E213]: after this rule `jnp.fft.rfftn` in `SpectralConv`" in done.stderr
        assert " --> s.eqx:2:1" in done.stderr
        assert "= note: line 1, `input bf16[2,16]`, gives the model bfloat16 arrays too" in (
            done.stderr
        )
        assert "= help: `where SpectralConv -> cast float32` below this rule is not enough" in (
            done.stderr
        )
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.eqx").exists()


# ---- a library-free model: a filter that transforms its own kernel -------------------


@pytest.fixture(scope="module")
def net():
    return fftnet.FFTNet(16, key=jr.key(0))


def test_filter_cast_is_refused_and_the_module_kept_in_float32_is_the_fix(net):
    d = refused("input f32[16]\nwhere ** -> cast bfloat16\n", net)
    assert d.code == "E213" and d.span.line == 2
    assert d.message == (
        "after this rule `jnp.fft.rfft` in `SpectralFilter` (`filt`) does not accept bfloat16: "
        "RFFT input must be float32 or float64, got bfloat16"
    )
    assert d.notes == ()
    assert d.help == (
        "keep `SpectralFilter` in float32: below this rule, add "
        "`where SpectralFilter -> cast float32` (the model then runs)"
    )
    # The help's fix runs, and gives what the hand-written cast gives.
    fixed = eqxform.compile(
        "input f32[16]\nwhere ** -> cast bfloat16\nwhere SpectralFilter -> cast float32\n"
    ).apply(net)
    x = FIELD[0]
    hand = bf16_except(net, fftnet.SpectralFilter)
    assert fixed.filt.kernel.dtype == jnp.float32 and fixed.inp.weight.dtype == jnp.bfloat16
    assert np.array_equal(fixed(x), hand(x))
    assert fixed(x).dtype == hand(x).dtype


def test_filter_with_bf16_input_needs_the_module_and_the_input_in_float32(net):
    d = refused("input bf16[16]\nwhere ** -> cast bfloat16\n", net)
    assert d.code == "E213" and d.span.line == 2
    assert "`jnp.fft.rfft` in `SpectralFilter` (`filt`) does not accept bfloat16" in d.message
    assert d.notes == ("line 1, `input bf16[16]`, gives the model bfloat16 arrays too",)
    assert d.help == (
        "keep `SpectralFilter` in float32 (below this rule, `where SpectralFilter -> cast "
        "float32`) and declare the input in float32 (`input f32[16]`; the model then runs)"
    )
    # The model's own code computes the filter's input from the bfloat16 layer:
    # the module alone in float32 is not enough, as the help implies.
    alone = "input bf16[16]\nwhere ** -> cast bfloat16\nwhere SpectralFilter -> cast float32\n"
    assert refused(alone, net).code == "E213"


def test_a_transform_of_the_input_only_needs_the_input_in_float32():
    # A float32 input meets the bfloat16 `Linear` and comes out in float32
    # (JAX promotes), so the transform gets float32: the input is the fix.
    net = fftnet.SpectrumNet(16, key=jr.key(0))
    d = refused("input bf16[16]\nwhere ** -> cast bfloat16\n", net)
    assert d.code == "E213" and d.span.line == 2
    assert "`jnp.fft.rfft` in `Spectrum` (`spectrum`) does not accept bfloat16" in d.message
    assert d.help == "declare the input in float32 (`input f32[16]`; the model then runs)"
    fixed = eqxform.compile("input f32[16]\nwhere ** -> cast bfloat16\n").apply(net)
    x = FIELD[0]
    assert np.array_equal(fixed(x), bf16_except(net)(x))


def test_a_cast_that_only_needs_the_input_in_its_dtype_keeps_e207(net):
    # A convolution takes no mixed dtypes; in bfloat16 throughout, it runs.
    conv = eqx.nn.Conv1d(2, 2, 3, key=jr.key(0))
    d = refused("input f32[2,16]\nwhere ** -> cast bfloat16\n", conv)
    assert d.code == "E207" and "declare the input in the new dtype (`input bf16[2,16]`)" in d.help


def test_filter_from_the_shell_exit_1_and_no_output_file(tmp_path):
    (tmp_path / "fftnet.py").write_text(FFTNET)
    made = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            "import sys; sys.path.insert(0, '.')\n"
            "import eqxform, fftnet\n"
            "eqxform.save('net.eqx', eqxform.new(fftnet.FFTNet, 16))\n",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    (tmp_path / "s.eqx").write_text("input f32[16]\nwhere ** -> cast bfloat16\n")
    done = shell("apply", "s.eqx", "net.eqx", "-o", "out.eqx", "--allow", "fftnet", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "error[E213]: after this rule `jnp.fft.rfft` in `SpectralFilter` (`filt`)" in (
        done.stderr
    )
    assert " --> s.eqx:2:1" in done.stderr
    assert "add `where SpectralFilter -> cast float32`" in done.stderr
    assert not (tmp_path / "out.eqx").exists()
    # With the help's line, the same command writes the file.
    (tmp_path / "s.eqx").write_text(
        "input f32[16]\nwhere ** -> cast bfloat16\nwhere SpectralFilter -> cast float32\n"
    )
    done = shell("apply", "s.eqx", "net.eqx", "-o", "out.eqx", "--allow", "fftnet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.eqx").exists()


def test_explain_e384():
    done = shell("explain", "E213", cwd=ROOT)
    assert done.returncode == 0 and "rejects the dtype a `cast` gave" in done.stdout


def shell(*args, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-m", "eqxform", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
