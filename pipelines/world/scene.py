"""Sampling a scene's attributes: deterministic per (seed, split, index)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.world.config import ATTRIBUTES, CATEGORIES, COLOURS, WorldConfig

__all__ = ["ObjectSpec", "Scene", "make_scene"]

SPLIT_CODES = {"train": 0, "test": 1, "val": 2}


@dataclass
class ObjectSpec:
    """One object: what it is and where (normalised image coordinates, metres)."""

    category: str
    colour: str
    size: str
    x: float
    y: float
    distance: float


@dataclass
class Scene:
    """Everything needed to render image, depth, caption and audio of one sample, consistently."""

    key: str
    split: str
    seed: int
    index: int
    attributes: dict[str, str]
    objects: list[ObjectSpec]
    background_colour: tuple[float, float, float]
    light: tuple[float, float, float]
    camera_shift: tuple[float, float]

    def rng(self, stream: str) -> np.random.Generator:
        """An independent generator per rendering stream, so changing one renderer never changes another."""
        code = sum(ord(c) * 31**i for i, c in enumerate(stream)) % (2**31)
        return np.random.default_rng([self.seed, SPLIT_CODES.get(self.split, 9), self.index, code])


SIZE_RADIUS = {"small": 0.13, "medium": 0.19, "large": 0.26}
POSITION_X = {"left": 0.3, "centre": 0.5, "right": 0.7}


def make_scene(seed: int, index: int, split: str, cfg: WorldConfig | None = None) -> Scene:
    """Sample scene ``index`` of ``split``; the same arguments always give the same scene."""
    rng = np.random.default_rng([seed, SPLIT_CODES.get(split, 9), index])
    pick = lambda name: str(rng.choice(ATTRIBUTES[name].values))  # noqa: E731
    attrs = {name: pick(name) for name in ATTRIBUTES}
    count = int(attrs["count"])
    main = ObjectSpec(attrs["category"], attrs["colour"], attrs["size"],
                      POSITION_X[attrs["position"]] + rng.uniform(-0.04, 0.04), rng.uniform(0.45, 0.6),
                      rng.uniform(2.0, 3.0))
    objects = [main]
    # Distractors: smaller, behind, in the free horizontal slots, other categories.
    free = [p for p in POSITION_X if p != attrs["position"]]
    rng.shuffle(free)
    for slot in free[: count - 1]:
        objects.append(ObjectSpec(
            str(rng.choice([c for c in CATEGORIES if c != main.category])), str(rng.choice(COLOURS)), "small",
            POSITION_X[slot] + rng.uniform(-0.03, 0.03), rng.uniform(0.3, 0.42), rng.uniform(3.5, 4.5)))
    light = rng.normal([-0.5, -0.6, -0.6], 0.15)
    light = tuple((light / np.linalg.norm(light)).tolist())
    return Scene(
        key=f"{split}{index:07d}", split=split, seed=seed, index=index, attributes=attrs, objects=objects,
        background_colour=tuple(rng.uniform(0.25, 0.85, 3).tolist()), light=light,
        camera_shift=tuple(rng.uniform(-0.03, 0.03, 2).tolist()),
    )
