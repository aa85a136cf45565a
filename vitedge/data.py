"""Calibration and validation data: image folders, path lists and .npz tensors.

Every consumer (export parity, calibration, drift, bench) gets the same thing: an
`ImageSet` turned into a float32 NCHW array by the one preprocessing function, with the
manifest's preprocessing. Preprocessed tensors are cached on disk, keyed by a hash of the
files' contents and the preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitedge import ui
from vitedge.errors import BadInput
from vitedge.preprocessing import DECODE_VERSION, Preprocessing, open_rgb, preprocess_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MAX_BAD_FRACTION = 0.05
INPUT_NAME = "pixel_values"


@dataclass
class ImageSet:
    """Images (by path) or ready tensors, with optional integer labels."""

    source: str
    paths: list[Path] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    class_names: list[str] | None = None
    tensors: np.ndarray | None = None  # .npz input: already preprocessed

    def __len__(self) -> int:
        return len(self.tensors) if self.tensors is not None else len(self.paths)

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and all(lbl is not None for lbl in self.labels)

    def subset(self, size: int | None, seed: int = 0) -> "ImageSet":
        """A deterministic, seeded subset of `size` items (all when size is None or larger)."""
        if size is None or size >= len(self):
            return self
        if size < 1:
            raise BadInput(f"subset size must be positive, got {size}")
        idx = sorted(random.Random(seed).sample(range(len(self)), size))
        if self.tensors is not None:
            return ImageSet(self.source, [], [self.labels[i] for i in idx] if self.labels else [],
                            self.class_names, self.tensors[idx])
        return ImageSet(self.source, [self.paths[i] for i in idx],
                        [self.labels[i] for i in idx] if self.labels else [], self.class_names)


def open_image_set(spec: str | Path, model_labels: list[str] | None = None) -> ImageSet:
    """An image folder (class subfolders give labels), a .txt list (`path[<TAB>label]`) or a .npz."""
    path = Path(spec)
    if not path.exists():
        raise BadInput(f"data path {path} does not exist")
    if path.is_dir():
        image_set = _from_folder(path, model_labels)
    elif path.suffix == ".npz":
        image_set = _from_npz(path)
    elif path.suffix in (".txt", ".lst", ".tsv"):
        image_set = _from_list(path, model_labels)
    else:
        raise BadInput(f"data {path}: give an image folder, a .txt list of paths, or a .npz of tensors")
    if len(image_set) == 0:
        raise BadInput(f"data {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return image_set


def _label_index(name: str, class_names: list[str], model_labels: list[str] | None) -> int:
    """Map a class-folder / list label to the model's class index."""
    if model_labels and name in model_labels:
        return model_labels.index(name)
    if name.isdigit() and (not model_labels or int(name) < len(model_labels)):
        return int(name)
    return class_names.index(name)


def _from_folder(root: Path, model_labels: list[str] | None) -> ImageSet:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))  # ._x.jpg, .cache/
    rel_dirs = {p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}
    top_level = [p for p in files if len(p.relative_to(root).parts) == 1]
    if rel_dirs and not top_level:
        class_names = sorted(rel_dirs)
        labels = [_label_index(p.relative_to(root).parts[0], class_names, model_labels) for p in files]
        return ImageSet(str(root), files, labels, class_names)
    return ImageSet(str(root), files, [None] * len(files), None)


def _from_list(list_file: Path, model_labels: list[str] | None) -> ImageSet:
    paths, names = [], []
    for line in list_file.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        p = Path(parts[0].strip())
        if not p.is_absolute():
            p = list_file.parent / p
        paths.append(p)
        names.append(parts[1].strip() if len(parts) > 1 and parts[1].strip() else None)
    class_names = sorted({nm for nm in names if nm is not None}) or None
    labels = [None if nm is None else _label_index(nm, class_names or [], model_labels) for nm in names]
    return ImageSet(str(list_file), paths, labels, class_names)


def _from_npz(npz: Path) -> ImageSet:
    try:
        with np.load(npz) as data:
            key = next((k for k in (INPUT_NAME, "x", "images", "arr_0") if k in data), None)
            if key is None:
                raise BadInput(f"{npz} has no array named {INPUT_NAME}, x or images ({list(data)})")
            tensors = np.asarray(data[key], dtype=np.float32)
            labels = [int(v) for v in data["labels"]] if "labels" in data else [None] * len(tensors)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {npz}: {exc}") from exc
    if len(labels) != len(tensors):
        raise BadInput(f"{npz}: {len(labels)} labels for {len(tensors)} tensors")
    if tensors.ndim != 4:
        raise BadInput(f"{npz}: expected preprocessed NCHW tensors, got shape {list(tensors.shape)}")
    return ImageSet(str(npz), [], labels, None, tensors)


def cache_dir() -> Path:
    return Path(os.environ.get("VITEDGE_CACHE_DIR", Path.home() / ".cache" / "vitedge"))


def _cache_key(image_set: ImageSet, pre: Preprocessing) -> str:
    digest = hashlib.sha256(json.dumps({**pre.to_dict(), "decode": DECODE_VERSION}, sort_keys=True).encode())
    for p in image_set.paths:
        digest.update(str(p.name).encode())
        try:
            digest.update(hashlib.sha256(p.read_bytes()).digest())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()


@dataclass
class Tensors:
    """Preprocessed images: x [N,3,H,W] float32, labels (or None), and what was skipped."""

    x: np.ndarray
    labels: np.ndarray | None
    names: list[str]
    skipped: list[str]
    content_hash: str


def load_tensors(image_set: ImageSet, pre: Preprocessing, *, use_cache: bool = True,
                 description: str = "preprocessing") -> Tensors:
    """Decode + preprocess every image once (cached), skipping and counting unreadable ones."""
    h, w = pre.input_size
    if image_set.tensors is not None:
        x = image_set.tensors
        if tuple(x.shape[1:]) != (3, h, w):
            raise BadInput(f"{image_set.source}: tensors have shape {list(x.shape[1:])}, "
                           f"the model takes [3, {h}, {w}]")
        labels = np.asarray(image_set.labels) if image_set.labelled else None
        digest = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
        return Tensors(x, labels, [f"#{i}" for i in range(len(x))], [], digest)
    key = _cache_key(image_set, pre)
    cached = cache_dir() / "tensors" / f"{key}.npz"
    if use_cache and cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as data:
                keep, x = data["keep"].tolist(), data["x"]
        except (OSError, ValueError, KeyError):
            keep = []  # a damaged cache entry is rebuilt below
        if keep and len(x) == len(keep) and tuple(x.shape[1:]) == (3, h, w):
            kept = set(keep)
            labels = np.asarray([image_set.labels[i] for i in keep]) if image_set.labelled else None
            skipped = [str(p) for i, p in enumerate(image_set.paths) if i not in kept]
            return Tensors(x, labels, [str(image_set.paths[i]) for i in keep], skipped, key)
    arrays, keep, skipped = [], [], []
    for i, p in enumerate(ui.track(image_set.paths, description)):
        try:
            arrays.append(preprocess_image(open_rgb(p), pre))
            keep.append(i)
        except BadInput:
            skipped.append(str(p))
    total = len(image_set.paths)
    if len(skipped) > MAX_BAD_FRACTION * total:
        raise BadInput(
            f"{len(skipped)} of {total} images in {image_set.source} could not be decoded "
            f"(more than {MAX_BAD_FRACTION:.0%}; first: {skipped[0]}); fix or remove them"
        )
    if skipped:
        ui.warn(f"skipped {len(skipped)} undecodable image(s) in {image_set.source}")
    x = np.stack(arrays).astype(np.float32)
    if use_cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.npz")
            np.savez(tmp, x=x, keep=np.asarray(keep, dtype=np.int64))
            os.replace(tmp, cached)
        except OSError:
            pass  # a read-only cache only costs time
    labels = np.asarray([image_set.labels[i] for i in keep]) if image_set.labelled else None
    return Tensors(x, labels, [str(image_set.paths[i]) for i in keep], skipped, key)


def random_inputs(pre: Preprocessing, count: int, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs in the model's input shape (parity on any model)."""
    h, w = pre.input_size
    return np.random.default_rng(seed).standard_normal((count, 3, h, w)).astype(np.float32)
