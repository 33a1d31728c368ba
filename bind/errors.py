"""Exceptions that name the offending input and the reason.

Every error a user can trigger with bad data or a bad config derives from
:class:`AnchorBindError`, so pipelines can catch one type, count the failure and
carry on, while tests can assert on the exact kind of failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AnchorBindError",
    "ConfigError",
    "InputError",
    "UnknownModalityError",
    "describe_source",
]


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
