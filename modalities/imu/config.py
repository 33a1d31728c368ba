"""`ImuConfig`: how inertial recordings are read, windowed and encoded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from anchorbind.errors import ConfigError
from anchorbind.trunks import ViTPluginConfig, vit_problems

__all__ = ["ImuConfig"]


@dataclass
class ImuConfig(ViTPluginConfig):
    """Settings of the IMU plugin.

    Reading (a float ``.npy`` or array shaped ``(channels, samples)`` or ``(samples, channels)``):
        channels: signals per recording (6: accelerometer x, y, z then gyroscope x, y, z, as Ego4D).
        num_samples: window length fed to the trunk (2000: ImageBind's 10 s at 200 Hz).
            Longer recordings are cropped (the centre window; a random one when training),
            shorter ones padded by repeating their last reading. Resample recordings to one
            rate first: the trunk sees samples, not seconds.
        min_samples: shorter recordings are refused (too little signal to pad from).
        scale: per-channel divisors (``channels`` values); ImageBind published no IMU
            normalisation, so the default keeps the recorded units.
        max_samples: longer recordings are refused before they are read (``None``: no limit).

    Trunk: a timm ViT over ``patch_size``-sample patches of all channels
    (:func:`anchorbind.trunks.build_vit` with the linear stem; tiny defaults). ImageBind's IMU
    branch: ``patch_size`` 8, ``width`` 512, ``depth`` 6, ``num_heads`` 8, drop path 0.7,
    bias-free stem with LayerNorm, ``attn_bias_kv``, class token, head dropout 0.5. The logit
    scale is fixed at 5, ImageBind's IMU setting.
    """

    logit_scale_init: float = 5.0
    logit_scale_learnable: bool = False

    channels: int = 6
    num_samples: int = 2000
    min_samples: int = 8
    max_samples: int | None = 10_000_000
    scale: list[float] = field(default_factory=lambda: [1.0] * 6)

    patch_size: int = 8

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError("anchorbind.modalities.imu: " + "; ".join(problems))

    def _problems(self) -> Iterator[str]:
        if self.channels <= 0:
            yield f"channels must be positive, got {self.channels}"
        if len(self.scale) != self.channels:
            yield f"scale needs {self.channels} values (one per channel), got {len(self.scale)}"
        elif not all(value > 0 for value in self.scale):
            yield f"scale values must be positive, got {self.scale}"
        if not 0 < self.min_samples <= self.num_samples:
            yield f"need 0 < min_samples <= num_samples, got {self.min_samples} and {self.num_samples}"
        if self.max_samples is not None and self.max_samples < self.num_samples:
            yield f"max_samples must be at least num_samples ({self.num_samples}) or null, got {self.max_samples}"
        yield from vit_problems(self)
        if self.patch_stride is not None:
            yield "patch_stride is not supported by the IMU's linear patch stem (patches never overlap)"
        if self.patch_size > 0 and self.num_samples < self.patch_size:
            yield f"num_samples {self.num_samples} is shorter than one patch ({self.patch_size})"
