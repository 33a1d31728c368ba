"""The procedural world as WebDataset shards: ``train/`` and ``test/`` splits with manifests."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pipelines.shards.writer import write_shards_parallel

__all__ = ["write_world_shards"]


def _world_samples(start: int, stop: int, *, split: str, seed: int, world_cfg: Any) -> list[dict[str, Any]]:
    from pipelines.world import make_scene, render_sample

    return [render_sample(make_scene(seed, index, split, world_cfg), world_cfg) for index in range(start, stop)]


def write_world_shards(
    out_dir: str | Path,
    *,
    train: int,
    test: int,
    seed: int = 0,
    shard_size: int = 1000,
    workers: int = 1,
    world_cfg: Any = None,
) -> dict[str, dict[str, Any]]:
    """Generate ``train`` + ``test`` scenes into ``out_dir/{train,test}/world-XXXXXX.tar``.

    Deterministic by ``seed`` whatever ``workers`` is; resumable (finished shards are kept).

    Returns:
        ``{"train": manifest, "test": manifest}``.
    """
    from pipelines.world import WorldConfig

    world_cfg = world_cfg or WorldConfig()
    out_dir = Path(out_dir)
    manifests = {}
    for split, count in (("train", train), ("test", test)):
        make = functools.partial(_world_samples, split=split, seed=seed, world_cfg=world_cfg)
        manifests[split] = write_shards_parallel(out_dir / split, "world", count, shard_size, make, workers=workers,
                                                 split=split, seed=seed, created_by="anchorbind world")
    return manifests
