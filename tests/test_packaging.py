"""The grammar lives at the top of the repository and ships inside the wheel;
a wheel, an sdist and a source checkout all find it."""

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

hatchling = pytest.importorskip("hatchling")


def _build(target: str, out: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", target, "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (built,) = out.iterdir()
    return built


def test_wheel_holds_the_grammar(tmp_path):
    wheel = _build("wheel", tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "eqxform/grammar/eqxform.lark" in names
        packed = z.read("eqxform/grammar/eqxform.lark")
    assert packed == (ROOT / "grammar" / "eqxform.lark").read_bytes()


def test_sdist_holds_the_grammar(tmp_path):
    sdist = _build("sdist", tmp_path)
    with tarfile.open(sdist) as t:
        names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
    assert "grammar/eqxform.lark" in names
    assert "pyproject.toml" in names


def test_installed_wheel_parses_away_from_the_checkout(tmp_path):
    wheel = _build("wheel", tmp_path / "dist")
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    code = (
        "import eqxform._parse as p\n"
        "print(p.grammar_path())\n"
        "print(len(p.parse('where Linear.weight -> init zeros').statements))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    where, count = result.stdout.split()
    assert Path(where).is_relative_to(target) and count == "1"
