"""Calibration statistics, streamed: running min / max / max|x| (and, where asked, per-channel
max|x| and a histogram of |x|) per float tensor, merged batch by batch.

The graph, with float32 intermediates as extra outputs, is written to a file and ONNX Runtime
(CPU, no graph optimisation, so tensor names survive) runs it over the calibration set. Memory
is bounded, whatever the model and the calibration set: after each run only the statistics
are kept, and one run's outputs are capped at `memory_budget` bytes. The batch is sized from a
one-image probe run plus every intermediate the run itself may hold, and when one image's
watched tensors exceed the budget (ViT-B/16 at 384 px, all of them: ~1.3 GB) they are split
into groups, each a separate pass (compute is repeated, memory is not held; every pass but the
last runs only the graph prefix its tensors need). Histograms keep
a fixed number of bins. ONNX Runtime INT8 (both targets) takes its ranges from here, the FP16
plan reads the maxima to decide which nodes must stay FP32, SmoothQuant the per-channel maxima
of MatMul inputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from vitedge import ui
from vitedge.ortsession import session

DEFAULT_MEMORY_BUDGET = 512 * 2**20  # bytes of intermediate outputs per run
HISTOGRAM_BINS = 2048
ENTROPY_MAX_CLIPPED = 1e-4  # the fraction of values an entropy threshold may clip


def float_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (inputs, initializers, intermediates, outputs)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types: dict[str, int] = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


@dataclass
class TensorStats:
    """Running statistics of one tensor over every batch seen so far."""

    min: float = float("inf")
    max: float = float("-inf")
    absmax: float = 0.0
    channel_absmax: np.ndarray | None = None  # over the last axis, when tracked
    histogram: np.ndarray | None = None  # counts of |x| over [0, hist_edge], when tracked
    hist_edge: float = 0.0
    row_floor: float = float("inf")  # smallest non-zero row peak (max |x| along the last axis), when tracked
    count: int = 0

    def update(self, value: np.ndarray, channels: bool = False, histogram: bool = False, floor: bool = False) -> None:
        if value.size == 0:
            return
        if floor and value.ndim:
            peaks = np.max(np.abs(value.reshape(-1, value.shape[-1])), axis=1)
            peaks = peaks[(peaks > 0) & np.isfinite(peaks)]
            if peaks.size:
                self.row_floor = min(self.row_floor, float(peaks.min()))
        lo, hi = float(np.min(value)), float(np.max(value))
        if np.isnan(lo) or np.isnan(hi):  # NaN already in FP32: as unsafe as an overflow
            lo, hi = float("-inf"), float("inf")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.absmax = max(self.absmax, abs(lo), abs(hi))
        self.count += value.size
        if channels and value.ndim >= 1:
            peak = np.max(np.abs(value.reshape(-1, value.shape[-1])), axis=0)
            self.channel_absmax = peak if self.channel_absmax is None else np.maximum(self.channel_absmax, peak)
        if histogram and np.isfinite(self.absmax):
            self._add_histogram(np.abs(value).ravel())

    def _add_histogram(self, magnitudes: np.ndarray) -> None:
        """Add |x| to a fixed-size histogram. When the range grows, the edge doubles as often as
        needed and old bins merge in whole groups (2, 4, ...: exact, no re-binning error), so the
        histogram stays HISTOGRAM_BINS counts however many batches come (ONNX Runtime's, fed
        batch by batch, adds bins instead, and its size and the entropy search grow with them)."""
        peak = max(self.absmax, 1e-12)
        if self.histogram is None:
            self.histogram, self.hist_edge = np.zeros(HISTOGRAM_BINS, np.int64), peak
        elif peak > self.hist_edge:
            factor = 2 ** int(np.ceil(np.log2(peak / self.hist_edge)))
            while self.hist_edge * factor < peak:  # float rounding of log2
                factor *= 2
            if factor >= HISTOGRAM_BINS:
                merged = np.zeros(HISTOGRAM_BINS, np.int64)
                merged[0] = self.histogram.sum()
            else:
                merged = np.zeros(HISTOGRAM_BINS, np.int64)
                merged[:HISTOGRAM_BINS // factor] = self.histogram.reshape(-1, factor).sum(axis=1)
            self.histogram, self.hist_edge = merged, self.hist_edge * factor
        counts, _ = np.histogram(magnitudes, bins=HISTOGRAM_BINS, range=(0.0, self.hist_edge))
        self.histogram += counts

    def percentile(self, q: float) -> float:
        """The q-th percentile of |x| from the histogram (upper edge of its bin; absmax when no
        histogram was kept), never above absmax."""
        if self.histogram is None or not self.histogram.sum():
            return self.absmax
        cdf = np.cumsum(self.histogram) / self.histogram.sum()
        index = int(np.searchsorted(cdf, q / 100.0))
        return min(float((index + 1) * self.hist_edge / HISTOGRAM_BINS), self.absmax)

    def entropy_threshold(self) -> float:
        """The |x| clipping threshold of TensorRT's entropy calibration on the histogram
        (`entropy_threshold`), but clipping at most ENTROPY_MAX_CLIPPED of the values, and never
        above absmax (absmax when no histogram was kept).

        The KL search is made for outliers: a few values far beyond the bulk. Where the bulk
        itself sits far from zero it clips the bulk: near-uniform attention probabilities of a
        random-init BEiT-v2 (all within [0.053, 0.065]) were clipped to 0.053, the images'
        white background (a spike at the maximum) to 81% of it, and the TensorRT plan's error
        went from 0.011 to 0.078. There the percentile is the threshold instead.
        """
        if self.histogram is None or not self.histogram.sum():
            return self.absmax
        floor = self.percentile(100 * (1 - ENTROPY_MAX_CLIPPED))
        return min(max(entropy_threshold(self.histogram, self.hist_edge), floor), self.absmax)


def entropy_threshold(histogram: np.ndarray, edge: float, levels: int = 128, start_bin: int = 128) -> float:
    """TensorRT's entropy (KL-divergence) calibration on a histogram of |x| over [0, EDGE].

    For every candidate threshold (the upper edge of bin i, i >= START_BIN) the reference
    distribution P is the first i bins with everything beyond folded into the last one, and
    Q is those i bins (without the tail) merged into LEVELS quantization levels and spread
    back over their non-empty bins; the threshold with the smallest KL(P || Q) wins (the
    largest one on a tie). The zero bin takes its neighbour's count (exact zeros, e.g. after
    ReLU or padding, would otherwise dominate). The algorithm of NVIDIA's pytorch-quantization
    `_compute_amax_entropy`, evaluated for all candidates at once with cumulative sums
    instead of a Python loop per candidate (milliseconds per tensor, not seconds).
    """
    bins = np.asarray(histogram, dtype=np.float64).copy()
    n = len(bins)
    if n <= start_bin or bins.sum() == 0:
        return float(edge)
    bins[0] = bins[1]
    total = bins.sum()
    cum = np.concatenate([[0.0], np.cumsum(bins)])  # cum[m]: count of bins < m
    nonzero = np.concatenate([[0], np.cumsum(bins > 0)])
    xlogx = np.concatenate([[0.0], np.cumsum(np.where(bins > 0, bins * np.log(np.maximum(bins, 1.0)), 0.0))])
    cand = np.arange(start_bin, n + 1)  # threshold = upper edge of bin cand - 1
    tail = total - cum[cand]  # counts beyond the threshold, folded into the last bin of P
    last = bins[cand - 1] + tail
    # sum of P log P (unnormalised)
    p_log_p = xlogx[cand - 1] + np.where(last > 0, last * np.log(np.maximum(last, 1e-300)), 0.0)
    # bin j < i lies in level floor(levels * j / i): level k starts at ceil(k * i / levels)
    starts = (np.arange(levels + 1)[None, :] * cand[:, None] + levels - 1) // levels
    group = np.diff(cum[starts], axis=1)  # counts per level (tail excluded)
    filled = np.diff(nonzero[starts], axis=1)  # non-empty bins per level
    safe = np.maximum(group, 1e-300)
    per_bin = safe / np.maximum(filled, 1)  # Q on each non-empty bin of a level
    p_log_q = np.where(group > 0, group * np.log(per_bin), 0.0).sum(axis=1)
    p_log_q += np.where(tail > 0, tail * np.log(per_bin[:, -1]), 0.0)
    kl = (p_log_p - p_log_q) / total + np.log(np.maximum(cum[cand], 1e-300) / total)
    kl[(tail > 0) & (bins[cand - 1] == 0)] = np.inf  # P has mass where Q has none
    kl[cum[cand] == 0] = np.inf
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return float(cand[best] * edge / n)


@dataclass
class CalibrationStats:
    """Statistics of every watched tensor, and how they were collected."""

    tensors: dict[str, TensorStats] = field(default_factory=dict)
    batches: int = 0
    passes: int = 0
    batch_size: int = 0

    def maxima(self) -> dict[str, float]:
        return {name: s.absmax for name, s in self.tensors.items() if s.count}

    def floors(self) -> dict[str, float]:
        """The smallest non-zero row peak of each tensor whose rows were tracked."""
        return {name: s.row_floor for name, s in self.tensors.items() if np.isfinite(s.row_floor)}


def _float_outputs(model: onnx.ModelProto) -> tuple[list[str], dict[str, int | None]]:
    """Float32 node outputs (graph outputs aside) and the bytes of each for one image (None when
    shape inference leaves a dimension unknown; a symbolic batch dimension counts as 1)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    sizes: dict[str, int | None] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.output):
        tensor = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tensor.elem_type != onnx.TensorProto.FLOAT:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (1 if d.HasField("dim_param") else None)
                for d in tensor.shape.dim] if tensor.HasField("shape") else [None]
        sizes[vi.name] = None if None in dims else 4 * int(np.prod(dims))
    existing = {o.name for o in model.graph.output}
    outputs = [out for node in model.graph.node for out in node.output if out in sizes and out not in existing]
    return outputs, sizes


def _dequantized_constants(model: onnx.ModelProto, names: set[str]) -> dict[str, onnx.NodeProto]:
    """DequantizeLinear nodes among NAMES' producers whose inputs are all initializers (INT8 weights):
    their values do not depend on the input, so they are computed once here instead of each run
    (ViT-B/16: 0.35 GB of float weights per run)."""
    inits = {i.name for i in model.graph.initializer}
    return {n.output[0]: n for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.output[0] in names and all(i in inits for i in n.input if i)
            and not any(a.name == "block_size" and a.i for a in n.attribute)}


def _dequantize(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    """DequantizeLinear of constants, as ONNX defines it: (x - zero_point) * scale, per axis when the scale is 1-D."""
    from onnx import numpy_helper

    x, scale = (numpy_helper.to_array(inits[name]) for name in node.input[:2])
    has_zero = len(node.input) > 2 and node.input[2]
    zero = numpy_helper.to_array(inits[node.input[2]]) if has_zero else np.zeros((), x.dtype)
    if scale.ndim == 1 and x.ndim > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim else zero
    return ((x.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)


def collect_stats(model: onnx.ModelProto, inputs: np.ndarray, *, tensors: Iterable[str] | None = None,
                  channels: Iterable[str] = (), histograms: Iterable[str] = (), floor_images: int = 0,
                  batch_size: int = 8, memory_budget: int = DEFAULT_MEMORY_BUDGET, threads: int | None = None,
                  description: str = "calibration statistics") -> CalibrationStats:
    """Stream INPUTS (NCHW float32) through MODEL and keep running statistics per float tensor.

    TENSORS limits which intermediates are watched (default: every float32 node output, plus
    the graph input and outputs); CHANNELS / HISTOGRAMS name those that also keep per-channel
    max|x| / a histogram of |x|; the node outputs' row floors (`TensorStats.row_floor`) are
    taken over the first FLOOR_IMAGES images. Progress shows the batch count.
    """
    channels, histograms = set(channels), set(histograms)
    outputs, sizes = _float_outputs(model)
    if tensors is not None:
        wanted = set(tensors)
        outputs = [o for o in outputs if o in wanted]
    static = _dequantized_constants(model, set(outputs))
    watched = [o for o in outputs if o not in static]
    input_name = next(i.name for i in model.graph.input
                      if i.name not in {init.name for init in model.graph.initializer})
    graph_outputs = [o.name for o in model.graph.output]
    floor_images = min(floor_images, len(inputs))
    result = CalibrationStats()

    def update(name: str, value: np.ndarray, floor: bool) -> None:
        if value.dtype != np.float32:
            return
        result.tensors.setdefault(name, TensorStats()).update(value, name in channels, name in histograms,
                                                              floor and name != input_name)

    if static:
        inits = {i.name: i for i in model.graph.initializer}
        for name, node in static.items():
            update(name, _dequantize(node, inits), floor_images > 0)

    producer = {out: i for i, node in enumerate(model.graph.node) for out in node.output}

    with tempfile.TemporaryDirectory(prefix="vitedge-stats-") as tmp:
        def open_probe(names: list[str], index: int, whole: bool = True) -> tuple[object, list[str]]:
            # the watched tensors become graph outputs only while the probe is written: a copy
            # of the model would hold its weights twice (ViT-B: +0.35 GB). Unless WHOLE, the
            # probe is the graph up to the last node NAMES need (nodes are in topological
            # order), without the graph's own outputs: ONNX Runtime runs every node of a graph
            # whatever outputs are asked for, so each pass would otherwise run all of it
            graph = model.graph
            n_outputs = len(graph.output)
            end = len(graph.node) if whole else _prefix_end(model, names, producer)
            whole = end == len(graph.node)
            tail = [onnx.NodeProto() for _ in range(len(graph.node) - end)]
            for copy, node in zip(tail, graph.node[end:]):
                copy.CopyFrom(node)
            own = [onnx.ValueInfoProto() for _ in range(0 if whole else n_outputs)]
            for copy, out in zip(own, graph.output):
                copy.CopyFrom(out)
            path = Path(tmp) / f"probe{index}.onnx"
            try:
                del graph.node[end:]
                if not whole:
                    del graph.output[:]
                graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                                    for name in names)
                onnx.save(model, str(path))
            finally:
                del graph.output[0 if not whole else n_outputs:]
                graph.output.extend(own)
                graph.node.extend(tail)
            sess = session(path, threads=threads, optimize=False)
            path.unlink()  # the session holds what it needs; the disk copy goes now
            return sess, [o.name for o in sess.get_outputs()]

        # bytes per image from shape inference; the few tensors it leaves unknown are measured on one
        # image, a handful at a time (all at once, ViT-B/384's probe alone held 2.5 GB)
        per_image = {n: sizes[n] for n in watched if sizes.get(n) is not None}
        unknown = [n for n in watched if n not in per_image]
        first = np.ascontiguousarray(inputs[:1], dtype=np.float32)
        for start in range(0, len(unknown), 16):
            sess, names = open_probe(unknown[start:start + 16], 0)
            per_image.update((n, v.nbytes) for n, v in zip(names, sess.run(names, {input_name: first}), strict=True))
            del sess
        groups = _groups(watched, per_image, memory_budget)
        # the run's own intermediates count too (an upper bound: every float intermediate of one
        # image; ViT-B/16-384 ~1.3 GB): batch 8 over the LayerNorm outputs alone held 2.8 GB
        total = sum(per_image[n] for n in watched) + sum(v for v in sizes.values() if v is not None)
        batch = max(1, min(batch_size, memory_budget // max(1, total))) if len(groups) == 1 else 1
        result.batch_size, result.passes = batch, len(groups)
        # batches never straddle the row-floor images
        starts = [*range(0, floor_images, batch), *range(floor_images, len(inputs), batch)]
        ends = starts[1:] + [len(inputs)]
        steps = iter(ui.track(range(len(starts) * len(groups)),
                              f"{description} ({len(starts)} batches of {batch}"
                              + (f", {len(groups)} passes)" if len(groups) > 1 else ")")))
        for index, group in enumerate(groups, start=1):
            last = index == len(groups)  # the whole graph, with its outputs; the others a prefix
            sess, names = open_probe(group, index, whole=last)
            keep = set(group) | (set(graph_outputs) if last else set())
            for start, end in zip(starts, ends, strict=True):
                x = np.ascontiguousarray(inputs[start:end], dtype=np.float32)
                values = sess.run(names, {input_name: x})
                if index == 1:
                    update(input_name, x, False)
                for name, value in zip(names, values, strict=True):
                    if name in keep:
                        update(name, value, start < floor_images)
                del values
                next(steps, None)
            del sess
        for _ in steps:  # close the progress bar
            pass
        result.batches = len(starts)
    return result


def _prefix_end(model: onnx.ModelProto, names: list[str], producer: dict[str, int]) -> int:
    """How many leading nodes compute NAMES: up to the last one's producer, when that prefix is
    self-contained (every input of its nodes is a graph input, an initializer or an output of an
    earlier node of it, and none has a subgraph); else every node."""
    nodes = model.graph.node
    end = 1 + max((producer.get(n, len(nodes) - 1) for n in names), default=len(nodes) - 1)
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    for node in nodes[:end]:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute) or \
                not all(i in available for i in node.input):
            return len(nodes)
        available.update(node.output)
    return end


def _groups(names: list[str], per_image: dict[str, int], budget: int) -> list[list[str]]:
    """Split NAMES so that one image's outputs of each group fit in BUDGET bytes."""
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = per_image.get(name, 0)
        if groups[-1] and size + nbytes > budget:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def activation_ranges(model: onnx.ModelProto, inputs: np.ndarray, batch_size: int = 8,
                      threads: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict[str, float]:
    """Max |x| over INPUTS (NCHW float32) of the graph input and every float32 node output."""
    return collect_stats(model, inputs, batch_size=batch_size, threads=threads,
                         memory_budget=memory_budget).maxima()


def ranges_and_floors(model: onnx.ModelProto, inputs: np.ndarray, floor_images: int,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[dict[str, float], dict[str, float]]:
    """`activation_ranges` over INPUTS and the row floors (`fp16.row_floors`) over its first
    FLOOR_IMAGES, from one streamed pass set (not two)."""
    stats = collect_stats(model, inputs, floor_images=floor_images, memory_budget=memory_budget)
    return stats.maxima(), stats.floors()


def intermediate_bytes_per_image(model: onnx.ModelProto) -> int:
    """Bytes of every float32 intermediate for one image, from shape inference (batch dim = 1;
    a tensor of unknown shape counts as nothing)."""
    return sum(v for v in _float_outputs(model)[1].values() if v is not None)
