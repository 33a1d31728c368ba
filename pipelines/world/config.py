"""The world's vocabulary and knobs: attributes, their values, and who can observe them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ATTRIBUTES", "CATEGORIES", "COLOURS", "SPLITS", "AttributeSpec", "WorldConfig", "refuse"]

SPLITS = ("train", "val", "test")
"""Splits have independent random streams; held-out caption families appear only in ``test``."""


def refuse(message: str) -> None:
    """Raise :class:`anchorbind.errors.ConfigError` with ``message``.

    Imported on demand: importing the ``bind`` package pulls in torch, which world worker
    processes never need (it would add seconds to every worker start).
    """
    from anchorbind.errors import ConfigError

    raise ConfigError(message)


@dataclass(frozen=True)
class AttributeSpec:
    """One ground-truth attribute of a scene.

    Attributes:
        kind: ``categorical`` (unordered values) or ``ordinal`` (values listed in increasing order).
        values: the possible values.
        observability: ``visual`` (only the image, and for geometry the depth map, show it), ``audio``
            (only the sound carries it) or ``both``. This is what the visiocentrism analysis groups by.
        stated_in_caption: whether some caption family can state it (the JSON record says, per
            sample, whether *its* caption does).
        carried_by: the sample's files that carry it (``image``, ``depth``, ``audio``); finer than
            ``observability`` (depth sees geometry, not colour).
    """

    kind: str
    values: tuple[str, ...]
    observability: str
    stated_in_caption: bool
    carried_by: tuple[str, ...]


CATEGORIES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "capsule", "star", "cross", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")
BACKGROUNDS = ("studio", "checker", "stripes", "sky")

ATTRIBUTES: dict[str, AttributeSpec] = {
    # shared: the category is seen (shape) and heard (timbre); size is seen and heard (pitch)
    "category": AttributeSpec("categorical", CATEGORIES, "both", True, ("image", "depth", "audio")),
    "size": AttributeSpec("ordinal", ("small", "medium", "large"), "both", True, ("image", "depth", "audio")),
    # visual only
    "colour": AttributeSpec("categorical", COLOURS, "visual", True, ("image",)),
    "position": AttributeSpec("ordinal", ("left", "centre", "right"), "visual", True, ("image", "depth")),
    "count": AttributeSpec("ordinal", ("1", "2", "3"), "visual", True, ("image", "depth")),
    "background": AttributeSpec("categorical", BACKGROUNDS, "visual", True, ("image",)),
    # audio only
    "beats": AttributeSpec("ordinal", ("1", "2", "3", "4"), "audio", True, ("audio",)),
    "tempo": AttributeSpec("ordinal", ("slow", "fast"), "audio", True, ("audio",)),
    "loudness": AttributeSpec("ordinal", ("quiet", "loud"), "audio", True, ("audio",)),
}
"""Every attribute of a scene, in the order they are sampled."""

IMAGE_FORMATS = ("png", "jpg")


@dataclass
class WorldConfig:
    """Rendering and synthesis settings (the scenes themselves depend only on the seed).

    Attributes:
        image_size: output image side in pixels (rendered at ``supersample`` x and box-filtered down).
        supersample: anti-aliasing factor (rays per pixel along each axis).
        image_format: ``png`` (lossless) or ``jpg``.
        jpeg_quality: quality of ``jpg`` images.
        sample_rate: audio rate (Hz).
        audio_seconds: clip length (at least 2.5 s, so four slow beats fit).
        noise_level: standard deviation of the background noise relative to full scale (its colour
            and exact level are jittered per scene).
        sound_caption_rate: fraction of captions that also describe the sound (beats/tempo/loudness),
            so that text->audio retrieval by non-visual attributes can be measured.
    """

    image_size: int = 160
    supersample: int = 2
    image_format: str = "png"
    jpeg_quality: int = 92
    sample_rate: int = 16000
    audio_seconds: float = 3.0
    noise_level: float = 0.004
    sound_caption_rate: float = 0.3

    def __post_init__(self) -> None:
        checks = (
            (self.image_size >= 16, f"image_size: must be >= 16, got {self.image_size}"),
            (self.supersample >= 1, f"supersample: must be >= 1, got {self.supersample}"),
            (self.image_format in IMAGE_FORMATS,
             f"image_format: must be one of {IMAGE_FORMATS}, got {self.image_format!r}"),
            (1 <= self.jpeg_quality <= 100, f"jpeg_quality: must be in [1, 100], got {self.jpeg_quality}"),
            (self.sample_rate >= 8000, f"sample_rate: must be >= 8000 Hz, got {self.sample_rate}"),
            (self.audio_seconds >= 2.5, f"audio_seconds: must be >= 2.5 (four slow beats), got {self.audio_seconds}"),
            (self.noise_level >= 0, f"noise_level: must be >= 0, got {self.noise_level}"),
            (0 <= self.sound_caption_rate <= 1,
             f"sound_caption_rate: must be in [0, 1], got {self.sound_caption_rate}"),
        )
        for ok, message in checks:
            if not ok:
                refuse(f"world.{message}")
