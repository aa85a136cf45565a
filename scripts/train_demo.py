"""Produce the built-in demo model: a small timm ViT on scikit-learn's bundled digits.

What it does, deterministically (fixed seeds, deterministic torch kernels, 2 threads):

1. Writes scikit-learn's 1,797 8x8 digits as 32x32 RGB PNGs under
   `calibration/digits/{calib,val}/<digit>/<index>.png` (a seeded, stratified split:
   360 held-out val images, 1,437 calib images) plus a README on their provenance.
2. Trains `build_demo_model()` on the calib PNGs only, read back through
   `vitedge.preprocessing.preprocess_paths`, so training sees exactly what deployment
   sees (the calib images double as the INT8 calibration set).
3. Checks top-1 on the held-out val images (exits non-zero below 95%), saves the weights
   to `DEMO_WEIGHTS` (safetensors) with a JSON record next to it, and verifies that the
   reloaded weights give the same val accuracy.

Run: `PYTHONPATH=. python scripts/train_demo.py [--epochs N] [--seed S]`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from vitedge.models.demo import (
    DEMO_IMAGE_SIZE,
    DEMO_PREPROCESSING,
    DEMO_WEIGHTS,
    build_demo_model,
    repo_calibration_dir,
)
from vitedge.preprocessing import preprocess_paths

SPLIT_SEED = 0  # fixed, so the shipped calib/val folders do not depend on --seed
VAL_COUNT = 360
MIN_VAL_TOP1 = 0.95
BACKGROUND = -1.0  # a black pixel after DEMO_PREPROCESSING's normalization

README = """\
# Demo images: handwritten digits

Source: scikit-learn's bundled copy (`sklearn.datasets.load_digits`) of the UCI ML
hand-written digits dataset ("Optical Recognition of Handwritten Digits",
E. Alpaydin & C. Kaynak, 1998): 1,797 grayscale images of 8x8 pixels, values 0..16,
classes 0-9. The scikit-learn package that ships this copy is under the BSD-3-Clause
license; the UCI dataset itself is under CC BY 4.0.

Made by `scripts/train_demo.py` (which deletes and rewrites this folder): each image is
scaled to 0..255 (`round(v * 255 / 16)`, uint8), upsampled from 8x8 to 32x32 with PIL
bilinear resampling and saved as an RGB PNG at `<split>/<digit>/<index>.png`, where
`<index>` is the sample's index in `load_digits()` (so the splits cannot overlap).

Split (stratified by class, seed {split_seed}):

| split  | images |
|--------|-------:|
| calib/ | {n_calib} |
| val/   | {n_val} |

`calib/` was used to train the demo model (`vitedge/models/weights/demo_digits.safetensors`)
and is the INT8 calibration set; `val/` is held out and only used for evaluation.
"""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)


def write_images(out_dir: Path) -> dict[str, list[tuple[Path, int]]]:
    """Write the digits as PNG folders; return (path, label) pairs per split."""
    digits = load_digits()
    labels = digits.target.astype(int)
    calib_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=VAL_COUNT, stratify=labels, random_state=SPLIT_SEED
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    splits: dict[str, list[tuple[Path, int]]] = {}
    for split, indices in (("calib", sorted(calib_idx)), ("val", sorted(val_idx))):
        splits[split] = []
        for i in indices:
            pixels = np.round(digits.images[i] * 255.0 / 16.0).astype(np.uint8)
            img = Image.fromarray(pixels, mode="L").resize(
                (DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE), Image.Resampling.BILINEAR
            )
            path = out_dir / split / str(labels[i]) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.convert("RGB").save(path)
            splits[split].append((path, int(labels[i])))
    (out_dir / "README.md").write_text(README.format(split_seed=SPLIT_SEED, n_calib=len(calib_idx), n_val=len(val_idx)))
    return splits


def load_split(items: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = preprocess_paths([p for p, _ in items], DEMO_PREPROCESSING)
    return torch.from_numpy(x), torch.tensor([y for _, y in items])


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random affine (rotate +-10 deg, scale 0.9-1.1, shift +-2.5 px); no flips."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(n, generator=gen) * 0.2
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2.5 * 2 / DEMO_IMAGE_SIZE)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with 0; shift so that the padding is the black background.
    return F.grid_sample(x - BACKGROUND, grid, align_corners=False) + BACKGROUND


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(xb).argmax(1) for xb in x.split(256)])
    return (pred == y).float().mean().item()


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    batch = 64
    steps_per_epoch = math.ceil(len(x) / batch)
    warmup, total = 2 * steps_per_epoch, epochs * steps_per_epoch

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        loss_sum = 0.0
        for idx in order.split(batch):
            loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
        print(f"epoch {epoch + 1:3d}/{epochs}  loss {loss_sum / len(x):.4f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    seed_everything(args.seed)
    splits = write_images(repo_calibration_dir())
    x_calib, y_calib = load_split(splits["calib"])
    x_val, y_val = load_split(splits["val"])
    print(f"calib {len(x_calib)} images, val {len(x_val)} images")

    model = build_demo_model()
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
    start = time.perf_counter()
    train(model, x_calib, y_calib, args.epochs, args.seed)
    train_seconds = time.perf_counter() - start
    val_top1, calib_top1 = top1(model, x_val, y_val), top1(model, x_calib, y_calib)
    print(f"val top-1 {val_top1:.4f}  calib top-1 {calib_top1:.4f}  ({train_seconds:.0f} s)")
    if val_top1 < MIN_VAL_TOP1:
        print(f"val top-1 below {MIN_VAL_TOP1:.0%}; weights not saved", file=sys.stderr)
        return 1

    DEMO_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = DEMO_WEIGHTS.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, DEMO_WEIGHTS)

    reloaded = build_demo_model()
    reloaded.load_state_dict(load_file(str(DEMO_WEIGHTS)))
    if top1(reloaded, x_val, y_val) != val_top1:
        print("reloaded weights give a different val top-1", file=sys.stderr)
        return 1

    record = {
        "val_top1": round(val_top1, 4),
        "calib_top1": round(calib_top1, 4),
        "val_images": len(x_val),
        "calib_images": len(x_calib),
        "epochs": args.epochs,
        "seed": args.seed,
        "split_seed": SPLIT_SEED,
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "sha256": hashlib.sha256(DEMO_WEIGHTS.read_bytes()).hexdigest(),
    }
    DEMO_WEIGHTS.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {DEMO_WEIGHTS} ({DEMO_WEIGHTS.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
