"""Drift of TensorRT-ready graphs (model.trt.onnx) vs their export's FP32 ONNX, FP16 storage emulated.

    python scripts/trt_graph_drift.py EXPORT_DIR ARTIFACT_DIR [ARTIFACT_DIR ...] --data DIR [--size N]

Besides top-1 agreement and cosine it prints what exposes a random-init model, whose logits
barely depend on the input: the relative logit error (max |diff| / max |reference|) and the
input-dependent correlation (Pearson correlation of the logits minus their mean over the
samples, i.e. of the part that depends on the image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx

from vitedge.data import load_tensors, open_image_set
from vitedge.manifest import Manifest
from vitedge.precision.fp16 import emulate_fp16
from vitedge.precision.profile import run_logits
from vitedge.validate.metrics import compare_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True, help="images (folder, .txt or .npz)")
    parser.add_argument("--size", type=int, default=64, help="images (seeded subset)")
    args = parser.parse_args()

    manifest = Manifest.load(args.export)
    x = load_tensors(open_image_set(args.data, manifest.labels).subset(args.size, 0), manifest.preprocessing).x
    reference = run_logits(onnx.load(str(args.export / "model.onnx")), x)
    centred_ref = (reference - reference.mean(axis=0)).ravel()
    print(f"{'artifact':<40}{'FP32 islands':>13}{'top-1 agr.':>11}{'cos mean':>10}{'rel. logit err':>16}"
          f"{'input-dep. corr':>17}")
    for artifact in args.artifacts:
        graph = onnx.load(str(artifact / "model.trt.onnx"))
        out = run_logits(emulate_fp16(graph), x)
        drift = compare_logits(reference, out)
        centred = (out - out.mean(axis=0)).ravel()
        islands = len((Manifest.load(artifact).get("fp16_plan") or {}).get("fp32_islands", []))
        print(f"{str(artifact):<40}{islands:>13}{drift['top1_agreement']:>11.4f}{drift['cosine_mean']:>10.5f}"
              f"{np.abs(out - reference).max() / np.abs(reference).max():>16.4g}"
              f"{np.corrcoef(centred_ref, centred)[0, 1]:>17.4f}")


if __name__ == "__main__":
    main()
