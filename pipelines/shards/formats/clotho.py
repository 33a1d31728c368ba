"""Clotho v2.1 (Drossos et al., 2020; Zenodo) in its distributed layout.

``ROOT/clotho_captions_{development,validation,evaluation}.csv`` (``file_name,caption_1,...,caption_5``)
and each split's clips in ``ROOT/<split>/<file_name>`` (the folders ``clotho_audio_<split>.7z``
extracts to). Every split whose CSV is present is read; each clip is one sample with its
captions (``json.captions``; the ``txt`` member holds the first).
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

NAME = "clotho"
DESCRIPTION = "Clotho v2.1 audio captioning: clotho_captions_<split>.csv + <split>/*.wav, splits development, " \
              "validation, evaluation"

SPLITS = ("development", "validation", "evaluation")
CAPTIONS = tuple(f"caption_{i}" for i in range(1, 6))


def _csv_name(split: str) -> str:
    return f"clotho_captions_{split}.csv"


def _split(root: Path, split: str, report: ConversionReport) -> list[SampleRow]:
    csv_path = root / _csv_name(split)
    records = csv_records(csv_path, ("file_name", CAPTIONS[0]), f"Clotho's {split} captions CSV")
    audio = root / split
    if not audio.is_dir():
        raise InputError(audio, f"missing: the audio folder of Clotho's {split} split, next to {csv_path.name} "
                                f"(clotho_audio_{split}.7z extracts to it)")
    rows: list[SampleRow] = []
    seen: dict[str, int] = {}
    taken: set[str] = set()
    for line, record in records:
        origin = f"{csv_path}:{line}"
        if isinstance(record, InputError):
            report.skip(origin, None, None, record.reason, sample=True, row=line)
            continue
        file_name = record["file_name"]
        if not file_name.strip():
            report.skip(origin, None, None, "malformed row: empty file_name", sample=True, row=line)
            continue
        if not plain_name(file_name):
            report.skip(origin, None, None, f"malformed row: file_name {file_name!r} is not a plain file name",
                        sample=True, row=line)
            continue
        path = audio / file_name
        key = safe_key(path.stem)
        captions = [text for text in (record.get(c, "").strip() for c in CAPTIONS) if text]
        if not captions:
            report.skip(origin, key, "text", "malformed row: no caption", sample=True, row=line)
            continue
        if file_name in seen:
            report.skip(origin, key, None, f"duplicate file_name {file_name!r} (row at line {seen[file_name]} has it)",
                        sample=True, row=line)
            continue
        seen[file_name] = line
        member = listed_clip(path, key, line, report)
        if member is None:
            continue
        key = unique_key(key, taken)
        meta: dict[str, Any] = {
            "captions": captions,
            "dataset": {"name": NAME, "split": split,
                        "protocol": {"task": "caption_retrieval", "modality": "audio", "captions": "captions"}},
            "source": {"file_name": file_name},
        }
        members = {"audio": (str(path), member, None), "text": (f"{origin}:text", "txt", captions[0])}
        rows.append(SampleRow(key, members, meta=meta, origin=origin, line=line, required=("audio",)))
    return rows


def read(root: Path, report: ConversionReport, options: Mapping[str, str]) -> dict[str, list[SampleRow]]:
    """Clotho's clips per split (the splits whose captions CSV is in ``root``).

    Raises:
        InputError: no captions CSV at all, a present CSV lacks ``file_name`` / ``caption_1``, or the
            audio folder of a present split is missing.
        ConfigError: an ``--option`` (Clotho takes none).
    """
    check_options(NAME, options)
    present = [s for s in SPLITS if (root / _csv_name(s)).is_file()]
    if not present:
        names = ", ".join(_csv_name(s) for s in SPLITS)
        raise InputError(root, f"missing: Clotho's captions CSVs (none of {names} is in this folder)")
    return {split: _split(root, split, report) for split in present}
