"""`ImuPlugin`: inertial recordings -> a patch transformer -> the anchor's space."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from anchorbind.errors import InputError
from anchorbind.modalities.imu.config import ImuConfig
from anchorbind.modalities.imu.processor import ImuProcessor
from anchorbind.plugin import ModalityPlugin
from anchorbind.trunks import build_vit

__all__ = ["ImuPlugin"]


class ImuPlugin(ModalityPlugin):
    """Accelerometer + gyroscope recordings, as ImageBind's IMU branch reads them.

    Batch: ``(B, channels, num_samples)`` float32 from
    :class:`~anchorbind.modalities.imu.processor.ImuProcessor`. Trunk: a timm ViT over
    ``patch_size``-sample patches of all channels (the linear stem of
    :func:`anchorbind.trunks.build_vit`); fixed logit scale 5 by default (ImageBind's). A
    head-worn IMU senses the wearer's motion, which the egocentric video frame only partly shows.
    """

    name: ClassVar[str] = "imu"
    prompt_templates: ClassVar[tuple[str, ...]] = ("a {}.", "someone doing {}.", "motion of a person {}.")
    perceives: ClassVar[tuple[str, ...]] = ("motion",)
    Config: ClassVar[type[ImuConfig]] = ImuConfig
    Processor: ClassVar[type[ImuProcessor]] = ImuProcessor
    sample_keys: ClassVar[tuple[str, ...]] = ("imu.npy",)
    config: ImuConfig

    @classmethod
    def example_inputs(cls) -> list[Any]:
        """Walking-like and turning-like recordings (6 x 2500 and 1800 x 6) and a ``.npy``'s bytes."""
        import io

        import numpy as np

        time = np.arange(2500) / 200.0
        walk = np.stack([np.sin(2 * np.pi * 2 * time), np.zeros_like(time), 9.81 + np.cos(2 * np.pi * 2 * time),
                         0.1 * np.sin(time), np.zeros_like(time), np.zeros_like(time)]).astype(np.float32)
        turn = np.zeros((1800, 6), dtype=np.float32)
        turn[:, 2], turn[:, 5] = 9.81, 1.5
        recording = io.BytesIO()
        np.save(recording, (walk[:, :1000] * 0.5).astype(np.float32), allow_pickle=False)
        return [walk, turn, recording.getvalue()]

    @classmethod
    def example_bad_inputs(cls) -> list[Any]:
        """Empty bytes, bytes that are no .npy, NaN values, a wrong channel count, too few samples, a wrong type."""
        import numpy as np

        return [b"", b"not an array", np.full((6, 100), np.nan, dtype=np.float32),
                np.zeros((5, 100), dtype=np.float32), np.zeros((6, 2), dtype=np.float32), object()]

    def build_trunk(self) -> tuple[nn.Module, int]:
        """A headless timm ViT with the linear patch stem over ``(channels, num_samples)``."""
        cfg = self.config
        trunk = build_vit((cfg.channels, cfg.num_samples), cfg, stem="linear")
        return trunk, trunk.num_features

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(B, width)`` of a ``(B, channels, num_samples)`` batch."""
        cfg = self.config
        if not isinstance(batch, torch.Tensor) or batch.ndim != 3 or tuple(batch.shape[1:]) != (cfg.channels,
                                                                                               cfg.num_samples):
            raise InputError(batch, f"expected a float tensor (B, {cfg.channels}, {cfg.num_samples}) from "
                                    "load_batch()", self.name)
        param = next(self.trunk.parameters())
        return self.trunk(batch.to(device=param.device, dtype=param.dtype))
