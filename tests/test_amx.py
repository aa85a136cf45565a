"""The AMX INT8 variant (attention and float remainder in bf16, static shapes), the yardsticks
bench times beside the artifacts, and OpenVINO's per-node profile (issue 25).

Real OpenVINO and NNCF on the demo model (trained on the digits); the speed these variants
gain is measured by scripts, not asserted here (docs/performance.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vitedge.tune.candidates import DeviceFacts, amx_variants, plan_candidates

AMX = DeviceFacts("Xeon", ("AVX-512", "AVX-512 VNNI", "AMX", "AMX-INT8", "AMX-BF16"), bf16=True, fp16=False,
                  cuda=False)
VNNI_ONLY = DeviceFacts("Xeon", ("AVX-512", "AVX-512 VNNI", "AVX-512 BF16"), bf16=True, fp16=False, cuda=False)


def test_amx_variants_are_planned_on_amx_and_skipped_with_the_reason_elsewhere() -> None:
    bases = plan_candidates(["openvino", "onnxruntime"], ["fp32", "bf16", "int8"], calib=True, device=AMX)
    variants = {v.name: v for v in amx_variants(bases, AMX)}
    assert set(variants) == {"openvino-int8-amx", "openvino-int8-amx-asym", "openvino-bf16-static"}
    assert variants["openvino-int8-amx"].extra == {"attention": "float", "float_precision": "bf16", "shapes": "static",
                                                   "activations": "symmetric"}
    assert variants["openvino-int8-amx-asym"].extra == {**variants["openvino-int8-amx"].extra,
                                                        "activations": "asymmetric"}
    assert variants["openvino-int8-amx"].base == "openvino-int8" and variants["openvino-int8-amx"].status == "planned"
    assert variants["openvino-bf16-static"].extra == {"shapes": "static"}
    elsewhere = amx_variants(plan_candidates(["openvino"], ["int8"], calib=True, device=VNNI_ONLY), VNNI_ONLY)
    assert [v.status for v in elsewhere] == ["skipped", "skipped"] and "no AMX-INT8" in elsewhere[0].reason


@pytest.fixture(scope="module")
def amx_artifact(demo_export: Path, digits_calib: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitedge.compile import compile_artifact

    out = tmp_path_factory.mktemp("amx") / "openvino-int8-amx"
    compile_artifact(demo_export, out, target="openvino", precision="int8", calib=digits_calib, calib_size=64,
                     extra={"attention": "float", "float_precision": "bf16", "shapes": "static",
                            "activations": "symmetric"})
    return out


def test_attention_float_keeps_the_activation_matmuls_out_of_nncf_and_records_it(amx_artifact: Path) -> None:
    import openvino as ov

    from vitedge.backends.openvino import attention_matmuls

    manifest = json.loads((amx_artifact / "vitedge.json").read_text())
    assert manifest["artifact"]["attention"] == "float"
    assert manifest["runtime"]["shapes"] == "static"
    assert manifest["runtime"]["properties"]["INFERENCE_PRECISION_HINT"] == "bf16"
    # no FakeQuantize feeds an attention MatMul in the saved IR
    model = ov.Core().read_model(str(amx_artifact / "model.xml"))
    names = attention_matmuls(model)
    assert names  # the demo's fused attention ops (ScaledDotProductAttention)
    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    for name in names:
        feeding = [ops[name].input_value(i).get_node().get_type_name() for i in range(ops[name].get_input_size())]
        assert "FakeQuantize" not in feeding, (name, feeding)
    # the runtime graph's node count by op type and precision is recorded, and the FCs ran INT8
    counts = manifest["artifact"]["nodes_by_precision"]
    assert sum(counts.get(t, {}).get("int8", 0) for t in ("FullyConnected", "FullyConnectedQuantizedLegacy")) >= 1


def test_symmetric_activations_put_every_activation_quantizer_around_zero(amx_artifact: Path) -> None:
    """--activations symmetric (NNCF's PERFORMANCE preset): no activation FakeQuantize has a zero
    point, so OpenVINO's INT8 GEMMs skip the zero-point compensation."""
    import openvino as ov

    manifest = json.loads((amx_artifact / "vitedge.json").read_text())
    assert manifest["artifact"]["activations"] == "symmetric"
    model = ov.Core().read_model(str(amx_artifact / "model.xml"))
    checked = 0
    for op in model.get_ops():
        if op.get_type_name() != "FakeQuantize" or op.input_value(0).get_node().get_type_name() == "Constant":
            continue  # weights are symmetric per channel either way
        low, high = (op.input_value(i).get_node().get_data().astype(np.float64) for i in (1, 2))
        levels = op.get_levels()
        unsigned = np.all(low == 0)
        signed = np.allclose(-low * (levels / 2 - 1) / (levels / 2), high, rtol=1e-5)
        assert unsigned or signed, (op.get_friendly_name(), low.ravel()[:3], high.ravel()[:3])
        checked += 1
    assert checked >= 4


def test_static_shapes_compile_once_per_batch_size_and_match_dynamic(amx_artifact: Path, demo_val_tensors) -> None:
    import vitedge
    from vitedge.backends.openvino import OpenVINORunner, runtime_properties

    x = demo_val_tensors.x[:8]
    with vitedge.load(amx_artifact) as model:
        runner = model.runner
        assert isinstance(runner, OpenVINORunner) and runner.static and runner.info["shapes"] == "static"
        static = np.concatenate([runner.infer(x[:1]), runner.infer(x[1:8]), runner.infer(x[:1])[:0]])
        assert set(runner._by_shape) == {tuple(x[:1].shape), tuple(x[1:8].shape)}  # batch 1 reused
    manifest = json.loads((amx_artifact / "vitedge.json").read_text())
    dynamic = OpenVINORunner(amx_artifact / "model.xml", runtime_properties(manifest["runtime"]))
    expected = dynamic.infer(x)
    dynamic.close()
    assert np.array_equal(static.argmax(1), expected.argmax(1))
    assert np.abs(static - expected).max() < 0.05 * np.abs(expected).max()


def test_attention_and_float_precision_are_int8_options(demo_export: Path, tmp_path: Path, cli) -> None:
    result = cli("compile", str(demo_export), "--target", "openvino", "--precision", "fp32", "--attention", "float",
                 "-o", str(tmp_path / "x"))
    assert result.code == 2 and "apply to --precision int8 only" in result.err
    assert not (tmp_path / "x").exists()


def test_bench_times_the_yardsticks_and_gates_can_name_them(amx_artifact: Path, demo_export: Path,
                                                            digits_val: Path, tmp_path: Path) -> None:
    import jsonschema

    from vitedge.errors import GateError
    from vitedge.validate.bench import run_bench
    from vitedge.validate.reports import load_schema

    try:  # the speed verdict depends on this machine (and its load): any outcome will do here
        report = run_bench([amx_artifact], reference=demo_export, data=digits_val, batches=[1, 4], max_images=40,
                           warmup=1, iters=4, gates=["faster(openvino-int8-amx, openvino-default)@b4"],
                           yardsticks=["openvino-default", "pytorch-bf16"], report_dir=tmp_path / "report")
    except GateError as exc:
        report = exc.result
    jsonschema.validate(report, load_schema())
    yardsticks = {y["name"]: y for y in report["yardsticks"]}
    assert set(yardsticks) == {"openvino-default", "pytorch-bf16"}
    assert yardsticks["pytorch-bf16"]["runtime"]["autocast"] == "bf16"
    assert yardsticks["openvino-default"]["drift"]["top1_agreement"] > 0.9
    rows = report["artifacts"][0]["vs_yardsticks"]
    assert {(r["yardstick"], r["batch"]) for r in rows} == {(y, b) for y in yardsticks for b in (1, 4)}
    for r in rows:
        low, high = r["ratio_p50_ci"]
        assert low <= r["ratio_p50"] <= high and r["ratio_p50"] > 0
    assert [g["artifact"] for g in report["gates"]] == ["openvino-int8-amx"]
    assert report["gates"][0]["other"]["artifact"] == "openvino-default"
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Against what you get without vitedge" in markdown and "openvino-default" in markdown


def test_unknown_yardstick_is_bad_input(amx_artifact: Path, demo_export: Path, digits_val: Path, cli) -> None:
    result = cli("bench", str(amx_artifact), "--reference", str(demo_export), "--data", str(digits_val),
                 "--yardstick", "tflite")
    assert result.code == 2 and "unknown tflite" in result.err and "openvino-default" in result.err


def test_perf_profile_sums_openvino_counters_by_node_type_and_kernel(amx_artifact: Path) -> None:
    from vitedge.backends.openvino import perf_profile

    manifest = json.loads((amx_artifact / "vitedge.json").read_text())
    rows = perf_profile(amx_artifact / "model.xml", manifest["runtime"]["properties"], batch=2, iters=3,
                        static=True)
    kinds = {r["node_type"] for r in rows}
    assert kinds & {"FullyConnected", "FullyConnectedQuantizedLegacy"}  # the latter: symmetric INT8 GEMMs
    assert all(r["ms"] >= 0 and r["nodes"] >= 1 for r in rows)
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)


@pytest.mark.slow
def test_torch_compile_yardsticks_run(demo_export: Path, digits_val: Path) -> None:
    """torch.compile (inductor, ~1 min on 2 cores) as a yardstick: compiled during warm-up, timed after."""
    from vitedge.errors import GateError
    from vitedge.validate.bench import run_bench

    try:
        report = run_bench([demo_export], reference=demo_export, data=digits_val, batches=[1], max_images=16,
                           warmup=2, iters=3, yardsticks=["pytorch-compile", "pytorch-compile-bf16"])
    except GateError as exc:
        report = exc.result
    by_name = {y["name"]: y for y in report["yardsticks"]}
    assert by_name["pytorch-compile"]["runtime"]["torch_compile"] is True
    assert by_name["pytorch-compile-bf16"]["runtime"]["autocast"] == "bf16"
    assert by_name["pytorch-compile"]["drift"]["cosine_min"] > 0.9999  # FP32 compiled = the reference
