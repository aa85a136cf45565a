"""NVIDIA GPUs as the CUDA driver sees them, without torch: name, compute capability, driver.

Tried in order: the CUDA driver API (`libcuda` through ctypes: cuInit, cuDeviceGetName,
cuDeviceGetAttribute, cuDriverGetVersion) with NVML (`libnvidia-ml`) for the driver's
release number, then `nvidia-smi --query-gpu`. A machine with neither (no driver) has no GPU;
nothing here raises.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from functools import lru_cache
from typing import Any

_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR


@lru_cache(maxsize=1)
def detect_gpus() -> tuple[dict[str, Any], ...]:
    """Every visible NVIDIA GPU: {"index", "name", "compute_capability" ("9.0"), "driver",
    "cuda_driver" (the CUDA version the driver supports, "13.0"), "source"}; () without one."""
    gpus = _from_libcuda()
    if gpus is None:
        gpus = _from_nvidia_smi()
    return tuple(gpus or ())


def _load(*names: str) -> Any:
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _from_libcuda() -> list[dict[str, Any]] | None:
    """None: no usable driver library (try nvidia-smi); []: the driver sees no GPU."""
    cuda = _load("libcuda.so.1", "libcuda.so", "nvcuda.dll")
    if cuda is None:
        return None
    try:
        if cuda.cuInit(0) != 0:
            return None
        count = ctypes.c_int(0)
        if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return None
        version = ctypes.c_int(0)
        cuda_driver = (f"{version.value // 1000}.{version.value % 1000 // 10}"
                       if cuda.cuDriverGetVersion(ctypes.byref(version)) == 0 else None)
        driver = _nvml_driver()
        gpus = []
        for index in range(count.value):
            device = ctypes.c_int(0)
            if cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
                continue
            name = ctypes.create_string_buffer(256)
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            cuda.cuDeviceGetName(name, 256, device)
            cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
            cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
            gpus.append({"index": index, "name": name.value.decode(errors="replace"),
                         "compute_capability": f"{major.value}.{minor.value}", "driver": driver,
                         "cuda_driver": cuda_driver, "source": "libcuda"})
        return gpus
    except (AttributeError, OSError):
        return None


def _nvml_driver() -> str | None:
    nvml = _load("libnvidia-ml.so.1", "libnvidia-ml.so", "nvml.dll")
    if nvml is None:
        return None
    try:
        if nvml.nvmlInit_v2() != 0:
            return None
        buffer = ctypes.create_string_buffer(96)
        ok = nvml.nvmlSystemGetDriverVersion(buffer, 96) == 0
        nvml.nvmlShutdown()
        return buffer.value.decode() if ok else None
    except (AttributeError, OSError):
        return None


def _from_nvidia_smi() -> list[dict[str, Any]]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index,name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            gpus.append({"index": int(parts[0]), "name": parts[1], "compute_capability": parts[2],
                         "driver": parts[3], "cuda_driver": None, "source": "nvidia-smi"})
    return gpus
