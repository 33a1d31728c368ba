"""Audio modality: ImageBind-compatible kaldi fbank features and a timm spectrogram ViT."""

from modalities.audio.config import AudioConfig
from modalities.audio.features import clip_starts, log_mel, waveform_to_clips
from modalities.audio.plugin import AudioPlugin
from modalities.audio.reading import read_waveform

__all__ = ["AudioConfig", "AudioPlugin", "clip_starts", "log_mel", "read_waveform", "waveform_to_clips"]
