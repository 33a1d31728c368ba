"""Training logs: TensorBoard through accelerate's tracker, and a CSV anyone can plot.

Only the main process writes. The CSV is appended to on resume, so one file holds the whole
run's curve; its columns are fixed by the first row written (new keys go to TensorBoard only).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator

__all__ = ["TrainLogger"]


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
    """Writes scalars to TensorBoard (``output_dir/anchorbind``) and ``output_dir/train_log.csv``."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, *, config: dict[str, Any], resume: bool) -> None:
        self.accelerator = accelerator
        self.csv_path = Path(output_dir) / "train_log.csv"
        self.events_path = Path(output_dir) / "train_events.jsonl"
        self._fields: list[str] | None = None
        accelerator.init_trackers("anchorbind", config=_flat_scalars(config))
        if accelerator.is_main_process:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            if resume and self.csv_path.exists():
                with self.csv_path.open() as handle:
                    self._fields = next(csv.reader(handle), None)
            elif self.csv_path.exists():
                self.csv_path.unlink()

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.accelerator.log(scalars, step=step)
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
