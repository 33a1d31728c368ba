"""One run per output directory: a lock while a run is active, and what an existing run allows.

* :class:`RunLock` -- ``output_dir/train.lock``, taken by the main process for the whole run: an
  ``fcntl.flock`` on a file that names the holder (pid, host, start time). The kernel drops the
  lock when its process dies, even by SIGKILL, so a lock file whose lock is free is stale: it is
  taken over, with a warning that names the dead holder.
* :func:`prepare_run_dir` -- run by the main process, under the lock, before any model is built:
  refuses a fresh start over an existing run (unless ``--resume`` or ``--overwrite``), refuses
  ``--resume`` when the saved ``config.yaml`` differs in anything that changes the trajectory,
  and says when the run is already finished (``--resume`` is then a no-op).

* :func:`check_shared_output_dir` -- run by every process at start-up: ``output_dir`` must be
  the same storage on every node (checkpoints, RNG states and the resume decision live there). The
  main process writes a marker holding a fresh nonce, every process reads it after a barrier, and
  a process that cannot see it (a folder per node, a local disk) stops the run on every process
  with one message, before any model is built.

What may differ on ``--resume`` (:data:`RESUMABLE_KEYS`): ``steps`` (to train further, or to finish
at an earlier step not yet reached), and keys that do not change what is trained: ``log_every``,
``keep_checkpoints``, ``data.eval_shards`` (read by ``anchorbind eval`` only), where the scalars go
(``log.trackers``, ``log.project``, ``log.init_kwargs``), how patiently shards are read (timeouts,
retries, the skip limit: they change no batch of shards that read) and ``output_dir`` (the same
directory, perhaps spelled differently). Everything else -- seed, data, batch size,
workers, model, optimiser, loss, ``checkpoint_every`` (it seeds the data segments) -- must match.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
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
    "check_shared_output_dir",
    "config_differences",
    "prepare_run_dir",
]

log = logging.getLogger("anchorbind.train")

LOCK_NAME = "train.lock"
CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "train_summary.json"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"

RESUMABLE_KEYS = ("steps", "log_every", "keep_checkpoints", "data.eval_shards", "output_dir", "log.trackers",
                  "log.project", "log.init_kwargs", "data.read_timeout_s", "data.retries", "data.retry_backoff_s",
                  "data.max_failed_shards", "data.batch_timeout_s", "dist_timeout_s")
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


# ---------------------------------------------------------------------- one output_dir for every node
SHARED_MARKER_PREFIX = ".shared-check-"
"""The main process's marker in ``output_dir``: ``.shared-check-<nonce>``, removed once read."""
SHARED_CHECK_WAIT_S = 5.0
"""How long a process looks for the marker before it calls ``output_dir`` not shared (a network
file system may show another node's new file a moment late)."""
MAX_NAMED_PROCESSES = 8


def _write_marker(path: Path, nonce: str, host: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"nonce": nonce, "host": host, "pid": os.getpid(), "output_dir": str(path.parent)}, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _look_for_marker(path: Path, nonce: str, wait_s: float) -> str | None:
    """None when ``path`` holds ``nonce`` (looked for up to ``wait_s`` seconds); else what this process saw."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            seen = "cannot see the marker rank 0 wrote"
        except (OSError, ValueError) as err:
            seen = f"cannot read the marker rank 0 wrote ({' '.join(str(err).split())})"
        else:
            if isinstance(data, dict) and data.get("nonce") == nonce:
                return None
            seen = "sees a marker with another nonce than the one rank 0 wrote"
        if time.monotonic() >= deadline:
            return seen
        time.sleep(0.1)


def _not_shared_message(reports: list[tuple[int, str, str, str | None]]) -> str:
    """One line naming the processes that cannot see rank 0's marker (``reports``: rank, host, path, seen)."""
    _, main_host, main_path, _ = min(reports)
    blind = sorted(r for r in reports if r[3] is not None)
    parts = []
    for rank, host, path, seen in blind[:MAX_NAMED_PROCESSES]:
        where = "" if path == main_path else f" (its output_dir: {path})"
        parts.append(f"rank {rank} on host {host}{where} {seen}")
    more = len(blind) - MAX_NAMED_PROCESSES
    listed = "; ".join(parts) + (f"; and {more} more process(es)" if more > 0 else "")
    return (f"output_dir {main_path} is not shared: {listed}; put output_dir on storage all nodes mount, at the "
            f"same path on every node (checkpoints, RNG states and the resume decision are kept there; rank 0 "
            f"runs on host {main_host})")


def check_shared_output_dir(accelerator: Any, output_dir: Path, *, wait_s: float = SHARED_CHECK_WAIT_S) -> None:
    """Stop the run, on every process, unless every process sees the main process's ``output_dir``.

    Every process calls this at start-up, after the main process created ``output_dir`` (and took
    :class:`RunLock`, so any earlier marker there is stale). The main process writes
    ``output_dir/.shared-check-<nonce>`` (:data:`SHARED_MARKER_PREFIX`) with a fresh random nonce and
    sends the nonce to every process (a broadcast: the barrier after the write); each process reads
    the marker from its own ``output_dir`` (up to ``wait_s`` seconds), the findings are gathered on
    every process (so all of them take the same branch and none waits alone), and the main process
    removes the marker. One process: nothing to check.

    Args:
        accelerator: the run's ``accelerate.Accelerator`` (its ``PartialState`` would do).
        output_dir: this process's ``output_dir``.
        wait_s: how long a process looks for the marker before it gives up.

    Raises:
        ConfigError: on every process, one line: ``output_dir ... is not shared: rank R on host H
            cannot see the marker rank 0 wrote; put output_dir on storage all nodes mount ...``; the
            first process of each other node also logs it (the main process's is printed by the CLI).
    """
    if accelerator.num_processes <= 1:
        return
    from accelerate.utils import broadcast_object_list, gather_object

    host = socket.gethostname()
    marker: Path | None = None
    message: list[Any] = [None, None]  # the nonce, or why the main process could not write the marker
    if accelerator.is_main_process:
        nonce = secrets.token_hex(16)
        try:
            for stale in output_dir.glob(f"{SHARED_MARKER_PREFIX}*"):  # left by a killed start
                stale.unlink(missing_ok=True)
            marker = output_dir / f"{SHARED_MARKER_PREFIX}{nonce}"
            _write_marker(marker, nonce, host)
            message[0] = nonce
        except OSError as err:
            message[1] = (f"output_dir {output_dir}: the main process (rank 0 on host {host}) cannot write the "
                          f"marker that checks the folder is shared ({err.strerror or err}); choose a writable "
                          "output_dir on storage all nodes mount")
    broadcast_object_list(message, from_process=0)
    nonce, cannot_write = message
    if cannot_write is not None:
        raise ConfigError(cannot_write)
    try:
        seen = _look_for_marker(output_dir / f"{SHARED_MARKER_PREFIX}{nonce}", nonce, wait_s)
    except Exception as err:  # every process must reach the gather below
        seen = f"cannot read the marker rank 0 wrote ({type(err).__name__}: {err})"
    reports = gather_object([(accelerator.process_index, host, str(output_dir), seen)])
    if marker is not None:
        with contextlib.suppress(OSError):
            marker.unlink()
    if all(seen is None for *_, seen in reports):
        return
    text = _not_shared_message([tuple(r) for r in reports])
    if not accelerator.is_main_process and accelerator.is_local_main_process:
        log.error("%s", text)  # this node's log says why it stopped; the main process's CLI prints it
    raise ConfigError(text)
