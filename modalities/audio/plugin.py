"""`AudioPlugin`: audio -> ImageBind fbank clips -> a spectrogram ViT -> the anchor's space."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from anchorbind.heads import l2_normalize
from anchorbind.modalities.audio.augment import SpectrogramAugment
from anchorbind.modalities.audio.config import AudioConfig
from anchorbind.modalities.audio.processor import AudioProcessor
from anchorbind.plugin import ModalityPlugin
from anchorbind.trunks import build_vit

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
    ``(B, clips, 1, num_mel_bins, target_length)`` float32. Both are the
    :class:`~anchorbind.modalities.audio.processor.AudioProcessor`'s (``self.processor``).

    Model: a 1-channel timm ``VisionTransformer`` runs on every clip (zero-padded to whole
    patches). ``forward_features`` averages the pooled clip features, ``(B, width)``.
    ``forward`` normalises each clip's projected embedding, averages over clips as ImageBind
    does, and normalises the mean again so that every output has unit norm (a mean of unit
    vectors is shorter than 1, the more the clips disagree). Fixed logit scale 20 (ImageBind).
    """

    name: ClassVar[str] = "audio"
    prompt_templates: ClassVar[tuple[str, ...]] = ("a {}.", "the sound of a {}.", "a recording of a {}.",
                                                   "audio of a {}.")
    perceives: ClassVar[tuple[str, ...]] = ("audio",)
    Config: ClassVar[type[AudioConfig]] = AudioConfig
    Processor: ClassVar[type[AudioProcessor]] = AudioProcessor
    sample_keys: ClassVar[tuple[str, ...]] = ("flac", "wav", "mp3", "ogg")
    config: AudioConfig

    @classmethod
    def example_inputs(cls) -> list[Any]:
        """2.5 s tones at the default ``sample_rate``: two float32 waveforms and a stereo WAV file's bytes.

        Different content: 220 Hz and 660 Hz sines, and a 440 Hz tone with a 3 Hz tremolo.
        """
        import io

        import numpy as np
        import soundfile as sf

        rate = cls.Config().sample_rate
        time = np.arange(int(2.5 * rate)) / rate
        low = (0.3 * np.sin(2 * np.pi * 220.0 * time)).astype(np.float32)
        high = (0.3 * np.sin(2 * np.pi * 660.0 * time)).astype(np.float32)
        tremolo = 0.3 * np.sin(2 * np.pi * 440.0 * time) * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * time))
        wav = io.BytesIO()
        sf.write(wav, np.stack([tremolo, 0.5 * tremolo], axis=1).astype(np.float32), rate, format="WAV",
                 subtype="PCM_16")
        return [low, high, wav.getvalue()]

    @classmethod
    def example_bad_inputs(cls) -> list[Any]:
        """Empty bytes, bytes that are no audio, NaN / silent / too short waveforms, and a wrong type."""
        import numpy as np

        rate = cls.Config().sample_rate
        return [b"", b"RIFF not really a wave file", np.full(rate, np.nan, dtype=np.float32),
                np.zeros(rate, dtype=np.float32), np.ones(4, dtype=np.float32), object()]

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
        """A headless 1-channel timm ViT on the spectrogram.

        Without ``patch_stride`` the spectrogram is zero-padded to whole patches (128 x 204 with
        16-pixel patches -> 128 x 208, 8 x 13 patches); with it (ImageBind: patch 16, stride 10)
        patches overlap and nothing is padded (12 x 19 patches; the last frames that do not fill
        a patch are not read).
        """
        cfg = self.config
        self.input_size = (cfg.num_mel_bins, cfg.target_length)
        if cfg.patch_stride is None:
            self.padded_size = tuple(math.ceil(n / cfg.patch_size) * cfg.patch_size for n in self.input_size)
        else:
            self.padded_size = self.input_size
        trunk = build_vit(self.padded_size, cfg)
        return trunk, cfg.width

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
