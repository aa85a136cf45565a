"""OpenVINO graphs: which ops come from which PyTorch module, what the compiled runtime graph ran in
which precision (the precision plan), and what an INT8 scheme keeps float (weights below NNCF's
range floor, attention with `--attention float`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.openvino.runtime import precision_word

_LAYOUT_LAYERS = frozenset({"Input", "Output", "Const", "Reorder", "Reshape", "Transpose",
                            "Concatenation", "Gather", "Broadcast", "ShapeOf", "Split", "FakeQuantize",
                            "StridedSlice", "Squeeze", "Unsqueeze", "Convert"})
_MATMUL_LAYERS = frozenset({"FullyConnected", "MatMul", "Convolution", "Subgraph", "ScaledAttn"})


def _module_map(onnx_path: Path) -> dict[str, str | None]:
    """ONNX node name -> PyTorch module (OpenVINO keeps ONNX node names as op names)."""
    import onnx

    from vitedge.onnx_utils import module_name

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {n.name: module_name(n) for n in model.graph.node}


def ov_module_map(ov_model: Any, onnx_modules: dict[str, str | None]) -> dict[str, str | None]:
    """OpenVINO op name -> PyTorch module.

    Ops converted from an ONNX node carry its name (a Linear's MatMul keeps `node_MatMul_12`);
    ops OpenVINO or NNCF created (MVN_42, FakeQuantize, SmoothQuant scales) take the module of
    the nearest consumer that has one.
    """
    result: dict[str, str | None] = {}
    for op in reversed(list(ov_model.get_ordered_ops())):  # consumers before producers
        name = op.get_friendly_name()
        base = name.split("/")[0]
        if base in onnx_modules:
            result[name] = onnx_modules[base]
            continue
        consumers = [t.get_node().get_friendly_name() for out in op.outputs() for t in out.get_target_inputs()]
        result[name] = next((result[c] for c in consumers if result.get(c)), None)
    return result


def runtime_plan(compiled: Any, modules: dict[str, str | None], precision: str,
                 ignored: set[str], accuracy_control: bool,
                 kept_float: dict[str, str] | None = None, attention_float: bool = False) -> list[dict[str, Any]]:
    """Every compute node of the compiled runtime graph with the precision it really runs in.

    MODULES maps OpenVINO op names to PyTorch modules (`ov_module_map`); IGNORED holds the op
    names the user's --ignored-scope matched; KEPT_FLOAT the op names the INT8 scheme kept
    float, with why.
    """
    kept_float = kept_float or {}
    hint = precision_word(compiled.get_property("INFERENCE_PRECISION_HINT"))
    plan = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = rt["layerType"].astype(str)
        if layer in _LAYOUT_LAYERS:
            continue
        names = [n for n in rt["originalLayersNames"].astype(str).split(",") if n]
        module = next((modules[n] for n in names if modules.get(n)), None)
        dtype = precision_word(rt["runtimePrecision"].astype(str))
        if dtype == "int8" and layer == "Subgraph" and attention_float:
            reason = (f"attention in {hint} (--attention float); OpenVINO fused the next MatMul's INT8 input "
                      "quantizer into its output")
        elif dtype == "int8":
            reason = ("INT8 attention (NNCF quantizes the SDPA inputs)" if layer == "Subgraph"
                      else "INT8 (NNCF: per-channel weights, per-tensor activations)")
        elif precision != "int8":
            reason = (f"{precision} artifact, inference precision {hint}" if dtype == hint
                      else f"{precision} artifact; OpenVINO keeps this op in {dtype}")
        elif any(n in ignored for n in names):
            reason = "excluded by --ignored-scope"
        elif any(n in kept_float for n in names):
            reason = next(kept_float[n] for n in names if n in kept_float)
        elif layer in _MATMUL_LAYERS:
            reason = ("reverted to float by accuracy control (--max-drop)" if accuracy_control
                      else "not quantized by NNCF")
        elif layer == "MVN":
            reason = "LayerNorm stays float (NNCF TRANSFORMER scheme)"
        elif layer == "Softmax":
            reason = "Softmax stays float (NNCF TRANSFORMER scheme)"
        else:
            reason = "elementwise (bias/residual Add, GELU, scaling) stays float (NNCF TRANSFORMER scheme)"
        plan.append({"node": ",".join(names) or op.get_friendly_name(), "op": layer, "module": module,
                     "dtype": dtype, "reason": reason})
    return plan


def _ignored(scope: Any, ov_model: Any, onnx_modules: dict[str, str | None]) -> tuple[list[str], set[str]]:
    """--ignored-scope on an ov.Model: (names for nncf.IgnoredScope, every op name it matches).

    Names are OpenVINO op names or PyTorch module names (turned into the ops converted from
    that module's ONNX nodes); regexes (re.search, as NNCF does) and types are matched
    against OpenVINO op names and types.
    """
    ops = {op.get_friendly_name(): op.get_type_name() for op in ov_model.get_ops()}
    names: list[str] = []
    for name in scope.names:
        by_module = sorted(op for op in ops if onnx_modules.get(op.split("/")[0]) == name)
        names.extend([name] if name in ops else by_module or [name])  # no match: NNCF reports it
    matched = {op for op, kind in ops.items()
               if op in names or kind in scope.types or any(re.search(p, op) for p in scope.patterns)}
    return names, matched


_WEIGHTED_OPS = ("MatMul", "Convolution", "GroupConvolution")
_WEIGHT_PATH_OPS = ("Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze")


def weights_below_floor(ov_model: Any, floor: float) -> dict[str, float]:
    """MatMul/Conv ops (name -> largest |w|) whose constant weights are all smaller than FLOOR
    and not all zero (zeros quantize exactly: e.g. a residual branch whose BatchNorm gamma is
    initialised to 0).

    Read on the OpenVINO model NNCF quantizes, after OpenVINO's conversion has folded scales
    (e.g. a layer scale) into the weights.
    """
    found: dict[str, float] = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in _WEIGHTED_OPS:
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in _WEIGHT_PATH_OPS:
            node = node.input_value(0).get_node()
        if node.get_type_name() != "Constant":
            continue  # activation x activation (attention) MatMul
        weights = node.get_data()
        if weights.dtype.kind == "f" and weights.size:
            largest = float(np.abs(weights).max())
            if 0 < largest < floor:
                found[op.get_friendly_name()] = largest
    return found


@dataclass(frozen=True)
class SchemeFloat:
    """What an INT8 scheme keeps float on one ov.Model: op names and op types for NNCF's ignored
    scope, and every such op name with why (for the precision plan)."""

    names: list[str]
    types: list[str]
    reasons: dict[str, str]

    @classmethod
    def of(cls, ov_model: Any, scheme: Any) -> "SchemeFloat":
        from vitedge.precision.scheme import NNCF_WEIGHT_RANGE_FLOOR

        below = weights_below_floor(ov_model, NNCF_WEIGHT_RANGE_FLOOR)
        reasons = {name: (f"kept float: weights below NNCF's range floor (largest |w| {largest:.1e} < "
                          f"{NNCF_WEIGHT_RANGE_FLOOR:g}): INT8 would use fewer than 127 levels")
                   for name, largest in below.items()}
        present = {op.get_type_name() for op in ov_model.get_ops()}
        types = [t for t in scheme.float_op_types if t in present]  # NNCF rejects types it cannot find
        for op in ov_model.get_ops():
            if op.get_type_name() in types:
                reasons[op.get_friendly_name()] = f"kept float by the {scheme.kind} INT8 scheme"
        return cls(sorted(below), types, reasons)

    def with_names(self, names: list[str], reason: str) -> "SchemeFloat":
        """This scheme with NAMES kept float too, for REASON."""
        return SchemeFloat(sorted({*self.names, *names}), self.types,
                           {**self.reasons, **{name: reason for name in names}})


def attention_matmuls(ov_model: Any) -> list[str]:
    """Attention's ops in OV_MODEL: ScaledDotProductAttention (the ONNX frontend fuses exported attention
    into it) and MatMuls whose two inputs are activations (an unfused q@kT and attn@v), also on
    a quantized or weight-compressed model (weights behind FakeQuantize or Convert/Subtract/Multiply)."""
    path_ops = (*_WEIGHT_PATH_OPS, "FakeQuantize", "Subtract", "Multiply")

    def constant(node: Any, depth: int = 0) -> bool:
        if node.get_type_name() == "Constant":
            return True
        if node.get_type_name() not in path_ops or depth > 8:
            return False
        return all(constant(v.get_node(), depth + 1) for v in node.input_values())

    return [op.get_friendly_name() for op in ov_model.get_ordered_ops()
            if op.get_type_name() == "ScaledDotProductAttention"  # OpenVINO's fused attention op
            or (op.get_type_name() == "MatMul" and not any(constant(op.input_value(i).get_node()) for i in range(2)))]


def plan_counts(plan: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Nodes of a runtime precision plan counted by op type and the precision they ran in."""
    counts: dict[str, dict[str, int]] = {}
    for row in plan:
        by_dtype = counts.setdefault(row["op"], {})
        by_dtype[row["dtype"]] = by_dtype.get(row["dtype"], 0) + 1
    return counts


