"""Converting a user's data (a folder, or a CSV/JSONL manifest) into validated WebDataset shards.

**Folder.** Files (searched recursively, hidden ones ignored) are grouped into samples by *stem*:
the path relative to the folder up to the first dot of the file name (``a/0001.jpg`` -> key
``a_0001``). The rest of the name picks the modality, using each modality's ``sample_keys``
(the anchor's for ``image``, each registered plugin's for the others), first rule that applies:

1. ``<stem>_<modality>.<ext>``: when the extension alone would mean another modality, a
   ``_<modality>`` suffix naming a registered modality that reads ``<ext>`` reassigns the file,
   e.g. ``0001_depth.png`` is the 16-bit depth PNG of sample ``0001`` next to ``0001.png``;
2. the longest dotted suffix equal to a sample key: ``0001.depth.png`` / ``0001.depth.npy``
   (depth), ``0001.png`` / ``.jpg`` / ``.jpeg`` / ``.webp`` (image), ``0001.txt`` (text),
   ``0001.flac`` / ``.wav`` / ``.mp3`` / ``.ogg`` (audio);
3. the extension alone, when exactly one modality has a key ending in it: ``0001.npy`` (depth).

Anything else is skipped as ``unknown format``; two files of one modality for one stem keep the
first (in ``sample_keys`` order) and skip the other as a duplicate.

**Manifest.** A ``.csv`` or ``.jsonl`` file whose columns named after a modality (``image``,
``text``, ``audio``, ``depth``, or any registered plugin) hold file paths, relative to the
manifest's folder (absolute paths work too); any subset per row, empty cells allowed. The
``text`` column may hold the text itself (a value that is not an existing file and does not look
like a ``.txt`` path). An optional ``key`` column names samples (default: the row number,
``000000000``...). Every other column is kept as metadata in the sample's ``json`` member.

**Validation.** Every file is decoded by its modality's processor (``load``; the anchor's
ImageProcessor for images; no model is built) before it is written, so bad files never reach
training. Unreadable, truncated, empty, unknown-format or missing files are skipped; a sample
keeps its valid modalities, and one left with none is skipped. Everything skipped is counted and
listed with the reason in ``OUT/report.json`` (written atomically, like every shard and ``manifest.json``).

Samples are validated in ``workers`` processes and written in input order, so the shards are
identical whatever the number of workers.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from anchorbind.errors import InputError
from anchorbind.pipelines.shards.writer import ShardSink, finish_entry, write_manifest

if TYPE_CHECKING:
    from anchorbind.processor import Processor

__all__ = ["ConversionReport", "classify_file", "convert_to_shards", "load_processors"]

REPORT = "report.json"
ANCHOR = "image"


@dataclass
class ConversionReport:
    """Counts and reasons of one conversion; also written to ``OUT/report.json``.

    Attributes:
        samples_written: samples written to shards.
        samples_skipped: samples left with no valid modality (not written).
        files_skipped: files (or cells) skipped: missing, unreadable, invalid, unknown format.
        modalities: samples written per modality.
        shards: shard file names.
        skipped: one ``{"source", "key", "modality", "reason"}`` per skipped file or sample.
    """

    samples_written: int = 0
    samples_skipped: int = 0
    files_skipped: int = 0
    modalities: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    out_dir: str = ""

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.modalities.items())) or "no modality"
        return (f"wrote {self.samples_written} samples in {len(self.shards)} shards ({counts}); "
                f"skipped {self.files_skipped} files and {self.samples_skipped} samples"
                f" — reasons in {Path(self.out_dir) / REPORT}")

    def skip(self, source: Any, key: str | None, modality: str | None, reason: str, *, sample: bool = False) -> None:
        self.skipped.append({"source": str(source), "key": key or "", "modality": modality or "", "reason": reason})
        if sample:
            self.samples_skipped += 1
        else:
            self.files_skipped += 1


def load_processors(modalities: Sequence[str] | None = None) -> dict[str, Processor]:
    """The processors of the anchor (``image``) and of the plugins (default configs), to read and check files.

    Only processors are built, never a model: no anchor network, trunk or text backbone. So a
    conversion starts in moments, and each validation worker process builds (or unpickles) a
    few kilobytes instead of every model.
    """
    from anchorbind.registry import create_processor, list_modalities

    names = list(modalities) if modalities is not None else [ANCHOR, *list_modalities()]
    return {name: create_processor(name) for name in names}


# ---------------------------------------------------------------------------------------- naming
def _keys_of(processors: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    return {name: tuple(k.lower() for k in proc.sample_keys) for name, proc in processors.items()}


def _key_for_extension(keys: tuple[str, ...], extension: str) -> str | None:
    """The modality's sample key for a file extension: equal to it, or ending in ``.<ext>``."""
    return next((k for k in keys if k == extension), None) or next(
        (k for k in keys if k.endswith("." + extension)), None)


def classify_file(name: str, keys: Mapping[str, tuple[str, ...]]) -> tuple[str, str, str] | str:
    """``(stem, modality, member key)`` for a file name, or the reason it has none.

    Args:
        name: the file name (no directory).
        keys: ``{modality: sample_keys}`` (lower case).
    """
    parts = name.split(".")
    if len(parts) < 2 or not parts[0]:
        return "unknown format (no extension)"
    stem, extension = parts[0], parts[-1].lower()
    default = None
    for i in range(1, len(parts)):  # rule 2: the longest dotted suffix that is a sample key
        suffix = ".".join(parts[i:]).lower()
        default = next(((m, suffix) for m, ks in keys.items() if suffix in ks), None)
        if default:
            break
    if "_" in stem:  # rule 1: <stem>_<modality>.<ext> overriding what the extension says
        base, _, tag = stem.rpartition("_")
        if base and tag in keys and (default is None or default[0] != tag):
            member = _key_for_extension(keys[tag], extension)
            if member is not None:
                return base, tag, member
    if default:
        return stem, default[0], default[1]
    matches = [(m, k) for m, ks in keys.items() for k in ks if k.endswith("." + extension)]  # rule 3
    if len({m for m, _ in matches}) == 1:
        return stem, matches[0][0], matches[0][1]
    if matches:
        return f"ambiguous format (.{extension} could be {sorted({m for m, _ in matches})})"
    return f"unknown format (.{extension})"


# ---------------------------------------------------------------------------------------- rows
@dataclass
class _Row:
    """One sample to validate: ``members[modality] = (source, member key, inline text or None)``."""

    key: str
    members: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    meta: dict[str, Any] | None = None


def _folder_rows(root: Path, keys: Mapping[str, tuple[str, ...]], exclude: Path | None,
                 report: ConversionReport) -> list[_Row]:
    rows: dict[str, _Row] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if exclude is not None and (path == exclude or exclude in path.parents):
            continue
        found = classify_file(path.name, keys)
        if isinstance(found, str):
            report.skip(path, None, None, found)
            continue
        stem, modality, member = found
        key = "_".join([*relative.parts[:-1], stem]).replace(".", "_")
        row = rows.setdefault(key, _Row(key))
        previous = row.members.get(modality)
        if previous is not None:
            keep_new = keys[modality].index(member) < keys[modality].index(previous[1])
            dropped = previous[0] if keep_new else str(path)
            report.skip(dropped, key, modality, f"duplicate {modality} file for sample {key!r}")
            if not keep_new:
                continue
        row.members[modality] = (str(path), member, None)
    return list(rows.values())


def _read_manifest(manifest: Path) -> list[dict[str, Any]]:
    if manifest.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as err:
                    raise InputError(manifest, f"line {number} is not JSON ({err})") from None
        return rows
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    raise InputError(manifest, "a manifest must be a .csv or .jsonl file")


def _looks_like_text_path(value: str) -> bool:
    return value.lower().endswith(".txt") and not any(c.isspace() for c in value)


def _manifest_rows(manifest: Path, keys: Mapping[str, tuple[str, ...]], report: ConversionReport) -> list[_Row]:
    rows = []
    seen: set[str] = set()
    for number, record in enumerate(_read_manifest(manifest)):
        if not isinstance(record, Mapping):
            report.skip(f"{manifest}:{number + 1}", None, None, "row is not an object", sample=True)
            continue
        key = str(record.get("key") or f"{number:09d}").replace("/", "_").replace(".", "_")
        if key in seen:
            report.skip(f"{manifest}:{number + 1}", key, None, f"duplicate key {key!r}", sample=True)
            continue
        seen.add(key)
        row = _Row(key, meta={})
        for column, value in record.items():
            if column == "key":
                continue
            if column not in keys:
                row.meta[column] = value
                continue
            if value is None or value == "":
                continue
            value = str(value)
            path = Path(value) if Path(value).is_absolute() else manifest.parent / value
            if column == "text" and not path.is_file() and not _looks_like_text_path(value):
                row.members[column] = (f"{manifest}:{number + 1}:text", keys[column][0], value)
                continue
            member = _key_for_extension(keys[column], path.suffix.lstrip(".").lower())
            if member is None:
                report.skip(path, key, column, f"unknown format for {column} (.{path.suffix.lstrip('.')})")
                continue
            row.members[column] = (str(path), member, None)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------- validation
_WORKER_PROCESSORS: Mapping[str, Any] = {}


def _init_worker(processors: Mapping[str, Any]) -> None:
    import torch

    torch.set_num_threads(1)
    global _WORKER_PROCESSORS
    _WORKER_PROCESSORS = processors


def _validate(row: _Row, processors: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Decode every member of ``row``; returns the sample to write and the problems found."""
    processors = processors if processors is not None else _WORKER_PROCESSORS
    sample: dict[str, Any] = {"__key__": row.key}
    problems: list[dict[str, str]] = []
    for modality, (source, member, inline) in row.members.items():
        try:
            if inline is not None:
                data: bytes | str = inline
            else:
                try:
                    data = Path(source).read_bytes()
                except FileNotFoundError:
                    raise InputError(source, "missing file", modality) from None
                except OSError as err:
                    raise InputError(source, f"unreadable file ({err.strerror or err})", modality) from None
            processors[modality].load(data)
        except Exception as err:  # a plugin bug on one file must not stop a long conversion
            reason = err.reason if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
            problems.append({"source": source, "key": row.key, "modality": modality, "reason": reason})
            continue
        sample[member] = data
    if row.meta:
        sample["json"] = row.meta
    return sample, problems


def _validated(rows: list[_Row], processors: Mapping[str, Any] | None, names: Sequence[str],
               workers: int) -> Iterator[tuple[_Row, dict[str, Any], list[dict[str, str]]]]:
    # built once here and pickled to the workers: processors hold no model, a few KB each
    local = processors if processors is not None else load_processors(names)
    if workers <= 1:
        for row in rows:
            yield row, *_validate(row, local)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(local,)) as pool:
        chunk = max(1, min(64, len(rows) // (4 * workers)))
        for row, (sample, problems) in zip(rows, pool.map(_validate, rows, chunksize=chunk), strict=True):
            yield row, sample, problems


# ---------------------------------------------------------------------------------------- conversion
def _write_report(out_dir: Path, report: ConversionReport) -> None:
    tmp = out_dir / f".{REPORT}.writing-{os.getpid()}"
    tmp.write_text(json.dumps(asdict(report), indent=2))
    os.replace(tmp, out_dir / REPORT)


def convert_to_shards(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    shard_size: int = 1000,
    workers: int = 1,
    prefix: str = "data",
    processors: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert a folder or a CSV/JSONL manifest into validated shards, a manifest and a report.

    Args:
        source: a folder, or a ``.csv`` / ``.jsonl`` manifest (layouts in the module docstring).
        out_dir: destination of ``{prefix}-XXXXXX.tar``, ``manifest.json`` and ``report.json``.
        shard_size: samples per shard.
        workers: processes decoding files to validate them (output identical for any number).
        prefix: shard name prefix.
        processors: ``{modality: object with sample_keys and load}`` (a
            :class:`~anchorbind.processor.Processor`) to validate with; default
            :func:`load_processors` (the anchor's and every registered plugin's processor).
        overwrite: replace shards already in ``out_dir`` (they are removed only once the new ones
            are complete); without it, a folder that already has shards is refused.
        progress: show a tqdm bar.

    Returns:
        The :class:`ConversionReport` (also in ``out_dir/report.json``).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        FileExistsError: ``out_dir`` already holds shards and ``overwrite`` is False.
        InputError: the manifest itself cannot be read.
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or manifest")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(out_dir.glob(f"{prefix}-*.tar"))
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {len(existing)} {prefix}-*.tar shards; "
                              "pass overwrite=True (--overwrite) to replace them")
    if processors is not None:
        keys = _keys_of(processors)
    else:
        from anchorbind.evaluation.shard_check import member_readers

        # sample keys from the classes: nothing is built in this process
        keys = {m: tuple(k.lower() for k in ks) for m, ks in member_readers().items()}
    report = ConversionReport(out_dir=str(out_dir))
    if source.is_dir():
        rows = _folder_rows(source, keys, out_dir.resolve() if out_dir.resolve() != source.resolve() else None, report)
    else:
        rows = _manifest_rows(source, keys, report)
    names = sorted({m for row in rows for m in row.members})  # only build the processors needed

    staging = out_dir / f".converting-{os.getpid()}"
    staging.mkdir()
    counts: dict[str, int] = {}
    try:
        with ShardSink(staging, prefix, shard_size) as sink:
            bar = tqdm(total=len(rows), desc="shards", unit="sample", disable=not progress)
            for row, sample, problems in _validated(rows, processors, names, workers):
                bar.update(1)
                for problem in problems:
                    report.skip(problem["source"], problem["key"], problem["modality"], problem["reason"])
                present = [m for m, (_, member, _) in row.members.items() if member in sample]
                if not present:
                    reason = ("no valid file" if row.members else "no file of a known modality")
                    report.skip(row.key, row.key, None, reason, sample=True)
                    continue
                sink.write(sample)
                report.samples_written += 1
                for modality in present:
                    counts[modality] = counts.get(modality, 0) + 1
            bar.close()
        entries = [finish_entry(e) for e in sink.entries]
        for old in existing:
            old.unlink()
        for entry in entries:
            os.replace(staging / entry["name"], out_dir / entry["name"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.modalities = dict(sorted(counts.items()))
    report.shards = [e["name"] for e in entries]
    if entries:
        write_manifest(out_dir, entries, created_by="anchorbind shards", source=str(source))
    else:
        (out_dir / "manifest.json").unlink(missing_ok=True)
    _write_report(out_dir, report)
    return report

