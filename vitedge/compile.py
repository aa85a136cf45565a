"""`vitedge compile`: an export dir -> a backend artifact dir with an extended manifest.

The generic part lives here: check the export and the flags before any work, load the
calibration (and validation) data through `vitedge.data`, let the backend build into a temp
dir, add what every compiled artifact records (calibration, build CPU, time, size, plan
summary, optional validation), and commit the dir atomically.
"""

from __future__ import annotations

import copy
import datetime as _dt
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vitedge import ui
from vitedge.backends import get_backend
from vitedge.backends.base import Backend, CompileOptions, artifact_path
from vitedge.data import Tensors, load_tensors, open_image_set
from vitedge.envinfo import cpu_info, hardware, tool_versions
from vitedge.errors import BadInput, EnvironmentProblem
from vitedge.fsutil import atomic_dir
from vitedge.manifest import MANIFEST_NAME, Manifest
from vitedge.validate.metrics import compare_logits

out = Console(highlight=False)


def compile_artifact(in_dir: str | Path, out_dir: str | Path, *, target: str, precision: str = "fp32",
                     calib: str | None = None, calib_size: int | None = None,
                     calib_method: str | None = None, seed: int = 0,
                     extra: dict[str, Any] | None = None) -> Manifest:
    """Compile the export in IN_DIR for TARGET at PRECISION into OUT_DIR; return its manifest."""
    start = time.perf_counter()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    source = _load_export(in_dir)
    if out_dir.resolve() == in_dir.resolve():
        raise BadInput(f"-o {out_dir} is the export dir itself; give a new directory")
    backend = get_backend(target)
    options = _check_options(backend, precision, calib, calib_size, calib_method, seed, dict(extra or {}))
    available = backend.availability()
    if not available.usable and not backend.compiles_without_runtime:
        raise EnvironmentProblem(f"--target {target} is not usable here: {available.reason} ({available.install})")
    if options.calib and precision in backend.calibrated_precisions:
        image_set = open_image_set(options.calib, source.labels).subset(
            options.calib_size or backend.default_calib_size, seed)
        options.calibration = load_tensors(image_set, source.preprocessing, description="calibration images")
    elif options.calib:
        ui.warn(f"--calib is not used for --target {target} --precision {precision}")
    if options.extra.get("val"):
        options.validation = load_tensors(open_image_set(options.extra["val"], source.labels),
                                          source.preprocessing, description="validation images")
    with atomic_dir(out_dir) as tmp:
        manifest = backend.compile(in_dir, tmp, _compiled_manifest(source, in_dir, target, options), options)
        plan = manifest.setdefault("precision_plan", [])
        if "precision_summary" not in manifest:
            manifest["precision_summary"] = dict(sorted(Counter(e["dtype"] for e in plan).items())) \
                if plan else {"all": precision}
        if options.validation is not None and "incomplete" not in manifest:
            manifest["validation"] = _validate(backend, tmp, manifest, artifact_path(in_dir, source),
                                               options.validation, options)
        manifest["compile"] = {
            "seconds": round(time.perf_counter() - start, 2),
            "artifact_bytes": sum(p.stat().st_size for p in tmp.rglob("*")
                                  if p.is_file() and p.name != MANIFEST_NAME),
            "cpu": cpu_info(),
        }
        manifest.save(tmp)
    if "incomplete" in manifest:
        print_compile_summary(manifest, out_dir)
        raise EnvironmentProblem(manifest["incomplete"]["reason"])
    return manifest


def _load_export(in_dir: Path) -> Manifest:
    """The export manifest of IN_DIR, with its files verified; BadInput for anything else."""
    if in_dir.is_dir() and not (in_dir / MANIFEST_NAME).is_file():
        raise BadInput(f"{in_dir} is not an export dir (no {MANIFEST_NAME}): run "
                       f"`vitedge export MODEL -o {in_dir}` first")
    source = Manifest.load(in_dir)
    if source.get("kind") != "export":
        raise BadInput(f"{in_dir} is a compiled {source.get('target')} artifact, not an export dir: "
                       "compile from the directory `vitedge export` wrote")
    source.verify_files(in_dir)
    return source


def _check_options(backend: Backend, precision: str, calib: str | None, calib_size: int | None,
                   calib_method: str | None, seed: int, extra: dict[str, Any]) -> CompileOptions:
    """Every flag problem, found before any work is done."""
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
    if extra.get("val") and not Path(extra["val"]).exists():
        raise BadInput(f"--val {extra['val']} does not exist")
    options = CompileOptions(precision=precision, calib=calib, calib_size=calib_size,
                             calib_method=(calib_method or backend.default_calib_method) if calib else None,
                             seed=seed, extra=extra)
    backend.check_options(options)
    return options


def _compiled_manifest(source: Manifest, in_dir: Path, target: str, options: CompileOptions) -> Manifest:
    """A copy of the export manifest, re-stamped for the compiled artifact."""
    manifest = Manifest(copy.deepcopy(dict(source)))
    model_file = artifact_path(in_dir, source).name
    manifest.update(
        kind="compiled",
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        target=target,
        precision=options.precision,
        export={"dir": str(in_dir.resolve()), "created": source.get("created"),
                "model_sha256": source.get("files", {}).get(model_file), "parity": manifest.pop("parity", None)},
        calibration=_calibration_record(options),
        tools=tool_versions(),
        hardware=hardware(),
    )
    manifest.pop("files", None)
    return manifest


def _calibration_record(options: CompileOptions) -> dict[str, Any] | None:
    tensors: Tensors | None = options.calibration
    if tensors is None:
        return None
    return {"source": str(options.calib), "size": len(tensors.x), "requested_size": options.calib_size,
            "seed": options.seed, "method": options.calib_method, "content_hash": tensors.content_hash,
            "skipped": len(tensors.skipped)}


def _validate(backend: Backend, artifact_dir: Path, manifest: Manifest, reference_onnx: Path,
              val: Tensors, options: CompileOptions) -> dict[str, Any]:
    """Top-1 and drift of the new artifact vs the export's FP32 ONNX (ONNX Runtime) on --val."""
    from vitedge.backends.onnxruntime import OrtRunner

    with ui.Step(f"validating on {len(val.x)} images"):
        with OrtRunner(reference_onnx) as reference:
            ref = reference.infer_all(val.x)
        with backend.open_runner(artifact_dir, manifest, threads=options.extra.get("threads")) as runner:
            cand = runner.infer_all(val.x)
    metrics = compare_logits(ref, cand, val.labels)
    return {"data": str(options.extra["val"]), "reference": "export ONNX, FP32 (ONNX Runtime)",
            **{k: v for k, v in metrics.items() if k in (
                "samples", "top1_agreement", "max_abs_err", "cosine_min", "kl_mean",
                "ref_top1_acc", "top1_acc", "acc_drop")}}


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_compile_summary(manifest: Manifest, out_dir: str | Path) -> None:
    """One screen: what was built, what really runs in which precision, and how it was checked."""
    if ui.is_quiet():
        return
    build = manifest.get("compile", {})
    art = manifest.get("artifact", {})
    state = "[yellow]incomplete[/yellow]" if "incomplete" in manifest else "[green]compiled[/green]"
    where = escape(str(Path(out_dir) / art.get("model", "")))
    out.print(f"{state} {escape(str(manifest['source'].get('spec')))} -> {where} "
              f"({manifest['target']} {manifest['precision']}, {_size(build.get('artifact_bytes', 0))}, "
              f"{build.get('seconds', 0):.1f} s)")
    runtime = manifest.get("runtime", {})
    resolved = runtime.get("resolved_at_build")
    if resolved:
        out.print(f"  runs: inference precision {resolved['inference_precision']}, hint "
                  f"{resolved['performance_hint']}, {resolved['threads']} threads, {resolved['streams']} stream(s)")
    elif "graph_optimization_level" in runtime:
        what = (f"Q/DQ graph ({art.get('activations')}, {art.get('weights')})" if "activations" in art
                else f"graph saved after {art.get('graph_optimization')}")
        out.print(f"  runs: ONNX Runtime CPU, {what}, threads {runtime.get('threads') or 'default'}")
    cal = manifest.get("calibration")
    if cal:
        out.print(f"  calibration: {cal['size']} images from {escape(cal['source'])} ({cal['method']}, "
                  f"seed {cal['seed']}, hash {cal['content_hash'][:12]}"
                  + (f", {cal['skipped']} skipped" if cal.get("skipped") else "") + ")")
    summary = manifest.get("precision_summary", {})
    out.print("  precision: " + ", ".join(f"{v} {k}" for k, v in summary.items()))
    plan = manifest.get("precision_plan", [])
    if plan:
        table = Table(show_header=True, box=None, padding=(0, 2))
        for col in ("nodes", "dtype", "why"):
            table.add_column(col)
        for (dtype, reason), count in Counter((e["dtype"], e["reason"]) for e in plan).most_common(8):
            table.add_row(str(count), dtype, escape(reason))
        out.print(table)
    plans = manifest.get("int8_plans")
    if plans:  # TensorRT INT8: both placement plans, so the user can choose
        out.print("  INT8 plans (--plan; speed not measured): " + " | ".join(
            f"{name}{' (chosen)' if name == plans['chosen'] else ''}: {p['profile']['casts']} Casts, "
            f"{p['profile']['non_gemm_bytes'] / 1e6:.1f} MB non-GEMM, cosine {p['drift']['cosine_mean']:.4f}"
            for name, p in plans.items() if name in ("accurate", "fast")))
    val = manifest.get("validation")
    if val:
        line = (f"  validation ({val['samples']} images vs FP32 ONNX): top-1 agreement {val['top1_agreement']:.4f}, "
                f"max abs err {val['max_abs_err']:.3g}")
        if "top1_acc" in val:
            line += f", accuracy {val['top1_acc']:.4f} (fp32 {val['ref_top1_acc']:.4f}, drop {val['acc_drop']:+.4f})"
        out.print(line)
    if "incomplete" in manifest:
        out.print(f"  [yellow]next step:[/yellow] {escape(manifest['incomplete']['next_step'])}",
                  soft_wrap=True)  # a command to copy: never wrapped
