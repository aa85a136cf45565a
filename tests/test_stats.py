"""Streamed calibration statistics: equal to the all-at-once values, bounded per run."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitedge.precision.stats import TensorStats, collect_stats


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


def test_histogram_rebins_when_the_range_grows() -> None:
    s = TensorStats()
    s.update(np.array([0.1, 0.2, 0.3], np.float32), histogram=True)
    s.update(np.array([10.0, -0.05], np.float32), histogram=True)
    assert s.histogram.sum() == 5 and s.hist_edge == 10.0 and np.isclose(s.min, -0.05)
    assert s.percentile(100) >= 9.9
