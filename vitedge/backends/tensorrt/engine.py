"""The engine layer: a thin build over the TensorRT 10/11 Python API (strongly typed network,
so the precisions are the graph's). Only imported where `import tensorrt` works."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vitedge import ui
from vitedge.backends.tensorrt.settings import HARDWARE_COMPAT, EngineSettings
from vitedge.envinfo import gpu_info
from vitedge.errors import CompileFailed, EnvironmentProblem


def current_gpu(index: int = 0) -> dict[str, Any]:
    gpus = gpu_info()
    if index >= len(gpus):
        raise EnvironmentProblem("no CUDA GPU visible to PyTorch: TensorRT needs an NVIDIA GPU and driver")
    return gpus[index]


def build_engine(onnx_path: Path, engine_path: Path, settings: EngineSettings) -> dict[str, Any]:
    """Parse the ONNX into a strongly typed network, build and save the engine; return its record."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise CompileFailed(f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errors[:3])
                            + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""))
    config = builder.create_builder_config()
    if settings.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.opt_level is not None:
        config.builder_optimization_level = settings.opt_level
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 layers really FP32
    if settings.hardware_compat != "none":
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel,
                                                      HARDWARE_COMPAT[settings.hardware_compat])
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.profile:
        profile = builder.create_optimization_profile()
        low, opt, high = settings.shapes()
        profile.set_shape(settings.input_name, low, opt, high)
        config.add_optimization_profile(profile)
    gpu = current_gpu()
    cache_file = settings.timing_cache_file()  # the same file the trtexec line names
    saved = cache_file.read_bytes() if cache_file is not None and cache_file.is_file() else b""
    reused = bool(saved) and config.set_timing_cache(config.create_timing_cache(saved), ignore_mismatch=False)
    if not reused:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    start = time.perf_counter()
    with ui.Step(f"building the TensorRT engine on {gpu['name']}"):
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CompileFailed("TensorRT could not build the engine (its log above says why); a larger "
                            "--workspace or a lower --opt-level may help")
    with open(engine_path, "wb") as fh:
        fh.write(plan)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        tmp.replace(cache_file)
    return {"version": trt.__version__, "gpu": gpu["name"], "compute_capability": gpu["compute_capability"],
            "build_seconds": round(time.perf_counter() - start, 2), "strongly_typed": True, "tf32": False,
            "timing_cache": {"file": str(cache_file) if cache_file else None, "reused": reused}}


def _parser_error(error: Any) -> str:
    node = error.node_name() if hasattr(error, "node_name") else f"node #{error.node()}"
    op = error.node_operator() if hasattr(error, "node_operator") else ""
    return f"{node} ({op}): {error.desc()}" if op else f"{node}: {error.desc()}"
