"""Small facts about ONNX graphs shared by export, precision planning and reports."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import onnx

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})  # the explicit-quantization node pair
# Data movement and shape arithmetic: not part of a precision plan.
LAYOUT_OPS = frozenset({
    "Shape", "Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Concat", "Gather", "Expand",
    "Constant", "ConstantOfShape", "Identity", "Flatten", "Cast", "Range", "Split", "Size",
})


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def module_name(node: onnx.NodeProto) -> str | None:
    """The PyTorch module a node came from (dynamo exporter metadata), e.g. blocks.7.attn.proj."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            try:
                scopes = json.loads(prop.value)
            except json.JSONDecodeError:
                scopes = prop.value.strip("[]").replace("'", "").split(", ")
            modules = [s for s in scopes[:-1] if s]
            return modules[-1] if modules else None
    return None


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def has_decomposed_layernorm(model: onnx.ModelProto) -> bool:
    """ReduceMean -> Sub -> Pow -> ReduceMean -> Add -> Sqrt: LayerNorm spelled out in ops."""
    ops = Counter(n.op_type for n in model.graph.node)
    return ops.get("ReduceMean", 0) >= 2 and ops.get("Pow", 0) >= 1 and ops.get("Sqrt", 0) >= 1 \
        and ops.get("LayerNormalization", 0) == 0


def io_signature(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "shape": dims,
                        "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    inits = {i.name for i in model.graph.initializer}
    return {"inputs": describe([i for i in model.graph.input if i.name not in inits]),
            "outputs": describe(model.graph.output)}
