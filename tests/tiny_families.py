"""Reduced-depth configurations of the transformer families vitedge covers, as model factories.

`tiny_families:<family>` is a `package.module:factory` spec: the timm architecture of that
family with fewer blocks (and a smaller input where the family allows), random init, for
export/parity/compile coverage in CI. Accuracy on them means nothing; scripts/family_matrix.py
runs the same families (or full-size ones) for the INT8 error table.
"""

from __future__ import annotations

import functools
from typing import Any

# family -> (timm architecture, reduced-size kwargs)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_224": ("vit_tiny_patch16_224", {"depth": 2}),
    "vit_384": ("vit_tiny_patch16_384", {"depth": 1}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {"depth": 2, "img_size": 64}),
    "vit_registers": ("vit_little_patch16_reg4_gap_256", {"depth": 2, "img_size": 64}),
    "eva02": ("eva02_tiny_patch14_224", {"depth": 2, "img_size": 56}),
    "beit": ("beit_base_patch16_224", {"depth": 1, "embed_dim": 64, "num_heads": 2, "img_size": 64}),
    "beitv2": ("beitv2_base_patch16_224", {"depth": 1, "embed_dim": 64, "num_heads": 2, "img_size": 64}),
    "swin": ("swin_tiny_patch4_window7_224",
             {"depths": (1, 1, 1, 1), "embed_dim": 32, "num_heads": (1, 2, 4, 8)}),
    "levit": ("levit_128s", {"depth": (1, 1, 1)}),
    "fastvit": ("fastvit_t8", {"layers": (1, 1, 1, 1)}),
    "efficientvit": ("efficientvit_m0", {"depth": (1, 1, 1)}),
    "pvt_v2": ("pvt_v2_b0", {"depths": (1, 1, 1, 1)}),
    "efficientformer": ("efficientformer_l1", {"depths": (1, 1, 1, 2), "num_vit": 1}),
    "efficientformerv2": ("efficientformerv2_s0", {"depths": (1, 1, 2, 2)}),
}


def build(family: str, num_classes: int = 10, **overrides: Any) -> Any:
    """The reduced FAMILY model (timm, random init under the caller's seed)."""
    import timm

    arch, kwargs = FAMILIES[family]
    return timm.create_model(arch, num_classes=num_classes, **{**kwargs, **overrides})


def __getattr__(name: str) -> Any:
    """`tiny_families:<family>` resolves to a factory taking num_classes."""
    if name in FAMILIES:
        return functools.partial(build, name)
    raise AttributeError(name)
