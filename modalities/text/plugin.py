"""The text plugin: a transformers encoder, mean pooling, a projection head."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bind.errors import ConfigError, InputError
from bind.plugin import InputSource, ModalityPlugin
from modalities.text.backbone import load_backbone
from modalities.text.config import TUNING_MODES, TextConfig

__all__ = ["TextPlugin", "mean_pool"]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token states over real tokens (the sentence-transformers recipe MiniLM was trained with)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class TextPlugin(ModalityPlugin):
    """Text: a string (the text itself), UTF-8 bytes (e.g. a ``.txt`` shard member) or a ``Path`` to a text file."""

    name = "text"
    Config = TextConfig
    sample_keys = ("txt", "text", "caption")
    config: TextConfig

    def build_trunk(self) -> tuple[nn.Module, int]:
        cfg = self.config
        if cfg.tuning not in TUNING_MODES:
            raise ConfigError(f"modalities.text.tuning must be one of {TUNING_MODES}, got {cfg.tuning!r}")
        backbone, self.tokenizer = load_backbone(cfg.backbone)
        width = int(backbone.config.hidden_size)
        if cfg.tuning == "frozen":
            backbone.requires_grad_(False)
            backbone.eval()
        elif cfg.tuning == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=list(cfg.lora_target_modules), bias="none")
            try:
                backbone = get_peft_model(backbone, lora)
            except ValueError as err:
                raise ConfigError(f"modalities.text LoRA targets {cfg.lora_target_modules}: {err}") from None
        return backbone, width

    def train(self, mode: bool = True) -> TextPlugin:
        """Like ``nn.Module.train`` but a frozen backbone stays in eval mode (dropout off)."""
        super().train(mode)
        if self.config.tuning == "frozen":
            self.trunk.eval()
        return self

    def load(self, source: InputSource, *, train: bool = False) -> str:
        if isinstance(source, str):
            text = source
        elif isinstance(source, Path):
            try:
                text = source.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise InputError(source, f"unreadable text file ({err})", self.name) from None
        elif isinstance(source, (bytes, bytearray, memoryview)):
            try:
                text = bytes(source).decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(source, f"not UTF-8 text ({err.reason} at byte {err.start})", self.name) from None
        else:
            raise InputError(source, "expected a string, UTF-8 bytes or a Path", self.name)
        text = text.strip()
        if not text:
            raise InputError(source, "empty text", self.name)
        return text

    def collate(self, samples: Sequence[Any]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(list(samples), padding=True, truncation=True,
                                   max_length=self.config.max_length, return_tensors="pt"))

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.tuning != "frozen"):
            hidden = self.trunk(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def batch_size(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0])
