"""The checks `make test` runs before the tests (ruff, and import-linter's layer contracts from pyproject.toml)
pass on the tree and fail when broken: shown on small projects written here, with the project's own settings."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAYERS = ("compression", "tasks", "flows", "cli")


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN}: `make test` installs the test extras")
    return str(path)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": str(BIN), "PYTHONPATH": str(cwd), "HOME": str(cwd)})


def _mini_project(root: Path, imports: dict[str, str]) -> Path:
    """The four layer packages with one module each, importing what `imports` says, and our pyproject."""
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    for layer in LAYERS:
        (root / layer).mkdir()
        (root / layer / "__init__.py").write_text("")
        (root / layer / "stage.py").write_text(imports.get(layer, "import json\n"))
    return root


def test_the_tree_passes_ruff_and_the_layer_contracts():
    ruff = _run([_tool("ruff"), "check", "."], PROJECT_ROOT)
    assert ruff.returncode == 0, ruff.stdout[-3000:]
    layers = _run([_tool("lint-imports")], PROJECT_ROOT)
    assert layers.returncode == 0 and "0 broken" in layers.stdout, layers.stdout[-3000:]


@pytest.mark.parametrize("layer, line, contract", [
    ("compression", "import mlflow\n", "compression is the pure core"),
    ("compression", "from tasks import stage\n", "compression is the pure core"),
    ("tasks", "from flows import stage\n", "tasks never import flows or the CLI"),
    ("flows", "import cli.stage\n", "flows never import the CLI"),
])
def test_a_layer_import_that_breaks_a_contract_fails(tmp_path, layer, line, contract):
    (tmp_path / "ok").mkdir()
    (tmp_path / "bad").mkdir()
    allowed = _run([_tool("lint-imports")], _mini_project(tmp_path / "ok", {}))
    assert allowed.returncode == 0, allowed.stdout[-2000:]
    broken = _run([_tool("lint-imports")], _mini_project(tmp_path / "bad", {layer: line}))
    assert broken.returncode != 0 and "1 broken" in broken.stdout, broken.stdout[-2000:]
    assert contract in broken.stdout.split("Broken contracts")[-1]


def test_ruff_fails_on_an_unused_import_and_an_unexplained_blind_except(tmp_path):
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "mistakes.py").write_text("import os\n\n\ndef f():\n    try:\n        return 1\n"
                                         "    except Exception:\n        return 0\n")
    found = _run([_tool("ruff"), "check", "--no-cache", "."], tmp_path)
    assert found.returncode == 1 and "F401" in found.stdout and "BLE001" in found.stdout, found.stdout
