"""Analytic 2.5-D shapes: for local coordinates, a mask, a surface height and surface normals.

Local coordinates are the pixel offset from the object's centre divided by its apparent radius
(``x`` right, ``y`` down). Each shape returns ``(mask, height, normal)`` where ``height`` in
[0, 1] is how far the surface bulges toward the camera (it becomes metric depth) and ``normal``
is a ``(3, H, W)`` unit vector field (``z`` toward the camera) used for shading.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["SHAPES"]

Shape = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _unit(nx: np.ndarray, ny: np.ndarray, nz: np.ndarray) -> np.ndarray:
    n = np.stack(np.broadcast_arrays(nx, ny, nz)).astype(np.float32)
    return n / np.maximum(np.linalg.norm(n, axis=0, keepdims=True), 1e-6)


def _flat(x: np.ndarray, nx: float, ny: float, nz: float) -> np.ndarray:
    return _unit(np.full_like(x, nx), np.full_like(x, ny), np.full_like(x, nz))


def sphere(x, y):
    d2 = x**2 + y**2
    mask = d2 < 1
    nz = np.sqrt(np.clip(1 - d2, 0, 1))
    return mask, nz, _unit(x, y, nz)


def cube(x, y):
    front = (x > -0.65) & (x < 0.35) & (y > -0.3) & (y < 0.7)
    s = -0.3 - y
    top = (y >= -0.7) & (y <= -0.3) & (x > -0.65 + s) & (x < 0.35 + s)
    t = x - 0.35
    side = (x >= 0.35) & (x <= 0.75) & (y > -0.3 - t) & (y < 0.7 - t)
    normal = np.where(top, _flat(x, 0.0, -1.0, 0.35), np.where(side, _flat(x, 1.0, 0.0, 0.35), _flat(x, 0, 0, 1)))
    height = np.where(front, 1.0, 0.6)
    return front | top | side, height, normal


def cylinder(x, y):
    w = 0.55
    body = (np.abs(x) < w) & (y > -0.55) & (y < 0.7)
    bottom = (x / w) ** 2 + ((y - 0.7) / 0.18) ** 2 < 1
    top = (x / w) ** 2 + ((y + 0.55) / 0.18) ** 2 < 1
    nxb = np.clip(x / w, -1, 1)
    body_n = _unit(nxb, np.zeros_like(x), np.sqrt(1 - nxb**2))
    normal = np.where(top, _flat(x, 0, -1, 0.25), body_n)
    height = np.where(top, 0.5, np.sqrt(1 - nxb**2))
    # label-like band: a darker stripe in the middle (rendered through the height channel)
    return body | bottom | top, height, normal


def cone(x, y):
    apex, base, half = -0.85, 0.6, 0.7
    frac = np.clip((y - apex) / (base - apex), 0, 1)
    width = half * frac
    body = (y > apex) & (y < base) & (np.abs(x) < width)
    bottom = (x / half) ** 2 + ((y - base) / 0.18) ** 2 < 1
    nx = np.clip(x / np.maximum(width, 1e-3), -1, 1)
    nz = np.sqrt(1 - nx**2)
    return body | bottom, nz * frac, _unit(nx, np.full_like(x, -0.45), nz)


def torus(x, y):
    rho = np.sqrt(x**2 + y**2)
    t = (rho - 0.62) / 0.33
    mask = np.abs(t) < 1
    nz = np.sqrt(np.clip(1 - t**2, 0, 1))
    safe = np.maximum(rho, 1e-6)
    return mask, nz, _unit(x / safe * t, y / safe * t, nz)


def pyramid(x, y):
    apex, base, half = -0.8, 0.65, 0.9
    frac = np.clip((y - apex) / (base - apex), 0, 1)
    mask = (y > apex) & (y < base) & (np.abs(x) < half * frac)
    normal = np.where(x < 0, _flat(x, -0.75, -0.35, 0.55), _flat(x, 0.75, -0.35, 0.55))
    return mask, 1 - np.abs(x) / half, normal


def star(x, y):
    theta = np.arctan2(x, -y)
    rho = np.sqrt(x**2 + y**2)
    sector = np.mod(theta, 2 * np.pi / 5) / (2 * np.pi / 5)
    boundary = 0.42 + 0.56 * np.abs(1 - 2 * sector) ** 1.6
    mask = rho < boundary
    safe = np.maximum(rho, 1e-6)
    tilt = 0.6 * rho / np.maximum(boundary, 1e-3)
    return mask, 1 - tilt, _unit(x / safe * tilt, y / safe * tilt, np.ones_like(x))


def cross(x, y):
    arm = 0.3
    vertical = (np.abs(x) < arm) & (np.abs(y) < 0.92)
    horizontal = (np.abs(y) < arm) & (np.abs(x) < 0.92)
    edge = np.minimum(arm - np.minimum(np.abs(x), np.abs(y)), 0.92 - np.maximum(np.abs(x), np.abs(y)))
    bevel = np.clip(edge / 0.08, 0, 1)
    nx = np.where(np.abs(x) > np.abs(y), np.sign(x), 0) * (1 - bevel)
    ny = np.where(np.abs(y) >= np.abs(x), np.sign(y), 0) * (1 - bevel)
    return vertical | horizontal, bevel, _unit(nx, ny, np.ones_like(x))


SHAPES: dict[str, Shape] = {
    "sphere": sphere, "cube": cube, "cylinder": cylinder, "cone": cone,
    "torus": torus, "pyramid": pyramid, "star": star, "cross": cross,
}
