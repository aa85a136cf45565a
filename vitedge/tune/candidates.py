"""Tune's candidates: the device facts that decide what makes sense here, target x precision
planned with the reason for each skip, the knob variants (INT8 keeping the most sensitive blocks
float, another SmoothQuant alpha, OpenVINO's throughput hint) and the rules that skip a variant
that would build or run exactly like another candidate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vitedge.errors import BadInput
from vitedge.fsutil import (
    sha256_json,
)
from vitedge.manifest import Manifest

# The alpha of the SmoothQuant variant. vitedge's default 0.5 splits an outlier channel's range
# evenly between activation and weight; 0.75 moves more of it into the weights, which are INT8
# per channel (the activations are per tensor). The SmoothQuant paper (arXiv:2211.10438) picks a
# larger alpha such as 0.75 for models with more significant outliers.
VARIANT_ALPHA = 0.75


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



def knob_set(knobs: bool | Sequence[str]) -> frozenset[str]:
    """The knobs to try: True -> all of KNOBS, False -> none, else the names given (checked)."""
    if isinstance(knobs, bool):
        return frozenset(KNOBS if knobs else ())
    unknown = [k for k in knobs if k not in KNOBS]
    if unknown:
        raise BadInput(f"--knobs: unknown knob(s) {', '.join(unknown)}; choose from {', '.join(KNOBS)} (or none)")
    return frozenset(knobs)



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


AMX_INT8 = {"attention": "float", "float_precision": "bf16", "shapes": "static", "activations": "symmetric"}
AMX_INT8_ASYM = {**AMX_INT8, "activations": "asymmetric"}


def amx_variants(candidates: list[Candidate], device: DeviceFacts) -> list[Candidate]:
    """OpenVINO candidates shaped for CPUs with AMX (docs/performance.md, "AMX"): INT8 GEMMs with
    attention and the float remainder in bf16 and static shapes, with symmetric activations (the
    fast INT8 GEMM kernel) and with NNCF's asymmetric ones (in case the coarser symmetric grid fails
    a gate), and bf16 with static shapes. Skipped with the reason on a CPU without AMX-INT8 / bf16
    arithmetic."""
    variants = []
    amx = "AMX-INT8" in device.isa and device.bf16
    for base in candidates:
        if base.target != "openvino" or base.status != "planned" or base.precision not in ("int8", "bf16"):
            continue
        if base.precision == "int8":
            planned = [
                Candidate(f"{base.name}-amx", base.target, "int8", {**base.extra, **AMX_INT8},
                          "INT8 GEMMs (AMX-INT8, symmetric activations) with attention, LayerNorm, GELU and "
                          "residuals in bf16 (AMX-BF16) and static shapes per batch size", base=base.name),
                Candidate(f"{base.name}-amx-asym", base.target, "int8", {**base.extra, **AMX_INT8_ASYM},
                          "as -amx with NNCF's asymmetric activations (zero points: finer grid, slower GEMMs)",
                          base=base.name)]
        else:
            planned = [Candidate(f"{base.name}-static", base.target, "bf16", {**base.extra, "shapes": "static"},
                                 "bf16 with static shapes per batch size", base=base.name)]
        for variant in planned:
            if not amx:
                variant.status, variant.reason = "skipped", (
                    "this CPU has no AMX-INT8 with bf16 arithmetic: the AMX variants are for Xeons with AMX")
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


# The knob variants planned before any build: knob name -> the variants of the planned base
# candidates (bases, benched batches). A new variant is one function above and one entry here;
# its name becomes a `--knobs` choice and a recipe `tune.knobs` value. keep_float is not here:
# its variants need the per-block sensitivity, measured after planning (tune.run).
PLANNED_VARIANTS: dict[str, Callable[[list[Candidate], Sequence[int], DeviceFacts], list[Candidate]]] = {
    "smoothquant_alpha": lambda bases, batches, device: smoothquant_alpha_variants(bases),
    "throughput": lambda bases, batches, device: throughput_variants(bases, batches),
    "amx": lambda bases, batches, device: amx_variants(bases, device),
}
# The knobs tune can try besides target x precision (tune(knobs=...), `--knobs`).
KNOBS = ("keep_float", *PLANNED_VARIANTS)
