"""``anchorbind shards``: convert a folder or a CSV/JSONL manifest into WebDataset shards.

Prints the summary (samples written, files and samples skipped, where the reasons are) and exits
0 when at least one sample was written, 1 when none was, 2 when the source or the output folder
cannot be used.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from anchorbind.errors import InputError
    from anchorbind.pipelines.shards import convert

    layouts = convert.__doc__.split("\n\n", 1)[1]
    parser = argparse.ArgumentParser(prog="anchorbind shards", description=convert.__doc__.split("\n\n")[0],
                                     epilog=layouts, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a folder, or a .csv / .jsonl manifest")
    parser.add_argument("--out", type=Path, required=True, help="output folder for shards, manifest and report")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes validating files (default: up to 4)")
    parser.add_argument("--prefix", default="data", help="shard name prefix: PREFIX-000000.tar (default data)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the dataset already in --out (refused without it)")
    parser.add_argument("--max-file-mb", type=float, default=convert.MAX_FILE_BYTES / 2**20,
                        help="skip larger files unread (default %(default)g)")
    args = parser.parse_args(argv)
    try:
        report = convert.convert_to_shards(args.source, args.out, shard_size=args.shard_size, workers=args.workers,
                                           prefix=args.prefix, overwrite=args.overwrite,
                                           max_file_bytes=int(args.max_file_mb * 2**20))
    except (FileNotFoundError, FileExistsError, InputError, ValueError) as err:
        print(f"anchorbind shards: error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.samples_written else 1
