"""The procedural multimodal world: scenes with image, depth, caption, audio and ground truth.

Every scene is deterministic in ``(seed, split, index)``. Its JSON record lists every attribute,
which modalities can observe it (``visual``, ``audio``, ``both``) and whether the caption states
it — the ground truth that the visiocentrism analysis needs.
"""

from pipelines.world.config import ATTRIBUTES, AttributeSpec, WorldConfig
from pipelines.world.generate import depth_png_bytes, generate, render_sample
from pipelines.world.scene import Scene, make_scene

__all__ = ["ATTRIBUTES", "AttributeSpec", "Scene", "WorldConfig", "depth_png_bytes", "generate", "make_scene",
           "render_sample"]
