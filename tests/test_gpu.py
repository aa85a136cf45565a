"""On an NVIDIA GPU: TensorRT-RTX builds there, and loads or refuses cleanly; `vitedge bench` with
the PyTorch reference on CUDA, end to end. Skipped (with the reason) where no CUDA GPU is visible.

Nothing here needs OpenVINO or NNCF (the GPU machine has neither): only torch, timm, onnx,
onnxruntime and tensorrt_rtx. The H100 (compute capability 9.0) is not a TensorRT-RTX runtime
target, so there the engine must be refused in one line; on an RTX-class GPU (8.0, 8.6, 8.9,
12.x) it must run, match the reference and reuse its runtime cache.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vitedge.backends.tensorrt import libs
from vitedge.backends.tensorrt.gpu import detect_gpus
from vitedge.errors import IncompatibleArtifact
from vitedge.manifest import Manifest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
if not torch.cuda.is_available() or not detect_gpus():
    pytest.skip("no CUDA GPU visible (torch.cuda and the CUDA driver)", allow_module_level=True)

GPU = detect_gpus()[0]


def _rtx() -> object:
    return pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install tensorrt-rtx)")


def test_driver_view_matches_torch() -> None:
    assert GPU["name"] == torch.cuda.get_device_name(0)
    assert GPU["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability(0))
    print(f"\nGPU: {GPU}")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_rtx_builds_on_this_gpu_then_runs_or_refuses_in_one_line(
        cli, demo_export: Path, digits_calib: Path, digits_val: Path, demo_val_tensors, demo_reference_logits,
        tmp_path: Path, precision: str) -> None:
    rtx = _rtx()
    out = tmp_path / precision
    calib = ["--calib", digits_calib, "--calib-size", "32", "--plan", "fast"] if precision == "int8" else []
    r = cli("compile", demo_export, "--target", "tensorrt", "--engine-lib", "tensorrt-rtx", "--precision",
            precision, *calib, "-o", out)
    assert r.code == 0, r.text
    built = Manifest.load(out)["tensorrt"]
    assert built["built_on"] == {"device": "gpu", "gpu": GPU["name"], "compute_capability": GPU["compute_capability"],
                                 "driver": GPU["driver"]}
    assert built["target_compute_capabilities"] == [GPU["compute_capability"]]
    print(f"\nbuilt on {GPU['name']}: {built['engine']['bytes'] / 1e6:.2f} MB in {built['build_seconds']} s, "
          f"peak RSS {built['build_peak_rss_mib']} MiB")
    import vitedge

    if not libs.rtx_runs_on(GPU["compute_capability"]):  # the H100: built, never loaded, said so
        assert "cannot run TensorRT-RTX engines" in " ".join(r.text.split())  # compile warned
        with pytest.raises(IncompatibleArtifact) as err:
            vitedge.load(out, device="cuda")
        assert str(err.value) == (
            f"{out}: {GPU['name']} (compute capability {GPU['compute_capability']}) cannot run TensorRT-RTX engines "
            "(supports 8.0, 8.6, 8.9, 12.x): rebuild with TensorRT (--engine-lib tensorrt) on that machine")
        bench = cli("bench", out, "--reference", demo_export, "--data", digits_val, "--device", "cuda", "--batch", "1")
        errors = [line for line in bench.text.splitlines() if line.startswith("error:")]
        assert bench.code == IncompatibleArtifact.exit_code and len(errors) == 1, bench.text
        return
    from vitedge.validate.metrics import compare_logits

    times = []
    for _ in range(2):  # the first load JIT-compiles kernels and saves the runtime cache; the second reuses it
        start = time.perf_counter()
        with vitedge.load(out, device="cuda") as predictor:
            logits = predictor.predict(demo_val_tensors.x, batch_size=32)
            info = predictor.runner.info
        times.append(time.perf_counter() - start)
    assert (out / libs.RUNTIME_CACHE).is_file() and info["runtime_cache"]["loaded"]
    Manifest.load(out).verify_files(out)  # the cache is not one of the artifact's hashed files
    print(f"\nload + 360 images: first {times[0]:.2f} s, second {times[1]:.2f} s (runtime cache {rtx.__version__})")
    drift = compare_logits(demo_reference_logits, logits, demo_val_tensors.labels)
    assert drift["top1_agreement"] >= 0.99 and drift["acc_drop"] <= 0.01


def test_rtx_engine_for_other_compute_capabilities_is_refused(cli, demo_export: Path, tmp_path: Path) -> None:
    _rtx()
    import vitedge

    other = "sm120" if GPU["compute_capability"] != "12.0" else "sm86"
    out = tmp_path / "other"
    r = cli("compile", demo_export, "--target", "tensorrt", "--gpu-arch", other, "--engine-lib", "tensorrt-rtx",
            "-o", out)
    assert r.code == 0, r.text
    with pytest.raises(IncompatibleArtifact) as err:
        vitedge.load(out, device="cuda")
    expected = ("cannot run TensorRT-RTX engines" if not libs.rtx_runs_on(GPU["compute_capability"])
                else "this engine was built for compute capability")
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("batches", ["1,8"])
def test_bench_with_the_pytorch_reference_on_cuda_end_to_end(cli, demo_export: Path, digits_calib: Path,
                                                             digits_val: Path, tmp_path: Path, batches: str) -> None:
    """`vitedge bench` of the export (FP32) and an ONNX Runtime INT8 artifact against PyTorch FP32 on
    CUDA (TF32 off): gates decided, CUDA-event timings, GPU memory, reports written."""
    ort = tmp_path / "ort-int8"
    r = cli("compile", demo_export, "--target", "onnxruntime", "--precision", "int8", "--calib", digits_calib,
            "--calib-size", "64", "-o", ort)
    assert r.code == 0, r.text
    report_dir = tmp_path / "report"
    r = cli("bench", demo_export, ort, "--reference", demo_export, "--data", digits_val, "--device", "cuda",
            "--batch", batches, "--gate", "export:max_abs_err<=1e-3", "--gate", "top1_agreement>=0.97",
            "--yardstick", "pytorch-fp16", "--report", report_dir)
    assert r.code == 0, r.text
    report = json.loads((report_dir / "report.json").read_text())
    ref = report["reference"]
    assert ref["runtime"]["timer"] == "cuda-events" and ref["runtime"]["device"].startswith("cuda")
    assert ref["gpu_mb"] > 0 and all(row["measured"] and row["p50_ms"] > 0 for row in ref["latency"])
    export = next(a for a in report["artifacts"] if a["name"].startswith("export"))
    assert export["drift"]["top1_agreement"] == 1.0  # real FP32 on the GPU: TF32 is off
    (fp16,) = report["yardsticks"]  # PyTorch FP16 (autocast) on the same GPU, timed in the same run
    assert fp16["name"] == "pytorch-fp16" and fp16["runtime"]["precision_run"] == "fp16"
    assert fp16["drift"]["top1_agreement"] >= 0.97 and all(row["p50_ms"] > 0 for row in fp16["latency"])
    assert {(r["yardstick"], r["batch"]) for r in export["vs_yardsticks"]} == {("pytorch-fp16", 1), ("pytorch-fp16", 8)}
    print("\nPyTorch FP32 (TF32 off) on " + GPU["name"] + ": "
          + ", ".join(f"b{row['batch']} p50 {row['p50_ms']:.3f} ms" for row in ref["latency"])
          + "; FP16 autocast: " + ", ".join(f"b{row['batch']} p50 {row['p50_ms']:.3f} ms" for row in fp16["latency"])
          + f"; GPU memory of the reference {ref['gpu_mb']:.1f} MB")
