"""`DepthPlugin`: metric depth maps -> normalised disparity -> a 1-channel ViT -> the anchor's space."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from anchorbind.errors import InputError
from anchorbind.modalities.depth.config import DepthConfig
from anchorbind.modalities.depth.processor import DepthInputStats, DepthProcessor
from anchorbind.modalities.depth.reading import DepthReading
from anchorbind.plugin import InputSource, ModalityPlugin
from anchorbind.trunks import build_vit

__all__ = ["DepthInputStats", "DepthPlugin"]


class DepthPlugin(ModalityPlugin):
    """Metric depth (a .npy in metres or a 16-bit PNG in millimetres) as a normalised disparity map.

    Reading and preprocessing are the :class:`~anchorbind.modalities.depth.processor.DepthProcessor`'s
    (``self.processor``); :attr:`input_stats`, :meth:`read`, :meth:`disparity` and
    :meth:`disparity_statistics` delegate to it.

    Batch: ``(B, 1, image_size, image_size)`` float32. Trunk: a timm ``VisionTransformer`` with
    ``in_chans=1``, mean-pooled over patch tokens by default (``global_pool``); fixed logit
    scale 5 by default (ImageBind's depth setting).
    """

    name: ClassVar[str] = "depth"
    prompt_templates: ClassVar[tuple[str, ...]] = ("a {}.", "a depth map of a {}.", "a depth image of a {}.",
                                                   "the 3D shape of a {}.")
    perceives: ClassVar[tuple[str, ...]] = ("visual",)
    Config: ClassVar[type[DepthConfig]] = DepthConfig
    Processor: ClassVar[type[DepthProcessor]] = DepthProcessor
    sample_keys: ClassVar[tuple[str, ...]] = ("depth.npy", "depth.png")
    config: DepthConfig

    @classmethod
    def example_inputs(cls) -> list[Any]:
        """Float32 depth maps in metres: a tilted floor (48x64), a box in front of a wall, a ``.npy``'s bytes."""
        import io

        import numpy as np

        rows = np.arange(48, dtype=np.float32)[:, None] / 48
        cols = np.arange(64, dtype=np.float32)[None, :] / 64
        floor = (1.0 + 3.0 * (1.0 - rows) + 0.2 * cols).astype(np.float32)
        box = np.full((60, 60), 4.0, dtype=np.float32)
        box[20:45, 15:40] = 1.5
        slope = io.BytesIO()
        np.save(slope, (2.0 + cols + 0.0 * rows).astype(np.float32), allow_pickle=False)
        return [floor, box, slope.getvalue()]

    @classmethod
    def example_bad_inputs(cls) -> list[Any]:
        """Empty bytes, bytes of no known format, NaN and negative depth, integer (unitless) depth, a wrong type."""
        import numpy as np

        return [b"", b"not a depth map", np.full((8, 8), np.nan, dtype=np.float32),
                np.full((8, 8), -1.0, dtype=np.float32), np.ones((8, 8), dtype=np.int64), object()]

    # ------------------------------------------------------------------ trunk
    def build_trunk(self) -> tuple[nn.Module, int]:
        """A 1-channel timm ViT, headless (``num_classes=0``), pooled as ``config.global_pool`` says."""
        cfg = self.config
        trunk = build_vit(cfg.image_size, cfg)
        return trunk, trunk.num_features

    # ------------------------------------------------------------------ inputs: the processor's
    @property
    def input_stats(self) -> DepthInputStats:
        """What this plugin's processor has read (:attr:`DepthProcessor.input_stats`)."""
        return self.processor.input_stats

    def read(self, source: InputSource) -> DepthReading:
        """``self.processor.read(source)``: metres and an invalid-pixel mask."""
        return self.processor.read(source)

    def disparity(self, source: InputSource) -> torch.Tensor:
        """``self.processor.disparity(source)``: the full-resolution disparity ``(H, W)``."""
        return self.processor.disparity(source)

    def disparity_statistics(self, sources: Iterable[InputSource]) -> tuple[float, float]:
        """``self.processor.disparity_statistics(sources)``: mean and std of measured disparity."""
        return self.processor.disparity_statistics(sources)

    # ------------------------------------------------------------------ encoding
    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        """Class-token features ``(B, width)`` of a ``(B, 1, image_size, image_size)`` batch."""
        size = self.config.image_size
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or tuple(batch.shape[1:]) != (1, size, size):
            raise InputError(batch, f"expected a float tensor (B, 1, {size}, {size}) from load_batch()", self.name)
        param = next(self.trunk.parameters())
        return self.trunk(batch.to(device=param.device, dtype=param.dtype))
