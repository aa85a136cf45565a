"""The library functions the CLI, recipes and apps call: export, compile, bench, inspect, doctor.

`vitedge.load` (the embedding API for device apps) lives in `runtime.py`; `vitedge/__init__`
re-exports both, so apps and notebooks need no CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitedge.errors import BadInput
from vitedge.manifest import Manifest


def export(
    model: str,
    out_dir: str | Path,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    opset: int = 18,
    batch: str | int = "dynamic",
    data: str | Path | None = None,
    labels: str | Path | list[str] | None = None,
    atol: float = 1e-3,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> Manifest:
    """Load MODEL, export it to OUT_DIR/model.onnx with a manifest, and check parity."""
    from vitedge.export import export_model
    from vitedge.models import load_model, parse_labels

    label_list = parse_labels(labels) if isinstance(labels, (str, Path)) else labels
    loaded = load_model(model, weights=weights, num_classes=num_classes, img_size=img_size,
                        labels=label_list)
    if any(v is not None for v in (mean, std, crop_pct, interpolation)):
        loaded.preprocessing = loaded.preprocessing.override(mean=mean, std=std, crop_pct=crop_pct,
                                                             interpolation=interpolation)
    if data is not None and not Path(data).exists():
        raise BadInput(f"--data {data} does not exist")
    return export_model(loaded, out_dir, opset=opset, batch=batch,
                        data=str(data) if data else None, atol=atol)


def compile(
    export_dir: str | Path,
    out_dir: str | Path,
    *,
    target: str,
    precision: str = "fp32",
    calib: str | Path | None = None,
    calib_size: int | None = None,
    calib_method: str | None = None,
    val: str | Path | None = None,
    seed: int = 0,
    **options: Any,
) -> Manifest:
    """Compile the export in EXPORT_DIR for TARGET into OUT_DIR (as `vitedge compile`).

    OPTIONS are the target's own options by name (e.g. `hint="throughput"` for openvino,
    `batch="1:8:32"` for tensorrt); they are checked against its declaration before any work.
    """
    from vitedge.compile import compile_artifact

    return compile_artifact(export_dir, out_dir, target=target, precision=precision, calib=calib,
                            calib_size=calib_size, calib_method=calib_method, seed=seed, val=val, extra=options)


def bench(
    artifacts: str | Path | list[str | Path],
    *,
    reference: str | Path,
    data: str | Path,
    batches: tuple[int, ...] | list[int] = (1, 8),
    gates: tuple[str, ...] | list[str] = (),
    report_dir: str | Path | None = None,
    device: str = "cpu",
    max_images: int | None = None,
    warmup: int = 5,
    iters: int = 30,
    threads: int | None = None,
) -> dict[str, Any]:
    """Drift and latency of ARTIFACTS vs the PyTorch FP32 REFERENCE on DATA (as `vitedge bench`).

    Returns the report (report.json's content); raises `GateFailed` when a gate fails.
    """
    from vitedge.validate.bench import run_bench

    paths = [artifacts] if isinstance(artifacts, (str, Path)) else list(artifacts)
    return run_bench(paths, reference=reference, data=data, batches=list(batches), gates=list(gates),
                     report_dir=report_dir, device=device, max_images=max_images, warmup=warmup, iters=iters,
                     threads=threads)


def inspect(artifact_dir: str | Path) -> Manifest:
    """The manifest of an artifact dir, or of the dir holding a given .onnx file."""
    path = Path(artifact_dir)
    if path.is_file():
        if path.suffix == ".onnx":
            if not _is_onnx(path):
                raise BadInput(f"{path} is not an ONNX model")
            path = path.parent
        else:
            raise BadInput(f"{path} is not an artifact dir or an ONNX file")
    manifest = Manifest.load(path)
    manifest.verify_files(path)
    return manifest


def _is_onnx(path: Path) -> bool:
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
        return True
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError and friends
        return False


def doctor() -> dict[str, Any]:
    """Which backends are usable here (and why not), CPU ISA flags, GPUs."""
    from vitedge.backends import all_backends
    from vitedge.envinfo import hardware, tool_versions

    backends = {}
    for name, backend in all_backends().items():
        a = backend.availability()
        backends[name] = {"usable": a.usable, "version": a.version, "reason": a.reason,
                          "install": a.install, "precisions": list(backend.precisions),
                          "devices": {d: list(backend.precisions_on(d)) for d in ("cpu", "cuda")
                                      if backend.precisions_on(d)}}
    try:
        import nncf  # noqa: F401

        backends["nncf"] = {"usable": True, "version": getattr(nncf, "__version__", None),
                            "reason": "", "install": "", "precisions": ["int8"]}
    except ImportError as exc:
        backends["nncf"] = {"usable": False, "version": None, "reason": f"import failed: {exc}",
                            "install": "pip install nncf", "precisions": []}
    return {"backends": backends, "hardware": hardware(), "tools": tool_versions()}
