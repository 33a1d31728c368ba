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

Pipelines (webdataset stages composed as a list, then ``wds.DataPipeline``, as open_clip does);
every shard is read through :mod:`anchorbind.data.streaming` (timeouts, retries with backoff, a
shard given up is recorded in ``errors`` and counted against ``max_failed_shards``):

- Training, ``sampling="epoch"`` (the default): epoch after epoch, each a new seeded order of all
  shards, split by process and worker without overlap, every sample of the epoch read once (the
  split and what is left out of an epoch: :mod:`anchorbind.data.sampler`); samples shuffled in
  blocks of ``shuffle_buffer``; whole batches only, never spanning two epochs; every process
  gets the same number of batches per epoch. Endless unless ``epochs`` is given.
- Training, ``sampling="resampled"``: the same, but each epoch's shards are drawn with
  replacement (webdataset's ``ResampledShards``): a shard may come twice in an "epoch" or not
  at all.
- Both: the stream is a function of the arguments only (the same arguments give the same
  batches), and the returned loader's :meth:`~ShardLoader.state_dict` says where it stands; a
  loader built with ``state=`` continues exactly there (the trainer's exact resume relies on it).
  Augmentation is seeded per sample, so it does not depend on which worker decodes it.
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

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import webdataset as wds

from anchorbind.data.sampler import SAMPLINGS, LoaderState, epoch_order, mix_seed, reader_segments, start_position
from anchorbind.data.shardlist import expand_shards, rank_and_world
from anchorbind.data.shardlist import shard_sizes as find_shard_sizes
from anchorbind.data.stages import (
    AnchorCacheMismatch,
    ErrorLog,
    FailedShards,
    LoaderInputError,
    ReaderPlan,
    batch_samples,
    decode_samples,
    read_planned,
    shuffle_blocks,
)
from anchorbind.data.streaming import StreamOptions

__all__ = ["UNKNOWN_SIZES", "AnchorCacheMismatch", "LoaderInputError", "ShardLoader", "StreamOptions",
           "build_loader"]

HANDLERS = ("warn", "raise")
UNKNOWN_SIZES = "unknown"
"""``build_loader(shard_sizes=UNKNOWN_SIZES)``: the counts were looked for and not found."""
MAX_CONSECUTIVE_FAILURES = 1000
"""An endless training stream raises after this many failures in a row without a usable sample."""


def single_thread_worker(_: int) -> None:
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
    return "__key__" not in sample or bool(keep_key(sample.get("__key__")))


class ShardLoader(torch.utils.data.DataLoader):
    """The DataLoader :func:`build_loader` returns: it also knows where its training stream stands.

    Each training batch comes with its reader's position; the loader keeps the latest one per
    reader (``batch["__position__"]`` is removed before the batch is handed out).
    :meth:`state_dict` after ``n`` batches, given to :func:`build_loader` as ``state``, gives a
    loader whose first batch is the uninterrupted stream's ``n + 1``-th.
    """

    def __init__(self, dataset: Any, *, signature: Mapping[str, Any] | None = None,
                 start: LoaderState | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._signature = dict(signature or {})
        self._start = start
        self._state = self._fresh_state()
        self._last_urls: dict[int, str] = {}

    def _fresh_state(self) -> LoaderState:
        if self._start is not None:
            return LoaderState(dict(self._signature), [dict(p) for p in self._start.positions], self._start.batches)
        workers = int(self._signature.get("workers", 1))
        first = int(self._signature.get("first_epoch", 0))
        return LoaderState(dict(self._signature), [start_position(first) for _ in range(workers)], 0)

    def __iter__(self) -> Iterator[Any]:
        state = self._state = self._fresh_state()
        self._last_urls = {}
        for batch in super().__iter__():
            position = batch.pop("__position__", None) if isinstance(batch, dict) else None
            if position is not None:
                role = position.pop("role")
                state.positions[role] = position
                state.batches += 1
                if batch["__url__"]:
                    self._last_urls[role] = batch["__url__"][-1]
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands after the batches handed out so far (JSON-able; training only)."""
        return self._state.to_dict()

    def describe(self) -> str:
        """Where the stream stands, in words (for a stall report)."""
        state = self._state
        readers = "; ".join(f"worker {role}: epoch {p['epoch']}, last shard {self._last_urls.get(role, '(none yet)')}"
                            for role, p in enumerate(state.positions))
        return f"{state.batches} batches delivered; {readers}"


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
    sampling: str | None = None,
    epochs: int | None = None,
    resampled: bool | None = None,
    state: Mapping[str, Any] | None = None,
    shard_sizes: Sequence[int] | str | None = None,
    stream: StreamOptions | None = None,
    use_anchor_cache: bool = False,
    anchor_identity: str | None = None,
    anchor_sidecars: Sequence[str | None] | None = None,
    handler: str = "warn",
    keep_key: Callable[[str], bool] | None = None,
) -> ShardLoader:
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
        shuffle_buffer: samples per shuffle block (training only; <= 1 disables shuffling).
        seed: seeds epoch orders, shuffling and augmentation.
        epoch: the epoch a fresh stream starts in (each epoch has its own order).
        sampling: ``"epoch"`` (default) or ``"resampled"`` (module docstring). Training only.
        epochs: stop after this many epochs (default: endless).
        resampled: the former switch: True is ``sampling="resampled"``, False one epoch
            (``sampling="epoch", epochs=1``).
        state: a :meth:`ShardLoader.state_dict` of a loader built with the same arguments (and the
            same process count): continue exactly where it stood.
        shard_sizes: samples per shard, when known better than :func:`~anchorbind.data.shardlist.shard_sizes`
            finds them (all processes must pass the same), or ``"unknown"``: do not look (split
            epochs by whole shards). A ``manifest.json`` on a server is waited for at most
            ``stream.read_timeout_s`` (60 s when that is None).
        stream: timeouts, retries and the failed-shard limit (:class:`~anchorbind.data.streaming.StreamOptions`).
        use_anchor_cache: read cached anchor embeddings (``anchor.npy``, written by
            ``anchorbind cache``) into ``batch["image_embedding"]``.
        anchor_identity: the identity (``FrozenAnchor.identity``) the cache must have been
            computed with; a cache from another anchor is refused.
        anchor_sidecars: per shard (as expanded), the anchor-cache sidecar to read beside it
            (:mod:`anchorbind.data.anchor_store`), or None for a shard that carries its cache
            itself (``anchorbind cache --in-place``); found by
            :func:`anchorbind.data.cache.anchor_cache_status`. Default: every shard carries its own.
        handler: ``"warn"``: record each failure in ``batch["errors"]`` and skip what failed;
            ``"raise"``: raise :class:`~anchorbind.errors.InputError` naming the shard, key and reason
            at the first failure.
        keep_key: when given, only samples whose ``__key__`` it accepts are decoded (the others
            are dropped unread and unreported; ``anchorbind embed`` skips keys already embedded).
            It is sent to every worker, so it must pickle.

    Returns:
        A :class:`ShardLoader` (a ``torch.utils.data.DataLoader``, ``batch_size=None``: batches are
        built in the workers).

    Raises:
        ValueError: inconsistent arguments, a ``state`` from another configuration, or too few
            samples (shards) for one batch per reader.
        FileNotFoundError: the spec names no shard.
        AnchorCacheMismatch: (while iterating) a cached embedding comes from another anchor.
        InputError: (while iterating, ``handler="raise"``) the first bad shard, member or sample;
            (``handler="warn"``) more than ``stream.max_failed_shards`` shards given up.
    """
    if handler not in HANDLERS:
        raise ValueError(f"handler must be one of {HANDLERS}, got {handler!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if resampled is not None:
        if sampling is not None:
            raise ValueError("give sampling or resampled, not both")
        sampling, epochs = ("resampled", epochs) if resampled else ("epoch", 1 if epochs is None else epochs)
    if not train and sampling is not None:
        raise ValueError("resampled/sampling are for training; evaluation must read every sample exactly once")
    if train:
        sampling = sampling or "epoch"
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if use_anchor_cache and not anchor_identity:
        raise ValueError("use_anchor_cache=True needs the anchor_identity the cache must match")
    stream = stream or StreamOptions()
    processors = {name: _processor_of(name, p) for name, p in processors.items()}
    urls = tuple(expand_shards(shards))
    sidecars = None
    if use_anchor_cache and anchor_sidecars is not None:
        sidecars = tuple(anchor_sidecars)
        if len(sidecars) != len(urls):
            raise ValueError(f"anchor_sidecars has {len(sidecars)} entries for {len(urls)} shards")
        sidecars = sidecars if any(s is not None for s in sidecars) else None
    rank, world_size = rank_and_world()
    workers = max(num_workers, 1)
    errors = ErrorLog(max_consecutive=MAX_CONSECUTIVE_FAILURES if train and epochs is None else None)

    signature: dict[str, Any] = {}
    start: LoaderState | None = None
    if train:
        if shard_sizes is None:
            sizes = find_shard_sizes(urls, dataclasses.replace(stream, read_timeout_s=stream.read_timeout_s or 60))
        elif shard_sizes == UNKNOWN_SIZES:
            sizes = None
        else:
            sizes = [int(n) for n in shard_sizes]
            if len(sizes) != len(urls):
                raise ValueError(f"shard_sizes has {len(sizes)} entries for {len(urls)} shards")
        signature = {"sampling": sampling, "seed": seed, "first_epoch": epoch, "shards": len(urls),
                     "sizes_known": sizes is not None, "world_size": world_size, "rank": rank, "workers": workers,
                     "batch_size": batch_size, "shuffle_block": max(shuffle_buffer, 1)}
        if state is not None:
            start = LoaderState.from_dict(state)
            differs = start.mismatch(signature)
            if differs:
                raise ValueError(f"the loader state was saved by a loader with other settings ({differs})")
        plan = ReaderPlan(urls, None if sizes is None else tuple(sizes), sampling, seed, rank, world_size, workers,
                          rotation=0 if start is None else start.batches % workers, batch_size=batch_size,
                          shuffle_block=max(shuffle_buffer, 1), first_epoch=epoch, epochs=epochs,
                          start=None if start is None else tuple(start.positions), sidecars=sidecars,
                          identity=anchor_identity)
        # every reader's share must hold a batch: checked here, in the calling process, not in a worker
        reader_segments(epoch_order(len(urls), seed=seed, epoch=epoch, sampling=sampling), plan.sizes, slot=0,
                        slots=world_size * workers, batch_size=batch_size)
    else:
        plan = ReaderPlan(urls, None, None, seed, rank, world_size, workers, sidecars=sidecars,
                          identity=anchor_identity)
    failed = FailedShards(stream.max_failed_shards)

    stages: list[Any] = [functools.partial(read_planned, plan, options=stream, errors=errors, failed=failed,
                                           raise_errors=handler == "raise")]
    if keep_key is not None:
        stages.append(wds.select(functools.partial(_has_kept_key, keep_key=keep_key)))
    if train:
        stages.append(functools.partial(shuffle_blocks, block_size=shuffle_buffer, seed=seed))
    stages.append(functools.partial(
        decode_samples, processors=processors, train=train, errors=errors, raise_errors=handler == "raise",
        anchor_identity=anchor_identity if use_anchor_cache else None,
    ))
    stages.append(functools.partial(batch_samples, batch_size=batch_size, processors=processors, partial=not train,
                                    errors=errors, hold_last=not train or epochs is not None))
    pipeline = wds.DataPipeline(*stages)
    return ShardLoader(
        pipeline,
        signature=signature,
        start=start,
        batch_size=None,
        num_workers=num_workers,
        # workers' own torch/numpy/random seeds; augmentation is seeded per sample (stages.decode_samples)
        generator=torch.Generator().manual_seed(mix_seed(seed, epoch, rank) & 0xFFFFFFFF),
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=single_thread_worker,
    )
