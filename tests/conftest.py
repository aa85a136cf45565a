"""Shared fixtures: the demo export is made once per session and reused read-only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "calibration" / "digits"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the tensor cache inside the test session (never the user's ~/.cache)."""
    os.environ["VITEDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits_calib() -> Path:
    return DIGITS / "calib"


@pytest.fixture(scope="session")
def digits_val() -> Path:
    return DIGITS / "val"


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory: pytest.TempPathFactory, digits_val: Path) -> Path:
    """`vitedge export demo:digits` (with parity on the val images), shared by all tests."""
    from vitedge import api

    out = tmp_path_factory.mktemp("demo") / "export"
    api.export("demo:digits", out, data=digits_val)
    return out


@pytest.fixture()
def demo_export_copy(demo_export: Path, tmp_path: Path) -> Path:
    """A private copy of the demo export for tests that modify files."""
    dst = tmp_path / "export"
    shutil.copytree(demo_export, dst)
    return dst


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `vitedge ARGS` in-process through the real entry point; returns code + output."""
    import warnings

    from vitedge import cli as cli_module
    from vitedge import ui

    def run(*args: str) -> CliResult:
        code = 0
        with warnings.catch_warnings():
            try:
                cli_module.main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            finally:
                cli_module._flags["debug"] = False
                ui.set_quiet(False)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
