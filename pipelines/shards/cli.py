"""``anchorbind shards``: convert a folder or a CSV/JSONL manifest into WebDataset shards.

Prints the summary (samples written, labels, files and samples skipped, where the reasons are;
one line per split with ``--test-fraction``) and exits 0 when at least one sample was written, 1
when none was, 2 when the source, the options or the output folder cannot be used.
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
    parser.add_argument("--label-from-folder", action="store_true",
                        help="a folder in the ImageFolder layout: the first folder below SOURCE is each sample's "
                             f"label, stored as attributes.{convert.DEFAULT_LABEL} (off by default)")
    parser.add_argument("--label-column", metavar="NAME",
                        help="the manifest column that is the category (every other column is an attribute too); "
                             "with --label-from-folder, the attribute the folder names are stored under")
    parser.add_argument("--test-fraction", type=float, metavar="F",
                        help="also make a test split: write OUT/train and OUT/test, a fraction F of the samples "
                             "(by the hash of their key, stratified by label) in test")
    args = parser.parse_args(argv)
    if args.format is not None:
        if args.label_from_folder or args.label_column is not None or args.test_fraction is not None:
            print("anchorbind shards: error: --label-from-folder, --label-column and --test-fraction apply to a "
                  "folder or a manifest; --format writes the dataset's own labels and splits", file=sys.stderr)
            return 2
        return _convert_format(args)
    options = {"shard_size": args.shard_size, "workers": args.workers, "prefix": args.prefix,
               "overwrite": args.overwrite, "max_file_bytes": int(args.max_file_mb * 2**20),
               "label_from_folder": args.label_from_folder, "label_column": args.label_column}
    try:
        if args.test_fraction is None:
            reports = {"": convert.convert_to_shards(args.source, args.out, **options)}
        else:
            reports = convert.convert_to_splits(args.source, args.out, test_fraction=args.test_fraction, **options)
    except (FileNotFoundError, FileExistsError, InputError, ValueError) as err:
        print(f"anchorbind shards: error: {err}", file=sys.stderr)
        return 2
    for split, report in reports.items():
        print(f"{split}: {report.summary()}" if split else report.summary())
        for note in report.notes:
            print(f"note: {note}")
    return 0 if any(r.samples_written for r in reports.values()) else 1


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
    if len(splits) > 1:  # what reading the layout skipped, of every split: OUT/report.json, apart from each split's
        args.out.mkdir(parents=True, exist_ok=True)
        convert.write_report(args.out, report)
        print(f"reading {args.format}: skipped {report.files_skipped} files and {report.samples_skipped} samples"
              f" — reasons in {args.out / convert.REPORT}")
    for split, rows in splits.items():
        out = args.out if len(splits) == 1 else args.out / split
        split_report = report if len(splits) == 1 else convert.ConversionReport(out_dir=str(out))
        done = convert.write_rows(rows, out, report=split_report, source=f"{args.format}:{args.source}",
                                  shard_size=args.shard_size, workers=args.workers, prefix=args.prefix,
                                  overwrite=args.overwrite, max_file_bytes=int(args.max_file_mb * 2**20),
                                  created_by=f"anchorbind shards --format {args.format}")
        print(f"{split}: {done.summary()}")
        written += done.samples_written
    return 0 if written else 1
