"""`ThermalConfig`: how single-channel thermal images are read, scaled and encoded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from anchorbind.errors import ConfigError
from anchorbind.trunks import ViTPluginConfig, crop_flip_problems, vit_problems

__all__ = ["SCALINGS", "ThermalConfig"]

SCALINGS = ("dtype", "per_image")


@dataclass
class ThermalConfig(ViTPluginConfig):
    """Settings of the thermal plugin.

    Reading (a grey-level image: 8- or 16-bit PNG/TIFF, JPEG, or an ``HxW`` array):
        scaling: ``"dtype"`` divides by the integer type's maximum (255 or 65535), so a
            camera's fixed radiometric mapping is kept across images (LLVIP's 8-bit frames);
            ``"per_image"`` stretches each image's own min..max to 0..1, for raw 16-bit
            sensor counts that occupy a narrow band. Float inputs must already lie in [0, 1]
            with ``"dtype"``.
        mean, std: the scaled values are normalised as ``(x - mean) / std``. ImageBind published
            no thermal preprocessing; the defaults (0 and 1) leave the 0..1 values as they are,
            which reproduces its LLVIP numbers better than ImageNet-style normalisation in
            public re-implementations (ImageBind pull request #73).
        max_pixels: an image with more pixels is refused before it is decoded (``None``: no
            limit). 2**26, as the anchor's.

    Geometry: the short side is resized to ``image_size`` (bicubic, antialiased) and the centre
    square cropped; ``load(train=True)`` takes a random square of ``train_crop_scale`` of the
    area and flips it horizontally with ``train_hflip_prob``.

    Trunk: a 1-channel timm ViT (:class:`~anchorbind.trunks.ViTPluginConfig`; tiny defaults).
    ImageBind's thermal branch: ``image_size`` 224, ``patch_size`` 16, ``width`` 768,
    ``depth`` 12, ``num_heads`` 12, bias-free stem with LayerNorm, ``attn_bias_kv``, class
    token. The logit scale is fixed at 10, ImageBind's thermal setting.
    """

    logit_scale_init: float = 10.0
    logit_scale_learnable: bool = False

    scaling: str = "dtype"
    mean: float = 0.0
    std: float = 1.0
    max_pixels: int | None = 1 << 26
    train_crop_scale: tuple[float, float] = (0.8, 1.0)
    train_hflip_prob: float = 0.5

    image_size: int = 112

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError("anchorbind.modalities.thermal: " + "; ".join(problems))

    def _problems(self) -> Iterator[str]:
        if self.scaling not in SCALINGS:
            yield f"scaling must be one of {SCALINGS}, got {self.scaling!r}"
        if not self.std > 0:
            yield f"std must be positive, got {self.std}"
        if self.max_pixels is not None and self.max_pixels <= 0:
            yield f"max_pixels must be positive or null, got {self.max_pixels}"
        yield from crop_flip_problems(self.train_crop_scale, self.train_hflip_prob)
        yield from vit_problems(self)
        if self.image_size <= 0:
            yield f"image_size must be positive, got {self.image_size}"
        elif self.patch_size > 0 and self.image_size < self.patch_size:
            yield f"image_size {self.image_size} is smaller than patch_size {self.patch_size}"
