"""Small 1-channel timm ViT trunks for image-like non-RGB inputs (spectrograms, depth maps).

The built-in audio and depth plugins both encode a one-channel 2-D grid with a tiny
``VisionTransformer``; building it here keeps their trunks (and the pooling choices they accept)
the same, and gives an out-of-tree plugin for another grid-shaped signal the same starting point.
"""

from __future__ import annotations

from typing import Protocol

from timm.models.vision_transformer import VisionTransformer

__all__ = ["VIT_POOLINGS", "ViTShape", "one_channel_vit"]

VIT_POOLINGS = ("avg", "token")
"""``avg``: mean of the patch tokens; ``token``: the class token (ImageBind's choice)."""


class ViTShape(Protocol):
    """The config fields that shape the trunk (a plugin config dataclass provides them)."""

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float
    drop_path_rate: float
    global_pool: str


def one_channel_vit(img_size: int | tuple[int, int], shape: ViTShape) -> VisionTransformer:
    """A headless (``num_classes=0``) 1-channel ViT with a class token, pooled as ``shape.global_pool``."""
    return VisionTransformer(
        img_size=img_size,
        patch_size=shape.patch_size,
        in_chans=1,
        num_classes=0,
        embed_dim=shape.width,
        depth=shape.depth,
        num_heads=shape.num_heads,
        mlp_ratio=shape.mlp_ratio,
        drop_path_rate=shape.drop_path_rate,
        class_token=True,
        global_pool=shape.global_pool,
    )
