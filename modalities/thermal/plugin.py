"""`ThermalPlugin`: single-channel thermal images -> a 1-channel ViT -> the anchor's space."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from anchorbind.errors import InputError
from anchorbind.modalities.thermal.config import ThermalConfig
from anchorbind.modalities.thermal.processor import ThermalProcessor
from anchorbind.plugin import ModalityPlugin
from anchorbind.trunks import build_vit

__all__ = ["ThermalPlugin"]


class ThermalPlugin(ModalityPlugin):
    """Thermal (long-wave infrared) images, as ImageBind's thermal branch reads them.

    Batch: ``(B, 1, image_size, image_size)`` float32 from
    :class:`~anchorbind.modalities.thermal.processor.ThermalProcessor`. Trunk: a 1-channel timm
    ViT (:func:`anchorbind.trunks.build_vit`); fixed logit scale 10 by default (ImageBind's).
    Thermal images show the scene's shapes (people, cars, buildings) as heat, so they bind to
    what the paired photo shows: it is a visual modality for observability.
    """

    name: ClassVar[str] = "thermal"
    prompt_templates: ClassVar[tuple[str, ...]] = ("a {}.", "a thermal image of a {}.", "an infrared photo of a {}.")
    perceives: ClassVar[tuple[str, ...]] = ("visual",)
    Config: ClassVar[type[ThermalConfig]] = ThermalConfig
    Processor: ClassVar[type[ThermalProcessor]] = ThermalProcessor
    sample_keys: ClassVar[tuple[str, ...]] = ("thermal.png", "thermal.tif", "thermal.tiff", "thermal.jpg")
    config: ThermalConfig

    @classmethod
    def example_inputs(cls) -> list[Any]:
        """A warm disc on a cool background (uint8), a vertical gradient (uint16) and a 16-bit PNG's bytes."""
        import io

        import numpy as np
        from PIL import Image

        rows, cols = np.mgrid[0:48, 0:64]
        disc = np.where((rows - 24) ** 2 + (cols - 30) ** 2 < 150, 220, 60).astype(np.uint8)
        gradient = (rows * 1000 + 20000).astype(np.uint16)
        png = io.BytesIO()
        Image.fromarray((cols * 900 + 5000).astype(np.uint16)).save(png, format="PNG")
        return [disc, gradient, png.getvalue()]

    @classmethod
    def example_bad_inputs(cls) -> list[Any]:
        """Empty bytes, bytes that are no image, NaN and out-of-range float images, a colour image, a wrong type."""
        import numpy as np

        colour = np.zeros((8, 8, 3), dtype=np.uint8)
        colour[..., 0] = 255
        return [b"", b"not an image", np.full((8, 8), np.nan, dtype=np.float32),
                np.full((8, 8), 3.0, dtype=np.float32), colour, object()]

    def build_trunk(self) -> tuple[nn.Module, int]:
        """A headless 1-channel timm ViT (:func:`anchorbind.trunks.build_vit`)."""
        trunk = build_vit(self.config.image_size, self.config)
        return trunk, trunk.num_features

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(B, width)`` of a ``(B, 1, image_size, image_size)`` batch."""
        size = self.config.image_size
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or tuple(batch.shape[1:]) != (1, size, size):
            raise InputError(batch, f"expected a float tensor (B, 1, {size}, {size}) from load_batch()", self.name)
        param = next(self.trunk.parameters())
        return self.trunk(batch.to(device=param.device, dtype=param.dtype))
