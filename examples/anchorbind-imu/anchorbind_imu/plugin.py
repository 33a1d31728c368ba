"""`ImuPlugin`: 6-axis inertial recordings -> fixed-length scaled window -> 1-D conv trunk -> anchor space.

Everything a modality needs is here and nothing else, in three parts:

- the config dataclass (:class:`ImuConfig`);
- the processor (:class:`ImuProcessor`, an :class:`anchorbind.processor.Processor`): reading and
  checking raw input (``load``) and batching (``collate``). It is built from the config alone,
  holds no weights, and is what data loader workers and ``anchorbind shards`` get;
- the plugin (:class:`ImuPlugin`, an ``nn.Module``): the trunk (``build_trunk``) and its pooled
  features (``forward_features``). The projection head, L2 normalisation and logit scale come
  from :class:`anchorbind.plugin.ModalityPlugin`, and so do ``load``/``collate``/``load_batch``,
  which delegate to ``self.processor``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anchorbind.errors import ConfigError, InputError
from anchorbind.plugin import ModalityPlugin, PluginConfig
from anchorbind.processor import InputSource, Processor, read_bytes

__all__ = ["CHANNELS", "ImuConfig", "ImuPlugin", "ImuProcessor"]

NAME = "imu_conv"
"""Registry name (also the key of its embeddings, losses and config section). Not ``imu``: that is
AnchorBind's built-in IMU plugin, so both can be installed together."""
CHANNELS = 6
"""Accelerometer x, y, z (m/s²) then gyroscope x, y, z (rad/s), as in Ego4D's IMU streams."""
NPY_MAGIC = b"\x93NUMPY"


@dataclass
class ImuConfig(PluginConfig):
    """Settings of the IMU plugin.

    Attributes:
        num_samples: window length fed to the trunk. Longer recordings are cropped (centre
            window; a random window when training), shorter ones padded by repeating the last
            reading. Resample recordings to one rate before binding: the trunk sees samples,
            not seconds.
        accel_scale: accelerometer channels are divided by it; 9.81 expresses them in g, so
            gravity (which carries the device's orientation) stays visible at magnitude ~1.
        gyro_scale: gyroscope channels (rad/s) are divided by it.
        width: channels of every conv block (and the pooled feature width).
        depth: number of conv blocks; each halves the time resolution.
        kernel_size: temporal kernel of the conv blocks (odd).

    The logit scale is fixed at 5, ImageBind's setting for its IMU encoder.
    """

    logit_scale_init: float = 5.0
    logit_scale_learnable: bool = False

    num_samples: int = 256
    accel_scale: float = 9.81
    gyro_scale: float = 1.0

    width: int = 64
    depth: int = 3
    kernel_size: int = 5

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.width < 1 or self.depth < 1:
            raise ConfigError("anchorbind.modalities.imu_conv: num_samples, width and depth must be positive")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(
                f"anchorbind.modalities.imu_conv: kernel_size must be odd and positive, got {self.kernel_size}"
            )
        if self.accel_scale <= 0 or self.gyro_scale <= 0:
            raise ConfigError("anchorbind.modalities.imu_conv: accel_scale and gyro_scale must be positive")


class ImuProcessor(Processor):
    """A 6-axis IMU recording: a float .npy (or array) shaped (T, 6) or (6, T), accelerometer then gyroscope.

    :meth:`load` gives a ``(6, num_samples)`` window, accelerometer in units of ``accel_scale``,
    gyroscope in units of ``gyro_scale``; :meth:`collate` stacks windows to ``(B, 6, num_samples)``
    float32. No weights: this is all a data loader worker needs.
    """

    config: ImuConfig

    def load(self, source: InputSource, *, train: bool = False) -> torch.Tensor:
        """Read one recording into a scaled ``(6, num_samples)`` window.

        Raises:
            InputError: naming ``source`` when it is unreadable, not a float ``.npy`` (pickled
                files are refused), not shaped (T, 6) / (6, T), or holds NaN/inf.
        """
        series = _channels_first(source, _read_array(source))
        scale = torch.tensor([self.config.accel_scale] * 3 + [self.config.gyro_scale] * 3)
        series = torch.from_numpy(series) / scale[:, None]
        return _fit_length(series, self.config.num_samples, train=train)

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of IMU recordings")
        return torch.stack(list(samples))


class ImuPlugin(ModalityPlugin):
    """A 6-axis IMU recording: a float .npy (or array) shaped (T, 6) or (6, T), accelerometer then gyroscope.

    Batch: ``(B, 6, num_samples)`` float32, from :class:`ImuProcessor`. Trunk: ``depth`` blocks
    of strided ``Conv1d`` + ``GroupNorm`` + GELU, average-pooled over time.
    """

    name: ClassVar[str] = NAME
    Config: ClassVar[type[ImuConfig]] = ImuConfig
    Processor: ClassVar[type[ImuProcessor]] = ImuProcessor
    sample_keys: ClassVar[tuple[str, ...]] = ("imu.npy",)
    config: ImuConfig

    @classmethod
    def example_inputs(cls) -> list[Any]:
        """Recordings of different motion and length: walking ``(T, 6)``, a turn ``(6, T)``, a ``.npy``'s bytes.

        Accelerometer in m/s² (gravity on z), gyroscope in rad/s; one longer and one shorter than
        the default window, so that both cropping and padding are exercised.
        """
        steps = np.arange(300, dtype=np.float32) / 50.0  # 6 s at 50 Hz
        walk = np.zeros((300, CHANNELS), dtype=np.float32)
        walk[:, 0] = 1.5 * np.sin(2 * np.pi * 2.0 * steps)  # forward sway at the step rate
        walk[:, 2] = 9.81 + 2.0 * np.abs(np.sin(2 * np.pi * 2.0 * steps))  # heel strikes
        walk[:, 4] = 0.3 * np.sin(2 * np.pi * 1.0 * steps)
        turn = np.zeros((CHANNELS, 120), dtype=np.float32)
        turn[2] = 9.81
        turn[5] = np.linspace(0.0, 1.5, 120, dtype=np.float32)  # yaw rate ramps up
        still = io.BytesIO()
        np.save(still, np.tile(np.array([0.1, -0.2, 9.8, 0.0, 0.0, 0.01], dtype=np.float32), (64, 1)),
                allow_pickle=False)
        return [walk, turn, still.getvalue()]

    @classmethod
    def example_bad_inputs(cls) -> list[Any]:
        """Empty bytes, bytes that are no ``.npy``, NaN readings, the wrong number of channels, a wrong type."""
        return [b"", b"not an npy file", np.full((32, CHANNELS), np.nan, dtype=np.float32),
                np.zeros((32, 4), dtype=np.float32), object()]

    def build_trunk(self) -> tuple[nn.Module, int]:
        cfg = self.config
        layers: list[nn.Module] = []
        channels = CHANNELS
        for _ in range(cfg.depth):
            layers += [
                nn.Conv1d(channels, cfg.width, cfg.kernel_size, stride=2, padding=cfg.kernel_size // 2),
                nn.GroupNorm(1, cfg.width),
                nn.GELU(),
            ]
            channels = cfg.width
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten()]
        return nn.Sequential(*layers), cfg.width

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        expected = (CHANNELS, self.config.num_samples)
        if not isinstance(batch, torch.Tensor) or batch.ndim != 3 or tuple(batch.shape[1:]) != expected:
            raise InputError(batch, f"expected a float tensor (B, {CHANNELS}, {expected[1]}) from load_batch()",
                             self.name)
        param = next(self.trunk.parameters())
        return self.trunk(batch.to(device=param.device, dtype=param.dtype))


def _read_array(source: Any) -> np.ndarray:
    if isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        return (tensor.float() if tensor.is_floating_point() else tensor).numpy()  # numpy has no bfloat16
    if isinstance(source, np.ndarray):
        return source
    if not isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        raise InputError(source, "expected a path, bytes, np.ndarray or torch.Tensor", NAME)
    data = read_bytes(source, NAME)
    if not data.startswith(NPY_MAGIC):
        raise InputError(source, "not a .npy file", NAME)
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        pickled = "allow_pickle" in str(err)
        reason = "the .npy holds pickled Python objects; refused" if pickled else f"corrupt .npy ({err})"
        raise InputError(source, reason, NAME) from None
    except (OSError, EOFError) as err:
        raise InputError(source, f"corrupt .npy ({err})", NAME) from None


def _channels_first(source: Any, array: np.ndarray) -> np.ndarray:
    """``(6, T)`` float32; ``(T, 6)`` is transposed (and wins when T is also 6)."""
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(source, f"dtype {array.dtype} is not a real number type", NAME)
    if array.ndim != 2 or CHANNELS not in array.shape or 0 in array.shape:
        raise InputError(source, f"expected shape (T, {CHANNELS}) or ({CHANNELS}, T), got {tuple(array.shape)}",
                         NAME)
    series = np.asarray(array.T if array.shape[1] == CHANNELS else array, dtype=np.float32)
    if not np.isfinite(series).all():
        raise InputError(source, f"{int((~np.isfinite(series)).sum())} NaN/inf reading(s)", NAME)
    return np.ascontiguousarray(series)


def _fit_length(series: torch.Tensor, length: int, *, train: bool) -> torch.Tensor:
    steps = series.shape[1]
    if steps < length:  # hold the last reading
        return F.pad(series[None], (0, length - steps), mode="replicate")[0]
    start = int(torch.randint(0, steps - length + 1, ()).item()) if train else (steps - length) // 2
    return series[:, start:start + length].contiguous()
