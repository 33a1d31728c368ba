"""The pinhole camera shared by the image and the depth map (so depth is the image's own z-buffer).

World frame: ``x`` right, ``y`` up, ``z`` away from the camera; the floor is ``y = 0`` and the
camera stands at ``(0, height, 0)``, pitched down, with a little yaw and roll. Image coordinates
are normalised: ``u`` from -1 (left edge) to +1 (right edge), ``v`` from +1 (top) to -1 (bottom).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anchorbind.pipelines.world.shapes import apply

__all__ = ["Camera"]


@dataclass
class Camera:
    """Camera pose and lens.

    Attributes:
        height: metres above the floor.
        pitch: downward tilt (radians).
        yaw: turn to the right (radians).
        roll: rotation about the optical axis (radians).
        fov: horizontal (= vertical, square images) field of view (radians).
    """

    height: float
    pitch: float
    yaw: float
    roll: float
    fov: float

    @property
    def focal(self) -> float:
        """Focal length in normalised image units (``u = focal * x_cam / z_cam``)."""
        return float(1 / np.tan(self.fov / 2))

    @property
    def position(self) -> np.ndarray:
        return np.array([0.0, self.height, 0.0])

    @property
    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation; its columns are the camera's right, up and forward axes."""
        cr, sr = np.cos(self.roll), np.sin(self.roll)
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        cy, sy = np.cos(self.yaw), np.sin(self.yaw)
        roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        return yaw @ pitch @ roll

    def rays(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Unit ray directions ``(3, size*size)`` in the world frame, row-major from the top-left pixel,
        and per ray the factor that turns distance along the ray into camera-space depth ``z``."""
        centres = (np.arange(size, dtype=np.float64) + 0.5) / size * 2 - 1
        v, u = np.meshgrid(-centres, centres, indexing="ij")
        d_cam = np.stack([u.ravel(), v.ravel(), np.full(u.size, self.focal)])
        d_cam /= np.linalg.norm(d_cam, axis=0, keepdims=True)
        return apply(self.rotation, d_cam.astype(np.float32)), d_cam[2].astype(np.float32)

    def project(self, point: np.ndarray) -> np.ndarray:
        """Normalised image coordinates ``(u, v)`` of a world point in front of the camera."""
        p = self.rotation.T @ (np.asarray(point, np.float64) - self.position)
        return self.focal * p[:2] / p[2]
