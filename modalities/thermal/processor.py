"""`ThermalProcessor`: thermal images -> scaled, square ``(1, S, S)`` tensors, with no trunk attached."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from anchorbind.errors import InputError
from anchorbind.modalities.thermal.config import ThermalConfig
from anchorbind.processor import InputSource, Processor, open_input

__all__ = ["ThermalProcessor", "read_thermal"]

_INTEGER_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.int32): 65535.0}


def read_thermal(source: InputSource, config: ThermalConfig, modality: str = "thermal") -> torch.Tensor:
    """One thermal image as an ``(H, W)`` float32 tensor scaled to 0..1 (``config.scaling``).

    Raises:
        InputError: naming ``source``: unreadable or not an image, more than ``max_pixels``
            pixels (read from the header), colour channels that differ (a false-colour
            rendering, not a thermal image), NaN/inf, or float values outside [0, 1].
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        array = source.numpy() if isinstance(source, torch.Tensor) else source
        _check_pixels(array.shape[:2] if array.ndim >= 2 else (array.size,), config, source, modality)
    elif isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        array = _decode(source, config, modality)
    else:
        raise InputError(source, f"expected an image path, bytes or an HxW array, got {type(source).__name__}",
                         modality)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        colour = array[..., :3].astype(np.float64)
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
            raise InputError(source, "colour image: a thermal image has one channel (a false-colour palette "
                                     "has lost the temperatures)", modality)
        array = array[..., 0]
    if array.ndim != 2 or min(array.shape) == 0:
        raise InputError(source, f"expected one HxW channel, got shape {tuple(array.shape)}", modality)
    if array.dtype.kind == "b" or array.dtype.kind not in "uif":
        raise InputError(source, f"unsupported pixel type {array.dtype}", modality)
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError(source, "NaN or infinite pixels", modality)
    if config.scaling == "per_image":
        low, high = values.min(), values.max()
        if high <= low:
            raise InputError(source, "constant image (no temperature contrast to scale)", modality)
        values = (values - low) / (high - low)
    elif array.dtype.kind in "ui":
        values = values / _INTEGER_MAX.get(array.dtype, float(np.iinfo(array.dtype).max))
    elif values.min() < 0.0 or values.max() > 1.0:
        raise InputError(source, f"float pixels must lie in [0, 1] with scaling='dtype', got "
                                 f"[{values.min():.4g}, {values.max():.4g}]; use scaling='per_image'", modality)
    return torch.from_numpy(values.astype(np.float32))


def _check_pixels(shape: Sequence[int], config: ThermalConfig, source: Any, modality: str) -> None:
    if config.max_pixels is not None and math.prod(shape) > config.max_pixels:
        raise InputError(source, f"image too large: {math.prod(shape)} pixels > max_pixels {config.max_pixels}",
                         modality)


def _decode(source: Any, config: ThermalConfig, modality: str) -> np.ndarray:
    with open_input(source, modality) as (file, _size):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(file)
                _check_pixels((image.height, image.width), config, source, modality)
                image.load()
        except InputError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
                Image.DecompressionBombWarning) as err:
            raise InputError(source, f"not a readable image ({type(err).__name__}: {err})", modality) from None
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode in ("I", "F", "L", "RGB", "RGBA"):
        return np.asarray(image)
    return np.asarray(image.convert("L"))


class ThermalProcessor(Processor):
    """A thermal image (8/16-bit grey PNG or TIFF, JPEG, or an HxW array) as a ``(1, S, S)`` tensor.

    :meth:`load` scales it to 0..1 (:func:`read_thermal`), resizes the short side to
    ``image_size``, crops the centre square (a random one when training) and normalises with
    ``mean``/``std``; :meth:`collate` stacks to ``(B, 1, S, S)`` float32.
    """

    config: ThermalConfig

    def load(self, source: InputSource, *, train: bool = False) -> torch.Tensor:
        """Read and preprocess one thermal image.

        Raises:
            InputError: see :func:`read_thermal`.
        """
        cfg = self.config
        image = read_thermal(source, cfg, self.modality)
        height, width = image.shape
        short = min(height, width)
        side = short
        if train:
            low, high = cfg.train_crop_scale
            side = max(1, round(short * math.sqrt(low + (high - low) * torch.rand(()).item())))
        top = int(torch.randint(0, height - side + 1, ()).item()) if train else (height - side) // 2
        left = int(torch.randint(0, width - side + 1, ()).item()) if train else (width - side) // 2
        image = image[top:top + side, left:left + side]
        if train and torch.rand(()).item() < cfg.train_hflip_prob:
            image = image.flip(-1)
        if image.shape != (cfg.image_size, cfg.image_size):
            image = F.interpolate(image[None, None], size=(cfg.image_size, cfg.image_size), mode="bicubic",
                                  align_corners=False, antialias=True)[0, 0]
        return ((image - cfg.mean) / cfg.std).unsqueeze(0).contiguous()

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack loaded images into ``(B, 1, image_size, image_size)``."""
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of thermal images")
        return torch.stack(list(samples))

    def input_description(self) -> str:
        cfg = self.config
        return (f"thermal image: 8/16-bit grey PNG/TIFF, JPEG, or an HxW array (path, bytes or array); scaled "
                f"to 0..1 ({cfg.scaling}), normalised (x - {cfg.mean:g}) / {cfg.std:g}, centre square resized "
                f"to {cfg.image_size}x{cfg.image_size}")
