"""Audio modality: ImageBind-exact kaldi fbank clips and a timm spectrogram ViT."""

from modalities.audio.augment import SpectrogramAugment
from modalities.audio.config import AudioConfig
from modalities.audio.features import clip_bounds, fbank_clip, random_clip_bounds, waveform_to_clips
from modalities.audio.plugin import AudioPlugin
from modalities.audio.reading import array_to_channels, decode_audio, read_waveform

__all__ = [
    "AudioConfig",
    "AudioPlugin",
    "SpectrogramAugment",
    "array_to_channels",
    "clip_bounds",
    "decode_audio",
    "fbank_clip",
    "random_clip_bounds",
    "read_waveform",
    "waveform_to_clips",
]
