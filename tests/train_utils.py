"""Helpers for the training tests: a tiny but real config over the session's world shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from anchorbind.config import apply_overrides

TINY_MODALITIES: dict[str, dict[str, Any]] = {
    "text": {},
    "audio": {"width": 32, "depth": 1, "num_heads": 2},
    "depth": {"image_size": 32, "width": 32, "depth": 1, "num_heads": 2},
}


def tiny_config(out_dir: Path, train_shards: Path, overrides: list[str] = (), **top: Any) -> dict[str, Any]:
    """A seconds-per-run training config: packaged anchor at 96 px, tiny trunks, batch 8."""
    cfg: dict[str, Any] = {
        "output_dir": str(out_dir),
        "steps": 6,
        "seed": 0,
        "log_every": 1,
        "checkpoint_every": 2,
        "keep_checkpoints": 5,
        "model": {"anchor": {"weights": "packaged", "image_size": 96}, "modalities": TINY_MODALITIES},
        "data": {"train_shards": str(train_shards), "batch_size": 8, "num_workers": 1,
                 "shuffle_buffer": 16, "anchor": "live"},
        "optim": {"lr": 2e-3, "warmup_steps": 1},
    }
    cfg.update(top)
    return apply_overrides(cfg, overrides)


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path
