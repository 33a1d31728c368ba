"""One function builds every WebDataset pipeline AnchorBind reads: :func:`build_loader`.

Batch format (what the trainer, the evaluator and ``BindModel.forward`` consume)::

    {
      "__key__":  list[str]                   # sample keys, B of them
      "__url__":  list[str]                   # the shard each sample came from
      "json":     list[dict | None]           # per-sample metadata (e.g. the world's attributes)
      "<modality>": collated batch            # for each modality present in >= 1 row, collated by
                                              #   its processor over the rows that have it, in order
      "mask": {"<modality>": bool (B,)}       # which rows have that modality
      "image_embedding": float32 (B, D)       # cached anchor embeddings (use_anchor_cache=True);
                                              #   mask under mask["image_embedding"]
      "errors": list[{"key","url","modality","reason"}]  # decode failures since the last batch
    }

Training: resampled shards (infinite, seeded per rank and worker), a sample shuffle buffer,
whole batches only. Evaluation: every sample exactly once — shards split by rank, then by
worker — the final partial batch kept, no shuffling; with several workers, batches arrive in
a fixed round-robin order over workers, so the order is deterministic too.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import webdataset as wds

from bind.data.shardlist import expand_shards
from bind.data.stages import ErrorLog, batch_samples, decode_sample, seeded_shuffle

__all__ = ["build_loader"]


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _worker_seed(rank: int) -> int:
    info = torch.utils.data.get_worker_info()
    return rank * 1000 + (info.id if info is not None else 0)


def _single_thread_worker(_: int) -> None:
    # Decoding is per-sample work; intra-op threads in every worker would oversubscribe the cores
    # that the training process needs.
    torch.set_num_threads(1)


def _split(src, *, index: int, count: int):
    """Keep every ``count``-th item starting at ``index`` (shards per rank)."""
    for i, item in enumerate(src):
        if i % count == index:
            yield item


def build_loader(
    shards: str | Sequence[str],
    processors: Mapping[str, Any],
    *,
    train: bool,
    batch_size: int,
    num_workers: int = 2,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    resampled: bool | None = None,
    use_anchor_cache: bool = False,
    anchor_identity: str | None = None,
    handler: str = "warn",
) -> torch.utils.data.DataLoader:
    """Build the loader over ``shards``, decoding each modality with ``processors[modality]``.

    Args:
        shards: brace notation, a directory of ``.tar``, ``::``-joined or a list of URLs.
        processors: ``{modality: object with sample_keys, load(source, train=), collate(list)}`` —
            the plugins, and the anchor for ``image``.
        train: training pipeline (shuffled, infinite when resampled) or evaluation pipeline.
        batch_size: samples per batch (per process).
        num_workers: DataLoader worker processes (0 decodes in the calling process).
        shuffle_buffer: sample shuffle buffer (training only).
        seed: seeds shard resampling, shuffling and worker RNGs: the same seed gives the same batches.
        resampled: sample shards with replacement forever (default: ``train``).
        use_anchor_cache: read cached anchor embeddings into ``batch["image_embedding"]``.
        anchor_identity: the anchor the cache must come from (required with ``use_anchor_cache``).
        handler: ``warn`` records, counts and skips bad members; ``raise`` stops at the first one.

    Raises:
        ValueError: bad arguments. Decoding errors are raised lazily, while iterating.
    """
    if handler not in ("warn", "raise"):
        raise ValueError(f"handler must be 'warn' or 'raise', got {handler!r}")
    if use_anchor_cache and not anchor_identity:
        raise ValueError("use_anchor_cache=True needs the anchor_identity the cache must match")
    urls = expand_shards(shards)
    rank, world = _rank_world()
    resampled = train if resampled is None else resampled
    errors = ErrorLog()
    worker_seed = functools.partial(_worker_seed, rank)
    tar_handler = wds.reraise_exception if handler == "raise" else errors.tar_handler

    stages: list[Any] = []
    if resampled:
        stages.append(wds.ResampledShards(urls, seed=seed, worker_seed=worker_seed, deterministic=True))
    else:
        stages += [wds.SimpleShardList(urls), functools.partial(_split, index=rank, count=world),
                   wds.split_by_worker]
    stages.append(wds.tarfile_to_samples(handler=tar_handler))
    if train and shuffle_buffer > 1:
        stages.append(functools.partial(seeded_shuffle, bufsize=shuffle_buffer, seed=seed, worker_seed=worker_seed))
    stages.append(functools.partial(
        decode_sample, processors=processors, train=train, errors=errors, raise_errors=handler == "raise",
        anchor_identity=anchor_identity if use_anchor_cache else None,
    ))
    stages.append(functools.partial(batch_samples, batch_size=batch_size, processors=processors,
                                    partial=not train, errors=errors))
    pipeline = wds.DataPipeline(*stages)
    return torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=num_workers, generator=torch.Generator().manual_seed(seed),
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=_single_thread_worker,
    )
