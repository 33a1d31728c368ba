"""Which modalities a shard set holds, found before training: :func:`data_modalities`.

A plugin whose modality has no sample in the training data would be "trained" on nothing: its
loss term is a constant 0 and its weights never move. The trainer asks this module which of its
modalities the data holds, by the members that carry them (each processor's ``sample_keys``):

- **Local shards listed in a** ``manifest.json`` (written beside them by ``anchorbind shards`` /
  ``anchorbind world``; ``docs/data.md``, *Shards and manifests*): the per-shard member counts
  (``keys``, else ``modalities``) of exactly the shards given, summed. Exact, and nothing but the
  manifests is read.
- **Otherwise** (URLs such as ``pipe:`` or ``https://``, local shards no manifest lists): a
  bounded look-ahead over the shards in the order given: the member names of at most
  ``lookahead`` samples, read from the tar headers of local files (no member data) or from the
  stream of a URL. It stops early once every asked-for modality has been seen, so data that has
  them all costs a sample or two; it never reads past ``lookahead`` samples, so a large or
  endless stream cannot hold training up. A modality first seen after ``lookahead`` samples is
  reported as absent (:attr:`DataInventory.complete` is False, and the report says how far it
  looked). Shards that cannot be opened are passed over here; the loader reports them. A URL is
  read once, with a read timeout (``stream``; the trainer passes ``data.read_timeout_s``, else
  ``data.batch_timeout_s``; :data:`LOOKAHEAD_STREAM` by default), and the look-ahead gives up after
  :data:`MAX_UNREADABLE` unreadable shards, so a stalled or dead server cannot hold training up
  here either.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anchorbind.data.shardlist import MANIFEST, expand_shards, is_url
from anchorbind.data.streaming import StreamOptions, shard_samples

__all__ = ["DEFAULT_LOOKAHEAD", "DataInventory", "data_modalities"]

DEFAULT_LOOKAHEAD = 1000
"""Samples looked at, at most, when no manifest lists the shards."""
LOOKAHEAD_STREAM = StreamOptions(read_timeout_s=60.0, retries=0)
"""How a URL is read for the look-ahead: one attempt; no byte for 60 s gives it up."""
MAX_UNREADABLE = 3
"""The look-ahead stops after this many unreadable shards (the loader reports them)."""

_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
"""webdataset's rule: a member's sample key is its path up to the first dot of the file name, the
rest its extension (lower-cased when grouped into a sample)."""


@dataclass
class DataInventory:
    """What :func:`data_modalities` found.

    Attributes:
        counts: ``{modality: samples that carry it}`` for every modality asked about (0: none
            found). From a manifest, exact; from a look-ahead, a lower bound (it stops as soon as
            every modality has been seen).
        samples: samples the counts come from (the manifest's total, or the samples looked at).
        source: ``"manifest"`` or ``"lookahead"``.
        complete: every sample was accounted for (a manifest, or a look-ahead that reached the
            end of the data); False when the look-ahead stopped at its limit.
        lookahead: the look-ahead's limit (samples).
        unreadable: shards the look-ahead could not open or read to its end.
    """

    counts: dict[str, int]
    samples: int
    source: str
    complete: bool
    lookahead: int = DEFAULT_LOOKAHEAD
    unreadable: list[str] = field(default_factory=list)

    def missing(self) -> list[str]:
        """The modalities asked about that no sample carries (in the order asked)."""
        return [name for name, count in self.counts.items() if count == 0]

    def where(self) -> str:
        """Where the counts come from, for a message: ``the 48 samples counted in manifest.json``."""
        if self.source == "manifest":
            return f"the {self.samples} samples counted in {MANIFEST}"
        if self.complete:
            return f"all {self.samples} samples, read from the shards (no {MANIFEST} lists them)"
        return f"the first {self.samples} samples, read from the shards (no {MANIFEST} lists them)"


def _manifest_entries(urls: Sequence[str]) -> list[Mapping[str, object]] | None:
    """The manifest entry of every shard, or None when a shard is remote or no manifest lists it."""
    manifests: dict[Path, dict[str, Mapping[str, object]]] = {}
    entries = []
    for url in urls:
        path = Path(url)
        if is_url(url) or not path.is_file():
            return None
        if path.parent not in manifests:
            try:
                data = json.loads((path.parent / MANIFEST).read_text())
                manifests[path.parent] = {str(e["name"]): e for e in data["shards"] if isinstance(e, Mapping)}
            except (OSError, ValueError, KeyError, TypeError):
                manifests[path.parent] = {}
        entry = manifests[path.parent].get(path.name)
        if entry is None or not any(isinstance(entry.get(k), Mapping) for k in ("keys", "modalities")):
            return None
        entries.append(entry)
    return entries


def _count_entry(entry: Mapping[str, object], readers: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """``{modality: count}`` of one manifest entry: by member (``keys``) when it has them, which
    works for a plugin registered after the shards were written; else its ``modalities``."""
    keys, modalities = entry.get("keys"), entry.get("modalities")
    if isinstance(keys, Mapping):
        keys = {str(k).lower(): v for k, v in keys.items()}
    out = {}
    for name, members in readers.items():
        if isinstance(keys, Mapping):
            # members of one modality (``jpg`` and ``png``) may share samples: the largest is a
            # lower bound on the samples, and exact on whether there are any
            out[name] = max((int(keys.get(m, 0) or 0) for m in members), default=0)
        else:
            out[name] = int((modalities or {}).get(name, 0) or 0)  # type: ignore[union-attr]
    return out


def _local_samples(url: str, unreadable: list[str]) -> Iterator[set[str]]:
    """The member extensions of each sample of a local tar, from its headers only."""
    current: str | None = None
    members: set[str] = set()
    try:
        with tarfile.open(url) as archive:
            for info in archive:
                match = _MEMBER.match(info.name) if info.isfile() else None
                if match is None:
                    continue
                if match.group(1) != current:
                    if current is not None:
                        yield members
                    current, members = match.group(1), set()
                members.add(match.group(2).lower())
    except (OSError, tarfile.TarError):
        unreadable.append(url)
    if current is not None:
        yield members


def _streamed_samples(url: str, unreadable: list[str], stream: StreamOptions) -> Iterator[set[str]]:
    """The member names of each sample of a shard that webdataset streams (a URL)."""
    failed: list[Exception] = []

    def note(exn: Exception) -> bool:
        failed.append(exn)
        return True

    try:
        for _, sample in shard_samples(url, stream, handler=note):
            yield {k for k in sample if not k.startswith("__")}
    except Exception:  # ShardUnreadable, or any failure of a URL: the loader reports it with its own counts
        failed.append(RuntimeError(url))
    if failed:
        unreadable.append(url)


def data_modalities(
    shards: str | Sequence[str],
    readers: Mapping[str, Sequence[str]],
    *,
    lookahead: int = DEFAULT_LOOKAHEAD,
    stream: StreamOptions = LOOKAHEAD_STREAM,
) -> DataInventory:
    """How many samples of ``shards`` carry each modality of ``readers`` (module docstring).

    Args:
        shards: a shard spec or list (:func:`~anchorbind.data.shardlist.expand_shards`).
        readers: ``{modality: member extensions it reads}``, e.g. each processor's ``sample_keys``.
        lookahead: at most this many samples are read when no manifest lists the shards.
        stream: how URLs are read for the look-ahead (timeouts; retries make it slower, not surer).

    Raises:
        FileNotFoundError: the spec names no shard.
        ValueError: ``lookahead`` < 1.
    """
    if lookahead < 1:
        raise ValueError(f"lookahead must be >= 1, got {lookahead}")
    urls = expand_shards(shards)
    readers = {name: tuple(keys) for name, keys in readers.items()}
    entries = _manifest_entries(urls)
    if entries is not None:
        counts: Counter[str] = Counter({name: 0 for name in readers})
        for entry in entries:
            counts.update(_count_entry(entry, readers))
        total = sum(int(e.get("samples", 0) or 0) for e in entries)  # type: ignore[arg-type]
        return DataInventory({name: counts[name] for name in readers}, total, "manifest", True, lookahead)

    found = {name: 0 for name in readers}
    seen, unreadable = 0, []
    for url in urls:
        samples = _streamed_samples(url, unreadable, stream) if is_url(url) else _local_samples(url, unreadable)
        for members in samples:
            seen += 1
            for name, keys in readers.items():
                if not members.isdisjoint(keys):
                    found[name] += 1
            if seen >= lookahead or all(found.values()):
                samples.close()
                return DataInventory(found, seen, "lookahead", False, lookahead, unreadable)
        if len(unreadable) >= MAX_UNREADABLE:
            return DataInventory(found, seen, "lookahead", False, lookahead, unreadable)
    return DataInventory(found, seen, "lookahead", True, lookahead, unreadable)
