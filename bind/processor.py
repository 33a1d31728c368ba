"""Processors: reading, preprocessing and batching one modality, with no model attached.

A :class:`Processor` is to a modality plugin what a timm / open_clip transform is to its model:
the part of the pipeline that turns raw inputs (paths, file bytes, arrays, strings) into
model-ready batches. It is built from the plugin's config alone, holds no weights and no
``nn.Module``, and pickles to a few kilobytes. That is why it is a separate object:

- DataLoader workers and the shard converter's process pool receive processors, so they never
  copy (or rebuild) trunks and backbones they do not run;
- whatever only reads files (``anchorbind shards``, data checks, caching inputs) starts in
  milliseconds instead of building every model;
- the plugin (an ``nn.Module``) keeps only what trains and encodes, and delegates its
  ``load``/``collate``/``load_batch``/``batch_size`` to ``plugin.processor`` for convenience.

This module has no dependency on the rest of the package besides :mod:`anchorbind.errors`, so
plugins, the anchor and the data pipeline can all import it without cycles.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from anchorbind.errors import InputError

__all__ = ["InputSource", "Processor", "move_to_device", "open_input", "read_bytes"]

InputSource = str | Path | bytes | np.ndarray | torch.Tensor
"""What :meth:`Processor.load` accepts: a path, raw file bytes, or an array (per modality)."""


class Processor(ABC):
    """Decodes, preprocesses and collates one modality; built from a plugin config, no weights.

    Subclasses implement :meth:`load` and :meth:`collate` and may override :meth:`batch_size`
    and :meth:`input_description`. They must stay light and picklable: keep heavy helpers (a
    tokenizer, a resampler) out of the pickled state and rebuild them lazily from ``config``,
    since every DataLoader worker gets a copy.

    Attributes:
        config: the plugin's config dataclass (validated by the plugin class).
        modality: the registry name; used in :class:`~anchorbind.errors.InputError` messages.
        sample_keys: WebDataset keys (file extensions) holding this modality in a shard, in
            order of preference.
    """

    def __init__(self, config: Any, *, modality: str, sample_keys: tuple[str, ...]) -> None:
        self.config = config
        self.modality = str(modality)
        self.sample_keys = tuple(sample_keys)

    @abstractmethod
    def load(self, source: Any, *, train: bool = False) -> Any:
        """Read and preprocess one raw input into a model-ready sample.

        ``train`` enables stochastic preprocessing (random crops, random clips); ``train=False``
        must be deterministic. Invalid input raises :class:`~anchorbind.errors.InputError` naming
        the input and the reason, so pipelines can count and skip it.
        """

    @abstractmethod
    def collate(self, samples: Sequence[Any]) -> Any:
        """Batch samples returned by :meth:`load` (a tensor or a dict of tensors)."""

    def load_batch(self, sources: Sequence[Any], *, train: bool = False) -> Any:
        """``collate([load(s) for s in sources])``."""
        return self.collate([self.load(s, train=train) for s in sources])

    def batch_size(self, batch: Any) -> int:
        """The number of samples in a collated batch (first dimension of its first tensor)."""
        if isinstance(batch, torch.Tensor):
            return int(batch.shape[0])
        if isinstance(batch, Mapping):
            return self.batch_size(next(iter(batch.values())))
        return len(batch)

    def input_description(self) -> str:
        """What :meth:`load` accepts, for docs and ``anchorbind modalities``.

        The default is the first line of the subclass's docstring (so write it as a description
        of the input), else the modality name.
        """
        doc = type(self).__doc__
        return doc.strip().splitlines()[0] if doc and doc.strip() else self.modality

    def __repr__(self) -> str:
        return f"{type(self).__name__}(modality={self.modality!r}, sample_keys={self.sample_keys!r})"


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


@contextmanager
def open_input(source: str | Path | bytes | bytearray | memoryview, modality: str) -> Iterator[tuple[BinaryIO, int]]:
    """A seekable binary file over a path or bytes input, and its size in bytes.

    Unlike :func:`read_bytes`, a path is opened, not read: a reader can look at a header (a
    declared length, image size or array shape) and refuse the input before it costs memory.

    Raises:
        InputError: unreadable or empty file (the same reasons as :func:`read_bytes`).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise InputError(source, "empty file", modality)
        yield io.BytesIO(source), len(source)
        return
    try:
        file = Path(source).open("rb")  # noqa: SIM115 (closed by the with below, after the size check)
    except OSError as err:
        raise InputError(source, f"unreadable file ({err.strerror or err})", modality) from None
    with file:
        size = os.fstat(file.fileno()).st_size
        if not size:
            raise InputError(source, "empty file", modality)
        yield file, size
