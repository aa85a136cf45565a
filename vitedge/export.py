"""torch -> validated ONNX: export, structural checks, and parity against PyTorch FP32."""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge import ui
from vitedge.data import INPUT_NAME, load_tensors, open_image_set, random_inputs
from vitedge.envinfo import hardware, tool_versions
from vitedge.errors import BadInput, ExportFailed
from vitedge.fsutil import atomic_dir
from vitedge.manifest import Manifest
from vitedge.metrics import compare_logits
from vitedge.models import LoadedModel
from vitedge.onnx_utils import default_opset, has_decomposed_layernorm, io_signature, op_counts

OUTPUT_NAME = "logits"
MIN_OPSET = 17
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB
PARITY_COSINE_MIN = 0.9999


def torch_logits(module: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """PyTorch FP32 reference logits, in batches, without autograd."""
    import torch

    outs = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            outs.append(module(torch.from_numpy(x[i:i + batch_size])).float().numpy())
    return np.concatenate(outs)


@dataclass(frozen=True)
class Exporter:
    """One way from the torch module to ONNX. `key` is what `--exporter` takes, `name` what the
    manifest's `onnx.exporter` records; `why_not(loaded)` says why it cannot apply to a model
    (None: it applies); `run(job)` writes job.path or raises."""

    key: str
    name: str
    summary: str
    why_not: Callable[[LoadedModel], str | None]
    run: Callable[["_ExportJob"], None]


@dataclass
class _ExportJob:
    loaded: LoadedModel
    path: Path
    opset: int
    x: Any  # the dummy input, [batch, 3, H, W]
    dynamic: bool
    external: bool


def _run_dynamo(job: _ExportJob) -> None:
    import torch

    target = job.loaded.details.get("export_target", job.loaded.module)
    kwargs: dict[str, Any] = {}
    if job.dynamic and target is job.loaded.module:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    torch.onnx.export(
        target, (job.x,), str(job.path), dynamo=True, opset_version=job.opset, external_data=job.external,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False, **kwargs,
    )


def _run_dynamo_unfused(job: _ExportJob) -> None:
    with _unfused_attention(job.loaded.module):
        _run_dynamo(job)


def _run_torchscript(job: _ExportJob) -> None:
    import torch

    torch.onnx.export(
        job.loaded.module, (job.x,), str(job.path), dynamo=False, opset_version=job.opset,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if job.dynamic else None,
    )


def _is_script(loaded: LoadedModel) -> bool:
    return loaded.exporter == "torchscript"


def _is_program(loaded: LoadedModel) -> bool:
    return "export_target" in loaded.details


# In the order `export` tries them. A new exporter is one entry here: --exporter, the fallback
# chain and the coverage matrix (tests/coverage_matrix.py) take it from this registry.
EXPORTERS: dict[str, Exporter] = {e.key: e for e in (
    Exporter("dynamo", "dynamo", "torch.export + the dynamo ONNX exporter (the default)",
             lambda m: "a TorchScript program cannot be re-traced by torch.export" if _is_script(m) else None,
             _run_dynamo),
    Exporter("dynamo-unfused", "dynamo (unfused attention)",
             "dynamo with timm's attention in its explicit q@kT/softmax/@v form instead of "
             "scaled_dot_product_attention (BEiT: \"Failed to decompose the FX graph\")",
             lambda m: ("a .pt2 program is already traced" if _is_program(m) else
                        "a TorchScript program cannot be re-traced by torch.export" if _is_script(m) else
                        None if _fused_attention_modules(m.module) else
                        "the model has no timm attention block using scaled_dot_product_attention"),
             _run_dynamo_unfused),
    Exporter("torchscript", "torchscript", "the TorchScript (torch.jit.trace) ONNX exporter",
             lambda m: "a .pt2 program is already traced: only dynamo exports it" if _is_program(m) else None,
             _run_torchscript),
)}
EXPORTER_CHOICES = ("auto", *EXPORTERS)


def _exporter_attempts(loaded: LoadedModel, exporter: str) -> list[Exporter]:
    """The exporters to try, in order: every one that applies ("auto"), or the one asked for."""
    if exporter == "auto":
        return [e for e in EXPORTERS.values() if e.why_not(loaded) is None]
    if exporter not in EXPORTERS:
        raise BadInput(f"unknown --exporter {exporter!r}; choose one of {', '.join(EXPORTER_CHOICES)}")
    why = EXPORTERS[exporter].why_not(loaded)
    if why:
        raise BadInput(f"--exporter {exporter} does not apply to {loaded.spec}: {why}")
    return [EXPORTERS[exporter]]


def _export_onnx(loaded: LoadedModel, path: Path, opset: int, batch: int | None, exporter: str = "auto") -> str:
    """Run the torch exporter, falling back when it fails; returns which exporter was used.

    Attempts, in the order of EXPORTERS: torch.export + dynamo (the default); dynamo again with
    timm's fused attention switched to its explicit q@kT/softmax/@v form (the decomposition fix
    for e.g. BEiT, whose SDPA output cannot be `view`ed under a symbolic batch: "Failed to
    decompose the FX graph"); the TorchScript exporter. EXPORTER other than "auto" runs that one
    only. ExportFailed names every attempt's error.
    """
    import torch

    attempts = _exporter_attempts(loaded, exporter)
    h, w = loaded.preprocessing.input_size
    dummy_batch = batch or loaded.static_batch or 2  # >1 so dynamo keeps the dim symbolic
    n_params = sum(p.numel() for p in loaded.module.parameters()) if hasattr(loaded.module, "parameters") else 0
    job = _ExportJob(loaded, path, opset, torch.randn(dummy_batch, 3, h, w),
                     dynamic=batch is None and loaded.static_batch is None,
                     external=n_params * 4 > EXTERNAL_DATA_BYTES)
    failures: list[str] = []
    last: BaseException | None = None
    for attempt in attempts:
        try:
            with _exporter_quiet():
                attempt.run(job)
        except Exception as exc:  # noqa: BLE001 - exporter errors are many and deep
            failures.append(f"{attempt.name}: {_export_error_line(exc)}")
            last = exc
            path.unlink(missing_ok=True)
            if len(failures) < len(attempts):
                ui.warn(f"the {attempt.name} exporter failed ({_export_error_line(exc)}); "
                        f"trying {attempts[len(failures)].name}")
            continue
        return attempt.name
    what = "every ONNX exporter" if len(attempts) > 1 else f"the {attempts[0].name} exporter"
    raise ExportFailed(f"{what} failed for {loaded.spec}: {'; '.join(failures)} "
                       "(run with --debug for the tracebacks; a .pt2 or TorchScript file of the model "
                       "may export where the eager module does not)") from last


def _fused_attention_modules(module: Any) -> list[Any]:
    """timm attention blocks that call F.scaled_dot_product_attention (`fused_attn` is True)."""
    modules = getattr(module, "modules", None)
    return [m for m in modules() if getattr(m, "fused_attn", None) is True] if modules else []


@contextlib.contextmanager
def _unfused_attention(module: Any) -> Iterator[None]:
    """timm's explicit attention (same function, no SDPA) while exporting; restored after."""
    switched = _fused_attention_modules(module)
    for m in switched:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in switched:
            m.fused_attn = True


@contextlib.contextmanager
def _exporter_quiet() -> Iterator[None]:
    """The dynamo exporter prints its steps (and emoji) on stdout; vitedge shows its own step."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _export_error_line(exc: BaseException) -> str:
    """The exporter's own summary line (e.g. the ValueError under a ConversionError)."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip() or str(exc).strip()
    first = re.sub(r"\x1b\[[0-9;]*m", "", text.splitlines()[0]) if text else type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "..."


def check_onnx(path: Path) -> dict[str, Any]:
    """onnx.checker (full) + shape inference, and the structure facts backends care about."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportFailed(f"the exported ONNX is invalid: {str(exc).splitlines()[0]}") from exc
    model = onnx.load(str(path), load_external_data=False)
    ops = op_counts(model)
    return {
        "opset": default_opset(model),
        "ir_version": model.ir_version,
        "nodes": len(model.graph.node),
        "layernorm_fused": ops.get("LayerNormalization", 0),
        "layernorm_decomposed": has_decomposed_layernorm(model),
        "ops": ops,
        "io": io_signature(model),
    }


def parity(loaded: LoadedModel, onnx_path: Path, data: str | None, images: int,
           batch: int | None = None, random_count: int = 8) -> dict[str, Any]:
    """ORT (CPU) vs PyTorch FP32 on seeded random inputs and, with --data, on real images."""
    from vitedge.backends.onnxruntime import OrtRunner

    results: dict[str, Any] = {}
    with OrtRunner(onnx_path) as runner:
        x = random_inputs(loaded.preprocessing, batch or random_count)
        results["random"] = compare_logits(torch_logits(loaded.module, x, batch or 32),
                                           runner.infer_all(x, batch or 32))
        if data:
            image_set = open_image_set(data, loaded.labels).subset(images, seed=0)
            tensors = load_tensors(image_set, loaded.preprocessing, description="parity images")
            x = tensors.x
            if batch:  # static-batch models: trim to whole batches
                x = x[: max(batch, len(x) - len(x) % batch)]
            results["images"] = compare_logits(torch_logits(loaded.module, x, batch or 32),
                                               runner.infer_all(x, batch or 32),
                                               tensors.labels[: len(x)] if tensors.labels is not None else None)
            results["images"]["source"] = str(data)
    return results


def export_model(loaded: LoadedModel, out_dir: str | Path, *, opset: int = 18,
                 batch: str | int = "dynamic", data: str | None = None, atol: float = 1e-3,
                 parity_images: int = 256, force: bool = False, exporter: str = "auto") -> Manifest:
    """Export LOADED to OUT_DIR/model.onnx + vitedge.json, atomically; fail on parity misses.

    EXPORTER: "auto" (try EXPORTERS in order) or one key of EXPORTERS."""
    if opset < MIN_OPSET:
        raise BadInput(f"opset {opset} is too old: ViTs need >= {MIN_OPSET} for a fused "
                       "LayerNormalization (TensorRT/FP16 overflow otherwise)")
    fixed_batch = None if batch == "dynamic" else int(batch)
    if fixed_batch is not None and fixed_batch < 1:
        raise BadInput(f"--batch must be 'dynamic' or a positive integer, got {batch}")
    out_dir = Path(out_dir)
    _exporter_attempts(loaded, exporter)  # an exporter that cannot apply: said before any work
    if fixed_batch is None and loaded.static_batch:
        ui.warn(f"{loaded.spec} was exported with a fixed batch of {loaded.static_batch}; "
                "the ONNX keeps it (re-export the program with a dynamic batch dim to change that)")
    with atomic_dir(out_dir, kind="export", force=force) as tmp:
        onnx_path = tmp / "model.onnx"
        start = time.perf_counter()
        with ui.Step(f"exporting {loaded.spec} to ONNX (opset {opset})"):
            used = _export_onnx(loaded, onnx_path, opset, fixed_batch, exporter)
        export_s = time.perf_counter() - start
        facts = check_onnx(onnx_path)
        if facts["layernorm_decomposed"]:
            ui.warn("LayerNorm was exported decomposed; FP16 backends may overflow")
        with ui.Step("checking parity: ONNX Runtime vs PyTorch FP32"):
            par = parity(loaded, onnx_path, data, parity_images, fixed_batch or loaded.static_batch)
        worst = max(r["max_abs_err"] for r in par.values())
        cos = min(r["cosine_min"] for r in par.values())
        par["tolerance"] = {"max_abs_err": atol, "cosine_min": PARITY_COSINE_MIN}
        par["passed"] = worst <= atol and cos >= PARITY_COSINE_MIN
        if not par["passed"]:
            raise ExportFailed(
                f"parity check failed: ONNX Runtime differs from PyTorch by max abs {worst:.3g} "
                f"(tolerance {atol:g}), cosine {cos:.6f}; the export is not faithful "
                "(try another --opset, or --atol if this drift is acceptable)"
            )
        manifest = Manifest.new(
            "export",
            source=loaded.describe(),
            preprocessing=loaded.preprocessing.to_dict(),
            labels=loaded.labels,
            num_classes=loaded.num_classes,
            io=facts.pop("io"),
            onnx={"file": "model.onnx", "exporter": used, "export_seconds": round(export_s, 2),
                  "dynamic_batch": fixed_batch is None and loaded.static_batch is None,
                  "batch": fixed_batch or loaded.static_batch, **facts},
            target="onnx",
            precision="fp32",
            parity=par,
            tools=tool_versions(),
            hardware=hardware(),
        )
        manifest.save(tmp)
    return manifest
