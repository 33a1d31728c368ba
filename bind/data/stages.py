"""The small stages our WebDataset pipelines are composed of (webdataset style: generators).

Each stage takes an iterator of samples and yields samples. Shapes along the pipeline::

    url dicts {"url"}                           -> tarfile_samples
    raw samples {"__key__", "__url__", ext: bytes} -> decode_sample
    decoded {"__key__", "__url__", "data": {modality: sample}, "json", "anchor", "errors"}
                                                -> batch_samples
    batches (see bind.data.loader)

Decode errors never disappear: they are recorded in a per-worker :class:`ErrorLog` and ride
along with the next sample that leaves the worker, so the main process can count them.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from bind.errors import AnchorBindError, InputError

__all__ = ["AnchorCacheMismatch", "ErrorLog", "batch_samples", "decode_sample", "seeded_shuffle"]

ANCHOR_KEY = "anchor.npy"
ANCHOR_ID_KEY = "anchor_id.txt"


class AnchorCacheMismatch(AnchorBindError):
    """Cached anchor embeddings were computed by a different anchor than the one in use."""


class ErrorLog:
    """Decode errors of one worker, drained into the next outgoing sample."""

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] = []

    def record(self, *, key: str | None, url: str | None, modality: str | None, reason: str) -> None:
        self.pending.append({"key": key, "url": url, "modality": modality, "reason": reason})

    def tar_handler(self, exn: Exception) -> bool:
        """A webdataset ``handler``: record a corrupt/unreadable tar member, keep going."""
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and ("/" in a or ".tar" in a)), None)
        self.record(key=None, url=url, modality=None, reason=f"{type(exn).__name__}: {exn}")
        return True

    def drain(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
        return out


def _first_present(sample: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    return next((k for k in keys if k in sample), None)


def decode_sample(
    src: Iterator[dict[str, Any]],
    *,
    processors: Mapping[str, Any],
    train: bool,
    errors: ErrorLog,
    raise_errors: bool,
    anchor_identity: str | None,
) -> Iterator[dict[str, Any]]:
    """Decode each modality through its processor's ``load``; drop only what fails.

    ``anchor_identity`` set means: read the cached anchor embedding and refuse it when it was
    computed by another anchor (a mismatch always raises — it is a configuration error).
    """
    for sample in src:
        key, url = sample.get("__key__"), sample.get("__url__")
        out: dict[str, Any] = {"__key__": key, "__url__": url, "data": {}, "json": None, "anchor": None}
        if "json" in sample:
            try:
                out["json"] = json.loads(sample["json"])
            except (ValueError, UnicodeDecodeError) as err:
                errors.record(key=key, url=url, modality="json", reason=f"invalid JSON ({err})")
        for name, processor in processors.items():
            member = _first_present(sample, processor.sample_keys)
            if member is None:
                continue
            try:
                out["data"][name] = processor.load(sample[member], train=train)
            except InputError as err:
                if raise_errors:
                    raise InputError(f"{url}:{key}.{member}", err.reason, name) from err
                errors.record(key=key, url=url, modality=name, reason=err.reason)
        if anchor_identity is not None and ANCHOR_KEY in sample:
            cached_id = bytes(sample.get(ANCHOR_ID_KEY, b"")).decode("utf-8", "replace").strip()
            if cached_id != anchor_identity:
                raise AnchorCacheMismatch(
                    f"{url}:{key}: anchor cache was computed by {cached_id or 'an unknown anchor'}, but this run's "
                    f"anchor is {anchor_identity}; rerun `anchorbind cache` or set data.anchor=live"
                )
            out["anchor"] = np.load(io.BytesIO(sample[ANCHOR_KEY]), allow_pickle=False).astype(np.float32)
        if not out["data"] and out["anchor"] is None:
            errors.record(key=key, url=url, modality=None, reason="no decodable modality in sample")
            continue
        out["errors"] = errors.drain()
        yield out


def seeded_shuffle(src: Iterator[Any], *, bufsize: int, seed: int, worker_seed: Any) -> Iterator[Any]:
    """A reservoir shuffle whose RNG depends only on ``seed`` and the (rank, worker) identity."""
    rng = random.Random(seed * 1_000_003 + worker_seed())
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
) -> Iterator[dict[str, Any]]:
    """Group decoded samples into batches; each modality collated over the rows that have it."""
    bucket: list[dict[str, Any]] = []
    for sample in src:
        bucket.append(sample)
        if len(bucket) == batch_size:
            yield collate_batch(bucket, processors, errors.drain())
            bucket = []
    if bucket and partial:
        yield collate_batch(bucket, processors, errors.drain())


def collate_batch(
    samples: list[dict[str, Any]], processors: Mapping[str, Any], late_errors: list[dict[str, Any]]
) -> dict[str, Any]:
    """The batch format documented in :mod:`bind.data.loader`."""
    size = len(samples)
    batch: dict[str, Any] = {
        "__key__": [s["__key__"] for s in samples],
        "__url__": [s["__url__"] for s in samples],
        "json": [s["json"] for s in samples],
        "mask": {},
        "errors": [e for s in samples for e in s["errors"]] + late_errors,
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
        embedding = torch.zeros(size, width)
        for i in cached:
            embedding[i] = torch.from_numpy(samples[i]["anchor"])
        mask = torch.zeros(size, dtype=torch.bool)
        mask[cached] = True
        batch["image_embedding"], batch["mask"]["image_embedding"] = embedding, mask
    return batch
