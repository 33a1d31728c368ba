"""The text plugin: a transformers encoder, mean pooling, a projection head."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from anchorbind.errors import ConfigError, InputError
from anchorbind.modalities.text.backbone import load_backbone
from anchorbind.modalities.text.config import TextConfig
from anchorbind.plugin import InputSource, ModalityPlugin

__all__ = ["TextPlugin", "mean_pool"]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token states over real tokens (the sentence-transformers recipe MiniLM was trained with).

    Args:
        hidden: ``(B, T, H)`` token states.
        attention_mask: ``(B, T)``, 1 for real tokens and 0 for padding.

    Returns:
        ``(B, H)`` sentence features; padding never contributes.
    """
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class TextPlugin(ModalityPlugin):
    """Text: a string (the text itself), UTF-8 bytes (e.g. a ``.txt`` shard member) or a ``Path`` to a text file.

    The trunk is any transformers encoder (default: the packaged MiniLM-L6 sentence encoder),
    read as the attention-masked mean of its last hidden states. ``config.tuning`` decides what
    trains: ``frozen`` (head and logit scale only; the backbone stays in eval mode and runs
    without autograd), ``full``, or ``lora`` (peft adapters on ``lora_target_modules``).

    The tokenizer is a plain attribute (``self.tokenizer``), not a module: it has no weights and
    is rebuilt from ``config.backbone``. The plugin deep-copies and pickles with it (a pickle holds
    the whole backbone, ~90 MB for MiniLM); to ship a trained plugin, use
    ``BindModel.save_pretrained``, which stores only the trainable weights.

    Example::

        text = TextPlugin({"tuning": "lora"}, embed_dim=1280)
        emb = text(text.load_batch(["a red cube", "a dog barking"]))   # (2, 1280), unit norm
    """

    name = "text"
    Config = TextConfig
    sample_keys = ("txt", "text", "caption")
    config: TextConfig

    def build_trunk(self) -> tuple[nn.Module, int]:
        """Load the backbone and tokenizer and set which backbone weights train.

        Raises:
            ConfigError: the backbone cannot be loaded, ``max_length`` exceeds its positions,
                or the LoRA target modules are not in it.
        """
        cfg = self.config
        backbone, self.tokenizer = load_backbone(cfg.backbone)
        width = int(backbone.config.hidden_size)
        positions = getattr(backbone.config, "max_position_embeddings", None)
        if positions is not None and cfg.max_length > positions:
            raise ConfigError(
                f"anchorbind.modalities.text.max_length={cfg.max_length} exceeds the {positions} positions of "
                f"backbone {cfg.backbone!r}"
            )
        if cfg.tuning == "frozen":
            backbone.requires_grad_(False)
            backbone.eval()
        elif cfg.tuning == "lora":
            backbone = self._add_lora(backbone)
        return backbone, width

    def _add_lora(self, backbone: nn.Module) -> nn.Module:
        """Wrap the backbone with peft LoRA adapters; peft freezes every non-adapter weight."""
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            bias="none",
        )
        try:
            with warnings.catch_warnings():
                # peft asks transformers a deprecated question; harmless and not ours to fix
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                return get_peft_model(backbone, lora)
        except ValueError as err:
            raise ConfigError(
                f"anchorbind.modalities.text.lora_target_modules={cfg.lora_target_modules} do not fit backbone "
                f"{cfg.backbone!r}: {err}"
            ) from None

    def train(self, mode: bool = True) -> TextPlugin:
        """Like ``nn.Module.train`` but a frozen backbone stays in eval mode (dropout off)."""
        super().train(mode)
        if self.config.tuning == "frozen":
            self.trunk.eval()
        return self

    def load(self, source: InputSource, *, train: bool = False) -> str:
        """The stripped text of ``source``.

        Args:
            source: the text itself (``str``), UTF-8 bytes, or a ``Path`` to a UTF-8 text file.
            train: unused (text has no stochastic preprocessing).

        Raises:
            InputError: unreadable file, invalid UTF-8, empty or whitespace-only text, or an
                unsupported input type.
        """
        if isinstance(source, str):
            text = source
        elif isinstance(source, (Path, bytes, bytearray, memoryview)):
            if isinstance(source, Path):
                try:
                    data = source.read_bytes()
                except OSError as err:
                    raise InputError(source, f"unreadable text file ({err.strerror or err})", self.name) from None
            else:
                data = bytes(source)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(source, f"not UTF-8 text ({err.reason} at byte {err.start})", self.name) from None
        else:
            raise InputError(
                source, f"expected a string, UTF-8 bytes or a Path, got {type(source).__name__}", self.name
            )
        text = text.strip()
        if not text:
            raise InputError(source, "empty text", self.name)
        return text

    def collate(self, samples: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize a batch: padded to its longest text, truncated to ``max_length`` tokens."""
        encoded = self.tokenizer(
            list(samples), padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        )
        return dict(encoded)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled last hidden states ``(B, hidden_size)``; no autograd through a frozen backbone."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.tuning != "frozen"):
            hidden = self.trunk(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def batch_size(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0])
