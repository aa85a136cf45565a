"""The bench report assembled from what `bench` measured: one entry per subject (latency rows,
speedups and their intervals, drift, per-class deltas, worst disagreements, manifest summary),
the run's settings, data and environment, the notes a reader needs, the lookups gates read the
report through, and the summary `record=True` writes into each artifact's manifest.

`bench.py` opens the runners and measures; this module only turns the measurements into data.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge import ui
from vitedge._version import __version__
from vitedge.backends.base import Runner
from vitedge.data import Tensors
from vitedge.errors import BadInput
from vitedge.fsutil import write_json_atomic
from vitedge.manifest import MANIFEST_NAME, RANDOM_WEIGHTS_NOTE, Manifest
from vitedge.metrics import compare_logits, per_class_drift, worst_disagreements
from vitedge.validate import gates as gatelib
from vitedge.validate.latency import OPENMP_SPINCOUNT, SETTLE_MS, SPEEDUP_KEYS, openmp_setting, ratio_interval, speedups

REPORT_SCHEMA = "vitedge.bench/report"
REPORT_SCHEMA_VERSION = 1
REFERENCE_NOTE = ("PyTorch eager FP32 (TF32 disabled on GPUs), rebuilt from the export's model spec "
                  "and weights; every speedup is a ratio of latencies measured in this run.")


@dataclass
class Subject:
    """The reference or one candidate: where it came from, its open runner and its logits."""

    name: str
    role: str  # "reference" | "candidate" | "yardstick"
    source: str  # artifact dir or MODEL spec
    backend: str
    target: str
    precision: str
    runner: Runner
    predict: Callable[[np.ndarray], np.ndarray]
    size_bytes: int
    load_s: float
    rss_bytes: int = 0
    gpu_bytes: int | None = None  # device memory taken by load + first inference (GPU runners only)
    first_infer_ms: float = float("nan")
    fixed_batch: int | None = None
    labels: list[str] | None = None
    aliases: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    logits: np.ndarray | None = None
    latency: dict[int, dict[str, Any]] = field(default_factory=dict)

    def close(self) -> None:
        self.runner.close()


def _runtime_info(runner: Runner) -> dict[str, Any]:
    """What the runner reports about itself (threads, streams, precision run...), JSON-safe."""
    info = json.loads(json.dumps(runner.info, default=str))
    device = str(info.get("device", "cpu"))
    info.setdefault("threads", None)
    info.setdefault("streams", None)
    info["timer"] = "cuda-events" if device.startswith("cuda") else "perf_counter"
    return info


def _subject_entry(subject: Subject, reference: Subject, batches: list[int]) -> dict[str, Any]:
    latency = []
    for batch in batches:
        if batch not in subject.latency:
            latency.append({"batch": batch, "measured": False})
            continue
        entry = {"batch": batch, "measured": True, **subject.latency[batch]}
        if subject is not reference and batch in reference.latency:
            entry.update(speedups(reference.latency[batch], subject.latency[batch]))
            entry["speedup_p50_ci"] = list(ratio_interval(reference.latency[batch]["samples_ms"],
                                                          subject.latency[batch]["samples_ms"]))
        latency.append(entry)
    return {
        "name": subject.name, "role": subject.role, "source": subject.source, "backend": subject.backend,
        "target": subject.target, "precision": subject.precision, "aliases": subject.aliases,
        "fixed_batch": subject.fixed_batch, "runtime": _runtime_info(subject.runner),
        "size_mb": subject.size_bytes / 1e6, "load_s": subject.load_s, "rss_mb": subject.rss_bytes / 1e6,
        "gpu_mb": None if subject.gpu_bytes is None else subject.gpu_bytes / 1e6,
        "first_infer_ms": subject.first_infer_ms, "latency": latency,
    }


def assemble(subjects: list[Subject], tensors: Tensors, source: str, data_classes: list[str] | None,
              batches: list[int], device: str, threads: int, max_images: int | None, warmup: int,
              iters: int, worst: int, seconds: float) -> dict[str, Any]:
    from vitedge.envinfo import hardware, tool_versions

    reference = subjects[0]
    assert reference.logits is not None
    num_classes = reference.logits.shape[1]
    labels = tensors.labels
    class_names = _class_names(reference, num_classes)
    names = [_display_name(n, source) for n in tensors.names]
    ref_entry = _subject_entry(reference, reference, batches)
    ref_entry["note"] = REFERENCE_NOTE
    if labels is not None:
        own = compare_logits(reference.logits, reference.logits, labels)
        ref_entry["accuracy"] = {"top1_acc": own["top1_acc"], "top5_acc": own["top5_acc"]}
    artifacts = []
    yardsticks = [s for s in subjects[1:] if s.role == "yardstick"]
    for subject in subjects[1:]:
        assert subject.logits is not None
        if subject.logits.shape != reference.logits.shape:
            raise BadInput(f"{subject.source}: logits of shape {list(subject.logits.shape)} vs the "
                           f"reference's {list(reference.logits.shape)}; is it the same model?")
        entry = _subject_entry(subject, reference, batches)
        drift = compare_logits(reference.logits, subject.logits, labels)
        if subject.role == "yardstick":
            continue
        if labels is not None:
            drift["top5_acc_drop"] = drift["ref_top5_acc"] - drift["top5_acc"]
        entry["drift"] = drift
        entry["per_class"] = per_class_drift(reference.logits, subject.logits, labels, class_names)
        entry["worst"] = worst_disagreements(reference.logits, subject.logits, names, labels, class_names,
                                             worst)
        entry["manifest"] = _manifest_summary(subject.manifest)
        if yardsticks:
            entry["vs_yardsticks"] = _vs_yardsticks(subject, yardsticks, batches)
        artifacts.append(entry)
    yardstick_entries = []
    for subject in yardsticks:
        entry = _subject_entry(subject, reference, batches)
        entry["note"] = subject.source
        entry["drift"] = {k: v for k, v in compare_logits(reference.logits, subject.logits, labels).items()
                          if k in ("top1_agreement", "cosine_mean", "cosine_min", "rel_l2", "acc_delta")}
        yardstick_entries.append(entry)
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "vitedge_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "passed",
        "settings": {"batches": batches, "device": device, "threads": threads, "warmup": warmup,
                     "iters": iters, "max_images": max_images, "worst": worst,
                     "order": "interleaved-rotating", "settle_ms": SETTLE_MS, "openmp": openmp_setting(),
                     "seconds": seconds},
        "data": {"source": source, "samples": int(len(tensors.x)), "labelled": labels is not None,
                 "skipped": len(tensors.skipped), "content_hash": tensors.content_hash,
                 "class_names": data_classes, "num_classes": int(num_classes)},
        "class_names": class_names,
        "environment": {"tools": tool_versions(), "hardware": hardware()},
        "reference": ref_entry,
        "artifacts": artifacts,
        **({"yardsticks": yardstick_entries} if yardstick_entries else {}),
        "gates": [],
    }


def _vs_yardsticks(subject: Subject, yardsticks: list[Subject], batches: list[int]) -> list[dict[str, Any]]:
    """SUBJECT's speed as a ratio to each yardstick at each batch (yardstick p50 / this p50: > 1 is
    faster than the yardstick), with the paired-bootstrap 95% interval."""
    rows = []
    for yardstick in yardsticks:
        for batch in batches:
            mine, theirs = subject.latency.get(batch), yardstick.latency.get(batch)
            if not mine or not theirs:
                continue
            rows.append({"yardstick": yardstick.name, "batch": batch,
                         "ratio_p50": theirs["p50_ms"] / mine["p50_ms"],
                         "ratio_p50_ci": list(ratio_interval(theirs["samples_ms"], mine["samples_ms"]))})
    return rows


def _class_names(reference: Subject, num_classes: int) -> list[str]:
    if reference.labels and len(reference.labels) == num_classes:
        return [str(v) for v in reference.labels]
    return [str(i) for i in range(num_classes)]


def _display_name(path: str, source: str) -> str:
    """A file name relative to the data source, as people browse it."""
    try:
        return Path(path).relative_to(source).as_posix()
    except ValueError:
        return path


def _manifest_summary(manifest: Manifest | None) -> dict[str, Any]:
    if manifest is None:
        return {}
    keep = ("kind", "created", "vitedge_version", "calibration", "precision_summary", "runtime")
    summary = {k: manifest[k] for k in keep if k in manifest}
    summary["source"] = {k: manifest.get("source", {}).get(k)
                         for k in ("spec", "weights_sha256", "weights_origin", "random_init_seed", "params_sha256")}
    return summary


def _entries(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every subject a gate can name: the reference, the artifacts and the yardsticks."""
    entries = {report["reference"]["name"]: report["reference"]}
    entries.update({a["name"]: a for a in [*report["artifacts"], *report.get("yardsticks", [])]})
    return entries


def lookup(report: dict[str, Any]) -> gatelib.Lookup:
    """A metric value from the assembled report, for gates (None when not measured)."""
    entries = _entries(report)

    def lookup(operand: gatelib.Operand) -> float | None:
        entry = entries[operand.subject or ""]
        group = gatelib.METRICS[operand.metric].group
        if group in gatelib.PER_BATCH:
            row = next((r for r in entry["latency"] if r["batch"] == operand.batch), None)
            return row.get(operand.metric) if row and row["measured"] else None
        if group == "resource":
            return entry[operand.metric]
        source = entry.get("accuracy", {}) if entry["role"] == "reference" else entry.get("drift", {})
        return source.get(operand.metric)

    return lookup


def intervals(report: dict[str, Any]) -> gatelib.IntervalLookup:
    """Bootstrap confidence intervals of speed checks, from the paired samples in the report."""
    entries = _entries(report)

    def samples(operand: gatelib.Operand) -> list[float] | None:
        row = next((r for r in entries[operand.subject or ""]["latency"] if r["batch"] == operand.batch), None)
        return row["samples_ms"] if row and row["measured"] else None

    def interval(check: gatelib.Check) -> tuple[float, float] | None:
        left, right = check.left, check.right
        mine, ref = samples(left), samples(gatelib.Operand(left.metric, left.batch, gatelib.REFERENCE))
        if isinstance(right, gatelib.Operand):  # ratio left / right, paired only within one batch's rounds
            theirs = samples(right)
            if mine is None or theirs is None or left.batch != right.batch or left.metric != right.metric:
                return None
            if left.metric in SPEEDUP_KEYS:  # (ref / left) / (ref / right) = right / left
                return ratio_interval(theirs, mine, SPEEDUP_KEYS[left.metric])
            return ratio_interval(mine, theirs, left.metric) if left.metric in gatelib.BOOTSTRAPPED else None
        if mine is None:
            return None
        if left.metric in SPEEDUP_KEYS:
            return ratio_interval(ref, mine, SPEEDUP_KEYS[left.metric]) if ref is not None else None
        if left.metric == "throughput":
            low, high = ratio_interval(mine, None, "mean_ms")
            return left.batch * 1e3 / high, left.batch * 1e3 / low
        return ratio_interval(mine, None, left.metric) if left.metric in gatelib.BOOTSTRAPPED else None

    return interval


def outside_load_reason(load: dict[str, Any]) -> str | None:
    if not load["detected"]:
        return None
    return (f"other processes used {load['share']:.0%} of the CPU while bench timed "
            f"(above {load['limit']:.0%}); re-run on a quiet machine")


def unmet_conditions(report: dict[str, Any]) -> dict[str, str]:
    """Gate conditions that do not hold on this machine, with the reason shown for skipped checks."""
    unmet = {}
    if not report["environment"]["hardware"]["cpu"].get("int8_vnni"):
        unmet["vnni"] = gatelib.CONDITIONS["vnni"]
    if report["settings"]["device"] != "cuda":
        unmet["cuda"] = gatelib.CONDITIONS["cuda"]
    if not {"AMX-INT8", "AMX-BF16"} <= set(report["environment"]["hardware"]["cpu"].get("isa") or []):
        unmet["amx"] = gatelib.CONDITIONS["amx"]
    return unmet


def notes(report: dict[str, Any], subjects: list[Subject], ref_manifest: Manifest | None,
           ref_loaded: Any) -> list[dict[str, str]]:
    """Platform and provenance facts a reader needs to judge the numbers, in every report format."""
    notes = []
    sources = [m.get("source", {}) for m in [ref_manifest, *(s.manifest for s in subjects)] if m is not None]
    if ref_loaded is not None:
        sources.append({"weights_origin": ref_loaded.weights_origin, "random_init_seed": ref_loaded.random_init_seed})
    seeds = sorted({str(src.get("random_init_seed")) for src in sources if src.get("weights_origin") == "random-init"})
    if seeds:
        notes.append({"kind": "random-weights", "text": f"{RANDOM_WEIGHTS_NOTE} (the model has random weights, "
                      f"--random-init {', '.join(seeds)}): use this report for speed and shapes only"})
    cpu = report["environment"]["hardware"]["cpu"]
    on_cpu = [a for a in report["artifacts"] if a["runtime"].get("timer") != "cuda-events"]
    int8 = [a["name"] for a in on_cpu if a["precision"] == "int8"]
    if int8 and cpu.get("int8_vnni") is False:
        notes.append({"kind": "no-int8-instructions", "text": f"this CPU ({cpu['model']}) has no VNNI/AMX INT8 "
                      f"instructions: {', '.join(int8)} cannot be expected to be faster than FP32 here"})
    openvino = [a["name"] for a in report["artifacts"] if a["backend"] == "openvino"]
    if openvino and cpu.get("bf16_native"):
        runs = ", ".join(f"{a['name']} {a['runtime'].get('precision_run')}" for a in report["artifacts"]
                         if a["backend"] == "openvino")
        notes.append({"kind": "bf16-default", "text": "this CPU has native bf16, which OpenVINO uses by default "
                      f"even for FP32 models; vitedge pins the precision its float layers run in ({runs})"})
    if report["settings"]["device"] == "cuda" and on_cpu:
        notes.append({"kind": "gpu-vs-cpu", "text": f"{', '.join(a['name'] for a in on_cpu)} ran on the CPU "
                      "and the reference on the GPU: their speedups compare a CPU runtime with a GPU"})
    reason = outside_load_reason(report["load"])
    if reason:
        notes.append({"kind": "outside-load", "text": reason.replace("; re-run on a quiet machine", "") +
                      ": latency figures are inflated and speed verdicts unreliable"})
    if report["reference"]["runtime"].get("spinning") and report["settings"]["device"] == "cpu":
        notes.append({"kind": "spinning", "text": "PyTorch's OpenMP threads may spin-wait for tens of ms after "
                      f"each run (torch was loaded before bench could set GOMP_SPINCOUNT={OPENMP_SPINCOUNT}), "
                      f"taking CPU from the runner timed next; set GOMP_SPINCOUNT={OPENMP_SPINCOUNT} in the "
                      "environment"})
    budget = report["settings"]["threads"]
    other = [f"{e['name']} {e['runtime']['threads']}" for e in [report["reference"], *on_cpu]
             if isinstance(e["runtime"].get("threads"), int) and e["runtime"]["threads"] != budget]
    if other:
        notes.append({"kind": "threads", "text": f"not every runner used the {budget}-thread budget: "
                      f"{', '.join(other)}"})
    return notes


def record_validation(subject: Subject, report: dict[str, Any]) -> None:
    """Write this run's headline numbers into the artifact's manifest (`validation`)."""
    entry = next(a for a in report["artifacts"] if a["name"] == subject.name)
    drift = entry["drift"]
    summary = {
        "date": report["created"], "reference": report["reference"]["source"],
        "data": {k: report["data"][k] for k in ("source", "samples", "content_hash")},
        **{k: drift[k] for k in ("top1_agreement", "kl_mean", "acc_delta") if k in drift},
        "p50_ms": {str(r["batch"]): r["p50_ms"] for r in entry["latency"] if r["measured"]},
        "speedup_p50": {str(r["batch"]): r.get("speedup_p50") for r in entry["latency"] if r["measured"]},
        "gates_passed": all(g["outcome"] in ("pass", "skipped") for g in report["gates"]
                            if g["artifact"] == subject.name),
        "gates_status": gatelib.status_of([g["outcome"] for g in report["gates"] if g["artifact"] == subject.name]),
    }
    path = Path(subject.source) / MANIFEST_NAME
    try:
        write_json_atomic(path, {**Manifest.load(subject.source), "validation": summary})
    except OSError as exc:
        ui.warn(f"could not record validation results in {path}: {exc}")
