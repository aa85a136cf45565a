"""OpenVINO IR for CPUs: FP32 (honest, f32 inference), BF16, FP16 weights, INT8 through NNCF.

The run-time properties (inference precision, performance hint, threads, streams) are
chosen at compile time, recorded in the manifest's "runtime" key and applied again at load.
An inference precision hint is always pinned: on CPUs with bf16 (AVX-512 BF16, AMX)
OpenVINO otherwise runs "FP32" models in bf16. The precision plan is read from the compiled
model's runtime graph, so it says what really ran in which precision.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge import ui
from vitedge.backends.base import (
    Availability,
    Backend,
    CompileRequest,
    Runner,
    artifact_path,
    register_backend,
)
from vitedge.backends.openvino.graph import (
    SchemeFloat,
    _ignored,
    _module_map,
    attention_matmuls,
    ov_module_map,
    plan_counts,
    runtime_plan,
    weights_below_floor,
)
from vitedge.backends.openvino.runtime import (
    OpenVINORunner,
    _ov,
    _resolved,
    default_runner,
    perf_profile,
    precision_word,
    runtime_properties,
)
from vitedge.backends.options import Options, ignored_scope_option, option, smoothquant_alpha_option, threads_option
from vitedge.envinfo import cpu_info
from vitedge.errors import BadInput, CompileFailed, brief
from vitedge.manifest import Manifest

# what scripts and tests import from here, besides the backend itself
__all__ = ["MODEL_XML", "OpenVINOBackend", "OpenVINOOptions", "OpenVINORunner", "SchemeFloat", "attention_matmuls",
           "default_runner", "inference_precision_hint", "ov_module_map", "perf_profile", "plan_counts",
           "precision_word", "runtime_plan", "runtime_properties", "weights_below_floor"]

MODEL_XML = "model.xml"
_NNCF_RANGES = {"nncf": None, "minmax": "MINMAX", "percentile": "MEAN_QUANTILE"}
ATTENTION_CHOICES = ("int8", "float")
_ATTENTION_FLOAT_REASON = ("attention kept float (--attention float): OpenVINO runs it in its float "
                           "(bf16/f32) attention kernel")


def inference_precision_hint(precision: str, capabilities: list[str]) -> str:
    """The INFERENCE_PRECISION_HINT pinned for an artifact precision on a CPU with CAPABILITIES.

    fp32 and int8 pin f32: FP32 must be honest, and for INT8 with dynamic shapes the float islands
    (LayerNorm, Softmax, GELU, residuals) in f32 were faster than in bf16 on ViT-S/16 (b1 84 vs
    112 ms) as well as more accurate; `--float-precision bf16` (with `--shapes static`, the AMX
    variant) overrides it for INT8. fp16 takes the CPU's fastest half type: f16 where the
    CPU has it, else bf16, else f32 (and the manifest says which one ran). bf16 always pins bf16,
    so an artifact built elsewhere runs bf16 on a CPU with AVX-512 BF16 or AMX; a CPU without
    bf16 arithmetic ignores the hint and runs f32, which the runner reads back (precision_run).
    """
    if precision == "bf16":
        return "bf16"
    if precision != "fp16":
        return "f32"
    if "FP16" in capabilities:
        return "f16"
    return "bf16" if "BF16" in capabilities else "f32"



def _check_onnx_parses(path: Path) -> None:
    """BadInput, naming the file, when PATH is not an ONNX protobuf: OpenVINO would try each of
    its frontends in turn (TensorFlow's logs its parse errors to stderr) and say only that it
    "cannot recognize input model". Files over 512 MB are left to OpenVINO: parsing one would
    add its size to the compile's peak memory."""
    if path.stat().st_size > 512 << 20:
        return
    import onnx
    from google.protobuf.message import DecodeError

    try:
        onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise BadInput(f"{path} is not a valid ONNX model (onnx could not parse it: {brief(exc)}); "
                       "re-run `vitedge export` to write it again") from exc


@contextlib.contextmanager
def _nncf_output() -> Iterator[None]:
    """NNCF logs INFO lines and draws progress bars on stdout: keep its warnings; --quiet drops all."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR if ui.is_quiet() else logging.WARNING)
    try:
        with contextlib.ExitStack() as stack:
            if ui.is_quiet():
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            yield
    finally:
        logger.setLevel(level)


@dataclass(frozen=True)
class OpenVINOOptions(Options):
    """`vitedge compile --target openvino` options (run-time properties are recorded for load)."""

    threads: int | None = threads_option()
    streams: int | None = option(None, "OpenVINO NUM_STREAMS, recorded for load.", minimum=1,
                                 rule="a positive number of streams")
    hint: str = option("latency", "OpenVINO PERFORMANCE_HINT: latency | throughput.",
                       choices=("latency", "throughput"))
    max_drop: float | None = option(None, "INT8 with NNCF accuracy control: the largest absolute top-1 drop "
                                    "on --val, in (0, 1).", exclusive_minimum=0, exclusive_maximum=1,
                                    rule="an absolute top-1 drop in (0, 1), e.g. 0.005")
    ignored_scope: list[str] = ignored_scope_option()
    smoothquant_alpha: float | None = smoothquant_alpha_option()
    attention: str = option("int8", "INT8: quantize attention's activation x activation MatMuls (int8, NNCF's "
                            "TRANSFORMER default) or keep them float (float: OpenVINO's bf16/f32 attention kernel; "
                            "with a bf16 remainder as fast as INT8 attention on an AMX Xeon, a little more "
                            "accurate).",
                            choices=ATTENTION_CHOICES)
    float_precision: str = option("f32", "INT8: the precision of what stays float (LayerNorm, Softmax, GELU, "
                                  "residuals, float attention): f32 | bf16 (CPUs with AVX-512 BF16 or AMX).",
                                  choices=("f32", "bf16"))
    activations: str = option("asymmetric", "INT8: activation quantizers, asymmetric (u8 with a zero point, "
                              "NNCF's TRANSFORMER default) | symmetric (s8/u8 around "
                              "zero, NNCF's PERFORMANCE preset: OpenVINO's INT8 GEMMs skip zero-point work, ViT-S/16 "
                              "b8 on an AMX Xeon: FCs 24 vs 33 ms; a coarser grid for one-sided ranges, so bench it).",
                              choices=("asymmetric", "symmetric"))
    shapes: str = option("dynamic", "Input shapes at load: dynamic (one compiled model for every batch size) | "
                         "static (compiled per batch size on first use, ~1 s each; faster on CPUs).",
                         choices=("dynamic", "static"))


class _OneByOne:
    """Images of an array (or an on-disk `ImageArray`) as [1, 3, H, W] batches, sliced when
    NNCF iterates (it does once per statistics pass), so no pass holds the calibration set."""

    def __init__(self, images: Any) -> None:
        self.images, self.passes = images, 0

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[np.ndarray]:
        self.passes += 1
        for i in ui.track(range(len(self.images)),
                          f"NNCF statistics, pass {self.passes} ({len(self.images)} batches of 1)"):
            yield np.ascontiguousarray(self.images[i:i + 1], dtype=np.float32)


@register_backend
class OpenVINOBackend(Backend):
    name = "openvino"
    precisions = ("fp32", "fp16", "bf16", "int8")
    device_kind = "cpu"
    runtime_module = "openvino"
    Options = OpenVINOOptions
    default_calib_method = "nncf"
    calib_methods = ("nncf", "minmax", "percentile")
    calibrated_precisions = ("int8",)

    def availability(self) -> Availability:
        return Availability.of_package("openvino", "pip install openvino nncf")

    def check_options(self, request: CompileRequest) -> None:
        opts: OpenVINOOptions = request.options  # type: ignore[assignment]
        if request.precision != "int8" and (opts.max_drop is not None or opts.ignored_scope
                                            or opts.smoothquant_alpha is not None or opts.attention != "int8"
                                            or opts.float_precision != "f32" or opts.activations != "asymmetric"):
            raise BadInput("--max-drop, --ignored-scope, --smoothquant-alpha, --attention, --float-precision and "
                           "--activations apply to --precision int8 only")
        if opts.max_drop is not None and not request.val:
            raise BadInput("--max-drop needs --val DIR: labelled validation images to measure the drop")

    def compile(self, export_dir: Path, out_dir: Path, manifest: Manifest,
                request: CompileRequest) -> Manifest:
        """IR from the exported ONNX; INT8 through NNCF with the scheme chosen for this graph (precision/scheme.py)."""
        ov = _ov()
        source = artifact_path(export_dir, manifest)
        from vitedge.precision.smoothquant import migrated

        opts: OpenVINOOptions = request.options  # type: ignore[assignment]
        with contextlib.ExitStack() as stack:
            if request.precision == "int8" and request.calibration is not None:  # outliers -> weights
                source_graph, smoothquant = stack.enter_context(
                    migrated(source, request.calibration.x, alpha=opts.smoothquant_alpha))
            else:
                source_graph, smoothquant = source, None
            with ui.Step("converting ONNX to OpenVINO IR"):
                _check_onnx_parses(Path(source_graph))
                try:
                    ov_model = ov.convert_model(str(source_graph))
                except Exception as exc:  # noqa: BLE001 - the frontend raises generic errors
                    raise CompileFailed(f"OpenVINO could not convert {source}: {brief(exc)}") from exc
        onnx_modules = _module_map(source)
        ignored: set[str] = set()
        kept_float = SchemeFloat([], [], {})
        details: dict[str, Any] = {"weights": "fp16" if request.precision == "fp16" else "fp32"}
        if request.precision == "int8":
            if cpu_info()["int8_vnni"] is False:
                ui.warn("this CPU has no INT8 dot-product instructions (VNNI/AMX): OpenVINO runs INT8 through "
                        "a generic fallback that is often slower than its FP32 here; bench it against "
                        "--precision fp32 (gate `faster(openvino-int8, openvino-fp32)`) before you ship it")
            from vitedge.precision.scheme import scheme_for_file

            scheme = scheme_for_file(source)
            kept_float = SchemeFloat.of(ov_model, scheme)
            if opts.attention == "float":
                kept_float = kept_float.with_names(attention_matmuls(ov_model), _ATTENTION_FLOAT_REASON)
            ov_model, ignored, details = self._quantize(ov_model, onnx_modules, request, scheme, kept_float)
            details["smoothquant"] = smoothquant
        ov.save_model(ov_model, str(out_dir / MODEL_XML), compress_to_fp16=request.precision == "fp16")
        core = ov.Core()
        capabilities = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        hint = inference_precision_hint(request.precision, capabilities)
        if request.precision == "int8" and opts.float_precision == "bf16":
            hint = "bf16"
            if "BF16" not in capabilities:
                ui.warn("--float-precision bf16: this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX), so OpenVINO "
                        "runs the float remainder in f32 here; it runs bf16 on CPUs that have it")
        properties: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": opts.hint.upper(),
        }
        if opts.threads:
            properties["INFERENCE_NUM_THREADS"] = opts.threads
        if opts.streams:
            properties["NUM_STREAMS"] = opts.streams
        _warn_half_precision(request.precision, properties["INFERENCE_PRECISION_HINT"], capabilities)
        with ui.Step("compiling for CPU"):
            try:
                saved = core.read_model(str(out_dir / MODEL_XML))
                if opts.shapes == "static":  # the plan of what runs: a batch-1 static graph
                    saved.reshape({saved.inputs[0].get_any_name(): [1, *list(saved.inputs[0].get_partial_shape())[1:]]})
                compiled = core.compile_model(saved, "CPU", properties)
            except Exception as exc:  # noqa: BLE001
                raise CompileFailed(f"OpenVINO could not compile the IR: {brief(exc)}") from exc
        resolved = _resolved(compiled)
        if request.precision == "int8":
            details["attention"] = opts.attention
        manifest["artifact"] = {"model": MODEL_XML, "weights_file": "model.bin", "format": "openvino-ir",
                                **details}
        manifest["runtime"] = {"properties": properties, "device": "CPU", "resolved_at_build": resolved,
                               "shapes": opts.shapes,
                               "cpu_capabilities": capabilities, "cpu_int8_vnni": cpu_info()["int8_vnni"],
                               "cpu_isa": cpu_info()["isa"], "cpu_bf16_native": cpu_info()["bf16_native"]}
        manifest["precision_run"] = resolved["inference_precision"]
        manifest["precision_plan"] = runtime_plan(compiled, ov_module_map(saved, onnx_modules), request.precision,
                                                  ignored, accuracy_control=details.get("max_drop") is not None,
                                                  kept_float=kept_float.reasons,
                                                  attention_float=opts.attention == "float")
        manifest["artifact"]["nodes_by_precision"] = plan_counts(manifest["precision_plan"])  # what ran in what
        return manifest

    def _quantize(self, ov_model: Any, onnx_modules: dict[str, str | None],
                  request: CompileRequest, scheme: Any,
                  kept_float: SchemeFloat) -> tuple[Any, set[str], dict[str, Any]]:
        """nncf.quantize (or quantize_with_accuracy_control with --max-drop) on the ov.Model.

        KEPT_FLOAT is what the INT8 SCHEME keeps float, added to the user's --ignored-scope.
        Returns the quantized model, the op names --ignored-scope matched, and what to record.
        """
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA" noise
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        from vitedge.precision.int8 import IgnoredScope

        opts: OpenVINOOptions = request.options  # type: ignore[assignment]
        if request.calibration is None:
            raise BadInput("--precision int8 needs --calib DIR (calibration images)")
        x = request.calibration.x
        calib_ds = nncf.Dataset(_OneByOne(x))  # read image by image, never all held
        scope = IgnoredScope.parse(opts.ignored_scope)
        names, matched = _ignored(scope, ov_model, onnx_modules)
        extra_names = [n for n in kept_float.names if n not in names]
        ignored_scope = nncf.IgnoredScope(names=names + extra_names, patterns=list(scope.patterns),
                                          types=list(scope.types) + kept_float.types) \
            if scope or extra_names or kept_float.types else None
        method = request.calib_method or self.default_calib_method
        advanced = AdvancedQuantizationParameters()
        if _NNCF_RANGES[method]:
            advanced.activations_range_estimator_params = getattr(RangeEstimatorParametersSet,
                                                                  _NNCF_RANGES[method])
        from vitedge.precision.scheme import accuracy_control_drop

        # the scheme for this graph's kind (precision/scheme.py); --smoothquant-alpha overrides its SmoothQuant
        advanced = scheme.apply_to(advanced, opts.smoothquant_alpha)
        kwargs: dict[str, Any] = dict(subset_size=len(x), ignored_scope=ignored_scope, **scheme.nncf_kwargs())
        if opts.activations == "symmetric":  # NNCF's PERFORMANCE preset: symmetric weights and activations
            kwargs["preset"] = nncf.QuantizationPreset.PERFORMANCE
        max_drop = accuracy_control_drop(opts.max_drop, request.validation)
        details: dict[str, Any] = {"weights": "int8 per-channel symmetric", "quantizer": "nncf",
                                   "activations": opts.activations,
                                   "model_type": scheme.model_type or "CNN (NNCF default)",
                                   "int8_scheme": scheme.to_dict(),
                                   "nncf_smoothquant": scheme.nncf_smoothquant(opts.smoothquant_alpha),
                                   "range_estimator": (method if _NNCF_RANGES[method]
                                                       else scheme.range_estimator or method),
                                   "ignored_scope": list(opts.ignored_scope),
                                   "scheme_float": {"op_types": kept_float.types,
                                                    "weights_below_floor": kept_float.names},
                                   "max_drop": max_drop}
        try:
            with _nncf_output():
                if max_drop is None:
                    quantized = nncf.quantize(ov_model, calib_ds, advanced_parameters=advanced, **kwargs)
                else:
                    val = request.validation
                    if val is None or val.labels is None:
                        raise BadInput("--max-drop needs labelled --val data (class subfolders, "
                                       "path<TAB>label lists or an .npz with labels)")
                    val_ds = nncf.Dataset([(val.x[i:i + 1], val.labels[i:i + 1]) for i in range(len(val.x))],
                                          lambda item: item[0])
                    quantized = nncf.quantize_with_accuracy_control(
                        ov_model, calib_ds, val_ds, _top1_accuracy, max_drop=max_drop,
                        drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=advanced, **kwargs)
        except nncf.ValidationError as exc:
            raise BadInput(f"NNCF rejected the options: {str(exc).strip().splitlines()[0]}") from exc
        except BadInput:
            raise
        except Exception as exc:  # noqa: BLE001 - NNCF wraps many backend errors
            raise CompileFailed(f"NNCF quantization failed: {brief(exc)}") from exc
        return quantized, matched, details

    def summary_line(self, manifest: Manifest) -> str | None:
        resolved = manifest.get("runtime", {}).get("resolved_at_build")
        if not resolved:
            return None
        return (f"runs: inference precision {resolved['inference_precision']}, hint "
                f"{resolved['performance_hint']}, {resolved['threads']} threads, {resolved['streams']} stream(s)")

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        runtime = manifest.runtime
        device = str(options.get("device") or runtime.get("device") or "CPU").upper()
        return OpenVINORunner(artifact_path(artifact_dir, manifest),
                              runtime_properties(runtime, options.get("threads")), device,
                              static=runtime.get("shapes") == "static")


def _warn_half_precision(precision: str, hint: str, capabilities: list[str]) -> None:
    """Say when a half-precision artifact will not run in that precision on this CPU."""
    if precision == "bf16" and "BF16" not in capabilities:
        ui.warn("--precision bf16: this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX), so OpenVINO runs this "
                "artifact in f32 here, like --precision fp32; it runs bf16 on CPUs that have it "
                "(the manifest's precision_run says what ran)")
    elif precision == "fp16" and hint != "f16":
        ui.warn(f"--precision fp16: this CPU has no FP16 arithmetic, so OpenVINO only stores the weights in FP16 "
                f"(a file half the size) and computes in {hint}"
                + ("; --precision bf16 runs bf16 without the FP16 weights" if hint == "bf16"
                   else ", no faster than --precision fp32"))
    elif precision == "fp16" and cpu_info()["arch"] in ("x86_64", "AMD64"):
        ui.warn("--precision fp16: OpenVINO computes f16 on this CPU (AVX-512 FP16), which was slower than f32 on "
                "a Xeon with AMX (ViT-S/16, 4 threads, b8: 326 vs 219 ms; bf16 80 ms): prefer --precision bf16, "
                "and bench fp16 against fp32 before shipping it")


def _top1_accuracy(compiled_model: Any, items: Any) -> float:
    """NNCF's validation_fn: top-1 accuracy of a compiled model over (x, labels) items."""
    correct = total = 0
    for x, labels in items:
        logits = compiled_model(x)[0]
        correct += int((np.argmax(logits, axis=1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)

