"""TensorRT engines for NVIDIA GPUs, built from precision-annotated ONNX (strongly typed).

Two layers. The plan (`plan.py`), always and on any CPU: the export's ONNX becomes the graph
TensorRT builds (FP16 with FP32 islands, or INT8 Q/DQ with the rest FP16), passes the
readiness check, and is executed with ONNX Runtime to measure its drift. The engine
(`engine.py`, `runner.py`), only where `import tensorrt` works and a GPU is visible: a thin
layer over the TensorRT 10/11 Python API and a runner on torch CUDA tensors. `settings.py`
holds the options and the engine settings both the Python build and the printed `trtexec`
line are made from. Without TensorRT, compile keeps the plan and that `trtexec` line and
marks the artifact incomplete.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from vitedge import ui
from vitedge.backends.base import Availability, Backend, CompileRequest, Runner, artifact_path, register_backend
from vitedge.backends.tensorrt.engine import build_engine, current_gpu
from vitedge.backends.tensorrt.plan import DEFAULT_CALIB_METHOD, trt_plan, verification_data, verify_on_cpu
from vitedge.backends.tensorrt.settings import (
    DEFAULT_PROFILE,
    ENGINE,
    TRT_ONNX,
    EngineSettings,
    TensorRTOptions,
    engine_mismatch,
    parse_profile,
)
from vitedge.envinfo import gpu_info, package_version
from vitedge.errors import BadInput, IncompatibleArtifact
from vitedge.manifest import Manifest
from vitedge.ortsession import run_graph as _run_graph  # the name tests and scripts use

MISSING = "TensorRT is not installed"
INSTALL_HINT = ("pip install --extra-index-url https://pypi.nvidia.com tensorrt (NVIDIA's index; the PyPI "
                "package only downloads from there), or use JetPack's TensorRT on Jetson; needs an NVIDIA "
                "GPU and driver")

__all__ = ["DEFAULT_PROFILE", "EngineSettings", "TensorRTBackend", "TensorRTOptions", "_run_graph",
           "build_engine", "engine_mismatch", "parse_profile"]


@register_backend
class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    device_kind = "cuda"
    runtime_module = "tensorrt"
    Options = TensorRTOptions
    default_calib_method = DEFAULT_CALIB_METHOD
    calib_methods = ("entropy", "max", "minmax", "percentile")  # max == minmax (symmetric)
    default_calib_size = 500
    compiles_without_runtime = True  # writes the TensorRT-ready ONNX and the trtexec command

    def availability(self) -> Availability:
        try:
            import tensorrt as trt
        except ImportError as exc:
            why = MISSING if package_version("tensorrt") is None else f"tensorrt does not import ({exc})"
            return Availability(False, None, why, INSTALL_HINT)
        version = getattr(trt, "__version__", package_version("tensorrt"))
        if not gpu_info():
            return Availability(False, version, "no CUDA GPU visible to PyTorch",
                                "TensorRT needs an NVIDIA GPU, its driver and a CUDA build of torch")
        return Availability(True, version)

    def check_options(self, request: CompileRequest) -> None:
        """Rules between options, precision and the export, checked before calibration data is loaded."""
        opts: TensorRTOptions = request.options  # type: ignore[assignment]
        parse_profile(opts.batch, request.export.fixed_batch if request.export is not None else None)
        if opts.io == "fp16" and request.precision == "fp32":
            raise BadInput("--io fp16 needs --precision fp16 or int8")
        if request.precision == "fp32" and (opts.fp16_margin is not None or opts.ignored_scope
                                            or opts.quantize_attention):
            raise BadInput("--fp16-margin, --ignored-scope and --quantize-attention apply to --precision "
                           "fp16 or int8 only")
        from vitedge.precision.imported import check_options as check_int8_options

        check_int8_options(request.precision, plan=opts.plan, quantized=opts.quantized,
                           quantize_attention=opts.quantize_attention, ignored_scope=opts.ignored_scope,
                           smoothquant_alpha=opts.smoothquant_alpha)

    def compile(self, export_dir: Path, out_dir: Path, manifest: Manifest,
                request: CompileRequest) -> Manifest:
        import onnx

        from vitedge.precision.trt_ready import check_trt_ready

        settings = EngineSettings.from_options(manifest, request.options)  # type: ignore[arg-type]
        export_onnx = artifact_path(export_dir, manifest)
        calibration = request.calibration.x if request.calibration is not None else None
        quantized = request.options.quantized  # type: ignore[attr-defined]
        if quantized:  # a pre-quantized Q/DQ graph (ModelOpt, QAT): checked and measured, not re-placed
            from vitedge.precision.imported import confirm_same_network, import_graph

            graph, plan = import_graph(quantized, export_onnx)
        else:
            graph, plan = trt_plan(onnx.load(str(export_onnx)), export_onnx, request, calibration)
        with ui.Step("checking TensorRT readiness"):
            ready = check_trt_ready(graph)
        onnx.save(graph, str(out_dir / TRT_ONNX))
        verification = verify_on_cpu(export_onnx, out_dir / TRT_ONNX, verification_data(request, manifest))
        if quantized:
            confirm_same_network(plan["imported"], verification)
        command = settings.trtexec_command(request.out_dir or out_dir)
        manifest.update(
            artifact={"model": ENGINE, "onnx": TRT_ONNX,
                      **({"smoothquant": plan["int8_plans"]["smoothquant"]} if plan.get("int8_plans") else {})},
            precision_plan=plan["nodes"], precision_summary=plan["summary"], fp16_plan=plan.get("fp16"),
            int8_plans=plan.get("int8_plans"), quantized_import=plan.get("imported"), trt_ready=ready,
            cpu_verification=verification, tensorrt={**asdict(settings), "trtexec": command},
        )
        available = self.availability()
        if not available.usable:
            manifest["incomplete"] = {
                "reason": f"{available.reason}, so no engine was built: {available.install}",
                "next_step": f"on the target GPU, in the artifact directory: {command}  (or re-run this "
                             "`vitedge compile` there)",
            }
            return manifest
        manifest["tensorrt"].update(build_engine(out_dir / TRT_ONNX, out_dir / ENGINE, settings))
        return manifest

    def summary_line(self, manifest: Manifest) -> str | None:
        built = manifest.get("tensorrt", {})
        lines = []
        if "version" in built:
            lines.append(f"runs: TensorRT {built['version']} on {built['gpu']} (sm {built['compute_capability']}), "
                         "strongly typed, TF32 off")
        plans = manifest.get("int8_plans")
        if plans:  # INT8: both placement plans, so the user can choose
            lines.append("INT8 plans (--plan; speed not measured): " + " | ".join(
                f"{name}{' (chosen)' if name == plans['chosen'] else ''}: {p['profile']['casts']} Casts, "
                f"{p['profile']['non_gemm_bytes'] / 1e6:.1f} MB non-GEMM, cosine {p['drift']['cosine_mean']:.4f}"
                for name, p in plans.items() if name in ("accurate", "fast")))
        return "\n  ".join(lines) or None

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        import tensorrt as trt

        from vitedge.backends.tensorrt.runner import TensorRTRunner

        engine = artifact_path(artifact_dir, manifest)
        if not engine.is_file():
            command = manifest.get("tensorrt", {}).get("trtexec", "")
            raise IncompatibleArtifact(f"{artifact_dir} holds no TensorRT engine yet: build it on the target "
                                       f"with `{command}` in that directory, or `vitedge compile` there")
        device = str(options.get("device") or "cuda")
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        built = manifest.get("tensorrt", {})
        if "version" in built:  # built by vitedge (a trtexec-built engine carries no record)
            gpu = current_gpu(index)
            why = engine_mismatch(built, trt.__version__, gpu["name"], gpu["compute_capability"])
            if why:
                raise IncompatibleArtifact(f"{artifact_dir}: {why}")
        return TensorRTRunner(engine, built, index)
