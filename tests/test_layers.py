"""The layer contracts in pyproject.toml ([tool.importlinter]) hold for the package, and
`lint-imports` fails, naming the contract, when one wrong import is added to a copy of it
(lazy imports inside functions included). The same check runs in CI (.ci/run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on ROOT's pyproject.toml and ROOT/vitedge (ROOT first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def _copy(tmp_path: Path) -> Path:
    """The package's Python files and pyproject.toml, copied under TMP_PATH."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "vitedge", tmp_path / "vitedge",
                    ignore=lambda d, names: [n for n in names if n == "__pycache__" or (
                        (Path(d) / n).is_file() and not n.endswith(".py"))])
    return tmp_path


def test_the_package_keeps_every_contract() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("module", "line", "contract", "chain"), [
    # a lazy import up the layers, inside a function as such leaks usually are
    ("runtime.py", "def _leak():\n    from vitedge import cli  # noqa\n",
     "vitedge layers point down only", "vitedge.runtime -> vitedge.cli"),
    # a bottom layer importing torch reaches the runtime through manifest
    ("manifest.py", "def _leak():\n    import torch  # noqa\n",
     "the embedding runtime never imports torch, typer, rich or the CLI", "vitedge.manifest -> torch"),
    # the version read from the package root instead of vitedge._version
    ("fsutil.py", "from vitedge import __version__  # noqa\n",
     "nothing inside the package imports the package root (it only re-exports)", "vitedge.fsutil -> vitedge (l."),
    ("precision/profile.py", "def _leak():\n    from vitedge.backends import get_backend  # noqa\n",
     "precision, models, manifest and fsutil never import backends", "vitedge.precision.profile -> vitedge.backends"),
])
def test_a_wrong_import_breaks_its_contract(tmp_path: Path, module: str, line: str, contract: str,
                                            chain: str) -> None:
    root = _copy(tmp_path)
    path = root / "vitedge" / module
    path.write_text(path.read_text() + "\n\n" + line)
    result = _lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout
    assert chain in result.stdout, result.stdout
