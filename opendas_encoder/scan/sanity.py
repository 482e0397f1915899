"""The import's sanity picture: camera frustums over the back-projected depth, top and side views.

A wrong convention shows at a glance: frustums that look away from the points (OpenGL vs OpenCV), a
side view with the floor vertical (y-up vs z-up), clouds of one frame that do not overlap another's.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def frustum_lines(cam_to_world: np.ndarray, intrinsic: np.ndarray, hw: Tuple[int, int], depth: float) -> np.ndarray:
    """World segments (9, 2, 3) of a camera frustum to ``depth`` metres: 4 rays, 4 image edges (the
    last one drawn is the image's top edge, row 0), and the optical axis."""
    h, w = hw
    K = np.asarray(intrinsic, dtype=np.float64)
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    cam = np.stack([(corners[:, 0] - K[0, 2]) / K[0, 0], (corners[:, 1] - K[1, 2]) / K[1, 1], np.ones(4)], 1) * depth
    pts = cam @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]
    c = cam_to_world[:3, 3]
    axis = c + cam_to_world[:3, 2] * depth * 1.5
    segs = [(c, p) for p in pts] + [(pts[1], pts[2]), (pts[2], pts[3]), (pts[3], pts[0]), (pts[0], pts[1]), (c, axis)]
    return np.array(segs)


def draw_sanity(path: str, points: np.ndarray, colors: np.ndarray, poses: Sequence[np.ndarray],
                intrinsic: np.ndarray, hw: Tuple[int, int], title: str, max_points: int = 60000) -> None:
    """Write ``path`` (PNG): top view (x, y) and side view (x, z) of ``points`` (N, 3) z-up metres,
    coloured ``colors`` uint8 (N, 3), with the frustums of ``poses`` (OpenCV camera-to-world);
    frustum top edges (image row 0) in red: they must point up (+z) in the side view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    idx = rng.choice(len(points), size=min(max_points, len(points)), replace=False) if len(points) else np.zeros(0, int)
    p, col = points[idx], colors[idx] / 255.0
    extent = float(np.ptp(points, axis=0).max()) if len(points) else 1.0
    depth = 0.08 * max(extent, 0.5)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.5))
    for ax, (a, b), name in ((axes[0], (0, 1), "top view (x, y)"), (axes[1], (0, 2), "side view (x, z)")):
        ax.scatter(p[:, a], p[:, b], c=col, s=1.0, linewidths=0)
        for k, pose in enumerate(poses):
            segs = frustum_lines(pose, intrinsic, hw, depth)
            for j, s in enumerate(segs):
                ax.plot(s[:, a], s[:, b], color="red" if j == 7 else "black", lw=0.8)
            if k % max(1, len(poses) // 12) == 0:
                ax.annotate(str(k), segs[0, 0, [a, b]], fontsize=7, color="blue")
        ax.set_aspect("equal")
        ax.set_xlabel("xyz"[a] + " (m)")
        ax.set_ylabel("xyz"[b] + " (m)")
        ax.set_title(name)
    fig.suptitle(f"{title}: {len(points)} fused points, {len(poses)} cameras (red: image top edge)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
