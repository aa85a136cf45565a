"""CPU speed check: vitedge's INT8 artifacts against hand-wired baselines, in one interleaved run.

    python scripts/bench_cpu.py [--model timm:vit_small_patch16_224] [--batches 1,8]

Exports MODEL (random init for timm specs), compiles it with vitedge (OpenVINO INT8, ONNX
Runtime FP32 and INT8), builds the baselines by hand (OpenVINO + NNCF with no options,
compiled with default properties; ONNX Runtime quantize_static with its defaults), then
times every runner in the same process: warm-up, then rounds that run each runner once in a
rotating order, so load from other processes hits all of them alike. Calibration uses the
demo's digit images resized by the model's own preprocessing (vitedge.data), the same
images for vitedge and the baselines. Prints p50/p90 per runner and batch, the ratios the
targets are about, and PASS/MISS for each target. A script, not a test: numbers vary by machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.validate.latency import bound_openmp_spin

bound_openmp_spin()  # before torch loads, as the vitedge command does

REPO = Path(__file__).resolve().parents[1]


class HandWiredOpenVINO:
    """The baseline: nncf.quantize(ov_model, dataset) with no options, compiled with defaults."""

    def __init__(self, onnx_path: Path, calibration: np.ndarray, threads: int | None) -> None:
        import nncf
        import openvino as ov

        model = nncf.quantize(ov.convert_model(str(onnx_path)),
                              nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))]))
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()


class OrtDefaultsInt8:
    """The baseline: ONNX Runtime quantize_static with its defaults (QDQ, every op, uint8 activations)."""

    def __init__(self, onnx_path: Path, out_path: Path, calibration: np.ndarray, threads: int | None) -> None:
        from onnxruntime.quantization import CalibrationDataReader, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from vitedge.backends.onnxruntime import session

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{"pixel_values": calibration[i:i + 1]} for i in range(len(calibration))])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.batches, None)

        if not out_path.is_file():
            pre = out_path.with_suffix(".pre.onnx")
            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
            quantize_static(str(pre), str(out_path), Reader())
        self.session = session(out_path, threads, spinning=False)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixel_values": x})[0]


class Predicting:
    """A vitedge Predictor as a timed callable."""

    def __init__(self, path: Path, threads: int | None, backend: str | None = None) -> None:
        import vitedge

        # spinning=False: as `vitedge bench` does, so idle ORT threads do not take the cores
        # from the runner timed next (OpenVINO is unaffected by the option).
        self.predictor = vitedge.load(path, backend=backend, threads=threads, spinning=False)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.predictor.runner.infer(x)


def build(args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray]:
    """Export + compile (reused when present) and the hand-wired baselines."""
    from vitedge import api, ui
    from vitedge.compile import compile_artifact
    from vitedge.data import load_tensors, open_image_set
    from vitedge.manifest import Manifest

    work = Path(args.work)
    export_dir = work / "export"
    if not (export_dir / "vitedge.json").is_file():
        seeded = args.model.startswith(("timm:", "torchvision:"))  # no checkpoint: a seeded random init
        api.export(args.model, export_dir, random_init_seed=0 if seeded else None)
    manifest = Manifest.load(export_dir)
    calibration = load_tensors(open_image_set(args.calib, manifest.labels).subset(args.calib_size, 0),
                               manifest.preprocessing, description="calibration images").x
    artifacts = {"openvino int8 (vitedge)": ("openvino", "int8"), "onnxruntime fp32 (vitedge)": ("onnxruntime", "fp32"),
                 "onnxruntime int8 (vitedge)": ("onnxruntime", "int8")}
    for name, (target, precision) in artifacts.items():
        out = work / f"{target}-{precision}"
        if not (out / "vitedge.json").is_file():
            ui.info(f"compiling {name}")
            compile_artifact(export_dir, out, target=target, precision=precision,
                             calib=args.calib if precision == "int8" else None,
                             calib_size=args.calib_size, extra={"threads": args.threads})
    threads = args.threads
    runners: dict[str, Any] = {"pytorch fp32 (eager)": Predicting(export_dir, threads, backend="pytorch")}
    runners["openvino int8 (nncf defaults)"] = HandWiredOpenVINO(export_dir / "model.onnx", calibration, threads)
    runners["openvino int8 (vitedge)"] = Predicting(work / "openvino-int8", threads)
    runners["onnxruntime fp32 (vitedge)"] = Predicting(work / "onnxruntime-fp32", threads)
    runners["onnxruntime int8 (vitedge)"] = Predicting(work / "onnxruntime-int8", threads)
    runners["onnxruntime int8 (quantize_static defaults)"] = OrtDefaultsInt8(
        export_dir / "model.onnx", work / "ort-defaults-int8.onnx", calibration, threads)
    return runners, calibration


def time_interleaved(runners: dict[str, Any], x: np.ndarray, warmup: int, iters: int) -> dict[str, list[float]]:
    """ms per call for every runner; each round runs all runners once, in a rotating order."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name].infer(x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(iters):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name].infer(x)
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    from vitedge.data import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm:vit_small_patch16_224")
    parser.add_argument("--work", default=str(cache_dir() / "bench-cpu"),
                        help="where the export and artifacts go (reused when present)")
    parser.add_argument("--calib", default=str(REPO / "calibration" / "digits" / "calib"))
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    runners, calibration = build(args)
    h, w = calibration.shape[2:]
    rows, p50 = [], {}
    for batch in (int(b) for b in args.batches.split(",")):
        x = np.ascontiguousarray(np.resize(calibration, (batch, 3, h, w)), dtype=np.float32)
        times = time_interleaved(runners, x, args.warmup, args.iters)
        torch_p50 = statistics.median(times["pytorch fp32 (eager)"])
        for name, values in times.items():
            p50[(name, batch)] = p(values, 50)
            rows.append((name, batch, p(values, 50), p(values, 90), torch_p50 / p(values, 50)))
    print(f"\n{args.model}, {args.threads} threads, {args.iters} interleaved rounds after {args.warmup} warm-up; "
          f"calibration: {len(calibration)} digit images resized by the model's preprocessing")
    print(f"{'runner':46} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'vs torch':>9}")
    for name, batch, q50, q90, speedup in rows:
        print(f"{name:46} {batch:5d} {q50:9.1f} {q90:9.1f} {speedup:8.2f}x")
    print("\ntargets:")
    missed = 0
    for batch in sorted({b for _, b in p50}):
        checks = [
            (f"b{batch}: openvino int8 (vitedge) / openvino int8 (nncf defaults) <= 1.00",
             p50[("openvino int8 (vitedge)", batch)] / p50[("openvino int8 (nncf defaults)", batch)], 1.0),
            (f"b{batch}: onnxruntime int8 (vitedge) / onnxruntime fp32 (vitedge) <= 1.00",
             p50[("onnxruntime int8 (vitedge)", batch)] / p50[("onnxruntime fp32 (vitedge)", batch)], 1.0),
        ]
        if batch == 8:
            checks.append(("b8: openvino int8 (vitedge) / pytorch fp32 (eager) <= 0.50",
                           p50[("openvino int8 (vitedge)", 8)] / p50[("pytorch fp32 (eager)", 8)], 0.5))
        for label, ratio, limit in checks:
            ok = ratio <= limit
            missed += not ok
            print(f"  {'PASS' if ok else 'MISS'}  {label}: {ratio:.2f}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
