"""Engine build and runner: need TensorRT 10/11 and an NVIDIA GPU; skipped (with the reason) elsewhere.

Written against the TensorRT 10.x/11.x Python API (see docs/tensorrt.md); never run in this
project's CI, which has neither TensorRT nor a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (NVIDIA's index or JetPack)")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("TensorRT engine tests need a CUDA GPU", allow_module_level=True)

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

import vitedge  # noqa: E402
from vitedge.backends.tensorrt import EngineSettings, build_engine  # noqa: E402
from vitedge.compile import compile_artifact  # noqa: E402
from vitedge.errors import BadInput, CompileFailed, IncompatibleArtifact  # noqa: E402
from vitedge.manifest import Manifest  # noqa: E402
from vitedge.validate.metrics import compare_logits  # noqa: E402

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def reference(demo_val_tensors, demo_reference_logits) -> dict:
    """PyTorch FP32 logits of the demo on its held-out images."""
    return {"x": demo_val_tensors.x, "labels": demo_val_tensors.labels, "logits": demo_reference_logits}


@pytest.mark.parametrize(("precision", "min_agreement"), [("fp32", 1.0), ("fp16", 1.0), ("int8", 0.995)])
def test_engine_builds_runs_and_matches_pytorch(demo_export: Path, digits_calib: Path, reference: dict,
                                                tmp_path: Path, precision: str, min_agreement: float) -> None:
    out = tmp_path / precision
    manifest = compile_artifact(demo_export, out, target="tensorrt", precision=precision,
                                calib=str(digits_calib) if precision != "fp32" else None,
                                extra={"batch": "1:8:32", "timing_cache": str(tmp_path / "vit.cache")})
    built = manifest["tensorrt"]
    assert (out / "model.engine").is_file() and "incomplete" not in manifest
    assert built["version"] == trt.__version__ and built["tf32"] is False and built["strongly_typed"]
    assert built["gpu"] == torch.cuda.get_device_name(0)
    assert built["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability(0))
    with vitedge.load(out, device="cuda:0") as predictor:
        logits = predictor.predict(reference["x"], batch_size=32)
        assert predictor.runner.last_ms > 0 and "CUDA events" in predictor.runner.info["timing"]
        with pytest.raises(BadInput, match="outside the engine's profile"):
            predictor.runner.infer(reference["x"][:33])
    drift = compare_logits(reference["logits"], logits, reference["labels"])
    assert drift["top1_agreement"] >= min_agreement and drift["acc_drop"] <= 0.005


def test_timing_cache_is_saved_and_reused(demo_export: Path, tmp_path: Path) -> None:
    extra = {"timing_cache": str(tmp_path / "vit.cache")}
    first = compile_artifact(demo_export, tmp_path / "a", target="tensorrt", extra=dict(extra))
    second = compile_artifact(demo_export, tmp_path / "b", target="tensorrt", extra=dict(extra))
    cache = Path(first["tensorrt"]["timing_cache"]["file"])
    assert cache == tmp_path / "vit.cache" and cache.is_file()  # the file the trtexec line names too
    assert not first["tensorrt"]["timing_cache"]["reused"] and second["tensorrt"]["timing_cache"]["reused"]


def test_mismatched_engine_is_refused(demo_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine"
    compile_artifact(demo_export, out, target="tensorrt")
    manifest = Manifest.load(out)
    manifest["tensorrt"]["version"] = "9.0.0"
    manifest.save(out)
    with pytest.raises(IncompatibleArtifact, match="built with 9.0.0.*rebuild"):
        vitedge.load(out, device="cuda:0")


def test_parser_errors_name_the_node(tmp_path: Path) -> None:
    node = helper.make_node("NoSuchOp", ["pixel_values"], ["logits"], name="mystery_node", domain="vitedge.test")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                                          [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("vitedge.test", 1)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    settings = EngineSettings("pixel_values", (3, 8, 8), None, 1, None, None, None, "none", False)
    with pytest.raises(CompileFailed, match="mystery_node"):
        build_engine(tmp_path / "bad.onnx", tmp_path / "bad.engine", settings)

