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


# -- decoding: every consumer goes through open_rgb; each case against an independent reference --

def _png_rgb16(path, rgb16: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (PIL cannot write one): the reference file."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _gradient16(h: int = 24, w: int = 32) -> np.ndarray:
    return (np.arange(h * w, dtype=np.float64).reshape(h, w) / (h * w - 1) * 65535).astype(np.uint16)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path) -> None:
    """Measured before: a 16-bit digit decoded near-white (PIL clips at 255) and was misread."""
    from vitedge.preprocessing import open_rgb

    gray16 = _gradient16()
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = np.asarray(open_rgb(tmp_path / "g16.png"), dtype=np.int32)
    want = np.rint(gray16 / 257.0).astype(np.int32)
    assert got.shape == (*gray16.shape, 3) and np.abs(got - want[..., None]).max() <= 1
    assert 120 < got.mean() < 135  # a full gradient, not white


def test_16bit_rgb_png_matches_its_samples(tmp_path) -> None:
    from vitedge.preprocessing import open_rgb

    g = _gradient16()
    rgb16 = np.stack([g, g[::-1], np.full_like(g, 40000)], axis=-1)
    _png_rgb16(tmp_path / "rgb16.png", rgb16)
    got = np.asarray(open_rgb(tmp_path / "rgb16.png"), dtype=np.int32)
    assert np.abs(got - np.rint(rgb16 / 257.0)).max() <= 1


def _quadrants() -> np.ndarray:
    """An image whose orientation is obvious: red top-left, green top-right, blue below (40x24)."""
    arr = np.zeros((24, 40, 3), np.uint8)
    arr[:12, :20] = (220, 30, 30)
    arr[:12, 20:] = (30, 200, 30)
    arr[12:] = (30, 30, 220)
    return arr


@pytest.mark.parametrize(("orientation", "display"), [
    (1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(tmp_path, orientation: int, display) -> None:
    """A camera JPEG stored sideways with an EXIF Orientation tag decodes as it is displayed."""
    from vitedge.preprocessing import open_rgb

    stored = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    got = np.asarray(open_rgb(tmp_path / "photo.jpg"), dtype=np.int32)
    want = display(stored).astype(np.int32)
    assert got.shape == want.shape and np.abs(got - want).mean() < 10  # JPEG edges; a wrong turn is > 50


def test_cmyk_jpeg_decodes_to_its_colours(tmp_path) -> None:
    from vitedge.preprocessing import open_rgb

    rgb = _quadrants()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    got = np.asarray(open_rgb(tmp_path / "cmyk.jpg"), dtype=np.int32)
    assert np.abs(got - rgb).mean() < 10  # not inverted, not channel-swapped (both are > 100)


@pytest.mark.parametrize("form", ["palette-index", "palette-alpha", "la"])
def test_transparency_composites_onto_white(tmp_path, form: str) -> None:
    """Palette with a transparent index, palette with per-entry alpha, and grey+alpha: transparent
    pixels come out white (the background viewers show), opaque ones keep their colour."""
    from vitedge.preprocessing import open_rgb

    index = np.zeros((16, 16), np.uint8)
    index[4:12, 4:12] = 1  # an opaque square on a transparent background
    if form == "la":
        la = np.stack([np.where(index == 1, 60, 0), np.where(index == 1, 255, 0)], axis=-1).astype(np.uint8)
        Image.fromarray(la, "LA").save(tmp_path / "img.png")
        square = (60, 60, 60)
    else:
        img = Image.fromarray(index, "P")
        img.putpalette([0, 0, 0, 200, 20, 20] + [0] * 762)
        transparency = 0 if form == "palette-index" else bytes([0, 255])
        img.save(tmp_path / "img.png", transparency=transparency)
        square = (200, 20, 20)
    got = np.asarray(open_rgb(tmp_path / "img.png"))
    assert (got[0, 0] == 255).all() and tuple(got[8, 8]) == square
