"""The small stages the loader's WebDataset pipeline is composed of (each a generator).

Each stage takes an iterator and yields items. Shapes along the pipeline::

    (a ReaderPlan)                             -- read_planned (this worker's shards or segments,
                                                  read through anchorbind.data.streaming)
    {"__key__", "__url__", member: bytes,      -- shuffle_blocks (training: seeded block shuffle,
     "__src__", "__seed__"} + epoch markers       positions)
    {..., "__pos__"}                           -- decode_samples
    {"__key__", "__url__", "data": {modality: loaded}, "json", "anchor", "errors", "__pos__"}
                                               -- batch_samples
    batches (format documented in anchorbind.data.loader)

Training streams carry epoch markers (``{"__epoch_start__": ...}``, ``{"__epoch_end__": ...}``):
blocks and batches never span two epochs. Positions (:mod:`anchorbind.data.sampler`) ride with
each sample and leave with each batch as ``batch["__position__"]``.

Nothing is dropped silently: every failure (a shard given up after its retries, a corrupt tar, a
member a plugin refuses, a sample with nothing decodable) is recorded in the worker's
:class:`ErrorLog` and rides along with the next batch that leaves the worker, so counts reach the
main process even from DataLoader workers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing
import random
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anchorbind.data.anchor_store import (
    ANCHOR_ERROR_KEY,
    ANCHOR_ID_KEY,
    ANCHOR_KEY,
    AnchorCacheMismatch,
    attach_cached,
)
from anchorbind.data.sampler import epoch_order, mix_seed, reader_segments, start_position
from anchorbind.data.streaming import ShardUnreadable, StreamOptions, shard_samples
from anchorbind.errors import AnchorBindError, InputError
from anchorbind.image_processor import IMAGE_SAMPLE_KEYS

__all__ = [
    "ANCHOR_ID_KEY",
    "ANCHOR_KEY",
    "AnchorCacheMismatch",
    "ErrorLog",
    "FailedShards",
    "LoaderInputError",
    "ReaderPlan",
    "batch_samples",
    "collate_batch",
    "decode_samples",
    "read_planned",
    "shuffle_blocks",
]

log = logging.getLogger("anchorbind.data")

class LoaderInputError(InputError):
    """An :class:`InputError` raised inside the loader (``handler="raise"``).

    It can also be rebuilt from a single message, which is how PyTorch re-raises an exception
    from a DataLoader worker in the main process; so callers catch ``InputError`` whatever
    ``num_workers`` is.
    """

    def __init__(self, source: Any, reason: str | None = None, modality: str | None = None) -> None:
        if reason is None:  # re-raised from a worker: the message already names key, url and reason
            text = _worker_message(str(source))
            AnchorBindError.__init__(self, text)
            self.source, self.reason, self.modality = None, text, None
            return
        super().__init__(source, reason, modality)


def _worker_message(text: str) -> str:
    """The original message of an error PyTorch re-raises from a DataLoader worker (it prepends
    ``Caught X in DataLoader worker process N`` and the worker's traceback)."""
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    name, _, message = last.partition(": ")
    return message if message and name.endswith("Error") else text


class ErrorLog:
    """The failures of one worker since its last batch, drained into the next batch it yields.

    Args:
        max_consecutive: raise after this many failures in a row without one usable sample (an
            infinite resampled stream over shards that are all broken would otherwise spin
            silently forever); ``None`` never raises.
    """

    def __init__(self, max_consecutive: int | None = None) -> None:
        self.pending: list[dict[str, Any]] = []
        self.current_url: str | None = None
        self.max_consecutive = max_consecutive
        self._consecutive = 0

    def record(self, *, key: str | None, url: str | None, modality: str | None, reason: str) -> None:
        self.pending.append({"key": key, "url": url, "modality": modality, "reason": reason})

    def failed(self) -> None:
        """Count one unusable sample or shard; raise when nothing usable has come for too long."""
        self._consecutive += 1
        if self.max_consecutive is not None and self._consecutive >= self.max_consecutive:
            last = self.pending[-3:]
            raise LoaderInputError(
                self.current_url or "<shards>",
                f"{self._consecutive} failures in a row without one usable sample; last: {last}",
            )

    def succeeded(self) -> None:
        self._consecutive = 0

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset ``handler``: record an unreadable shard or corrupt tar member, then go on."""
        self.record(key=None, url=self.current_url, modality=None, reason=_tar_reason(exn))
        self.failed()
        return True

    def raise_tar_error(self, exn: Exception) -> bool:
        """webdataset ``handler`` for ``handler="raise"``: an InputError naming the shard."""
        raise LoaderInputError(self.current_url or "<shard>", _tar_reason(exn)) from exn

    def drain(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
        return out


def _tar_reason(exn: Exception) -> str:
    message = str(exn.args[0]) if exn.args else ""
    return f"unreadable shard or tar member ({type(exn).__name__}: {message})"


class FailedShards:
    """Shards given up after their retries, counted over every worker of one loader.

    The count is shared by the workers (a ``multiprocessing`` value created with the loader);
    when it exceeds ``limit`` the worker that saw the last one raises, naming the shards it gave
    up and the reasons. ``limit`` None: counted, never raised.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._count = multiprocessing.get_context().Value("i", 0)
        self.mine: list[str] = []

    def add(self, url: str, reason: str) -> None:
        with self._count.get_lock():
            self._count.value += 1
            total = self._count.value
        self.mine.append(f"{url} ({reason})")
        if self.limit is not None and total > self.limit:
            raise LoaderInputError(
                url,
                f"{total} shards could not be read (more than data.max_failed_shards={self.limit}); gave up on: "
                + "; ".join(self.mine[-5:]),
            )

    @property
    def count(self) -> int:
        return int(self._count.value)

    def __getstate__(self) -> dict[str, Any]:
        """Shared with the loader's workers as they start; any other copy (a pickle taken by hand,
        e.g. to check what a worker receives) counts on its own, as a shared value cannot travel there."""
        state = self.__dict__.copy()
        from multiprocessing.context import get_spawning_popen

        if get_spawning_popen() is None:
            state["_count"] = int(self._count.value)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        count = state["_count"]
        if isinstance(count, int):
            state["_count"] = multiprocessing.get_context().Value("i", count)
        self.__dict__.update(state)


@dataclass(frozen=True)
class ReaderPlan:
    """What every DataLoader worker needs to find its own shards or segments (pickles small).

    Attributes:
        urls: every shard, in the order given.
        sizes: samples per shard, or None when unknown (:mod:`anchorbind.data.sampler`).
        sampling: ``epoch`` or ``resampled`` (training); None: evaluation (one pass, the order given,
            shard ``i`` to rank ``i % world_size``, a rank's ``j``-th shard to worker ``j % workers``).
        seed: seeds epoch orders, shuffle blocks and per-sample augmentation.
        rank, world_size: this process and how many there are.
        workers: readers per process (``max(num_workers, 1)``).
        rotation: DataLoader worker ``i`` plays reader role ``(i + rotation) % workers`` (a resumed
            loader's first batch must come from the role that was next).
        batch_size, shuffle_block: batch and shuffle block sizes (training).
        first_epoch, epochs: the epoch a fresh stream starts in; how many it yields (None: endless).
        start: per-role positions to resume from (None: the start of ``first_epoch``).
        sidecars: per shard, the anchor-cache sidecar read beside it (None: the shard carries
            its cache itself, or no cache is read); None when no sidecar is read at all.
        identity: the anchor identity the sidecars hold.
    """

    urls: tuple[str, ...]
    sizes: tuple[int, ...] | None
    sampling: str | None
    seed: int
    rank: int
    world_size: int
    workers: int
    rotation: int = 0
    batch_size: int = 1
    shuffle_block: int = 1
    first_epoch: int = 0
    epochs: int | None = None
    start: tuple[dict[str, int], ...] | None = None
    sidecars: tuple[str | None, ...] | None = None
    identity: str | None = None

    def sidecar(self, shard: int) -> str | None:
        return None if self.sidecars is None else self.sidecars[shard]

    def role(self) -> int:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        return (worker + self.rotation) % self.workers


def _read_segment(url: str, start: int, stop: int | None, *, options: StreamOptions, errors: ErrorLog,
                  failed: FailedShards, raise_errors: bool, sidecar: str | None = None,
                  identity: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Samples ``[start, stop)`` of one shard, with its anchor-cache ``sidecar`` when given (read in
    lockstep, :mod:`anchorbind.data.anchor_store`); a shard given up is recorded (and counted) instead."""
    errors.current_url = url
    handler = errors.raise_tar_error if raise_errors else errors.tar_handler
    try:
        samples = shard_samples(url, options, start=start, stop=stop, handler=handler)
        if sidecar is not None:
            cached = shard_samples(sidecar, options, start=start, stop=stop, handler=_damaged(sidecar))
            try:
                yield from attach_cached(samples, cached, identity=identity or "", sidecar=sidecar)
            finally:
                cached.close()
        else:
            yield from samples
    except ShardUnreadable as err:
        if raise_errors:
            raise LoaderInputError(url, f"unreadable shard ({err})") from None
        log.warning("giving up shard %s", err)
        where = "" if err.url == url else f" (its anchor cache {err.url})"
        errors.record(key=None, url=url, modality=None, reason=f"shard skipped{where}: {err.reason} "
                      f"({err.attempts} attempt{'s' if err.attempts != 1 else ''})")
        failed.add(url, err.reason)
        errors.failed()


def _damaged(sidecar: str) -> Any:
    """The tar handler of a sidecar: ``anchorbind cache`` writes it whole, so a corrupt member or
    archive is a damaged cache, reported as such (never skipped: its rows would shift)."""

    def handle(exn: Exception) -> bool:
        raise AnchorCacheMismatch(f"anchor cache {sidecar} is damaged ({type(exn).__name__}: {exn}); rerun "
                                  "`anchorbind cache` on its shard, or train with data.anchor=live")

    return handle


def read_planned(plan: ReaderPlan, *, options: StreamOptions, errors: ErrorLog, failed: FailedShards,
                 raise_errors: bool) -> Iterator[dict[str, Any]]:
    """The raw samples of this worker's share (``plan``), read robustly (:mod:`anchorbind.data.streaming`).

    Evaluation: whole shards. Training: epoch after epoch, this reader's segments, each sample
    tagged with ``__src__`` (epoch, segment, offset in segment) and ``__seed__`` (its augmentation
    seed: a function of seed, epoch and the sample's place in the epoch's order, so the same
    whatever the process and worker counts), between ``__epoch_start__`` / ``__epoch_end__`` markers.
    """
    read = {"options": options, "errors": errors, "failed": failed, "raise_errors": raise_errors}
    role = plan.role()
    if plan.sampling is None:
        mine = [i for i in range(len(plan.urls)) if i % plan.world_size == plan.rank]
        for index in mine[role::plan.workers]:
            for _, sample in _read_segment(plan.urls[index], 0, None, sidecar=plan.sidecar(index),
                                           identity=plan.identity, **read):
                yield sample
        return
    slot, slots = plan.rank * plan.workers + role, plan.world_size * plan.workers
    position = plan.start[role] if plan.start is not None else start_position(plan.first_epoch)
    epoch = position["epoch"]
    last = None if plan.epochs is None else plan.first_epoch + plan.epochs
    while last is None or epoch < last:
        order = epoch_order(len(plan.urls), seed=plan.seed, epoch=epoch, sampling=plan.sampling)
        try:
            segments = reader_segments(order, plan.sizes, slot=slot, slots=slots, batch_size=plan.batch_size)
        except ValueError:
            if plan.sampling == "epoch":
                raise  # every epoch holds the same samples: the loader checked the first
            segments = []  # resampled: this epoch drew too few samples for a batch per reader (on every reader)
        resuming = epoch == position["epoch"]
        first = position["seg"] if resuming else 0
        yield {"__epoch_start__": epoch, "role": role, "slot": slot,
               "block": position["block"] if resuming else 0, "skip": position["taken"] if resuming else 0}
        for index in range(first, len(segments)):
            segment = segments[index]
            skip = position["offset"] if resuming and index == first else 0
            for number, sample in _read_segment(plan.urls[segment.shard], segment.start + skip, segment.stop,
                                                sidecar=plan.sidecar(segment.shard), identity=plan.identity, **read):
                sample["__src__"] = (epoch, index, number - segment.start)
                sample["__seed__"] = mix_seed(plan.seed, epoch, segment.order_index, number)
                yield sample
        yield {"__epoch_end__": epoch}
        epoch += 1


def shuffle_blocks(src: Iterator[dict[str, Any]], *, block_size: int, seed: int) -> Iterator[dict[str, Any]]:
    """Shuffle each run of ``block_size`` samples (within an epoch) by a permutation seeded by
    ``(seed, epoch, slot, block)``, and tag each sample with the reader's position after it.

    The ``__epoch_start__`` marker says which block comes first and how many of its samples to
    drop (a resumed reader: :mod:`anchorbind.data.sampler`, *Position*).
    """
    size = max(block_size, 1)
    buffer: list[dict[str, Any]] = []
    epoch = slot = role = block = skip = 0
    begin = (0, 0)

    def flush() -> Iterator[dict[str, Any]]:
        nonlocal block, skip
        if size > 1:
            random.Random(mix_seed(seed, epoch, slot, block, 0xB10C)).shuffle(buffer)
        for taken, sample in enumerate(buffer, 1):
            if taken > skip:
                sample["__pos__"] = {"role": role, "epoch": epoch, "block": block, "seg": begin[0],
                                     "offset": begin[1], "taken": taken}
                yield sample
        buffer.clear()
        block, skip = block + 1, 0

    for item in src:
        if "__epoch_start__" in item:
            epoch, slot, role, block, skip = (item["__epoch_start__"], item["slot"], item["role"], item["block"],
                                              item["skip"])
            continue
        if "__epoch_end__" in item:
            if buffer:
                yield from flush()
            yield item
            continue
        if not buffer:
            begin = item["__src__"][1:]
        buffer.append(item)
        if len(buffer) >= size:
            yield from flush()
    if buffer:
        yield from flush()


@contextlib.contextmanager
def _sample_rng(seed: int | None, name: str) -> Iterator[None]:
    """Seed ``random``, numpy and torch's CPU generator for one sample's ``name`` modality.

    In a DataLoader worker the generators are the worker's own; in the calling process
    (``num_workers=0``) their states are restored afterwards, so training's randomness is untouched.
    """
    if seed is None:
        yield
        return
    seed = mix_seed(seed, zlib.crc32(name.encode()))
    in_worker = torch.utils.data.get_worker_info() is not None
    saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.default_generator.get_state())
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.default_generator.set_state(saved[2])


def _first_present(sample: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in sample), None)


def _reason(err: Exception) -> str:
    if isinstance(err, InputError):
        return err.reason
    return f"{type(err).__name__}: {err}"


def decode_samples(
    src: Iterator[dict[str, Any]],
    *,
    processors: Mapping[str, Any],
    train: bool,
    errors: ErrorLog,
    raise_errors: bool,
    anchor_identity: str | None,
) -> Iterator[dict[str, Any]]:
    """Decode each modality through its processor's ``load``; drop only what fails.

    For each modality the first of its ``sample_keys`` present in the sample is decoded. A
    modality that fails is left out of that sample and recorded; a sample left with nothing is
    dropped and recorded. ``anchor_identity`` set means: read the cached anchor embedding and
    refuse it when another anchor computed it (always an exception: it is a configuration error).

    Epoch markers pass through; a sample's ``__seed__`` seeds the random generators its
    processors draw from (augmentation that does not depend on which worker decodes it), and its
    ``__pos__`` is kept.
    """
    for sample in src:
        if "__epoch_end__" in sample:
            yield sample
            continue
        key, url = sample.get("__key__"), sample.get("__url__")
        out: dict[str, Any] = {"__key__": key, "__url__": url, "data": {}, "json": None, "anchor": None}
        if "__pos__" in sample:
            out["__pos__"] = sample["__pos__"]
        if "json" in sample:
            try:
                out["json"] = json.loads(sample["json"])
            except (ValueError, UnicodeDecodeError) as err:
                if raise_errors:
                    raise LoaderInputError(f"{url}:{key}.json", f"invalid JSON ({err})", "json") from err
                errors.record(key=key, url=url, modality="json", reason=f"invalid JSON ({err})")
        wanted = 0
        for name, processor in processors.items():
            member = _first_present(sample, tuple(processor.sample_keys))
            if member is None:
                continue
            wanted += 1
            try:
                with _sample_rng(sample.get("__seed__"), name):
                    out["data"][name] = processor.load(sample[member], train=train)
            except Exception as err:  # any failure of one file must not end a training run
                if raise_errors:
                    raise LoaderInputError(f"{url}:{key}.{member}", _reason(err), name) from err
                errors.record(key=key, url=url, modality=name, reason=_reason(err))
        if anchor_identity is not None:
            wanted += _read_anchor_cache(sample, out, anchor_identity, errors, raise_errors)
        if not out["data"] and out["anchor"] is None:
            # with handler="raise" the failing member has raised already; a sample that simply
            # holds none of the wanted modalities is not a decoding error, so it is only recorded
            reason = ("every modality failed to decode" if wanted else
                      f"no member for any of {sorted(processors)} (members: {sorted(_members(sample))})")
            errors.record(key=key, url=url, modality=None, reason=reason)
            errors.failed()
            continue
        errors.succeeded()
        out["errors"] = errors.drain()
        yield out


def _members(sample: Mapping[str, Any]) -> list[str]:
    return [k for k in sample if not k.startswith("__")]


def _read_anchor_cache(sample: Mapping[str, Any], out: dict[str, Any], identity: str, errors: ErrorLog,
                       raise_errors: bool) -> int:
    """Put the cached embedding in ``out["anchor"]``; returns 1 if the sample should have one."""
    key, url = sample.get("__key__"), sample.get("__url__")
    if ANCHOR_KEY not in sample:
        if not any(k in sample for k in IMAGE_SAMPLE_KEYS):
            return 0  # no image, so no embedding to expect
        why = bytes(sample.get(ANCHOR_ERROR_KEY, b"")).decode("utf-8", "replace").strip()
        reason = (f"no cached anchor embedding: {why}" if why else
                  "no cached anchor embedding (the image failed when caching, or the shard was never cached)")
    else:
        cached_id = bytes(sample.get(ANCHOR_ID_KEY, b"")).decode("utf-8", "replace").strip()
        if cached_id != identity:
            raise AnchorCacheMismatch(
                f"shard {url}, sample {key}: the anchor cache was computed by {cached_id or 'an unknown anchor'!r}, "
                f"but this run's anchor is {identity!r}; rerun `anchorbind cache` with this anchor, or train with "
                "data.anchor=live"
            )
        try:
            vector = np.load(io.BytesIO(sample[ANCHOR_KEY]), allow_pickle=False)
            if vector.ndim != 1 or not np.isfinite(vector).all():
                raise ValueError(f"expected a finite 1-D vector, got shape {vector.shape}")
            out["anchor"] = vector.astype(np.float32)
            return 1
        except (ValueError, OSError, EOFError) as err:
            reason = f"unreadable cached anchor embedding ({err})"
    if raise_errors:
        raise LoaderInputError(f"{url}:{key}.{ANCHOR_KEY}", reason, "image_embedding")
    errors.record(key=key, url=url, modality="image_embedding", reason=reason)
    return 1


def _collate(bucket: list[dict[str, Any]], processors: Mapping[str, Any], errors: ErrorLog) -> dict[str, Any]:
    batch = collate_batch(bucket, processors, errors.drain())
    if bucket and "__pos__" in bucket[-1]:
        batch["__position__"] = bucket[-1]["__pos__"]  # the reader's position after this batch
    return batch


def batch_samples(
    src: Iterator[dict[str, Any]],
    *,
    batch_size: int,
    processors: Mapping[str, Any],
    partial: bool,
    errors: ErrorLog,
    hold_last: bool,
) -> Iterator[dict[str, Any]]:
    """Group decoded samples into batches; each modality collated over the rows that have it.

    Args:
        partial: yield the final incomplete batch (evaluation) or drop it (training).
        hold_last: keep one batch back so that failures after the last sample (a truncated tar
            tail) still reach the caller attached to the final batch; for finite streams. When a
            finite evaluation stream has failures but not one sample, an empty batch (``B == 0``)
            carries them.

    A batch never spans two epochs: at an ``__epoch_end__`` marker an incomplete batch is dropped
    (training; its samples' failures ride with the next batch). A training batch carries
    ``__position__``, the reader's position after its last sample.
    """
    held: dict[str, Any] | None = None
    bucket: list[dict[str, Any]] = []
    for sample in src:
        if "__epoch_end__" in sample:
            if bucket and not partial:
                errors.pending[:0] = [e for s in bucket for e in s["errors"]]
                bucket = []
            continue
        bucket.append(sample)
        if len(bucket) < batch_size:
            continue
        batch = _collate(bucket, processors, errors)
        bucket = []
        if not hold_last:
            yield batch
            continue
        if held is not None:
            yield held
        held = batch
    if bucket and partial:
        batch = _collate(bucket, processors, errors)
        if held is not None:
            yield held
        held = batch
    leftover = [e for s in bucket for e in s["errors"]] if not partial else []
    leftover += errors.drain()
    if held is not None:
        held["errors"].extend(leftover)
        yield held
    elif leftover and partial:
        yield collate_batch([], processors, leftover)
    elif leftover:
        warnings.warn(f"data loader: {len(leftover)} failures in a stream too short for one full batch: "
                      f"{leftover[:3]}", stacklevel=2)


def collate_batch(
    samples: list[dict[str, Any]], processors: Mapping[str, Any], late_errors: list[dict[str, Any]]
) -> dict[str, Any]:
    """The batch format documented in :mod:`anchorbind.data.loader`."""
    size = len(samples)
    batch: dict[str, Any] = {
        "__key__": [s["__key__"] for s in samples],
        "__url__": [s["__url__"] for s in samples],
        "json": [s["json"] for s in samples],
        "mask": {},
        "errors": [e for s in samples for e in s["errors"]] + list(late_errors),
    }
    for name, processor in processors.items():
        rows = [i for i, s in enumerate(samples) if name in s["data"]]
        if rows:
            batch[name] = processor.collate([samples[i]["data"][name] for i in rows])
            mask = torch.zeros(size, dtype=torch.bool)
            mask[rows] = True
            batch["mask"][name] = mask
    cached = [i for i, s in enumerate(samples) if s["anchor"] is not None]
    if cached:
        width = samples[cached[0]]["anchor"].shape[0]
        embedding = torch.zeros(size, width, dtype=torch.float32)
        mask = torch.zeros(size, dtype=torch.bool)
        for i in cached:
            embedding[i] = torch.from_numpy(samples[i]["anchor"])
            mask[i] = True
        batch["image_embedding"], batch["mask"]["image_embedding"] = embedding, mask
    return batch
