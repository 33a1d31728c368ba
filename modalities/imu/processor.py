"""`ImuProcessor`: inertial recordings -> fixed-length ``(channels, num_samples)`` windows, no trunk attached."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anchorbind.errors import InputError
from anchorbind.modalities.imu.config import ImuConfig
from anchorbind.processor import InputSource, Processor, open_input

__all__ = ["ImuProcessor", "read_series"]


def read_series(source: InputSource, config: ImuConfig, modality: str = "imu") -> np.ndarray:
    """One recording as a float64 ``(channels, samples)`` array.

    Raises:
        InputError: naming ``source``: unreadable, not a ``.npy`` (pickled arrays are refused),
            not numeric, not shaped ``(channels, T)`` / ``(T, channels)``, fewer than
            ``min_samples`` or more than ``max_samples`` samples, or NaN/inf values.
    """
    if isinstance(source, torch.Tensor):
        array = source.detach().cpu().numpy()
    elif isinstance(source, np.ndarray):
        array = source
    elif isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        array = _read_npy(source, config, modality)
    else:
        raise InputError(source, f"expected a .npy path, bytes or an array, got {type(source).__name__}", modality)
    if array.dtype.kind not in "uif":
        raise InputError(source, f"expected numbers, got {array.dtype}", modality)
    channels = config.channels
    if array.ndim != 2 or channels not in array.shape:
        raise InputError(source, f"expected shape ({channels}, T) or (T, {channels}), got {tuple(array.shape)}",
                         modality)
    series = array if array.shape[0] == channels else array.T
    _check_length(series.shape[1], config, source, modality)
    series = series.astype(np.float64)
    if not np.isfinite(series).all():
        raise InputError(source, "NaN or infinite values", modality)
    return series


def _check_length(samples: int, config: ImuConfig, source: Any, modality: str) -> None:
    if samples < config.min_samples:
        raise InputError(source, f"too short: {samples} samples < min_samples {config.min_samples}", modality)
    if config.max_samples is not None and samples > config.max_samples:
        raise InputError(source, f"too long: {samples} samples > max_samples {config.max_samples}", modality)


def _read_npy(source: Any, config: ImuConfig, modality: str) -> np.ndarray:
    with open_input(source, modality) as (file, _size):
        fmt = np.lib.format
        try:  # the header only: the declared shape is checked before anything is read
            version = fmt.read_magic(file)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, _fortran, dtype = fmt.read_array_header_2_0(file)
            else:
                raise ValueError(f".npy format version {version} is not supported")
        except (ValueError, OSError, EOFError, SyntaxError, TypeError) as err:
            raise InputError(source, f"not a .npy file ({err})", modality) from None
        if dtype.hasobject:
            raise InputError(source, "pickled (object) arrays are refused", modality)
        limit = None if config.max_samples is None else config.max_samples * config.channels
        if limit is not None and math.prod(shape) > limit:
            raise InputError(source, f"too large: shape {shape} holds more than max_samples {config.max_samples} "
                                     f"x {config.channels} channels", modality)
        file.seek(0)
        try:
            return np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise InputError(source, f"unreadable .npy ({err})", modality) from None


class ImuProcessor(Processor):
    """An IMU recording: a float ``.npy`` (or array) shaped ``(channels, T)`` or ``(T, channels)``.

    :meth:`load` returns a ``(channels, num_samples)`` float32 window divided by ``scale``;
    :meth:`collate` stacks windows to ``(B, channels, num_samples)``.
    """

    config: ImuConfig

    def load(self, source: InputSource, *, train: bool = False) -> torch.Tensor:
        """Read one recording into a ``(channels, num_samples)`` window.

        Args:
            source: a path or bytes of a ``.npy``, or an array.
            train: take a random window of a longer recording instead of the centre one.

        Raises:
            InputError: see :func:`read_series`.
        """
        cfg = self.config
        series = torch.from_numpy(read_series(source, cfg, self.modality))
        length, window = series.shape[1], cfg.num_samples
        if length > window:
            start = int(torch.randint(0, length - window + 1, ()).item()) if train else (length - window) // 2
            series = series[:, start:start + window]
        elif length < window:
            series = torch.cat([series, series[:, -1:].expand(-1, window - length)], dim=1)
        scale = torch.tensor(cfg.scale, dtype=torch.float64)[:, None]
        return (series / scale).float().contiguous()

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack windows into ``(B, channels, num_samples)``."""
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of IMU recordings")
        return torch.stack(list(samples))

    def input_description(self) -> str:
        cfg = self.config
        return (f"IMU recording: float .npy or array shaped ({cfg.channels}, T) or (T, {cfg.channels}) (path, bytes "
                f"or array); centre window of {cfg.num_samples} samples (edge-padded when shorter), divided by "
                f"scale {cfg.scale}")
