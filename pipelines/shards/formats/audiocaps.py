"""AudioCaps (Kim et al., 2019; github.com/cdjkim/audiocaps) with the clips the user downloaded.

The captions are ``train.csv``, ``val.csv``, ``test.csv`` (``audiocap_id,youtube_id,start_time,caption``)
from the repository's ``dataset/`` folder, either in ``ROOT`` or in ``ROOT/dataset``. The clips are
YouTube videos the user downloaded (AudioCaps distributes none), in ``audio_dir`` (option, default
``ROOT/audio``; a relative path is relative to ``ROOT``), named by ``clip_pattern``.

Rows of one ``(youtube_id, start_time)`` are one clip with several captions (five per clip in
``val`` / ``test``, one in ``train``). Each clip's file is looked for, first match wins:

1. each pattern of ``clip_pattern`` in order (several separated by ``|``; default
   ``{youtube_id}_{start_time}|{youtube_id}``; fields ``youtube_id``, ``start_time``, ``end_time``
   (= start + 10) and ``audiocap_id``, tried for each of the clip's ids);
2. in ``audio_dir/<split>/`` (``train``, ``val``, ``test``) first, then in ``audio_dir/`` itself;
3. a file named ``<pattern>.<ext>``, ``ext`` one of flac, wav, mp3, ogg (that order; any case).

A clip with no file is reported as ``clip not downloaded`` with its youtube id (YouTube takedowns
make this common), never dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchorbind.errors import ConfigError, InputError
from anchorbind.pipelines.shards.convert import ConversionReport, SampleRow
from anchorbind.pipelines.shards.formats.common import (
    AUDIO_KEYS,
    audio_member,
    check_options,
    csv_records,
    safe_key,
    unique_key,
)

__all__ = ["DESCRIPTION", "NAME", "read"]

NAME = "audiocaps"
DESCRIPTION = "AudioCaps captions (train/val/test.csv) + your downloaded clips (--option audio_dir=, clip_pattern=)"

SPLITS = ("train", "val", "test")
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
OPTIONS = ("audio_dir", "clip_pattern")
DEFAULT_PATTERN = "{youtube_id}_{start_time}|{youtube_id}"
CLIP_SECONDS = 10
_FIELDS = {"youtube_id": "x", "start_time": 0, "end_time": CLIP_SECONDS, "audiocap_id": 0}


@dataclass
class _Clip:
    youtube_id: str
    start_time: int
    line: int
    captions: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)


def _patterns(value: str) -> list[str]:
    """The ``clip_pattern`` option's patterns, checked by formatting them once.

    Raises:
        ConfigError: an empty pattern, an unknown field, a bad format, a folder or an extension in it.
    """
    patterns = [p.strip() for p in value.split("|")]
    for pattern in patterns:
        where = f"--option clip_pattern={value!r}"
        if not pattern:
            raise ConfigError(f"{where}: an empty pattern (separate patterns with a single |)")
        try:
            name = pattern.format(**_FIELDS)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"{where}: cannot format {pattern!r} ({type(err).__name__}: {err}); "
                              f"fields: {', '.join('{' + f + '}' for f in _FIELDS)}") from None
        if "/" in name or "\\" in name:
            raise ConfigError(f"{where}: a pattern names a file, not a folder (clips are looked for in "
                              "audio_dir/<split>/ and audio_dir/)")
        if audio_member(Path(name)) is not None:
            raise ConfigError(f"{where}: give the pattern without the extension (flac, wav, mp3 and ogg are tried)")
    return patterns


def _integer(value: str, column: str) -> int:
    """An integer cell (``30`` or ``30.0``); ValueError otherwise."""
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise ValueError(f"{column} {value!r} is not an integer")
    return int(number)


def _index(folder: Path) -> dict[str, Path]:
    """``{name without extension: file}`` of the audio files directly in ``folder`` (hidden ones
    ignored); of several extensions for one name, the first in flac, wav, mp3, ogg."""
    found: dict[str, tuple[int, Path]] = {}
    if not folder.is_dir():
        return {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            member = audio_member(path)
            if member is None or not entry.is_file():
                continue
            rank = AUDIO_KEYS.index(member)
            if path.stem not in found or rank < found[path.stem][0]:
                found[path.stem] = (rank, path)
    return {stem: path for stem, (_, path) in found.items()}


def _csv_path(root: Path, split: str) -> Path | None:
    return next((p for p in (root / f"{split}.csv", root / "dataset" / f"{split}.csv") if p.is_file()), None)


def _clips(csv_path: Path, report: ConversionReport) -> list[_Clip]:
    """The CSV's clips, rows of one ``(youtube_id, start_time)`` grouped, in order of first appearance."""
    clips: dict[tuple[str, int], _Clip] = {}
    ids: dict[int, int] = {}
    for line, record in csv_records(csv_path, COLUMNS, f"an AudioCaps CSV ({', '.join(COLUMNS)})"):
        origin = f"{csv_path}:{line}"
        if isinstance(record, InputError):
            report.skip(origin, None, None, record.reason, sample=True, row=line)
            continue
        youtube_id, caption = record["youtube_id"].strip(), record["caption"].strip()
        try:
            if not youtube_id:
                raise ValueError("empty youtube_id")
            start = _integer(record["start_time"], "start_time")
            audiocap_id = _integer(record["audiocap_id"], "audiocap_id")
            if not caption:
                raise ValueError("empty caption")
        except ValueError as err:
            report.skip(origin, youtube_id or None, None, f"malformed row: {err}", sample=True, row=line)
            continue
        if audiocap_id in ids:
            report.skip(origin, youtube_id, "text", f"duplicate audiocap_id {audiocap_id} (row at line "
                                                    f"{ids[audiocap_id]} has it)", sample=True, row=line)
            continue
        ids[audiocap_id] = line
        clip = clips.setdefault((youtube_id, start), _Clip(youtube_id, start, line))
        clip.captions.append(caption)
        clip.ids.append(audiocap_id)
    return list(clips.values())


def _names(clip: _Clip, patterns: Sequence[str]) -> list[str]:
    names: list[str] = []
    for pattern in patterns:
        for audiocap_id in clip.ids if "{audiocap_id" in pattern else clip.ids[:1]:
            name = pattern.format(youtube_id=clip.youtube_id, start_time=clip.start_time,
                                  end_time=clip.start_time + CLIP_SECONDS, audiocap_id=audiocap_id)
            if name not in names:
                names.append(name)
    return names


def _split(csv_path: Path, split: str, audio_dir: Path, patterns: Sequence[str],
           report: ConversionReport) -> list[SampleRow]:
    folders = [f for f in (audio_dir / split, audio_dir) if f.is_dir()]
    indexes = [_index(f) for f in folders]
    rows: list[SampleRow] = []
    taken: set[str] = set()
    for clip in _clips(csv_path, report):
        origin = f"{csv_path}:{clip.line}"
        key = safe_key(f"{clip.youtube_id}_{clip.start_time}")
        names = _names(clip, patterns)
        path = next((index[n] for n in names for index in indexes if n in index), None)
        if path is None:
            looked = ", ".join(f"{n}.*" for n in names)
            where = " and ".join(str(f) for f in folders)
            report.skip(origin, key, "audio", f"clip not downloaded (youtube_id {clip.youtube_id}, start_time "
                        f"{clip.start_time}: looked for {looked} ({', '.join(AUDIO_KEYS)}) in {where})",
                        sample=True, row=clip.line)
            continue
        key = unique_key(key, taken)
        meta: dict[str, Any] = {
            "captions": clip.captions,
            "dataset": {"name": NAME, "split": split,
                        "protocol": {"task": "caption_retrieval", "modality": "audio", "captions": "captions"}},
            "source": {"youtube_id": clip.youtube_id, "start_time": clip.start_time, "audiocap_ids": clip.ids},
        }
        members = {"audio": (str(path), audio_member(path) or "", None),
                   "text": (f"{origin}:text", "txt", clip.captions[0])}
        rows.append(SampleRow(key, members, meta=meta, origin=origin, line=clip.line,
                              required=("audio",)))
    return rows


def read(root: Path, report: ConversionReport, options: Mapping[str, str]) -> dict[str, list[SampleRow]]:
    """AudioCaps's clips per split (those whose CSV is present); clips not downloaded go into ``report``.

    Raises:
        InputError: no CSV at all, a CSV without AudioCaps's columns, or no ``audio_dir``.
        ConfigError: an unknown ``--option`` or a bad ``clip_pattern``.
    """
    check_options(NAME, options, OPTIONS)
    patterns = _patterns(options.get("clip_pattern", DEFAULT_PATTERN))
    csvs = {split: path for split in SPLITS if (path := _csv_path(root, split)) is not None}
    if not csvs:
        names = ", ".join(f"{s}.csv" for s in SPLITS)
        raise InputError(root, f"missing: AudioCaps's CSVs (none of {names} is in this folder or in its dataset/)")
    given = options.get("audio_dir", "audio")
    audio_dir = Path(given).expanduser()
    audio_dir = audio_dir if audio_dir.is_absolute() else root / audio_dir
    if not audio_dir.is_dir():
        raise InputError(audio_dir, "missing: the folder of the downloaded AudioCaps clips "
                                    "(default ROOT/audio; --option audio_dir=PATH)")
    return {split: _split(path, split, audio_dir, patterns, report) for split, path in csvs.items()}
