"""The procedural multimodal world: scenes with image, depth, caption, audio and ground truth.

Every scene is deterministic in ``(seed, split, index)``. A scene is 1-3 solids on a floor in
front of a wall; the first one is the *main object*, whose category, colour and size are the
scene's attributes, which the caption describes and whose instrument the audio plays. The JSON
record lists every attribute, which modalities can observe it (``visual``, ``audio``, ``both``)
and whether the caption states it — the ground truth that the visiocentrism analysis needs.

Example::

    from anchorbind.pipelines.world import WorldConfig, generate
    for sample in generate(100, "train", seed=0, cfg=WorldConfig(), workers=2):
        sample["png"], sample["depth.png"], sample["txt"], sample["flac"], sample["json"]
"""

from anchorbind.pipelines.world.config import ATTRIBUTES, CATEGORIES, COLOURS, AttributeSpec, WorldConfig
from anchorbind.pipelines.world.generate import depth_png_bytes, generate, render_sample
from anchorbind.pipelines.world.render import Rendering, render
from anchorbind.pipelines.world.scene import ObjectSpec, Scene, make_scene

__all__ = ["ATTRIBUTES", "CATEGORIES", "COLOURS", "AttributeSpec", "ObjectSpec", "Rendering", "Scene", "WorldConfig",
           "depth_png_bytes", "generate", "make_scene", "render", "render_sample"]
