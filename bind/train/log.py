"""Training logs: accelerate's trackers (``log.trackers``: TensorBoard by default), and a CSV anyone can plot.

The trackers are accelerate's (``Accelerator(log_with=...)``, :func:`tracker_problems` checks the
names and that each one's package is installed, before any model is built); ``csv`` names the
project's own ``train_log.csv``, which is always written (the evaluation report plots it).
Only the main process writes. The CSV is appended to on resume, so one file holds the whole
run's curve; its columns are fixed by the first row written (new keys go to the trackers only).
A loss term whose modality had no row in the logged step is an empty cell, not a 0; a plugin
left out of training (no sample in the data) has no column at all.
Resuming from step ``c`` first drops the rows (and events) after ``c`` that the interrupted run
wrote past its last checkpoint, atomically, so no step appears twice.

:class:`DecodeErrorLog` keeps the samples training could not decode (shard, key, modality,
reason): every count, by reason and by modality, and the first :data:`MAX_DECODE_ERROR_EXAMPLES`
records; the loop writes it to ``output_dir/decode_errors.json`` at each checkpoint and at the end.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator

__all__ = [
    "CSV_TRACKER", "DECODE_ERRORS_FILE", "MAX_DECODE_ERROR_EXAMPLES", "DecodeErrorLog", "TrainLogger",
    "accelerate_trackers", "known_trackers", "tracker_problems", "write_json_atomic",
]

DECODE_ERRORS_FILE = "decode_errors.json"
MAX_DECODE_ERROR_EXAMPLES = 1000
"""Decode-error records kept in full; beyond them only the counts grow."""
MAX_REASON_KINDS = 200
"""Distinct reasons counted separately; the rest are counted as ``other``."""
CSV_TRACKER = "csv"
"""The tracker name of ``train_log.csv`` (always written; listing it in ``log.trackers`` is allowed)."""
TRACKER_PACKAGES = {"comet_ml": "comet-ml"}
"""pip package of an accelerate tracker whose package is not named like the tracker."""


def known_trackers() -> list[str]:
    """Every name ``log.trackers`` accepts: ``csv`` and accelerate's trackers (built-in and registered)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted({CSV_TRACKER, *LOGGER_TYPE_TO_CLASS})


def _tracker_installed(name: str) -> bool:
    """Whether accelerate can use tracker ``name`` here (a registered custom tracker always can)."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    if name not in {member.value for member in LoggerType}:
        return True
    return name in {LoggerType(tracker).value for tracker in get_available_trackers()}


def tracker_problems(names: Sequence[str]) -> list[str]:
    """What is wrong with ``log.trackers``: unknown names (with the known ones), repeats, and
    trackers whose package is not installed (accelerate itself would drop those silently)."""
    known = known_trackers()
    problems = []
    for name in dict.fromkeys(names):
        if name not in known:
            problems.append(f"log.trackers: unknown tracker {name!r}; available: {', '.join(known)}")
        elif name != CSV_TRACKER and not _tracker_installed(name):
            package = TRACKER_PACKAGES.get(name, name)
            problems.append(f"log.trackers: {name!r} needs the {package!r} package, which is not installed "
                            f"(pip install {package}), or remove it from log.trackers")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        problems.append(f"log.trackers names {', '.join(repeated)} more than once")
    return problems


def accelerate_trackers(names: Sequence[str]) -> list[str]:
    """The trackers accelerate runs (``log_with``): ``names`` without ``csv`` (the loop's own file)."""
    return [name for name in dict.fromkeys(names) if name != CSV_TRACKER]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def reason_kind(reason: str) -> str:
    """A reason without its details (the part in parentheses, numbers): what ``by_reason`` counts."""
    head = str(reason).split(" (", 1)[0]
    return re.sub(r"\d+", "N", head).strip()[:160] or "unknown"


class DecodeErrorLog:
    """Samples (or shards) that failed to decode during training, bounded in memory.

    ``add`` takes the loader's ``batch["errors"]`` records (``key``, ``url``, ``modality``,
    ``reason``); logs from several processes are combined with ``merge``.
    """

    def __init__(self, max_examples: int = MAX_DECODE_ERROR_EXAMPLES) -> None:
        self.max_examples = max_examples
        self.count = 0
        self.by_reason: Counter[str] = Counter()
        self.by_modality: Counter[str] = Counter()
        self.examples: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return self.count

    def _count_reason(self, kind: str, n: int) -> None:
        if kind not in self.by_reason and len(self.by_reason) >= MAX_REASON_KINDS:
            kind = "other"
        self.by_reason[kind] += n

    def add(self, records: Iterable[Mapping[str, Any]], *, step: int | None = None) -> None:
        for record in records:
            self.count += 1
            reason = str(record.get("reason", ""))
            modality = record.get("modality")
            self.by_modality[str(modality) if modality is not None else "sample"] += 1
            self._count_reason(reason_kind(reason), 1)
            if len(self.examples) < self.max_examples:
                self.examples.append({"step": step, "shard": record.get("url"), "key": record.get("key"),
                                      "modality": modality, "reason": reason})

    def merge(self, other: DecodeErrorLog | Mapping[str, Any]) -> None:
        data = other.to_dict() if isinstance(other, DecodeErrorLog) else other
        self.count += int(data.get("count", 0))
        for kind, n in (data.get("by_reason") or {}).items():
            self._count_reason(kind, int(n))
        self.by_modality.update({k: int(n) for k, n in (data.get("by_modality") or {}).items()})
        room = self.max_examples - len(self.examples)
        self.examples.extend(list(data.get("examples") or [])[:max(room, 0)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "by_reason": dict(self.by_reason.most_common()),
            "by_modality": dict(self.by_modality.most_common()),
            "examples": list(self.examples),
            "examples_truncated": self.count > len(self.examples),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, max_examples: int = MAX_DECODE_ERROR_EXAMPLES) -> DecodeErrorLog:
        log = cls(max_examples)
        if data:
            log.merge(data)
        return log


def _truncate_csv(path: Path, last_step: int) -> None:
    """Keep the header and the rows whose step is at most ``last_step``; atomic."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    keep = [r for r in body if r and _step_of(r[0]) <= last_step]
    if len(keep) == len(body):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(keep)
    os.replace(tmp, path)


def _truncate_jsonl(path: Path, last_step: int) -> None:
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            step = json.loads(line).get("step", 0)
        except (ValueError, AttributeError):
            continue  # a half-written last line of a killed run
        if _step_of(step) <= last_step:
            keep.append(line)
    if len(keep) == len(lines):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def _step_of(value: Any) -> float:
    try:
        return int(value)
    except (TypeError, ValueError):
        return float("inf")  # unreadable: dropped


def _flat_scalars(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_scalars(value, f"{name}/"))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


class TrainLogger:
    """Writes scalars to the accelerator's trackers (``log_with``; TensorBoard: ``output_dir/<project>``)
    and to ``output_dir/train_log.csv``."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, *, config: dict[str, Any],
                 resume_step: int = 0, project: str = "anchorbind",
                 init_kwargs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """``resume_step``: the step resumed from (0: a new run, whose old logs are removed);
        ``project`` and ``init_kwargs`` (per tracker): accelerate's ``init_trackers`` arguments."""
        self.accelerator = accelerator
        self.csv_path = Path(output_dir) / "train_log.csv"
        self.events_path = Path(output_dir) / "train_events.jsonl"
        self._fields: list[str] | None = None
        accelerator.init_trackers(project, config=_flat_scalars(config),
                                  init_kwargs={k: dict(v) for k, v in (init_kwargs or {}).items()})
        if accelerator.is_main_process:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step > 0 and self.csv_path.exists():
                _truncate_csv(self.csv_path, resume_step)
                with self.csv_path.open() as handle:
                    self._fields = next(csv.reader(handle), None)
            elif self.csv_path.exists():
                self.csv_path.unlink()
            if resume_step > 0 and self.events_path.exists():
                _truncate_jsonl(self.events_path, resume_step)
            elif self.events_path.exists():
                self.events_path.unlink()

    def log(self, step: int, scalars: Mapping[str, float | None]) -> None:
        """One row; a ``None`` value (a term with no rows in this step) is an empty CSV cell and no
        tracker point, never a 0."""
        self.accelerator.log({k: v for k, v in scalars.items() if v is not None}, step=step)
        if not self.accelerator.is_main_process:
            return
        row = {"step": step, **scalars}
        new_file = self._fields is None
        if new_file:
            self._fields = list(row)
        with self.csv_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._fields, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def event(self, step: int, kind: str, **details: Any) -> None:
        """Record a discrete event (e.g. a skipped non-finite step) in ``train_events.jsonl``."""
        if self.accelerator.is_main_process:
            with self.events_path.open("a") as handle:
                handle.write(json.dumps({"step": step, "event": kind, **details}) + "\n")
