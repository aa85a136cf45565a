"""The recorded trtexec line works as-is and builds what the Python build builds.

The line is split with shlex (as a shell would), each option is read back and compared
with the EngineSettings that `build_engine` receives; paths must resolve from the artifact
directory, where the line is meant to run. TensorRT is not needed: nothing is built here.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from vitedge.backends.tensorrt import ENGINE, TRT_ONNX, EngineSettings
from vitedge.errors import EnvironmentProblem
from vitedge.manifest import Manifest

HARDWARE_NAMES = {"none": None, "ampere+": "ampere+"}


def parse_trtexec(line: str) -> dict[str, Any]:
    """The options of a trtexec line, as trtexec reads them after the shell split it."""
    words = shlex.split(line)
    assert words[0] == "trtexec"
    options: dict[str, Any] = {}
    for word in words[1:]:
        assert word.startswith("--"), f"stray word {word!r}: a path was not quoted?"
        key, sep, value = word[2:].partition("=")
        assert key not in options, f"--{key} given twice"
        options[key] = value if sep else True
    return options


def _shape(text: str, name: str) -> tuple[int, ...]:
    tensor, _, dims = text.rpartition(":")
    assert tensor == name
    return tuple(int(d) for d in dims.split("x"))


def assert_line_matches(line: str, settings: EngineSettings, artifact_dir: Path) -> None:
    """Every option of LINE equals SETTINGS, with paths resolved from ARTIFACT_DIR."""
    options = parse_trtexec(line)
    assert options.pop("onnx") == TRT_ONNX and options.pop("saveEngine") == ENGINE
    assert options.pop("stronglyTyped") is True and options.pop("noTF32") is True  # as build_engine
    if settings.profile:
        shapes = tuple(_shape(options.pop(f"{k}Shapes"), settings.input_name) for k in ("min", "opt", "max"))
        assert shapes == settings.shapes()
    workspace = options.pop("memPoolSize", None)
    assert workspace == (f"workspace:{settings.workspace_mib}" if settings.workspace_mib else None)
    level = options.pop("builderOptimizationLevel", None)
    assert (int(level) if level is not None else None) == settings.opt_level
    cache = options.pop("timingCacheFile", None)
    resolved = Path(os.path.normpath(artifact_dir / cache)) if cache is not None else None
    assert resolved == settings.timing_cache_file()  # the one timing-cache rule: same file for both
    assert options.pop("hardwareCompatibilityLevel", None) == HARDWARE_NAMES[settings.hardware_compat]
    assert options.pop("versionCompatible", False) is settings.version_compatible
    assert not options, f"options the Python build does not set: {options}"


def test_paths_with_spaces_stay_one_word_and_resolve_from_the_artifact_dir(tmp_path: Path) -> None:
    settings = EngineSettings("pixel values", (3, 32, 32), (1, 4, 16), None, 2048, 5,
                              str(tmp_path / "my caches" / "vit's.cache"), "ampere+", True)
    artifact_dir = tmp_path / "out dir" / "trt"
    line = settings.trtexec_command(artifact_dir)
    assert "'--timingCacheFile=../../my caches/vit'\"'\"'s.cache'" in line
    assert_line_matches(line, settings, artifact_dir)


def test_without_a_timing_cache_neither_build_uses_one(tmp_path: Path) -> None:
    settings = EngineSettings("pixel_values", (3, 32, 32), None, 4, None, None, None, "none", False)
    assert settings.timing_cache_file() is None and "timingCache" not in settings.trtexec_command(tmp_path)
    assert_line_matches(settings.trtexec_command(tmp_path), settings, tmp_path)


def test_recorded_line_equals_the_settings_of_the_python_build(cli, demo_export: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`vitedge compile` from one directory, a relative cache path with a space, the artifact elsewhere."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    r = cli("compile", demo_export, "--target", "tensorrt", "--engine-lib", "tensorrt", "-o", "../out dir/trt",
            "--batch", "1:4:16",
            "--workspace", "2", "--opt-level", "5", "--timing-cache", "my caches/vit.cache",
            "--hardware-compat", "ampere+", "--version-compatible")
    artifact_dir = tmp_path / "out dir" / "trt"
    manifest = Manifest.load(artifact_dir)
    if manifest.incomplete:  # no TensorRT here: the line is the next step, printed as recorded
        assert r.code == EnvironmentProblem.exit_code and manifest["tensorrt"]["trtexec"] in r.out
    recorded = manifest["tensorrt"]
    settings = EngineSettings(**{f.name: recorded[f.name] for f in dataclasses.fields(EngineSettings)})
    settings.profile = tuple(settings.profile)  # JSON lists back to the tuples build_engine gets
    settings.chw = tuple(settings.chw)
    assert settings.timing_cache_file() == work / "my caches" / "vit.cache"
    assert_line_matches(recorded["trtexec"], settings, artifact_dir)
    assert (artifact_dir / TRT_ONNX).is_file()
