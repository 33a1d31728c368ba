"""Atomic, resumable training checkpoints on top of ``Accelerator.save_state``.

accelerate writes a checkpoint folder file by file; a run killed half-way would leave a folder
that looks complete. We write into a hidden temporary folder and rename it into place only when
every process has finished, so ``latest_checkpoint`` only ever sees whole checkpoints.

Counters (step, samples seen, skipped steps) are stored as JSON beside accelerate's files rather
than through ``register_for_checkpointing``, which would unpickle them on load.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint"]

STATE_FILE = "trainer_state.json"
PREFIX = "step-"


def _final_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def save_checkpoint(
    accelerator: Accelerator, root: str | os.PathLike[str], state: dict[str, Any], *, keep: int
) -> Path:
    """Save accelerate's state plus ``state`` (JSON) as ``root/step-XXXXXXXX``, atomically.

    Every process must call this (accelerate saves per-process RNG states). Older checkpoints
    beyond the ``keep`` newest are removed by the main process.
    """
    root = Path(root)
    step = int(state["step"])
    final = _final_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(root.glob(f"{PREFIX}*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under ``root`` (temporary folders are ignored)."""
    candidates = [p for p in Path(root).glob(f"{PREFIX}*") if (p / STATE_FILE).is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: json.loads((p / STATE_FILE).read_text())["step"])


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Restore accelerate's state from ``path`` and return the saved trainer counters."""
    path = Path(path)
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())
