"""ImageBind's audio features: clips of a 16 kHz waveform -> kaldi fbank (128 x 204) -> normalised.

Reproduces ``load_and_transform_audio_data`` and ``waveform2melspec`` of ``imagebind/data.py``,
with the clip times of pytorchvideo's ``ConstantClipsPerVideoSampler`` at the commit ImageBind
pins (28fe037), so that features equal ImageBind's for the same waveform. Two details matter:

* Clip ``i`` of ``n`` starts at ``max(duration - clip_duration, 0) * i / (n - 1)`` seconds, in
  exact rational arithmetic (pytorchvideo uses ``Fraction``), and spans samples
  ``[int(start * rate), int((start + clip_duration) * rate))``.
* ImageBind removes each clip's mean *in place* on a view of the whole waveform, so where clips
  overlap a later clip sees the earlier clip's mean already subtracted from the shared samples.
  With a DC offset this changes the low mel bins by up to ~0.7 normalised units, so it is
  reproduced here (on a copy: the caller's waveform is left alone).
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

__all__ = [
    "FRAME_LENGTH_MS",
    "FRAME_SHIFT_MS",
    "clip_bounds",
    "clip_windows",
    "fbank_clip",
    "random_clip_bounds",
    "segments_to_clips",
    "waveform_to_clips",
]

FRAME_LENGTH_MS = 25.0
"""fbank window length: 400 samples at 16 kHz; a clip needs at least one window."""
FRAME_SHIFT_MS = 10.0
"""fbank hop: 100 frames per second."""


def clip_bounds(num_samples: int, sample_rate: int, clip_duration: float, clips: int) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` of ``clips`` clips spread evenly over a waveform.

    The first clip starts at 0 and the last ends at the waveform's end; a waveform shorter than
    one clip gives ``clips`` copies of the whole of it (each is zero-padded later).
    """
    duration = num_samples / sample_rate  # a float, as in ImageBind
    length = Fraction(clip_duration)
    last_start = Fraction(max(duration - length, 0))
    step = last_start / max(clips - 1, 1)
    starts = [step * i for i in range(clips)]
    return [(int(start * sample_rate), int((start + length) * sample_rate)) for start in starts]


def random_clip_bounds(num_samples: int, sample_rate: int, clip_duration: float, clips: int) -> list[tuple[int, int]]:
    """``clips`` clips at uniformly random starts (torch's RNG, so ``torch.manual_seed`` repeats them)."""
    length = int(clip_duration * sample_rate)
    starts = torch.randint(0, max(num_samples - length, 0) + 1, (clips,)).tolist()
    return [(start, start + length) for start in starts]


def clip_windows(bounds: list[tuple[int, int]], num_samples: int) -> list[tuple[int, int]]:
    """The sample ranges ``[start, end)`` a waveform of ``num_samples`` must provide for ``bounds``.

    Clips are cut to the waveform's end and overlapping or touching clips merged, so each range
    is one contiguous read, in ascending order (what :func:`segments_to_clips` takes).
    """
    merged: list[list[int]] = []
    for start, end in sorted((start, min(end, num_samples)) for start, end in bounds):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def fbank_clip(clip: torch.Tensor, sample_rate: int, num_mel_bins: int, target_length: int) -> torch.Tensor:
    """One zero-mean clip ``(samples,)`` to its log-mel fbank ``(1, num_mel_bins, target_length)``.

    Kaldi settings of ImageBind (after AST): HTK-compatible mel banks, Hanning window, 25 ms
    frames every 10 ms, no dither, no energy term. Frames beyond ``target_length`` are cut;
    missing frames are zeros (before normalisation, as in ImageBind).
    """
    fbank = kaldi.fbank(
        clip[None], htk_compat=True, sample_frequency=sample_rate, use_energy=False, window_type="hanning",
        num_mel_bins=num_mel_bins, dither=0.0, frame_length=FRAME_LENGTH_MS, frame_shift=FRAME_SHIFT_MS,
    ).transpose(0, 1)
    missing = target_length - fbank.shape[1]
    fbank = F.pad(fbank, (0, missing)) if missing > 0 else fbank[:, :target_length]
    return fbank[None]


def waveform_to_clips(
    waveform: torch.Tensor,
    sample_rate: int,
    bounds: list[tuple[int, int]],
    *,
    num_mel_bins: int,
    target_length: int,
    mean: float,
    std: float,
) -> torch.Tensor:
    """A mono waveform ``(samples,)`` to normalised spectrograms ``(clips, 1, num_mel_bins, target_length)``.

    Args:
        waveform: float samples at ``sample_rate``.
        sample_rate: its rate in Hz.
        bounds: ``[start, end)`` sample ranges, from :func:`clip_bounds` or :func:`random_clip_bounds`.
        num_mel_bins, target_length: fbank size.
        mean, std: normalisation, ``(log_mel - mean) / std``.
    """
    return segments_to_clips([(0, waveform)], sample_rate, bounds, num_mel_bins=num_mel_bins,
                             target_length=target_length, mean=mean, std=std)


def segments_to_clips(
    segments: list[tuple[int, torch.Tensor]],
    sample_rate: int,
    bounds: list[tuple[int, int]],
    *,
    num_mel_bins: int,
    target_length: int,
    mean: float,
    std: float,
) -> torch.Tensor:
    """:func:`waveform_to_clips` given only the parts of the waveform the clips cover.

    Args:
        segments: ``(first sample, samples)`` pieces of one mono waveform at ``sample_rate``, each
            clip lying inside one of them (cut at the waveform's end), as
            :func:`clip_windows` lays them out; the whole waveform is ``[(0, waveform)]``.
        sample_rate, bounds, num_mel_bins, target_length, mean, std: as :func:`waveform_to_clips`.

    A clip's mean is removed in place on its segment, so overlapping clips see each other's
    mean removal exactly as they do on the whole waveform (module docstring).
    """
    shared = [(offset, samples.detach().to(torch.float32, copy=True)) for offset, samples in segments]
    specs = []
    for start, end in bounds:
        offset, samples = next(((o, s) for o, s in shared if o <= start < o + s.numel()), shared[0])
        clip = samples[start - offset:end - offset]
        clip -= clip.mean()  # in place on the shared samples, as ImageBind (module docstring)
        specs.append((fbank_clip(clip, sample_rate, num_mel_bins, target_length) - mean) / std)
    return torch.stack(specs)
