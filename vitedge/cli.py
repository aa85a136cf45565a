"""The `vitedge` command: parse, call the library, map errors to exit codes. Nothing else."""

from __future__ import annotations

import errno
import json
import signal
import sys
import threading
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from vitedge import ui
from vitedge._version import __version__
from vitedge.errors import VitedgeError

app = typer.Typer(
    name="vitedge",
    help="Trained ViT -> validated ONNX -> TensorRT / OpenVINO / ONNX Runtime, verified against PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_flags = {"debug": False, "terminated": False}
FORCE_HELP = ("Write into an output dir that holds files vitedge did not write: vitedge replaces only what it "
              "wrote (the files a previous vitedge manifest lists, and files of the names it writes), keeps "
              "every other file as it is, and prints what it replaced.")


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
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", help="The library's pretrained weights (timm/torchvision/hf, from the hub cache).")] = False,
    random_init: Annotated[int | None, typer.Option(
        "--random-init", metavar="SEED", help="Seeded random weights: speed/shape work only.")] = None,
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
    exporter: Annotated[str, typer.Option(
        help="auto (dynamo, then dynamo with unfused attention, then TorchScript) | dynamo | "
             "dynamo-unfused | torchscript: that exporter only.")] = "auto",
    force: Annotated[bool, typer.Option(help=FORCE_HELP)] = False,
) -> None:
    """Export a trained ViT to a validated ONNX + vitedge.json manifest."""
    from vitedge import api
    from vitedge.report_cli import print_export_summary

    if batch != "dynamic" and not (batch.isdigit() and int(batch) >= 1):
        from vitedge.errors import BadInput

        raise BadInput(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    manifest = api.export(
        model, out, weights=weights, num_classes=num_classes, img_size=img_size, opset=opset,
        batch=batch if batch == "dynamic" else int(batch), data=data, labels=labels, atol=atol,
        mean=_floats3(mean, "--mean"), std=_floats3(std, "--std"), crop_pct=crop_pct,
        interpolation=interpolation, force=force, pretrained=pretrained, random_init_seed=random_init,
        exporter=exporter,
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


def _compile_targets() -> str:
    from vitedge.backends.base import compile_backends

    return " | ".join(f"{name} ({', '.join(b.precisions)})" for name, b in compile_backends().items())


def compile_cmd(
    in_dir: Annotated[Path, typer.Argument(help="An export directory (from `vitedge export`).")],
    target: Annotated[str, typer.Option(help="Backend (precisions): " + _compile_targets() + ".")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output artifact directory.")],
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | bf16 | int8 (per target).")] = "fp32",
    calib: Annotated[Path | None, typer.Option(help="Calibration data: image folder, .txt list or .npz.")] = None,
    calib_size: Annotated[int | None, typer.Option(help="Calibration samples (seeded subset).")] = None,
    calib_method: Annotated[str | None, typer.Option(help="minmax | entropy | percentile | ... (per target).")] = None,
    val: Annotated[Path | None, typer.Option(help="Labelled validation data: checks the artifact after the "
                                                  "build (and feeds OpenVINO's --max-drop).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the calibration subset.")] = 0,
    force: Annotated[bool, typer.Option(help=FORCE_HELP)] = False,
    **backend_flags: Any,
) -> None:
    """Build a backend artifact (OpenVINO IR, ONNX Runtime model, TensorRT engine) from an export.

    Each target's own options are grouped below; a flag the chosen target does not take is an error.
    """
    from vitedge.backends.base import backend_options, compile_backend
    from vitedge.compile import compile_artifact
    from vitedge.errors import ArtifactIncomplete
    from vitedge.report_cli import print_compile_summary

    backend = compile_backend(target)
    options = backend_options(backend, backend_flags, cli=True)
    try:
        manifest = compile_artifact(in_dir, out, target=target, precision=precision, calib=calib,
                                    calib_size=calib_size, calib_method=calib_method, seed=seed, val=val,
                                    extra=options, force=force)
    except ArtifactIncomplete as exc:  # written, but the rest needs the target machine: say what to run there
        print_compile_summary(exc.manifest, out)
        raise
    print_compile_summary(manifest, out)


def _with_backend_flags(command: Any) -> Any:
    """COMMAND's signature extended with one typer option per registered backend option.

    Typer reads parameters from the signature, so the flags, their types and help come from
    the backends' Options dataclasses; each lands in its backends' help panel.
    """
    import inspect

    from vitedge.backends.base import options_classes
    from vitedge.backends.options import merged_fields

    signature = inspect.signature(command)
    annotations = typing.get_type_hints(command, include_extras=True)
    params = [p.replace(annotation=annotations[p.name]) for p in signature.parameters.values()
              if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for name, (info, owners) in merged_fields(options_classes()).items():
        default = info.default if info.default not in (None, [], False) else None
        shown = f" [default: {default}]" if default is not None else ""
        option = typer.Option(info.flag, help=info.spec.help + shown, show_default=False,
                              rich_help_panel="Options for --target " + " / ".join(owners))
        annotation = Annotated[info.annotation(), option]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
        annotations[name] = annotation
    command.__signature__ = signature.replace(parameters=params)
    command.__annotations__ = annotations
    return command


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
    trust_source: Annotated[bool, typer.Option(
        help="Let --reference DIR rebuild a source that runs code (.pt2, TorchScript, module:factory).")] = False,
    force: Annotated[bool, typer.Option(help=FORCE_HELP)] = False,
    yardstick: Annotated[list[str] | None, typer.Option(
        help="Also time what a user gets without vitedge, reported as ratios and nameable in gates "
             "(repeatable or comma-separated): openvino-default, pytorch-bf16, pytorch-fp16 (CUDA), "
             "pytorch-compile, pytorch-compile-bf16.")] = None,
) -> None:
    """Accuracy drift and latency of artifacts vs the PyTorch reference, with gates and reports."""
    from vitedge.validate.bench import run_bench

    _shown(lambda: run_bench(artifacts, reference=reference, data=data, batches=_csv_ints(batch, "--batch"),
                             gates=gate or [], report_dir=report, device=device, max_images=max_images,
                             warmup=warmup, iters=iters, threads=threads, trust_source=trust_source, force=force,
                             yardsticks=[n.strip() for v in yardstick or [] for n in v.split(",") if n.strip()]))


def _shown(call: typing.Callable[[], Any], run_dir: bool = False) -> None:
    """Run CALL (a bench, recipe or tune) and print its summary, also when its gates did not all pass.
    When only speed gates are undecided (exit 5), the error's last lines say what is usable and how
    to measure again; RUN_DIR: the result's reports lie in a run dir's report/ (`vitedge run`)."""
    from vitedge.errors import GateError, GateUnreliable
    from vitedge.report_cli import print_result, unreliable_epilogue

    try:
        result = call()
    except GateError as exc:
        print_result(exc.result)
        if isinstance(exc, GateUnreliable):
            files = list(((exc.result or {}).get("files") or {}).values())
            tail = unreliable_epilogue(exc.result, Path(files[0]).parent.parent if run_dir and files else None)
            if tail:
                raise GateUnreliable(f"{exc}\n{tail}", exc.result) from exc
        raise
    print_result(result)


app.command(name="compile")(_with_backend_flags(compile_cmd))


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
    knobs: Annotated[str | None, typer.Option(
        help="Knob variants to try: keep_float,smoothquant_alpha,throughput,amx (default all), or none.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for every runner (default: all cores).")] = None,
    iters: Annotated[int, typer.Option(help="Timed runs per candidate and batch.")] = 30,
    max_images: Annotated[int | None, typer.Option(help="Validate on at most N images (seeded).")] = None,
    yardstick: Annotated[str | None, typer.Option(
        help="What the pick is compared with besides PyTorch FP32 (comma-separated): openvino-default, "
             "pytorch-bf16, pytorch-fp16, pytorch-compile, pytorch-compile-bf16; default openvino-default (where "
             "OpenVINO runs) and pytorch-bf16 (CPUs with bf16), pytorch-fp16 on a CUDA GPU, or none.")] = None,
    trust_source: Annotated[bool, typer.Option(
        help="Let the reference rebuild an export whose source runs code (.pt2, TorchScript, factory).")] = False,
    force: Annotated[bool, typer.Option(help=FORCE_HELP)] = False,
) -> None:
    """The fastest artifact on this machine that passes the gates: build candidates, bench, choose."""
    from vitedge.tune import tune as run_tune

    _shown(lambda: run_tune(export_dir, out, data=data, calib=calib, targets=_csv_words(targets),
                            precisions=_csv_words(precisions), gates=gate or [], batches=_csv_ints(batch, "--batch"),
                            budget_minutes=budget_minutes, trust_source=trust_source, force=force,
                            knobs=_knob_words(knobs), threads=threads, iters=iters, max_images=max_images,
                            yardsticks=None if yardstick is None else _knob_words(yardstick) or []))


def _knob_words(text: str | None) -> bool | list[str]:
    """--knobs: not given -> every knob, "none" -> none, else the names (tune checks them)."""
    if text is None:
        return True
    return [] if text.strip() == "none" else _csv_words(text) or []


def _csv_words(text: str | None) -> list[str] | None:
    return [w.strip() for w in text.split(",") if w.strip()] or None if text else None


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="A recipe YAML (see recipes/).")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output directory (overrides the recipe).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: a.b=value.")] = None,
    force: Annotated[bool, typer.Option(help=FORCE_HELP)] = False,
) -> None:
    """Run a recipe: export -> compile -> bench -> gates -> reports, skipping unchanged steps."""
    from vitedge.recipe import run_recipe

    _shown(lambda: run_recipe(recipe, out_dir=out, overrides=set_ or [], force=force), run_dir=True)


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that temp outputs are removed as for Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough; cleanup must not be interrupted
    _flags["terminated"] = True
    raise Terminated()


def _aborted(exc: BaseException, args: list[str]) -> None:
    """Ctrl-C / SIGTERM: say so in one line and exit 130; temp outputs are already removed."""
    what = "terminated" if isinstance(exc, Terminated) else "aborted"
    kept = " (steps finished before are kept)" if args[:1] == ["run"] else ""
    ui.console.print(f"{what}, nothing written{kept}", soft_wrap=True)
    sys.exit(130)


def _os_error_line(exc: OSError) -> tuple[str, int]:
    """One line and an exit code for an OSError no vitedge code turned into a VitedgeError."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return f"out of disk space writing{where}: {exc.strerror}; free some space or write elsewhere", 3
    if exc.errno == errno.EROFS:
        return f"cannot write{where}: read-only file system; choose a writable location", 2
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where or ' a file vitedge needs'}; check its permissions", 2
    if exc.errno == errno.ENOENT:
        return f"{exc.filename or 'a file'} does not exist (or was removed while vitedge ran)", 2
    return f"{exc.strerror or exc}{where}", 4


OUT_OF_MEMORY = ("out of memory; lower the batch (--batch), --max-images or --calib-size, use a smaller "
                 "model or --img-size, or a machine with more memory")


def memory_code(exc: VitedgeError, code: int) -> int:
    """A vitedge error raised from an allocator's out-of-memory error is exit 3 (the machine), not 4."""
    from vitedge.limits import allocation_failure

    return 3 if code == 4 and exc.__cause__ is not None and allocation_failure(exc.__cause__) else code


def _fail(exc: BaseException, line: str, code: int, label: str = "error") -> typing.NoReturn:
    """Print LINE (after the traceback with --debug) and exit CODE: the code never depends on --debug."""
    if _flags["debug"]:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    ui.console.print(f"[red]{label}:[/red] {escape(line)}", soft_wrap=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line and an exit code for every vitedge error."""
    # PyTorch's OpenMP threads must not spin-wait long after a run (bench times runners back to
    # back); OpenMP reads this once, when torch loads, so it is set before any command imports torch.
    from vitedge.validate.latency import bound_openmp_spin

    bound_openmp_spin()
    args = _strip_global_flags(list(sys.argv[1:] if argv is None else argv))
    _flags["terminated"] = False
    if not _flags["debug"]:  # library chatter (deprecations, tracer notes) is not for users
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        logging.getLogger("nncf").setLevel(logging.ERROR)
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = app(args=args, prog_name="vitedge", standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C inside a command into a returned 130
            _aborted(Terminated() if _flags["terminated"] else KeyboardInterrupt(), args)
        if isinstance(code, int) and code:
            sys.exit(code)
    except VitedgeError as exc:
        code = memory_code(exc, exc.exit_code)
        _fail(exc, str(exc) if code == exc.exit_code else f"{exc}: {OUT_OF_MEMORY}", code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt) as exc:
        _aborted(exc, args)
    except OSError as exc:
        line, code = _os_error_line(exc)
        _fail(exc, line, code)
    except Exception as exc:  # usage errors (typer's click), allocation failures and anything unexpected
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        from vitedge.limits import allocation_failure

        if allocation_failure(exc):
            _fail(exc, OUT_OF_MEMORY, 3)
        _fail(exc, f"{type(exc).__name__}: {exc} (re-run with --debug for the traceback and report it)", 4,
              label="internal error")
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
