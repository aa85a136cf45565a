"""FP16 graphs with FP32 islands, chosen from calibration statistics.

TensorRT 11 (and strongly typed TensorRT 10) build what the ONNX says, so the precision of
every node is written into the graph: FP16 tensors and initializers everywhere, except
"islands" of nodes computed in FP32, with Cast nodes at their borders. LayerNormalization
and Softmax are islands by default, and so is every node whose input or output reached
more than `margin` x 65504 on the calibration set (or that holds constants beyond FP16's
range). The other end counts too: a node whose tensor has a whole row (the last axis, what
LayerNorm and Softmax normalise) below FP16's smallest normal 2^-14, or that reads a constant
living there (LayerScale gammas of 1e-6, DeiT-3's cls token), would keep only FP16's
subnormal bits, which LayerNorm then scales up: it stays FP32 too. Integer paths (Shape,
Range, indices) are left untouched, graph I/O stays FP32 unless asked otherwise, and Q/DQ
nodes take the precision of the node they feed, with FP16 scales (opset >= 19), so TensorRT
can fuse them into INT8 kernels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitedge.onnx_utils import LAYOUT_OPS, QDQ_OPS, default_opset, module_name
from vitedge.precision.stats import activation_ranges, collect_stats, float_tensor_types, ranges_and_floors

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0 ** -14
DEFAULT_MARGIN = 0.1  # 10x headroom over the largest calibrated value
FLOOR_SAMPLES = 64  # calibration images for the small-end statistics (row floors)
DEFAULT_FP32_OPS = ("LayerNormalization", "Softmax")
QDQ_MIN_OPSET = 19  # Q/DQ take float16 inputs and scales from opset 19

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16

# Ops whose float inputs and outputs may all be float16 (one type variable in the ONNX schema).
FP16_OPS = frozenset({
    "Abs", "Add", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip",
    "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "DepthToSpace", "Div",
    "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements",
    "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization", "LayerNormalization", "LeakyRelu",
    "Less", "LessOrEqual", "Log", "LogSoftmax", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mul", "Neg",
    "Pad", "Pow", "PRelu", "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum",
    "ReduceSumSquare", "Relu", "Reshape", "Resize", "Round", "Sigmoid", "Sign", "Sin", "Slice", "Softmax",
    "Softplus", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK",
    "Transpose", "Trilu", "Unsqueeze", "Where",
})
# Inputs that take any dtype: never cast in front of them.
_ANY_DTYPE_INPUTS = {"Shape": {0}, "Size": {0}, "Cast": {0}}
# Float inputs that stay FP32 inside an FP16 node (Resize roi/scales).
_FP32_INPUTS = {"Resize": {1, 2}}


@dataclass
class Island:
    """One node kept in FP32, why, and the PyTorch module it came from (when known)."""

    node: str
    op: str
    module: str | None
    reason: str


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (plans and errors refer to nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{i}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)


def _float_inputs(node: onnx.NodeProto, types: dict[str, int]) -> list[tuple[int, str]]:
    """(index, name) of the float32 inputs whose dtype the node's precision decides."""
    passive = _ANY_DTYPE_INPUTS.get(node.op_type, set())
    return [(i, t) for i, t in enumerate(node.input)
            if t and i not in passive and types.get(t) == FLOAT]


def _constant_peak(node: onnx.NodeProto) -> float:
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type == FLOAT:
            values = numpy_helper.to_array(attr.t)
            return float(np.max(np.abs(values))) if values.size else 0.0
        if attr.name == "value_floats":
            return float(np.max(np.abs(attr.floats))) if attr.floats else 0.0
        if attr.name == "value_float":
            return abs(attr.f)
    return 0.0


def row_floors(model: onnx.ModelProto, inputs: np.ndarray, batch_size: int = 8) -> dict[str, float]:
    """The smallest non-zero row peak of every float32 tensor over INPUTS (NCHW float32).

    A row is a vector along the last axis (a token's features, an attention row); its peak is
    its max |x|. A row of zeros is exact in FP16 and ignored. A tensor whose floor is below
    2^-14 holds at least one row that FP16 stores as subnormals only. Streamed with the
    statistics' memory bound (`stats.collect_stats`).
    """
    return collect_stats(model, inputs, floor_images=len(inputs), batch_size=batch_size,
                         description="row floors").floors()


def _tiny_constant(init: onnx.TensorProto) -> float | None:
    """The largest |value| of a float constant whose non-zero values all sit below 2^-14 (else None)."""
    values = numpy_helper.to_array(init)
    if values.dtype.kind != "f" or not values.size:
        return None
    peak = float(np.max(np.abs(values)))
    return peak if 0 < peak < FP16_MIN_NORMAL else None


# Ops that divide what they read by its own scale, so a row FP16 stores as subnormals comes out
# wrong at full size (Softmax is shift-, not scale-invariant: tiny logits give a near-uniform row).
_NORMALIZING_OPS = frozenset({"LayerNormalization", "LpNormalization", "InstanceNormalization",
                              "GroupNormalization"})
# Ops whose result carries a constant operand's relative error.
_MULTIPLICATIVE_OPS = frozenset({"Mul", "Div", "MatMul", "Gemm", "Conv"})


def _underflow_chains(model: onnx.ModelProto, floors: dict[str, float]) -> dict[str, str]:
    """Node -> reason, for tensors with a row below 2^-14 that reach a normalising op or the output.

    Walking back from each such reader (LayerNorm, the graph output) through the
    producers whose outputs are still that small, and on through the inputs the small row came
    from (within 16x): a small row that is later swamped by a larger addend (a cls token plus
    its position embedding) loses nothing that matters, and the input of a Mul by a tiny
    constant (a LayerScale gamma) is not small itself.
    """
    def small(tensor: str) -> bool:
        return floors.get(tensor, float("inf")) < FP16_MIN_NORMAL

    producers = {out: n for n in model.graph.node for out in n.output}
    found: dict[str, str] = {}
    readers = [(n, n.op_type, n.input) for n in model.graph.node if n.op_type in _NORMALIZING_OPS]
    readers += [(None, "the graph output", [o.name]) for o in model.graph.output]
    stack: list[tuple[str, str]] = []
    for node, what, inputs in readers:
        for tensor in (t for t in inputs if small(t)):
            if node is not None:
                found.setdefault(node.name, f"reads {tensor}, a row of which peaks at {floors[tensor]:.3g} on the "
                                            f"calibration set: below FP16's smallest normal 2^-14 it is subnormal, "
                                            f"and {what} scales it up")
            stack.append((tensor, f"{what} {node.name}" if node is not None else what))
    while stack:
        tensor, target = stack.pop()
        producer = producers.get(tensor)
        if producer is None or producer.name in found or producer.op_type in QDQ_OPS:
            continue
        found[producer.name] = (f"a row of {tensor} peaks at {floors[tensor]:.3g} on the calibration set, below "
                                f"FP16's smallest normal 2^-14 (subnormal in FP16), and reaches {target} unswamped")
        # on through inputs that brought the small row (not ones a tiny constant factor shrank)
        stack += [(t, target) for t in producer.input if small(t) and floors[t] <= 16 * floors[tensor]]
    return found


def choose_islands(model: onnx.ModelProto, ranges: dict[str, float], *,
                   margin: float = DEFAULT_MARGIN, fp32_ops: Iterable[str] = DEFAULT_FP32_OPS,
                   keep: Iterable[str] = (), floors: dict[str, float] | None = None) -> list[Island]:
    """The nodes that must compute in FP32, each with its reason.

    RANGES maps tensor names to calibrated max |x| (see `stats.activation_ranges`, run on
    this very graph), FLOORS to the smallest non-zero row peak (`row_floors`); KEEP names
    nodes the user asked to keep in float (`--ignored-scope`).
    """
    underflow = _underflow_chains(model, floors or {})
    if not 0 < margin <= 1:
        raise ValueError(f"the FP16 margin is a fraction of 65504 in (0, 1], got {margin}")
    threshold = margin * FP16_MAX
    fp32_ops, keep = set(fp32_ops), set(keep)
    types = float_tensor_types(model)
    inits = {i.name: i for i in model.graph.initializer}
    islands = []
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            continue  # Q/DQ follow the node they feed
        reasons = []
        tensors = [t for _, t in _float_inputs(node, types)] + \
            [t for t in node.output if types.get(t) == FLOAT]
        if not tensors:
            continue
        if node.op_type in fp32_ops:
            reasons.append(f"{node.op_type} computed in FP32 (default island)")
        if node.name in keep:
            reasons.append("kept in float by --ignored-scope")
        if node.op_type not in FP16_OPS:
            reasons.append(f"{node.op_type} has no FP16 conversion rule")
        peaks = {t: ranges[t] for t in tensors if t in ranges}
        over = {t: p for t, p in peaks.items() if not p <= threshold}
        if over:
            tensor, peak = max(over.items(), key=lambda kv: kv[1])
            reasons.append(f"|{tensor}| reaches {peak:.4g} on the calibration set, above "
                           f"{margin:g} x 65504 = {threshold:.5g}")
        big = [t for t in tensors if t in inits and _init_peak(inits[t]) > FP16_MAX]
        if big or (node.op_type == "Constant" and _constant_peak(node) > FP16_MAX):
            reasons.append(f"constant {(big or node.output)[0]} holds values beyond FP16's range")
        if node.name in underflow:
            reasons.append(underflow[node.name])
        tiny = {t: p for t in tensors if t in inits and (p := _tiny_constant(inits[t])) is not None}
        if tiny and node.op_type in _MULTIPLICATIVE_OPS:
            tensor, peak = next(iter(tiny.items()))
            reasons.append(f"multiplies by constant {tensor}, which peaks at {peak:.3g}: below FP16's smallest "
                           f"normal 2^-14 it keeps only subnormal bits (relative error up to {2**-24 / peak:.0%})")
        if reasons:
            islands.append(Island(node.name, node.op_type, module_name(node), "; ".join(reasons)))
    return islands


def _init_peak(init: onnx.TensorProto) -> float:
    values = numpy_helper.to_array(init)
    return float(np.max(np.abs(values))) if values.size and values.dtype.kind == "f" else 0.0


def upgrade_for_fp16_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Opset >= 19 where the graph has Q/DQ, so their scales can be FP16 (TensorRT parses 9-20)."""
    has_qdq = any(n.op_type in QDQ_OPS for n in model.graph.node)
    if not has_qdq or default_opset(model) >= QDQ_MIN_OPSET:
        return model
    from onnx import version_converter

    return version_converter.convert_version(model, QDQ_MIN_OPSET)


def convert_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str], *,
                 io_fp16: bool = False) -> onnx.ModelProto:
    """A copy of MODEL in FP16 except the nodes named in KEEP_FP32, with Casts at every border."""
    model = upgrade_for_fp16_qdq(model)  # so Q/DQ can be FP16 too
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    name_nodes(converted)
    _Converter(converted, set(keep_fp32), io_fp16).run()
    used = {n.domain for n in converted.graph.node} | {""}
    kept = [o for o in converted.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del converted.opset_import[:]
    converted.opset_import.extend(kept)  # quant_pre_process declares every ORT domain; keep the used ones
    del converted.graph.value_info[:]
    converted = onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    onnx.checker.check_model(converted)
    return converted


class _Converter:
    """One pass over a topologically sorted graph; mutates the model in place."""

    def __init__(self, model: onnx.ModelProto, keep_fp32: set[str], io_fp16: bool) -> None:
        self.graph = model.graph
        self.types = float_tensor_types(model)
        self.io_fp16 = io_fp16
        self.inits = {i.name: i for i in self.graph.initializer}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for node in self.graph.node:
            for i, t in enumerate(node.input):
                self.consumers[t].append((node, i))
        followers = ("DequantizeLinear", "QuantizeLinear", "Constant")  # in this order (Q reads its DQs)
        self.low = {n.name for n in self.graph.node
                    if n.op_type in FP16_OPS and n.op_type not in followers and n.name not in keep_fp32
                    and (_float_inputs(n, self.types) or any(self.types.get(t) == FLOAT for t in n.output))}
        for op in followers:  # followers take the precision of the nodes that read them
            for node in self.graph.node:
                if node.op_type == op and node.name not in keep_fp32 and self._follower_is_fp16(node):
                    self.low.add(node.name)
            if op == "DequantizeLinear":  # before the Q pass: a Q follows its DQs
                self._pair_operand_scales()

    def _pair_operand_scales(self) -> None:
        """The two dequantized operands of a MatMul, Gemm or Conv get scales of one float type:
        TensorRT's strongly typed builder refuses a mix ("type mismatch between matmul operand
        scales", TensorRT-RTX 1.7), which an FP32-kept weight scale (below FP16's normal range,
        e.g. a classifier head initialised near zero) next to an FP16 activation scale makes.
        Both DQs then stay FP32 and the consumer casts their outputs."""
        producers = {out: n for n in self.graph.node for out in n.output}
        for node in self.graph.node:
            if node.op_type not in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
                continue
            dqs = [producers.get(t) for t in node.input[:2]]
            if len(dqs) == 2 and all(d is not None and d.op_type == "DequantizeLinear" for d in dqs) \
                    and (dqs[0].name in self.low) != (dqs[1].name in self.low):
                self.low.difference_update(d.name for d in dqs)

    def want(self, node: onnx.NodeProto, index: int) -> int | None:
        """The dtype NODE needs at input INDEX (None: not a float input it cares about)."""
        name = node.input[index]
        if not name or self.types.get(name) != FLOAT or index in _ANY_DTYPE_INPUTS.get(node.op_type, set()):
            return None
        if node.name not in self.low or index in _FP32_INPUTS.get(node.op_type, set()):
            return FLOAT
        return FLOAT16

    def _follower_is_fp16(self, node: onnx.NodeProto) -> bool:
        if node.op_type == "Constant" and _constant_peak(node) > FP16_MAX:
            return False
        if node.op_type in QDQ_OPS and node.input[1] in self.inits:
            scale = numpy_helper.to_array(self.inits[node.input[1]])
            if scale.size and float(np.min(np.abs(scale))) < FP16_MIN_NORMAL:
                return False  # an FP16 subnormal scale loses precision: keep this Q/DQ in FP32
        if node.op_type == "QuantizeLinear":  # its consumers are DequantizeLinear nodes
            readers = self.consumers[node.output[0]]
            return bool(readers) and all(c.name in self.low for c, _ in readers)
        wants = [self.want(c, i) for c, i in self.consumers[node.output[0]]]
        wants = [w for w in wants if w is not None]
        return bool(wants) and all(w == FLOAT16 for w in wants)

    def home(self, tensor: str, producers: dict[str, onnx.NodeProto]) -> int:
        """The dtype a float tensor has where it is produced."""
        if tensor in producers:
            return FLOAT16 if producers[tensor].name in self.low else FLOAT
        return FLOAT16 if self.io_fp16 else FLOAT  # a graph input

    def run(self) -> None:
        producers = {out: n for n in self.graph.node for out in n.output}
        fp16_inits = self._convert_initializers()
        casts: dict[tuple[str, int], str] = {}
        nodes: list[onnx.NodeProto] = []
        for node in self.graph.node:
            for index, name in enumerate(node.input):
                dtype = self.want(node, index)
                if dtype is None:
                    continue
                if name in self.inits:
                    if dtype == FLOAT16:
                        node.input[index] = fp16_inits[name]
                elif self.home(name, producers) != dtype:
                    if (name, dtype) not in casts:
                        casts[name, dtype] = _cast_name(name, dtype)
                        nodes.append(helper.make_node("Cast", [name], [casts[name, dtype]], to=dtype,
                                                      name=casts[name, dtype]))
                    node.input[index] = casts[name, dtype]
            if node.name in self.low:
                _retype_attributes(node)
            nodes.append(node)
        nodes += self._fix_outputs(producers, nodes)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        if self.io_fp16:
            for value in self.graph.input:
                if value.name not in self.inits and value.type.tensor_type.elem_type == FLOAT:
                    value.type.tensor_type.elem_type = FLOAT16

    def _convert_initializers(self) -> dict[str, str]:
        """FP16 copies of float initializers that FP16 nodes read; in place when only they do."""
        demand: dict[str, set[int]] = defaultdict(set)
        for node in self.graph.node:
            for index, name in enumerate(node.input):
                dtype = self.want(node, index)
                if dtype is not None and name in self.inits:
                    demand[name].add(dtype)
        names = {}
        for name, dtypes in demand.items():
            if FLOAT16 not in dtypes:
                continue
            init = self.inits[name]
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), name)
            if dtypes == {FLOAT16}:
                init.CopyFrom(half)
                names[name] = name
            else:
                half.name = f"{name}__fp16"
                self.graph.initializer.append(half)
                names[name] = half.name
        return names

    def _fix_outputs(self, producers: dict[str, onnx.NodeProto],
                     nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
        """Graph outputs keep FP32 (or become FP16 with io_fp16) whatever their producer's precision."""
        extra = []
        for value in self.graph.output:
            if self.types.get(value.name) != FLOAT:
                continue
            want = FLOAT16 if self.io_fp16 else FLOAT
            value.type.tensor_type.elem_type = want
            if self.home(value.name, producers) == want:
                continue
            inner = _cast_name(value.name, self.home(value.name, producers))
            for node in nodes:
                node.input[:] = [inner if t == value.name else t for t in node.input]
                node.output[:] = [inner if t == value.name else t for t in node.output]
            extra.append(helper.make_node("Cast", [inner], [value.name], to=want,
                                          name=f"{value.name}__cast_out"))
        return extra


def _cast_name(tensor: str, dtype: int) -> str:
    return f"{tensor}__{'fp16' if dtype == FLOAT16 else 'fp32'}"


def _retype_attributes(node: onnx.NodeProto) -> None:
    """Attributes that spell a float32 dtype or value, rewritten for an FP16 node.

    An FP16 LayerNormalization gets `stash_type=1` written out: FP16 I/O, mean and variance
    accumulated in FP32 (ONNX's default, made explicit so the graph says what TensorRT runs).
    """
    if node.op_type == "LayerNormalization":
        kept = [a for a in node.attribute if a.name != "stash_type"]  # axis, epsilon
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("stash_type", 1)])
    elif node.op_type == "Cast":
        for attr in node.attribute:
            if attr.name == "to" and attr.i == FLOAT:
                attr.i = FLOAT16
    elif node.op_type == "Constant":
        value = None
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type == FLOAT:
                value = numpy_helper.to_array(attr.t)
            elif attr.name == "value_float":
                value = np.asarray(attr.f, np.float32)
            elif attr.name == "value_floats":
                value = np.asarray(attr.floats, np.float32)
        if value is not None:
            _set_value(node, value)
    elif node.op_type == "ConstantOfShape":
        value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"),
                     np.zeros(1, np.float32))
        if value.dtype == np.float32:
            _set_value(node, value)


def _set_value(node: onnx.NodeProto, value: np.ndarray) -> None:
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value.astype(np.float16))))


def emulate_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP32 twin of an FP16 graph that rounds every FP16 tensor through FP16 where it is stored.

    ONNX Runtime's x86 CPU kernels lack FP16 versions of Add, MatMul, Mul, Conv...: it runs
    such nodes in FP32 and removes the FP32->FP16->FP32 Casts between them, so an overflow
    that TensorRT would hit (a residual Add beyond 65504) never shows. Here each FP16 value
    is an FP32 value passed through an explicit Cast pair (which it keeps): overflow gives
    inf, rounding matches FP16 storage. Arithmetic inside a node stays FP32.
    """
    types = float_tensor_types(model)
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    graph = twin.graph
    for init in graph.initializer:
        if init.data_type == FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    nodes: list[onnx.NodeProto] = []
    rounded_inputs = {}
    for value in graph.input:
        if value.type.tensor_type.elem_type == FLOAT16:
            value.type.tensor_type.elem_type = FLOAT
            rounded_inputs[value.name] = f"{value.name}__as_fp32"
            nodes += _round_through_fp16(value.name, rounded_inputs[value.name])
    for node in graph.node:
        node.input[:] = [rounded_inputs.get(t, t) for t in node.input]
        if node.op_type in ("Constant", "ConstantOfShape"):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT16:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32)))
            nodes.append(node)
            continue
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == FLOAT16:
                    attr.i = FLOAT
        rounded = []
        for i, out in enumerate(node.output):
            if types.get(out) == FLOAT16:
                node.output[i] = f"{out}__exact"
                rounded += _round_through_fp16(node.output[i], out)
        nodes += [node, *rounded]
    for value in graph.output:
        if value.type.tensor_type.elem_type == FLOAT16:
            value.type.tensor_type.elem_type = FLOAT
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(twin, check_type=True, strict_mode=True)


def _round_through_fp16(exact: str, stored: str) -> list[onnx.NodeProto]:
    """Cast(FP16) -> Cast(FP32): STORED holds EXACT as FP16 storage would (inf beyond 65504)."""
    half = f"{stored}__fp16_storage"
    return [helper.make_node("Cast", [exact], [half], to=FLOAT16, name=half),
            helper.make_node("Cast", [half], [stored], to=FLOAT, name=f"{stored}__as_fp32")]


def node_precisions(model: onnx.ModelProto, islands: list[Island]) -> list[dict[str, Any]]:
    """Every compute node (layout and Q/DQ nodes aside): {node, op, module, dtype, reason}."""
    kept = {i.node: i.reason for i in islands}
    return [{"node": n.name, "op": n.op_type, "module": module_name(n),
             "dtype": "fp32" if n.name in kept else "fp16", "reason": kept.get(n.name, "FP16")}
            for n in model.graph.node if n.op_type not in LAYOUT_OPS and n.op_type not in QDQ_OPS]


def plan_fp16(model: onnx.ModelProto, calibration: np.ndarray | None, *, margin: float = DEFAULT_MARGIN,
              io_fp16: bool = False, keep: Iterable[str] = (), fp32_ops: Iterable[str] = DEFAULT_FP32_OPS,
              ranges: dict[str, float] | None = None, floors: dict[str, float] | None = None,
              ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """FP16 graph with FP32 islands chosen from CALIBRATION (NCHW float32), and its record.

    RANGES and FLOORS (`row_floors`), when given, are the calibration statistics already
    measured (on this graph or one with the same tensor names), so CALIBRATION is not run again.
    FP32_OPS are the default islands (`()` for none: LayerNorm then runs with FP16 I/O and
    its FP32 `stash_type` accumulation).
    The record: margin, I/O dtype, Casts added, calibration facts, `fp32_islands` (node, op,
    PyTorch module, reason) and `nodes` (every compute node's dtype and why).
    """
    named = onnx.ModelProto()
    named.CopyFrom(model)
    name_nodes(named)
    has_data = calibration is not None and len(calibration) > 0
    if has_data and ranges is None and floors is None:
        ranges, floors = ranges_and_floors(named, calibration, FLOOR_SAMPLES)
    if ranges is None:
        ranges = activation_ranges(named, calibration) if has_data else {}
    if floors is None:
        floors = row_floors(named, calibration.take(np.arange(min(FLOOR_SAMPLES, len(calibration))), axis=0)) \
            if has_data else {}
    islands = choose_islands(named, ranges, margin=margin, keep=keep, fp32_ops=fp32_ops, floors=floors)
    converted = convert_fp16(named, [i.node for i in islands], io_fp16=io_fp16)
    nodes = node_precisions(named, islands)
    finite = [v for v in ranges.values() if np.isfinite(v)]
    record = {
        "io": "fp16" if io_fp16 else "fp32",
        "fp16_margin": margin,
        "fp16_threshold": margin * FP16_MAX,
        "fp16_floor": FP16_MIN_NORMAL,  # rows peaking below this are subnormal in FP16
        "casts_added": sum(n.op_type == "Cast" for n in converted.graph.node)
        - sum(n.op_type == "Cast" for n in named.graph.node),
        "calibration_samples": len(calibration) if has_data else 0,
        "calibration_max_abs": max(finite) if finite else None,
        "fp32_islands": [asdict(i) for i in islands],
        "nodes": nodes,
    }
    return converted, record
