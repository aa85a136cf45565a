"""The latency harness's statistics: dispersion, paired bootstrap intervals, outside-load detection."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from vitedge.validate.latency import OutsideLoad, ratio_interval, summarize


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
