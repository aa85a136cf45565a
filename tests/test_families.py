"""Family coverage: every transformer family vitedge supports exports with parity and compiles.

Reduced-depth random-init models (tests/tiny_families.py): shapes, exporter paths, parity and
the INT8 scheme are tested here, accuracy is not (scripts/int8_families.py measures the INT8
error per family and backend). In CI each family exports (with the parity check) and compiles
for one target, the targets spread over the families; the full family x target matrix is
marked `slow` (run it with `pytest --run-slow`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_families import FAMILIES, save_hf_classifier

from vitedge import api
from vitedge.compile import compile_artifact
from vitedge.errors import EnvironmentProblem
from vitedge.manifest import Manifest

# family -> the compile target (target, precision) it covers in CI, and its INT8 scheme kind
CI_TARGET = {
    "vit_224": (("openvino", "int8"), "transformer"),
    "vit_384": (("onnxruntime", "int8"), "transformer"),
    "deit_distilled": (("tensorrt", "int8"), "transformer"),
    "vit_registers": (("openvino", "fp32"), "transformer"),
    "eva02": (("onnxruntime", "fp32"), "transformer"),
    "beit": (("tensorrt", "fp16"), "transformer"),
    "beitv2": (("openvino", "int8"), "transformer"),
    "swin": (("openvino", "int8"), "windowed"),
    "levit": (("openvino", "int8"), "hybrid"),
    "fastvit": (("openvino", "int8"), "multi_branch"),  # train-time MobileOne branches summed
    "efficientvit": (("openvino", "int8"), "convolutional"),
    "pvt_v2": (("tensorrt", "int8"), "hybrid"),
    "efficientformer": (("openvino", "int8"), "hybrid"),
    "efficientformerv2": (("openvino", "int8"), "convolutional"),  # depthwise + BatchNorm, no LayerNorm
}
TARGETS = [("openvino", "fp32"), ("openvino", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
           ("tensorrt", "fp16"), ("tensorrt", "int8")]


@pytest.fixture(scope="module")
def family_exports(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module) -> object:
    """export(family) -> export dir, each family exported once per module (seeded random init)."""
    root = tmp_path_factory.mktemp("families")
    done: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in done:
            api.export(f"tiny_families:{family}", root / family, random_init_seed=0, num_classes=10)
            done[family] = root / family
        return done[family]

    return get


@pytest.fixture(scope="module")
def monkeypatch_module():
    """tests/ on sys.path, so the `tiny_families:<family>` factory specs import."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(Path(__file__).parent))
        yield mp


def _compile(export: Path, out: Path, target: str, precision: str, calib: Path) -> Manifest:
    try:
        return compile_artifact(export, out, target=target, precision=precision, calib_size=32,
                                calib=str(calib) if precision == "int8" else None)
    except EnvironmentProblem:  # no TensorRT here: the TensorRT-ready ONNX + CPU verification are written
        manifest = Manifest.load(out)
        assert manifest["incomplete"] and (out / manifest["artifact"]["onnx"]).is_file()
        return manifest


def _check_compiled(manifest: Manifest, target: str, precision: str, kind: str) -> None:
    if target == "openvino" and precision == "int8":
        assert manifest["artifact"]["int8_scheme"]["kind"] == kind
        assert manifest["precision_summary"].get("int8", 0) > 0
        kept = manifest["artifact"]["scheme_float"]
        assert kept["op_types"] == (["Add", "Subtract", "Multiply", "ReduceMean"] if kind == "multi_branch" else [])
        for row in manifest["precision_plan"]:  # what the scheme keeps float runs float
            if "range floor" in row["reason"] or "INT8 scheme" in row["reason"]:
                assert row["dtype"] != "int8", row
    if target == "onnxruntime" and precision == "int8":
        assert manifest["precision_summary"].get("int8", 0) > 0
    if target == "tensorrt":
        verification = manifest["cpu_verification"]
        assert verification and manifest["trt_ready"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_exports_with_parity_and_compiles(family: str, family_exports, digits_calib: Path,
                                                 tmp_path: Path) -> None:
    export = family_exports(family)
    manifest = Manifest.load(export)
    assert manifest["parity"]["passed"] and manifest["parity"]["random"]["top1_agreement"] == 1.0
    assert manifest["source"]["weights_origin"] == "random-init"
    assert manifest["io"]["outputs"][0]["shape"][1] == 10
    if family.startswith("beit"):  # SDPA + symbolic batch fails to decompose: the fallback exports it
        assert manifest["onnx"]["exporter"] == "dynamo (unfused attention)"
    (target, precision), kind = CI_TARGET[family]
    compiled = _compile(export, tmp_path / "art", target, precision, digits_calib)
    _check_compiled(compiled, target, precision, kind)
    if family == "beitv2":  # timm initialises the head x0.001: under NNCF's weight range floor, kept float
        assert compiled["artifact"]["scheme_float"]["weights_below_floor"] == ["logits"]
        assert any("range floor" in row["reason"] for row in compiled["precision_plan"])


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: "-".join(t))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_target_matrix(family: str, target: tuple[str, str], family_exports, digits_calib: Path,
                              tmp_path: Path) -> None:
    manifest = _compile(family_exports(family), tmp_path / "art", *target, digits_calib)
    _check_compiled(manifest, *target, CI_TARGET[family][1])


def test_torchvision_swin_exports_and_compiles(tmp_path: Path, monkeypatch_module, digits_calib: Path) -> None:
    api.export("tiny_families:torchvision_swin", tmp_path / "export", random_init_seed=0)
    manifest = Manifest.load(tmp_path / "export")
    assert manifest["parity"]["passed"]
    compiled = _compile(tmp_path / "export", tmp_path / "ov", "openvino", "int8", digits_calib)
    assert compiled["artifact"]["int8_scheme"]["kind"] in ("windowed", "transformer")


@pytest.mark.slow
def test_torchvision_swin_t_full_size(tmp_path: Path) -> None:
    manifest = api.export("torchvision:swin_t", tmp_path / "export", random_init_seed=0)
    assert manifest["parity"]["passed"] and manifest["source"]["weights_origin"] == "random-init"


@pytest.mark.parametrize("kind", ["vit", "swin", "beit"])
def test_huggingface_families_from_configs(kind: str, tmp_path: Path, digits_calib: Path) -> None:
    folder = save_hf_classifier(kind, tmp_path / "hf")
    manifest = api.export(f"hf:{folder}", tmp_path / "export")
    assert manifest["parity"]["passed"] and manifest["labels"] == ["class_0", "class_1", "class_2"]
    assert manifest["source"]["weights_origin"] == "file"
    compiled = _compile(tmp_path / "export", tmp_path / "ort", "onnxruntime", "int8", digits_calib)
    assert compiled["precision_summary"].get("int8", 0) > 0


def test_every_exporter_failing_is_one_clear_error(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallbacks run in order, and when none works the message names each attempt."""
    import torch

    calls: list[bool] = []

    def broken(*args, dynamo: bool = True, **kwargs) -> None:
        calls.append(dynamo)
        raise RuntimeError(f"{'dynamo' if dynamo else 'torchscript'} cannot do this model")

    monkeypatch.setattr(torch.onnx, "export", broken)
    r = cli("export", "demo:digits", "-o", tmp_path / "out")
    assert r.code == 4, r.text
    line = " ".join(r.text.split())
    assert "every ONNX exporter failed for demo:digits" in line
    assert "dynamo: dynamo cannot do this model" in line and "torchscript: torchscript cannot" in line
    assert calls[0] is True and calls[-1] is False
    assert not (tmp_path / "out").exists()


def test_scheme_kinds_from_graph_facts() -> None:
    import onnx
    from onnx import TensorProto, helper

    from vitedge.precision.scheme import choose_scheme

    def graph(ops: list[tuple[str, dict]]) -> onnx.ModelProto:
        nodes = [helper.make_node(op, ["x"], [f"y{i}"], name=f"n{i}", **attrs) for i, (op, attrs) in enumerate(ops)]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y0", TensorProto.FLOAT, None)])
        return helper.make_model(g)

    assert choose_scheme(graph([("Conv", {}), ("LayerNormalization", {}), ("Softmax", {})])).kind == "transformer"
    assert choose_scheme(graph([("Conv", {}), ("Conv", {"group": 8}), ("BatchNormalization", {}),
                                ("Softmax", {})])).kind == "convolutional"
    assert choose_scheme(graph([("Conv", {}), ("Conv", {}), ("LayerNormalization", {}),
                                ("Softmax", {})])).kind == "hybrid"
    transformer = choose_scheme(graph([("Conv", {}), ("Softmax", {})]))
    assert transformer.model_type == "TRANSFORMER" and not transformer.smooth_quant  # vitedge migrates outliers
    assert choose_scheme(graph([("Conv", {}), ("Conv", {"group": 4}), ("BatchNormalization", {})])).model_type is None
    assert transformer.facts["softmax"] == 1 and transformer.facts["conv"] == 1


def test_multi_branch_kind_from_parallel_branch_sums() -> None:
    """conv3x3(x) + conv1x1(x) + bn(x) (a reparameterizable block in train-time form) makes the
    graph `multi_branch`; a residual x + conv(x) does not."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from vitedge.precision.scheme import choose_scheme

    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    bn = [numpy_helper.from_array(np.ones(4, np.float32), n) for n in ("g", "b", "m", "v")]

    def graph(nodes: list) -> object:
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w, *bn])
        return helper.make_model(g)

    stem = helper.make_node("Conv", ["x", "w"], ["s"])
    branches = graph([stem, helper.make_node("Conv", ["s", "w"], ["a"]), helper.make_node("Conv", ["s", "w"], ["c"]),
                      helper.make_node("BatchNormalization", ["s", "g", "b", "m", "v"], ["n"]),
                      helper.make_node("Add", ["a", "c"], ["ac"]), helper.make_node("Add", ["ac", "n"], ["out"])])
    scheme = choose_scheme(branches)
    assert scheme.kind == "multi_branch" and scheme.facts["branch_sums"] == 2
    assert scheme.model_type is None and "Add" in scheme.float_op_types
    residual = graph([stem, helper.make_node("Conv", ["s", "w"], ["a"]), helper.make_node("Add", ["s", "a"], ["out"])])
    assert choose_scheme(residual).facts["branch_sums"] == 0 and choose_scheme(residual).kind != "multi_branch"


def test_weights_below_nncf_floor_found_on_the_openvino_model(tmp_path: Path) -> None:
    """MatMuls whose weights are all under NNCF's symmetric range floor are found (zeros are not:
    they quantize exactly); normal weights are left to NNCF."""
    import numpy as np
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    from vitedge.backends.openvino import weights_below_floor
    from vitedge.precision.scheme import NNCF_WEIGHT_RANGE_FLOOR

    weights = {"tiny": np.full((8, 8), 5e-5, np.float32), "zero": np.zeros((8, 8), np.float32),
               "normal": np.full((8, 8), 0.02, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", name], [f"y_{name}"], name=f"mm_{name}") for name in weights]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info(f"y_{n}", TensorProto.FLOAT, [1, 8]) for n in weights],
                          [numpy_helper.from_array(v, n) for n, v in weights.items()])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    below = weights_below_floor(ov.convert_model(str(tmp_path / "m.onnx")), NNCF_WEIGHT_RANGE_FLOOR)
    assert list(below.values()) == [pytest.approx(5e-5)] and "tiny" in next(iter(below))
