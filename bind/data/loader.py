"""One function builds every WebDataset pipeline AnchorBind reads: :func:`build_loader`.

Batch format (what the trainer, the evaluator and ``BindModel.forward`` consume)::

    {
      "__key__":  list[str]                   # sample keys, B of them, in batch order
      "__url__":  list[str]                   # the shard each sample came from
      "json":     list[dict | None]           # per-sample metadata (e.g. the world's attributes)
      "<modality>": collated batch            # for each modality present in >= 1 row:
                                              #   processors[m].collate over the rows that have it,
                                              #   in batch order (so it has mask[m].sum() rows)
      "mask": {"<modality>": bool (B,)}       # which rows have that modality (only modalities present)
      "image_embedding": float32 (B, D)       # cached anchor embeddings (use_anchor_cache=True);
                                              #   zero rows where mask["image_embedding"] is False
      "errors": list[{"key", "url", "modality", "reason"}]
                                              # every failure in this worker since its previous batch:
                                              #   members a plugin refused (modality = its name),
                                              #   samples with nothing decodable (modality None),
                                              #   unreadable shards / corrupt tar members (key None),
                                              #   missing or unreadable cached embeddings
                                              #   (modality "image_embedding")
    }

Batches normally have ``B == batch_size``; in evaluation the last batch of each worker may be
smaller, and a worker whose shards yielded failures but no sample ends with an empty batch
(``B == 0``) that only carries ``errors``.

Pipelines (webdataset stages composed as a list, then ``wds.DataPipeline``, as open_clip does):

- Training, ``resampled=True`` (the default): shards drawn with replacement forever by
  ``wds.ResampledShards``, seeded by ``(seed, epoch)`` and by ``(rank, worker)`` so every rank and
  worker reads a different stream; a sample shuffle buffer; whole batches only. The same
  arguments give the same batches (the trainer's exact resume relies on it).
- Training, ``resampled=False``: one epoch; the shard list shuffled by ``(seed, epoch)`` (the same
  permutation on every rank), then split by rank and by worker; shuffle buffer; whole batches.
  Ranks may get unequal shard counts: prefer resampling for multi-process training.
- Evaluation: every sample exactly once, no shuffling, the final partial batch kept. Shards are
  taken in the order given, split by rank (shard ``i`` to rank ``i % world_size``), then by worker
  (the rank's ``j``-th shard to worker ``j % num_workers``). Order guarantee: with
  ``num_workers <= 1`` samples come in shard order, then tar order; with more workers, batches
  come round-robin from the workers (PyTorch's in-order delivery), each worker's batches in its
  own shard order. The order is a function of the shard list, ``batch_size`` and
  ``num_workers`` only, identical from run to run.

The rank and world size come from the initialised ``torch.distributed`` group (``accelerate``),
else from ``RANK``/``WORLD_SIZE``, read when the loader is built (see
:func:`anchorbind.data.shardlist.rank_and_world`).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from webdataset.utils import make_seed

from anchorbind.data.shardlist import expand_shards, rank_and_world
from anchorbind.data.stages import (
    AnchorCacheMismatch,
    ErrorLog,
    LoaderInputError,
    batch_samples,
    decode_samples,
    seeded_shuffle,
    split_by_rank,
    track_urls,
)

__all__ = ["AnchorCacheMismatch", "LoaderInputError", "build_loader"]

HANDLERS = ("warn", "raise")
MAX_CONSECUTIVE_FAILURES = 1000
"""A resampled (endless) stream raises after this many failures in a row without a usable sample."""


def _worker_index() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else 0


def _stream_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the calling worker's stream: differs per (seed, epoch, rank, worker)."""
    return make_seed(seed, epoch, rank, _worker_index())


def _worker_seed(rank: int) -> int:
    return make_seed(rank, _worker_index())


def _shuffle_stage(src, *, bufsize: int, seed: int, epoch: int, rank: int):
    yield from seeded_shuffle(src, bufsize=bufsize, seed=_stream_seed(seed, epoch, rank))


def _single_thread_worker(_: int) -> None:
    # Decoding is per-sample work; intra-op threads in every worker would oversubscribe the cores
    # that the training process needs.
    torch.set_num_threads(1)


def _processor_of(name: str, obj: Any) -> Any:
    """``obj`` itself, or an encoder's ``processor``: workers must not get (pickle, copy) a model."""
    if not isinstance(obj, torch.nn.Module):
        return obj
    processor = getattr(obj, "processor", None)
    if processor is None or isinstance(processor, torch.nn.Module):
        raise TypeError(f"build_loader: processors[{name!r}] is a model ({type(obj).__name__}) without a "
                        "model-free .processor; pass a Processor (BindModel.processor(name))")
    return processor


def _has_kept_key(sample: Mapping[str, Any], *, keep_key: Callable[[str], bool]) -> bool:
    return bool(keep_key(sample.get("__key__")))


def build_loader(
    shards: str | Path | Sequence[str | Path],
    processors: Mapping[str, Any],
    *,
    train: bool,
    batch_size: int,
    num_workers: int = 2,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    epoch: int = 0,
    resampled: bool | None = None,
    use_anchor_cache: bool = False,
    anchor_identity: str | None = None,
    handler: str = "warn",
    keep_key: Callable[[str], bool] | None = None,
) -> torch.utils.data.DataLoader:
    """Build the training or evaluation loader over ``shards`` (batch format: module docstring).

    Args:
        shards: a shard spec (brace notation, ``::`` lists, a directory of ``.tar``, a glob, any
            URL webdataset opens) or a list of them; see :func:`anchorbind.data.shardlist.expand_shards`.
        processors: ``{modality: processor}``: objects with ``sample_keys``, ``load(source, train=)``
            and ``collate(list)``, normally :class:`~anchorbind.processor.Processor` s
            (``BindModel.processor(m)``; the anchor's ImageProcessor under ``image``). Each
            modality is decoded from the first of its ``sample_keys`` present in a sample. An
            encoder (a plugin or the anchor, an ``nn.Module`` with a ``processor``) is replaced by
            its processor, so worker processes never receive a copy of a model.
        train: the training pipeline (shuffled, whole batches, augmenting ``load(train=True)``)
            or the evaluation pipeline (every sample once, in a fixed order).
        batch_size: samples per batch, per process.
        num_workers: DataLoader worker processes (0 decodes in the calling process).
        shuffle_buffer: size of the sample shuffle buffer (training only; <= 1 disables it).
        seed: seeds shard sampling, shuffling and the workers' torch RNG (augmentations).
        epoch: mixed into every seed, so each epoch (or restart) draws a new order.
        resampled: draw shards with replacement forever (default: ``train``). Only for training.
        use_anchor_cache: read cached anchor embeddings (``anchor.npy``, written by
            ``anchorbind cache``) into ``batch["image_embedding"]``.
        anchor_identity: the identity (``FrozenAnchor.identity``) the cache must have been
            computed with; a cache from another anchor is refused.
        handler: ``"warn"``: record each failure in ``batch["errors"]`` and skip what failed;
            ``"raise"``: raise :class:`~anchorbind.errors.InputError` naming the shard, key and reason
            at the first failure.
        keep_key: when given, only samples whose ``__key__`` it accepts are decoded (the others
            are dropped unread and unreported; ``anchorbind embed`` skips keys already embedded).
            It is sent to every worker, so it must pickle.

    Returns:
        A ``torch.utils.data.DataLoader`` (``batch_size=None``: batches are built in the workers).

    Raises:
        ValueError: inconsistent arguments.
        FileNotFoundError: the spec names no shard.
        AnchorCacheMismatch: (while iterating) a cached embedding comes from another anchor.
        InputError: (while iterating, ``handler="raise"``) the first bad shard, member or sample.
    """
    if handler not in HANDLERS:
        raise ValueError(f"handler must be one of {HANDLERS}, got {handler!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    resampled = train if resampled is None else resampled
    if resampled and not train:
        raise ValueError("resampled=True is for training; evaluation must read every sample exactly once")
    if use_anchor_cache and not anchor_identity:
        raise ValueError("use_anchor_cache=True needs the anchor_identity the cache must match")
    processors = {name: _processor_of(name, p) for name, p in processors.items()}
    urls = expand_shards(shards)
    rank, world_size = rank_and_world()
    errors = ErrorLog(max_consecutive=MAX_CONSECUTIVE_FAILURES if resampled else None)

    stages: list[Any] = []
    if resampled:
        stages.append(wds.ResampledShards(urls, seed=make_seed(seed, epoch),
                                          worker_seed=functools.partial(_worker_seed, rank), deterministic=True))
    else:
        if train:
            urls = list(urls)
            random.Random(make_seed(seed, epoch)).shuffle(urls)  # same permutation on every rank
        stages += [wds.SimpleShardList(urls), functools.partial(split_by_rank, rank=rank, world_size=world_size),
                   wds.split_by_worker]
    stages.append(functools.partial(track_urls, errors=errors))
    stages.append(wds.tarfile_to_samples(handler=errors.raise_tar_error if handler == "raise" else errors.tar_handler))
    if keep_key is not None:
        stages.append(wds.select(functools.partial(_has_kept_key, keep_key=keep_key)))
    if train and shuffle_buffer > 1:
        stages.append(functools.partial(_shuffle_stage, bufsize=shuffle_buffer, seed=seed, epoch=epoch, rank=rank))
    stages.append(functools.partial(
        decode_samples, processors=processors, train=train, errors=errors, raise_errors=handler == "raise",
        anchor_identity=anchor_identity if use_anchor_cache else None,
    ))
    stages.append(functools.partial(batch_samples, batch_size=batch_size, processors=processors, partial=not train,
                                    errors=errors, hold_last=not resampled))
    pipeline = wds.DataPipeline(*stages)
    return torch.utils.data.DataLoader(
        pipeline,
        batch_size=None,
        num_workers=num_workers,
        # the workers' torch/numpy/random seeds (augmentations) derive from this generator
        generator=torch.Generator().manual_seed(make_seed(seed, epoch, rank)),
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=_single_thread_worker,
    )
