"""TensorRT engines for NVIDIA GPUs, built from precision-annotated ONNX (strongly typed).

Two layers. The plan, always and on any CPU: the export's ONNX becomes the graph TensorRT
builds (FP16 with FP32 islands, or INT8 Q/DQ with the rest FP16), passes the readiness
check, and is executed with ONNX Runtime to measure its drift. The engine, only where
`import tensorrt` works and a GPU is visible: a thin layer over the TensorRT 10/11 Python
API (strongly typed network, so the precisions are the graph's), and a runner on torch CUDA
tensors. Without TensorRT, compile keeps the plan and the exact `trtexec` command that
builds the engine on the target, and marks the artifact incomplete.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge import ui
from vitedge.backends.base import (
    Availability,
    Backend,
    CompileOptions,
    Runner,
    artifact_path,
    register_backend,
)
from vitedge.envinfo import gpu_info, package_version
from vitedge.errors import BadInput, CompileFailed, EnvironmentProblem, IncompatibleArtifact
from vitedge.manifest import Manifest

TRT_ONNX = "model.trt.onnx"
ENGINE = "model.engine"
DEFAULT_PROFILE = (1, 8, 32)  # min:opt:max batch
VERIFY_SAMPLES = 256
MISSING = "TensorRT is not installed"
INSTALL_HINT = ("pip install --extra-index-url https://pypi.nvidia.com tensorrt (NVIDIA's index; the PyPI "
                "package only downloads from there), or use JetPack's TensorRT on Jetson; needs an NVIDIA "
                "GPU and driver")
HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS"}  # CLI spelling -> trt enum member


@dataclass
class EngineSettings:
    """What the engine build needs besides the graph; validated before any work is done."""

    input_name: str
    chw: tuple[int, int, int]
    profile: tuple[int, int, int] | None  # batch min/opt/max; None for a fixed-batch export
    fixed_batch: int | None
    workspace_mib: int | None
    opt_level: int | None
    timing_cache: str | None
    hardware_compat: str
    version_compatible: bool

    @classmethod
    def from_options(cls, manifest: Manifest, extra: dict[str, Any]) -> "EngineSettings":
        """From the export's I/O and the (already checked) --batch/--workspace/... flags."""
        inputs = manifest["io"]["inputs"]
        if len(inputs) != 1:
            raise BadInput(f"TensorRT compile expects one input, the export has {len(inputs)}")
        shape = inputs[0]["shape"]
        onnx_facts = manifest.get("onnx", {})
        fixed = None if onnx_facts.get("dynamic_batch", True) else int(onnx_facts.get("batch") or shape[0])
        workspace = extra.get("workspace_gb")
        return cls(
            input_name=inputs[0]["name"], chw=tuple(int(d) for d in shape[1:]),  # type: ignore[arg-type]
            profile=parse_profile(extra.get("batch"), fixed), fixed_batch=fixed,
            workspace_mib=int(workspace * 1024) if workspace else None, opt_level=extra.get("opt_level"),
            timing_cache=extra.get("timing_cache"), hardware_compat=(extra.get("hardware_compat") or "none").lower(),
            version_compatible=bool(extra.get("version_compatible")),
        )

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Full min/opt/max input shapes of the optimisation profile."""
        assert self.profile is not None
        return tuple((b, *self.chw) for b in self.profile)  # type: ignore[return-value]

    def trtexec_command(self, onnx_file: str = TRT_ONNX, engine_file: str = ENGINE) -> str:
        """The trtexec line that builds the same engine as `build_engine` (run in the artifact dir)."""
        parts = ["trtexec", f"--onnx={onnx_file}", "--stronglyTyped", "--noTF32"]
        if self.profile:
            for flag, shape in zip(("min", "opt", "max"), self.shapes(), strict=True):
                parts.append(f"--{flag}Shapes={self.input_name}:{'x'.join(map(str, shape))}")
        if self.workspace_mib:
            parts.append(f"--memPoolSize=workspace:{self.workspace_mib}")
        if self.opt_level is not None:
            parts.append(f"--builderOptimizationLevel={self.opt_level}")
        if self.timing_cache:
            parts.append(f"--timingCacheFile={self.timing_cache}")
        if self.hardware_compat != "none":
            parts.append(f"--hardwareCompatibilityLevel={self.hardware_compat}")
        if self.version_compatible:
            parts.append("--versionCompatible")
        parts.append(f"--saveEngine={engine_file}")
        return " ".join(parts)


def parse_profile(text: str | None, fixed_batch: int | None) -> tuple[int, int, int] | None:
    """`--batch MIN:OPT:MAX` -> (min, opt, max); the default for dynamic exports; None for fixed."""
    if text is None:
        return None if fixed_batch else DEFAULT_PROFILE
    try:
        values = tuple(int(v) for v in text.split(":"))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1 or not values[0] <= values[1] <= values[2]:
        raise BadInput(f"--batch takes MIN:OPT:MAX positive batch sizes with MIN <= OPT <= MAX "
                       f"(e.g. 1:8:32), got {text!r}")
    if fixed_batch and values != (fixed_batch,) * 3:
        raise BadInput(f"the export has a fixed batch of {fixed_batch}: re-export with --batch dynamic "
                       f"to build a {text} profile")
    return values  # type: ignore[return-value]


def timing_cache_path(base: str | None, gpu_name: str, compute_capability: str, trt_version: str) -> Path:
    """The timing cache file for this GPU + TensorRT version (a stale one is never reused)."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    key = f"{gpu}-sm{compute_capability.replace('.', '')}-trt{trt_version}"
    if base is None:
        from vitedge.data import cache_dir

        return cache_dir() / "tensorrt" / f"timing-{key}.cache"
    path = Path(base)
    return path.with_name(f"{path.stem}.{key}{path.suffix or '.cache'}")


def engine_mismatch(built: dict[str, Any], trt_version: str, gpu_name: str,
                    compute_capability: str) -> str | None:
    """Why an engine built as BUILT cannot run with this TensorRT on this GPU (None: it can)."""
    problems = []
    if built.get("version_compatible"):
        if trt_version.split(".")[0] != built["version"].split(".")[0] or \
                _version_tuple(trt_version) < _version_tuple(built["version"]):
            problems.append(f"TensorRT {trt_version} here, the version-compatible engine needs "
                            f"{built['version']} or a later {built['version'].split('.')[0]}.x")
    elif trt_version != built["version"]:
        problems.append(f"TensorRT {trt_version} here, the engine was built with {built['version']}")
    compat = built.get("hardware_compat", "none")
    if compat == "ampere+":
        if _version_tuple(compute_capability) < (8, 0):
            problems.append(f"{gpu_name} (sm {compute_capability}) is older than Ampere")
    elif (gpu_name, compute_capability) != (built["gpu"], built["compute_capability"]):
        problems.append(f"this GPU is {gpu_name} (sm {compute_capability}), the engine was built for "
                        f"{built['gpu']} (sm {built['compute_capability']})")
    if not problems:
        return None
    return ("; ".join(problems) + ": rebuild it here with `vitedge compile --target tensorrt` (or build with "
            "--hardware-compat ampere+ / --version-compatible for portable engines)")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def current_gpu(index: int = 0) -> dict[str, Any]:
    gpus = gpu_info()
    if index >= len(gpus):
        raise EnvironmentProblem("no CUDA GPU visible to PyTorch: TensorRT needs an NVIDIA GPU and driver")
    return gpus[index]


def build_engine(onnx_path: Path, engine_path: Path, settings: EngineSettings) -> dict[str, Any]:
    """Parse the ONNX into a strongly typed network, build and save the engine; return its record."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise CompileFailed(f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errors[:3])
                            + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""))
    config = builder.create_builder_config()
    if settings.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.opt_level is not None:
        config.builder_optimization_level = settings.opt_level
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 layers really FP32
    if settings.hardware_compat != "none":
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel,
                                                      HARDWARE_COMPAT[settings.hardware_compat])
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.profile:
        profile = builder.create_optimization_profile()
        low, opt, high = settings.shapes()
        profile.set_shape(settings.input_name, low, opt, high)
        config.add_optimization_profile(profile)
    gpu = current_gpu()
    cache_file = timing_cache_path(settings.timing_cache, gpu["name"], gpu["compute_capability"],
                                   trt.__version__)
    saved = cache_file.read_bytes() if cache_file.is_file() else b""
    reused = bool(saved) and config.set_timing_cache(config.create_timing_cache(saved), ignore_mismatch=False)
    if not reused:
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    start = time.perf_counter()
    with ui.Step(f"building the TensorRT engine on {gpu['name']}"):
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CompileFailed("TensorRT could not build the engine (its log above says why); a larger "
                            "--workspace or a lower --opt-level may help")
    with open(engine_path, "wb") as fh:
        fh.write(plan)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    tmp.replace(cache_file)
    return {"version": trt.__version__, "gpu": gpu["name"], "compute_capability": gpu["compute_capability"],
            "build_seconds": round(time.perf_counter() - start, 2), "strongly_typed": True, "tf32": False,
            "timing_cache": {"file": str(cache_file), "reused": reused}}


def _parser_error(error: Any) -> str:
    node = error.node_name() if hasattr(error, "node_name") else f"node #{error.node()}"
    op = error.node_operator() if hasattr(error, "node_operator") else ""
    return f"{node} ({op}): {error.desc()}" if op else f"{node}: {error.desc()}"


class TensorRTRunner(Runner):
    """Runs an engine with execute_async_v3 on torch CUDA tensors; times it with CUDA events."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, built: dict[str, Any] | None, device_index: int = 0) -> None:
        super().__init__()
        import tensorrt as trt
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device_index)
        torch.cuda.set_device(self.device)  # TensorRT deserializes and runs on the current device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if built and built.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise IncompatibleArtifact(f"TensorRT {trt.__version__} cannot load {engine_path} (built for "
                                       "another GPU or TensorRT version?): rebuild it here with "
                                       "`vitedge compile`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise IncompatibleArtifact(f"{engine_path}: expected one input and one output, got {names}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.output_name))
        batch = self.engine.get_tensor_shape(self.input_name)[0]
        if batch == -1:  # dynamic: the optimisation profile's min and max
            low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.batch_range = (low[0], high[0])
        else:
            self.batch_range = (batch, batch)
        self.stream = torch.cuda.Stream(self.device)
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self.info = {"backend": "tensorrt", "version": trt.__version__, "device": f"cuda:{device_index}",
                     "gpu": torch.cuda.get_device_name(self.device), "batch_range": list(self.batch_range),
                     "timing": "CUDA events around execute_async_v3 (host copies excluded)"}

    def infer(self, batch: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        out = super().infer(batch)
        self.last_ms = self._events[0].elapsed_time(self._events[1])
        return out

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        low, high = self.batch_range
        if not low <= len(x) <= high:
            raise BadInput(f"batch {len(x)} is outside the engine's profile {low}..{high} "
                           "(rebuild with --batch MIN:OPT:MAX)")
        with torch.cuda.stream(self.stream):
            x_gpu = torch.from_numpy(x).to(self.device).to(self.input_dtype)
            self.context.set_input_shape(self.input_name, tuple(x_gpu.shape))
            out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)),
                              dtype=self.output_dtype, device=self.device)
            self.context.set_tensor_address(self.input_name, x_gpu.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            start, end = self._events
            start.record(self.stream)
            ok = self.context.execute_async_v3(self.stream.cuda_stream)
            end.record(self.stream)
        self.stream.synchronize()
        if not ok:
            raise EnvironmentProblem("TensorRT execute_async_v3 failed (see the TensorRT log)")
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.context = None
        self.engine = None


def _torch_dtype(trt_dtype: Any) -> Any:
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}
    return table[trt_dtype.name]


@register_backend
class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    default_calib_method = "entropy"
    calib_methods = ("entropy", "max", "minmax", "percentile")  # max == minmax (symmetric)
    default_calib_size = 500
    compiles_without_runtime = True  # writes the TensorRT-ready ONNX and the trtexec command

    def availability(self) -> Availability:
        try:
            import tensorrt as trt
        except ImportError as exc:
            why = MISSING if package_version("tensorrt") is None else f"tensorrt does not import ({exc})"
            return Availability(False, None, why, INSTALL_HINT)
        version = getattr(trt, "__version__", package_version("tensorrt"))
        if not gpu_info():
            return Availability(False, version, "no CUDA GPU visible to PyTorch",
                                "TensorRT needs an NVIDIA GPU, its driver and a CUDA build of torch")
        return Availability(True, version)

    def check_options(self, options: CompileOptions) -> None:
        """Flag values, checked before calibration data is loaded."""
        extra = options.extra
        parse_profile(extra.get("batch"), None)
        if extra.get("workspace_gb") is not None and extra["workspace_gb"] <= 0:
            raise BadInput(f"--workspace takes a positive number of GB, got {extra['workspace_gb']}")
        if extra.get("opt_level") is not None and not 0 <= extra["opt_level"] <= 5:
            raise BadInput(f"--opt-level takes 0-5 (TensorRT's builder optimisation level), got {extra['opt_level']}")
        compat = (extra.get("hardware_compat") or "none").lower()
        if compat not in HARDWARE_COMPAT:
            raise BadInput(f"--hardware-compat takes {' or '.join(HARDWARE_COMPAT)}, got {compat!r}")
        if (extra.get("io") or "fp32") not in ("fp32", "fp16"):
            raise BadInput(f"--io takes fp32 or fp16, got {extra['io']!r}")
        if extra.get("io") == "fp16" and options.precision == "fp32":
            raise BadInput("--io fp16 needs --precision fp16 or int8")
        margin = extra.get("fp16_margin")
        if margin is not None and not 0 < margin <= 1:
            raise BadInput(f"--fp16-margin is a fraction of FP16's range 65504, in (0, 1]; got {margin}")
        from vitedge.precision.imported import check_options as check_int8_options

        check_int8_options(options.precision, extra)  # --plan, --quantized

    def compile(self, export_dir: Path, out_dir: Path, manifest: Manifest,
                options: CompileOptions) -> Manifest:
        import onnx

        from vitedge.precision.trt_ready import check_trt_ready

        settings = EngineSettings.from_options(manifest, options.extra)
        export_onnx = artifact_path(export_dir, manifest)
        calibration = options.calibration.x if options.calibration is not None else None
        quantized = options.extra.get("quantized")
        if quantized:  # a pre-quantized Q/DQ graph (ModelOpt, QAT): checked and measured, not re-placed
            from vitedge.precision.imported import confirm_same_network, import_graph

            graph, plan = import_graph(quantized, export_onnx)
        else:
            graph, plan = trt_plan(onnx.load(str(export_onnx)), export_onnx, options, calibration)
        with ui.Step("checking TensorRT readiness"):
            ready = check_trt_ready(graph)
        onnx.save(graph, str(out_dir / TRT_ONNX))
        verification = verify_on_cpu(export_onnx, out_dir / TRT_ONNX, _verification_data(options, manifest))
        if quantized:
            confirm_same_network(plan["imported"], verification)
        command = settings.trtexec_command()
        manifest.update(
            artifact={"model": ENGINE, "onnx": TRT_ONNX},
            precision_plan=plan["nodes"], precision_summary=plan["summary"], fp16_plan=plan.get("fp16"),
            int8_plans=plan.get("int8_plans"), quantized_import=plan.get("imported"), trt_ready=ready,
            cpu_verification=verification,
            tensorrt={**asdict(settings), "trtexec": command},
        )
        available = self.availability()
        if not available.usable:
            manifest["incomplete"] = {
                "reason": f"{available.reason}, so no engine was built: {available.install}",
                "next_step": f"on the target GPU, in the artifact directory: {command}  (or re-run this "
                             "`vitedge compile` there)",
            }
            return manifest
        manifest["tensorrt"].update(build_engine(out_dir / TRT_ONNX, out_dir / ENGINE, settings))
        return manifest

    def open_runner(self, artifact_dir: Path, manifest: Manifest, **options: Any) -> Runner:
        import tensorrt as trt

        engine = artifact_path(artifact_dir, manifest)
        if not engine.is_file():
            command = manifest.get("tensorrt", {}).get("trtexec", "")
            raise IncompatibleArtifact(f"{artifact_dir} holds no TensorRT engine yet: build it on the target "
                                       f"with `{command}` in that directory, or `vitedge compile` there")
        device = str(options.get("device") or "cuda")
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        built = manifest.get("tensorrt", {})
        if "version" in built:  # built by vitedge (a trtexec-built engine carries no record)
            gpu = current_gpu(index)
            why = engine_mismatch(built, trt.__version__, gpu["name"], gpu["compute_capability"])
            if why:
                raise IncompatibleArtifact(f"{artifact_dir}: {why}")
        return TensorRTRunner(engine, built, index)


def _verification_data(options: CompileOptions, manifest: Manifest) -> dict[str, Any]:
    """Inputs for the CPU drift check: --val (labelled), else calibration, else seeded random."""
    from vitedge.data import random_inputs

    for tensors, source in ((options.validation, "--val"), (options.calibration, "calibration set")):
        if tensors is not None:
            rng = np.random.default_rng(options.seed)
            pick = np.sort(rng.permutation(len(tensors.x))[:VERIFY_SAMPLES])
            labels = tensors.labels[pick] if tensors.labels is not None else None
            return {"x": tensors.x[pick], "labels": labels, "source": source}
    return {"x": random_inputs(manifest.preprocessing, 32, options.seed), "labels": None,
            "source": "seeded random inputs"}


def trt_plan(model: Any, export_onnx: Path, options: CompileOptions,
             calibration: np.ndarray | None) -> tuple[Any, dict[str, Any]]:
    """The graph TensorRT builds for the requested precision, and its precision plan.

    The plan: `nodes` (every compute node's dtype and why), `summary` (node counts per dtype),
    `fp16` (margin, I/O dtype, FP32 islands with reasons and PyTorch modules) and, for INT8,
    `int8_plans` (both placement plans' structure and drift, see `precision.int8.plan_int8`).
    """
    from vitedge.precision.fp16 import DEFAULT_MARGIN, plan_fp16
    from vitedge.precision.int8 import IgnoredScope

    precision = options.precision
    keep = IgnoredScope.parse(options.extra.get("ignored_scope")).select(model)
    if precision == "fp32":
        return model, {"nodes": [], "summary": {"all": "fp32 (TF32 off)"}}
    margin = options.extra.get("fp16_margin") or DEFAULT_MARGIN
    io_fp16 = options.extra.get("io") == "fp16"
    if calibration is None:
        ui.warn("no --calib: FP32 islands only for LayerNorm/Softmax; pass --calib to also keep "
                "large activations in FP32")
    if precision == "fp16":
        with ui.Step("FP16 plan: calibration statistics and FP32 islands"):
            graph, fp16 = plan_fp16(model, calibration, margin=margin, io_fp16=io_fp16, keep=keep)
        nodes, int8_plans = fp16.pop("nodes"), None
    else:  # both placement plans (accurate, fast) built and measured; --plan picks the graph
        from vitedge.precision.int8 import DEFAULT_PLAN, plan_int8

        method = options.calib_method or TensorRTBackend.default_calib_method
        labels = options.calibration.labels if options.calibration is not None else None
        graph, nodes, fp16, int8_plans = plan_int8(
            export_onnx, calibration, method="minmax" if method == "max" else method, keep=keep,
            quantize_attention=bool(options.extra.get("quantize_attention")), margin=margin, io_fp16=io_fp16,
            plan=options.extra.get("plan") or DEFAULT_PLAN, labels=labels)
    summary = {dtype: sum(n["dtype"] == dtype for n in nodes) for dtype in ("int8", "fp16", "fp32")}
    return graph, {"nodes": nodes, "summary": {k: v for k, v in summary.items() if v}, "fp16": fp16,
                   "int8_plans": int8_plans}


def verify_on_cpu(reference: Path, candidate: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Drift of the TensorRT-ready graph vs the export's FP32 ONNX, run with ONNX Runtime on CPU.

    Two runs: the graph as ONNX Runtime executes it, and its FP16-storage emulation (every
    FP16 tensor rounded as TensorRT stores it), since ORT's CPU kernels skip much FP16 rounding.
    """
    import onnx

    from vitedge.backends.onnxruntime import OrtRunner
    from vitedge.precision.fp16 import emulate_fp16
    from vitedge.validate.metrics import compare_logits

    x, labels = data["x"], data["labels"]
    with ui.Step(f"verifying on CPU with ONNX Runtime ({len(x)} samples)"):
        with OrtRunner(reference) as runner:
            ref = runner.infer_all(x)
        graph = onnx.load(str(candidate))
        runs = {"onnxruntime": graph, "fp16_storage_emulated": emulate_fp16(graph)}
        result: dict[str, Any] = {"reference": "export ONNX, FP32 (parity-checked against PyTorch)",
                                  "data": data["source"], "samples": int(len(x))}
        for name, model in runs.items():
            out = _run_graph(model, x)
            bad = int((~np.isfinite(out)).any(axis=1).sum())
            if bad:
                raise CompileFailed(f"the TensorRT-ready graph gives inf/NaN on {bad} of {len(x)} samples on "
                                    f"CPU ({name}); lower --fp16-margin to keep more nodes in FP32")
            result[name] = compare_logits(ref, out, labels)
    return result


def _run_graph(model: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits of an in-memory ONNX graph on CPU (no ORT graph optimisation), FP32 out."""
    import tempfile

    import onnx

    from vitedge.backends.onnxruntime import session

    with tempfile.TemporaryDirectory(prefix="vitedge-verify-") as tmp:
        path = Path(tmp) / "graph.onnx"
        onnx.save(model, str(path))
        sess = session(path, optimize=False)
    feed = sess.get_inputs()[0]
    dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
    outs = [sess.run(None, {feed.name: x[i:i + batch_size].astype(dtype)})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs).astype(np.float32)
