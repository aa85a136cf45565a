"""vitedge: trained ViT -> validated ONNX -> TensorRT / OpenVINO / ONNX Runtime, verified.

The library face: `export`, `compile`, `bench` (see `vitedge.api`) and `load` (see
`vitedge.runtime`). Each is imported on first use, so `import vitedge` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

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
    """Drift + latency vs the PyTorch reference; returns the report (see `vitedge.api.bench`)."""
    from vitedge.api import bench as _bench

    return _bench(artifacts, **kwargs)


def load(path: Any, **kwargs: Any) -> Any:
    """Open any vitedge artifact as a Predictor (see `vitedge.runtime.load`)."""
    from vitedge.runtime import load as _load

    return _load(path, **kwargs)
