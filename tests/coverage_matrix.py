"""The model-coverage matrix: every model source x every exporter x every compile target/precision.

Generated from the registries, so a new one is covered by adding it there:
- model sources: `vitedge.models.base` (`register_source`); each needs at least one CASE here
  (tests/test_coverage_matrix.py fails for a source without one);
- exporters: `vitedge.export.EXPORTERS` (`--exporter`), plus "auto", the fallback chain;
- compile targets and precisions: `vitedge.backends.base.compile_backends()` and each backend's
  `precisions`.

Every cell goes through the CLI in-process (`vitedge export` / `vitedge compile`) and is judged
by `check_export` / `check_compile`: exit 0 (or, for a backend that compiles without its runtime
and whose runtime is not usable here, exit 3 with the plan written), and drift vs the export's
FP32 ONNX within TOLERANCE (the cosine of the logits, smallest over the --val images: the
compile's own `validation`, or for a plan its `cpu_verification`, FP16 storage emulated).
tests/test_coverage_matrix.py runs it (a fast subset by default, all of it with --run-slow);
scripts/coverage_matrix.py runs all of it and writes the result into docs/models.md.

Models are tiny and random-init (or built from small configs), so accuracy means nothing here;
drift and the exporter paths do.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
DIGITS = REPO / "calibration" / "digits"
CALIB_SIZE = 16
VAL_IMAGES = 16
AUTO = "auto"

# The documented drift tolerance: smallest per-image cosine of the logits vs the export's FP32
# ONNX, per precision; a case may set its own (its family's) in Case.tolerance.
TOLERANCE = {"fp32": 0.9999, "fp16": 0.999, "bf16": 0.995, "int8": 0.99}


@dataclass(frozen=True)
class Case:
    """One model of one source: BUILD(work dir) -> (MODEL spec, extra `vitedge export` flags)."""

    name: str
    source: str  # its key in the model-source registry
    family: str
    build: Callable[[Path], tuple[str, list[str]]]
    # exporter key -> part of the error it is known to stop with (exit 4); the fallback covers it
    export_failures: dict[str, str] = field(default_factory=dict)
    # (target, precision) -> part of the error its compile is known to stop with (exit 4), every exporter
    compile_failures: dict[tuple[str, str], str] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)
    slow: bool = False  # not tiny: only in the slow matrix


def _timm_test_vit(work: Path) -> tuple[str, list[str]]:
    return "timm:test_vit", ["--random-init", "0", "--img-size", "64", "--num-classes", "10"]


def _tiny_timm_module(size: int = 64) -> Any:
    import timm

    from vitedge.models.sources import seeded

    with seeded(0):
        return timm.create_model("test_vit", num_classes=6, img_size=size).eval()


def _pt2(work: Path) -> tuple[str, list[str]]:
    import torch

    program = torch.export.export(_tiny_timm_module(), (torch.randn(2, 3, 64, 64),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    torch.export.save(program, work / "vit.pt2")
    return str(work / "vit.pt2"), []


def _torchscript(work: Path) -> tuple[str, list[str]]:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
        torch.jit.trace(_tiny_timm_module(), torch.randn(1, 3, 64, 64)).save(str(work / "vit.pt"))
    return str(work / "vit.pt"), ["--img-size", "64"]


def _torchvision_vit(work: Path) -> tuple[str, list[str]]:
    import torch
    import torchvision

    from vitedge.models.sources import seeded

    with seeded(0):
        model = torchvision.models.vit_b_16(num_classes=10, image_size=32)
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-inits the head
    torch.save(model.state_dict(), work / "vit_b_16.pth")
    return "torchvision:vit_b_16", ["--weights", str(work / "vit_b_16.pth"), "--img-size", "32"]


def _factory(family: str) -> Callable[[Path], tuple[str, list[str]]]:
    def build(work: Path) -> tuple[str, list[str]]:
        return f"tiny_families:{family}", ["--random-init", "0", "--num-classes", "10"]

    return build


def _hf(kind: str) -> Callable[[Path], tuple[str, list[str]]]:
    def build(work: Path) -> tuple[str, list[str]]:
        from tiny_families import save_hf_classifier

        from vitedge.models.sources import seeded

        with seeded(0):  # transformers initialises from torch's global RNG
            folder = save_hf_classifier(kind, work / f"hf_{kind}", processor=True)
        return f"hf:{folder}", []

    return build


def _demo(work: Path) -> tuple[str, list[str]]:
    return "demo:digits", []


_SDPA_VIEW = "Cannot view a tensor with shape"  # SDPA output under a symbolic batch
CASES: tuple[Case, ...] = (
    Case("demo", "demo", "ViT (timm VisionTransformer, trained)", _demo),
    Case("timm_vit", "timm", "ViT (timm test_vit)", _timm_test_vit),
    Case("torchvision_vit", "torchvision", "ViT-B/16 (torchvision, 32 px)", _torchvision_vit, slow=True),
    Case("factory_beit", "factory", "BEiT (timm, reduced)", _factory("beit"), export_failures={"dynamo": _SDPA_VIEW}),
    Case("factory_torchvision_swin", "factory", "Swin (torchvision, reduced)", _factory("torchvision_swin")),
    Case("hf_vit", "hf", "ViT (transformers)", _hf("vit")),
    Case("hf_deit_distilled", "hf", "DeiT distilled (transformers, resize 37 -> crop 32)", _hf("deit_distilled")),
    Case("hf_swin", "hf", "Swin (transformers)", _hf("swin"), export_failures={"dynamo": _SDPA_VIEW}),
    Case("hf_beit", "hf", "BEiT (transformers)", _hf("beit"), export_failures={"dynamo": _SDPA_VIEW}),
    Case("hf_mobilevit", "hf", "MobileViT (transformers, shortest edge 36 -> crop 32, BGR)", _hf("mobilevit")),
    Case("pt2", "pt2", "ViT (timm test_vit, torch.export program)", _pt2),
    Case("torchscript", "torchscript", "ViT (timm test_vit, TorchScript trace)", _torchscript),
)
CASES_BY_NAME = {c.name: c for c in CASES}


def exporters() -> list[str]:
    from vitedge.export import EXPORTERS

    return [AUTO, *EXPORTERS]


def targets() -> list[tuple[str, str]]:
    from vitedge.backends.base import compile_backends

    return [(name, precision) for name, backend in compile_backends().items() for precision in backend.precisions]


def sources() -> list[str]:
    from vitedge.models import base

    base.resolve_source("demo:digits")  # the registry fills as vitedge.models imports its sources
    return sorted(base._SOURCES)


# -- running cells ---------------------------------------------------------------------------

def run_cli(*args: Any) -> tuple[int, str]:
    """`vitedge ARGS` in-process: (exit code, stdout + stderr)."""
    import warnings

    from vitedge import cli, ui

    out = io.StringIO()
    code = 0
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        warnings.simplefilter("ignore")
        try:
            cli.main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            cli._flags["debug"] = False
            ui.set_quiet(False)
    return code, out.getvalue()


@dataclass
class Result:
    code: int
    text: str
    seconds: float
    manifest: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    cosine_min: float | None = None
    outcome: str = ""  # "artifact", "engine", "plan" (compile) / the exporter used (export)

    @property
    def passed(self) -> bool:
        return not self.problems

    def line(self) -> str:
        tail = " ".join(self.text.split())[-400:]
        return f"exit {self.code}: {'; '.join(self.problems)} | {tail}"


def val_dir(work: Path) -> Path:
    """VAL_IMAGES digit images in one flat folder (no labels: drift only)."""
    out = work / "val"
    if not out.is_dir():
        out.mkdir(parents=True)
        for path in sorted((DIGITS / "val").rglob("*.png"))[::23][:VAL_IMAGES]:
            shutil.copy(path, out / f"{path.parent.name}_{path.name}")
    return out


def build_case(case: Case, work: Path) -> tuple[str, list[str]]:
    work.mkdir(parents=True, exist_ok=True)
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))  # tiny_families, for the factory and hf cases
    return case.build(work)


def export_cell(case: Case, exporter: str, spec: str, flags: list[str], out: Path) -> Result:
    from vitedge.export import EXPORTERS
    from vitedge.manifest import Manifest

    start = time.perf_counter()
    code, text = run_cli("export", spec, "-o", out, *flags, "--exporter", exporter, "--force")
    result = Result(code, text, time.perf_counter() - start)
    if code == 0:
        result.manifest = dict(Manifest.load(out))
        result.outcome = result.manifest["onnx"]["exporter"]
    return check_export(case, exporter, result, EXPORTERS)


def check_export(case: Case, exporter: str, result: Result, registry: dict[str, Any]) -> Result:
    """Exit 0 with parity passed, and the exporter asked for; or one of the documented outcomes:
    exit 2 where the exporter does not apply to the model, exit 4 where it is a known failure."""
    known = case.export_failures.get(exporter)
    text = " ".join(result.text.split())
    if result.code == 2 and "does not apply to" in text:
        result.outcome = "n/a"
        return result
    if known is not None:
        if result.code == 4 and known in text:
            result.outcome = "fails"
        else:
            result.problems.append(f"expected exit 4 with {known!r}")
        return result
    if result.code != 0 or result.manifest is None:
        result.problems.append("export failed")
        return result
    if not result.manifest["parity"]["passed"]:
        result.problems.append("parity failed")
    if exporter != AUTO and result.outcome != registry[exporter].name:
        result.problems.append(f"exporter {result.outcome!r} recorded, not {registry[exporter].name!r}")
    if exporter == AUTO and any(registry[k].name == result.outcome for k in case.export_failures):
        result.problems.append(f"auto took {result.outcome}, a known failure")
    return result


def compile_cell(case: Case, export: Path, target: str, precision: str, out: Path, work: Path) -> Result:
    from vitedge.backends import get_backend
    from vitedge.manifest import MANIFEST_NAME, Manifest

    backend = get_backend(target)
    args = ["compile", export, "-o", out, "--target", target, "--precision", precision, "--val", val_dir(work),
            "--force"]
    if precision in backend.calibrated_precisions:
        args += ["--calib", DIGITS / "calib", "--calib-size", CALIB_SIZE]
    start = time.perf_counter()
    code, text = run_cli(*args)
    result = Result(code, text, time.perf_counter() - start)
    if (out / MANIFEST_NAME).is_file() and code in (0, 3):
        result.manifest = dict(Manifest.load(out))
    return check_compile(case, backend, precision, out, result)


def check_compile(case: Case, backend: Any, precision: str, out: Path, result: Result) -> Result:
    """Exit 0 with the artifact, or exit 3 where the backend's runtime is not usable here (with the
    plan written where the backend compiles without it); drift within the case's tolerance."""
    manifest = result.manifest
    known = case.compile_failures.get((backend.name, precision))
    if known is not None:
        if result.code == 4 and known in " ".join(result.text.split()):
            result.outcome = "fails"
        else:
            result.problems.append(f"expected exit 4 with {known!r} (a known failure: fixed? remove it)")
        return result
    if result.code == 3 and not backend.compiles_without_runtime and not backend.availability().usable:
        if "is not usable here" not in result.text:
            result.problems.append("exit 3 without saying the target is not usable here")
        result.outcome = "unavailable"  # nothing to check on this machine
        return result
    if result.code == 3 and backend.compiles_without_runtime and not backend.availability().usable:
        if not (manifest and manifest.get("incomplete") and (out / manifest["artifact"]["onnx"]).is_file()):
            result.problems.append("exit 3 without the plan written")
            return result
        result.outcome = "plan"
    elif result.code == 0 and manifest is not None:
        model = manifest.get("artifact", {}).get("model")
        if model and not (out / model).exists():
            result.problems.append(f"exit 0 but no {model}")
        result.outcome = "engine" if backend.compiles_without_runtime else "artifact"
    else:
        result.problems.append("compile failed")
        return result
    validation = manifest.get("validation") or {}
    emulated = (manifest.get("cpu_verification") or {}).get("fp16_storage_emulated") or {}
    cosine = validation.get("cosine_min", emulated.get("cosine_min"))
    if cosine is None:
        result.problems.append("no drift measured")
        return result
    result.cosine_min = float(cosine)
    bound = case.tolerance.get(precision, TOLERANCE[precision])
    if not result.cosine_min >= bound:
        result.problems.append(f"cosine_min {result.cosine_min:.5f} < {bound}")
    return result
