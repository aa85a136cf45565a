"""The graph TensorRT builds, made and checked on any CPU: FP16 with FP32 islands or INT8 Q/DQ
with the rest FP16, and its drift vs the export measured with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitedge import ui
from vitedge.backends.base import CompileRequest
from vitedge.backends.tensorrt.settings import TensorRTOptions
from vitedge.errors import CompileFailed
from vitedge.manifest import Manifest
from vitedge.ortsession import run_graph

VERIFY_SAMPLES = 256
DEFAULT_CALIB_METHOD = "entropy"


def trt_plan(model: Any, export_onnx: Path, request: CompileRequest,
             calibration: np.ndarray | None) -> tuple[Any, dict[str, Any]]:
    """The graph TensorRT builds for the requested precision, and its precision plan.

    The plan: `nodes` (every compute node's dtype and why), `summary` (node counts per dtype),
    `fp16` (margin, I/O dtype, FP32 islands with reasons and PyTorch modules) and, for INT8,
    `int8_plans` (both placement plans' structure and drift, see `precision.int8.plan_int8`).
    """
    from vitedge.precision.fp16 import DEFAULT_MARGIN, plan_fp16
    from vitedge.precision.int8 import IgnoredScope

    opts: TensorRTOptions = request.options  # type: ignore[assignment]
    precision = request.precision
    keep = IgnoredScope.parse(opts.ignored_scope).select(model)
    if precision == "fp32":
        return model, {"nodes": [], "summary": {"all": "fp32 (TF32 off)"}}
    margin = opts.fp16_margin or DEFAULT_MARGIN
    io_fp16 = opts.io == "fp16"
    if calibration is None:
        ui.warn("no --calib: FP32 islands only for LayerNorm/Softmax; pass --calib to also keep "
                "large activations in FP32")
    if precision == "fp16":
        with ui.Step("FP16 plan: calibration statistics and FP32 islands"):
            graph, fp16 = plan_fp16(model, calibration, margin=margin, io_fp16=io_fp16, keep=keep)
        nodes, int8_plans = fp16.pop("nodes"), None
    else:  # both placement plans (accurate, fast) built and measured; --plan picks the graph
        from vitedge.precision.int8 import plan_int8

        method = request.calib_method or DEFAULT_CALIB_METHOD
        labels = request.calibration.labels if request.calibration is not None else None
        graph, nodes, fp16, int8_plans = plan_int8(
            export_onnx, calibration, method="minmax" if method == "max" else method, keep=keep,
            quantize_attention=opts.quantize_attention, margin=margin, io_fp16=io_fp16, plan=opts.plan,
            labels=labels, smoothquant_alpha=opts.smoothquant_alpha)
    summary = {dtype: sum(n["dtype"] == dtype for n in nodes) for dtype in ("int8", "fp16", "fp32")}
    return graph, {"nodes": nodes, "summary": {k: v for k, v in summary.items() if v}, "fp16": fp16,
                   "int8_plans": int8_plans}


def verification_data(request: CompileRequest, manifest: Manifest) -> dict[str, Any]:
    """Inputs for the CPU drift check: --val (labelled), else calibration, else seeded random."""
    from vitedge.data import random_inputs

    for tensors, source in ((request.validation, "--val"), (request.calibration, "calibration set")):
        if tensors is not None:
            rng = np.random.default_rng(request.seed)
            pick = np.sort(rng.permutation(len(tensors.x))[:VERIFY_SAMPLES])
            labels = tensors.labels[pick] if tensors.labels is not None else None
            return {"x": tensors.x.take(pick, axis=0), "labels": labels, "source": source}  # lazy on disk
    return {"x": random_inputs(manifest.preprocessing, 32, request.seed), "labels": None,
            "source": "seeded random inputs"}


def verify_on_cpu(reference: Path, candidate: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Drift of the TensorRT-ready graph vs the export's FP32 ONNX, run with ONNX Runtime on CPU.

    Two runs: the graph as ONNX Runtime executes it, and its FP16-storage emulation (every
    FP16 tensor rounded as TensorRT stores it), since ORT's CPU kernels skip much FP16 rounding.
    """
    import onnx

    from vitedge.metrics import compare_logits
    from vitedge.precision.fp16 import emulate_fp16

    x, labels = data["x"], data["labels"]
    with ui.Step(f"verifying on CPU with ONNX Runtime ({len(x)} samples)"):
        ref = run_graph(onnx.load(str(reference)), x)
        graph = onnx.load(str(candidate))
        runs = {"onnxruntime": graph, "fp16_storage_emulated": emulate_fp16(graph)}
        result: dict[str, Any] = {"reference": "export ONNX, FP32 (parity-checked against PyTorch)",
                                  "data": data["source"], "samples": int(len(x))}
        for name, model in runs.items():
            out = run_graph(model, x)
            bad = int((~np.isfinite(out)).any(axis=1).sum())
            if bad:
                raise CompileFailed(f"the TensorRT-ready graph gives inf/NaN on {bad} of {len(x)} samples on "
                                    f"CPU ({name}); lower --fp16-margin to keep more nodes in FP32")
            result[name] = compare_logits(ref, out, labels)
    return result
