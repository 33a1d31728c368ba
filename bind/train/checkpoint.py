"""Atomic, resumable training checkpoints on top of ``Accelerator.save_state``.

accelerate writes a checkpoint folder file by file; a run killed half-way would leave a folder
that looks complete. We write into a hidden temporary folder and rename it into place only when
every process has finished, so ``latest_checkpoint`` only ever sees whole checkpoints.

Counters (step, samples seen, skipped steps) are stored as JSON beside accelerate's files rather
than through ``register_for_checkpointing``, which would unpickle them on load.

The model part is only what training changes: ``bind_model/`` is ``BindModel.save_pretrained``
(the trainable weights and plugin buffers as safetensors, plus ``config.json``), and accelerate is
told not to save the wrapped model (which would also hold the frozen anchor and frozen backbones,
~17x the trainable weights). The frozen parts are rebuilt from the config, identically, by the
resumed run. Everything is read back with safetensors or ``torch.load(weights_only=True)``.

The data loader's position is saved beside them as ``loader_state.json`` (``LOADER_STATE_FILE``):
``{"world_size": R, "ranks": [state of rank 0, ...]}``, each rank's
:meth:`anchorbind.data.loader.ShardLoader.state_dict` (epoch, and per loader worker the shard
segment, sample offset and shuffle block it stands at; :mod:`anchorbind.data.sampler`). Every rank
reads its own entry back (:func:`loader_state_for`), so a resumed run continues the data stream
exactly where the checkpoint was taken.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file

from anchorbind.errors import ModelFileError

__all__ = ["LOADER_STATE_FILE", "MODEL_DIR", "latest_checkpoint", "load_checkpoint", "loader_state_for",
           "read_checkpoint_file", "save_checkpoint"]

STATE_FILE = "trainer_state.json"
PREFIX = "step-"
MODEL_DIR = "bind_model"
"""The checkpoint's model part: a loadable ``BindModel.save_pretrained`` folder."""
LOADER_STATE_FILE = "loader_state.json"
"""Every rank's data loader position (module docstring)."""


def _skip_model_weights(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
    weights.clear()  # save_state pre-hook: the trainable part is saved as MODEL_DIR instead


def _skip_model_loading(models: list[Any], input_dir: str) -> None:
    models.clear()  # load_state pre-hook: restored from MODEL_DIR by load_checkpoint


def _final_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def save_checkpoint(
    accelerator: Accelerator,
    root: str | os.PathLike[str],
    state: dict[str, Any],
    *,
    model: Any,
    keep: int,
    files: dict[str, Any] | None = None,
) -> Path:
    """Save ``model``'s trainable part, accelerate's optimiser, scheduler and RNG states, ``state``
    (JSON) and ``files`` (``{name: JSON-able}``) as ``root/step-XXXXXXXX``, atomically.

    Every process must call this (accelerate saves per-process RNG states). ``model`` is the
    unwrapped ``BindModel``. Older checkpoints beyond the ``keep`` newest are removed by the main
    process.
    """
    root = Path(root)
    step = int(state["step"])
    final = _final_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    handle = accelerator.register_save_state_pre_hook(_skip_model_weights)
    try:
        accelerator.save_state(str(tmp))
    finally:
        handle.remove()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.save_pretrained(tmp / MODEL_DIR)
        for name, data in (files or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=2))
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


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike[str], *, model: Any) -> dict[str, Any]:
    """Restore ``model``'s trainable part and accelerate's state from ``path``; returns the trainer counters.

    Raises:
        ModelFileError: naming the file, when the model part is missing, corrupt or does not match
            ``model`` (another config).
    """
    path = Path(path)
    weights = path / MODEL_DIR / "model.safetensors"
    try:
        saved = load_file(str(weights), device=str(model.device))
    except (OSError, SafetensorError) as err:
        raise ModelFileError(f"{weights}: cannot restore the checkpoint's model ({err})") from err
    expected = model.persistent_state_dict()
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & saved.keys() if saved[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ModelFileError(f"{weights}: does not match this run's model (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}, wrong shape {wrong[:5]})")
    model.load_state_dict(saved, strict=False)
    handle = accelerator.register_load_state_pre_hook(_skip_model_loading)
    try:
        accelerator.load_state(str(path))
    finally:
        handle.remove()
    return json.loads((path / STATE_FILE).read_text())


def read_checkpoint_file(path: str | os.PathLike[str], name: str) -> Any:
    """A JSON file saved through ``save_checkpoint(files=...)``, or None when absent or unreadable."""
    try:
        return json.loads((Path(path) / name).read_text())
    except (OSError, ValueError):
        return None


def loader_state_for(saved: Any, rank: int, world_size: int) -> tuple[dict[str, Any] | None, int | None, str | None]:
    """This rank's loader state from a checkpoint's ``loader_state.json`` (``saved``, as read).

    Returns ``(state, epoch, note)``: ``state`` to continue exactly (None when it cannot be used);
    otherwise ``epoch`` is where the data order restarts (the earliest epoch any rank was in, or
    None: from the start) and ``note`` says why.
    """
    if saved is None:
        return None, None, "the checkpoint holds no loader position (saved before positions were)"
    try:
        ranks = list(saved["ranks"])
        epochs = [min(int(p["epoch"]) for p in state["positions"]) for state in ranks]
        saved_world = int(saved["world_size"])
    except (KeyError, TypeError, ValueError):
        return None, None, "the checkpoint's loader position is unreadable"
    if saved_world != world_size or len(ranks) != world_size:
        return None, min(epochs), (f"the checkpoint was saved by {saved_world} processes, this run has {world_size}: "
                                   "the position of each cannot be carried over")
    return dict(ranks[rank]), min(epochs), None
