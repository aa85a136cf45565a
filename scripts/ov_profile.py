"""Where OpenVINO's time goes: per-node performance counters of OpenVINO artifacts, side by side.

    python scripts/ov_profile.py ART [ART ...] [--default EXPORT_DIR] --batch 8 --threads 2

ART: an OpenVINO artifact dir (its recorded run-time properties and shapes apply);
--default EXPORT_DIR adds the yardstick "OpenVINO default" (the FP32 ONNX, default properties).
Prints, per node type and kernel (the kernel name carries the precision it ran in:
brgemm_avx512_amx_I8, jit_avx512_bf16, ...), the ms per run at --batch, summed over --iters
runs after warm-up, and each model's total. A script, not a test: the numbers are this CPU's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    from vitedge.backends.base import artifact_path
    from vitedge.backends.openvino import perf_profile, runtime_properties
    from vitedge.envinfo import cpu_info
    from vitedge.manifest import Manifest

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="*", type=Path)
    parser.add_argument("--default", type=Path, help="export dir: add OpenVINO default on its FP32 ONNX")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    columns: dict[str, list[dict]] = {}
    if args.default is not None:
        props = {"INFERENCE_NUM_THREADS": args.threads} if args.threads else {}
        columns["openvino-default"] = perf_profile(artifact_path(args.default, Manifest.load(args.default)), props,
                                                   args.batch, args.iters)
    for art in args.artifacts:
        manifest = Manifest.load(art)
        columns[art.name] = perf_profile(artifact_path(art, manifest),
                                         runtime_properties(manifest.runtime, args.threads), args.batch, args.iters,
                                         static=manifest.runtime.get("shapes") == "static")
    cpu = cpu_info()
    print(f"CPU {cpu['model']}; ISA {', '.join(cpu['isa'])}; batch {args.batch}; threads {args.threads or 'all'}; "
          f"ms per run (PERF_COUNT, {args.iters} runs)")
    names = list(columns)
    keys = sorted({(r["node_type"], r["kernel"]) for rows in columns.values() for r in rows},
                  key=lambda k: -max(next((r["ms"] for r in columns[n] if (r["node_type"], r["kernel"]) == k), 0)
                                     for n in names))
    print("| node type | kernel | " + " | ".join(names) + " |")
    print("|---|---|" + "---:|" * len(names))
    for node_type, kernel in keys:
        cells = []
        for name in names:
            row = next((r for r in columns[name] if (r["node_type"], r["kernel"]) == (node_type, kernel)), None)
            cells.append(f"{row['ms']:.2f} ({row['nodes']})" if row and row["ms"] >= 0.01 else "")
        if any(cells):
            print(f"| {node_type} | {kernel} | " + " | ".join(cells) + " |")
    print("| **total** | | " + " | ".join(f"**{sum(r['ms'] for r in columns[n]):.1f}**" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
