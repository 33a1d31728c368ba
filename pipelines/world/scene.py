"""Sampling a scene: its attributes and every nuisance parameter, deterministic per (seed, split, index).

A scene holds 1-3 objects standing on a floor in front of a back wall. The **first object is the
main object**: its category, colour and size are the scene's ``category``/``colour``/``size``
attributes, the caption describes it and the sound is its instrument. It is the nearest and
largest; the others ("distractors") are smaller, further back, of other categories, and only
show up in ``count`` and in the image/depth. Camera pose and field of view, light direction and
colour, wall distance and background colours are jittered per scene (they are recorded in the
JSON record but are not attributes).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from anchorbind.pipelines.world.camera import Camera
from anchorbind.pipelines.world.config import ATTRIBUTES, CATEGORIES, COLOURS, SPLITS, WorldConfig, refuse

__all__ = ["POSITION_NDC", "SIZE_RADIUS", "ObjectSpec", "Scene", "make_scene"]

SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
"""Each split seeds its own random streams: the same index in two splits is two unrelated scenes."""
SIZE_RADIUS = {"small": 0.3, "medium": 0.4, "large": 0.52}
"""Metres per local unit of the main object (the solids are about two units tall)."""
POSITION_NDC = {"left": -0.42, "centre": 0.0, "right": 0.42}
"""Horizontal image coordinate (-1 left edge, +1 right edge) of the main object's centre per ``position``."""
FACING_YAW = {"cube": (0.35, 1.2), "pyramid": (0.3, 1.25), "diamond": (0.25, 1.3)}
"""Yaw range (radians) per category; faceted solids turn so two faces show, the rest face the camera."""


@dataclass
class ObjectSpec:
    """One solid on the floor.

    Attributes:
        category, colour, size: what it is (``size`` is the nominal level; ``radius`` the metric scale).
        x, z: floor position in metres (``x`` right, ``z`` away from the camera).
        radius: metres per local shape unit.
        yaw: rotation about the vertical axis (radians).
        image_x: where its centre lands horizontally in the image (-1 left, +1 right).
    """

    category: str
    colour: str
    size: str
    x: float
    z: float
    radius: float
    yaw: float
    image_x: float = 0.0


@dataclass
class Scene:
    """Everything needed to render image, depth, caption and audio of one sample, consistently."""

    key: str
    split: str
    seed: int
    index: int
    attributes: dict[str, str]
    objects: list[ObjectSpec]
    camera: Camera
    light: dict[str, Any]
    wall_distance: float
    wall_colour: tuple[float, float, float]
    floor_colour: tuple[float, float, float]
    extra: dict[str, Any] = field(default_factory=dict)

    def rng(self, stream: str) -> np.random.Generator:
        """An independent generator per rendering stream, so changing one renderer never changes another."""
        return np.random.default_rng([self.seed, SPLIT_CODES[self.split], self.index, zlib.crc32(
            stream.encode())])

    def record(self) -> dict[str, Any]:
        """The scene's continuous ground truth (objects, camera, light, room) as JSON-ready values."""
        return {"objects": [asdict(o) for o in self.objects], "camera": asdict(self.camera), "light": self.light,
                "wall_distance": self.wall_distance, "wall_colour": list(self.wall_colour),
                "floor_colour": list(self.floor_colour)}


def _yaw(rng: np.random.Generator, category: str) -> float:
    low, high = FACING_YAW.get(category, (-0.55, 0.55))
    return float(rng.uniform(low, high))


def _place(camera: Camera, target_x: float, z: float, height: float) -> tuple[float, float]:
    """Floor ``x`` that puts a point at depth ``z`` and ``height`` on image column ``target_x``."""
    x = target_x * z / camera.focal
    for _ in range(3):  # the projection is nearly linear in x: a few Newton steps land it exactly
        u = camera.project(np.array([x, height, z]))[0]
        x += (target_x - u) * z / camera.focal
    return float(x), float(camera.project(np.array([x, height, z]))[0])


def _colour(rng: np.random.Generator, low: float, high: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(low, high, 3))


def make_scene(seed: int, index: int, split: str, cfg: WorldConfig | None = None) -> Scene:
    """Sample scene ``index`` of ``split``; the same arguments always give the same scene.

    Args:
        seed: world seed; different seeds give unrelated worlds.
        index: sample number within the split.
        split: ``train``, ``test`` or ``val`` (independent streams; the caption grammar depends on it).
        cfg: world settings; accepted for a uniform signature (a scene does not depend on them).

    Raises:
        ConfigError: an unknown split, or a negative seed or index.
    """
    if split not in SPLITS:
        refuse(f"world split: must be one of {SPLITS}, got {split!r}")
    if seed < 0 or index < 0:
        refuse(f"world seed and index must be >= 0, got seed={seed}, index={index}")
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    attrs = {name: str(rng.choice(spec.values)) for name, spec in ATTRIBUTES.items()}
    camera = Camera(height=float(rng.uniform(1.15, 1.55)), pitch=float(np.radians(rng.uniform(10, 16))),
                    yaw=float(np.radians(rng.uniform(-4, 4))), roll=float(np.radians(rng.uniform(-2.5, 2.5))),
                    fov=float(np.radians(rng.uniform(46, 54))))
    radius = SIZE_RADIUS[attrs["size"]] * float(rng.uniform(0.95, 1.05))
    z = float(rng.uniform(2.4, 3.0))
    target = POSITION_NDC[attrs["position"]] + float(rng.uniform(-0.04, 0.04))
    x, image_x = _place(camera, target, z, radius)
    objects = [ObjectSpec(attrs["category"], attrs["colour"], attrs["size"], x, z, radius,
                          _yaw(rng, attrs["category"]), image_x)]
    free = [p for p in POSITION_NDC if p != attrs["position"]]
    rng.shuffle(free)
    others = [c for c in CATEGORIES if c != attrs["category"]]
    for slot in free[: int(attrs["count"]) - 1]:
        category, size = str(rng.choice(others)), str(rng.choice(["small", "medium"]))
        radius = SIZE_RADIUS[size] * float(rng.uniform(0.65, 0.8))
        z = float(rng.uniform(3.6, 4.6))
        x, image_x = _place(camera, POSITION_NDC[slot] * 1.1 + float(rng.uniform(-0.05, 0.05)), z, radius)
        objects.append(ObjectSpec(category, str(rng.choice(COLOURS)), size, x, z, radius, _yaw(rng, category),
                                  image_x))
    azimuth = float(rng.choice([-1, 1]) * rng.uniform(0.4, 1.3))
    light = {"azimuth": azimuth, "elevation": float(rng.uniform(0.55, 1.1)),
             "intensity": float(rng.uniform(0.85, 1.15)), "tint": [float(c) for c in 1 + rng.uniform(-0.08, 0.08, 3)],
             "ambient": float(rng.uniform(0.22, 0.38))}
    wall = _colour(rng, 0.15, 0.85)
    floor = _colour(rng, 0.1, 0.7)
    return Scene(key=f"{split}{index:07d}", split=split, seed=seed, index=index, attributes=attrs, objects=objects,
                 camera=camera, light=light, wall_distance=float(rng.uniform(5.5, 7.5)), wall_colour=wall,
                 floor_colour=floor)
