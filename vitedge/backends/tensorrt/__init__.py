"""TensorRT engines for NVIDIA GPUs, built from precision-annotated ONNX (strongly typed).

Two layers. The plan (`plan.py`), always and on any CPU: the export's ONNX becomes the graph
TensorRT builds (FP16 with FP32 islands, or INT8 Q/DQ with the rest FP16), passes the
readiness check, and is executed with ONNX Runtime to measure its drift. The engine
(`engine.py`, `runner.py`), built by one of two libraries (`libs.py`, `--engine-lib`): TensorRT
10/11, where it imports and a GPU is visible, or TensorRT for RTX, which builds ahead of time
on any machine for the compute capabilities named by `--gpu-arch`. `settings.py` holds the
options and the engine settings both the Python build and the printed `trtexec` line are made
from; `gpu.py` finds the GPU (name, compute capability, driver) without torch. Without an
engine library that can build here, compile keeps the plan and that `trtexec` line and marks
the artifact incomplete.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from vitedge import ui
from vitedge.backends.base import Availability, Backend, CompileRequest, Runner, artifact_path, register_backend
from vitedge.backends.tensorrt import libs
from vitedge.backends.tensorrt.engine import build_engine, current_gpu
from vitedge.backends.tensorrt.gpu import detect_gpus
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
from vitedge.envinfo import gpu_info
from vitedge.errors import BadInput, EnvironmentProblem, IncompatibleArtifact
from vitedge.manifest import Manifest
from vitedge.ortsession import run_graph as _run_graph  # the name tests and scripts use

MISSING = "TensorRT is not installed"
INSTALL_HINT = libs.LIBRARIES[libs.TENSORRT].install

__all__ = ["DEFAULT_PROFILE", "EngineSettings", "TensorRTBackend", "TensorRTOptions", "_run_graph",
           "build_engine", "engine_mismatch", "parse_profile"]


@register_backend
class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    device_kind = "cuda"
    Options = TensorRTOptions
    default_calib_method = DEFAULT_CALIB_METHOD
    calib_methods = ("entropy", "max", "minmax", "percentile")  # max == minmax (symmetric)
    default_calib_size = 500
    compiles_without_runtime = True  # writes the TensorRT-ready ONNX and the trtexec command

    @property
    def runtime_module(self) -> str:  # type: ignore[override]
        """The library bench imports before it times a load: the one --engine-lib auto uses here."""
        return libs.LIBRARIES[libs.resolve("auto")].module

    def availability(self) -> Availability:
        """Whether engines run here: with the library `--engine-lib auto` picks, on this GPU."""
        return self._availability(libs.resolve("auto"))

    def availability_for(self, manifest: Manifest) -> Availability:
        """An engine needs the library that built it; a TensorRT-RTX one is checked in `open_runner`,
        which says in one line what is missing (GPU, supported GPU, library, version)."""
        if manifest.get("tensorrt", {}).get("library") == libs.RTX:
            return Availability(True, libs.version_of(libs.RTX))
        return self._availability(libs.TENSORRT)

    def cannot_run_here(self, manifest: Manifest) -> str | None:
        built = manifest.get("tensorrt", {})
        if built.get("library") == libs.RTX:
            refusal = libs.load_refusal(built, detect_gpus(), 0, libs.version_of(libs.RTX))
            return refusal[1] if refusal else None
        return super().cannot_run_here(manifest)

    def _availability(self, library: str) -> Availability:
        info = self.engine_libraries()[library]
        if not info["version"]:
            install = info["install"]
        elif library == libs.RTX:
            install = (f"TensorRT-RTX engines run on an NVIDIA GPU of compute capability {libs.RTX_RUNS_ON_TEXT} "
                       "(RTX 30/40/50, A100; torch with CUDA runs them); compile builds them here ahead of time")
        else:
            install = "TensorRT needs an NVIDIA GPU and its driver (and a CUDA build of torch to run engines)"
        return Availability(info["runs_engines_here"], info["version"], info["reason"], install)

    def doctor_details(self) -> dict[str, Any]:
        return {"engine_libraries": self.engine_libraries(), "driver_gpus": list(detect_gpus())}

    def engine_libraries(self) -> dict[str, Any]:
        """Both engine libraries: version, whether compile builds with it here, whether this GPU
        runs its engines (and why not); `doctor` shows it."""
        gpus = detect_gpus()
        gpu = gpus[0] if gpus else None
        auto = libs.resolve("auto")
        out: dict[str, Any] = {}
        for name, lib in libs.LIBRARIES.items():
            version = libs.version_of(name)
            record: dict[str, Any] = {"version": version, "install": lib.install, "compile_uses": name == auto}
            if version is None:
                record.update(builds_here=False, runs_engines_here=False, reason=libs.why_missing(name))
            elif gpu is None:
                record.update(builds_here=lib.builds_without_gpu, runs_engines_here=False,
                              reason="no NVIDIA GPU visible (CUDA driver)" + (
                                  ": builds ahead of time for --gpu-arch (default "
                                  + ",".join("sm" + c.replace(".", "") for c in libs.DEFAULT_RTX_ARCHS) + ")"
                                  if lib.builds_without_gpu else ""))
            elif name == libs.RTX and not libs.rtx_runs_on(gpu["compute_capability"]):
                record.update(builds_here=True, runs_engines_here=False,
                              reason=f"{gpu['name']} (compute capability {gpu['compute_capability']}) cannot run "
                                     f"TensorRT-RTX engines (supports {libs.RTX_RUNS_ON_TEXT}): use TensorRT "
                                     "(--engine-lib tensorrt) on this GPU")
            elif name == libs.TENSORRT and not gpu_info():
                record.update(builds_here=False, runs_engines_here=False,
                              reason="no CUDA GPU visible to PyTorch (TensorRT's build and vitedge's runner use it)")
            else:
                record.update(builds_here=True, runs_engines_here=True, reason="")
            out[name] = record
        return out

    def check_options(self, request: CompileRequest) -> None:
        """Rules between options, precision and the export, checked before calibration data is loaded."""
        opts: TensorRTOptions = request.options  # type: ignore[assignment]
        parse_profile(opts.batch, request.export.fixed_batch if request.export is not None else None)
        library = libs.resolve(opts.engine_lib)
        if library == libs.RTX:
            libs.require(libs.RTX)  # named explicitly (auto only picks it when it imports)
            if opts.gpu_arch is not None:
                libs.parse_gpu_arch(opts.gpu_arch)
            unsupported = [flag for flag, given in (
                ("--hardware-compat", opts.hardware_compat != "none"),
                ("--version-compatible", opts.version_compatible),
                ("--timing-cache", opts.timing_cache is not None)) if given]
            if unsupported:
                raise BadInput(f"{', '.join(unsupported)}: TensorRT-RTX has no such option (its engines target the "
                               "compute capabilities of --gpu-arch; timing caches are no-ops there); drop it or "
                               "use --engine-lib tensorrt")
        elif opts.gpu_arch is not None:
            raise BadInput("--gpu-arch is for TensorRT-RTX (--engine-lib tensorrt-rtx); TensorRT builds for the GPU "
                           "it runs on")
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
        opts: TensorRTOptions = request.options  # type: ignore[assignment]
        library = libs.resolve(opts.engine_lib)
        if library == libs.RTX:  # ahead of time: no GPU needed
            archs = libs.parse_gpu_arch(opts.gpu_arch) if opts.gpu_arch else None
            built = build_engine(out_dir / TRT_ONNX, out_dir / ENGINE, settings, libs.RTX, archs)
            gpu = built["built_on"]
            if gpu["device"] == "gpu" and not libs.rtx_runs_on(gpu["compute_capability"]):
                ui.warn(f"{gpu['gpu']} (compute capability {gpu['compute_capability']}) cannot run TensorRT-RTX "
                        f"engines (supports {libs.RTX_RUNS_ON_TEXT}): this engine loads nowhere; build with "
                        "--gpu-arch for the target GPUs, or with --engine-lib tensorrt for this one")
            manifest["tensorrt"].update(built)
            return manifest
        reason = libs.why_missing(libs.TENSORRT) or ("" if gpu_info() else "no CUDA GPU visible to PyTorch")
        if reason:
            install = INSTALL_HINT if libs.module_of(libs.TENSORRT) is None else \
                "TensorRT needs an NVIDIA GPU, its driver and a CUDA build of torch"
            if library != libs.RTX and libs.module_of(libs.RTX) is not None:
                install += ("; or build ahead of time with TensorRT-RTX (--engine-lib tensorrt-rtx) for RTX-class "
                            "GPUs")
            manifest["incomplete"] = {
                "reason": f"{reason}, so no engine was built: {install}",
                "next_step": f"on the target GPU, in the artifact directory: {command}  (or re-run this "
                             "`vitedge compile` there)",
            }
            return manifest
        manifest["tensorrt"].update(build_engine(out_dir / TRT_ONNX, out_dir / ENGINE, settings, libs.TENSORRT))
        return manifest

    def summary_line(self, manifest: Manifest) -> str | None:
        built = manifest.get("tensorrt", {})
        lines = []
        if built.get("library") == libs.RTX:
            where = (f"on {built['built_on']['gpu']}" if built["built_on"]["device"] == "gpu"
                     else "ahead of time on CPU")
            lines.append(f"runs: TensorRT-RTX {built['library_version']} engine for compute capability "
                         f"{', '.join(built['target_compute_capabilities'])} (built {where} in "
                         f"{built['build_seconds']} s, peak RSS {built['build_peak_rss_mib']} MiB), strongly typed, "
                         "TF32 off; loads only on such a GPU")
        elif "version" in built:
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
        from vitedge.backends.tensorrt.runner import TensorRTRunner

        engine = artifact_path(artifact_dir, manifest)
        built = manifest.get("tensorrt", {})
        if not engine.is_file():
            command = built.get("trtexec", "")
            raise IncompatibleArtifact(f"{artifact_dir} holds no TensorRT engine yet: build it on the target "
                                       f"with `{command}` in that directory, or `vitedge compile` there")
        device = str(options.get("device") or "cuda")
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        if built.get("library") == libs.RTX:  # the truth before deserializing: GPU, library, version
            gpus = detect_gpus()
            refusal = libs.load_refusal(built, gpus, index, libs.version_of(libs.RTX))
            if refusal:
                kind, why = refusal
                raise kind(f"{artifact_dir}: {why}")
            driver = libs.driver_problem(gpus[index], libs.rtx_package())
            if driver:
                raise EnvironmentProblem(f"{artifact_dir}: {driver}")
            return TensorRTRunner(engine, built, index, library=libs.RTX)
        trt = libs.require(libs.TENSORRT)
        if "version" in built:  # built by vitedge (a trtexec-built engine carries no record)
            gpu = current_gpu(index)
            why = engine_mismatch(built, trt.__version__, gpu["name"], gpu["compute_capability"])
            if why:
                raise IncompatibleArtifact(f"{artifact_dir}: {why}")
        return TensorRTRunner(engine, built, index)
