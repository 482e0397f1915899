"""Class-agnostic 3D instance proposals: Mask3D's files when a scene has them, else a CPU fallback.

The fallback ("fallback:planes+dbscan") needs no GPU and no downloaded weights: large planes (floor,
walls, ceiling, large table tops) are removed by RANSAC (open3d's ``segment_plane``), the remaining
points are clustered by DBSCAN (scikit-learn) at a few neighbourhood radii (multiples of the median
point spacing), and each cluster of at least ``min_points`` points is one proposal. Clusters found at
several radii are kept once (IoU above ``dedup_iou``). Proposals may overlap (coarse and fine
clusters), as Mask3D's do. It is a geometric stand-in for Mask3D, not a learned segmenter: objects that
touch each other merge at the coarse radius, and objects lying on a removed plane lose those points.
Its class-agnostic recall on generated scenes is measured by ``eval/proposal_recall.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

FALLBACK_METHOD = "planes+dbscan"
#: Bumped when the fallback's algorithm changes, so cached proposals of an older version are not reused.
FALLBACK_VERSION = 1


@dataclass(frozen=True)
class FallbackConfig:
    """Settings of the fallback proposals (lengths in metres, or in median point spacings)."""

    plane_threshold: float = 0.02        # RANSAC inlier distance to a plane, metres
    plane_min_fraction: float = 0.01     # planes with fewer inliers (fraction of all points) end the search
    plane_min_extent: float = 1.2        # ... and its inliers span >= this many metres (a wall, not a box face)
    max_planes: int = 30
    ransac_iterations: int = 500
    ransac_sample: int = 20000            # points RANSAC scores planes on (a random sample of the pool)
    eps_spacings: Tuple[float, ...] = (2.5, 4.0)   # DBSCAN radii as multiples of the median NN spacing
    min_points: int = 30                  # smallest proposal
    max_fraction: float = 0.5             # a cluster with more than this fraction of points is background
    dedup_iou: float = 0.9
    seed: int = 0

    def __post_init__(self):
        if self.plane_threshold <= 0 or not 0 < self.plane_min_fraction < 1 or self.max_planes < 0:
            raise ValueError(f"FallbackConfig: plane settings out of range: {self}")
        if not self.eps_spacings or min(self.eps_spacings) <= 0 or self.min_points < 1:
            raise ValueError(f"FallbackConfig: eps_spacings must be > 0 and min_points >= 1: {self}")

    def key(self) -> str:
        ident = dict(asdict(self), method=FALLBACK_METHOD, version=FALLBACK_VERSION)
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def median_spacing(points: np.ndarray, sample: int = 20000, seed: int = 0) -> float:
    """Median distance (metres) from a point to its nearest neighbour (on a random sample of points).

    scikit-learn's KD-tree, not scipy's ``cKDTree``: ``cKDTree.query`` crashes the process (SIGSEGV, scipy
    1.17.1) once ``torch.set_flush_denormal(True)`` is on, which the CLI's entry points turn on."""
    from sklearn.neighbors import NearestNeighbors

    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pts), size=min(sample, len(pts)), replace=False)
    d, _ = NearestNeighbors(n_neighbors=2).fit(pts).kneighbors(pts[pick])
    return float(np.median(d[:, 1]))


def remove_planes(points: np.ndarray, cfg: FallbackConfig, spacing: Optional[float] = None) -> np.ndarray:
    """bool (N,): True for points on none of the large planar regions.

    Repeatedly: open3d's RANSAC finds the plane with most inliers among the points not yet tried; its
    inliers (among all points not yet removed) are split into connected pieces (DBSCAN at 3 point
    spacings) and a piece is removed only when its two larger extents are both >= ``plane_min_extent``
    (a wall or floor, not coplanar faces of several boxes). Stops when RANSAC's best plane holds fewer
    than ``plane_min_fraction`` of the points, or after ``max_planes`` planes.
    """
    try:
        import open3d as o3d
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the fallback proposals need open3d (pip install open3d), or give Mask3D proposal "
                          "files (<scene>_masks.pt)") from exc
    from sklearn.cluster import DBSCAN

    spacing = median_spacing(points, seed=cfg.seed) if spacing is None else spacing
    keep = np.ones(len(points), dtype=bool)
    pool = np.ones(len(points), dtype=bool)        # points RANSAC may still use
    o3d.utility.random.seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    min_inliers = max(3, int(cfg.plane_min_fraction * len(points)))
    for _ in range(cfg.max_planes):
        idx = np.nonzero(pool)[0]
        if len(idx) < min_inliers:
            break
        # RANSAC scores planes on a random sample of the pool (measured: 0.9 s per plane on 250k points,
        # 24 planes); the plane's inliers are then taken from all points
        sample = idx if len(idx) <= cfg.ransac_sample else np.sort(rng.choice(idx, cfg.ransac_sample, replace=False))
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[sample].astype(np.float64)))
        model, inliers = pcd.segment_plane(distance_threshold=cfg.plane_threshold, ransac_n=3,
                                           num_iterations=cfg.ransac_iterations)
        if len(inliers) * len(idx) / len(sample) < min_inliers:
            break
        # pieces are cut from all points still kept near the plane, also those an earlier plane took
        # out of the pool (a plane slicing through several boxes also takes stripes of a wall)
        a = np.asarray(model, dtype=np.float64)
        near = np.abs(points @ a[:3] + a[3]) <= cfg.plane_threshold * np.linalg.norm(a[:3])
        pool &= ~near
        inliers = np.nonzero(near & keep)[0]
        labels = DBSCAN(eps=3 * max(spacing, 1e-6), min_samples=3).fit_predict(points[inliers])
        for lab in np.unique(labels[labels >= 0]):
            piece = inliers[labels == lab]
            if np.sort(np.ptp(points[piece], axis=0))[-2] >= cfg.plane_min_extent:
                keep[piece] = False
    return keep


def _dedup(masks: Sequence[np.ndarray], num_points: int, iou: float) -> list:
    """Index arrays of the masks, dropping a mask whose IoU with an earlier kept one exceeds ``iou``."""
    kept: list = []
    for m in masks:
        dup = False
        for k in kept:
            inter = np.intersect1d(m, k, assume_unique=True).size
            if inter and inter / (len(m) + len(k) - inter) > iou:
                dup = True
                break
        if not dup:
            kept.append(m)
    return kept


def fallback_proposals(points: np.ndarray, cfg: FallbackConfig = FallbackConfig(),
                       progress: bool = False) -> np.ndarray:
    """Class-agnostic proposals bool (N, M) of a point cloud float (N, 3) metres (see the module docstring)."""
    from sklearn.cluster import DBSCAN
    from tqdm import tqdm

    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    if n == 0:
        return np.zeros((0, 0), dtype=bool)
    spacing = median_spacing(pts, seed=cfg.seed)
    keep = remove_planes(pts, cfg, spacing)
    idx = np.nonzero(keep)[0]
    found = []
    for mult in tqdm(cfg.eps_spacings, desc="proposals: dbscan", leave=False, disable=not progress):
        if len(idx) < cfg.min_points:
            break
        labels = DBSCAN(eps=max(spacing, 1e-6) * mult, min_samples=4).fit_predict(pts[idx])
        for lab in np.unique(labels[labels >= 0]):
            members = idx[labels == lab]
            if cfg.min_points <= len(members) <= cfg.max_fraction * n:
                found.append(np.sort(members))
    kept = _dedup(found, n, cfg.dedup_iou)
    masks = np.zeros((n, len(kept)), dtype=bool)
    for j, m in enumerate(kept):
        masks[m, j] = True
    return masks


def scene_proposals(scene_dir: str, points: np.ndarray, proposals=None, cfg: FallbackConfig = FallbackConfig(),
                    progress: bool = False) -> Tuple[np.ndarray, str]:
    """Proposals bool (N, M) of a processed scene and where they came from.

    ``proposals``: None = Mask3D's file in the scene folder (``<scene>*_masks.pt|.npy``) if there is one,
    else the fallback; "fallback" = always the fallback; a path = that proposal file; an array = itself.
    Returns (masks, source) with source "mask3d:<file name>", "fallback:planes+dbscan" or "array".
    """
    from ..threed.processed import find_mask_proposals, read_mask_proposals

    n = len(points)
    if isinstance(proposals, np.ndarray):
        if proposals.ndim != 2 or proposals.shape[0] != n:
            raise ValueError(f"{scene_dir}: proposals must be (num_points={n}, M), got {proposals.shape}")
        return proposals.astype(bool), "array"
    if proposals is None:
        try:
            proposals = find_mask_proposals(scene_dir)
        except FileNotFoundError:
            proposals = "fallback"
    if proposals == "fallback":
        return fallback_proposals(points, cfg, progress=progress), f"fallback:{FALLBACK_METHOD}"
    path = str(proposals)
    return read_mask_proposals(path, n), f"mask3d:{os.path.basename(path)}"


def proposal_recall(masks: np.ndarray, gt_masks: np.ndarray, thresholds: Sequence[float] = (0.5, 0.25)) -> dict:
    """Class-agnostic recall: the fraction of ground-truth instances (bool (N, K)) whose best IoU with any
    proposal (bool (N, M)) is >= each threshold. Returns {threshold: recall, "best_iou": (K,) array}."""
    masks = np.asarray(masks, dtype=bool)
    gt = np.asarray(gt_masks, dtype=bool)
    if gt.shape[1] == 0:
        raise ValueError("no ground-truth instances")
    if masks.shape[1] == 0:
        best = np.zeros(gt.shape[1])
    else:
        inter = gt.T.astype(np.float64) @ masks.astype(np.float64)          # (K, M)
        union = gt.sum(0)[:, None] + masks.sum(0)[None, :] - inter
        best = (inter / np.maximum(union, 1)).max(axis=1)
    out = {float(t): float((best >= t).mean()) for t in thresholds}
    out["best_iou"] = best
    return out
