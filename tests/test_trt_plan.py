"""TensorRT without TensorRT: readiness check, INT8/FP16 plans on the demo, no-TensorRT behaviour.

Everything here runs on a CPU; what needs TensorRT and a GPU is in test_tensorrt_engine.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vitedge.backends.tensorrt import (
    DEFAULT_PROFILE,
    EngineSettings,
    _run_graph,
    engine_mismatch,
    parse_profile,
)
from vitedge.errors import BadInput, CompileFailed, EnvironmentProblem
from vitedge.manifest import Manifest
from vitedge.precision.fp16 import emulate_fp16
from vitedge.precision.trt_ready import check_trt_ready, find_problems
from vitedge.validate.metrics import compare_logits

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
ENGINE_EXIT = 0 if HAVE_TRT or HAVE_RTX else 3  # --engine-lib auto: TensorRT on its GPU, or TensorRT-RTX anywhere
F32, I8 = TensorProto.FLOAT, TensorProto.INT8


def _model(nodes: list, inits: list, opset: int = 19) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, ["n", 4])],
                              [helper.make_tensor_value_info("y", F32, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _qdq(zero_point: int = 0, act_scale: np.ndarray | None = None, weight_axis: int = 1) -> onnx.ModelProto:
    """x -> Q/DQ -> MatMul(DQ(int8 weight [4, 3])) -> y, with knobs to break each rule."""
    w = np.arange(12, dtype=np.int8).reshape(4, 3)
    inits = [numpy_helper.from_array(np.float32(0.1) if act_scale is None else act_scale, "s_x"),
             numpy_helper.from_array(np.int8(zero_point), "zp_x"),
             numpy_helper.from_array(w, "w_q"),
             numpy_helper.from_array(np.full(w.shape[weight_axis], 0.01, np.float32), "s_w"),
             numpy_helper.from_array(np.zeros(w.shape[weight_axis], np.int8), "zp_w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s_x", "zp_x"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["wd"], name="dq_w", axis=weight_axis),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="fc")]
    return _model(nodes, inits)


def test_readiness_passes_a_symmetric_int8_graph() -> None:
    assert check_trt_ready(_qdq())["qdq_nodes"] == 3


@pytest.mark.parametrize(("model", "node", "words"), [
    (_qdq(zero_point=3), "q_x", "is not zero"),
    (_qdq(act_scale=np.full(4, 0.1, np.float32)), "q_x", "per-channel scales (4) on an activation"),
    (_qdq(weight_axis=0), "dq_w", "needs its output-channel axis 1"),
])
def test_readiness_names_the_offending_node(model: onnx.ModelProto, node: str, words: str) -> None:
    problems = find_problems(model)
    assert any(p.node == node and words in p.problem for p in problems), problems
    with pytest.raises(CompileFailed, match=node):
        check_trt_ready(model)


def test_readiness_rejects_onnxruntime_defaults_and_uint8(tmp_path: Path) -> None:
    """ORT's defaults (asymmetric INT8, INT32 bias DequantizeLinear) and UINT8 activations."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    conv = helper.make_node("Conv", ["img", "k", "kb"], ["y"], name="conv", kernel_shape=[3, 3])
    graph = helper.make_graph([conv], "c", [helper.make_tensor_value_info("img", F32, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", F32, None)],
                              [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "k"),
                               numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "kb")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9),
              str(tmp_path / "conv.onnx"))
    batches = [{"img": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]

    class Reader:
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(tmp_path / "conv.onnx"), str(tmp_path / "ort.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    problems = find_problems(onnx.load(str(tmp_path / "ort.onnx")))
    assert any("is not zero" in p.problem and p.node == "img_QuantizeLinear" for p in problems)
    assert any("INT32 dequantization" in p.problem and p.node == "kb_DequantizeLinear" for p in problems)
    quantize_static(str(tmp_path / "conv.onnx"), str(tmp_path / "u8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8)
    problems = find_problems(onnx.load(str(tmp_path / "u8.onnx")))
    assert any("UINT8" in p.problem and p.node == "img_QuantizeLinear" for p in problems)


def test_readiness_rejects_decomposed_layernorm_and_old_opsets() -> None:
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=[-1]),
             helper.make_node("Sub", ["x", "mean"], ["centred"], name="centre"),
             helper.make_node("Pow", ["centred", "two"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["var"], name="variance", axes=[-1]),
             helper.make_node("Sqrt", ["var"], ["std"], name="std"),
             helper.make_node("Div", ["centred", "std"], ["y"], name="normalise")]
    model = _model(nodes, [numpy_helper.from_array(np.float32(2), "two")], opset=16)
    problems = {p.node: p.problem for p in find_problems(model)}
    assert "decomposed LayerNorm" in problems["square"]
    assert "opset 16" in problems["(model)"]


def test_profile_flags() -> None:
    assert parse_profile(None, None) == DEFAULT_PROFILE and parse_profile(None, 4) is None
    assert parse_profile("1:4:16", None) == (1, 4, 16)
    for bad in ("8", "4:2:8", "0:1:2", "a:b:c"):
        with pytest.raises(BadInput, match="MIN:OPT:MAX"):
            parse_profile(bad, None)
    with pytest.raises(BadInput, match="fixed batch of 4"):
        parse_profile("1:4:8", 4)


def test_trtexec_command_has_every_build_setting(demo_export: Path) -> None:
    settings = EngineSettings.from_options(Manifest.load(demo_export), {
        "batch": "1:4:16", "workspace_gb": 2, "opt_level": 5, "timing_cache": "vit.cache",
        "hardware_compat": "ampere+", "version_compatible": True})
    assert settings.trtexec_command(Path.cwd()) == (
        "trtexec --onnx=model.trt.onnx --stronglyTyped --noTF32 --minShapes=pixel_values:1x3x32x32 "
        "--optShapes=pixel_values:4x3x32x32 --maxShapes=pixel_values:16x3x32x32 "
        "--memPoolSize=workspace:2048 --builderOptimizationLevel=5 --timingCacheFile=vit.cache "
        "--hardwareCompatibilityLevel=ampere+ --versionCompatible --saveEngine=model.engine")


def test_engine_mismatch_messages() -> None:
    built = {"version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    assert engine_mismatch(built, "10.3.0", "Orin", "8.7") is None
    why = engine_mismatch(built, "10.7.0", "NVIDIA A100", "8.0")
    assert "TensorRT 10.7.0 here" in why and "built for Orin (sm 8.7)" in why and "rebuild" in why
    portable = {**built, "hardware_compat": "ampere+", "version_compatible": True}
    assert engine_mismatch(portable, "10.7.0", "NVIDIA A100", "8.0") is None
    assert "older than Ampere" in engine_mismatch(portable, "10.7.0", "Tesla T4", "7.5")
    assert "or a later 10.x" in engine_mismatch(portable, "10.2.0", "NVIDIA A100", "8.0")


@pytest.mark.parametrize(("flags", "words"), [
    (["--batch", "8:1:4"], "MIN:OPT:MAX"),
    (["--opt-level", "7"], "--opt-level takes 0-5"),
    (["--hardware-compat", "volta+"], "--hardware-compat takes"),
    (["--io", "fp16"], "--io fp16 needs --precision fp16 or int8"),
    (["--precision", "fp16", "--fp16-margin", "2"], "--fp16-margin"),
])
def test_bad_flags_fail_before_any_work(cli, demo_export: Path, tmp_path: Path, flags: list, words: str) -> None:
    r = cli("compile", demo_export, "--target", "tensorrt", "-o", tmp_path / "trt", *flags)
    assert r.code == 2 and words in r.text and not (tmp_path / "trt").exists()


@pytest.fixture(scope="module")
def reference(demo_val_tensors, demo_reference_logits) -> dict:
    """PyTorch FP32 logits of the demo on its held-out images."""
    return {"x": demo_val_tensors.x, "labels": demo_val_tensors.labels, "logits": demo_reference_logits}


@pytest.fixture(scope="module")
def int8_artifact(demo_export: Path, digits_calib: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`vitedge compile --target tensorrt --precision int8` on the demo (500 images, entropy)."""
    from vitedge.compile import compile_artifact

    out = tmp_path_factory.mktemp("trt") / "int8"
    try:
        compile_artifact(demo_export, out, target="tensorrt", precision="int8", calib=str(digits_calib))
    except EnvironmentProblem:
        assert not HAVE_TRT  # exit 3 without TensorRT; the graph and manifest are written all the same
    return out


def test_demo_int8_plan_is_trt_ready_and_accurate(int8_artifact: Path, reference: dict) -> None:
    manifest = Manifest.load(int8_artifact)
    manifest.verify_files(int8_artifact)
    graph = onnx.load(str(int8_artifact / "model.trt.onnx"))
    assert check_trt_ready(graph)["qdq_nodes"] == manifest["trt_ready"]["qdq_nodes"] == 3 * 18
    assert manifest["calibration"]["size"] == 500 and manifest["calibration"]["method"] == "entropy"
    assert manifest["precision_summary"] == {"int8": 18, "fp16": 61, "fp32": 13}
    for run in (graph, emulate_fp16(graph)):
        drift = compare_logits(reference["logits"], _run_graph(run, reference["x"]), reference["labels"])
        assert drift["top1_agreement"] >= 0.995
        assert drift["acc_drop"] <= 0.005


def test_demo_int8_graph_follows_tensorrt_conventions(int8_artifact: Path) -> None:
    model = onnx.load(str(int8_artifact / "model.trt.onnx"))
    assert next(o.version for o in model.opset_import if o.domain == "") == 19  # FP16 Q/DQ scales
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    quantized_ops = set()
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            if any(producers.get(t) is not None and producers[t].op_type == "DequantizeLinear" for t in node.input):
                quantized_ops.add(node.op_type)
            continue
        scale, zero_point = inits[node.input[1]], inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
        assert scale.dtype == np.float16  # every quantized node is FP16 here: no Cast between DQ and it
        if node.input[0] in inits:  # a weight: per output channel (Conv [O,I,k,k], MatMul [K,N], Gemm [N,K])
            axis = next(a.i for a in node.attribute if a.name == "axis")
            reader = next(n for n in graph.node if node.output[0] in n.input)
            assert scale.size > 1 and axis == {"Conv": 0, "MatMul": 1, "Gemm": 0}[reader.op_type]
        else:
            assert scale.size == 1
    assert quantized_ops - {"Shape"} == {"Conv", "MatMul", "Gemm"}  # never LayerNorm, Softmax, GELU, Adds
    manifest = Manifest.load(int8_artifact)
    attention = [e for e in manifest["precision_plan"] if "activation x activation" in e["reason"]]
    assert len(attention) == 8 and {e["dtype"] for e in attention} == {"fp16"}


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: compile builds the engine (test_tensorrt_engine.py)")
def test_without_tensorrt_compile_writes_the_onnx_prints_trtexec_and_exits_3(
        cli, demo_export: Path, digits_calib: Path, digits_val: Path, tmp_path: Path, reference: dict) -> None:
    out = tmp_path / "trt16"
    r = cli("compile", demo_export, "--target", "tensorrt", "--engine-lib", "tensorrt", "--precision", "fp16",
            "--calib", digits_calib, "--val", digits_val, "-o", out)
    assert r.code == 3
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TensorRT is not installed" in errors[0]
    assert "https://pypi.nvidia.com" in errors[0] and "JetPack" in errors[0]
    manifest = Manifest.load(out)
    manifest.verify_files(out)
    assert sorted(p.name for p in out.iterdir()) == ["model.trt.onnx", "vitedge.json"]
    command = manifest["tensorrt"]["trtexec"]
    assert command in r.out and command.startswith("trtexec --onnx=model.trt.onnx --stronglyTyped --noTF32 ")
    assert "--optShapes=pixel_values:8x3x32x32" in command
    assert manifest["incomplete"]["reason"] in errors[0]
    assert manifest["trt_ready"]["passed"] and manifest["precision_summary"] == {"fp16": 79, "fp32": 13}
    islands = manifest["fp16_plan"]["fp32_islands"]
    assert len(islands) == 13 and all(i["module"] and i["reason"] for i in islands)
    for run in ("onnxruntime", "fp16_storage_emulated"):
        assert manifest["cpu_verification"][run]["top1_agreement"] == 1.0
    graph = onnx.load(str(out / "model.trt.onnx"))
    drift = compare_logits(reference["logits"], _run_graph(emulate_fp16(graph), reference["x"]), reference["labels"])
    assert drift["top1_agreement"] == 1.0 and drift["acc_drop"] == 0.0
    import vitedge

    with pytest.raises(EnvironmentProblem, match="TensorRT is not installed"):
        vitedge.load(out)
    r = cli("doctor", "--json")
    tensorrt = json.loads(r.out)["backends"]["tensorrt"]["engine_libraries"]["tensorrt"]
    assert tensorrt["reason"] in errors[0] and tensorrt["install"] in errors[0]


def test_int8_options_attention_ignored_scope_and_fp16_io(
        cli, demo_export: Path, digits_calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    r = cli("compile", demo_export, "--target", "tensorrt", "--precision", "int8", "--calib", digits_calib,
            "--calib-size", "100", "--calib-method", "max", "--quantize-attention", "--io", "fp16",
            "--ignored-scope", "blocks.3.mlp.fc2", "-o", out)
    assert r.code == ENGINE_EXIT, r.text
    manifest = Manifest.load(out)
    assert manifest["precision_summary"]["int8"] == 18 + 8 - 1  # + attention MatMuls - the ignored fc2
    fc2 = [e for e in manifest["precision_plan"] if e["module"] == "blocks.3.mlp.fc2" and e["op"] == "MatMul"]
    assert [(e["dtype"], "--ignored-scope" in e["reason"]) for e in fc2] == [("fp32", True)]
    graph = onnx.load(str(out / "model.trt.onnx"))
    assert graph.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert manifest["trt_ready"]["passed"] and manifest["fp16_plan"]["io"] == "fp16"
    assert manifest["cpu_verification"]["fp16_storage_emulated"]["top1_agreement"] >= 0.99
