"""The structure of a TensorRT-ready graph, as numbers a CPU can compute: Casts, precision mix, bytes.

A GPU engine's speed cannot be measured here, so placement plans (vitedge's `accurate` and
`fast`, ModelOpt's, an imported QAT graph) are compared by what their graphs say: how many
Cast nodes, how many compute nodes run in INT8 / FP16 / FP32, and an estimate of the bytes
moved by the memory-bound (non-GEMM) nodes, which is where FP32 islands and Casts cost.
The bytes are a proxy, not a timing: it assumes no fusion except the ones TensorRT's Q/DQ
rules promise (a DequantizeLinear is absorbed by the node it feeds, weights are folded).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

GEMM_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# Views and shape arithmetic: no activation bytes move.
VIEW_OPS = frozenset({"Shape", "Size", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Constant",
                      "ConstantOfShape", "Range"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Elementwise ops TensorRT fuses into one kernel with their neighbours (its PointWise fusion) and
# into a GEMM's epilogue (bias, activation, residual). Cast is not one of them: it ends a fusion.
POINTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Exp", "Log", "Tanh", "Sigmoid",
                           "Relu", "Gelu", "LeakyRelu", "Clip", "Neg", "Abs", "Reciprocal", "Where", "Max", "Min"})
_PRECISION = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
              TensorProto.INT8: "int8"}


def _constant_derived(model: onnx.ModelProto) -> set[str]:
    """Initializers, Constant outputs and what is computed from them alone (folded at build time)."""
    folded = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        inputs = [t for t in node.input if t]
        if node.op_type == "Constant" or (inputs and all(t in folded for t in inputs)):
            folded.update(node.output)
    return folded


def node_precision(node: onnx.NodeProto, types: dict[str, int], producers: dict[str, onnx.NodeProto]) -> str:
    """int8 for a GEMM/Conv fed by a DequantizeLinear, else the dtype of its first float tensor."""
    if node.op_type in GEMM_OPS and any(producers.get(t) is not None and producers[t].op_type == "DequantizeLinear"
                                        for t in node.input):
        return "int8"
    for tensor in (*node.input, *node.output):
        if types.get(tensor) in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
            return _PRECISION[types[tensor]]
    return "other"  # integer shape arithmetic


def tensor_bytes(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Bytes of every activation tensor for one input of INPUT_SHAPE (batch 1): from shape
    inference where it knows every dimension, from a real ORT run, a few tensors at a time,
    for the others (all at once, ViT-B/16-384's run held ~1.5 GB of outputs)."""
    from vitedge.ortsession import session

    folded = _constant_derived(model)
    feed = next(i for i in model.graph.input if i.name not in {init.name for init in model.graph.initializer})
    dtype = np.float16 if feed.type.tensor_type.elem_type == TensorProto.FLOAT16 else np.float32
    sizes = {feed.name: int(np.prod(input_shape)) * np.dtype(dtype).itemsize}
    batch = {d.dim_param for d in feed.type.tensor_type.shape.dim[:1] if d.HasField("dim_param")}
    for vi in (*onnx.shape_inference.infer_shapes(model, strict_mode=False).graph.value_info, *model.graph.output):
        tensor = vi.type.tensor_type
        if vi.name in folded or not tensor.HasField("shape") or tensor.elem_type not in _ITEM_BYTES:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else input_shape[0] if d.dim_param in batch else None
                for d in tensor.shape.dim]
        if None not in dims:
            sizes[vi.name] = _ITEM_BYTES[tensor.elem_type] * int(np.prod(dims))
    unknown = [out for node in model.graph.node for out in node.output
               if out and out not in sizes and out not in folded]
    x = np.random.default_rng(0).standard_normal(input_shape).astype(dtype)
    n_outputs = len(model.graph.output)
    with tempfile.TemporaryDirectory(prefix="vitedge-profile-") as tmp:
        for start in range(0, len(unknown), 32):
            path = Path(tmp) / "probe.onnx"
            model.graph.output.extend(onnx.ValueInfoProto(name=out) for out in unknown[start:start + 32])
            try:
                onnx.save(model, str(path))
            finally:
                del model.graph.output[n_outputs:]
            sess = session(path, optimize=False)
            names = [o.name for o in sess.get_outputs()][n_outputs:]
            sizes.update((name, int(np.asarray(v).nbytes))
                         for name, v in zip(names, sess.run(names, {feed.name: x}), strict=True))
            del sess
    return sizes


_ITEM_BYTES = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.INT8: 1, TensorProto.UINT8: 1,
               TensorProto.INT32: 4, TensorProto.INT64: 8, TensorProto.BOOL: 1}


def graph_profile(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Casts, compute ops by precision, Q/DQ count and the non-GEMM bytes proxy of MODEL at batch 1.

    Non-GEMM bytes: every node that is not a GEMM/Conv, not folded (weights), not a view and
    not a DequantizeLinear (absorbed by its consumer) reads each activation input and writes
    each output once; a QuantizeLinear only writes its INT8 output (fused into the node that
    produces its input). With TensorRT's documented fusions (`non_gemm_bytes`), a tensor that
    a GEMM or pointwise node writes and only pointwise nodes read (bias Add, GELU's Div/Erf/
    Add/Mul chain) never reaches memory; `non_gemm_bytes_unfused` assumes no fusion at all.
    Casts and FP32 islands cost in both; GEMM traffic is left out because it is the same INT8
    work in every plan.
    """
    from vitedge.precision.stats import float_tensor_types

    types = float_tensor_types(model)
    producers = {out: n for n in model.graph.node for out in n.output}
    folded = _constant_derived(model)
    sizes = tensor_bytes(model, input_shape)
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node.op_type)
    outputs = {o.name for o in model.graph.output}
    # never written to memory: a GEMM's or pointwise node's output that only pointwise nodes read
    fused = {out for node in model.graph.node if node.op_type in GEMM_OPS | POINTWISE_OPS for out in node.output
             if out not in outputs and readers.get(out) and all(op in POINTWISE_OPS for op in readers[out])}
    precisions: Counter[str] = Counter()
    moved: Counter[str] = Counter()
    unfused = 0
    for node in model.graph.node:
        if all(out in folded for out in node.output):
            continue  # weight-side: done at build time
        precision = node_precision(node, types, producers)
        if node.op_type not in VIEW_OPS | QDQ_OPS | {"Cast"} and precision != "other":  # "other": shape math
            precisions[precision] += 1
        if node.op_type in GEMM_OPS | VIEW_OPS or node.op_type == "DequantizeLinear":
            continue
        reads = [] if node.op_type == "QuantizeLinear" else node.input  # Q: fused into its producer's write
        tensors = [t for t in (*reads, *node.output) if t and t not in folded]
        unfused += sum(sizes.get(t, 0) for t in tensors)
        moved[node.op_type] += sum(sizes.get(t, 0) for t in tensors if t not in fused)
    return {
        "casts": sum(n.op_type == "Cast" and n.output[0] not in folded for n in model.graph.node),
        "qdq_nodes": sum(n.op_type in QDQ_OPS for n in model.graph.node),
        "ops_by_precision": dict(sorted(precisions.items())),
        "non_gemm_bytes": int(sum(moved.values())),
        "non_gemm_bytes_by_op": {op: n for op, n in moved.most_common() if n},
        "non_gemm_bytes_unfused": int(unfused),
        "batch": int(input_shape[0]),
    }


def run_logits(model: onnx.ModelProto, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Outputs of an in-memory graph on CPU with ONNX Runtime (no graph optimisation), as FP32."""
    from vitedge.ortsession import run_graph

    return run_graph(model, x, batch_size)
