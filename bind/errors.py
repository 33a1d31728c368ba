"""Exceptions that name the offending input and the reason.

Every error a user can trigger with bad data or a bad config derives from
:class:`AnchorBindError`, so pipelines can catch one type, count the failure and
carry on, while tests can assert on the exact kind of failure.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AnchorBindError",
    "ConfigError",
    "InputError",
    "ModelFileError",
    "UnknownModalityError",
    "debug_enabled",
    "describe_source",
    "exit_code",
    "run_command",
]

DEBUG_FLAG = "--debug"
DEBUG_ENV = "ANCHORBIND_DEBUG"


class AnchorBindError(Exception):
    """Base class of every error AnchorBind raises on purpose."""


class ConfigError(AnchorBindError, ValueError):
    """A configuration value or key is wrong (unknown key, bad type, bad value)."""


class UnknownModalityError(AnchorBindError, KeyError):
    """A modality name is not registered (neither built in nor via entry points)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class InputError(AnchorBindError, ValueError):
    """A raw input (file, bytes, array) cannot be used; the message names it and says why."""

    def __init__(self, source: Any, reason: str, modality: str | None = None) -> None:
        self.source = source
        self.reason = reason
        self.modality = modality
        where = f"{modality} input " if modality else "input "
        super().__init__(f"{where}{describe_source(source)}: {reason}")


class ModelFileError(AnchorBindError, OSError):
    """A saved model folder or checkpoint is missing, unreadable, corrupt or does not match its config.

    The message names the path and the reason; the raw ``SafetensorError``, ``JSONDecodeError``
    or shape-mismatch ``RuntimeError`` is kept as ``__cause__`` for ``--debug``.
    """


EXIT_USAGE = 2
"""Exit status of a command line or config mistake (argparse uses 2 as well)."""
EXIT_DATA = 1
"""Exit status of unusable data: an input file, a shard, a saved model."""


def exit_code(err: BaseException) -> int:
    """The CLI's exit status for a user mistake: 2 for usage and config, 1 for data."""
    if isinstance(err, (ConfigError, UnknownModalityError)) and not isinstance(err, ModelFileError):
        return EXIT_USAGE
    return EXIT_DATA


def describe_source(source: Any) -> str:
    """A short, human-readable name for a raw input, used in error messages and reports."""
    if isinstance(source, (str, Path)):
        text = str(source)
        return repr(text if len(text) <= 120 else text[:117] + "...")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array shape={tuple(source.shape)} dtype={source.dtype}>"
    shape = getattr(source, "shape", None)
    if shape is not None:
        return f"<{type(source).__name__} shape={tuple(shape)} dtype={getattr(source, 'dtype', '?')}>"
    return f"<{type(source).__name__}>"


# ---------------------------------------------------------------------- the CLI's error convention
def debug_enabled(argv: Sequence[str] = ()) -> bool:
    """``--debug`` on the command line or ``ANCHORBIND_DEBUG`` set to a true value."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() in {"1", "true", "yes", "on"}


def _one_line(err: BaseException) -> str:
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text or type(err).__name__


def run_command(prog: str, func: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a subcommand's ``main(argv)`` under the error convention; returns the exit status.

    ``--debug`` is removed from ``argv`` before ``func`` sees it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    if debug:
        logging.basicConfig(level=logging.DEBUG)
        return int(func(argv) or 0)
    try:
        return int(func(argv) or 0)
    except AnchorBindError as err:
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return exit_code(err)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        name = f"{err.filename}: " if err.filename else ""
        print(f"{prog}: error: {name}{err.strerror or _one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
