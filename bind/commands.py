"""Small ``anchorbind`` subcommands: ``modalities`` (what is installed) and ``config``.

``anchorbind embed`` lives in :mod:`anchorbind.pipelines.embed` (it reads folders, manifests and shards).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["config_main", "modalities_main"]


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
