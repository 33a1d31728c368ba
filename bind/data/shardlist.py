"""Turning a user's shard spec into a list of URLs webdataset can open, and who reads which.

Accepted specs (also as a list mixing them):

- brace notation, ``train-{000000..000099}.tar`` (expanded by webdataset / braceexpand);
- ``::``-separated lists, ``a.tar::b.tar``;
- a local directory: its ``*.tar`` files, sorted by name (a convenience; not recursive);
- a local glob, ``data/*/shard-*.tar``, sorted;
- any URL webdataset opens: ``pipe:`` commands, ``http(s)://``, and object stores through
  ``pipe:`` (``pipe:aws s3 cp s3://bucket/train-000000.tar -``), so the same config streams from
  disk or from a bucket. Remote URLs are not checked here; a failure to open one is reported by
  the loader like any other broken shard.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import webdataset as wds
from webdataset.shardlists import expand_urls

__all__ = ["expand_shards", "iter_shard", "rank_and_world"]

_GLOB_CHARS = ("*", "?", "[")


def _is_url(spec: str) -> bool:
    return spec.startswith("pipe:") or "://" in spec


def expand_shards(shards: str | Path | Sequence[str | Path]) -> list[str]:
    """Expand a shard spec into URLs, in the order given (directories and globs sorted).

    Raises:
        FileNotFoundError: the spec expands to nothing, a local directory holds no ``.tar``, or a
            local glob matches nothing.
    """
    specs = [shards] if isinstance(shards, (str, Path)) else list(shards)
    urls: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        if not _is_url(spec) and Path(spec).is_dir():
            found = sorted(str(p) for p in Path(spec).glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"shard directory {spec} contains no .tar files")
            urls.extend(found)
        elif not _is_url(spec) and any(c in spec for c in _GLOB_CHARS) and "{" not in spec:
            found = sorted(glob.glob(spec))
            if not found:
                raise FileNotFoundError(f"shard pattern {spec} matches no file")
            urls.extend(found)
        else:
            urls.extend(expand_urls(spec))
    if not urls:
        raise FileNotFoundError(f"shard spec {shards!r} names no shards")
    return urls


def rank_and_world() -> tuple[int, int]:
    """This process's ``(rank, world_size)``: the torch.distributed group, else the launcher's env.

    Read in the *calling* process (not in DataLoader workers, which may not inherit the process
    group): the initialised default group wins (what ``accelerate`` and ``torchrun`` set up); before
    it exists, ``RANK``/``WORLD_SIZE`` from the launcher; else a single process.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def iter_shard(url: str | Path) -> Iterator[dict]:
    """Every raw sample of one shard, in order, whatever the process group (no node splitting).

    A corrupt or truncated tar raises (webdataset's default handler): callers that rewrite a shard
    must not mistake a readable prefix for the whole shard.
    """
    yield from wds.DataPipeline(wds.SimpleShardList([str(url)]), wds.tarfile_to_samples())
