"""Bring your own Q/DQ graph: a pre-quantized ONNX (NVIDIA ModelOpt, QAT, another tool) as the INT8 plan.

vitedge places nothing in such a graph. It checks that the file is the export's network (the
same input and output names and shapes, then logits close to the FP32 export's on the
calibration/validation images), runs the same readiness check and CPU drift measurement as
for its own plans, and records where the graph came from (file, sha256, producer).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import onnx

from vitedge.errors import BadInput, CompileFailed
from vitedge.onnx_utils import default_opset, io_signature, module_name

# Mean logit cosine vs the FP32 export below which the file is taken for another network. A
# different network (other weights) lands near 0; INT8 drift of the same network stays far above
# (the worst seen, ModelOpt's graph of a random-init ViT-S: 0.91). Accuracy is the bench's job.
MIN_COSINE = 0.8
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
LAYOUT_AND_QDQ = QDQ_OPS | {"Shape", "Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Concat", "Gather",
                            "Expand", "Constant", "ConstantOfShape", "Identity", "Flatten", "Cast", "Range",
                            "Split", "Size"}


def load_quantized(path: str | Path) -> onnx.ModelProto:
    """The graph in PATH (weights included); BadInput when it is missing, not ONNX, or has no Q/DQ."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"--quantized {path} does not exist (give the pre-quantized .onnx file)")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError, OSError for external data
        raise BadInput(f"--quantized {path} is not a readable ONNX model ({exc})") from exc
    if not any(n.op_type in QDQ_OPS for n in model.graph.node):
        raise BadInput(f"--quantized {path} has no QuantizeLinear/DequantizeLinear nodes: it is not a Q/DQ "
                       "graph (compile the export with --precision int8 --calib instead)")
    return model


def check_options(precision: str, *, plan: str, quantized: str | Path | None, quantize_attention: bool,
                  ignored_scope: list[str], smoothquant_alpha: float | None = None) -> None:
    """`--quantized`, `--plan` and `--smoothquant-alpha` problems, found before any work (BadInput)."""
    from vitedge.precision.int8 import DEFAULT_PLAN, PLANS

    if plan not in PLANS:
        raise BadInput(f"--plan takes {' or '.join(PLANS)}, got {plan!r}")
    if (plan != DEFAULT_PLAN or quantized) and precision != "int8":
        raise BadInput(f"{'--quantized' if quantized else '--plan'} is for --precision int8")
    if smoothquant_alpha is not None and (precision != "int8" or quantized):
        raise BadInput("--smoothquant-alpha applies to vitedge's own --precision int8 quantization only" +
                       (" (a --quantized graph is already quantized)" if quantized else ""))
    if quantized:
        if plan != DEFAULT_PLAN:
            raise BadInput("--plan places Q/DQ itself; a --quantized graph keeps the placement it came with: "
                           "give one of them")
        if quantize_attention or ignored_scope:
            raise BadInput("--quantize-attention and --ignored-scope change vitedge's own Q/DQ placement; "
                           "a --quantized graph keeps the placement it came with")
        load_quantized(quantized)


def _io_mismatches(graph: onnx.ModelProto, export: onnx.ModelProto) -> list[str]:
    """How the I/O of GRAPH differs from the export's (names, ranks, fixed dims); [] when the same."""
    ours, theirs = io_signature(export), io_signature(graph)
    problems = []
    for side in ("inputs", "outputs"):
        want = {v["name"]: v["shape"] for v in ours[side]}
        got = {v["name"]: v["shape"] for v in theirs[side]}
        if sorted(want) != sorted(got):
            problems.append(f"{side} {sorted(got)} (the export has {sorted(want)})")
            continue
        for name, shape in want.items():
            other = got[name]
            fixed_differ = any(isinstance(a, int) and isinstance(b, int) and a and b and a != b
                               for a, b in zip(shape, other, strict=False))
            if len(shape) != len(other) or fixed_differ:
                problems.append(f"{name} has shape {other} (the export has {shape})")
    return problems


def import_graph(path: str | Path, export_onnx: Path) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The pre-quantized graph and its plan: `nodes` (each compute node's dtype, as given),
    `summary`, and `imported` (origin and structure; `confirm_same_network` adds the drift)."""
    from vitedge.precision.profile import graph_profile, node_precision
    from vitedge.precision.stats import float_tensor_types

    path = Path(path)
    graph = load_quantized(path)
    export = onnx.load(str(export_onnx))
    mismatches = _io_mismatches(graph, export)
    if mismatches:
        raise BadInput(f"--quantized {path} is not the export's network: " + "; ".join(mismatches))
    from vitedge.ortsession import session

    try:  # the drift check runs it on CPU: a graph ONNX Runtime cannot load (plugins) is refused now
        session(path, optimize=False)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"--quantized {path}: ONNX Runtime cannot run it on CPU to check it ({first})") from exc
    producer = " ".join(p for p in (graph.producer_name, graph.producer_version) if p) or "unknown"
    types = float_tensor_types(graph)
    producers = {out: n for n in graph.graph.node for out in n.output}
    nodes = [{"node": n.name, "op": n.op_type, "module": module_name(n),
              "dtype": node_precision(n, types, producers), "reason": f"as given by {producer}"}
             for n in graph.graph.node if n.op_type not in LAYOUT_AND_QDQ]
    nodes = [n for n in nodes if n["dtype"] != "other"]
    summary: dict[str, int] = {}
    for entry in nodes:
        summary[entry["dtype"]] = summary.get(entry["dtype"], 0) + 1
    shape = io_signature(export)["inputs"][0]["shape"]
    input_shape = (1, *(d if isinstance(d, int) and d else 1 for d in shape[1:]))
    imported = {
        "file": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "producer": producer,
        "opset": default_opset(graph),
        "io": "same names and shapes as the export",
        "profile": graph_profile(graph, input_shape),
    }
    return graph, {"nodes": nodes, "summary": dict(sorted(summary.items())), "imported": imported}


def confirm_same_network(imported: dict[str, Any], verification: dict[str, Any]) -> None:
    """Record the drift vs the FP32 export; CompileFailed when it says this is another network."""
    drift = verification["onnxruntime"]
    imported["same_network"] = {"data": verification["data"], "samples": verification["samples"],
                                "cosine_mean": drift["cosine_mean"], "top1_agreement": drift["top1_agreement"],
                                "min_cosine": MIN_COSINE}
    if not drift["cosine_mean"] >= MIN_COSINE:
        raise CompileFailed(f"--quantized {imported['file']} does not compute the export's network: mean logit "
                            f"cosine {drift['cosine_mean']:.3f} vs the FP32 export on {verification['data']} "
                            f"(below {MIN_COSINE}); quantize this export, or export the model the file came from")
