"""Turning a user's shard spec into a list of URLs webdataset can open, and who reads which.

Accepted specs (also as a list mixing them):

- brace notation, ``train-{000000..000099}.tar`` (expanded by webdataset / braceexpand);
- ``::``-separated lists, ``a.tar::b.tar``;
- a local directory: its ``*.tar`` files, sorted by name, hidden ones left out (a convenience; not recursive);
- a local glob, ``data/*/shard-*.tar``, sorted;
- any URL webdataset opens: ``pipe:`` commands, ``http(s)://``, and object stores through
  ``pipe:`` (``pipe:aws s3 cp s3://bucket/train-000000.tar -``), so the same config streams from
  disk or from a bucket. Remote URLs are not checked here; a failure to open one is reported by
  the loader like any other broken shard (after its retries: :mod:`anchorbind.data.streaming`).

How many samples each shard holds (:func:`shard_sizes`) decides how the loader splits an epoch
(:mod:`anchorbind.data.sampler`): it comes from the ``manifest.json`` beside the shards (for
``http(s)://`` shards, fetched from the same folder), else from the tar headers of local files.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import posixpath
import re
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import torch
from webdataset.shardlists import expand_urls

from anchorbind.data.streaming import SourceError, StreamOptions, fetch_bytes, sample_offsets, shard_samples

__all__ = ["MANIFEST", "count_samples", "expand_shards", "is_url", "iter_shard", "rank_and_world", "shard_sizes"]

log = logging.getLogger("anchorbind.data")

_GLOB_CHARS = ("*", "?", "[")


MANIFEST = "manifest.json"
"""The file beside a split's shards that counts their samples (written by ``anchorbind world`` / ``shards``)."""

_SAMPLE_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]")
"""webdataset's rule: a member's sample key is its path up to the first dot of the file name."""


def is_url(spec: str) -> bool:
    """A spec that is not a local path (``pipe:``, ``http://``, ``s3://``, ...): it cannot be checked here."""
    return spec.startswith("pipe:") or "://" in spec


_is_url = is_url


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
            # hidden names are never shards (writers' temporaries: anchorbind.data.tempfiles)
            found = sorted(str(p) for p in Path(spec).glob("*.tar") if not p.name.startswith("."))
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


def _reraise(exn: Exception) -> bool:
    raise exn


def iter_shard(url: str | Path, options: StreamOptions | None = None) -> Iterator[dict]:
    """Every raw sample of one shard, in order, whatever the process group (no node splitting).

    A corrupt or truncated tar raises (webdataset's default handler): callers that rewrite a shard
    must not mistake a readable prefix for the whole shard. URLs are read with the timeouts and
    retries of ``options`` (:mod:`anchorbind.data.streaming`); a shard that cannot be read raises
    :class:`~anchorbind.data.streaming.ShardUnreadable` (an ``OSError``).
    """
    for _, sample in shard_samples(str(url), options, handler=_reraise):
        yield sample


def _manifest_counts(folder: Path) -> dict[str, int]:
    """``{shard file name: samples}`` from ``folder/manifest.json``; empty when absent or unreadable."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
        return {str(entry["name"]): int(entry["samples"]) for entry in data["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _tar_samples(url: str, stop_at: int | None) -> int | None:
    """Samples in a local tar from its member headers (no member is read); None when it cannot be listed."""
    count, last = 0, None
    try:
        with tarfile.open(url) as archive:
            for member in archive:
                match = _SAMPLE_KEY.match(member.name) if member.isfile() else None
                if match and match.group(1) != last:
                    count, last = count + 1, match.group(1)
                    if stop_at is not None and count >= stop_at:
                        break
    except (OSError, tarfile.TarError):
        return None
    return count


def count_samples(urls: Sequence[str], *, at_least: int | None = None) -> int | None:
    """How many samples local shards hold, found cheaply; None when that cannot be told without streaming.

    Each shard's count comes from the ``manifest.json`` beside it when that lists the shard, else
    from its tar headers (samples are consecutive members sharing a key). With ``at_least``,
    counting stops once that many samples are found (the result is then ``>= at_least``, not the
    total), so asking "are there at least N?" reads a few headers even of a large dataset.

    Returns:
        The count, or None when a shard is a URL, missing, or not a readable tar.
    """
    manifests: dict[Path, dict[str, int]] = {}
    total = 0
    for url in urls:
        path = Path(url)
        if is_url(url) or not path.is_file():
            return None
        if path.parent not in manifests:
            manifests[path.parent] = _manifest_counts(path.parent)
        listed = manifests[path.parent].get(path.name)
        if listed is None:
            listed = _tar_samples(url, None if at_least is None else at_least - total)
            if listed is None:
                return None
        total += listed
        if at_least is not None and total >= at_least:
            break
    return total


def _remote_manifest_counts(url: str, options: StreamOptions | None,
                            fetched: dict[str, dict[str, int] | None]) -> int | None:
    """Samples of an ``http(s)`` shard from the ``manifest.json`` in its folder; None when not listed."""
    parsed = urlparse(url)
    folder = posixpath.dirname(parsed.path)
    manifest = urlunparse(parsed._replace(path=posixpath.join(folder, MANIFEST), query="", fragment=""))
    if manifest not in fetched:
        options = options or StreamOptions()
        fetched[manifest] = None
        for attempt in range(options.retries + 1):
            try:
                data = json.loads(fetch_bytes(manifest, options))
                fetched[manifest] = {str(entry["name"]): int(entry["samples"]) for entry in data["shards"]}
                break
            except SourceError as err:
                if err.permanent or attempt == options.retries:
                    log.warning("no sample counts for %s (%s): epochs are split by whole shards", manifest, err.reason)
                    break
                time.sleep(options.delay(attempt))
            except (ValueError, KeyError, TypeError) as err:
                log.warning("no sample counts in %s (%s): epochs are split by whole shards", manifest, err)
                break
    counts = fetched[manifest]
    return None if counts is None else counts.get(posixpath.basename(parsed.path))


def shard_sizes(urls: Sequence[str], options: StreamOptions | None = None) -> list[int] | None:
    """Samples in each shard, or None when any cannot be told without streaming it.

    Local shards: the ``manifest.json`` beside them, else their tar headers (no member data is
    read). ``http(s)://`` shards: the ``manifest.json`` in their folder on the server (read once per
    folder, with the timeouts and retries of ``options``; none there, HTTP 404: unknown).
    ``pipe:`` and other URLs: unknown.
    """
    local: dict[Path, dict[str, int]] = {}
    remote: dict[str, dict[str, int] | None] = {}
    sizes: list[int] = []
    for url in urls:
        scheme = urlparse(url).scheme
        if url.startswith("pipe:"):
            return None
        if scheme in ("http", "https"):
            count = _remote_manifest_counts(url, options, remote)
        elif is_url(url):
            return None
        else:
            path = Path(url)
            if path.parent not in local:
                local[path.parent] = _manifest_counts(path.parent)
            count = local[path.parent].get(path.name)
            if count is None:
                try:
                    count = len(sample_offsets(path))
                except (OSError, tarfile.TarError):
                    return None
        if count is None:
            return None
        sizes.append(count)
    return sizes
