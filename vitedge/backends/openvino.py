"""OpenVINO IR for Intel CPUs: FP32 (honest, f32 inference), FP16, INT8 through NNCF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitedge.backends.base import Availability, Backend, Runner, register_backend
from vitedge.envinfo import package_version
from vitedge.errors import EnvironmentProblem
from vitedge.manifest import Manifest


@register_backend
class OpenVINOBackend(Backend):
    name = "openvino"
    precisions = ("fp32", "fp16", "int8")

    def availability(self) -> Availability:
        version = package_version("openvino")
        if version is None:
            return Availability(False, None, "openvino is not installed", "pip install openvino nncf")
        return Availability(True, version)

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        raise EnvironmentProblem("the OpenVINO runner is not built yet")
