"""The backend contract: declarations drive the CLI flags, the recipe schema and the checks.

A small real backend (ONNX Runtime with a pinned thread count) is registered here, inside
the test, to show that one module's declarations are all it takes: its flag appears in
`vitedge compile --help`, its key in the recipe schema, its rules are enforced before any
work, and its artifact compiles, summarises and loads through the common paths.
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import vitedge
from vitedge.backends import base
from vitedge.backends.base import Availability, Backend, CompileRequest, artifact_path
from vitedge.backends.onnxruntime import OrtRunner
from vitedge.backends.options import Options, fields_of, merged_fields, option
from vitedge.errors import BadInput
from vitedge.manifest import Manifest


# -- the example backend: this block is all a new backend needs (plus its registry line) ------
@dataclass(frozen=True)
class PinnedOptions(Options):
    intra_op_threads: int = option(1, "ONNX Runtime intra-op threads, pinned into the artifact.", minimum=1,
                                   rule="a positive number of threads")


class PinnedThreadsBackend(Backend):
    """ONNX Runtime FP32 on the CPU with a thread count fixed at compile time."""

    name = "ort-pinned"
    precisions = ("fp32",)
    device_kind = "cpu"
    runtime_module = "onnxruntime"
    Options = PinnedOptions

    def availability(self) -> Availability:
        return Availability(True, importlib.import_module("onnxruntime").__version__)

    def compile(self, export_dir: Path, out_dir: Path, manifest: Manifest, request: CompileRequest) -> Manifest:
        shutil.copy(artifact_path(export_dir, manifest), out_dir / "model.onnx")
        manifest["artifact"] = {"model": "model.onnx", "format": "onnx"}
        manifest["runtime"] = {"threads": request.options.intra_op_threads}  # type: ignore[attr-defined]
        return manifest

    def summary_line(self, manifest: Manifest) -> str | None:
        return f"runs: ONNX Runtime CPU with {manifest.runtime['threads']} pinned threads"

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> OrtRunner:
        return OrtRunner(artifact_path(artifact_dir, manifest), threads=manifest.runtime["threads"])
# -- end of the example backend ---------------------------------------------------------------


@pytest.fixture()
def pinned(monkeypatch: pytest.MonkeyPatch):
    """The example backend registered (the registry line), and the CLI rebuilt from the registry."""
    from vitedge import cli

    monkeypatch.setitem(base._REGISTRY, PinnedThreadsBackend.name, PinnedThreadsBackend())
    importlib.reload(cli)
    yield
    monkeypatch.undo()
    importlib.reload(cli)


def test_every_backend_declares_the_contract() -> None:
    backends = base.all_backends()
    assert {"pytorch", "onnxruntime", "openvino", "tensorrt"} <= set(backends)
    for name, backend in backends.items():
        assert backend.name == name and backend.precisions
        assert backend.device_kind in ("cpu", "cuda", "any") and backend.runtime_module
        assert dataclasses.is_dataclass(backend.Options) and issubclass(backend.Options, Options)
        for info in fields_of(backend.Options):
            assert info.spec.help.endswith("."), f"{name}.{info.name}: help should be a sentence"
    assert base.backend_for_target("onnx").name == "onnxruntime"  # an export dir runs on ONNX Runtime
    assert base.get_backend("tensorrt").precisions_on("cpu") == ()
    assert base.get_backend("pytorch").precisions_on("cuda") == ("fp32",)


def test_flags_and_schema_come_from_the_same_options(cli) -> None:
    from vitedge.recipe import recipe_schema

    help_text = cli("compile", "--help").out
    options = recipe_schema()["properties"]["targets"]["items"]["properties"]["options"]["properties"]
    for name, (info, owners) in merged_fields(base.options_classes()).items():
        assert info.flag in help_text, f"{info.flag} missing from compile --help"
        assert name in options and options[name]["description"].endswith(f"[{', '.join(owners)}]")
    assert {k: options["opt_level"][k] for k in ("type", "minimum", "maximum")} == {
        "type": ["integer", "null"], "minimum": 0, "maximum": 5}
    assert options["hint"]["enum"] == ["latency", "throughput"]
    assert options["quantized"]["type"] == ["string", "null"]  # declared for --target tensorrt


def test_values_are_typed_and_checked_by_their_declaration() -> None:
    trt = base.get_backend("tensorrt")
    typed = base.backend_options(trt, {"opt_level": 3, "workspace_gb": 2, "timing_cache": "a b/c.cache",
                                       "ignored_scope": "blocks.0.attn.qkv"})
    assert typed.workspace_gb == 2.0 and isinstance(typed.workspace_gb, float)  # type: ignore[attr-defined]
    assert typed.timing_cache == Path("a b/c.cache")  # type: ignore[attr-defined]
    assert typed.ignored_scope == ["blocks.0.attn.qkv"] and typed.io == "fp32"  # type: ignore[attr-defined]
    with pytest.raises(BadInput, match="option 'opt_level' takes 0-5"):
        base.backend_options(trt, {"opt_level": 9})
    with pytest.raises(BadInput, match="option 'version_compatible' takes true or false, got 'yes'"):
        base.backend_options(trt, {"version_compatible": "yes"})
    with pytest.raises(BadInput, match="option 'hint' is not an option of --target tensorrt; it is for "
                                       "--target openvino"):
        base.backend_options(trt, {"hint": "latency"})
    with pytest.raises(BadInput, match="unknown option 'colour'"):
        base.backend_options(trt, {"colour": "red"})


def test_a_shared_option_must_be_declared_once() -> None:
    @dataclass(frozen=True)
    class Other(Options):
        threads: int | None = option(None, "Another meaning.")

    with pytest.raises(TypeError, match="option 'threads' differs between onnxruntime and other"):
        merged_fields({**base.options_classes(), "other": Other})


def test_a_new_backend_is_one_module_and_one_registry_line(pinned, cli, demo_export: Path, tmp_path: Path,
                                                           demo_val_tensors) -> None:
    from vitedge.recipe import recipe_schema

    help_text = cli("compile", "--help").out
    assert "--intra-op-threads" in help_text and "--target ort-pinned" in help_text
    schema = recipe_schema()["properties"]["targets"]["items"]["properties"]
    assert "ort-pinned" in schema["target"]["enum"] and "intra_op_threads" in schema["options"]["properties"]

    r = cli("compile", demo_export, "--target", "onnxruntime", "--intra-op-threads", "2", "-o", tmp_path / "x")
    assert r.code == 2 and "--intra-op-threads is not an option of --target onnxruntime; it is for " \
                           "--target ort-pinned" in r.err
    r = cli("compile", demo_export, "--target", "ort-pinned", "--intra-op-threads", "0", "-o", tmp_path / "x")
    assert r.code == 2 and "--intra-op-threads takes a positive number of threads, got 0" in r.err
    assert not (tmp_path / "x").exists()

    out = tmp_path / "pinned"
    r = cli("compile", demo_export, "--target", "ort-pinned", "--intra-op-threads", "2", "-o", out)
    assert r.code == 0, r.text
    assert "runs: ONNX Runtime CPU with 2 pinned threads" in r.out
    manifest = Manifest.load(out)
    assert manifest.target == "ort-pinned" and manifest["compile"]["options"] == {"intra_op_threads": 2}
    x = demo_val_tensors.x[:16]
    with vitedge.load(out) as pinned_model, vitedge.load(demo_export) as export_model:
        assert pinned_model.backend == "ort-pinned"
        assert pinned_model.runner.session.get_session_options().intra_op_num_threads == 2
        np.testing.assert_allclose(pinned_model.predict(x), export_model.predict(x), atol=1e-4)
