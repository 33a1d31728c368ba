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
    parser.add_argument("source", type=Path, help="a folder, or a .csv / .jsonl manifest, or a dataset's root "
                                                  "with --format")
    parser.add_argument("--format", default=None, metavar="NAME",
                        help="read SOURCE as a public dataset in its official layout: esc50, clotho, audiocaps, "
                             "nyuv2, sunrgbd (docs/data.md); several splits go to --out/<split>/")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a format's own option (e.g. clip_pattern for audiocaps), repeatable")
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
    if args.format is not None:
        return _convert_format(args)
    try:
        report = convert.convert_to_shards(args.source, args.out, shard_size=args.shard_size, workers=args.workers,
                                           prefix=args.prefix, overwrite=args.overwrite,
                                           max_file_bytes=int(args.max_file_mb * 2**20))
    except (FileNotFoundError, FileExistsError, InputError, ValueError) as err:
        print(f"anchorbind shards: error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.samples_written else 1


def _convert_format(args: argparse.Namespace) -> int:
    """``--format``: read the dataset's splits, write each (``--out`` or ``--out/<split>``), one summary a split."""
    from anchorbind.errors import ConfigError, InputError
    from anchorbind.pipelines.shards import convert
    from anchorbind.pipelines.shards.formats import read_format

    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = value
    if not args.source.is_dir():
        raise InputError(str(args.source), f"--format {args.format} needs the dataset's root folder")
    report = convert.ConversionReport(out_dir=str(args.out))
    splits = read_format(args.format, args.source, report, options)
    written = 0
    for split, rows in splits.items():
        out = args.out if len(splits) == 1 else args.out / split
        split_report = convert.ConversionReport(out_dir=str(out))
        if len(splits) == 1 or split == next(iter(splits)):  # what reading the layout skipped, reported once
            split_report.skipped, split_report.files_skipped = list(report.skipped), report.files_skipped
            split_report.samples_skipped = report.samples_skipped
        done = convert.write_rows(rows, out, report=split_report, source=f"{args.format}:{args.source}",
                                  shard_size=args.shard_size, workers=args.workers, prefix=args.prefix,
                                  overwrite=args.overwrite, max_file_bytes=int(args.max_file_mb * 2**20),
                                  created_by=f"anchorbind shards --format {args.format}")
        print(f"{split}: {done.summary()}")
        written += done.samples_written
    return 0 if written else 1
