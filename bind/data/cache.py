"""``anchorbind cache``: store the frozen anchor's embedding with every sample, once.

Training then reads a float16 vector per sample instead of decoding the image and running the
image encoder, the dominant cost of binding on a CPU (see ``bench/bench_train.py``).

Each shard is rewritten with two members added to every sample whose image decodes:
``anchor.npy`` (float16, shape ``(D,)``) and ``anchor_id.txt`` (the anchor's identity:
architecture, weight source and hash, resolution). The loader refuses a cache whose identity
differs from the training run's anchor. Safety and resumption:

- a shard is streamed into a hidden temporary file that replaces it (``os.replace``) only when
  complete, so an interrupted or failed run never loses or half-writes a shard; a shard that
  cannot be read to its end (a truncated tar) is left untouched and reported;
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
import sys
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from tqdm.auto import tqdm

from anchorbind.anchor import AnchorConfig, FrozenAnchor
from anchorbind.config import from_dict, load_yaml
from anchorbind.data.shardlist import expand_shards, iter_shard
from anchorbind.data.stages import ANCHOR_ID_KEY, ANCHOR_KEY
from anchorbind.errors import ConfigError, InputError

__all__ = [
    "CacheReport",
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


def shards_have_anchor_cache(shards: str | Sequence[str], identity: str) -> bool:
    """True when every shard is a local file carrying this anchor's cache (remote shards: False)."""
    urls = expand_shards(shards)
    return all(Path(u).is_file() and shard_cache_identity(u) == identity for u in urls)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _chunks(samples: Iterable[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _add_embeddings(anchor: FrozenAnchor, chunk: list[dict[str, Any]], device: torch.device, path: Path,
                    report: CacheReport) -> int:
    """Embed the chunk's images in one forward pass and add the two members; returns how many."""
    processor = anchor.processor
    images, rows = [], []
    for row, sample in enumerate(chunk):
        member = next((k for k in processor.sample_keys if k in sample), None)
        if member is None:
            continue
        try:
            images.append(processor.load(sample[member]))
            rows.append(row)
        except InputError as err:
            report.failures.append({"shard": str(path), "key": sample["__key__"], "reason": err.reason})
    if not images:
        return 0
    with torch.inference_mode():
        embeddings = anchor(processor.collate(images).to(device)).float().cpu().numpy().astype(np.float16)
    for row, vector in zip(rows, embeddings, strict=True):
        chunk[row][ANCHOR_KEY] = _npy_bytes(vector)
        chunk[row][ANCHOR_ID_KEY] = anchor.identity.encode("utf-8")
    return len(rows)


def cache_shard(anchor: FrozenAnchor, path: str | os.PathLike[str], *, batch_size: int = 64,
                device: str | torch.device = "cpu", report: CacheReport | None = None) -> CacheReport:
    """Rewrite one local shard with the anchor's embeddings added, atomically, plus its sidecar.

    Samples whose image does not decode are kept without an embedding and listed in
    ``report.failures``. Embeddings from an earlier cache are dropped first, so a sample never
    keeps a stale vector.

    Raises:
        OSError, tarfile.TarError, ValueError: the shard cannot be read to its end or written;
            the original shard is then untouched and no temporary file is left.
    """
    path = Path(path)
    report = report if report is not None else CacheReport()
    device = torch.device(device)
    tmp = path.with_name(f".{path.name}.caching-{os.getpid()}")
    samples = total = 0
    failures_before = len(report.failures)
    try:
        with wds.TarWriter(str(tmp), mtime=0) as writer:
            clean = ({k: v for k, v in s.items() if k not in ("__url__", "__local_path__", ANCHOR_KEY, ANCHOR_ID_KEY)}
                     for s in iter_shard(path))
            for chunk in _chunks(clean, batch_size):
                samples += _add_embeddings(anchor, chunk, device, path, report)
                total += len(chunk)
                for sample in chunk:
                    writer.write(sample)
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
