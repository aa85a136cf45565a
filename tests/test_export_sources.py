"""Export + parity for every model source, on real (random-init) models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from vitedge import api
from vitedge.fsutil import sha256_file
from vitedge.manifest import Manifest


def _check_export(out: Path, classes: int, size: int, dynamic: bool = True) -> Manifest:
    manifest = Manifest.load(out)
    model = onnx.load(str(out / "model.onnx"))
    assert manifest["onnx"]["opset"] >= 17
    assert manifest["onnx"]["layernorm_fused"] > 0 and not manifest["onnx"]["layernorm_decomposed"]
    assert [i.name for i in model.graph.input] == ["pixel_values"]
    assert [o.name for o in model.graph.output] == ["logits"]
    io = manifest["io"]
    assert io["inputs"][0]["shape"][1:] == [3, size, size]
    assert io["outputs"][0]["shape"][1] == classes
    assert isinstance(io["inputs"][0]["shape"][0], str) is dynamic
    parity = manifest["parity"]["random"]
    assert parity["top1_agreement"] == 1.0
    assert parity["max_abs_err"] <= 1e-4
    assert parity["cosine_min"] > 0.99999
    assert manifest["files"]["model.onnx"] == sha256_file(out / "model.onnx")
    for tool in ("torch", "onnx", "onnxruntime", "python"):
        assert manifest["tools"][tool]
    return manifest


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "vit_small_patch16_224"])
def test_timm_vits(tmp_path: Path, arch: str) -> None:
    """Random init (labelled so in the manifest): shape and parity only."""
    api.export(f"timm:{arch}", tmp_path / "out", num_classes=10, random_init_seed=3)
    m = _check_export(tmp_path / "out", 10, 224)
    assert m["source"]["weights_origin"] == "random-init" and m["source"]["random_init_seed"] == 3
    pre = m["preprocessing"]
    assert pre["interpolation"] == "bicubic" and pre["crop_pct"] == 0.9  # timm's pretrained_cfg
    assert m["preprocessing"]["resize_size"] == 248


def test_timm_weights_with_wrapper_prefix_and_pos_embed_resize(tmp_path: Path) -> None:
    import timm

    model = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=64)
    weights = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, weights)
    # num_classes comes from the head in the checkpoint; 64 -> 96 resamples the position embedding
    manifest = api.export("timm:vit_tiny_patch16_224", tmp_path / "out", weights=weights, img_size=96)
    _check_export(tmp_path / "out", 5, 96)
    assert manifest["source"]["weights_sha256"] == sha256_file(weights)


def test_torchvision_vit(tmp_path: Path) -> None:
    import torchvision

    model = torchvision.models.vit_b_16(num_classes=4, image_size=32)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-inits the head
    torch.save(model.state_dict(), tmp_path / "vit_b_16.pth")
    manifest = api.export("torchvision:vit_b_16", tmp_path / "out", weights=tmp_path / "vit_b_16.pth",
                          img_size=32)
    _check_export(tmp_path / "out", 4, 32)
    assert manifest["preprocessing"]["interpolation"] == "bilinear"
    assert manifest["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_huggingface_folder(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {0: "cat", 1: "dog", 2: "bird"}
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=128, num_labels=3, id2label=labels,
                       label2id={v: k for k, v in labels.items()})
    ViTForImageClassification(config).save_pretrained(tmp_path / "hf")
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(tmp_path / "hf")
    manifest = api.export(f"hf:{tmp_path / 'hf'}", tmp_path / "out")
    _check_export(tmp_path / "out", 3, 32)
    assert manifest["labels"] == ["cat", "dog", "bird"]
    assert manifest["preprocessing"]["crop_mode"] == "squash"


def _tiny_timm(size: int = 64) -> torch.nn.Module:
    import timm

    return timm.create_model("vit_tiny_patch16_224", num_classes=6, img_size=size).eval()


def test_torch_export_program(tmp_path: Path) -> None:
    model = _tiny_timm()
    program = torch.export.export(model, (torch.randn(2, 3, 64, 64),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    torch.export.save(program, tmp_path / "vit.pt2")
    api.export(str(tmp_path / "vit.pt2"), tmp_path / "out")
    _check_export(tmp_path / "out", 6, 64)


def test_torchscript_file(tmp_path: Path) -> None:
    traced = torch.jit.trace(_tiny_timm(), torch.randn(1, 3, 64, 64))
    traced.save(str(tmp_path / "vit.pt"))
    manifest = api.export(str(tmp_path / "vit.pt"), tmp_path / "out", img_size=64)
    _check_export(tmp_path / "out", 6, 64)
    assert manifest["onnx"]["exporter"] == "torchscript"


def test_module_factory_with_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text(
        "import timm\n\n"
        "def small_vit(num_classes=1000):\n"
        "    return timm.create_model('vit_tiny_patch16_224', num_classes=num_classes, img_size=48)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.invalidate_caches()
    model = importlib.import_module("my_models").small_vit(num_classes=3)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(["a", "b", "c"]))
    manifest = api.export("my_models:small_vit", tmp_path / "out", weights=tmp_path / "w.pt", labels=labels)
    _check_export(tmp_path / "out", 3, 48)
    assert manifest["labels"] == ["a", "b", "c"]
    # the exported graph computes the checkpoint's function, not a fresh random init
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "out" / "model.onnx")).run(None, {"pixel_values": x})[0]
    want = model.eval()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_fixed_batch(tmp_path: Path) -> None:
    api.export("demo:digits", tmp_path / "out", batch=4)
    manifest = _check_export(tmp_path / "out", 10, 32, dynamic=False)
    assert manifest["io"]["inputs"][0]["shape"][0] == 4
