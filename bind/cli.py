"""The ``anchorbind`` command: a thin dispatcher to one ``main(argv)`` per subcommand.

Each subcommand lives beside the code it drives and owns its own argparse parser, so adding a
command is one line here and the library never sees an ``argparse.Namespace``. Modules are
imported only when their command runs, so ``anchorbind --help`` is instant.

One error convention for every command (:func:`anchorbind.errors.run_command`): a user mistake — any
:class:`~anchorbind.errors.AnchorBindError`, or a file that is missing or unreadable — prints one
line naming the input and the reason and exits 2 (usage, config) or 1 (data). A traceback is
shown only with ``--debug`` (anywhere on the command line) or ``ANCHORBIND_DEBUG=1``; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from anchorbind.errors import DEBUG_ENV, DEBUG_FLAG, run_command

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "modalities": ("anchorbind.commands:modalities_main", "list registered modality plugins and their configs"),
    "embed": ("anchorbind.pipelines.embed:main", "embed files, a folder, a manifest or shards into a resumable store"),
    "index": ("anchorbind.search:index_main", "build a faiss index (flat, ivf, hnsw) over an embedding store"),
    "search": ("anchorbind.search:search_main", "embed one query of any modality and print an index's nearest items"),
    "world": ("anchorbind.pipelines.world.cli:main", "generate the procedural multimodal world as WebDataset shards"),
    "shards": ("anchorbind.pipelines.shards.cli:main", "convert a folder or CSV/JSONL manifest into WebDataset shards"),
    "cache": ("anchorbind.data.cache:main", "store the frozen anchor's embeddings with every sample"),
    "train": ("anchorbind.train.loop:main", "train plugins against the anchor (also under accelerate launch)"),
    "eval": ("anchorbind.evaluation.evaluate:main", "retrieval (trained, emergent, direct), zero-shot, gap, alignment, "
             "visiocentrism"),
    "report": ("anchorbind.evaluation.report:main", "write report.md with figures from a run's metrics"),
    "demo": ("anchorbind.pipelines.demo:main", "the whole pipeline offline on CPU: world, cache, train, eval, report"),
    "config": ("anchorbind.commands:config_main", "list the packaged configs, or print one to start your own"),
    "check-plugin": ("anchorbind.contract:main", "run the plugin contract checks against an installed modality plugin"),
    "export": ("anchorbind.export:main", "export one encoder (plugin or anchor) to ONNX or a torch.export .pt2"),
    "import-imagebind": ("anchorbind.pipelines.imagebind.cli:main", "convert ImageBind's checkpoint (all six "
                         "modalities) into a model folder"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: anchorbind COMMAND [options]   (anchorbind COMMAND --help for each)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", f"errors are one line; {DEBUG_FLAG} (or {DEBUG_ENV}=1) shows the traceback"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anchorbind`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # loader workers fork after the tokenizer ran; its thread pool must not be inherited
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from importlib.metadata import version

        print(f"anchorbind {version('anchorbind')}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"anchorbind: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[command][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return run_command(f"anchorbind {command}", func, rest)


if __name__ == "__main__":
    raise SystemExit(main())
