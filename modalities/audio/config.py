"""Configuration of the audio plugin: ImageBind's feature recipe, a spectrogram ViT, a native objective."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from anchorbind.errors import ConfigError
from anchorbind.modalities.audio.features import FRAME_LENGTH_MS
from anchorbind.trunks import ViTPluginConfig, vit_problems

__all__ = ["AudioConfig"]


@dataclass
class AudioConfig(ViTPluginConfig):
    """Audio plugin settings. The feature defaults are ImageBind's, so its features are reproduced exactly.

    Features (``imagebind/data.py``):
        sample_rate: every input is resampled to this rate (16 kHz).
        num_mel_bins, target_length: kaldi fbank of 128 mel bins, padded or cropped to 204 frames
            (a 2 s clip gives 198 frames at a 10 ms shift).
        clip_duration: seconds per clip (2).
        clips_per_sample: clips spread evenly over a file at inference, first at the start and
            last at the end (3); the plugin averages their embeddings.
        train_clips_per_sample: clips per file when training, each at a uniformly random start (1).
        mean, std: normalisation of the log-mel values (ImageBind's AudioSet statistics).
        min_duration: shorter inputs are refused (seconds). At least one 25 ms fbank frame.

    Input limits (an input beyond them is an :class:`~anchorbind.errors.InputError` naming it):
        max_duration: longer inputs are refused (seconds; ``None``: no limit). 600 s: only the
            clips' frames are decoded, so a long file costs no more than a short one, but three
            2 s clips stand for ten minutes poorly (cut longer recordings into pieces), and a
            limit read from the header also stops a corrupt or hostile header declaring hours.
        max_amplitude: an input with a sample beyond ``±max_amplitude`` (among the frames read)
            is refused (``None``: no limit). Float audio lies in [-1, 1]; codecs and mixes
            overshoot by a few dB. 100 (+40 dBFS) refuses integer PCM stored as float (peaks up
            to 32768) and garbage such as 1e30, whose power spectrum overflows to inf and
            whose NaN embedding would otherwise stop training. Integer PCM is always in range.

    Trunk: a 1-channel timm ``VisionTransformer`` over the ``1 x num_mel_bins x target_length``
    spectrogram, with the fields of :class:`~anchorbind.trunks.ViTPluginConfig` (shape, pooling,
    stem and attention options, ``tuning``; the defaults are tiny, for a CPU). Without
    ``patch_stride`` the spectrogram is zero-padded to whole patches; ImageBind's audio branch is
    ``patch_size`` 16, ``patch_stride`` 10 (12 x 19 patches, no padding), ``width`` 768, ``depth``
    12, ``num_heads`` 12, ``stem_bias: false``, ``stem_norm: true``, ``attn_bias_kv: true``,
    ``global_pool: token``, ``head_norm: false`` (``anchorbind import-imagebind`` sets them).

    Native objective (the visiocentrism mitigation, active when ``native_loss_weight > 0``):
    SimCLR-style InfoNCE between two augmented views of each clip, on trunk features.
        native_temperature: InfoNCE temperature.
        native_proj_dim: output width of the native projection MLP.
        native_freq_mask, native_time_mask: widest SpecAugment mask, in mel bins and frames.
        native_max_shift: largest circular time shift, in frames (10 ms each).
        native_gain_db: largest level change, in dB, each way. Small on purpose: loudness is one
            of the things the objective should keep, so the views must not differ much in it.

    The logit scale is fixed at 20, as ImageBind's audio encoder.
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
    max_duration: float | None = 600.0
    max_amplitude: float | None = 100.0

    native_temperature: float = 0.1
    native_proj_dim: int = 64
    native_freq_mask: int = 24
    native_time_mask: int = 40
    native_max_shift: int = 20
    native_gain_db: float = 2.0

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError("anchorbind.modalities.audio: " + "; ".join(problems))

    def _problems(self) -> Iterator[str]:
        positive = {
            "sample_rate": self.sample_rate, "num_mel_bins": self.num_mel_bins,
            "target_length": self.target_length, "clip_duration": self.clip_duration,
            "clips_per_sample": self.clips_per_sample, "train_clips_per_sample": self.train_clips_per_sample,
            "std": self.std, "native_temperature": self.native_temperature, "native_proj_dim": self.native_proj_dim,
        }
        for key, value in positive.items():
            if not value > 0:
                yield f"{key} must be positive, got {value}"
        if self.min_duration < FRAME_LENGTH_MS / 1000:
            yield f"min_duration must be at least one fbank frame ({FRAME_LENGTH_MS / 1000} s), got {self.min_duration}"
        if self.max_duration is not None and not self.max_duration >= self.min_duration:
            yield f"max_duration must be at least min_duration ({self.min_duration} s) or null, got {self.max_duration}"
        if self.max_amplitude is not None and not self.max_amplitude > 0:
            yield f"max_amplitude must be positive or null, got {self.max_amplitude}"
        yield from vit_problems(self)
        for key in ("native_freq_mask", "native_time_mask", "native_max_shift", "native_gain_db"):
            if getattr(self, key) < 0:
                yield f"{key} must not be negative, got {getattr(self, key)}"
