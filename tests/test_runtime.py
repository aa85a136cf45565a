"""`vitedge.load`: one Predictor API over export dirs, PyTorch, ONNX Runtime and OpenVINO artifacts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitedge
from vitedge.errors import BadInput, IncompatibleArtifact
from vitedge.manifest import MANIFEST_NAME


def _val_images(digits_val: Path, count: int = 6) -> list[Path]:
    return sorted(digits_val.rglob("*.png"))[:count]


def test_export_dir_runs_on_onnxruntime_and_matches_pytorch(demo_export: Path, demo_val_tensors,
                                                            demo_reference_logits) -> None:
    with vitedge.load(demo_export) as predictor:
        assert predictor.backend == "onnxruntime"
        logits = predictor.predict(demo_val_tensors.x)
    assert logits.dtype == np.float32 and logits.shape == (360, 10)
    assert np.abs(logits - demo_reference_logits).max() <= 1e-4


def test_every_input_kind_gives_the_same_logits(demo_export: Path, digits_val: Path) -> None:
    """Paths, PIL images (any mode) and preprocessed arrays go through the manifest's preprocessing."""
    from vitedge.preprocessing import open_rgb, preprocess_image

    paths = _val_images(digits_val)
    with vitedge.load(demo_export) as predictor:
        from_paths = predictor.predict(paths)
        from_pil = predictor.predict([Image.open(p).convert("L") for p in paths])  # grayscale is converted
        arrays = np.stack([preprocess_image(open_rgb(p), predictor.preprocessing) for p in paths])
        from_array = predictor.predict(arrays)
        single = predictor.predict(str(paths[0]))
        chw = predictor.predict(arrays[0])
        with pytest.raises(BadInput, match=r"expected preprocessed input \[N, 3, 32, 32\]"):
            predictor.predict(np.zeros((1, 3, 224, 224), np.float32))
        with pytest.raises(BadInput, match="takes image paths"):
            predictor.predict([42])
    np.testing.assert_allclose(from_paths, from_array, atol=1e-6)
    np.testing.assert_allclose(from_pil, from_array, atol=1e-6)
    np.testing.assert_allclose(single[0], from_array[0], atol=1e-6)
    np.testing.assert_allclose(chw[0], from_array[0], atol=1e-6)


def test_topk_returns_labels_and_probabilities(demo_export: Path, digits_val: Path) -> None:
    paths = [next((digits_val / d).glob("*.png")) for d in ("3", "7")]
    with vitedge.load(demo_export) as predictor:
        top = predictor.topk(paths, k=3)
    assert [len(row) for row in top] == [3, 3]
    assert [row[0][0] for row in top] == ["3", "7"]  # the trained demo reads its own digits
    for row in top:
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


@pytest.mark.parametrize(("target", "precision", "runs"), [
    ("onnxruntime", "fp32", "fp32"), ("onnxruntime", "int8", "int8"),
    ("openvino", "fp32", "fp32"), ("openvino", "int8", "fp32"),
])
def test_compiled_artifacts_load_with_the_same_api(compiled_demo, digits_val: Path, target: str,
                                                   precision: str, runs: str) -> None:
    artifact = compiled_demo(target, precision)
    paths = _val_images(digits_val)
    with vitedge.load(artifact) as predictor:
        assert predictor.backend == target
        assert predictor.runner.info["precision_run"] == runs  # OpenVINO int8: float islands pinned to f32
        logits = predictor.predict(paths)
        top = predictor.topk(paths[:1], k=1)
    assert logits.shape == (len(paths), 10)
    assert top[0][0][0] == str(int(np.argmax(logits[0])))
    with vitedge.load(artifact / json.loads((artifact / MANIFEST_NAME).read_text())["artifact"]["model"]) as again:
        np.testing.assert_allclose(again.predict(paths), logits, atol=1e-5)  # a file path opens its dir


def test_openvino_runner_applies_recorded_properties_and_thread_override(compiled_demo) -> None:
    artifact = compiled_demo("openvino", "fp32")
    with vitedge.load(artifact) as predictor:
        info = predictor.runner.info
        assert info["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert info["performance_hint"] == "LATENCY"
    with vitedge.load(artifact, threads=1) as predictor:
        assert predictor.runner.info["threads"] == 1
        assert predictor.runner.info["precision_run"] == "fp32"


def test_pytorch_reference_and_thread_option(demo_export: Path, demo_val_tensors, demo_reference_logits) -> None:
    with vitedge.load(demo_export, backend="pytorch") as reference:
        assert reference.runner.info["precision_run"] == "fp32"
        np.testing.assert_array_equal(reference.predict(demo_val_tensors.x[:8]), demo_reference_logits[:8])
    with vitedge.load(demo_export, threads=1) as predictor:
        assert predictor.runner.info["threads"] == 1


def test_load_refuses_tampered_artifacts(compiled_demo, tmp_path: Path) -> None:
    artifact = tmp_path / "ov"
    shutil.copytree(compiled_demo("openvino", "int8"), artifact)
    with (artifact / "model.bin").open("r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IncompatibleArtifact, match="model.bin does not match its SHA-256"):
        vitedge.load(artifact)
    (artifact / "model.bin").unlink()
    with pytest.raises(IncompatibleArtifact, match="model.bin is listed"):
        vitedge.load(artifact)
    with pytest.raises(BadInput, match="has no vitedge.json"):
        vitedge.load(tmp_path)


def test_pytorch_reference_refuses_changed_weights(demo_export_copy: Path) -> None:
    manifest_path = demo_export_copy / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["source"]["weights_sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleArtifact, match="changed since this artifact was exported"):
        vitedge.load(demo_export_copy, backend="pytorch")
