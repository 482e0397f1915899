"""Pinhole projection of 3D points into posed frames and depth-tested visibility.

Conventions (OpenCV / ScanNet): camera looks along +z, x right, y down; ``cam_to_world`` is a
4x4 matrix mapping camera coordinates to world coordinates (ScanNet ``pose/<i>.txt``);
``intrinsic`` is a 3x3 matrix in pixels for an image of size (H, W). A point projecting to
continuous pixel coordinates (u, v) falls in pixel column ``floor(u)``, row ``floor(v)``
(pixel (c, r) covers [c, c+1) x [r, r+1); its centre is at (c + 0.5, r + 0.5)).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

#: OpenMask3D's default |sensor depth - point depth| tolerance in metres.
DEFAULT_VIS_THRESHOLD = 0.2


def scale_intrinsic(intrinsic: np.ndarray, from_hw: Tuple[int, int], to_hw: Tuple[int, int]) -> np.ndarray:
    """Rescale a 3x3 intrinsic matrix valid for images of size ``from_hw`` to ``to_hw`` (H, W)."""
    K = np.array(intrinsic, dtype=np.float64)[:3, :3].copy()
    if tuple(from_hw) == tuple(to_hw):
        return K
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    K[0, :] *= sx
    K[1, :] *= sy
    K[2, :] = (0.0, 0.0, 1.0)
    return K


def project_points(points: np.ndarray, cam_to_world: np.ndarray, intrinsic: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Project world points into a camera.

    points: (N, 3) world coordinates in metres. cam_to_world: (4, 4). intrinsic: (3, 3).
    Returns (uv, depth): uv float64 (N, 2) continuous pixel coordinates (column, row) and
    depth float64 (N,) = camera-space z in metres (<= 0 for points behind the camera; their uv
    is meaningless and set to -1).
    """
    points = np.asarray(points, dtype=np.float64)
    world_to_cam = np.linalg.inv(np.asarray(cam_to_world, dtype=np.float64))
    cam = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    depth = cam[:, 2]
    pix = cam @ np.asarray(intrinsic, dtype=np.float64)[:3, :3].T
    uv = np.full((len(points), 2), -1.0)
    front = depth > 0
    uv[front] = pix[front, :2] / depth[front, None]
    return uv, depth


def visible_points(points: np.ndarray, cam_to_world: np.ndarray, intrinsic: np.ndarray, depth_map: np.ndarray,
                   vis_threshold: float = DEFAULT_VIS_THRESHOLD, rounding: str = "floor") -> Tuple[np.ndarray, np.ndarray]:
    """Which points a depth frame sees.

    depth_map: (H, W) sensor depth in metres (0 = no measurement); ``intrinsic`` must be valid for
    (H, W). A point is visible when it is in front of the camera, projects inside the image, and
    |depth_map[row, col] - point depth| <= vis_threshold (so a point behind a surface is hidden).
    ``rounding``: "floor" (the pixel containing the projection) or "trunc" (OpenMask3D's ``int``
    cast, which also maps u or v in (-1, 0) to pixel 0; use it to reproduce OpenMask3D exactly).
    Returns (visible bool (N,), pixels int64 (N, 2) as (column, row); -1 where not visible).
    """
    if rounding not in ("floor", "trunc"):
        raise ValueError(f"rounding must be 'floor' or 'trunc', got {rounding!r}")
    height, width = depth_map.shape[:2]
    uv, depth = project_points(points, cam_to_world, intrinsic)
    pixels = (np.floor(uv) if rounding == "floor" else np.trunc(uv)).astype(np.int64)
    inside = (depth > 0) & (pixels[:, 0] >= 0) & (pixels[:, 1] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] < height)
    visible = np.zeros(len(points), dtype=bool)
    idx = np.nonzero(inside)[0]
    sensor = depth_map[pixels[idx, 1], pixels[idx, 0]]
    visible[idx] = (sensor > 0) & (np.abs(sensor - depth[idx]) <= vis_threshold)
    pixels[~visible] = -1
    return visible, pixels
