"""Why PyTorch's b8 latency moves between runs on a many-core host, and where OpenVINO INT8's time goes.

    python scripts/xeon_probe.py --work /tmp/vits --threads 4 [--batch 8] [--parts alone,interleaved,counters]
    python scripts/xeon_probe.py --work /tmp/vits --parts settle --settle 0,20 --policies default,PASSIVE
    python scripts/xeon_probe.py --work /tmp/vits --parts policy --reps 3

Parts (timm ViT-S/16 with a seeded random init, or --model; vitedge's OpenVINO INT8 of it):
- alone: PyTorch FP32 alone in fresh processes, unpinned vs pinned to the first --threads cores,
  OpenMP spin-waiting vs passive: how much of the spread is the host and how much the setup;
- interleaved: PyTorch and OpenVINO INT8 interleaved in one process, unpinned and pinned;
- settle: per OpenMP policy (default | PASSIVE | NAME=VALUE), each runner alone and both
  interleaved with --settle ms of idle time before every run (what `vitedge bench` now does);
- policy: PyTorch alone per policy, policies alternated over --reps fresh processes;
- counters: OpenVINO per-layer counters of the INT8 artifact at b8 and b1 (time per layer
  type and kernel).
A script, not a test: the numbers are this host's (docs/bench.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _pct(values: list[float]) -> str:
    import numpy as np

    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return f"p10 {p10:.1f} / p50 {p50:.1f} / p90 {p90:.1f} ms"


def _size(export_dir: str | Path) -> tuple[int, int]:
    from vitedge.manifest import Manifest

    return tuple(Manifest.load(export_dir).preprocessing.input_size)


def torch_alone(export_dir: str, threads: int, batch: int, iters: int) -> None:
    """Child: PyTorch reference alone, timed."""
    import numpy as np

    import vitedge

    runner = vitedge.load(export_dir, backend="pytorch", threads=threads).runner
    x = np.random.default_rng(0).standard_normal((batch, 3, *_size(export_dir))).astype(np.float32)
    for _ in range(3):
        runner.infer(x)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        runner.infer(x)
        times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps(times))


def interleaved(export_dir: str, int8_dir: str, threads: int, batch: int, iters: int, settle_ms: float = 0.0,
                only: str = "") -> None:
    """Child: PyTorch and OpenVINO INT8 interleaved in one process (as bench does), with SETTLE_MS of
    idle time before each timed run (so the previous runner's spinning threads go to sleep)."""
    import numpy as np
    from bench_cpu import Predicting

    runners = {"pytorch": lambda: Predicting(Path(export_dir), threads, backend="pytorch"),
               "openvino-int8": lambda: Predicting(Path(int8_dir), threads)}
    runners = {k: make() for k, make in runners.items() if not only or k == only}
    x = np.random.default_rng(0).standard_normal((batch, 3, *_size(export_dir))).astype(np.float32)
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(3 + iters):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            if settle_ms:
                time.sleep(settle_ms / 1e3)
            start = time.perf_counter()
            runners[name].infer(x)
            if i >= 3:
                times[name].append((time.perf_counter() - start) * 1e3)
    print(json.dumps(times))


def child(args: list[str], env: dict[str, str] | None = None, cores: str | None = None) -> object:
    cmd = [sys.executable, __file__, *args]
    if cores:
        cmd = ["taskset", "-c", cores, *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _policy_env(policy: str) -> dict[str, str] | None:
    """default | PASSIVE | NAME=VALUE (an environment variable for OpenMP)."""
    if policy == "default":
        return None
    if policy == "PASSIVE":
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    name, value = policy.split("=", 1)
    return {name: value}


def _report(label: str, times: dict[str, list[float]]) -> None:
    import numpy as np

    parts = [f"{name} {_pct(values)}" for name, values in times.items()]
    if len(times) == 2:
        parts.append(f"p50 ratio {np.median(times['pytorch']) / np.median(times['openvino-int8']):.2f}x")
    print(f"- {label}: " + "; ".join(parts), flush=True)


def perf_counters(int8_dir: Path, threads: int, batch: int, bf16: bool = False) -> str:
    import numpy as np
    import openvino as ov

    props = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "PERFORMANCE_HINT": "LATENCY",
             "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True}
    compiled = ov.Core().compile_model(str(int8_dir / "model.xml"), "CPU", props)
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((batch, 3, *_size(int8_dir))).astype(np.float32)
    for _ in range(5):
        request.infer({0: x})
    totals: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    runs = 10
    for _ in range(runs):
        request.infer({0: x})
        for info in request.profiling_info:
            if info.status.name != "EXECUTED":
                continue
            key = (info.node_type, info.exec_type)
            totals[key][0] += info.real_time.total_seconds() * 1e3 / runs
            totals[key][1] += 1 / runs
    rows = sorted(totals.items(), key=lambda kv: -kv[1][0])
    total = sum(v[0] for v in totals.values())
    lines = [f"per-layer counters, b{batch}, {threads} threads, float parts {'bf16' if bf16 else 'f32'}: "
             f"sum {total:.1f} ms", "| layer type | kernel | ms | share | layers |", "|---|---|---|---|---|"]
    lines += [f"| {k[0]} | {k[1]} | {v[0]:.2f} | {v[0] / total:.0%} | {v[1]:.0f} |" for k, v in rows[:18]]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-torch":
        torch_alone(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--child-interleaved":
        interleaved(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]),
                    float(sys.argv[7]), sys.argv[8] if len(sys.argv) > 8 else "")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--model", default="timm:vit_small_patch16_224")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--calib", default=str(REPO / "calibration" / "digits" / "calib"))
    parser.add_argument("--parts", default="alone,interleaved,counters")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--policies", default="default,PASSIVE,GOMP_SPINCOUNT=10000")
    parser.add_argument("--settle", default="0,2,10,30", help="ms of idle time before each timed run (part settle)")
    args = parser.parse_args()
    from vitedge import api

    work = Path(args.work)
    export_dir, int8_dir = work / "export", work / "ov-int8"
    if not (export_dir / "vitedge.json").is_file():
        api.export(args.model, export_dir, random_init_seed=0 if args.model.startswith("timm:") else None)
    if not (int8_dir / "vitedge.json").is_file():
        api.compile(export_dir, int8_dir, target="openvino", precision="int8", calib=args.calib, calib_size=300)
    t, b, n = str(args.threads), str(args.batch), str(args.iters)
    cores = f"0-{args.threads - 1}"
    parts = args.parts.split(",")
    print(f"host: {os.cpu_count()} CPUs; load {os.getloadavg()}", flush=True)
    if "alone" in parts:
        print(f"\n## PyTorch FP32 alone, {t} threads, b{b}, {n} runs per fresh process", flush=True)
        for label, env, pin in [("unpinned, OpenMP default", None, None),
                                ("unpinned, OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, None),
                                (f"taskset {cores}, OpenMP default", None, cores),
                                (f"taskset {cores}, PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, cores),
                                ("unpinned, OpenMP default (again)", None, None)]:
            times = child(["--child-torch", str(export_dir), t, b, n], env, pin)
            print(f"- {label}: {_pct(times)}", flush=True)
    if "interleaved" in parts:
        print(f"\n## PyTorch FP32 and OpenVINO INT8 interleaved in one process, {t} threads, b{b}", flush=True)
        for label, env, pin in [("unpinned, PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, None),
                                (f"taskset {cores}, PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}, cores),
                                ("unpinned, PASSIVE (again)", {"OMP_WAIT_POLICY": "PASSIVE"}, None),
                                (f"taskset 0-{2 * args.threads - 1} (2x cores), PASSIVE",
                                 {"OMP_WAIT_POLICY": "PASSIVE"}, f"0-{2 * args.threads - 1}")]:
            _report(label, child(["--child-interleaved", str(export_dir), str(int8_dir), t, b, n, "0"], env, pin))
    if "settle" in parts:
        print(f"\n## the same, unpinned, with idle time before each timed run, {t} threads, b{b}", flush=True)
        for policy in args.policies.split(","):
            env = _policy_env(policy)
            for only in ("pytorch", "openvino-int8"):
                _report(f"{only} alone, OpenMP {policy}", child(["--child-interleaved", str(export_dir), str(int8_dir),
                                                                  t, b, n, "0", only], env))
            for settle in args.settle.split(","):
                _report(f"OpenMP {policy}, settle {settle} ms",
                        child(["--child-interleaved", str(export_dir), str(int8_dir), t, b, n, settle], env))
    if "policy" in parts:
        print(f"\n## PyTorch FP32 alone per OpenMP policy, {t} threads, b{b}: p50 ms per fresh process, "
              f"policies alternated", flush=True)
        import numpy as np

        seen: dict[str, list[float]] = {policy: [] for policy in args.policies.split(",")}
        for _ in range(args.reps):
            for policy in seen:
                seen[policy].append(float(np.median(child(["--child-torch", str(export_dir), t, b, n],
                                                          _policy_env(policy)))))
        for policy, p50s in seen.items():
            print(f"- {policy}: " + ", ".join(f"{v:.1f}" for v in p50s), flush=True)
    if "counters" in parts:
        print("\n## OpenVINO INT8 per-layer counters", flush=True)
        print(perf_counters(int8_dir, args.threads, args.batch), flush=True)
        print(perf_counters(int8_dir, args.threads, 1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
