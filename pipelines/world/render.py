"""Rendering a scene: a shaded, anti-aliased RGB image and the metric depth (z-buffer) of the same view.

The camera looks at a back wall (``WALL_DISTANCE`` metres) above a floor that comes toward the
camera in the lower part of the frame. Objects are analytic 2.5-D shapes (:mod:`shapes`) with
Lambert + ambient + specular shading and a soft contact shadow, drawn far to near with a depth
test. Rendering happens at ``supersample`` x resolution and is box-filtered down, which
anti-aliases edges; the depth map is filtered the same way and stored in millimetres.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.world.config import WorldConfig
from pipelines.world.scene import SIZE_RADIUS, Scene
from pipelines.world.shapes import SHAPES

__all__ = ["COLOUR_RGB", "render"]

WALL_DISTANCE = 6.0
HORIZON = 0.62
NEAREST_FLOOR = 1.8

COLOUR_RGB = {
    "red": (0.86, 0.12, 0.10), "green": (0.15, 0.70, 0.20), "blue": (0.12, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10), "purple": (0.55, 0.18, 0.75), "orange": (0.98, 0.50, 0.08),
    "cyan": (0.10, 0.80, 0.85), "pink": (0.97, 0.50, 0.70),
}


def _background(scene: Scene, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    base = np.asarray(scene.background_colour, dtype=np.float32)
    kind = scene.attributes["background"]
    floor = v > HORIZON
    # wall at a fixed distance; floor depth grows toward the horizon
    t = np.clip((v - HORIZON) / (1 - HORIZON), 1e-3, 1)
    depth = np.where(floor, np.minimum(WALL_DISTANCE, NEAREST_FLOOR / t), WALL_DISTANCE).astype(np.float32)
    if kind == "sky":
        wall = base * (0.7 + 0.5 * (1 - v[..., None]))
        ground = base[::-1] * 0.5
    elif kind == "studio":
        r = np.sqrt((u - 0.5) ** 2 + (v - 0.45) ** 2)[..., None]
        wall = base * (1.1 - 0.9 * r)
        ground = base * 0.8 * (1.1 - 0.9 * r)
    elif kind == "checker":
        squares = ((np.floor(u * 8) + np.floor(v * 8)) % 2)[..., None]
        wall = base * (0.55 + 0.35 * squares)
        fu = (u - 0.5) / t + 0.5
        floor_sq = ((np.floor(fu * 4) + np.floor(1 / t)) % 2)[..., None]
        ground = base * (0.4 + 0.3 * floor_sq)
    else:  # stripes
        stripes = (np.floor((u + v) * 10) % 2)[..., None]
        wall = base * (0.6 + 0.35 * stripes)
        ground = base * 0.55
    rgb = np.where(floor[..., None], ground, wall)
    return np.clip(rgb, 0, 1).astype(np.float32), depth


def _draw_object(rgb, depth, obj, scene: Scene, u, v, light, ambient):
    radius = SIZE_RADIUS[obj.size] * (2.5 / obj.distance) ** 0.35 if obj is not scene.objects[0] else SIZE_RADIUS[
        obj.size]
    x, y = (u - obj.x) / radius, (v - obj.y) / radius
    inside = (np.abs(x) < 1.05) & (np.abs(y) < 1.05)
    if not inside.any():
        return
    rows, cols = np.nonzero(inside.any(1))[0], np.nonzero(inside.any(0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    mask, height, normal = SHAPES[obj.category](x[box], y[box])
    # soft contact shadow on whatever is behind, below the object
    shadow = np.exp(-(((u[box] - obj.x - 0.05) / (radius * 0.9)) ** 2 + ((v[box] - obj.y - radius * 0.85) / (
        radius * 0.25)) ** 2))
    rgb[box] *= 1 - 0.45 * shadow[..., None]
    physical = radius * obj.distance * 0.8
    z = obj.distance - np.asarray(height, dtype=np.float32) * physical
    visible = mask & (z < depth[box])
    diffuse = np.clip(np.tensordot(light, normal, axes=1), 0, 1)
    half = light + np.array([0, 0, 1.0])
    half /= np.linalg.norm(half)
    specular = np.clip(np.tensordot(half, normal, axes=1), 0, 1) ** 24
    colour = np.asarray(COLOUR_RGB[obj.colour], dtype=np.float32)
    shaded = colour * (ambient + (1 - ambient) * diffuse[..., None]) + 0.35 * specular[..., None]
    region = rgb[box]
    region[visible] = np.clip(shaded[visible], 0, 1)
    depth[box][visible] = z[visible]


def render(scene: Scene, cfg: WorldConfig) -> tuple[Image.Image, np.ndarray]:
    """The scene's RGB image (``image_size`` px) and depth map in metres (same size)."""
    size = cfg.image_size * cfg.supersample
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(grid + scene.camera_shift[1], grid + scene.camera_shift[0], indexing="ij")
    rgb, depth = _background(scene, u, v)
    light = np.asarray(scene.light, dtype=np.float32) * np.array([1, 1, -1], dtype=np.float32)
    ambient = 0.3 + 0.1 * scene.rng("light").random()
    for obj in sorted(scene.objects, key=lambda o: -o.distance):
        _draw_object(rgb, depth, obj, scene, u, v, light, ambient)
    noise = scene.rng("pixels").normal(0, 0.01, rgb.shape).astype(np.float32)
    rgb = np.clip(rgb + noise, 0, 1)
    s = cfg.supersample
    small = rgb.reshape(cfg.image_size, s, cfg.image_size, s, 3).mean((1, 3))
    depth_small = depth.reshape(cfg.image_size, s, cfg.image_size, s).mean((1, 3))
    return Image.fromarray((small * 255 + 0.5).astype(np.uint8)), depth_small.astype(np.float32)
