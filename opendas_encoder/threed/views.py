"""Per-mask view statistics: visible pixel counts, boxes and top-k view selection.

For every frame and every mask: the number of distinct depth pixels hit by the mask's visible
points (OpenMask3D's view score) and the tight box around those pixels. All masks of a frame are
handled at once with vectorised numpy (no per-mask loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
from tqdm import tqdm

from .projection import DEFAULT_VIS_THRESHOLD, visible_points
from .scene import Scene3D


@dataclass
class ViewStats:
    """Visibility of masks in frames.

    counts: int64 (F, K) distinct visible pixels of mask k in frame f (depth resolution).
    boxes: int64 (F, K, 4) (x1, y1, x2, y2) pixel box in depth resolution, exclusive x2/y2; zeros
    where counts == 0. depth_hw: (F, 2) depth image size of each frame.
    """

    counts: np.ndarray
    boxes: np.ndarray
    depth_hw: np.ndarray


def frame_mask_pixels(pixels: np.ndarray, visible: np.ndarray, masks: np.ndarray):
    """(mask index, column, row) of every visible point of every mask in one frame.

    pixels: int (N, 2) (column, row); visible: bool (N,); masks: bool (N, K).
    Returns three int64 arrays of equal length (one entry per (point, mask) pair).
    """
    vis_idx = np.nonzero(visible)[0]
    point_pos, mask_idx = np.nonzero(masks[vis_idx])
    pts = vis_idx[point_pos]
    return mask_idx.astype(np.int64), pixels[pts, 0], pixels[pts, 1]


def frame_view_stats(pixels: np.ndarray, visible: np.ndarray, masks: np.ndarray, hw):
    """Counts (K,) of distinct pixels and boxes (K, 4) of every mask in one frame of size hw (H, W)."""
    num_masks = masks.shape[1]
    mask_idx, cols, rows = frame_mask_pixels(pixels, visible, masks)
    counts = np.zeros(num_masks, dtype=np.int64)
    boxes = np.zeros((num_masks, 4), dtype=np.int64)
    if len(mask_idx) == 0:
        return counts, boxes
    frame_pixels = np.int64(hw[0]) * np.int64(hw[1])
    keys = np.unique(mask_idx * frame_pixels + rows * np.int64(hw[1]) + cols)
    counts += np.bincount(keys // frame_pixels, minlength=num_masks)
    big = np.iinfo(np.int64).max
    x1 = np.full(num_masks, big); y1 = np.full(num_masks, big)
    x2 = np.full(num_masks, -1); y2 = np.full(num_masks, -1)
    np.minimum.at(x1, mask_idx, cols); np.minimum.at(y1, mask_idx, rows)
    np.maximum.at(x2, mask_idx, cols); np.maximum.at(y2, mask_idx, rows)
    seen = counts > 0
    boxes[seen] = np.stack([x1[seen], y1[seen], x2[seen] + 1, y2[seen] + 1], axis=1)
    return counts, boxes


def compute_view_stats(scene: Scene3D, masks: np.ndarray, vis_threshold: float = DEFAULT_VIS_THRESHOLD,
                       progress: bool = False, rounding: str = "floor") -> ViewStats:
    """Visibility statistics of every mask (bool (N, K)) in every frame of ``scene``
    (``rounding``: see :func:`visible_points`)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2 or masks.shape[0] != scene.num_points:
        raise ValueError(f"scene {scene.name}: masks must be (num_points={scene.num_points}, K), got {masks.shape}")
    num_frames, num_masks = len(scene.frames), masks.shape[1]
    counts = np.zeros((num_frames, num_masks), dtype=np.int64)
    boxes = np.zeros((num_frames, num_masks, 4), dtype=np.int64)
    depth_hw = np.zeros((num_frames, 2), dtype=np.int64)
    frames = tqdm(scene.frames, desc=f"{scene.name}: visibility", leave=False, disable=not progress)
    for f, frame in enumerate(frames):
        depth = frame.load_depth()
        depth_hw[f] = depth.shape
        K = frame.intrinsic_for(depth.shape)
        visible, pixels = visible_points(scene.points, frame.cam_to_world, K, depth, vis_threshold, rounding)
        counts[f], boxes[f] = frame_view_stats(pixels, visible, masks, depth.shape)
    return ViewStats(counts=counts, boxes=boxes, depth_hw=depth_hw)


def top_k_views(counts: np.ndarray, k: int) -> List[np.ndarray]:
    """For each mask, the indices of its ``k`` frames with most visible pixels (descending;
    ties: lower frame index first), frames with zero visible pixels dropped. counts: (F, K)."""
    order = np.argsort(-counts, axis=0, kind="stable")[:k]
    return [order[:, j][counts[order[:, j], j] > 0] for j in range(counts.shape[1])]
