"""Write a whole folder or nothing: build it under a temporary name, then swap it into place.

A model folder or a search index is several files that only make sense together; a reader (or a
process killed half-way) must never see a mix of an old and a new version. Writers fill a hidden
temporary folder beside the target and :func:`write_directory` renames it into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_directory"]


def write_directory(out: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a fresh hidden folder beside ``out``, then make it ``out``.

    An existing ``out`` is replaced: it is renamed aside first and removed only once the new
    folder is in place, so at every moment ``out`` is either the old folder or the new one
    (between the two renames, briefly absent). If ``write`` raises, ``out`` is untouched and
    the temporary folder is removed.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
