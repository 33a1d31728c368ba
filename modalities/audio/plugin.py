"""The audio plugin: ImageBind features, a spectrogram ViT, and a native contrastive objective."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from bind.heads import l2_normalize
from bind.plugin import InputSource, ModalityPlugin
from modalities.audio.config import AudioConfig
from modalities.audio.features import clip_starts, waveform_to_clips
from modalities.audio.reading import read_waveform

__all__ = ["AudioPlugin"]


class AudioPlugin(ModalityPlugin):
    """Audio: a WAV/FLAC/OGG path or file bytes (any rate, any channels), or a waveform array
    ``(samples,)`` / ``(channels, samples)`` already at ``sample_rate``.

    ``load`` returns ``(clips, 1, 128, 204)`` normalised fbank spectrograms; ``collate`` stacks to
    ``(B, clips, 1, 128, 204)``. Embeddings of a sample's clips are averaged (as ImageBind does).
    """

    name = "audio"
    Config = AudioConfig
    sample_keys = ("flac", "wav", "ogg", "mp3")
    config: AudioConfig

    def build_trunk(self) -> tuple[nn.Module, int]:
        cfg = self.config
        # Spectrograms are zero-padded up to whole patches (204 frames -> 208 for 16-px patches).
        self.padded_size = tuple(math.ceil(n / cfg.patch_size) * cfg.patch_size
                                 for n in (cfg.num_mel_bins, cfg.target_length))
        trunk = VisionTransformer(
            img_size=self.padded_size, patch_size=cfg.patch_size, in_chans=1,
            num_classes=0, embed_dim=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio, drop_path_rate=cfg.drop_path_rate,
            global_pool="avg",
        )
        if cfg.native_loss_weight > 0:
            # SimCLR-style projection for the native objective; built only when used so that the
            # default model has no parameters without gradients.
            self.native_proj = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.GELU(),
                                             nn.Linear(cfg.width, cfg.native_proj_dim))
            self.augment = nn.Sequential(T.FrequencyMasking(freq_mask_param=24), T.TimeMasking(time_mask_param=40))
        return trunk, cfg.width

    def load(self, source: InputSource, *, train: bool = False) -> torch.Tensor:
        cfg = self.config
        wave = read_waveform(source, cfg.sample_rate, cfg.min_duration)
        duration = wave.numel() / cfg.sample_rate
        if train:
            last = max(duration - cfg.clip_duration, 0.0)
            starts = (torch.rand(cfg.train_clips_per_sample) * last).tolist()
        else:
            starts = clip_starts(duration, cfg.clip_duration, cfg.clips_per_sample)
        return waveform_to_clips(wave, cfg.sample_rate, starts=starts, clip_duration=cfg.clip_duration,
                                 num_mel_bins=cfg.num_mel_bins, target_length=cfg.target_length,
                                 mean=cfg.mean, std=cfg.std)

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(samples))

    def _clip_features(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, clips, 1, mel, frames) -> (B, clips, width)."""
        size, clips = batch.shape[:2]
        return self._trunk(batch.flatten(0, 1)).view(size, clips, -1)

    def _trunk(self, specs: torch.Tensor) -> torch.Tensor:
        """(N, 1, mel, frames) -> (N, width), padding to whole patches first."""
        pad_f, pad_m = self.padded_size[1] - specs.shape[-1], self.padded_size[0] - specs.shape[-2]
        return self.trunk(F.pad(specs, (0, pad_f, 0, pad_m)))

    def forward_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self._clip_features(batch).mean(1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(batch)[1]

    def forward_with_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Normalise per clip, average (ImageBind), then renormalise so the output is unit norm.
        clip_features = self._clip_features(batch)
        clip_embeddings = l2_normalize(self.head(clip_features))
        return clip_features.mean(1), l2_normalize(clip_embeddings.mean(1))

    def native_loss(self, batch: torch.Tensor) -> torch.Tensor | None:
        """InfoNCE between two augmentations (SpecAugment masks, time shift, gain) of each clip.

        It is computed on trunk features and never sees the anchor, so it rewards the trunk for
        keeping what distinguishes clips acoustically — rhythm, tempo, loudness — even where the
        image space cannot represent it (the visiocentrism mitigation).
        """
        if self.config.native_loss_weight <= 0:
            return None
        specs = batch[:, 0]  # (B, 1, mel, frames): the first clip of each sample
        views = [self.native_proj(self._trunk(self._augment(specs))) for _ in range(2)]
        a, b = (F.normalize(v, dim=-1) for v in views)
        logits = a @ b.T / self.config.native_temperature
        labels = torch.arange(len(a), device=a.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def _augment(self, specs: torch.Tensor) -> torch.Tensor:
        shift = int(torch.randint(-20, 21, ()).item())
        gain = 1 + 0.1 * torch.randn(specs.shape[0], 1, 1, 1, device=specs.device)
        return self.augment(torch.roll(specs, shifts=shift, dims=-1)) * gain
