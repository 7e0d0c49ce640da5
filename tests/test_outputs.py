"""Outputs never replace an input or a special file, are checked before any
work, and are written whole or not at all, even under SIGINT and SIGTERM."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import eqxform
from eqxform._cli import main

SPEC = "where Linear.bias -> init zeros\n"
MODEL = "MLP(in_size=2, out_size=2, width_size=4, depth=1)"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("new", MODEL, "-o", "model.eqx")[0] == 0
    Path("spec.eqx").write_text(SPEC)
    np.savez("data.npz", x=np.zeros((8, 2), np.float32), y=np.zeros((8, 2), np.float32))
    Path("sweep.yaml").write_text("{}\n")
    return tmp_path


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as compiling or building."""

    def work(*args, **kwargs):
        raise AssertionError("work was done before the output was checked")

    monkeypatch.setattr(eqxform, "compile", work)
    monkeypatch.setattr(eqxform._recipes, "new", work)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize(
    "command,flags,victim,what",
    [
        ("apply", [], "spec.eqx", "spec"),
        ("apply", ["--params", "sweep.yaml"], "sweep.yaml", "`--params` file"),
        ("train", ["--data", "data.npz", "--steps", "1"], "data.npz", "`--data` file"),
        ("train", [], "spec.eqx", "spec"),
    ],
)
@pytest.mark.parametrize("how", ["same", "dotted", "symlink", "hardlink"])
def test_output_may_not_replace_an_input(workdir, no_work, command, flags, victim, what, how):
    before = snapshot(workdir)
    if how == "same":
        output = victim
    elif how == "dotted":
        output = f"./{victim}"
    elif how == "symlink":
        os.symlink(victim, "link")
        output = "link"
    else:
        os.link(victim, "link")
        output = "link"
    code, out = run(command, "spec.eqx", "model.eqx", *flags, "-o", output, "--force")
    assert code == 2, out
    assert "error[E440]" in out and f"is the {what}" in out and "help:" in out
    linked = {"link": before[victim]} if how in ("symlink", "hardlink") else {}
    assert snapshot(workdir) == {**before, **linked}


def test_output_may_not_replace_the_model_through_a_link(workdir, no_work):
    os.symlink("model.eqx", "link.eqx")
    before = Path("model.eqx").read_bytes()
    code, out = run("apply", "spec.eqx", "model.eqx", "-o", "link.eqx")
    assert code == 2 and "error[E409]" in out
    assert Path("model.eqx").read_bytes() == before


def test_a_symlinked_output_is_kept_and_its_file_written(workdir):
    Path("real.eqx").write_bytes(b"old")
    os.symlink("real.eqx", "link.eqx")
    code, out = run("apply", "spec.eqx", "model.eqx", "-o", "link.eqx")
    assert code == 0, out
    assert os.path.islink("link.eqx")
    assert eqxform.load("real.eqx").layers[0].bias.tolist() == [0.0] * 4


@pytest.mark.parametrize("command", ["new", "apply", "train"])
def test_special_files_and_directories_are_refused_before_any_work(workdir, no_work, command):
    os.mkfifo("fifo")
    os.mkdir("folder")
    args = {
        "new": ["new", MODEL],
        "apply": ["apply", "spec.eqx", "model.eqx"],
        "train": ["train", "spec.eqx", "model.eqx"],
    }[command]
    code, out = run(*args, "-o", "fifo")
    assert code == 2 and "error[E442]" in out and "named pipe" in out
    assert stat.S_ISFIFO(os.stat("fifo").st_mode)
    code, out = run(*args, "-o", "folder")
    assert code == 2 and "error[E441]" in out
    if os.path.exists("/dev/null") and stat.S_ISCHR(os.stat("/dev/null").st_mode):
        code, out = run(*args, "-o", "/dev/null")
        assert code == 2 and "error[E442]" in out and "a device" in out
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    code, out = run(*args, "-o", "missing/out.eqx")
    assert code == 2 and "error[E404]" in out and "mkdir -p missing" in out
    code, out = run(*args, "-o", "a" * 300 + ".eqx")
    assert code == 2 and "error[E444]" in out and "too long" in out


@pytest.fixture
def unwritable(tmp_path):
    """A folder nothing can be created in: by its permissions, or for root
    (whom permissions do not stop) by the immutable attribute."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr")
    subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    try:
        (folder / "probe").touch()
    except OSError:
        yield folder
    else:
        pytest.skip("no way to make an unwritable folder here")
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


def test_an_unwritable_folder_is_found_before_any_work(workdir, no_work, unwritable):
    code, out = run("apply", "spec.eqx", "model.eqx", "-o", unwritable / "out.eqx")
    assert code == 2 and "error[E443]" in out and "not writable" in out
    with pytest.raises(eqxform.UsageError) as info:
        eqxform.save(unwritable / "m.eqx", {"w": jnp.ones(2)})
    assert info.value.diagnostics[0].code == "E443"


def test_fmt_writes_in_place_safely(workdir, unwritable):
    messy = "where   Linear.bias ->init zeros\n"
    Path("spec.eqx").write_text(messy)
    os.chmod("spec.eqx", 0o640)
    os.symlink("spec.eqx", "link.eqx")
    code, out = run("fmt", "link.eqx")
    assert code == 0, out
    assert os.path.islink("link.eqx") and Path("spec.eqx").read_text() == SPEC
    assert stat.S_IMODE(os.stat("spec.eqx").st_mode) == 0o640
    # A spec that cannot be written in place stops all of them before any is changed.
    Path("spec.eqx").write_text(messy)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(unwritable)], capture_output=True)
    shutil.copy("spec.eqx", unwritable / "other.eqx")
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(unwritable)], capture_output=True)
    else:
        unwritable.chmod(0o555)
    code, out = run("fmt", "spec.eqx", unwritable / "other.eqx")
    assert code == 2 and "error[E443]" in out
    assert Path("spec.eqx").read_text() == messy


def test_fmt_refuses_a_fifo_without_reading_it(tmp_path):
    fifo = tmp_path / "spec.eqx"
    os.mkfifo(fifo)
    # In a subprocess: reading a FIFO would wait forever for a writer.
    result = subprocess.run(
        [sys.executable, "-m", "eqxform", "fmt", str(fifo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "error[E442]" in result.stderr


def test_the_python_api_raises_only_eqxform_errors(tmp_path):
    model = eqxform.new("MLP(2, 2, 4, 1)")
    (tmp_path / "dir").mkdir()
    cases = [
        (lambda: eqxform.save(tmp_path / "dir", model), "E441"),
        (lambda: eqxform.save(None, model), "E445"),
        (lambda: eqxform.save(str(tmp_path / "a\0b"), model), "E445"),
        (lambda: eqxform.save(tmp_path / "missing" / "m.eqx", model), "E404"),
        (lambda: eqxform.save(tmp_path / ("a" * 300), model), "E444"),
        (lambda: eqxform.save(tmp_path / "m.eqx", "hello"), "E446"),
        (lambda: eqxform.save(tmp_path / "m.eqx", model, recipe={"base": {}}), "E446"),
        (lambda: eqxform.save(tmp_path / "m.eqx", {"key": jax.random.key(0)}), "E447"),
        (lambda: eqxform.save(tmp_path / "m.eqx", {"w": jnp.ones(2, jnp.complex64)}), "E447"),
        (lambda: eqxform.load(None), "E445"),
        (lambda: eqxform.load(tmp_path / "dir"), "E301"),
        (lambda: eqxform.load(tmp_path / "nope.eqx"), "E301"),
        (lambda: eqxform.load(tmp_path / ("a" * 5000)), "E301"),
        (lambda: eqxform.load(tmp_path / "m.eqx", allow="mypkg"), "E449"),
        (lambda: eqxform.new(None), "E405"),
        (lambda: eqxform.new("MLP(2, 2, 4, 1)", allow="mypkg"), "E449"),
    ]
    for call, code in cases:
        with pytest.raises(eqxform.EqxformError) as info:
            call()
        assert info.value.diagnostics[0].code == code, info.value
        assert info.value.diagnostics[0].help
    assert not (tmp_path / "m.eqx").exists()


def test_an_existing_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "m.eqx"
    target.write_bytes(b"old")
    target.chmod(0o600)
    eqxform.save(target, eqxform.new("MLP(2, 2, 4, 1)"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert eqxform.load(target).layers[0].weight.shape == (4, 2)


# ---- signals --------------------------------------------------------------------


@pytest.fixture
def ctrl_c():
    """Ctrl-C as a terminal gives it, whether or not the tests were started
    with it ignored (in the background of a script, under `nohup`)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_write_keeps_the_old_file(tmp_path, monkeypatch, ctrl_c):
    target = tmp_path / "m.eqx"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "fsync", lambda fd: signal.raise_signal(signal.SIGINT))  # mid-write
    with pytest.raises(KeyboardInterrupt):
        eqxform.save(target, {"w": jnp.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.eqx"]
    assert target.read_bytes() == b"old"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handled_signal_waits_for_the_write(tmp_path, monkeypatch, ctrl_c):
    """A program that handles Ctrl-C itself (as `train` does, to stop after
    the step in flight) gets the whole new file, then its handler runs."""
    target = tmp_path / "m.eqx"
    target.write_bytes(b"old")
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(target.read_bytes()))
    real_fsync = os.fsync

    def fsync(fd):
        if not stat.S_ISDIR(os.fstat(fd).st_mode):  # the file's, not the folder's
            signal.raise_signal(signal.SIGINT)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    try:
        eqxform.save(target, {"w": jnp.ones(2)})
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(seen) == 1 and seen[0] != b"old"  # the handler ran once, after the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.eqx"]
    assert np.array_equal(eqxform.load(target, like={"w": jnp.ones(2)})["w"], np.ones(2))


# A write that stops in `fsync` (the temporary file complete, not yet renamed)
# and says so; the test then sends a real signal. The light child writes with
# `atomic_write` alone (no JAX to import); the slow one runs `eqxform new`.
_STALL = textwrap.dedent(
    """
    import os, signal, sys, time
    # Ctrl-C as a terminal gives it, whether or not the tests were started
    # with it ignored (in the background of a script, under `nohup`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    def fsync(fd):
        print("writing", flush=True)
        time.sleep(60)
    os.fsync = fsync
    """
)
_LIGHT = _STALL + textwrap.dedent(
    """
    from eqxform._files import atomic_write
    try:
        atomic_write(sys.argv[-1], b"new contents")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    """
)
_CLI = _STALL + "from eqxform._cli import main\nmain(sys.argv[1:])\n"


def _signal_mid_write(tmp_path, script, args, signum):
    target = tmp_path / "m.eqx"
    target.write_bytes(b"old contents")
    with subprocess.Popen(
        [sys.executable, "-c", script, *args, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout.readline().strip() == "writing", child.stderr.read()
            assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # mid-write
            child.send_signal(signum)
            _, stderr = child.communicate(timeout=60)
        finally:
            child.kill()
    if signum == signal.SIGTERM:
        assert child.returncode == -signal.SIGTERM, stderr
    else:
        assert child.returncode == 130 and "interrupted" in stderr, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.eqx"]
    assert target.read_bytes() == b"old contents"
    return stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_real_signal_during_a_write_leaves_the_old_file_and_no_temporary(tmp_path, signum):
    _signal_mid_write(tmp_path, _LIGHT, [], signum)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_real_signal_during_eqxform_new(tmp_path, signum):
    stderr = _signal_mid_write(tmp_path, _CLI, ["new", MODEL, "-o"], signum)
    if signum == signal.SIGINT:
        assert "interrupted; nothing was written" in stderr


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_killed_writers_temporary_is_removed_by_the_next_write_and_a_live_ones_kept(
    tmp_path, monkeypatch
):
    from eqxform import _files

    monkeypatch.setattr(_files, "STALE_TEMP_AGE_S", 0.0)
    target = tmp_path / "m.eqx"
    target.write_bytes(b"old contents")
    with subprocess.Popen(
        [sys.executable, "-c", _LIGHT, str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout.readline().strip() == "writing", child.stderr.read()
            (live,) = _temporaries(tmp_path)
            assert live.startswith(".m.eqx.")
            # A live writer's temporary is locked: another write leaves it.
            _files.atomic_write(target, b"first")
            assert _temporaries(tmp_path) == [live] and target.read_bytes() == b"first"
            child.kill()  # SIGKILL: no chance to clean up
            child.wait(timeout=60)
        finally:
            child.kill()
    assert _temporaries(tmp_path) == [live]  # what `kill -9` leaves
    # Files that are not this output's temporaries, and one too young to judge.
    others = [".m.eqx.notmine", ".other.eqx.abcdefgh.tmp", ".m.eqx.abc.tmp", "m.eqx.abcdefgh.tmp"]
    for name in others:
        (tmp_path / name).write_bytes(b"x")
    _files.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert _temporaries(tmp_path) == sorted(n for n in others if n.endswith(".tmp"))
    assert all((tmp_path / n).read_bytes() == b"x" for n in others)


def test_a_recent_temporary_is_never_taken_for_a_stale_one(tmp_path):
    target = tmp_path / "m.eqx"
    young = tmp_path / ".m.eqx.abcd1234.tmp"
    young.write_bytes(b"a writer that has not locked it yet")
    eqxform.save(target, {"w": jnp.ones(2)})
    assert young.exists()
    old = os.path.getmtime(young) - 3600
    os.utime(young, (old, old))  # an hour old, and no process holds it
    eqxform.save(target, {"w": jnp.zeros(2)})
    assert not young.exists()
    assert np.array_equal(eqxform.load(target, like={"w": jnp.ones(2)})["w"], np.zeros(2))
