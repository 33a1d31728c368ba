"""The anchor's processor: images decoded and preprocessed exactly as the frozen model expects.

:class:`ImageProcessor` is the image counterpart of a plugin's processor: built from an
:class:`~anchorbind.anchor_config.AnchorConfig` alone, with no network and no weights, so data
loader workers, ``anchorbind shards`` and anything else that only reads images never build the
anchor. Its preprocessing (size, crop, interpolation, mean/std) is timm's data config for the
configured model, resolved from the model's registered ``pretrained_cfg`` (plus the
``image_size`` override) — the same config :class:`~anchorbind.anchor.FrozenAnchor` resolves
from the built model, so both give identical tensors. Only models timm has no registered
``pretrained_cfg`` for (``hf-hub:`` names, whose config lives on the hub) are built once, without
weights, to read it.

Example::

    processor = create_image_processor({"model": "resnet50", "image_size": 160})
    batch = processor.load_batch(["cat.jpg", "dog.png"])        # (2, 3, 160, 160)
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import create_transform, resolve_data_config

from anchorbind.anchor_config import AnchorConfig, create_model_kwargs, validate_anchor_config
from anchorbind.config import from_dict
from anchorbind.errors import InputError
from anchorbind.processor import Processor, read_bytes

__all__ = [
    "IMAGE_SAMPLE_KEYS",
    "ImageProcessor",
    "ImageSource",
    "create_image_processor",
    "resolve_image_data_config",
]

IMAGE_MODALITY = "image"
"""The anchor's modality name (``anchorbind.registry.ANCHOR_MODALITY``)."""
IMAGE_SAMPLE_KEYS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
"""WebDataset keys holding the anchor's image in a shard, in order of preference."""

ImageSource = str | Path | bytes | Image.Image | np.ndarray
"""What :meth:`ImageProcessor.load` accepts."""


def resolve_image_data_config(config: AnchorConfig) -> dict[str, Any]:
    """timm's data config (input_size, interpolation, crop_pct, crop_mode, mean, std) for ``config``.

    Resolved from ``timm.models.get_pretrained_cfg(config.model)`` with ``image_size`` as the
    ``input_size`` override, which is what ``resolve_data_config(args, model=model)`` reads from a
    built model. A name timm has no registered pretrained config for (``hf-hub:...``) is built
    once without weights (its config comes with the architecture) and dropped.
    """
    args = {"input_size": (3, config.image_size, config.image_size)} if config.image_size else {}
    pretrained_cfg = None if ":" in config.model else timm.models.get_pretrained_cfg(config.model)
    if pretrained_cfg is not None:
        return resolve_data_config(args=args, pretrained_cfg=pretrained_cfg.to_dict())
    with torch.random.fork_rng(devices=[]):  # building must not move the caller's RNG
        model = timm.create_model(config.model, pretrained=False, **create_model_kwargs(config))
    return resolve_data_config(args=args, model=model)


class ImageProcessor(Processor):
    """An RGB image (path, encoded bytes, PIL image or HxWx3 uint8 array), preprocessed as the anchor expects.

    Accepts one image per :meth:`load` call: a path, encoded bytes (JPEG/PNG/WebP/...; EXIF
    rotation applied), a ``PIL.Image`` or an ``HxW`` / ``HxWx1`` / ``HxWx3`` / ``HxWx4`` uint8
    array. Evaluation preprocessing is timm's eval transform for the model's data config;
    ``train=True`` uses a light, meaning-preserving augmentation: random resized crops of at
    least half the image, no flips or colour jitter (which would contradict paired text such as
    "red" or "left").

    Attributes:
        config: the :class:`~anchorbind.anchor_config.AnchorConfig` it was built from.
        data_config: timm data config (input_size, interpolation, crop_pct, crop_mode, mean, std).
    """

    def __init__(
        self,
        config: AnchorConfig,
        *,
        modality: str = IMAGE_MODALITY,
        sample_keys: tuple[str, ...] = IMAGE_SAMPLE_KEYS,
        data_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(config, modality=modality, sample_keys=sample_keys)
        self.data_config: dict[str, Any] = (
            dict(data_config) if data_config is not None else resolve_image_data_config(config)
        )
        self._transforms: dict[bool, Callable[[Image.Image], torch.Tensor]] = {}

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # the transforms are rebuilt from data_config on first use: the pickle stays a few KB
        state = self.__dict__.copy()
        state["_transforms"] = {}
        return state

    def _transform(self, train: bool) -> Callable[[Image.Image], torch.Tensor]:
        transform = self._transforms.get(train)
        if transform is None:
            if train:
                transform = create_transform(
                    **self.data_config, is_training=True, scale=(0.5, 1.0), hflip=0.0, color_jitter=None
                )
            else:
                transform = create_transform(**self.data_config, is_training=False)
            self._transforms[train] = transform
        return transform

    # ------------------------------------------------------------------ the contract
    def load(self, source: ImageSource, *, train: bool = False) -> torch.Tensor:
        """Read one image and preprocess it with the model's own transform.

        Args:
            source: a path, encoded image bytes, a ``PIL.Image``, or a uint8 array ``HxW``,
                ``HxWx1``, ``HxWx3`` or ``HxWx4`` (alpha dropped).
            train: use the training transform (random resized crop, scale 0.5-1).

        Returns:
            A float tensor ``(3, H, W)`` normalised with the model's mean/std.

        Raises:
            InputError: naming the input when it is unreadable, not an image, of the wrong
                shape / dtype / type, or over ``config.max_pixels`` (read from a file's header,
                before decoding).
        """
        return self._transform(train)(_to_rgb(source, getattr(self.config, "max_pixels", None)))

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack loaded images into a ``(B, 3, H, W)`` batch."""
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of images")
        return torch.stack(list(samples))

    def batch_size(self, batch: torch.Tensor) -> int:
        """The number of images in a collated batch."""
        return int(batch.shape[0])

    def input_description(self) -> str:
        """What :meth:`load` accepts and how it is preprocessed (for docs and the CLI)."""
        dc = self.data_config
        return (
            "an RGB image (path, encoded bytes, PIL image or HxWx3 uint8 array), resized "
            f"({dc['interpolation']}, crop_pct={dc['crop_pct']}) "
            f"to {dc['input_size'][1]}x{dc['input_size'][2]}, "
            f"normalised with mean={tuple(dc['mean'])} std={tuple(dc['std'])}"
        )


def create_image_processor(config: AnchorConfig | Mapping[str, Any] | None = None) -> ImageProcessor:
    """The anchor's :class:`ImageProcessor` for ``config``, without building the anchor.

    The config is validated as :class:`~anchorbind.anchor.FrozenAnchor` validates it (unknown
    keys, unknown timm models, bad sizes are :class:`~anchorbind.errors.ConfigError`).
    """
    if not isinstance(config, AnchorConfig):
        config = from_dict(AnchorConfig, config, where="anchor")
    validate_anchor_config(config)
    return ImageProcessor(config)


# ---------------------------------------------------------------------- decoding
def _to_rgb(source: Any, max_pixels: int | None = None) -> Image.Image:
    """Any accepted image input as an RGB ``PIL.Image`` (EXIF rotation applied for files).

    ``max_pixels``: refuse larger images; a file's size comes from its header, before decoding.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, source)
        return _convert(source, source)
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_pixels((source.shape[1], source.shape[0]), max_pixels, source)
        return _array_to_image(source)
    if isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        data = read_bytes(source, IMAGE_MODALITY)
        try:
            with warnings.catch_warnings():
                # our max_pixels is the limit: Pillow's DecompressionBombWarning would only repeat it
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(io.BytesIO(data))
            with opened:
                _check_pixels(opened.size, max_pixels, source)
                image = ImageOps.exif_transpose(opened)
                return _convert(image, source)
        except UnidentifiedImageError:
            raise InputError(source, "not an image (no known image format)", IMAGE_MODALITY) from None
        except Image.DecompressionBombError as err:
            raise InputError(source, f"image too large: Pillow refuses it as a decompression bomb ({err})",
                             IMAGE_MODALITY) from None
        except InputError:
            raise
        except Exception as err:  # Pillow raises many types (OSError, SyntaxError, struct.error ...)
            raise InputError(
                source, f"corrupt or truncated image ({type(err).__name__}: {err})", IMAGE_MODALITY
            ) from None
    raise InputError(
        source,
        f"unsupported type {type(source).__name__}; pass a path, image bytes, a PIL image or a uint8 array",
        IMAGE_MODALITY,
    )


def _check_pixels(size: tuple[int, int], max_pixels: int | None, source: Any) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(source, f"image too large: {width}x{height} = {width * height} pixels > max_pixels "
                                 f"{max_pixels}", IMAGE_MODALITY)


def _convert(image: Image.Image, source: Any) -> Image.Image:
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise InputError(source, f"corrupt or truncated image ({err})", IMAGE_MODALITY) from None


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise InputError(array, f"expected a uint8 array (0-255), got dtype {array.dtype}", IMAGE_MODALITY)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise InputError(array, "expected an HxW, HxWx1, HxWx3 or HxWx4 array", IMAGE_MODALITY)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(array, "empty image", IMAGE_MODALITY)
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
