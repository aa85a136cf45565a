"""`vitedge bench`: accuracy drift and latency of artifacts against the PyTorch FP32 reference.

One run measures everything on the same data and the same machine: logits of every
artifact and of the reference on the validation set (drift, accuracy, per-class deltas,
worst disagreements), then latency of all of them interleaved per batch size. Gates turn
the numbers into an exit code; `reports` writes JSON / JUnit / Markdown / HTML.

Before any verdict, bench makes sure the reference is the model the artifacts came from: its
parameters hash must match the one recorded at export, and an FP32 artifact (the export itself
if no FP32 candidate is benched) must agree with it (`reference_check`). Latency is timed with
one thread budget for every runner, no spin-waiting, and a measure of outside CPU load; speed
gates are decided on bootstrap confidence intervals (see `gates`).
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge import ui
from vitedge.backends.base import backend_for_target, get_backend
from vitedge.data import load_tensors, open_image_set
from vitedge.errors import BadInput, EnvironmentProblem, GateFailed, GateUnreliable
from vitedge.limits import check_bench_memory
from vitedge.manifest import MANIFEST_NAME, Manifest
from vitedge.metrics import compare_logits
from vitedge.preprocessing import Preprocessing
from vitedge.runtime import load
from vitedge.validate import assembly
from vitedge.validate import gates as gatelib
from vitedge.validate.assembly import Subject
from vitedge.validate.latency import (
    OutsideLoad,
    bound_openmp_spin,
    measure_interleaved,
    process_rss_bytes,
    summarize,
)
from vitedge.validate.verdicts import verdicts

DRIFT_BATCH = 32
REPORT_SPACE_BYTES = 16 << 20  # room the four reports need, generously (HTML with plots is the largest)
DEVICES = ("cpu", "cuda")
# Runners timed in one process must not spin-wait between calls (it starves the next runner).
_RUNNER_OPTIONS = {"spinning": False}
# The reference sanity check: an FP32 artifact must match the reference this closely.
REFERENCE_MIN_COSINE = 0.9999
REFERENCE_MIN_AGREEMENT = 0.999


def bench(
    artifacts: str | Path | list[str | Path],
    *,
    reference: str | Path,
    data: str | Path,
    batches: tuple[int, ...] | list[int] = (1, 8),
    gates: tuple[str, ...] | list[str] = (),
    report_dir: str | Path | None = None,
    device: str = "cpu",
    max_images: int | None = None,
    warmup: int = 5,
    iters: int = 30,
    threads: int | None = None,
    trust_source: bool = False,
    force: bool = False,
    yardsticks: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """Drift and latency of ARTIFACTS vs the PyTorch FP32 REFERENCE on DATA (as `vitedge bench`).

    Returns the report (report.json's content); raises `GateFailed` when a gate fails.
    """
    paths = [artifacts] if isinstance(artifacts, (str, Path)) else list(artifacts)
    return run_bench(paths, reference=reference, data=data, batches=list(batches), gates=list(gates),
                     report_dir=report_dir, device=device, max_images=max_images, warmup=warmup, iters=iters,
                     threads=threads, trust_source=trust_source, force=force, yardsticks=list(yardsticks))


def run_bench(artifacts: Sequence[str | Path], *, reference: str | Path, data: str | Path,
              batches: Sequence[int] = (1, 8), gates: Sequence[str] = (),
              report_dir: str | Path | None = None, device: str = "cpu", max_images: int | None = None,
              warmup: int = 5, iters: int = 30, threads: int | None = None, worst: int = 10,
              record: bool = False, trust_source: bool = False, force: bool = False,
              yardsticks: Sequence[str] = ()) -> dict[str, Any]:
    """Bench ARTIFACTS against REFERENCE on DATA; write reports; raise GateFailed if a gate fails
    (GateUnreliable if none failed but a speed gate is undecided), with the report attached.

    Returns the report (the content of report.json); printing it is the caller's
    (`report_cli.print_bench_summary`). `record=True` also writes a short
    summary into each artifact's manifest (`validation`), as recipes do for their artifacts.
    `trust_source`: an export dir given as REFERENCE may rebuild a source that runs code
    (see SECURITY.md). REPORT_DIR is checked (and locked) before anything is loaded; `force`
    writes reports there even when it holds other files. YARDSTICKS (`yardsticks.YARDSTICKS`) are
    timed beside the artifacts and reported as ratios (what the user gets without vitedge).
    """
    from vitedge.validate.yardsticks import check_names

    batches = _check_settings(artifacts, batches, device, max_images, warmup, iters, threads, worst)
    yardsticks = check_names(list(yardsticks))
    if report_dir is None:
        return _run_bench(artifacts, reference, data, batches, gates, None, device, max_images, warmup, iters,
                          threads, worst, record, trust_source, yardsticks)
    from vitedge.fsutil import check_free_space, check_output_dir, output_lock

    check_output_dir(report_dir, "report", force=force, inputs=[data, *artifacts])
    check_free_space(report_dir, REPORT_SPACE_BYTES, "the bench reports")
    with output_lock(report_dir):
        return _run_bench(artifacts, reference, data, batches, gates, report_dir, device, max_images, warmup,
                          iters, threads, worst, record, trust_source, yardsticks)


def _run_bench(artifacts: Sequence[str | Path], reference: str | Path, data: str | Path, batches: list[int],
               gates: Sequence[str], report_dir: str | Path | None, device: str, max_images: int | None,
               warmup: int, iters: int, threads: int | None, worst: int, record: bool,
               trust_source: bool, yardsticks: Sequence[str] = ()) -> dict[str, Any]:
    """run_bench with its settings checked and its report dir locked."""
    torch_spins = bound_openmp_spin()
    threads = threads or os.cpu_count() or 1
    parsed_gates = [gatelib.parse_gate(text) for text in gates]
    manifests = {_artifact_name(Path(a), artifacts): (Path(a), Manifest.load(a)) for a in artifacts}
    ref_dir, ref_loaded = _reference_source(reference, trust_source)
    pre = ref_loaded.preprocessing if ref_loaded is not None else Manifest.load(ref_dir).preprocessing
    ref_labels = ref_loaded.labels if ref_loaded is not None else Manifest.load(ref_dir).labels
    for name, (path, manifest) in manifests.items():
        _check_same_preprocessing(name, path, manifest, pre)
    ref_manifest = Manifest.load(ref_dir) if ref_dir is not None else None
    expected = _expected_weights(ref_manifest, ref_loaded, reference)
    for path, manifest in manifests.values():
        _check_same_weights(expected, str(path), manifest.get("source", {}), reference)

    image_set = open_image_set(data, ref_labels).subset(max_images, seed=0)
    check_bench_memory(next(iter(manifests.values()))[1], len(image_set), batches,
                       runners=1 + len(manifests) + len(yardsticks))
    tensors = load_tensors(image_set, pre, description="validation images")
    subjects_view = gatelib.Subjects(list(manifests), _aliases(manifests), list(batches),
                                     tensors.labels is not None, yardsticks=list(yardsticks))
    checks = gatelib.plan(parsed_gates, subjects_view)

    started = time.perf_counter()
    subjects: list[Subject] = []
    try:
        probe = _latency_input(tensors.x, max(batches))
        subjects.append(_open_reference(reference, ref_dir, ref_loaded, device, threads, probe, trust_source))
        subjects[0].runner.info["spinning"] = torch_spins
        if ref_manifest is not None:  # the rebuilt module against the export's record
            _check_same_weights(_params_of(subjects[0]), str(ref_dir), ref_manifest.get("source", {}),
                                reference)
        for name, (path, manifest) in manifests.items():
            subjects.append(_open_candidate(name, path, manifest, device, threads, probe,
                                            subjects_view.aliases))
        export_dir = _export_dir(ref_dir, manifests) if yardsticks else None
        for name in yardsticks:
            subjects.append(_open_yardstick(name, subjects[0], export_dir, device, threads, probe))
        _drift_logits(subjects, tensors.x)
        reference_check = _check_reference(subjects, ref_dir, manifests, tensors.x, threads)
        with OutsideLoad() as load:
            _latency(subjects, tensors.x, batches, warmup, iters)
    finally:
        for subject in subjects:
            subject.close()

    report = assembly.assemble(subjects, tensors, image_set.source, image_set.class_names, batches, device,
                               threads, max_images, warmup, iters, worst, time.perf_counter() - started)
    report["reference_check"] = reference_check
    report["load"] = load.result()
    report["notes"] = assembly.notes(report, subjects, ref_manifest, ref_loaded)
    results = gatelib.evaluate(checks, assembly.lookup(report), assembly.intervals(report),
                               assembly.outside_load_reason(report["load"]), assembly.unmet_conditions(report))
    report["gates"] = [r.to_dict() for r in results]
    report["status"] = gatelib.status(results)
    report["verdicts"] = verdicts(report)

    from vitedge.validate.report_files import write_reports

    if report_dir is not None:
        report["files"] = write_reports(report, Path(report_dir))
    if record:
        for subject in subjects[1:]:
            if subject.role == "candidate":
                assembly.record_validation(subject, report)
    failed = [r for r in results if r.outcome == "fail"]
    if failed:
        lines = "\n".join(f"  {r.line()}" for r in failed)
        raise GateFailed(f"{len(failed)} of {len(results)} gate checks failed:\n{lines}", report)
    unreliable = [r for r in results if r.outcome == "unreliable"]
    if unreliable:
        lines = "\n".join(f"  {r.line()}" for r in unreliable)
        raise GateUnreliable(f"{len(unreliable)} of {len(results)} gate checks are unreliable (none failed); "
                             f"re-run on a quiet machine or with more --iters:\n{lines}", report)
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
    theirs = manifest.preprocessing.to_dict()  # as dicts: a spec's tuples equal a manifest's lists
    diff = [k for k, v in pre.to_dict().items() if k != "extra" and theirs.get(k) != v]
    if diff:
        raise BadInput(f"{path}: its preprocessing differs from the reference's ({', '.join(diff)}); "
                       "drift is only meaningful on the same inputs: bench artifacts of the same export")


def _expected_weights(ref_manifest: Manifest | None, ref_loaded: Any, reference: str | Path) -> dict[str, Any]:
    """The identity of the reference's weights: from its export manifest, or hashed from the loaded spec."""
    if ref_manifest is not None:
        return {k: ref_manifest.get("source", {}).get(k) for k in ("params_sha256", "weights_sha256")}
    from vitedge.models.base import params_sha256

    with ui.Step(f"hashing the parameters of {reference}"):
        return {"params_sha256": params_sha256(ref_loaded.module), "weights_sha256": ref_loaded.weights_sha256}


def _params_of(subject: Subject) -> dict[str, Any]:
    """The parameters hash of the module a PyTorch runner actually runs."""
    from vitedge.models.base import params_sha256

    return {"params_sha256": params_sha256(getattr(subject.runner, "module", None))}


def _check_same_weights(expected: dict[str, Any], where: str, recorded: dict[str, Any],
                        reference: str | Path) -> None:
    """Refuse a reference whose parameters differ from those WHERE was exported from.

    The parameters hash (recorded by exports since it exists) covers every source kind; for older
    manifests, the weights file hash."""
    for key, what in (("params_sha256", "parameters"), ("weights_sha256", "weights file")):
        mine, theirs = expected.get(key), recorded.get(key)
        if mine and theirs:
            if mine != theirs:
                raise BadInput(f"--reference {reference} is not the model {where} was exported from: its {what} "
                               f"SHA-256 is {mine[:12]}..., the export recorded {theirs[:12]}...; give the export "
                               "dir as --reference (it rebuilds the exported weights), or the same spec and weights")
            return


def _latency_input(x: np.ndarray, batch: int) -> np.ndarray:
    """A batch of real validation images (repeated when there are fewer than `batch`)."""
    return np.ascontiguousarray(np.take(x, np.arange(batch) % len(x), axis=0))


@dataclass
class _MemoryBefore:
    rss: int
    gpu_free: int | None  # free device memory (bytes), for runners on a CUDA device
    gpu_allocated: int = 0  # what torch's allocator holds for tensors (bytes)


def _gpu_free(device: str) -> int | None:
    """Free memory of DEVICE as the driver reports it (device-wide, so TensorRT's own
    allocations count as well as torch's); None for the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize(device)
    return int(torch.cuda.mem_get_info(torch.device(device))[0])


def _gpu_allocated(device: str) -> int:
    """Bytes torch's caching allocator has handed out for tensors on DEVICE (0 for the CPU)."""
    if not device.startswith("cuda"):
        return 0
    import torch

    return int(torch.cuda.memory_allocated(torch.device(device)))


def _gpu_before(device: str) -> tuple[int | None, int]:
    """(free device memory, torch-allocated bytes) before a load. torch's cache is emptied first:
    blocks an earlier runner freed would otherwise be reused without the driver seeing them, and
    the load would look free."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    return _gpu_free(device), _gpu_allocated(device)


def _measure_load(backend: str, device: str, load: Callable[[], Any]) -> tuple[Any, float, _MemoryBefore]:
    """(what load() returns, its seconds, memory before it), after importing the backend's library
    (so that the first artifact of a backend is not charged the library's import time and memory)."""
    try:
        importlib.import_module(get_backend(backend).runtime_module or backend)
    except ImportError:
        pass  # load() reports the missing runtime with its install hint
    before = _MemoryBefore(process_rss_bytes(), *_gpu_before(device))
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
        # the driver's view counts TensorRT's and ONNX Runtime's allocations; torch's view counts
        # tensors placed in blocks the allocator already held; the larger is the cost of this load
        subject.gpu_bytes = max(before.gpu_free - (_gpu_free(device) or 0),
                                _gpu_allocated(device) - before.gpu_allocated, 0)


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


def _open_yardstick(name: str, reference: Subject, export_dir: Path | None, device: str, threads: int,
                    probe: np.ndarray) -> Subject:
    """A yardstick (`yardsticks.YARDSTICKS`) as a subject: timed like a candidate, never the reference."""
    from vitedge.validate.yardsticks import YARDSTICKS, Sources

    yardstick = YARDSTICKS[name]
    export_onnx = None
    if export_dir is not None:
        from vitedge.backends.base import artifact_path

        export_onnx = artifact_path(export_dir, Manifest.load(export_dir))
    run_device = "cpu" if yardstick.backend == "openvino" else device
    with ui.Step(f"loading the yardstick {name}"):
        runner, load_s, before = _measure_load(yardstick.backend, run_device, lambda: yardstick.open(
            Sources(getattr(reference.runner, "module", None), export_onnx, run_device, threads)))
        subject = Subject(name, "yardstick", yardstick.what, yardstick.backend, name,
                          str(runner.info.get("precision_run", "fp32")), runner, runner.infer, 0, load_s)
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


def _export_dir(ref_dir: Path | None, manifests: dict[str, tuple[Path, Manifest]]) -> Path | None:
    """The export the artifacts were compiled from, where it is still on disk unchanged."""
    if ref_dir is not None and Manifest.load(ref_dir).get("kind") == "export":
        return ref_dir
    for _, manifest in manifests.values():
        export = manifest.get("export") or {}
        path = Path(export.get("dir") or "")
        if export.get("dir") and (path / MANIFEST_NAME).is_file():
            theirs = Manifest.load(path)
            if theirs.get("kind") == "export" and export.get("model_sha256") in theirs.get("files", {}).values():
                return path
    return None


def _check_reference(subjects: list[Subject], ref_dir: Path | None, manifests: dict[str, tuple[Path, Manifest]],
                     x: np.ndarray, threads: int) -> dict[str, Any]:
    """An FP32 artifact must agree with the reference before any verdict: else the reference is
    another model (other weights, a non-deterministic factory, train-mode layers...).

    Checked on the FP32 candidates (one that agrees is enough: the others' drift is theirs), or on
    the export run through ONNX Runtime FP32 when no FP32 candidate is benched."""
    reference = subjects[0]
    assert reference.logits is not None
    compared = [(s.name, s.source, s.logits) for s in subjects[1:] if s.precision == "fp32" and s.role == "candidate"]
    if not compared:
        export_dir = _export_dir(ref_dir, manifests)
        if export_dir is None:
            raise BadInput("cannot check that the reference is the exported model: no FP32 artifact is benched "
                           "and the export dir is gone; bench the export dir too, or give it as --reference")
        with ui.Step(f"reference check: the export {export_dir} on ONNX Runtime FP32"), load(
                export_dir, backend="onnxruntime", threads=threads, **_RUNNER_OPTIONS) as predictor:
            compared = [("export", str(export_dir), predictor.predict(x, batch_size=DRIFT_BATCH))]
    checks = []
    for name, source, logits in compared:
        drift = compare_logits(reference.logits, logits, None)
        checks.append({"artifact": name, "source": source, "top1_agreement": drift["top1_agreement"],
                       "cosine_mean": drift["cosine_mean"], "cosine_min": drift["cosine_min"],
                       "min_agreement": REFERENCE_MIN_AGREEMENT, "min_cosine": REFERENCE_MIN_COSINE})
    best = max(checks, key=lambda c: (c["top1_agreement"], c["cosine_mean"]))
    best["passed"] = bool(best["top1_agreement"] >= REFERENCE_MIN_AGREEMENT
                          and best["cosine_mean"] >= REFERENCE_MIN_COSINE)
    if not best["passed"]:
        raise BadInput(f"the reference is not the exported model: {best['artifact']} (FP32) agrees with it on "
                       f"{best['top1_agreement']:.4f} of top-1 classes with mean cosine {best['cosine_mean']:.6f} "
                       f"(needs >= {REFERENCE_MIN_AGREEMENT} and >= {REFERENCE_MIN_COSINE}); bench against the "
                       "export dir the artifacts were compiled from")
    return best


