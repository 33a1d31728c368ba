"""The procedural world as WebDataset shards: ``train/`` and ``test/`` splits with manifests."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from anchorbind.config import config_to_dict
from anchorbind.pipelines.shards.writer import write_shards_parallel

__all__ = ["SHARD_PREFIX", "write_world_shards"]

SHARD_PREFIX = "world"


def _world_samples(start: int, stop: int, *, split: str, seed: int, world_cfg: Any) -> list[dict[str, Any]]:
    """Scenes ``start..stop-1`` of ``split`` (module level, so spawned workers can unpickle it)."""
    from anchorbind.pipelines.world import make_scene, render_sample

    return [render_sample(make_scene(seed, index, split, world_cfg), world_cfg) for index in range(start, stop)]


def write_world_shards(
    out_dir: str | os.PathLike[str],
    *,
    train: int,
    test: int,
    seed: int = 0,
    shard_size: int = 1000,
    workers: int = 1,
    world_cfg: Any = None,
) -> dict[str, dict[str, Any]]:
    """Generate ``train`` + ``test`` scenes into ``out_dir/{train,test}/world-XXXXXX.tar``.

    Each split gets a ``manifest.json`` (see :mod:`anchorbind.pipelines.shards.writer`) recording the seed
    and the world config. Output is identical whatever ``workers`` is (every scene depends only
    on ``(seed, split, index)``); an interrupted run resumes (finished shards are kept), and a
    folder generated with other settings is refused.

    Args:
        out_dir: destination; ``train/`` and ``test/`` are created inside.
        train: number of training scenes.
        test: number of test scenes.
        seed: world seed.
        shard_size: scenes per shard.
        workers: processes rendering shards in parallel.
        world_cfg: a :class:`anchorbind.pipelines.world.WorldConfig` (default settings when ``None``).

    Returns:
        ``{"train": manifest, "test": manifest}``.
    """
    from anchorbind.pipelines.world import WorldConfig

    world_cfg = world_cfg or WorldConfig()
    out_dir = Path(out_dir)
    manifests = {}
    for split, count in (("train", train), ("test", test)):
        make = functools.partial(_world_samples, split=split, seed=seed, world_cfg=world_cfg)
        plan = {"split": split, "seed": seed, "world": config_to_dict(world_cfg)}
        manifests[split] = write_shards_parallel(out_dir / split, SHARD_PREFIX, count, shard_size, make,
                                                 workers=workers, plan=plan, created_by="anchorbind world")
    return manifests
