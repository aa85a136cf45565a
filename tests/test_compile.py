"""`vitedge compile` for CPUs: accuracy of every demo artifact, manifests, plans, Q/DQ rules, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import vitedge
from vitedge.backends import base
from vitedge.envinfo import cpu_info
from vitedge.errors import BadInput
from vitedge.manifest import Manifest
from vitedge.metrics import compare_logits
from vitedge.onnx_utils import module_name

ARTIFACTS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
             ("openvino", "fp16"), ("openvino", "int8")]


def _logits(artifact: Path, x: np.ndarray, **options) -> np.ndarray:
    with vitedge.load(artifact, **options) as predictor:
        return predictor.predict(x, batch_size=64)


@pytest.mark.parametrize(("target", "precision"), ARTIFACTS)
def test_demo_artifact_accuracy(compiled_demo, demo_val_tensors, demo_reference_logits,
                                target: str, precision: str) -> None:
    """FP32: same top-1 as PyTorch everywhere, logits within 1e-3. INT8: >= 99.5 % agreement, <= 0.5 pt drop."""
    artifact = compiled_demo(target, precision)
    metrics = compare_logits(demo_reference_logits, _logits(artifact, demo_val_tensors.x),
                             demo_val_tensors.labels)
    print(f"{target} {precision}: agreement {metrics['top1_agreement']:.4f}, max abs err "
          f"{metrics['max_abs_err']:.3g}, accuracy {metrics['top1_acc']:.4f} "
          f"(pytorch {metrics['ref_top1_acc']:.4f}, delta {metrics['acc_delta']:+.4f})")
    assert metrics["samples"] == 360
    assert metrics["ref_top1_acc"] > 0.9  # the trained demo, not a random model
    if precision == "fp32":
        assert metrics["top1_agreement"] == 1.0
        assert metrics["max_abs_err"] <= 1e-3
    elif precision == "int8":
        assert metrics["top1_agreement"] >= 0.995
        assert metrics["acc_drop"] <= 0.005
    else:  # OpenVINO fp16: FP16 weights, run in the CPU's half type (bf16 here)
        assert metrics["top1_agreement"] >= 0.99
        assert metrics["acc_drop"] <= 0.01


@pytest.mark.parametrize(("target", "precision"), ARTIFACTS)
def test_manifest_extends_the_export(compiled_demo, demo_export: Path, digits_calib: Path,
                                     target: str, precision: str) -> None:
    artifact = compiled_demo(target, precision)
    manifest = Manifest.load(artifact)
    export = Manifest.load(demo_export)
    manifest.verify_files(artifact)
    assert manifest["kind"] == "compiled" and manifest["target"] == target and manifest["precision"] == precision
    for key in ("source", "preprocessing", "labels", "io"):
        assert manifest[key] == export[key]
    assert manifest["export"]["model_sha256"] == export["files"]["model.onnx"]
    assert manifest["export"]["parity"]["passed"] is True
    build = manifest["compile"]
    assert build["seconds"] > 0
    assert build["artifact_bytes"] == sum((artifact / name).stat().st_size for name in manifest["files"])
    assert build["cpu"] == json.loads(json.dumps(cpu_info()))  # the build machine's model and ISA flags
    assert (artifact / manifest["artifact"]["model"]).is_file()
    if precision == "int8":
        cal = manifest["calibration"]
        assert cal["size"] == 300 and cal["seed"] == 0 and cal["source"] == str(digits_calib)
        assert cal["method"] == {"onnxruntime": "minmax", "openvino": "nncf"}[target]
        assert len(cal["content_hash"]) == 64
    else:
        assert manifest["calibration"] is None
    plan = manifest["precision_plan"]
    assert all(set(entry) == {"node", "op", "module", "dtype", "reason"} for entry in plan)
    if plan:
        assert sum(manifest["precision_summary"].values()) == len(plan)
    else:  # ONNX Runtime fp32: nothing is lowered
        assert manifest["precision_summary"] == {"all": "fp32"}


def test_onnxruntime_int8_plan_keeps_vit_sensitive_ops_float(compiled_demo) -> None:
    manifest = Manifest.load(compiled_demo("onnxruntime", "int8"))
    by_module = {(e["module"], e["op"]): e for e in manifest["precision_plan"]}
    for module in ("patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.3.mlp.fc1",
                   "blocks.3.mlp.fc2"):
        entry = next(e for (m, _), e in by_module.items() if m == module)
        assert entry["dtype"] == "int8", entry
    floats = {e["op"] for e in manifest["precision_plan"] if e["dtype"] == "fp32"}
    assert {"LayerNormalization", "Softmax", "Erf", "Add"} <= floats
    attention = [e for e in manifest["precision_plan"] if e["op"] == "MatMul" and e["module"] == "blocks.0.attn"]
    assert len(attention) == 2 and all(e["dtype"] == "fp32" for e in attention)
    assert manifest["precision_summary"] == {"fp32": 74, "int8": 18}
    assert manifest["artifact"]["attention_matmuls"] == "float"


def test_onnxruntime_int8_graph_is_symmetric_int8_qdq(compiled_demo) -> None:
    """INT8 zero points 0, per-channel weight scales, no Q/DQ in front of LayerNorm/Softmax/GELU."""
    from vitedge.precision.trt_ready import check_trt_ready

    model = onnx.load(str(compiled_demo("onnxruntime", "int8") / "model.onnx"))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = consts[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in consts]
    assert weight_dq and all(consts[n.input[1]].size > 1 for n in weight_dq)  # per-channel scales
    assert all(consts[n.input[0]].dtype == np.int8 for n in weight_dq)
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "Erf", "Add"):
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                       for i in node.input if i not in consts), node.name
    # the exporter's module names survive pre-processing and quantization
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert all(module_name(n) for n in matmuls)
    assert all(module_name(n) for n in qdq if n.op_type == "DequantizeLinear")
    assert check_trt_ready(model)["passed"]


def test_onnxruntime_fp32_is_saved_optimised_and_portable(compiled_demo, demo_export: Path) -> None:
    manifest = Manifest.load(compiled_demo("onnxruntime", "fp32"))
    assert manifest["artifact"]["graph_optimization"] == "ORT_ENABLE_EXTENDED"
    assert manifest["runtime"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    optimised = onnx.load(str(compiled_demo("onnxruntime", "fp32") / "model.onnx"))
    exported = onnx.load(str(demo_export / "model.onnx"))
    assert len(optimised.graph.node) < len(exported.graph.node)  # fused
    assert not any(n.op_type.startswith("NCHWc") or n.domain == "com.microsoft.nchwc" for n in optimised.graph.node)


def test_openvino_runtime_properties_are_recorded_and_honest(compiled_demo) -> None:
    fp32 = Manifest.load(compiled_demo("openvino", "fp32"))
    assert fp32["runtime"]["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert fp32["runtime"]["properties"]["PERFORMANCE_HINT"] == "LATENCY"
    assert fp32["runtime"]["resolved_at_build"]["inference_precision"] == "fp32"
    assert fp32["artifact"]["weights"] == "fp32"
    assert {e["dtype"] for e in fp32["precision_plan"]} == {"fp32"}
    fp16 = Manifest.load(compiled_demo("openvino", "fp16"))
    assert fp16["artifact"]["weights"] == "fp16"
    capabilities = fp16["runtime"]["cpu_capabilities"]
    expected = "fp16" if "FP16" in capabilities else "bf16" if "BF16" in capabilities else "fp32"
    assert fp16["precision_run"] == expected
    assert (compiled_demo("openvino", "fp16") / "model.bin").stat().st_size < \
        0.6 * (compiled_demo("openvino", "fp32") / "model.bin").stat().st_size
    int8 = Manifest.load(compiled_demo("openvino", "int8"))
    assert int8["runtime"]["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert int8["artifact"]["model_type"] == "TRANSFORMER"
    plan = int8["precision_plan"]
    assert any(e["dtype"] == "int8" and e["module"] == "blocks.0.attn.qkv" for e in plan)
    assert all(e["dtype"] == "fp32" for e in plan if e["op"] == "MVN")  # LayerNorm stays float


def test_quantize_qdq_options(demo_export: Path, digits_calib: Path, tmp_path: Path) -> None:
    """Attention MatMuls on request, ignored scope by module name / type, every calibration method."""
    from vitedge.data import load_tensors, open_image_set
    from vitedge.precision.int8 import IgnoredScope, quantize_qdq

    manifest = Manifest.load(demo_export)
    x = load_tensors(open_image_set(digits_calib, manifest.labels).subset(64, seed=1), manifest.preprocessing).x
    source = demo_export / "model.onnx"
    scope = IgnoredScope.parse(["blocks.1.mlp.fc1", "type:Conv", "re:^blocks\\.3\\.attn\\.qkv$"])
    excluded = scope.select(onnx.load(str(source)))
    plan = quantize_qdq(source, tmp_path / "a.onnx", x, method="entropy", exclude_nodes=excluded,
                        quantize_attention_matmuls=True)
    by_module = {}
    for e in plan:
        by_module.setdefault(e["module"], []).append(e)
    assert all(e["dtype"] == "int8" for e in by_module["blocks.0.attn"] if e["op"] == "MatMul")
    for module in ("blocks.1.mlp.fc1", "patch_embed.proj", "blocks.3.attn.qkv"):
        matmul = next(e for e in by_module[module] if e["op"] in ("MatMul", "Conv"))
        assert (matmul["dtype"], matmul["reason"]) == ("fp32", "excluded by --ignored-scope")
    plan = quantize_qdq(source, tmp_path / "b.onnx", x, method="percentile")
    assert sum(e["dtype"] == "int8" for e in plan) == 18
    with pytest.raises(BadInput, match="matched no node for nope"):
        IgnoredScope.parse(["nope"]).select(onnx.load(str(source)))


def test_openvino_int8_accuracy_control_and_ignored_scope(cli, demo_export: Path, digits_calib: Path,
                                                          digits_val: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov-ac"
    r = cli("compile", demo_export, "--target", "openvino", "--precision", "int8", "--calib", digits_calib,
            "--calib-size", "200", "--max-drop", "0.005", "--val", digits_val,
            "--ignored-scope", "blocks.0.attn.qkv", "--ignored-scope", "type:Convolution", "-o", out)
    assert r.code == 0, r.text
    manifest = Manifest.load(out)
    assert manifest["artifact"]["max_drop"] == 0.005
    assert manifest["calibration"]["size"] == 200
    assert manifest["validation"]["samples"] == 360
    assert manifest["validation"]["acc_drop"] <= 0.005
    entries = [e for e in manifest["precision_plan"] if e["module"] in ("blocks.0.attn.qkv", "patch_embed.proj")
               and e["op"] in ("FullyConnected", "Convolution")]
    assert len(entries) == 2
    assert all((e["dtype"], e["reason"]) == ("fp32", "excluded by --ignored-scope") for e in entries)
    assert "validation (360 images" in r.out and "accuracy" in r.out


def test_compile_summary_and_quiet(cli, demo_export: Path, tmp_path: Path) -> None:
    r = cli("compile", demo_export, "--target", "onnxruntime", "--precision", "fp32", "-o", tmp_path / "a")
    assert r.code == 0, r.text
    assert "compiled demo:digits" in r.out and "onnxruntime fp32" in r.out
    r = cli("--quiet", "compile", demo_export, "--target", "onnxruntime", "-o", tmp_path / "b")
    assert r.code == 0 and r.out == ""
    assert (tmp_path / "b" / "vitedge.json").is_file()


def test_openvino_int8_warns_on_a_cpu_without_int8_dot_products(cli, demo_export: Path, digits_calib: Path,
                                                                tmp_path: Path, monkeypatch) -> None:
    """Without VNNI/AMX OpenVINO INT8 takes a generic path (slower than FP32 on ViT-S here): say so."""
    from vitedge.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "cpu_info", lambda: {**cpu_info(), "int8_vnni": False})
    r = cli("compile", demo_export, "--target", "openvino", "--precision", "int8", "--calib", digits_calib,
            "--calib-size", "32", "-o", tmp_path / "int8")
    assert r.code == 0, r.text
    assert "no INT8 dot-product instructions" in r.text and "faster(openvino-int8, openvino-fp32)" in r.text
    assert Manifest.load(tmp_path / "int8")["runtime"]["cpu_int8_vnni"] is False
    monkeypatch.setattr(ov_backend, "cpu_info", lambda: {**cpu_info(), "int8_vnni": True})
    r = cli("compile", demo_export, "--target", "openvino", "--precision", "int8", "--calib", digits_calib,
            "--calib-size", "32", "-o", tmp_path / "int8-vnni")
    assert r.code == 0 and "dot-product" not in r.text


def _corrupt_images(folder: Path, count: int) -> Path:
    for i in range(count):
        (folder / str(i % 10)).mkdir(parents=True, exist_ok=True)
        (folder / str(i % 10) / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--target", "onnxruntime", "--precision", "fp16"], 2, "does not support --precision fp16"),
    (["--target", "openvino", "--precision", "int8"], 2, "needs --calib"),
    (["--target", "coreml"], 2, "--target 'coreml' is not a known target; compile targets are onnxruntime, openvino"),
    (["--target", "onnxruntime", "--precision", "int8", "--calib", "CALIB", "--calib-method", "kl"], 2,
     "--calib-method 'kl' is not available"),
    (["--target", "onnxruntime", "--precision", "int8", "--calib", "CALIB", "--max-drop", "0.01"], 2,
     "--max-drop is not an option of --target onnxruntime; it is for --target openvino"),
    (["--target", "onnxruntime", "--workspace", "2"], 2,
     "--workspace is not an option of --target onnxruntime; it is for --target tensorrt"),
    (["--target", "openvino", "--precision", "int8", "--calib", "CALIB", "--hint", "fast"], 2,
     "--hint takes latency or throughput, got 'fast'"),
    (["--target", "openvino", "--precision", "int8", "--calib", "CALIB", "--max-drop", "1.5", "--val", "CALIB"], 2,
     "--max-drop takes an absolute top-1 drop in (0, 1)"),
    (["--target", "openvino", "--threads", "0"], 2, "--threads takes a positive number of threads, got 0"),
    (["--target", "openvino", "--precision", "int8", "--calib", "CALIB", "--max-drop", "0.01"], 2,
     "--max-drop needs --val"),
    (["--target", "openvino", "--precision", "int8", "--calib", "BROKEN"], 2, "could not be decoded"),
    (["--target", "onnxruntime", "--precision", "int8", "--calib", "CALIB", "--ignored-scope", "no.such"], 2,
     "matched no node for no.such"),
    (["--target", "onnxruntime", "--precision", "int8", "--calib", "EMPTY"], 2, "holds no images"),
    (["--target", "onnxruntime", "--smoothquant-alpha", "0.75"], 2,
     "--smoothquant-alpha apply to --precision int8 only"),
    (["--target", "openvino", "--precision", "bf16", "--smoothquant-alpha", "0.75"], 2,
     "--float-precision and --activations apply to --precision int8 only"),
    (["--target", "openvino", "--precision", "fp32", "--activations", "symmetric"], 2,
     "--float-precision and --activations apply to --precision int8 only"),
    (["--target", "tensorrt", "--precision", "fp16", "--smoothquant-alpha", "0.75"], 2,
     "--smoothquant-alpha applies to vitedge's own --precision int8 quantization only"),
    (["--target", "onnxruntime", "--precision", "int8", "--calib", "CALIB", "--smoothquant-alpha", "1"], 2,
     "--smoothquant-alpha takes a SmoothQuant alpha in (0, 1), e.g. 0.75, got 1.0"),
])
def test_bad_input_one_line_exit_code_nothing_written(cli, demo_export: Path, digits_calib: Path, tmp_path: Path,
                                                      args: list[str], code: int, message: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    swap = {"CALIB": str(digits_calib), "BROKEN": str(_corrupt_images(tmp_path / "broken", 20)), "EMPTY": str(empty)}
    out = tmp_path / "out"
    r = cli("compile", demo_export, *[swap.get(a, a) for a in args], "-o", out)
    assert r.code == code, r.text
    assert message in r.text
    assert "Traceback" not in r.text and len(r.err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_input_dir_must_be_an_export(cli, demo_export: Path, compiled_demo, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    r = cli("compile", tmp_path / "plain", "--target", "onnxruntime", "-o", tmp_path / "out")
    assert r.code == 2 and "is not an export dir" in r.text and not (tmp_path / "out").exists()
    r = cli("compile", compiled_demo("onnxruntime", "fp32"), "--target", "openvino", "-o", tmp_path / "out")
    assert r.code == 2 and "not an export dir" in r.text and not (tmp_path / "out").exists()


def test_missing_backend_exits_3(cli, demo_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = base.get_backend("openvino")
    missing = base.Availability(False, None, "openvino is not installed", "pip install openvino")
    monkeypatch.setattr(type(backend), "availability", lambda self: missing)
    r = cli("compile", demo_export, "--target", "openvino", "-o", tmp_path / "out")
    assert r.code == 3 and "openvino is not installed" in r.text and "pip install openvino" in r.text
    assert not (tmp_path / "out").exists()


class _WritesPartOnly(base.Backend):
    """A backend whose runtime is missing but whose compile still writes what it can."""

    name = "partial-test"
    precisions = ("fp32",)
    compiles_without_runtime = True

    def availability(self) -> base.Availability:
        return base.Availability(False, None, "the runtime is absent", "install it")

    def compile(self, export_dir, out_dir, manifest, options):
        (out_dir / "plan.json").write_text(json.dumps({"ok": True}))
        manifest["artifact"] = {"model": "plan.json"}
        manifest["incomplete"] = {"reason": "the runtime is absent, so nothing was built",
                                  "next_step": "run build.sh on the target"}
        return manifest

    def open_runner(self, artifact_dir, manifest, **options):
        raise AssertionError("never opened")


def test_incomplete_artifact_is_committed_and_exits_3(cli, demo_export: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract TensorRT uses without TensorRT: commit what was written, print next step, exit 3."""
    monkeypatch.setitem(base._REGISTRY, _WritesPartOnly.name, _WritesPartOnly())
    out = tmp_path / "partial"
    r = cli("compile", demo_export, "--target", "partial-test", "-o", out)
    assert r.code == 3, r.text
    assert "next step: run build.sh on the target" in r.out
    assert "error: the runtime is absent, so nothing was built" in r.err
    manifest = Manifest.load(out)
    manifest.verify_files(out)
    assert manifest["incomplete"]["next_step"] == "run build.sh on the target"
    assert (out / "plan.json").is_file()
