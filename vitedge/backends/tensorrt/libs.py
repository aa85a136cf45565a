"""The two engine libraries behind `--target tensorrt`, and every difference between them.

TensorRT (`import tensorrt`, 10.x/11.x; NVIDIA's index or JetPack) builds on and for the GPU it
runs on. TensorRT for RTX (`import tensorrt_rtx`, PyPI `tensorrt-rtx`) has the same builder /
parser / runtime API shape but: it builds ahead of time with no GPU at all, for the compute
capabilities named on `IBuilderConfig.set_compute_capability` (`ComputeCapability.SM80` ...
`SM121`, `CURRENT`); it is strongly typed only; its timing-cache calls are no-ops (deprecated
since 1.2); `BuilderFlag.VERSION_COMPATIBLE` fails the build (no lean runtime is shipped) and
`hardware_compatibility_level` is unsupported; kernels are JIT-specialised on the GPU at first
run and kept in an `IRuntimeCache` (`IRuntimeConfig.set_runtime_cache`). Its runtime runs on
compute capability 8.0, 8.6, 8.9 and 12.x only (1.7.1: "Supported compute capabilities: 8.0 8.6
8.9 12.0 12.1 >12.0", printed on an H100), so Hopper (9.0) and Jetson Orin (8.7) need TensorRT.
All checked against tensorrt_rtx 1.7.1.116's bindings; nothing here imports either library
at module import time.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from vitedge.envinfo import package_version
from vitedge.errors import BadInput, EnvironmentProblem, IncompatibleArtifact

TENSORRT, RTX = "tensorrt", "tensorrt-rtx"
ENGINE_LIBS = ("auto", TENSORRT, RTX)


@dataclass(frozen=True)
class EngineLibrary:
    name: str  # --engine-lib value and manifest "library"
    module: str
    display: str
    install: str
    builds_without_gpu: bool


LIBRARIES = {
    TENSORRT: EngineLibrary(
        TENSORRT, "tensorrt", "TensorRT",
        "pip install --extra-index-url https://pypi.nvidia.com tensorrt (NVIDIA's index; the PyPI package only "
        "downloads from there), or use JetPack's TensorRT on Jetson; needs an NVIDIA GPU and driver", False),
    RTX: EngineLibrary(RTX, "tensorrt_rtx", "TensorRT-RTX",
                       "pip install tensorrt-rtx (or vitedge[tensorrt-rtx]); runs on RTX-class GPUs "
                       "(compute capability 8.0, 8.6, 8.9, 12.x)", True),
}

# TensorRT-RTX 1.7's runtime: the compute capabilities it runs engines on (and any later 12.x+).
RTX_RUNS_ON = ("8.0", "8.6", "8.9", "12.0", "12.1")
RTX_RUNS_ON_TEXT = "8.0, 8.6, 8.9, 12.x"
# --gpu-arch without a GPU: the RTX desktop/laptop generations (Ampere, Ada, Blackwell).
DEFAULT_RTX_ARCHS = ("8.6", "8.9", "12.0")
# The first bytes of every serialized TensorRT-RTX engine (seen on 1.7.1.116 builds).
RTX_ENGINE_MAGIC = b"vtrt"
RUNTIME_CACHE = ".tensorrt_rtx_runtime.cache"  # beside the engine; dot-named, so never in `files`


@cache
def _import(module: str) -> tuple[Any, str | None]:
    try:
        return importlib.import_module(module), None
    except ImportError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a broken wheel (missing .so) must not break doctor
        return None, f"{type(exc).__name__}: {exc}"


def module_of(name: str) -> Any | None:
    """The imported library NAME, or None when it does not import."""
    return _import(LIBRARIES[name].module)[0]


def why_missing(name: str) -> str:
    lib = LIBRARIES[name]
    error = _import(lib.module)[1]
    installed = package_version(lib.module.replace("_", "-")) or package_version(lib.module)
    if error is None:
        return ""
    return f"{lib.display} is not installed" if installed is None else f"{lib.module} does not import ({error})"


def require(name: str) -> Any:
    """The library module, or EnvironmentProblem naming how to install it."""
    module = module_of(name)
    if module is None:
        raise EnvironmentProblem(f"{why_missing(name)}: {LIBRARIES[name].install}")
    return module


def version_of(name: str) -> str | None:
    module = module_of(name)
    return getattr(module, "__version__", None) if module is not None else None


def resolve(choice: str) -> str:
    """--engine-lib: auto is TensorRT when it imports, else TensorRT-RTX when it imports, else
    TensorRT (whose plan + trtexec line is written without it)."""
    if choice not in ENGINE_LIBS:
        raise BadInput(f"--engine-lib takes {' | '.join(ENGINE_LIBS)}, got {choice!r}")
    if choice != "auto":
        return choice
    if module_of(TENSORRT) is not None:
        return TENSORRT
    return RTX if module_of(RTX) is not None else TENSORRT


def cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


def rtx_runs_on(cc: str) -> bool:
    return cc in RTX_RUNS_ON or cc_tuple(cc) >= (12, 0)


def parse_gpu_arch(text: str) -> list[str]:
    """`--gpu-arch sm86,sm89,sm120` (also 86 or 8.6) -> ["8.6", "8.9", "12.0"], each one that
    TensorRT-RTX both builds for and runs on."""
    archs = []
    for word in (w.strip().lower() for w in text.split(",")):
        match = re.fullmatch(r"(?:sm_?)?(\d{2,3})|(\d{1,2})\.(\d)", word)
        if not match:
            raise BadInput(f"--gpu-arch takes compute capabilities like sm86,sm89,sm120 (or 8.6), got {word!r}")
        cc = f"{match[1][:-1]}.{match[1][-1]}" if match[1] else f"{match[2]}.{match[3]}"
        if cc not in RTX_RUNS_ON:
            raise BadInput(f"--gpu-arch {word}: TensorRT-RTX builds engines for compute capability "
                           f"{', '.join(RTX_RUNS_ON)} only; compute capability {cc} (e.g. Jetson 8.7, Hopper 9.0, "
                           "Turing 7.5) needs TensorRT (--engine-lib tensorrt) on that machine")
        if cc not in archs:
            archs.append(cc)
    if not archs:
        raise BadInput("--gpu-arch takes at least one compute capability, e.g. sm86,sm89,sm120")
    return archs


def rtx_enum(trt: Any, cc: str) -> Any:
    """The `ComputeCapability` member for CC ("8.6" -> SM86) in the installed bindings."""
    member = getattr(trt.ComputeCapability, "SM" + cc.replace(".", ""), None)
    if member is None:
        offered = [n for n in trt.ComputeCapability.__members__ if n.startswith("SM")]
        raise BadInput(f"TensorRT-RTX {trt.__version__} cannot build for compute capability {cc} "
                       f"(it offers {', '.join(offered)})")
    return member


def load_refusal(built: dict[str, Any], gpus: list[dict[str, Any]] | tuple[dict[str, Any], ...],
                 index: int, installed_version: str | None) -> tuple[type[Exception], str] | None:
    """Why the TensorRT-RTX engine recorded as BUILT cannot be loaded here, in one line, or None.

    Checked in this order: no GPU; a GPU this library does not run on; an engine built for
    other compute capabilities; another library version. (TensorRT proper: `engine_mismatch`.)
    """
    lib = LIBRARIES[built.get("library", RTX)]
    if not gpus or index >= len(gpus):
        return EnvironmentProblem, (f"no NVIDIA GPU{f' {index}' if gpus else ''} visible (CUDA driver): "
                                    f"{lib.display} engines run on an NVIDIA GPU; this engine was built for "
                                    f"compute capability {', '.join(built.get('target_compute_capabilities') or [])}")
    gpu = gpus[index]
    name, cc = gpu["name"], gpu["compute_capability"]
    if not rtx_runs_on(cc):
        return IncompatibleArtifact, (f"{name} (compute capability {cc}) cannot run TensorRT-RTX engines (supports "
                                      f"{RTX_RUNS_ON_TEXT}): rebuild with TensorRT (--engine-lib tensorrt) on "
                                      "that machine")
    targets = built.get("target_compute_capabilities") or []
    if targets and cc not in targets:
        return IncompatibleArtifact, (f"this engine was built for compute capability {', '.join(targets)}, this GPU "
                                      f"is {name} (compute capability {cc}): rebuild with --gpu-arch "
                                      f"sm{cc.replace('.', '')} (or `vitedge compile` on this machine)")
    if installed_version is None:
        return EnvironmentProblem, f"{why_missing(lib.name)}: {lib.install}"
    if installed_version != built.get("library_version"):
        return IncompatibleArtifact, (f"this engine was built with {lib.display} {built.get('library_version')}, "
                                      f"this is {lib.display} {installed_version}: rebuild it with this version "
                                      "(`vitedge compile`) or install the one it was built with")
    return None


def rtx_package() -> str | None:
    """The installed TensorRT-RTX build, e.g. "tensorrt_rtx_cu13 1.7.1.116" (its CUDA major matters)."""
    for name in ("tensorrt_rtx_cu13", "tensorrt_rtx_cu12"):
        if package_version(name):
            return f"{name} {package_version(name)}"
    return None


def driver_problem(gpu: dict[str, Any], package: str | None) -> str | None:
    """Why this GPU's driver cannot run the installed TensorRT-RTX build (a cu13 build needs a
    driver for CUDA 13), or None (also when the driver's CUDA version is unknown)."""
    match = re.match(r"tensorrt_rtx_cu(\d+)", package or "")
    cuda = gpu.get("cuda_driver")
    if not match or not cuda or int(cuda.split(".")[0]) >= int(match[1]):
        return None
    return (f"the driver of {gpu['name']} ({gpu.get('driver') or 'version unknown'}) supports CUDA {cuda}, "
            f"{package.split()[0]} needs a driver for CUDA {match[1]}: update the driver, or install the "
            f"TensorRT-RTX build for CUDA {cuda.split('.')[0]} (tensorrt-rtx-cu{cuda.split('.')[0]})")


def validity_problem(trt: Any, runtime: Any, data: bytes) -> str | None:
    """TensorRT-RTX's own verdict on a serialized engine (`Runtime.get_engine_validity`), as a
    reason, or None when it is valid (or the check is not offered)."""
    if not hasattr(runtime, "get_engine_validity"):
        return None
    try:
        validity, diagnostics = runtime.get_engine_validity(data)
    except Exception:  # noqa: BLE001 - a header it cannot read is decided by deserialize itself
        return None
    if validity != trt.EngineValidity.INVALID:
        return None
    flags = [member.name.lower().replace("_", " ") for member in trt.EngineInvalidityDiagnostics.__members__.values()
             if int(diagnostics) & int(member)]
    return ", ".join(flags) or None  # INVALID without a diagnostic (seen with no GPU): deserialize decides
