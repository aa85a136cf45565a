"""`vitedge compile`: an export dir -> a backend artifact dir with an extended manifest.

The generic part lives here: check the export, the generic flags and the backend's typed
options before any work, load the calibration (and validation) data through `vitedge.data`,
let the backend build into a temp dir, add what every compiled artifact records
(calibration, build CPU, time, size, plan summary, optional validation), and commit the dir
atomically. The terminal summary is `report_cli.print_compile_summary` (the CLI's).
"""

from __future__ import annotations

import copy
import datetime as _dt
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitedge import ui
from vitedge.backends.base import Backend, CompileRequest, artifact_path, backend_options, compile_backend
from vitedge.backends.options import Options, as_dict
from vitedge.data import Tensors, load_tensors, open_image_set
from vitedge.envinfo import cpu_info, hardware, tool_versions
from vitedge.errors import ArtifactIncomplete, BadInput, EnvironmentProblem
from vitedge.fsutil import atomic_dir, check_free_space, check_output_dir, output_lock
from vitedge.manifest import MANIFEST_NAME, Manifest
from vitedge.metrics import compare_logits


def compile_artifact(in_dir: str | Path, out_dir: str | Path, *, target: str, precision: str = "fp32",
                     calib: str | Path | None = None, calib_size: int | None = None,
                     calib_method: str | None = None, seed: int = 0, val: str | Path | None = None,
                     extra: Mapping[str, Any] | Options | None = None, force: bool = False) -> Manifest:
    """Compile the export in IN_DIR for TARGET at PRECISION into OUT_DIR; return its manifest.

    EXTRA holds the backend's options: its typed `Options`, or a dict of them by name (as
    recipes write them), validated against the backend's declaration before any work.
    FORCE: replace OUT_DIR even when it is not a previous compiled artifact (never when it
    holds the export or the calibration data).
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    source = _load_export(in_dir)
    if out_dir.resolve() == in_dir.resolve():
        raise BadInput(f"-o {out_dir} is the export dir itself; give a new directory")
    backend = compile_backend(target)
    request = check_request(backend, precision=precision, calib=calib, calib_size=calib_size,
                            calib_method=calib_method, seed=seed, val=val, options=extra, export=source)
    request.out_dir = out_dir
    available = backend.availability()
    if not available.usable and not backend.compiles_without_runtime:
        raise EnvironmentProblem(f"--target {target} is not usable here: {available.reason} ({available.install})")
    inputs = [in_dir, *(p for p in (request.calib, request.val) if p)]
    check_output_dir(out_dir, "compiled", force=force, inputs=inputs)
    with output_lock(out_dir):
        export_bytes = sum((in_dir / name).stat().st_size for name in source.get("files", {}))
        check_free_space(out_dir, 2 * export_bytes + (4 << 20), f"compiling {in_dir}")
        return _compile_locked(backend, source, in_dir, out_dir, target, precision, request, force, inputs)


def _compile_locked(backend: Backend, source: Manifest, in_dir: Path, out_dir: Path, target: str, precision: str,
                    request: CompileRequest, force: bool, inputs: list[Any]) -> Manifest:
    """The compile itself, with OUT_DIR locked and every check done."""
    start = time.perf_counter()
    if request.calib and precision in backend.calibrated_precisions:
        image_set = _calibration_set(request, source, backend.default_calib_size, in_dir)
        request.calibration = load_tensors(image_set, source.preprocessing, lazy=True,  # read batch by batch
                                           description="calibration images")
    elif request.calib:
        ui.warn(f"--calib is not used for --target {target} --precision {precision}")
    if request.val:
        request.validation = load_tensors(open_image_set(request.val, source.labels),
                                          source.preprocessing, description="validation images")
    with atomic_dir(out_dir, kind="compiled", force=force, inputs=inputs) as tmp:
        manifest = backend.compile(in_dir, tmp, _compiled_manifest(source, in_dir, target, request), request)
        plan = manifest.setdefault("precision_plan", [])
        if "precision_summary" not in manifest:
            manifest["precision_summary"] = dict(sorted(Counter(e["dtype"] for e in plan).items())) \
                if plan else {"all": precision}
        not_here = backend.cannot_run_here(manifest) if request.validation is not None else None
        if not_here and not manifest.incomplete:  # built for another machine (TensorRT-RTX ahead of time)
            ui.warn(f"--val: the artifact cannot run here, so it was not validated ({not_here})")
            manifest["validation"] = {"data": str(request.val), "skipped": not_here}
        elif request.validation is not None and not manifest.incomplete:
            manifest["validation"] = _validate(backend, tmp, manifest, artifact_path(in_dir, source), request)
        manifest["compile"] = {
            "seconds": round(time.perf_counter() - start, 2),
            "artifact_bytes": sum(p.stat().st_size for p in tmp.rglob("*")
                                  if p.is_file() and p.name != MANIFEST_NAME),
            "cpu": cpu_info(),
            "options": as_dict(request.options),
        }
        manifest.save(tmp)
    if manifest.incomplete:
        raise ArtifactIncomplete(manifest.incomplete["reason"], manifest, out_dir)
    return manifest


def _calibration_set(request: CompileRequest, source: Manifest, default_size: int, in_dir: Path) -> Any:
    """The seeded calibration subset, its memory checked; a --calib-size larger than the data
    uses every image, and says so."""
    from vitedge.limits import check_calibration_memory

    full = open_image_set(request.calib, source.labels)
    wanted = request.calib_size or default_size
    if request.calib_size and request.calib_size > len(full):
        ui.warn(f"--calib-size {request.calib_size} is more than the {len(full)} images in "
                f"{request.calib}; calibrating on all {len(full)}")
    image_set = full.subset(wanted, request.seed)
    model_bytes = sum((in_dir / name).stat().st_size for name in source.get("files", {}))
    check_calibration_memory(source, len(image_set), model_bytes)
    return image_set


def _load_export(in_dir: Path) -> Manifest:
    """The export manifest of IN_DIR, with its files verified; BadInput for anything else."""
    if in_dir.is_dir() and not (in_dir / MANIFEST_NAME).is_file():
        raise BadInput(f"{in_dir} is not an export dir (no {MANIFEST_NAME}): run "
                       f"`vitedge export MODEL -o {in_dir}` first")
    source = Manifest.load(in_dir)
    if not source.is_export:
        raise BadInput(f"{in_dir} is a compiled {source.get('target')} artifact, not an export dir: "
                       "compile from the directory `vitedge export` wrote")
    source.verify_files(in_dir)
    return source


def check_request(backend: Backend, *, precision: str, calib: str | Path | None = None,
                  calib_size: int | None = None, calib_method: str | None = None, seed: int = 0,
                  val: str | Path | None = None, options: Mapping[str, Any] | Options | None = None,
                  export: Manifest | None = None) -> CompileRequest:
    """Every flag and option problem, found before any work is done (CLI, recipes and the library)."""
    if isinstance(options, Options):
        if type(options) is not backend.Options:
            raise BadInput(f"--target {backend.name} takes {backend.Options.__name__}, got {type(options).__name__}")
        typed = options
    else:
        values = dict(options or {})
        legacy_val = values.pop("val", None)  # recipes and older callers put --val among the options
        val = val if val is not None else legacy_val
        typed = backend_options(backend, values)
    if precision not in backend.precisions:
        raise BadInput(f"--target {backend.name} does not support --precision {precision}; "
                       f"choose one of {', '.join(backend.precisions)}")
    if precision == "int8" and not calib:
        raise BadInput(f"--precision int8 needs --calib DIR: about {backend.default_calib_size} representative "
                       "images (folder, .txt list or .npz; see calibration/README.md)")
    if calib_size is not None and calib_size < 1:
        raise BadInput(f"--calib-size must be a positive number of images, got {calib_size}")
    if calib_method is not None and calib_method not in backend.calib_methods:
        choices = ", ".join(backend.calib_methods) or "none (it does not calibrate)"
        raise BadInput(f"--calib-method {calib_method!r} is not available for --target {backend.name}; "
                       f"choose one of {choices}")
    if calib and not Path(calib).exists():
        raise BadInput(f"--calib {calib} does not exist")
    if val and not Path(val).exists():
        raise BadInput(f"--val {val} does not exist")
    request = CompileRequest(precision=precision, options=typed, calib=str(calib) if calib else None,
                             calib_size=calib_size,
                             calib_method=(calib_method or backend.default_calib_method) if calib else None,
                             seed=seed, val=str(val) if val else None, export=export)
    backend.check_options(request)
    return request


def _compiled_manifest(source: Manifest, in_dir: Path, target: str, request: CompileRequest) -> Manifest:
    """A copy of the export manifest, re-stamped for the compiled artifact."""
    manifest = Manifest(copy.deepcopy(dict(source)))
    model_file = artifact_path(in_dir, source).name
    manifest.update(
        kind="compiled",
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        target=target,
        precision=request.precision,
        export={"dir": str(in_dir.resolve()), "created": source.get("created"),
                "model_sha256": source.get("files", {}).get(model_file), "parity": manifest.pop("parity", None)},
        calibration=_calibration_record(request),
        tools=tool_versions(),
        hardware=hardware(),
    )
    manifest.pop("files", None)
    return manifest


def _calibration_record(request: CompileRequest) -> dict[str, Any] | None:
    tensors: Tensors | None = request.calibration
    if tensors is None:
        return None
    return {"source": str(request.calib), "size": len(tensors.x), "requested_size": request.calib_size,
            "seed": request.seed, "method": request.calib_method, "content_hash": tensors.content_hash,
            "skipped": len(tensors.skipped)}


def _validate(backend: Backend, artifact_dir: Path, manifest: Manifest, reference_onnx: Path,
              request: CompileRequest) -> dict[str, Any]:
    """Top-1 and drift of the new artifact vs the export's FP32 ONNX (ONNX Runtime) on --val."""
    from vitedge.backends.onnxruntime import OrtRunner

    val = request.validation
    assert val is not None
    with ui.Step(f"validating on {len(val.x)} images"):
        with OrtRunner(reference_onnx) as reference:
            ref = reference.infer_all(val.x)
        with backend.open_runner(artifact_dir, manifest, threads=getattr(request.options, "threads", None)) as runner:
            cand = runner.infer_all(val.x)
    metrics = compare_logits(ref, cand, val.labels)
    return {"data": str(request.val), "reference": "export ONNX, FP32 (ONNX Runtime)",
            **{k: v for k, v in metrics.items() if k in (
                "samples", "top1_agreement", "max_abs_err", "cosine_min", "kl_mean",
                "ref_top1_acc", "top1_acc", "acc_drop")}}
