"""``anchorbind import-imagebind CHECKPOINT --out DIR``: ImageBind's checkpoint as an AnchorBind model folder."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from anchorbind.errors import ConfigError
from anchorbind.pipelines.imagebind.convert import LICENSE_NOTE, from_imagebind
from anchorbind.pipelines.imagebind.plan import BRANCHES, TO_ANCHORBIND

__all__ = ["main"]

EPILOG = f"""\
Sizes (width, blocks, grid, projection) are read from the checkpoint's shapes; head counts, which
a checkpoint does not store, are width / ImageBind's head width per branch (80 vision, 48 depth,
64 the others) unless --heads gives them. The result loads with BindModel.from_pretrained(DIR)
and every anchorbind command that takes a model (eval, embed, index, search, export, train with
model.init_from). {LICENSE_NOTE}.

examples:
  anchorbind import-imagebind .checkpoints/imagebind_huge.pth --out models/imagebind
  anchorbind import-imagebind imagebind_huge.pth --out models/ib-audio --modalities text audio
"""


def _heads(values: Sequence[str]) -> dict[str, int]:
    heads: dict[str, int] = {}
    for value in values:
        branch, _, count = value.partition("=")
        if branch not in BRANCHES or not count.isdigit() or int(count) <= 0:
            raise ConfigError(f"--heads {value!r}: expected BRANCH=N with BRANCH one of {list(BRANCHES)}")
        heads[branch] = int(count)
    return heads


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anchorbind import-imagebind", description=__doc__.splitlines()[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="imagebind_huge.pth (read with torch.load(weights_only=True)) "
                                           "or a .safetensors with ImageBind's tensor names")
    parser.add_argument("--out", required=True, help="the model folder to write")
    parser.add_argument("--modalities", nargs="+", metavar="BRANCH", default=list(BRANCHES),
                        help=f"ImageBind branches to import (default: all of {' '.join(BRANCHES)}; "
                             "vision is always imported: it is the anchor)")
    parser.add_argument("--heads", nargs="+", metavar="BRANCH=N", default=[],
                        help="attention heads of a branch whose width is not a multiple of ImageBind's head width")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modalities) - set(BRANCHES))
    if unknown:
        raise ConfigError(f"--modalities: unknown ImageBind branches {unknown}; ImageBind has {list(BRANCHES)}")
    model = from_imagebind(args.checkpoint, args.out, modalities=tuple(args.modalities), heads=_heads(args.heads),
                           overwrite=args.overwrite)
    names = ", ".join(f"{branch} -> {TO_ANCHORBIND[branch]}" for branch in BRANCHES if TO_ANCHORBIND[branch]
                      in model.modalities)
    print(f"wrote {args.out}: {names}; embedding width {model.embed_dim}")
    return 0
