"""Readiness check vs TensorRT's documented Q/DQ weight patterns, each graph built with onnx.helper.

TensorRT documents three valid weight forms (FP32/FP16 weight -> QuantizeLinear ->
DequantizeLinear with a per-channel axis; INT8 weight -> DequantizeLinear; weight-only
DequantizeLinear with float activations). The check must pass all three and keep rejecting
what the parser rejects.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vitedge.precision.trt_ready import check_trt_ready, find_problems

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _graph(nodes: list, inits: list, dtype: int = F32, x_shape: tuple = ("n", 4)) -> onnx.ModelProto:
    y_shape = ["n", "m"] if len(x_shape) == 2 else ["n", "c", "h", "w"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, list(x_shape))],
                              [helper.make_tensor_value_info("y", dtype, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _act_qdq(dtype: np.dtype) -> tuple[list, list]:
    """x -> Q -> DQ (per-tensor INT8), the activation side every pattern shares."""
    inits = [numpy_helper.from_array(np.asarray(0.05, dtype), "s_x"), numpy_helper.from_array(np.int8(0), "zp_x")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s_x", "zp_x"], ["xd"], name="dq_x")]
    return nodes, inits


def _float_weight_qdq(op: str, dtype: np.dtype, axis: int, trans_b: int = 0, act_axis_scale: bool = False
                      ) -> onnx.ModelProto:
    """ModelOpt / QAT form: float weight -> Q(per-channel) -> DQ -> MatMul/Gemm."""
    shape = (3, 4) if trans_b else (4, 3)
    w = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    nodes, inits = _act_qdq(dtype)
    if act_axis_scale:  # break it: per-channel scales on the activation
        inits[0] = numpy_helper.from_array(np.full(4, 0.05, dtype), "s_x")
        nodes[0].attribute.append(helper.make_attribute("axis", 1))
        nodes[1].attribute.append(helper.make_attribute("axis", 1))
    inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(shape[axis], 0.01, dtype), "s_w"),
              numpy_helper.from_array(np.zeros(shape[axis], np.int8), "zp_w")]
    nodes += [helper.make_node("QuantizeLinear", ["w", "s_w", "zp_w"], ["wq"], name="q_w", axis=axis),
              helper.make_node("DequantizeLinear", ["wq", "s_w", "zp_w"], ["wd"], name="dq_w", axis=axis)]
    nodes.append(helper.make_node("Gemm", ["xd", "wd"], ["y"], name="fc", transB=trans_b) if op == "Gemm"
                 else helper.make_node("MatMul", ["xd", "wd"], ["y"], name="fc"))
    return _graph(nodes, inits, F16 if dtype == np.float16 else F32)


def _conv_float_weight_qdq(axis: int) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((2, 4, 1, 1)).astype(np.float32)
    nodes, inits = _act_qdq(np.float32)
    inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(w.shape[axis], 0.01, np.float32), "s_w"),
              numpy_helper.from_array(np.zeros(w.shape[axis], np.int8), "zp_w")]
    nodes += [helper.make_node("QuantizeLinear", ["w", "s_w", "zp_w"], ["wq"], name="q_w", axis=axis),
              helper.make_node("DequantizeLinear", ["wq", "s_w", "zp_w"], ["wd"], name="dq_w", axis=axis),
              helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", kernel_shape=[1, 1])]
    return _graph(nodes, inits, x_shape=("n", 4, 2, 2))


def _weight_only_dq(dtype: np.dtype) -> onnx.ModelProto:
    """INT8 weight -> DQ -> MatMul with a float activation (weight-only quantization)."""
    inits = [numpy_helper.from_array(np.arange(12, dtype=np.int8).reshape(4, 3), "w_q"),
             numpy_helper.from_array(np.full(3, 0.01, dtype), "s_w"),
             numpy_helper.from_array(np.zeros(3, np.int8), "zp_w")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["wd"], name="dq_w", axis=1),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="fc")]
    return _graph(nodes, inits, F16 if dtype == np.float16 else F32)


def _int8_weight_dq() -> onnx.ModelProto:
    """ONNX Runtime's form: INT8 weight -> DQ, activation Q/DQ."""
    nodes, inits = _act_qdq(np.float32)
    weight_only = _weight_only_dq(np.float32).graph
    dq_w, matmul = weight_only.node
    matmul.input[0] = "xd"
    return _graph([*nodes, dq_w, matmul], [*inits, *weight_only.initializer])


@pytest.mark.parametrize("model", [
    pytest.param(_float_weight_qdq("MatMul", np.float32, axis=1), id="fp32-weight-Q-DQ-matmul-axis1"),
    pytest.param(_float_weight_qdq("MatMul", np.float16, axis=1), id="fp16-weight-Q-DQ-matmul-axis1"),
    pytest.param(_float_weight_qdq("Gemm", np.float16, axis=0, trans_b=1), id="fp16-weight-Q-DQ-gemm-transB-axis0"),
    pytest.param(_float_weight_qdq("Gemm", np.float32, axis=1), id="fp32-weight-Q-DQ-gemm-axis1"),
    pytest.param(_conv_float_weight_qdq(axis=0), id="fp32-weight-Q-DQ-conv-axis0"),
    pytest.param(_int8_weight_dq(), id="int8-weight-DQ"),
    pytest.param(_weight_only_dq(np.float32), id="weight-only-DQ-fp32"),
    pytest.param(_weight_only_dq(np.float16), id="weight-only-DQ-fp16"),
])
def test_documented_weight_patterns_pass(model: onnx.ModelProto) -> None:
    assert find_problems(model) == []
    assert check_trt_ready(model)["passed"]


@pytest.mark.parametrize(("model", "node", "words"), [
    (_float_weight_qdq("MatMul", np.float16, axis=0), "q_w", "needs its output-channel axis 1"),
    (_float_weight_qdq("Gemm", np.float16, axis=1, trans_b=1), "dq_w", "needs its output-channel axis 0"),
    (_conv_float_weight_qdq(axis=1), "q_w", "needs its output-channel axis 0"),
    (_float_weight_qdq("MatMul", np.float32, axis=1, act_axis_scale=True), "q_x", "on an activation"),
    (_float_weight_qdq("MatMul", np.float32, axis=1, act_axis_scale=True), "dq_x", "on an activation"),
])
def test_what_the_parser_rejects_is_still_rejected(model: onnx.ModelProto, node: str, words: str) -> None:
    problems = find_problems(model)
    assert any(p.node == node and words in p.problem for p in problems), problems


def test_fp16_scales_need_opset_19() -> None:
    model = _float_weight_qdq("MatMul", np.float16, axis=1)
    model.opset_import[0].version = 18
    assert any("FP16 scale needs opset >= 19" in p.problem for p in find_problems(model))
