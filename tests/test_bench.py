"""`vitedge bench`: drift and latency against the PyTorch reference, gates and exit codes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from vitedge.validate.bench import run_bench
from vitedge.validate.latency import SETTLE_MS

FAST = ("--max-images", "40", "--iters", "3", "--warmup", "1")


def test_reference_against_its_own_export_agrees_exactly(demo_export: Path, digits_val: Path,
                                                        tmp_path: Path) -> None:
    report = run_bench([demo_export], reference=demo_export, data=digits_val, batches=[1, 2],
                       max_images=40, warmup=1, iters=3, report_dir=tmp_path)
    (art,) = report["artifacts"]
    drift = art["drift"]
    assert drift["samples"] == 40
    assert drift["top1_agreement"] == 1.0 and drift["top5_overlap"] == 1.0
    assert drift["max_abs_err"] < 1e-4 and drift["kl_mean"] < 1e-9 and drift["cosine_min"] > 0.999999
    assert drift["acc_delta"] == 0.0 and drift["top1_acc"] == report["reference"]["accuracy"]["top1_acc"]
    assert art["worst"] == []
    assert all(row["delta"] == 0.0 and row["agreement"] == 1.0 for row in art["per_class"])
    assert sum(row["count"] for row in art["per_class"]) == 40
    for entry in (report["reference"], art):
        assert [row["batch"] for row in entry["latency"]] == [1, 2]
        assert all(row["measured"] and len(row["samples_ms"]) == 3 for row in entry["latency"])
        assert entry["runtime"]["timer"] == "perf_counter"
        assert entry["runtime"]["threads"] == os.cpu_count()  # every runner: all cores by default
        assert entry["size_mb"] > 0 and entry["load_s"] > 0
        assert entry["gpu_mb"] is None  # CPU runners: no device memory to measure
    assert all("speedup_p50" in row for row in art["latency"])
    assert "speedup_p50" not in report["reference"]["latency"][0]
    assert art["runtime"]["spinning"] is False  # ORT threads must not starve the next runner
    assert report["settings"]["settle_ms"] == SETTLE_MS  # every run after the pause, recorded
    assert report["settings"]["openmp"]  # how PyTorch's OpenMP threads waited
    assert report["data"] == {**report["data"], "labelled": True, "samples": 40, "skipped": 0}
    assert report["status"] == "passed" and report["gates"] == []
    assert set(report["files"]) == {"json", "xml", "md", "html"}


@pytest.mark.gpu
def test_cuda_reference_uses_cuda_events_and_reports_gpu_memory(demo_export: Path, digits_val: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    report = run_bench([demo_export], reference=demo_export, data=digits_val, batches=[1, 8], device="cuda",
                       max_images=64, warmup=2, iters=5)
    ref, (art,) = report["reference"], report["artifacts"]
    assert ref["runtime"]["timer"] == "cuda-events" and ref["runtime"]["device"].startswith("cuda")
    assert ref["gpu_mb"] > 0  # the weights alone are 1.25 MB
    assert art["runtime"]["timer"] == "perf_counter" and art["gpu_mb"] is None  # the export runs on ORT (CPU)
    assert art["drift"]["top1_agreement"] == 1.0 and art["drift"]["max_abs_err"] < 1e-3  # TF32 off: real FP32
    assert all(row["measured"] and row["p50_ms"] > 0 for row in ref["latency"])
    from vitedge.validate.reports import settings_line

    assert f"; {art['name']} ran on the CPU, so its speedups compare a CPU runtime" in settings_line(report)


def test_gates_pass_exit_0_and_impossible_gate_exits_1(cli, demo_export: Path, digits_val: Path,
                                                       tmp_path: Path) -> None:
    args = ("bench", demo_export, "--reference", demo_export, "--data", digits_val, "--batch", "1", *FAST)
    ok = cli(*args, "--gate", "top1_agreement>=0.99", "--gate", "export:acc_drop <= 0.001",
             "--gate", "onnx-fp32:max_abs_err<=1e-4", "--report", tmp_path / "ok")
    assert ok.code == 0, ok.text
    assert "vitedge bench: all 3 gate checks passed" in ok.out
    assert json.loads((tmp_path / "ok" / "report.json").read_text())["status"] == "passed"

    # A resource gate: decided whatever the machine's load (speed gates may be `unreliable`).
    bad = cli(*args, "--gate", "top1_agreement>=0.99", "--gate", "size_mb<=0.001",
              "--report", tmp_path / "bad")
    assert bad.code == 1, bad.text
    assert "1 of 2 gate checks failed" in bad.err
    failing = [line.strip() for line in bad.err.splitlines() if line.strip().startswith("FAIL")]
    assert len(failing) == 1
    assert failing[0].startswith("FAIL [size_mb<=0.001] export: size_mb = ")
    assert failing[0].endswith(", needs <= 0.001")
    assert json.loads((tmp_path / "bad" / "report.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(("extra", "needle"), [
    (("--gate", "top1_agreemnt>=0.9"), "unknown metric 'top1_agreemnt'; valid metrics are"),
    (("--gate", "ghost:top1_agreement>=0.9"), "no artifact named 'ghost'"),
    (("--batch", "0"), "positive integers"),
    (("--device", "tpu"), "--device must be one of cpu, cuda"),
    (("--iters", "0"), "--iters must be >= 1"),
])
def test_bad_input_exits_2_before_measuring(cli, demo_export: Path, digits_val: Path, extra: tuple[str, ...],
                                            needle: str) -> None:
    result = cli("bench", demo_export, "--reference", demo_export, "--data", digits_val, *FAST, *extra)
    assert result.code == 2, result.text
    assert needle in result.err


def test_missing_paths_exit_2(cli, demo_export: Path, digits_val: Path, tmp_path: Path) -> None:
    no_artifact = cli("bench", tmp_path / "nope", "--reference", demo_export, "--data", digits_val)
    assert no_artifact.code == 2 and "does not exist" in no_artifact.err
    no_data = cli("bench", demo_export, "--reference", demo_export, "--data", tmp_path / "nodata")
    assert no_data.code == 2 and "does not exist" in no_data.err


def test_other_preprocessing_is_refused(cli, demo_export_copy: Path, demo_export: Path, digits_val: Path) -> None:
    manifest_path = demo_export_copy / "vitedge.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["preprocessing"]["mean"] = [0.485, 0.456, 0.406]
    manifest_path.write_text(json.dumps(manifest))
    result = cli("bench", demo_export_copy, "--reference", demo_export, "--data", digits_val, *FAST)
    assert result.code == 2 and "preprocessing differs from the reference's (mean)" in result.err


def test_unlabelled_data_groups_by_reference_class(cli, demo_export: Path, digits_val: Path,
                                                   tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, image in enumerate(sorted(digits_val.rglob("*.png"))[::20]):
        shutil.copy(image, flat / f"{i:03d}.png")
    count = len(list(flat.iterdir()))
    result = cli("bench", demo_export, "--reference", demo_export, "--data", flat, "--batch", "1",
                 "--iters", "2", "--warmup", "0", "--report", tmp_path / "r")
    assert result.code == 0, result.text
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["data"]["labelled"] is False and "accuracy" not in report["reference"]
    (art,) = report["artifacts"]
    assert "acc_delta" not in art["drift"] and sum(r["count"] for r in art["per_class"]) == count
    assert all("delta" not in r for r in art["per_class"])
    needs_labels = cli("bench", demo_export, "--reference", demo_export, "--data", flat, "--gate", "acc_drop<=0.1")
    assert needs_labels.code == 2 and "acc_drop needs labels" in needs_labels.err


def test_static_batch_artifact_is_timed_at_its_batch_only(demo_export_copy: Path, demo_export: Path,
                                                          digits_val: Path) -> None:
    """A fixed-batch artifact: drift pads the last batch; latency only at its own batch size."""
    manifest_path = demo_export_copy / "vitedge.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["onnx"].update(dynamic_batch=False, batch=2)
    manifest_path.write_text(json.dumps(manifest))
    from vitedge.errors import GateFailed

    with pytest.raises(GateFailed, match=r"export: p50_ms@b1 was not measured"):
        run_bench([demo_export_copy], reference=demo_export, data=digits_val, batches=[1, 2], max_images=33,
                  warmup=0, iters=2, gates=["p50_ms<=1e9"])
    report = run_bench([demo_export_copy], reference=demo_export, data=digits_val, batches=[1, 2],
                       max_images=33, warmup=0, iters=2)
    (art,) = report["artifacts"]
    assert art["fixed_batch"] == 2 and art["drift"]["samples"] == 33 and art["drift"]["top1_agreement"] == 1.0
    assert [(row["batch"], row["measured"]) for row in art["latency"]] == [(1, False), (2, True)]


def test_quiet_prints_no_table(cli, demo_export: Path, digits_val: Path) -> None:
    result = cli("--quiet", "bench", demo_export, "--reference", demo_export, "--data", digits_val,
                 "--batch", "1", *FAST)
    assert result.code == 0, result.text
    assert result.out == "" and "vitedge bench" not in result.err


def _edit_manifest(artifact: Path, **source: object) -> None:
    """Change the `source` record (or, with precision=..., the precision) of a copied artifact."""
    path = artifact / "vitedge.json"
    manifest = json.loads(path.read_text())
    if "precision" in source:
        manifest["precision"] = source.pop("precision")
    manifest["source"].update(source)
    for key in [k for k, v in source.items() if v is None]:
        del manifest["source"][key]
    path.write_text(json.dumps(manifest))


def test_reference_with_other_weights_is_refused(cli, demo_export_copy: Path, demo_export: Path,
                                                 digits_val: Path) -> None:
    """A reference whose parameters hash differs from the export's record: exit 2, one line, any source kind."""
    _edit_manifest(demo_export_copy, params_sha256="0" * 64)
    spec = cli("bench", demo_export_copy, "--reference", "demo:digits", "--data", digits_val, *FAST)
    assert spec.code == 2, spec.text
    assert f"--reference demo:digits is not the model {demo_export_copy} was exported from: its parameters " \
           "SHA-256 is " in spec.err and "the export recorded 000000000000..." in spec.err
    assert "Traceback" not in spec.text and "vitedge bench" not in spec.out  # before any measuring
    # The export dir as its own reference: the rebuilt module is checked against the record.
    own = cli("bench", demo_export_copy, "--reference", demo_export_copy, "--data", digits_val, *FAST)
    assert own.code == 2 and "the export recorded 000000000000..." in own.err
    # Manifests written before params_sha256: the weights file hash decides.
    _edit_manifest(demo_export_copy, params_sha256=None, weights_sha256="f" * 64)
    old = cli("bench", demo_export_copy, "--reference", "demo:digits", "--data", digits_val, *FAST)
    assert old.code == 2 and "its weights file SHA-256 is " in old.err


def _biased(export: Path, dst: Path) -> Path:
    """A re-hashed copy of the export whose FP32 classifier favours class 0."""
    import onnx
    from onnx import numpy_helper

    from vitedge.manifest import Manifest

    shutil.copytree(export, dst)
    model = onnx.load(str(dst / "model.onnx"))
    init = next(i for i in model.graph.initializer if i.name == "head.bias")
    values = numpy_helper.to_array(init).copy()
    values[0] += 6.0
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    onnx.save(model, str(dst / "model.onnx"))
    Manifest.load(dst).save(dst)
    return dst


def test_reference_check_stops_when_no_fp32_artifact_agrees(cli, demo_export: Path, digits_val: Path,
                                                            tmp_path: Path) -> None:
    biased = _biased(demo_export, tmp_path / "biased")
    result = cli("bench", biased, "--reference", demo_export, "--data", digits_val, *FAST,
                 "--report", tmp_path / "r")
    assert result.code == 2, result.text
    (line,) = [line for line in result.err.splitlines() if line.strip()]
    assert line.startswith("error: the reference is not the exported model: biased (FP32) agrees with it on 0.")
    assert not (tmp_path / "r").exists()  # no verdict, no report


def test_reference_check_runs_the_export_when_no_fp32_candidate(demo_export_copy: Path, demo_export: Path,
                                                                 digits_val: Path) -> None:
    _edit_manifest(demo_export_copy, precision="int8")  # stands in for a compiled INT8 artifact
    report = run_bench([demo_export_copy], reference=demo_export, data=digits_val, batches=[1],
                       max_images=40, warmup=0, iters=2)
    check = report["reference_check"]
    assert check["artifact"] == "export" and check["source"] == str(demo_export)  # on ONNX Runtime FP32
    assert check["passed"] and check["top1_agreement"] == 1.0 and check["cosine_mean"] > 0.99999


def test_random_weights_are_labelled_in_every_report_format(cli, demo_export_copy: Path, demo_export: Path,
                                                            digits_val: Path, tmp_path: Path) -> None:
    _edit_manifest(demo_export_copy, weights_origin="random-init", random_init_seed=7)
    result = cli("bench", demo_export_copy, "--reference", demo_export, "--data", digits_val, "--batch", "1",
                 *FAST, "--report", tmp_path / "r")
    assert result.code == 0, result.text
    label = "random weights: accuracy figures are meaningless"
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    (note,) = [n for n in report["notes"] if n["kind"] == "random-weights"]
    assert note["text"].startswith(label) and "--random-init 7" in note["text"]
    for fmt in ("md", "html", "xml"):
        assert label in (tmp_path / "r" / f"report.{fmt}").read_text(), fmt
    assert label in " ".join(result.out.split())  # the terminal (rich may wrap the line)
    inspect = cli("inspect", demo_export_copy)
    assert inspect.code == 0 and label in " ".join(inspect.out.split())
    # Timing honesty recorded alongside: dispersion per runner and the outside load.
    row = report["artifacts"][0]["latency"][0]
    assert row["p90_p50"] >= 1.0 and row["cv"] >= 0.0 and len(row["speedup_p50_ci"]) == 2
    assert set(report["load"]) == {"other_cpu_s", "wall_s", "cores", "share", "limit", "detected"}
    (verdict,) = report["verdicts"]
    assert verdict["artifact"] == "export" and verdict["faster_than_fp32"]["answer"] == "n/a"


def test_factory_reference_rebuilt_with_other_weights_is_refused(cli, tmp_path: Path, digits_val: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9's first failure: the reference rebuilt as another random init (measured: agreement 0.0,
    reported as a normal result). A factory that draws fresh random weights on every call is refused,
    as an export dir and as a spec, before anything is timed."""
    (tmp_path / "fresh_models.py").write_text(
        "import timm\n\n"
        "def tiny_vit(num_classes=10):\n"
        "    return timm.create_model('vit_tiny_patch16_224', num_classes=num_classes, img_size=32, depth=1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from vitedge import api

    api.export("fresh_models:tiny_vit", tmp_path / "export")
    for reference in (tmp_path / "export", "fresh_models:tiny_vit"):
        trust = ["--trust-source"] if reference == tmp_path / "export" else []  # a factory runs code
        result = cli("bench", tmp_path / "export", "--reference", reference, "--data", digits_val, *FAST,
                     "--report", tmp_path / "r", *trust)
        assert result.code == 2, result.text
        assert f"--reference {reference} is not the model {tmp_path / 'export'} was exported from: its " \
               "parameters SHA-256 is " in " ".join(result.err.split())
        assert not (tmp_path / "r").exists()


def test_speed_gate_timed_next_to_a_cpu_hog_is_unreliable_exit_5(cli, demo_export: Path, digits_val: Path,
                                                                 tmp_path: Path) -> None:
    """Issue 9's second failure: a busy neighbour made speed gates pass on garbage. With a busy loop
    on every core, bench sees the outside load and calls the speed gate unreliable (exit 5), while
    the accuracy gate is still decided. No timing is asserted: only the outcome."""
    import subprocess
    import sys

    hogs = [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"]) for _ in range(os.cpu_count() or 1)]
    try:
        result = cli("bench", demo_export, "--reference", demo_export, "--data", digits_val, "--batch", "1", *FAST,
                     "--gate", "top1_agreement>=0.99", "--gate", "speedup_p50>=1", "--report", tmp_path / "r")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=10)
    assert result.code == 5, result.text
    assert "1 of 2 gate checks are unreliable (none failed)" in result.err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["status"] == "unreliable" and report["load"]["detected"] is True
    assert [g["outcome"] for g in report["gates"]] == ["pass", "unreliable"]
    assert "other processes used" in report["gates"][1]["reason"]
    assert any(n["kind"] == "outside-load" for n in report["notes"])
