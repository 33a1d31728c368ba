"""`AudioProcessor`: audio files or waveforms -> ImageBind fbank clips, with no trunk attached."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from anchorbind.errors import InputError
from anchorbind.modalities.audio.config import AudioConfig
from anchorbind.modalities.audio.features import clip_bounds, random_clip_bounds, segments_to_clips
from anchorbind.modalities.audio.reading import read_windows
from anchorbind.processor import InputSource, Processor

__all__ = ["AudioProcessor"]


class AudioProcessor(Processor):
    """Audio files (WAV/FLAC/OGG/MP3, any rate and channels) or waveforms, as ImageBind fbank clips.

    Input: a path or the bytes of an audio file, or a float waveform array/tensor already at
    ``sample_rate`` shaped ``(samples,)`` or ``(channels, samples)``. Channels are averaged to
    mono and the waveform resampled to ``sample_rate`` (see :mod:`anchorbind.modalities.audio.reading`).

    Preprocessing: ImageBind's, exactly (:mod:`anchorbind.modalities.audio.features`):
    ``clips_per_sample`` clips of ``clip_duration`` spread over the file
    (``train_clips_per_sample`` random clips when ``train=True``), each a kaldi log-mel fbank
    normalised with ImageBind's statistics. :meth:`load` returns
    ``(clips, 1, num_mel_bins, target_length)``; :meth:`collate` stacks to
    ``(B, clips, 1, num_mel_bins, target_length)`` float32.

    Cost: a file's clips are chosen from its header and only their frames are decoded
    (:func:`~anchorbind.modalities.audio.reading.read_windows`), so time and memory do not grow
    with the file's length; files over ``max_duration`` are refused before decoding.
    """

    config: AudioConfig

    def load(self, source: InputSource, *, train: bool = False) -> torch.Tensor:
        """Read one input into ``(clips, 1, num_mel_bins, target_length)`` normalised spectrograms.

        Args:
            source: a path, file bytes (format sniffed from the content), or a waveform at
                ``sample_rate`` shaped ``(samples,)`` / ``(channels, samples)``.
            train: take ``train_clips_per_sample`` clips at random starts (torch's RNG) instead
                of ``clips_per_sample`` evenly spread ones.

        Raises:
            InputError: naming ``source`` and the reason (see
                :func:`~anchorbind.modalities.audio.reading.read_windows`): unreadable, truncated,
                silent, NaN, too short or over ``max_duration``, samples beyond
                ``max_amplitude``, or features that are not finite.
        """
        cfg = self.config

        def sampler(num_samples: int) -> list[tuple[int, int]]:
            if train:
                return random_clip_bounds(num_samples, cfg.sample_rate, cfg.clip_duration, cfg.train_clips_per_sample)
            return clip_bounds(num_samples, cfg.sample_rate, cfg.clip_duration, cfg.clips_per_sample)

        windows = read_windows(source, cfg.sample_rate, sampler, min_duration=cfg.min_duration,
                               max_duration=cfg.max_duration, max_amplitude=cfg.max_amplitude)
        clips = segments_to_clips(windows.segments, cfg.sample_rate, windows.bounds, num_mel_bins=cfg.num_mel_bins,
                                  target_length=cfg.target_length, mean=cfg.mean, std=cfg.std)
        if not torch.isfinite(clips).all():  # max_amplitude off or huge: the power spectrum overflowed
            raise InputError(source, "the log-mel features are not finite (samples far outside [-1, 1]); "
                                     "max_amplitude refuses such inputs by their peak", self.modality)
        return clips

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack samples from :meth:`load` (all with the same clip count) to ``(B, clips, 1, mel, frames)``."""
        if len(samples) == 0:
            raise ValueError("cannot collate an empty list of audio samples")
        shapes = {tuple(s.shape) for s in samples}
        if len(shapes) > 1:
            raise ValueError(f"audio samples have different shapes {sorted(shapes)}: do not mix train=True "
                             "and train=False samples in one batch")
        return torch.stack(list(samples))
