"""The modality plugin contract.

A plugin turns one kind of raw input (a path, bytes, an array, a string) into an embedding in
the frozen anchor's space. It owns everything modality-specific, in two parts:

- its :class:`~anchorbind.processor.Processor` (``Plugin.Processor``): reading and checking raw
  inputs, preprocessing and batching. Built from the config alone, no weights, picklable: this
  is what data loader workers and file converters get;
- the plugin itself (an ``nn.Module``): the trunk, the projection head, the logit scale and an
  optional *native* objective that does not pass through the anchor (the visiocentrism
  mitigation).

The core (`bind/`) only ever talks to these two interfaces, so a new modality is one folder and
zero core edits.

A minimal plugin::

    @dataclass
    class ImuConfig(PluginConfig):
        channels: int = 6

    class ImuProcessor(Processor):
        def load(self, source, *, train=False): ...
        def collate(self, samples): ...

    class ImuPlugin(ModalityPlugin):
        name = "imu"
        Config = ImuConfig
        Processor = ImuProcessor
        sample_keys = ("imu.npy",)

        def build_trunk(self) -> tuple[nn.Module, int]: ...
        def forward_features(self, batch): ...

    ImuPlugin.create_processor({"channels": 6})   # only the processor: no model is built

and register it with ``@register_modality`` or an entry point in the group
``anchorbind.modalities``.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from anchorbind.adapters import add_lora_adapters, freeze
from anchorbind.config import config_to_dict, from_dict
from anchorbind.errors import ConfigError
from anchorbind.heads import LogitScale, ProjectionHead, l2_normalize
from anchorbind.processor import InputSource, Processor, move_to_device, read_bytes

__all__ = ["InputSource", "ModalityPlugin", "PluginConfig", "Processor", "move_to_device", "read_bytes"]

logger = logging.getLogger(__name__)


@dataclass
class PluginConfig:
    """Settings every plugin has. Plugins subclass this and add their own fields.

    Attributes:
        logit_scale_init: initial InfoNCE inverse temperature (ImageBind: text 1/0.07, audio 20, depth 5).
        logit_scale_learnable: learn the scale (a parameter) or keep it fixed (a buffer).
        logit_scale_max: clamp for the scale (CLIP: 100).
        head_dropout: dropout before the projection.
        head_norm: a LayerNorm before the projection. ``False`` for a trunk whose pooled output
            already passed through its own final norm (ImageBind's layout, where that norm *is*
            the head's).
        native_loss_weight: weight λ of the plugin's native objective (0 disables it).
        pretrained: where the plugin's initial weights came from, for the model card's licence
            table (``{"weights": ..., "source": ..., "license": ...}``); set by importers such as
            ``anchorbind import-imagebind``, ``None`` for a plugin trained from scratch.
    """

    logit_scale_init: float = 1.0 / 0.07
    logit_scale_learnable: bool = True
    logit_scale_max: float = 100.0
    head_dropout: float = 0.0
    head_norm: bool = True
    native_loss_weight: float = 0.0
    pretrained: dict[str, str] | None = None


class ModalityPlugin(nn.Module, ABC):
    """Base class of every modality: raw input -> preprocessed sample -> batch -> embedding.

    Subclasses set the class attributes (``Processor`` among them: reading and batching live in
    a separate, model-free :class:`~anchorbind.processor.Processor`), implement
    :meth:`build_trunk` and :meth:`forward_features`, and may override :meth:`forward` (e.g. to
    average several clips) and :meth:`native_loss`. :meth:`load`, :meth:`collate`,
    :meth:`load_batch` and :meth:`batch_size` delegate to ``self.processor``, for convenience.

    Class attributes:
        name: the registry name (also the key of its embeddings and of its loss terms).
        Config: the plugin's config dataclass (a subclass of :class:`PluginConfig`).
        Processor: the plugin's :class:`~anchorbind.processor.Processor` subclass (required),
            built by :meth:`create_processor` from a config alone.
        sample_keys: WebDataset keys (file extensions) holding this modality in a shard, in
            order of preference, e.g. ``("flac", "wav")``.

    Attributes:
        processor: this plugin's processor, built from the same config.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    Processor: ClassVar[type[Processor]]
    sample_keys: ClassVar[tuple[str, ...]] = ()

    # What the core needs to know about a modality, declared here so that ``anchorbind`` never
    # names one: evaluation, zero-shot and the report read these, never a modality name.
    encodes_text: ClassVar[bool] = False
    """True for a plugin whose inputs are natural-language strings. Such a plugin serves as the
    caption / prompt modality of evaluation (zero-shot prompts, caption-stated attributes)."""
    prompt_templates: ClassVar[tuple[str, ...]] = ("a {}.",)
    """Zero-shot prompt templates (one ``{}`` for the class name) that name this modality, e.g.
    ``("a {}.", "the sound of a {}.")``; the text plugin embeds them to classify this modality."""
    path_fields: ClassVar[tuple[str, ...]] = ()
    """Config fields that name local files or folders (a backbone folder). A saved model bundles
    what they point at (``deps/``) and names it relative to itself, so it stays loadable when moved."""
    perceives: ClassVar[tuple[str, ...]] = ()
    """Observability groups (the values of a sample's ``observability`` JSON, e.g. ``"audio"``, or
    ``"visual"`` for another view of the scene such as a depth map) that this modality's inputs
    carry, for data without ``carried_by``: an attribute is carried when its observability is
    ``"both"`` (shared) or one of these. Empty = not declared: every attribute counts as carried."""

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

    @classmethod
    def create_processor(cls, config: PluginConfig | Mapping[str, Any] | None = None) -> Processor:
        """This modality's processor for ``config``, without building any model.

        The config is validated exactly as the plugin's own ``__init__`` does (unknown keys and
        bad values are :class:`~anchorbind.errors.ConfigError`), so a processor and a plugin
        built from one config always agree.

        Raises:
            TypeError: the class sets no ``Processor`` (a plugin written for the old contract).
        """
        processor_cls = getattr(cls, "Processor", None)
        if not (isinstance(processor_cls, type) and issubclass(processor_cls, Processor)):
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} must set the class attribute Processor to a subclass "
                "of anchorbind.processor.Processor (its load/collate), got "
                f"{processor_cls!r}"
            )
        if not isinstance(config, cls.Config):
            config = from_dict(cls.Config, config, where=f"modalities.{cls.name}")
        return processor_cls(config, modality=cls.name, sample_keys=tuple(cls.sample_keys))

    def __init__(self, config: PluginConfig | Mapping[str, Any] | None = None, *, embed_dim: int) -> None:
        super().__init__()
        if not isinstance(config, self.Config):
            config = from_dict(self.Config, config, where=f"modalities.{self.name}")
        self.config = config
        self.processor: Processor = type(self).create_processor(config)
        self.embed_dim = int(embed_dim)
        trunk, trunk_dim = self.build_trunk()
        self.trunk = trunk
        self.trunk_dim = int(trunk_dim)
        self.head = ProjectionHead(self.trunk_dim, self.embed_dim, config.head_dropout, norm=config.head_norm)
        self.logit_scale = LogitScale(
            config.logit_scale_init, config.logit_scale_learnable, config.logit_scale_max
        )
        self._apply_tuning()
        self._apply_gradient_checkpointing()

    # ----------------------------------------------------------------- tuning
    def _apply_tuning(self) -> None:
        """Freeze the trunk or add LoRA adapters to it when ``config.tuning`` says so.

        Plugins whose config has no ``tuning`` field (not a
        :class:`~anchorbind.tuning.TunableConfig`) train their whole trunk. A plugin that sets
        its trunk's tuning up itself (in :meth:`build_trunk`) overrides this with a no-op.
        """
        tuning = getattr(self.config, "tuning", "full")
        if tuning == "frozen":
            freeze(self.trunk)
        elif tuning == "lora":
            self.trunk = add_lora_adapters(self.trunk, self.config, where=f"anchorbind.modalities.{self.name}",
                                           what=self.trunk_description())

    def trunk_description(self) -> str:
        """How error messages name this plugin's trunk (e.g. with the backbone it was loaded from)."""
        return "the trunk"

    def train(self, mode: bool = True) -> ModalityPlugin:
        """Like ``nn.Module.train``, but a frozen trunk stays in eval mode (its dropout and drop path off),
        and gradient checkpointing (``config.gradient_checkpointing``) is on in training mode only."""
        super().train(mode)
        if getattr(self.config, "tuning", "full") == "frozen":
            self.trunk.eval()
        if getattr(self, "_gradient_checkpointing", False):
            self.set_gradient_checkpointing(mode)
        return self

    # ----------------------------------------------------------------- gradient checkpointing
    def _apply_gradient_checkpointing(self) -> None:
        """Switch the trunk's gradient checkpointing on when ``config.gradient_checkpointing`` says so.

        Plugins whose config has no such field (not a :class:`~anchorbind.tuning.TunableConfig`)
        never checkpoint. A frozen trunk keeps no activations for backward (nothing in it requires
        grad), so there the switch changes nothing: it is left off, and the log says so.
        """
        self._gradient_checkpointing = bool(getattr(self.config, "gradient_checkpointing", False))
        if self._gradient_checkpointing and getattr(self.config, "tuning", "full") == "frozen":
            logger.info("modalities.%s.gradient_checkpointing: the trunk is frozen and keeps no activations for "
                        "backward; nothing to checkpoint (it applies to tuning: full or lora)", self.name)
            self._gradient_checkpointing = False
        if self._gradient_checkpointing:
            self.set_gradient_checkpointing(self.training)

    def set_gradient_checkpointing(self, enable: bool) -> None:
        """Turn the trunk's activation checkpointing on (training) or off (evaluation, export).

        With it on, the trunk's blocks keep only their inputs in the forward pass and recompute
        their activations during backward (``torch.utils.checkpoint``, non-reentrant): about one
        extra trunk forward per step for activation memory that no longer grows with depth. The
        default drives the trunk's own switch: timm's ``set_grad_checkpointing(enable)``, or for a
        transformers model ``activation_checkpointing_enable`` (``gradient_checkpointing_enable``
        before transformers 5), switched on once since transformers checkpoints in training mode
        only. Override it for a trunk with neither.

        Raises:
            ConfigError: the trunk has no checkpointing switch, or says it does not support one.
        """
        trunk = self.trunk
        timm_switch = getattr(trunk, "set_grad_checkpointing", None)
        if callable(timm_switch):
            timm_switch(enable)
            return
        supported = getattr(trunk, "supports_gradient_checkpointing", None)
        if supported is None:
            raise ConfigError(
                f"modalities.{self.name}.gradient_checkpointing: {self.trunk_description()} "
                f"({type(trunk).__name__}) has no gradient checkpointing switch (timm's set_grad_checkpointing or "
                f"transformers' gradient_checkpointing_enable); set it to false, or override "
                f"{type(self).__name__}.set_gradient_checkpointing")
        if not supported:
            raise ConfigError(f"modalities.{self.name}.gradient_checkpointing: {self.trunk_description()} "
                              f"({type(trunk).__name__}) does not support gradient checkpointing; set it to false")
        if enable and not getattr(self, "_transformers_checkpointing_on", False):
            # non-reentrant: LoRA adapters on frozen weights get gradients without inputs that require grad
            options = {"use_reentrant": False}
            if callable(getattr(trunk, "activation_checkpointing_enable", None)):
                trunk.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:
                trunk.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
            if getattr(getattr(trunk, "config", None), "use_cache", False):
                trunk.config.use_cache = False  # a KV cache and recomputation exclude each other (else: a warning)
            self._transformers_checkpointing_on = True

    def trunk_rebuilt_from_config(self) -> bool:
        """Whether building the plugin from its config alone restores its trunk's frozen weights.

        True for a trunk loaded from pretrained weights named in the config (the text plugin's
        backbone): saving the model then stores only what trains. False (the default) for a
        trunk initialised at random, whose every weight is saved, frozen or not.
        """
        return False

    def persistent_state_dict(self) -> dict[str, torch.Tensor]:
        """What a saved model stores of this plugin: everything except frozen trunk weights that
        :meth:`trunk_rebuilt_from_config` says the config restores."""
        state = self.state_dict()
        if not self.trunk_rebuilt_from_config():
            return state
        frozen = {f"trunk.{name}" for name, param in self.trunk.named_parameters() if not param.requires_grad}
        return {key: value for key, value in state.items() if key not in frozen}

    # ----------------------------------------------------------------- to implement
    @abstractmethod
    def build_trunk(self) -> tuple[nn.Module, int]:
        """Build the trunk and return it with the width of its pooled features."""

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

    def pretrained_weights(self) -> list[dict[str, str]]:
        """The pretrained weights this plugin is built from, for the model card's licence section.

        One mapping per set of weights: ``{"component": ..., "weights": ..., "source": ...,
        "license": ..., "note": ...}`` (``license`` a Hub licence id such as ``"apache-2.0"``;
        :func:`anchorbind.licenses.package_license` reads it from an installed package). The
        default is ``config.pretrained`` when an importer set it, else ``[]`` (trained from scratch).
        """
        origin = self.config.pretrained
        if not origin:
            return []
        return [{"component": f"{self.name} plugin", "weights": origin.get("weights", ""),
                 "source": origin.get("source", ""), "license": origin.get("license", ""),
                 "note": origin.get("note", "")}]

    def input_description(self) -> str:
        """What :meth:`load` accepts, for docs and ``anchorbind modalities`` (the processor's)."""
        return self.processor.input_description()

    def config_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)

    # ----------------------------------------------------------------- inputs: the processor's
    def load(self, source: InputSource, *, train: bool = False) -> Any:
        """``self.processor.load(source, train=train)``: one raw input -> a model-ready sample."""
        return self.processor.load(source, train=train)

    def collate(self, samples: Sequence[Any]) -> Any:
        """``self.processor.collate(samples)``: samples from :meth:`load` -> a batch."""
        return self.processor.collate(samples)

    def load_batch(self, sources: Sequence[InputSource], *, train: bool = False) -> Any:
        """``self.processor.load_batch(sources, train=train)``."""
        return self.processor.load_batch(sources, train=train)

    def batch_size(self, batch: Any) -> int:
        """``self.processor.batch_size(batch)``: the number of samples in a collated batch."""
        return self.processor.batch_size(batch)

    @classmethod
    def config_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Config)]

