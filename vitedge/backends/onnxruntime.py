"""ONNX Runtime: the export check, FP32 and INT8 (static Q/DQ) CPU artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge import ui
from vitedge.backends.base import (
    Availability,
    Backend,
    CompileRequest,
    Runner,
    artifact_path,
    register_backend,
)
from vitedge.backends.options import (
    Options,
    ignored_scope_option,
    quantize_attention_option,
    smoothquant_alpha_option,
    threads_option,
)
from vitedge.errors import BadInput, CompileFailed, brief
from vitedge.manifest import Manifest
from vitedge.ortsession import session

MODEL_FILE = "model.onnx"
# The FP32 artifact is saved after ORT's EXTENDED graph optimisations (constant folding plus
# fusions into com.microsoft ops: LayerNorm/GELU/attention/MatMul+Add): that work is done
# once at compile time and the file still runs on any CPU with the CPU provider. ALL (and
# LAYOUT) would also bake in NCHWc layouts picked for this machine's vector width, which ORT
# documents as not portable; the runner applies them at load instead.
OFFLINE_LEVEL = "ORT_ENABLE_EXTENDED"
LOAD_LEVEL = "ORT_ENABLE_ALL"


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


@dataclass(frozen=True)
class OnnxRuntimeOptions(Options):
    """`vitedge compile --target onnxruntime` options."""

    threads: int | None = threads_option()
    ignored_scope: list[str] = ignored_scope_option()
    quantize_attention: bool = quantize_attention_option()
    smoothquant_alpha: float | None = smoothquant_alpha_option()


@register_backend
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    targets = ("onnx",)  # an export dir runs on ONNX Runtime FP32
    precisions = ("fp32", "int8")
    device_kind = "cpu"
    runtime_module = "onnxruntime"
    Options = OnnxRuntimeOptions
    default_calib_method = "minmax"
    calib_methods = ("minmax", "entropy", "percentile")

    def availability(self) -> Availability:
        return Availability.of_package("onnxruntime", "pip install onnxruntime")

    def check_options(self, request: CompileRequest) -> None:
        opts: OnnxRuntimeOptions = request.options  # type: ignore[assignment]
        if request.precision != "int8" and (opts.ignored_scope or opts.quantize_attention
                                            or opts.smoothquant_alpha is not None):
            raise BadInput("--ignored-scope, --quantize-attention and --smoothquant-alpha apply to --precision "
                           "int8 only")

    def compile(self, export_dir: Path, out_dir: Path, manifest: Manifest,
                request: CompileRequest) -> Manifest:
        """FP32: the graph after ORT's portable optimisations. INT8: a symmetric Q/DQ graph."""
        import onnx

        from vitedge.precision.int8 import QUANT_OP_TYPES, IgnoredScope, quantize_qdq

        source = artifact_path(export_dir, manifest)
        target = out_dir / MODEL_FILE
        plan: list[dict[str, Any]] = []
        opts: OnnxRuntimeOptions = request.options  # type: ignore[assignment]
        if request.precision == "fp32":
            with ui.Step(f"optimising the graph ({OFFLINE_LEVEL})"):
                try:
                    session(source, optimized_model_path=target, level=OFFLINE_LEVEL)
                except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
                    raise CompileFailed(f"ONNX Runtime could not optimise {source}: {brief(exc)}") from exc
            details: dict[str, Any] = {"graph_optimization": OFFLINE_LEVEL}
        else:
            assert request.calibration is not None  # compile_artifact loads it for int8
            scope = IgnoredScope.parse(opts.ignored_scope)
            excluded = scope.select(onnx.load(str(source), load_external_data=False)) if scope else []
            quantize_attention = opts.quantize_attention
            from vitedge.precision.smoothquant import migrated

            with migrated(source, request.calibration.x, alpha=opts.smoothquant_alpha) as (
                    smoothed, smoothquant):  # outliers -> weights
                plan = quantize_qdq(smoothed, target, request.calibration.x,
                                    method=request.calib_method or self.default_calib_method,
                                    exclude_nodes=excluded, quantize_attention_matmuls=quantize_attention)
            details = {"format": "QDQ", "activations": "int8 symmetric per-tensor", "smoothquant": smoothquant,
                       "weights": "int8 symmetric per-channel", "bias": "float",
                       "quantized_op_types": list(QUANT_OP_TYPES),
                       "attention_matmuls": "int8" if quantize_attention else "float",
                       "ignored_scope": list(opts.ignored_scope)}
        threads = opts.threads
        try:
            with OrtRunner(target, threads=threads) as runner:  # it must load and run here
                h, w = manifest.preprocessing.input_size
                runner.infer(np.zeros((1, 3, h, w), np.float32))
        except Exception as exc:  # noqa: BLE001
            raise CompileFailed(f"the compiled ONNX Runtime model does not run: {brief(exc)}") from exc
        manifest["artifact"] = {"model": MODEL_FILE, "format": "onnx", **details}
        manifest["runtime"] = {"threads": threads, "graph_optimization_level": LOAD_LEVEL,
                               "providers": ["CPUExecutionProvider"]}
        manifest["precision_plan"] = plan
        return manifest

    def summary_line(self, manifest: Manifest) -> str | None:
        art, runtime = manifest.get("artifact", {}), manifest.get("runtime", {})
        what = (f"Q/DQ graph ({art.get('activations')}, {art.get('weights')})" if "activations" in art
                else f"graph saved after {art.get('graph_optimization')}")
        return f"runs: ONNX Runtime CPU, {what}, threads {runtime.get('threads') or 'default'}"

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        runtime = manifest.runtime
        threads = options.get("threads") or runtime.get("threads")
        return OrtRunner(artifact_path(artifact_dir, manifest), threads=threads,
                         precision=manifest.get("precision", "fp32"), spinning=options.get("spinning", True))
