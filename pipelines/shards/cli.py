"""``anchorbind shards``: convert a folder or a CSV/JSONL manifest into WebDataset shards."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.shards import convert

    parser = argparse.ArgumentParser(prog="anchorbind shards", description=convert.__doc__.split("\n\n")[0],
                                     epilog="Layouts: see pipelines/shards/convert.py or docs/data.md.")
    parser.add_argument("source", type=Path, help="a folder, or a .csv / .jsonl manifest")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--prefix", default="data", help="shard name prefix: PREFIX-000000.tar")
    args = parser.parse_args(argv)
    report = convert.convert_to_shards(args.source, args.out, shard_size=args.shard_size, prefix=args.prefix)
    print(report.summary())
    return 0 if report.samples_written else 1
