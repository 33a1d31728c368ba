"""Where an anchor cache lives and how it is read: sidecar shards beside the data, keyed by anchor.

The cache of one data shard is a *sidecar shard*: a small tar holding, for every sample of the
data shard in the same order, either ``<key>.anchor.npy`` (the anchor's float16 embedding) or
``<key>.anchor_error.txt`` (why there is none: no image, an image that does not decode). The
data shards are never rewritten, so they can stay read-only, remote, or shared by runs with
different anchors. Layout, under a *cache root*::

    <root>/<digest>/anchor.json          the anchor identity the folder is for (digest = its hash)
    <root>/<digest>/<shard name>         the sidecar of data shard <shard name>
    <root>/<digest>/<shard name>.json    its record: identity, samples, cached, failures, and the
                                         data shard's size when it was local (a replaced shard is
                                         then seen as uncached)

The root defaults to an ``anchor-cache`` folder beside the shards: ``/data/train/anchor-cache``
for ``/data/train/shard-000001.tar``, ``http://host/train/anchor-cache`` for
``http://host/train/shard-000001.tar``; so a server that serves the shards with their
``anchor-cache`` folder serves the cache too, and ``data.anchor: auto`` finds it. Elsewhere (a
``pipe:`` command, another server, a local copy) ``data.anchor_cache`` names the root: a folder,
an ``http(s)`` URL, or a template with ``{name}`` (``pipe:aws s3 cp s3://b/cache/{name} -``),
where ``{name}`` becomes ``<digest>/<shard name>``.

Reading: the loader opens the sidecar beside each data shard through the same robust streaming
(:mod:`anchorbind.data.streaming`: timeouts, retries, positioned starts) and walks the two in
lockstep (:func:`attach_cached`). A sidecar whose keys do not follow the data shard's (a data
shard replaced after caching) stops the run with :class:`AnchorCacheMismatch`: a stale cache is
never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from anchorbind.data.streaming import SourceError, StreamOptions, fetch_bytes, local_path
from anchorbind.errors import AnchorBindError

__all__ = [
    "ANCHOR_ERROR_KEY",
    "ANCHOR_ID_KEY",
    "ANCHOR_KEY",
    "DEFAULT_ROOT_NAME",
    "AnchorCacheMismatch",
    "SidecarRecord",
    "attach_cached",
    "cache_folder",
    "identity_digest",
    "read_record",
    "record_url",
    "shard_name",
    "sidecar_url",
]

ANCHOR_KEY = "anchor.npy"
"""Member holding a sample's cached anchor embedding: float16, shape ``(D,)``."""
ANCHOR_ID_KEY = "anchor_id.txt"
"""Member holding the identity of the anchor that computed ``anchor.npy`` (shards cached in place)."""
ANCHOR_ERROR_KEY = "anchor_error.txt"
"""Sidecar member saying why a sample has no cached embedding."""
DEFAULT_ROOT_NAME = "anchor-cache"
"""The folder beside the shards that holds their sidecars unless ``data.anchor_cache`` says otherwise."""
IDENTITY_FILE = "anchor.json"
_SHARD_NAME = re.compile(r"[^/\s'\"]+\.(?:tar\.gz|tgz|tar)\b")


class AnchorCacheMismatch(AnchorBindError):
    """Cached anchor embeddings were computed by another anchor, or for other data than is read."""


def identity_digest(identity: str) -> str:
    """16 hex digits naming an anchor identity's cache folder (identities are long and hold ``|``)."""
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]


def shard_name(url: str) -> str:
    """The data shard's file name: the last ``*.tar`` of a ``pipe:`` command, else the path's last part.

    Raises:
        ValueError: a ``pipe:`` command that names no ``.tar`` file.
    """
    if url.startswith("pipe:"):
        found = _SHARD_NAME.findall(url)
        if not found:
            raise ValueError(f"{url}: cannot tell the shard's name (no *.tar in the command) to find its anchor cache")
        return posixpath.basename(found[-1])
    path = local_path(url)
    if path is not None:
        return path.name
    return posixpath.basename(urlparse(url).path)


def default_root(url: str) -> str | None:
    """``anchor-cache`` beside a local or ``http(s)`` shard; None for a command (no folder to be beside)."""
    path = local_path(url)
    if path is not None and not url.startswith("pipe:"):
        return str(path.parent / DEFAULT_ROOT_NAME)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        folder = posixpath.dirname(parsed.path)
        return urlunparse(parsed._replace(path=posixpath.join(folder, DEFAULT_ROOT_NAME), query="", fragment=""))
    return None


def _join(root: str, name: str) -> str:
    if "{name}" in root:
        return root.replace("{name}", name)
    if local_path(root) is not None and not root.startswith("pipe:"):
        return str(Path(local_path(root)) / name)
    return root.rstrip("/") + "/" + name


def cache_folder(identity: str, root: str) -> str:
    """The folder (or URL prefix) of ``identity``'s sidecars under ``root``."""
    return _join(root, identity_digest(identity))


def sidecar_url(url: str, identity: str, root: str | None = None) -> str | None:
    """Where the sidecar of data shard ``url`` for ``identity`` is (None: no root and none by default)."""
    root = root or default_root(url)
    if root is None:
        return None
    return _join(root, f"{identity_digest(identity)}/{shard_name(url)}")


def record_url(sidecar: str) -> str:
    """The record beside a sidecar (``<sidecar>.json``; inside a ``pipe:`` template, the name's)."""
    if sidecar.startswith("pipe:"):
        return _SHARD_NAME.sub(lambda m: m.group(0) + ".json", sidecar, count=0)
    return sidecar + ".json"


@dataclass(frozen=True)
class SidecarRecord:
    """What a finished sidecar says of itself (its ``.json``)."""

    identity: str
    samples: int
    cached: int
    failures: int
    source_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "samples": self.samples, "cached": self.cached,
                "failures": self.failures, "source_bytes": self.source_bytes, "created_by": "anchorbind cache"}


def read_record(url: str, identity: str, root: str | None = None,
                options: StreamOptions | None = None) -> tuple[str, SidecarRecord] | None:
    """``(sidecar URL, record)`` when data shard ``url`` has a finished sidecar for ``identity``.

    A local data shard whose size differs from the record's (replaced after caching) has none.
    Remote records are read once, with the timeouts of ``options`` and no retry (a missing cache
    is the common case, not a fault).
    """
    try:
        sidecar = sidecar_url(url, identity, root)
    except ValueError:
        return None
    if sidecar is None:
        return None
    try:
        data = json.loads(fetch_bytes(record_url(sidecar), options or StreamOptions(read_timeout_s=30), limit=1 << 20))
        record = SidecarRecord(str(data["identity"]), int(data["samples"]), int(data["cached"]),
                               int(data["failures"]), data.get("source_bytes"))
    except (SourceError, OSError, ValueError, KeyError, TypeError):
        return None
    if record.identity != identity:
        return None
    shard = local_path(url)
    if shard is not None and not url.startswith("pipe:"):
        try:
            if record.source_bytes is not None and os.path.getsize(shard) != record.source_bytes:
                return None
        except OSError:
            return None
    return sidecar, record


def read_records(urls: Sequence[str], identity: str, root: str | None = None,
                 options: StreamOptions | None = None) -> list[tuple[str, SidecarRecord] | None]:
    """:func:`read_record` of every shard, remote ones a few at a time."""
    if all(local_path(u) is not None and not u.startswith("pipe:") for u in urls) and (
            root is None or local_path(root) is not None):
        return [read_record(u, identity, root, options) for u in urls]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda u: read_record(u, identity, root, options), urls))


def other_identities(url: str, root: str | None = None) -> list[str]:
    """Identities of the other anchors a local cache root holds a finished sidecar of ``url`` for."""
    try:
        root = root or default_root(url)
        name = shard_name(url)
    except ValueError:
        return []
    folder = local_path(root) if root is not None and not root.startswith("pipe:") else None
    if folder is None or not folder.is_dir():
        return []
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            found.append(str(json.loads((sub / f"{name}.json").read_text())["identity"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def attach_cached(samples: Iterator[tuple[int, dict[str, Any]]], cached: Iterator[tuple[int, dict[str, Any]]], *,
                  identity: str, sidecar: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Add each sample's sidecar entry (``anchor.npy`` or ``anchor_error.txt``) to the data sample.

    Both iterators are ``(index in shard, sample)`` over the same range of the same shard
    (:func:`anchorbind.data.streaming.shard_samples`).

    Raises:
        AnchorCacheMismatch: the sidecar ends early or its keys differ (the data shard changed
            after caching).
    """
    for index, sample in samples:
        entry = next(cached, None)
        if entry is None or entry[0] != index or entry[1].get("__key__") != sample.get("__key__"):
            found = "its end" if entry is None else f"sample {entry[0]} ({entry[1].get('__key__')!r})"
            raise AnchorCacheMismatch(
                f"anchor cache {sidecar} does not follow shard {sample.get('__url__')}: at sample {index} "
                f"({sample.get('__key__')!r}) it has {found}; the shard changed after caching: rerun "
                "`anchorbind cache` on it, or train with data.anchor=live")
        for member in (ANCHOR_KEY, ANCHOR_ERROR_KEY):
            if member in entry[1]:
                sample[member] = entry[1][member]
        sample[ANCHOR_ID_KEY] = identity.encode("utf-8")
        yield index, sample
