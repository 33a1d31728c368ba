"""Depth (metres) -> clipped disparity -> square crop -> resized, normalised ``(1, S, S)`` map.

Disparity rather than depth is what ImageBind and Omnivore feed their depth encoders: it is
what a stereo sensor measures, its noise is roughly uniform, and it puts near structure (which
the paired image shows in detail) at large values and "far / nothing" at zero instead of at an
unbounded depth.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anchorbind.modalities.depth.config import DepthConfig

__all__ = ["crop_box", "disparity_scale", "normalize", "resize_square", "to_disparity"]

STD_FLOOR = 0.01
"""Per-image std is at least this fraction of the mean disparity, so a near-constant map (a flat
wall) comes out near zero instead of as sensor noise blown up to unit variance."""


def disparity_scale(config: DepthConfig) -> float:
    """``baseline * focal`` when both are configured (pixel disparity), else 1 (1/depth)."""
    if config.baseline is not None and config.focal is not None:
        return float(config.baseline) * float(config.focal)
    return 1.0


def to_disparity(metres: torch.Tensor, invalid: torch.Tensor | None, config: DepthConfig) -> torch.Tensor:
    """Clip depth to ``[min_depth, max_depth]``, fill unmeasured pixels with ``max_depth``, invert.

    Args:
        metres: depth in metres, any shape.
        invalid: True where there is no measurement (same shape), or None.
        config: the clip range and the disparity scale (``baseline * focal`` or 1).

    Returns:
        Disparity of the same shape: ``scale / depth``, in ``[scale/max_depth, scale/min_depth]``.
    """
    depth = metres.float().clamp(config.min_depth, config.max_depth)
    if invalid is not None:
        depth = depth.masked_fill(invalid, config.max_depth)
    return disparity_scale(config) / depth


def crop_box(height: int, width: int, config: DepthConfig, *, train: bool) -> tuple[int, int, int]:
    """``(top, left, side)`` of a square crop.

    Evaluation takes the centre square (the framing of "resize the short side, centre crop"
    image pipelines). Training takes a random square whose area is ``train_crop_scale`` of the
    centre square's, anywhere inside the map.
    """
    short = min(height, width)
    if not train:
        return (height - short) // 2, (width - short) // 2, short
    low, high = (float(v) for v in config.train_crop_scale)
    area = low + (high - low) * torch.rand(()).item()
    side = max(1, min(short, round(short * math.sqrt(area))))
    top = int(torch.randint(0, height - side + 1, ()).item())
    left = int(torch.randint(0, width - side + 1, ()).item())
    return top, left, side


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize an ``(H, W)`` map to ``(size, size)``: bilinear, antialiased when shrinking."""
    if image.shape == (size, size):
        return image
    resized = F.interpolate(image[None, None], size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True)
    return resized[0, 0]


def normalize(image: torch.Tensor, disparity: torch.Tensor, valid: torch.Tensor, config: DepthConfig) -> torch.Tensor:
    """Standardise ``image`` (the resized ``disparity``) as ``config.normalization`` says.

    Args:
        image: the resized disparity map to normalise.
        disparity: the crop it was resized from, at full resolution: per-image statistics are
            taken from its *measured* pixels, so filled holes do not shift them.
        valid: True where ``disparity`` was measured.
        config: ``normalization`` and, for ``"fixed"``, ``disparity_mean``/``disparity_std``.
    """
    if config.normalization == "fixed":
        assert config.disparity_mean is not None and config.disparity_std is not None  # checked by the config
        return (image - config.disparity_mean) / config.disparity_std
    values = disparity[valid] if bool(valid.any()) else disparity.flatten()
    values = values.double()
    mean = values.mean()
    std = torch.maximum(values.std(correction=0), STD_FLOOR * mean.abs()).clamp_min(1e-12)
    return ((image.double() - mean) / std).float()
