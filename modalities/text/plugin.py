"""The text plugin: a transformers encoder, mean pooling, a projection head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anchorbind.errors import ConfigError
from anchorbind.modalities.text.backbone import backbone_license, load_model
from anchorbind.modalities.text.config import TextConfig
from anchorbind.modalities.text.processor import TextProcessor
from anchorbind.plugin import ModalityPlugin

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

    Reading and tokenizing are the :class:`~anchorbind.modalities.text.processor.TextProcessor`'s
    (``self.processor``; ``self.tokenizer`` is its tokenizer): build that alone with
    ``TextPlugin.create_processor(config)`` where only text is read, e.g. in data loader workers.
    A pickled plugin holds the whole backbone (~90 MB for MiniLM); to ship a trained plugin, use
    ``BindModel.save_pretrained``, which stores only the trainable weights.

    Example::

        text = TextPlugin({"tuning": "lora"}, embed_dim=1280)
        emb = text(text.load_batch(["a red cube", "a dog barking"]))   # (2, 1280), unit norm
    """

    name = "text"
    encodes_text = True
    Config = TextConfig
    Processor = TextProcessor
    sample_keys = ("txt", "text", "caption")
    path_fields = ("backbone",)
    config: TextConfig

    @classmethod
    def example_inputs(cls) -> list[object]:
        """Three captions of different content, a string and the UTF-8 bytes of a ``.txt`` member."""
        return ["a red cube on a wooden table", "a dog barking in the rain", b"quiet piano music"]

    @classmethod
    def example_bad_inputs(cls) -> list[object]:
        """Empty and whitespace-only text, bytes that are not UTF-8, and a type that is no text."""
        return ["", "  \n\t ", b"", b"\xff\xfe\xfd", 42, object()]

    def trunk_rebuilt_from_config(self) -> bool:
        """True: the backbone is loaded from ``config.backbone``, so its frozen weights are not saved."""
        return True

    def trunk_description(self) -> str:
        return f"backbone {self.config.backbone!r}"

    def pretrained_weights(self) -> list[dict[str, str]]:
        """The backbone's weights and licence (see :func:`anchorbind.modalities.text.backbone.backbone_license`)."""
        return [backbone_license(self.config.backbone), *super().pretrained_weights()]

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self.processor.tokenizer

    def build_trunk(self) -> tuple[nn.Module, int]:
        """Load the backbone (and check its tokenizer) and set which backbone weights train.

        Raises:
            ConfigError: the backbone or its tokenizer cannot be loaded, ``max_length`` exceeds
                its positions, or the LoRA target modules are not in it.
        """
        cfg = self.config
        backbone = load_model(cfg.backbone)
        self.processor.tokenizer  # noqa: B018 -- a backbone without a usable tokenizer fails now, not at first batch
        width = int(backbone.config.hidden_size)
        positions = getattr(backbone.config, "max_position_embeddings", None)
        if positions is not None and cfg.max_length > positions:
            raise ConfigError(
                f"anchorbind.modalities.text.max_length={cfg.max_length} exceeds the {positions} positions of "
                f"backbone {cfg.backbone!r}"
            )
        return backbone, width

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled features ``(B, hidden_size)``: the masked mean of the last hidden states, or
        the backbone's pooled end-of-text state (``pooling="eos"``); no autograd through a
        frozen backbone."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.tuning != "frozen"):
            output = self.trunk(**batch)
        if self.config.pooling == "eos":
            if getattr(output, "pooler_output", None) is None:
                raise ConfigError(f"anchorbind.modalities.text.pooling='eos': backbone {self.config.backbone!r} "
                                  f"({type(self.trunk).__name__}) gives no pooled end-of-text state; use 'mean'")
            return output.pooler_output
        return mean_pool(output.last_hidden_state, batch["attention_mask"])
