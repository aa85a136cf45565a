"""ONNX Runtime: the export check, FP32 and INT8 (static Q/DQ) CPU artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.base import Availability, Backend, Runner, artifact_path, register_backend
from vitedge.envinfo import package_version
from vitedge.errors import EnvironmentProblem
from vitedge.manifest import Manifest


def session(model_path: Path | str, threads: int | None = None,
            providers: list[str] | None = None, optimize: bool = True) -> Any:
    """An ORT InferenceSession with explicit threads and graph optimisation level."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EnvironmentProblem("onnxruntime is not installed: pip install onnxruntime") from exc
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model_path), opts, providers=providers or ["CPUExecutionProvider"])


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        super().__init__()
        self.session = session(model_path, threads, providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        opts = self.session.get_session_options()
        self.info = {"backend": "onnxruntime", "providers": self.session.get_providers(),
                     "threads": opts.intra_op_num_threads or "default", "device": "cpu"}

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def close(self) -> None:
        self.session = None


@register_backend
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = ("fp32", "int8")
    default_calib_method = "minmax"
    calib_methods = ("minmax", "entropy", "percentile")

    def availability(self) -> Availability:
        version = package_version("onnxruntime")
        if version is None:
            return Availability(False, None, "onnxruntime is not installed", "pip install onnxruntime")
        return Availability(True, version)

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        runtime = manifest.get("runtime", {})
        threads = options.get("threads") or runtime.get("threads")
        return OrtRunner(artifact_path(artifact_dir, manifest), threads=threads)
