"""Real TensorRT-RTX engines, built ahead of time on this CPU (no GPU, no CUDA runtime needed).

TensorRT for RTX (`pip install tensorrt-rtx`, in the dev extra) is a real library here, never a
stand-in: every plan of the demo (FP32, FP16, INT8 accurate, INT8 fast, INT8 --quantized) is
built for two compute capabilities and each engine file and its manifest record are checked.
Loading needs an NVIDIA GPU it supports (tests/test_gpu.py); here loading must say, in one line,
that there is none. The pure load-refusal rules are checked on GPU records as the driver reports
them (the H100 one was seen on the GPU machine).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import pytest

from vitedge.backends.tensorrt import libs
from vitedge.backends.tensorrt.gpu import detect_gpus
from vitedge.errors import BadInput, EnvironmentProblem, IncompatibleArtifact
from vitedge.manifest import Manifest

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install tensorrt-rtx)")

ARCHS = "sm86,sm120"
NO_GPU = not detect_gpus()


def _qdq_graph(export: Path, calib: Path, folder: Path) -> Path:
    """A ModelOpt/QAT-style pre-quantized graph of EXPORT (FP32 weights -> Q -> DQ), as
    test_trt_int8_plans.py makes it."""
    from test_trt_int8_plans import _float_weight_form

    from vitedge.data import load_tensors, open_image_set
    from vitedge.precision.int8 import quantize_qdq

    manifest = Manifest.load(export)
    x = load_tensors(open_image_set(calib, manifest.labels).subset(32, 0), manifest.preprocessing).x
    quantize_qdq(export / "model.onnx", folder / "ort.onnx", x, method="minmax")
    model = _float_weight_form(onnx.load(str(folder / "ort.onnx")))
    onnx.save(model, str(folder / "qat.onnx"))
    return folder / "qat.onnx"


@pytest.fixture(scope="module")
def qdq_graph(demo_export: Path, digits_calib: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _qdq_graph(demo_export, digits_calib, tmp_path_factory.mktemp("qdq"))


PLANS = {
    "fp32": ["--precision", "fp32"],
    "fp16": ["--precision", "fp16"],
    "int8-accurate": ["--precision", "int8", "--calib", "{calib}", "--calib-size", "32", "--plan", "accurate"],
    "int8-fast": ["--precision", "int8", "--calib", "{calib}", "--calib-size", "32", "--plan", "fast"],
    "int8-quantized": ["--precision", "int8", "--calib", "{calib}", "--calib-size", "32", "--quantized", "{qdq}"],
}


@pytest.mark.parametrize("plan", list(PLANS))
def test_every_plan_builds_a_real_engine_for_two_compute_capabilities(
        cli, demo_export: Path, digits_calib: Path, qdq_graph: Path, tmp_path: Path, plan: str) -> None:
    _build_and_check(cli, demo_export, digits_calib, qdq_graph, tmp_path / plan, plan, min_bytes=100_000)


def _build_and_check(cli, export: Path, calib: Path, qdq: Path, out: Path, plan: str, min_bytes: int) -> None:
    flags = [f.format(calib=calib, qdq=qdq) for f in PLANS[plan]]
    r = cli("compile", export, "--target", "tensorrt", *flags, "--gpu-arch", ARCHS, "-o", out)
    assert r.code == 0, r.text
    manifest = Manifest.load(out)
    manifest.verify_files(out)
    assert "incomplete" not in manifest
    engine = out / "model.engine"
    data = engine.read_bytes()
    built = manifest["tensorrt"]
    assert data.startswith(libs.RTX_ENGINE_MAGIC) and len(data) > min_bytes
    assert built["engine"] == {"file": "model.engine", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest["files"]["model.engine"] == built["engine"]["sha256"]
    assert built["library"] == "tensorrt-rtx" and built["library_version"] == trt.__version__
    assert "version" not in built  # the key TensorRT engines use: an RTX version is not a TensorRT version
    assert built["target_compute_capabilities"] == ["8.6", "12.0"]
    if NO_GPU:
        assert built["built_on"]["device"] == "cpu" and built["built_on"]["ahead_of_time"] is True
    assert 0 < built["build_seconds"] < 60 and built["build_peak_rss_mib"] > 50
    assert built["strongly_typed"] and built["tf32"] is False
    assert built["runtime_cache"]["hashed"] is False and built["runtime_cache"]["file"].startswith(".")
    assert "TensorRT-RTX" in r.out and "compute capability 8.6, 12.0" in " ".join(r.out.split())
    if plan == "int8-quantized":
        weights = sum(n.name.endswith("_weight_q") for n in onnx.load(str(qdq)).graph.node)  # 18 in the demo
        assert manifest["quantized_import"]["profile"]["qdq_nodes"] == 4 * weights  # activation Q/DQ, weight Q+DQ
    elif plan.startswith("int8"):
        assert manifest["int8_plans"]["chosen"] == plan.split("-")[1]
    print(f"\n{manifest['source'].get('spec')} {plan}: engine {len(data) / 1e6:.2f} MB, built in "
          f"{built['build_seconds']} s, peak RSS {built['build_peak_rss_mib']} MiB; compile "
          f"{manifest['compile']['seconds']} s")


@pytest.fixture(scope="module")
def vit_small(digits_calib: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """timm ViT-S/16 at 224, RANDOM INIT (labelled in its manifest: accuracy meaningless), and its Q/DQ graph."""
    from vitedge import api

    folder = tmp_path_factory.mktemp("vits")
    api.export("timm:vit_small_patch16_224", folder / "export", num_classes=10, random_init_seed=0)
    assert Manifest.load(folder / "export")["source"]["weights_origin"] == "random-init"
    return folder / "export", _qdq_graph(folder / "export", digits_calib, folder)


@pytest.mark.slow
@pytest.mark.parametrize("plan", list(PLANS))
def test_vit_small_random_init_builds_every_plan(cli, vit_small: tuple[Path, Path], digits_calib: Path,
                                                 tmp_path: Path, plan: str) -> None:
    export, qdq = vit_small
    _build_and_check(cli, export, digits_calib, qdq, tmp_path / plan, plan, min_bytes=10_000_000)


def test_default_targets_without_a_gpu_and_cli_exit_zero(cli, demo_export: Path, tmp_path: Path) -> None:
    if not NO_GPU:
        pytest.skip("a GPU is visible: the default is that GPU (tests/test_gpu.py)")
    r = cli("compile", demo_export, "--target", "tensorrt", "--engine-lib", "tensorrt-rtx", "-o", tmp_path / "e")
    assert r.code == 0, r.text
    built = Manifest.load(tmp_path / "e")["tensorrt"]
    assert built["target_compute_capabilities"] == list(libs.DEFAULT_RTX_ARCHS) == ["8.6", "8.9", "12.0"]


def test_loading_without_a_gpu_says_so_in_one_line(cli, demo_export: Path, digits_val: Path, tmp_path: Path) -> None:
    if not NO_GPU:
        pytest.skip("a GPU is visible here")
    import vitedge

    out = tmp_path / "e"
    r = cli("compile", demo_export, "--target", "tensorrt", "--gpu-arch", "sm89", "--val", digits_val, "-o", out)
    assert r.code == 0, r.text  # --val is skipped (said so); the graph was verified on CPU with --val
    manifest = Manifest.load(out)
    assert "no NVIDIA GPU" in manifest["validation"]["skipped"]
    assert manifest["cpu_verification"]["data"] == "--val"
    with pytest.raises(EnvironmentProblem) as err:
        vitedge.load(out, device="cuda")
    assert str(err.value) == (f"{out}: no NVIDIA GPU visible (CUDA driver): TensorRT-RTX engines run on an NVIDIA "
                              "GPU; this engine was built for compute capability 8.9")
    r = cli("bench", out, "--reference", demo_export, "--data", digits_val, "--batch", "1")
    errors = [line for line in r.text.splitlines() if line.startswith("error:")]
    assert r.code == 3 and len(errors) == 1 and "no NVIDIA GPU visible" in r.text, r.text


H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "driver": "580.95.05"}
RTX4090 = {"index": 0, "name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9", "driver": "580.95.05"}
BUILT = {"library": "tensorrt-rtx", "library_version": "1.7.1.116", "target_compute_capabilities": ["8.6", "12.0"]}


def test_load_refusals_name_the_one_reason() -> None:
    kind, line = libs.load_refusal(BUILT, [H100], 0, "1.7.1.116")
    assert kind is IncompatibleArtifact and line == (
        "NVIDIA H100 80GB HBM3 (compute capability 9.0) cannot run TensorRT-RTX engines (supports 8.0, 8.6, 8.9, "
        "12.x): rebuild with TensorRT (--engine-lib tensorrt) on that machine")
    kind, line = libs.load_refusal(BUILT, [RTX4090], 0, "1.7.1.116")
    assert kind is IncompatibleArtifact and line.startswith("this engine was built for compute capability 8.6, "
                                                            "12.0, this GPU is NVIDIA GeForce RTX 4090 (compute "
                                                            "capability 8.9): rebuild with --gpu-arch sm89")
    kind, line = libs.load_refusal({**BUILT, "target_compute_capabilities": ["8.9"]}, [RTX4090], 0, "1.8.0.1")
    assert kind is IncompatibleArtifact and "built with TensorRT-RTX 1.7.1.116, this is TensorRT-RTX 1.8.0.1" in line
    kind, line = libs.load_refusal(BUILT, [], 0, "1.7.1.116")
    assert kind is EnvironmentProblem and line.startswith("no NVIDIA GPU visible")
    assert libs.load_refusal({**BUILT, "target_compute_capabilities": ["8.9"]}, [RTX4090], 0, "1.7.1.116") is None
    blackwell = {**RTX4090, "name": "NVIDIA GeForce RTX 5090", "compute_capability": "12.0"}
    assert libs.load_refusal(BUILT, [blackwell], 0, "1.7.1.116") is None
    assert IncompatibleArtifact.exit_code == 2 and EnvironmentProblem.exit_code == 3
    old_driver = {**RTX4090, "driver": "570.86", "cuda_driver": "12.8"}
    assert libs.driver_problem(old_driver, "tensorrt_rtx_cu13 1.7.1.116") == (
        "the driver of NVIDIA GeForce RTX 4090 (570.86) supports CUDA 12.8, tensorrt_rtx_cu13 needs a driver for "
        "CUDA 13: update the driver, or install the TensorRT-RTX build for CUDA 12 (tensorrt-rtx-cu12)")
    assert libs.driver_problem({**old_driver, "cuda_driver": "13.0"}, "tensorrt_rtx_cu13 1.7.1.116") is None
    assert libs.driver_problem(old_driver, "tensorrt_rtx_cu12 1.7.1.116") is None


def test_gpu_arch_and_library_options_fail_before_any_work(cli, demo_export: Path, tmp_path: Path) -> None:
    cases = [
        (["--gpu-arch", "sm90"], "compute capability 9.0 (e.g. Jetson 8.7, Hopper 9.0, Turing 7.5) needs TensorRT"),
        (["--gpu-arch", "ampere"], "--gpu-arch takes compute capabilities like sm86,sm89,sm120"),
        (["--engine-lib", "tensorrt", "--gpu-arch", "sm86"], "--gpu-arch is for TensorRT-RTX"),
        (["--engine-lib", "tensorrt-rtx", "--version-compatible"], "--version-compatible: TensorRT-RTX has no such"),
        (["--engine-lib", "tensorrt-rtx", "--hardware-compat", "ampere+"], "--hardware-compat: TensorRT-RTX"),
        (["--engine-lib", "tensorrt-rtx", "--timing-cache", "x.cache"], "timing caches are no-ops there"),
        (["--engine-lib", "cuda"], "--engine-lib"),
    ]
    for flags, words in cases:
        r = cli("compile", demo_export, "--target", "tensorrt", *flags, "-o", tmp_path / "x")
        assert r.code == 2 and words in " ".join(r.text.split()), (flags, r.text)
        assert not (tmp_path / "x").exists()
    assert libs.parse_gpu_arch("sm86, 89,12.0,sm_120") == ["8.6", "8.9", "12.0"]
    with pytest.raises(BadInput):
        libs.parse_gpu_arch("sm75")  # built by the 1.7 builder, not run by its runtime


def test_every_difference_exists_in_the_real_bindings() -> None:
    """The TensorRT-RTX API names libs.py / engine.py / runner.py rely on, in the installed bindings."""
    config = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()
    for cc in libs.RTX_RUNS_ON:
        assert libs.rtx_enum(trt, cc).name == "SM" + cc.replace(".", "")
    assert hasattr(trt.ComputeCapability, "CURRENT") and hasattr(config, "num_compute_capabilities")
    assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") and hasattr(trt.BuilderFlag, "TF32")
    assert hasattr(trt.IHostMemory, "nbytes")
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    assert hasattr(runtime, "get_engine_validity") and runtime.engine_header_size > 0
    assert {"UNSUPPORTED_CC", "VERSION_MISMATCH", "OLD_CUDA_DRIVER"} <= set(trt.EngineInvalidityDiagnostics.__members__)
    for name in ("create_runtime_config",):
        assert hasattr(trt.ICudaEngine, name)
    for name in ("create_runtime_cache", "set_runtime_cache"):
        assert hasattr(trt.IRuntimeConfig, name)
    assert hasattr(trt.IRuntimeCache, "serialize") and hasattr(trt.IRuntimeCache, "deserialize")


def test_doctor_lists_both_libraries(cli) -> None:
    import json

    r = cli("doctor", "--json")
    tensorrt = json.loads(r.out)["backends"]["tensorrt"]
    libraries = tensorrt["engine_libraries"]
    assert set(libraries) == {"tensorrt", "tensorrt-rtx"}
    assert libraries["tensorrt-rtx"]["version"] == trt.__version__ and libraries["tensorrt-rtx"]["builds_here"]
    assert sum(lib["compile_uses"] for lib in libraries.values()) == 1
    if NO_GPU:
        assert not libraries["tensorrt-rtx"]["runs_engines_here"] and tensorrt["driver_gpus"] == []
    r = cli("doctor")
    assert "engine library tensorrt-rtx" in r.out and "compile --engine-lib auto uses it" in r.out


def _head_below_fp16_normals() -> onnx.ModelProto:
    """x -> Q/DQ (activation scale 0.02) -> Gemm with Q/DQ'd weights whose per-channel scales are
    below FP16's normal range (1e-6: a classifier head initialised near zero, as timm BEiT's is)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
             numpy_helper.from_array(rng.integers(-127, 128, (10, 64)).astype(np.int8), "w_q"),
             numpy_helper.from_array(np.full(10, 1e-6, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(10, np.int8), "w_zp"),
             numpy_helper.from_array(np.zeros(10, np.float32), "bias")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w", axis=0),
             helper.make_node("Gemm", ["xd", "wd", "bias"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_matmul_operands_get_one_scale_type_and_the_engine_builds(tmp_path: Path) -> None:
    """The FP16 conversion keeps a weight DQ FP32 when its scale is below FP16's normals; the
    activation DQ of the same Gemm must then be FP32 too, or TensorRT-RTX refuses the network
    ("type mismatch between matmul operand scales": timm BEiT and transformers MobileViT did)."""
    from onnx import TensorProto

    from vitedge.backends.tensorrt.engine import build_engine
    from vitedge.backends.tensorrt.settings import EngineSettings
    from vitedge.precision.fp16 import convert_fp16

    converted = convert_fp16(_head_below_fp16_normals(), [])
    inits = {i.name: i.data_type for i in converted.graph.initializer}
    dqs = {n.name: n for n in converted.graph.node if n.op_type == "DequantizeLinear"}
    assert inits[dqs["dq_w"].input[1]] == TensorProto.FLOAT  # subnormal in FP16: kept FP32
    assert inits[dqs["dq_x"].input[1]] == TensorProto.FLOAT  # paired with it
    head = next(n for n in converted.graph.node if n.name == "head")
    producers = {o: n for n in converted.graph.node for o in n.output}
    assert [producers[t].op_type for t in head.input[:2]] == ["Cast", "Cast"]  # the Gemm itself runs FP16
    path = tmp_path / "head.onnx"
    onnx.save(converted, str(path))
    settings = EngineSettings(input_name="x", chw=(64, 1, 1), profile=None, fixed_batch=2, workspace_mib=None,
                              opt_level=None, timing_cache=None, hardware_compat="none", version_compatible=False)
    record = build_engine(path, tmp_path / "head.engine", settings, library=libs.RTX, archs=["8.6"])
    assert (tmp_path / "head.engine").stat().st_size == record["engine"]["bytes"] > 0
