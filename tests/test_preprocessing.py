"""Our NumPy/PIL preprocessing equals timm's and torchvision's eval transforms."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitedge.preprocessing import Preprocessing, preprocess_image


def _image(w: int, h: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(w * h)
    arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    return Image.fromarray(arr, "RGBA").convert(mode)


@pytest.mark.parametrize(("w", "h"), [(320, 240), (200, 300), (224, 224), (97, 131)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_matches_timm_eval_transform(w: int, h: int, interpolation: str) -> None:
    import timm.data

    cfg = {"input_size": (3, 224, 224), "interpolation": interpolation, "crop_pct": 0.9,
           "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_mode": "center"}
    transform = timm.data.create_transform(**cfg, is_training=False)
    pre = Preprocessing(input_size=(224, 224), interpolation=interpolation, crop_pct=0.9,
                        mean=cfg["mean"], std=cfg["std"])
    img = _image(w, h)
    np.testing.assert_allclose(preprocess_image(img, pre), transform(img).numpy(), atol=1e-5)


def test_matches_torchvision_weights_transform() -> None:
    import torchvision

    transform = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1.transforms()
    pre = Preprocessing(input_size=(224, 224), resize_size=256, interpolation="bilinear",
                        mean=tuple(transform.mean), std=tuple(transform.std))
    img = _image(300, 280)
    want = transform(img).numpy()
    # torchvision resizes the tensor (antialiased) rather than the PIL image: allow rounding noise
    assert np.abs(preprocess_image(img, pre) - want).mean() < 0.02


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_images_are_converted(mode: str) -> None:
    pre = Preprocessing(input_size=(32, 32), crop_pct=1.0)
    out = preprocess_image(_image(40, 40, mode), pre)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32


def test_roundtrip_through_manifest_dict() -> None:
    pre = Preprocessing(input_size=(32, 48), crop_pct=0.95, interpolation="bilinear")
    assert Preprocessing.from_dict(pre.to_dict()) == pre.replace(resize_size=pre.scale_size)
