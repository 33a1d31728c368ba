"""The frozen image anchor: any timm image model, its own preprocessing, no gradients ever.

Every other modality is trained *towards* this encoder's embedding space, so it must never
change: its parameters do not require grad, it stays in eval mode even when a parent module
calls ``.train()`` (BatchNorm statistics and dropout would otherwise drift), and its forward
pass builds no autograd graph. Its preprocessing (size, crop, interpolation, mean/std) comes from
the model's own timm ``pretrained_cfg``, so swapping the architecture cannot silently feed it
images normalised for another network. That preprocessing is the anchor's
:class:`~anchorbind.image_processor.ImageProcessor` (``anchor.processor``), which can also be
built from the config alone (:func:`~anchorbind.image_processor.create_image_processor`) where
only images are read and no model is needed.

Example::

    anchor = FrozenAnchor()                             # EfficientNet-Lite0, packaged weights
    anchor = FrozenAnchor({"model": "resnet10t", "weights": "ckpt.safetensors"})
    emb = anchor(anchor.processor.load_batch(["cat.jpg", "dog.png"]))   # (2, embed_dim), unit norm
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from anchorbind.anchor_config import WEIGHT_MODES, AnchorConfig, create_model_kwargs, validate_anchor_config
from anchorbind.config import config_to_dict, from_dict
from anchorbind.errors import ConfigError, InputError
from anchorbind.heads import l2_normalize
from anchorbind.image_processor import IMAGE_SAMPLE_KEYS, ImageProcessor, ImageSource
from anchorbind.weights import (
    COUNTER_SUFFIX,
    CheckpointError,
    load_state_dict_file,
    load_weights_into,
    packaged_efficientnet_lite0,
)

__all__ = ["AnchorConfig", "FrozenAnchor", "ImageProcessor", "ImageSource"]

logger = logging.getLogger(__name__)

INIT_SEED = 0
"""Seed for building the model, so ``weights="none"`` is the same network (and identity) every run."""


class FrozenAnchor(nn.Module):
    """A frozen timm image encoder whose L2-normalised pooled features define the shared space.

    Accepts one image per :meth:`load` call: a path, encoded bytes (JPEG/PNG/WebP/...), a
    ``PIL.Image`` or an ``HxWx3`` / ``HxW`` uint8 array; see :meth:`input_description` for the
    resolution and normalisation the configured model expects.

    Attributes:
        config: the :class:`AnchorConfig` it was built from.
        model: the timm model (frozen, eval mode).
        processor: its :class:`~anchorbind.image_processor.ImageProcessor` (reading, preprocessing,
            batching; no model), what data loaders get; :meth:`load`, :meth:`collate` and
            :meth:`load_batch` delegate to it.
        embed_dim: width of the pooled features and of every modality's embeddings.
        data_config: timm data config (input_size, interpolation, crop_pct, mean, std).
        identity: ``"<model>|<source>|sha256:<16 hex>|<H>x<W>"``; the hash covers every weight
            tensor, so caches of embeddings from other weights or resolutions can be refused.
        memory_format: the layout of weights and input batches (``config.memory_format`` resolved).
    """

    name: ClassVar[str] = "image"
    sample_keys: ClassVar[tuple[str, ...]] = IMAGE_SAMPLE_KEYS

    def __init__(self, config: AnchorConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(config, AnchorConfig):
            config = from_dict(AnchorConfig, config, where="anchor")
        validate_anchor_config(config)
        self.config = config
        self.model, source = _build_model(config)
        self.model.requires_grad_(False)
        self.model.eval()
        if config.output == "head":
            if not getattr(self.model, "num_classes", 0):
                raise ConfigError(f"anchor.output='head': {config.model!r} was built without a head "
                                  "(num_classes=0); set anchor.model_kwargs.num_classes")
            self.embed_dim = int(self.model.num_classes)
        else:
            self.embed_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        args = {"input_size": (3, config.image_size, config.image_size)} if config.image_size else {}
        # The built model's own data config; create_image_processor(config) resolves the same one
        # from timm's registry without a model (tests/test_processors.py checks they agree).
        self.processor = ImageProcessor(config, data_config=resolve_data_config(args=args, model=self.model))
        _, height, width = self.data_config["input_size"]
        self.identity = f"{config.model}|{source}|sha256:{_weights_digest(self.model)}|{height}x{width}"
        self.memory_format = _memory_format(config.memory_format, self.model)
        self.model.to(memory_format=self.memory_format)
        logger.info("anchor %s: embed_dim=%d, input %s", self.identity, self.embed_dim, self.data_config)

    # ------------------------------------------------------------------ frozen-ness
    def train(self, mode: bool = True) -> FrozenAnchor:
        """Stay in eval mode whatever ``mode`` is: the anchor's BatchNorm/dropout never train."""
        return super().train(False)

    # ------------------------------------------------------------------ inputs: the processor's
    @property
    def data_config(self) -> dict[str, Any]:
        """timm data config (input_size, interpolation, crop_pct, mean, std): the processor's."""
        return self.processor.data_config

    def load(self, source: ImageSource, *, train: bool = False) -> torch.Tensor:
        """``self.processor.load(source, train=train)``: one image -> a ``(3, H, W)`` tensor
        (see :meth:`ImageProcessor.load <anchorbind.image_processor.ImageProcessor.load>`)."""
        return self.processor.load(source, train=train)

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        """``self.processor.collate(samples)``: a ``(B, 3, H, W)`` batch."""
        return self.processor.collate(samples)

    def load_batch(self, sources: Sequence[ImageSource], *, train: bool = False) -> torch.Tensor:
        """``self.processor.load_batch(sources, train=train)``."""
        return self.processor.load_batch(sources, train=train)

    def batch_size(self, batch: torch.Tensor) -> int:
        """The number of images in a collated batch."""
        return self.processor.batch_size(batch)

    def input_description(self) -> str:
        """What :meth:`load` accepts and how it is preprocessed (for docs and the CLI)."""
        return self.processor.input_description()

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
        """Pooled, un-normalised features ``(B, embed_dim)``: timm's pre-logits output, or the
        head's output with ``config.output="head"``."""
        x = self._check_batch(images)
        pre_logits = self.config.output != "head"
        with torch.no_grad():
            features = self.model.forward_head(self.model.forward_features(x), pre_logits=pre_logits)
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
        return images.to(device=param.device, dtype=param.dtype, memory_format=self.memory_format)

    def extra_repr(self) -> str:
        return f"identity={self.identity!r}, embed_dim={self.embed_dim}"


# ---------------------------------------------------------------------- building
def _build_model(config: AnchorConfig) -> tuple[nn.Module, str]:
    """Create the timm model and load its weights; returns it and the weights' source kind."""
    kwargs = create_model_kwargs(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        if config.weights == "timm":
            return _create_timm_pretrained(config, kwargs), "timm"
        try:
            model = timm.create_model(config.model, pretrained=False, **kwargs)
        except (TypeError, ValueError, AssertionError, RuntimeError) as err:
            raise ConfigError(f"anchor: timm could not build {config.model!r} with {kwargs} "
                              f"({type(err).__name__}: {err})") from None
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
    # the head is optional for a classifier anchor, but it *is* the embedding with output="head"
    optional = [] if config.output == "head" else _classifier_keys(model)
    report = load_weights_into(model, state, source_name=repr(str(path)), optional_keys=optional)
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


def _memory_format(choice: str, model: nn.Module) -> torch.memory_format:
    """The layout ``anchor.memory_format`` names; ``"auto"``: channels-last for a convolutional network."""
    if choice == "auto":
        convolutions = sum(isinstance(m, nn.Conv2d) for m in model.modules())
        choice = "channels_last" if convolutions > 1 else "contiguous"
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


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
