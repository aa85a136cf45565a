"""The INT8 scheme for a graph: what kind of vision transformer it is, and the NNCF settings
that keep OpenVINO INT8 accurate for that kind.

NNCF's `model_type=TRANSFORMER` applies SmoothQuant to every MatMul. On plain ViTs that helps;
on windowed (Swin) and conv/attention hybrids it is what breaks accuracy. Measured on reduced
timm models (random init, 64 digit images, rel = |INT8 - FP32| / |FP32| of logits; OpenVINO
2026.4, NNCF 3.4, 2-core EPYC):

| model | TRANSFORMER | TRANSFORMER, no SmoothQuant | default (CNN) |
|---|---|---|---|
| vit_tiny (depth 2) | **0.027** | 0.036 | 0.287 |
| swin_tiny (depths 1,1,1,1) | 0.283 | **0.064** | 0.086 |
| levit_128s (depth 1,1,1) | 0.779 | **0.145** | 0.201 |
| pvt_v2_b0 (depths 1,1,1,1) | 0.534 | **0.054** | 0.056 |
| efficientformer_l1 | 0.235 | **0.015** | 0.030 |
| efficientvit_m0 (depth 1,1,1) | 0.512 | 0.621 | **0.033** |
| fastvit_t8 (layers 1,1,1,1) | 0.162 | 0.194 | **0.161** |

and with min/max activation ranges (`range_estimator`) on top of the chosen column:
ViT 0.022, Swin 0.041, LeViT 0.032, EfficientViT 0.025, FastViT 0.158.

With min/max activation ranges (`range_estimator`) on top: ViT 0.022, Swin 0.041, LeViT 0.032,
EfficientViT 0.025, FastViT 0.123; EVA-02 0.029 -> 0.017 and BEiT-v2 0.028 -> 0.015 without
NNCF's SmoothQuant. NNCF's SmoothQuant is therefore off for every kind: vitedge migrates
activation outliers itself, only where a LayerNorm output has them (precision/smoothquant.py,
applied before NNCF as before the ONNX Runtime / TensorRT quantizer).

Five kinds, checked in this order, from the ONNX graph (op types, parallel-branch sums) and the
exporter's module metadata (class names):
`multi_branch` (Adds summing parallel Conv/BatchNorm branches of one tensor: MobileOne-style
reparameterizable blocks exported in their train-time form, FastViT): NNCF's default (CNN)
scheme with Add/Subtract/Multiply/ReduceMean kept float. NNCF's CNN scheme quantizes the inputs
of every elementwise op, so the residual stream is re-quantized at each of the branch sums,
BatchNorm scale/shift and SE gating: FastViT rel 0.123 (ONNX Runtime, which quantizes only
Conv/MatMul inputs: 0.088); with these ops float 0.068. Not for the other conv kinds: on
EfficientViT-M the same ignored scope gave rel 0.03 -> 0.42 (NNCF then quantized a depthwise
conv's input per channel);
`convolutional` (depthwise convs + BatchNorm, no LayerNorm: EfficientViT-M, EfficientFormerV2):
NNCF's default (CNN) scheme, which also quantizes the elementwise ops between the convs;
`windowed` (window attention: Swin-style): TRANSFORMER;
`transformer` (attention, one patch-embedding conv: ViT, DeiT, EVA-02, BEiT): TRANSFORMER;
`hybrid` (convolutions besides the patch embedding: LeViT, PVT-v2, EfficientFormer): TRANSFORMER.

Independently of the kind, backends/openvino.py keeps float every Conv/MatMul whose weights are
all smaller than NNCF's floor on symmetric weight ranges (`NNCF_WEIGHT_RANGE_FLOOR`): NNCF
widens such ranges to the floor, so the weights are quantized to fewer than 127 levels (BEiT's
classifier head, initialised x0.001: ~100 levels; layer-scale 1e-5 folded into a conv by
OpenVINO: 1-2 levels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

KINDS = ("transformer", "windowed", "hybrid", "convolutional", "multi_branch")
# multi_branch: what NNCF's CNN scheme quantizes besides Conv/MatMul inputs, kept float
_BRANCH_FLOAT_TYPES = ("Add", "Subtract", "Multiply", "ReduceMean")
_CLASS_KEY = "pkg.torch.onnx.class_hierarchy"


@dataclass(frozen=True)
class Int8Scheme:
    """The quantization scheme chosen for one graph, and the graph facts it was chosen from."""

    kind: str
    model_type: str | None  # NNCF ModelType name, None for its default (CNN) scheme
    smooth_quant: bool
    reason: str
    facts: dict[str, int] = field(default_factory=dict)
    # NNCF activation range estimator: MINMAX beat NNCF's default (quantile-based for
    # TRANSFORMER) on every family measured: LeViT 0.145 -> 0.032, Swin 0.064 -> 0.041,
    # EfficientViT 0.033 -> 0.025, ViT 0.027 -> 0.022.
    range_estimator: str | None = "MINMAX"
    # OpenVINO op types whose inputs NNCF must not quantize (nncf.IgnoredScope types)
    float_op_types: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def nncf_smoothquant(self, smoothquant_alpha: float | None) -> dict[str, Any]:
        """What NNCF's SmoothQuant does under `apply_to(..., smoothquant_alpha)`, for the manifest."""
        if self.model_type != "TRANSFORMER":
            return {"applied": False, "alpha": None,
                    "why": "NNCF runs SmoothQuant with the TRANSFORMER model type only; this scheme uses its default"}
        if smoothquant_alpha is not None:
            return {"applied": True, "alpha": smoothquant_alpha, "why": "--smoothquant-alpha: every MatMul"}
        if self.smooth_quant:
            return {"applied": True, "alpha": "NNCF default", "why": self.reason}
        return {"applied": False, "alpha": None, "why": "off in the scheme (vitedge migrates outliers itself)"}

    def nncf_kwargs(self) -> dict[str, Any]:
        """model_type for nncf.quantize (the SmoothQuant switch goes in `apply_to`)."""
        import nncf

        return {"model_type": getattr(nncf.ModelType, self.model_type) if self.model_type else None}

    def apply_to(self, advanced: Any, smoothquant_alpha: float | None = None) -> Any:
        """NNCF AdvancedQuantizationParameters for this scheme: SmoothQuant off where it says so,
        and min/max activation ranges unless the user chose a range estimator (--calib-method).

        SMOOTHQUANT_ALPHA (--smoothquant-alpha) overrides the scheme: NNCF's SmoothQuant runs on
        every MatMul with that alpha (NNCF applies it with the TRANSFORMER model type only).
        """
        from nncf.quantization.advanced_parameters import AdvancedSmoothQuantParameters
        from nncf.quantization.range_estimator import RangeEstimatorParameters, RangeEstimatorParametersSet

        if smoothquant_alpha is not None and self.model_type == "TRANSFORMER":
            advanced.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=smoothquant_alpha, convolution=-1)
        elif not self.smooth_quant and self.model_type == "TRANSFORMER":
            advanced.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=-1, convolution=-1)
        if self.range_estimator and advanced.activations_range_estimator_params == RangeEstimatorParameters():
            advanced.activations_range_estimator_params = getattr(RangeEstimatorParametersSet, self.range_estimator)
        return advanced


_BRANCH_OPS = ("Conv", "BatchNormalization")
_SUM_OPS = ("Add", "Sum")


def _branch_sums(model: onnx.ModelProto) -> int:
    """Adds that sum parallel Conv / BatchNorm branches of one tensor: the train-time form of
    reparameterizable blocks (MobileOne, RepVGG, FastViT), e.g. conv3x3(x) + conv1x1(x) + bn(x).

    A residual Add (x + f(x)) is not one: x is the branch input, not a branch of the same input.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    sources: dict[str, frozenset[str]] = {}

    def branch_inputs(tensor: str) -> frozenset[str]:
        """The tensors TENSOR is a Conv/BatchNorm branch of, through sums of such branches."""
        if tensor not in sources:
            sources[tensor] = frozenset()  # cycles cannot occur in ONNX; this also bounds recursion on repeats
            node = producers.get(tensor)
            if node is not None and node.op_type in _BRANCH_OPS:
                sources[tensor] = frozenset(node.input[:1])
            elif node is not None and node.op_type in _SUM_OPS:
                sources[tensor] = frozenset().union(*(branch_inputs(i) for i in node.input))
        return sources[tensor]

    count = 0
    for node in model.graph.node:
        if node.op_type in _SUM_OPS and len(node.input) >= 2:
            first, *rest = (branch_inputs(i) for i in node.input)
            if any(first & other for other in rest):
                count += 1
    return count


def graph_facts(model: onnx.ModelProto) -> dict[str, int]:
    """Op-type counts that tell the families apart (depthwise = Conv with group > 1), and the
    number of parallel-branch sums (`_branch_sums`)."""
    counts: dict[str, int] = {"conv": 0, "depthwise_conv": 0, "batchnorm": 0, "layernorm": 0,
                              "softmax": 0, "window_attention": 0, "branch_sums": _branch_sums(model)}
    for node in model.graph.node:
        op = node.op_type
        if op == "Conv":
            counts["conv"] += 1
            if any(a.name == "group" and a.i > 1 for a in node.attribute):
                counts["depthwise_conv"] += 1
        elif op == "BatchNormalization":
            counts["batchnorm"] += 1
        elif op == "LayerNormalization":
            counts["layernorm"] += 1
        elif op == "Softmax":
            counts["softmax"] += 1
            classes = next((p.value for p in node.metadata_props if p.key == _CLASS_KEY), "")
            if "window" in classes.lower():
                counts["window_attention"] += 1
    return counts


def choose_scheme(model: onnx.ModelProto) -> Int8Scheme:
    """The INT8 scheme for MODEL (an exported FP32 ONNX graph)."""
    facts = graph_facts(model)
    convs_beyond_stem = facts["conv"] > 1
    if facts["branch_sums"]:
        return Int8Scheme("multi_branch", None, False,
                          "parallel conv branches summed (reparameterizable blocks in train-time form): NNCF's "
                          "default (CNN) scheme with the elementwise ops and mean pools kept float, so the branch "
                          "sums, BatchNorm scale/shift, SE gating and residual stream are not re-quantized at "
                          "every op (FastViT: rel 0.123 -> 0.068)", facts, float_op_types=_BRANCH_FLOAT_TYPES)
    if facts["depthwise_conv"] and facts["batchnorm"] and not facts["layernorm"]:
        return Int8Scheme("convolutional", None, False,
                          "depthwise convs + BatchNorm, no LayerNorm: NNCF's default (CNN) scheme", facts)
    if facts["window_attention"]:
        return Int8Scheme("windowed", "TRANSFORMER", False,
                          "window attention: SmoothQuant off (it broke Swin INT8: rel 0.28 vs 0.06)", facts)
    if not convs_beyond_stem and facts["softmax"]:
        return Int8Scheme("transformer", "TRANSFORMER", False,
                          "plain transformer: NNCF TRANSFORMER scheme; activation outliers are migrated "
                          "where present by vitedge's SmoothQuant (precision/smoothquant.py)", facts)
    return Int8Scheme("hybrid", "TRANSFORMER", False,
                      "conv/attention hybrid: TRANSFORMER scheme, SmoothQuant off (it broke LeViT/PVT-v2)", facts)


# nncf.quantization.fake_quantize.fix_zero_filters_symmetric (NNCF 3.x): symmetric weight ranges
# are widened to at least max(1% of the tensor's largest, 8e-5)
NNCF_WEIGHT_RANGE_FLOOR = 8e-5

DEFAULT_MAX_DROP = 0.005  # the issue-3 accuracy target: at most 0.5 points of top-1 lost


def accuracy_control_drop(max_drop: float | None, validation: Any) -> float | None:
    """The max top-1 drop for accuracy-controlled INT8: --max-drop, else DEFAULT_MAX_DROP when
    labelled validation data was given (accuracy control by default), else None (plain PTQ)."""
    if max_drop is not None:
        return max_drop
    if validation is not None and getattr(validation, "labels", None) is not None:
        return DEFAULT_MAX_DROP
    return None


def scheme_for_file(path: Any) -> Int8Scheme:
    """choose_scheme for an ONNX file (weights not loaded)."""
    return choose_scheme(onnx.load(str(path), load_external_data=False))
