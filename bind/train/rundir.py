"""One run per output directory: a lock while a run is active, and what an existing run allows.

* :class:`RunLock` -- ``output_dir/train.lock``, taken by the main process for the whole run: an
  ``fcntl.flock`` on a file that names the holder (pid, host, start time). The kernel drops the
  lock when its process dies, even by SIGKILL, so a lock file whose lock is free is stale: it is
  taken over, with a warning that names the dead holder.
* :func:`prepare_run_dir` -- run by the main process, under the lock, before any model is built:
  refuses a fresh start over an existing run (unless ``--resume`` or ``--overwrite``), refuses
  ``--resume`` when the saved ``config.yaml`` differs in anything that changes the trajectory,
  and says when the run is already finished (``--resume`` is then a no-op).

What may differ on ``--resume`` (:data:`RESUMABLE_KEYS`): ``steps`` (to train further, or to finish
at an earlier step not yet reached), and keys that do not change what is trained: ``log_every``,
``keep_checkpoints``, ``data.eval_shards`` (read by ``anchorbind eval`` only) and ``output_dir``
(the same directory, perhaps spelled differently). Everything else -- seed, data, batch size,
workers, model, optimiser, loss, ``checkpoint_every`` (it seeds the data segments) -- must match.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anchorbind.config import config_to_dict, from_dict
from anchorbind.errors import ConfigError

__all__ = [
    "LOCK_NAME",
    "RESUMABLE_KEYS",
    "RUN_FILES",
    "RunDirPlan",
    "RunLock",
    "check_output_dir",
    "config_differences",
    "prepare_run_dir",
]

log = logging.getLogger("anchorbind.train")

LOCK_NAME = "train.lock"
CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "train_summary.json"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"

RESUMABLE_KEYS = ("steps", "log_every", "keep_checkpoints", "data.eval_shards", "output_dir")
"""Config keys that ``--resume`` lets differ from the saved ``config.yaml``."""

RUN_FILES = (
    CHECKPOINTS_DIR, MODEL_DIR, CONFIG_NAME, SUMMARY_NAME, "train_log.csv", "train_events.jsonl",
    "decode_errors.json", "anchorbind",
)
"""What a training run writes in ``output_dir`` (``--overwrite`` removes exactly these)."""


# ---------------------------------------------------------------------- the lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    since = holder.get("started")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


class RunLock:
    """An exclusive lock on a run directory, held by one process (the main one) for a whole run.

    Use :meth:`acquire`; :meth:`release` (or the process's death) frees it.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str | os.PathLike[str]) -> RunLock:
        """Lock ``directory`` (which must exist) or raise :class:`ConfigError` naming the holder.

        A lock file left by a dead process (SIGKILL, power loss) is taken over with a warning.
        """
        import fcntl

        path = Path(directory) / LOCK_NAME
        for _ in range(10):  # retried only if the file is replaced between open and flock
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = cls._try_flock(fd, fcntl)
                previous = cls._read(fd)
                if locked is None:  # no flock on this file system: fall back to the recorded pid
                    locked = not (previous and previous.get("host") == socket.gethostname()
                                  and _pid_alive(int(previous.get("pid", -1))) and previous.get("pid") != os.getpid())
                if not locked:
                    raise ConfigError(
                        f"output_dir {Path(directory)} is in use by another training run ({_describe(previous)}); "
                        f"wait for it to finish, stop it, or choose another output_dir (lock file {path})"
                    )
                try:
                    same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same_file = False
                if not same_file:  # the previous holder removed it as we opened it: start again
                    os.close(fd)
                    continue
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            if previous:
                log.warning("output_dir %s: taking over the stale lock of %s, which is no longer running",
                            directory, _describe(previous))
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(fd)
            return cls(path, fd)
        raise ConfigError(f"output_dir {Path(directory)}: could not take the lock {path} (it keeps being replaced)")

    @staticmethod
    def _try_flock(fd: int, fcntl: Any) -> bool | None:
        """True: locked; False: another process holds it; None: this file system has no flock."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
        except ValueError:
            return {"pid": "?", "host": "?"}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        """Remove the lock file and free the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------- what is already there
def check_output_dir(output_dir: str | os.PathLike[str]) -> Path:
    """``output_dir`` as a Path; a :class:`ConfigError` when it (or a parent) is not a directory."""
    path = Path(output_dir)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            what = "output_dir" if candidate == path else f"output_dir {path}: its parent"
            raise ConfigError(f"{what} {candidate} is an existing file, not a directory; choose another output_dir")
    return path


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: data}


def _normalised(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict with defaults filled in (TrainConfig's and each plugin config's), flattened."""
    from anchorbind.registry import get_plugin_class
    from anchorbind.train.config import TrainConfig

    data = config_to_dict(from_dict(TrainConfig, config, where=CONFIG_NAME))
    modalities = data.get("model", {}).get("modalities", {}) or {}
    for name, plugin_cfg in list(modalities.items()):
        with contextlib.suppress(Exception):  # else compared as written (the new config is validated)
            modalities[name] = config_to_dict(from_dict(get_plugin_class(name).Config, plugin_cfg or {}))
    return _flat(data)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       ignore: tuple[str, ...] = RESUMABLE_KEYS) -> list[str]:
    """``"key (saved -> current)"`` for every key whose value differs, except ``ignore``."""
    old, new = _normalised(saved), _normalised(current)
    missing = object()
    out = []
    for key in sorted(old.keys() | new.keys()):
        if key in ignore:
            continue
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            out.append(f"{key} ({'unset' if a is missing else _short(a)} -> {'unset' if b is missing else _short(b)})")
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _checkpoint_steps(root: Path) -> list[int]:
    from anchorbind.train.checkpoint import PREFIX, STATE_FILE

    steps = []
    for path in root.glob(f"{PREFIX}*"):
        state = _read_json(path / STATE_FILE)
        if state is not None and isinstance(state.get("step"), int):
            steps.append(state["step"])
    return sorted(steps)


@dataclass
class RunDirPlan:
    """What the main process found in ``output_dir`` (sent to every process).

    Attributes:
        finished: the run already reached ``steps`` and wrote its model: nothing to do.
        summary: the finished run's ``train_summary.json``.
        found: what an existing run left (for messages).
    """

    finished: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    found: list[str] = field(default_factory=list)


def _existing_run(output_dir: Path) -> list[str]:
    found = []
    steps = _checkpoint_steps(output_dir / CHECKPOINTS_DIR)
    if steps:
        found.append(f"checkpoints up to step {steps[-1]}")
    if (output_dir / MODEL_DIR).exists():
        found.append(f"a model ({MODEL_DIR}/)")
    if (output_dir / CONFIG_NAME).exists():
        found.append(f"a saved config ({CONFIG_NAME})")
    if (output_dir / SUMMARY_NAME).exists():
        found.append(SUMMARY_NAME)
    return found


def clear_run(output_dir: Path) -> None:
    """Remove what a previous run wrote (:data:`RUN_FILES`), nothing else."""
    for name in RUN_FILES:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def prepare_run_dir(output_dir: Path, config: dict[str, Any], *, steps: int, resume: bool,
                    overwrite: bool) -> RunDirPlan:
    """Decide what this start does with ``output_dir``; call under :class:`RunLock`.

    Raises:
        ConfigError: a fresh start over an existing run; ``--resume`` with a config that differs
            from the saved one in a key outside :data:`RESUMABLE_KEYS`, or with ``steps`` below a
            step the run has already reached.
    """
    found = _existing_run(output_dir)
    if overwrite:
        clear_run(output_dir)
        return RunDirPlan(found=found)
    if not resume:
        if found:
            raise ConfigError(
                f"output_dir {output_dir} already holds a run ({', '.join(found)}); pass --resume to continue "
                "it, --overwrite to delete it and start again, or choose another output_dir"
            )
        return RunDirPlan()
    saved_path = output_dir / CONFIG_NAME
    if saved_path.is_file():
        try:
            saved = yaml.safe_load(saved_path.read_text()) or {}
            differences = config_differences(saved, config)
        except (yaml.YAMLError, OSError, ConfigError, TypeError, AttributeError) as err:
            raise ConfigError(f"--resume: cannot read the saved config {saved_path} ({err}); "
                              "use --overwrite to start again") from None
        if differences:
            raise ConfigError(
                f"--resume: the config differs from the run's saved {saved_path} in {'; '.join(differences)}; "
                f"only {', '.join(RESUMABLE_KEYS)} may change on resume: resume with the saved values, or start "
                "a new run (--overwrite, or another output_dir)"
            )
    summary = _read_json(output_dir / SUMMARY_NAME) or {}
    reached = max([*_checkpoint_steps(output_dir / CHECKPOINTS_DIR), int(summary.get("step", 0) or 0)])
    if reached > steps:
        raise ConfigError(
            f"--resume: the run in {output_dir} is already at step {reached}, beyond steps={steps}; "
            f"set steps >= {reached}"
        )
    model_written = (output_dir / MODEL_DIR / "model.safetensors").is_file()
    if model_written and summary.get("step") == steps:
        return RunDirPlan(finished=True, summary=summary, found=found)
    return RunDirPlan(found=found)
