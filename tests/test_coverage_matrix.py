"""The model-coverage matrix (tests/coverage_matrix.py): every model source x every exporter x every
compile target and precision, generated from the registries.

Default suite: the tiny cases exported with the fallback chain (`--exporter auto`), and a few
cells chosen to hit every source, exporter, target and precision at least once (the regressions
of issue 27 among them); every (target, precision) a backend declares that no chosen cell covers
gets one on the timm case. Everything else is `slow` (`pytest --run-slow`); scripts/coverage_matrix.py
runs the same cells and writes the result into docs/models.md.
"""

from __future__ import annotations

from pathlib import Path

import coverage_matrix as cm
import numpy as np
import pytest

# (case, exporter, target, precision) in the default suite
CHOSEN = [
    ("torchscript", "torchscript", "tensorrt", "fp16"),  # issue 27: IndexError in the readiness check
    ("hf_swin", "torchscript", "tensorrt", "fp16"),  # HF Swin falls back to TorchScript: same bug
    ("hf_deit_distilled", "dynamo", "onnxruntime", "int8"),  # issue 27: size 37 -> crop 32
    ("hf_vit", "torchscript", "openvino", "bf16"),
    ("factory_beit", "dynamo-unfused", "tensorrt", "int8"),
    ("pt2", "dynamo", "openvino", "fp16"),
    ("timm_vit", "dynamo", "openvino", "int8"),
    ("demo", "dynamo", "onnxruntime", "fp32"),
    ("factory_torchvision_swin", "torchscript", "tensorrt", "fp32"),
    ("hf_vit", "dynamo", "openvino", "fp32"),
    ("hf_beit", "torchscript", "openvino", "int8"),
]


def _fast_cells() -> set[tuple[str, str, str, str]]:
    cells = set(CHOSEN)
    covered = {(t, p) for _, _, t, p in CHOSEN}
    cells |= {("timm_vit", "dynamo", t, p) for t, p in cm.targets() if (t, p) not in covered}
    return cells


FAST = _fast_cells()
SLOW_AUTO = {"hf_mobilevit", "factory_torchvision_swin"}  # 10+ s dynamo exports here: the slow suite's
FAST_EXPORTS = {(c, e) for c, e, _, _ in FAST} | {(c.name, cm.AUTO) for c in cm.CASES
                                                  if not c.slow and c.name not in SLOW_AUTO}


def _export_params() -> list:
    return [pytest.param(case.name, exporter, id=f"{case.name}-{exporter}",
                         marks=[] if (case.name, exporter) in FAST_EXPORTS else [pytest.mark.slow])
            for case in cm.CASES for exporter in cm.exporters()]


def _compile_params() -> list:
    return [pytest.param(case.name, exporter, target, precision, id=f"{case.name}-{exporter}-{target}-{precision}",
                         marks=[] if (case.name, exporter, target, precision) in FAST else [pytest.mark.slow])
            for case in cm.CASES for exporter in cm.exporters() if exporter != cm.AUTO
            for target, precision in cm.targets()]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory):
    """matrix(case, exporter) -> (export Result, export dir, work dir); each built and exported once."""
    root = tmp_path_factory.mktemp("matrix")
    built: dict[str, tuple[str, list[str]]] = {}
    exported: dict[tuple[str, str], tuple[cm.Result, Path, Path]] = {}

    def get(name: str, exporter: str) -> tuple[cm.Result, Path, Path]:
        case = cm.CASES_BY_NAME[name]
        work = root / name
        if name not in built:
            built[name] = cm.build_case(case, work)
        if (name, exporter) not in exported:
            out = work / f"export-{exporter}"
            exported[name, exporter] = cm.export_cell(case, exporter, *built[name], out), out, work
        return exported[name, exporter]

    return get


def test_every_registered_source_has_a_case() -> None:
    assert set(cm.sources()) <= {c.source for c in cm.CASES}, "a model source without a coverage case"


def test_matrix_axes_come_from_the_registries(cli) -> None:
    from vitedge.backends.base import compile_backends
    from vitedge.export import EXPORTERS

    assert cm.exporters() == ["auto", *EXPORTERS] and len(EXPORTERS) >= 3
    assert cm.targets() == [(n, p) for n, b in compile_backends().items() for p in b.precisions]
    assert {(t, p) for _, _, t, p in FAST} == set(cm.targets())  # every one in the default suite
    assert {e for _, e, _, _ in FAST} == set(EXPORTERS)
    help_text = " ".join(cli("export", "--help").text.split())
    assert all(key in help_text for key in EXPORTERS)


@pytest.mark.parametrize(("case", "exporter"), _export_params())
def test_export_matrix(case: str, exporter: str, matrix) -> None:
    result, _, _ = matrix(case, exporter)
    assert result.passed, result.line()
    if exporter == cm.AUTO:
        assert result.outcome not in ("n/a", "fails")


@pytest.mark.parametrize(("case", "exporter", "target", "precision"), _compile_params())
def test_compile_matrix(case: str, exporter: str, target: str, precision: str, matrix) -> None:
    export, export_dir, work = matrix(case, exporter)
    assert export.passed, export.line()
    if export.outcome in ("n/a", "fails"):
        why = "does not apply to" if export.outcome == "n/a" else "is a known failure of"
        pytest.skip(f"--exporter {exporter} {why} {case} (asserted by test_export_matrix)")
    result = cm.compile_cell(cm.CASES_BY_NAME[case], export_dir, target, precision,
                             work / f"{exporter}-{target}-{precision}", work)
    assert result.passed, result.line()


def test_exporter_that_does_not_apply_is_one_line_before_any_work(cli, tmp_path: Path) -> None:
    import torch

    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
    torch.jit.trace(module, torch.randn(1, 3, 8, 8)).save(str(tmp_path / "m.pt"))
    r = cli("export", tmp_path / "m.pt", "--img-size", "8", "-o", tmp_path / "out", "--exporter", "dynamo")
    assert r.code == 2, r.text
    assert "--exporter dynamo does not apply to" in " ".join(r.text.split())
    assert "a TorchScript program cannot be re-traced by torch.export" in " ".join(r.text.split())
    assert "Traceback" not in r.text and not (tmp_path / "out").exists()
    r = cli("export", "demo:digits", "-o", tmp_path / "out", "--exporter", "onnxscript")
    assert r.code == 2 and "unknown --exporter 'onnxscript'; choose one of auto, dynamo" in " ".join(r.text.split())


# -- the two findings of issue 27, at their cause ---------------------------------------------

def test_readiness_scans_take_nodes_without_inputs() -> None:
    """Constant nodes (no inputs; the TorchScript exporter writes them) and optional inputs left
    empty pass through every ONNX-node scan of vitedge/precision, and a decomposed LayerNorm
    among them is still found."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vitedge.precision.int8 import residual_adds
    from vitedge.precision.scheme import choose_scheme
    from vitedge.precision.trt_ready import find_problems, weight_tensors

    two = helper.make_node("Constant", [], ["two"], name="two", value=numpy_helper.from_array(np.float32(2)))
    axes = helper.make_node("Constant", [], ["axes"], name="axes", value=numpy_helper.from_array(np.int64([-1])))
    nodes = [two, axes,
             helper.make_node("ReduceMean", ["x", "axes"], ["mean"], name="mean"),
             helper.make_node("Sub", ["x", "mean"], ["d"], name="sub"),
             helper.make_node("Pow", ["d", "two"], ["sq"], name="pow"),
             helper.make_node("ReduceMean", ["sq", "axes"], ["var"], name="var"),
             helper.make_node("Clip", ["var", "", ""], ["y"], name="clip")]  # optional inputs left empty
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    problems = find_problems(model)
    assert [(p.node, p.op) for p in problems] == [("pow", "Pow")] and "decomposed LayerNorm" in problems[0].problem
    assert "two" in weight_tensors(model, {"two": np.float32(2), "axes": np.int64([-1])})
    assert residual_adds(model) == [] and choose_scheme(model).kind


def test_hf_processor_that_crops_gives_the_crop_size_and_matches_transformers(tmp_path: Path) -> None:
    """DeiT: resize to 37x37 (256 * 32 / 224), centre crop 32 (an odd margin: transformers floors
    the offset); MobileViT: shortest edge 36, crop 32, BGR, no normalization. vitedge's
    preprocessing equals the processor's output, and the manifest records both steps."""
    import transformers
    from PIL import Image
    from tiny_families import HF_PROCESSORS

    from vitedge.models.sources import _hf_preprocessing
    from vitedge.preprocessing import Preprocessing, preprocess_image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8), "RGB")
    own_resize = {  # processors with their own resize rule
        "convnext": (("ConvNextImageProcessor", {"size": {"shortest_edge": 32}, "crop_pct": 0.875}), "center"),
        "levit": (("LevitImageProcessor", {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}),
                  "center"),
        "poolformer": (("PoolFormerImageProcessor", {"size": {"shortest_edge": 32}, "crop_pct": 0.9,
                                                     "crop_size": {"height": 32, "width": 32}}), "center"),
    }
    cases = {**{k: (HF_PROCESSORS[k], m) for k, m in (("deit_distilled", "squash_center"), ("mobilevit", "center"),
                                                       ("beit", "squash"))}, **own_resize}
    for kind, ((name, kwargs), mode) in cases.items():
        processor = getattr(transformers, name)(**kwargs)
        processor.save_pretrained(tmp_path / kind)
        pre = _hf_preprocessing(tmp_path / kind, None, None)
        assert pre.input_size == (32, 32) and pre.crop_mode == mode, kind
        pre = Preprocessing.from_dict(pre.to_dict())  # as the manifest records it
        want = processor(img, return_tensors="np")["pixel_values"][0]
        diff = np.abs(preprocess_image(img, pre) - want)
        # resampling rounding only (a level or two on a few pixels); a crop one pixel off is ~0.5 mean
        assert diff.mean() < 1e-3 and diff.max() < 0.05, (kind, diff.mean(), diff.max())
    deit = _hf_preprocessing(tmp_path / "deit_distilled", None, None).to_dict()
    assert deit["resize_size"] == 37 and deit["crop_offset"] == "floor"
    assert deit["extra"]["crop_size"] == {"height": 32, "width": 32}


def test_hf_deit_distilled_exports_at_its_crop_size(tmp_path: Path) -> None:
    from tiny_families import save_hf_classifier

    from vitedge import api

    folder = save_hf_classifier("deit_distilled", tmp_path / "hf", processor=True)
    manifest = api.export(f"hf:{folder}", tmp_path / "export")
    assert manifest["io"]["inputs"][0]["shape"][1:] == [3, 32, 32] and manifest["parity"]["passed"]
    assert manifest["preprocessing"]["crop_mode"] == "squash_center" and manifest["preprocessing"]["resize_size"] == 37
