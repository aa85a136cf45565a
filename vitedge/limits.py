"""Memory: how much there is, what a step will need, and allocation failures named as such.

The memory preflight is the disk check's twin: before a model or data is loaded, the peak a
step will reach (its batch x the model's per-image footprint, from the shapes and config an
export records) is compared with the memory this process may still use (the cgroup limit
first, then the kernel's MemAvailable), and a step that cannot fit is refused in one line
(exit 3) naming the flag to lower. The estimate is deliberately a floor, not a worst case: it
refuses what cannot work (a batch of a million), never what merely might not.

A low layer: it imports nothing of vitedge but `errors`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vitedge.errors import EnvironmentProblem

# Tests (and users who know better) can state the memory vitedge may use, in bytes or with a
# K/M/G suffix; it then replaces what the cgroup and /proc/meminfo say.
MEMORY_ENV = "VITEDGE_MEMORY_LIMIT"
_FALLBACK_IMAGE_BYTES = 24  # x input bytes per image, for a model whose config is not recorded
_ALLOCATION_PATTERNS = re.compile(
    r"DefaultCPUAllocator|can't allocate memory|Cannot allocate memory|std::bad_alloc|bad_alloc|"
    r"Failed to allocate memory|out of memory|OutOfMemory|failed to allocate", re.IGNORECASE)


def _parse_bytes(text: str) -> int | None:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        return None
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cgroup_room() -> int | None:
    """Bytes the cgroup of this process may still allocate (v2, then v1); None without a limit."""
    own = _read("/proc/self/cgroup") or ""
    for line in own.splitlines():  # v2: "0::/path"
        if line.startswith("0::"):
            base = "/sys/fs/cgroup" + line[3:].strip()
            for folder in (base, "/sys/fs/cgroup"):
                limit, used = _read(f"{folder}/memory.max"), _read(f"{folder}/memory.current")
                if limit and limit != "max" and limit.isdigit() and used and used.isdigit():
                    return max(0, int(limit) - int(used))
    limit = _read("/sys/fs/cgroup/memory/memory.limit_in_bytes")  # v1
    used = _read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
    if limit and limit.isdigit() and used and used.isdigit() and int(limit) < 1 << 60:
        return max(0, int(limit) - int(used))
    return None


def _meminfo_available() -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def available_memory() -> int | None:
    """Bytes this process may still allocate: VITEDGE_MEMORY_LIMIT, else the smaller of the
    cgroup's room and MemAvailable; None where neither can be read (no check then)."""
    stated = os.environ.get(MEMORY_ENV)
    if stated:
        value = _parse_bytes(stated)
        if value is not None:
            return value
    known = [v for v in (_cgroup_room(), _meminfo_available()) if v is not None]
    return min(known) if known else None


def _human(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def check_memory(need_bytes: int, what: str, lower: str) -> None:
    """EnvironmentProblem (exit 3) before the work when NEED_BYTES will not fit in memory.

    WHAT says what needs it ("bench at batch 1000000"), LOWER the flag (or flags) to lower."""
    room = available_memory()
    if room is None or need_bytes <= room:
        return
    raise EnvironmentProblem(f"not enough memory for {what}: about {_human(need_bytes)} needed, "
                             f"{_human(room)} available; lower {lower}, or use a machine with more memory")


# -- estimates ----------------------------------------------------------------------------------

def input_bytes(shape: Any, dtype_bytes: int = 4) -> int:
    """Bytes of one image of an input SHAPE like ['batch', 3, 224, 224] (or (3, 224, 224))."""
    dims = [d for d in list(shape)[-3:] if isinstance(d, int) and d > 0]
    size = dtype_bytes
    for d in dims:
        size *= d
    return size if len(dims) == 3 else dtype_bytes * 3 * 224 * 224


def image_footprint(config: Mapping[str, Any] | None, image_bytes: int) -> int:
    """Bytes one image takes in a forward pass, at the peak of one transformer block: the
    tokens, QKV, the attention scores and their softmax, the MLP's hidden layer (float32).
    CONFIG is the timm-style config an export records (img_size, patch_size, embed_dim,
    num_heads, mlp_ratio); without it, a multiple of the input's bytes."""
    config = config or {}
    try:
        side = int(config["img_size"] if not isinstance(config["img_size"], (list, tuple))
                   else max(config["img_size"]))
        tokens = (side // int(config["patch_size"])) ** 2 + 1
        dim, heads = int(config["embed_dim"]), int(config.get("num_heads") or 1)
        ratio = float(config.get("mlp_ratio") or 4.0)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return _FALLBACK_IMAGE_BYTES * image_bytes
    floats = 6 * tokens * dim + 2 * heads * tokens * tokens + 2 * ratio * tokens * dim
    return int(4 * floats) + image_bytes


def manifest_footprint(manifest: Mapping[str, Any]) -> tuple[int, int]:
    """(input bytes, forward-pass bytes) of one image, from an artifact's manifest."""
    try:
        shape = manifest["io"]["inputs"][0]["shape"]
    except (KeyError, IndexError, TypeError):
        shape = ()
    image = input_bytes(shape)
    return image, image_footprint((manifest.get("source") or {}).get("config"), image)


def batch_need(batch: int, image: int, footprint: int, runners: int = 1, fixed: int = 0) -> int:
    """Peak bytes of running BATCH images through RUNNERS models one after another (each keeps
    its buffers at the largest batch it saw), plus the input batch itself and its copies, plus
    FIXED bytes (weights, the loaded data)."""
    return batch * (3 * image + runners * footprint) + fixed


# -- allocation failures that still happen --------------------------------------------------------

def allocation_failure(exc: BaseException) -> bool:
    """True when EXC (or what it was raised from) is an allocator's out-of-memory error: a
    MemoryError, torch's DefaultCPUAllocator RuntimeError, ONNX Runtime's or OpenVINO's."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError):
            return True
        if not isinstance(current, (OSError, KeyboardInterrupt)) and \
                _ALLOCATION_PATTERNS.search(str(current)[:4000] or ""):
            return True
        current = current.__cause__ or current.__context__
    return False


# -- the checks each command runs before its long work ------------------------------------------

def module_config(module: Any, input_size: tuple[int, int] | list[int]) -> dict[str, Any] | None:
    """The timm-style config of a loaded ViT module (patch size, width, heads), read from its
    attributes where it has them (timm, the demo); None for other modules."""
    patch = getattr(getattr(module, "patch_embed", None), "patch_size", None)
    dim = getattr(module, "embed_dim", None) or getattr(module, "num_features", None)
    blocks = getattr(module, "blocks", None)
    try:  # a timm ViT's nn.Sequential; a .pt2 GraphModule's blocks are plain Modules without len()
        first = blocks[0] if blocks is not None and len(blocks) else None
    except Exception:  # noqa: BLE001 - TorchScript containers raise NotImplementedError: an estimate never fails
        first = None
    heads = getattr(getattr(first, "attn", None), "num_heads", None)
    if patch is None or not isinstance(dim, int):
        return None
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return {"img_size": max(input_size), "patch_size": int(patch), "embed_dim": dim, "num_heads": heads or 1}


def check_export_memory(module: Any, input_size: tuple[int, int], params_bytes: int, batch: int) -> None:
    """Before `vitedge export` traces and checks parity at BATCH (torch and ONNX Runtime)."""
    image = 4 * 3 * int(input_size[0]) * int(input_size[1])
    footprint = image_footprint(module_config(module, input_size), image)
    check_memory(batch_need(batch, image, footprint, runners=2, fixed=4 * params_bytes),
                 f"the export at batch {batch}", "--batch (or leave it 'dynamic')")


def check_bench_memory(manifest: Mapping[str, Any], image_count: int, batches: list[int] | tuple[int, ...],
                       runners: int, max_images: int | None = None) -> None:
    """Before a bench (or tune) loads its images and runners: the validation tensors, and each
    runner at the largest batch. A batch larger than the data repeats its images: said in one line."""
    from vitedge import ui

    images = min(image_count, max_images) if max_images else image_count
    image, footprint = manifest_footprint(manifest)
    batch = max(batches)
    data_bytes = images * image
    batch_bytes = batch_need(batch, image, footprint, runners)
    lower = "--batch" if batch_bytes >= data_bytes else "--max-images"
    check_memory(batch_bytes + data_bytes, f"bench at batch {batch} ({runners} runners, {images} images)", lower)
    if images and batch > images:
        ui.info(f"note: batch {batch} is larger than the {images} validation images; latency batches repeat them")


def check_calibration_memory(manifest: Mapping[str, Any], images: int, model_bytes: int) -> None:
    """Before an INT8 compile reads IMAGES calibration images (read batch by batch; the model and
    its statistics graph are held at once)."""
    image, _ = manifest_footprint(manifest)
    check_memory(4 * model_bytes + 2 * images * image, f"calibrating on {images} images", "--calib-size")
