"""Calibration / validation data: folders, lists, .npz, seeded subsets, the tensor cache, bad images."""

from __future__ import annotations

import gc
import hashlib
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitedge import data
from vitedge.data import MAX_BAD_FRACTION, load_tensors, open_image_set
from vitedge.errors import BadInput
from vitedge.models.demo import DEMO_LABELS, DEMO_PREPROCESSING
from vitedge.preprocessing import open_rgb, preprocess_image

PRE = DEMO_PREPROCESSING


def _image(path: Path, value: int, size: tuple[int, int] = (40, 36), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def _class_folder(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("0", "3", "7")) -> Path:
    for c in classes:
        for i in range(per_class):
            suffix = (".png", ".jpg", ".bmp", ".webp")[i % 4]
            _image(root / c / ("nested" if i == 2 else "") / f"{i}{suffix}", int(c) * 10 + i)
    return root


def test_folder_is_recursive_and_class_subfolders_give_model_labels(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "set")
    _image(root / "3" / ".thumbs" / "hidden.png", 99)  # hidden dirs and AppleDouble files are not images
    (root / "3" / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "7" / "notes.txt").write_text("not an image")
    image_set = open_image_set(root, DEMO_LABELS)
    assert len(image_set) == 9 and image_set.labelled
    assert sorted(set(image_set.labels)) == [0, 3, 7]
    assert {p.suffix for p in image_set.paths} == {".png", ".jpg", ".bmp"}
    assert any("nested" in p.parts for p in image_set.paths)
    assert all(int(p.relative_to(root).parts[0]) == label for p, label in zip(image_set.paths, image_set.labels))


def test_class_names_map_to_model_label_indices(tmp_path: Path) -> None:
    root = tmp_path / "animals"
    for name in ("dog", "cat"):
        _image(root / name / "a.png", len(name))
    image_set = open_image_set(root, ["bird", "cat", "dog"])
    assert dict(zip([p.parent.name for p in image_set.paths], image_set.labels)) == {"cat": 1, "dog": 2}
    unlabelled = tmp_path / "flat"
    _image(unlabelled / "a.png", 1)
    assert not open_image_set(unlabelled).labelled


def test_text_list_with_and_without_labels(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "set", per_class=1)
    paths = sorted(root.rglob("*.png"))
    listing = tmp_path / "list.txt"
    listing.write_text("# calibration list\n" + "".join(f"{p.relative_to(tmp_path)}\t{p.parent.name}\n"
                                                         for p in paths) + "\n")
    image_set = open_image_set(listing, DEMO_LABELS)
    assert image_set.paths == paths and image_set.labels == [int(p.parent.name) for p in paths]
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(str(p) for p in paths))
    assert not open_image_set(plain).labelled


def test_npz_of_preprocessed_tensors(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "a.npz", pixel_values=x, labels=np.arange(5))
    np.savez(tmp_path / "b.npz", x=x)
    tensors = load_tensors(open_image_set(tmp_path / "a.npz"), PRE)
    np.testing.assert_array_equal(tensors.x, x)
    np.testing.assert_array_equal(tensors.labels, np.arange(5))
    assert load_tensors(open_image_set(tmp_path / "b.npz"), PRE).labels is None
    np.savez(tmp_path / "c.npz", x=x, labels=np.arange(3))
    with pytest.raises(BadInput, match="3 labels for 5 tensors"):
        open_image_set(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", weights=x)
    with pytest.raises(BadInput, match="no array named pixel_values"):
        open_image_set(tmp_path / "d.npz")
    with pytest.raises(BadInput, match=r"the model takes \[3, 224, 224\]"):
        load_tensors(open_image_set(tmp_path / "b.npz"), PRE.replace(input_size=(224, 224)))


def test_npz_is_streamed_to_disk_not_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An .npz set is copied block by block into a temporary float32 file and read like the image
    cache (compressed members and other dtypes too); the copy goes when the array does."""
    monkeypatch.setattr(data, "NPZ_BLOCK_BYTES", 2 * 3 * 32 * 32 * 4)  # two rows per block: several blocks
    x = np.random.default_rng(1).standard_normal((7, 3, 32, 32))
    np.savez_compressed(tmp_path / "c.npz", x=x, labels=np.arange(7) % 3)  # float64, deflated
    image_set = open_image_set(tmp_path / "c.npz")
    assert isinstance(image_set.tensors, data.ImageArray) and image_set.tensors.shape == (7, 3, 32, 32)
    copy = image_set.tensors.path
    assert copy.stat().st_size == 7 * 3 * 32 * 32 * 4
    lazy = load_tensors(image_set, PRE, lazy=True)
    assert isinstance(lazy.x, data.ImageArray)
    np.testing.assert_array_equal(lazy.x[2:5], x[2:5].astype(np.float32))
    assert lazy.content_hash == hashlib.sha256(x.astype(np.float32).tobytes()).hexdigest()
    subset = image_set.subset(3, seed=0)
    np.testing.assert_array_equal(np.asarray(load_tensors(subset, PRE).x), x.astype(np.float32)[
        sorted(random.Random(0).sample(range(7), 3))])
    assert list(load_tensors(subset, PRE).labels) == [subset.labels[i] for i in range(3)]
    del image_set, lazy, subset
    gc.collect()
    assert not copy.exists()
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    with zipfile.ZipFile(tmp_path / "f.npz", "w") as archive:
        archive.write(tmp_path / "f.npy", "x.npy")
    with pytest.raises(BadInput, match="C-order"):
        open_image_set(tmp_path / "f.npz")
    np.savez(tmp_path / "g.npz", x=x[0])
    with pytest.raises(BadInput, match="expected preprocessed NCHW tensors"):
        open_image_set(tmp_path / "g.npz")


def test_empty_or_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "0").mkdir(parents=True)
    with pytest.raises(BadInput, match="holds no images"):
        open_image_set(tmp_path / "empty")
    with pytest.raises(BadInput, match="does not exist"):
        open_image_set(tmp_path / "nope")
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(BadInput, match="give an image folder"):
        open_image_set(tmp_path / "data.csv")


def test_seeded_subset_is_deterministic(digits_calib: Path) -> None:
    full = open_image_set(digits_calib, DEMO_LABELS)
    assert len(full) == 1437
    a, b, c = full.subset(300, seed=0), full.subset(300, seed=0), full.subset(300, seed=1)
    assert len(a) == 300 and a.paths == b.paths and a.labels == b.labels and a.paths != c.paths
    assert a.paths == sorted(a.paths)  # file order kept
    assert full.subset(5000).paths == full.paths and full.subset(None).paths == full.paths
    assert len(set(a.labels)) == 10  # a random subset covers every class
    with pytest.raises(BadInput, match="must be positive"):
        full.subset(0)


def test_tensors_use_the_one_preprocessing_and_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITEDGE_CACHE_DIR", str(tmp_path / "cache"))
    root = _class_folder(tmp_path / "set")
    image_set = open_image_set(root, DEMO_LABELS)
    first = load_tensors(image_set, PRE)
    expected = np.stack([preprocess_image(open_rgb(p), PRE) for p in image_set.paths])
    np.testing.assert_array_equal(first.x, expected)
    assert first.x.shape == (9, 3, 32, 32) and first.labels.tolist() == image_set.labels
    assert len(list((tmp_path / "cache" / "tensors").glob("*.f32"))) == 1

    def no_decoding(*args: object) -> None:
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(data, "preprocess_image", no_decoding)
    again = load_tensors(image_set, PRE)
    np.testing.assert_array_equal(again.x, first.x)
    assert again.content_hash == first.content_hash and again.names == first.names
    monkeypatch.undo()
    monkeypatch.setenv("VITEDGE_CACHE_DIR", str(tmp_path / "cache"))
    # the key covers preprocessing and file contents
    assert load_tensors(image_set, PRE.replace(interpolation="bicubic")).content_hash != first.content_hash
    _image(image_set.paths[0], 1234)
    changed = load_tensors(image_set, PRE)
    assert changed.content_hash != first.content_hash
    assert not np.array_equal(changed.x[0], first.x[0]) and np.array_equal(changed.x[1:], first.x[1:])
    # a damaged cache entry is rebuilt, not trusted
    entry = next((tmp_path / "cache" / "tensors").glob(f"{changed.content_hash}.json"))
    entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(load_tensors(image_set, PRE).x, changed.x)


def test_corrupt_images_are_skipped_and_counted_up_to_five_percent(tmp_path: Path) -> None:
    root = _class_folder(tmp_path / "set", per_class=10, classes=tuple(str(d) for d in range(4)))  # 40 images
    bad = root / "2" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    tensors = load_tensors(open_image_set(root, DEMO_LABELS), PRE)
    assert tensors.skipped == [str(bad)] and len(tensors.x) == 40 and len(tensors.labels) == 40
    assert str(bad) not in tensors.names
    cached = load_tensors(open_image_set(root, DEMO_LABELS), PRE)  # the cache keeps the count
    assert cached.skipped == [str(bad)] and len(cached.x) == 40
    for i in range(2):  # 3 of 43 > 5 %
        (root / "1" / f"broken{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    assert MAX_BAD_FRACTION < 3 / 43
    with pytest.raises(BadInput, match="3 of 43 images .* could not be decoded"):
        load_tensors(open_image_set(root, DEMO_LABELS), PRE)


def test_list_with_missing_files_counts_them_as_bad(tmp_path: Path) -> None:
    paths = [_image(tmp_path / f"{i}.png", i) for i in range(3)]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([*map(str, paths), str(tmp_path / "gone.png")]))
    with pytest.raises(BadInput, match="1 of 4 images"):
        load_tensors(open_image_set(listing), PRE)
