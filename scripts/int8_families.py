"""INT8 error per transformer family and backend: the issue-12 table, re-measurable.

For each family: export (seeded random init), compile INT8 for ONNX Runtime, the TensorRT plan
(its TensorRT-ready Q/DQ ONNX run with ONNX Runtime on CPU: no TensorRT here) and OpenVINO
(vitedge's per-graph scheme, precision/scheme.py), then rel = |INT8 - FP32| / |FP32| of the
logits on real images (the digit images, resized to the model's input), FP32 = the export run
by ONNX Runtime. `--baseline` adds OpenVINO with the old recipe (NNCF TRANSFORMER everywhere).

    python scripts/int8_families.py                    # reduced-depth models (tests/tiny_families.py)
    python scripts/int8_families.py --full swin levit  # the full timm architectures
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 16]})[0]
                           for i in range(0, len(x), 16)])


def run_openvino(xml: Path | object, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml)) if isinstance(xml, Path) else xml
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.concatenate([compiled(x[i:i + 16])[0] for i in range(0, len(x), 16)])


def openvino_baseline(onnx_path: Path, calib: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The pre-issue-12 recipe: nncf.quantize with model_type=TRANSFORMER for every graph."""
    import nncf
    import openvino as ov

    model = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                          subset_size=len(calib), model_type=nncf.ModelType.TRANSFORMER)
    return run_openvino(model, x)


def measure(family: str, full: bool, work: Path, calib_n: int, val_n: int, baseline: bool) -> dict:
    import tiny_families

    from vitedge import api
    from vitedge.compile import compile_artifact
    from vitedge.data import load_tensors, open_image_set
    from vitedge.errors import EnvironmentProblem
    from vitedge.manifest import Manifest

    arch = tiny_families.FAMILIES[family][0]
    spec = f"timm:{arch}" if full else f"tiny_families:{family}"
    export = work / family / "export"
    start = time.perf_counter()
    api.export(spec, export, random_init_seed=0, num_classes=None if full else 10)
    manifest = Manifest.load(export)
    calib_dir = REPO / "calibration" / "digits" / "calib"
    val = open_image_set(REPO / "calibration" / "digits" / "val", None).subset(val_n, seed=1)
    x = load_tensors(val, manifest.preprocessing).x
    ref = run_onnx(export / "model.onnx", x)
    row = {"family": family, "model": arch if full else f"{arch} (reduced)", "kind": None}
    for target in ("onnxruntime", "tensorrt", "openvino"):
        out = work / family / target
        try:
            m = compile_artifact(export, out, target=target, precision="int8", calib=str(calib_dir),
                                 calib_size=calib_n)
        except EnvironmentProblem:  # no TensorRT here: the plan (TensorRT-ready ONNX) is written anyway
            m = Manifest.load(out)
        if target == "onnxruntime":
            y = run_onnx(out / m["artifact"]["model"], x)
        elif target == "tensorrt":
            y = run_onnx(out / m["artifact"]["onnx"], x)
        else:
            y = run_openvino(out / m["artifact"]["model"], x)
            row["kind"] = m["artifact"].get("int8_scheme", {}).get("kind")
        row[target] = rel_error(y, ref)
    if baseline:
        calib = load_tensors(open_image_set(calib_dir, None).subset(calib_n, seed=0), manifest.preprocessing).x
        row["openvino_old"] = rel_error(openvino_baseline(export / "model.onnx", calib, x), ref)
    row["seconds"] = time.perf_counter() - start
    return row


def main() -> None:
    import tiny_families

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="*", help=f"default: all of {', '.join(tiny_families.FAMILIES)}")
    parser.add_argument("--full", action="store_true", help="full-size timm architectures, not the reduced ones")
    parser.add_argument("--calib", type=int, default=64, help="calibration images")
    parser.add_argument("--val", type=int, default=64, help="images the error is measured on")
    parser.add_argument("--baseline", action="store_true", help="also OpenVINO with NNCF TRANSFORMER everywhere")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    from vitedge import ui

    ui.set_quiet(True)
    print("| model | kind | ONNX Runtime INT8 rel | TensorRT INT8 plan rel | OpenVINO INT8 rel | OV / best other |"
          + (" OpenVINO old recipe rel |" if args.baseline else ""))
    print("|---|---|---|---|---|---|" + ("---|" if args.baseline else ""))
    with tempfile.TemporaryDirectory(prefix="vitedge-int8-families-") as tmp:
        for family in args.families or tiny_families.FAMILIES:
            row = measure(family, args.full, Path(tmp), args.calib, args.val, args.baseline)
            best = min(row["onnxruntime"], row["tensorrt"])
            line = (f"| {row['model']} | {row['kind']} | {row['onnxruntime']:.3f} | {row['tensorrt']:.3f} | "
                    f"{row['openvino']:.3f} | {row['openvino'] / best:.2f}x |")
            if args.baseline:
                line += f" {row['openvino_old']:.3f} |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
