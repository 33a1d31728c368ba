"""Small ``anchorbind`` subcommands: ``modalities`` (what is installed), ``config`` and ``embed``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["config_main", "embed_main", "modalities_main"]


def modalities_main(argv: Sequence[str] | None = None) -> int:
    """``anchorbind modalities``: list registered plugins, their shard keys and config defaults."""
    parser = argparse.ArgumentParser(prog="anchorbind modalities", description=modalities_main.__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    import dataclasses

    from anchorbind.registry import get_plugin_class, list_modalities

    rows = []
    for name in list_modalities():
        cls = get_plugin_class(name)
        defaults = {f.name: f.default for f in dataclasses.fields(cls.Config) if f.default is not dataclasses.MISSING}
        rows.append({
            "name": name,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "sample_keys": list(cls.sample_keys),
            "config": defaults,
        })
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for row in rows:
            print(f"{row['name']:<10} {row['class']}  keys={','.join(row['sample_keys'])}")
    return 0


def config_main(argv: Sequence[str] | None = None) -> int:
    """``anchorbind config list | show NAME | path NAME``: the configs shipped in the package.

    ``anchorbind config show demo > my.yaml`` starts a config of your own; ``--config NAME`` of
    ``anchorbind train`` (and ``accelerate launch -m anchorbind.train``) takes the same names.
    """
    description = (config_main.__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="anchorbind config", description=description)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="names of the packaged configs")
    for action, help_ in (("show", "print a packaged config (YAML, with its comments)"),
                          ("path", "print the file a name resolves to")):
        sub.add_parser(action, help=help_).add_argument("name", help="a packaged config name, e.g. demo, base")
    args = parser.parse_args(argv)

    from anchorbind.config import packaged_config_names, resolve_config

    if args.action == "list":
        for name in packaged_config_names():
            print(name)
        return 0
    path = resolve_config(args.name)
    if args.action == "path":
        print(path)
    else:
        sys.stdout.write(path.read_text())
    return 0


EMBED_EPILOG = """\
Unreadable inputs (missing, empty, truncated, wrong format) are skipped: one stderr line each
names the input and the reason, the summary line counts them, and the rest is written; the exit
status is then 0. The output's metadata lists the inputs embedded, in row order ("inputs"), and
those skipped ("skipped"). With --strict the first unreadable input stops the command (exit 1,
nothing written). When no input can be read the exit status is 1 and nothing is written. A
missing or damaged model folder exits 1, a --modality the model lacks exits 2. The output is
written to a temporary file and renamed into place, so it is never left half-written.
"""


def embed_main(argv: Sequence[str] | None = None) -> int:
    """``anchorbind embed MODEL_DIR --modality M FILES... --out emb.safetensors [--strict]``."""
    parser = argparse.ArgumentParser(prog="anchorbind embed", description="Embed files with a saved BindModel.",
                                     epilog=EMBED_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="a directory written by BindModel.save_pretrained")
    parser.add_argument("--modality", required=True, help="image, or a plugin modality of the model")
    parser.add_argument("inputs", nargs="+", help="input files (an encodes_text plugin: the strings themselves)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors (embeddings + order)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable input (exit 1, nothing written) instead of skipping it")
    args = parser.parse_args(argv)

    import os

    import torch
    from safetensors.torch import save_file

    from anchorbind.errors import AnchorBindError, ConfigError, InputError, ModelFileError, UnknownModalityError
    from anchorbind.model import BindModel

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be an integer >= 1, got {args.batch_size}")
    if args.out.is_dir():
        raise ConfigError(f"--out {str(args.out)!r} is a directory; give the path of a .safetensors file")
    blocking = next((p for p in args.out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"--out {str(args.out)!r}: {str(blocking)!r} is a file, not a directory")

    try:
        model = BindModel.from_pretrained(args.model_dir).eval()
    except (ConfigError, UnknownModalityError) as err:  # a saved config that no longer builds: a damaged model
        if isinstance(err, ModelFileError):
            raise
        raise ModelFileError(f"{args.model_dir}: the saved model cannot be rebuilt ({err})") from err
    processor = model.processor(args.modality)  # a modality the model lacks: UnknownModalityError
    written: list[str] = []
    skipped: list[InputError] = []
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(args.inputs), args.batch_size):
            samples = []
            for source in args.inputs[start:start + args.batch_size]:
                try:
                    samples.append(processor.load(source))
                except (AnchorBindError, OSError) as err:
                    bad = err if isinstance(err, InputError) else InputError(
                        source, getattr(err, "strerror", None) or str(err), modality=args.modality)
                    if args.strict:
                        if bad is err:
                            raise
                        raise bad from err
                    skipped.append(bad)
                    continue
                written.append(source)
            if samples:
                chunks.append(model.encode(args.modality, processor.collate(samples)).cpu())
    if not written:
        first = skipped[0]
        raise InputError(first.source, f"{first.reason}; none of the {len(args.inputs)} inputs could be read, "
                                       "nothing written", modality=args.modality)
    for bad in skipped:
        print(f"anchorbind embed: skipped {bad}", file=sys.stderr)
    embeddings = torch.cat(chunks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    try:
        save_file({"embeddings": embeddings.contiguous()}, str(tmp),
                  metadata={"modality": args.modality, "inputs": json.dumps(written),
                            "skipped": json.dumps([bad.source for bad in skipped])})
        os.replace(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)
    report = f"; skipped {len(skipped)} unreadable input(s), listed above" if skipped else ""
    print(f"wrote {tuple(embeddings.shape)} {args.modality} embeddings to {args.out}{report}", file=sys.stderr)
    return 0
