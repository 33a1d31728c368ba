"""Helpers the dataset readers share: CSV rows, safe and unique sample keys, listed clips, options.

Each reader in this package (``esc50``, ``clotho``, ``audiocaps``, ``nyuv2``, ``sunrgbd``) turns a
dataset's own layout into :class:`~anchorbind.pipelines.shards.convert.SampleRow` s; what they
have in common (refusing an unknown ``--option``, reading a CSV with one report line per bad row,
turning a file name into a key that webdataset keeps as one sample) lives here once.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from anchorbind.errors import ConfigError, InputError
from anchorbind.pipelines.shards.convert import ConversionReport, _read_manifest

__all__ = ["AUDIO_KEYS", "audio_member", "check_options", "csv_records", "listed_clip", "plain_name", "safe_key",
           "unique_key"]

AUDIO_KEYS = ("flac", "wav", "mp3", "ogg")
"""The audio member names a clip may be stored under, by its file's extension."""


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
