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
first (in ``sample_keys`` order) and skip the other as a duplicate. Only the name is looked at
(nothing is read to classify a file). Two files whose paths give one key from different folders
or stems (``a/b_0001.jpg`` and ``a_b/0001.txt`` are both ``a_b_0001``) are not merged: the second
is skipped and reported.

**Labels from folders** (``--label-from-folder``; off by default, never guessed): the ImageFolder
convention. The first folder below the source is the sample's class, stored as the attribute
``category`` (or the name given with ``--label-column``): ``photos/dog/0001.jpg`` is sample
``dog_0001`` with ``{"attributes": {"category": "dog"}, "label_attribute": "category"}``, also when
it lies deeper (``photos/dog/park/0001.jpg``: still ``dog``). A file directly in the source
folder has no class and is skipped with that reason. Without the flag, a folder whose samples all
lie exactly one folder deep, in two or more folders, gets a note saying the flag would use them.

**Manifest.** A ``.csv`` or ``.jsonl`` file whose columns named after a modality (``image``,
``text``, ``audio``, ``depth``, or any registered plugin) hold file paths, relative to the
manifest's folder (absolute paths work too); any subset per row, empty cells allowed. Text:

- ``text_file``: always a path to a UTF-8 text file;
- ``text``: a path when the value is one line ending in a text extension (``.txt``, ``.text``,
  ``.caption``) that has no whitespace or names an existing file; any other value (a caption of
  any length, with spaces, on several lines) is the text itself.

An optional ``key`` column names samples (default: the row number, ``000000000``...); a key with
a NUL, a control character or a path separator (``/``, ``\\``) is refused, a dot becomes ``_``
(the original is kept as ``key`` in the sample's ``json``). Every other column is an
attribute: it goes into ``json["attributes"]`` (an empty cell is left out), which is what
``anchorbind eval`` reads. ``--label-column NAME`` picks the attribute that is the category: it is
recorded as ``json["label_attribute"]`` (evaluation's default label), and a row with no value in
it is skipped and reported. Columns named after the other keys of the sample JSON schema
(``observability``, ``carried_by``, ``caption_states``, ``dataset``: objects; ``captions``: a list
of strings; ``attributes``: an object merged with the columns) are kept at the top level as they
are, a CSV cell holding them as JSON. A row that cannot be used (not JSON, not UTF-8, a bad
or duplicate key, more cells than the header, any error while reading it) is skipped and
reported with its line number; the other rows are converted.

**Test split** (``--test-fraction F``, :func:`convert_to_splits`): ``OUT/train`` and ``OUT/test``,
decided before validation from the rows alone. Within each label value (all rows when there is
no label) rows are ranked by the SHA-256 of their sample key; ordering every row by its rank's
quantile within its label, then by that hash, the first ``round(F * N)`` rows (at least one and
at most ``N - 1`` when ``N >= 2``) are the test split. So each label is split in the same
proportion as far as its size allows, and the split depends only on the keys and labels: the
same data gives the same split, whatever ``workers``.

**Validation.** Every file is decoded by its modality's processor (``load``; the anchor's
ImageProcessor for images; no model is built) before it is written, so bad files never reach
training. Unreadable, truncated, empty, unknown-format or missing files are skipped; a sample
keeps its valid modalities, and one left with none is skipped. Everything skipped is counted and
listed with the reason in ``OUT/report.json`` (written atomically, like every shard and ``manifest.json``).

**Limits.** A file larger than ``max_file_bytes`` (``--max-file-mb``, default 512) or that is not a
regular file is skipped unread; a CSV cell holds at most 131072 characters (Python's ``csv``
limit: a longer row is reported). Samples are validated in ``workers`` processes, at most
``2 * workers`` chunks of up to 16 samples in flight, and written in input order, so the shards
are identical whatever the number of workers and memory stays bounded.

**Output folder.** One that already holds a dataset (``*.tar`` shards or a ``manifest.json``)
is refused unless ``overwrite``; then the previous dataset's shards (those its manifest lists, and
``PREFIX-*.tar``) are replaced once the new shards are complete, and other ``.tar`` files are
refused rather than mixed in. Temporaries of a killed run are removed first.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import stat
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from anchorbind.data.tempfiles import remove_stale
from anchorbind.errors import InputError
from anchorbind.pipelines.shards.writer import MANIFEST, PlanMismatchError, ShardSink, finish_entry, write_manifest

if TYPE_CHECKING:
    from anchorbind.processor import Processor

__all__ = ["ConversionReport", "SampleRow", "classify_file", "convert_to_shards", "convert_to_splits",
           "load_processors", "member_keys", "split_rows", "write_rows"]

REPORT = "report.json"
ANCHOR = "image"
TEXT = "text"
TEXT_FILE = "text_file"
"""Manifest column that always holds a path to a text file (``text`` may hold the text itself)."""
MAX_FILE_BYTES = 512 * 2**20
"""Default size limit of one file: a larger one is skipped unread (``--max-file-mb``)."""
_CHUNK = 16
_SHOWN_LABELS = 8
DEFAULT_LABEL = "category"
"""The attribute a folder's class names are stored under (evaluation's default label too)."""
LABEL_KEY = "label_attribute"
"""The sample JSON's key naming the attribute that is the category."""
SCHEMA_OBJECTS = ("observability", "carried_by", "caption_states", "dataset")
"""Manifest columns kept at the top level of the sample's JSON (objects; docs/data.md)."""
SCHEMA_LISTS = ("captions",)
SPLITS = ("train", "test")


@dataclass
class ConversionReport:
    """Counts and reasons of one conversion; also written to ``OUT/report.json``.

    Attributes:
        samples_written: samples written to shards.
        samples_skipped: samples left with no valid modality (not written).
        files_skipped: files (or cells) skipped: missing, unreadable, invalid, unknown format.
        modalities: samples written per modality.
        shards: shard file names.
        skipped: one ``{"source", "key", "modality", "reason"}`` per skipped file or sample (plus
            ``"row"``, the line in the manifest where the row starts, for a manifest's rows).
        label_attribute: the attribute that is the category (``--label-from-folder`` /
            ``--label-column``), or empty.
        labels: samples written per value of ``label_attribute``.
        notes: what the user may want to know about the source (e.g. a layout that looks labelled).
    """

    samples_written: int = 0
    samples_skipped: int = 0
    files_skipped: int = 0
    modalities: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    out_dir: str = ""
    label_attribute: str = ""
    labels: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.modalities.items())) or "no modality"
        labelled = ""
        if self.label_attribute:
            shown = ", ".join(f"{k}: {v}" for k, v in list(self.labels.items())[:_SHOWN_LABELS])
            more = ", ..." if len(self.labels) > _SHOWN_LABELS else ""
            labelled = f"; {len(self.labels)} {self.label_attribute} labels ({shown}{more})"
        return (f"wrote {self.samples_written} samples in {len(self.shards)} shards ({counts}){labelled}; "
                f"skipped {self.files_skipped} files and {self.samples_skipped} samples"
                f" — reasons in {Path(self.out_dir) / REPORT}")

    def skip(self, source: Any, key: str | None, modality: str | None, reason: str, *, sample: bool = False,
             row: int | None = None) -> None:
        entry: dict[str, Any] = {"source": str(source), "key": key or "", "modality": modality or "", "reason": reason}
        if row is not None:
            entry["row"] = row
        self.skipped.append(entry)
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

    Only the name is used: nothing is read, whatever the file's size.

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
class SampleRow:
    """One sample to validate: ``members[modality] = (source, member key, inline text or None)``.

    ``required``: modalities without which the sample is worthless (a caption dataset's clip):
    when one of them cannot be read the whole sample is skipped, not written with the rest.
    """

    key: str
    members: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    meta: dict[str, Any] | None = None
    origin: str = ""
    line: int | None = None
    required: tuple[str, ...] = ()


def _reason(err: BaseException) -> str:
    return err.reason if isinstance(err, InputError) else f"{type(err).__name__}: {err}"


def _folder_rows(root: Path, keys: Mapping[str, tuple[str, ...]], exclude: Path | None,
                 report: ConversionReport, label: str | None = None) -> list[SampleRow]:
    """The samples of a folder; with ``label``, the first folder below ``root`` is attribute ``label``."""
    rows: dict[str, SampleRow] = {}
    claimed: dict[str, tuple[tuple[str, ...], Path]] = {}  # key -> (folders + stem, first file) that made it
    for path in sorted(root.rglob("*")):
        try:
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            if exclude is not None and (path == exclude or exclude in path.parents):
                continue
            if label is not None and len(relative.parts) < 2:
                report.skip(path, None, None, "not in a class folder (--label-from-folder): no label")
                continue
            found = classify_file(path.name, keys)
            if isinstance(found, str):
                report.skip(path, None, None, found)
                continue
            stem, modality, member = found
            origin = (*relative.parts[:-1], stem)
            key = "_".join(origin).replace(".", "_")
            first = claimed.setdefault(key, (origin, relative))
            if first[0] != origin:
                report.skip(path, key, modality, f"sample key {key!r} is already that of {str(first[1])!r} "
                            f"(another folder or stem): not merged")
                continue
            meta = None if label is None else {"attributes": {label: relative.parts[0]}, LABEL_KEY: label}
            row = rows.setdefault(key, SampleRow(key, meta=meta, origin=str(path)))
            previous = row.members.get(modality)
            if previous is not None:
                keep_new = keys[modality].index(member) < keys[modality].index(previous[1])
                dropped = previous[0] if keep_new else str(path)
                report.skip(dropped, key, modality, f"duplicate {modality} file for sample {key!r}")
                if not keep_new:
                    continue
            row.members[modality] = (str(path), member, None)
        except Exception as err:  # one odd file (permissions, encoding) must not stop the others
            report.skip(path, None, None, _reason(err))
    folders = {claimed[key][0][0] for key in rows if len(claimed[key][0]) == 2}
    if label is None and len(folders) >= 2 and all(len(claimed[key][0]) == 2 for key in rows):
        shown = ", ".join(sorted(folders)[:_SHOWN_LABELS]) + (", ..." if len(folders) > _SHOWN_LABELS else "")
        report.notes.append(f"every sample lies in one subfolder of {root} ({len(folders)} folders: {shown}); "
                            "pass --label-from-folder to use the folder names as labels (attribute "
                            f"{DEFAULT_LABEL!r})")
    return list(rows.values())


def _read_manifest(manifest: Path) -> Iterator[tuple[int, Any]]:
    """``(line where the row starts, record)`` per row; the record is an exception for a row that cannot be read.

    Raises:
        InputError: not a ``.csv`` / ``.jsonl`` file, or its CSV header is unreadable.
    """
    suffix = manifest.suffix.lower()
    if suffix == ".jsonl":
        with manifest.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    yield number, InputError(f"{manifest}:{number}", f"not UTF-8 ({err.reason} at byte {err.start})")
                    continue
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except ValueError as err:
                    yield number, InputError(f"{manifest}:{number}", f"not JSON ({err})")
        return
    if suffix != ".csv":
        raise InputError(manifest, "a manifest must be a .csv or .jsonl file")
    with manifest.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        lines = _Lines(handle)  # csv's own line_num lags after a row it could not parse
        reader = csv.DictReader(lines)
        try:
            header = reader.fieldnames or []
        except csv.Error as err:
            raise InputError(manifest, f"unreadable CSV header ({err})") from None
        if any(_not_utf8(name) for name in header):
            raise InputError(manifest, "the CSV header is not UTF-8")
        while True:
            start = lines.count + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as err:  # e.g. a field over the csv module's size limit; the reader goes on
                yield start, InputError(f"{manifest}:{start}", f"unreadable CSV row ({err})")
                continue
            if None in record:
                yield start, InputError(f"{manifest}:{start}", f"{len(header) + len(record[None])} cells, "
                                                              f"the header has {len(header)} columns")
            elif any(isinstance(v, str) and _not_utf8(v) for v in record.values()):
                yield start, InputError(f"{manifest}:{start}", "not UTF-8")
            else:
                yield start, record


class _Lines:
    """A file's lines, counted."""

    def __init__(self, handle: Iterator[str]) -> None:
        self.handle, self.count = handle, 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self.handle)
        self.count += 1
        return line


def _not_utf8(text: str) -> bool:
    """Whether a string read with ``errors="surrogateescape"`` held bytes that are not UTF-8."""
    return any("\udc80" <= c <= "\udcff" for c in text)


def _key_problem(key: str) -> str | None:
    if "\0" in key:
        return "a NUL character"
    if "/" in key or "\\" in key:
        return "a path separator"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "a control character"
    return None


def _is_file(path: Path) -> bool:
    """``path.is_file()`` that never raises (a name too long, a NUL, no permission: not a file)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _text_is_path(value: str, path: Path, text_keys: tuple[str, ...]) -> bool:
    """The ``text`` column's rule: a path when one line ending in a text extension, with no
    whitespace or naming an existing file; otherwise the text itself."""
    if "\n" in value or "\r" in value or "." not in value:
        return False
    if _key_for_extension(text_keys, value.rsplit(".", 1)[1].lower()) is None:
        return False
    return not any(c.isspace() for c in value) or _is_file(path)


def _meta_column(meta: dict[str, Any], column: str, value: Any, origin: str) -> None:
    """Put a manifest cell that names no modality into the sample's JSON: an attribute, or a schema key."""
    if value is None or value == "":
        return
    if column == LABEL_KEY and isinstance(value, str):
        meta[LABEL_KEY] = value
        return
    if column not in (*SCHEMA_OBJECTS, *SCHEMA_LISTS, "attributes"):
        meta.setdefault("attributes", {})[column] = value
        return
    if isinstance(value, str):  # a CSV cell holds JSON text; a string that is not is refused below
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if column in SCHEMA_LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(origin, f"column {column!r} must hold a list of strings (JSON text in a CSV cell)")
        meta[column] = value
    elif not isinstance(value, Mapping):
        raise InputError(origin, f"column {column!r} must hold a JSON object (JSON text in a CSV cell), "
                                 f"not a {type(value).__name__}")
    elif column == "attributes":  # the row's own columns win over the same name in the object
        attributes = meta.setdefault("attributes", {})
        for name, item in value.items():
            attributes.setdefault(str(name), item)
    else:
        meta[column] = dict(value)


def _manifest_row(manifest: Path, index: int, line: int, record: Any, keys: Mapping[str, tuple[str, ...]],
                  seen: dict[str, int], report: ConversionReport, label: str | None = None) -> SampleRow:
    """The row of one manifest record; raises (anything) when the whole row cannot be used."""
    origin = f"{manifest}:{line}"
    if isinstance(record, BaseException):
        raise record
    if not isinstance(record, Mapping):
        raise InputError(origin, "row is not an object")
    given = record.get("key")
    meta: dict[str, Any] = {}
    if given is None or given == "":
        key = f"{index:09d}"
    else:
        given = str(given)
        problem = _key_problem(given)
        if problem is not None:
            raise InputError(origin, f"key {given!r} contains {problem} (keys name tar members)")
        key = given.replace(".", "_")
        if key != given:
            meta["key"] = given  # renamed: the original travels with the sample
    if key in seen:
        raise InputError(origin, f"duplicate key {key!r} (row at line {seen[key]} has it)")
    row = SampleRow(key, meta=meta, origin=origin, line=line)
    columns = dict(record)
    both = all(columns.get(c) not in (None, "") for c in (TEXT, TEXT_FILE))
    if both and TEXT in keys and TEXT_FILE not in keys:
        raise InputError(origin, f"both {TEXT!r} and {TEXT_FILE!r} are given")
    for column, value in columns.items():
        if column == "key":
            continue
        modality = TEXT if column == TEXT_FILE and TEXT in keys and TEXT_FILE not in keys else column
        if modality not in keys:
            _meta_column(row.meta, str(column), value, origin)
            continue
        if value is None or value == "":
            continue
        if isinstance(value, (bool, list, dict)) or not isinstance(value, (str, int, float)):
            raise InputError(origin, f"column {column!r} holds a {type(value).__name__}, not a path or text")
        value = str(value)
        path = Path(value) if Path(value).is_absolute() else manifest.parent / value
        if column == TEXT and not _text_is_path(value, path, keys[TEXT]):
            row.members[TEXT] = (f"{origin}:{TEXT}", keys[TEXT][0], value)
            continue
        member = _key_for_extension(keys[modality], path.suffix.lstrip(".").lower())
        if member is None and column == TEXT_FILE:
            member = keys[TEXT][0]  # whatever its extension, read as UTF-8 text
        if member is None:
            report.skip(path, key, modality, f"unknown format for {modality} (.{path.suffix.lstrip('.')})", row=line)
            continue
        row.members[modality] = (str(path), member, None)
    if label is not None:
        if label not in row.meta.get("attributes", {}):
            raise InputError(origin, f"no label: the {label!r} column (--label-column) is empty")
        row.meta[LABEL_KEY] = label
    seen[key] = line  # only a row that is used claims its key
    return row


def _manifest_rows(manifest: Path, keys: Mapping[str, tuple[str, ...]], report: ConversionReport,
                   label: str | None = None) -> list[SampleRow]:
    rows = []
    seen: dict[str, int] = {}
    columns: set[str] = set()
    for index, (line, record) in enumerate(_read_manifest(manifest)):
        if isinstance(record, Mapping):
            columns.update(str(c) for c in record)
        try:
            rows.append(_manifest_row(manifest, index, line, record, keys, seen, report, label))
        except Exception as err:  # any error from one row: that row is reported, the others converted
            key = str(record.get("key") or "") if isinstance(record, Mapping) else ""
            report.skip(f"{manifest}:{line}", key, None, _reason(err), sample=True, row=line)
    if label is not None and not rows and columns and label not in columns:
        raise InputError(manifest, f"--label-column {label!r}: no such column (columns: {', '.join(sorted(columns))})")
    return rows


# ---------------------------------------------------------------------------------------- validation
_WORKER_PROCESSORS: Mapping[str, Any] = {}


def _init_worker(processors: Mapping[str, Any]) -> None:
    import torch

    torch.set_num_threads(1)
    global _WORKER_PROCESSORS
    _WORKER_PROCESSORS = processors


def _megabytes(size: int) -> str:
    return f"{size} bytes" if size < 2**20 else f"{size / 2**20:.1f} MiB"


def _read_file(source: str, modality: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; never reads more than that."""
    try:
        info = os.stat(source)
    except FileNotFoundError:
        raise InputError(source, "missing file", modality) from None
    except OSError as err:  # a name too long, no permission...
        raise InputError(source, f"unreadable file ({err.strerror or err})", modality) from None
    except ValueError as err:  # a NUL in the path
        raise InputError(source, f"invalid path ({err})", modality) from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block, /dev/zero never end
        raise InputError(source, "not a regular file", modality)
    if info.st_size > max_bytes:
        raise InputError(source, f"file too large ({_megabytes(info.st_size)}, limit {_megabytes(max_bytes)})",
                         modality)
    try:
        with open(source, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise InputError(source, f"unreadable file ({err.strerror or err})", modality) from None
    if len(data) > max_bytes:  # it grew since
        raise InputError(source, f"file too large (over {_megabytes(max_bytes)})", modality)
    return data


def _validate(row: SampleRow, processors: Mapping[str, Any] | None = None,
              max_bytes: int = MAX_FILE_BYTES) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Decode every member of ``row``; returns the sample to write and the problems found."""
    processors = processors if processors is not None else _WORKER_PROCESSORS
    sample: dict[str, Any] = {"__key__": row.key}
    problems: list[dict[str, str]] = []
    for modality, (source, member, inline) in row.members.items():
        try:
            if inline is not None:
                if len(inline) > max_bytes:
                    raise InputError(source, f"text too large (limit {_megabytes(max_bytes)})", modality)
                data: bytes | str = inline
            else:
                data = _read_file(source, modality, max_bytes)
            processors[modality].load(data)
        except Exception as err:  # a plugin bug on one file must not stop a long conversion
            problems.append({"source": source, "key": row.key, "modality": modality, "reason": _reason(err)})
            continue
        sample[member] = data
    if row.meta:
        sample["json"] = row.meta
    return sample, problems


def _validate_chunk(rows: list[SampleRow], max_bytes: int) -> list[tuple[dict[str, Any], list[dict[str, str]]]]:
    return [_validate(row, None, max_bytes) for row in rows]


def _validated(rows: list[SampleRow], processors: Mapping[str, Any] | None, names: Sequence[str],
               workers: int, max_bytes: int = MAX_FILE_BYTES,
               ) -> Iterator[tuple[SampleRow, dict[str, Any], list[dict[str, str]]]]:
    # built once here and pickled to the workers: processors hold no model, a few KB each
    local = processors if processors is not None else load_processors(names)
    if workers <= 1:
        for row in rows:
            yield row, *_validate(row, local, max_bytes)
        return
    context = multiprocessing.get_context("spawn")
    size = max(1, min(_CHUNK, len(rows) // (4 * workers)))
    chunks = (rows[i:i + size] for i in range(0, len(rows), size))
    task = functools.partial(_validate_chunk, max_bytes=max_bytes)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(local,)) as pool:
        pending: deque = deque()  # a bounded window, in input order: memory does not grow with the dataset
        for chunk in chunks:
            pending.append((chunk, pool.submit(task, chunk)))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                for row, (sample, problems) in zip(done, future.result(), strict=True):
                    yield row, sample, problems
        while pending:
            done, future = pending.popleft()
            for row, (sample, problems) in zip(done, future.result(), strict=True):
                yield row, sample, problems


# ---------------------------------------------------------------------------------------- conversion
def write_report(out_dir: Path, report: ConversionReport) -> None:
    tmp = out_dir / f".{REPORT}.writing-{os.getpid()}"
    tmp.write_text(json.dumps(asdict(report), indent=2))
    os.replace(tmp, out_dir / REPORT)


def _previous_dataset(out_dir: Path, prefix: str, overwrite: bool) -> list[Path]:
    """The shards of a dataset already in ``out_dir``, to replace; refuses to mix two datasets.

    Raises:
        PlanMismatchError: ``out_dir`` holds shards or a manifest and ``overwrite`` is False, or
            it holds ``.tar`` files that no manifest there lists (``overwrite`` or not).
    """
    shards = sorted(p for p in out_dir.glob("*.tar") if not p.name.startswith(".") and p.is_file())
    manifest = out_dir / MANIFEST
    if not shards and not manifest.exists():
        return []
    try:
        record = json.loads(manifest.read_text())
        record = record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        record = {}
    names = ", ".join(p.name for p in shards[:3]) + (", ..." if len(shards) > 3 else "")
    what = [f"{len(shards)} shard{'' if len(shards) == 1 else 's'} ({names})" if shards else "no shards"]
    if manifest.exists():
        made = "".join(f" {word} {record[k]}" for k, word in (("created_by", "by"), ("source", "from"))
                       if record.get(k))
        what.append(f"a {MANIFEST}{made}")
    else:
        what.append(f"no {MANIFEST}: an interrupted run?")
    if not overwrite:
        raise PlanMismatchError(f"{out_dir} already holds a dataset ({'; '.join(what)}); pass --overwrite "
                                "(overwrite=True) to replace it, or choose another --out")
    listed = {str(e.get("name")) for e in record.get("shards", []) if isinstance(e, dict)}
    ours = re.compile(rf"^{re.escape(prefix)}-\d{{6,}}\.tar$")
    strangers = [p.name for p in shards if p.name not in listed and not ours.match(p.name)]
    if strangers:
        shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
        raise PlanMismatchError(f"{out_dir} holds .tar files that are not a previous conversion's ({shown}); "
                                "--overwrite replaces only those: move them or choose another --out")
    return shards


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
    max_file_bytes: int = MAX_FILE_BYTES,
    label_from_folder: bool = False,
    label_column: str | None = None,
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
        overwrite: replace the dataset already in ``out_dir`` (its shards are removed only once
            the new ones are complete, and kept when nothing could be converted); without it, a
            folder that already holds shards or a manifest is refused.
        progress: show a tqdm bar.
        max_file_bytes: larger files are skipped unread (reported as too large).
        label_from_folder: (a folder) the first folder below ``source`` is the sample's label.
        label_column: (a manifest) the column that is the category; (a folder, with
            ``label_from_folder``) the attribute the folder names go into (default ``category``).

    Returns:
        The :class:`ConversionReport` (also in ``out_dir/report.json``).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        PlanMismatchError: (a ``FileExistsError``) ``out_dir`` already holds a dataset and
            ``overwrite`` is False, or ``.tar`` files no previous conversion made.
        InputError: the manifest itself cannot be read (a row that cannot is reported, not raised),
            or it has no ``label_column``.
        ValueError: label options that do not fit the source (see :func:`convert_to_splits`).
    """
    out_dir = Path(out_dir)
    report = ConversionReport(out_dir=str(out_dir))
    rows, label = _source_rows(source, out_dir, report, processors, label_from_folder, label_column)
    report.label_attribute = label or ""
    return write_rows(rows, out_dir, report=report, source=str(source), shard_size=shard_size, workers=workers,
                      prefix=prefix, processors=processors, overwrite=overwrite, progress=progress,
                      max_file_bytes=max_file_bytes)


def _source_rows(source: str | os.PathLike[str], out_dir: Path, report: ConversionReport,
                 processors: Mapping[str, Any] | None, label_from_folder: bool,
                 label_column: str | None) -> tuple[list[SampleRow], str | None]:
    """The rows of a folder or manifest, and the label attribute (None without one)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or manifest")
    keys = member_keys(processors)
    if label_column is not None and (not label_column or label_column in keys or label_column == "key"):
        raise ValueError(f"--label-column {label_column!r}: "
                         + ("a modality's column holds files, not labels" if label_column else "empty name"))
    if source.is_dir():
        if label_column is not None and not label_from_folder:
            raise ValueError("--label-column names a manifest's column; a folder's labels come from "
                             "--label-from-folder (--label-column then names their attribute)")
        label = (label_column or DEFAULT_LABEL) if label_from_folder else None
        exclude = out_dir.resolve() if out_dir.resolve() != source.resolve() else None
        return _folder_rows(source, keys, exclude, report, label), label
    if label_from_folder:
        raise ValueError(f"--label-from-folder: {source} is a manifest, not a folder; name its label column "
                         "with --label-column")
    return _manifest_rows(source, keys, report, label_column), label_column


def _label_value(row: SampleRow) -> str | None:
    """The row's value of its label attribute, as a string (None without a label)."""
    meta = row.meta or {}
    label = meta.get(LABEL_KEY)
    attributes = meta.get("attributes")
    if not isinstance(label, str) or not isinstance(attributes, Mapping) or label not in attributes:
        return None
    return str(attributes[label])


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big")


def split_rows(rows: Sequence[SampleRow], test_fraction: float) -> dict[str, list[SampleRow]]:
    """``{"train": rows, "test": rows}``: a deterministic split by the hash of each key, stratified by label.

    Rows are grouped by the value of their label (``meta["label_attribute"]``; one group without
    labels) and ranked within their group by the SHA-256 of their key. Ordered by
    ``(rank + 0.5) / group size``, then by that hash, the first ``round(test_fraction * N)`` rows
    (at least 1 and at most ``N - 1`` when ``N >= 2``) go to the test split. Each split keeps the
    rows' input order.

    Raises:
        ValueError: ``test_fraction`` is not strictly between 0 and 1.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    groups: dict[str | None, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(_label_value(row), []).append(index)
    order = []
    for members in groups.values():
        ranked = sorted(members, key=lambda i: (_key_hash(rows[i].key), rows[i].key))
        order += [((rank + 0.5) / len(ranked), _key_hash(rows[i].key), rows[i].key, i)
                  for rank, i in enumerate(ranked)]
    total = len(rows)
    count = math.floor(test_fraction * total + 0.5)
    if total >= 2:
        count = min(max(count, 1), total - 1)
    test = {i for *_, i in sorted(order)[:count]}
    return {"train": [r for i, r in enumerate(rows) if i not in test],
            "test": [r for i, r in enumerate(rows) if i in test]}


def convert_to_splits(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    test_fraction: float,
    shard_size: int = 1000,
    workers: int = 1,
    prefix: str = "data",
    processors: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_file_bytes: int = MAX_FILE_BYTES,
    label_from_folder: bool = False,
    label_column: str | None = None,
) -> dict[str, ConversionReport]:
    """:func:`convert_to_shards` into ``out_dir/train`` and ``out_dir/test``, split by :func:`split_rows`.

    What reading the source skipped is reported in the train split's ``report.json``. Both
    folders are checked (``overwrite``) before anything is written. Each split's
    ``manifest.json`` records the split under ``split``.

    Returns:
        ``{"train": report, "test": report}``.

    Raises:
        ValueError: ``test_fraction`` not in (0, 1); ``label_from_folder`` with a manifest;
            ``label_column`` with a folder but without ``label_from_folder``, or naming a modality.
        FileNotFoundError, PlanMismatchError, InputError: as :func:`convert_to_shards`.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    out_dir = Path(out_dir)
    read = ConversionReport(out_dir=str(out_dir / SPLITS[0]))
    rows, label = _source_rows(source, out_dir, read, processors, label_from_folder, label_column)
    for split in SPLITS:
        if (out_dir / split).is_dir():
            _previous_dataset(out_dir / split, prefix, overwrite)
    reports = {}
    for split, mine in split_rows(rows, test_fraction).items():
        report = read if split == SPLITS[0] else ConversionReport(out_dir=str(out_dir / split))
        report.label_attribute = label or ""
        record = {"name": split, "test_fraction": test_fraction, "rule": "sha256 of the sample key, "
                  + (f"stratified by {label}" if label else "no label")}
        reports[split] = write_rows(mine, out_dir / split, report=report, source=str(source), shard_size=shard_size,
                                    workers=workers, prefix=prefix, processors=processors, overwrite=overwrite,
                                    progress=progress, max_file_bytes=max_file_bytes, manifest_extra={"split": record})
    return reports


def member_keys(processors: Mapping[str, Any] | None = None) -> dict[str, tuple[str, ...]]:
    """``{modality: sample keys}`` (lower case) of ``processors``, or of the anchor and every registered plugin."""
    if processors is not None:
        return _keys_of(processors)
    from anchorbind.evaluation.shard_check import member_readers

    # sample keys from the classes: nothing is built in this process
    return {m: tuple(k.lower() for k in ks) for m, ks in member_readers().items()}


def write_rows(
    rows: Sequence[SampleRow],
    out_dir: str | os.PathLike[str],
    *,
    report: ConversionReport | None = None,
    source: str = "",
    shard_size: int = 1000,
    workers: int = 1,
    prefix: str = "data",
    processors: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_file_bytes: int = MAX_FILE_BYTES,
    created_by: str = "anchorbind shards",
    manifest_extra: Mapping[str, Any] | None = None,
) -> ConversionReport:
    """Validate ``rows`` (files decoded by their modality's processor), write shards, ``manifest.json`` and
    ``report.json`` into ``out_dir``: the second half of :func:`convert_to_shards`, for any source of rows
    (a folder, a manifest, a dataset's official layout in :mod:`anchorbind.pipelines.shards.formats`).

    Args:
        rows: the samples; each row's ``meta`` becomes its ``json`` member.
        report: a report already holding what reading the source skipped (a new one otherwise).
        source: what the rows were read from, recorded in the manifest.
        created_by: the manifest's ``created_by``.
        manifest_extra: more top-level fields of ``manifest.json`` (e.g. ``split``).
        shard_size, workers, prefix, processors, overwrite, progress, max_file_bytes: as
            :func:`convert_to_shards`.

    Raises:
        PlanMismatchError: as :func:`convert_to_shards`.
    """
    out_dir = Path(out_dir)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if max_file_bytes < 1:
        raise ValueError(f"max_file_bytes must be >= 1, got {max_file_bytes}")
    report = report or ConversionReport(out_dir=str(out_dir))
    report.out_dir = str(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = _previous_dataset(out_dir, prefix, overwrite)
    remove_stale(out_dir)  # a killed run's staging folder and temporaries (never read as shards)
    names = sorted({m for row in rows for m in row.members})  # only build the processors needed

    staging = out_dir / f".converting-{os.getpid()}"
    staging.mkdir()
    counts: dict[str, int] = {}
    try:
        with ShardSink(staging, prefix, shard_size) as sink:
            bar = tqdm(total=len(rows), desc="shards", unit="sample", disable=not progress)
            for row, sample, problems in _validated(rows, processors, names, workers, max_file_bytes):
                bar.update(1)
                for problem in problems:
                    report.skip(problem["source"], problem["key"], problem["modality"], problem["reason"],
                                row=row.line)
                present = [m for m, (_, member, _) in row.members.items() if member in sample]
                lost = [m for m in row.required if m not in present]
                if not present or lost:
                    reason = ("no valid file" if row.members else "no file of a known modality")
                    if lost and present:
                        reason = f"its {', '.join(lost)} could not be read (required)"
                    report.skip(row.origin if row.line is not None else row.key, row.key, None, reason, sample=True,
                                row=row.line)
                    continue
                try:
                    sink.write(sample)
                except (ValueError, TypeError) as err:  # raised while encoding, before anything is written
                    report.skip(row.origin, row.key, None, f"cannot be written ({_reason(err)})", sample=True,
                                row=row.line)
                    continue
                report.samples_written += 1
                for modality in present:
                    counts[modality] = counts.get(modality, 0) + 1
                value = _label_value(row)
                if value is not None:
                    report.labels[value] = report.labels.get(value, 0) + 1
            bar.close()
        entries = [finish_entry(e) for e in sink.entries]
        if entries:
            from anchorbind.data.cache import sidecar_path

            # from here until the new manifest is written the folder has none: it reads as incomplete
            (out_dir / MANIFEST).unlink(missing_ok=True)
            for old in existing:
                old.unlink(missing_ok=True)
            for name in {p.name for p in existing} | {e["name"] for e in entries}:
                sidecar_path(out_dir / name).unlink(missing_ok=True)  # an anchor cache of replaced shards
            for entry in entries:
                os.replace(staging / entry["name"], out_dir / entry["name"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.modalities = dict(sorted(counts.items()))
    report.shards = [e["name"] for e in entries]
    report.labels = dict(sorted(report.labels.items()))
    if entries:
        write_manifest(out_dir, entries, created_by=created_by, source=source, **dict(manifest_extra or {}))
    write_report(out_dir, report)
    return report
