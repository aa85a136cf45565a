"""Calibration statistics: the largest |value| every float tensor takes on real inputs.

A copy of the graph exposes every float32 intermediate as an extra output and ONNX Runtime
(CPU, no graph optimisation, so tensor names survive) runs it over the calibration set.
The FP16 plan reads these maxima to decide which nodes must stay in FP32.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from vitedge.ortsession import session


def float_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (inputs, initializers, intermediates, outputs)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types: dict[str, int] = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def activation_ranges(model: onnx.ModelProto, inputs: np.ndarray, batch_size: int = 8,
                      threads: int | None = None) -> dict[str, float]:
    """Max |x| over INPUTS (NCHW float32) of the graph input and every float32 node output."""
    types = float_tensor_types(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    watched = [out for node in probe.graph.node for out in node.output
               if out and types.get(out) == onnx.TensorProto.FLOAT and out not in existing]
    for name in watched:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    input_name = next(i.name for i in model.graph.input
                      if i.name not in {init.name for init in model.graph.initializer})
    maxima: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vitedge-stats-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        sess = session(path, threads=threads, optimize=False)
        names = [o.name for o in sess.get_outputs()]
        for start in range(0, len(inputs), batch_size):
            batch = np.ascontiguousarray(inputs[start:start + batch_size], dtype=np.float32)
            values = sess.run(names, {input_name: batch})
            for name, value in [(input_name, batch), *zip(names, values, strict=True)]:
                if value.dtype != np.float32 or value.size == 0:
                    continue
                peak = float(np.max(np.abs(value)))
                if np.isnan(peak):  # NaN already in FP32: as unsafe for FP16 as an overflow
                    peak = float("inf")
                maxima[name] = max(maxima.get(name, 0.0), peak)
    return maxima
