"""Calibration and validation data: image folders, path lists and .npz tensors.

Every consumer (export parity, calibration, drift, bench) gets the same thing: an
`ImageSet` turned into a float32 NCHW array by the one preprocessing function, with the
manifest's preprocessing. Preprocessed tensors are cached on disk (raw float32 rows plus a
JSON index written last), keyed by a hash of the files' contents and the preprocessing; they
are written image by image, and calibration reads them back batch by batch (`ImageArray`), so
its memory does not grow with the number of images.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import weakref
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    tensors: np.ndarray | ImageArray | None = None  # .npz input: already preprocessed, read from disk

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
                            self.class_names, self.tensors.take(idx, axis=0))
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
    """The tensors of an .npz (`pixel_values`, `x`, `images` or `arr_0`; optional `labels`), copied
    row block by row block into a temporary raw float32 file read like the image cache: a
    500-image ViT-B/384 set is never held whole (885 MB as float32)."""
    try:
        with zipfile.ZipFile(npz) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            key = next((k for k in (INPUT_NAME, "x", "images", "arr_0") if k in members), None)
            if key is None:
                raise BadInput(f"{npz} has no array named {INPUT_NAME}, x or images ({list(members)})")
            tensors = _npy_to_rows(archive, members[key], npz)
            if "labels" in members:
                with archive.open(members["labels"]) as stream:
                    labels: list[int | None] = [int(v) for v in np.lib.format.read_array(stream)]
            else:
                labels = [None] * len(tensors)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BadInput(f"cannot read {npz}: {exc}") from exc
    if len(labels) != len(tensors):
        raise BadInput(f"{npz}: {len(labels)} labels for {len(tensors)} tensors")
    return ImageSet(str(npz), [], labels, None, tensors)


NPZ_BLOCK_BYTES = 64 * 2**20  # rows copied at a time from an .npz member


def _npy_to_rows(archive: zipfile.ZipFile, member: str, npz: Path) -> ImageArray:
    """An NCHW array member of ARCHIVE as an `ImageArray` over a temporary float32 file, streamed."""
    fmt = np.lib.format
    with archive.open(member) as stream:
        version = fmt.read_magic(stream)
        read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy format version {version} for {member}")
        shape, fortran_order, dtype = read_header(stream)
        if len(shape) != 4:
            raise BadInput(f"{npz}: expected preprocessed NCHW tensors, got shape {list(shape)}")
        if fortran_order or dtype.hasobject or dtype.kind not in "fiu":
            raise BadInput(f"{npz}: {member} must be a C-order numeric array (got "
                           f"{'Fortran order' if fortran_order else dtype}); save it with np.savez")
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        block = max(1, NPZ_BLOCK_BYTES // max(1, row_bytes))
        fd, name = tempfile.mkstemp(prefix="vitedge-npz-", suffix=".f32")
        rows = ImageArray(name, shape, owned=True)  # the file goes when the array does
        with os.fdopen(fd, "wb") as out:
            for start in range(0, shape[0], block):
                count = min(block, shape[0] - start)
                data = stream.read(count * row_bytes)
                if len(data) != count * row_bytes:
                    raise ValueError(f"{member} is truncated")
                out.write(np.frombuffer(data, dtype).astype(np.float32, copy=False).tobytes())
    return rows


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


class ImageArray:
    """Preprocessed images [N, 3, H, W] float32 in a raw file on disk, read only where indexed.

    An int, a slice or an index array reads just those rows, so a calibration pass holds one
    batch (ViT-B/16 at 384 px: 1.77 MB an image), never the whole set (500 images: 885 MB).
    `np.asarray` reads everything (validation sets, tests). A file it OWNS (a temporary one,
    when there is no usable cache) is deleted when the array is garbage collected.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, path: str | Path, shape: tuple[int, ...], owned: bool = False,
                 rows: np.ndarray | None = None, parent: ImageArray | None = None) -> None:
        self.path, self.shape = Path(path), tuple(int(d) for d in shape)
        self._row = int(np.prod(self.shape[1:]))
        self._rows, self._parent = rows, parent  # a view: file rows in order; the owner stays alive
        if owned:
            weakref.finalize(self, _unlink, self.path)

    def take(self, indices: Any, axis: int = 0) -> ImageArray:
        """A view of the images at INDICES, read when indexed (like `ndarray.take(indices, axis=0)`,
        which copies: a drift check on 256 ViT-B/384 images then holds one batch, not 453 MB)."""
        if axis != 0:
            raise ValueError("ImageArray.take works along the image axis only")
        picked = self._positions(indices)
        rows = picked if self._rows is None else self._rows[picked]
        return ImageArray(self.path, (len(rows), *self.shape[1:]), rows=rows, parent=self)

    def _positions(self, index: Any) -> np.ndarray:
        positions = np.asarray(index)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        positions = np.where(positions < 0, positions + len(self), positions).astype(np.int64).ravel()
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"image index out of range for {len(self)} images")
        return positions

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, count: int) -> np.ndarray:
        if count <= 0:
            return np.empty((0, *self.shape[1:]), self.dtype)
        if self._rows is not None:
            return self._gather(self._rows[start:start + count])
        rows = np.fromfile(self.path, dtype=self.dtype, count=count * self._row, offset=start * self._row * 4)
        return rows.reshape(count, *self.shape[1:])

    def _gather(self, file_rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(file_rows), *self.shape[1:]), self.dtype)
        for k, i in enumerate(file_rows.tolist()):
            out[k] = np.fromfile(self.path, dtype=self.dtype, count=self._row,
                                 offset=i * self._row * 4).reshape(self.shape[1:])
        return out

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):  # x[rows, ...]: read the rows, then index within them
            return self[index[0]][(slice(None), *index[1:])] if not isinstance(index[0], (int, np.integer)) \
                else self[index[0]][index[1:]]
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"image {index} out of range for {len(self)} images")
            return self._read(i, 1)[0]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._read(start, stop - start)
            index = np.arange(start, stop, step)
        positions = self._positions(index)
        return self._gather(positions if self._rows is None else self._rows[positions])

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self._read(i, 1)[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self._read(0, len(self))
        return whole if dtype is None else whole.astype(dtype)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


@dataclass
class Tensors:
    """Preprocessed images: x [N,3,H,W] float32 (in memory, or an `ImageArray` read from disk
    batch by batch), labels (or None), and what was skipped."""

    x: np.ndarray | ImageArray
    labels: np.ndarray | None
    names: list[str]
    skipped: list[str]
    content_hash: str


def load_tensors(image_set: ImageSet, pre: Preprocessing, *, use_cache: bool = True, lazy: bool = False,
                 description: str = "preprocessing") -> Tensors:
    """Decode + preprocess every image once (cached), skipping and counting unreadable ones.

    Images are written to the cache one at a time, never held together while decoding. LAZY:
    `x` is an `ImageArray` over the cache file, read batch by batch (calibration: memory does
    not grow with the image count); otherwise x is read into memory. An .npz set is read the
    same way from its temporary copy.
    """
    h, w = pre.input_size
    if image_set.tensors is not None:
        x = image_set.tensors
        if tuple(x.shape[1:]) != (3, h, w):
            raise BadInput(f"{image_set.source}: tensors have shape {list(x.shape[1:])}, "
                           f"the model takes [3, {h}, {w}]")
        labels = np.asarray(image_set.labels) if image_set.labelled else None
        digest = hashlib.sha256()
        for start in range(0, len(x), 64):  # block by block: the same digest as the whole array's bytes
            digest.update(np.ascontiguousarray(x[start:start + 64], dtype=np.float32).tobytes())
        whole = isinstance(x, np.ndarray) or not lazy
        return Tensors(np.asarray(x) if whole else x, labels, [f"#{i}" for i in range(len(x))], [],
                       digest.hexdigest())
    key = _cache_key(image_set, pre)
    rows_file, index_file = cache_dir() / "tensors" / f"{key}.f32", cache_dir() / "tensors" / f"{key}.json"
    keep = _cached_keep(rows_file, index_file, (3, h, w)) if use_cache else None
    owned = False
    if keep is None:
        rows_file, keep, owned = _preprocess_to_file(image_set, pre, rows_file, index_file, use_cache, description)
    images = ImageArray(rows_file, (len(keep), 3, h, w), owned=owned)  # a temporary file goes with it
    kept = set(keep)
    skipped = [str(p) for i, p in enumerate(image_set.paths) if i not in kept]
    total = len(image_set.paths)
    if len(skipped) > MAX_BAD_FRACTION * total:
        raise BadInput(
            f"{len(skipped)} of {total} images in {image_set.source} could not be decoded "
            f"(more than {MAX_BAD_FRACTION:.0%}; first: {skipped[0]}); fix or remove them"
        )
    if skipped:
        ui.warn(f"skipped {len(skipped)} undecodable image(s) in {image_set.source}")
    labels = np.asarray([image_set.labels[i] for i in keep]) if image_set.labelled else None
    return Tensors(images if lazy else np.asarray(images), labels, [str(image_set.paths[i]) for i in keep],
                   skipped, key)


def _cached_keep(rows_file: Path, index_file: Path, image_shape: tuple[int, ...]) -> list[int] | None:
    """The kept image indices of a complete cache entry (None when missing or damaged)."""
    try:
        index = json.loads(index_file.read_text())
        keep = [int(i) for i in index["keep"]]
        complete = (tuple(index["image_shape"]) == image_shape
                    and rows_file.stat().st_size == 4 * len(keep) * int(np.prod(image_shape)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return keep if complete and keep else None


def _preprocess_to_file(image_set: ImageSet, pre: Preprocessing, rows_file: Path, index_file: Path,
                        use_cache: bool, description: str) -> tuple[Path, list[int], bool]:
    """Decode and preprocess image by image into a raw float32 file: the cache entry (its index
    written last, so a cut-off run leaves no entry), or a temporary file when there is no
    usable cache. Returns the file, the kept indices, and whether the file is temporary."""
    target = None
    if use_cache:
        try:
            rows_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{rows_file.stem}.", suffix=".f32", dir=rows_file.parent)
            target = rows_file
        except OSError:
            pass  # a read-only cache only costs time
    if target is None:
        fd, tmp_name = tempfile.mkstemp(prefix="vitedge-images-", suffix=".f32")
    keep: list[int] = []
    try:
        with os.fdopen(fd, "wb") as out:
            for i, p in enumerate(ui.track(image_set.paths, description)):
                try:
                    image = preprocess_image(open_rgb(p), pre)
                except BadInput:
                    continue
                out.write(np.ascontiguousarray(image, dtype=np.float32).tobytes())
                keep.append(i)
        if target is None:
            return Path(tmp_name), keep, True
        os.replace(tmp_name, target)
        tmp_index = index_file.with_name(f".{index_file.stem}.{os.getpid()}.json")
        tmp_index.write_text(json.dumps({"image_shape": [3, *pre.input_size], "keep": keep}))
        os.replace(tmp_index, index_file)
        return target, keep, False
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def random_inputs(pre: Preprocessing, count: int, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs in the model's input shape (parity on any model)."""
    h, w = pre.input_size
    return np.random.default_rng(seed).standard_normal((count, 3, h, w)).astype(np.float32)
