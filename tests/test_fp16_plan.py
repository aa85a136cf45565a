"""FP16 with FP32 islands: the graph transform, the island choice, and accuracy on real ViTs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vitedge.backends.tensorrt import _run_graph
from vitedge.precision.fp16 import (
    FP16_MAX,
    choose_islands,
    convert_fp16,
    emulate_fp16,
    plan_fp16,
)
from vitedge.precision.stats import activation_ranges, float_tensor_types
from vitedge.precision.trt_ready import check_trt_ready
from vitedge.validate.metrics import compare_logits

F32, F16, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64


def _toy() -> onnx.ModelProto:
    """x -> MatMul(W) -> Add(b) -> LayerNorm -> Reshape(Shape(...)) -> Mul(Constant) -> MatMul(W) -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(np.ones(4, np.float32), "ln_scale"),
             numpy_helper.from_array(np.zeros(4, np.float32), "ln_bias")]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm1"),
        helper.make_node("Add", ["mm", "b"], ["add"], name="add1"),
        helper.make_node("LayerNormalization", ["add", "ln_scale", "ln_bias"], ["ln"], name="ln1", axis=-1),
        helper.make_node("Shape", ["add"], ["shape"], name="shape1"),
        helper.make_node("Reshape", ["ln", "shape"], ["flat"], name="reshape1"),
        helper.make_node("Constant", [], ["two"], name="const1",
                         value=numpy_helper.from_array(np.array([2.0], np.float32))),
        helper.make_node("Mul", ["flat", "two"], ["scaled"], name="mul1"),
        helper.make_node("MatMul", ["scaled", "W"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", F32, ["n", 4])],
                              [helper.make_tensor_value_info("y", F32, ["n", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    return float_tensor_types(model)


def test_convert_puts_casts_at_island_borders_and_leaves_int_paths_alone() -> None:
    model = _toy()
    converted = convert_fp16(model, ["ln1", "mm2"])
    types = _types(converted)
    nodes = {n.name: n for n in converted.graph.node}
    assert converted.graph.input[0].type.tensor_type.elem_type == F32  # I/O stay FP32
    assert converted.graph.output[0].type.tensor_type.elem_type == F32
    assert types[nodes["mm1"].input[0]] == F16 and nodes["mm1"].input[0] != "x"  # Cast in front
    assert types["mm"] == F16 and types["add"] == F16
    ln = nodes["ln1"]
    assert [types[t] for t in ln.input] == [F32, F32, F32]  # scale/bias match X in the island
    assert types["shape"] == I64 and nodes["shape1"].input == ["add"]  # Shape reads FP16, no Cast
    const = numpy_helper.to_array(nodes["const1"].attribute[0].t)
    assert const.dtype == np.float16  # the Constant feeds an FP16 Mul
    inits = {i.name: i.data_type for i in converted.graph.initializer}
    assert inits["W"] == F32 and inits["W__fp16"] == F16  # shared by an FP16 and an FP32 MatMul
    assert nodes["mm2"].input[1] == "W" and nodes["mm1"].input[1] == "W__fp16"
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(_run_graph(converted, x), _run_graph(model, x), rtol=2e-2, atol=2e-2)


def test_convert_with_fp16_io() -> None:
    converted = convert_fp16(_toy(), ["ln1"], io_fp16=True)
    assert converted.graph.input[0].type.tensor_type.elem_type == F16
    assert converted.graph.output[0].type.tensor_type.elem_type == F16
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    assert np.isfinite(_run_graph(converted, x)).all()


def test_activation_ranges_are_the_max_abs_of_every_float_tensor() -> None:
    model = _toy()
    x = np.random.default_rng(2).standard_normal((10, 4)).astype(np.float32)
    ranges = activation_ranges(model, x, batch_size=3)
    w = numpy_helper.to_array(model.graph.initializer[0])
    b = numpy_helper.to_array(model.graph.initializer[1])
    assert ranges["x"] == pytest.approx(np.abs(x).max())
    assert ranges["add"] == pytest.approx(np.abs(x @ w + b).max(), rel=1e-5)
    assert "shape" not in ranges  # integer tensors are not watched


def test_islands_come_from_op_type_range_constants_and_ignored_scope() -> None:
    model = _toy()
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.full(4, 1e5, np.float32), "b"))
    islands = {i.node: i.reason for i in choose_islands(model, {"mm": 7000.0, "scaled": float("inf")},
                                                        margin=0.1, keep=["mm2"])}
    assert "default island" in islands["ln1"]
    assert "|mm| reaches 7000" in islands["mm1"]  # 7000 > 0.1 x 65504
    assert "beyond FP16's range" in islands["add1"]  # bias of 1e5
    assert "|scaled| reaches inf" in islands["mul1"] and "--ignored-scope" in islands["mm2"]
    assert "shape1" not in islands and "reshape1" not in islands
    with pytest.raises(ValueError):
        choose_islands(model, {}, margin=1.5)


def test_emulation_rounds_like_fp16_storage() -> None:
    """ORT's CPU kernels run FP16 Add/Mul in FP32 and drop the rounding; the emulation keeps it."""
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=F16, name="in"),
             helper.make_node("Mul", ["x16", "k"], ["big"], name="mul"),
             helper.make_node("Add", ["big", "one"], ["big1"], name="add"),
             helper.make_node("Cast", ["big1"], ["y"], to=F32, name="out")]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", F32, ["n", 2])],
                              [helper.make_tensor_value_info("y", F32, ["n", 2])],
                              [numpy_helper.from_array(np.array(1000, np.float16), "k"),
                               numpy_helper.from_array(np.array(0.3, np.float16), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    emulated = _run_graph(emulate_fp16(model), np.array([[100.0, 1.0]], np.float32))
    assert np.isinf(emulated[0, 0])  # 1e5 does not fit FP16
    assert emulated[0, 1] == np.float32(np.float16(np.float16(1000) + np.float16(0.3)))


@pytest.fixture(scope="module")
def demo_data(demo_export: Path, digits_calib: Path, demo_val_tensors, demo_reference_logits) -> dict:
    from vitedge.data import load_tensors, open_image_set
    from vitedge.manifest import Manifest

    manifest = Manifest.load(demo_export)
    calib = load_tensors(open_image_set(digits_calib, manifest.labels).subset(500), manifest.preprocessing)
    return {"model": onnx.load(str(demo_export / "model.onnx")), "calib": calib.x, "val": demo_val_tensors.x,
            "labels": demo_val_tensors.labels, "reference": demo_reference_logits}


def test_demo_fp16_plan_matches_pytorch(demo_data: dict) -> None:
    graph, plan = plan_fp16(demo_data["model"], demo_data["calib"])
    check_trt_ready(graph)
    islands = plan["fp32_islands"]
    assert sorted({i["op"] for i in islands}) == ["LayerNormalization", "Softmax"]
    assert len(islands) == 9 + 4  # 4 blocks x 2 LayerNorms + final norm, 4 Softmax
    assert {"blocks.0.norm1", "blocks.3.attn", "norm"} <= {i["module"] for i in islands}
    assert plan["calibration_samples"] == 500 and plan["io"] == "fp32"
    assert sum(n["dtype"] == "fp32" for n in plan["nodes"]) == len(islands)
    for graph_run in (graph, emulate_fp16(graph)):
        drift = compare_logits(demo_data["reference"], _run_graph(graph_run, demo_data["val"]), demo_data["labels"])
        assert drift["top1_agreement"] == 1.0
        assert drift["acc_delta"] == 0.0
        assert drift["max_abs_err"] < 0.05


def _overflowing_vit(tmp_path: Path) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A random tiny timm ViT whose residual stream is scaled by 2**17 (LayerNorm undoes it).

    Patch embedding, cls/pos tokens and every residual branch output (attn.proj, mlp.fc2) are
    multiplied by 2**17: residual values reach ~3e5 > 65504 while the logits stay those of the
    unscaled model (finite, input-dependent) in FP32.
    """
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0,
                            num_classes=10).eval()
    scale = 2.0 ** 17
    with torch.no_grad():
        for tensor in (vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, vit.cls_token, vit.pos_embed):
            tensor.mul_(scale)
        for block in vit.blocks:
            for linear in (block.attn.proj, block.mlp.fc2):
                linear.weight.mul_(scale)
                linear.bias.mul_(scale)
        x = torch.randn(192, 3, 32, 32)
        reference = vit(x).numpy()
        assert np.isfinite(reference).all() and vit.patch_embed(x).abs().max() > FP16_MAX
    path = tmp_path / "overflow_vit.onnx"
    torch.onnx.export(vit, (x[:2],), str(path), dynamo=True, opset_version=18, input_names=["pixel_values"],
                      output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                      verbose=False)
    return onnx.load(str(path)), x.numpy(), reference


def test_stress_fp32_islands_keep_an_overflowing_vit_correct(tmp_path: Path) -> None:
    model, x, reference = _overflowing_vit(tmp_path)
    calib, held_out, ref_held_out = x[:64], x[64:], reference[64:]
    naive = convert_fp16(model, [])  # every node FP16
    naive_out = _run_graph(emulate_fp16(naive), held_out)
    assert not np.isfinite(naive_out).all()  # residual overflow -> inf -> NaN after LayerNorm
    graph, plan = plan_fp16(model, calib)
    reasons = {i["module"]: i["reason"] for i in plan["fp32_islands"] if i["op"] == "Add"}
    assert "above 0.1 x 65504" in reasons["blocks.0"]  # the residual Adds are FP32 islands
    for graph_run in (graph, emulate_fp16(graph)):
        out = _run_graph(graph_run, held_out)
        assert np.isfinite(out).all()
        assert compare_logits(ref_held_out, out)["top1_agreement"] == 1.0


def _tiny_row_graph(pos_scale: float) -> onnx.ModelProto:
    """A cls row of 1e-6 values concatenated to x, plus a position term of POS_SCALE, then LayerNorm."""
    inits = [numpy_helper.from_array(np.full((1, 1, 4), 1e-6, np.float32), "cls"),
             numpy_helper.from_array(np.full((1, 3, 4), pos_scale, np.float32), "pos"),
             numpy_helper.from_array(np.ones(4, np.float32), "ln_scale"),
             numpy_helper.from_array(np.zeros(4, np.float32), "ln_bias")]
    nodes = [helper.make_node("Concat", ["cls", "x"], ["tokens"], name="concat", axis=1),
             helper.make_node("Add", ["tokens", "pos"], ["embedded"], name="add_pos"),
             helper.make_node("LayerNormalization", ["embedded", "ln_scale", "ln_bias"], ["y"], name="ln")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", F32, [1, 2, 4])],
                              [helper.make_tensor_value_info("y", F32, [1, 3, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_rows_below_fp16_normals_that_reach_layernorm_stay_fp32() -> None:
    from vitedge.precision.fp16 import row_floors

    x = np.random.default_rng(0).standard_normal((1, 2, 4)).astype(np.float32)  # one sample (fixed batch 1)
    for pos_scale, kept in ((0.0, {"concat", "add_pos", "ln"}), (0.02, set())):  # 0.02: the tiny row is swamped
        model = _tiny_row_graph(pos_scale)
        floors = row_floors(model, x)
        assert floors["tokens"] == pytest.approx(1e-6)
        islands = {i.node: i.reason for i in choose_islands(model, {}, floors=floors, fp32_ops=())}
        assert set(islands) == kept, islands
        if kept:
            assert "below FP16's smallest normal" in islands["ln"] and "scales it up" in islands["ln"]
            assert "reaches LayerNormalization ln unswamped" in islands["concat"]


def test_layerscale_vit_fp16_drift_fixed_by_small_end_islands(tmp_path: Path) -> None:
    """DeiT-3 style (random init, labelled so): LayerScale gammas 1e-6 and a cls token of ~1e-6 without a
    position embedding. Today's islands (LayerNorm, Softmax) leave the cls row subnormal in FP16."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0,
                            num_classes=10, init_values=1e-6, no_embed_class=True).eval()
    x = torch.randn(96, 3, 32, 32)
    with torch.no_grad():
        reference = vit(x).numpy()[64:]
    torch.onnx.export(vit, (x[:2],), str(tmp_path / "deit3.onnx"), dynamo=True, opset_version=18,
                      input_names=["pixel_values"], output_names=["logits"], verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    model, calib, held_out = onnx.load(str(tmp_path / "deit3.onnx")), x.numpy()[:64], x.numpy()[64:]

    def relative_error(graph: onnx.ModelProto) -> float:
        out = _run_graph(emulate_fp16(graph), held_out)
        return float(np.abs(out - reference).max() / np.abs(reference).max())

    today = convert_fp16(model, [n.name for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")])
    graph, plan = plan_fp16(model, calib)
    assert relative_error(today) > 0.01 and relative_error(graph) < 0.002
    reasons = {(i["module"], i["op"]): i["reason"] for i in plan["fp32_islands"]}
    assert "multiplies by constant blocks.0.ls1.gamma" in reasons["blocks.0.ls1", "Mul"]
    assert "reaches LayerNormalization" in reasons["blocks.1", "Add"] and plan["fp16_floor"] == 2.0 ** -14
