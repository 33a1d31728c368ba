"""``anchorbind cache``: store the frozen anchor's embedding with every sample, once.

Training then reads a float16 vector per sample instead of decoding the image and running the
image encoder, the dominant cost of binding on a CPU (see ``bench/bench_train.py``).

Each shard is rewritten with two members added to every sample whose image decodes:
``anchor.npy`` (float16, shape ``(D,)``) and ``anchor_id.txt`` (the anchor's identity:
architecture, weight source and hash, resolution). The loader refuses a cache whose identity
differs from the training run's anchor. Safety and resumption:

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
  sample) carries this anchor's identity, so reruns resume where a run stopped;
- under ``accelerate launch`` process ``p`` of ``n`` takes shards ``i`` with ``i % n == p``
  (disjoint subsets; no collective is needed); a plain ``python`` run takes them all.

Example::

    anchorbind cache data/train --anchor-config demo
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
from anchorbind.data.shardlist import expand_shards
from anchorbind.data.stages import ANCHOR_ID_KEY, ANCHOR_KEY
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
        matching: how many shards, from the first, carry that identity's cache before
            ``first_without`` (all of them when it is None).
        first_without: the first shard that does not carry it (a remote URL never does: the
            cache rewrites local files); None when every shard does.
        found: the identity that shard's cache was built for; None when it has no cache (or is
            remote).
    """

    identity: str
    shards: int
    matching: int
    first_without: str | None = None
    found: str | None = None

    @property
    def complete(self) -> bool:
        return self.first_without is None


def anchor_cache_status(shards: str | Sequence[str], identity: str) -> AnchorCacheStatus:
    """Check the shards in order against ``identity``; stops at the first one without its cache.

    Each local shard is read through :func:`shard_cache_identity` (its sidecar, else the tar
    headers up to the first ``anchor_id.txt`` member).
    """
    urls = expand_shards(shards)
    for index, url in enumerate(urls):
        found = shard_cache_identity(url) if Path(url).is_file() else None
        if found != identity:
            return AnchorCacheStatus(identity, len(urls), index, url, found)
    return AnchorCacheStatus(identity, len(urls), len(urls))


def shards_have_anchor_cache(shards: str | Sequence[str], identity: str) -> bool:
    """True when every shard is a local file carrying this anchor's cache (remote shards: False)."""
    return anchor_cache_status(shards, identity).complete


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


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
        group.vector = _npy_bytes(vector)
    return len(embedded)


def _added_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    return info, data


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
                    for info, data in (_added_member(f"{entry.key}.{ANCHOR_KEY}", entry.vector),
                                       _added_member(f"{entry.key}.{ANCHOR_ID_KEY}", identity)):
                        out.addfile(info, io.BytesIO(data))
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
    side_tmp = side.with_name(f".{side.name}.writing-{os.getpid()}")
    side_tmp.write_text(json.dumps(record, indent=2))
    os.replace(side_tmp, side)
    report.samples += samples
    return report


def _anchor(anchor_config: AnchorConfig | Mapping[str, Any] | None) -> FrozenAnchor:
    if isinstance(anchor_config, AnchorConfig):
        return FrozenAnchor(anchor_config)
    return FrozenAnchor(from_dict(AnchorConfig, anchor_config or {}, where="anchor"))


def build_anchor_cache(
    shards: str | Sequence[str],
    anchor_config: AnchorConfig | Mapping[str, Any] | None = None,
    *,
    batch_size: int = 64,
    accelerator: Any = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> CacheReport:
    """Cache the anchor's embeddings in local ``shards``; only this process's share when distributed.

    Args:
        shards: local shard paths, or a spec that expands to them (directory, braces, glob).
        anchor_config: the anchor to run; must equal the training run's ``model.anchor``, whose
            identity the loader checks.
        batch_size: images per anchor forward pass.
        accelerator: an ``accelerate.Accelerator`` or ``None``; shard ``i`` goes to process
            ``i % num_processes``, and the anchor runs on ``accelerator.device``.
        device: where the anchor runs without an accelerator (default: CUDA if available).
        progress: show a tqdm bar.

    Returns:
        This process's :class:`CacheReport` (a shard that fails is reported there, not raised).

    Raises:
        FileNotFoundError: a shard is not a local file (the cache rewrites shards in place).
    """
    urls = expand_shards(shards)
    remote = [u for u in urls if not Path(u).is_file()]
    if remote:
        raise FileNotFoundError(f"the anchor cache rewrites shards in place; these are not local files: {remote[:3]}")
    anchor = _anchor(anchor_config)
    if accelerator is not None:
        index, count, run_on = accelerator.process_index, accelerator.num_processes, accelerator.device
    else:
        index, count = 0, 1
        run_on = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    anchor.to(run_on)
    mine = [Path(u) for i, u in enumerate(urls) if i % count == index]
    report = CacheReport()
    for path in tqdm(mine, desc=f"cache[{index}]", disable=not progress, unit="shard"):
        # a killed run's temporaries of this process's shards only (another process may own the rest)
        remove_stale(path.parent, names=[path.name, sidecar_path(path).name])
        if shard_cache_identity(path) == anchor.identity:
            report.skipped.append(str(path))
            continue
        try:
            cache_shard(anchor, path, batch_size=batch_size, device=run_on, report=report)
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
    """``anchorbind cache SHARDS... [--anchor-config YAML] [--batch-size N]``; one JSON line per process.

    Returns 1 when a shard could not be cached (it is left as it was), else 0.
    """
    parser = argparse.ArgumentParser(prog="anchorbind cache", description=__doc__.split("\n\n")[0],
                                     epilog="Run under `accelerate launch` to split the shards over processes.")
    parser.add_argument("shards", nargs="+", help="local shards, shard directories, globs or brace patterns")
    parser.add_argument("--anchor-config", "--config", dest="anchor_config", type=Path,
                        help="YAML with the anchor: a training config (its model.anchor), an `anchor:` section, "
                             "or AnchorConfig fields; default: the default anchor")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    accelerator = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch / torchrun
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    process = accelerator.process_index if accelerator is not None else 0
    try:
        anchor_cfg = _anchor_section(args.anchor_config) if args.anchor_config else {}
        report = build_anchor_cache(args.shards, anchor_cfg, batch_size=args.batch_size, accelerator=accelerator,
                                    progress=not args.no_progress and (accelerator is None
                                                                       or accelerator.is_local_main_process))
    except (ConfigError, FileNotFoundError) as err:
        print(f"anchorbind cache: error: {err}", file=sys.stderr)
        return 2
    summary = {"process": process, "written": len(report.written),
               "skipped": len(report.skipped), "samples": report.samples, **{
                   k: v for k, v in asdict(report).items() if k in ("failures", "failed_shards")}}
    print(json.dumps(summary), flush=True)
    return 1 if report.failed_shards else 0
