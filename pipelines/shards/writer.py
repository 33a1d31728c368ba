"""Atomic, parallel WebDataset shard writing with a manifest of counts.

Shards are named ``{prefix}-{index:06d}.tar``. Each is written by ``webdataset.TarWriter`` to a
hidden temporary name and renamed into place (``os.replace``) when complete, so a shard with its
final name is always whole. Members get a fixed mtime, so the same samples give byte-identical
shards. The manifest (``manifest.json``) is written last, atomically, so its presence means the
split is complete::

    {"shards": [{"name", "samples", "keys": {member: count}, "modalities": {modality: count}}],
     "total": int, "keys": {...}, "modalities": {...}, "plan": {...}, "created_by": str, ...}

``modalities`` counts samples per registered modality (the anchor's ``image`` and every plugin),
from each one's ``sample_keys``. ``plan`` records what the split was generated from (prefix,
total, shard size, seed, generator config): an interrupted run resumes (finished shards are kept)
only with the same plan, and a different plan for a non-empty folder is refused instead of mixing
two datasets.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm.auto import tqdm

from anchorbind.data.shardlist import iter_shard
from anchorbind.data.tempfiles import remove_stale
from anchorbind.errors import ConfigError

__all__ = [
    "PlanMismatchError",
    "ShardSink",
    "count_modalities",
    "finish_entry",
    "shard_name",
    "write_manifest",
    "write_shard",
    "write_shards_parallel",
]

MANIFEST = "manifest.json"
PLAN = ".plan.json"


class PlanMismatchError(ConfigError, FileExistsError):
    """The output folder holds another dataset: shards generated from other settings or another source.

    A :class:`~anchorbind.errors.ConfigError` (the CLI prints its one-line message and exits 2)
    and a ``FileExistsError``.
    """


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def write_shard(path: str | os.PathLike[str], samples: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Write ``samples`` (webdataset dicts: ``__key__`` + members) to ``path`` atomically.

    Returns:
        ``{"name", "samples", "keys": {member: count}, "layouts": {"k1,k2,...": count}}``; the
        layouts (sets of members per sample) let the caller count modalities without importing
        the plugins in worker processes.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.writing-{os.getpid()}")
    keys: Counter[str] = Counter()
    layouts: Counter[str] = Counter()
    total = 0
    try:
        with wds.TarWriter(str(tmp), mtime=0) as writer:
            for sample in samples:
                writer.write(dict(sample))
                members = sorted(k for k in sample if not k.startswith("__"))
                keys.update(members)
                layouts[",".join(members)] += 1
                total += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"name": path.name, "samples": total, "keys": dict(sorted(keys.items())), "layouts": dict(layouts)}


class ShardSink:
    """Streams samples into consecutive shards of ``shard_size``, each written atomically.

    Used where samples arrive one by one (conversion): nothing is held in memory beyond the open
    tar, and each shard gets its final name only when complete. :meth:`close` finishes the last,
    partial shard; :attr:`entries` lists what was written (as :func:`write_shard` returns it).
    """

    def __init__(self, out_dir: str | os.PathLike[str], prefix: str, shard_size: int) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir, self.prefix, self.shard_size = Path(out_dir), prefix, shard_size
        self.entries: list[dict[str, Any]] = []
        self._writer: wds.TarWriter | None = None
        self._tmp: Path | None = None
        self._entry: dict[str, Any] = {}

    def write(self, sample: Mapping[str, Any]) -> None:
        if self._writer is None:
            name = shard_name(self.prefix, len(self.entries))
            self._tmp = self.out_dir / f".{name}.writing-{os.getpid()}"
            self._writer = wds.TarWriter(str(self._tmp), mtime=0)
            self._entry = {"name": name, "samples": 0, "keys": Counter(), "layouts": Counter()}
        self._writer.write(dict(sample))
        members = sorted(k for k in sample if not k.startswith("__"))
        self._entry["keys"].update(members)
        self._entry["layouts"][",".join(members)] += 1
        self._entry["samples"] += 1
        if self._entry["samples"] == self.shard_size:
            self._finish()

    def _finish(self) -> None:
        assert self._writer is not None and self._tmp is not None
        self._writer.close()
        os.replace(self._tmp, self.out_dir / self._entry["name"])
        entry = self._entry
        self.entries.append({"name": entry["name"], "samples": entry["samples"],
                             "keys": dict(sorted(entry["keys"].items())), "layouts": dict(entry["layouts"])})
        self._writer, self._tmp = None, None

    def close(self) -> list[dict[str, Any]]:
        if self._writer is not None:
            self._finish()
        return self.entries

    def abort(self) -> None:
        """Drop the shard being written (its temporary file); finished shards stay."""
        if self._writer is not None and self._tmp is not None:
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
        self._writer, self._tmp = None, None

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def count_modalities(layouts: Mapping[str, int]) -> dict[str, int]:
    """Samples per registered modality from ``{"member,member,...": samples}``."""
    from anchorbind.evaluation.shard_check import member_readers

    readers = member_readers()
    counts: Counter[str] = Counter()
    for layout, n in layouts.items():
        members = set(layout.split(",")) if layout else set()
        for modality, keys in readers.items():
            if members & set(keys):
                counts[modality] += n
    return dict(sorted(counts.items()))


def finish_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A manifest entry from a :func:`write_shard` result: member layouts -> modality counts."""
    layouts = entry.pop("layouts")
    entry["modalities"] = count_modalities(layouts)
    return entry


def write_manifest(
    out_dir: str | os.PathLike[str], shards: Sequence[Mapping[str, Any]], **extra: Any
) -> dict[str, Any]:
    """Write ``out_dir/manifest.json`` atomically and return it.

    Args:
        shards: ``{"name", "samples", "keys", "modalities"}`` per shard, in order.
        **extra: more top-level fields (``created_by``, ``plan``, ``source``...).
    """
    out_dir = Path(out_dir)
    manifest = {
        "shards": [dict(s) for s in shards],
        "total": sum(s["samples"] for s in shards),
        "keys": dict(sorted(sum((Counter(s["keys"]) for s in shards), Counter()).items())),
        "modalities": dict(sorted(sum((Counter(s["modalities"]) for s in shards), Counter()).items())),
        **extra,
    }
    _write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.writing-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _existing_plan(out_dir: Path) -> dict[str, Any] | None:
    for name in (MANIFEST, PLAN):
        try:
            record = json.loads((out_dir / name).read_text())
        except (OSError, ValueError):
            continue
        plan = record.get("plan", {}) if name == MANIFEST and isinstance(record, dict) else record
        return plan if isinstance(plan, dict) else {}
    return None


def _check_plan(out_dir: Path, prefix: str, plan: dict[str, Any]) -> None:
    existing = _existing_plan(out_dir)
    if existing is None:
        if any(out_dir.glob(f"{prefix}-*.tar")):
            raise PlanMismatchError(
                f"{out_dir} already holds {prefix}-*.tar shards with no record of how they were made; "
                "write to an empty folder (or delete these shards)"
            )
        return
    plain = json.loads(json.dumps(plan, default=str))
    differences = _differences(existing, plain)
    if differences:
        shown = ", ".join(f"{k}: {old} there, {new} now" for k, old, new in differences[:3])
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise PlanMismatchError(
            f"{out_dir} holds shards generated with other settings ({shown}{more}); "
            "write to another folder or delete it, so two datasets are never mixed"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs, so a nested config names the one field."""
    found = []
    for key in sorted(set(new) | (set(old) if prefix else set())):  # top level: only what the plan sets
        before, after = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            found += _differences(before, after, f"{prefix}{key}.")
        elif before != after:
            found.append((f"{prefix}{key}", _short(before), _short(after)))
    return found


def write_shards_parallel(
    out_dir: str | os.PathLike[str],
    prefix: str,
    total: int,
    shard_size: int,
    make_samples: Callable[[int, int], Iterable[Mapping[str, Any]]],
    *,
    workers: int = 1,
    plan: Mapping[str, Any] | None = None,
    progress: bool = True,
    **manifest_extra: Any,
) -> dict[str, Any]:
    """Write samples ``0..total-1`` as ``ceil(total / shard_size)`` shards in ``workers`` processes.

    The index range is cut into shard-sized chunks; each chunk is one task (one shard) for a
    process pool (``spawn``: safe next to torch and threads). ``make_samples(start, stop)``
    returns the samples of indices ``[start, stop)``: it must be picklable (a module-level
    function, or a ``functools.partial`` of one) and deterministic, so that a resumed run equals
    an uninterrupted one.

    Args:
        out_dir: the split's folder (created).
        prefix: shard name prefix.
        total: number of samples.
        shard_size: samples per shard (the last shard may be smaller).
        make_samples: the sample generator.
        workers: processes (``<= 1``: in this process).
        plan: what the samples depend on (seed, generator config...); recorded in the manifest
            and compared on resume.
        progress: show a progress bar over the shards still to write (on stderr).
        **manifest_extra: more manifest fields (e.g. ``created_by``).

    Returns:
        The manifest.

    Raises:
        PlanMismatchError: ``out_dir`` holds shards made with another plan.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    full_plan = {"prefix": prefix, "total": total, "shard_size": shard_size, **dict(plan or {})}
    _check_plan(out_dir, prefix, full_plan)
    remove_stale(out_dir)  # temporaries of a killed run (never read: not *.tar, hidden)
    _write_json_atomic(out_dir / PLAN, json.loads(json.dumps(full_plan, default=str)))
    ranges = [(i, start, min(start + shard_size, total)) for i, start in enumerate(range(0, total, shard_size))]
    results: dict[int, dict[str, Any]] = {}
    todo = []
    for index, start, stop in ranges:
        path = out_dir / shard_name(prefix, index)
        if path.exists():  # complete: only whole shards ever get their final name
            results[index] = _count_shard(path)
        else:
            todo.append((index, start, stop))
    bar = tqdm(total=len(todo), desc=f"{out_dir.name} shards", unit="shard", disable=not progress or not todo)
    if workers <= 1 or len(todo) <= 1:
        for index, start, stop in todo:
            results[index] = write_shard(out_dir / shard_name(prefix, index), make_samples(start, stop))
            bar.update(1)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context) as pool:
            futures = {pool.submit(_write_range, out_dir / shard_name(prefix, index), make_samples, start, stop): index
                       for index, start, stop in todo}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
    bar.close()
    entries = [finish_entry(results[i]) for i in sorted(results)]
    return write_manifest(out_dir, entries, plan=full_plan, **manifest_extra)


def _write_range(path: Path, make_samples: Callable[[int, int], Iterable[Mapping[str, Any]]], start: int,
                 stop: int) -> dict[str, Any]:
    return write_shard(path, make_samples(start, stop))


def _count_shard(path: Path) -> dict[str, Any]:
    keys: Counter[str] = Counter()
    layouts: Counter[str] = Counter()
    total = 0
    for sample in iter_shard(path):
        members = sorted(k for k in sample if not k.startswith("__"))
        keys.update(members)
        layouts[",".join(members)] += 1
        total += 1
    return {"name": path.name, "samples": total, "keys": dict(sorted(keys.items())), "layouts": dict(layouts)}
