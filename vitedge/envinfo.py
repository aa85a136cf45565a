"""Tool versions and hardware facts recorded in manifests and shown by `vitedge doctor`."""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata
from typing import Any

TOOLS = ("vitedge", "torch", "timm", "torchvision", "onnx", "onnxruntime", "onnxscript",
         "openvino", "nncf", "tensorrt", "transformers", "numpy")

ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "avx512_fp16": "AVX-512 FP16",
}

INT8_DOT_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for tool in TOOLS:
        versions[tool] = package_version(tool)
    return versions


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """CPU model and the ISA flags that decide INT8/BF16 speed (from /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                if flags and model:
                    break
    except OSError:
        pass
    import os

    return {
        "model": model,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "isa": [label for flag, label in ISA_FLAGS.items() if flag in flags],
        "bf16_native": "avx512_bf16" in flags or "amx_bf16" in flags,
        # INT8 dot-product instructions; without them (AVX2 only) OpenVINO runs INT8 through a
        # generic fallback that was slower than its FP32 here (ViT-S/16 b1: 119 vs 82 ms).
        "int8_vnni": bool(flags & INT8_DOT_FLAGS) if platform.machine() in ("x86_64", "AMD64") else None,
    }


def gpu_info() -> list[dict[str, Any]]:
    """CUDA GPUs through torch (name, compute capability, memory); empty without CUDA."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({
                "index": i, "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            })
        return gpus
    except Exception:  # noqa: BLE001 - a broken driver must not break doctor
        return []


def hardware() -> dict[str, Any]:
    return {"cpu": cpu_info(), "gpus": gpu_info(), "os": platform.platform()}
