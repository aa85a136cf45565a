"""vitedge: trained ViT -> validated ONNX -> TensorRT / OpenVINO / ONNX Runtime, verified."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from vitedge.telemetry import decline_vendor_telemetry  # noqa: E402 - before OpenVINO/NNCF load

decline_vendor_telemetry()

__all__ = ["__version__", "export", "load"]


def export(model: str, out_dir: str, **kwargs: Any):
    """Export MODEL spec to OUT_DIR (see `vitedge.api.export`)."""
    from vitedge.api import export as _export

    return _export(model, out_dir, **kwargs)


def load(path: str, **kwargs: Any):
    """Open any vitedge artifact as a Predictor (see `vitedge.runtime.load`)."""
    from vitedge.runtime import load as _load

    return _load(path, **kwargs)
