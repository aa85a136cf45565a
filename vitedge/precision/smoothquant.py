"""SmoothQuant-style outlier migration in an ONNX graph, before INT8 Q/DQ (ONNX Runtime, TensorRT).

Trained ViTs carry a few LayerNorm output channels tens of times larger than the rest. With
per-tensor INT8 activations those channels set the scale and every other channel of the
following Linear's input is quantized to a handful of levels. SmoothQuant moves the range
into the weights, which are quantized per channel: for each LayerNorm whose output feeds only
MatMuls with constant weights, per input channel j

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha),   gamma_j /= s_j, beta_j /= s_j, W[j, :] *= s_j

which leaves the FP32 function unchanged (X / s times diag(s) W). It is applied only where
needed: when the largest channel range of a LayerNorm output exceeds OUTLIER_RATIO times its
median channel range (real ImageNet ViTs: 20-100x; the demo's trained ViT: under 10x).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from vitedge import ui

DEFAULT_ALPHA = 0.5
OUTLIER_RATIO = 16.0


def smoothable(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """(LayerNorm, its MatMul consumers) pairs where migration keeps the function exact."""
    inits = {i.name for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 3 or node.output[0] in graph_outputs:
            continue
        if not (node.input[1] in inits and node.input[2] in inits):
            continue
        users = consumers.get(node.output[0], [])
        if users and all(u.op_type == "MatMul" and u.input[0] == node.output[0] and u.input[1] in inits
                         and len(consumers.get(u.input[1], [])) == 1 for u in users):
            found.append((node, users))
    return found


def migrate(model: onnx.ModelProto, calibration: np.ndarray, *, alpha: float | None = None,
            outlier_ratio: float = OUTLIER_RATIO) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A copy of MODEL with outliers migrated where needed, and a record of what was done.

    ALPHA: the user's --smoothquant-alpha, None for DEFAULT_ALPHA (the record says which).
    """
    from vitedge.precision.stats import collect_stats

    pairs = smoothable(model)
    record: dict[str, Any] = {"alpha": DEFAULT_ALPHA if alpha is None else alpha,
                              "alpha_from": "default" if alpha is None else "--smoothquant-alpha",
                              "outlier_ratio": outlier_ratio, "candidates": len(pairs), "migrated": []}
    alpha = record["alpha"]
    if not pairs:
        return model, record
    names = [ln.output[0] for ln, _ in pairs]
    stats = collect_stats(model, calibration, tensors=names, channels=names, description="outlier statistics")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for ln, users in pairs:
        act = stats.tensors[ln.output[0]].channel_absmax
        if act is None:
            continue
        ratio = float(act.max() / max(np.median(act), 1e-12))
        if ratio <= outlier_ratio:
            continue
        weights = [numpy_helper.to_array(inits[u.input[1]]) for u in users]
        w_max = np.max(np.stack([np.abs(w).max(axis=1) for w in weights]), axis=0)
        scale = (np.maximum(act, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)).astype(np.float32)
        for name in (ln.input[1], ln.input[2]):  # gamma and beta
            value = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array((value / scale).astype(value.dtype), name))
        for user, w in zip(users, weights, strict=True):
            name = user.input[1]
            inits[name].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(w.dtype), name))
        record["migrated"].append({"layernorm": ln.name, "outlier_ratio": round(ratio, 1),
                                   "matmuls": [u.name for u in users]})
    if record["migrated"]:
        ui.info(f"SmoothQuant: migrated activation outliers of {len(record['migrated'])} LayerNorm outputs "
                "into the following weights")
    return out, record


@contextlib.contextmanager
def migrated(source: Path, calibration: np.ndarray, **kwargs: Any) -> Iterator[tuple[Path, dict[str, Any]]]:
    """SOURCE with outliers migrated, as a temporary ONNX file (SOURCE itself when none needed).

    No model is held while the caller works (ViT-B: 0.35 GB a copy): only the path.
    """
    smoothed, record = migrate(onnx.load(str(source)), calibration, **kwargs)
    if not record["migrated"]:
        del smoothed
        yield source, record
        return
    large = sum(int(np.prod(i.dims)) * 4 for i in smoothed.graph.initializer) > 1_800_000_000
    with tempfile.TemporaryDirectory(prefix="vitedge-smoothquant-") as tmp:
        path = Path(tmp) / source.name
        onnx.save(smoothed, str(path), save_as_external_data=large)
        del smoothed
        yield path, record
