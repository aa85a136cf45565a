"""TensorRT INT8 without TensorRT: the accurate/fast placement plans and `--quantized` imports, on the demo.

The pre-quantized graphs are made here the way QAT exports and NVIDIA ModelOpt write them
(FP32 weight -> QuantizeLinear -> DequantizeLinear, per output channel), from the demo's own
export, so the test needs neither ModelOpt nor a GPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from vitedge.manifest import Manifest
from vitedge.precision import int8
from vitedge.precision.int8 import plan_int8, quantize_qdq
from vitedge.precision.trt_ready import check_trt_ready

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
# exit code of a TensorRT compile here: 0 where TensorRT (on its GPU) or TensorRT-RTX (anywhere) builds the
# engine, 3 where neither is installed (graph and manifest only)
NO_ENGINE = 0 if HAVE_TRT or HAVE_RTX else 3


@pytest.fixture(scope="module")
def demo_calib_x(demo_export: Path, digits_calib: Path) -> np.ndarray:
    from vitedge.data import load_tensors, open_image_set

    manifest = Manifest.load(demo_export)
    return load_tensors(open_image_set(digits_calib, manifest.labels).subset(96, 0), manifest.preprocessing).x


def _float_weight_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """INT8 weight -> DQ rewritten as FP32 weight -> Q -> DQ: the QAT / ModelOpt form."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        weight = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is not None and weight.data_type == onnx.TensorProto.INT8:
            q = numpy_helper.to_array(weight).astype(np.float32)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            weight.CopyFrom(numpy_helper.from_array(q * scale.reshape(shape) if scale.size > 1 else q * scale,
                                                    f"{weight.name}_float"))
            nodes.append(helper.make_node("QuantizeLinear", [weight.name, *node.input[1:]], [f"{weight.name}_q"],
                                          name=f"{node.name}_weight_q", axis=axis))
            node.input[0] = f"{weight.name}_q"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.producer_name, model.producer_version = "qat-like-test", "1.0"
    return model


@pytest.fixture(scope="module")
def qat_graph(demo_export: Path, demo_calib_x: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qat")
    quantize_qdq(demo_export / "model.onnx", folder / "ort.onnx", demo_calib_x, method="minmax")
    model = _float_weight_form(onnx.load(str(folder / "ort.onnx")))
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "qat.onnx"))
    return folder / "qat.onnx"


def test_quantized_graph_is_checked_measured_and_recorded(cli, demo_export: Path, digits_calib: Path,
                                                          digits_val: Path, qat_graph: Path, tmp_path: Path) -> None:
    weight_q = [n for n in onnx.load(str(qat_graph)).graph.node if n.name.endswith("_weight_q")]
    assert len(weight_q) == 18  # every weight in the float-weight form the old check rejected
    out = tmp_path / "imported"
    r = cli("compile", demo_export, "--target", "tensorrt", "--precision", "int8", "--calib", digits_calib,
            "--calib-size", "32", "--val", digits_val, "--quantized", qat_graph, "-o", out)
    assert r.code == NO_ENGINE, r.text
    manifest = Manifest.load(out)
    record = manifest["quantized_import"]
    assert record["sha256"] == hashlib.sha256(qat_graph.read_bytes()).hexdigest()
    assert record["file"] == str(qat_graph.resolve()) and record["producer"] == "qat-like-test 1.0"
    assert record["same_network"]["cosine_mean"] > 0.99 and record["same_network"]["data"] == "--val"
    assert record["profile"]["qdq_nodes"] == 3 * 18 + 18  # activation Q/DQ, weight Q + DQ
    assert manifest["trt_ready"]["passed"] and manifest["precision_summary"]["int8"] == 18
    drift = manifest["cpu_verification"]["fp16_storage_emulated"]
    assert drift["top1_agreement"] >= 0.995 and drift["acc_drop"] <= 0.005
    assert onnx.load(str(out / "model.trt.onnx")).graph.node[0].name == onnx.load(str(qat_graph)).graph.node[0].name


def test_another_network_or_other_io_is_refused(cli, demo_export: Path, digits_calib: Path, qat_graph: Path,
                                                tmp_path: Path) -> None:
    model = onnx.load(str(qat_graph))
    head = next(i for i in model.graph.initializer if i.name.startswith("head.weight") and i.name.endswith("_float"))
    rng = np.random.default_rng(0)
    head.CopyFrom(numpy_helper.from_array(rng.permutation(numpy_helper.to_array(head).ravel()).reshape(head.dims),
                                          head.name))  # same architecture, another (scrambled) classifier
    onnx.save(model, str(tmp_path / "other.onnx"))
    r = cli("compile", demo_export, "--target", "tensorrt", "--precision", "int8", "--calib", digits_calib,
            "--calib-size", "32", "--quantized", tmp_path / "other.onnx", "-o", tmp_path / "a")
    assert r.code == 4 and "does not compute the export's network" in r.text and not (tmp_path / "a").exists()
    model.graph.input[0].name = "image"
    for node in model.graph.node:
        node.input[:] = ["image" if t == "pixel_values" else t for t in node.input]
    onnx.save(model, str(tmp_path / "renamed.onnx"))
    r = cli("compile", demo_export, "--target", "tensorrt", "--precision", "int8", "--calib", digits_calib,
            "--calib-size", "32", "--quantized", tmp_path / "renamed.onnx", "-o", tmp_path / "b")
    assert r.code == 2 and "is not the export's network: inputs ['image']" in r.text
    assert not (tmp_path / "b").exists()
    model = onnx.load(str(qat_graph))
    model.graph.node[-1].domain = "trt.plugins"  # a TensorRT plugin op: nothing on CPU runs it
    model.opset_import.append(helper.make_opsetid("trt.plugins", 1))
    onnx.save(model, str(tmp_path / "plugin.onnx"))
    r = cli("compile", demo_export, "--target", "tensorrt", "--precision", "int8", "--calib", digits_calib,
            "--calib-size", "32", "--quantized", tmp_path / "plugin.onnx", "-o", tmp_path / "c")
    assert r.code == 2 and "ONNX Runtime cannot run it on CPU" in r.text and not (tmp_path / "c").exists()


@pytest.mark.parametrize(("flags", "words"), [
    (["--precision", "int8", "--quantized", "missing.onnx"], "--quantized missing.onnx does not exist"),
    (["--precision", "int8", "--quantized", "{export}/model.onnx"], "has no QuantizeLinear/DequantizeLinear"),
    (["--precision", "int8", "--quantized", "{qat}", "--plan", "fast"], "give one of them"),
    (["--precision", "fp16", "--plan", "fast"], "--plan is for --precision int8"),
    (["--precision", "int8", "--plan", "fastest"], "--plan takes accurate or fast"),
    (["--precision", "int8", "--target", "onnxruntime", "--plan", "fast"], "it is for --target tensorrt"),
])
def test_plan_and_quantized_flags_fail_before_any_work(cli, demo_export: Path, digits_calib: Path, qat_graph: Path,
                                                       tmp_path: Path, flags: list, words: str) -> None:
    flags = [f.format(export=demo_export, qat=qat_graph) for f in flags]
    target = [] if "--target" in flags else ["--target", "tensorrt"]
    r = cli("compile", demo_export, *target, "--calib", digits_calib, "-o", tmp_path / "x", *flags)
    assert r.code == 2 and words in r.text and not (tmp_path / "x").exists(), r.text


@pytest.fixture(scope="module")
def fast_artifact(demo_export: Path, digits_calib: Path, digits_val: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitedge.compile import compile_artifact
    from vitedge.errors import EnvironmentProblem

    out = tmp_path_factory.mktemp("trt") / "fast"
    try:
        compile_artifact(demo_export, out, target="tensorrt", precision="int8", calib=str(digits_calib),
                         calib_size=200, val=digits_val, extra={"plan": "fast"})
    except EnvironmentProblem:
        assert not HAVE_TRT and not HAVE_RTX
    return out


def test_fast_plan_follows_nvidia_placement_and_keeps_demo_accuracy(fast_artifact: Path) -> None:
    manifest = Manifest.load(fast_artifact)
    plans = manifest["int8_plans"]
    assert plans["chosen"] == "fast" and manifest["trt_ready"]["passed"]
    accurate, fast = plans["accurate"]["profile"], plans["fast"]["profile"]
    assert fast["casts"] <= 4 < accurate["casts"]  # graph I/O only vs LayerNorm/Softmax islands
    assert "fp32" not in fast["ops_by_precision"] and accurate["ops_by_precision"]["fp32"] == 13
    assert fast["non_gemm_bytes"] < accurate["non_gemm_bytes"]
    layernorm_bytes = [p["non_gemm_bytes_by_op"]["LayerNormalization"] for p in (fast, accurate)]
    assert layernorm_bytes[0] * 2 == layernorm_bytes[1]  # FP16 I/O instead of FP32
    graph = onnx.load(str(fast_artifact / "model.trt.onnx"))
    inferred = onnx.shape_inference.infer_shapes(graph).graph.value_info
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred}
    norms = [n for n in graph.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 9 and all(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in norms)
    assert all(next(a.i for a in n.attribute if a.name == "stash_type") == 1 for n in norms)  # FP32 accumulation
    decisions = {d["group"]: d for d in plans["fast"]["decisions"]}
    assert set(decisions) == {"attention", "residual"}
    for decision in decisions.values():
        assert decision["quantized"] == (decision["top1_loss"] <= 0.005 and decision["cosine_loss"] <= 0.005)
    int8_ops = manifest["precision_summary"]["int8"]
    assert int8_ops == 18 + 8 * decisions["attention"]["quantized"]
    for name in ("accurate", "fast"):
        assert plans[name]["drift"]["samples"] == 64 and plans[name]["drift"]["top1_agreement"] >= 0.995
    for run in ("onnxruntime", "fp16_storage_emulated"):  # the demo's INT8 targets on held-out images
        assert manifest["cpu_verification"][run]["top1_agreement"] >= 0.995
        assert manifest["cpu_verification"][run]["acc_drop"] <= 0.005
    assert check_trt_ready(graph)["qdq_nodes"] == plans["fast"]["profile"]["qdq_nodes"]


def test_a_group_over_the_drift_budget_stays_fp16(demo_export: Path, demo_calib_x: np.ndarray,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(int8, "GATE_MAX_COSINE_LOSS", -1.0)  # any measured loss is over budget
    graph, nodes, _, record = plan_int8(demo_export / "model.onnx", demo_calib_x, method="minmax", plan="fast")
    assert [d["quantized"] for d in record["fast"]["decisions"]] == [False, False]
    assert record["fast"]["quantized_groups"] == [] and sum(n["dtype"] == "int8" for n in nodes) == 18
    attention = [n for n in nodes if "over the drift budget" in n["reason"]]
    assert len(attention) == 8 and {n["dtype"] for n in attention} == {"fp16"}
    assert not any(n.name.endswith("__res_q") for n in graph.graph.node)


def test_cost_proxy_counts_memory_traffic_with_and_without_tensorrt_fusions() -> None:
    """x -> MatMul -> bias Add -> Erf -> LayerNorm -> y, every tensor 1 x 4 FP32 = 16 bytes."""
    from vitedge.precision.profile import graph_profile

    inits = [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
             numpy_helper.from_array(np.ones(4, np.float32), "b"),
             numpy_helper.from_array(np.ones(4, np.float32), "gamma")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["biased"], name="bias"),
             helper.make_node("Erf", ["biased"], ["act"], name="erf"),
             helper.make_node("LayerNormalization", ["act", "gamma"], ["y"], name="ln")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], inits)
    profile = graph_profile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), (1, 4))
    assert profile["non_gemm_bytes_unfused"] == 3 * 32  # Add, Erf, LayerNorm: read 16 + write 16 each
    assert profile["non_gemm_bytes_by_op"] == {"LayerNormalization": 32, "Erf": 16}  # mm, biased stay in registers
    assert profile["ops_by_precision"] == {"fp32": 4} and profile["casts"] == 0
