"""Explicit INT8 Q/DQ graphs for ViTs, shared by the ONNX Runtime and TensorRT targets.

ViT-aware by default: only the inputs of Conv/MatMul/Gemm get QuantizeLinear/DequantizeLinear
(symmetric INT8, zero point 0, per-channel weights, per-tensor activations, float bias), and
LayerNorm, Softmax, GELU and the residual Adds stay float (INT8 there collapses ViT accuracy).
The two activation x activation MatMuls of attention (q@kT, attn@v) stay float too unless
asked: on ViT-S/16 (2-core EPYC, ORT 1.31) quantizing them made INT8 slower (b1 129 ms vs 94 ms)
for no accuracy gain. The result is a precision plan: every compute node, its dtype and why.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vitedge import ui
from vitedge.data import INPUT_NAME
from vitedge.errors import BadInput, CompileFailed
from vitedge.onnx_utils import NAME_SCOPES_KEY, QDQ_OPS, module_name

QUANT_OP_TYPES = ("Conv", "MatMul", "Gemm")
CALIB_METHODS = ("minmax", "entropy", "percentile")
# Data movement and shape arithmetic: not part of a precision plan.
LAYOUT_OPS = frozenset({
    "Shape", "Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Concat", "Gather", "Expand",
    "Constant", "ConstantOfShape", "Identity", "Flatten", "Cast", "Range", "Split", "Size",
})


@dataclass(frozen=True)
class IgnoredScope:
    """Nodes to keep float, from `--ignored-scope`: a name, `re:<regex>` or `type:<OpType>`."""

    names: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    @classmethod
    def parse(cls, items: Iterable[str] | None) -> "IgnoredScope":
        names, patterns, types = [], [], []
        for item in items or ():
            item = item.strip()
            if item.startswith("re:"):
                try:
                    re.compile(item[3:])
                except re.error as exc:
                    raise BadInput(f"--ignored-scope {item!r}: bad regular expression ({exc})") from exc
                patterns.append(item[3:])
            elif item.startswith("type:"):
                types.append(item[5:])
            elif item:
                names.append(item)
        return cls(tuple(names), tuple(patterns), tuple(types))

    def __bool__(self) -> bool:
        return bool(self.names or self.patterns or self.types)

    def select(self, model: onnx.ModelProto) -> list[str]:
        """ONNX node names matched by name, PyTorch module name, regex (re.search) or op type."""
        matched: list[str] = []
        used: set[str] = set()
        for node in model.graph.node:
            module = module_name(node) or ""
            hits = [n for n in self.names if n in (node.name, module)]
            hits += [f"re:{p}" for p in self.patterns if re.search(p, node.name) or (module and re.search(p, module))]
            hits += [f"type:{t}" for t in self.types if node.op_type == t]
            if hits:
                matched.append(node.name)
                used.update(hits)
        unused = [n for n in self.names if n not in used] + [f"re:{p}" for p in self.patterns
                                                              if f"re:{p}" not in used]
        unused += [f"type:{t}" for t in self.types if f"type:{t}" not in used]
        if unused:
            raise BadInput(f"--ignored-scope matched no node for {', '.join(unused)} "
                           "(give ONNX node names, PyTorch module names, re:<regex> or type:<OpType>)")
        return matched


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Initializers and Constant-node outputs."""
    names = {i.name for i in model.graph.initializer}
    names.update(n.output[0] for n in model.graph.node if n.op_type == "Constant")
    return names


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose inputs are both activations: attention's q@kT and attn@v."""
    consts = constant_names(model)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def copy_module_names(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    """Put the exporter's name-scope metadata back on TARGET's nodes (matched by node name).

    quant_pre_process drops node metadata; nodes the quantizer adds (Q/DQ) take the module of
    the node they feed, so every node of the INT8 graph still maps to a PyTorch module.
    """
    scopes = {n.name: p.value for n in source.graph.node for p in n.metadata_props
              if p.key == NAME_SCOPES_KEY}
    consumers: dict[str, onnx.NodeProto] = {}
    for node in target.graph.node:
        for name in node.input:
            consumers.setdefault(name, node)
    for node in target.graph.node:
        if node.name in scopes and module_name(node) is None:
            node.metadata_props.add(key=NAME_SCOPES_KEY, value=scopes[node.name])
    for node in reversed(target.graph.node):  # DQ feeds its consumer, Q feeds a DQ: walk backwards
        if node.op_type in QDQ_OPS and module_name(node) is None:
            consumer = consumers.get(node.output[0])
            value = next((p.value for p in consumer.metadata_props if p.key == NAME_SCOPES_KEY), None) \
                if consumer is not None else None
            if value is not None:
                node.metadata_props.add(key=NAME_SCOPES_KEY, value=value)


def _float_reason(node: onnx.NodeProto, module: str | None, consts: set[str],
                  producers: dict[str, onnx.NodeProto], op_types: Sequence[str]) -> str:
    op = node.op_type
    if op == "LayerNormalization":
        return "LayerNorm stays float: INT8 LayerNorm collapses ViT accuracy"
    if op == "Softmax":
        return "Softmax stays float: attention probabilities need the range"
    if op in ("Erf", "Gelu", "FastGelu", "Tanh") or (module or "").split(".")[-1] == "act":
        return "GELU stays float"
    if op == "Add":
        if not any(i in consts for i in node.input):
            return "residual Add stays float (outlier channels)"
        if any(i in producers and producers[i].op_type in op_types for i in node.input):
            return "bias Add stays float (no bias quantization)"
        return "Add of a constant (e.g. position embedding) stays float"
    if op in ("Mul", "Div") and module and module.split(".")[-1] == "attn":
        return "attention scaling stays float"
    return f"{op} stays float (only {'/'.join(op_types)} inputs are quantized)"


def qdq_plan(model: onnx.ModelProto, *, op_types: Sequence[str] = QUANT_OP_TYPES,
             attention: Iterable[str] = (), excluded: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Every compute node of a Q/DQ graph: {node, op, module, dtype, reason}."""
    attention, excluded = set(attention), set(excluded)
    producers = {out: node for node in model.graph.node for out in node.output}
    consts = constant_names(model)
    consts.update(n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
                  and n.input[0] in consts)  # a DQ of an INT8 weight is a constant too
    plan = []
    for node in model.graph.node:
        if node.op_type in LAYOUT_OPS or node.op_type in QDQ_OPS:
            continue
        module = module_name(node)
        if node.op_type in op_types:
            quantized = any(i in producers and producers[i].op_type == "DequantizeLinear" for i in node.input)
            if quantized:
                dtype = "int8"
                reason = ("INT8 attention MatMul (per-tensor activations)" if node.name in attention
                          else "INT8: per-channel weights, per-tensor activations")
            elif node.name in excluded:
                dtype, reason = "fp32", "excluded by --ignored-scope"
            elif node.name in attention:
                dtype, reason = "fp32", ("attention MatMul (activation x activation) stays float by "
                                         "default: INT8 here was slower on CPU")
            else:
                dtype, reason = "fp32", "not quantized by ONNX Runtime (no calibrated range for an input)"
        else:
            dtype = "fp32"
            reason = ("excluded by --ignored-scope" if node.name in excluded
                      else _float_reason(node, module, consts, producers, op_types))
        plan.append({"node": node.name, "op": node.op_type, "module": module, "dtype": dtype,
                     "reason": reason})
    return plan


class _CalibrationReader:
    """ORT CalibrationDataReader over preprocessed tensors, with a progress bar.

    It supports `set_range` so ORT collects one batch per call ("CalibStridedMinMax"): the
    histogram calibrators then merge per batch instead of holding every intermediate tensor
    of the whole set in memory, and a short last batch is no problem.
    """

    def __init__(self, tensors: np.ndarray, input_name: str, batch_size: int) -> None:
        self.batches = [{input_name: np.ascontiguousarray(tensors[i:i + batch_size], dtype=np.float32)}
                        for i in range(0, len(tensors), batch_size)]
        self._ticks: Iterator[int] = iter(ui.track(range(len(self.batches)), "calibrating"))
        self._it: Iterator[dict[str, np.ndarray]] = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is not None:
            next(self._ticks, None)
        return batch

    def close(self) -> None:
        for _ in self._ticks:  # finish (and close) the progress bar
            pass


def quantize_qdq(onnx_in: str | Path, onnx_out: str | Path, tensors: np.ndarray, *,
                 method: str = "minmax", op_types: Sequence[str] = QUANT_OP_TYPES,
                 exclude_nodes: Iterable[str] = (), quantize_attention_matmuls: bool = False,
                 batch_size: int = 8) -> list[dict[str, Any]]:
    """Calibrate on TENSORS (NCHW float32) and write a symmetric INT8 Q/DQ graph; return its plan.

    INT8 (not UINT8) with zero points 0, per-channel weights, per-tensor activations, float
    bias: what TensorRT's explicit quantization takes, and what ONNX Runtime's CPU kernels
    fuse into integer MatMuls. quant_pre_process (ORT's shape inference + basic graph
    optimisation) runs first.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIB_METHODS:
        raise BadInput(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    if len(tensors) == 0:
        raise BadInput("no calibration tensors")
    source = onnx.load(str(onnx_in), load_external_data=False)
    large = any(i.data_location == onnx.TensorProto.EXTERNAL for i in source.graph.initializer)
    input_name = next((i.name for i in source.graph.input), INPUT_NAME)
    with tempfile.TemporaryDirectory(prefix="vitedge-int8-") as tmp:
        pre_path = Path(tmp) / "pre.onnx"
        try:
            with ui.Step("preparing the graph (shape inference, basic optimisation)"):
                quant_pre_process(str(onnx_in), str(pre_path), skip_symbolic_shape=True,
                                  save_as_external_data=large)
        except Exception as exc:  # noqa: BLE001 - ORT raises plain Exceptions from many layers
            raise CompileFailed(f"ONNX Runtime pre-processing failed: {_first_line(exc)}") from exc
        prepared = onnx.load(str(pre_path))
        copy_module_names(source, prepared)
        onnx.save(prepared, str(pre_path), save_as_external_data=large)
        attention = activation_matmuls(prepared)
        excluded = set(exclude_nodes)
        skip = sorted(excluded | (set() if quantize_attention_matmuls else set(attention)))
        reader = _CalibrationReader(tensors, input_name, batch_size)
        out_tmp = Path(tmp) / "int8.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # ORT prints calibration chatter
                quantize_static(
                    str(pre_path), str(out_tmp), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types), per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=skip, use_external_data_format=large,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "QuantizeBias": False, "CalibStridedMinMax": 1,
                                   # matmul outputs feed float bias Adds / logits: no Q/DQ there
                                   "OpTypesToExcludeOutputQuantization": list(op_types)},
                )
        except Exception as exc:  # noqa: BLE001
            raise CompileFailed(f"ONNX Runtime INT8 quantization failed: {_first_line(exc)}") from exc
        finally:
            reader.close()
        quantized = onnx.load(str(out_tmp))
        copy_module_names(prepared, quantized)
        onnx.save(quantized, str(onnx_out), save_as_external_data=large,
                  location=f"{Path(onnx_out).name}.data" if large else None)
    return qdq_plan(quantized, op_types=op_types, attention=attention, excluded=excluded)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
