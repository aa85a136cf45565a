"""ONNX Runtime sessions on CPU: the one place that builds an InferenceSession.

It sits below `backends/` and `precision/` because both run ONNX graphs: the ONNX Runtime
backend runs artifacts, the precision passes run graphs to collect statistics and to
measure drift.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import EnvironmentProblem


def session(model_path: Path | str, threads: int | None = None,
            providers: list[str] | None = None, optimize: bool = True,
            optimized_model_path: Path | str | None = None, level: str | None = None,
            spinning: bool = True) -> Any:
    """An ORT InferenceSession with explicit threads and graph optimisation level.

    With OPTIMIZED_MODEL_PATH, ORT also writes the graph it optimised (at LEVEL) there.
    `spinning=False` stops idle intra-op threads from spin-waiting, which otherwise takes the
    cores from other runtimes timed in the same process (bench interleaves runners).
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EnvironmentProblem("onnxruntime is not installed: pip install onnxruntime") from exc
    opts = ort.SessionOptions()
    if level is not None:
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    else:
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                         else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    if threads:
        opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model_path), opts, providers=providers or ["CPUExecutionProvider"])


RUN_MEMORY_BUDGET = 512 * 2**20  # bytes of one image's intermediates times the batch, at most


def intermediate_bytes(model: Any) -> int:
    """Bytes of every float32/float16 intermediate of MODEL for one image (shape inference; a
    symbolic batch dimension counts as 1, a tensor of unknown shape as nothing): an upper bound
    of what one image's run holds."""
    import onnx

    size = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2}
    total = 0
    for vi in onnx.shape_inference.infer_shapes(model, strict_mode=False).graph.value_info:
        tensor = vi.type.tensor_type
        if tensor.elem_type in size and tensor.HasField("shape") and \
                all(d.HasField("dim_value") or d.HasField("dim_param") for d in tensor.shape.dim):
            total += size[tensor.elem_type] * int(np.prod([d.dim_value or 1 for d in tensor.shape.dim]))
    return total


def run_graph(model: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits of an in-memory ONNX graph on CPU (no ORT graph optimisation), FP32 out.

    The batch is lowered so its intermediates fit RUN_MEMORY_BUDGET (ViT-B/16-384: 1; at 32
    that run alone held ~3 GB)."""
    import onnx

    batch_size = max(1, min(batch_size, RUN_MEMORY_BUDGET // max(1, intermediate_bytes(model))))
    with tempfile.TemporaryDirectory(prefix="vitedge-run-") as tmp:
        path = Path(tmp) / "graph.onnx"
        onnx.save(model, str(path))
        sess = session(path, optimize=False)
    feed = sess.get_inputs()[0]
    dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
    outs = [sess.run(None, {feed.name: x[i:i + batch_size].astype(dtype)})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs).astype(np.float32)
