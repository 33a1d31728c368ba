"""`DepthProcessor`: metric depth maps -> normalised disparity tensors, with no trunk attached."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anchorbind.modalities.depth.config import DepthConfig
from anchorbind.modalities.depth.reading import DepthReading, read_depth
from anchorbind.modalities.depth.transforms import crop_box, normalize, resize_square, to_disparity
from anchorbind.processor import InputSource, Processor

__all__ = ["DepthInputStats", "DepthProcessor"]


@dataclass
class DepthInputStats:
    """Running counts of what :meth:`DepthProcessor.load` read, so filled holes are never silent.

    In DataLoader worker processes each worker counts its own share (its copy of the processor).
    """

    maps: int = 0
    maps_with_invalid: int = 0
    invalid_pixels: int = 0
    pixels: int = 0

    def add(self, reading: DepthReading) -> None:
        invalid = int(reading.invalid.sum())
        self.maps += 1
        self.maps_with_invalid += int(invalid > 0)
        self.invalid_pixels += invalid
        self.pixels += int(reading.invalid.size)

    @property
    def invalid_fraction(self) -> float:
        return self.invalid_pixels / self.pixels if self.pixels else 0.0


class DepthProcessor(Processor):
    """Metric depth (a .npy in metres or a 16-bit PNG in millimetres) as a normalised disparity map.

    Input: a path or the bytes of a float ``.npy`` (metres) or of a 16-bit PNG (``png_scale``
    units per metre; NYU/SUN RGB-D millimetres), or a float array/tensor in metres shaped
    ``HxW``, ``1xHxW`` or ``HxWx1``, of any size. Zero depth means "no measurement": such pixels
    are filled with ``max_depth`` and counted in :attr:`input_stats`.

    Preprocessing: clip to ``[min_depth, max_depth]`` -> disparity (``baseline*focal/depth`` or
    ``1/depth``) -> centre square (random square crop and flip when training) -> bilinear resize
    to ``image_size`` -> per-image or fixed standardisation. See :class:`DepthConfig` for why.
    Batch: ``(B, 1, image_size, image_size)`` float32.

    Attributes:
        input_stats: :class:`DepthInputStats` of every map :meth:`load` read.
    """

    config: DepthConfig

    def __init__(self, config: DepthConfig, *, modality: str, sample_keys: tuple[str, ...]) -> None:
        super().__init__(config, modality=modality, sample_keys=sample_keys)
        self.input_stats = DepthInputStats()

    def read(self, source: InputSource) -> DepthReading:
        """Read ``source`` into metres and an invalid-pixel mask, applying this config's checks.

        Raises:
            InputError: see :func:`anchorbind.modalities.depth.reading.read_depth`.
        """
        cfg = self.config
        return read_depth(source, png_scale=cfg.png_scale, allow_8bit_png=cfg.allow_8bit_png,
                          max_invalid_fraction=cfg.max_invalid_fraction, max_pixels=cfg.max_pixels)

    def disparity(self, source: InputSource) -> torch.Tensor:
        """The full-resolution, clipped, hole-filled disparity ``(H, W)`` of ``source``, before
        cropping and normalisation (``baseline*focal/depth``, else ``1/depth``)."""
        reading = self.read(source)
        return to_disparity(torch.from_numpy(reading.metres), torch.from_numpy(reading.invalid), self.config)

    def load(self, source: InputSource, *, train: bool = False) -> torch.Tensor:
        """Read one depth map and preprocess it into a ``(1, image_size, image_size)`` tensor.

        Args:
            source: see the class docstring.
            train: random square crop (``train_crop_scale``) and horizontal flip
                (``train_hflip_prob``) instead of the centre square.

        Raises:
            InputError: naming ``source`` and why it is not usable depth (unreadable, pickled
                ``.npy``, 8-bit or colour PNG, wrong shape, NaN/inf, negative, too many holes,
                more than ``max_pixels`` values).
        """
        cfg = self.config
        reading = self.read(source)
        self.input_stats.add(reading)
        invalid = torch.from_numpy(reading.invalid)
        disparity = to_disparity(torch.from_numpy(reading.metres), invalid, cfg)
        top, left, side = crop_box(*disparity.shape, cfg, train=train)
        disparity = disparity[top:top + side, left:left + side]
        valid = ~invalid[top:top + side, left:left + side]
        if train and torch.rand(()).item() < cfg.train_hflip_prob:
            disparity, valid = disparity.flip(-1), valid.flip(-1)
        image = resize_square(disparity, cfg.image_size)
        return normalize(image, disparity, valid, cfg).unsqueeze(0).contiguous()

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack loaded maps into ``(B, 1, image_size, image_size)``."""
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of depth maps")
        return torch.stack(list(samples))

    def disparity_statistics(self, sources: Iterable[InputSource]) -> tuple[float, float]:
        """Mean and std of the measured disparity over ``sources``, for ``normalization="fixed"``.

        Computed at full resolution over measured pixels, after clipping, in this config's units
        (1/m, or pixels when ``baseline`` and ``focal`` are set).
        """
        total = total_sq = 0.0
        count = 0
        for source in sources:
            reading = self.read(source)
            valid = ~reading.invalid
            values = to_disparity(torch.from_numpy(reading.metres[valid]), None, self.config).double().numpy()
            total += float(values.sum())
            total_sq += float(np.square(values).sum())
            count += values.size
        if count == 0:
            raise ValueError("no measured depth pixels in the given sources")
        mean = total / count
        return mean, float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))

    def input_description(self) -> str:
        cfg = self.config
        disparity = (f"{cfg.baseline:g}*{cfg.focal:g}/depth" if cfg.baseline is not None and cfg.focal is not None
                     else "1/depth")
        return (
            f"metric depth: float .npy in metres or 16-bit PNG in 1/{cfg.png_scale:g} m (path, bytes, or "
            f"HxW array in metres); clipped to [{cfg.min_depth:g}, {cfg.max_depth:g}] m, disparity "
            f"{disparity}, {cfg.normalization} normalisation, resized to {cfg.image_size}x{cfg.image_size}"
        )
