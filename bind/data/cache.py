"""``anchorbind cache``: compute the frozen anchor's embedding of every sample, once.

Training then reads a float16 vector per sample instead of decoding the image and running the
image encoder, the dominant cost of binding on a CPU (see ``bench/bench_train.py``).

By default the cache is written as **sidecar shards** (:mod:`anchorbind.data.anchor_store`):
one small tar per data shard, in an ``anchor-cache/<anchor digest>/`` folder beside the shards
(or under ``--out``), keyed by sample key and anchor identity. The data shards are only read,
from wherever they are (local files, ``http(s)``, ``pipe:`` commands: the loader's streaming,
with its timeouts and retries), so remote or read-only data can be cached, and caches of several
anchors live side by side. Training finds a matching cache by itself (``data.anchor: auto``;
``data.anchor_cache`` when the sidecars are not beside the shards). Building is resumable: a
shard whose sidecar record matches is skipped (:mod:`anchorbind.data.sidecar_cache`).

``--in-place`` keeps the former layout for local shards: each shard is rewritten with two
members added to every sample whose image decodes, ``anchor.npy`` (float16, shape ``(D,)``) and
``anchor_id.txt`` (the anchor's identity); the loader reads both layouts. Safety and resumption
of the in-place rewrite:

- every member is copied as it is (name, header, bytes, order), whatever webdataset would make of
  it (no extension, upper-case extensions, nested folders, several dots); only an earlier cache's
  two members are replaced;
- a shard is streamed into a hidden temporary file that replaces it (``os.replace``) only when
  complete, so an interrupted or failed run never loses or half-writes a shard; a shard that
  cannot be read to its end (a truncated tar, also one cut at a member boundary) is left
  untouched and reported; a run killed outright leaves its temporary file, which the next run
  removes (:mod:`anchorbind.data.tempfiles`);
- when a shard is done, a sidecar ``<shard>.anchor.json`` records the identity, the counts and
  the shard's size; a rerun skips shards whose sidecar (or, lacking one, whose first cached
  sample) carries this anchor's identity, so reruns resume where a run stopped.

Either way, under ``accelerate launch`` process ``p`` of ``n`` takes shards ``i`` with
``i % n == p`` (disjoint subsets; no collective is needed); a plain ``python`` run takes them all.

Example::

    anchorbind cache data/train --anchor-config demo
    anchorbind cache 'http://host/train/shard-{000000..000099}.tar' --out cache/ --anchor-config base
    accelerate launch --num_processes 2 -m anchorbind.cli cache data/train/*.tar
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from anchorbind.anchor import AnchorConfig, FrozenAnchor
from anchorbind.config import from_dict, load_yaml
from anchorbind.data.anchor_store import (
    ANCHOR_ID_KEY,
    ANCHOR_KEY,
    default_root,
    other_identities,
    read_record,
    read_records,
)
from anchorbind.data.shardlist import expand_shards, is_url
from anchorbind.data.sidecar_cache import jobs_for, npy_bytes, tar_member, write_atomic, write_sidecars
from anchorbind.data.streaming import StreamOptions, local_path
from anchorbind.data.tempfiles import remove_stale
from anchorbind.errors import ConfigError, InputError

__all__ = [
    "AnchorCacheStatus",
    "CacheReport",
    "anchor_cache_status",
    "build_anchor_cache",
    "cache_shard",
    "main",
    "shard_cache_identity",
    "shards_have_anchor_cache",
    "sidecar_path",
]

SIDECAR_SUFFIX = ".anchor.json"


@dataclass
class CacheReport:
    """What one process did.

    Attributes:
        written: shards rewritten with embeddings.
        skipped: shards that already carried this anchor's cache.
        samples: samples given an embedding.
        failures: images that could not be decoded: ``{"shard", "key", "reason"}`` (the sample is
            kept, without an embedding; the loader reports it).
        failed_shards: shards that could not be read or written: ``{"shard", "reason"}`` (left
            as they were).
    """

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    samples: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    failed_shards: list[dict[str, str]] = field(default_factory=list)


def sidecar_path(shard: str | os.PathLike[str]) -> Path:
    """``<shard>.anchor.json``: the record of a finished shard."""
    shard = Path(shard)
    return shard.with_name(shard.name + SIDECAR_SUFFIX)


def _read_sidecar(shard: Path) -> dict[str, Any] | None:
    """The sidecar of ``shard`` if it describes the file as it is now (same size), else ``None``."""
    try:
        record = json.loads(sidecar_path(shard).read_text())
        return record if record.get("bytes") == shard.stat().st_size else None
    except (OSError, ValueError, AttributeError):
        return None


def shard_cache_identity(path: str | os.PathLike[str]) -> str | None:
    """The anchor identity cached in a local shard, or ``None`` when it carries no cache.

    Reads the sidecar when it matches the shard's size, else the first ``anchor_id.txt`` member
    (shards cached by an older version, or copied without their sidecar).
    """
    path = Path(path)
    record = _read_sidecar(path)
    if record is not None:
        return record.get("identity")
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith("." + ANCHOR_ID_KEY):
                    handle = tar.extractfile(member)
                    return handle.read().decode("utf-8").strip() if handle else None
    except (OSError, tarfile.TarError, UnicodeDecodeError):
        return None
    return None


@dataclass
class AnchorCacheStatus:
    """Whether shards carry the cache of one anchor, and where the first one that does not is.

    Attributes:
        identity: the anchor identity asked about.
        shards: how many shards the spec names.
        matching: how many shards, from the first, have that identity's cache before
            ``first_without`` (all of them when it is None).
        first_without: the first shard that has none; None when every shard has one.
        found: an identity that shard has a cache for instead (its in-place members, or a
            sidecar of another anchor under a local cache root); None when none is seen.
        sidecars: when complete, per shard the sidecar to read beside it, or None for a shard
            that carries its cache in place (what :func:`anchorbind.data.loader.build_loader`
            takes as ``anchor_sidecars``); empty otherwise.
    """

    identity: str
    shards: int
    matching: int
    first_without: str | None = None
    found: str | None = None
    sidecars: list[str | None] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.first_without is None


def _in_place_identity(url: str) -> str | None:
    path = local_path(url)
    return shard_cache_identity(path) if path is not None and not url.startswith("pipe:") and path.is_file() else None


def anchor_cache_status(shards: str | Sequence[str], identity: str, root: str | None = None,
                        options: StreamOptions | None = None) -> AnchorCacheStatus:
    """Check the shards in order against ``identity``; stops at the first one without its cache.

    A shard has the cache when its sidecar record (under ``root``, default ``anchor-cache``
    beside it; remote records are fetched with the timeouts of ``options``) is for ``identity``
    and, for a local shard, its size; or when it carries the cache in place (its
    ``<shard>.anchor.json``, else its first ``anchor_id.txt`` member).
    """
    urls = expand_shards(shards)
    records = [read_record(urls[0], identity, root, options)] if urls else []
    if urls and (records[0] is not None or _in_place_identity(urls[0]) == identity):
        records += read_records(urls[1:], identity, root, options)  # the rest only if the first has a cache
    else:
        records += [None] * (len(urls) - 1)
    sidecars: list[str | None] = []
    for index, url in enumerate(urls):
        if records[index] is not None:
            sidecars.append(records[index][0])
            continue
        found = _in_place_identity(url)
        if found == identity:
            sidecars.append(None)
            continue
        others = other_identities(url, root)
        return AnchorCacheStatus(identity, len(urls), index, url, found or (others[0] if others else None))
    return AnchorCacheStatus(identity, len(urls), len(urls), sidecars=sidecars)


def shards_have_anchor_cache(shards: str | Sequence[str], identity: str, root: str | None = None) -> bool:
    """True when every shard has this anchor's cache (a sidecar, or in place)."""
    return anchor_cache_status(shards, identity, root).complete


_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
"""webdataset's rule (``base_plus_ext``): a member's sample key is its path up to the first dot of
the file name, the rest its extension; consecutive regular files sharing a key are one sample."""
_CACHE_MEMBERS = (ANCHOR_KEY, ANCHOR_ID_KEY)


@dataclass
class _Group:
    """One sample of a shard being rewritten: its key and its members by lower-case extension."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    vector: bytes | None = None


def _tar_entries(tar: tarfile.TarFile) -> Iterable[tuple[tarfile.TarInfo, bytes | None, str | None, str | None]]:
    """``(header, content, sample key, lower-case extension)`` of every member, in order.

    The key and extension are ``None`` for a member that is no sample's (a directory, a link, a
    name without an extension): it is copied as it is, like every other member.
    """
    for info in tar:
        data = None
        if not info.isreg() and info.size > 0:
            raise tarfile.ReadError(f"{info.name}: member of type {info.type!r} with data cannot be copied")
        if info.isreg():
            handle = tar.extractfile(info)
            data = handle.read() if handle is not None else b""
            if len(data) != info.size:
                raise tarfile.ReadError(f"{info.name}: unexpected end of data")
        match = _MEMBER.match(info.name) if info.isreg() else None
        yield info, data, (match.group(1) if match else None), (match.group(2).lower() if match else None)


def _check_end_of_archive(tar: tarfile.TarFile, path: Path) -> None:
    """A tar cut at a member boundary reads as a shorter, valid one: require its end-of-archive block."""
    handle = tar.fileobj  # the decompressed stream of a .tar.gz
    handle.seek(tar.offset)
    block = handle.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"{path}: truncated tar (no end-of-archive block after byte {tar.offset})")


def _embed(anchor: FrozenAnchor, groups: list[_Group], device: torch.device, path: Path,
           report: CacheReport) -> int:
    """Embed the groups' images in one forward pass (``group.vector``); returns how many."""
    processor = anchor.processor
    images, embedded = [], []
    for group in groups:
        member = next((k for k in processor.sample_keys if k in group.members), None)
        if member is None:
            continue
        try:
            images.append(processor.load(group.members[member]))
            embedded.append(group)
        except InputError as err:
            report.failures.append({"shard": str(path), "key": group.key, "reason": err.reason})
    if not images:
        return 0
    with torch.inference_mode():
        embeddings = anchor(processor.collate(images).to(device)).float().cpu().numpy().astype(np.float16)
    for group, vector in zip(embedded, embeddings, strict=True):
        group.vector = npy_bytes(vector)
    return len(embedded)


def cache_shard(anchor: FrozenAnchor, path: str | os.PathLike[str], *, batch_size: int = 64,
                device: str | torch.device = "cpu", report: CacheReport | None = None) -> CacheReport:
    """Rewrite one local shard with the anchor's embeddings added, atomically, plus its sidecar.

    Every member of the shard is copied as it is (name, header and bytes, in order: members
    without an extension, upper-case extensions, nested folders, several dots, links), and each
    sample whose image decodes gets ``<key>.anchor.npy`` and ``<key>.anchor_id.txt`` after its
    members. The only members not copied are those two of an earlier cache, so a sample
    never keeps a stale vector. Samples whose image does not decode are kept without an
    embedding and listed in ``report.failures``.

    Raises:
        OSError, tarfile.TarError, ValueError: the shard cannot be read to its end (a truncated
            tar, also one cut at a member boundary) or written; the original shard is then
            untouched and no temporary file is left.
    """
    path = Path(path)
    report = report if report is not None else CacheReport()
    device = torch.device(device)
    tmp = path.with_name(f".{path.name}.caching-{os.getpid()}")
    identity = anchor.identity.encode("utf-8")
    samples = total = 0
    failures_before = len(report.failures)
    # entries waiting for their batch's forward pass: (header, content) or a group's cache members
    pending: list[tuple[tarfile.TarInfo, bytes | None] | _Group] = []
    groups: list[_Group] = []

    def flush(out: tarfile.TarFile) -> None:
        nonlocal samples
        samples += _embed(anchor, groups, device, path, report)
        for entry in pending:
            if isinstance(entry, _Group):
                if entry.vector is not None:
                    out.addfile(*tar_member(f"{entry.key}.{ANCHOR_KEY}", entry.vector))
                    out.addfile(*tar_member(f"{entry.key}.{ANCHOR_ID_KEY}", identity))
            else:
                info, data = entry
                out.addfile(info, io.BytesIO(data) if data is not None else None)
        pending.clear()
        groups.clear()

    try:
        mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
        with tarfile.open(path) as tar, tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as out:
            current: _Group | None = None
            for info, data, key, extension in _tar_entries(tar):
                if key is not None and extension in _CACHE_MEMBERS:
                    continue  # an earlier cache's vector: replaced below
                if key is not None and (current is None or key != current.key):
                    if current is not None:
                        pending.append(current)  # its cache members go after its last member
                        if len(groups) >= batch_size:
                            flush(out)
                    current = _Group(key)
                    groups.append(current)
                    total += 1
                if key is not None:
                    current.members.setdefault(extension, data)
                pending.append((info, data))
            if current is not None:
                pending.append(current)
            _check_end_of_archive(tar, path)
            flush(out)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    record = {"identity": anchor.identity, "samples": total, "cached": samples,
              "failures": len(report.failures) - failures_before, "bytes": path.stat().st_size,
              "created_by": "anchorbind cache"}
    side = sidecar_path(path)
    write_atomic(side, json.dumps(record, indent=2))
    report.samples += samples
    return report


def _anchor(anchor_config: AnchorConfig | Mapping[str, Any] | None) -> FrozenAnchor:
    if isinstance(anchor_config, AnchorConfig):
        return FrozenAnchor(anchor_config)
    return FrozenAnchor(from_dict(AnchorConfig, anchor_config or {}, where="anchor"))


def _process_share(accelerator: Any, device: str | torch.device | None) -> tuple[int, int, torch.device]:
    if accelerator is not None:
        return accelerator.process_index, accelerator.num_processes, accelerator.device
    return 0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _cache_roots(urls: Sequence[str], out: str | os.PathLike[str] | None) -> Any:
    """``url -> local cache root``: ``out``, else ``anchor-cache`` beside each local shard.

    Raises:
        ConfigError: ``out`` is not a local folder, or a shard is remote and no ``out`` is given.
    """
    if out is not None:
        if is_url(os.fspath(out)):
            raise ConfigError(f"--out {out}: the cache is written to a local folder (copy or serve it from there; "
                              "training reads it from a URL with data.anchor_cache)")
        return lambda url: os.fspath(out)
    remote = [u for u in urls if is_url(u)]
    if remote:
        raise ConfigError(f"{remote[0]} is not a local file: give --out FOLDER for its anchor cache (serve that "
                          f"folder as {default_root(remote[0]) or 'a URL'}, or point data.anchor_cache at it)")
    return lambda url: default_root(url)


def build_anchor_cache(
    shards: str | Sequence[str],
    anchor_config: AnchorConfig | Mapping[str, Any] | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    in_place: bool = False,
    batch_size: int = 64,
    num_workers: int = 2,
    stream: StreamOptions | None = None,
    accelerator: Any = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> CacheReport:
    """Cache the anchor's embeddings of ``shards``; only this process's share when distributed.

    Args:
        shards: a shard spec (local paths, directories, braces, globs, ``http(s)`` or ``pipe:`` URLs).
        anchor_config: the anchor to run; must equal the training run's ``model.anchor``, whose
            identity training looks for.
        out: the cache root for sidecars (a local folder); default ``anchor-cache`` beside the
            shards (needs local shards).
        in_place: rewrite local shards with the embeddings instead (module docstring).
        batch_size: images per anchor forward pass.
        num_workers: loader processes that read and decode shards while the anchor runs (sidecars).
        stream: timeouts and retries for reading remote shards.
        accelerator: an ``accelerate.Accelerator`` or ``None``; shard ``i`` goes to process
            ``i % num_processes``, and the anchor runs on ``accelerator.device``.
        device: where the anchor runs without an accelerator (default: CUDA if available).
        progress: show a tqdm bar.

    Returns:
        This process's :class:`CacheReport` (a shard that fails is reported there, not raised).

    Raises:
        FileNotFoundError: ``in_place`` and a shard is not a local file.
        ConfigError: sidecars for remote shards without ``out``; ``out`` not local; two shards
            with one file name under one root.
    """
    urls = expand_shards(shards)
    if in_place:
        remote = [u for u in urls if not Path(u).is_file()]
        if remote:
            raise FileNotFoundError(f"--in-place rewrites shards; these are not local files: {remote[:3]} "
                                    "(leave out --in-place to write sidecars)")
    root_of = None if in_place else _cache_roots(urls, out)
    anchor = _anchor(anchor_config)
    index, count, run_on = _process_share(accelerator, device)
    anchor.to(run_on)
    mine = [u for i, u in enumerate(urls) if i % count == index]
    bar = tqdm(total=len(mine), desc=f"cache[{index}]", disable=not progress, unit="shard")
    try:
        if in_place:
            return _cache_in_place(anchor, [Path(u) for u in mine], batch_size, run_on, bar)
        return _cache_sidecars(anchor, mine, root_of, batch_size, num_workers, stream or StreamOptions(), run_on, bar)
    finally:
        bar.close()


def _cache_sidecars(anchor: FrozenAnchor, urls: Sequence[str], root_of: Any, batch_size: int, num_workers: int,
                    stream: StreamOptions, device: torch.device, bar: Any) -> CacheReport:
    report = CacheReport()
    todo = []
    for url in urls:
        if read_record(url, anchor.identity, root_of(url)) is not None:
            report.skipped.append(url)
            bar.update(1)
        else:
            todo.append(url)
    try:
        jobs = jobs_for(todo, anchor.identity, root_of)
    except (ValueError, OSError) as err:
        raise ConfigError(str(err)) from None
    outcome = write_sidecars(anchor, jobs, batch_size=batch_size, num_workers=num_workers, device=device,
                             options=stream, progress=bar)
    report.written.extend(outcome.written)
    report.samples += outcome.samples
    report.failures.extend(outcome.failures)
    report.failed_shards.extend(outcome.failed_shards)
    return report


def _cache_in_place(anchor: FrozenAnchor, paths: Sequence[Path], batch_size: int, device: torch.device,
                    bar: Any) -> CacheReport:
    report = CacheReport()
    for path in paths:
        bar.update(1)
        # a killed run's temporaries of this process's shards only (another process may own the rest)
        remove_stale(path.parent, names=[path.name, sidecar_path(path).name])
        if shard_cache_identity(path) == anchor.identity:
            report.skipped.append(str(path))
            continue
        try:
            cache_shard(anchor, path, batch_size=batch_size, device=device, report=report)
        except (OSError, tarfile.TarError, ValueError) as err:
            report.failed_shards.append({"shard": str(path), "reason": f"{type(err).__name__}: {err}"})
            continue
        report.written.append(str(path))
    return report


def _anchor_section(path: Path) -> dict[str, Any]:
    """The anchor config in a YAML file: a training config's ``model.anchor``, an ``anchor:``
    section, or the anchor's fields at the top level."""
    data = load_yaml(path)
    if isinstance(data.get("model"), Mapping):
        return dict(data["model"].get("anchor") or {})
    if isinstance(data.get("anchor"), Mapping):
        return dict(data["anchor"])
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """``anchorbind cache SHARDS... [--out DIR | --in-place] [--anchor-config YAML]``; one JSON line per process.

    Returns 1 when a shard could not be cached (it is reported and left as it was), else 0.
    """
    parser = argparse.ArgumentParser(prog="anchorbind cache", description=__doc__.split("\n\n")[0],
                                     epilog="Run under `accelerate launch` to split the shards over processes.")
    parser.add_argument("shards", nargs="+", help="shards: paths, directories, globs, brace patterns, "
                                                  "http(s):// or pipe: URLs")
    parser.add_argument("--anchor-config", "--config", dest="anchor_config", type=Path,
                        help="YAML with the anchor: a training config (its model.anchor), an `anchor:` section, "
                             "or AnchorConfig fields; default: the default anchor")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="local folder for the sidecar cache (default: anchor-cache beside "
                                                 "local shards; required for URLs)")
    where.add_argument("--in-place", action="store_true", help="rewrite local shards with the embeddings instead of "
                                                               "writing sidecars (the former layout)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="processes reading and decoding shards (default 2)")
    parser.add_argument("--read-timeout-s", type=float, default=60.0,
                        help="a remote shard with no data for this long is retried (default 60)")
    parser.add_argument("--retries", type=int, default=5, help="attempts after a failed read before a shard is "
                                                               "reported as failed (default 5)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    process = accelerator.process_index if accelerator is not None else 0
    try:
        anchor_cfg = _anchor_section(args.anchor_config) if args.anchor_config else {}
        report = build_anchor_cache(
            args.shards, anchor_cfg, out=args.out, in_place=args.in_place, batch_size=args.batch_size,
            num_workers=args.workers, stream=StreamOptions(read_timeout_s=args.read_timeout_s, retries=args.retries),
            accelerator=accelerator,
            progress=not args.no_progress and (accelerator is None or accelerator.is_local_main_process))
    except (ConfigError, FileNotFoundError) as err:
        print(f"anchorbind cache: error: {err}", file=sys.stderr)
        return 2
    summary = {"process": process, "written": len(report.written),
               "skipped": len(report.skipped), "samples": report.samples, **{
                   k: v for k, v in asdict(report).items() if k in ("failures", "failed_shards")}}
    print(json.dumps(summary), flush=True)
    return 1 if report.failed_shards else 0
