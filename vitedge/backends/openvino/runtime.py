"""OpenVINO at run time: the runner (recorded properties; static shapes compiled per batch size), the
yardstick "OpenVINO default", and the per-node performance counters (`perf_profile`)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.base import (
    Runner,
)
from vitedge.errors import EnvironmentProblem

_PRECISION_WORDS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8"}


def _ov() -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise EnvironmentProblem("openvino is not installed: pip install openvino nncf") from exc
    return ov


def precision_word(value: Any) -> str:
    """An ov.Type (or its name) as fp32 / bf16 / fp16 / int8."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return _PRECISION_WORDS.get(name, name)



def runtime_properties(runtime: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """compile_model properties from a manifest's "runtime" key; THREADS overrides its threads."""
    props = dict(runtime.get("properties") or {"INFERENCE_PRECISION_HINT": "f32"})
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    return props


def _resolved(compiled: Any) -> dict[str, Any]:
    """What the plugin actually chose, read back from the compiled model."""
    def read(key: str) -> Any:
        try:
            return compiled.get_property(key)
        except Exception:  # noqa: BLE001 - a property the device does not expose
            return None

    hint = read("PERFORMANCE_HINT")
    return {"inference_precision": precision_word(read("INFERENCE_PRECISION_HINT")),
            "performance_hint": getattr(hint, "name", str(hint)) if hint is not None else None,
            "threads": read("INFERENCE_NUM_THREADS"), "streams": read("NUM_STREAMS")}




class OpenVINORunner(Runner):
    """A compiled OpenVINO model with one infer request; records what precision really runs.

    STATIC (`--shapes static`): the model is reshaped to each input shape and compiled for it on
    first use (at most MAX_SHAPES kept, least recently used dropped): OpenVINO's CPU plugin runs
    static shapes faster than a dynamic batch, most of all for INT8 with a bf16 float remainder,
    whose dynamic-shape graph is cut by reorders (ViT-S/16 b8, 4 threads on an AMX Xeon: 64 ms
    static vs 84 ms dynamic).
    """

    name = "openvino"
    MAX_SHAPES = 4

    def __init__(self, model_xml: Path, properties: dict[str, Any], device: str = "CPU",
                 static: bool = False) -> None:
        super().__init__()
        ov = _ov()
        self.core = ov.Core()
        self.model = self.core.read_model(str(model_xml))
        self.properties, self.device, self.static = properties, device, static
        self._by_shape: OrderedDict[tuple[int, ...], tuple[Any, Any]] = OrderedDict()
        if static:
            shape = [1, *[d.get_length() if d.is_static else 224 for d in self.model.inputs[0].get_partial_shape()][1:]]
            self.compiled, self.request = self._compile_for(tuple(shape))
        else:
            self.compiled = self.core.compile_model(self.model, device, properties)
            self.request = self.compiled.create_infer_request()
        resolved = _resolved(self.compiled)
        self.info = {"backend": "openvino", "device": device.lower(),
                     "precision_run": resolved["inference_precision"], "threads": resolved["threads"],
                     "streams": resolved["streams"], "performance_hint": resolved["performance_hint"],
                     "properties": properties, "shapes": "static" if static else "dynamic"}

    def _compile_for(self, shape: tuple[int, ...]) -> tuple[Any, Any]:
        """The compiled model and request for one static input SHAPE (compiled on first use)."""
        if shape in self._by_shape:
            self._by_shape.move_to_end(shape)
            return self._by_shape[shape]
        self.model.reshape({self.model.inputs[0].get_any_name(): list(shape)})
        compiled = self.core.compile_model(self.model, self.device, self.properties)
        self._by_shape[shape] = (compiled, compiled.create_infer_request())
        while len(self._by_shape) > self.MAX_SHAPES:
            self._by_shape.popitem(last=False)
        return self._by_shape[shape]

    def _run(self, x: np.ndarray) -> np.ndarray:
        request = self._compile_for(tuple(x.shape))[1] if self.static else self.request
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    def close(self) -> None:
        self.request = None
        self.compiled = None
        self._by_shape.clear()


def default_runner(onnx_path: Path, threads: int | None = None) -> OpenVINORunner:
    """The yardstick "OpenVINO default": what `ov.Core().compile_model("model.onnx", "CPU")` gives a
    user for free (default properties: bf16 on CPUs with AMX or AVX-512 BF16), with only the thread
    budget set so that every runner bench times has the same cores."""
    runner = OpenVINORunner(onnx_path, {"INFERENCE_NUM_THREADS": int(threads)} if threads else {})
    runner.info["yardstick"] = "OpenVINO default: the FP32 ONNX, default properties"
    return runner


def perf_profile(model_path: Path, properties: dict[str, Any], batch: int, iters: int = 10,
                 static: bool = False) -> list[dict[str, Any]]:
    """Where an OpenVINO model's time goes: its per-node performance counters (PERF_COUNT) at BATCH,
    summed over ITERS runs by node type and kernel (the kernel name carries the precision it ran
    in, e.g. brgemm_avx512_amx_I8), ms per run, most expensive first."""
    props = {**properties, "PERF_COUNT": True}
    runner = OpenVINORunner(model_path, props, static=static)
    shape = [batch, *[d.get_length() if d.is_static else 224
                      for d in runner.model.inputs[0].get_partial_shape()][1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    totals: dict[tuple[str, str], list[float]] = {}
    try:
        for i in range(iters + 2):
            runner.infer(x)
            if i < 2:
                continue  # warm-up
            request = runner._compile_for(tuple(shape))[1] if static else runner.request
            for info in request.profiling_info:
                key = (info.node_type, info.exec_type)
                row = totals.setdefault(key, [0.0, 0])
                row[0] += info.real_time.total_seconds() * 1e3 / iters
                row[1] += 1
    finally:
        runner.close()
    rows = [{"node_type": k[0], "kernel": k[1], "ms": v[0], "nodes": v[1] // iters} for k, v in totals.items()]
    return sorted(rows, key=lambda r: -r["ms"])


