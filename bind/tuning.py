"""What of a plugin's trunk trains: frozen, fully, or through LoRA adapters (peft).

Every built-in plugin with a trunk offers the same three modes with the same config fields
(:class:`TunableConfig`), so a fine-tuning recipe reads the same for a text tower and a
spectrogram ViT: ``tuning: lora`` on the plugins to adapt, the anchor frozen as always.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from anchorbind.plugin import PluginConfig

__all__ = ["TUNING_MODES", "TunableConfig", "tuning_problems"]

TUNING_MODES = ("frozen", "full", "lora")


@dataclass
class TunableConfig(PluginConfig):
    """Plugin settings for a trunk that can be frozen, fully trained or adapted with LoRA.

    Attributes:
        tuning: ``"full"`` (every trunk weight trains), ``"frozen"`` (the trunk is fixed and
            kept in eval mode; head and logit scale train) or ``"lora"`` (peft LoRA adapters on
            ``lora_target_modules``; the trunk's own weights are fixed).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``).
        lora_dropout: dropout on the LoRA branch's input.
        lora_target_modules: names of the linear layers that get adapters (the last component
            of a module's name, e.g. ``qkv`` for every timm attention projection).
        gradient_checkpointing: recompute the trunk's activations during backward instead of
            keeping them (timm's ``set_grad_checkpointing``, transformers'
            ``gradient_checkpointing_enable``; :meth:`~anchorbind.plugin.ModalityPlugin.set_gradient_checkpointing`):
            activation memory for ImageBind-size trunks at about one extra trunk forward per
            step, same loss and gradients. Training mode only; with ``tuning: frozen`` there is
            nothing to checkpoint and it is left off (the log says so).
    """

    tuning: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["qkv"])
    gradient_checkpointing: bool = False


def tuning_problems(config: TunableConfig) -> Iterator[str]:
    """What is wrong with the tuning fields of ``config`` (nothing: an empty iterator)."""
    if config.tuning not in TUNING_MODES:
        yield f"tuning must be one of {TUNING_MODES}, got {config.tuning!r}"
    if config.tuning == "lora":
        if config.lora_r <= 0:
            yield f"lora_r must be positive, got {config.lora_r}"
        if config.lora_alpha <= 0:
            yield f"lora_alpha must be positive, got {config.lora_alpha}"
        if not 0.0 <= config.lora_dropout < 1.0:
            yield f"lora_dropout must be in [0, 1), got {config.lora_dropout}"
        if not config.lora_target_modules:
            yield "lora_target_modules must name at least one module"
