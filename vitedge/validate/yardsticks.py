"""Yardsticks: what a user gets without vitedge, timed beside the artifacts in the same run.

An artifact is only worth shipping if it beats what the user already has for free. Each
yardstick is a runner bench times interleaved with the candidates (same thread budget, same
inputs) and reports as a ratio with its bootstrap interval, at every batch; gates can name
it (`faster(openvino-int8, openvino-default)@b8`). None of them is the reference: drift is
still measured against PyTorch FP32, and a yardstick's own drift is shown for information.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitedge.backends.base import Runner
from vitedge.errors import BadInput


@dataclass(frozen=True)
class Yardstick:
    """One free alternative to an artifact: its name, backend and how to open it."""

    name: str
    backend: str
    what: str
    open: Callable[["Sources"], Runner]


@dataclass
class Sources:
    """What a yardstick is built from: the reference's module, the export's FP32 ONNX, the settings."""

    module: Any
    export_onnx: Path | None
    device: str
    threads: int | None


def _openvino_default(src: Sources) -> Runner:
    from vitedge.backends.openvino import default_runner

    if src.export_onnx is None:
        raise BadInput("--yardstick openvino-default needs the export's model.onnx: give the export dir as "
                       "--reference (or keep it where the artifacts' manifests say)")
    return default_runner(src.export_onnx, src.threads)


def _pytorch(autocast: str | None, compiled: bool) -> Callable[[Sources], Runner]:
    def open_runner(src: Sources) -> Runner:
        from vitedge.backends.pytorch import TorchRunner

        return TorchRunner(src.module, src.device, src.threads, autocast=autocast, compiled=compiled)

    return open_runner


YARDSTICKS: dict[str, Yardstick] = {y.name: y for y in (
    Yardstick("openvino-default", "openvino",
              'OpenVINO on the FP32 ONNX with default properties (ov.Core().compile_model("model.onnx", "CPU")): '
              "bf16 on CPUs with AMX or AVX-512 BF16", _openvino_default),
    Yardstick("pytorch-bf16", "pytorch", "PyTorch eager under torch.autocast(bfloat16)", _pytorch("bf16", False)),
    Yardstick("pytorch-fp16", "pytorch", "PyTorch eager under torch.autocast(float16): the GPU user's first try",
              _pytorch("fp16", False)),
    Yardstick("pytorch-compile", "pytorch", "torch.compile (inductor), FP32; compiled during warm-up",
              _pytorch(None, True)),
    Yardstick("pytorch-compile-bf16", "pytorch", "torch.compile (inductor) under torch.autocast(bfloat16)",
              _pytorch("bf16", True)),
)}


def check_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """The yardstick names, checked (BadInput naming the choices)."""
    unknown = [n for n in names if n not in YARDSTICKS]
    if unknown:
        raise BadInput(f"--yardstick: unknown {', '.join(unknown)}; choose from {', '.join(YARDSTICKS)}")
    return list(dict.fromkeys(names))


def default_names(device: str) -> list[str]:
    """The yardsticks `vitedge tune` times on DEVICE: OpenVINO's free default where OpenVINO runs (CPU),
    PyTorch under bf16 autocast where the CPU computes bf16 natively, PyTorch under fp16 autocast on
    a CUDA GPU."""
    from vitedge.backends import get_backend
    from vitedge.envinfo import cpu_info

    if device.startswith("cuda"):
        return ["pytorch-fp16"]
    if device != "cpu":
        return []
    names = []
    if get_backend("openvino").availability().usable:
        names.append("openvino-default")
    if cpu_info().get("bf16_native"):
        names.append("pytorch-bf16")
    return names
