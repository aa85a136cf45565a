"""The library functions the CLI, recipes and apps call."""

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
    pretrained: bool = False,
    random_init_seed: int | None = None,
) -> Manifest:
    """Load MODEL, export it to OUT_DIR/model.onnx with a manifest, and check parity.

    Weights come from WEIGHTS, PRETRAINED (the library's hub cache) or RANDOM_INIT_SEED
    (recorded in the manifest; the reference is rebuilt from the seed).
    """
    from vitedge.export import export_model
    from vitedge.models import load_model, parse_labels

    label_list = parse_labels(labels) if isinstance(labels, (str, Path)) else labels
    loaded = load_model(model, weights=weights, num_classes=num_classes, img_size=img_size,
                        labels=label_list, pretrained=pretrained, random_init_seed=random_init_seed)
    if any(v is not None for v in (mean, std, crop_pct, interpolation)):
        loaded.preprocessing = loaded.preprocessing.replace(
            mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
            crop_pct=crop_pct, interpolation=interpolation,
            extra={**loaded.preprocessing.extra, "overridden": True},
        )
    if data is not None and not Path(data).exists():
        raise BadInput(f"--data {data} does not exist")
    return export_model(loaded, out_dir, opset=opset, batch=batch,
                        data=str(data) if data else None, atol=atol)


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
                          "install": a.install, "precisions": list(backend.precisions)}
    try:
        import nncf  # noqa: F401

        backends["nncf"] = {"usable": True, "version": getattr(nncf, "__version__", None),
                            "reason": "", "install": "", "precisions": ["int8"]}
    except ImportError as exc:
        backends["nncf"] = {"usable": False, "version": None, "reason": f"import failed: {exc}",
                            "install": "pip install nncf", "precisions": []}
    return {"backends": backends, "hardware": hardware(), "tools": tool_versions()}
