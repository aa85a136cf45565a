"""Streamed calibration statistics: equal to the all-at-once values, bounded per run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vitedge.precision.stats import (
    HISTOGRAM_BINS,
    TensorStats,
    _dequantized_constants,
    collect_stats,
    entropy_threshold,
)


def _graph() -> onnx.ModelProto:
    """x [n, 4] -> MatMul(w) -> Relu -> y: two watched intermediates."""
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 10, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Neg", ["r"], ["y"], name="neg")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_streamed_stats_equal_the_whole_set_and_respect_the_budget() -> None:
    x = np.random.default_rng(0).standard_normal((37, 4)).astype(np.float32)
    h = x @ (np.arange(16, dtype=np.float32).reshape(4, 4) / 10)
    stats = collect_stats(_graph(), x, channels=["h"], histograms=["h"], batch_size=5)
    assert stats.batches == 8 and stats.batch_size == 5 and stats.passes == 1
    got = stats.tensors["h"]
    assert np.isclose(got.min, h.min()) and np.isclose(got.max, h.max()) and np.isclose(got.absmax, np.abs(h).max())
    np.testing.assert_allclose(got.channel_absmax, np.abs(h).max(axis=0), rtol=1e-6)
    assert got.histogram.sum() == h.size
    assert abs(got.percentile(50) - np.percentile(np.abs(h), 50)) < 2 * got.hist_edge / len(got.histogram) + 1e-3
    # a budget smaller than one image's intermediates: one image per run, one pass per tensor
    tight = collect_stats(_graph(), x, batch_size=5, memory_budget=16)
    assert tight.batch_size == 1 and tight.passes == 2
    assert tight.maxima() == stats.maxima()


def test_each_pass_but_the_last_runs_only_the_nodes_its_tensors_need(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime runs every node whatever outputs are asked for: a pass over the first tensors
    is given the graph up to their last producer (and the last pass the whole graph, with its
    outputs); the statistics are those of whole-graph passes. A graph out of topological order
    (where a prefix would miss a producer) gets the whole graph in every pass."""
    import vitedge.precision.stats as stats_mod

    seen: list[tuple[list[str], list[str]]] = []
    real_session = stats_mod.session

    def recording_session(path, **kwargs):
        probe = onnx.load(str(path))
        seen.append(([n.name for n in probe.graph.node], [o.name for o in probe.graph.output]))
        return real_session(path, **kwargs)

    monkeypatch.setattr(stats_mod, "session", recording_session)
    x = np.random.default_rng(1).standard_normal((9, 4)).astype(np.float32)
    model = _graph()
    before = model.SerializeToString()
    tight = collect_stats(model, x, memory_budget=16)  # one tensor per pass: h, then r
    assert tight.passes == 2 and model.SerializeToString() == before  # the caller's graph is left as it was
    assert seen == [(["mm"], ["h"]), (["mm", "relu", "neg"], ["y", "r"])]
    whole = collect_stats(_graph(), x, memory_budget=2**20)
    assert whole.passes == 1 and tight.maxima() == whole.maxima()
    assert set(tight.tensors) == set(whole.tensors) == {"x", "h", "r", "y"}

    shuffled = _graph()
    nodes = list(shuffled.graph.node)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend([nodes[1], nodes[0], nodes[2]])  # relu listed before the MatMul it reads
    shuffled.graph.value_info.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 4])
                                     for name in ("h", "r"))  # shapes the inference cannot give out of order
    seen.clear()
    out_of_order = collect_stats(shuffled, x, memory_budget=16)
    assert [len(names) for names, _ in seen] == [3, 3] and out_of_order.maxima() == whole.maxima()


def test_histogram_keeps_its_size_and_counts_when_the_range_grows() -> None:
    s = TensorStats()
    s.update(np.array([0.1, 0.2, 0.25], np.float32), histogram=True)
    s.update(np.array([10.0, -0.05], np.float32), histogram=True)
    # the edge doubled 6 times (0.25 -> 16): old bins merged 64 to 1, no new bins
    assert len(s.histogram) == HISTOGRAM_BINS and s.hist_edge == 16.0 and s.histogram.sum() == 5
    assert np.isclose(s.min, -0.05) and s.percentile(100) == 10.0
    rng = np.random.default_rng(1)
    growing = TensorStats()
    for scale in (1, 2, 3, 50, 51):  # every batch wider than the last: ORT's collector would add bins each time
        growing.update(rng.normal(size=4000).astype(np.float32) * scale, histogram=True)
    assert len(growing.histogram) == HISTOGRAM_BINS and growing.histogram.sum() == 20000


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    return float("inf") if np.any(q[mask] == 0) else float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _reference_entropy_threshold(hist: np.ndarray, edge: float, levels: int = 128, start: int = 128) -> float:
    """TensorRT's entropy calibration written plainly, one candidate at a time (pytorch-quantization's loop)."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences = []
    for i in range(start, len(bins) + 1):
        level = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        level[bins[:i] == 0] = -1
        sums = np.bincount(level[level >= 0], weights=bins[:i][level >= 0], minlength=levels)
        filled = np.bincount(level[level >= 0], minlength=levels)
        q = np.where(level >= 0, sums[np.maximum(level, 0)] / np.maximum(filled[np.maximum(level, 0)], 1), 0.0)
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        divergences.append(_kl(p, q))
    divergences = np.array(divergences)
    best = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return (best + start) * edge / len(bins)


def test_entropy_threshold_is_tensorrts_kl_search() -> None:
    rng = np.random.default_rng(0)
    outliers = np.concatenate([rng.normal(size=50_000), rng.normal(size=20) * 40])
    relu = np.maximum(rng.normal(size=50_000), 0)  # half exact zeros: the zero bin takes its neighbour's count
    for sample, bins in ((rng.laplace(size=50_000), 2048), (outliers, 2048), (relu, 2048), (outliers, 512)):
        mags = np.abs(sample)
        hist, _ = np.histogram(mags, bins=bins, range=(0, mags.max()))
        assert entropy_threshold(hist, mags.max()) == pytest.approx(_reference_entropy_threshold(hist, mags.max()))
    hist, _ = np.histogram(np.abs(outliers), bins=2048, range=(0, np.abs(outliers).max()))
    assert entropy_threshold(hist, np.abs(outliers).max()) < np.abs(outliers).max() / 4  # the 20 outliers clipped


def test_entropy_threshold_agrees_with_onnx_runtimes_calibrator_at_the_same_resolution() -> None:
    """ORT's entropy collector works on a signed histogram: 2048 bins over [-t, t] and 256 levels
    are the same resolution per side as 2048 bins of |x| over [0, t] and 128 levels."""
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    for x in (rng.laplace(size=(64, 4096)), rng.normal(size=(64, 4096))):
        x = x.astype(np.float32)
        ort = HistogramCollector("entropy", False, 2048, 256, 99.99, "same")
        with contextlib.redirect_stdout(io.StringIO()):
            ort.collect({"t": x})
            lo, hi = ort.compute_collection_result()["t"][:2]
        ours = TensorStats()
        for batch in x:  # batch by batch: the fixed-size histogram merges them
            ours.update(batch, histogram=True)
        assert ours.entropy_threshold() == pytest.approx(max(-float(lo), float(hi)), rel=0.05)


def test_int8_weights_dequantized_from_the_constants_equal_what_onnx_runtime_computes() -> None:
    """A DequantizeLinear of constants (an INT8 weight) is computed once with numpy, not output by
    every run: its statistics must equal the values ONNX Runtime produces."""
    import onnxruntime as ort

    rng = np.random.default_rng(2)
    q = numpy_helper.from_array(rng.integers(-127, 128, size=(4, 3)).astype(np.int8), "wq")
    scale = numpy_helper.from_array(np.array([0.02, 0.5, 0.003], np.float32), "ws")
    zero = numpy_helper.from_array(np.zeros(3, np.int8), "wz")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq", axis=1),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [q, scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    assert list(_dequantized_constants(model, {"w", "y"})) == ["w"]  # computed, not watched in the runs
    stats = collect_stats(model, x, channels=["w"], floor_images=6).tensors["w"]
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    probe.graph.output.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, None))
    w = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(["w"], {"x": x})[0]
    assert (stats.min, stats.max, stats.absmax) == (w.min(), w.max(), np.abs(w).max())
    np.testing.assert_array_equal(stats.channel_absmax, np.abs(w).max(axis=0))
    assert stats.row_floor == np.abs(w).max(axis=1).min()


def test_entropy_ranges_clip_outliers_but_not_the_bulk() -> None:
    """TensorRT's KL search alone clips near-uniform attention probabilities (random-init BEiT-v2:
    all in [0.053, 0.065]) to their minimum; vitedge's entropy range clips at most 0.01% of the values."""
    rng = np.random.default_rng(3)
    uniform = TensorStats()
    probs = rng.uniform(0.053, 0.065, size=(8, 4096)).astype(np.float32)
    for batch in probs:
        uniform.update(batch, histogram=True)
    assert entropy_threshold(uniform.histogram, uniform.hist_edge) < 0.055  # the plain search clips the bulk
    assert uniform.entropy_threshold() >= np.quantile(probs, 0.9999) * 0.999
    outliers = TensorStats()
    outliers.update(np.concatenate([rng.normal(size=50_000), [30.0, -35.0, 40.0, 45.0]]).astype(np.float32),
                    histogram=True)
    assert outliers.entropy_threshold() < outliers.absmax / 4  # 4 outliers in 50 000: still clipped
