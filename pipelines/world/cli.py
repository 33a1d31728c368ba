"""``anchorbind world``: generate the procedural world as WebDataset shards.

Writes ``OUT/train/world-XXXXXX.tar`` and ``OUT/test/world-XXXXXX.tar`` with a ``manifest.json``
per split, prints one JSON line of counts and exits 0; bad settings, or an output folder holding
a world generated with other settings, exit 2 with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchorbind world",
                                     description="generate the procedural multimodal world as WebDataset shards")
    parser.add_argument("--out", type=Path, required=True, help="output directory (train/ and test/ inside)")
    parser.add_argument("--train", type=int, required=True, help="number of training scenes")
    parser.add_argument("--test", type=int, required=True, help="number of test scenes")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--shard-size", type=int, default=1000, help="scenes per shard (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="parallel rendering processes (default 2)")
    parser.add_argument("--config", type=Path,
                        help="YAML of WorldConfig fields (image_size, image_format, sample_rate, ...)")
    parser.add_argument("--image-size", type=int, help="image side in pixels (overrides --config)")
    parser.add_argument("--image-format", choices=("png", "jpg"), help="image encoding (overrides --config)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from anchorbind.config import from_dict, load_yaml
    from anchorbind.errors import ConfigError
    from anchorbind.pipelines.shards.world import write_world_shards
    from anchorbind.pipelines.shards.writer import PlanMismatchError
    from anchorbind.pipelines.world import WorldConfig

    for name in ("train", "test", "shard_size"):
        if getattr(args, name) < (1 if name == "shard_size" else 0):
            print(f"anchorbind world: error: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    try:
        fields = load_yaml(args.config) if args.config else {}
        fields.update({k: v for k, v in (("image_size", args.image_size), ("image_format", args.image_format))
                       if v is not None})
        world_cfg = from_dict(WorldConfig, fields, where=str(args.config or "world"))
        manifests = write_world_shards(args.out, train=args.train, test=args.test, seed=args.seed,
                                       shard_size=args.shard_size, workers=args.workers, world_cfg=world_cfg)
    except (ConfigError, PlanMismatchError, ValueError) as err:
        print(f"anchorbind world: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({split: {"shards": len(m["shards"]), "samples": m["total"], "dir": str(args.out / split)}
                      for split, m in manifests.items()}))
    return 0
