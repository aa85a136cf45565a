"""Latency harness: every runner on the same input, interleaved, after warm-up.

Runners are timed in one loop: each iteration runs every runner once, starting from a
different one each time (rotating order), so drifting clocks, thermal state and noisy
neighbours hit all of them alike. Each sample is the runner's own `last_ms` (perf_counter
on CPU, CUDA events on GPU), never a timer around our Python code.

`measure_interleaved` can idle `settle_ms` before each run (default `SETTLE_MS`, 0: an idle VM
is slow to wake); `bound_openmp_spin` keeps PyTorch's OpenMP spin-wait short instead of off
(OMP_WAIT_POLICY=PASSIVE made the reference 20-45% slower on a 16-core Xeon and about 2x on
the 2-core VM: see docs/bench.md).

Sample i of every runner comes from the same round i, so two runners' samples are paired:
a ratio's confidence interval is bootstrapped over rounds (`ratio_interval`), which keeps
a burst of outside load in one round from counting for one runner only. `OutsideLoad`
measures how much CPU other processes took while we timed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from vitedge.backends.base import Runner

# The statistics every (runner, batch) gets; gates read them by these names.
STAT_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "min_ms", "max_ms", "throughput")
# Dispersion of one series: p90 / p50 and the coefficient of variation (stdev / mean).
DISPERSION_KEYS = ("p90_p50", "cv")
# Speedups of a candidate over the reference: reference statistic / candidate statistic.
SPEEDUP_KEYS = {"speedup_p50": "p50_ms", "speedup_p90": "p90_ms", "speedup_mean": "mean_ms"}


# Idle time before each run (ms). 0: on the quiet 2-core VM a 20 ms pause let the vCPUs go idle and
# PyTorch's next run took 16 ms instead of 1.8 (the demo, b1); the bounded OpenMP spin alone kept
# every runner at its own speed there and within the Xeon's run-to-run spread (docs/bench.md).
SETTLE_MS = 0.0
# libgomp spin iterations before an idle OpenMP thread sleeps (default 300000, tens of ms):
# long enough to stay hot between the parallel regions of one forward pass, short after it.
OPENMP_SPINCOUNT = "10000"


def bound_openmp_spin() -> bool:
    """Keep PyTorch's OpenMP threads from spin-waiting long after a run (they take the CPU from the
    runner timed next), without making them sleep between the regions of a forward pass as
    OMP_WAIT_POLICY=PASSIVE does. libgomp reads GOMP_SPINCOUNT once, when torch loads, so this
    works when called before torch is imported (the CLI does) or under the variable; a user's own
    OMP_WAIT_POLICY / GOMP_SPINCOUNT is kept. Returns whether torch's threads may still spin long."""
    if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPINCOUNT)
    policy = os.environ.get("OMP_WAIT_POLICY", "").upper()
    if policy == "PASSIVE":
        return False
    return policy == "ACTIVE" or "GOMP_SPINCOUNT" not in os.environ


def openmp_setting() -> str:
    """How PyTorch's OpenMP threads wait, as the environment sets it (recorded in reports)."""
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if name in os.environ:
            return f"{name}={os.environ[name]}"
    return "libgomp default"


def rotations(names: Sequence[str], count: int) -> list[list[str]]:
    """`count` run orders: iteration i starts at runner i mod n and wraps around."""
    n = len(names)
    return [[names[(i + j) % n] for j in range(n)] for i in range(count)]


def measure_interleaved(runners: Mapping[str, Runner], x: np.ndarray, *, warmup: int, iters: int,
                        track: Callable[[list[list[str]]], Iterable[list[str]]] | None = None,
                        settle_ms: float = SETTLE_MS) -> dict[str, list[float]]:
    """Per runner, `iters` latency samples (ms) for input x, after `warmup` interleaved runs each,
    every run preceded by `settle_ms` of idle time (none by default).

    `track` wraps the list of per-iteration run orders (a progress bar).
    """
    names = list(runners)
    samples: dict[str, list[float]] = {name: [] for name in names}
    orders = rotations(names, warmup + iters)
    for i, order in enumerate(track(orders) if track is not None else orders):
        for name in order:
            if settle_ms > 0:
                time.sleep(settle_ms / 1e3)
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
        "p90_p50": float(p90 / p50) if p50 > 0 else float("inf"),
        "cv": float(arr.std(ddof=1) / mean) if arr.size > 1 and mean > 0 else 0.0,
    }


def speedups(reference: Mapping[str, float], candidate: Mapping[str, float]) -> dict[str, float]:
    """Reference time / candidate time for p50, p90 and mean (>1: the candidate is faster)."""
    return {key: reference[stat] / candidate[stat] if candidate[stat] > 0 else float("inf")
            for key, stat in SPEEDUP_KEYS.items()}


def process_rss_bytes() -> int:
    """Resident set size of this process (for the memory a runner adds when it loads)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


# Bootstrap settings: a 95% interval from 2000 resamples of the rounds, seeded (same report,
# same interval).
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
_STATISTICS = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "min_ms": 0.0, "max_ms": 100.0}


def statistic(samples: np.ndarray, stat: str, axis: int = -1) -> np.ndarray:
    """A latency statistic (p50_ms, p90_ms, p99_ms, min_ms, max_ms, mean_ms) along AXIS."""
    if stat == "mean_ms":
        return samples.mean(axis=axis)
    if stat not in _STATISTICS:
        raise ValueError(f"no bootstrap for {stat}")
    return np.percentile(samples, _STATISTICS[stat], axis=axis)


def ratio_interval(numerator_ms: Sequence[float], denominator_ms: Sequence[float] | None = None,
                   stat: str = "p50_ms", *, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = 0) -> tuple[float, float]:
    """Confidence interval of stat(numerator) / stat(denominator) by a paired bootstrap over rounds.

    Sample i of both series must come from the same interleaved round. Without a denominator,
    the interval of stat(numerator) itself. Speedup over the reference: numerator = reference.
    """
    num = np.asarray(numerator_ms, dtype=np.float64)
    den = None if denominator_ms is None else np.asarray(denominator_ms, dtype=np.float64)
    if num.size == 0 or (den is not None and den.shape != num.shape):
        raise ValueError("paired samples need the same number of rounds")
    rounds = np.random.default_rng(seed).integers(0, num.size, size=(resamples, num.size))
    values = statistic(num[rounds], stat)
    if den is not None:
        values = values / statistic(den[rounds], stat)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _our_cpus() -> list[int]:
    """The CPUs this process may run on (a container or `taskset` may allow fewer than the machine has)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


def _busy_cpu_s(cpus: list[int]) -> float:
    """CPU seconds the CPUS spent busy (steal counts: a neighbour VM took it; guest time is
    already inside user time)."""
    import psutil

    per_cpu = psutil.cpu_times(percpu=True)
    total = 0.0
    for times in (per_cpu[i] for i in cpus if i < len(per_cpu)):
        total += sum(times) - times.idle - getattr(times, "iowait", 0.0) \
            - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return float(total)


def _own_cpu_s() -> float:
    """CPU seconds of this process (all its threads) and its waited-for children."""
    import psutil

    t = psutil.Process().cpu_times()
    return float(t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0))


# Other processes using more than this share of the machine's CPU time while we time make
# the latency verdicts `unreliable`: a quiet machine's daemons stay well below it.
OUTSIDE_LOAD_LIMIT = 0.10


class OutsideLoad:
    """Context manager: how much CPU time other processes took while the block ran.

    Measured as the busy time of the CPUs this process may use minus this process's own, so
    short-lived processes count too. `result()` gives the seconds, the share of the machine's capacity and whether
    it is above `limit`.
    """

    def __init__(self, limit: float = OUTSIDE_LOAD_LIMIT) -> None:
        self.limit = limit
        self.cpus = _our_cpus()
        self.cores = len(self.cpus)
        self._start: tuple[float, float, float] | None = None
        self._stop: tuple[float, float, float] | None = None

    def _now(self) -> tuple[float, float, float]:
        return time.perf_counter(), _busy_cpu_s(self.cpus), _own_cpu_s()

    def __enter__(self) -> "OutsideLoad":
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = self._now()

    def result(self) -> dict[str, Any]:
        if self._start is None or self._stop is None:
            raise RuntimeError("OutsideLoad.result() before the block ended")
        wall = max(self._stop[0] - self._start[0], 1e-9)
        others = max((self._stop[1] - self._start[1]) - (self._stop[2] - self._start[2]), 0.0)
        share = others / (wall * self.cores)
        return {"other_cpu_s": others, "wall_s": wall, "cores": self.cores, "share": share,
                "limit": self.limit, "detected": share > self.limit}
