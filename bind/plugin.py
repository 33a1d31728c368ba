"""The modality plugin contract.

A plugin turns one kind of raw input (a path, bytes, an array, a string) into an embedding in
the frozen anchor's space. It owns everything modality-specific: reading and checking raw
inputs, batching, the trunk, the projection head, the logit scale and an optional *native*
objective that does not pass through the anchor (the visiocentrism mitigation). The core
(`bind/`) only ever talks to this interface, so a new modality is one folder and zero core edits.

A minimal plugin::

    @dataclass
    class ImuConfig(PluginConfig):
        channels: int = 6

    class ImuPlugin(ModalityPlugin):
        name = "imu"
        Config = ImuConfig
        sample_keys = ("imu.npy",)

        def build_trunk(self) -> tuple[nn.Module, int]: ...
        def load(self, source, *, train=False): ...
        def collate(self, samples): ...
        def forward_features(self, batch): ...

and register it with ``@register_modality`` or an entry point in the group
``anchorbind.modalities``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from anchorbind.config import config_to_dict, from_dict
from anchorbind.errors import InputError
from anchorbind.heads import LogitScale, ProjectionHead, l2_normalize

__all__ = ["InputSource", "ModalityPlugin", "PluginConfig", "move_to_device", "read_bytes"]

InputSource = str | Path | bytes | np.ndarray | torch.Tensor
"""What ``ModalityPlugin.load`` accepts: a path, raw file bytes, or an array (per plugin)."""


@dataclass
class PluginConfig:
    """Settings every plugin has. Plugins subclass this and add their own fields.

    Attributes:
        logit_scale_init: initial InfoNCE inverse temperature (ImageBind: text 1/0.07, audio 20, depth 5).
        logit_scale_learnable: learn the scale (a parameter) or keep it fixed (a buffer).
        logit_scale_max: clamp for the scale (CLIP: 100).
        head_dropout: dropout before the projection.
        native_loss_weight: weight λ of the plugin's native objective (0 disables it).
    """

    logit_scale_init: float = 1.0 / 0.07
    logit_scale_learnable: bool = True
    logit_scale_max: float = 100.0
    head_dropout: float = 0.0
    native_loss_weight: float = 0.0


class ModalityPlugin(nn.Module, ABC):
    """Base class of every modality: raw input -> preprocessed sample -> batch -> embedding.

    Subclasses set the class attributes, implement :meth:`build_trunk`, :meth:`load`,
    :meth:`collate` and :meth:`forward_features`, and may override :meth:`forward` (e.g. to
    average several clips) and :meth:`native_loss`.

    Class attributes:
        name: the registry name (also the key of its embeddings and of its loss terms).
        Config: the plugin's config dataclass (a subclass of :class:`PluginConfig`).
        sample_keys: WebDataset keys (file extensions) holding this modality in a shard, in
            order of preference, e.g. ``("flac", "wav")``.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    sample_keys: ClassVar[tuple[str, ...]] = ()

    # What the core needs to know about a modality, declared here so that ``anchorbind`` never
    # names one: evaluation, zero-shot and the report read these, never a modality name.
    encodes_text: ClassVar[bool] = False
    """True for a plugin whose inputs are natural-language strings. Such a plugin serves as the
    caption / prompt modality of evaluation (zero-shot prompts, caption-stated attributes)."""
    prompt_templates: ClassVar[tuple[str, ...]] = ("a {}.",)
    """Zero-shot prompt templates (one ``{}`` for the class name) that name this modality, e.g.
    ``("a {}.", "the sound of a {}.")``; the text plugin embeds them to classify this modality."""
    perceives: ClassVar[tuple[str, ...]] = ()
    """Observability groups (the values of a sample's ``observability`` JSON, e.g. ``"audio"``)
    that this modality's inputs carry besides what is visible, for data without ``carried_by``."""

    @classmethod
    def example_inputs(cls) -> list[Any]:
        """A few valid raw inputs for :meth:`load` (at least two, of different content).

        Used by the plugin contract checks (``anchorbind check-plugin``) and the docs; override
        it so that the checks can embed real inputs. The default has none.
        """
        return []

    @classmethod
    def example_bad_inputs(cls) -> list[Any]:
        """Raw inputs that :meth:`load` must refuse with an :class:`~anchorbind.errors.InputError`."""
        return [b"", object()]

    def __init__(self, config: PluginConfig | Mapping[str, Any] | None = None, *, embed_dim: int) -> None:
        super().__init__()
        if not isinstance(config, self.Config):
            config = from_dict(self.Config, config, where=f"modalities.{self.name}")
        self.config = config
        self.embed_dim = int(embed_dim)
        trunk, trunk_dim = self.build_trunk()
        self.trunk = trunk
        self.trunk_dim = int(trunk_dim)
        self.head = ProjectionHead(self.trunk_dim, self.embed_dim, config.head_dropout)
        self.logit_scale = LogitScale(
            config.logit_scale_init, config.logit_scale_learnable, config.logit_scale_max
        )

    # ----------------------------------------------------------------- to implement
    @abstractmethod
    def build_trunk(self) -> tuple[nn.Module, int]:
        """Build the trunk and return it with the width of its pooled features."""

    @abstractmethod
    def load(self, source: InputSource, *, train: bool = False) -> Any:
        """Read and preprocess one raw input into a model-ready sample.

        ``train`` enables stochastic preprocessing (random crops, random clips). Invalid input
        raises :class:`~anchorbind.errors.InputError` naming the input and the reason.
        """

    @abstractmethod
    def collate(self, samples: Sequence[Any]) -> Any:
        """Batch samples returned by :meth:`load` (a tensor or a dict of tensors)."""

    @abstractmethod
    def forward_features(self, batch: Any) -> torch.Tensor:
        """Pooled trunk features ``(B, trunk_dim)``: the plugin's *native* representation."""

    # ----------------------------------------------------------------- defaults
    def forward(self, batch: Any) -> torch.Tensor:
        """L2-normalised embeddings ``(B, embed_dim)`` in the anchor's space."""
        return l2_normalize(self.head(self.forward_features(batch)))

    def forward_with_features(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forward_features(batch), forward(batch))`` in one pass (evaluation needs both).

        Override together with :meth:`forward` when the embedding is not ``head(features)``.
        """
        features = self.forward_features(batch)
        return features, l2_normalize(self.head(features))

    def native_loss(self, batch: Any) -> torch.Tensor | None:
        """An auxiliary objective that does not pass through the anchor, or ``None``.

        Used as the visiocentrism mitigation (weighted by ``config.native_loss_weight``): it keeps
        information in the trunk that the image space cannot represent.
        """
        return None

    def input_description(self) -> str:
        """What :meth:`load` accepts, for docs and ``anchorbind modalities``."""
        return (self.__doc__ or self.name).strip().splitlines()[0]

    def config_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)

    def load_batch(self, sources: Sequence[InputSource], *, train: bool = False) -> Any:
        """``collate([load(s) for s in sources])``."""
        return self.collate([self.load(s, train=train) for s in sources])

    def batch_size(self, batch: Any) -> int:
        """The number of samples in a collated batch."""
        if isinstance(batch, torch.Tensor):
            return batch.shape[0]
        if isinstance(batch, Mapping):
            return self.batch_size(next(iter(batch.values())))
        return len(batch)

    @classmethod
    def config_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Config)]


def move_to_device(batch: Any, device: torch.device | str) -> Any:
    """Move a tensor, or a (nested) dict/list of tensors, to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def read_bytes(source: str | Path | bytes, modality: str) -> bytes:
    """The bytes of a path or bytes input; an unreadable file is an :class:`InputError`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise InputError(source, f"unreadable file ({err.strerror or err})", modality) from None
    if not data:
        raise InputError(source, "empty file", modality)
    return data
