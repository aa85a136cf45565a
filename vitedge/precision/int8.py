"""Explicit INT8 Q/DQ graphs for ViTs, shared by the ONNX Runtime and TensorRT targets.

ViT-aware by default: only the inputs of Conv/MatMul/Gemm get QuantizeLinear/DequantizeLinear
(symmetric INT8, zero point 0, per-channel weights, per-tensor activations, float bias), and
LayerNorm, Softmax, GELU and the residual Adds stay float (INT8 there collapses ViT accuracy).
The two activation x activation MatMuls of attention (q@kT, attn@v) stay float too unless
asked: on ViT-S/16 (2-core EPYC, ORT 1.31) quantizing them made INT8 slower (b1 129 ms vs 94 ms)
for no accuracy gain. The result is a precision plan: every compute node, its dtype and why.

For TensorRT, `plan_int8` builds two placement plans from one quantization: `accurate` (the
above, with LayerNorm and Softmax FP32 islands) and `fast` (NVIDIA's explicit-quantization
guidance: FP16 everywhere outside INT8 ops, attention MatMuls and residual skip inputs INT8
where the measured drift allows), and records both plans' structure and drift.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vitedge import ui
from vitedge.errors import BadInput, CompileFailed, EnvironmentProblem
from vitedge.onnx_utils import LAYOUT_OPS, NAME_SCOPES_KEY, QDQ_OPS, module_name

QUANT_OP_TYPES = ("Conv", "MatMul", "Gemm")
CALIB_METHODS = ("minmax", "entropy", "percentile")


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
    """MatMuls whose inputs are both activations: attention's q@kT and attn@v.

    A DequantizeLinear of a constant (a quantized weight) counts as a constant.
    """
    consts = constant_names(model)
    consts.update(n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


def module_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """The exporter's name-scope metadata of every node that has it, by node name."""
    return {n.name: p.value for n in model.graph.node for p in n.metadata_props if p.key == NAME_SCOPES_KEY}


def copy_module_names(source: onnx.ModelProto | dict[str, str], target: onnx.ModelProto) -> None:
    """Put the exporter's name-scope metadata back on TARGET's nodes (matched by node name), from
    SOURCE or its `module_scopes`.

    quant_pre_process drops node metadata; nodes the quantizer adds (Q/DQ) take the module of
    the node they feed, so every node of the INT8 graph still maps to a PyTorch module.
    """
    scopes = source if isinstance(source, dict) else module_scopes(source)
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


def calibration_tensors(model: onnx.ModelProto, op_types: Sequence[str] = QUANT_OP_TYPES,
                        skip: Iterable[str] = ()) -> list[str]:
    """The activations whose ranges ONNX Runtime's quantizer reads: the float inputs of the
    nodes of OP_TYPES it quantizes (those not in SKIP). ORT's own calibrator watches the
    outputs and the skipped nodes' inputs too (`select_tensors_to_calibrate`), but with
    output quantization off for these op types it never uses them: the graphs come out the
    same, and ViT-B/16-384 calibrates 0.15 GB per image instead of 0.7 GB (attention scores)."""
    from vitedge.precision.stats import float_tensor_types

    types = float_tensor_types(model)
    consts = constant_names(model)
    skipped = set(skip)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    names: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in op_types and node.name not in skipped:
            names.update((t, None) for t in node.input if t and t not in consts and types.get(t) in floats)
    return list(names)


CALIB_PERCENTILE = 99.999  # ONNX Runtime's default for its percentile calibrator


def tensor_ranges(stats: Any, names: Iterable[str], method: str) -> Any:
    """ONNX Runtime `TensorsData` (calibration ranges) from streamed statistics.

    minmax: the running min and max (what ORT's MinMax calibrator returns; the symmetric
    quantizer takes the larger magnitude). entropy: TensorRT's KL-divergence threshold on the
    |x| histogram. percentile: the 99.999th percentile of |x|. The last two are clipped to the
    observed min and max, as ORT does.
    """
    from onnxruntime.quantization import CalibrationMethod, TensorData, TensorsData

    data = {}
    for name in names:
        s = stats.tensors.get(name)
        if s is None or not s.count:
            continue
        lo, hi = s.min, s.max
        if method != "minmax":
            peak = s.entropy_threshold() if method == "entropy" else s.percentile(CALIB_PERCENTILE)
            lo, hi = max(lo, -peak), min(hi, peak)
        data[name] = TensorData(lowest=np.float32(lo), highest=np.float32(hi))
    kind = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]
    return TensorsData(kind, data)


def quantize_qdq(onnx_in: str | Path, onnx_out: str | Path, tensors: np.ndarray, *,
                 method: str = "minmax", op_types: Sequence[str] = QUANT_OP_TYPES,
                 exclude_nodes: Iterable[str] = (), quantize_attention_matmuls: bool = False,
                 batch_size: int = 8) -> list[dict[str, Any]]:
    """Calibrate on TENSORS (NCHW float32) and write a symmetric INT8 Q/DQ graph; return its plan.

    INT8 (not UINT8) with zero points 0, per-channel weights, per-tensor activations, float
    bias: what TensorRT's explicit quantization takes, and what ONNX Runtime's CPU kernels
    fuse into integer MatMuls. quant_pre_process (ORT's shape inference + basic graph
    optimisation) runs first. The ranges are vitedge's streamed statistics (`stats.collect_stats`:
    memory bounded whatever the model and the number of images), handed to ORT's quantizer as
    a calibration cache; ORT's own calibrators are not run (they held ~4.5 GB for ViT-B/16-384,
    and their entropy histograms grew with the number of batches).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from vitedge.precision.stats import collect_stats

    if method not in CALIB_METHODS:
        raise BadInput(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    if len(tensors) == 0:
        raise BadInput("no calibration tensors")
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise EnvironmentProblem("INT8 needs onnxruntime >= 1.27 (quantize_static with a calibration cache): "
                                 "pip install -U onnxruntime")
    source = onnx.load(str(onnx_in), load_external_data=False)
    large = any(i.data_location == onnx.TensorProto.EXTERNAL for i in source.graph.initializer)
    scopes = module_scopes(source)
    del source  # a model copy is 0.35 GB for ViT-B: hold one at a time
    with tempfile.TemporaryDirectory(prefix="vitedge-int8-") as tmp:
        pre_path = Path(tmp) / "pre.onnx"
        try:
            with ui.Step("preparing the graph (shape inference, basic optimisation)"):
                quant_pre_process(str(onnx_in), str(pre_path), skip_symbolic_shape=True,
                                  save_as_external_data=large)
        except Exception as exc:  # noqa: BLE001 - ORT raises plain Exceptions from many layers
            raise CompileFailed(f"ONNX Runtime pre-processing failed: {_first_line(exc)}") from exc
        prepared = onnx.load(str(pre_path))
        copy_module_names(scopes, prepared)
        onnx.save(prepared, str(pre_path), save_as_external_data=large)
        attention = activation_matmuls(prepared)
        excluded = set(exclude_nodes)
        skip = sorted(excluded | (set() if quantize_attention_matmuls else set(attention)))
        watched = calibration_tensors(prepared, op_types, skip)
        stats = collect_stats(prepared, tensors, tensors=watched, batch_size=batch_size, description="calibrating",
                              histograms=watched if method != "minmax" else ())
        scopes = module_scopes(prepared)
        del prepared
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(tensor_ranges(stats, watched, method), cache)
        del stats
        out_tmp = Path(tmp) / "int8.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # ORT prints calibration chatter
                quantize_static(
                    str(pre_path), str(out_tmp), None, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types), per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=skip, use_external_data_format=large,
                    calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method],
                    calibration_cache_path=str(cache),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   # matmul outputs feed float bias Adds / logits: no Q/DQ there
                                   "OpTypesToExcludeOutputQuantization": list(op_types)},
                )
        except Exception as exc:  # noqa: BLE001
            raise CompileFailed(f"ONNX Runtime INT8 quantization failed: {_first_line(exc)}") from exc
        quantized = onnx.load(str(out_tmp))
        copy_module_names(scopes, quantized)
        onnx.save(quantized, str(onnx_out), save_as_external_data=large,
                  location=f"{Path(onnx_out).name}.data" if large else None)
    return qdq_plan(quantized, op_types=op_types, attention=attention, excluded=excluded)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- placement plans for TensorRT: `accurate` (default) and `fast` -------------------------------

PLANS = ("accurate", "fast")
DEFAULT_PLAN = "accurate"
GATE_SAMPLES = 64  # calibration images on which the fast plan's optional quantizations are measured
GATE_MAX_TOP1_LOSS = 0.005  # a group may cost at most 0.5 points of top-1 agreement...
GATE_MAX_COSINE_LOSS = 0.005  # ...and 0.005 of mean logit cosine vs the plan without it


def bypass_qdq(model: onnx.ModelProto, consumers: Iterable[str]) -> onnx.ModelProto:
    """A copy of MODEL in which the named nodes read their activations directly, not through Q -> DQ.

    Q/DQ pairs left without readers are removed (weights keep theirs: only activation pairs
    are bypassed), so e.g. the attention MatMuls of a fully quantized graph become float.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = constant_names(out)
    producers = {o: n for n in graph.node for o in n.output}
    targets = set(consumers)
    for node in graph.node:
        if node.name not in targets:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in consts:
                node.input[i] = q.input[0]
    _prune(graph)
    return out


def _prune(graph: onnx.GraphProto) -> None:
    """Drop Q/DQ nodes nothing reads any more, then initializers nothing reads."""
    while True:
        read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in QDQ_OPS and not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    unused = [i for i in graph.initializer if i.name not in read]
    for init in unused:
        graph.initializer.remove(init)


def residual_adds(model: onnx.ModelProto) -> list[tuple[str, int]]:
    """(Add node, index of its skip input) for every residual Add whose other input is a GEMM branch.

    The branch is a MatMul/Gemm/Conv output, possibly through its bias Add and a LayerScale
    Mul (each with a constant operand); the skip input is the residual stream.
    """
    consts = constant_names(model)
    producers = {o: n for n in model.graph.node for o in n.output}

    def gemm_branch(tensor: str, depth: int = 0) -> bool:
        node = producers.get(tensor)
        if node is None or depth > 2:
            return False
        if node.op_type in QUANT_OP_TYPES:
            return True
        activations = [t for t in node.input if t not in consts]
        return node.op_type in ("Add", "Mul") and len(activations) == 1 and gemm_branch(activations[0], depth + 1)

    found = []
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or any(t in consts for t in node.input):
            continue
        branch = [gemm_branch(t) for t in node.input]
        if branch.count(True) == 1:
            found.append((node.name, branch.index(False)))
    return found


def quantize_residuals(model: onnx.ModelProto, ranges: dict[str, float], exclude: Iterable[str] = (),
                       ) -> tuple[onnx.ModelProto, list[str]]:
    """Q/DQ (symmetric INT8, per tensor, scale = calibrated max |x| / 127) on the skip input of
    each residual Add (but those in EXCLUDE), as NVIDIA's Q/DQ placement guide recommends so
    TensorRT can fuse the Add into the GEMM before it. Returns the new graph and the Adds changed."""
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    excluded = set(exclude)
    targets = {name: index for name, index in residual_adds(out) if name not in excluded}
    nodes, changed = [], []
    for node in graph.node:
        skip_index = targets.get(node.name)
        peak = ranges.get(node.input[skip_index]) if skip_index is not None else None
        if peak is not None and 0 < peak < float("inf"):
            skip = node.input[skip_index]
            scale, zero = f"{node.name}__res_scale", f"{node.name}__res_zero"
            graph.initializer.extend([numpy_helper.from_array(np.float32(peak / 127.0), scale),
                                      numpy_helper.from_array(np.int8(0), zero)])
            nodes += [helper.make_node("QuantizeLinear", [skip, scale, zero], [f"{skip}__res_q_{node.name}"],
                                       name=f"{node.name}__res_q"),
                      helper.make_node("DequantizeLinear", [f"{skip}__res_q_{node.name}", scale, zero],
                                       [f"{skip}__res_dq_{node.name}"], name=f"{node.name}__res_dq")]
            for copied in nodes[-2:]:
                copied.metadata_props.extend(node.metadata_props)
            node.input[skip_index] = f"{skip}__res_dq_{node.name}"
            changed.append(node.name)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out, changed


_DRIFT_KEYS = ("samples", "top1_agreement", "cosine_mean", "cosine_min", "max_abs_err", "kl_mean",
               "ref_top1_acc", "top1_acc", "acc_drop")


def plan_int8(export_onnx: str | Path, calibration: np.ndarray, *, method: str = "entropy",
              keep: Iterable[str] = (), quantize_attention: bool = False, plan: str = DEFAULT_PLAN,
              margin: float | None = None, io_fp16: bool = False, labels: np.ndarray | None = None,
              smoothquant_alpha: float | None = None,
              ) -> tuple[onnx.ModelProto, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Both INT8 placement plans for TensorRT: the chosen one's graph, its nodes (dtype and why),
    its FP16 record, and `int8_plans` (per plan: graph_profile, drift, quantized groups; `smoothquant`:
    the outlier migration done first, with SMOOTHQUANT_ALPHA or its default).

    One quantization (every GEMM input, attention included) and one statistics pass serve both.
    `accurate` (today's plan): attention MatMuls float unless QUANTIZE_ATTENTION, LayerNorm and
    Softmax FP32 islands. `fast` (NVIDIA's explicit-quantization guidance): FP16 everywhere
    outside INT8 ops, LayerNorm with FP16 I/O and FP32 stash_type, no islands unless a range
    needs one, and two optional groups (attention MatMuls, residual skip inputs) each kept only
    when its measured drift on the calibration images stays within the budget.
    """
    from vitedge.metrics import compare_logits
    from vitedge.precision.fp16 import (
        DEFAULT_FP32_OPS,
        DEFAULT_MARGIN,
        FLOOR_SAMPLES,
        emulate_fp16,
        name_nodes,
        plan_fp16,
    )
    from vitedge.precision.profile import graph_profile, run_logits
    from vitedge.precision.smoothquant import migrated
    from vitedge.precision.stats import ranges_and_floors

    if plan not in PLANS:
        raise BadInput(f"--plan takes {' or '.join(PLANS)}, got {plan!r}")
    keep = list(keep)
    with tempfile.TemporaryDirectory(prefix="vitedge-trt-int8-") as tmp:
        out = Path(tmp) / "int8.onnx"
        with migrated(export_onnx, calibration, alpha=smoothquant_alpha) as (
                smoothed, smoothquant):  # activation outliers -> per-channel weights
            quantize_qdq(smoothed, out, calibration, method=method, exclude_nodes=keep,
                         quantize_attention_matmuls=True)
        quantized = onnx.load(str(out))
    name_nodes(quantized)
    attention = activation_matmuls(quantized)
    with ui.Step("calibration statistics for the FP16 part"):
        ranges, floors = ranges_and_floors(quantized, calibration, FLOOR_SAMPLES)
    with_residuals, residual_adds_changed = quantize_residuals(quantized, ranges, exclude=keep)
    gate = calibration.take(np.arange(min(GATE_SAMPLES, len(calibration))), axis=0)  # read batch by batch
    gate_labels = labels[:GATE_SAMPLES] if labels is not None else None
    reference = run_logits(onnx.load(str(export_onnx)), gate)

    def build(name: str, groups: frozenset[str]) -> dict[str, Any]:
        graph_qdq = with_residuals if "residual" in groups else quantized
        if "attention" not in groups:
            graph_qdq = bypass_qdq(graph_qdq, attention)
        graph, fp16 = plan_fp16(graph_qdq, None, margin=margin or DEFAULT_MARGIN, io_fp16=io_fp16, keep=keep,
                                ranges=ranges, floors=floors, fp32_ops=() if name == "fast" else DEFAULT_FP32_OPS)
        drift = compare_logits(reference, run_logits(emulate_fp16(graph), gate), gate_labels)
        return {"graph": graph, "qdq": graph_qdq, "fp16": fp16, "drift": drift, "groups": groups}

    with ui.Step("INT8 plans accurate and fast, drift measured on the calibration images"):
        plans = {"accurate": build("accurate", frozenset({"attention"} if quantize_attention else ())),
                 "fast": None}
        plans["fast"], decisions = _choose_fast(build, quantize_attention, bool(residual_adds_changed))
    record: dict[str, Any] = {
        "chosen": plan,
        "gate": {"samples": int(len(gate)), "data": "calibration images", "run": "FP16-storage emulated vs the "
                 "export's FP32 ONNX", "max_top1_loss": GATE_MAX_TOP1_LOSS, "max_cosine_loss": GATE_MAX_COSINE_LOSS},
        "speed": "inferred from NVIDIA's guidance, not measured here (no TensorRT)",
        "smoothquant": smoothquant,
    }
    for name, built in plans.items():
        record[name] = {"profile": graph_profile(built["graph"], (1, *calibration.shape[1:])),
                        "drift": {k: built["drift"][k] for k in _DRIFT_KEYS if k in built["drift"]},
                        "quantized_groups": sorted(built["groups"])}
    record["fast"]["decisions"] = decisions
    chosen = plans[plan]
    nodes = _int8_nodes(chosen, attention, keep, residual_adds_changed, plan)
    return chosen["graph"], nodes, chosen["fp16"], record


def _drift_loss(base: dict[str, float], trial: dict[str, float]) -> dict[str, float]:
    return {"top1_loss": round(base["top1_agreement"] - trial["top1_agreement"], 6),
            "cosine_loss": round(base["cosine_mean"] - trial["cosine_mean"], 6)}


def _within_budget(loss: dict[str, float]) -> bool:
    return loss["top1_loss"] <= GATE_MAX_TOP1_LOSS and loss["cosine_loss"] <= GATE_MAX_COSINE_LOSS


def _choose_fast(build: Any, force_attention: bool, has_residuals: bool) -> tuple[dict[str, Any], list[dict]]:
    """The fast plan: each optional group measured against the plan without it; kept within budget."""
    fixed = frozenset({"attention"}) if force_attention else frozenset()
    base = build("fast", fixed)
    decisions: list[dict[str, Any]] = []
    if force_attention:
        decisions.append({"group": "attention", "quantized": True, "reason": "--quantize-attention"})
    trials = {}
    for group in [g for g, wanted in (("attention", not force_attention), ("residual", has_residuals)) if wanted]:
        trial = build("fast", fixed | {group})
        loss = _drift_loss(base["drift"], trial["drift"])
        ok = _within_budget(loss)
        decisions.append({"group": group, "quantized": ok, **loss,
                          "reason": "within the drift budget" if ok else "over the drift budget: kept FP16"})
        if ok:
            trials[group] = trial
    if len(trials) < 2:
        return next(iter(trials.values()), base), decisions
    both = build("fast", fixed | set(trials))
    loss = _drift_loss(base["drift"], both["drift"])
    if _within_budget(loss):
        return both, decisions
    worse = max(trials, key=lambda g: next(d["cosine_loss"] for d in decisions if d["group"] == g))
    for decision in decisions:
        if decision["group"] == worse:
            decision.update(quantized=False, reason=f"within budget alone, over it together with the other group "
                                                   f"(cosine loss {loss['cosine_loss']:.4g}): kept FP16")
    return trials[next(g for g in trials if g != worse)], decisions


def _int8_nodes(built: dict[str, Any], attention: list[str], keep: list[str], residual_adds_changed: list[str],
                plan: str) -> list[dict[str, Any]]:
    """Every compute node of a built plan: INT8 where quantized, else FP16 unless an FP32 island."""
    fp16 = built["fp16"]
    fp16.pop("nodes", None)
    islands = {i["node"]: i["reason"] for i in fp16["fp32_islands"]}
    residuals = set(residual_adds_changed) if "residual" in built["groups"] else set()
    nodes = []
    for entry in qdq_plan(built["qdq"], attention=attention, excluded=keep):
        if entry["dtype"] == "int8":
            nodes.append(entry)
            continue
        reason = entry["reason"]
        if entry["node"] in residuals:
            reason = "residual Add: skip input INT8 (Q/DQ placement for fusion into the GEMM)"
        elif plan == "fast" and entry["node"] in attention:
            reason = "attention MatMul (activation x activation): INT8 here was over the drift budget"
        nodes.append({**entry, "dtype": "fp32" if entry["node"] in islands else "fp16",
                      "reason": islands.get(entry["node"], f"{reason} (FP16)")})
    return nodes
