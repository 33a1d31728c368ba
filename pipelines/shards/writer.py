"""Atomic, parallel WebDataset shard writing with a manifest of counts.

Shards are named ``{prefix}-{index:06d}.tar`` and written to a hidden temporary name that is
renamed into place when complete. The manifest (``manifest.json``) lists every shard with its
sample count and per-key counts; it is written last, atomically, so its presence means the
whole split is complete.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import webdataset as wds

from bind.data.shardlist import iter_shard

__all__ = ["shard_name", "write_manifest", "write_shard", "write_shards_parallel"]


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def write_shard(path: Path, samples: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Write ``samples`` to ``path`` atomically; returns ``{name, samples, keys}`` counts."""
    tmp = path.with_name(f".{path.name}.writing")
    counts: Counter[str] = Counter()
    total = 0
    with wds.TarWriter(str(tmp)) as writer:
        for sample in samples:
            writer.write(sample)
            counts.update(k for k in sample if not k.startswith("__"))
            total += 1
    os.replace(tmp, path)
    return {"name": path.name, "samples": total, "keys": dict(sorted(counts.items()))}


def write_manifest(out_dir: Path, shards: Sequence[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Write ``out_dir/manifest.json`` atomically and return it."""
    manifest = {
        "shards": list(shards),
        "total": sum(s["samples"] for s in shards),
        "keys": dict(sum((Counter(s["keys"]) for s in shards), Counter())),
        **extra,
    }
    tmp = out_dir / ".manifest.json.writing"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out_dir / "manifest.json")
    return manifest


def write_shards_parallel(
    out_dir: Path,
    prefix: str,
    total: int,
    shard_size: int,
    make_samples: Callable[[int, int], Iterable[dict[str, Any]]],
    *,
    workers: int = 1,
    **manifest_extra: Any,
) -> dict[str, Any]:
    """Write ``ceil(total / shard_size)`` shards, one task per shard, in ``workers`` processes.

    ``make_samples(start, stop)`` yields the samples of indices ``[start, stop)``; it must be a
    picklable module-level callable (or a ``functools.partial`` of one). Shards already complete
    (present with their final name) are kept, so an interrupted run resumes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ranges = [(i, start, min(start + shard_size, total)) for i, start in enumerate(range(0, total, shard_size))]
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for index, start, stop in ranges:
        path = out_dir / shard_name(prefix, index)
        if path.exists():
            results[index] = {"name": path.name, "samples": stop - start, "keys": None}
        else:
            todo.append((index, start, stop))
    if workers <= 1 or len(todo) <= 1:
        for index, start, stop in todo:
            results[index] = write_shard(out_dir / shard_name(prefix, index), make_samples(start, stop))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {index: pool.submit(_write_range, out_dir / shard_name(prefix, index), make_samples, start, stop)
                       for index, start, stop in todo}
            for index, future in futures.items():
                results[index] = future.result()
    for result in results.values():
        if result["keys"] is None:  # a resumed shard: count its members
            result.update(_count_shard(out_dir / result["name"]))
    return write_manifest(out_dir, [results[i] for i in sorted(results)], **manifest_extra)


def _write_range(path: Path, make_samples: Callable[[int, int], Iterable[dict[str, Any]]], start: int,
                 stop: int) -> dict[str, Any]:
    return write_shard(path, make_samples(start, stop))


def _count_shard(path: Path) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    total = 0
    for sample in iter_shard(path):
        counts.update(k for k in sample if not k.startswith("__"))
        total += 1
    return {"samples": total, "keys": dict(sorted(counts.items()))}
