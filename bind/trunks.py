"""Small timm ViT trunks for signals that are not RGB photos (spectrograms, depth, thermal, IMU).

The built-in audio, depth, thermal and IMU plugins all encode their input with a timm
``VisionTransformer`` built here, so they share one set of trunk options (:class:`ViTPluginConfig`)
and an out-of-tree plugin for another grid- or sequence-shaped signal gets the same starting
point. The options beyond a plain ViT are exactly what ImageBind's branches need, so an
ImageBind checkpoint maps onto these trunks tensor for tensor:

* ``patch_stride``: overlapping patches (ImageBind's audio: 16 x 16 patches every 10 bins/frames,
  no padding to whole patches);
* ``stem_bias`` / ``stem_norm``: a bias-free patch projection followed by a LayerNorm;
* ``attn_bias_kv``: attention with one learned extra key and value (``nn.MultiheadAttention``'s
  ``add_bias_kv``), :class:`BiasKVAttention`;
* ``global_pool="token"``: the class token after the final norm (ImageBind's heads);
* a 1-D "linear" stem (:class:`LinearPatchStem`) for multichannel time series cut into
  fixed-length patches (ImageBind's IMU).

Everything else (blocks, MLPs, drop path, initialisation) is timm's own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from anchorbind.tuning import TunableConfig, tuning_problems

__all__ = [
    "VIT_POOLINGS",
    "BiasKVAttention",
    "ConvPatchStem",
    "LinearPatchStem",
    "ViTPluginConfig",
    "build_vit",
    "crop_flip_problems",
    "one_channel_vit",
    "vit_problems",
]

VIT_POOLINGS = ("avg", "token")
"""``avg``: mean of the patch tokens; ``token``: the class token (ImageBind's choice)."""


@dataclass
class ViTPluginConfig(TunableConfig):
    """The trunk fields of a plugin whose trunk is :func:`build_vit` (defaults: tiny, for a CPU).

    Attributes:
        patch_size: side of a square patch (a 2-D input) or samples per patch (a 1-D input).
        patch_stride: step between patches; ``None``: ``patch_size`` (no overlap). A stride
            smaller than the patch gives overlapping patches, as ImageBind's audio stem (16/10).
        width, depth, num_heads, mlp_ratio, drop_path_rate: transformer shape; ``depth`` is the
            number of blocks, ``width`` the token width (the projection head maps it to the
            anchor's embedding width); drop path grows linearly to ``drop_path_rate``.
        global_pool: ``"avg"`` (mean of the patch tokens) or ``"token"`` (the class token).
        stem_bias: the patch projection has a bias (timm's default; ImageBind's stems have none).
        stem_norm: a LayerNorm after the patch projection (ImageBind's non-RGB stems).
        attn_bias_kv: attention with a learned extra key and value per block (ImageBind's
            audio, depth, thermal and IMU trunks).
    """

    patch_size: int = 16
    patch_stride: int | None = None
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    global_pool: str = "avg"
    stem_bias: bool = True
    stem_norm: bool = False
    attn_bias_kv: bool = False


_POSITIVE_FIELDS = tuple(name for name, kind in ViTPluginConfig.__annotations__.items()
                         if kind in ("int", "float") and name != "drop_path_rate")
"""The trunk's shape fields (patch size, width, block count, heads, MLP ratio): all must be positive."""


def crop_flip_problems(train_crop_scale: tuple[float, float], train_hflip_prob: float) -> Iterator[str]:
    """What is wrong with a map plugin's training augmentation: a random square of
    ``train_crop_scale`` of the area, flipped with ``train_hflip_prob`` (nothing: an empty iterator)."""
    low, high = train_crop_scale
    if not 0.0 < low <= high <= 1.0:
        yield f"train_crop_scale must satisfy 0 < low <= high <= 1, got {tuple(train_crop_scale)}"
    if not 0.0 <= train_hflip_prob <= 1.0:
        yield f"train_hflip_prob must be in [0, 1], got {train_hflip_prob}"


def vit_problems(config: ViTPluginConfig) -> Iterator[str]:
    """What is wrong with the trunk and tuning fields of ``config`` (nothing: an empty iterator)."""
    for key in _POSITIVE_FIELDS:
        value = getattr(config, key)
        if not value > 0:
            yield f"{key} must be positive, got {value}"
    if config.patch_stride is not None and not config.patch_stride > 0:
        yield f"patch_stride must be positive or null, got {config.patch_stride}"
    if config.width > 0 and config.num_heads > 0 and config.width % config.num_heads:
        yield f"width {config.width} is not divisible by num_heads {config.num_heads}"
    if not 0.0 <= config.drop_path_rate < 1.0:
        yield f"drop_path_rate must be in [0, 1), got {config.drop_path_rate}"
    if config.global_pool not in VIT_POOLINGS:
        yield f"global_pool must be one of {VIT_POOLINGS}, got {config.global_pool!r}"
    yield from tuning_problems(config)


class ConvPatchStem(nn.Module):
    """Conv2d patches (any stride), flattened to tokens, optionally LayerNorm'd: timm's ``embed_layer``.

    ``num_patches`` and ``grid_size`` follow from the input size without padding:
    ``(size - patch) // stride + 1`` per axis (a 128 x 204 spectrogram with patch 16 and stride
    10 gives 12 x 19 patches, as ImageBind's audio stem).
    """

    def __init__(self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int, *,
                 stride: int | None = None, stem_bias: bool = True, stem_norm: bool = False,
                 **_timm_args: Any) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        stride = stride or patch_size
        self.img_size = size
        self.grid_size = tuple((n - patch_size) // stride + 1 for n in size)
        self.num_patches = math.prod(self.grid_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, bias=stem_bias)
        self.norm = nn.LayerNorm(embed_dim) if stem_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class LinearPatchStem(nn.Module):
    """A ``(B, channels, samples)`` signal cut into ``patch_size``-sample patches, each projected.

    A patch's ``channels x patch_size`` values (channel-major, as ImageBind's IMU stem unfolds
    them) go through one Linear layer; samples beyond the last whole patch are not read.
    ``img_size`` is ``(channels, samples)``.
    """

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int, *,
                 stem_bias: bool = True, stem_norm: bool = False, **_timm_args: Any) -> None:
        super().__init__()
        channels, samples = img_size
        self.img_size = (channels, samples)
        self.patch_size = patch_size
        self.grid_size = (1, samples // patch_size)
        self.num_patches = samples // patch_size
        self.proj = nn.Linear(channels * patch_size, embed_dim, bias=stem_bias)
        self.norm = nn.LayerNorm(embed_dim) if stem_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x[..., :self.num_patches * self.patch_size].unfold(-1, self.patch_size, self.patch_size)
        patches = patches.permute(0, 2, 1, 3).flatten(2)  # (B, patches, channels * patch_size)
        return self.norm(self.proj(patches))


class BiasKVAttention(Attention):
    """timm attention with one learned extra key and value, as ``nn.MultiheadAttention(add_bias_kv=True)``.

    ``bias_k`` and ``bias_v`` (``(1, 1, dim)``) are appended to every sequence's keys and values
    after the projection, so each query can also attend to a learned "nothing here" slot.
    """

    def __init__(self, dim: int, num_heads: int = 8, **kwargs: Any) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.bias_k = nn.Parameter(torch.zeros(1, 1, self.attn_dim))
        self.bias_v = nn.Parameter(torch.zeros(1, 1, self.attn_dim))
        nn.init.xavier_normal_(self.bias_k)  # nn.MultiheadAttention's initialisation
        nn.init.xavier_normal_(self.bias_v)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("BiasKVAttention takes no attention mask")
        size, length, _ = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(size, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        extra = (size, heads, 1, head_dim)
        k = torch.cat([k, self.bias_k.view(1, heads, 1, head_dim).expand(extra)], dim=2)
        v = torch.cat([v, self.bias_v.view(1, heads, 1, head_dim).expand(extra)], dim=2)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v,
                                           dropout_p=self.attn_drop.p if self.training else 0.0)
        x = self.norm(x.transpose(1, 2).reshape(size, length, self.attn_dim))
        return self.proj_drop(self.proj(x))


def build_vit(input_size: int | tuple[int, int], config: ViTPluginConfig, *, in_chans: int = 1,
              stem: str = "conv") -> VisionTransformer:
    """A headless (``num_classes=0``) timm ViT with a class token, shaped and pooled by ``config``.

    Args:
        input_size: ``(height, width)`` (or a square side) of a 2-D input for ``stem="conv"``;
            ``(channels, samples)`` of a 1-D multichannel signal for ``stem="linear"``.
        config: the trunk fields (:class:`ViTPluginConfig`).
        in_chans: input channels of a 2-D input.
        stem: ``"conv"`` (:class:`ConvPatchStem`) or ``"linear"`` (:class:`LinearPatchStem`).
    """
    if stem == "conv":
        embed = partial(ConvPatchStem, stride=config.patch_stride, stem_bias=config.stem_bias,
                        stem_norm=config.stem_norm)
    elif stem == "linear":
        embed = partial(LinearPatchStem, stem_bias=config.stem_bias, stem_norm=config.stem_norm)
    else:
        raise ValueError(f"stem must be 'conv' or 'linear', got {stem!r}")
    return VisionTransformer(
        img_size=input_size,
        patch_size=config.patch_size,
        in_chans=in_chans,
        num_classes=0,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        drop_path_rate=config.drop_path_rate,
        class_token=True,
        global_pool=config.global_pool,
        embed_layer=embed,
        attn_layer=BiasKVAttention if config.attn_bias_kv else Attention,
    )


def one_channel_vit(img_size: int | tuple[int, int], config: ViTPluginConfig) -> VisionTransformer:
    """``build_vit(img_size, config)``: a 1-channel 2-D input."""
    return build_vit(img_size, config)
