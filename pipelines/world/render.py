"""Rendering a scene by ray casting: a shaded, anti-aliased RGB image and its metric depth (z-buffer).

One ray per sub-pixel leaves the pinhole camera (:mod:`camera`) and hits the floor, the back wall
or a solid (:mod:`shapes`); the nearest hit wins, and its camera-space ``z`` is the depth. The
same hits are shaded — Lambert + hemispheric ambient + Blinn-Phong specular, soft shadows from
one shadow ray per sub-pixel toward a jittered light, contact occlusion on the floor — and the
image is box-filtered from ``supersample`` x resolution (anti-aliasing). The depth map keeps, per
pixel, the nearest sub-pixel depth, so edges never invent depths that exist nowhere in the scene.

Each category has its own material (gloss) and surface cue (a label band on the cylinder, stripes
on the cone, a two-tone capsule, courses on the pyramid, bevelled edges on every polyhedron):
together with the silhouette these make the category recognisable to an ImageNet anchor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from anchorbind.pipelines.world.config import WorldConfig
from anchorbind.pipelines.world.scene import ObjectSpec, Scene
from anchorbind.pipelines.world.shapes import BOUNDS, SHAPES, apply

__all__ = ["COLOUR_RGB", "Rendering", "render"]

COLOUR_RGB = {
    "red": (0.86, 0.12, 0.10), "green": (0.15, 0.68, 0.20), "blue": (0.12, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10), "purple": (0.55, 0.18, 0.75), "orange": (0.98, 0.50, 0.08),
    "cyan": (0.10, 0.80, 0.85), "pink": (0.97, 0.50, 0.70),
}
"""sRGB albedo of each colour word."""

MATERIAL = {  # category -> (specular strength, shininess)
    "sphere": (0.6, 60.0), "cube": (0.15, 12.0), "cylinder": (0.35, 30.0), "cone": (0.25, 20.0),
    "torus": (0.55, 50.0), "pyramid": (0.1, 8.0), "capsule": (0.5, 60.0), "star": (0.6, 40.0),
    "cross": (0.2, 16.0), "diamond": (0.8, 90.0),
}
FLOOR_GLOSS = (0.06, 10.0)
EDGE_WIDTH = 0.05          # local units: bevel line width on polyhedra
LIGHT_SPREAD = 0.05        # angular jitter of shadow rays: the light's apparent size (soft shadows)
GAMMA = 2.2
DIAMOND_CENTRE_Y = BOUNDS["diamond"][0]   # the octahedron's equator (its facets flip there)


def _linear(rgb: tuple[float, ...]) -> np.ndarray:
    return np.asarray(rgb, np.float32) ** GAMMA


@dataclass
class Rendering:
    """What the camera sees.

    Attributes:
        image: the RGB image, ``image_size`` square.
        depth: ``(H, W)`` float32 camera-space depth ``z`` in metres (nearest sub-pixel per pixel).
        instance: ``(H, W)`` index of the object whose surface gives the pixel's depth (``-1``:
            floor or wall); the main object is ``0``.
    """

    image: Image.Image
    depth: np.ndarray
    instance: np.ndarray


def _light_direction(light: dict) -> np.ndarray:
    """Unit vector toward the light; azimuth 0 is behind the camera, positive from the right."""
    az, el = light["azimuth"], light["elevation"]
    return np.array([np.sin(az) * np.cos(el), np.sin(el), -np.cos(az) * np.cos(el)], np.float32)


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float32)


def _value_noise(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, cells: int = 16) -> np.ndarray:
    """Smooth noise in [0, 1] at continuous grid coordinates ``(a, b)`` (bilinear over a random lattice)."""
    grid = rng.random((cells, cells)).astype(np.float32)
    a0, b0 = np.floor(a), np.floor(b)
    fa, fb = (a - a0).astype(np.float32), (b - b0).astype(np.float32)
    fa, fb = fa * fa * (3 - 2 * fa), fb * fb * (3 - 2 * fb)
    i0, j0 = a0.astype(np.int64) % cells, b0.astype(np.int64) % cells
    i1, j1 = (i0 + 1) % cells, (j0 + 1) % cells
    top = grid[i0, j0] * (1 - fb) + grid[i0, j1] * fb
    bottom = grid[i1, j0] * (1 - fb) + grid[i1, j1] * fb
    return top * (1 - fa) + bottom * fa


def _background_albedo(scene: Scene, points: np.ndarray, on_floor: np.ndarray) -> np.ndarray:
    """Linear albedo ``(3, N)`` of floor and wall points for the scene's ``background`` kind."""
    rng = scene.rng("background")
    x, y, z = points
    wall, floor = _linear(scene.wall_colour), _linear(scene.floor_colour)
    kind = scene.attributes["background"]
    grain = _value_noise(rng, x * 1.5 + 50, np.where(on_floor, z, y) * 1.5 + 50)
    if kind == "studio":  # a seamless paper backdrop: wall and floor one colour, light falling off upward
        wall_rgb = wall[:, None] * (1.05 - 0.12 * y)[None]
        floor_rgb = wall[:, None] * np.full_like(x, 0.9)[None]
    elif kind == "checker":  # tiled floor, plain wall
        tiles = (np.floor(x / 0.5) + np.floor(z / 0.5)) % 2
        wall_rgb = wall[:, None] * (0.85 + 0.15 * grain)[None]
        floor_rgb = floor[:, None] * (0.3 + 0.7 * tiles)[None]
    elif kind == "stripes":  # striped wallpaper, wooden planks
        stripes = (np.floor(x / 0.22) % 2)
        wall_rgb = wall[:, None] * (0.55 + 0.45 * stripes)[None]
        planks = _value_noise(rng, np.floor(x / 0.3) * 7.3, z * 0.6)
        floor_rgb = floor[:, None] * (0.55 + 0.45 * planks * (0.8 + 0.2 * grain))[None]
    else:  # sky: a painted sky backdrop over grass-like ground
        height = np.clip(y / 4.0, 0, 1)
        sky = _linear((0.55, 0.75, 0.98)) * 0.5 + wall * 0.5
        wall_rgb = (sky[:, None] * (1 - height) + _linear((0.2, 0.35, 0.85))[:, None] * height)
        wall_rgb = wall_rgb * (0.85 + 0.3 * _value_noise(rng, x * 0.5 + 9, y * 2.0))[None]
        grass = _value_noise(rng, x * 12, z * 12, cells=32)
        floor_rgb = floor[:, None] * (0.45 + 0.55 * grass * (0.6 + 0.4 * grain))[None]
    return np.where(on_floor[None], floor_rgb, wall_rgb).astype(np.float32)


def _surface_albedo(obj: ObjectSpec, local: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """Linear albedo ``(3, K)`` of one solid at local hit points: its colour plus the category's cue."""
    colour = _linear(COLOUR_RGB[obj.colour])[:, None]
    white = np.full((3, 1), 0.85, np.float32)
    x, y, _ = local
    cue = np.zeros_like(x)                      # 0: own colour, 1: white
    if obj.category == "cylinder":
        cue = ((y > 0.6) & (y < 1.3)).astype(np.float32) * 0.75
    elif obj.category == "cone":
        cue = (((y > 0.45) & (y < 0.72)) | ((y > 1.0) & (y < 1.25))).astype(np.float32) * 0.85
    elif obj.category == "capsule":
        cue = (x > 0).astype(np.float32) * 0.85
    albedo = colour * (1 - cue) + white * cue
    if obj.category == "pyramid":
        albedo = albedo * np.where(np.mod(y * 6, 1) < 0.1, 0.55, 1.0)[None]
    elif obj.category == "diamond":   # harlequin facets: alternate faces lighter, like a cut gem
        facet = (x > 0) ^ (y > DIAMOND_CENTRE_Y) ^ (local[2] > 0)
        albedo = albedo * (1 - facet * 0.35) + white * facet * 0.35
    bevel = 0.35 + 0.65 * np.clip(edge / EDGE_WIDTH, 0, 1)
    return (albedo * bevel[None]).astype(np.float32)


def _bounding_sphere(obj: ObjectSpec) -> tuple[np.ndarray, float]:
    centre_y, radius = BOUNDS[obj.category]
    return np.array([obj.x, centre_y * obj.radius, obj.z], np.float32), radius * obj.radius * 1.02


def _may_hit(origins: np.ndarray, dirs: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Rays that meet a sphere ahead of their origin (a cheap superset of those hitting the solid)."""
    oc = origins - centre[:, None]
    b = (oc * dirs).sum(0)
    c = (oc * oc).sum(0) - radius**2
    disc = b * b - c
    return (disc >= 0) & (-b + np.sqrt(np.maximum(disc, 0)) > 0)


def _intersect(obj: ObjectSpec, origins: np.ndarray, dirs: np.ndarray):
    """World-space hit of ``obj``: ``(t, normal, local_points, edge)`` for the rays given."""
    rot = _yaw_matrix(obj.yaw)
    pos = np.array([obj.x, 0.0, obj.z], np.float32)[:, None]
    o_local = apply(rot.T, origins - pos) / obj.radius
    d_local = apply(rot.T, dirs)
    hit = SHAPES[obj.category](o_local, d_local)
    local = o_local + d_local * np.where(np.isfinite(hit.t), hit.t, 0)
    return hit.t * obj.radius, apply(rot, hit.normal), local, hit.edge


def _shadow(scene: Scene, points: np.ndarray, normals: np.ndarray, owner: np.ndarray, light: np.ndarray,
            lit: np.ndarray) -> np.ndarray:
    """1 where a lit point's shadow ray (toward a jittered point of the light) is blocked, else 0.

    A solid never shadows itself here: convex solids cannot, and for the torus, star and cross the
    self-shadow is left out (it would need a second intersection per solid for little visual gain).
    """
    rng = scene.rng("shadow")
    dirs = light[:, None] + LIGHT_SPREAD * rng.standard_normal(points.shape).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    origins = points + normals * 2e-3
    blocked = np.zeros(points.shape[1], np.float32)
    for index, obj in enumerate(scene.objects):
        centre, radius = _bounding_sphere(obj)
        rays = np.nonzero(lit & (owner != index) & _may_hit(origins, dirs, centre, radius))[0]
        if rays.size:
            t, *_ = _intersect(obj, origins[:, rays], dirs[:, rays])
            blocked[rays[np.isfinite(t)]] = 1
    return blocked


def _contact_occlusion(scene: Scene, points: np.ndarray, on_floor: np.ndarray) -> np.ndarray:
    """Darkening of the floor right around each solid's footprint (ambient light it cannot reach)."""
    occlusion = np.ones(points.shape[1], np.float32)
    for obj in scene.objects:
        reach = BOUNDS[obj.category][1] * obj.radius * 0.9
        d2 = ((points[0] - obj.x) ** 2 + (points[2] - obj.z) ** 2) / reach**2
        occlusion *= 1 - 0.5 * np.exp(-d2) * on_floor
    return occlusion


def render(scene: Scene, cfg: WorldConfig) -> Rendering:
    """Ray-cast ``scene`` into its image, depth map and instance map (same camera, same pixels)."""
    size, ss = cfg.image_size, cfg.supersample
    side = size * ss
    camera = scene.camera
    dirs, z_factor = camera.rays(side)
    origin = camera.position.astype(np.float32)[:, None]
    n = dirs.shape[1]

    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(dirs[1] < 0, -origin[1] / dirs[1], np.inf)
        t_wall = np.where(dirs[2] > 0, (scene.wall_distance - origin[2]) / dirs[2], np.inf)
    on_floor = t_floor < t_wall
    t = np.minimum(t_floor, t_wall).astype(np.float32)
    normals = np.zeros((3, n), np.float32)
    normals[1, on_floor] = 1
    normals[2, ~on_floor] = -1
    owner = np.full(n, -1, np.int64)
    albedo = np.zeros((3, n), np.float32)
    gloss = np.zeros((2, n), np.float32)
    gloss[:, on_floor] = np.array(FLOOR_GLOSS, np.float32)[:, None]

    for index, obj in enumerate(scene.objects):
        centre, radius = _bounding_sphere(obj)
        rays = np.nonzero(_may_hit(origin, dirs, centre, radius))[0]
        if rays.size == 0:
            continue
        t_obj, n_obj, local, edge = _intersect(obj, origin, dirs[:, rays])
        nearer = t_obj < t[rays]
        won = rays[nearer]
        t[won] = t_obj[nearer]
        normals[:, won] = n_obj[:, nearer]
        owner[won] = index
        albedo[:, won] = _surface_albedo(obj, local[:, nearer], edge[nearer])
        gloss[:, won] = np.array(MATERIAL[obj.category], np.float32)[:, None]

    points = origin + dirs * t
    background = owner < 0
    albedo[:, background] = _background_albedo(scene, points[:, background], on_floor[background])
    on_floor &= background

    light = _light_direction(scene.light)
    light_rgb = np.asarray(scene.light["tint"], np.float32)[:, None] * scene.light["intensity"]
    lambert = np.clip(apply(light[None], normals)[0], 0, None)
    lit = 1 - _shadow(scene, points, normals, owner, light, lambert > 0)
    ambient = scene.light["ambient"] * (0.7 + 0.3 * normals[1]) * _contact_occlusion(scene, points, on_floor)
    halfway = light[:, None] - dirs
    halfway /= np.linalg.norm(halfway, axis=0, keepdims=True)
    specular = gloss[0] * np.clip((halfway * normals).sum(0), 0, 1) ** gloss[1] * (lambert > 0)
    rgb = albedo * ambient[None] + light_rgb * (albedo * lambert[None] + specular[None]) * lit[None]

    image = rgb.reshape(3, side, side).transpose(1, 2, 0)
    centres = (np.arange(side, dtype=np.float32) + 0.5) / side * 2 - 1
    image *= (1 - 0.12 * (centres[:, None] ** 2 + centres[None, :] ** 2))[..., None]   # lens vignetting
    image = np.clip(image, 0, 1) ** (1 / GAMMA)
    image = image + scene.rng("sensor").normal(0, 0.008, image.shape).astype(np.float32)
    image = image.reshape(size, ss, size, ss, 3).mean((1, 3))
    blocks = (t * z_factor).reshape(size, ss, size, ss).transpose(0, 2, 1, 3).reshape(size, size, ss * ss)
    nearest = blocks.argmin(-1)[..., None]
    depth = np.take_along_axis(blocks, nearest, -1)[..., 0]
    owners = owner.reshape(size, ss, size, ss).transpose(0, 2, 1, 3).reshape(size, size, ss * ss)
    instance = np.take_along_axis(owners, nearest, -1)[..., 0]
    return Rendering(Image.fromarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)),
                     depth.astype(np.float32), instance)
