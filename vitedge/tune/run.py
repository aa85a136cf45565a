"""`vitedge tune`'s pipeline: every input checked before any work, OUT locked, candidates
planned, sensitivity measured (cached), candidates built (cached like recipe steps), one
interleaved bench, the choice written to OUT/tune.json and OUT/best/."""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vitedge import ui
from vitedge._version import __version__
from vitedge.errors import BadInput, EnvironmentProblem, GateError, GateFailed, GateUnreliable, VitedgeError
from vitedge.fsutil import (
    check_output_dir,
    output_lock,
    remove_own,
    sha256_json,
    write_json_atomic,
)
from vitedge.manifest import MANIFEST_NAME, Manifest
from vitedge.tune.candidates import (
    KNOBS,
    PLANNED_VARIANTS,
    Candidate,
    DeviceFacts,
    keep_float_variants,
    knob_set,
    plan_candidates,
    repeats_its_base,
    repeats_its_base_at_runtime,
    skip_duplicates,
)
from vitedge.tune.choice import (
    choose,
    fail_uncheckable,
    read_outcomes,
    split_gates,
    vs_yardsticks,
    why_chosen,
    write_best,
    write_html,
)
from vitedge.tune.files import BEST_DIR, CANDIDATES_DIR, REPORT_DIR, TUNE_FILE, TUNE_SCHEMA
from vitedge.tune.sensitivity import cached_sensitivity

# Gates when none are given: the accuracy a deployment may lose (labelled data) or the
# fraction of top-1 decisions that may change (unlabelled data).
DEFAULT_GATES_LABELLED = ("acc_drop<=0.01",)
DEFAULT_GATES_UNLABELLED = ("top1_agreement>=0.99",)


def tune(export_dir: str | Path, out_dir: str | Path, *, data: str | Path, calib: str | Path | None = None,
         targets: Sequence[str] | None = None, precisions: Sequence[str] | None = None,
         gates: Sequence[str] = (), batches: Sequence[int] = (1, 8), budget_minutes: float | None = None,
         threads: int | None = None, max_images: int | None = None, warmup: int = 5, iters: int = 30,
         knobs: bool | Sequence[str] = True, device_facts: DeviceFacts | None = None, force: bool = False,
         trust_source: bool = False, yardsticks: Sequence[str] | None = None) -> dict[str, Any]:
    """Build, bench and choose; returns what OUT/tune.json holds.

    KNOBS: True for every knob in KNOBS, False for none, or the names of those to try.
    YARDSTICKS: what a user gets without vitedge, timed in the same bench and stated as the chosen
    artifact's ratio to each (None: `yardsticks.default_names`, [] for none).

    GateFailed when no candidate passes; GateUnreliable (exit 5) when none passes but some
    were only undecided on speed (a busy machine): rerun on a quiet one. OUT is checked with
    the output-dir policy of a `vitedge run` dir (FORCE writes over anything else) and locked.
    TRUST_SOURCE: the export's model spec may run code when the reference is rebuilt (SECURITY.md).
    """
    from vitedge.validate.yardsticks import check_names

    export_dir, out = Path(export_dir), Path(out_dir)
    knob_names = knob_set(knobs)
    yardsticks = check_names(list(yardsticks)) if yardsticks is not None else None
    export, targets, labelled, gates = _check_inputs(export_dir, out, data, calib, targets, precisions, gates,
                                                     batches, budget_minutes, force, trust_source)
    with output_lock(out):
        return _tune(export_dir, out, export, targets, labelled, gates, data=data, calib=calib,
                     precisions=precisions, batches=batches, budget_minutes=budget_minutes, threads=threads,
                     max_images=max_images, warmup=warmup, iters=iters, knobs=knob_names,
                     device_facts=device_facts, trust_source=trust_source, yardsticks=yardsticks)



def _tune(export_dir: Path, out: Path, export: Manifest, targets: list[str], labelled: bool, gates: list[str], *,
          data: str | Path, calib: str | Path | None, precisions: Sequence[str] | None, batches: Sequence[int],
          budget_minutes: float | None, threads: int | None, max_images: int | None, warmup: int, iters: int,
          knobs: frozenset[str], device_facts: DeviceFacts | None, trust_source: bool,
          yardsticks: list[str] | None = None) -> dict[str, Any]:
    """tune() with every input checked and OUT locked."""
    from vitedge.fsutil import StepState, tree_hash
    from vitedge.validate import gates as gatelib

    started = time.perf_counter()
    parsed = [gatelib.parse_gate(g) for g in gates]
    device = device_facts or DeviceFacts.here()
    candidates = plan_candidates(targets, precisions, calib=calib is not None, device=device)
    bases = list(candidates)
    for knob, variants in PLANNED_VARIANTS.items():
        if knob in knobs:
            candidates += variants(bases, batches, device)
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
        sensitivity = cached_sensitivity(export_dir, export, out, calib, data, calib_hash, state, deadline)
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
    bench_device = "cuda" if any(c.target == "tensorrt" for c in built) else "cpu"
    if yardsticks is None:
        from vitedge.validate.yardsticks import default_names

        yardsticks = default_names(bench_device)
    report = _bench(built, export_dir, out, data, batches, checkable, threads, max_images, warmup, iters,
                    bench_device, trust_source, yardsticks)
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
        "chosen": chosen.name if chosen else None, "why": why_chosen(chosen, built),
        "yardsticks": yardsticks, "chosen_vs_yardsticks": vs_yardsticks(report, chosen),
        "best_dir": str(out / BEST_DIR) if chosen else None, "report_dir": str(out / REPORT_DIR),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if result["chosen_vs_yardsticks"]:
        result["why"] += "; against what a user gets without vitedge: " + ", ".join(
            f"{r['ratio_p50']:.2f}x {r['yardstick']} at b{r['batch']} [{r['ratio_p50_ci'][0]:.2f}, "
            f"{r['ratio_p50_ci'][1]:.2f}]" for r in result["chosen_vs_yardsticks"])
    if chosen is not None:
        write_best(out, chosen, result)
    elif (out / BEST_DIR / MANIFEST_NAME).is_file() and "tune" in Manifest.load(out / BEST_DIR):
        remove_own(out / BEST_DIR)  # a choice of an earlier run that no longer holds
    write_json_atomic(out / TUNE_FILE, result)
    write_html(report, result, out / REPORT_DIR)
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
           device: str, trust_source: bool, yardsticks: Sequence[str] = ()) -> dict[str, Any]:
    """One interleaved bench of every built candidate against the PyTorch reference (and the yardsticks)."""
    from vitedge.validate.bench import run_bench

    report_dir = out / REPORT_DIR
    ui.info(f"bench: {len(built)} candidate(s) and the PyTorch FP32 reference, interleaved")
    try:
        return run_bench([out / CANDIDATES_DIR / c.name for c in built], reference=export_dir, data=data,
                         batches=batches, gates=gates, report_dir=report_dir, device=device,
                         max_images=max_images, warmup=warmup, iters=iters, threads=threads,
                         trust_source=trust_source, yardsticks=yardsticks)
    except GateError as exc:  # some candidates fail or are undecided: the report has every result
        return exc.result
