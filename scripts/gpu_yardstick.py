"""The bar a TensorRT engine must beat on a GPU: PyTorch latency of timm ViT-S/16 (random init,
so no weights are downloaded; latency does not depend on the weights).

    PYTHONPATH=$PWD python3 scripts/gpu_yardstick.py [--batches 1,8,64] [--iters 100] [--json OUT]

For FP32 (TF32 off: real FP32 matmuls and convolutions) and FP16 (model and input in half):
eager, torch.compile() and torch.compile(mode="reduce-overhead") (CUDA graphs), each at every
batch size; each point timed with CUDA events around one forward pass after warm-up, reported
as p50 (and p90) over --iters runs. Without a CUDA GPU it says so and exits 3, measuring nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

MODEL = "vit_small_patch16_224"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(model, x, warmup: int, iters: int, torch) -> dict[str, float]:  # noqa: ANN001 - torch objects
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(iters):
            start.record()
            model(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return {"p50_ms": round(statistics.median(times), 3), "p90_ms": round(_percentile(times, 0.9), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--modes", default="eager,compile,reduce-overhead")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_yardstick: torch is not installed; nothing measured", file=sys.stderr)
        return 3
    if not torch.cuda.is_available():
        print(f"gpu_yardstick: no CUDA GPU visible to PyTorch {torch.__version__} (torch.cuda.is_available() is "
              "False); nothing measured", file=sys.stderr)
        return 3
    import timm

    batches = [int(b) for b in args.batches.split(",")]
    modes = args.modes.split(",")
    device = torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = torch.cuda.get_device_name(device)
    cc = "{}.{}".format(*torch.cuda.get_device_capability(device))
    header = (f"{MODEL} (timm {timm.__version__}, random init) on {gpu} (compute capability {cc}), torch "
              f"{torch.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}")
    print(header)
    print(f"CUDA events around one forward pass, {args.warmup} warm-up + {args.iters} timed runs; FP32 with TF32 off")
    print(f"{'precision':<10}{'mode':<18}" + "".join(f"{f'b{b} p50 / p90 ms':>22}" for b in batches))
    results = []
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        for mode in modes:
            row = {"precision": precision, "mode": mode, "batches": {}}
            cells = []
            base = timm.create_model(MODEL, pretrained=False).eval().to(device=device, dtype=dtype)
            try:
                started = time.perf_counter()
                model = base if mode == "eager" else torch.compile(
                    base, mode="reduce-overhead" if mode == "reduce-overhead" else None)
                for batch in batches:
                    x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
                    row["batches"][batch] = measure(model, x, args.warmup, args.iters, torch)
                    cells.append(f"{row['batches'][batch]['p50_ms']:.3f} / {row['batches'][batch]['p90_ms']:.3f}")
                row["seconds"] = round(time.perf_counter() - started, 1)
            except Exception as exc:  # noqa: BLE001 - e.g. torch.compile without a working Triton
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                cells.append(f"failed: {row['error']}")
            print(f"{precision:<10}{mode:<18}" + "".join(f"{c:>22}" for c in cells), flush=True)
            results.append(row)
            del base
            torch.cuda.empty_cache()
            if mode != "eager":
                torch._dynamo.reset()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"header": header, "iters": args.iters, "warmup": args.warmup, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
