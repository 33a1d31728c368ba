"""``anchorbind world``: generate the procedural world as WebDataset shards."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anchorbind world", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--out", type=Path, required=True, help="output directory (train/ and test/ inside)")
    parser.add_argument("--train", type=int, required=True, help="number of training scenes")
    parser.add_argument("--test", type=int, required=True, help="number of test scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes")
    parser.add_argument("--image-size", type=int, default=160)
    args = parser.parse_args(argv)

    from pipelines.shards.world import write_world_shards
    from pipelines.world import WorldConfig

    manifests = write_world_shards(args.out, train=args.train, test=args.test, seed=args.seed,
                                   shard_size=args.shard_size, workers=args.workers,
                                   world_cfg=WorldConfig(image_size=args.image_size))
    print(json.dumps({split: {"shards": len(m["shards"]), "samples": m["total"]} for split, m in manifests.items()}))
    return 0
