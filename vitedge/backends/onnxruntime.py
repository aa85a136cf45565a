"""ONNX Runtime: the export check, FP32 and INT8 (static Q/DQ) CPU artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitedge import ui
from vitedge.backends.base import (
    Availability,
    Backend,
    CompileOptions,
    Runner,
    artifact_path,
    register_backend,
)
from vitedge.envinfo import package_version
from vitedge.errors import BadInput, CompileFailed, EnvironmentProblem
from vitedge.manifest import Manifest

MODEL_FILE = "model.onnx"
# The FP32 artifact is saved after ORT's EXTENDED graph optimisations (constant folding plus
# fusions into com.microsoft ops: LayerNorm/GELU/attention/MatMul+Add): that work is done
# once at compile time and the file still runs on any CPU with the CPU provider. ALL (and
# LAYOUT) would also bake in NCHWc layouts picked for this machine's vector width, which ORT
# documents as not portable; the runner applies them at load instead.
OFFLINE_LEVEL = "ORT_ENABLE_EXTENDED"
LOAD_LEVEL = "ORT_ENABLE_ALL"


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


class OrtRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int | None = None,
                 providers: list[str] | None = None, precision: str = "fp32", spinning: bool = True) -> None:
        super().__init__()
        self.session = session(model_path, threads, providers, spinning=spinning)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        opts = self.session.get_session_options()
        self.info = {"backend": "onnxruntime", "providers": self.session.get_providers(),
                     "threads": opts.intra_op_num_threads or "default", "device": "cpu",
                     "precision_run": precision, "spinning": spinning}

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

    def check_options(self, options: CompileOptions) -> None:
        if options.extra.get("max_drop") is not None:
            raise BadInput("--max-drop (accuracy-controlled INT8) is an OpenVINO/NNCF feature; "
                           "use --target openvino, or drop --max-drop")
        if options.extra.get("quantized") or options.extra.get("plan"):
            raise BadInput("--quantized and --plan are TensorRT options (--target tensorrt)")

    def compile(self, export_dir: Path, out_dir: Path, manifest: Manifest,
                options: CompileOptions) -> Manifest:
        """FP32: the graph after ORT's portable optimisations. INT8: a symmetric Q/DQ graph."""
        import onnx

        from vitedge.precision.int8 import IgnoredScope, quantize_qdq

        source = artifact_path(export_dir, manifest)
        target = out_dir / MODEL_FILE
        plan: list[dict[str, Any]] = []
        if options.precision == "fp32":
            with ui.Step(f"optimising the graph ({OFFLINE_LEVEL})"):
                try:
                    session(source, optimized_model_path=target, level=OFFLINE_LEVEL)
                except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
                    raise CompileFailed(f"ONNX Runtime could not optimise {source}: {exc}") from exc
            details: dict[str, Any] = {"graph_optimization": OFFLINE_LEVEL}
        else:
            assert options.calibration is not None  # compile_artifact loads it for int8
            scope = IgnoredScope.parse(options.extra.get("ignored_scope"))
            excluded = scope.select(onnx.load(str(source), load_external_data=False)) if scope else []
            quantize_attention = bool(options.extra.get("quantize_attention"))
            plan = quantize_qdq(source, target, options.calibration.x,
                                method=options.calib_method or self.default_calib_method,
                                exclude_nodes=excluded, quantize_attention_matmuls=quantize_attention)
            details = {"format": "QDQ", "activations": "int8 symmetric per-tensor",
                       "weights": "int8 symmetric per-channel", "bias": "float",
                       "quantized_op_types": ["Conv", "MatMul", "Gemm"],
                       "attention_matmuls": "int8" if quantize_attention else "float",
                       "ignored_scope": list(options.extra.get("ignored_scope") or [])}
        threads = options.extra.get("threads")
        try:
            with OrtRunner(target, threads=threads) as runner:  # it must load and run here
                h, w = manifest.preprocessing.input_size
                runner.infer(np.zeros((1, 3, h, w), np.float32))
        except Exception as exc:  # noqa: BLE001
            raise CompileFailed(f"the compiled ONNX Runtime model does not run: {exc}") from exc
        manifest["artifact"] = {"model": MODEL_FILE, "format": "onnx", **details}
        manifest["runtime"] = {"threads": threads, "graph_optimization_level": LOAD_LEVEL,
                               "providers": ["CPUExecutionProvider"]}
        manifest["precision_plan"] = plan
        return manifest

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        runtime = manifest.get("runtime", {})
        threads = options.get("threads") or runtime.get("threads")
        return OrtRunner(artifact_path(artifact_dir, manifest), threads=threads,
                         precision=manifest.get("precision", "fp32"), spinning=options.get("spinning", True))
