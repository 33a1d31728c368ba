"""Random views of normalised log-mel spectrograms, for the audio plugin's native objective."""

from __future__ import annotations

import math

import torch
import torchaudio.transforms as T
from torch import nn

__all__ = ["SpectrogramAugment"]


class SpectrogramAugment(nn.Module):
    """SpecAugment masks, a circular time shift and a small level change, drawn per example.

    Each of these leaves what the native objective should keep recognisable: a shift moves the
    notes but keeps their number and spacing (rhythm, tempo); the level change is a few dB,
    well below the differences between quiet and loud sounds; the masks hide a band of
    frequencies and a stretch of time.

    Args:
        freq_mask: widest frequency mask, in mel bins (torchaudio ``FrequencyMasking``).
        time_mask: widest time mask, in frames (torchaudio ``TimeMasking``).
        max_shift: largest circular shift each way, in frames.
        gain_db: largest level change each way, in dB.
        std: the normalisation std of the spectrograms, to express a gain in their units.

    Input and output: ``(N, 1, mel, frames)`` normalised spectrograms; torch's RNG draws everything.
    """

    def __init__(self, freq_mask: int, time_mask: int, max_shift: int, gain_db: float, std: float) -> None:
        super().__init__()
        self.freq_masking = T.FrequencyMasking(freq_mask_param=freq_mask, iid_masks=True)
        self.time_masking = T.TimeMasking(time_mask_param=time_mask, iid_masks=True)
        self.max_shift = int(max_shift)
        # A gain of g dB scales power by 10**(g/10): the natural-log fbank moves by g*ln(10)/10.
        self.gain_scale = gain_db * math.log(10.0) / 10.0 / std

    def forward(self, specs: torch.Tensor) -> torch.Tensor:
        count, frames, device = specs.shape[0], specs.shape[-1], specs.device
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (count, 1), device=device)
        index = (torch.arange(frames, device=device)[None] - shifts) % frames
        shifted = specs.gather(-1, index[:, None, None, :].expand_as(specs))
        level = (2 * torch.rand(count, 1, 1, 1, device=device, dtype=specs.dtype) - 1) * self.gain_scale
        return self.time_masking(self.freq_masking(shifted + level))

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}, gain_scale={self.gain_scale:.4g}"
