"""The engine layer: a thin build over the TensorRT 10/11 and TensorRT-RTX Python APIs (strongly
typed network, so the precisions are the graph's). Imports the library only when called.

TensorRT builds on the current GPU (torch names it), with the timing cache, hardware and version
compatibility options. TensorRT-RTX builds ahead of time for the named compute capabilities,
with or without a GPU; it has no timing cache, version or hardware compatibility (see libs.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from vitedge import ui
from vitedge.backends.tensorrt import libs
from vitedge.backends.tensorrt.settings import HARDWARE_COMPAT, EngineSettings
from vitedge.envinfo import cpu_info, gpu_info
from vitedge.errors import CompileFailed, EnvironmentProblem


def current_gpu(index: int = 0) -> dict[str, Any]:
    gpus = gpu_info()
    if index >= len(gpus):
        raise EnvironmentProblem("no CUDA GPU visible to PyTorch: TensorRT needs an NVIDIA GPU and driver")
    return gpus[index]


def build_engine(onnx_path: Path, engine_path: Path, settings: EngineSettings, library: str = libs.TENSORRT,
                 archs: list[str] | None = None) -> dict[str, Any]:
    """Parse the ONNX into a strongly typed network, build and save the engine; return its record.

    ARCHS (TensorRT-RTX only): the compute capabilities to build for; None: the current GPU.
    """
    trt = libs.require(library)
    rtx = library == libs.RTX
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise CompileFailed(f"{libs.LIBRARIES[library].display}'s ONNX parser rejected {onnx_path.name}: "
                            + "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""))
    config = builder.create_builder_config()
    if settings.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.opt_level is not None:
        config.builder_optimization_level = settings.opt_level
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 layers really FP32
    if settings.profile:
        profile = builder.create_optimization_profile()
        low, opt, high = settings.shapes()
        profile.set_shape(settings.input_name, low, opt, high)
        config.add_optimization_profile(profile)
    if rtx:
        return _build_rtx(trt, builder, network, config, engine_path, archs)
    if settings.hardware_compat != "none":
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel,
                                                      HARDWARE_COMPAT[settings.hardware_compat])
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    gpu = current_gpu()
    cache_file = settings.timing_cache_file()  # the same file the trtexec line names
    saved = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else b""
    reused = bool(saved) and config.set_timing_cache(config.create_timing_cache(saved), ignore_mismatch=False)
    if not reused:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    engine, seconds, peak = _build_and_save(builder, network, config, engine_path, "TensorRT",
                                            f"building the TensorRT engine on {gpu['name']}")
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        tmp.replace(cache_file)
    return {"library": libs.TENSORRT, "library_version": trt.__version__, "version": trt.__version__,
            "gpu": gpu["name"], "compute_capability": gpu["compute_capability"],
            "target_compute_capabilities": [gpu["compute_capability"]],
            "built_on": {"device": "gpu", "gpu": gpu["name"], "compute_capability": gpu["compute_capability"]},
            "engine": engine, "build_seconds": round(seconds, 2), "build_peak_rss_mib": peak.mib,
            "strongly_typed": True, "tf32": False,
            "timing_cache": {"file": str(cache_file) if cache_file else None, "reused": reused}}


def _build_rtx(trt: Any, builder: Any, network: Any, config: Any, engine_path: Path,
               archs: list[str] | None) -> dict[str, Any]:
    """TensorRT-RTX: ahead of time for ARCHS (on any machine), or for the current GPU."""
    from vitedge.backends.tensorrt.gpu import detect_gpus

    gpus = detect_gpus()
    if archs is None and not gpus:
        archs = list(libs.DEFAULT_RTX_ARCHS)
    request = "--gpu-arch"
    if archs is None:  # the GPU this runs on, whatever it is (an H100 builds, and loading says why not)
        targets = [gpus[0]["compute_capability"]]
        if libs.rtx_runs_on(targets[0]):
            config.num_compute_capabilities = 1
            config.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
            request = "CURRENT"
        else:  # not a TensorRT-RTX target: the builder's default, as it built on an H100 (1.7.1.116)
            request = "builder default"
    else:
        config.num_compute_capabilities = len(archs)
        for i, cc in enumerate(archs):
            if not config.set_compute_capability(libs.rtx_enum(trt, cc), i):
                raise CompileFailed(f"TensorRT-RTX {trt.__version__} refused compute capability {cc}")
        targets = list(archs)
    where = f"on {gpus[0]['name']}" if gpus else "ahead of time on this CPU (no GPU)"
    engine, seconds, peak = _build_and_save(
        builder, network, config, engine_path, "TensorRT-RTX",
        f"building the TensorRT-RTX engine for compute capability {', '.join(targets)} {where}")
    built_on: dict[str, Any] = (
        {"device": "gpu", "gpu": gpus[0]["name"], "compute_capability": gpus[0]["compute_capability"],
         "driver": gpus[0].get("driver")} if gpus else
        {"device": "cpu", "ahead_of_time": True, "cpu": cpu_info()["model"]})
    return {"library": libs.RTX, "library_version": trt.__version__,
            "library_package": libs.rtx_package(), "target_compute_capabilities": targets,
            "compute_capability_request": request,
            "built_on": built_on, "engine": engine, "build_seconds": round(seconds, 2),
            "build_peak_rss_mib": peak.mib, "strongly_typed": True, "tf32": False,
            "runtime_cache": {"file": libs.RUNTIME_CACHE, "hashed": False,
                              "note": "written beside the engine at the first load on a GPU (kernels JIT-compiled "
                                      "there); not in `files` (dot-named): TensorRT-RTX itself rejects a cache "
                                      "from another GPU, driver or version"}}


def _build_and_save(builder: Any, network: Any, config: Any, engine_path: Path, library: str,
                    step: str) -> tuple[dict[str, Any], float, "PeakRss"]:
    """Build the serialized engine (timed, peak RSS sampled) and write it: (file record, seconds, peak)."""
    start = time.perf_counter()
    with ui.Step(step), PeakRss() as peak:
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CompileFailed(f"{library} could not build the engine (its log above says why); a larger "
                            "--workspace or a lower --opt-level may help")
    seconds = time.perf_counter() - start
    return _save(plan, engine_path), seconds, peak


def _save(plan: Any, engine_path: Path) -> dict[str, Any]:
    """Write the serialized engine (an IHostMemory: buffer protocol, `.nbytes`); its size and hash."""
    data = memoryview(plan)
    with open(engine_path, "wb") as fh:
        fh.write(data)
    digest = hashlib.sha256(data).hexdigest()
    return {"file": engine_path.name, "bytes": int(plan.nbytes), "sha256": digest}


class PeakRss:
    """The process's peak resident memory while the block runs (sampled every 20 ms), in MiB."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s, self.mib = interval_s, None
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        process, peak = psutil.Process(), 0
        while True:
            peak = max(peak, process.memory_info().rss)
            self.mib = round(peak / 2**20, 1)
            if self._stop.wait(self.interval_s):
                peak = max(peak, process.memory_info().rss)
                self.mib = round(peak / 2**20, 1)
                return

    def __enter__(self) -> "PeakRss":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _parser_error(error: Any) -> str:
    node = error.node_name() if hasattr(error, "node_name") else f"node #{error.node()}"
    op = error.node_operator() if hasattr(error, "node_operator") else ""
    return f"{node} ({op}): {error.desc()}" if op else f"{node}: {error.desc()}"
