"""The built-in demo: a small timm ViT trained on scikit-learn's bundled handwritten digits.

Weights ship with the package (`weights/demo_digits.safetensors`), produced by
`scripts/train_demo.py`; the images it was trained and validated on ship under
`calibration/digits/` (calib/ = training + calibration, val/ = held out).
"""

from __future__ import annotations

from pathlib import Path

from vitedge.preprocessing import Preprocessing

DEMO_WEIGHTS = Path(__file__).parent / "weights" / "demo_digits.safetensors"
DEMO_LABELS = [str(d) for d in range(10)]
DEMO_IMAGE_SIZE = 32
# timm VisionTransformer keyword arguments; changing them means retraining.
DEMO_ARCH = dict(
    img_size=DEMO_IMAGE_SIZE,
    patch_size=4,
    in_chans=3,
    num_classes=10,
    embed_dim=96,
    depth=4,
    num_heads=4,
    mlp_ratio=2.0,
    class_token=True,
    global_pool="token",
)
DEMO_PREPROCESSING = Preprocessing(
    input_size=(DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    crop_pct=1.0,
    interpolation="bilinear",
)


def build_demo_model():
    """The demo architecture with random weights (the loader fills in the trained ones)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**DEMO_ARCH)


def repo_calibration_dir() -> Path:
    """`calibration/digits` of a source checkout (the demo images are not in the wheel)."""
    return Path(__file__).resolve().parents[2] / "calibration" / "digits"
