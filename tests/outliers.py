"""The outlier fixture: the trained demo ViT made to carry activation outliers like real
ImageNet checkpoints, with its FP32 function unchanged.

For every block, a few LayerNorm output channels are scaled by K (gamma and beta) and the
following Linear's input columns by 1/K: X' = X * k on those channels, W' = W / k, so
X' W'^T = X W^T, but per-tensor INT8 activations of that Linear now span K times the range.
"""

from __future__ import annotations

from pathlib import Path

OUTLIER_CHANNELS = (3, 41, 77)
OUTLIER_SCALE = 60.0


def add_outliers(model, channels: tuple[int, ...] = OUTLIER_CHANNELS, k: float = OUTLIER_SCALE):
    """Scale NORM channels by K and the next Linear's input columns by 1/K, in place."""
    import torch

    with torch.no_grad():
        for block in model.blocks:
            for norm, linear in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc1)):
                for c in channels:
                    norm.weight[c] *= k
                    norm.bias[c] *= k
                    linear.weight[:, c] /= k
    return model


def save_outlier_demo(path: Path) -> Path:
    """The trained demo's weights with outliers added, as safetensors (for `demo:digits --weights`)."""
    from safetensors.torch import save_file

    from vitedge.models import load_model

    model = add_outliers(load_model("demo:digits").module)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
