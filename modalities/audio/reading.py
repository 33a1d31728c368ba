"""Reading audio into a mono float waveform at the plugin's sample rate.

soundfile decodes (WAV, FLAC, OGG, and MP3 where libsndfile supports it); torchaudio resamples.
Every way a file can be unusable becomes an :class:`~bind.errors.InputError` naming it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from bind.errors import InputError
from bind.plugin import InputSource, read_bytes

__all__ = ["read_waveform", "to_mono_tensor"]

MODALITY = "audio"


def _decode(source: InputSource) -> tuple[np.ndarray, int]:
    data = read_bytes(source, MODALITY)
    try:
        with sf.SoundFile(io.BytesIO(data)) as handle:
            expected = handle.frames
            rate = handle.samplerate
            samples = handle.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise InputError(source, f"not decodable audio ({err})", MODALITY) from None
    if expected > 0 and samples.shape[0] < expected:
        raise InputError(source, f"truncated: header says {expected} frames, decoded {samples.shape[0]}", MODALITY)
    return samples.T, rate  # (channels, samples)


def to_mono_tensor(array: np.ndarray | torch.Tensor, source: InputSource) -> torch.Tensor:
    """A (samples,) or (channels, samples) array to a float32 mono tensor; other layouts refused."""
    wave = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array).float()
    if wave.numel() == 0:
        raise InputError(source, "empty audio (0 samples)", MODALITY)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2 or wave.shape[0] > 8 or wave.shape[0] > wave.shape[1]:
        raise InputError(source, f"wrong channel layout {tuple(wave.shape)}: expected (samples,) or "
                         "(channels, samples) with at most 8 channels", MODALITY)
    return wave.mean(0)


def read_waveform(source: InputSource, sample_rate: int, min_duration: float) -> torch.Tensor:
    """Decode ``source`` (path, bytes, or array already at ``sample_rate``) to mono at ``sample_rate``.

    Raises:
        InputError: unreadable, undecodable or truncated file; wrong channel layout; empty,
            silent, too short, or non-finite audio.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        wave, rate = to_mono_tensor(source, source), sample_rate
    elif isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        samples, rate = _decode(source)
        wave = to_mono_tensor(samples, source)
    else:
        raise InputError(source, "expected a path, file bytes or a waveform array", MODALITY)
    if wave.numel() == 0:
        raise InputError(source, "empty audio (0 samples)", MODALITY)
    if not torch.isfinite(wave).all():
        raise InputError(source, "NaN or infinite samples", MODALITY)
    if not wave.abs().max() > 0:
        raise InputError(source, "all-zero (silent) audio", MODALITY)
    if wave.numel() < min_duration * rate:
        raise InputError(source, f"too short: {wave.numel() / rate:.3f} s < {min_duration} s", MODALITY)
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave
