"""Configuration of the audio plugin (ImageBind's feature recipe + a tiny spectrogram ViT)."""

from __future__ import annotations

from dataclasses import dataclass

from bind.plugin import PluginConfig

__all__ = ["AudioConfig"]


@dataclass
class AudioConfig(PluginConfig):
    """Audio plugin settings. Defaults reproduce ImageBind's audio preprocessing.

    Attributes:
        sample_rate: every input is resampled to this rate (ImageBind: 16 kHz).
        num_mel_bins, target_length: kaldi fbank size: 128 mel bins x 204 frames (2 s at 10 ms).
        clip_duration: seconds per clip.
        clips_per_sample: clips spread uniformly over a file at inference; their embeddings are averaged.
        train_clips_per_sample: clips per file when training (random start).
        mean, std: normalisation of the log-mel values (ImageBind's AudioSet statistics).
        min_duration: shorter inputs are refused (seconds).
        patch_size, width, depth, num_heads, mlp_ratio, drop_path_rate: the trunk (timm ViT).
        native_temperature, native_proj_dim: the native (augmentation-contrastive) objective.
    """

    logit_scale_init: float = 20.0
    logit_scale_learnable: bool = False
    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 204
    clip_duration: float = 2.0
    clips_per_sample: int = 3
    train_clips_per_sample: int = 1
    mean: float = -4.268
    std: float = 9.138
    min_duration: float = 0.1
    patch_size: int = 16
    width: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    native_temperature: float = 0.1
    native_proj_dim: int = 64
