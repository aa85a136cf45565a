"""Latency harness: every runner on the same input, interleaved, after warm-up.

Runners are timed in one loop: each iteration runs every runner once, starting from a
different one each time (rotating order), so drifting clocks, thermal state and noisy
neighbours hit all of them alike. Each sample is the runner's own `last_ms` (perf_counter
on CPU, CUDA events on GPU), never a timer around our Python code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from vitedge.backends.base import Runner

# The statistics every (runner, batch) gets; gates read them by these names.
STAT_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "min_ms", "max_ms", "throughput")
# Speedups of a candidate over the reference: reference statistic / candidate statistic.
SPEEDUP_KEYS = {"speedup_p50": "p50_ms", "speedup_p90": "p90_ms", "speedup_mean": "mean_ms"}


def rotations(names: Sequence[str], count: int) -> list[list[str]]:
    """`count` run orders: iteration i starts at runner i mod n and wraps around."""
    n = len(names)
    return [[names[(i + j) % n] for j in range(n)] for i in range(count)]


def measure_interleaved(runners: Mapping[str, Runner], x: np.ndarray, *, warmup: int, iters: int,
                        track: Callable[[list[list[str]]], Iterable[list[str]]] | None = None,
                        ) -> dict[str, list[float]]:
    """Per runner, `iters` latency samples (ms) for input x, after `warmup` interleaved runs each.

    `track` wraps the list of per-iteration run orders (a progress bar).
    """
    names = list(runners)
    samples: dict[str, list[float]] = {name: [] for name in names}
    orders = rotations(names, warmup + iters)
    for i, order in enumerate(track(orders) if track is not None else orders):
        for name in order:
            runners[name].infer(x)
            if i >= warmup:
                samples[name].append(float(runners[name].last_ms))
    return samples


def summarize(samples_ms: Sequence[float], batch: int) -> dict[str, float]:
    """Percentiles, mean, sample stdev and throughput (images/s from the mean) of one series."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    mean = float(arr.mean())
    return {
        "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": mean,
        "stdev_ms": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min_ms": float(arr.min()), "max_ms": float(arr.max()),
        "throughput": batch * 1e3 / mean if mean > 0 else float("inf"),
    }


def speedups(reference: Mapping[str, float], candidate: Mapping[str, float]) -> dict[str, float]:
    """Reference time / candidate time for p50, p90 and mean (>1: the candidate is faster)."""
    return {key: reference[stat] / candidate[stat] if candidate[stat] > 0 else float("inf")
            for key, stat in SPEEDUP_KEYS.items()}


def process_rss_bytes() -> int:
    """Resident set size of this process (for the memory a runner adds when it loads)."""
    import psutil

    return int(psutil.Process().memory_info().rss)
