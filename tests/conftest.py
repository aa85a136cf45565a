"""Shared fixtures: the demo export is made once per session and reused read-only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "calibration" / "digits"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (skipped in CI)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests (exhaustive matrices, full-size models) run only with --run-slow."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def demo_val_tensors(demo_export: Path, digits_val: Path):
    """The 360 labelled validation digits, preprocessed with the export's manifest."""
    from vitedge.data import load_tensors, open_image_set
    from vitedge.manifest import Manifest

    manifest = Manifest.load(demo_export)
    return load_tensors(open_image_set(digits_val, manifest.labels), manifest.preprocessing)


@pytest.fixture(scope="session")
def demo_reference_logits(demo_export: Path, demo_val_tensors):
    """PyTorch FP32 logits of the demo on the validation digits: what artifacts are compared to."""
    import vitedge

    with vitedge.load(demo_export, backend="pytorch") as reference:
        return reference.predict(demo_val_tensors.x)


@pytest.fixture(scope="session")
def compiled_demo(demo_export: Path, digits_calib: Path, tmp_path_factory: pytest.TempPathFactory):
    """compiled_demo(target, precision) -> artifact dir; each is compiled once per session."""
    from vitedge.compile import compile_artifact

    root = tmp_path_factory.mktemp("compiled")
    built: dict[tuple[str, str], Path] = {}

    def get(target: str, precision: str) -> Path:
        if (target, precision) not in built:
            out = root / f"{target}-{precision}"
            compile_artifact(demo_export, out, target=target, precision=precision,
                             calib=str(digits_calib) if precision == "int8" else None)
            built[target, precision] = out
        return built[target, precision]

    return get
