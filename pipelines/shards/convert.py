"""Converting a user's data (a folder, or a CSV/JSONL manifest) into WebDataset shards.

Folder layout: files are grouped into samples by their *stem* (the name up to the first dot);
the rest of the name says what the file is, matched against every modality's ``sample_keys``
(longest match first), e.g. ``0001.jpg`` (image), ``0001.txt`` (text), ``0001.flac`` (audio),
``0001.depth.png`` / ``0001.depth.npy`` (depth).

Manifest layout: a CSV or JSONL file with columns ``image``, ``text``, ``audio``, ``depth`` (any
subset per row; any registered modality name works as a column). Paths are relative to the
manifest; the ``text`` column may hold the text itself. An optional ``key`` column names samples.

Every file is decoded by its modality's own ``load`` before it is written, so bad files never
reach training: unreadable, truncated, empty, unknown-format or missing files are skipped,
counted and listed with the reason in ``OUT/report.json``. A sample keeps its valid modalities;
one left with none is skipped.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bind.errors import InputError
from pipelines.shards.writer import shard_name, write_manifest, write_shard

__all__ = ["ConversionReport", "convert_to_shards", "load_processors"]


@dataclass
class ConversionReport:
    """Counts and reasons; also written to ``report.json``."""

    samples_written: int = 0
    samples_skipped: int = 0
    files_skipped: int = 0
    modalities: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"wrote {self.samples_written} samples in {len(self.shards)} shards "
                f"({', '.join(f'{k}: {v}' for k, v in sorted(self.modalities.items()))}); "
                f"skipped {self.files_skipped} files and {self.samples_skipped} samples — reasons in report.json")


def load_processors(modalities: list[str] | None = None) -> dict[str, Any]:
    """The anchor (for ``image``) and every plugin, used here only to read and check files."""
    from bind.anchor import AnchorConfig, FrozenAnchor
    from bind.registry import create_plugin, list_modalities

    names = modalities or list_modalities()
    processors: dict[str, Any] = {"image": FrozenAnchor(AnchorConfig(weights="none"))}
    for name in names:
        if name != "image":
            processors[name] = create_plugin(name, embed_dim=8)
    return processors


def _classify(name: str, processors: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(modality, member key)`` for a file name, by the longest matching extension."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        suffix = ".".join(parts[i:]).lower()
        for modality, processor in processors.items():
            if suffix in processor.sample_keys:
                return modality, suffix
    return None


def _folder_rows(root: Path, processors: Mapping[str, Any], report: ConversionReport) -> Iterator[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stem = str(path.relative_to(root)).split(".")[0]
        found = _classify(path.name, processors)
        if found is None:
            report.skipped.append({"source": str(path), "modality": "", "reason": "unknown format"})
            report.files_skipped += 1
            continue
        modality, member = found
        groups.setdefault(stem, {"key": stem.replace("/", "_").replace(".", "_")})[modality] = (path, member)
    yield from groups.values()


def _manifest_rows(manifest: Path, processors: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    if manifest.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    else:
        with manifest.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    for number, row in enumerate(rows):
        sample: dict[str, Any] = {"key": str(row.get("key") or f"{number:09d}")}
        for modality, value in row.items():
            if modality == "key" or value in (None, ""):
                continue
            if modality not in processors:
                sample.setdefault("unknown", []).append(modality)
                continue
            path = (manifest.parent / str(value))
            if modality == "text" and not path.is_file():
                sample[modality] = (str(value), processors["text"].sample_keys[0])  # the text itself
            else:
                member = _classify(path.name, {modality: processors[modality]})
                sample[modality] = (path, member[1] if member else processors[modality].sample_keys[0])
        yield sample


def _validated(row: dict[str, Any], processors: Mapping[str, Any], report: ConversionReport) -> dict[str, Any] | None:
    sample: dict[str, Any] = {"__key__": row["key"]}
    for column in row.get("unknown", []):
        report.skipped.append({"source": f"row {row['key']}", "modality": column, "reason": "unknown modality column"})
        report.files_skipped += 1
    for modality, processor in processors.items():
        if modality not in row:
            continue
        source, member = row[modality]
        try:
            if isinstance(source, Path):
                if not source.is_file():
                    raise InputError(source, "missing file", modality)
                data: bytes | str = source.read_bytes()
                processor.load(data)
            else:
                data = source
                processor.load(data)
        except InputError as err:
            report.skipped.append({"source": str(source), "modality": modality, "reason": err.reason})
            report.files_skipped += 1
            continue
        sample[member] = data
    if len(sample) == 1:
        report.samples_skipped += 1
        return None
    return sample


def convert_to_shards(
    source: str | Path,
    out_dir: str | Path,
    *,
    shard_size: int = 1000,
    prefix: str = "data",
    processors: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ConversionReport:
    """Convert a folder or a CSV/JSONL manifest into validated shards plus ``report.json``."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or manifest")
    processors = processors if processors is not None else load_processors()
    report = ConversionReport()
    rows = (_folder_rows(source, processors, report) if source.is_dir() else _manifest_rows(source, processors))
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    shards_meta, bucket = [], []

    def flush() -> None:
        path = out_dir / shard_name(prefix, len(shards_meta))
        shards_meta.append(write_shard(path, bucket))
        report.shards.append(path.name)
        bucket.clear()

    for row in tqdm(list(rows), desc="shards", unit="sample", disable=not progress):
        sample = _validated(row, processors, report)
        if sample is None:
            continue
        counts.update(m for m in processors if m in row and row[m][1] in sample)
        bucket.append(sample)
        report.samples_written += 1
        if len(bucket) == shard_size:
            flush()
    if bucket:
        flush()
    report.modalities = dict(counts)
    if shards_meta:
        write_manifest(out_dir, shards_meta, created_by="anchorbind shards", source=str(source))
    tmp = out_dir / ".report.json.writing"
    tmp.write_text(json.dumps(asdict(report), indent=2))
    os.replace(tmp, out_dir / "report.json")
    return report
