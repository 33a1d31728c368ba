"""The small stages the loader's WebDataset pipeline is composed of (each a generator).

Each stage takes an iterator and yields items. Shapes along the pipeline::

    {"url"}                                    -- track_urls (remembers the shard being read)
    {"url"}                                    -- wds.tarfile_to_samples
    {"__key__", "__url__", member: bytes}       -- decode_samples
    {"__key__", "__url__", "data": {modality: loaded}, "json", "anchor", "errors"}
                                               -- batch_samples
    batches (format documented in anchorbind.data.loader)

Nothing is dropped silently: every failure (a corrupt tar, a member a plugin refuses, a sample
with nothing decodable) is recorded in the worker's :class:`ErrorLog` and rides along with the
next batch that leaves the worker, so counts reach the main process even from DataLoader workers.
"""

from __future__ import annotations

import io
import json
import random
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from anchorbind.errors import AnchorBindError, InputError
from anchorbind.image_processor import IMAGE_SAMPLE_KEYS

__all__ = [
    "ANCHOR_ID_KEY",
    "ANCHOR_KEY",
    "AnchorCacheMismatch",
    "ErrorLog",
    "LoaderInputError",
    "batch_samples",
    "collate_batch",
    "decode_samples",
    "seeded_shuffle",
    "split_by_rank",
    "track_urls",
]

ANCHOR_KEY = "anchor.npy"
"""Member holding a sample's cached anchor embedding: float16, shape ``(D,)``."""
ANCHOR_ID_KEY = "anchor_id.txt"
"""Member holding the identity of the anchor that computed ``anchor.npy``."""


class AnchorCacheMismatch(AnchorBindError):
    """Cached anchor embeddings were computed by a different anchor than the one in use."""


class LoaderInputError(InputError):
    """An :class:`InputError` raised inside the loader (``handler="raise"``).

    It can also be rebuilt from a single message, which is how PyTorch re-raises an exception
    from a DataLoader worker in the main process; so callers catch ``InputError`` whatever
    ``num_workers`` is.
    """

    def __init__(self, source: Any, reason: str | None = None, modality: str | None = None) -> None:
        if reason is None:  # re-raised from a worker: the message already names key, url and reason
            AnchorBindError.__init__(self, str(source))
            self.source, self.reason, self.modality = None, str(source), None
            return
        super().__init__(source, reason, modality)


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


def track_urls(src: Iterator[dict[str, Any]], *, errors: ErrorLog) -> Iterator[dict[str, Any]]:
    """Remember the shard being opened, so tar errors (which carry no sample) can name it.

    webdataset opens the next shard only after the previous one is exhausted, so the URL seen
    last here is the one any tar error comes from.
    """
    for item in src:
        errors.current_url = item["url"]
        yield item


def split_by_rank(src: Iterator[Any], *, rank: int, world_size: int) -> Iterator[Any]:
    """Every ``world_size``-th shard starting at ``rank`` (``wds.split_by_node`` with a fixed rank).

    The rank is read once in the process that builds the loader: DataLoader workers may not
    see the process group (spawned workers never do), where ``wds.split_by_node`` would then
    silently give every rank every shard.
    """
    for index, item in enumerate(src):
        if index % world_size == rank:
            yield item


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
    """
    for sample in src:
        key, url = sample.get("__key__"), sample.get("__url__")
        out: dict[str, Any] = {"__key__": key, "__url__": url, "data": {}, "json": None, "anchor": None}
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
        reason = "no cached anchor embedding (the image failed when caching, or the shard was never cached)"
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


def seeded_shuffle(src: Iterator[Any], *, bufsize: int, seed: int) -> Iterator[Any]:
    """A buffer shuffle whose RNG depends only on ``seed`` (the caller mixes in rank and worker)."""
    rng = random.Random(seed)
    buffer: list[Any] = []
    for item in src:
        buffer.append(item)
        if len(buffer) >= bufsize:
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


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
    """
    held: dict[str, Any] | None = None
    bucket: list[dict[str, Any]] = []
    for sample in src:
        bucket.append(sample)
        if len(bucket) < batch_size:
            continue
        batch = collate_batch(bucket, processors, errors.drain())
        bucket = []
        if not hold_last:
            yield batch
            continue
        if held is not None:
            yield held
        held = batch
    if bucket and partial:
        batch = collate_batch(bucket, processors, errors.drain())
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
