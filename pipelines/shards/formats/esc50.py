"""ESC-50 (Piczak, 2015; github.com/karolpiczak/ESC-50) in its distributed layout.

``ROOT/meta/esc50.csv`` (``filename,fold,target,category,esc10,src_file,take``) and the clips in
``ROOT/audio/<filename>`` (5 s, 44.1 kHz mono wav). One split, ``all``: the five folds are kept in
each sample's ``json`` (``dataset.fold``) for the published cross-validation protocol.

This module also holds the small helpers the audio readers share (:func:`csv_records`,
:func:`safe_key`, :func:`unique_key`, :func:`audio_member`, :func:`listed_clip`, :func:`plain_name`,
:func:`check_options`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from anchorbind.errors import ConfigError, InputError
from anchorbind.pipelines.shards.convert import ConversionReport, SampleRow, _read_manifest

__all__ = ["DESCRIPTION", "NAME", "audio_member", "check_options", "csv_records", "listed_clip", "plain_name", "read",
           "safe_key", "unique_key"]

NAME = "esc50"
DESCRIPTION = "ESC-50 environmental sounds: meta/esc50.csv + audio/*.wav, one split 'all' with folds 1-5"

SPLIT = "all"
REQUIRED = ("filename", "fold", "target", "category")
AUDIO_KEYS = ("flac", "wav", "mp3", "ogg")
"""The audio plugin's ``sample_keys``: a clip's member key is its extension, one of these."""


# ---------------------------------------------------------------------------------------- shared helpers
def check_options(name: str, options: Mapping[str, str], known: Sequence[str] = ()) -> None:
    """Refuse a ``--option`` the format does not take (a typo would otherwise be ignored).

    Raises:
        ConfigError: an unknown option, naming the known ones.
    """
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"takes {', '.join(known)}" if known else "takes no options"
        raise ConfigError(f"--option {', '.join(unknown)}: --format {name} {takes}")


def csv_records(path: Path, required: Sequence[str], what: str) -> Iterator[tuple[int, dict[str, str] | InputError]]:
    """``(line, row)`` per CSV row (UTF-8, a BOM allowed; ``line`` is where the row starts).

    The header is checked at once; then ``row`` is an :class:`InputError` for a row that cannot be
    used (unreadable, not UTF-8, more cells than the header, or too few for a column of
    ``required``), else ``{column: value}`` (names stripped, values as written).

    Raises:
        InputError: ``path`` is missing, or its header lacks a column of ``required``.
    """
    if not path.is_file():
        raise InputError(path, f"missing: {what}")
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            header = [c.strip() for c in next(csv.reader(handle), [])]
    except (OSError, csv.Error) as err:
        raise InputError(path, f"unreadable CSV header ({err})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(path, f"not {what}: no column {', '.join(missing)} in the header "
                               f"(expected {', '.join(required)})")
    return _records(path, required)


def _records(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str] | InputError]]:
    for line, record in _read_manifest(path):
        if isinstance(record, BaseException):
            yield line, record if isinstance(record, InputError) else InputError(f"{path}:{line}", str(record))
            continue
        row = {k.strip(): v for k, v in record.items() if isinstance(k, str)}
        absent = [c for c in required if row.get(c) is None]
        if absent:
            yield line, InputError(f"{path}:{line}", f"missing column {', '.join(absent)} (the row is too short)")
            continue
        yield line, {k: v for k, v in row.items() if isinstance(v, str)}


_UNSAFE = re.compile(r"[^\w-]+")


def safe_key(name: str) -> str:
    """A sample key from a file name or id: every run of characters other than letters, digits,
    ``_`` and ``-`` (dots, spaces, path separators, control characters, punctuation) becomes one
    ``_``; leading and trailing ``_`` are dropped; an empty result is ``clip``."""
    return _UNSAFE.sub("_", name).strip("_") or "clip"


def unique_key(key: str, taken: set[str]) -> str:
    """``key``, or ``key_2``, ``key_3``... the first not in ``taken`` (which it is added to)."""
    candidate, n = key, 1
    while candidate in taken:
        n += 1
        candidate = f"{key}_{n}"
    taken.add(candidate)
    return candidate


def audio_member(path: Path) -> str | None:
    """The member key of an audio file (its lower-case extension), or None when the audio plugin reads no such file."""
    extension = path.suffix.lstrip(".").lower()
    return extension if extension in AUDIO_KEYS else None


def listed_clip(path: Path, key: str, line: int, report: ConversionReport) -> str | None:
    """The member key of a clip a CSV lists, or None once the reason it cannot be used (an extension
    the audio plugin does not read, no such file) is in ``report`` as a skipped sample."""
    member = audio_member(path)
    if member is None:
        report.skip(path, key, "audio", f"unknown format for audio ({path.suffix or 'no extension'})",
                    sample=True, row=line)
        return None
    try:
        present = path.is_file()
    except (OSError, ValueError) as err:  # a name too long for the file system...
        report.skip(path, key, "audio", f"unusable path ({err})", sample=True, row=line)
        return None
    if not present:
        report.skip(path, key, "audio", "missing file", sample=True, row=line)
        return None
    return member


def plain_name(value: str) -> bool:
    """Whether a CSV's file name is a plain name inside its folder (no path separator, not ``.``/``..``)."""
    return bool(value) and "/" not in value and "\\" not in value and "\0" not in value and value not in (".", "..")


# ---------------------------------------------------------------------------------------- ESC-50
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
