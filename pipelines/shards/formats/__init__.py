"""Readers of public datasets in their official layouts, for ``anchorbind shards ROOT --format NAME``.

Each reader turns a dataset's files, exactly as its authors distribute them (file names, CSV
columns), into :class:`~anchorbind.pipelines.shards.convert.SampleRow` s per split; the rows are
then validated and written like any other conversion (:func:`~anchorbind.pipelines.shards.convert.write_rows`).

A reader is a module in this package with::

    NAME: str                      # the --format value
    DESCRIPTION: str               # one line for --help
    def read(root: Path, report: ConversionReport, options: Mapping[str, str]) -> dict[str, list[SampleRow]]

``read`` returns ``{split: rows}``: one split is written into ``--out`` itself, several into
``--out/<split>/``. What ``read`` cannot use (a listed file that is missing, a malformed CSV
row) goes into ``report`` with its reason; the reader raises :class:`~anchorbind.errors.InputError`
only when the layout itself is wrong (the CSV or folder the format needs is not there).

Every sample's ``json`` follows the shard schema of ``docs/data.md``: ``attributes`` (labels),
``dataset`` (``name``, ``split``, ``fold`` where the dataset has folds, and ``protocol``, the
published evaluation ``anchorbind eval`` runs on these shards), and ``captions`` (every caption of
a clip, for datasets with several; the ``txt`` member holds the first).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from anchorbind.errors import ConfigError

__all__ = ["FORMATS", "format_module", "read_format"]

FORMATS: dict[str, str] = {
    "esc50": "anchorbind.pipelines.shards.formats.esc50",
    "clotho": "anchorbind.pipelines.shards.formats.clotho",
    "audiocaps": "anchorbind.pipelines.shards.formats.audiocaps",
    "nyuv2": "anchorbind.pipelines.shards.formats.nyuv2",
    "sunrgbd": "anchorbind.pipelines.shards.formats.sunrgbd",
}
"""``--format`` name -> the module reading it (imported only when used)."""


def format_module(name: str) -> ModuleType:
    """The reader module of format ``name``.

    Raises:
        ConfigError: an unknown format (the known ones listed).
    """
    if name not in FORMATS:
        raise ConfigError(f"--format: unknown dataset format {name!r}; known: {sorted(FORMATS)}")
    return importlib.import_module(FORMATS[name])


def read_format(name: str, root: Path, report: Any, options: Mapping[str, str] | None = None) -> dict[str, list[Any]]:
    """``format_module(name).read(root, report, options)``: the dataset's rows per split."""
    return format_module(name).read(Path(root), report, dict(options or {}))
