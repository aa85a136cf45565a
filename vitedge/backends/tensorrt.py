"""TensorRT engines for NVIDIA GPUs, built from precision-annotated ONNX (strongly typed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitedge.backends.base import Availability, Backend, Runner, register_backend
from vitedge.envinfo import package_version
from vitedge.errors import EnvironmentProblem
from vitedge.manifest import Manifest

INSTALL_HINT = ("pip install --extra-index-url https://pypi.nvidia.com tensorrt  "
                "(or JetPack on Jetson); needs an NVIDIA GPU and driver")


@register_backend
class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")

    def availability(self) -> Availability:
        try:
            import tensorrt as trt  # noqa: F401
        except ImportError as exc:
            why = "the tensorrt Python package is not installed" if package_version("tensorrt") is None \
                else f"tensorrt does not import ({exc})"
            return Availability(False, None, why, INSTALL_HINT)
        return Availability(True, getattr(trt, "__version__", package_version("tensorrt")))

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        raise EnvironmentProblem("the TensorRT runner is not built yet")
