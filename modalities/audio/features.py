"""ImageBind's audio features: 2 s clips -> kaldi fbank (128 x 204) -> normalised.

Reproduces ``imagebind/data.py`` (``waveform2melspec`` and ``load_and_transform_audio_data``
with pytorchvideo's ``ConstantClipsPerVideoSampler``) so that trunks trained with ImageBind's
features can be loaded, and results compared, without a mismatch in preprocessing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

__all__ = ["clip_starts", "log_mel", "waveform_to_clips"]


def log_mel(waveform: torch.Tensor, sample_rate: int, num_mel_bins: int, target_length: int) -> torch.Tensor:
    """One clip (samples,) to a (1, mel, frames) kaldi fbank, padded with zeros or cropped to ``target_length``."""
    wave = (waveform - waveform.mean())[None]
    fbank = kaldi.fbank(wave, htk_compat=True, sample_frequency=sample_rate, use_energy=False,
                        window_type="hanning", num_mel_bins=num_mel_bins, dither=0.0,
                        frame_length=25, frame_shift=10)
    fbank = fbank.transpose(0, 1)
    missing = target_length - fbank.shape[1]
    fbank = F.pad(fbank, (0, missing)) if missing > 0 else fbank[:, :target_length]
    return fbank[None]


def clip_starts(duration: float, clip_duration: float, clips: int) -> list[float]:
    """Uniformly spread clip starts, as ``ConstantClipsPerVideoSampler`` (first at 0, last at the end)."""
    last = max(duration - clip_duration, 0.0)
    if clips == 1:
        return [0.0]
    return [last * i / (clips - 1) for i in range(clips)]


def waveform_to_clips(
    waveform: torch.Tensor,
    sample_rate: int,
    *,
    starts: list[float],
    clip_duration: float,
    num_mel_bins: int,
    target_length: int,
    mean: float,
    std: float,
) -> torch.Tensor:
    """(samples,) to (clips, 1, mel, frames) normalised spectrograms."""
    specs = []
    for start in starts:
        segment = waveform[int(start * sample_rate):int((start + clip_duration) * sample_rate)]
        specs.append((log_mel(segment, sample_rate, num_mel_bins, target_length) - mean) / std)
    return torch.stack(specs)
