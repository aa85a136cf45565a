"""The `vitedge` command: parse, call the library, map errors to exit codes. Nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from vitedge import __version__, ui
from vitedge.errors import VitedgeError

app = typer.Typer(
    name="vitedge",
    help="Trained ViT -> validated ONNX -> TensorRT / OpenVINO / ONNX Runtime, verified against PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_flags = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vitedge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")] = False,
) -> None:
    """vitedge: deploy Vision Transformers to edge targets with verified accuracy and speed."""
    _flags["debug"] = _flags["debug"] or debug
    ui.set_quiet(ui.is_quiet() or quiet)


def _floats3(text: str | None, flag: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    from vitedge.errors import BadInput

    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError as exc:
        raise BadInput(f"{flag} takes three numbers like 0.485,0.456,0.406, got {text!r}") from exc
    if len(values) != 3:
        raise BadInput(f"{flag} takes three numbers (R,G,B), got {len(values)}")
    return values  # type: ignore[return-value]


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="timm:<arch> | torchvision:<arch> | hf:<dir> | file.pt2 | "
                                               "file.pt (TorchScript) | package.module:factory | demo:digits")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output artifact directory.")],
    weights: Annotated[Path | None, typer.Option(help="State dict: .safetensors, .pth, .pt, .bin.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Classes of the head (default: from weights).")] = None,
    img_size: Annotated[int | None, typer.Option(help="Input size; timm resizes position embeddings.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17 for fused LayerNormalization).")] = 18,
    batch: Annotated[str, typer.Option(help="'dynamic' or a fixed batch size.")] = "dynamic",
    data: Annotated[Path | None, typer.Option(help="Images for the parity check (besides random inputs).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Labels: .txt (one per line) or .json.")] = None,
    atol: Annotated[float, typer.Option(help="Parity tolerance on max abs logit error.")] = 1e-3,
    mean: Annotated[str | None, typer.Option(help="Override normalisation mean, e.g. 0.5,0.5,0.5.")] = None,
    std: Annotated[str | None, typer.Option(help="Override normalisation std.")] = None,
    crop_pct: Annotated[float | None, typer.Option(help="Override centre-crop fraction.")] = None,
    interpolation: Annotated[str | None, typer.Option(help="Override resize interpolation.")] = None,
) -> None:
    """Export a trained ViT to a validated ONNX + vitedge.json manifest."""
    from vitedge import api
    from vitedge.report_cli import print_export_summary

    if batch != "dynamic" and not batch.isdigit():
        from vitedge.errors import BadInput

        raise BadInput(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    manifest = api.export(
        model, out, weights=weights, num_classes=num_classes, img_size=img_size, opset=opset,
        batch=batch if batch == "dynamic" else int(batch), data=data, labels=labels, atol=atol,
        mean=_floats3(mean, "--mean"), std=_floats3(std, "--std"), crop_pct=crop_pct,
        interpolation=interpolation,
    )
    print_export_summary(manifest, out)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="An artifact directory (or its .onnx file).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw manifest as JSON.")] = False,
) -> None:
    """Show an artifact's manifest (and verify its file hashes)."""
    from vitedge import api
    from vitedge.report_cli import print_manifest

    manifest = api.inspect(path)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
    else:
        print_manifest(manifest)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Which backends work here (and how to get the missing ones), CPU ISA flags, GPUs."""
    from vitedge import api
    from vitedge.report_cli import print_doctor

    report = api.doctor()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_doctor(report)


def _csv_ints(text: str, flag: str) -> list[int]:
    from vitedge.errors import BadInput

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise BadInput(f"{flag} takes comma-separated integers like 1,8, got {text!r}") from exc
    if not values or min(values) < 1:
        raise BadInput(f"{flag} takes positive integers, got {text!r}")
    return values


@app.command(name="compile")
def compile_cmd(
    in_dir: Annotated[Path, typer.Argument(help="An export directory (from `vitedge export`).")],
    target: Annotated[str, typer.Option(help="openvino | onnxruntime | tensorrt")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output artifact directory.")],
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | bf16 (OpenVINO) | int8")] = "fp32",
    calib: Annotated[Path | None, typer.Option(help="Calibration data: image folder, .txt list or .npz.")] = None,
    calib_size: Annotated[int | None, typer.Option(help="Calibration samples (seeded subset).")] = None,
    calib_method: Annotated[str | None, typer.Option(help="minmax | entropy | percentile (per target).")] = None,
    val: Annotated[Path | None, typer.Option(help="Labelled validation data (for --max-drop).")] = None,
    max_drop: Annotated[float | None, typer.Option(help="OpenVINO INT8: accuracy-controlled, max top-1 drop.")] = None,
    ignored_scope: Annotated[list[str] | None, typer.Option(
        help="Keep float: node name, re:<regex> or type:<OpType> (repeatable).")] = None,
    threads: Annotated[int | None, typer.Option(help="Inference threads recorded for load.")] = None,
    streams: Annotated[int | None, typer.Option(help="OpenVINO streams recorded for load.")] = None,
    hint: Annotated[str, typer.Option(help="OpenVINO performance hint: latency | throughput.")] = "latency",
    batch: Annotated[str | None, typer.Option(help="TensorRT profile MIN:OPT:MAX (e.g. 1:8:32).")] = None,
    workspace: Annotated[float | None, typer.Option(help="TensorRT workspace limit, GB.")] = None,
    opt_level: Annotated[int | None, typer.Option(help="TensorRT builder optimisation level 0-5.")] = None,
    timing_cache: Annotated[Path | None, typer.Option(help="TensorRT timing cache file (reused).")] = None,
    hardware_compat: Annotated[str | None, typer.Option(help="TensorRT hardware compatibility: ampere+.")] = None,
    version_compatible: Annotated[bool, typer.Option(help="TensorRT version-compatible engine.")] = False,
    io: Annotated[str, typer.Option(help="TensorRT graph I/O dtype: fp32 | fp16.")] = "fp32",
    fp16_margin: Annotated[float | None, typer.Option(
        help="FP16 plan: keep nodes FP32 whose |activation| exceeds this fraction of 65504.")] = None,
    quantize_attention: Annotated[bool, typer.Option(
        help="INT8: also quantize attention's activation x activation MatMuls (q@kT, attn@v).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the calibration subset.")] = 0,
) -> None:
    """Build a backend artifact (OpenVINO IR, ONNX Runtime model, TensorRT engine) from an export."""
    from vitedge.compile import compile_artifact, print_compile_summary

    extra = {
        "val": str(val) if val else None, "max_drop": max_drop, "ignored_scope": ignored_scope or [],
        "threads": threads, "streams": streams, "hint": hint, "batch": batch, "workspace_gb": workspace,
        "opt_level": opt_level, "timing_cache": str(timing_cache) if timing_cache else None,
        "hardware_compat": hardware_compat, "version_compatible": version_compatible, "io": io,
        "fp16_margin": fp16_margin, "quantize_attention": quantize_attention,
    }
    manifest = compile_artifact(in_dir, out, target=target, precision=precision,
                                calib=str(calib) if calib else None, calib_size=calib_size,
                                calib_method=calib_method, seed=seed, extra=extra)
    print_compile_summary(manifest, out)


@app.command()
def bench(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifact directories to validate.")],
    reference: Annotated[str, typer.Option(help="Export dir or MODEL spec: the PyTorch FP32 reference.")],
    data: Annotated[Path, typer.Option(help="Validation data (labelled image folder for accuracy).")],
    batch: Annotated[str, typer.Option(help="Batch sizes for latency, e.g. 1,8.")] = "1,8",
    gate: Annotated[list[str] | None, typer.Option(
        help="Gate, e.g. top1_agreement>=0.995, acc_drop<=0.005, speedup_p50>=2 (repeatable).")] = None,
    report: Annotated[Path | None, typer.Option(help="Write report.json/.xml/.md/.html here.")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda (for the PyTorch reference).")] = "cpu",
    max_images: Annotated[int | None, typer.Option(help="Validate on at most N images (seeded).")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up runs per artifact and batch.")] = 5,
    iters: Annotated[int, typer.Option(help="Timed runs per artifact and batch.")] = 30,
    threads: Annotated[int | None, typer.Option(help="CPU threads for every runner.")] = None,
) -> None:
    """Accuracy drift and latency of artifacts vs the PyTorch reference, with gates and reports."""
    from vitedge.validate.bench import run_bench

    run_bench(artifacts, reference=reference, data=data, batches=_csv_ints(batch, "--batch"),
              gates=gate or [], report_dir=report, device=device, max_images=max_images,
              warmup=warmup, iters=iters, threads=threads)


@app.command()
def tune(
    export_dir: Annotated[Path, typer.Argument(help="An export directory (from `vitedge export`).")],
    data: Annotated[Path, typer.Option(help="Validation data (labelled image folder for accuracy gates).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output dir: candidates/, report/, best/, tune.json.")],
    calib: Annotated[Path | None, typer.Option(help="Calibration data for INT8 candidates.")] = None,
    targets: Annotated[str | None, typer.Option(
        help="Targets to try, e.g. openvino,onnxruntime (default all).")] = None,
    precisions: Annotated[str | None, typer.Option(
        help="Precisions to try, e.g. fp32,bf16,int8 (default: all).")] = None,
    gate: Annotated[list[str] | None, typer.Option(
        help="Gate every candidate must pass (repeatable; default acc_drop<=0.01, or top1_agreement>=0.99).")] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes for latency, e.g. 1,8.")] = "1,8",
    budget_minutes: Annotated[float | None, typer.Option(
        help="Stop building candidates after N minutes and choose among those built.")] = None,
) -> None:
    """The fastest artifact on this machine that passes the gates: build candidates, bench, choose."""
    from vitedge.tune import tune as run_tune

    run_tune(export_dir, out, data=data, calib=calib, targets=_csv_words(targets), precisions=_csv_words(precisions),
             gates=gate or [], batches=_csv_ints(batch, "--batch"), budget_minutes=budget_minutes)


def _csv_words(text: str | None) -> list[str] | None:
    return [w.strip() for w in text.split(",") if w.strip()] or None if text else None


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML (see recipes/).")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output directory (overrides the recipe).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: a.b=value.")] = None,
) -> None:
    """Run a recipe: export -> compile -> bench -> gates -> reports, skipping unchanged steps."""
    from vitedge.recipe import run_recipe

    run_recipe(recipe, out_dir=out, overrides=set_ or [])


def _strip_global_flags(argv: list[str]) -> list[str]:
    """Accept --debug/--quiet anywhere on the line, not only before the command."""
    rest = []
    for arg in argv:
        if arg == "--debug":
            _flags["debug"] = True
        elif arg in ("--quiet", "-q"):
            ui.set_quiet(True)
        else:
            rest.append(arg)
    return rest


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line and an exit code for every vitedge error."""
    args = _strip_global_flags(list(sys.argv[1:] if argv is None else argv))
    if not _flags["debug"]:  # library chatter (deprecations, tracer notes) is not for users
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        logging.getLogger("nncf").setLevel(logging.ERROR)
    try:
        code = app(args=args, prog_name="vitedge", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except VitedgeError as exc:
        if _flags["debug"]:
            raise
        ui.console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        ui.console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # usage errors (typer's click) and anything unexpected
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if _flags["debug"]:
            raise
        ui.console.print(f"[red]internal error:[/red] {type(exc).__name__}: {escape(str(exc))} "
                         "(re-run with --debug for the traceback and report it)", soft_wrap=True)
        sys.exit(4)

