"""ESC-50 (Piczak, 2015; github.com/karolpiczak/ESC-50) in its distributed layout.

``ROOT/meta/esc50.csv`` (``filename,fold,target,category,esc10,src_file,take``) and the clips in
``ROOT/audio/<filename>`` (5 s, 44.1 kHz mono wav). One split, ``all``: the five folds are kept in
each sample's ``json`` (``dataset.fold``) for the published cross-validation protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anchorbind.errors import InputError
from anchorbind.pipelines.shards.convert import ConversionReport, SampleRow
from anchorbind.pipelines.shards.formats.common import (
    check_options,
    csv_records,
    listed_clip,
    plain_name,
    safe_key,
    unique_key,
)

__all__ = ["DESCRIPTION", "NAME", "read"]

NAME = "esc50"
DESCRIPTION = "ESC-50 environmental sounds: meta/esc50.csv + audio/*.wav, one split 'all' with folds 1-5"

SPLIT = "all"
REQUIRED = ("filename", "fold", "target", "category")
"""The audio plugin's ``sample_keys``: a clip's member key is its extension, one of these."""


# ---------------------------------------------------------------------------------------- shared helpers
def _integer(value: str, column: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not an integer") from None
    if number < minimum:
        raise ValueError(f"{column} {number} is below {minimum}")
    return number


def _row(record: dict[str, str], audio: Path) -> tuple[Path, dict[str, Any]]:
    """The clip's path and ``json``; raises ValueError naming what is malformed."""
    filename = record["filename"]
    if not filename.strip():
        raise ValueError("empty filename")
    if not plain_name(filename):
        raise ValueError(f"filename {filename!r} is not a plain file name")
    fold = _integer(record["fold"], "fold", 1)
    target = _integer(record["target"], "target", 0)
    category = record["category"].strip()
    if not category:
        raise ValueError("empty category")
    esc10 = record.get("esc10", "").strip()
    if esc10.lower() not in ("true", "false", ""):
        raise ValueError(f"esc10 {esc10!r} is not True or False")
    meta = {
        "attributes": {"category": category.replace("_", " "), "esc10": esc10.lower() == "true"},
        "dataset": {"name": NAME, "split": SPLIT, "fold": fold, "target": target,
                    "protocol": {"task": "zero_shot", "modality": "audio", "label": "category", "group_by": "fold"}},
        "source": {"filename": filename, "src_file": record.get("src_file", "").strip(),
                   "take": record.get("take", "").strip()},
    }
    return audio / filename, meta


def read(root: Path, report: ConversionReport, options: Mapping[str, str]) -> dict[str, list[SampleRow]]:
    """ESC-50's clips as one split ``all``; malformed rows and missing clips go into ``report``.

    Raises:
        InputError: ``meta/esc50.csv`` or ``audio/`` is missing, or the CSV lacks a needed column.
        ConfigError: an ``--option`` (ESC-50 takes none).
    """
    check_options(NAME, options)
    csv_path = root / "meta" / "esc50.csv"
    audio = root / "audio"
    records = csv_records(csv_path, REQUIRED, "ESC-50's metadata CSV (meta/esc50.csv)")
    if not audio.is_dir():
        raise InputError(audio, "missing: ESC-50's audio folder (audio/, next to meta/)")
    rows: list[SampleRow] = []
    seen: dict[str, int] = {}
    taken: set[str] = set()
    for line, record in records:
        origin = f"{csv_path}:{line}"
        if isinstance(record, InputError):
            report.skip(origin, None, None, record.reason, sample=True, row=line)
            continue
        try:
            path, meta = _row(record, audio)
        except ValueError as err:
            report.skip(origin, None, None, f"malformed row: {err}", sample=True, row=line)
            continue
        key = safe_key(path.stem)
        if path.name in seen:
            report.skip(origin, key, None, f"duplicate filename {path.name!r} (row at line {seen[path.name]} has it)",
                        sample=True, row=line)
            continue
        seen[path.name] = line
        member = listed_clip(path, key, line, report)
        if member is None:
            continue
        key = unique_key(key, taken)
        rows.append(SampleRow(key, {"audio": (str(path), member, None)}, meta=meta, origin=origin, line=line))
    return {SPLIT: rows}
