"""``anchorbind cache``: store the frozen anchor's embedding with every sample, once.

Training then reads a float16 vector per sample instead of decoding and running the image
encoder — the dominant cost of binding on a CPU (see ``bench/bench_train.py``).

Each shard is rewritten with two members added per sample, ``anchor.npy`` (float16, (D,)) and
``anchor_id.txt`` (the anchor's identity: architecture, weight hash, resolution). A mismatched
cache is refused by the loader. The rewrite goes to a temporary file that replaces the shard only
when complete, so an interrupted run never loses data; a shard whose samples already carry this
anchor's cache is skipped, so reruns resume. Under ``accelerate launch`` each process takes a
disjoint subset of the shards.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from tqdm.auto import tqdm

from bind.anchor import AnchorConfig, FrozenAnchor
from bind.config import from_dict, load_yaml
from bind.data.shardlist import expand_shards, iter_shard
from bind.data.stages import ANCHOR_ID_KEY, ANCHOR_KEY
from bind.errors import InputError

__all__ = ["CacheReport", "build_anchor_cache", "main", "shard_cache_identity", "shards_have_anchor_cache"]


@dataclass
class CacheReport:
    """What one process did: shards written and skipped, samples embedded, images that failed."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    samples: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)


def shard_cache_identity(path: str | os.PathLike[str]) -> str | None:
    """The anchor identity cached in a local shard (read from its first sample), or ``None``."""
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith("." + ANCHOR_ID_KEY):
                    return tar.extractfile(member).read().decode("utf-8").strip()
    except (OSError, tarfile.TarError):
        return None
    return None


def shards_have_anchor_cache(shards: str | Sequence[str], identity: str) -> bool:
    """True when every shard is local and carries this anchor's cache (remote shards: False)."""
    urls = expand_shards(shards)
    return all(Path(u).is_file() and shard_cache_identity(u) == identity for u in urls)


def _embed_images(anchor: FrozenAnchor, images: list[torch.Tensor], batch_size: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out.append(anchor(anchor.collate(images[start:start + batch_size])).cpu().numpy().astype(np.float16))
    return np.concatenate(out) if out else np.zeros((0, anchor.embed_dim), np.float16)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def cache_shard(anchor: FrozenAnchor, path: Path, batch_size: int, report: CacheReport) -> None:
    """Rewrite one shard with anchor embeddings added; samples whose image fails keep no cache."""
    samples = list(iter_shard(path))
    image_keys = anchor.sample_keys
    with_image = [(i, next(k for k in image_keys if k in s)) for i, s in enumerate(samples)
                  if any(k in s for k in image_keys)]
    valid: list[tuple[int, torch.Tensor]] = []
    for index, key in with_image:
        try:
            valid.append((index, anchor.load(samples[index][key])))
        except InputError as err:
            report.failures.append({"shard": str(path), "key": samples[index]["__key__"], "reason": err.reason})
    embeddings = _embed_images(anchor, [image for _, image in valid], batch_size)
    for (index, _), vector in zip(valid, embeddings, strict=True):
        samples[index][ANCHOR_KEY] = _npy_bytes(vector)
        samples[index][ANCHOR_ID_KEY] = anchor.identity.encode()
    tmp = path.with_name(f".{path.name}.caching")
    with wds.TarWriter(str(tmp)) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k != "__url__" and k != "__local_path__"})
    os.replace(tmp, path)
    report.samples += len(valid)


def build_anchor_cache(
    shards: Sequence[str] | str,
    anchor_config: AnchorConfig | Mapping[str, Any] | None = None,
    *,
    batch_size: int = 64,
    accelerator: Any = None,
    progress: bool = True,
) -> CacheReport:
    """Cache the anchor's embeddings in local ``shards``; this process's share when distributed.

    Args:
        shards: local shard paths (or a spec that expands to them).
        anchor_config: the anchor to run (must equal the training run's ``model.anchor``).
        batch_size: images per anchor forward.
        accelerator: an ``accelerate.Accelerator`` (or ``None``); shard ``i`` goes to process
            ``i % num_processes``.
    """
    urls = expand_shards(shards)
    remote = [u for u in urls if not Path(u).is_file()]
    if remote:
        raise FileNotFoundError(f"the anchor cache rewrites shards in place; these are not local files: {remote[:3]}")
    anchor = FrozenAnchor(from_dict(AnchorConfig, anchor_config or {}, where="anchor")
                          if not isinstance(anchor_config, AnchorConfig) else anchor_config)
    index = accelerator.process_index if accelerator is not None else 0
    count = accelerator.num_processes if accelerator is not None else 1
    mine = [Path(u) for i, u in enumerate(urls) if i % count == index]
    report = CacheReport()
    for path in tqdm(mine, desc=f"cache[{index}]", disable=not progress, unit="shard"):
        if shard_cache_identity(path) == anchor.identity:
            report.skipped.append(str(path))
            continue
        cache_shard(anchor, path, batch_size, report)
        report.written.append(str(path))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anchorbind cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", nargs="+", help="local shards, shard directories or brace patterns")
    parser.add_argument("--config", type=Path, help="a training YAML; its model.anchor is used")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    anchor_cfg = load_yaml(args.config).get("model", {}).get("anchor", {}) if args.config else {}
    report = build_anchor_cache(args.shards, anchor_cfg, batch_size=args.batch_size, accelerator=accelerator,
                                progress=accelerator.is_local_main_process)
    summary = {"process": accelerator.process_index, "written": len(report.written), "skipped": len(report.skipped),
               "samples": report.samples, "failures": report.failures}
    print(json.dumps(summary))
    return 0
