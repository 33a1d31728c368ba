"""`DepthConfig`: how depth maps are read, turned into normalised disparity, and encoded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from anchorbind.errors import ConfigError
from anchorbind.trunks import ViTPluginConfig, crop_flip_problems, vit_problems

__all__ = ["NORMALIZATIONS", "DepthConfig"]

NORMALIZATIONS = ("per_image", "fixed")


@dataclass
class DepthConfig(ViTPluginConfig):
    """Settings of the depth plugin. Every distance is in metres.

    Reading:
        png_scale: PNG depth units per metre. NYU Depth v2 and SUN RGB-D store millimetres in
            16-bit PNGs, hence 1000. (SUN RGB-D's raw files are bit-shifted; convert them to
            millimetres first.)
        allow_8bit_png: accept 8-bit PNGs (values / ``png_scale``). Refused by default: 8 bits
            cannot hold metric depth (1 mm steps end at 25.5 cm), so an 8-bit "depth" PNG is
            almost always a visualisation that has lost its scale.
        max_invalid_fraction: a map with more than this fraction of pixels without a measurement
            (zero depth) is refused as unusable; fewer are filled (see ``max_depth``).
        max_pixels: a map with more values than this is refused (``None``: no limit), a file
            from its header (PNG size, ``.npy`` shape) before it is decoded. The default, 2**26
            (~67 Mpx: 256 MiB per float32 copy, and preprocessing holds a few), is far above
            any depth sensor (Kinect/RealSense ~1 Mpx) or stereo/monocular map (8K: 33 Mpx).

    Disparity:
        min_depth, max_depth: depth is clipped to this range before conversion (any finite
            value: 1e30 m reads as ``max_depth``, 1e-30 m as ``min_depth``). 0.1 m is below
            the near limit of common RGB-D sensors (Kinect ~0.5 m, RealSense ~0.1-0.3 m) and
            20 m is beyond their far limit, so clipping only tames outliers; it also bounds the
            disparity at ``1/min_depth``. Pixels with no measurement are filled with
            ``max_depth``: the smallest disparity, i.e. "far away / nothing there".
        baseline, focal: stereo baseline (metres) and focal length (pixels). When both are set,
            disparity is ``baseline * focal / depth`` in pixels (ImageBind/Omnivore convert
            SUN RGB-D depth this way); otherwise it is ``1 / depth`` in 1/m. They differ by a
            constant factor, so they only matter with ``normalization="fixed"``.
        normalization: ``"per_image"`` (default) standardises each disparity map by the mean
            and std of its own valid pixels. That makes the input invariant to the disparity's
            scale and shift, so metric sensor depth, disparity with any intrinsics and the
            affine-invariant inverse depth of monocular estimators (MiDaS, Depth Anything) all
            look alike, and no dataset statistics or units can be wrong. It drops the absolute
            distance scale; to keep it use ``"fixed"``: ``(disparity - disparity_mean) /
            disparity_std`` with statistics of your training data, in the units of the
            disparity (1/m, or pixels with intrinsics), e.g. from
            :meth:`DepthPlugin.disparity_statistics`.
        disparity_mean, disparity_std: the statistics for ``normalization="fixed"`` (required there).

    Training augmentation (``load(..., train=True)``):
        train_crop_scale: area range of the random resized crop (evaluation takes the centre
            square); small, so the depth map keeps showing what the paired image shows.
        train_hflip_prob: probability of a horizontal flip; the anchor's pooled embedding is
            close to flip-invariant (its ImageNet training used flips), so a flip keeps the pair.

    Trunk (a 1-channel timm ``VisionTransformer`` with the fields of
    :class:`~anchorbind.trunks.ViTPluginConfig`; ImageBind's depth branch is ``image_size`` 224,
    ``patch_size`` 16, ``width`` 384, ``depth`` 12, ``num_heads`` 8 with its stem and attention
    options, and its input normalisation is ``anchorbind.pipelines.imagebind.DEPTH_PRESET``):
        image_size: side of the square input; any input size is resized to it.
        patch_size, width, depth, num_heads, mlp_ratio, drop_path_rate: ViT shape. ``depth`` is
            the number of transformer blocks (the defaults are tiny, for CPU).
        global_pool: ``"avg"`` (mean of the patch tokens, the default) or ``"token"`` (the class
            token, as ImageBind). On the demo world the tiny trunk binds faster with ``"avg"``
            (depth->image category R@1 after 150 steps: 0.25 against 0.16 with the token;
            ``bench/bench_depth_binding.py``).

    By default the logit scale is fixed at 5, as in ImageBind's depth encoder.
    """

    logit_scale_init: float = 5.0
    logit_scale_learnable: bool = False

    png_scale: float = 1000.0
    allow_8bit_png: bool = False
    max_invalid_fraction: float = 0.9
    max_pixels: int | None = 1 << 26

    min_depth: float = 0.1
    max_depth: float = 20.0
    baseline: float | None = None
    focal: float | None = None
    normalization: str = "per_image"
    disparity_mean: float | None = None
    disparity_std: float | None = None

    train_crop_scale: tuple[float, float] = (0.8, 1.0)
    train_hflip_prob: float = 0.5

    image_size: int = 112

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError("anchorbind.modalities.depth: " + "; ".join(problems))

    def _problems(self) -> Iterator[str]:
        if self.png_scale <= 0:
            yield f"png_scale must be positive, got {self.png_scale}"
        if not 0.0 <= self.max_invalid_fraction <= 1.0:
            yield f"max_invalid_fraction must be in [0, 1], got {self.max_invalid_fraction}"
        if self.max_pixels is not None and self.max_pixels <= 0:
            yield f"max_pixels must be positive or null, got {self.max_pixels}"
        if not 0.0 < self.min_depth < self.max_depth:
            yield f"need 0 < min_depth < max_depth, got {self.min_depth} and {self.max_depth}"
        if (self.baseline is None) != (self.focal is None):
            yield "set both baseline and focal (stereo disparity) or neither (1/depth)"
        if self.baseline is not None and self.focal is not None and (self.baseline <= 0 or self.focal <= 0):
            yield f"baseline and focal must be positive, got {self.baseline} and {self.focal}"
        if self.normalization not in NORMALIZATIONS:
            yield f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
        if self.normalization == "fixed" and (self.disparity_mean is None or self.disparity_std is None):
            yield ("normalization='fixed' needs disparity_mean and disparity_std "
                   "(compute them with DepthPlugin.disparity_statistics on training maps)")
        if self.disparity_std is not None and self.disparity_std <= 0:
            yield f"disparity_std must be positive, got {self.disparity_std}"
        yield from crop_flip_problems(self.train_crop_scale, self.train_hflip_prob)
        yield from vit_problems(self)
        if self.image_size <= 0:
            yield f"image_size must be positive, got {self.image_size}"
        elif self.patch_size > 0 and self.patch_stride is None and self.image_size % self.patch_size:
            yield f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
