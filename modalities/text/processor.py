"""`TextProcessor`: reading and tokenizing text, with no text encoder attached."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from anchorbind.errors import InputError
from anchorbind.modalities.text.backbone import load_tokenizer
from anchorbind.modalities.text.config import TextConfig
from anchorbind.processor import InputSource, Processor

__all__ = ["TextProcessor"]


class TextProcessor(Processor):
    """Text: a string (the text itself), UTF-8 bytes (e.g. a ``.txt`` shard member) or a ``Path`` to a text file.

    :meth:`load` returns the stripped text; :meth:`collate` tokenizes a batch with the
    backbone's tokenizer (padded to the longest text, truncated to ``max_length``), or with
    ``tokenizer="clip"`` CLIP's BPE (every text exactly ``max_length`` token ids, zero-padded,
    the end token kept when a text is cut; no attention mask, as causal CLIP towers read it).

    The tokenizer is loaded from ``config.backbone`` on first use, never the model, and is left
    out of the pickled state: a pickled processor is a few KB (the config), and each DataLoader
    worker rebuilds the tokenizer the first time it collates.
    """

    config: TextConfig

    def __init__(self, config: TextConfig, *, modality: str, sample_keys: tuple[str, ...]) -> None:
        super().__init__(config, modality=modality, sample_keys=sample_keys)
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """The backbone's tokenizer (or CLIP's BPE tokenizer), loaded on first access.

        Raises:
            ConfigError: the backbone's tokenizer cannot be found or loaded.
        """
        if self._tokenizer is None:
            if self.config.tokenizer == "clip":
                from open_clip.tokenizer import SimpleTokenizer

                self._tokenizer = SimpleTokenizer(context_length=self.config.max_length)
            else:
                self._tokenizer = load_tokenizer(self.config.backbone)
        return self._tokenizer

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tokenizer"] = None  # rebuilt from config.backbone on first use
        return state

    def load(self, source: InputSource, *, train: bool = False) -> str:
        """The stripped text of ``source``.

        Args:
            source: the text itself (``str``), UTF-8 bytes, or a ``Path`` to a UTF-8 text file.
            train: unused (text has no stochastic preprocessing).

        Raises:
            InputError: unreadable file, invalid UTF-8, empty or whitespace-only text, more than
                ``max_bytes`` (a file: before reading it), or an unsupported input type.
        """
        limit = self.config.max_bytes
        if isinstance(source, str):
            if limit is not None and len(source) > limit // 4:  # UTF-8 needs 1-4 bytes a character
                if len(source) > limit:  # at least a byte a character: refused without encoding it all
                    self._check_size(len(source), source, at_least=True)
                self._check_size(len(source.encode("utf-8", "surrogatepass")), source)
            text = source
        elif isinstance(source, (Path, bytes, bytearray, memoryview)):
            if isinstance(source, Path):
                try:
                    with source.open("rb") as file:
                        self._check_size(os.fstat(file.fileno()).st_size, source)
                        data = file.read() if limit is None else file.read(limit + 1)
                except OSError as err:
                    raise InputError(source, f"unreadable text file ({err.strerror or err})", self.modality) from None
            else:
                self._check_size(memoryview(source).nbytes, source)
                data = bytes(source)
            self._check_size(len(data), source)  # a file that grew while it was read
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(source, f"not UTF-8 text ({err.reason} at byte {err.start})", self.modality) from None
        else:
            raise InputError(
                source, f"expected a string, UTF-8 bytes or a Path, got {type(source).__name__}", self.modality
            )
        text = text.strip()
        if not text:
            raise InputError(source, "empty text", self.modality)
        return text

    def _check_size(self, size: int, source: InputSource, *, at_least: bool = False) -> None:
        limit = self.config.max_bytes
        if limit is not None and size > limit:
            size_text = f"at least {size}" if at_least else str(size)
            raise InputError(source, f"text too long: {size_text} bytes > max_bytes {limit} (a caption, "
                                     "not a document, is expected)", self.modality)

    def collate(self, samples: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize a batch: padded to its longest text, truncated to ``max_length`` tokens
        (CLIP's BPE: ``{"input_ids": (B, max_length)}``)."""
        if self.config.tokenizer == "clip":
            return {"input_ids": self.tokenizer(list(samples), context_length=self.config.max_length)}
        encoded = self.tokenizer(
            list(samples), padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt"
        )
        return dict(encoded)

    def batch_size(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0])
