"""The library functions the CLI, recipes and apps call: export, compile, inspect, doctor.

`vitedge.load` (the embedding API for device apps) lives in `runtime.py` and `bench` in
`validate/bench.py` (a layer above, since bench loads artifacts and builds the reference);
`vitedge/__init__` re-exports them, so apps and notebooks need no CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitedge.errors import BadInput
from vitedge.manifest import Manifest

# Input sizes vitedge accepts: below 8 no ViT patch fits; above 1024 a ViT's attention needs
# tens of GB and minutes per image on a CPU (4096 px -> 65536 tokens), which looks like a hang.
MIN_IMG_SIZE, MAX_IMG_SIZE = 8, 1024


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
    force: bool = False,
    pretrained: bool = False,
    random_init_seed: int | None = None,
    exporter: str = "auto",
) -> Manifest:
    """Load MODEL, export it to OUT_DIR/model.onnx with a manifest, and check parity.

    EXPORTER: "auto" tries the exporters of `vitedge.export.EXPORTERS` in order (dynamo,
    dynamo with unfused attention, TorchScript); one of their keys runs that one only.

    Weights come from WEIGHTS, PRETRAINED (the library's hub cache) or RANDOM_INIT_SEED
    (recorded in the manifest; the reference is rebuilt from the seed).

    Every flag and the output dir are checked before the model is loaded; OUT_DIR is locked
    against a second vitedge process for the whole export.
    """
    from vitedge.export import EXPORTER_CHOICES, MIN_OPSET, export_model
    from vitedge.fsutil import check_free_space, check_output_dir, output_lock
    from vitedge.models import load_model, parse_labels

    out_dir = Path(out_dir)
    if opset < MIN_OPSET:
        raise BadInput(f"opset {opset} is too old: ViTs need >= {MIN_OPSET} for a fused "
                       "LayerNormalization (TensorRT/FP16 overflow otherwise)")
    if batch != "dynamic" and not (str(batch).isdigit() and int(batch) >= 1):
        raise BadInput(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    if img_size is not None and not MIN_IMG_SIZE <= img_size <= MAX_IMG_SIZE:
        raise BadInput(f"--img-size must be between {MIN_IMG_SIZE} and {MAX_IMG_SIZE}, got {img_size} "
                       f"(a ViT's attention grows with the 4th power of the image side)")
    if atol <= 0:
        raise BadInput(f"--atol must be positive, got {atol}")
    if exporter not in EXPORTER_CHOICES:
        raise BadInput(f"unknown --exporter {exporter!r}; choose one of {', '.join(EXPORTER_CHOICES)}")
    if data is not None and not Path(data).exists():
        raise BadInput(f"--data {data} does not exist")
    spec_path = Path(model[3:] if model.startswith("hf:") else model)
    inputs = [p for p in (weights, data, labels if isinstance(labels, (str, Path)) else None) if p is not None]
    check_output_dir(out_dir, "export", force=force, inputs=[*inputs, *([spec_path] if spec_path.exists() else [])])
    label_list = parse_labels(labels) if isinstance(labels, (str, Path)) else labels
    with output_lock(out_dir):
        loaded = load_model(model, weights=weights, num_classes=num_classes, img_size=img_size,
                            labels=label_list, pretrained=pretrained, random_init_seed=random_init_seed)
        if any(v is not None for v in (mean, std, crop_pct, interpolation)):
            loaded.preprocessing = loaded.preprocessing.override(mean=mean, std=std, crop_pct=crop_pct,
                                                                 interpolation=interpolation)
        module = loaded.module
        params = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) \
            if hasattr(module, "parameters") else 0
        # model.onnx holds the weights once; its temp twin and the graph's protobuf add about as much
        check_free_space(out_dir, 2 * params + (1 << 20), f"the export of {model}")
        from vitedge.limits import check_export_memory

        check_export_memory(module, loaded.preprocessing.input_size, params,
                            32 if batch == "dynamic" else int(batch))
        return export_model(loaded, out_dir, opset=opset, batch=batch,
                            data=str(data) if data else None, atol=atol, force=force, exporter=exporter)


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
    force: bool = False,
    **options: Any,
) -> Manifest:
    """Compile the export in EXPORT_DIR for TARGET into OUT_DIR (as `vitedge compile`).

    OPTIONS are the target's own options by name (e.g. `hint="throughput"` for openvino,
    `batch="1:8:32"` for tensorrt); they are checked against its declaration before any work.
    """
    from vitedge.compile import compile_artifact

    return compile_artifact(export_dir, out_dir, target=target, precision=precision, calib=calib,
                            calib_size=calib_size, calib_method=calib_method, seed=seed, val=val, extra=options,
                            force=force)


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
                                      if backend.precisions_on(d)}, **backend.doctor_details()}
    try:
        import nncf  # noqa: F401

        backends["nncf"] = {"usable": True, "version": getattr(nncf, "__version__", None),
                            "reason": "", "install": "", "precisions": ["int8"]}
    except ImportError as exc:
        backends["nncf"] = {"usable": False, "version": None, "reason": f"import failed: {exc}",
                            "install": "pip install nncf", "precisions": []}
    return {"backends": backends, "hardware": hardware(), "tools": tool_versions()}
