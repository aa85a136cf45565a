"""Readiness check: reject, on a CPU, what TensorRT's ONNX parser (strongly typed) would reject.

TensorRT's explicit quantization is symmetric INT8: zero points must be constant zeros of
type INT8, scales constant, per-channel scales only on constant weights (along the output
channel), and no INT32 bias dequantization. A weight may come in any of the three forms
TensorRT documents: an FP32/FP16 weight -> QuantizeLinear -> DequantizeLinear (what NVIDIA
ModelOpt and QAT exports write; TensorRT quantizes it at build time), an INT8 weight ->
DequantizeLinear (what ONNX Runtime writes), or a weight-only DequantizeLinear with float
activations. LayerNorm spelled out as ReduceMean/Pow/Sqrt overflows in FP16 and is not fused
into one normalization layer. Every problem names its node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from vitedge.errors import CompileFailed
from vitedge.onnx_utils import QDQ_OPS, default_opset
from vitedge.precision.stats import float_tensor_types

MIN_OPSET = 17  # fused LayerNormalization
CHECKS = ("opset >= 17", "Q/DQ types are INT8 (no UINT8)", "zero points are constant zeros",
          "scales are constant", "per-channel scales only on constant weights, output-channel axis",
          "no INT32 bias dequantization", "no decomposed LayerNorm")


@dataclass
class Problem:
    node: str
    op: str
    problem: str


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs, as arrays."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


# Ops through which a constant stays a constant (TensorRT folds them at build time); the
# first four keep the rank of their input.
_SAME_RANK = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast", "Identity", "Transpose"})
_WEIGHT_PRESERVING = _SAME_RANK | {"Reshape", "Squeeze", "Unsqueeze"}


def weight_tensors(model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> dict[str, int | None]:
    """Constants, and everything computed from constants only through Q/DQ, Cast and layout ops,
    with their rank (None: not known without shape inference).

    The output of `QuantizeLinear(FP16 weight)` is such a tensor: a weight, not an activation.
    """
    weights: dict[str, int | None] = {name: value.ndim for name, value in constants.items()}
    for node in model.graph.node:  # topologically sorted
        data = node.input[:1] if node.op_type in QDQ_OPS else [t for t in node.input if t]
        if node.op_type in _WEIGHT_PRESERVING and data and all(t in weights for t in data):
            rank = weights[data[0]] if node.op_type in _SAME_RANK else None
            if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants:
                rank = int(constants[node.input[1]].size)
            weights.update({out: rank for out in node.output})
    return weights


def _weight_axis(consumer: onnx.NodeProto, index: int, rank: int) -> int | None:
    """The output-channel axis of a weight read by CONSUMER at input INDEX (None: not a weight)."""
    if consumer.op_type == "Conv" and index == 1:
        return 0
    if consumer.op_type == "ConvTranspose" and index == 1:
        return 1
    if consumer.op_type == "MatMul" and index == 1:
        return rank - 1  # [.., K, N]: per output column
    if consumer.op_type == "Gemm" and index == 1:
        return 0 if _attr(consumer, "transB", 0) else 1
    return None


def find_problems(model: onnx.ModelProto) -> list[Problem]:
    """Everything in MODEL that TensorRT's ONNX parser would reject, each with its node."""
    problems: list[Problem] = []
    opset = default_opset(model)
    if opset < MIN_OPSET:
        problems.append(Problem("(model)", "", f"opset {opset} < {MIN_OPSET}: LayerNorm cannot be one "
                                "LayerNormalization node; re-export with --opset 17 or newer"))
    types = float_tensor_types(model)
    constants = _constants(model)
    weights = weight_tensors(model, constants)
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for i, t in enumerate(node.input):
            consumers.setdefault(t, []).append((node, i))
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            problems += _check_qdq(node, types, constants, weights, consumers, opset)
    problems += _decomposed_layernorms(model, constants)
    return problems


def _linear_readers(tensor: str, consumers: dict[str, list[tuple[onnx.NodeProto, int]]]
                    ) -> list[tuple[onnx.NodeProto, int]]:
    """The nodes that read TENSOR, looking through Q/DQ (a weight's Q feeds its DQ, the DQ its GEMM)."""
    found = []
    for consumer, index in consumers.get(tensor, []):
        if consumer.op_type in QDQ_OPS and index == 0:
            found += _linear_readers(consumer.output[0], consumers)
        else:
            found.append((consumer, index))
    return found


def _check_qdq(node: onnx.NodeProto, types: dict[str, int], constants: dict[str, np.ndarray],
               weights: dict[str, int | None],
               consumers: dict[str, list[tuple[onnx.NodeProto, int]]], opset: int) -> list[Problem]:
    found = []

    def bad(text: str) -> None:
        found.append(Problem(node.name, node.op_type, text))

    x, scale_name = node.input[0], node.input[1]
    zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
    quantized = x if node.op_type == "DequantizeLinear" else node.output[0]
    qtype = types.get(quantized)
    if zero_point is None and node.op_type == "QuantizeLinear" and _attr(node, "output_dtype", 0) == 0:
        qtype = TensorProto.UINT8  # ONNX's default when no zero point is given
    if qtype == TensorProto.UINT8:
        bad("UINT8 quantization: TensorRT takes symmetric INT8 only (quantize with QInt8 activations)")
    elif qtype == TensorProto.INT32:
        bad("INT32 dequantization (a quantized bias): TensorRT keeps biases float; quantize with "
            "QuantizeBias=False")
    elif qtype not in (TensorProto.INT8, None):
        bad(f"{TensorProto.DataType.Name(qtype)} quantization: this check only passes INT8")
    if zero_point is not None:
        if zero_point not in constants:
            bad(f"zero point {zero_point} is not a constant: TensorRT needs constant zeros")
        elif np.any(constants[zero_point] != 0):
            bad(f"zero point {zero_point} is not zero: TensorRT quantization is symmetric")
    if scale_name not in constants:
        bad(f"scale {scale_name} is not a constant")
        return found
    scale = constants[scale_name]
    if scale.dtype == np.float16 and opset < 19:
        bad("FP16 scale needs opset >= 19")
    if scale.size > 1:
        if x not in weights:
            bad(f"per-channel scales ({scale.size}) on an activation: TensorRT takes per-tensor "
                "activation scales")
        elif weights[x]:  # rank known: the axis must be the output channel of every GEMM/Conv reading it
            rank = int(weights[x])  # type: ignore[arg-type]
            axis = _attr(node, "axis", 1) % rank
            for consumer, index in _linear_readers(node.output[0], consumers):
                want = _weight_axis(consumer, index, rank)
                if want is not None and want != axis:
                    bad(f"per-channel weight scales on axis {axis}; {consumer.op_type} {consumer.name} "
                        f"needs its output-channel axis {want}")
    return found


def _decomposed_layernorms(model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> list[Problem]:
    """Sub -> Pow(2) (or Mul(d, d)) -> ReduceMean: a variance computed by hand, i.e. LayerNorm spelled out."""
    producers = {out: n for n in model.graph.node for out in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    found = []
    for node in model.graph.node:
        if len(node.input) != 2 or not node.output:  # Constant and other source nodes have no inputs
            continue
        squares = (node.op_type == "Pow" and node.input[1] in constants and np.all(constants[node.input[1]] == 2)) \
            or (node.op_type == "Mul" and node.input[0] == node.input[1])
        source = producers.get(node.input[0]) if squares else None
        if source is not None and source.op_type == "Sub" and \
                any(r.op_type == "ReduceMean" for r in readers.get(node.output[0], [])):
            found.append(Problem(node.name, node.op_type,
                                 "decomposed LayerNorm (Sub -> square -> ReduceMean): overflows in FP16 "
                                 "and is not fused; re-export with opset >= 17 for LayerNormalization"))
    return found


def check_trt_ready(model: onnx.ModelProto) -> dict[str, Any]:
    """Raise CompileFailed naming the offending nodes; otherwise the record kept in the manifest."""
    problems = find_problems(model)
    if problems:
        shown = "; ".join(f"{p.node} ({p.op}): {p.problem}" if p.op else f"{p.problem}" for p in problems[:3])
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CompileFailed(f"the graph is not TensorRT-ready: {shown}{more}")
    qdq = sum(n.op_type in QDQ_OPS for n in model.graph.node)
    return {"passed": True, "checks": list(CHECKS), "qdq_nodes": qdq}
