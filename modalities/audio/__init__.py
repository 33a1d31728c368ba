"""Audio modality: ImageBind-exact kaldi fbank clips and a timm spectrogram ViT."""

from anchorbind.modalities.audio.augment import SpectrogramAugment
from anchorbind.modalities.audio.config import AudioConfig
from anchorbind.modalities.audio.features import (
    clip_bounds,
    clip_windows,
    fbank_clip,
    random_clip_bounds,
    segments_to_clips,
    waveform_to_clips,
)
from anchorbind.modalities.audio.plugin import AudioPlugin
from anchorbind.modalities.audio.processor import AudioProcessor
from anchorbind.modalities.audio.reading import (
    AudioWindows,
    array_to_channels,
    decode_audio,
    read_waveform,
    read_windows,
)

__all__ = [
    "AudioConfig",
    "AudioPlugin",
    "AudioProcessor",
    "AudioWindows",
    "SpectrogramAugment",
    "array_to_channels",
    "clip_bounds",
    "clip_windows",
    "decode_audio",
    "fbank_clip",
    "random_clip_bounds",
    "read_waveform",
    "read_windows",
    "segments_to_clips",
    "waveform_to_clips",
]
