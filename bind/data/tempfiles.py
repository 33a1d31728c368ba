"""Temporary files of the shard writers: one naming rule, so a killed run's leftovers are recognised and removed.

Every writer (``anchorbind shards``, ``world`` and ``cache``) writes to a hidden name that ends in
the writing process's id, and renames it into place (``os.replace``) only when it is complete:

- ``.<name>.writing-<pid>``: a shard, ``manifest.json``, ``report.json``, ``.plan.json`` or a cache sidecar;
- ``.<name>.caching-<pid>``: a shard being rewritten by the anchor cache;
- ``.converting-<pid>/``: the staging folder of a conversion (its shards move out when all are done).

None of these ends in ``.tar`` or is visible to a directory or glob shard spec, so the loader never
reads one as a shard. A run killed outright (``SIGKILL``, power loss) cannot delete its own; the
next run in the same folder does (:func:`remove_stale`): a temporary whose process is no longer
running on this machine is removed, one of a live process (a concurrent run) is left alone.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

__all__ = ["is_temporary", "remove_stale", "temporary_name"]

_TEMPORARY = re.compile(r"^\.(?:(?P<name>.+)\.(?:writing|caching)|converting)-(?P<pid>\d+)$")


def temporary_name(name: str, kind: str = "writing") -> str:
    """The hidden name this process writes ``name`` under: ``.<name>.<kind>-<pid>``."""
    return f".{name}.{kind}-{os.getpid()}"


def is_temporary(name: str) -> bool:
    """Whether a file name follows the writers' temporary naming rule."""
    return _TEMPORARY.match(name) is not None


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process here (this process counts as live: it may be writing)."""
    if pid == os.getpid() or os.name == "nt":  # on Windows, os.kill(pid, 0) would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's; anything else: do not guess
        return True
    return True


def remove_stale(folder: str | os.PathLike[str], names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporaries in ``folder`` left by processes that are no longer running.

    Args:
        folder: the folder to clean (not recursive; a missing folder has nothing to clean).
        names: only the temporaries of these final names (``world-000000.tar``...), so that a
            process cleans only what it is about to write; ``None``: every temporary in the folder.

    Returns:
        The paths removed.
    """
    wanted = None if names is None else set(names)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or (wanted is not None and match.group("name") not in wanted):
            continue
        if _running(int(match.group("pid"))):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
