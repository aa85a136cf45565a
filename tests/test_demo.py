"""The built-in demo: a real trained ViT, exported with exact parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitedge.data import load_tensors, open_image_set
from vitedge.export import torch_logits
from vitedge.manifest import Manifest
from vitedge.models import load_model


def test_demo_images_are_split_without_overlap(digits_calib: Path, digits_val: Path) -> None:
    calib = {p.name for p in digits_calib.rglob("*.png")}
    val = {p.name for p in digits_val.rglob("*.png")}
    assert len(val) >= 250 and len(calib) + len(val) == 1797
    assert not calib & val
    assert sorted(p.name for p in digits_val.iterdir()) == [str(d) for d in range(10)]


def test_demo_held_out_accuracy(digits_val: Path) -> None:
    loaded = load_model("demo:digits")
    tensors = load_tensors(open_image_set(digits_val, loaded.labels), loaded.preprocessing)
    accuracy = float((torch_logits(loaded.module, tensors.x).argmax(1) == tensors.labels).mean())
    assert accuracy >= 0.95, accuracy


def test_demo_export_parity_on_real_images(demo_export: Path) -> None:
    manifest = Manifest.load(demo_export)
    images = manifest["parity"]["images"]
    assert images["samples"] >= 250
    assert images["top1_agreement"] == 1.0
    assert images["max_abs_err"] <= 1e-4
    assert manifest["parity"]["passed"] is True
    assert manifest["labels"] == [str(d) for d in range(10)]
    assert manifest["preprocessing"]["input_size"] == [32, 32]
    assert np.isclose(images["top1_acc"], images["ref_top1_acc"])
