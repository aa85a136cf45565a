"""--mean/--std/--crop-pct/--interpolation take effect for every source, and the result equals
the transform each library builds with the same settings (timm, torchvision, transformers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitedge.manifest import Manifest
from vitedge.models.sources import _hf_preprocessing, _timm_preprocessing, _torchvision_preprocessing
from vitedge.preprocessing import preprocess_image

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _image(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * h)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("crop_pct", [1.0, 0.8])
def test_timm_source_overrides_match_timm_transform(crop_pct: float) -> None:
    import timm
    import timm.data

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=64)  # random init
    pre = _timm_preprocessing(model, None).override(mean=MEAN, std=STD, crop_pct=crop_pct, interpolation="bilinear")
    transform = timm.data.create_transform(input_size=(3, 64, 64), crop_pct=crop_pct, interpolation="bilinear",
                                           mean=MEAN, std=STD, is_training=False)
    img = _image(90, 70)
    np.testing.assert_allclose(preprocess_image(img, pre), transform(img).numpy(), atol=1e-5)


def test_torchvision_source_crop_pct_replaces_its_fixed_resize() -> None:
    """torchvision weights declare resize 256 -> crop 224; --crop-pct 1.0 must resize to 224."""
    import torchvision.transforms as T

    declared, _ = _torchvision_preprocessing("vit_b_16", None)
    assert declared.scale_size == 256
    pre = declared.override(mean=MEAN, std=STD, crop_pct=1.0, interpolation="bicubic")
    assert pre.scale_size == 224 and pre.to_dict()["resize_size"] == 224
    transform = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize(MEAN, STD)])
    img = _image(300, 260)  # PIL input: torchvision resizes with PIL, like vitedge
    np.testing.assert_allclose(preprocess_image(img, pre), transform(img).numpy(), atol=1e-5)


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
def test_hf_source_crop_pct_matches_a_transformers_processor(tmp_path: Path, crop_pct: float) -> None:
    """A ViTImageProcessor folder squashes to HxW; with --crop-pct it resizes the shortest side
    to size / crop_pct and centre-crops, as ConvNextImageProcessor does with the same crop_pct."""
    from transformers import ConvNextImageProcessor, ViTImageProcessor

    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    declared = _hf_preprocessing(tmp_path, None, None)
    assert declared.crop_mode == "squash"
    pre = declared.override(mean=MEAN, std=STD, crop_pct=crop_pct, interpolation="bicubic")
    reference = ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=crop_pct, image_mean=list(MEAN),
                                       image_std=list(STD), resample=Image.Resampling.BICUBIC)
    img = _image(120, 90)
    want = reference(img, return_tensors="np")["pixel_values"][0]
    got = preprocess_image(img, pre)
    assert got.shape == want.shape == (3, 64, 64)
    assert np.abs(got - want).mean() < 0.02  # transformers resizes float arrays: rounding noise only


def test_cli_export_records_the_overrides_and_the_runtime_applies_them(cli, tmp_path: Path) -> None:
    out = tmp_path / "digits"
    r = cli("export", "demo:digits", "-o", out, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
            "--crop-pct", "1.0", "--interpolation", "bilinear")
    assert r.code == 0, r.text
    pre = Manifest.load(out)["preprocessing"]
    assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.25] * 3 and pre["crop_pct"] == 1.0
    assert pre["interpolation"] == "bilinear" and pre["resize_size"] == pre["input_size"][0]
    assert pre["extra"]["overridden"] is True
    import vitedge

    img = _image(48, 40)
    with vitedge.load(out) as model:
        h = model.preprocessing.input_size[0]
        manual = np.asarray(img.resize((int(h * 48 / 40), h), Image.Resampling.BILINEAR), np.float32) / 255
        left = int(round((manual.shape[1] - h) / 2))
        manual = (manual[:, left:left + h] - 0.5) / 0.25
        np.testing.assert_allclose(model.preprocess([img])[0], manual.transpose(2, 0, 1), atol=1e-5)


def test_recipe_preprocessing_keys_are_validated(tmp_path: Path) -> None:
    import yaml

    from vitedge.errors import BadInput
    from vitedge.recipe import load_recipe

    recipe = {"version": 1, "model": {"spec": "demo:digits", "preprocessing": {"crop_pct": 1.0, "mean": [0.5] * 3}},
              "targets": [{"target": "onnxruntime", "precision": "fp32"}],
              "bench": {"data": str(Path(__file__).parents[1] / "calibration" / "digits" / "val")}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert load_recipe(path)["model"]["preprocessing"] == {"crop_pct": 1.0, "mean": [0.5] * 3}
    with pytest.raises(BadInput, match="model.preprocessing.interpolation: 'cubic' is not one of nearest"):
        load_recipe(path, ["model.preprocessing.interpolation=cubic"])
    with pytest.raises(BadInput, match="model.preprocessing.mean"):
        load_recipe(path, ["model.preprocessing.mean=[0.5]"])
    json.dumps(load_recipe(path))  # the resolved recipe stays plain data
