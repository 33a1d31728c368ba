"""Exact ray intersections with the world's solids, vectorised over rays with numpy.

Every solid lives in its own *local* frame: it rests on the floor (``y = 0`` is its lowest point),
``y`` points up and its size is about two units (the renderer scales it by the object's radius in
metres). A shape is a function ``(origins, directions) -> Hit`` where ``origins`` is ``(3, 1)``
(all camera rays start at the camera) or ``(3, N)`` (shadow rays) and ``directions`` is ``(3, N)``
of unit vectors, both in the local frame. Missed rays have ``t = inf``.

Intersections are analytic (quadrics, convex polyhedra as plane sets, unions of convex parts),
except the torus, whose quartic is solved by sphere tracing its exact distance field. Convex
polyhedra also report how far a hit is from the nearest edge, which the renderer darkens into a
bevel line — a cue for faceted solids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["BOUNDS", "SHAPES", "Hit", "Shape", "apply"]

EPS = 1e-4
INF = np.float32(np.inf)


@dataclass
class Hit:
    """Nearest intersection per ray, in the shape's local frame.

    Attributes:
        t: ``(N,)`` distance along the (unit) ray; ``inf`` where the ray misses.
        normal: ``(3, N)`` outward unit normal at the hit (undefined where missed).
        edge: ``(N,)`` distance-like measure to the nearest polyhedron edge (``inf`` for smooth solids).
    """

    t: np.ndarray
    normal: np.ndarray
    edge: np.ndarray

    @classmethod
    def miss(cls, n: int) -> Hit:
        return cls(np.full(n, INF, np.float32), np.zeros((3, n), np.float32), np.full(n, INF, np.float32))

    def closest(self, other: Hit) -> Hit:
        """The nearer of two hits per ray (a union of solids)."""
        take = other.t < self.t
        return Hit(np.where(take, other.t, self.t), np.where(take, other.normal, self.normal),
                   np.where(take, other.edge, self.edge))


Shape = Callable[[np.ndarray, np.ndarray], Hit]


def apply(matrix: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``matrix @ vectors`` for a ``(R, 3)`` matrix and ``(3, N)`` vectors, without BLAS.

    Multithreaded BLAS spends more time spinning threads than computing on such skinny products
    (and fights the other worker processes for cores); three fused multiply-adds do not.
    """
    matrix = np.asarray(matrix, np.float32)
    return matrix[:, :1] * vectors[0] + matrix[:, 1:2] * vectors[1] + matrix[:, 2:3] * vectors[2]


def _first_root(a: np.ndarray, b: np.ndarray, c: np.ndarray, accept: Callable[[np.ndarray], np.ndarray]
                ) -> np.ndarray:
    """Smallest root ``t > EPS`` of ``a t^2 + 2 b t + c`` that ``accept(t)`` allows, else ``inf``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = b * b - a * c
        root = np.sqrt(np.maximum(disc, 0))
        safe_a = np.where(np.abs(a) < 1e-9, 1e-9, a)
        near, far = (-b - root) / safe_a, (-b + root) / safe_a
        near, far = np.minimum(near, far), np.maximum(near, far)
    ok_disc = disc >= 0
    near_ok = ok_disc & (near > EPS) & accept(near)
    far_ok = ok_disc & (far > EPS) & accept(far)
    return np.where(near_ok, near, np.where(far_ok, far, INF)).astype(np.float32)


def _point(o: np.ndarray, d: np.ndarray, t: np.ndarray) -> np.ndarray:
    return o + d * np.where(np.isfinite(t), t, 0)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.maximum(np.linalg.norm(v, axis=0, keepdims=True), 1e-9)).astype(np.float32)


def _sphere(o: np.ndarray, d: np.ndarray, centre: tuple[float, float, float], radius: float) -> Hit:
    c = np.asarray(centre, np.float32)[:, None]
    oc = o - c
    t = _first_root(np.ones(d.shape[1], np.float32), (oc * d).sum(0), np.broadcast_to((oc * oc).sum(0) - radius**2,
                                                                                      d.shape[1:]),
                    lambda t: np.ones(t.shape, bool))
    return Hit(t, _unit(_point(o, d, t) - c), np.full(d.shape[1], INF, np.float32))


def _disk_y(o: np.ndarray, d: np.ndarray, height: float, radius: float, normal_y: float) -> Hit:
    """A horizontal disk at ``y = height`` facing ``normal_y`` (+1 up, -1 down)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (height - o[1]) / d[1]
    p = _point(o, d, t)
    ok = (t > EPS) & (p[0] ** 2 + p[2] ** 2 <= radius**2) & (d[1] * normal_y < 0)
    n = d.shape[1]
    normal = np.zeros((3, n), np.float32)
    normal[1] = normal_y
    return Hit(np.where(ok, t, INF).astype(np.float32), normal, np.full(n, INF, np.float32))


def convex(planes: np.ndarray) -> Shape:
    """A convex polyhedron ``{x : n_k . x <= d_k}`` from rows ``(nx, ny, nz, d)`` (normals need not be unit)."""
    planes = np.asarray(planes, np.float64)
    scale = np.linalg.norm(planes[:, :3], axis=1, keepdims=True)
    normals = (planes[:, :3] / scale).astype(np.float32)
    offsets = (planes[:, 3:] / scale).astype(np.float32)

    def intersect(o: np.ndarray, d: np.ndarray) -> Hit:
        denom = apply(normals, d)                      # (P, N)
        num = offsets - apply(normals, o)              # (P, N) or (P, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / denom
        entering = np.where(denom < 0, t, -INF)
        leaving = np.where(denom > 0, t, INF)
        outside_parallel = ((denom == 0) & (num < 0)).any(0)
        order = np.argsort(entering, axis=0)[-2:]  # the two latest entries: hit plane and its neighbour
        t_in = np.take_along_axis(entering, order[-1:], 0)[0]
        t_second = np.take_along_axis(entering, order[:1], 0)[0]
        t_out = leaving.min(0)
        ok = (t_in <= t_out) & (t_in > EPS) & ~outside_parallel
        return Hit(np.where(ok, t_in, INF).astype(np.float32), normals[order[-1]].T.copy(),
                   (t_in - t_second).astype(np.float32))

    return intersect


def union(*parts: Shape) -> Shape:
    """The union of solids: per ray, the nearest hit of any part."""

    def intersect(o: np.ndarray, d: np.ndarray) -> Hit:
        hit = parts[0](o, d)
        for part in parts[1:]:
            hit = hit.closest(part(o, d))
        return hit

    return intersect


def _box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    return np.array([[1, 0, 0, x1], [-1, 0, 0, -x0], [0, 1, 0, y1], [0, -1, 0, -y0], [0, 0, 1, z1], [0, 0, -1, -z0]],
                    np.float64)


def sphere(o: np.ndarray, d: np.ndarray) -> Hit:
    return _sphere(o, d, (0.0, 1.0, 0.0), 1.0)


def cylinder(o: np.ndarray, d: np.ndarray, radius: float = 0.78, height: float = 1.9) -> Hit:
    def within(t: np.ndarray) -> np.ndarray:
        y = o[1] + d[1] * t
        return (y >= 0) & (y <= height)

    t = _first_root(d[0] ** 2 + d[2] ** 2, o[0] * d[0] + o[2] * d[2],
                    np.broadcast_to(o[0] ** 2 + o[2] ** 2 - radius**2, d.shape[1:]), within)
    p = _point(o, d, t)
    side = Hit(t, _unit(np.stack([p[0], np.zeros_like(p[0]), p[2]])), np.full(d.shape[1], INF, np.float32))
    return side.closest(_disk_y(o, d, height, radius, 1.0)).closest(_disk_y(o, d, 0.0, radius, -1.0))


def cone(o: np.ndarray, d: np.ndarray, radius: float = 1.0, height: float = 2.1) -> Hit:
    k2 = (radius / height) ** 2
    oy, dy = height - o[1], -d[1]            # measured down from the apex

    def within(t: np.ndarray) -> np.ndarray:
        y = o[1] + d[1] * t
        return (y >= 0) & (y <= height)

    t = _first_root(d[0] ** 2 + d[2] ** 2 - k2 * dy**2, o[0] * d[0] + o[2] * d[2] - k2 * oy * dy,
                    np.broadcast_to(o[0] ** 2 + o[2] ** 2 - k2 * oy**2, d.shape[1:]), within)
    p = _point(o, d, t)
    side = Hit(t, _unit(np.stack([p[0], k2 * (height - p[1]), p[2]])), np.full(d.shape[1], INF, np.float32))
    return side.closest(_disk_y(o, d, 0.0, radius, -1.0))


def capsule(o: np.ndarray, d: np.ndarray, half_length: float = 0.95, radius: float = 0.55) -> Hit:
    """A pill lying on the floor along local ``x``."""
    cy = radius

    def within(t: np.ndarray) -> np.ndarray:
        return np.abs(o[0] + d[0] * t) <= half_length

    t = _first_root(d[1] ** 2 + d[2] ** 2, (o[1] - cy) * d[1] + o[2] * d[2],
                    np.broadcast_to((o[1] - cy) ** 2 + o[2] ** 2 - radius**2, d.shape[1:]), within)
    p = _point(o, d, t)
    body = Hit(t, _unit(np.stack([np.zeros_like(p[0]), p[1] - cy, p[2]])), np.full(d.shape[1], INF, np.float32))
    return body.closest(_sphere(o, d, (-half_length, cy, 0.0), radius)).closest(
        _sphere(o, d, (half_length, cy, 0.0), radius))


TORUS_MAJOR, TORUS_MINOR = 0.68, 0.34
TORUS_STEPS = 40


def torus(o: np.ndarray, d: np.ndarray) -> Hit:
    """An upright ring (axis along local ``z``), found by sphere tracing its exact distance field."""
    centre_y, outer = TORUS_MAJOR + TORUS_MINOR, TORUS_MAJOR + TORUS_MINOR
    n = d.shape[1]
    bound = _sphere(o, d, (0.0, centre_y, 0.0), outer)
    rays = np.nonzero(np.isfinite(bound.t))[0]
    hit = Hit.miss(n)
    if rays.size == 0:
        return hit
    ro = o if o.shape[1] == 1 else o[:, rays]
    rd = d[:, rays]
    t = bound.t[rays].astype(np.float32)
    limit = t + 2 * outer
    for _ in range(TORUS_STEPS):
        p = ro + rd * t
        ring = np.sqrt(p[0] ** 2 + (p[1] - centre_y) ** 2) - TORUS_MAJOR
        dist = np.sqrt(ring**2 + p[2] ** 2) - TORUS_MINOR
        t = np.minimum(t + dist, limit)
    ok = np.abs(dist) < 2e-3
    p = ro + rd * t
    radial = np.sqrt(p[0] ** 2 + (p[1] - centre_y) ** 2)
    core = np.stack([p[0] / np.maximum(radial, 1e-6) * TORUS_MAJOR,
                     centre_y + (p[1] - centre_y) / np.maximum(radial, 1e-6) * TORUS_MAJOR, np.zeros_like(p[0])])
    hit.t[rays] = np.where(ok, t, INF)
    hit.normal[:, rays] = _unit(p - core)
    return hit


def _pyramid_planes(half: float = 1.0, height: float = 1.75) -> np.ndarray:
    sides = [[height, half, 0, height * half], [-height, half, 0, height * half],
             [0, half, height, height * half], [0, half, -height, height * half]]
    return np.array([*sides, [0, -1, 0, 0]], np.float64)


def _diamond_planes(half_width: float = 1.0, half_height: float = 1.3) -> np.ndarray:
    rows = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            for sz in (-1, 1):
                normal = np.array([sx / half_width, sy / half_height, sz / half_width])
                rows.append([*normal, 1 + normal[1] * half_height])   # centred at y = half_height
    return np.array(rows, np.float64)


def _star_kites(outer: float = 1.05, inner: float = 0.48, depth: float = 0.26) -> list[Shape]:
    """A five-pointed star standing upright, as five convex kite prisms (centre, inner, tip, inner)."""
    centre_y = outer * np.cos(np.pi / 5)          # the two lower tips touch the floor
    kites = []
    for k in range(5):
        tip = np.pi / 2 + 2 * np.pi * k / 5
        corners = [(0.0, 0.0), (inner * np.cos(tip - np.pi / 5), inner * np.sin(tip - np.pi / 5)),
                   (outer * np.cos(tip), outer * np.sin(tip)),
                   (inner * np.cos(tip + np.pi / 5), inner * np.sin(tip + np.pi / 5))]
        rows = [[0, 0, 1, depth], [0, 0, -1, depth]]
        for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
            nx, ny = y1 - y0, -(x1 - x0)                           # outward for counter-clockwise corners
            rows.append([nx, ny, 0, nx * x0 + ny * (y0 + centre_y)])
        kites.append(convex(np.array(rows)))
    return kites


SHAPES: dict[str, Shape] = {
    "sphere": sphere,
    "cube": convex(_box(-0.82, 0.82, 0.0, 1.64, -0.82, 0.82)),
    "cylinder": cylinder,
    "cone": cone,
    "torus": torus,
    "pyramid": convex(_pyramid_planes()),
    "capsule": capsule,
    "star": union(*_star_kites()),
    "cross": union(convex(_box(-0.3, 0.3, 0.0, 2.0, -0.26, 0.26)), convex(_box(-0.95, 0.95, 0.75, 1.35, -0.26, 0.26))),
    "diamond": convex(_diamond_planes()),
}
"""Category name -> local-frame intersection function."""

BOUNDS: dict[str, tuple[float, float]] = {
    "sphere": (1.0, 1.0), "cube": (0.82, 1.43), "cylinder": (0.95, 1.23), "cone": (1.05, 1.46),
    "torus": (1.02, 1.02), "pyramid": (0.31, 1.45), "capsule": (0.55, 1.5), "star": (0.85, 1.09),
    "cross": (1.0, 1.08), "diamond": (1.3, 1.3),
}
"""Category -> (centre height, radius) of a sphere enclosing the solid, for cheap ray culling."""
