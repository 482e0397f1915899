"""Fuse posed depth maps into one coloured point cloud: back-projection, then a voxel grid.

Back-projection puts each valid depth pixel (c, r) at its centre ``(c + 0.5, r + 0.5)``, the inverse of
:func:`opendas_encoder.threed.projection.project_points` (pixel c covers [c, c + 1)). Colours come
from the colour pixel at the same image position (colour and depth share the field of view).
Voxel downsampling averages points and colours per voxel with open3d's ``voxel_down_sample`` when
open3d is installed; otherwise with the same per-voxel mean in numpy (``np.unique`` + ``bincount``).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


def backproject(depth_m: np.ndarray, intrinsic: np.ndarray, cam_to_world: np.ndarray,
                valid: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """World points float64 (P, 3) of the ``valid`` pixels of ``depth_m`` (H, W) metres, and their
    continuous pixel positions (P, 2) (column, row) at the depth resolution. intrinsic: (3, 3) for (H, W);
    cam_to_world: (4, 4) OpenCV."""
    rows, cols = np.nonzero(valid)
    z = depth_m[rows, cols].astype(np.float64)
    uv = np.stack([cols + 0.5, rows + 0.5], axis=1)
    K = np.asarray(intrinsic, dtype=np.float64)
    x = (uv[:, 0] - K[0, 2]) / K[0, 0] * z
    y = (uv[:, 1] - K[1, 2]) / K[1, 1] * z
    cam = np.stack([x, y, z], axis=1)
    pose = np.asarray(cam_to_world, dtype=np.float64)
    return cam @ pose[:3, :3].T + pose[:3, 3], uv


def sample_colors(rgb: np.ndarray, uv: np.ndarray, from_hw: Tuple[int, int]) -> np.ndarray:
    """uint8 (P, 3) colours of ``rgb`` (H, W, 3) at positions ``uv`` given for an image of ``from_hw``."""
    h, w = rgb.shape[:2]
    cols = np.clip((uv[:, 0] * (w / from_hw[1])).astype(np.int64), 0, w - 1)
    rows = np.clip((uv[:, 1] * (h / from_hw[0])).astype(np.int64), 0, h - 1)
    return rgb[rows, cols]


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel_size: float) -> Tuple[np.ndarray, np.ndarray, str]:
    """Mean point and colour per occupied voxel: (points float64 (V, 3), colors uint8 (V, 3), backend)."""
    if len(points) == 0:
        return points.reshape(0, 3), colors.reshape(0, 3), "none"
    try:
        import open3d as o3d
    except ImportError:
        o3d = None
    if o3d is not None:
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
        pcd.colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64) / 255.0)
        down = pcd.voxel_down_sample(float(voxel_size))
        return (np.asarray(down.points), np.clip(np.round(np.asarray(down.colors) * 255), 0, 255).astype(np.uint8),
                f"open3d {o3d.__version__} voxel_down_sample")
    # numpy fallback (open3d is an optional extra): the same per-voxel mean
    keys = np.floor(points / voxel_size).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    mean = np.stack([np.bincount(inverse, weights=points[:, k]) for k in range(3)], axis=1) / counts[:, None]
    col = np.stack([np.bincount(inverse, weights=colors[:, k].astype(np.float64)) for k in range(3)], axis=1)
    return mean, np.clip(np.round(col / counts[:, None]), 0, 255).astype(np.uint8), "numpy voxel mean"
