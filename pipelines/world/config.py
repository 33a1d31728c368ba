"""The world's vocabulary and knobs: attributes, their values, and who can observe them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ATTRIBUTES", "AttributeSpec", "WorldConfig"]


@dataclass(frozen=True)
class AttributeSpec:
    """One ground-truth attribute of a scene.

    Attributes:
        values: the possible values (categorical or ordinal).
        observability: ``visual`` (only the image/depth show it), ``audio`` (only the sound carries
            it) or ``both``. This is what the visiocentrism analysis groups by.
        kind: ``categorical`` or ``ordinal``.
    """

    values: tuple[str, ...]
    observability: str
    kind: str = "categorical"


CATEGORIES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")

ATTRIBUTES: dict[str, AttributeSpec] = {
    # shared: the category is seen (shape) and heard (timbre); size is seen and heard (pitch)
    "category": AttributeSpec(CATEGORIES, "both"),
    "size": AttributeSpec(("small", "medium", "large"), "both", "ordinal"),
    # visual only
    "colour": AttributeSpec(COLOURS, "visual"),
    "position": AttributeSpec(("left", "centre", "right"), "visual"),
    "count": AttributeSpec(("1", "2", "3"), "visual", "ordinal"),
    "background": AttributeSpec(("sky", "studio", "checker", "stripes"), "visual"),
    # audio only
    "beats": AttributeSpec(("1", "2", "3", "4"), "audio", "ordinal"),
    "tempo": AttributeSpec(("slow", "fast"), "audio", "ordinal"),
    "loudness": AttributeSpec(("quiet", "loud"), "audio", "ordinal"),
}


@dataclass
class WorldConfig:
    """Rendering and synthesis settings.

    Attributes:
        image_size: output image side in pixels (rendered at ``supersample`` x and downsampled).
        supersample: anti-aliasing factor.
        sample_rate: audio rate (Hz).
        audio_seconds: clip length.
        image_format: ``png`` (lossless) or ``jpg``.
        sound_caption_rate: fraction of captions that also describe the sound (beats/tempo/loudness),
            so that text->audio retrieval by non-visual attributes can be measured.
    """

    image_size: int = 160
    supersample: int = 2
    sample_rate: int = 16000
    audio_seconds: float = 3.0
    image_format: str = "png"
    sound_caption_rate: float = 0.3
