"""Build anchor-cache sidecars (:mod:`anchorbind.data.anchor_store`) from shards anywhere.

Shards are read through the loader's robust streaming (local files, ``http(s)``, ``pipe:``
commands; timeouts and retries), so a cache is built from the same URLs training reads. DataLoader
workers read and decode whole shards, each yielding its shard's images in chunks of
``batch_size``; the main process runs the anchor on each chunk and appends the embeddings to
that shard's sidecar. Decoding thus overlaps the anchor's forward pass.

Each sidecar is written under a hidden temporary name and renamed into place when its shard is
complete, then its record (``<sidecar>.json``) is written the same way: a killed run never
leaves a partial sidecar that reads as finished, and a rerun skips the shards whose record
matches (the next run also removes a killed run's temporaries). A shard that cannot be read to
its end (after the stream's retries) gets no sidecar and is reported; the others are cached.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anchorbind.anchor import FrozenAnchor
from anchorbind.data.anchor_store import (
    ANCHOR_ERROR_KEY,
    ANCHOR_KEY,
    IDENTITY_FILE,
    SidecarRecord,
    cache_folder,
    shard_name,
)
from anchorbind.data.loader import single_thread_worker
from anchorbind.data.shardlist import iter_shard
from anchorbind.data.streaming import StreamOptions, local_path
from anchorbind.data.tempfiles import remove_stale, temporary_name

__all__ = ["SidecarJob", "write_sidecars"]


@dataclass(frozen=True)
class SidecarJob:
    """One data shard to cache and where its sidecar goes (a local path)."""

    url: str
    sidecar: Path


NO_IMAGE = "no image in the sample"
"""The sidecar entry of a sample without an image (not a failure: it has nothing to embed)."""




def _reason(err: Exception) -> str:
    return getattr(err, "reason", None) or f"{type(err).__name__}: {err}"


class _ShardImages(torch.utils.data.IterableDataset):
    """Worker ``w`` of ``W`` reads jobs ``w, w + W, ...``, yielding per shard its chunks of decoded images.

    A chunk: ``{"job", "entries": [(key, None | reason)], "images": tensor | None, "done": bool}``
    (a ``None`` reason: the sample's image is the next row of ``images``), or
    ``{"job", "failed": reason}`` when the shard cannot be read to its end.
    """

    def __init__(self, jobs: Sequence[SidecarJob], processor: Any, batch_size: int, options: StreamOptions) -> None:
        self.jobs, self.processor, self.batch_size, self.options = list(jobs), processor, batch_size, options

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in range(worker, len(self.jobs), workers):
            yield from self._chunks(index, self.jobs[index].url)

    def _chunks(self, job: int, url: str) -> Iterator[dict[str, Any]]:
        entries: list[tuple[str, str | None]] = []
        images: list[Any] = []
        keys = tuple(self.processor.sample_keys)
        try:
            for sample in iter_shard(url, self.options):
                member = next((k for k in keys if k in sample), None)
                if member is None:
                    entries.append((sample["__key__"], NO_IMAGE))
                    continue
                try:
                    images.append(self.processor.load(sample[member]))
                    entries.append((sample["__key__"], None))
                except Exception as err:  # one bad image is reported in the sidecar, not fatal
                    entries.append((sample["__key__"], f"image does not decode: {_reason(err)}"))
                if len(images) >= self.batch_size:
                    yield {"job": job, "entries": entries, "images": self.processor.collate(images), "done": False}
                    entries, images = [], []
        except Exception as err:  # an unreadable or corrupt shard: reported, the other shards go on
            yield {"job": job, "failed": _reason(err)}
            return
        yield {"job": job, "entries": entries, "images": self.processor.collate(images) if images else None,
               "done": True}


def tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """A read-only member ``name`` holding ``data``, ready for ``TarFile.addfile`` (mtime 0: reproducible)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    return info, io.BytesIO(data)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(temporary_name(path.name))
    tmp.write_text(text)
    os.replace(tmp, path)


class _SidecarWriter:
    """One sidecar being written: a temporary tar, renamed into place by :meth:`finish`."""

    def __init__(self, job: SidecarJob) -> None:
        self.job = job
        self.tmp = job.sidecar.with_name(temporary_name(job.sidecar.name))
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 -- closed by finish/abort
        self.samples = self.cached = 0
        self.failures: list[tuple[str, str]] = []

    def add(self, entries: Sequence[tuple[str, str | None]], vectors: np.ndarray | None) -> None:
        row = 0
        for key, reason in entries:
            if reason is None:
                assert vectors is not None
                self.tar.addfile(*tar_member(f"{key}.{ANCHOR_KEY}", npy_bytes(vectors[row])))
                row += 1
                self.cached += 1
            else:
                self.tar.addfile(*tar_member(f"{key}.{ANCHOR_ERROR_KEY}", reason.encode("utf-8")))
                if reason != NO_IMAGE:
                    self.failures.append((key, reason))
            self.samples += 1

    def finish(self, identity: str) -> SidecarRecord:
        self.tar.close()
        os.replace(self.tmp, self.job.sidecar)
        shard = local_path(self.job.url)
        size = os.path.getsize(shard) if shard is not None and not self.job.url.startswith("pipe:") else None
        record = SidecarRecord(identity, self.samples, self.cached, len(self.failures), size)
        side = self.job.sidecar
        write_atomic(side.with_name(side.name + ".json"), json.dumps(record.to_dict(), indent=2))
        return record

    def abort(self) -> None:
        self.tar.close()
        self.tmp.unlink(missing_ok=True)


@dataclass
class SidecarOutcome:
    """What :func:`write_sidecars` did with each job."""

    written: list[str] = field(default_factory=list)
    samples: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    failed_shards: list[dict[str, str]] = field(default_factory=list)


def prepare_folder(root: str, identity: str) -> Path:
    """Create ``<root>/<digest>/`` with its ``anchor.json`` (the identity it is for); a local root only."""
    folder = Path(cache_folder(identity, root))
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / IDENTITY_FILE
    if not marker.exists():
        write_atomic(marker, json.dumps({"identity": identity}, indent=2))
    return folder


def jobs_for(urls: Sequence[str], identity: str, root_of: Any) -> list[SidecarJob]:
    """One job per shard; ``root_of(url)`` gives the local cache root of each.

    Raises:
        ValueError: two shards would share a sidecar (same file name under one root).
    """
    jobs, seen = [], {}
    for url in urls:
        folder = prepare_folder(root_of(url), identity)
        sidecar = folder / shard_name(url)
        if sidecar in seen:
            raise ValueError(f"{url} and {seen[sidecar]} have the same file name and would share the anchor cache "
                             f"{sidecar}; cache them into different --out folders")
        seen[sidecar] = url
        jobs.append(SidecarJob(url, sidecar))
    return jobs


def write_sidecars(anchor: FrozenAnchor, jobs: Sequence[SidecarJob], *, batch_size: int, num_workers: int,
                   device: torch.device, options: StreamOptions, progress: Any = None) -> SidecarOutcome:
    """Write the sidecar of every job (module docstring); ``progress`` is updated once per finished shard."""
    outcome = SidecarOutcome()
    for job in jobs:  # a killed run's temporaries of these sidecars (another process may own the rest)
        remove_stale(job.sidecar.parent, names=[job.sidecar.name, job.sidecar.name + ".json"])
    dataset = _ShardImages(jobs, anchor.processor, batch_size, options)
    workers = min(num_workers, len(jobs))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                         prefetch_factor=2 if workers else None,
                                         worker_init_fn=single_thread_worker if workers else None)
    writers: dict[int, _SidecarWriter] = {}
    try:
        with torch.inference_mode():
            for chunk in loader:
                job = chunk["job"]
                if "failed" in chunk:
                    if job in writers:
                        writers.pop(job).abort()
                    outcome.failed_shards.append({"shard": jobs[job].url, "reason": chunk["failed"]})
                    if progress is not None:
                        progress.update(1)
                    continue
                writer = writers.get(job) or writers.setdefault(job, _SidecarWriter(jobs[job]))
                images = chunk["images"]
                vectors = None
                if images is not None:
                    vectors = anchor(images.to(device)).float().cpu().numpy().astype(np.float16)
                writer.add(chunk["entries"], vectors)
                if chunk["done"]:
                    record = writers.pop(job).finish(anchor.identity)
                    outcome.written.append(jobs[job].url)
                    outcome.samples += record.cached
                    outcome.failures.extend({"shard": jobs[job].url, "key": k, "reason": r}
                                            for k, r in writer.failures)
                    if progress is not None:
                        progress.update(1)
    finally:
        for writer in writers.values():
            writer.abort()
    return outcome
