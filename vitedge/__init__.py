"""vitedge: trained ViT -> validated ONNX -> TensorRT / OpenVINO / ONNX Runtime, verified.

The library face: `export`, `compile`, `bench` (see `vitedge.api`) and `load` (see
`vitedge.runtime`).
"""

from __future__ import annotations

from typing import Any

from vitedge._version import __version__
from vitedge.telemetry import decline_vendor_telemetry  # noqa: E402 - before OpenVINO/NNCF load

decline_vendor_telemetry()

# `vitedge.export` and `vitedge.compile` are also the names of submodules. Python binds a
# submodule to its package's attribute when it is first imported, which would replace the
# functions below as soon as anything imports `vitedge.export`; importing both here first
# (no torch at import) lets the functions defined afterwards keep their names.
import vitedge.compile  # noqa: E402, F401, I001
import vitedge.export  # noqa: E402, F401

__all__ = ["__version__", "bench", "compile", "export", "load"]


def export(model: str, out_dir: Any, **kwargs: Any) -> Any:
    """Export MODEL spec to OUT_DIR; returns the manifest (see `vitedge.api.export`)."""
    from vitedge.api import export as _export

    return _export(model, out_dir, **kwargs)


def compile(export_dir: Any, out_dir: Any, **kwargs: Any) -> Any:  # noqa: A001 - the command's name
    """Compile an export dir for a target; returns the manifest (see `vitedge.api.compile`)."""
    from vitedge.api import compile as _compile

    return _compile(export_dir, out_dir, **kwargs)


def bench(artifacts: Any, **kwargs: Any) -> Any:
    """Drift + latency vs the PyTorch reference; returns the report (see `vitedge.validate.bench.bench`)."""
    from vitedge.validate.bench import bench as _bench

    return _bench(artifacts, **kwargs)


def load(path: Any, **kwargs: Any) -> Any:
    """Open any vitedge artifact as a Predictor (see `vitedge.runtime.load`)."""
    from vitedge.runtime import load as _load

    return _load(path, **kwargs)
