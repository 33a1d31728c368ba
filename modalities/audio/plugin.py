"""`AudioPlugin`: audio -> ImageBind fbank clips -> a spectrogram ViT -> the anchor's space."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from anchorbind.heads import l2_normalize
from anchorbind.modalities.audio.augment import SpectrogramAugment
from anchorbind.modalities.audio.config import AudioConfig
from anchorbind.modalities.audio.features import clip_bounds, random_clip_bounds, waveform_to_clips
from anchorbind.modalities.audio.reading import read_waveform
from anchorbind.plugin import InputSource, ModalityPlugin
from anchorbind.trunks import one_channel_vit

__all__ = ["AudioPlugin"]


class AudioPlugin(ModalityPlugin):
    """Audio files (WAV/FLAC/OGG/MP3, any rate and channels) or waveforms, as ImageBind fbank clips.

    Input: a path or the bytes of an audio file, or a float waveform array/tensor already at
    ``sample_rate`` shaped ``(samples,)`` or ``(channels, samples)``. Channels are averaged to
    mono and the waveform resampled to ``sample_rate`` (see :mod:`anchorbind.modalities.audio.reading`).

    Preprocessing: ImageBind's, exactly (:mod:`anchorbind.modalities.audio.features`): ``clips_per_sample``
    clips of ``clip_duration`` spread over the file (``train_clips_per_sample`` random clips when
    ``train=True``), each a kaldi log-mel fbank normalised with ImageBind's statistics.
    ``load`` returns ``(clips, 1, num_mel_bins, target_length)``; ``collate`` stacks to
    ``(B, clips, 1, num_mel_bins, target_length)`` float32.

    Model: a 1-channel timm ``VisionTransformer`` runs on every clip (zero-padded to whole
    patches). ``forward_features`` averages the pooled clip features, ``(B, width)``.
    ``forward`` normalises each clip's projected embedding, averages over clips as ImageBind
    does, and normalises the mean again so that every output has unit norm (a mean of unit
    vectors is shorter than 1, the more the clips disagree). Fixed logit scale 20 (ImageBind).
    """

    name: ClassVar[str] = "audio"
    Config: ClassVar[type[AudioConfig]] = AudioConfig
    sample_keys: ClassVar[tuple[str, ...]] = ("flac", "wav", "mp3", "ogg")
    config: AudioConfig

    def __init__(self, config: AudioConfig | Mapping[str, Any] | None = None, *, embed_dim: int) -> None:
        super().__init__(config, embed_dim=embed_dim)
        cfg = self.config
        self.native_head: nn.Module | None = None
        self.augment: SpectrogramAugment | None = None
        if cfg.native_loss_weight > 0:
            # Built only when the native objective is on, so a default model has no parameter
            # that never receives a gradient (DDP would need find_unused_parameters).
            self.native_head = nn.Sequential(
                nn.Linear(self.trunk_dim, self.trunk_dim), nn.GELU(), nn.Linear(self.trunk_dim, cfg.native_proj_dim)
            )
            self.augment = SpectrogramAugment(
                cfg.native_freq_mask, cfg.native_time_mask, cfg.native_max_shift, cfg.native_gain_db, cfg.std
            )

    # ------------------------------------------------------------------ trunk
    def build_trunk(self) -> tuple[nn.Module, int]:
        """A headless 1-channel timm ViT whose input is the spectrogram padded to whole patches."""
        cfg = self.config
        self.input_size = (cfg.num_mel_bins, cfg.target_length)
        # 128 x 204 with 16-pixel patches -> 128 x 208 (8 x 13 patches); the padding is zeros.
        self.padded_size = tuple(math.ceil(n / cfg.patch_size) * cfg.patch_size for n in self.input_size)
        trunk = one_channel_vit(self.padded_size, cfg)
        return trunk, cfg.width

    # ------------------------------------------------------------------ data
    def load(self, source: InputSource, *, train: bool = False) -> torch.Tensor:
        """Read one input into ``(clips, 1, num_mel_bins, target_length)`` normalised spectrograms.

        Args:
            source: a path, file bytes (format sniffed from the content), or a waveform at
                ``sample_rate`` shaped ``(samples,)`` / ``(channels, samples)``.
            train: take ``train_clips_per_sample`` clips at random starts (torch's RNG) instead
                of ``clips_per_sample`` evenly spread ones.

        Raises:
            InputError: naming ``source`` and the reason (see :func:`~anchorbind.modalities.audio.reading.read_waveform`).
        """
        cfg = self.config
        wave = read_waveform(source, cfg.sample_rate, cfg.min_duration)
        if train:
            bounds = random_clip_bounds(wave.numel(), cfg.sample_rate, cfg.clip_duration, cfg.train_clips_per_sample)
        else:
            bounds = clip_bounds(wave.numel(), cfg.sample_rate, cfg.clip_duration, cfg.clips_per_sample)
        return waveform_to_clips(wave, cfg.sample_rate, bounds, num_mel_bins=cfg.num_mel_bins,
                                 target_length=cfg.target_length, mean=cfg.mean, std=cfg.std)

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack samples from :meth:`load` (all with the same clip count) to ``(B, clips, 1, mel, frames)``."""
        shapes = {tuple(s.shape) for s in samples}
        if len(shapes) > 1:
            raise ValueError(f"audio samples have different shapes {sorted(shapes)}: do not mix train=True "
                             "and train=False samples in one batch")
        return torch.stack(list(samples))

    # ------------------------------------------------------------------ model
    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features averaged over each sample's clips, ``(B, width)``."""
        return self._clip_features(batch).mean(1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings ``(B, embed_dim)``: the renormalised mean of normalised clip embeddings."""
        return self.forward_with_features(batch)[1]

    def forward_with_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clip_features = self._clip_features(batch)
        clip_embeddings = l2_normalize(self.head(clip_features))
        return clip_features.mean(1), l2_normalize(clip_embeddings.mean(1))

    def native_loss(self, batch: torch.Tensor) -> torch.Tensor | None:
        """SimCLR-style InfoNCE between two augmented views of each sample's first clip, or None when off.

        Both views go through the trunk and a small projection MLP, never the anchor, so the loss
        rewards the trunk for keeping what tells clips apart acoustically — rhythm, tempo,
        loudness — even where the image space has nothing to match it with (the visiocentrism
        mitigation). Symmetric cross-entropy over the batch at ``native_temperature``; only the
        first clip is used because a sample's clips may overlap or, for short files, coincide,
        and would then be negatives of themselves.
        """
        if self.native_head is None or self.augment is None:
            return None
        specs = self._checked(batch)[:, 0]
        views = torch.cat([self.augment(specs), self.augment(specs)])
        projected = F.normalize(self.native_head(self._trunk(views)).float(), dim=-1)
        first, second = projected.chunk(2)
        logits = first @ second.T / self.config.native_temperature
        labels = torch.arange(len(first), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def _clip_features(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, clips, 1, mel, frames)`` -> ``(B, clips, width)``: the trunk on every clip at once."""
        batch = self._checked(batch)
        size, clips = batch.shape[:2]
        return self._trunk(batch.flatten(0, 1)).view(size, clips, -1)

    def _trunk(self, specs: torch.Tensor) -> torch.Tensor:
        """``(N, 1, mel, frames)`` -> ``(N, width)``, padding with zeros to whole patches first."""
        pad_mel, pad_frames = (p - n for p, n in zip(self.padded_size, self.input_size, strict=True))
        return self.trunk(F.pad(specs, (0, pad_frames, 0, pad_mel)))

    def _checked(self, batch: Any) -> torch.Tensor:
        expected = (1, *self.input_size)
        if not isinstance(batch, torch.Tensor) or batch.ndim != 5 or tuple(batch.shape[2:]) != expected:
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(
                f"audio batches are (batch, clips, {', '.join(map(str, expected))}) spectrograms from "
                f"AudioPlugin.load + collate, got {shape}"
            )
        return batch
