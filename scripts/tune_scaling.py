"""`vitedge tune` on this machine, then a scaling table for what it chose, as Markdown.

    python scripts/tune_scaling.py --model timm:vit_small_patch16_224 --threads 4 --work /tmp/vits

1. exports MODEL (timm/torchvision specs: `--random-init 0`, rebuilt bit-identically by the
   reference: good for speed and for drift against the reference, not for accuracy);
2. runs `vitedge.tune` (OpenVINO + ONNX Runtime, every precision, the demo's digit images
   for calibration and validation) with --threads for every runner;
3. times OpenVINO + NNCF with no options (built by hand, as scripts/bench_cpu.py does)
   against tune's openvino-int8 and PyTorch, interleaved, at --threads;
4. benches the chosen artifact against PyTorch at batches --scaling-batches for each of
   --scaling-threads (one interleaved `vitedge bench` run per thread count).
Prints every table and writes them, with the CPU and tool versions, to WORK/tune_scaling.md.
A script, not a test: the numbers are this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from vitedge.validate.latency import bound_openmp_spin  # noqa: E402

bound_openmp_spin()  # before torch loads, as the vitedge command does


def _md(rows: list[list[Any]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def tune_table(result: dict[str, Any]) -> str:
    batches = [str(b) for b in result["batches"]]
    rows = []
    for c in result["candidates"]:
        res = c["result"]
        if c["status"] != "benched":
            rows.append([c["name"], "-", *["-"] * (2 * len(batches)), "-", f"{c['status']}: {c['reason']}"])
            continue
        ref = res["reference_p50_ms"]
        rows.append([("**" + c["name"] + "** (chosen)") if c["name"] == result["chosen"] else c["name"],
                     c["precision_run"],
                     *[f"{res['p50_ms'][b]:.2f}" for b in batches],
                     *[f"{ref[b] / res['p50_ms'][b]:.2f}x" for b in batches],
                     f"{res['top1_agreement']:.4f}", c["reason"]])
    head = ["candidate", "runs in", *[f"p50 ms b{b}" for b in batches], *[f"vs PyTorch b{b}" for b in batches],
            "top-1 agreement", "outcome"]
    ref_row = next(c["result"]["reference_p50_ms"] for c in result["candidates"] if c["status"] == "benched")
    return (_md(rows, head) + "\n\nPyTorch FP32 p50: " + ", ".join(f"b{b} {ref_row[b]:.2f} ms" for b in batches)
            + f"\n\nChosen: {result['why']}")


def nncf_by_hand(export_dir: Path, int8_dir: Path, calib: str, threads: int, batches: list[int],
                 warmup: int, iters: int) -> str:
    """OpenVINO + NNCF defaults by hand vs tune's openvino-int8 vs PyTorch, interleaved."""
    import numpy as np
    from bench_cpu import HandWiredOpenVINO, Predicting, time_interleaved

    from vitedge.data import load_tensors, open_image_set
    from vitedge.manifest import Manifest

    manifest = Manifest.load(export_dir)
    calibration = load_tensors(open_image_set(calib, manifest.labels).subset(300, 0), manifest.preprocessing,
                               description="calibration images").x
    runners = {"PyTorch FP32": Predicting(export_dir, threads, backend="pytorch"),
               "OpenVINO INT8, NNCF defaults by hand": HandWiredOpenVINO(export_dir / "model.onnx", calibration,
                                                                         threads),
               "OpenVINO INT8 (vitedge tune candidate)": Predicting(int8_dir, threads)}
    import openvino as ov

    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):  # the float parts in bf16, as
        from vitedge.backends.openvino import OpenVINORunner  # NNCF-by-hand gets by default on such CPUs

        runners["OpenVINO INT8 (vitedge tune candidate), float parts bf16"] = OpenVINORunner(
            int8_dir / "model.xml", {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY",
                                     "INFERENCE_NUM_THREADS": threads})
    h, w = calibration.shape[2:]
    rows = []
    for batch in batches:
        x = np.ascontiguousarray(np.resize(calibration, (batch, 3, h, w)), dtype=np.float32)
        times = time_interleaved(runners, x, warmup, iters)
        p50 = {name: float(np.percentile(v, 50)) for name, v in times.items()}
        for name, value in p50.items():
            rows.append([name, batch, f"{value:.2f}", f"{p50['PyTorch FP32'] / value:.2f}x",
                         f"{value / p50['OpenVINO INT8, NNCF defaults by hand']:.2f}"])
    return _md(rows, ["runner", "batch", "p50 ms", "vs PyTorch", "latency vs NNCF defaults"])


def scaling(export_dir: Path, best: Path, label: str, data: str, threads_list: list[int], batches: list[int],
            warmup: int, iters: int, progress: Any = None) -> str:
    """PyTorch and the chosen artifact, one interleaved bench per thread count; PROGRESS(table so far)."""
    from vitedge.validate.bench import run_bench

    rows: list[list[Any]] = []
    for threads in threads_list:
        report = run_bench([best], reference=export_dir, data=data, batches=batches, max_images=16,
                           warmup=warmup, iters=iters, threads=threads)
        for entry, name in ((report["reference"], "PyTorch FP32"), (report["artifacts"][0], label)):
            for row in entry["latency"]:
                if row["measured"]:
                    rows.append([name, threads, row["batch"], f"{row['p50_ms']:.2f}", f"{row['throughput']:.1f}"])
        if progress is not None:
            progress(_md(rows, ["runner", "threads", "batch", "p50 ms", "images/s"]))
    return _md(rows, ["runner", "threads", "batch", "p50 ms", "images/s"])


def _write(work: Path, md: str | None, sections: list[str]) -> None:
    text = "\n\n".join(sections) + "\n"
    (work / "tune_scaling.md").write_text(text)
    if md:
        Path(md).write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm:vit_small_patch16_224")
    parser.add_argument("--work", required=True)
    parser.add_argument("--data", default=str(REPO / "calibration" / "digits" / "val"))
    parser.add_argument("--calib", default=str(REPO / "calibration" / "digits" / "calib"))
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--targets", default="openvino,onnxruntime")
    parser.add_argument("--precisions", default=None)
    parser.add_argument("--no-knobs", action="store_true", help="no keep-float INT8 variants")
    parser.add_argument("--gate", action="append", default=None)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--max-images", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--budget-minutes", type=float, default=None)
    parser.add_argument("--nncf", action="store_true", help="also time NNCF defaults by hand")
    parser.add_argument("--scaling-threads", default="", help="e.g. 1,2,4,8,16 (empty: no scaling table)")
    parser.add_argument("--scaling-batches", default="1,8,32")
    parser.add_argument("--md", default=None, help="write the tables here too, after each step")
    args = parser.parse_args()

    from vitedge import api
    from vitedge.envinfo import cpu_info, tool_versions
    from vitedge.errors import GateFailed
    from vitedge.tune import tune

    work = Path(args.work)
    export_dir = work / "export"
    if not (export_dir / "vitedge.json").is_file():
        seeded = args.model.startswith(("timm:", "torchvision:"))  # no checkpoint: a seeded random init
        api.export(args.model, export_dir, random_init_seed=0 if seeded else None)
    cpu = cpu_info()
    versions = {k: v for k, v in tool_versions().items() if k in ("torch", "onnxruntime", "openvino", "nncf")}
    sections = [f"# {args.model} on {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['isa'])})",
                f"tools: {json.dumps(versions)}; tune threads: {args.threads}"]
    batches = [int(b) for b in args.batches.split(",")]
    start = time.perf_counter()
    try:
        result = tune(export_dir, work / "tune", data=args.data, calib=args.calib,
                      targets=args.targets.split(","), knobs=not args.no_knobs,
                      precisions=args.precisions.split(",") if args.precisions else None, gates=args.gate or [],
                      batches=batches, budget_minutes=args.budget_minutes, threads=args.threads,
                      max_images=args.max_images, warmup=args.warmup, iters=args.iters)
    except GateFailed as exc:
        print(f"tune: {exc}")
        result = json.loads((work / "tune" / "tune.json").read_text())
    sections += [f"## tune ({time.perf_counter() - start:.0f} s)", tune_table(result)]
    print("\n\n".join(sections[-2:]), flush=True)
    _write(work, args.md, sections)
    int8 = work / "tune" / "candidates" / "openvino-int8"
    if args.nncf and (int8 / "vitedge.json").is_file():
        sections += [f"## OpenVINO INT8 vs NNCF defaults by hand ({args.threads} threads)",
                     nncf_by_hand(export_dir, int8, args.calib, args.threads, batches, args.warmup, args.iters)]
        print("\n\n".join(sections[-2:]), flush=True)
        _write(work, args.md, sections)
    if args.scaling_threads and result.get("chosen"):
        threads_list = [int(t) for t in args.scaling_threads.split(",")]
        title = f"## scaling: {result['chosen']} and PyTorch FP32"
        sections += [title, scaling(export_dir, work / "tune" / "best", result["chosen"], args.data, threads_list,
                                    [int(b) for b in args.scaling_batches.split(",")], args.warmup,
                                    max(args.iters // 2, 5), lambda table: _write(work, args.md,
                                                                                  [*sections, title, table]))]
        print("\n\n".join(sections[-2:]), flush=True)
    _write(work, args.md, sections)
    print(f"wrote {work / 'tune_scaling.md'}; threads available: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
