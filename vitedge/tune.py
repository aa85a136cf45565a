"""`vitedge tune`: the fastest artifact of an export on this machine that passes the accuracy gates.

Four steps, each resumable: plan the candidates (target x precision, plus knob variants: INT8
that keeps the most sensitive blocks float, INT8 with another SmoothQuant alpha, OpenVINO in
throughput mode) and skip, with a reason, those that cannot run here or would only repeat
another; build them (cached like recipe steps: an unchanged candidate is reused); bench all
of them against the PyTorch reference in one interleaved run; choose the fastest that passes
every gate. OUT/best/ is a copy of the chosen artifact (`vitedge.load`
opens it), OUT/tune.json says what happened to every candidate and why, and the HTML report
gets a Pareto plot (accuracy drop vs p50 latency per batch).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge import __version__, ui
from vitedge.errors import BadInput, EnvironmentProblem, GateError, GateFailed, GateUnreliable, VitedgeError
from vitedge.fsutil import (
    atomic_dir,
    check_output_dir,
    output_lock,
    remove_own,
    sha256_json,
    write_json_atomic,
    write_text_atomic,
)
from vitedge.manifest import MANIFEST_NAME, Manifest

TUNE_FILE = "tune.json"
TUNE_SCHEMA = "vitedge.tune/result"
BEST_DIR = "best"
CANDIDATES_DIR = "candidates"
REPORT_DIR = "report"
SENSITIVITY_FILE = "sensitivity.json"
# Gates when none are given: the accuracy a deployment may lose (labelled data) or the
# fraction of top-1 decisions that may change (unlabelled data).
DEFAULT_GATES_LABELLED = ("acc_drop<=0.01",)
DEFAULT_GATES_UNLABELLED = ("top1_agreement>=0.99",)
# The knobs tune can try besides target x precision (tune(knobs=...), `--knobs`).
KNOBS = ("keep_float", "smoothquant_alpha", "throughput")
# The alpha of the SmoothQuant variant. vitedge's default 0.5 splits an outlier channel's range
# evenly between activation and weight; 0.75 moves more of it into the weights, which are INT8
# per channel (the activations are per tensor). The SmoothQuant paper (arXiv:2211.10438) picks a
# larger alpha such as 0.75 for models with more significant outliers.
VARIANT_ALPHA = 0.75
SENSITIVITY_IMAGES = 64  # validation images for per-block sensitivity (fake-quant in PyTorch)
ACT_RANGE_IMAGES = 32  # calibration images for its activation ranges


@dataclass(frozen=True)
class DeviceFacts:
    """What decides which candidates make sense here."""

    cpu: str
    isa: tuple[str, ...]
    bf16: bool  # OpenVINO computes bf16 on this CPU (AVX-512 BF16 or AMX)
    fp16: bool  # OpenVINO computes fp16 on this CPU (AVX-512 FP16, AVX2-VNNI-2, Arm fp16)
    cuda: bool
    unavailable: dict[str, str] = field(default_factory=dict)  # backend -> why it cannot run here

    @classmethod
    def here(cls) -> "DeviceFacts":
        from vitedge.backends import all_backends
        from vitedge.envinfo import cpu_info, gpu_info

        info = cpu_info()
        capabilities: list[str] = []
        try:
            import openvino as ov

            capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        except Exception:  # noqa: BLE001 - no OpenVINO: its candidates are skipped anyway
            capabilities = ["BF16"] if info["bf16_native"] else []
        unavailable = {}
        for name, backend in all_backends().items():
            available = backend.availability()
            if not available.usable:
                unavailable[name] = available.reason
        return cls(info["model"], tuple(info["isa"]), "BF16" in capabilities, "FP16" in capabilities,
                   bool(gpu_info()), unavailable)


@dataclass
class Candidate:
    """One artifact tune may build: a target, a precision and compile options."""

    name: str
    target: str
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)
    knob: str = ""  # what sets it apart from the plain target-precision, in words
    base: str = ""  # the candidate this one is a knob variant of
    status: str = "planned"  # planned | skipped | budget | failed | benched
    reason: str = ""  # why it was skipped or failed, or what the bench found
    precision_run: str | None = None
    result: dict[str, Any] = field(default_factory=dict)  # numbers from the bench


# -- candidates -------------------------------------------------------------------------------

def plan_candidates(targets: Sequence[str], precisions: Sequence[str] | None, *, calib: bool,
                    device: DeviceFacts) -> list[Candidate]:
    """Every target x precision, fp32 first per target; those that make no sense here are skipped
    with the reason (cannot run here, needs --calib, or would run exactly like another candidate)."""
    from vitedge.backends import get_backend

    candidates = []
    for target in targets:
        backend = get_backend(target)
        wanted = list(precisions) if precisions else list(backend.precisions)
        for precision in sorted(wanted, key=lambda p: (p != "fp32", p)):
            candidate = Candidate(f"{target}-{precision}", target, precision)
            candidate.reason = _skip_reason(candidate, backend.precisions, wanted, calib, device)
            candidate.status = "skipped" if candidate.reason else "planned"
            candidates.append(candidate)
    return candidates


def _skip_reason(candidate: Candidate, supported: Sequence[str], wanted: Sequence[str], calib: bool,
                 device: DeviceFacts) -> str:
    target, precision = candidate.target, candidate.precision
    if precision not in supported:
        return f"{target} has no {precision} (it offers {', '.join(supported)})"
    if target in device.unavailable:
        return f"{target} cannot run here: {device.unavailable[target]}"
    if target == "tensorrt" and not device.cuda:
        return "TensorRT needs an NVIDIA GPU and this machine has none"
    if precision == "int8" and not calib:
        return "int8 needs --calib (about 300 representative images)"
    if target == "openvino" and precision == "bf16" and not device.bf16:
        return ("this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX): OpenVINO would run it in f32, "
                "exactly like openvino-fp32")
    if target == "openvino" and precision == "fp16" and not device.fp16:
        if device.bf16 and "bf16" in wanted:
            return ("this CPU has no FP16 arithmetic: OpenVINO would compute in bf16 from FP16-stored weights; "
                    "openvino-bf16 is that candidate without the extra conversions")
        return ("this CPU has no FP16 arithmetic: OpenVINO would only store the weights in FP16 and compute "
                "in " + ("bf16" if device.bf16 else "f32, exactly like openvino-fp32"))
    return ""


def keep_float_variants(candidates: list[Candidate], sensitivity: list[dict[str, Any]]) -> list[Candidate]:
    """INT8 candidates that keep the most sensitive blocks float (one block per six, at least one)."""
    if len(sensitivity) < 2:
        return []
    keep = sensitivity[: max(1, len(sensitivity) // 6)]
    modules = sorted(m for block in keep for m in block["modules"])
    blocks = [block["block"] for block in keep]
    variants = []
    for base in candidates:
        if base.precision == "int8" and base.status == "planned":
            variants.append(Candidate(
                f"{base.name}-float-{'-'.join(b.replace('.', '') for b in blocks)}", base.target, "int8",
                {**base.extra, "ignored_scope": modules},
                f"INT8 with the most sensitive block(s) {', '.join(blocks)} kept float", base=base.name))
    return variants


def smoothquant_alpha_variants(candidates: list[Candidate], alpha: float = VARIANT_ALPHA) -> list[Candidate]:
    """INT8 candidates built with SmoothQuant alpha ALPHA, for backends that take `smoothquant_alpha`."""
    from vitedge.backends import get_backend
    from vitedge.backends.options import fields_of
    from vitedge.precision.smoothquant import DEFAULT_ALPHA

    variants = []
    for base in candidates:
        backend = get_backend(base.target)
        if base.precision != "int8" or base.status != "planned" or "smoothquant_alpha" not in {
                f.name for f in fields_of(backend.Options)}:
            continue
        knob = (f"SmoothQuant alpha {alpha:g} instead of {DEFAULT_ALPHA:g}: more of each outlier LayerNorm channel's "
                "range moves into the per-channel INT8 weights")
        if base.target == "openvino":
            knob += (f", and NNCF's SmoothQuant runs on every MatMul at {alpha:g} (the INT8 scheme keeps it off; "
                     "NNCF's own 0.95 broke windowed and hybrid models)")
        variants.append(Candidate(f"{base.name}-alpha{round(alpha * 100):03d}", base.target, "int8",
                                  {**base.extra, "smoothquant_alpha": alpha}, knob, base=base.name))
    return variants


def throughput_variants(candidates: list[Candidate], batches: Sequence[int]) -> list[Candidate]:
    """OpenVINO candidates with PERFORMANCE_HINT=throughput (streams chosen by OpenVINO from the cores);
    skipped with the reason when every benched batch is 1."""
    variants = []
    for base in candidates:
        if base.target != "openvino" or base.status != "planned" or base.extra.get("hint") == "throughput":
            continue
        variant = Candidate(f"{base.name}-throughput", base.target, base.precision,
                            {**base.extra, "hint": "throughput"},
                            "OpenVINO throughput hint: the cores split into streams (OpenVINO picks how many); "
                            "timed one request at a time, as bench does, not with a request in flight per stream",
                            base=base.name)
        if max(batches) == 1:
            variant.status, variant.reason = "skipped", (
                "every benched batch is 1: the throughput hint is for batches and concurrent requests, the "
                "latency hint for single images (tune with --batch 1,8 to try it)")
        variants.append(variant)
    return variants


def skip_duplicates(candidates: list[Candidate]) -> None:
    """Skip, with the reason, a planned candidate whose target, precision and options repeat an earlier one."""
    seen: dict[str, str] = {}
    for candidate in candidates:
        if candidate.status != "planned":
            continue
        key = sha256_json({"target": candidate.target, "precision": candidate.precision, "extra": candidate.extra})
        if key in seen:
            candidate.status, candidate.reason = "skipped", f"the same target, precision and options as {seen[key]}"
        else:
            seen[key] = candidate.name


def repeats_its_base(candidate: Candidate, base: Manifest) -> str:
    """Why CANDIDATE, a knob variant, would run exactly like its built BASE ("" when it would not).

    A SmoothQuant alpha only scales LayerNorm outputs with outliers; when the base migrated none
    (and OpenVINO's NNCF SmoothQuant, which the alpha turns on, does not apply to its scheme) the
    alpha changes nothing.
    """
    artifact = base.get("artifact", {})
    if "smoothquant_alpha" in candidate.extra and "smoothquant" in artifact:
        nncf_applies = artifact.get("int8_scheme", {}).get("model_type") == "TRANSFORMER"
        if not artifact["smoothquant"].get("migrated") and not nncf_applies:
            return (f"no LayerNorm output has activation outliers above {artifact['smoothquant']['outlier_ratio']:g}x "
                    f"its median channel ({candidate.base} migrated none), so the alpha changes nothing: it would "
                    f"build exactly {candidate.base}")
    return ""


def repeats_its_base_at_runtime(candidate: Candidate, built: Manifest, base: Manifest) -> str:
    """Why the built throughput variant CANDIDATE would run exactly like BASE ("" when it would not)."""
    if candidate.extra.get("hint") != "throughput":
        return ""
    mine, theirs = (m.get("runtime", {}).get("resolved_at_build", {}) for m in (built, base))
    if mine.get("streams") == theirs.get("streams") and mine.get("threads") == theirs.get("threads"):
        return (f"OpenVINO picked {mine.get('streams')} stream(s) of {mine.get('threads')} thread(s) here for the "
                f"throughput hint, as for {candidate.base}: it runs exactly like it")
    return ""


# -- per-block sensitivity --------------------------------------------------------------------

def block_sensitivity(export_dir: Path, calib_x: np.ndarray, val_x: np.ndarray) -> list[dict[str, Any]]:
    """How much INT8 hurts each transformer block alone, most sensitive first.

    Each block's Linear layers are fake-quantized in PyTorch as the INT8 candidates quantize them
    (symmetric, per-channel weights, per-tensor activations from calibration ranges) while the
    rest of the model stays FP32; the score is the mean KL of the softmax against FP32 on the
    validation images. Blocks are named by their PyTorch module (e.g. blocks.7).
    """
    import torch

    from vitedge.runtime import load

    # the caller checked that the export's source may be rebuilt (tune's --trust-source)
    with load(export_dir, backend="pytorch", trust_source=True) as reference:
        module = reference.runner.module
        blocks = _transformer_blocks(module)
        if not blocks:
            return []
        linears = {f"{block}.{name}" if name else block: layer
                   for block, mod in blocks for name, layer in mod.named_modules()
                   if isinstance(layer, torch.nn.Linear)}
        ranges = _activation_ranges(module, linears, calib_x)

        def logits() -> np.ndarray:
            with torch.no_grad():
                return np.concatenate([module(torch.from_numpy(val_x[i:i + 32])).float().numpy()
                                       for i in range(0, len(val_x), 32)])

        ref = logits()
        results = []
        for block, _ in ui.track(blocks, "INT8 sensitivity per block (fake-quantized PyTorch)"):
            names = [n for n in linears if n == block or n.startswith(block + ".")]
            with _fake_quantized({n: linears[n] for n in names}, ranges):
                out = logits()
            results.append({"block": block, "modules": names, "kl_mean": _kl_mean(ref, out),
                            "top1_agreement": float(np.mean(ref.argmax(1) == out.argmax(1)))})
    return sorted(results, key=lambda r: -r["kl_mean"])


def _transformer_blocks(module: Any) -> list[tuple[str, Any]]:
    """(name, module) of the blocks: the longest ModuleList or Sequential whose items all hold Linear layers."""
    import torch

    best: list[tuple[str, Any]] = []
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.ModuleList | torch.nn.Sequential) and len(child) > len(best) and all(
                any(isinstance(m, torch.nn.Linear) for m in item.modules()) for item in child):
            best = [(f"{name}.{i}", item) for i, item in enumerate(child)]
    return best


def _activation_ranges(module: Any, linears: dict[str, Any], calib_x: np.ndarray) -> dict[str, float]:
    import torch

    ranges: dict[str, float] = {}

    def hook(name: str) -> Any:
        def record(_: Any, inputs: tuple[Any, ...]) -> None:
            ranges[name] = max(ranges.get(name, 0.0), float(inputs[0].detach().abs().max()))
        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in linears.items()]
    try:
        with torch.no_grad():
            for i in range(0, len(calib_x), 32):
                module(torch.from_numpy(calib_x[i:i + 32]))
    finally:
        for handle in handles:
            handle.remove()
    return ranges


class _fake_quantized:  # noqa: N801 - used as a context manager, like contextlib's helpers
    """Linear layers with INT8-rounded weights (per output channel) and inputs (per tensor)."""

    def __init__(self, layers: dict[str, Any], ranges: dict[str, float]) -> None:
        self.layers, self.ranges = layers, ranges
        self.saved: dict[str, Any] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> "_fake_quantized":
        import torch

        for name, layer in self.layers.items():
            weight = layer.weight.data
            self.saved[name] = weight.clone()
            scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
            layer.weight.data = torch.clamp(torch.round(weight / scale), -127, 127) * scale
            act_scale = max(self.ranges.get(name, 0.0), 1e-12) / 127

            def quantize_input(_: Any, inputs: tuple[Any, ...], s: float = act_scale) -> tuple[Any, ...]:
                return (torch.clamp(torch.round(inputs[0] / s), -127, 127) * s, *inputs[1:])

            self.handles.append(layer.register_forward_pre_hook(quantize_input))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        for name, weight in self.saved.items():
            self.layers[name].weight.data = weight


def _kl_mean(ref: np.ndarray, out: np.ndarray) -> float:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(out)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


# -- the pipeline -----------------------------------------------------------------------------

def tune(export_dir: str | Path, out_dir: str | Path, *, data: str | Path, calib: str | Path | None = None,
         targets: Sequence[str] | None = None, precisions: Sequence[str] | None = None,
         gates: Sequence[str] = (), batches: Sequence[int] = (1, 8), budget_minutes: float | None = None,
         threads: int | None = None, max_images: int | None = None, warmup: int = 5, iters: int = 30,
         knobs: bool | Sequence[str] = True, device_facts: DeviceFacts | None = None, force: bool = False,
         trust_source: bool = False) -> dict[str, Any]:
    """Build, bench and choose; returns what OUT/tune.json holds.

    KNOBS: True for every knob in KNOBS, False for none, or the names of those to try.

    GateFailed when no candidate passes; GateUnreliable (exit 5) when none passes but some
    were only undecided on speed (a busy machine): rerun on a quiet one. OUT is checked with
    the output-dir policy of a `vitedge run` dir (FORCE writes over anything else) and locked.
    TRUST_SOURCE: the export's model spec may run code when the reference is rebuilt (SECURITY.md).
    """
    export_dir, out = Path(export_dir), Path(out_dir)
    knob_names = knob_set(knobs)
    export, targets, labelled, gates = _check_inputs(export_dir, out, data, calib, targets, precisions, gates,
                                                     batches, budget_minutes, force, trust_source)
    with output_lock(out):
        return _tune(export_dir, out, export, targets, labelled, gates, data=data, calib=calib,
                     precisions=precisions, batches=batches, budget_minutes=budget_minutes, threads=threads,
                     max_images=max_images, warmup=warmup, iters=iters, knobs=knob_names,
                     device_facts=device_facts, trust_source=trust_source)


def knob_set(knobs: bool | Sequence[str]) -> frozenset[str]:
    """The knobs to try: True -> all of KNOBS, False -> none, else the names given (checked)."""
    if isinstance(knobs, bool):
        return frozenset(KNOBS if knobs else ())
    unknown = [k for k in knobs if k not in KNOBS]
    if unknown:
        raise BadInput(f"--knobs: unknown knob(s) {', '.join(unknown)}; choose from {', '.join(KNOBS)} (or none)")
    return frozenset(knobs)


def _tune(export_dir: Path, out: Path, export: Manifest, targets: list[str], labelled: bool, gates: list[str], *,
          data: str | Path, calib: str | Path | None, precisions: Sequence[str] | None, batches: Sequence[int],
          budget_minutes: float | None, threads: int | None, max_images: int | None, warmup: int, iters: int,
          knobs: frozenset[str], device_facts: DeviceFacts | None, trust_source: bool) -> dict[str, Any]:
    """tune() with every input checked and OUT locked."""
    from vitedge.fsutil import StepState, tree_hash
    from vitedge.validate import gates as gatelib

    started = time.perf_counter()
    parsed = [gatelib.parse_gate(g) for g in gates]
    device = device_facts or DeviceFacts.here()
    candidates = plan_candidates(targets, precisions, calib=calib is not None, device=device)
    bases = list(candidates)
    if "smoothquant_alpha" in knobs:
        candidates += smoothquant_alpha_variants(bases)
    if "throughput" in knobs:
        candidates += throughput_variants(bases, batches)
    skip_duplicates(candidates)
    _check_named_gates(parsed, candidates, list(batches), labelled)
    for candidate in candidates:
        if candidate.status == "skipped":
            ui.info(f"skip {candidate.name}: {candidate.reason}")
    deadline = started + budget_minutes * 60 if budget_minutes else math.inf
    out.mkdir(parents=True, exist_ok=True)
    state = StepState.load(out)
    calib_hash = tree_hash(calib) if calib is not None else None
    sensitivity: list[dict[str, Any]] = []
    if "keep_float" in knobs and any(c.precision == "int8" and c.status == "planned" for c in bases):
        sensitivity = _sensitivity(export_dir, export, out, calib, data, calib_hash, state, deadline)
        candidates += keep_float_variants(bases, sensitivity)
        skip_duplicates(candidates)

    planned = [c for c in candidates if c.status == "planned"]
    by_name = {c.name: c for c in candidates}
    for i, candidate in enumerate(planned, 1):
        if time.perf_counter() > deadline and any(c.precision_run for c in planned):  # at least one is built
            candidate.status, candidate.reason = "budget", f"not built: the {budget_minutes:g}-minute budget was spent"
            continue
        base = by_name.get(candidate.base)
        base_manifest = (Manifest.load(out / CANDIDATES_DIR / base.name)
                         if base is not None and base.status == "planned" and base.precision_run else None)
        if base_manifest is not None and (why := repeats_its_base(candidate, base_manifest)):
            candidate.status, candidate.reason = "skipped", why
            ui.info(f"skip {candidate.name}: {why}")
            continue
        ui.info(f"[{i}/{len(planned)}] {candidate.name}" + (f" ({candidate.knob})" if candidate.knob else ""))
        _build(candidate, export_dir, export, out, calib, calib_hash, state)
        if base_manifest is not None and candidate.precision_run and (why := repeats_its_base_at_runtime(
                candidate, Manifest.load(out / CANDIDATES_DIR / candidate.name), base_manifest)):
            candidate.status, candidate.reason = "skipped", why
            ui.info(f"skip {candidate.name}: {why}")
    built = [c for c in candidates if c.status == "planned"]
    if not built:
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in candidates)
        raise EnvironmentProblem(f"tune has no candidate to bench: {reasons}")
    if any(c.status == "budget" for c in candidates):
        ui.warn(f"the budget is spent: benching the {len(built)} candidate(s) built so far; run again with a larger "
                "--budget-minutes to build the rest (built candidates are reused)")

    checkable, unchecked = split_gates(gates, parsed, candidates)
    for entry in unchecked:
        ui.warn(f"gate {entry['gate']!r} not checked: {entry['reason']}")
    report = _bench(built, export_dir, out, data, batches, checkable, threads, max_images, warmup, iters,
                    "cuda" if any(c.target == "tensorrt" for c in built) else "cpu", trust_source)
    read_outcomes(report, built)
    fail_uncheckable(unchecked, built)
    chosen = choose(built)
    result = {
        "schema": TUNE_SCHEMA, "schema_version": 1, "vitedge_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "export": str(export_dir.resolve()), "data": str(data), "calib": str(calib) if calib else None,
        "batches": sorted(set(batches)), "gates": gates, "gates_not_checked": unchecked,
        "budget_minutes": budget_minutes,
        "knobs": [k for k in KNOBS if k in knobs],
        "device": asdict(device), "sensitivity": sensitivity,
        "candidates": [asdict(c) for c in candidates],
        "chosen": chosen.name if chosen else None, "why": _why(chosen, built),
        "best_dir": str(out / BEST_DIR) if chosen else None, "report_dir": str(out / REPORT_DIR),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if chosen is not None:
        _write_best(out, chosen, result)
    elif (out / BEST_DIR / MANIFEST_NAME).is_file() and "tune" in Manifest.load(out / BEST_DIR):
        remove_own(out / BEST_DIR)  # a choice of an earlier run that no longer holds
    write_json_atomic(out / TUNE_FILE, result)
    _write_html(report, result, out / REPORT_DIR)
    if chosen is None:
        where = out / REPORT_DIR / "report.html"
        if any(c.result.get("unreliable") for c in built):
            raise GateUnreliable(f"no candidate passes the gates ({', '.join(gates)}) and some were undecided on "
                                 f"speed (a busy machine?): run tune again on a quiet one; see {where}", result)
        raise GateFailed(f"no candidate passes the gates ({', '.join(gates)}); see {where}", result)
    return result


def _check_inputs(export_dir: Path, out: Path, data: str | Path, calib: str | Path | None,
                  targets: Sequence[str] | None, precisions: Sequence[str] | None, gates: Sequence[str],
                  batches: Sequence[int], budget_minutes: float | None,
                  force: bool, trust_source: bool) -> tuple[Manifest, list[str], bool, list[str]]:
    """Every flag problem before any work: (export manifest, targets, labelled data?, gates)."""
    from vitedge.backends import all_backends
    from vitedge.data import open_image_set
    from vitedge.limits import check_bench_memory

    export = _check_export(export_dir)
    from vitedge.backends.pytorch import check_source_trusted

    check_source_trusted(export, export_dir, trust_source)
    if out.resolve() == export_dir.resolve() or export_dir.resolve() in out.resolve().parents:
        raise BadInput(f"-o {out} is inside the export dir; give a new directory")
    for flag, path in (("--data", data), ("--calib", calib)):
        if path is not None and not Path(path).exists():
            raise BadInput(f"{flag} {path} does not exist")
    known = [name for name in all_backends() if name != "pytorch"]
    targets = list(targets or known)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise BadInput(f"--targets: unknown target(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    offered = sorted({p for t in targets for p in all_backends()[t].precisions})
    if precisions and (bad := [p for p in precisions if p not in offered]):
        raise BadInput(f"--precisions: {', '.join(bad)} is not offered by {', '.join(targets)}; "
                       f"choose from {', '.join(offered)}")
    if not batches or min(batches) < 1:
        raise BadInput(f"--batch takes positive integers, got {list(batches)}")
    if budget_minutes is not None and budget_minutes <= 0:
        raise BadInput(f"--budget-minutes must be positive, got {budget_minutes}")
    image_set = open_image_set(data, export.labels)
    labelled = image_set.labelled
    check_bench_memory(export, len(image_set), batches, runners=1 + len(targets))  # at least one candidate each
    check_output_dir(out, "run", force=force, inputs=[export_dir, data, *([calib] if calib else [])])
    return export, targets, labelled, list(gates) or list(DEFAULT_GATES_LABELLED if labelled
                                                         else DEFAULT_GATES_UNLABELLED)


def _check_export(export_dir: Path) -> Manifest:
    if not (export_dir / MANIFEST_NAME).is_file():
        raise BadInput(f"{export_dir} is not an export dir (no {MANIFEST_NAME}): run "
                       f"`vitedge export MODEL -o {export_dir}` first")
    manifest = Manifest.load(export_dir)
    if manifest.get("kind") != "export":
        raise BadInput(f"{export_dir} is a compiled artifact, not an export dir: tune starts from "
                       "the directory `vitedge export` wrote")
    manifest.verify_files(export_dir)
    source = manifest.get("source", {})
    if source.get("source") in ("timm", "torchvision") and not source.get("weights") \
            and not source.get("weights_origin") and source.get("random_init_seed") is None:
        raise BadInput(f"{export_dir} was exported from an unseeded random init of {source.get('spec')}: the PyTorch "
                       "reference cannot rebuild those weights, so no drift or accuracy can be measured; export "
                       "with --weights (e.g. a seeded random init saved as safetensors)")
    return manifest


def _check_named_gates(parsed: list[Any], candidates: list[Candidate], batches: list[int], labelled: bool) -> None:
    """Gates that name a candidate must name a planned target-precision; checked before any work."""
    from vitedge.validate import gates as gatelib

    names = [c.name for c in candidates if c.status == "planned"]
    subjects = gatelib.Subjects(names, {}, sorted(set(batches)), labelled)
    gatelib.plan(parsed, subjects)


def _sensitivity(export_dir: Path, export: Manifest, out: Path, calib: str | Path | None, data: str | Path,
                 calib_hash: str | None, state: Any, deadline: float) -> list[dict[str, Any]]:
    """Per-block sensitivity, cached in OUT/sensitivity.json under a hash of its inputs."""
    from vitedge.data import load_tensors, open_image_set
    from vitedge.fsutil import tree_hash

    inputs = sha256_json({"export": export.get("files"), "calib": calib_hash, "data": tree_hash(data),
                          "images": [SENSITIVITY_IMAGES, ACT_RANGE_IMAGES], "vitedge": __version__})
    path = out / SENSITIVITY_FILE
    if state.unchanged("sensitivity", inputs, path.is_file):
        return json.loads(path.read_text())
    if time.perf_counter() > deadline:
        return []
    start = time.perf_counter()
    pre = export.preprocessing
    calib_x = load_tensors(open_image_set(calib, export.labels).subset(ACT_RANGE_IMAGES, 0), pre,
                           description="calibration images").x
    val_x = load_tensors(open_image_set(data, export.labels).subset(SENSITIVITY_IMAGES, 0), pre,
                         description="validation images").x
    result = block_sensitivity(export_dir, calib_x, val_x)
    write_json_atomic(path, result)
    state.record("sensitivity", inputs, time.perf_counter() - start)
    if result:
        ui.info("most INT8-sensitive blocks: " + ", ".join(f"{r['block']} (KL {r['kl_mean']:.2g})"
                                                            for r in result[:3]))
    return result


def _build(candidate: Candidate, export_dir: Path, export: Manifest, out: Path, calib: str | Path | None,
           calib_hash: str | None, state: Any) -> None:
    """Compile CANDIDATE into OUT/candidates/NAME unless an identical build is there."""
    from vitedge.compile import compile_artifact

    artifact = out / CANDIDATES_DIR / candidate.name
    calibrated = candidate.precision == "int8"
    kwargs = {"target": candidate.target, "precision": candidate.precision,
              "calib": str(calib) if calibrated and calib else None, "seed": 0,
              "extra": copy.deepcopy(candidate.extra)}
    inputs = sha256_json({"export_files": export.get("files"), **kwargs, "calib": calib_hash if calibrated else None,
                          "vitedge": __version__})
    step = f"candidate {candidate.name}"
    if state.unchanged(step, inputs, lambda: _intact(artifact)):
        ui.info("  unchanged, reused")
    else:
        start = time.perf_counter()
        try:
            compile_artifact(export_dir, artifact, **kwargs)
        except GateFailed:
            raise
        except VitedgeError as exc:  # this candidate cannot be built here: say why, go on
            candidate.status, candidate.reason = "failed", str(exc).splitlines()[0]
            ui.warn(f"{candidate.name} was not built: {candidate.reason}")
            return
        state.record(step, inputs, time.perf_counter() - start)
    manifest = Manifest.load(artifact)
    candidate.precision_run = manifest.get("precision_run") or candidate.precision


def _intact(artifact: Path) -> bool:
    """Whether ARTIFACT holds a manifest whose files all match their hashes."""
    try:
        Manifest.load(artifact).verify_files(artifact)
    except VitedgeError:
        return False
    return True


def _bench(built: list[Candidate], export_dir: Path, out: Path, data: str | Path, batches: Sequence[int],
           gates: list[str], threads: int | None, max_images: int | None, warmup: int, iters: int,
           device: str, trust_source: bool) -> dict[str, Any]:
    """One interleaved bench of every built candidate against the PyTorch reference."""
    from vitedge.validate.bench import run_bench

    report_dir = out / REPORT_DIR
    ui.info(f"bench: {len(built)} candidate(s) and the PyTorch FP32 reference, interleaved")
    try:
        return run_bench([out / CANDIDATES_DIR / c.name for c in built], reference=export_dir, data=data,
                         batches=batches, gates=gates, report_dir=report_dir, device=device,
                         max_images=max_images, warmup=warmup, iters=iters, threads=threads,
                         trust_source=trust_source)
    except GateError as exc:  # some candidates fail or are undecided: the report has every result
        return exc.result


def read_outcomes(report: dict[str, Any], candidates: list[Candidate]) -> None:
    """Copy each candidate's numbers and gate results from the bench report (the one place
    that reads the report's layout)."""
    entries = {Path(a["source"]).name: a for a in report["artifacts"]}
    for candidate in candidates:
        entry = entries[candidate.name]
        checks = [g for g in report["gates"] if g["artifact"] == entry["name"]]
        failed = [g["message"] for g in checks if g.get("outcome", "pass" if g["passed"] else "fail") == "fail"]
        unreliable = [g["message"] for g in checks if g.get("outcome") == "unreliable"]
        rows = [r for r in entry["latency"] if r["measured"]]
        drift = entry.get("drift", {})
        candidate.status = "benched"
        run = entry.get("runtime", {}).get("precision_run") or candidate.precision_run
        candidate.precision_run = f"int8, float parts {run}" if candidate.precision == "int8" and run != "int8" else run
        candidate.result = {
            "passed": not failed and not unreliable, "failed_gates": failed, "unreliable": unreliable,
            "p50_ms": {str(r["batch"]): r["p50_ms"] for r in rows},
            "reference_p50_ms": {str(r["batch"]): r["p50_ms"] for r in report["reference"]["latency"]
                                 if r["measured"]},
            "speedup_p50": {str(r["batch"]): r.get("speedup_p50") for r in rows},
            "throughput": {str(r["batch"]): r.get("throughput") for r in rows},
            "acc_drop": drift.get("acc_drop"), "top1_agreement": drift.get("top1_agreement"),
            "size_mb": entry.get("size_mb"),
        }
        candidate.reason = ("passes every gate" if not failed and not unreliable
                            else f"fails {len(failed)} gate check(s): {failed[0]}" if failed
                            else f"{len(unreliable)} speed check(s) undecided (unreliable): {unreliable[0]}")


def split_gates(gates: list[str], parsed: list[Any], candidates: list[Candidate],
                ) -> tuple[list[str], list[dict[str, Any]]]:
    """The gates bench can check, and those naming a candidate that was not built (budget spent,
    build failed, a skipped duplicate), each with why and the built candidates it was about."""
    from vitedge.validate.gates import REFERENCE, Operand

    by_name = {c.name: c for c in candidates}
    checkable, unchecked = [], []
    for text, gate in zip(gates, parsed, strict=True):
        operands = [o for o in (gate.left, gate.right) if isinstance(o, Operand) and o.subject is not None]
        missing = [o.subject for o in operands if o.subject not in (REFERENCE, "pytorch")
                   and (by_name.get(o.subject) is None or by_name[o.subject].status != "planned")]
        if not missing:
            checkable.append(text)
            continue
        reason = "; ".join(f"{name} was not benched ({by_name[name].status}: {by_name[name].reason})"
                           if name in by_name else f"{name} was not benched" for name in missing)
        about = [o.subject for o in operands if o.subject not in missing and o.subject not in (REFERENCE, "pytorch")]
        unchecked.append({"gate": text, "reason": reason, "blocks": about})
    return checkable, unchecked


def fail_uncheckable(unchecked: list[dict[str, Any]], built: list[Candidate]) -> None:
    """A built candidate whose gate compares it with one that was not built cannot pass that gate."""
    for entry in unchecked:
        for candidate in built:
            if candidate.name in entry["blocks"]:
                message = f"{entry['gate']}: not checked, {entry['reason']}"
                candidate.result["passed"] = False
                candidate.result.setdefault("failed_gates", []).append(message)
                candidate.reason = f"cannot pass gate {message}"


def score(candidate: Candidate | dict[str, Any]) -> float:
    """Geometric mean over the batch sizes of the p50 speedup over the reference (same run)."""
    result = candidate.result if isinstance(candidate, Candidate) else candidate.get("result", {})
    speedups = [v for v in result.get("speedup_p50", {}).values() if v]
    return math.exp(sum(math.log(v) for v in speedups) / len(speedups)) if speedups else 0.0


def choose(candidates: list[Candidate]) -> Candidate | None:
    """The fastest candidate that passes every gate (ties: the smaller artifact)."""
    passing = [c for c in candidates if c.status == "benched" and c.result.get("passed")]
    if not passing:
        return None
    return max(passing, key=lambda c: (score(c), -(c.result.get("size_mb") or 0.0)))


def _why(chosen: Candidate | None, built: list[Candidate]) -> str:
    if chosen is None:
        return "no candidate passes every gate"
    passing = sorted((c for c in built if c.result.get("passed")), key=score, reverse=True)
    faster = [c for c in built if score(c) > score(chosen) and not c.result.get("passed")]
    text = (f"{chosen.name} is the fastest of {len(passing)} candidate(s) that pass every gate: "
            f"{score(chosen):.2f}x the PyTorch FP32 p50 (geometric mean over batches)")
    if len(passing) > 1:
        text += f"; next {passing[1].name} at {score(passing[1]):.2f}x"
    if faster:
        text += "; faster but failing: " + ", ".join(f"{c.name} ({score(c):.2f}x)" for c in faster)
    return text


def _write_best(out: Path, chosen: Candidate, result: dict[str, Any]) -> None:
    """OUT/best/: a copy of the chosen artifact whose manifest says why it was chosen."""
    source = out / CANDIDATES_DIR / chosen.name
    with atomic_dir(out / BEST_DIR, kind="compiled", force=True) as tmp:  # keeps files vitedge did not write
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        manifest = Manifest.load(tmp)
        manifest["tune"] = {"chosen": chosen.name, "why": result["why"], "gates": result["gates"],
                            "created": result["created"], **{k: chosen.result[k] for k in (
                                "p50_ms", "speedup_p50", "acc_drop", "top1_agreement")}}
        manifest.save(tmp)


def _write_html(report: dict[str, Any], result: dict[str, Any], report_dir: Path) -> None:
    """report.html again, with the tune section (Pareto plot per batch) after the summary."""
    from vitedge.validate.pareto import tune_section
    from vitedge.validate.report_html import render_html

    write_text_atomic(report_dir / "report.html", render_html(report, sections=[tune_section(report, result)]))
