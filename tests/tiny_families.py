"""Reduced-depth configurations of the transformer families vitedge covers, as model factories.

`tiny_families:<family>` is a `package.module:factory` spec: the timm architecture of that
family with fewer blocks (and a smaller input where the family allows), random init, for
export/parity/compile coverage in CI. Accuracy on them means nothing; scripts/family_matrix.py
runs the same families (or full-size ones) for the INT8 error table.
"""

from __future__ import annotations

import functools
from typing import Any


def _size(pixels: int) -> dict[str, Any]:
    """For models without an img_size argument: the input size their preprocessing declares."""
    return {"pretrained_cfg_overlay": {"input_size": (3, pixels, pixels)}}


# family -> (timm architecture, reduced-size kwargs)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_224": ("vit_tiny_patch16_224", {"depth": 1}),
    "vit_384": ("vit_tiny_patch16_384", {"depth": 1}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {"depth": 2, "img_size": 64}),
    "vit_registers": ("vit_little_patch16_reg4_gap_256", {"depth": 2, "img_size": 64}),
    "eva02": ("eva02_tiny_patch14_224", {"depth": 2, "img_size": 56}),
    "beit": ("beit_base_patch16_224", {"depth": 1, "embed_dim": 64, "num_heads": 2, "img_size": 64}),
    "beitv2": ("beitv2_base_patch16_224", {"depth": 1, "embed_dim": 64, "num_heads": 2, "img_size": 64}),
    "swin": ("swin_tiny_patch4_window7_224",
             {"depths": (1, 1, 1), "embed_dim": 32, "num_heads": (1, 2, 4), "img_size": 112}),
    "levit": ("levit_128s", {"depth": (1, 1, 1), "img_size": 128, **_size(128)}),
    "fastvit": ("fastvit_t8", {"layers": (1, 1, 1, 1), **_size(128)}),
    "efficientvit": ("efficientvit_m0", {"depth": (1, 1, 1), "img_size": 128, **_size(128)}),
    "pvt_v2": ("pvt_v2_b0", {"depths": (1, 1, 1, 1), **_size(128)}),
    "efficientformer": ("efficientformer_l1", {"depths": (1, 1, 1, 2), "num_vit": 1}),  # 7x7 attention biases
    "efficientformerv2": ("efficientformerv2_s0", {"depths": (1, 1, 2, 2), "img_size": 128, **_size(128)}),
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


def torchvision_swin(num_classes: int = 10) -> Any:
    """torchvision's Swin (the class behind `torchvision:swin_t`) with one block per stage."""
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                           window_size=[7, 7], num_classes=num_classes)


# kind -> the image processor its checkpoints ship, as (class name, kwargs) for a 32x32 model;
# the resize-then-crop ratios are the real checkpoints' (DeiT 256 -> 224, MobileViT 288 -> 256).
HF_PROCESSORS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit": ("ViTImageProcessor", {"size": {"height": 32, "width": 32}}),
    "swin": ("ViTImageProcessor", {"size": {"height": 32, "width": 32}}),  # microsoft/swin-*
    "beit": ("BeitImageProcessor", {"size": {"height": 32, "width": 32}, "do_center_crop": False}),
    "deit_distilled": ("DeiTImageProcessor", {"size": {"height": 37, "width": 37},  # 32 * 256 / 224
                                              "crop_size": {"height": 32, "width": 32}}),
    "mobilevit": ("MobileViTImageProcessor", {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}}),
}
HF_KINDS = tuple(HF_PROCESSORS)


def save_hf_classifier(kind: str, folder: Any, processor: bool = False) -> Any:
    """A tiny transformers image classifier of KIND (HF_KINDS) from its config, saved to FOLDER,
    with (PROCESSOR) the image processor its checkpoints ship."""
    import transformers

    labels = {i: f"class_{i}" for i in range(3)}
    common = dict(image_size=32, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    vit_sizes = dict(patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    if kind == "vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**vit_sizes, **common))
    elif kind == "swin":
        config = transformers.SwinConfig(patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
                                         **common)
        model = transformers.SwinForImageClassification(config)
    elif kind == "beit":
        config = transformers.BeitConfig(**vit_sizes, use_relative_position_bias=True, **common)
        model = transformers.BeitForImageClassification(config)
    elif kind == "deit_distilled":  # the format of the facebook/deit-*-distilled-* checkpoints
        model = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**vit_sizes, **common))
    elif kind == "mobilevit":
        config = transformers.MobileViTConfig(patch_size=2, hidden_sizes=[16, 24, 32], num_attention_heads=2,
                                              neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32], **common)
        model = transformers.MobileViTForImageClassification(config)
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    if processor:
        name, kwargs = HF_PROCESSORS[kind]
        getattr(transformers, name)(**kwargs).save_pretrained(folder)
    return folder
