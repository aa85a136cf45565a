"""The single preprocessing path: raw image -> normalized NCHW float32.

It reproduces timm's/torchvision's eval transform (shortest-side resize by crop_pct,
centre crop, /255, normalize) with PIL and NumPy only, so device apps need no torch.
Calibration, validation, bench and the runtime all call `preprocess_image`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from vitedge.errors import BadInput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
INTERPOLATIONS = tuple(_PIL_INTERPOLATION)
CROP_MODES = ("center", "squash", "squash_center")


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects; recorded once in the manifest and read back everywhere."""

    input_size: tuple[int, int] = (224, 224)  # (H, W)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    resize_size: int | None = None  # shortest side (squash_center: both sides) before cropping; None: from crop_pct
    # "center" (timm/torchvision: shortest side to resize_size, centre crop), "squash" (resize
    # straight to HxW) or "squash_center" (Hugging Face DeiT-style processors: resize straight to
    # resize_size x resize_size, then centre crop to HxW)
    crop_mode: str = "center"
    # where a centre crop starts when the margin is odd: "round" (timm/torchvision: round half to
    # even) or "floor" (transformers' image processors: int((size - crop) / 2))
    crop_offset: str = "round"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_INTERPOLATION:
            raise BadInput(
                f"unknown interpolation {self.interpolation!r}; "
                f"use one of {', '.join(_PIL_INTERPOLATION)}"
            )
        if self.crop_mode not in CROP_MODES:
            raise BadInput(f"unknown crop_mode {self.crop_mode!r}; use one of {', '.join(CROP_MODES)}")
        if self.crop_offset not in ("round", "floor"):
            raise BadInput(f"unknown crop_offset {self.crop_offset!r}; use round or floor")
        if not 0.0 < self.crop_pct <= 1.0:
            raise BadInput(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def scale_size(self) -> int:
        """Shortest side after the resize (timm: floor(size / crop_pct))."""
        if self.resize_size is not None:
            return int(self.resize_size)
        return int(math.floor(max(self.input_size) / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["resize_size"] = self.scale_size
        if not d["extra"]:
            d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("input_size", "mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def override(self, *, mean: tuple[float, float, float] | None = None,
                 std: tuple[float, float, float] | None = None, crop_pct: float | None = None,
                 interpolation: str | None = None) -> "Preprocessing":
        """The user's --mean/--std/--crop-pct/--interpolation over what the source declared.

        A crop_pct takes effect for every source: the resize then comes from it (shortest side
        = size / crop_pct) followed by a centre crop, replacing a source's fixed resize (256 for
        torchvision weights) or its straight resize to HxW (Hugging Face processors).
        """
        changes: dict[str, Any] = {"mean": tuple(mean) if mean else None, "std": tuple(std) if std else None,
                                   "interpolation": interpolation}
        if crop_pct is not None:
            changes.update(crop_pct=crop_pct, crop_mode="center")
        result = self.replace(**changes, extra={**self.extra, "overridden": True})
        if crop_pct is not None:
            result = dataclasses.replace(result, resize_size=None)
        return result

    def replace(self, **changes: Any) -> "Preprocessing":
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update({k: v for k, v in changes.items() if v is not None})
        return Preprocessing(**d)


# Bumped whenever `open_rgb` decodes some file differently (2: 16-bit scaling, EXIF orientation),
# so that tensors cached from the old decode are not reused.
DECODE_VERSION = 2


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file as a viewer shows it, as 8-bit RGB: the one decode every consumer uses.

    EXIF orientation is applied (phone photos are stored sideways), then `to_rgb` converts the
    pixel format (16-bit, CMYK, palette, transparency)."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"cannot decode image {path}: {exc}") from exc


# 16-bit grayscale (PNG, TIFF) opens as one of these; "I" (32-bit) is what older Pillows give it.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA", "P")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB.

    16-bit samples are scaled to 8 bits (PIL's own convert clips them to 255: a near-white
    image); transparent pixels (alpha, palette or tRNS transparency) are composited onto white;
    CMYK goes through Pillow's Adobe-aware conversion.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT:
        eight = np.clip(np.rint(np.asarray(img, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(eight, "L").convert("RGB")
    if img.mode in _ALPHA or "transparency" in img.info:
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def preprocess_image(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    """One PIL image -> CHW float32 array, exactly like timm's eval transform."""
    img = to_rgb(img)
    height, width = pre.input_size
    if pre.crop_mode == "squash":  # Hugging Face ViTImageProcessor: straight to HxW
        if img.size != (width, height):
            img = img.resize((width, height), _PIL_INTERPOLATION[pre.interpolation])
        return _normalize(img, pre)
    size = pre.scale_size
    w, h = img.size
    if pre.crop_mode == "squash_center":  # Hugging Face: resize to (size, size), then centre crop
        resized = img if img.size == (size, size) else img.resize((size, size), _PIL_INTERPOLATION[pre.interpolation])
    # torchvision Resize(int): shortest side to `size`, the other keeps aspect (truncated).
    elif (w <= h and w == size) or (h <= w and h == size):
        resized = img
    elif w < h:
        resized = img.resize((size, int(size * h / w)), _PIL_INTERPOLATION[pre.interpolation])
    else:
        resized = img.resize((int(size * w / h), size), _PIL_INTERPOLATION[pre.interpolation])
    rw, rh = resized.size
    if rw < width or rh < height:  # torchvision pads; a too-small resize means a bad config
        resized = resized.resize((max(rw, width), max(rh, height)),
                                 _PIL_INTERPOLATION[pre.interpolation])
        rw, rh = resized.size
    if pre.crop_offset == "floor":
        top, left = int((rh - height) / 2.0), int((rw - width) / 2.0)
    else:
        top, left = int(round((rh - height) / 2.0)), int(round((rw - width) / 2.0))
    return _normalize(resized.crop((left, top, left + width, top + height)), pre)


def _normalize(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32) * np.float32(pre.scale)
    if pre.channel_order == "BGR":
        arr = arr[..., ::-1]
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def preprocess_paths(paths: list[str | Path], pre: Preprocessing) -> np.ndarray:
    """Several image files -> NCHW float32 batch."""
    return np.stack([preprocess_image(open_rgb(p), pre) for p in paths])
