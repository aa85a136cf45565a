"""Per-block INT8 sensitivity: each transformer block fake-quantized alone in PyTorch, scored
by the KL of its logits against FP32; cached in OUT/sensitivity.json under a hash of its inputs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vitedge import ui
from vitedge._version import __version__
from vitedge.fsutil import (
    sha256_json,
    write_json_atomic,
)
from vitedge.manifest import Manifest
from vitedge.tune.files import SENSITIVITY_FILE

SENSITIVITY_IMAGES = 64  # validation images for per-block sensitivity (fake-quant in PyTorch)
ACT_RANGE_IMAGES = 32  # calibration images for its activation ranges


def cached_sensitivity(export_dir: Path, export: Manifest, out: Path, calib: str | Path | None, data: str | Path,
                 calib_hash: str | None, state: Any, deadline: float) -> list[dict[str, Any]]:
    """Per-block sensitivity, cached in OUT/sensitivity.json under a hash of its inputs."""
    from vitedge.data import load_tensors, open_image_set
    from vitedge.fsutil import tree_hash

    inputs = sha256_json({"export": export.get("files"), "calib": calib_hash, "data": tree_hash(data),
                          "images": [SENSITIVITY_IMAGES, ACT_RANGE_IMAGES], "vitedge": __version__})
    path = out / SENSITIVITY_FILE
    if state.unchanged("sensitivity", inputs, path.is_file):
        return json.loads(path.read_text())
    if time.perf_counter() > deadline:
        return []
    start = time.perf_counter()
    pre = export.preprocessing
    calib_x = load_tensors(open_image_set(calib, export.labels).subset(ACT_RANGE_IMAGES, 0), pre,
                           description="calibration images").x
    val_x = load_tensors(open_image_set(data, export.labels).subset(SENSITIVITY_IMAGES, 0), pre,
                         description="validation images").x
    result = block_sensitivity(export_dir, calib_x, val_x)
    write_json_atomic(path, result)
    state.record("sensitivity", inputs, time.perf_counter() - start)
    if result:
        ui.info("most INT8-sensitive blocks: " + ", ".join(f"{r['block']} (KL {r['kl_mean']:.2g})"
                                                            for r in result[:3]))
    return result



def block_sensitivity(export_dir: Path, calib_x: np.ndarray, val_x: np.ndarray) -> list[dict[str, Any]]:
    """How much INT8 hurts each transformer block alone, most sensitive first.

    Each block's Linear layers are fake-quantized in PyTorch as the INT8 candidates quantize them
    (symmetric, per-channel weights, per-tensor activations from calibration ranges) while the
    rest of the model stays FP32; the score is the mean KL of the softmax against FP32 on the
    validation images. Blocks are named by their PyTorch module (e.g. blocks.7).
    """
    import torch

    from vitedge.runtime import load

    # the caller checked that the export's source may be rebuilt (tune's --trust-source)
    with load(export_dir, backend="pytorch", trust_source=True) as reference:
        module = reference.runner.module
        blocks = _transformer_blocks(module)
        if not blocks:
            return []
        linears = {f"{block}.{name}" if name else block: layer
                   for block, mod in blocks for name, layer in mod.named_modules()
                   if isinstance(layer, torch.nn.Linear)}
        ranges = _activation_ranges(module, linears, calib_x)

        def logits() -> np.ndarray:
            with torch.no_grad():
                return np.concatenate([module(torch.from_numpy(val_x[i:i + 32])).float().numpy()
                                       for i in range(0, len(val_x), 32)])

        ref = logits()
        results = []
        for block, _ in ui.track(blocks, "INT8 sensitivity per block (fake-quantized PyTorch)"):
            names = [n for n in linears if n == block or n.startswith(block + ".")]
            with _fake_quantized({n: linears[n] for n in names}, ranges):
                out = logits()
            results.append({"block": block, "modules": names, "kl_mean": _kl_mean(ref, out),
                            "top1_agreement": float(np.mean(ref.argmax(1) == out.argmax(1)))})
    return sorted(results, key=lambda r: -r["kl_mean"])


def _transformer_blocks(module: Any) -> list[tuple[str, Any]]:
    """(name, module) of the blocks: the longest ModuleList or Sequential whose items all hold Linear layers."""
    import torch

    best: list[tuple[str, Any]] = []
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.ModuleList | torch.nn.Sequential) and len(child) > len(best) and all(
                any(isinstance(m, torch.nn.Linear) for m in item.modules()) for item in child):
            best = [(f"{name}.{i}", item) for i, item in enumerate(child)]
    return best


def _activation_ranges(module: Any, linears: dict[str, Any], calib_x: np.ndarray) -> dict[str, float]:
    import torch

    ranges: dict[str, float] = {}

    def hook(name: str) -> Any:
        def record(_: Any, inputs: tuple[Any, ...]) -> None:
            ranges[name] = max(ranges.get(name, 0.0), float(inputs[0].detach().abs().max()))
        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in linears.items()]
    try:
        with torch.no_grad():
            for i in range(0, len(calib_x), 32):
                module(torch.from_numpy(calib_x[i:i + 32]))
    finally:
        for handle in handles:
            handle.remove()
    return ranges


class _fake_quantized:  # noqa: N801 - used as a context manager, like contextlib's helpers
    """Linear layers with INT8-rounded weights (per output channel) and inputs (per tensor)."""

    def __init__(self, layers: dict[str, Any], ranges: dict[str, float]) -> None:
        self.layers, self.ranges = layers, ranges
        self.saved: dict[str, Any] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> "_fake_quantized":
        import torch

        for name, layer in self.layers.items():
            weight = layer.weight.data
            self.saved[name] = weight.clone()
            scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
            layer.weight.data = torch.clamp(torch.round(weight / scale), -127, 127) * scale
            act_scale = max(self.ranges.get(name, 0.0), 1e-12) / 127

            def quantize_input(_: Any, inputs: tuple[Any, ...], s: float = act_scale) -> tuple[Any, ...]:
                return (torch.clamp(torch.round(inputs[0] / s), -127, 127) * s, *inputs[1:])

            self.handles.append(layer.register_forward_pre_hook(quantize_input))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        for name, weight in self.saved.items():
            self.layers[name].weight.data = weight


def _kl_mean(ref: np.ndarray, out: np.ndarray) -> float:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(out)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))
