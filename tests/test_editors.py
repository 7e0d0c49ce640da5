"""The editor set-ups in `editors/`: files that editors read, checked as data
(no npm, no editor)."""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
VSCODE = ROOT / "editors" / "vscode"


def test_the_extension_ships_the_grammar_unchanged():
    shipped = VSCODE / "syntaxes" / "eqxform.tmLanguage.json"
    assert shipped.read_bytes() == (ROOT / "grammar" / "eqxform.tmLanguage.json").read_bytes()


def test_package_json_declares_the_language_grammar_and_client():
    package = json.loads((VSCODE / "package.json").read_text())
    (language,) = package["contributes"]["languages"]
    assert language["id"] == "eqxform" and language["extensions"] == [".eqx"]
    assert (VSCODE / language["configuration"]).is_file()
    (grammar,) = package["contributes"]["grammars"]
    assert grammar["language"] == "eqxform" and grammar["scopeName"] == "source.eqxform"
    assert json.loads((VSCODE / grammar["path"]).read_text())["scopeName"] == "source.eqxform"
    assert (VSCODE / package["main"]).is_file()
    assert "vscode-languageclient" in package["dependencies"]
    command = package["contributes"]["configuration"]["properties"]["eqxform.server.command"]
    assert command["default"] == ["eqxform", "lsp"]


def test_language_configuration():
    config = json.loads((VSCODE / "language-configuration.json").read_text())
    assert config["comments"]["lineComment"] == "#"
    assert ["(", ")"] in config["brackets"] and ["[", "]"] in config["brackets"]
    assert re.fullmatch(config["wordPattern"], "trunc_normal")


def test_extension_starts_the_server_over_stdio():
    source = (VSCODE / "extension.js").read_text()
    assert 'require("vscode-languageclient/node")' in source
    assert "TransportKind.stdio" in source
    assert '["eqxform", "lsp"]' in source


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_extension_is_valid_javascript():
    subprocess.run(["node", "--check", str(VSCODE / "extension.js")], check=True)


def test_helix_set_up_is_valid_toml():
    readme = (ROOT / "editors" / "README.md").read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", readme, re.S)
    config = tomllib.loads("\n".join(line.strip() for line in block.splitlines()))
    assert config["language-server"]["eqxform"] == {"command": "eqxform", "args": ["lsp"]}
    (language,) = config["language"]
    assert language["file-types"] == ["eqx"] and language["language-servers"] == ["eqxform"]


def test_neovim_set_up_starts_the_server():
    readme = (ROOT / "editors" / "README.md").read_text()
    blocks = re.findall(r"```lua\n(.*?)```", readme, re.S)
    assert len(blocks) == 2
    for block in blocks:
        assert 'cmd = { "eqxform", "lsp" }' in block
        assert 'eqx = "eqxform"' in block


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_textmate_grammar_is_generated_from_the_records():
    gen = _generator()
    generated = gen.textmate()
    for path in gen.TEXTMATE:
        assert path.read_text() == generated, (
            f"{path.relative_to(ROOT)} is stale: run `python docs/generate.py`"
        )
    grammar = json.loads(generated)
    directive = grammar["repository"]["directive"]["match"]
    from eqxform import _names as N

    assert set(re.search(r"\(([\w|]+)\)", directive).group(1).split("|")) == set(N.DIRECTIVES)
    assert "|remat|" in generated and "|input|" in directive


def test_a_new_action_makes_the_committed_grammar_stale(monkeypatch):
    from eqxform import _names as N

    gen = _generator()
    action = N.Action("noise", "expr", "add noise", "noise 0.1", value="nonneg")
    monkeypatch.setitem(N.ACTIONS, "noise", action)
    generated = gen.textmate()
    assert generated != (ROOT / "grammar" / "eqxform.tmLanguage.json").read_text()
    actions = json.loads(generated)["repository"]["actions"]["patterns"]
    assert any("|noise|" in p.get("match", "") for p in actions)
