"""Turning a user's shard spec into a list of URLs webdataset can open.

Accepts brace notation (``train-{000000..000099}.tar``), ``::``-separated lists, a local
directory (its ``*.tar`` files, sorted), and any URL webdataset opens (``pipe:``, ``http(s)``,
``gs://`` / ``s3://`` through ``pipe:``): the same config streams from disk or from a bucket.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import webdataset as wds
from webdataset.shardlists import expand_urls

__all__ = ["expand_shards", "iter_shard"]


def expand_shards(shards: str | Path | Sequence[str | Path]) -> list[str]:
    """Expand a shard spec into URLs; a local directory becomes its sorted ``*.tar`` files.

    Raises:
        FileNotFoundError: the spec expands to nothing, or a local directory holds no ``.tar``.
    """
    specs = [shards] if isinstance(shards, (str, Path)) else list(shards)
    urls: list[str] = []
    for spec in specs:
        spec = str(spec)
        if Path(spec).is_dir():
            found = sorted(str(p) for p in Path(spec).glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"shard directory {spec} contains no .tar files")
            urls.extend(found)
        else:
            urls.extend(expand_urls(spec))
    if not urls:
        raise FileNotFoundError(f"shard spec {shards!r} names no shards")
    return urls


def iter_shard(url: str | Path) -> Iterator[dict]:
    """Every raw sample of one shard, in order, whatever the process group (no node splitting)."""
    yield from wds.DataPipeline(wds.SimpleShardList([str(url)]), wds.tarfile_to_samples())
