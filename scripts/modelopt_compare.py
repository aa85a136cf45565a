"""vitedge's INT8 placement plans (accurate, fast) next to NVIDIA ModelOpt's, for one export.

ModelOpt is a peer here, never a vitedge dependency: `nvidia-modelopt[onnx]` pins its own onnx
and replaces onnxruntime with onnxruntime-gpu, so it lives in its own virtual environment and
this script runs it there as a separate process. Make that environment once:

    python -m venv /tmp/mo-venv && /tmp/mo-venv/bin/pip install "nvidia-modelopt[onnx]"

then, from the vitedge environment:

    python scripts/modelopt_compare.py EXPORT_DIR --calib calibration/digits/calib \\
        --modelopt-python /tmp/mo-venv/bin/python

Every graph gets the same structure numbers (Casts, compute ops by precision, Q/DQ nodes,
non-GEMM bytes at batch 1: `vitedge.precision.profile`) and the same drift measurement
(FP16-storage emulated ONNX Runtime run vs the export's FP32 ONNX, on the first 64
calibration images). Speed is not measured: no TensorRT here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vitedge.data import load_tensors, open_image_set
from vitedge.manifest import Manifest
from vitedge.precision.fp16 import emulate_fp16
from vitedge.precision.int8 import GATE_SAMPLES, plan_int8
from vitedge.precision.profile import graph_profile, run_logits
from vitedge.precision.trt_ready import find_problems
from vitedge.validate.metrics import compare_logits

MODELOPT_CALL = """
import sys, numpy as np
from modelopt.onnx.quantization import quantize
quantize(sys.argv[1], quantize_mode="int8", calibration_data=np.load(sys.argv[2]), calibration_method=sys.argv[3],
         calibration_eps=["cpu"], output_path=sys.argv[4], log_level="WARNING", disable_mha_qdq=sys.argv[5] == "1")
"""


def run_modelopt(python: str, export_onnx: Path, calib: Path, method: str, out: Path, no_mha: bool) -> float:
    """ModelOpt's ONNX INT8 PTQ in its own interpreter; returns the seconds it took."""
    start = time.perf_counter()
    done = subprocess.run([python, "-c", MODELOPT_CALL, str(export_onnx), str(calib), method, str(out),
                           "1" if no_mha else "0"], capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        sys.exit(f"ModelOpt failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def describe(graph: onnx.ModelProto, reference: np.ndarray, gate: np.ndarray) -> dict[str, Any]:
    drift = compare_logits(reference, run_logits(emulate_fp16(graph), gate))
    return {"profile": graph_profile(graph, (1, *gate.shape[1:])),
            "drift": {k: drift[k] for k in ("samples", "top1_agreement", "cosine_mean", "cosine_min")},
            "readiness_problems": len(find_problems(graph))}


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    base = rows["vitedge accurate"]["profile"]["non_gemm_bytes"]
    base_unfused = rows["vitedge accurate"]["profile"]["non_gemm_bytes_unfused"]
    head = f"{'plan':<26}{'Casts':>6}{'Q/DQ':>6}{'INT8':>6}{'FP16':>6}{'FP32':>6}{'non-GEMM MB':>13}" \
           f"{'vs accurate':>12}{'(unfused)':>11}{'top-1 agr.':>11}{'cos mean':>10}{'cos min':>9}{'TRT-ready':>11}"
    print(head)
    print("-" * len(head))
    for name, row in rows.items():
        p, d = row["profile"], row["drift"]
        ops = p["ops_by_precision"]
        print(f"{name:<26}{p['casts']:>6}{p['qdq_nodes']:>6}{ops.get('int8', 0):>6}{ops.get('fp16', 0):>6}"
              f"{ops.get('fp32', 0):>6}{p['non_gemm_bytes'] / 1e6:>13.2f}{p['non_gemm_bytes'] / base - 1:>+12.1%}"
              f"{p['non_gemm_bytes_unfused'] / base_unfused - 1:>+11.1%}"
              f"{d['top1_agreement']:>11.4f}{d['cosine_mean']:>10.4f}{d['cosine_min']:>9.4f}"
              f"{'yes' if not row['readiness_problems'] else str(row['readiness_problems']) + ' errors':>11}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="an export dir (vitedge export)")
    parser.add_argument("--calib", type=Path, required=True, help="calibration images (folder, .txt or .npz)")
    parser.add_argument("--calib-size", type=int, default=128, help="calibration images (seeded subset)")
    parser.add_argument("--method", default="entropy", choices=("entropy", "max"), help="calibration, both tools")
    parser.add_argument("--modelopt-python", help="python of the venv that has nvidia-modelopt[onnx]; "
                        "without it only vitedge's plans are compared")
    parser.add_argument("--also-no-mha", action="store_true", help="also ModelOpt with disable_mha_qdq=True")
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    args = parser.parse_args()

    manifest = Manifest.load(args.export)
    export_onnx = args.export / manifest["onnx"]["file"] if "onnx" in manifest else args.export / "model.onnx"
    images = open_image_set(args.calib, manifest.labels).subset(args.calib_size, 0)
    x = load_tensors(images, manifest.preprocessing, description="calibration images").x
    gate = np.ascontiguousarray(x[:GATE_SAMPLES])
    reference = run_logits(onnx.load(str(export_onnx)), gate)
    rows: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    fast_graph, _, _, record = plan_int8(export_onnx, x, method="minmax" if args.method == "max" else args.method,
                                         plan="fast")
    seconds = time.perf_counter() - start
    for name in ("accurate", "fast"):
        rows[f"vitedge {name}"] = {"profile": record[name]["profile"], "drift": record[name]["drift"],
                                   "readiness_problems": 0, "groups": record[name]["quantized_groups"]}
    rows["vitedge fast"]["decisions"] = record["fast"]["decisions"]
    print(f"vitedge: both plans in {seconds:.0f} s; fast plan decisions: "
          + ", ".join(f"{d['group']} {'INT8' if d['quantized'] else 'FP16'} (cosine loss {d.get('cosine_loss', 0):.4g})"
                      for d in record["fast"]["decisions"]))
    if args.modelopt_python:
        with tempfile.TemporaryDirectory(prefix="vitedge-modelopt-") as tmp:
            np.save(Path(tmp) / "calib.npy", x)
            variants = [("ModelOpt", False)] + ([("ModelOpt, MHA Q/DQ off", True)] if args.also_no_mha else [])
            for name, no_mha in variants:
                out = Path(tmp) / f"modelopt{'_nomha' if no_mha else ''}.onnx"
                took = run_modelopt(args.modelopt_python, export_onnx, Path(tmp) / "calib.npy", args.method, out,
                                    no_mha)
                rows[name] = describe(onnx.load(str(out)), reference, gate)
                print(f"{name}: quantized in {took:.0f} s")
    else:
        print("ModelOpt: skipped (no --modelopt-python)")
    print(f"\n{manifest['source'].get('spec')}, {len(x)} calibration images ({args.method}); drift: FP16-storage "
          f"emulated vs FP32 export on {len(gate)} of them; non-GEMM bytes at batch 1 with TensorRT's "
          "pointwise/epilogue fusions (and without them: unfused): a proxy, not a timing\n")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
