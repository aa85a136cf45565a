"""The latency harness's statistics: dispersion, paired bootstrap intervals, outside-load detection."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from vitedge.backends.base import Runner
from vitedge.validate.latency import (
    OPENMP_SPINCOUNT,
    OutsideLoad,
    measure_interleaved,
    ratio_interval,
    summarize,
)


def test_dispersion_of_a_series() -> None:
    stats = summarize([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0], batch=2)
    assert stats["p50_ms"] == 1.0 and stats["p90_ms"] == pytest.approx(1.2)
    assert stats["p90_p50"] == pytest.approx(1.2)
    assert stats["cv"] == pytest.approx(np.std([1.0] * 9 + [3.0], ddof=1) / 1.2)
    assert summarize([2.0, 2.0], batch=1)["cv"] == 0.0


def test_paired_rounds_cancel_load_that_hits_both_runners() -> None:
    """A burst that slows every runner in a round leaves their ratio alone: the paired interval
    stays tight where treating the two series as independent would not."""
    rng = np.random.default_rng(3)
    burst = rng.lognormal(0.0, 0.5, 40)  # per-round slowdown shared by both runners
    reference, candidate = 10.0 * burst, 5.0 * burst * rng.lognormal(0.0, 0.01, 40)
    low, high = ratio_interval(reference, candidate)
    assert 1.95 < low < 2.0 < high < 2.05
    shuffled = ratio_interval(reference, rng.permutation(candidate))  # pairing lost
    assert shuffled[1] - shuffled[0] > 5 * (high - low)
    assert ratio_interval(reference, candidate) == (low, high)  # seeded: the same report, the same interval
    with pytest.raises(ValueError):
        ratio_interval(reference, candidate[:-1])


def test_outside_load_is_detected_with_a_busy_process() -> None:
    """A real process spinning on one core while we sleep: other processes' CPU time is counted."""
    hog = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        with OutsideLoad() as load:
            time.sleep(1.0)
    finally:
        hog.kill()
        hog.wait(timeout=10)
    result = load.result()
    assert result["other_cpu_s"] >= 0.6  # about one core-second, minus scheduling on a shared machine
    assert result["share"] >= 0.6 / result["cores"] and result["detected"] is True
    assert 0.9 < result["wall_s"] < 3.0


class _Stamping(Runner):
    """A runner that records when each of its runs starts and ends (the harness's timing is under test)."""

    def __init__(self, log: list[tuple[float, float]]) -> None:
        super().__init__()
        self.log = log

    def _run(self, x: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = x * 2.0
        self.log.append((start, time.perf_counter()))
        return out


def test_every_run_starts_after_the_settle_pause() -> None:
    """Idle time before each run lets the previous runner's spin-waiting threads sleep first."""
    log: list[tuple[float, float]] = []
    runners = {"a": _Stamping(log), "b": _Stamping(log)}
    samples = measure_interleaved(runners, np.ones((2, 3), np.float32), warmup=1, iters=4, settle_ms=15.0)
    assert [len(v) for v in samples.values()] == [4, 4]
    assert len(log) == 10
    gaps_ms = [(log[i + 1][0] - log[i][1]) * 1e3 for i in range(len(log) - 1)]
    assert min(gaps_ms) >= 15.0


def _openmp_env(code: str, **env: str) -> list[str]:
    """Run CODE in a fresh interpreter with the OpenMP variables cleared, then set from ENV."""
    import os

    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True,
                         capture_output=True, text=True)
    return out.stdout.split()


_PROBE = ("import os\n{pre}from vitedge.validate.latency import bound_openmp_spin, openmp_setting\n"
          "print(bound_openmp_spin(), openmp_setting())")


def test_openmp_spin_is_bounded_not_turned_off() -> None:
    """Before torch loads, bench bounds libgomp's spin-wait (PASSIVE made PyTorch 20-45% slower on a
    Xeon); a user's own setting is kept; torch loaded first means its threads may spin long."""
    assert _openmp_env(_PROBE.format(pre="")) == ["False", f"GOMP_SPINCOUNT={OPENMP_SPINCOUNT}"]
    assert _openmp_env(_PROBE.format(pre=""), OMP_WAIT_POLICY="PASSIVE") == ["False", "OMP_WAIT_POLICY=PASSIVE"]
    assert _openmp_env(_PROBE.format(pre=""), OMP_WAIT_POLICY="ACTIVE") == ["True", "OMP_WAIT_POLICY=ACTIVE"]
    assert _openmp_env(_PROBE.format(pre="import torch\n")) == ["True", "libgomp", "default"]
