"""`vitedge bench`: accuracy drift and latency of artifacts against the PyTorch FP32 reference.

One run measures everything on the same data and the same machine: logits of every
artifact and of the reference on the validation set (drift, accuracy, per-class deltas,
worst disagreements), then latency of all of them interleaved per batch size. Gates turn
the numbers into an exit code; `reports` writes JSON / JUnit / Markdown / HTML.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge import __version__, ui
from vitedge.backends.base import Runner, backend_for_target, get_backend
from vitedge.data import Tensors, load_tensors, open_image_set
from vitedge.errors import BadInput, EnvironmentProblem, GateFailed
from vitedge.fsutil import write_json_atomic
from vitedge.manifest import MANIFEST_NAME, Manifest
from vitedge.metrics import compare_logits, per_class_drift, worst_disagreements
from vitedge.preprocessing import Preprocessing
from vitedge.runtime import load
from vitedge.validate import gates as gatelib
from vitedge.validate.latency import measure_interleaved, process_rss_bytes, speedups, summarize

REPORT_SCHEMA = "vitedge.bench/report"
REPORT_SCHEMA_VERSION = 1
DRIFT_BATCH = 32
REPORT_SPACE_BYTES = 16 << 20  # room the four reports need, generously (HTML with plots is the largest)
DEVICES = ("cpu", "cuda")
# Runners timed in one process must not spin-wait between calls (it starves the next runner).
_RUNNER_OPTIONS = {"spinning": False}
REFERENCE_NOTE = ("PyTorch eager FP32 (TF32 disabled on GPUs), rebuilt from the export's model spec "
                  "and weights; every speedup is a ratio of latencies measured in this run.")


@dataclass
class Subject:
    """The reference or one candidate: where it came from, its open runner and its logits."""

    name: str
    role: str  # "reference" | "candidate"
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


def run_bench(artifacts: Sequence[str | Path], *, reference: str | Path, data: str | Path,
              batches: Sequence[int] = (1, 8), gates: Sequence[str] = (),
              report_dir: str | Path | None = None, device: str = "cpu", max_images: int | None = None,
              warmup: int = 5, iters: int = 30, threads: int | None = None, worst: int = 10,
              record: bool = False, trust_source: bool = False, force: bool = False) -> dict[str, Any]:
    """Bench ARTIFACTS against REFERENCE on DATA; write reports; raise GateFailed if a gate fails.

    Returns the report (the content of report.json). `record=True` also writes a short
    summary into each artifact's manifest (`validation`), as recipes do for their artifacts.
    `trust_source`: an export dir given as REFERENCE may rebuild a source that runs code
    (see SECURITY.md). REPORT_DIR is checked (and locked) before anything is loaded; `force`
    writes reports there even when it holds other files.
    """
    batches = _check_settings(artifacts, batches, device, max_images, warmup, iters, threads, worst)
    if report_dir is None:
        return _run_bench(artifacts, reference, data, batches, gates, None, device, max_images, warmup, iters,
                          threads, worst, record, trust_source)
    from vitedge.fsutil import check_free_space, check_output_dir, output_lock

    check_output_dir(report_dir, "report", force=force, inputs=[data, *artifacts])
    check_free_space(report_dir, REPORT_SPACE_BYTES, "the bench reports")
    with output_lock(report_dir):
        return _run_bench(artifacts, reference, data, batches, gates, report_dir, device, max_images, warmup,
                          iters, threads, worst, record, trust_source)


def _run_bench(artifacts: Sequence[str | Path], reference: str | Path, data: str | Path, batches: list[int],
               gates: Sequence[str], report_dir: str | Path | None, device: str, max_images: int | None,
               warmup: int, iters: int, threads: int | None, worst: int, record: bool,
               trust_source: bool) -> dict[str, Any]:
    """run_bench with its settings checked and its report dir locked."""
    threads = threads or os.cpu_count() or 1
    parsed_gates = [gatelib.parse_gate(text) for text in gates]
    manifests = {_artifact_name(Path(a), artifacts): (Path(a), Manifest.load(a)) for a in artifacts}
    ref_dir, ref_loaded = _reference_source(reference, trust_source)
    pre = ref_loaded.preprocessing if ref_loaded is not None else Manifest.load(ref_dir).preprocessing
    ref_labels = ref_loaded.labels if ref_loaded is not None else Manifest.load(ref_dir).labels
    for name, (path, manifest) in manifests.items():
        _check_same_preprocessing(name, path, manifest, pre)

    image_set = open_image_set(data, ref_labels).subset(max_images, seed=0)
    tensors = load_tensors(image_set, pre, description="validation images")
    subjects_view = gatelib.Subjects(list(manifests), _aliases(manifests), list(batches),
                                     tensors.labels is not None)
    checks = gatelib.plan(parsed_gates, subjects_view)

    started = time.perf_counter()
    subjects: list[Subject] = []
    try:
        probe = _latency_input(tensors.x, max(batches))
        subjects.append(_open_reference(reference, ref_dir, ref_loaded, device, threads, probe, trust_source))
        for name, (path, manifest) in manifests.items():
            subjects.append(_open_candidate(name, path, manifest, device, threads, probe,
                                            subjects_view.aliases))
        _drift_logits(subjects, tensors.x)
        _latency(subjects, tensors.x, batches, warmup, iters)
    finally:
        for subject in subjects:
            subject.close()

    report = _assemble(subjects, tensors, image_set.source, image_set.class_names, batches, device, threads,
                       max_images, warmup, iters, worst, time.perf_counter() - started)
    results = gatelib.evaluate(checks, _lookup(report))
    report["gates"] = [r.to_dict() for r in results]
    report["status"] = "passed" if all(r.passed for r in results) else "failed"

    from vitedge.validate import reports
    from vitedge.validate.report_files import write_reports

    if report_dir is not None:
        report["files"] = write_reports(report, Path(report_dir))
    if record:
        for subject in subjects[1:]:
            _record_validation(subject, report)
    if not ui.is_quiet():
        reports.print_summary(report)
    failed = [r for r in results if not r.passed]
    if failed:
        lines = "\n".join(f"  {r.line()}" for r in failed)
        raise GateFailed(f"{len(failed)} of {len(results)} gate checks failed:\n{lines}")
    return report


def _check_settings(artifacts: Sequence[str | Path], batches: Sequence[int], device: str,
                    max_images: int | None, warmup: int, iters: int, threads: int | None,
                    worst: int) -> list[int]:
    if not artifacts:
        raise BadInput("bench needs at least one artifact directory")
    if not batches or min(batches) < 1:
        raise BadInput(f"batch sizes must be positive integers, got {list(batches)}")
    if device not in DEVICES:
        raise BadInput(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise EnvironmentProblem("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu")
    for flag, value, low in (("--max-images", max_images, 1), ("--warmup", warmup, 0), ("--iters", iters, 1),
                             ("--threads", threads, 1), ("worst", worst, 0)):
        if value is not None and value < low:
            raise BadInput(f"{flag} must be >= {low}, got {value}")
    return sorted(set(batches))


def _artifact_name(path: Path, all_paths: Sequence[str | Path]) -> str:
    """The directory name; parent/name where two artifacts share a directory name."""
    names = [Path(p).resolve().name for p in all_paths]
    resolved = path.resolve()
    if names.count(resolved.name) > 1:
        return f"{resolved.parent.name}/{resolved.name}"
    return resolved.name


def _aliases(manifests: dict[str, tuple[Path, Manifest]]) -> dict[str, str]:
    """`target-precision` -> artifact name, for the aliases that are unique and no artifact's name."""
    counts: dict[str, list[str]] = {}
    for name, (_, manifest) in manifests.items():
        counts.setdefault(f"{manifest.get('target')}-{manifest.get('precision')}", []).append(name)
    return {alias: names[0] for alias, names in counts.items() if len(names) == 1 and alias not in manifests}


def _reference_source(reference: str | Path, trust_source: bool = False) -> tuple[Path | None, Any]:
    """(export dir, None) for an artifact dir, (None, LoadedModel) for a MODEL spec."""
    path = Path(reference)
    if path.is_dir():
        manifest = Manifest.load(path)
        if "source" not in manifest:
            raise BadInput(f"--reference {path}: its manifest records no source model; "
                           "give the export dir or a MODEL spec")
        from vitedge.backends.pytorch import check_source_trusted

        check_source_trusted(manifest, path, trust_source)
        return path, None
    from vitedge.models import load_model

    with ui.Step(f"loading the reference {reference}"):
        return None, load_model(str(reference))


def _check_same_preprocessing(name: str, path: Path, manifest: Manifest, pre: Preprocessing) -> None:
    theirs = manifest.preprocessing
    if theirs != pre:
        diff = [k for k, v in pre.to_dict().items() if k != "extra" and theirs.to_dict().get(k) != v]
        raise BadInput(f"{path}: its preprocessing differs from the reference's ({', '.join(diff)}); "
                       "drift is only meaningful on the same inputs: bench artifacts of the same export")


def _latency_input(x: np.ndarray, batch: int) -> np.ndarray:
    """A batch of real validation images (repeated when there are fewer than `batch`)."""
    return np.ascontiguousarray(np.take(x, np.arange(batch) % len(x), axis=0))


@dataclass
class _MemoryBefore:
    rss: int
    gpu_free: int | None  # free device memory (bytes), for runners on a CUDA device


def _gpu_free(device: str) -> int | None:
    """Free memory of DEVICE as the driver reports it (device-wide, so TensorRT's own
    allocations count as well as torch's); None for the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize(device)
    return int(torch.cuda.mem_get_info(torch.device(device))[0])


def _measure_load(backend: str, device: str, load: Callable[[], Any]) -> tuple[Any, float, _MemoryBefore]:
    """(what load() returns, its seconds, memory before it), after importing the backend's library
    (so that the first artifact of a backend is not charged the library's import time and memory)."""
    try:
        importlib.import_module(get_backend(backend).runtime_module or backend)
    except ImportError:
        pass  # load() reports the missing runtime with its install hint
    before = _MemoryBefore(process_rss_bytes(), _gpu_free(device))
    start = time.perf_counter()
    loaded = load()
    return loaded, time.perf_counter() - start, before


def _first_inference(subject: Subject, probe: np.ndarray, before: _MemoryBefore, device: str) -> None:
    """One untimed-by-harness run right after load: cold-start time and the memory it settles at."""
    batch = probe[: subject.fixed_batch] if subject.fixed_batch else probe
    subject.runner.infer(batch)
    subject.first_infer_ms = float(subject.runner.last_ms)
    subject.rss_bytes = max(process_rss_bytes() - before.rss, 0)
    if before.gpu_free is not None:
        subject.gpu_bytes = max(before.gpu_free - (_gpu_free(device) or 0), 0)


def _open_reference(reference: str | Path, ref_dir: Path | None, loaded: Any, device: str, threads: int,
                    probe: np.ndarray, trust_source: bool = False) -> Subject:
    from vitedge.backends.pytorch import TorchRunner

    with ui.Step("loading the PyTorch FP32 reference"):
        if ref_dir is not None:
            predictor, load_s, before = _measure_load("pytorch", device, lambda: load(
                ref_dir, backend="pytorch", device=device, threads=threads, trust_source=trust_source,
                **_RUNNER_OPTIONS))
            runner, predict, source = predictor.runner, predictor.predict, str(ref_dir)
            labels = predictor.labels
        else:
            runner, load_s, before = _measure_load("pytorch", device,
                                                   lambda: TorchRunner(loaded.module, device, threads))
            predict, source, labels = runner.infer, str(reference), loaded.labels
        module = runner.module
        size = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
        subject = Subject(gatelib.REFERENCE, "reference", source, "pytorch", "pytorch", "fp32", runner,
                          predict, int(size), load_s, labels=labels, aliases=["pytorch"])
        _first_inference(subject, probe, before, device)
    return subject


def _open_candidate(name: str, path: Path, manifest: Manifest, device: str, threads: int,
                    probe: np.ndarray, aliases: dict[str, str]) -> Subject:
    target = manifest.target
    impl = backend_for_target(target)
    backend = impl.name
    run_device = "cpu" if impl.device_kind == "cpu" else device  # CPU runtimes ignore --device
    with ui.Step(f"loading {name} ({backend})"):
        predictor, load_s, before = _measure_load(backend, run_device, lambda: load(
            path, device=run_device, threads=threads, **_RUNNER_OPTIONS))
        fixed = manifest.fixed_batch
        files = manifest.get("files") or {}
        size = sum((path / f).stat().st_size for f in files) if files else \
            sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
        subject = Subject(name, "candidate", str(path), backend, target, manifest.get("precision", "fp32"),
                          predictor.runner, predictor.predict, int(size), load_s, fixed_batch=fixed,
                          aliases=[a for a, n in aliases.items() if n == name], manifest=manifest)
        _first_inference(subject, probe, before, run_device)
    return subject


def _drift_logits(subjects: list[Subject], x: np.ndarray) -> None:
    """Logits of every subject on every validation image."""
    chunks = [(s, start) for s in subjects for start in range(0, len(x), s.fixed_batch or DRIFT_BATCH)]
    outputs: dict[str, list[np.ndarray]] = {s.name: [] for s in subjects}
    for subject, start in ui.track(chunks, "drift: logits on the validation set"):
        outputs[subject.name].append(subject.predict(x[start:start + (subject.fixed_batch or DRIFT_BATCH)]))
    for subject in subjects:
        subject.logits = np.concatenate(outputs[subject.name]).astype(np.float32, copy=False)


def _latency(subjects: list[Subject], x: np.ndarray, batches: list[int], warmup: int, iters: int) -> None:
    """Interleaved latency per batch size; a static-batch artifact only at its own batch."""
    for batch in batches:
        runners = {s.name: s.runner for s in subjects if s.fixed_batch in (None, batch)}
        title = f"latency: batch {batch}, {len(runners)} runners interleaved"
        samples = measure_interleaved(runners, _latency_input(x, batch), warmup=warmup, iters=iters,
                                      track=lambda orders, t=title: ui.track(orders, t))
        for subject in subjects:
            if subject.name in samples:
                subject.latency[batch] = {**summarize(samples[subject.name], batch),
                                          "samples_ms": samples[subject.name]}


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
        latency.append(entry)
    return {
        "name": subject.name, "role": subject.role, "source": subject.source, "backend": subject.backend,
        "target": subject.target, "precision": subject.precision, "aliases": subject.aliases,
        "fixed_batch": subject.fixed_batch, "runtime": _runtime_info(subject.runner),
        "size_mb": subject.size_bytes / 1e6, "load_s": subject.load_s, "rss_mb": subject.rss_bytes / 1e6,
        "gpu_mb": None if subject.gpu_bytes is None else subject.gpu_bytes / 1e6,
        "first_infer_ms": subject.first_infer_ms, "latency": latency,
    }


def _assemble(subjects: list[Subject], tensors: Tensors, source: str, data_classes: list[str] | None,
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
    for subject in subjects[1:]:
        assert subject.logits is not None
        if subject.logits.shape != reference.logits.shape:
            raise BadInput(f"{subject.source}: logits of shape {list(subject.logits.shape)} vs the "
                           f"reference's {list(reference.logits.shape)}; is it the same model?")
        entry = _subject_entry(subject, reference, batches)
        drift = compare_logits(reference.logits, subject.logits, labels)
        if labels is not None:
            drift["top5_acc_drop"] = drift["ref_top5_acc"] - drift["top5_acc"]
        entry["drift"] = drift
        entry["per_class"] = per_class_drift(reference.logits, subject.logits, labels, class_names)
        entry["worst"] = worst_disagreements(reference.logits, subject.logits, names, labels, class_names,
                                             worst)
        entry["manifest"] = _manifest_summary(subject.manifest)
        artifacts.append(entry)
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "vitedge_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "passed",
        "settings": {"batches": batches, "device": device, "threads": threads, "warmup": warmup,
                     "iters": iters, "max_images": max_images, "worst": worst,
                     "order": "interleaved-rotating", "seconds": seconds},
        "data": {"source": source, "samples": int(len(tensors.x)), "labelled": labels is not None,
                 "skipped": len(tensors.skipped), "content_hash": tensors.content_hash,
                 "class_names": data_classes, "num_classes": int(num_classes)},
        "class_names": class_names,
        "environment": {"tools": tool_versions(), "hardware": hardware()},
        "reference": ref_entry,
        "artifacts": artifacts,
        "gates": [],
    }


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
    summary["source"] = {k: manifest.get("source", {}).get(k) for k in ("spec", "weights_sha256")}
    return summary


def _lookup(report: dict[str, Any]) -> gatelib.Lookup:
    """A metric value from the assembled report, for gates (None when not measured)."""
    entries = {report["reference"]["name"]: report["reference"]}
    entries.update({a["name"]: a for a in report["artifacts"]})

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


def _record_validation(subject: Subject, report: dict[str, Any]) -> None:
    """Write this run's headline numbers into the artifact's manifest (`validation`)."""
    entry = next(a for a in report["artifacts"] if a["name"] == subject.name)
    drift = entry["drift"]
    summary = {
        "date": report["created"], "reference": report["reference"]["source"],
        "data": {k: report["data"][k] for k in ("source", "samples", "content_hash")},
        **{k: drift[k] for k in ("top1_agreement", "kl_mean", "acc_delta") if k in drift},
        "p50_ms": {str(r["batch"]): r["p50_ms"] for r in entry["latency"] if r["measured"]},
        "speedup_p50": {str(r["batch"]): r.get("speedup_p50") for r in entry["latency"] if r["measured"]},
        "gates_passed": all(g["passed"] for g in report["gates"] if g["artifact"] == subject.name),
    }
    path = Path(subject.source) / MANIFEST_NAME
    try:
        write_json_atomic(path, {**Manifest.load(subject.source), "validation": summary})
    except OSError as exc:
        ui.warn(f"could not record validation results in {path}: {exc}")
